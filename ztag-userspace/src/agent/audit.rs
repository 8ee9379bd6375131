//! The audit log: every MCP tool call (who, which agent, which tool, the
//! decision, how long) and every approval decision, in the state DB
//! (`agent_audit`). Requests do not wait for the disk: records go through a
//! bounded channel to one writer thread that commits them in batches; when
//! the channel is full the record is counted as dropped and logged
//! (`ztag_audit_dropped_total`), the request is not slowed.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use tracing::warn;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS agent_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    route       TEXT NOT NULL,
    subject     TEXT,
    client_id   TEXT,
    source      TEXT,
    target      TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT,
    duration_us INTEGER,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS agent_audit_kind ON agent_audit (kind, id);";

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Record {
    /// Row id (0 until written).
    #[serde(default)]
    pub id: i64,
    /// Wall-clock ms since the epoch.
    pub time_ms: i64,
    /// `tool_call`, `approval`, ...
    pub kind: String,
    /// The route.
    pub route: String,
    /// The principal's subject.
    pub subject: Option<String>,
    /// The agent (OAuth client id).
    pub client_id: Option<String>,
    /// The TCP peer.
    pub source: Option<String>,
    /// What was acted on: `server/tool`, an approval id.
    pub target: String,
    /// `allow`, `deny`, `error`, `approved`, `denied`, `expired` ...
    pub decision: String,
    /// Why (a reason label or the approver's note).
    pub reason: Option<String>,
    /// How long the call took, µs.
    pub duration_us: Option<i64>,
    /// Extra JSON (e.g. the approver).
    pub detail: Option<String>,
}

/// The writer's handle.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::SyncSender<Msg>,
    db: Arc<Mutex<Connection>>,
    records: IntCounterVec,
    dropped: IntCounter,
}

impl Audit {
    /// Creates the table and starts the writer thread.
    pub fn start(db: Arc<Mutex<Connection>>, registry: &Registry) -> anyhow::Result<Audit> {
        db.lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_batch(TABLE)?;
        let records = IntCounterVec::new(
            Opts::new(
                "ztag_audit_records_total",
                "Audit records written, by kind and decision",
            ),
            &["kind", "decision"],
        )?;
        let dropped = IntCounter::new(
            "ztag_audit_dropped_total",
            "Audit records dropped because the writer fell behind",
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(65_536);
        let wdb = db.clone();
        std::thread::Builder::new()
            .name("ztag-audit".into())
            .spawn(move || writer(rx, wdb))?;
        Ok(Audit {
            tx,
            db,
            records,
            dropped,
        })
    }

    /// Queues a record.
    pub fn write(&self, r: Record) {
        self.records
            .with_label_values(&[&r.kind, &r.decision])
            .inc();
        if let Err(e) = self.tx.try_send(Msg::Record(Box::new(r))) {
            self.dropped.inc();
            let (mpsc::TrySendError::Full(m) | mpsc::TrySendError::Disconnected(m)) = e;
            let Msg::Record(r) = m else { return };
            warn!(kind = %r.kind, target = %r.target, decision = %r.decision, "audit record dropped: the writer is behind");
        }
    }

    /// Newest first; `kind` narrows; at most `limit`.
    pub fn recent(&self, kind: Option<&str>, limit: usize) -> rusqlite::Result<Vec<Record>> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = db.prepare(
            "SELECT id, time_ms, kind, route, subject, client_id, source, target, decision, reason, duration_us, detail
               FROM agent_audit WHERE ?1 IS NULL OR kind = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![kind, limit as i64], |r| {
            Ok(Record {
                id: r.get(0)?,
                time_ms: r.get(1)?,
                kind: r.get(2)?,
                route: r.get(3)?,
                subject: r.get(4)?,
                client_id: r.get(5)?,
                source: r.get(6)?,
                target: r.get(7)?,
                decision: r.get(8)?,
                reason: r.get(9)?,
                duration_us: r.get(10)?,
                detail: r.get(11)?,
            })
        })?;
        rows.collect()
    }

    /// Waits (up to 5 s) until everything queued so far is on disk.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel::<()>(1);
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

enum Msg {
    Record(Box<Record>),
    Flush(mpsc::SyncSender<()>),
}

fn writer(rx: mpsc::Receiver<Msg>, db: Arc<Mutex<Connection>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write_batch(&db, &batch);
        }
        for f in flushes {
            let _ = f.try_send(());
        }
    }
}

fn write_batch(db: &Mutex<Connection>, batch: &[Record]) {
    {
        let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
        let res = (|| -> rusqlite::Result<()> {
            let tx = db.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO agent_audit (time_ms, kind, route, subject, client_id, source, target, decision, reason, duration_us, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for r in batch {
                    st.execute(params![
                        r.time_ms,
                        r.kind,
                        r.route,
                        r.subject,
                        r.client_id,
                        r.source,
                        r.target,
                        r.decision,
                        r.reason,
                        r.duration_us,
                        r.detail
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = res {
            warn!(records = batch.len(), "audit records not written: {e}");
        }
    }
}

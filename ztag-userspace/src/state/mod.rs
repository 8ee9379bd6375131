//! The embedded state database (SQLite, WAL): the durable copy of the allow-
//! and blocklists. The BPF maps are the kernel's copy; at start the daemon
//! reconciles the maps to this database. A write that the admin API
//! acknowledged is committed here first (synchronous=FULL), so it survives a
//! crash of the daemon and of the host.

pub mod fga;

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

/// Errors of the state database; each names the file or the row concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A stored row no longer parses (hand-edited database?).
    #[error("state database row {kind}/{cidr:?} is corrupt: {why}")]
    Corrupt {
        /// Its list.
        kind: String,
        /// Its prefix text.
        cidr: String,
        /// Why it failed.
        why: String,
    },
}

/// The three lists ztag keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Always pass.
    Allow,
    /// Static blocklist, managed by operators.
    Block,
    /// Dynamic blocks, written by the risk engine.
    Dynamic,
}

impl ListKind {
    /// All kinds.
    pub const ALL: [ListKind; 3] = [ListKind::Allow, ListKind::Block, ListKind::Dynamic];

    /// The name stored in the database and used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Block => "block",
            ListKind::Dynamic => "dynamic",
        }
    }

    /// Parses [`ListKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "allow" => ListKind::Allow,
            "block" => ListKind::Block,
            "dynamic" => ListKind::Dynamic,
            _ => return None,
        })
    }
}

/// Who put an entry in a list (shown in `ztag block list` and the
/// dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The CLI (or any other client of the admin socket).
    #[default]
    Cli,
    /// The admin web dashboard.
    Dashboard,
    /// The daemon's risk engine.
    Risk,
    /// Another gateway of the fleet.
    Fleet,
}

impl Origin {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Dashboard => "dashboard",
            Origin::Risk => "risk",
            Origin::Fleet => "fleet",
        }
    }

    /// Parses [`Origin::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cli" => Origin::Cli,
            "dashboard" => Origin::Dashboard,
            "risk" => Origin::Risk,
            "fleet" => Origin::Fleet,
            _ => return None,
        })
    }
}

/// One list entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its list.
    pub kind: ListKind,
    /// The prefix (dynamic entries are single addresses).
    pub cidr: IpNet,
    /// Wall-clock expiry, milliseconds since the Unix epoch; `None`: never.
    pub expires_at_ms: Option<i64>,
    /// The operator's (or risk engine's) reason.
    pub reason: Option<String>,
    /// Id of `reason` in the reasons table (carried in BPF map values and
    /// drop events); 0 when there is no reason.
    pub reason_id: u32,
    /// When the entry was added, ms since the epoch.
    pub created_at_ms: i64,
    /// Who added it.
    pub origin: Origin,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const MIGRATIONS: &[&str] = &[
    // 1: lists and reasons.
    "CREATE TABLE reasons (
        id   INTEGER PRIMARY KEY,
        text TEXT NOT NULL UNIQUE
     );
     CREATE TABLE entries (
        kind          TEXT NOT NULL,
        cidr          TEXT NOT NULL,
        expires_at_ms INTEGER,
        reason_id     INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (kind, cidr)
     ) WITHOUT ROWID;
     CREATE INDEX entries_expiry ON entries (expires_at_ms) WHERE expires_at_ms IS NOT NULL;",
    // 2: who added an entry (rows from before were added through the CLI,
    // or by the risk engine for dynamic ones).
    "ALTER TABLE entries ADD COLUMN origin TEXT NOT NULL DEFAULT 'cli';
     UPDATE entries SET origin = 'risk' WHERE kind = 'dynamic';",
    // 3: fleet mode's outbox: list changes made here, written in the same
    // transaction as the change, deleted once Redis has them.
    "CREATE TABLE fleet_outbox (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        record TEXT NOT NULL
     );",
];

/// A list change as the fleet shares it (JSON in Redis and in the outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    /// The list.
    pub kind: ListKind,
    /// The prefix, canonical.
    pub cidr: String,
    /// `add` or `del`.
    pub op: FleetOp,
    /// Wall-clock expiry of an add, ms since the epoch.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// The reason of an add.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who made the change where it was made.
    pub origin: Origin,
    /// The gateway that made it (filled in when it leaves the outbox).
    #[serde(default)]
    pub node: String,
    /// When, microseconds since the epoch: the last writer wins, a removal
    /// wins a tie.
    pub ts_us: i64,
}

/// What a [`FleetRecord`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetOp {
    /// The entry is (or stays) in the list.
    Add,
    /// The entry is removed.
    Del,
}

impl FleetRecord {
    /// A change made on this gateway (the node is filled in when it is
    /// sent).
    pub fn local(
        kind: ListKind,
        cidr: String,
        op: FleetOp,
        expires_at_ms: Option<i64>,
        reason: Option<String>,
        origin: Origin,
        ts_us: i64,
    ) -> FleetRecord {
        FleetRecord {
            kind,
            cidr,
            op,
            expires_at_ms,
            reason,
            origin,
            node: String::new(),
            ts_us,
        }
    }

    /// The Redis hash field: `kind|cidr`.
    pub fn field(&self) -> String {
        format!("{}|{}", self.kind.as_str(), self.cidr)
    }

    /// Whether this record replaces `other` for the same entry: later
    /// timestamp, or the same one and this is a removal (and the other is
    /// not), or, for equal timestamps and ops, the greater node name (so
    /// every gateway picks the same one).
    pub fn supersedes(&self, other: &FleetRecord) -> bool {
        (self.ts_us, self.op == FleetOp::Del, &self.node)
            > (other.ts_us, other.op == FleetOp::Del, &other.node)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The open database.
pub struct StateDb {
    conn: Connection,
}

impl StateDb {
    /// Opens (creating if needed) the database under `dir`, mode 0700/0600.
    pub fn open(dir: &Path) -> Result<StateDb, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        let path = dir.join("ztag.db");
        let conn = Connection::open(&path)?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<StateDb, StateError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<StateDb, StateError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = conn.transaction()?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(StateDb { conn })
    }

    /// Starts a transaction; the caller commits once the maps agree.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, StateError> {
        Ok(self.conn.transaction()?)
    }

    /// Every entry of a list (all lists when `kind` is `None`), including
    /// expired ones not yet swept.
    pub fn list(&self, kind: Option<ListKind>) -> Result<Vec<Entry>, StateError> {
        self.select(
            "WHERE ?1 IS NULL OR e.kind = ?1 ORDER BY e.kind, e.cidr",
            params![kind.map(ListKind::as_str)],
        )
    }

    /// Live entries whose prefix, list, origin or reason contains `q`
    /// (case-insensitive; every entry when `q` is empty), newest first, at
    /// most `limit`: what the dashboard shows, without reading a
    /// million-entry list on every refresh.
    pub fn search(&self, q: &str, now_ms: i64, limit: usize) -> Result<Vec<Entry>, StateError> {
        let pattern = format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        self.select(
            "WHERE (e.expires_at_ms IS NULL OR e.expires_at_ms > ?3)
               AND (?1 = '' OR e.cidr LIKE ?2 ESCAPE '\\' OR e.kind LIKE ?2 ESCAPE '\\'
                    OR e.origin LIKE ?2 ESCAPE '\\' OR r.text LIKE ?2 ESCAPE '\\')
             ORDER BY e.created_at_ms DESC LIMIT ?4",
            params![q, pattern, now_ms, limit as i64],
        )
    }

    /// One entry, if stored.
    pub fn get(&self, kind: ListKind, cidr: &IpNet) -> Result<Option<Entry>, StateError> {
        Ok(self
            .select(
                "WHERE e.kind = ?1 AND e.cidr = ?2",
                params![kind.as_str(), cidr.to_string()],
            )?
            .pop())
    }

    /// Entries whose expiry is at or before `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Result<Vec<Entry>, StateError> {
        self.select(
            "WHERE e.expires_at_ms IS NOT NULL AND e.expires_at_ms <= ?1",
            params![now_ms],
        )
    }

    fn select(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Entry>, StateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT e.kind, e.cidr, e.expires_at_ms, e.reason_id, r.text, e.created_at_ms, e.origin
               FROM entries e LEFT JOIN reasons r ON r.id = e.reason_id {filter}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (k, cidr, expires_at_ms, reason_id, reason, created_at_ms, origin) = row?;
            out.push(to_entry(
                k,
                cidr,
                expires_at_ms,
                reason_id,
                reason,
                created_at_ms,
                &origin,
            )?);
        }
        Ok(out)
    }

    /// The oldest `limit` outbox records, with their ids.
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<(i64, FleetRecord)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, record FROM fleet_outbox ORDER BY id LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            match serde_json::from_str(&text) {
                Ok(rec) => out.push((id, rec)),
                // Unreadable: nothing can send it; drop it rather than
                // block the queue behind it.
                Err(e) => {
                    tracing::warn!(id, "fleet outbox: dropping an unreadable record: {e}");
                    self.conn
                        .prepare_cached("DELETE FROM fleet_outbox WHERE id = ?1")?
                        .execute(params![id])?;
                }
            }
        }
        Ok(out)
    }

    /// Deletes outbox records once Redis has them.
    pub fn outbox_ack(&mut self, ids: &[i64]) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM fleet_outbox WHERE id = ?1")?;
            for id in ids {
                stmt.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records waiting in the outbox.
    pub fn outbox_len(&self) -> Result<u64, StateError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM fleet_outbox")?
            .query_row([], |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    }

    /// Number of entries per list.
    pub fn counts(&self) -> Result<Vec<(ListKind, u64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, COUNT(*) FROM entries GROUP BY kind")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (k, n) = row?;
            if let Some(k) = ListKind::parse(&k) {
                out.push((k, n.max(0) as u64));
            }
        }
        Ok(out)
    }
}

fn to_entry(
    kind: String,
    cidr: String,
    expires_at_ms: Option<i64>,
    reason_id: u32,
    reason: Option<String>,
    created_at_ms: i64,
    origin: &str,
) -> Result<Entry, StateError> {
    let corrupt = |why: String| StateError::Corrupt {
        kind: kind.clone(),
        cidr: cidr.clone(),
        why,
    };
    let k = ListKind::parse(&kind).ok_or_else(|| corrupt("unknown list".into()))?;
    let net: IpNet = cidr.parse().map_err(|e| corrupt(format!("{e}")))?;
    let origin =
        Origin::parse(origin).ok_or_else(|| corrupt(format!("unknown origin {origin:?}")))?;
    Ok(Entry {
        kind: k,
        cidr: net,
        expires_at_ms,
        reason,
        reason_id,
        created_at_ms,
        origin,
    })
}

/// Writes inside a transaction.
pub struct Writer;

impl Writer {
    /// The id of a reason text, creating it if new; 0 for no reason.
    pub fn reason_id(tx: &Transaction<'_>, reason: Option<&str>) -> Result<u32, StateError> {
        let Some(text) = reason else { return Ok(0) };
        if let Some(id) = tx
            .prepare_cached("SELECT id FROM reasons WHERE text = ?1")?
            .query_row(params![text], |r| r.get::<_, u32>(0))
            .optional()?
        {
            return Ok(id);
        }
        tx.prepare_cached("INSERT INTO reasons (text) VALUES (?1)")?
            .execute(params![text])?;
        Ok(tx.last_insert_rowid() as u32)
    }

    /// Inserts or replaces an entry; returns whether it is new.
    pub fn upsert(tx: &Transaction<'_>, e: &Entry) -> Result<bool, StateError> {
        let existed = tx
            .prepare_cached("SELECT 1 FROM entries WHERE kind = ?1 AND cidr = ?2")?
            .query_row(params![e.kind.as_str(), e.cidr.to_string()], |_| Ok(()))
            .optional()?
            .is_some();
        tx.prepare_cached(
            "INSERT OR REPLACE INTO entries (kind, cidr, expires_at_ms, reason_id, created_at_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            e.kind.as_str(),
            e.cidr.to_string(),
            e.expires_at_ms,
            e.reason_id,
            e.created_at_ms,
            e.origin.as_str()
        ])?;
        Ok(!existed)
    }

    /// Queues a change for the fleet (same transaction as the change).
    pub fn outbox_push(tx: &Transaction<'_>, rec: &FleetRecord) -> Result<(), StateError> {
        let text = serde_json::to_string(rec).map_err(|e| StateError::Corrupt {
            kind: rec.kind.as_str().into(),
            cidr: rec.cidr.clone(),
            why: format!("fleet record: {e}"),
        })?;
        tx.prepare_cached("INSERT INTO fleet_outbox (record) VALUES (?1)")?
            .execute(params![text])?;
        Ok(())
    }

    /// Outbox records now (inside a transaction).
    pub fn outbox_len(tx: &Transaction<'_>) -> Result<u64, StateError> {
        Ok(tx
            .prepare_cached("SELECT COUNT(*) FROM fleet_outbox")?
            .query_row([], |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    }

    /// Inserts or replaces many entries of one list with one prepared
    /// statement (the bulk import path).
    pub fn bulk_upsert(
        tx: &Transaction<'_>,
        kind: ListKind,
        rows: &[(IpNet, u32)],
        expires_at_ms: Option<i64>,
        created_at_ms: i64,
        origin: Origin,
    ) -> Result<(), StateError> {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO entries (kind, cidr, expires_at_ms, reason_id, created_at_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut text = String::with_capacity(43);
        for (net, reason_id) in rows {
            use std::fmt::Write as _;
            text.clear();
            let _ = write!(text, "{net}");
            stmt.execute(params![
                kind.as_str(),
                text,
                expires_at_ms,
                reason_id,
                created_at_ms,
                origin.as_str()
            ])?;
        }
        Ok(())
    }

    /// Entries per list, family and size: (list, is IPv6, is a single
    /// address, count).
    pub fn family_counts(
        tx: &Transaction<'_>,
    ) -> Result<Vec<(ListKind, bool, bool, u64)>, StateError> {
        let mut stmt = tx.prepare_cached(
            "SELECT kind, instr(cidr, ':') > 0,
                    CASE WHEN instr(cidr, ':') > 0 THEN cidr LIKE '%/128' ELSE cidr LIKE '%/32' END,
                    COUNT(*)
               FROM entries GROUP BY 1, 2, 3",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (k, v6, host, n) = row?;
            if let Some(k) = ListKind::parse(&k) {
                out.push((k, v6, host, n.max(0) as u64));
            }
        }
        Ok(out)
    }

    /// Removes an entry; returns whether it existed.
    pub fn remove(tx: &Transaction<'_>, kind: ListKind, cidr: &IpNet) -> Result<bool, StateError> {
        let n = tx
            .prepare_cached("DELETE FROM entries WHERE kind = ?1 AND cidr = ?2")?
            .execute(params![kind.as_str(), cidr.to_string()])?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: ListKind, cidr: &str, exp: Option<i64>) -> Entry {
        Entry {
            kind,
            cidr: cidr.parse().unwrap(),
            expires_at_ms: exp,
            reason: None,
            reason_id: 0,
            created_at_ms: 1,
            origin: Origin::Cli,
        }
    }

    #[test]
    fn search_filters_in_sql_and_stops_at_the_limit() {
        let mut db = StateDb::in_memory().unwrap();
        let tx = db.transaction().unwrap();
        for i in 0..50 {
            let mut e = entry(ListKind::Block, &format!("10.0.{i}.0/24"), None);
            e.created_at_ms = i;
            Writer::upsert(&tx, &e).unwrap();
        }
        let mut odd = entry(ListKind::Allow, "192.0.2.0/24", None);
        odd.reason_id = Writer::reason_id(&tx, Some("100%_partner")).unwrap();
        odd.reason = Some("100%_partner".into());
        Writer::upsert(&tx, &odd).unwrap();
        Writer::upsert(&tx, &entry(ListKind::Block, "198.51.100.0/24", Some(5))).unwrap();
        tx.commit().unwrap();
        let all = db.search("", 10, 1000).unwrap();
        assert_eq!(all.len(), 51, "the expired entry is not shown");
        assert_eq!(db.search("", 10, 7).unwrap().len(), 7);
        assert_eq!(db.search("10.0.4", 10, 1000).unwrap().len(), 11);
        // LIKE's wildcards in the query are plain characters.
        let p = db.search("%_p", 10, 1000).unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(db.search("ALLOW", 10, 1000).unwrap().len(), 1);
    }

    #[test]
    fn entries_survive_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("ztag-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut db = StateDb::open(&dir).unwrap();
            let tx = db.transaction().unwrap();
            let id = Writer::reason_id(&tx, Some("scanner")).unwrap();
            let mut e = entry(ListKind::Block, "192.0.2.0/24", Some(5_000));
            e.reason_id = id;
            assert!(Writer::upsert(&tx, &e).unwrap());
            assert!(
                !Writer::upsert(&tx, &e).unwrap(),
                "second upsert is not new"
            );
            tx.commit().unwrap();
        }
        let db = StateDb::open(&dir).unwrap();
        let all = db.list(None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].reason.as_deref(), Some("scanner"));
        assert_eq!(all[0].cidr.to_string(), "192.0.2.0/24");
        let mode = std::fs::metadata(dir.join("ztag.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rolled_back_writes_leave_nothing() {
        let mut db = StateDb::in_memory().unwrap();
        {
            let tx = db.transaction().unwrap();
            Writer::upsert(&tx, &entry(ListKind::Allow, "10.0.0.0/8", None)).unwrap();
            // dropped without commit
        }
        assert!(db.list(None).unwrap().is_empty());
    }

    #[test]
    fn expired_finds_only_due_entries_and_reasons_are_shared() {
        let mut db = StateDb::in_memory().unwrap();
        let tx = db.transaction().unwrap();
        let a = Writer::reason_id(&tx, Some("x")).unwrap();
        let b = Writer::reason_id(&tx, Some("x")).unwrap();
        assert_eq!(a, b);
        assert_eq!(Writer::reason_id(&tx, None).unwrap(), 0);
        Writer::upsert(&tx, &entry(ListKind::Block, "192.0.2.1/32", Some(100))).unwrap();
        Writer::upsert(&tx, &entry(ListKind::Block, "192.0.2.2/32", Some(200))).unwrap();
        Writer::upsert(&tx, &entry(ListKind::Dynamic, "2001:db8::1/128", None)).unwrap();
        tx.commit().unwrap();
        let due = db.expired(150).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].cidr.to_string(), "192.0.2.1/32");
        let mut counts = db.counts().unwrap();
        counts.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(counts, vec![(ListKind::Block, 2), (ListKind::Dynamic, 1)]);
        let tx = db.transaction().unwrap();
        assert!(Writer::remove(&tx, ListKind::Block, &"192.0.2.1/32".parse().unwrap()).unwrap());
        assert!(!Writer::remove(&tx, ListKind::Block, &"192.0.2.1/32".parse().unwrap()).unwrap());
        tx.commit().unwrap();
    }
}

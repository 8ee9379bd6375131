//! Human-in-the-loop approvals. A request (or an MCP tool call) that needs
//! one is written to the state DB (`agent_approvals`) with everything
//! needed to send it later, approvers are notified (a signed webhook, an
//! OpenID CIBA request), and then either
//!
//! * **hold**: the caller's request waits (at most the approval timeout)
//!   and goes on when approved, or is refused when denied or timed out; or
//! * **async**: the caller gets `202 Accepted` with a status URL at once;
//!   when approved the gateway sends the stored request itself and keeps
//!   the answer for the status URL.
//!
//! A timeout is a denial. Decisions are atomic in SQLite (the first of
//! approve / deny / expire wins), survive restarts (a hold whose caller is
//! gone is sent like an async one when approved), and are audited.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    audit::{Audit, Record},
    config::{ApprovalsConfig, CibaConfig, WebhookConfig},
};
use crate::{authn::Authn, state::now_ms};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS agent_approvals (
    id            TEXT PRIMARY KEY,
    created_ms    INTEGER NOT NULL,
    deadline_ms   INTEGER NOT NULL,
    status        TEXT NOT NULL,
    mode          TEXT NOT NULL,
    route         TEXT NOT NULL,
    target        TEXT NOT NULL,
    subject       TEXT,
    client_id     TEXT,
    source        TEXT,
    why           TEXT NOT NULL,
    request       TEXT NOT NULL,
    decided_by    TEXT,
    decided_ms    INTEGER,
    note          TEXT,
    result        TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agent_approvals_pending ON agent_approvals (deadline_ms) WHERE status = 'pending';";

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a person.
    Pending,
    /// Approved.
    Approved,
    /// Denied.
    Denied,
    /// Nobody decided in time (a denial).
    Expired,
}

impl Status {
    /// The name stored and shown ("pending", "approved", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
        }
    }
    fn parse(s: &str) -> Status {
        match s {
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            _ => Status::Pending,
        }
    }
}

/// How the caller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The request is held open until decided.
    Hold,
    /// `202 Accepted` and a status URL.
    Async,
}

impl Mode {
    /// Parses `approval_mode`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "hold" => Some(Mode::Hold),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
}

/// The request as it will be sent upstream (identity headers set; the
/// caller's own `Authorization` and cookies are never stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRequest {
    /// Method.
    pub method: String,
    /// Normalised path and query.
    pub path_and_query: String,
    /// Host the client addressed.
    pub host: String,
    /// Headers for the upstream.
    pub headers: Vec<(String, String)>,
    /// Body, base64.
    pub body_b64: String,
}

/// The upstream's answer to an approved async request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredResult {
    /// HTTP status.
    pub status: u16,
    /// Content-Type, if any.
    pub content_type: Option<String>,
    /// Body, base64.
    pub body_b64: String,
}

/// An approval as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    /// Random id (also the capability in the status URL).
    pub id: String,
    /// When it was asked, ms since the epoch.
    pub created_ms: i64,
    /// When it expires.
    pub deadline_ms: i64,
    /// Where it stands.
    pub status: Status,
    /// Hold or async.
    pub mode: Mode,
    /// The route.
    pub route: String,
    /// What: `server/tool` or `METHOD /path`.
    pub target: String,
    /// Who asked.
    pub subject: Option<String>,
    /// Through which agent.
    pub client_id: Option<String>,
    /// From where.
    pub source: Option<String>,
    /// Why it needs a person.
    pub why: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_ms: Option<i64>,
    /// The approver's note.
    pub note: Option<String>,
    /// For async requests: whether the answer is stored.
    pub has_result: bool,
    /// Tool arguments or a body excerpt, for the approver (at most 2 KiB).
    pub summary: String,
}

/// What a new approval needs.
pub struct NewApproval {
    /// Hold or async.
    pub mode: Mode,
    /// Route name.
    pub route: String,
    /// `server/tool` or `METHOD /path`.
    pub target: String,
    /// Principal.
    pub subject: Option<String>,
    /// Agent.
    pub client_id: Option<String>,
    /// Peer.
    pub source: String,
    /// Why.
    pub why: String,
    /// What the approver reads.
    pub summary: String,
    /// How long to wait.
    pub timeout: Duration,
    /// To send later.
    pub request: StoredRequest,
}

/// A decision refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No such approval.
    #[error("no approval {0}")]
    NotFound(String),
    /// Already decided.
    #[error("approval {id} is already {status}")]
    Decided {
        /// The id.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// SQLite failed.
    #[error("approvals database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The approvals service.
pub struct Approvals {
    db: Arc<Mutex<Connection>>,
    cfg: ApprovalsConfig,
    audit: Audit,
    waiters: dashmap::DashMap<String, watch::Sender<Status>>,
    exec: mpsc::UnboundedSender<String>,
    notify: Notifier,
    pending: prometheus::IntGauge,
    decisions: prometheus::IntCounterVec,
}

struct Notifier {
    webhook: Option<(WebhookConfig, Vec<u8>, reqwest::Client)>,
    ciba: Option<(CibaConfig, reqwest::Client)>,
    authn: Arc<Authn>,
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `s` looks like an approval id.
pub fn valid_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let mode: String = r.get(4)?;
    Ok(Approval {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        deadline_ms: r.get(2)?,
        status: Status::parse(&r.get::<_, String>(3)?),
        mode: Mode::parse(&mode).unwrap_or(Mode::Hold),
        route: r.get(5)?,
        target: r.get(6)?,
        subject: r.get(7)?,
        client_id: r.get(8)?,
        source: r.get(9)?,
        why: r.get(10)?,
        decided_by: r.get(11)?,
        decided_ms: r.get(12)?,
        note: r.get(13)?,
        has_result: r.get::<_, Option<String>>(14)?.is_some(),
        summary: r.get(15)?,
    })
}

const COLUMNS: &str = "id, created_ms, deadline_ms, status, mode, route, target, subject, client_id, source, why, decided_by, decided_ms, note, result, coalesce(json_extract(request, '$.summary'), '')";

impl Approvals {
    /// Opens the table, starts nothing yet (see [`Approvals::run`]).
    /// Returns the service and the queue of approved requests the gateway
    /// must send.
    pub fn open(
        db: Arc<Mutex<Connection>>,
        cfg: &ApprovalsConfig,
        audit: Audit,
        authn: Arc<Authn>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<(Arc<Approvals>, mpsc::UnboundedReceiver<String>)> {
        db.lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_batch(TABLE)?;
        let webhook = match &cfg.webhook {
            None => None,
            Some(w) => {
                let secret = std::fs::read_to_string(&w.secret_file).map_err(|e| {
                    anyhow::anyhow!(
                        "agent.approvals.webhook.secret_file {}: {e}",
                        w.secret_file.display()
                    )
                })?;
                let secret = secret.trim().as_bytes().to_vec();
                if secret.len() < 16 {
                    anyhow::bail!(
                        "agent.approvals.webhook.secret_file {}: the secret must be at least 16 characters",
                        w.secret_file.display()
                    );
                }
                let ca = w.ca.as_ref().map(std::fs::read).transpose()?;
                let http = crate::authn::jwks::http_client(ca.as_deref())
                    .map_err(|e| anyhow::anyhow!("agent.approvals.webhook: {e}"))?;
                Some((w.clone(), secret, http))
            }
        };
        let ciba = match &cfg.ciba {
            None => None,
            Some(c) => {
                if authn.outbound().is_none() {
                    anyhow::bail!(
                        "agent.approvals.ciba needs [authn.outbound] (ztag authenticates at the IdP with private_key_jwt)"
                    );
                }
                let ca = c.ca.as_ref().map(std::fs::read).transpose()?;
                let http = crate::authn::jwks::http_client(ca.as_deref())
                    .map_err(|e| anyhow::anyhow!("agent.approvals.ciba: {e}"))?;
                Some((c.clone(), http))
            }
        };
        let pending = prometheus::IntGauge::new(
            "ztag_approvals_pending",
            "Approvals waiting for a decision",
        )?;
        let decisions = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ztag_approvals_decisions_total",
                "Approval outcomes (approved, denied, expired)",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let a = Arc::new(Approvals {
            db,
            cfg: cfg.clone(),
            audit,
            waiters: dashmap::DashMap::new(),
            exec: tx,
            notify: Notifier {
                webhook,
                ciba,
                authn,
            },
            pending,
            decisions,
        });
        a.refresh_gauge();
        Ok((a, rx))
    }

    /// The configured default timeout.
    pub fn default_timeout(&self) -> Duration {
        self.cfg.timeout
    }

    /// The base of status URLs, if configured.
    pub fn public_url(&self) -> Option<&str> {
        self.cfg.public_url.as_deref()
    }

    fn refresh_gauge(&self) {
        let n: i64 = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                "SELECT count(*) FROM agent_approvals WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        self.pending.set(n);
    }

    /// Background work: expiring approvals past their deadline. Runs forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.expire_due() {
                warn!("expiring approvals: {e}");
            }
        }
    }

    fn expire_due(&self) -> rusqlite::Result<()> {
        let now = now_ms();
        let ids: Vec<String> = {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = db.prepare_cached(
                "UPDATE agent_approvals SET status = 'expired', decided_ms = ?1, decided_by = 'timeout'
                  WHERE status = 'pending' AND deadline_ms <= ?1 RETURNING id",
            )?;
            st.query_map(params![now], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for id in ids {
            self.decided(&id, Status::Expired, "timeout", None);
        }
        Ok(())
    }

    /// Records a new approval and notifies approvers. For `Mode::Hold`
    /// the returned receiver changes when it is decided.
    pub fn create(
        self: &Arc<Self>,
        n: NewApproval,
    ) -> Result<(Approval, watch::Receiver<Status>), DecideError> {
        let id = random_id();
        let created = now_ms();
        let deadline = created + n.timeout.as_millis() as i64;
        let mut summary = n.summary;
        if summary.len() > 2048 {
            let mut cut = 2048;
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push('…');
        }
        let mut req = serde_json::to_value(&n.request).unwrap_or(Value::Null);
        req["summary"] = json!(summary);
        let (tx, rx) = watch::channel(Status::Pending);
        if n.mode == Mode::Hold {
            self.waiters.insert(id.clone(), tx);
        }
        self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "INSERT INTO agent_approvals (id, created_ms, deadline_ms, status, mode, route, target, subject, client_id, source, why, request)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                id,
                created,
                deadline,
                if n.mode == Mode::Hold { "hold" } else { "async" },
                n.route,
                n.target,
                n.subject,
                n.client_id,
                n.source,
                n.why,
                req.to_string()
            ],
        ).inspect_err(|_| {
            self.waiters.remove(&id);
        })?;
        self.pending.inc();
        let a = Approval {
            id: id.clone(),
            created_ms: created,
            deadline_ms: deadline,
            status: Status::Pending,
            mode: n.mode,
            route: n.route,
            target: n.target,
            subject: n.subject,
            client_id: n.client_id,
            source: Some(n.source),
            why: n.why,
            decided_by: None,
            decided_ms: None,
            note: None,
            has_result: false,
            summary,
        };
        info!(id = %a.id, route = %a.route, target = %a.target, subject = a.subject.as_deref().unwrap_or("-"), why = %a.why, "approval requested");
        self.audit.write(Record {
            time_ms: created,
            kind: "approval".into(),
            route: a.route.clone(),
            subject: a.subject.clone(),
            client_id: a.client_id.clone(),
            source: a.source.clone(),
            target: a.target.clone(),
            decision: "requested".into(),
            reason: Some(a.why.clone()),
            detail: Some(json!({"approval": a.id}).to_string()),
            ..Default::default()
        });
        let me = self.clone();
        let shown = a.clone();
        tokio::spawn(async move { me.notify(shown).await });
        Ok((a, rx))
    }

    /// A hold-mode caller gave up (it returns the final status, which may
    /// have been decided meanwhile).
    pub fn release(&self, id: &str) {
        self.waiters.remove(id);
    }

    /// Approve or deny. `by` names the approver.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<Approval, DecideError> {
        let status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        let n = self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "UPDATE agent_approvals SET status = ?2, decided_by = ?3, decided_ms = ?4, note = ?5
              WHERE id = ?1 AND status = 'pending'",
            params![id, status.as_str(), by, now_ms(), note],
        )?;
        if n == 0 {
            return match self.get(id)? {
                None => Err(DecideError::NotFound(id.into())),
                Some(a) => Err(DecideError::Decided {
                    id: id.into(),
                    status: a.status.as_str(),
                }),
            };
        }
        self.decided(id, status, by, note);
        self.get(id)?
            .ok_or_else(|| DecideError::NotFound(id.into()))
    }

    /// After the row changed: wake the waiter (or queue the request),
    /// count and audit.
    fn decided(&self, id: &str, status: Status, by: &str, note: Option<&str>) {
        self.pending.dec();
        self.decisions.with_label_values(&[status.as_str()]).inc();
        let live = match self.waiters.remove(id) {
            Some((_, tx)) => tx.send(status).is_ok(),
            None => false,
        };
        if status == Status::Approved && !live {
            // Async, or a hold whose caller is gone (e.g. across a restart).
            let _ = self.exec.send(id.to_string());
        }
        let a = self.get(id).ok().flatten();
        info!(id, decision = status.as_str(), by, "approval decided");
        self.audit.write(Record {
            time_ms: now_ms(),
            kind: "approval".into(),
            route: a.as_ref().map(|a| a.route.clone()).unwrap_or_default(),
            subject: a.as_ref().and_then(|a| a.subject.clone()),
            client_id: a.as_ref().and_then(|a| a.client_id.clone()),
            source: a.as_ref().and_then(|a| a.source.clone()),
            target: a.as_ref().map(|a| a.target.clone()).unwrap_or_default(),
            decision: status.as_str().into(),
            reason: note.map(str::to_string),
            detail: Some(json!({"approval": id, "by": by}).to_string()),
            ..Default::default()
        });
    }

    /// Expires a pending approval now (a hold whose wait ran out before
    /// the sweeper saw it); returns its final status.
    pub fn expire_now(&self, id: &str) -> rusqlite::Result<Status> {
        let n = self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "UPDATE agent_approvals SET status = 'expired', decided_ms = ?2, decided_by = 'timeout'
              WHERE id = ?1 AND status = 'pending'",
            params![id, now_ms()],
        )?;
        if n > 0 {
            self.decided(id, Status::Expired, "timeout", None);
        }
        Ok(self.get(id)?.map(|a| a.status).unwrap_or(Status::Expired))
    }

    /// One approval.
    pub fn get(&self, id: &str) -> rusqlite::Result<Option<Approval>> {
        self.db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                &format!("SELECT {COLUMNS} FROM agent_approvals WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
    }

    /// Newest first; `status` narrows.
    pub fn list(&self, status: Option<Status>, limit: usize) -> rusqlite::Result<Vec<Approval>> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = db.prepare(&format!(
            "SELECT {COLUMNS} FROM agent_approvals WHERE ?1 IS NULL OR status = ?1 ORDER BY created_ms DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![status.map(|s| s.as_str()), limit as i64], row)?;
        rows.collect()
    }

    /// The stored request (to send once approved).
    pub fn request(&self, id: &str) -> rusqlite::Result<Option<StoredRequest>> {
        let s: Option<String> = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                "SELECT request FROM agent_approvals WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// The stored answer.
    pub fn result(&self, id: &str) -> rusqlite::Result<Option<StoredResult>> {
        let s: Option<Option<String>> = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                "SELECT result FROM agent_approvals WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.flatten().and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Keeps the upstream's answer to an approved async request.
    pub fn store_result(&self, id: &str, r: &StoredResult) -> rusqlite::Result<()> {
        self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "UPDATE agent_approvals SET result = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(r).unwrap_or_default()],
        )?;
        Ok(())
    }

    async fn notify(self: Arc<Self>, a: Approval) {
        if let Some((w, secret, http)) = &self.notify.webhook {
            let body = json!({
                "type": "approval.requested",
                "approval": a,
                "status_url": self.cfg.public_url.as_ref().map(|u| format!("{u}/.ztag/approvals/{}", a.id)),
            })
            .to_string();
            let t = now_ms() / 1000;
            let sig = webhook_signature(secret, t, body.as_bytes());
            let r = http
                .post(&w.url)
                .header("content-type", "application/json")
                .header("x-ztag-signature", format!("t={t},v1={sig}"))
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    debug!(id = %a.id, "approval webhook delivered")
                }
                Ok(r) => warn!(id = %a.id, status = %r.status(), "approval webhook refused"),
                Err(e) => warn!(id = %a.id, "approval webhook failed: {e}"),
            }
        }
        if let Some((c, http)) = &self.notify.ciba
            && let Err(e) = self.ciba(c, http, &a).await
        {
            warn!(id = %a.id, "CIBA approval request: {e}");
        }
    }

    /// OpenID CIBA (poll mode): ask the IdP to authenticate the approver
    /// with a binding message naming the action; a token means approved,
    /// `access_denied` denied; `expired_token` leaves it to the timeout.
    async fn ciba(
        &self,
        c: &CibaConfig,
        http: &reqwest::Client,
        a: &Approval,
    ) -> Result<(), String> {
        let signer = self.notify.authn.outbound().ok_or("no [authn.outbound]")?;
        let binding: String = format!("ztag {} {}", &a.id[..8], a.target)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || " _-/.:".contains(*c))
            .take(64)
            .collect();
        let form = |extra: Vec<(&str, String)>, aud: &str| -> Result<String, String> {
            let assertion = signer.sign(aud).map_err(|e| e.to_string())?;
            let mut f = form_urlencoded::Serializer::new(String::new());
            for (k, v) in extra {
                f.append_pair(k, &v);
            }
            f.append_pair("client_id", signer.client_id());
            f.append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            f.append_pair("client_assertion", &assertion);
            Ok(f.finish())
        };
        let body = form(
            vec![
                ("scope", c.scope.clone()),
                ("login_hint", c.login_hint.clone()),
                ("binding_message", binding),
                (
                    "requested_expiry",
                    ((a.deadline_ms - now_ms()).max(1000) / 1000).to_string(),
                ),
            ],
            &c.backchannel_endpoint,
        )?;
        let r = http
            .post(&c.backchannel_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "backchannel endpoint answered {status}: {}",
                v.get("error").and_then(Value::as_str).unwrap_or("?")
            ));
        }
        let req_id = v
            .get("auth_req_id")
            .and_then(Value::as_str)
            .ok_or("no auth_req_id")?
            .to_string();
        let mut interval = v
            .get("interval")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(c.poll_interval);
        loop {
            tokio::time::sleep(interval).await;
            match self.get(&a.id).map_err(|e| e.to_string())? {
                Some(x) if x.status == Status::Pending => {}
                _ => return Ok(()),
            }
            let body = form(
                vec![
                    ("grant_type", "urn:openid:params:grant-type:ciba".into()),
                    ("auth_req_id", req_id.clone()),
                ],
                &c.token_endpoint,
            )?;
            let r = http
                .post(&c.token_endpoint)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(id = %a.id, "CIBA poll: {e}");
                    continue;
                }
            };
            let ok = r.status().is_success();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            let by = format!("ciba:{}", c.login_hint);
            if ok && v.get("access_token").is_some() {
                let _ = self.decide(&a.id, true, &by, Some("approved through CIBA"));
                return Ok(());
            }
            match v.get("error").and_then(Value::as_str) {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                Some("access_denied") => {
                    let _ = self.decide(&a.id, false, &by, Some("denied through CIBA"));
                    return Ok(());
                }
                Some("expired_token") => return Ok(()),
                other => return Err(format!("token endpoint: {other:?}")),
            }
        }
    }
}

/// `HMAC-SHA256(secret, "{t}." + body)`, hex: the `v1` of the
/// `x-ztag-signature: t=…,v1=…` header (a receiver checks it and that `t`
/// is recent).
pub fn webhook_signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    ctx.update(format!("{t}.").as_bytes());
    ctx.update(body);
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64 of a body, for storage.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes [`b64`].
pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

//! The admin API: HTTP/1.1 on a Unix socket (mode 0600, root only), used by
//! the CLI. JSON in and out; errors are `{"error": "..."}` with a status that
//! says whose fault it was (400 bad input, 404 unknown entry, 500 internal).

pub mod agent;
pub mod client;
pub mod overview;
pub mod ui;

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::{
    state::ListKind,
    xdp::lists::{AddSpec, Enforcer, ListError},
};

/// Largest JSON request body.
const MAX_JSON_BODY: usize = 64 * 1024;
/// Largest import body (about 10M lines of IPv4 prefixes).
pub const MAX_IMPORT_BODY: usize = 512 * 1024 * 1024;
/// Drop events kept for `GET /v1/events`.
pub const RECENT_EVENTS: usize = 1024;

/// A drop event as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventView {
    /// Source address.
    pub source: String,
    /// Interface name.
    pub interface: String,
    /// Counter reason label ("blocklist", "dynamic", ...).
    pub reason: String,
    /// The entry's reason text id (0: none).
    pub reason_id: u32,
    /// Wall-clock time, ms since the epoch.
    pub time_ms: i64,
}

/// What the daemon shares with the admin API and the metrics endpoint.
pub struct Shared {
    /// Lists, maps and DB; `None` when the kernel plane is disabled
    /// (`xdp.enabled = false`).
    pub enforcer: Option<Mutex<Enforcer>>,
    /// Recent sampled drop events, newest last.
    pub events: Mutex<VecDeque<EventView>>,
    /// Attachments as "iface (mode)" strings, for health.
    pub interfaces: Vec<(String, String)>,
    /// The embedded FGA stores (OpenFGA-compatible API under `/stores`).
    pub authz: Option<Arc<crate::authz::service::Authz>>,
    /// Vault, approvals and audit (`/v1/vault`, `/v1/approvals`, `/v1/audit`).
    pub agent: Option<Arc<crate::agent::Agent>>,
    /// The risk engine (`/v1/risk/top`, `/v1/risk/decisions`).
    pub risk: Option<Arc<crate::risk::engine::Engine>>,
    /// Sampled XDP drops per source (the dashboard's hit counts).
    pub hits: ui::Hits,
    /// Fleet mode (`/v1/fleet`).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// One counter row of `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatRow {
    /// Interface name.
    pub interface: String,
    /// "pass" or "drop".
    pub action: String,
    /// Reason label.
    pub reason: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Body of `POST /v1/lists/{kind}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// Prefix or address.
    pub cidr: String,
    /// Time to live in seconds; absent: permanent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Free-text reason.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `POST /v1/lists/{kind}/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Prefix or address.
    pub cidr: String,
}

/// Answer of an import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResponse {
    /// Entries written.
    pub imported: usize,
    /// Time spent, ms.
    pub elapsed_ms: u64,
}

/// Binds the socket (replacing a stale one), mode 0600.
/// With `group`, the socket is given to that group with mode 0660 (its
/// members can use the CLI); otherwise it is 0600.
pub fn bind(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket file refuses.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another ztag daemon is already serving {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Create the socket with no permissions for group/other from the start.
    // SAFETY: umask is process-wide but only changed around bind, at start.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l?;
    match group {
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?,
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
    }
    Ok(l)
}

/// Serves the admin API until the listener fails.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("admin connection: {e}");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn list_error(e: ListError) -> Resp {
    let status = match &e {
        ListError::BadInput(_) | ListError::BadLines(_) => StatusCode::BAD_REQUEST,
        ListError::NotFound(..) => StatusCode::NOT_FOUND,
        ListError::State(_) | ListError::Xdp(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ListError::Disabled | ListError::FleetQueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        warn!("admin request failed: {e}");
    }
    error(status, e)
}

async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {limit} bytes: {e}"),
        )),
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Largest FGA API body (imports included).
const MAX_FGA_BODY: usize = 256 * 1024 * 1024;

/// The OpenFGA-compatible API: `/stores...`.
async fn fga(req: Request<Incoming>, shared: &Shared) -> Resp {
    let Some(authz) = shared.authz.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the FGA engine is not running",
        );
    };
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match body(req, MAX_FGA_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Checks take microseconds; imports and big writes may take longer:
    // off the async workers either way.
    let answer = tokio::task::spawn_blocking(move || {
        crate::authz::api::handle(&authz, &method, &path, &query, &body)
    })
    .await;
    match answer {
        Ok(a) => {
            let status =
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match a.body {
                Some(v) => json(status, &v),
                None => Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            }
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("FGA request failed: {e}"),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Resp, hyper::Error> {
    let path = req.uri().path().to_string();
    if path == "/stores" || path.starts_with("/stores/") {
        return Ok(fga(req, &shared).await);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.first() == Some(&"v1")
        && matches!(parts.get(1), Some(&"vault" | &"approvals" | &"audit"))
    {
        let p = parts.clone();
        return Ok(match agent::handle(req, &p, &shared).await {
            Some(r) => r,
            None => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        });
    }
    let resp = match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["v1", "health"]) => json(
            StatusCode::OK,
            &serde_json::json!({
                "ok": true,
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "interfaces": shared.interfaces.iter().map(|(i, m)| serde_json::json!({"interface": i, "mode": m})).collect::<Vec<_>>(),
            }),
        ),
        (Method::GET, ["v1", "lists", kind]) => match ListKind::parse(kind) {
            None => error(StatusCode::NOT_FOUND, format!("no list {kind:?}")),
            Some(k) => {
                let r = lock(&shared).and_then(|e| e.list(Some(k)));
                match r {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => list_error(e),
                }
            }
        },
        (Method::POST, ["v1", "lists", kind]) => {
            let Some(k) = ListKind::parse(kind) else {
                return Ok(error(StatusCode::NOT_FOUND, format!("no list {kind:?}")));
            };
            let b = match body(req, MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            match serde_json::from_slice::<AddRequest>(&b) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
                Ok(a) => {
                    let spec = AddSpec {
                        ttl: a.ttl_secs.map(Duration::from_secs),
                        reason: a.reason,
                        origin: crate::state::Origin::Cli,
                    };
                    let r = lock(&shared).and_then(|mut e| e.add(k, &a.cidr, &spec));
                    match r {
                        Ok(v) => json(StatusCode::CREATED, &v),
                        Err(e) => list_error(e),
                    }
                }
            }
        }
        (Method::POST, ["v1", "lists", kind, "remove"]) => {
            let Some(k) = ListKind::parse(kind) else {
                return Ok(error(StatusCode::NOT_FOUND, format!("no list {kind:?}")));
            };
            let b = match body(req, MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            match serde_json::from_slice::<RemoveRequest>(&b) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
                Ok(r) => {
                    let res = lock(&shared).and_then(|mut e| e.remove(k, &r.cidr));
                    match res {
                        Ok(()) => json(StatusCode::OK, &serde_json::json!({"removed": r.cidr})),
                        Err(e) => list_error(e),
                    }
                }
            }
        }
        (Method::POST, ["v1", "lists", kind, "import"]) => {
            let Some(k) = ListKind::parse(kind) else {
                return Ok(error(StatusCode::NOT_FOUND, format!("no list {kind:?}")));
            };
            let ttl = match query_param(&req, "ttl_secs").map(|s| s.parse::<u64>()) {
                None => None,
                Some(Ok(n)) => Some(Duration::from_secs(n)),
                Some(Err(_)) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        "ttl_secs must be a whole number",
                    ));
                }
            };
            let reason = query_param(&req, "reason");
            let b = match body(req, MAX_IMPORT_BODY).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            let Ok(text) = String::from_utf8(b.to_vec()) else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "import body is not UTF-8 text",
                ));
            };
            let started = std::time::Instant::now();
            let shared2 = shared.clone();
            let r = tokio::task::spawn_blocking(move || {
                lock(&shared2).and_then(|mut e| {
                    e.import(
                        k,
                        &text,
                        &AddSpec {
                            ttl,
                            reason,
                            origin: crate::state::Origin::Cli,
                        },
                    )
                })
            })
            .await;
            match r {
                Ok(Ok(n)) => json(
                    StatusCode::OK,
                    &ImportResponse {
                        imported: n,
                        elapsed_ms: started.elapsed().as_millis() as u64,
                    },
                ),
                Ok(Err(e)) => list_error(e),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("import task failed: {e}"),
                ),
            }
        }
        (Method::GET, ["v1", "risk", what]) => match &shared.risk {
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the risk engine is off ([risk] enabled = false)",
            ),
            Some(r) => {
                let limit = query_param(&req, "limit").and_then(|s| s.parse().ok());
                match *what {
                    "top" => json(StatusCode::OK, &r.top(limit.unwrap_or(20))),
                    "busiest" => {
                        let rows: Vec<serde_json::Value> = r
                            .busiest(limit.unwrap_or(10))
                            .into_iter()
                            .map(|(ip, n)| {
                                serde_json::json!({"source": ip.to_string(), "requests": n})
                            })
                            .collect();
                        json(StatusCode::OK, &rows)
                    }
                    "decisions" => json(StatusCode::OK, &r.decisions()),
                    _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
                }
            }
        },
        (Method::GET, ["v1", "fleet"]) => match &shared.fleet {
            None => error(
                StatusCode::NOT_FOUND,
                "fleet mode is off (no [fleet] redis = ... in the config)",
            ),
            Some(f) => {
                let mut s = f.status();
                // The outbox as it is now, not as the sender last saw it.
                if let Ok(e) = lock(&shared)
                    && let Ok(n) = e.outbox_len()
                {
                    s.queued = n;
                }
                json(StatusCode::OK, &s)
            }
        },
        (Method::GET, ["v1", "stats"]) => match stats(&shared) {
            Ok(rows) => json(StatusCode::OK, &rows),
            Err(e) => list_error(e),
        },
        (Method::GET, ["v1", "events"]) => {
            let limit = query_param(&req, "limit")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(100);
            let ev = shared.events.lock().unwrap_or_else(|p| p.into_inner());
            let v: Vec<&EventView> = ev.iter().rev().take(limit).collect();
            json(StatusCode::OK, &v)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", req.method()),
        ),
    };
    Ok(resp)
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Enforcer>, ListError> {
    // A panic while holding the lock leaves the maps and DB consistent (each
    // step commits only after both agree), so a poisoned lock is usable.
    match &shared.enforcer {
        Some(e) => Ok(e.lock().unwrap_or_else(|p| p.into_inner())),
        None => Err(ListError::Disabled),
    }
}

/// Counter rows per interface, action and reason.
pub fn stats(shared: &Shared) -> Result<Vec<StatRow>, ListError> {
    let e = match lock(shared) {
        Ok(e) => e,
        Err(ListError::Disabled) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let counters = e.plane().counters()?;
    let names = e.plane().interface_names();
    let mut rows = Vec::new();
    for (ifindex, c) in counters {
        let iface = names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("ifindex{ifindex}"));
        for r in ztag_common::Reason::ALL {
            let v = c.by_reason[r as usize];
            rows.push(StatRow {
                interface: iface.clone(),
                action: r.action_label().into(),
                reason: r.label().into(),
                packets: v.packets,
                bytes: v.bytes,
            });
        }
    }
    Ok(rows)
}

//! The admin web dashboard, served on the optional TCP admin listener
//! (`admin.listen`), never on a gateway listener.
//!
//! * Assets (`/`, `/ui/app.js`, `/ui/app.css`, `/ui/icon.svg`) are embedded
//!   in the binary and sent with a strict Content-Security-Policy (no
//!   inline script or style, nothing from another origin).
//! * `POST /ui/api/login` with the admin token (or, when `admin.client_ca`
//!   is set, on a connection that presented a verified client certificate)
//!   opens a session: an `HttpOnly`, `SameSite=Strict` cookie plus a CSRF
//!   token that every state-changing request must echo in `X-CSRF-Token`;
//!   cross-site `Origin`/`Sec-Fetch-Site` values are refused as well.
//! * `/ui/api/*` is the page's JSON API; `Authorization: Bearer <token>`
//!   works there too (for scripts: no cookie, so no CSRF check).
//! * `/stores…` (OpenFGA API) and `/v1/health` take the bearer token only.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    MAX_JSON_BODY, Resp, Shared, body, constant_time_eq, error, json, lock, overview::Series,
    query_param,
};
use crate::{
    risk::engine::Key,
    state::{ListKind, Origin},
    xdp::lists::{AddSpec, EntryView},
};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The policy every page and asset is sent with.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self'; connect-src 'self'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

/// Sessions end after this long without a request…
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// …and after this long whatever happens.
const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// Failed logins allowed per source per minute.
const LOGIN_FAILURES_PER_MIN: u32 = 10;
/// Rows the blocklist view returns at most.
const MAX_ROWS: usize = 1000;
/// Sources whose sampled drops are counted (the rest are not).
pub const MAX_HIT_SOURCES: usize = 65_536;

struct Session {
    csrf: String,
    who: String,
    created: Instant,
    last: Instant,
}

/// A route as the routes page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// Route name (the metric label).
    pub name: String,
    /// Hosts matched (empty: any).
    pub hosts: Vec<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Methods (empty: any).
    pub methods: Vec<String>,
    /// Upstream pool name.
    pub upstream: String,
    /// Authentication providers, or "public".
    pub authenticate: Vec<String>,
    /// Scopes required.
    pub require_scopes: Vec<String>,
    /// FGA checks on the route.
    pub authz_checks: usize,
    /// `inspect = …` and its action.
    pub inspect: Option<String>,
    /// Response content filter action.
    pub filter: Option<String>,
    /// MCP server route.
    pub mcp: bool,
    /// Vault credential injected.
    pub credential: Option<String>,
    /// Human approval mode.
    pub approval: Option<String>,
    /// Static rate limits (per second).
    pub rate_limit: Vec<String>,
}

impl RouteView {
    /// Every route of a gateway config, in match order.
    pub fn all(g: &crate::proxy::config::GatewayConfig) -> Vec<RouteView> {
        g.routes
            .iter()
            .map(|r| RouteView {
                name: r.name.clone(),
                hosts: r.hosts.clone(),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.iter().map(|m| m.to_string()).collect(),
                upstream: g
                    .upstreams
                    .get(r.upstream)
                    .map(|u| u.name.clone())
                    .unwrap_or_default(),
                authenticate: if r.public {
                    vec!["public".into()]
                } else {
                    r.authenticate.clone()
                },
                require_scopes: r.require_scopes.clone(),
                authz_checks: r.authz.len(),
                inspect: r
                    .inspect
                    .as_ref()
                    .map(|i| format!("{:?} ({:?})", i.mode, i.action).to_ascii_lowercase()),
                filter: r
                    .filter
                    .as_ref()
                    .map(|f| format!("{:?}", f.action).to_ascii_lowercase()),
                mcp: r.mcp.is_some(),
                credential: r.credential.clone(),
                approval: r
                    .approval
                    .as_ref()
                    .map(|a| format!("{:?}", a.mode).to_ascii_lowercase()),
                rate_limit: [
                    ("per source", r.rate_limit.per_source),
                    ("per principal", r.rate_limit.per_principal),
                ]
                .into_iter()
                .filter_map(|(w, r)| r.map(|r| format!("{w}: {}/s, burst {}", r.per_sec, r.burst)))
                .collect(),
            })
            .collect()
    }
}

/// Sampled XDP drops per source, to show hit counts next to entries.
#[derive(Default)]
pub struct Hits {
    /// (dropped by a dynamic entry, source) → sampled drops.
    map: Mutex<HashMap<(bool, IpAddr), u64>>,
}

impl Hits {
    /// Counts one sampled drop (reason label "blocklist" or "dynamic").
    pub fn record(&self, reason: &str, source: IpAddr) {
        let dynamic = match reason {
            "blocklist" => false,
            "dynamic" => true,
            _ => return,
        };
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let len = m.len();
        match m.get_mut(&(dynamic, source)) {
            Some(n) => *n += 1,
            None if len < MAX_HIT_SOURCES => {
                m.insert((dynamic, source), 1);
            }
            None => {}
        }
    }

    /// Sampled drops per entry: a dynamic entry's are its address's; a
    /// static one's are those of the sources it is the longest match for.
    pub fn per_entry(&self, entries: &[EntryView]) -> HashMap<(ListKind, IpNet), u64> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let block: std::collections::HashSet<IpNet> = entries
            .iter()
            .filter(|e| e.kind == ListKind::Block)
            .filter_map(|e| e.cidr.parse().ok())
            .collect();
        let mut out: HashMap<(ListKind, IpNet), u64> = HashMap::new();
        for (&(dynamic, ip), &n) in m.iter() {
            if dynamic {
                *out.entry((ListKind::Dynamic, IpNet::from(ip))).or_default() += n;
                continue;
            }
            let max = if ip.is_ipv4() { 32 } else { 128 };
            for len in (0..=max).rev() {
                let Ok(net) = IpNet::new(ip, len).map(|n| n.trunc()) else {
                    continue;
                };
                if block.contains(&net) {
                    *out.entry((ListKind::Block, net)).or_default() += n;
                    break;
                }
            }
        }
        out
    }
}

/// The dashboard's state.
pub struct Dashboard {
    token: Option<Arc<str>>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    series: Arc<Series>,
    routes: Vec<RouteView>,
    config_text: Arc<str>,
    tls: bool,
    sample_one_in: u32,
}

/// What a connection proved before any request.
#[derive(Clone)]
pub struct Conn {
    /// Peer address.
    pub peer: SocketAddr,
    /// Subject of a verified client certificate.
    pub cert: Option<String>,
}

fn random_token() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Writes a new random admin token to `path` (mode 0600, directory 0700),
/// failing if the file exists.
pub fn write_new_token(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, format!("{}\n", random_token()).as_bytes())?;
    f.sync_all()
}

impl Dashboard {
    /// A dashboard for a daemon's config.
    pub fn new(
        token: Option<Arc<str>>,
        series: Arc<Series>,
        config: &crate::config::Config,
    ) -> Dashboard {
        Dashboard {
            token,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            series,
            routes: RouteView::all(&config.gateway),
            config_text: config.text.clone(),
            tls: config.admin.tls.is_some(),
            sample_one_in: config.xdp.events_sample_one_in.max(1),
        }
    }

    fn cookie_name(&self) -> &'static str {
        // The __Host- prefix (Secure, Path=/, no Domain) needs HTTPS.
        if self.tls {
            "__Host-ztag_session"
        } else {
            "ztag_session"
        }
    }

    fn bearer_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(t) = &self.token else { return false };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|p| constant_time_eq(p.as_bytes(), t.as_bytes()))
    }

    fn session_id(&self, req: &Request<Incoming>) -> Option<String> {
        let name = self.cookie_name();
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// The live session of this request: (id, csrf, who).
    fn session(&self, req: &Request<Incoming>) -> Option<(String, String, String)> {
        let id = self.session_id(req)?;
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let live = match s.get_mut(&id) {
            Some(x) if now - x.last < SESSION_IDLE && now - x.created < SESSION_MAX => {
                x.last = now;
                Some((id.clone(), x.csrf.clone(), x.who.clone()))
            }
            _ => None,
        };
        if live.is_none() {
            s.remove(&id);
        }
        live
    }

    fn open_session(&self, who: String) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.retain(|_, x| now - x.last < SESSION_IDLE && now - x.created < SESSION_MAX);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s.iter().min_by_key(|(_, x)| x.last).map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                who,
                created: now,
                last: now,
            },
        );
        (id, csrf)
    }

    fn cookie(&self, id: &str, max_age: u64) -> HeaderValue {
        let secure = if self.tls { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.cookie_name()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn too_many_failures(&self, ip: IpAddr) -> bool {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.get(&ip).is_some_and(|(n, t)| {
            *n >= LOGIN_FAILURES_PER_MIN && t.elapsed() < Duration::from_secs(60)
        })
    }

    fn failed_login(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 4096 {
            f.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(60));
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Duration::from_secs(60) {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// A request that a browser on another site could have made: a foreign
/// `Origin`, or `Sec-Fetch-Site` other than same-origin/none.
fn cross_site(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!("Sec-Fetch-Site: {site}"));
    }
    if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let bare = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        if bare != host {
            return Some(format!("Origin {origin} is not this listener ({host})"));
        }
    }
    None
}

fn with_security_headers(mut r: Resp) -> Resp {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn asset(content_type: &'static str, text: &'static str) -> Resp {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListAdd {
    list: String,
    cidr: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRemove {
    list: String,
    cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAction {
    /// "source", "prefix", "subject" or "client".
    r#type: String,
    id: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Verdict {
    #[serde(default)]
    note: Option<String>,
}

/// Lists the dashboard may change (dynamic entries are the risk engine's;
/// they can be removed but not added here).
fn list_kind(s: &str, adding: bool) -> Result<ListKind, String> {
    match (ListKind::parse(s), adding) {
        (Some(ListKind::Dynamic), true) => {
            Err("dynamic entries are the risk engine's; add to \"block\" or \"allow\"".into())
        }
        (Some(k), _) => Ok(k),
        (None, _) => Err(format!(
            "list {s:?} is not \"block\", \"allow\" or \"dynamic\""
        )),
    }
}

async fn parse<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let b = body(req, MAX_JSON_BODY).await?;
    serde_json::from_slice(if b.is_empty() { b"{}" } else { &b })
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// The key of a top-sources row.
fn key_of(a: &KeyAction) -> Result<Key, String> {
    let bad = |w: String| w;
    Ok(match a.r#type.as_str() {
        "source" => Key::Source(
            a.id.parse()
                .map_err(|_| bad(format!("{:?} is not an address", a.id)))?,
        ),
        "prefix" => Key::Prefix(
            a.id.parse()
                .map_err(|_| bad(format!("{:?} is not a prefix", a.id)))?,
        ),
        "subject" => Key::Subject(Arc::from(a.id.as_str())),
        "client" => Key::Client(Arc::from(a.id.as_str())),
        t => {
            return Err(bad(format!(
                "type {t:?} is not source, prefix, subject or client"
            )));
        }
    })
}

impl Dashboard {
    /// Handles one request on the TCP admin listener.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Conn,
        shared: Arc<Shared>,
    ) -> Result<Resp, hyper::Error> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // The machine API: bearer token only, as before the dashboard.
        if path == "/stores" || path.starts_with("/stores/") || path == "/v1/health" {
            if !self.bearer_ok(&req) {
                return Ok(unauthorized("admin token required"));
            }
            return if path == "/v1/health" {
                super::handle(req, shared).await
            } else {
                Ok(super::fga(req, &shared).await)
            };
        }
        let r = match (method.clone(), path.as_str()) {
            (Method::GET, "/" | "/index.html") => asset("text/html; charset=utf-8", INDEX_HTML),
            (Method::GET, "/ui/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
            (Method::GET, "/ui/app.css") => asset("text/css; charset=utf-8", APP_CSS),
            (Method::GET, "/ui/icon.svg" | "/favicon.ico") => asset("image/svg+xml", ICON_SVG),
            (_, p) if p.starts_with("/ui/api/") => self.api(req, &conn, &shared).await,
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no such page: {method} {path}"),
            ),
        };
        Ok(with_security_headers(r))
    }

    async fn api(&self, req: Request<Incoming>, conn: &Conn, shared: &Arc<Shared>) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let ip = conn.peer.ip();
        if path == "/ui/api/login" {
            if method != Method::POST {
                return error(StatusCode::METHOD_NOT_ALLOWED, "POST the token");
            }
            return self.login(req, conn).await;
        }
        // Who is asking: a session (browser) or the bearer token (script).
        let bearer = self.bearer_ok(&req);
        let session = self.session(&req);
        let who = match (&session, bearer) {
            (Some((_, _, who)), _) => who.clone(),
            (None, true) => "admin token".to_string(),
            (None, false) => {
                let mut r = error(StatusCode::UNAUTHORIZED, "log in first");
                if conn.cert.is_some() {
                    r = json(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"error": "log in first", "certificate": conn.cert}),
                    );
                }
                return r;
            }
        };
        if method != Method::GET && method != Method::HEAD && !bearer {
            // A browser session: the CSRF token and a same-origin request.
            let csrf = session.as_ref().map(|s| s.1.as_str()).unwrap_or("");
            let sent = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if sent.is_empty() || !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                warn!(%ip, path = %path, "dashboard: request refused, missing or wrong CSRF token");
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
            if let Some(why) = cross_site(&req) {
                warn!(%ip, path = %path, why = %why, "dashboard: cross-site request refused");
                return error(StatusCode::FORBIDDEN, format!("cross-site request: {why}"));
            }
        }
        let parts: Vec<&str> = path
            .trim_start_matches("/ui/api/")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["session"]) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "who": who,
                    "csrf": session.as_ref().map(|s| s.1.clone()),
                    "version": env!("CARGO_PKG_VERSION"),
                    "interfaces": shared.interfaces.iter().map(|(i, m)| format!("{i} ({m})")).collect::<Vec<_>>(),
                }),
            ),
            (Method::POST, ["logout"]) => {
                if let Some((id, _, _)) = &session {
                    self.sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                }
                let mut r = json(StatusCode::OK, &serde_json::json!({"ok": true}));
                r.headers_mut()
                    .insert(header::SET_COOKIE, self.cookie("", 0));
                r
            }
            (Method::GET, ["overview"]) => self.overview(shared),
            (Method::GET, ["lists"]) => self.lists(&req, shared),
            (Method::POST, ["lists"]) => {
                let a: ListAdd = match parse(req).await {
                    Ok(a) => a,
                    Err(r) => return r,
                };
                let k = match list_kind(&a.list, true) {
                    Ok(k) => k,
                    Err(w) => return error(StatusCode::BAD_REQUEST, w),
                };
                let spec = AddSpec {
                    ttl: a.ttl_secs.filter(|t| *t > 0).map(Duration::from_secs),
                    reason: a.reason.filter(|r| !r.trim().is_empty()),
                    origin: Origin::Dashboard,
                };
                let cidr = a.cidr.trim().to_string();
                match self.write(shared, move |e| e.add(k, &cidr, &spec)).await {
                    Ok(v) => {
                        info!(who = %who, list = k.as_str(), cidr = %v.cidr, "dashboard: entry added");
                        json(StatusCode::CREATED, &v)
                    }
                    Err(r) => r,
                }
            }
            (Method::POST, ["lists", "remove"]) => {
                let a: ListRemove = match parse(req).await {
                    Ok(a) => a,
                    Err(r) => return r,
                };
                let k = match list_kind(&a.list, false) {
                    Ok(k) => k,
                    Err(w) => return error(StatusCode::BAD_REQUEST, w),
                };
                let cidr = a.cidr.trim().to_string();
                let c2 = cidr.clone();
                match self.write(shared, move |e| e.remove(k, &c2)).await {
                    Ok(()) => {
                        info!(who = %who, list = k.as_str(), cidr = %cidr, "dashboard: entry removed");
                        json(StatusCode::OK, &serde_json::json!({"removed": cidr}))
                    }
                    Err(r) => r,
                }
            }
            (Method::GET, ["events"]) => {
                let ev = shared.events.lock().unwrap_or_else(|p| p.into_inner());
                let v: Vec<&super::EventView> = ev.iter().rev().take(100).collect();
                json(StatusCode::OK, &v)
            }
            (Method::GET, ["top"]) => match &shared.risk {
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({"enabled": false, "top": [], "decisions": []}),
                ),
                Some(r) => {
                    let mut d = r.decisions();
                    d.reverse();
                    d.truncate(50);
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"enabled": true, "top": r.top(25), "decisions": d}),
                    )
                }
            },
            (Method::POST, ["top", verb @ ("block" | "allow")]) => {
                let block = *verb == "block";
                let a: KeyAction = match parse(req).await {
                    Ok(a) => a,
                    Err(r) => return r,
                };
                let key = match key_of(&a) {
                    Ok(k) => k,
                    Err(w) => return error(StatusCode::BAD_REQUEST, w),
                };
                self.key_action(shared, key, block, a.ttl_secs, &who).await
            }
            (Method::GET, ["approvals"]) => {
                let Some(agent) = &shared.agent else {
                    return json(StatusCode::OK, &serde_json::json!([]));
                };
                let status = match query_param(&req, "status").as_deref() {
                    Some("pending") => Some(crate::agent::approvals::Status::Pending),
                    _ => None,
                };
                match agent.approvals.list(status, 200) {
                    Ok(l) => {
                        let mut v: Vec<serde_json::Value> = l
                            .iter()
                            .filter_map(|a| serde_json::to_value(a).ok())
                            .collect();
                        if let Some(f) = &shared.fleet {
                            v.extend(f.remote_approvals().await);
                        }
                        json(StatusCode::OK, &v)
                    }
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (Method::POST, ["approvals", id, verb @ ("approve" | "deny")]) => {
                let Some(agent) = shared.agent.clone() else {
                    return error(StatusCode::NOT_FOUND, "the agent module is not running");
                };
                let (id, approve) = (id.to_string(), *verb == "approve");
                let v: Verdict = match parse(req).await {
                    Ok(v) => v,
                    Err(r) => return r,
                };
                let by = format!("dashboard: {who}");
                match agent.approvals.decide(&id, approve, &by, v.note.as_deref()) {
                    Ok(a) => json(StatusCode::OK, &a),
                    Err(crate::agent::approvals::DecideError::NotFound(_))
                        if shared.fleet.is_some() =>
                    {
                        super::agent::remote_decision(shared, &id, approve, &by, v.note.as_deref())
                            .await
                    }
                    Err(e @ crate::agent::approvals::DecideError::NotFound(_)) => {
                        error(StatusCode::NOT_FOUND, e)
                    }
                    Err(e @ crate::agent::approvals::DecideError::Decided { .. }) => {
                        error(StatusCode::CONFLICT, e)
                    }
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (Method::GET, ["routes"]) => self.routes(),
            (m, _) => error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {m} {path}"),
            ),
        }
    }

    async fn login(&self, req: Request<Incoming>, conn: &Conn) -> Resp {
        let ip = conn.peer.ip();
        if let Some(why) = cross_site(&req) {
            warn!(%ip, why = %why, "dashboard: cross-site login refused");
            return error(StatusCode::FORBIDDEN, format!("cross-site request: {why}"));
        }
        // JSON only: a cross-site HTML form cannot send it without a
        // CORS preflight, which this listener never grants.
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the token as application/json",
            );
        }
        if self.too_many_failures(ip) {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins from {ip}; wait a minute"),
            );
        }
        let l: Login = match parse(req).await {
            Ok(l) => l,
            Err(r) => return r,
        };
        let who = if !l.token.is_empty() {
            match &self.token {
                Some(t) if constant_time_eq(l.token.trim().as_bytes(), t.as_bytes()) => {
                    "admin token".to_string()
                }
                _ => {
                    self.failed_login(ip);
                    warn!(%ip, "dashboard: login with a wrong admin token");
                    return error(StatusCode::UNAUTHORIZED, "wrong admin token");
                }
            }
        } else if let Some(c) = &conn.cert {
            format!("certificate {c}")
        } else {
            return error(StatusCode::UNAUTHORIZED, "the admin token is required");
        };
        let (id, csrf) = self.open_session(who.clone());
        info!(%ip, who = %who, "dashboard: logged in");
        let mut r = json(
            StatusCode::OK,
            &serde_json::json!({"who": who, "csrf": csrf}),
        );
        r.headers_mut()
            .insert(header::SET_COOKIE, self.cookie(&id, SESSION_MAX.as_secs()));
        r
    }

    /// Runs a list change off the async workers.
    async fn write<T: Send + 'static>(
        &self,
        shared: &Arc<Shared>,
        f: impl FnOnce(&mut crate::xdp::lists::Enforcer) -> Result<T, crate::xdp::lists::ListError>
        + Send
        + 'static,
    ) -> Result<T, Resp> {
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || lock(&s).and_then(|mut e| f(&mut e))).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(super::list_error(e)),
            Err(e) => Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("list task failed: {e}"),
            )),
        }
    }

    async fn key_action(
        &self,
        shared: &Arc<Shared>,
        key: Key,
        block: bool,
        ttl_secs: Option<u64>,
        who: &str,
    ) -> Resp {
        let ttl = Duration::from_secs(ttl_secs.filter(|t| *t > 0).unwrap_or(3600));
        let net = match &key {
            Key::Source(ip) => Some(IpNet::from(*ip)),
            Key::Prefix(p) => Some(*p),
            _ => None,
        };
        match (net, block) {
            (Some(net), true) => {
                let spec = AddSpec {
                    ttl: Some(ttl),
                    reason: Some(format!("blocked from the dashboard by {who}")),
                    origin: Origin::Dashboard,
                };
                let c = net.to_string();
                match self
                    .write(shared, move |e| e.add(ListKind::Block, &c, &spec))
                    .await
                {
                    Ok(v) => {
                        info!(who, key = %key, "dashboard: blocked");
                        json(StatusCode::CREATED, &v)
                    }
                    Err(r) => r,
                }
            }
            (Some(net), false) => {
                let spec = AddSpec {
                    ttl: ttl_secs.filter(|t| *t > 0).map(Duration::from_secs),
                    reason: Some(format!("allowed from the dashboard by {who}")),
                    origin: Origin::Dashboard,
                };
                let c = net.to_string();
                let r = self
                    .write(shared, move |e| {
                        let v = e.add(ListKind::Allow, &c, &spec)?;
                        // A dynamic block of that address goes too.
                        if net.prefix_len() == net.max_prefix_len() {
                            let _ = e.remove(ListKind::Dynamic, &c);
                        }
                        Ok(v)
                    })
                    .await;
                if let Some(r) = &shared.risk {
                    r.forgive(&key, who);
                }
                match r {
                    Ok(v) => {
                        info!(who, key = %key, "dashboard: allowed");
                        json(StatusCode::CREATED, &v)
                    }
                    Err(r) => r,
                }
            }
            (None, _) => {
                let Some(r) = &shared.risk else {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the risk engine is off ([risk] enabled = false)",
                    );
                };
                if block {
                    if matches!(key, Key::Client(_)) {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "client ids are scored but not banned; ban the subject or block the source",
                        );
                    }
                    r.ban(key.clone(), ttl, who);
                    json(
                        StatusCode::CREATED,
                        &serde_json::json!({"banned": key, "ttl_secs": ttl.as_secs()}),
                    )
                } else {
                    let any = r.forgive(&key, who);
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"forgiven": key, "was_tracked": any}),
                    )
                }
            }
        }
    }

    fn overview(&self, shared: &Shared) -> Resp {
        let o = self.series.overview();
        let counts = shared
            .enforcer
            .as_ref()
            .map(|e| {
                e.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry_counts()
                    .iter()
                    .map(|(k, n)| (k.as_str().to_string(), *n))
                    .collect::<HashMap<String, u64>>()
            })
            .unwrap_or_default();
        let pending = shared
            .agent
            .as_ref()
            .and_then(|a| {
                a.approvals
                    .list(Some(crate::agent::approvals::Status::Pending), 1000)
                    .ok()
            })
            .map(|l| l.len())
            .unwrap_or(0);
        json(
            StatusCode::OK,
            &serde_json::json!({
                "series": o,
                "lists": counts,
                "pending_approvals": pending,
                "risk_tracked": shared.risk.as_ref().map(|r| r.tracked()),
                "xdp": shared.enforcer.is_some(),
            }),
        )
    }

    fn lists(&self, req: &Request<Incoming>, shared: &Shared) -> Resp {
        let q = query_param(req, "q")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        // Filtered and limited in SQL: a list of a million entries is not
        // read on every refresh.
        let found = lock(shared).and_then(|e| {
            let total: u64 = e.entry_counts().iter().map(|(_, n)| n).sum();
            Ok((e.search(&q, MAX_ROWS)?, total))
        });
        let (entries, total) = match found {
            Ok(v) => v,
            Err(crate::xdp::lists::ListError::Disabled) => (Vec::new(), 0),
            Err(e) => return super::list_error(e),
        };
        let hits = shared.hits.per_entry(&entries);
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let sampled = e
                    .cidr
                    .parse::<IpNet>()
                    .ok()
                    .and_then(|n| hits.get(&(e.kind, n)).copied());
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["hits"] = match (e.kind, sampled) {
                    (ListKind::Allow, _) => serde_json::Value::Null,
                    (_, n) => (n.unwrap_or(0) * self.sample_one_in as u64).into(),
                };
                v
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "entries": rows,
                "total": total,
                "sample_one_in": self.sample_one_in,
                "xdp": shared.enforcer.is_some(),
            }),
        )
    }

    fn routes(&self) -> Resp {
        let latest = self.series.latest().unwrap_or_default();
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                let (n, e) = latest.routes.get(&r.name).copied().unwrap_or_default();
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["requests"] = (n as u64).into();
                v["errors_5xx"] = (e as u64).into();
                v
            })
            .collect();
        let unrouted = latest.routes.get("-").map(|(n, _)| *n as u64).unwrap_or(0);
        json(
            StatusCode::OK,
            &serde_json::json!({"routes": routes, "unrouted": unrouted, "config": &*self.config_text}),
        )
    }
}

fn unauthorized(msg: &str) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ztag-admin\""),
    );
    r
}

/// The subject of a client certificate, for the session's name.
fn cert_subject(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => c.subject().to_string(),
        Err(_) => "(unparsable certificate)".into(),
    }
}

/// Serves the dashboard and the token-protected API on `listener`, over
/// TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    dash: Arc<Dashboard>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin listener accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (dash, shared, tls) = (dash.clone(), shared.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let conn = Conn { peer, cert: None };
                    serve_conn(TokioIo::new(stream), conn, dash, shared).await;
                }
                Some(acc) => {
                    let s = match tokio::time::timeout(Duration::from_secs(10), acc.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, "admin TLS handshake: {e}");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    };
                    let cert = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| cert_subject(c.as_ref()));
                    let conn = Conn { peer, cert };
                    serve_conn(TokioIo::new(s), conn, dash, shared).await;
                }
            }
        });
    }
}

async fn serve_conn<I>(io: TokioIo<I>, conn: Conn, dash: Arc<Dashboard>, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let svc = service_fn(move |req| dash.clone().handle(req, conn.clone(), shared.clone()));
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(io, svc)
        .await
    {
        debug!(%peer, "admin connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(kind: ListKind, cidr: &str) -> EntryView {
        EntryView {
            kind,
            cidr: cidr.into(),
            expires_at_ms: None,
            ttl_secs: None,
            reason: None,
            created_at_ms: 0,
            origin: Origin::Cli,
        }
    }

    #[test]
    fn hits_go_to_the_longest_matching_entry() {
        let h = Hits::default();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.200".parse().unwrap();
        for _ in 0..3 {
            h.record("blocklist", a);
        }
        h.record("blocklist", b);
        h.record("dynamic", a);
        h.record("rate_limit", a);
        let entries = [
            view(ListKind::Block, "198.51.100.0/24"),
            view(ListKind::Block, "198.51.100.0/29"),
            view(ListKind::Dynamic, "198.51.100.7/32"),
        ];
        let m = h.per_entry(&entries);
        assert_eq!(m[&(ListKind::Block, "198.51.100.0/29".parse().unwrap())], 3);
        assert_eq!(m[&(ListKind::Block, "198.51.100.0/24".parse().unwrap())], 1);
        assert_eq!(
            m[&(ListKind::Dynamic, "198.51.100.7/32".parse().unwrap())],
            1
        );
    }

    #[test]
    fn hit_sources_are_bounded() {
        let h = Hits::default();
        for i in 0..(MAX_HIT_SOURCES as u32 + 10) {
            h.record("blocklist", IpAddr::from(std::net::Ipv4Addr::from(i)));
        }
        assert_eq!(h.map.lock().unwrap().len(), MAX_HIT_SOURCES);
    }

    #[test]
    fn the_policy_allows_nothing_inline_or_foreign() {
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
        assert!(CSP.contains("default-src 'none'") && CSP.contains("frame-ancestors 'none'"));
        // The page carries no inline script or style, and loads nothing
        // from elsewhere.
        let page = INDEX_HTML.to_ascii_lowercase();
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "inline code"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "foreign URL"
        );
        for s in page.match_indices("<script").map(|(i, _)| &page[i..]) {
            assert!(
                s.starts_with("<script src=\"/ui/"),
                "{}",
                &s[..40.min(s.len())]
            );
        }
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("eval("));
    }
}

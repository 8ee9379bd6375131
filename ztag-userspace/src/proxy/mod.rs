//! The L7 data plane: listeners (plain and TLS), HTTP/1.1 and HTTP/2 with
//! hyper, limits, path normalisation, routing, authentication, upstream
//! pools, header hygiene, access log and metrics.
//!
//! A request goes through the phases of ARCHITECTURE.md, in this order
//! (see [`Gateway::proxy`]); each phase either lets it go on or answers:
//!
//! 1. accept — connection limits (total, per source) before any TLS work;
//! 2. tls — handshake under `header_read_timeout`, SNI picks the certificate;
//! 3. http — hyper reads the head under size and time limits; ambiguous
//!    framing is refused; a declared body over the limit is refused early;
//! 4. route — the path is normalised once; routing, policy and the upstream
//!    all see that one form;
//! 5. authenticate — the route's providers in order, then its scope and
//!    claim requirements; nothing is public unless the route says so;
//! 6. upstream — peer choice, timeouts, passive health, a retry only for a
//!    bodiless idempotent request whose connection never opened;
//! 7. record — access log and metrics, for every answer including ztag's own.

pub mod access_log;
mod approval;
pub mod config;
pub mod h1scan;
pub mod headers;
pub mod inspect;
mod mcp;
pub(crate) mod mcp_fed;
pub(crate) mod metrics;
pub mod normalize;
pub mod route;
pub mod tls;
pub mod trace;
pub mod upstream;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use dashmap::DashMap;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{self, HeaderName},
};
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{
    body::{Body, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};

use self::{
    access_log::AccessLog,
    config::{GatewayConfig, ListenerConfig},
    headers::FramingError,
    metrics::HttpMetrics,
    normalize::PathError,
    tls::TlsState,
    upstream::{Pool, UpBody},
};
use crate::authn::{self, Authn, AuthnError, Credentials, MethodSet, Principal};

/// Where the status of an async approval is read.
pub const APPROVAL_STATUS_PREFIX: &str = "/.ztag/approvals/";

/// Responses up to this size with a Content-Length are filtered whole
/// rather than streamed.
const WHOLE_RESPONSE_BYTES: usize = 256 * 1024;

/// Body of the responses ztag sends to clients.
pub type RespBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Why ztag answered a request itself. Each variant is one status and one
/// `reason()` (metric label and access-log field); clients see only the
/// category.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Ambiguous or invalid request framing.
    #[error("bad framing: {0}")]
    Framing(#[from] FramingError),
    /// The path cannot be normalised safely.
    #[error("bad path: {0}")]
    Path(#[from] PathError),
    /// HTTP/1.1 without Host, or a malformed one.
    #[error("missing or invalid host")]
    BadHost,
    /// No route matches.
    #[error("no route")]
    NoRoute,
    /// The declared or streamed body is over `max_body_bytes`.
    #[error("body too large")]
    BodyTooLarge,
    /// Authentication failed or the principal lacks a requirement.
    #[error("authentication: {0}")]
    Authn(#[from] AuthnError),
    /// Every peer of the pool is ejected.
    #[error("no healthy upstream peer")]
    NoPeer,
    /// The upstream refused or reset the connection.
    #[error("upstream connect failed")]
    UpstreamConnect,
    /// The upstream connection did not open in time.
    #[error("upstream connect timeout")]
    UpstreamConnectTimeout,
    /// The upstream response head did not arrive in time.
    #[error("upstream response timeout")]
    UpstreamTimeout,
    /// The upstream broke the exchange.
    #[error("upstream error")]
    UpstreamProtocol,
    /// An FGA check of the route's policy denied, or could not decide
    /// (which denies too).
    #[error("authorization denied")]
    Forbidden,
    /// The request carries prompt injection (`inspect_action = "block"`);
    /// the category, and the JSON-RPC id for an MCP request.
    #[error("prompt injection: {category}")]
    Injection {
        /// Detector category.
        category: &'static str,
        /// `Some` on an MCP route: the answer is a JSON-RPC error.
        jsonrpc_id: Option<serde_json::Value>,
    },
    /// The body could not be read as the route's inspection expects.
    #[error("body cannot be inspected: {0}")]
    Uninspectable(#[from] crate::inspect::codec::CodecError),
    /// The client's body broke off.
    #[error("request body read failed")]
    BodyRead,
    /// The response filter refused the response.
    #[error("response blocked by the content filter")]
    ResponseBlocked,
    /// The response could not be inspected (compressed, or too large to
    /// judge whole) on a route whose filter does more than log.
    #[error("response cannot be inspected")]
    ResponseUninspectable,
    /// The request could not be rebuilt for the upstream (a bug).
    #[error("internal error")]
    Internal,
    /// The method is not one the route's protocol uses (MCP: GET, POST,
    /// DELETE).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A person denied the request.
    #[error("approval denied")]
    ApprovalDenied,
    /// Nobody decided in time.
    #[error("approval timed out")]
    ApprovalExpired,
    /// The risk engine rate-limits this source or principal.
    #[error("rate limited")]
    RateLimited(Duration),
    /// Over the route's static rate limit.
    #[error("over the route's rate limit")]
    RouteRateLimited(Duration),
    /// No upstream credential for the caller (a label of
    /// [`crate::agent::exchange::CredError::reason`]).
    #[error("upstream credential: {0}")]
    Credential(&'static str),
}

impl ProxyError {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Framing(e) => e.status(),
            ProxyError::Path(e) => e.status(),
            ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Authn(e) => e.status(),
            ProxyError::NoPeer => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::Injection { .. } => StatusCode::FORBIDDEN,
            ProxyError::Uninspectable(_) | ProxyError::BodyRead => StatusCode::BAD_REQUEST,
            ProxyError::ResponseBlocked | ProxyError::ResponseUninspectable => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RateLimited(_) | ProxyError::RouteRateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::ApprovalDenied | ProxyError::ApprovalExpired => StatusCode::FORBIDDEN,
            ProxyError::Credential("credential_unavailable") => StatusCode::BAD_GATEWAY,
            ProxyError::Credential(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Metric label and log field.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Framing(e) => e.reason(),
            ProxyError::Path(e) => e.reason(),
            ProxyError::BadHost => "bad_host",
            ProxyError::NoRoute => "no_route",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::Authn(e) => e.reason(),
            ProxyError::NoPeer => "no_healthy_peer",
            ProxyError::UpstreamConnect => "upstream_connect",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamProtocol => "upstream_protocol",
            ProxyError::Forbidden => "authz_denied",
            ProxyError::Injection { .. } => "prompt_injection",
            ProxyError::Uninspectable(_) => "uninspectable_body",
            ProxyError::BodyRead => "body_read",
            ProxyError::ResponseBlocked => "response_blocked",
            ProxyError::ResponseUninspectable => "response_uninspectable",
            ProxyError::Internal => "internal",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::RouteRateLimited(_) => "route_rate_limit",
            ProxyError::ApprovalDenied => "approval_denied",
            ProxyError::ApprovalExpired => "approval_expired",
            ProxyError::Credential(r) => r,
        }
    }

    /// What the client is told: a category, never internals.
    fn category(&self) -> &'static str {
        match self {
            ProxyError::Framing(FramingError::HeadTooLarge) => "request_header_fields_too_large",
            ProxyError::Framing(_) | ProxyError::Path(_) | ProxyError::BadHost => "bad_request",
            ProxyError::NoRoute => "not_found",
            ProxyError::BodyTooLarge => "payload_too_large",
            ProxyError::Authn(AuthnError::InsufficientScope(_)) => "forbidden",
            ProxyError::Authn(_) => "unauthorized",
            ProxyError::NoPeer => "service_unavailable",
            ProxyError::UpstreamConnect | ProxyError::UpstreamProtocol => "bad_gateway",
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => "gateway_timeout",
            ProxyError::Forbidden | ProxyError::Injection { .. } => "forbidden",
            ProxyError::Uninspectable(_) | ProxyError::BodyRead => "bad_request",
            ProxyError::ResponseBlocked | ProxyError::ResponseUninspectable => "bad_gateway",
            ProxyError::Internal => "internal_error",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::RateLimited(_) | ProxyError::RouteRateLimited(_) => "too_many_requests",
            ProxyError::ApprovalDenied | ProxyError::ApprovalExpired => "forbidden",
            ProxyError::Credential("credential_unavailable") => "bad_gateway",
            ProxyError::Credential(_) => "forbidden",
        }
    }

    fn response(&self) -> Response<RespBody> {
        let body = match self {
            ProxyError::Injection {
                category,
                jsonrpc_id: Some(id),
            } => format!(
                "{}\n",
                inspect::jsonrpc_blocked(id, category, "prompt injection in the request")
            ),
            ProxyError::Injection { category, .. } => format!(
                "{{\"error\":\"forbidden\",\"reason\":\"prompt_injection\",\"category\":\"{category}\"}}\n"
            ),
            ProxyError::ApprovalDenied
            | ProxyError::ApprovalExpired
            | ProxyError::Credential(_) => format!(
                "{{\"error\":\"{}\",\"reason\":\"{}\"}}\n",
                self.category(),
                self.reason()
            ),
            _ => format!("{{\"error\":\"{}\"}}\n", self.category()),
        };
        let mut r = Response::new(full(body));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ProxyError::Authn(e) = self {
            h.insert(header::WWW_AUTHENTICATE, e.www_authenticate());
        }
        if let ProxyError::RateLimited(d) | ProxyError::RouteRateLimited(d) = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        // After a framing error the connection's byte stream cannot be
        // trusted: close it.
        if matches!(self, ProxyError::Framing(_)) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

fn full(s: impl Into<Bytes>) -> RespBody {
    Full::new(s.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Loads every certificate, key and CA file the gateway config names,
/// without binding or connecting: what `ztag check-config` adds to parsing.
pub fn check_files(cfg: &GatewayConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for l in &cfg.listeners {
        if let Some(t) = &l.tls
            && let Err(e) = tls::server_config(t)
        {
            problems.push(e.to_string());
        }
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        if let Err(e) = Pool::new(i, u, cfg.limits.upstream_connect_timeout) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Why the gateway could not start: one line per problem, with key paths.
#[derive(Debug, thiserror::Error)]
#[error("the gateway cannot start:\n  {}", .0.join("\n  "))]
pub struct StartError(pub Vec<String>);

struct RouteRt {
    methods: MethodSet,
    /// What the route does to responses.
    plan: inspect::ResponsePlan,
}

struct Listener {
    cfg: ListenerConfig,
    tls: Option<TlsState>,
}

/// The running gateway.
pub struct Gateway {
    cfg: GatewayConfig,
    authn: Arc<Authn>,
    authz: Option<Arc<crate::authz::remote::Decider>>,
    inspector: Arc<crate::inspect::Inspector>,
    events: Option<crate::risk::Events>,
    agent: Option<Arc<crate::agent::Agent>>,
    fed_sessions: mcp_fed::Sessions,
    risk: Option<Arc<crate::risk::engine::Engine>>,
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Static per-route token buckets: (route, key) → (tokens, last refill).
    buckets: moka::sync::Cache<(usize, BucketKey), Bucket>,
    tracer: Option<trace::Tracer>,
    path_hasher: hashbrown::DefaultHashBuilder,
    routes: Vec<RouteRt>,
    pools: Vec<Pool>,
    listeners: Vec<Listener>,
    metrics: HttpMetrics,
    log: AccessLog,
    open: AtomicUsize,
    per_source: DashMap<IpAddr, usize>,
    /// The protocol of a connection is known before hyper gets it: by
    /// ALPN on TLS listeners (`h2`, or HTTP/1.1 for anything else: RFC 9113
    /// §3.2, h2 over TLS is negotiated), by a peek at the h2c preface on
    /// plain ones ([`h2c_preface`]). hyper-util's own sniffing read the 24
    /// bytes and handed them back, which made hyper's first read-buffer
    /// reserve double the buffer: 16 KB instead of 8 for every connection.
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    epoch: Instant,
    /// `true` once the daemon drains: listeners stop accepting and open
    /// connections close after their current request.
    draining: tokio::sync::watch::Sender<bool>,
}

/// Per-connection facts the request phases need.
struct Conn {
    listener: usize,
    peer: SocketAddr,
    tls: bool,
    client_cert: Option<Vec<u8>>,
    clock: Arc<Clock>,
}

/// A connection's timers, kept by its IO and its requests, read by the
/// watchdog in `serve_http`.
struct Clock {
    epoch: Instant,
    /// Requests being handled (the idle and header timers run at zero).
    inflight: AtomicUsize,
    /// Last read or write, ms since the epoch.
    last_io: AtomicU64,
    /// When the first byte of a request head arrived (0: none pending).
    head_since: AtomicU64,
    /// HTTP/1: bytes between requests start a head. HTTP/2 connections
    /// carry frames (PING, SETTINGS) between requests, so only idle applies.
    h1: bool,
    /// Set by the IO's [`h1scan::H1Scanner`]: a head with ambiguous framing
    /// arrived (1 + the FramingError's index; 0: none).
    ambiguous: std::sync::atomic::AtomicU8,
}

impl Clock {
    fn new(epoch: Instant, h1: bool) -> Arc<Clock> {
        Arc::new(Clock {
            epoch,
            inflight: AtomicUsize::new(0),
            last_io: AtomicU64::new(epoch.elapsed().as_millis() as u64 + 1),
            head_since: AtomicU64::new(0),
            h1,
            ambiguous: std::sync::atomic::AtomicU8::new(0),
        })
    }
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.h1
            && self.inflight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }
    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }
    fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }
    fn flag(&self, a: FramingError) {
        let v = match a {
            FramingError::ContentLengthWithTransferEncoding => 1,
            FramingError::HeadTooLarge => 3,
            _ => 2,
        };
        self.ambiguous.store(v, Ordering::Relaxed);
    }
    fn ambiguity(&self) -> Option<FramingError> {
        match self.ambiguous.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(FramingError::ContentLengthWithTransferEncoding),
            3 => Some(FramingError::HeadTooLarge),
            _ => Some(FramingError::DuplicateContentLength),
        }
    }
    fn request_done(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the record phase needs to know about a request.
#[derive(Default)]
struct Record {
    route: Option<usize>,
    reason: Option<&'static str>,
    principal: Option<Arc<Principal>>,
    upstream: Option<Arc<upstream::Peer>>,
    method: Option<Method>,
    version: Option<Version>,
    host: Option<String>,
    path: Option<String>,
    client: Option<IpAddr>,
    trace: Option<trace::Ctx>,
    path_hash: Option<u64>,
}

impl Record {
    /// A phase that ran from `start` until now, for the trace.
    fn phase(&mut self, name: &'static str, start: Instant) {
        if let Some(t) = &mut self.trace {
            t.phase(name, start);
        }
    }
}

/// A token bucket: tokens and when they were last refilled.
type Bucket = Arc<std::sync::Mutex<(f64, Instant)>>;

/// Who a static rate limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Source(IpAddr),
    Principal(Arc<str>),
    Route,
}

/// What the gateway's phases call on.
pub struct Deps {
    /// Authentication providers.
    pub authn: Arc<Authn>,
    /// The FGA engine route policies ask.
    pub authz: Option<Arc<crate::authz::remote::Decider>>,
    /// Body inspection.
    pub inspector: Arc<crate::inspect::Inspector>,
    /// Where detections go.
    pub events: Option<crate::risk::Events>,
    /// Vault, approvals, audit.
    pub agent: Option<Arc<crate::agent::Agent>>,
    /// The risk engine.
    pub risk: Option<Arc<crate::risk::engine::Engine>>,
    /// Fleet mode: route limits count in Redis (with
    /// `global_rate_limits`), async approvals' status across gateways.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The fleet's key for sealed MCP sessions (random when `None`).
    pub session_key: Option<[u8; 32]>,
}

/// Holds one connection slot (total and per source) until dropped.
struct Slot {
    gw: Arc<Gateway>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gw.open.fetch_sub(1, Ordering::Relaxed);
        if let dashmap::Entry::Occupied(mut e) = self.gw.per_source.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Gateway {
    /// Builds the runtime gateway: certificates, upstream clients, metrics.
    pub fn new(
        cfg: &GatewayConfig,
        deps: Deps,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Gateway>, StartError> {
        let Deps {
            authn,
            authz,
            inspector,
            events,
            agent,
            risk,
            fleet,
            session_key,
        } = deps;
        let mut problems = Vec::new();
        if authz.is_none()
            && let Some(r) = cfg.routes.iter().find(|r| {
                r.mcp.as_ref().is_some_and(|m| {
                    m.tool_check.is_some() || m.tools.iter().any(|t| !t.checks.is_empty())
                })
            })
        {
            problems.push(format!(
                "route {:?} has MCP tool checks but no FGA engine is available",
                r.name
            ));
        }
        if agent.is_none()
            && let Some(r) = cfg.routes.iter().find(|r| {
                r.credential.is_some()
                    || r.approval.is_some()
                    || r.mcp
                        .as_ref()
                        .is_some_and(|m| m.tools.iter().any(|t| t.approval))
            })
        {
            problems.push(format!(
                "route {:?} needs credentials or approvals, and the agent module is not running",
                r.name
            ));
        }
        if authz.is_none()
            && let Some(r) = cfg.routes.iter().find(|r| !r.authz.is_empty())
        {
            problems.push(format!(
                "route {:?} has authz checks but no FGA engine is available",
                r.name
            ));
        }
        let mut routes = Vec::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let plan = inspect::ResponsePlan {
                mcp: r.inspect.filter(|x| x.mode == crate::inspect::Mode::Mcp),
                filter: r
                    .filter
                    .as_ref()
                    .map(|f| (inspector.filter_for(f), f.action)),
            };
            match authn.resolve(&r.authenticate) {
                Ok(m) => routes.push(RouteRt { methods: m, plan }),
                Err(e) => {
                    problems.push(format!("gateway.route[{i}].authenticate: {e}"));
                    routes.push(RouteRt {
                        methods: MethodSet::default(),
                        plan,
                    });
                }
            }
        }
        let mut pools = Vec::new();
        for (i, u) in cfg.upstreams.iter().enumerate() {
            match Pool::new(i, u, cfg.limits.upstream_connect_timeout) {
                Ok(p) => pools.push(p),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            let tls = match &l.tls {
                None => None,
                Some(t) => match TlsState::new(t.clone()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(e.to_string());
                        None
                    }
                },
            };
            listeners.push(Listener {
                cfg: l.clone(),
                tls,
            });
        }
        let metrics = match HttpMetrics::new(registry) {
            Ok(m) => m,
            Err(e) => {
                return Err(StartError(vec![format!(
                    "registering gateway metrics: {e}"
                )]));
            }
        };
        let log = match AccessLog::start(&cfg.access_log, metrics.access_log_dropped.clone()) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("gateway.access_log: {e}"));
                AccessLog::start(
                    &config::AccessLogTarget::Off,
                    metrics.access_log_dropped.clone(),
                )
                .map_err(|e| StartError(vec![e.to_string()]))?
            }
        };
        let tracer = match &cfg.tracing {
            None => None,
            Some(t) => match trace::Tracer::start(t, registry) {
                Ok(tr) => Some(tr),
                Err(e) => {
                    problems.push(format!("gateway.tracing: {e}"));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(StartError(problems));
        }
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            // hyper's own header timer also runs while a keep-alive
            // connection waits for its next request, which would make the
            // idle timeout the header timeout; the connection watchdog
            // (`serve_http`) applies both instead.
            .header_read_timeout(None)
            .max_buf_size(cfg.limits.max_header_bytes.max(8192))
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(cfg.limits.max_header_bytes as u32)
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(60)));
        Ok(Arc::new(Gateway {
            cfg: cfg.clone(),
            authn,
            authz,
            inspector,
            events,
            agent,
            fed_sessions: mcp_fed::Sessions::new(session_key),
            risk,
            fleet,
            buckets: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            tracer,
            path_hasher: Default::default(),
            routes,
            pools,
            listeners,
            metrics,
            log,
            open: AtomicUsize::new(0),
            per_source: DashMap::new(),
            http1: http.clone().http1_only(),
            http2: http.http2_only(),
            epoch: Instant::now(),
            draining: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Binds every listener (errors name the listener), before anything is
    /// served, so a daemon that cannot bind fails at start.
    pub fn bind(&self) -> Result<Vec<TcpListener>, StartError> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            match bind(l.cfg.bind) {
                Ok(s) => out.push(s),
                Err(e) => problems.push(format!(
                    "gateway.listener[{i}].bind: cannot listen on {}: {e}",
                    l.cfg.bind
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(StartError(problems))
        }
    }

    /// Serves the bound listeners (in the same order as [`Gateway::bind`]).
    pub fn serve(self: &Arc<Self>, bound: Vec<TcpListener>) {
        for (i, l) in bound.into_iter().enumerate() {
            let gw = self.clone();
            info!(
                listener = %self.listeners[i].cfg.name,
                addr = %self.listeners[i].cfg.bind,
                tls = self.listeners[i].tls.is_some(),
                "gateway listening"
            );
            tokio::spawn(async move { gw.accept_loop(i, l).await });
        }
        // Certificates change on disk (renewal): pick them up without a
        // restart; open connections keep the ones they started with.
        let gw = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                gw.reload_tls(false);
            }
        });
    }

    /// Reloads changed certificates (every listener's with `force`). A
    /// listener whose new files do not load keeps its running ones.
    pub fn reload_tls(&self, force: bool) {
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                match t.reload(force) {
                    Ok(true) => info!(listener = %l.cfg.name, "TLS certificates reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(listener = %l.cfg.name, "TLS certificates not reloaded, the running ones stay: {e}")
                    }
                }
            }
        }
    }

    /// Takes a connection slot, or `None` (with the reason) over a limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let limits = &self.cfg.limits;
        if self.open.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err("max_connections");
        }
        let mut e = self.per_source.entry(ip).or_insert(0);
        if *e >= limits.max_connections_per_source {
            drop(e);
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err("max_connections_per_source");
        }
        *e += 1;
        drop(e);
        Ok(Slot {
            gw: self.clone(),
            ip,
        })
    }

    /// Stops accepting and asks every open connection to close after its
    /// current request (HTTP/1.1: `Connection: close`; h2: GOAWAY); waits
    /// until they are gone or `within` passes. Returns the connections
    /// still open at the end (cut when the process exits).
    pub async fn drain(&self, within: Duration) -> usize {
        self.draining.send_replace(true);
        let deadline = Instant::now() + within;
        loop {
            let open = self.open.load(Ordering::Relaxed);
            if open == 0 || Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn accept_loop(self: Arc<Self>, idx: usize, listener: TcpListener) {
        let name = self.listeners[idx].cfg.name.clone();
        let mut draining = self.draining.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = until_draining(&mut draining) => {
                    info!(listener = %name, "draining: no longer accepting connections");
                    return;
                }
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = %name, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let slot = match self.admit(peer.ip()) {
                Ok(s) => s,
                Err(why) => {
                    self.metrics.refused(&name, why);
                    debug!(listener = %name, %peer, why, "connection refused");
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let gw = self.clone();
            tokio::spawn(async move {
                gw.connection(idx, stream, peer).await;
                drop(slot);
            });
        }
    }

    async fn connection(self: Arc<Self>, idx: usize, stream: TcpStream, peer: SocketAddr) {
        let l = &self.listeners[idx];
        let gauge = self.metrics.open(&l.cfg.name);
        // Memory per connection: the task's own future stays as large as
        // its largest state for as long as the connection lives, so the
        // TLS handshake (rustls mid-handshake, about 1.3 KB) runs in a box
        // freed once it is done, and the serving future is boxed too. Left
        // in this frame, the handshake, the stream and the serving future
        // each kept a slot: about 8 KB for every idle connection.
        let serving: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match &l.tls {
            None => {
                let limits = &self.cfg.limits;
                let sniff = Box::pin(h2c_preface(
                    &stream,
                    limits.idle_timeout,
                    limits.header_read_timeout,
                ));
                let mut draining = self.draining.subscribe();
                let sniffed = tokio::select! {
                    s = sniff => s,
                    _ = until_draining(&mut draining) => return,
                };
                let h2 = match sniffed {
                    Ok(Sniff::H1) => false,
                    Ok(Sniff::H2) => true,
                    Ok(Sniff::Idle) => {
                        debug!(%peer, "idle timeout before a first byte");
                        return;
                    }
                    Ok(Sniff::Slow) => {
                        self.slow_head(peer, "h2c preface");
                        return;
                    }
                    Err(e) => {
                        debug!(%peer, "connection ended before a request: {e}");
                        return;
                    }
                };
                let clock = Clock::new(self.epoch, !h2);
                let conn = Arc::new(Conn {
                    listener: idx,
                    peer,
                    tls: false,
                    client_cert: None,
                    clock: clock.clone(),
                });
                let io = IdleIo::new(stream, clock, self.cfg.limits.max_header_bytes);
                let wire = if h2 { &self.http2 } else { &self.http1 };
                Box::pin(self.serve_http(conn, io, wire))
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let hs = Box::pin(tokio::time::timeout(
                    self.cfg.limits.header_read_timeout,
                    acceptor.accept(stream),
                ))
                .await;
                let s = match hs {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        self.metrics.handshake(&l.cfg.name, "error", "-");
                        debug!(listener = %l.cfg.name, %peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        self.metrics.handshake(&l.cfg.name, "timeout", "-");
                        debug!(listener = %l.cfg.name, %peer, "TLS handshake timed out");
                        return;
                    }
                };
                let (_, session) = s.get_ref();
                let version = match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "other",
                };
                self.metrics.handshake(&l.cfg.name, "ok", version);
                let client_cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                let h1 = session.alpn_protocol() != Some(b"h2");
                let clock = Clock::new(self.epoch, h1);
                let conn = Arc::new(Conn {
                    listener: idx,
                    peer,
                    tls: true,
                    client_cert,
                    clock: clock.clone(),
                });
                let io = IdleIo::new(s, clock, self.cfg.limits.max_header_bytes);
                let wire = if h1 { &self.http1 } else { &self.http2 };
                Box::pin(self.serve_http(conn, io, wire))
            }
        };
        serving.await;
        drop(gauge);
    }

    /// Not an `async fn`: its arguments (the IO, over 1 KB with rustls)
    /// would keep their slots in the future for the connection's whole
    /// life after being moved into hyper's state. The connection is built
    /// here, boxed, and the returned future holds only the box.
    fn serve_http<'a, I>(
        self: &'a Arc<Self>,
        conn: Arc<Conn>,
        io: I,
        wire: &'a auto::Builder<TokioExecutor>,
    ) -> impl Future<Output = ()> + Send + 'a
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gw = self.clone();
        let c = conn.clone();
        let svc = service_fn(move |req| {
            let gw = gw.clone();
            let c = c.clone();
            // Boxed per request: hyper keeps a slot the size of this
            // future for every connection, idle or not, and the request
            // path's future is several KB. One short-lived allocation per
            // request instead of that much held by every idle connection.
            Box::pin(async move { Ok::<_, Infallible>(gw.handle(&c, req).await) })
        });
        // Boxed: on the heap the connection's state (hyper's, rustls') is
        // held once; pinned in an async frame it was laid out twice (the
        // moved-from binding keeps its slot), about 2.7 KB more per
        // connection.
        let mut served = Box::pin(wire.serve_connection(TokioIo::new(io), svc));
        async move {
            let idle = self.cfg.limits.idle_timeout.as_millis() as u64;
            let head = self.cfg.limits.header_read_timeout.as_millis() as u64;
            let check = (self
                .cfg
                .limits
                .header_read_timeout
                .min(self.cfg.limits.idle_timeout)
                / 4)
            .max(Duration::from_millis(50));
            let clock = &conn.clock;
            let mut draining = self.draining.subscribe();
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = until_draining(&mut draining), if !closing => {
                        // Finish what is in flight, then close.
                        closing = true;
                        served.as_mut().graceful_shutdown();
                    }
                    r = served.as_mut() => {
                        if let Err(e) = r {
                            debug!(peer = %conn.peer, "connection ended: {e}");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(check) => {
                        if clock.inflight.load(Ordering::Relaxed) != 0 {
                            continue;
                        }
                        let now = clock.now();
                        let since = clock.head_since.load(Ordering::Relaxed);
                        if since != 0 && now.saturating_sub(since) >= head {
                            // Slowloris: a request head that does not finish.
                            // No graceful close: the peer is not reading.
                            self.slow_head(conn.peer, "request head");
                            return;
                        }
                        if now.saturating_sub(clock.last_io.load(Ordering::Relaxed)) >= idle {
                            debug!(peer = %conn.peer, "idle timeout");
                            served.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), served.as_mut()).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A head (or h2c preface) not complete within `header_read_timeout`:
    /// counted, reported to the risk engine; the caller closes.
    fn slow_head(&self, peer: SocketAddr, what: &str) {
        self.metrics.denied("header_read_timeout");
        if let Some(r) = &self.risk {
            r.observe(
                peer.ip(),
                None,
                None,
                crate::risk::engine::Kind::SlowRequest,
            );
        }
        debug!(%peer, "{what} not complete within header_read_timeout");
    }

    async fn handle(&self, conn: &Conn, req: Request<Incoming>) -> Response<RespBody> {
        let start = Instant::now();
        conn.clock.request_started();
        let mut rec = Record {
            trace: self
                .tracer
                .as_ref()
                .map(|t| trace::Ctx::start(req.headers(), t.sample_ratio)),
            ..Record::default()
        };
        let resp = match self.proxy(conn, req, &mut rec).await {
            Ok(r) => r,
            Err(e) => {
                rec.reason = Some(e.reason());
                if e.status().is_server_error() {
                    debug!(peer = %conn.peer, reason = e.reason(), "{e}");
                }
                let mut r = e.response();
                // MCP routes are OAuth resource servers: the challenge
                // points at their RFC 9728 metadata.
                if let ProxyError::Authn(a) = &e
                    && let Some(m) = rec.route.and_then(|i| self.cfg.routes[i].mcp.as_ref())
                {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, m.challenge(&a.www_authenticate()));
                }
                r
            }
        };
        conn.clock.request_done();
        self.record(conn, &rec, resp.status(), start);
        if let (Some(t), Some(ctx)) = (&self.tracer, &rec.trace) {
            let route = rec.route.map(|i| self.cfg.routes[i].name.as_str());
            let method = rec.method.as_ref().map(|m| m.as_str()).unwrap_or("-");
            let mut attrs = vec![
                ("http.request.method", serde_json::json!(method)),
                (
                    "http.response.status_code",
                    serde_json::json!(resp.status().as_u16()),
                ),
                (
                    "client.address",
                    serde_json::json!(conn.peer.ip().to_string()),
                ),
            ];
            if let Some(p) = &rec.path {
                attrs.push(("url.path", serde_json::json!(p)));
            }
            if let Some(r) = route {
                attrs.push(("http.route", serde_json::json!(r)));
            }
            if let Some(r) = rec.reason {
                attrs.push(("ztag.reason", serde_json::json!(r)));
            }
            if let Some(p) = &rec.principal {
                attrs.push(("enduser.id", serde_json::json!(p.subject)));
            }
            t.finish(
                ctx,
                format!("{method} {}", route.unwrap_or("-")),
                attrs,
                resp.status().is_server_error(),
            );
        }
        resp
    }

    /// The request phases, in order. `Err` is ztag's own answer.
    async fn proxy(
        &self,
        conn: &Conn,
        req: Request<Incoming>,
        rec: &mut Record,
    ) -> Result<Response<RespBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let logging = self.log.enabled();
        if logging {
            rec.method = Some(parts.method.clone());
            rec.version = Some(parts.version);
            // Until normalised: the raw path, so refusals show what came in.
            rec.path = Some(parts.uri.path().to_owned());
        }

        // http: framing (what hyper normalised away included), then a
        // declared body over the limit.
        if let Some(a) = conn.clock.ambiguity() {
            return Err(a.into());
        }
        headers::check_framing(&parts.headers, parts.version)?;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cfg.limits.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge);
        }

        // route: one normalised path for routing, policy and upstream.
        let host = request_host(&parts.uri, &parts.headers, parts.version)?.to_owned();
        let host = host.as_str();
        let host_l = route::host_only(host);
        if logging {
            rec.host = Some(host_l.clone());
        }
        let path = normalize::normalize_path(parts.uri.path(), self.cfg.encoded_slash)?;
        if logging {
            rec.path = Some(path.to_string());
        }
        if self.risk.is_some() {
            // For path scanning (distinct 404s), whether or not it is logged.
            rec.path_hash = Some(std::hash::BuildHasher::hash_one(
                &self.path_hasher,
                path.as_ref() as &str,
            ));
        }
        // The risk engine's rate limit on the source (and its prefix).
        if let Some(r) = &self.risk
            && let Some(wait) = r.limited(conn.peer.ip(), None)
        {
            return Err(ProxyError::RateLimited(wait));
        }
        if path.starts_with("/.well-known/oauth-protected-resource")
            && let Some(r) = self.protected_resource_metadata(&path, &parts.method)
        {
            return Ok(r);
        }
        if let Some(id) = path.strip_prefix(APPROVAL_STATUS_PREFIX) {
            return self.approval_status(conn, id, &parts).await;
        }
        let (ri, route) = route::find(&self.cfg.routes, &host_l, &path, &parts.method)
            .ok_or(ProxyError::NoRoute)?;
        rec.route = Some(ri);
        if let Some(r) = route.rate_limit.per_route {
            self.take(ri, BucketKey::Route, r).await?;
        }
        if let Some(r) = route.rate_limit.per_source {
            self.take(ri, BucketKey::Source(conn.peer.ip()), r).await?;
        }

        // authenticate: the route's providers, then its requirements.
        let t_authn = Instant::now();
        let principal = if route.public {
            None
        } else {
            let creds = Credentials {
                authorization: parts.headers.get(header::AUTHORIZATION),
                client_cert: conn.client_cert.as_deref(),
            };
            let p = self
                .authn
                .authenticate(&self.routes[ri].methods, creds)
                .await?;
            rec.principal = Some(p.clone());
            authn::check_requirements(&p, &route.require_scopes, &route.require_claims)?;
            if let Some(r) = &self.risk
                && let Some(wait) = r.limited(conn.peer.ip(), Some(&p.subject))
            {
                return Err(ProxyError::RateLimited(wait));
            }
            if let Some(r) = route.rate_limit.per_principal {
                self.take(ri, BucketKey::Principal(Arc::from(p.subject.as_str())), r)
                    .await?;
            }
            if let Some(m) = &route.mcp
                && !m.audience_ok(&p.claims)
            {
                return Err(ProxyError::Authn(AuthnError::Invalid(
                    "the token's audience is not this MCP server",
                )));
            }
            Some(p)
        };

        // authorize: every FGA check of the route must allow; a value
        // missing from the request, an engine error or a timeout denies.
        if !route.public {
            rec.phase("authenticate", t_authn);
        }
        if !route.authz.is_empty() {
            let t = Instant::now();
            let r = self
                .authorize(conn, route, &parts.method, &path, principal.as_deref())
                .await;
            rec.phase("authorize", t);
            r?;
        }
        let t_inspect = Instant::now();

        // MCP: one JSON-RPC message per POST, checked per tool.
        let bodiless = body.is_end_stream();
        let limit = self.cfg.limits.max_body_bytes as usize;
        let mut have: Option<Bytes> = None;
        let mut mcp_state: Option<mcp::State> = None;
        let mut body = Some(body);
        if let Some(m) = &route.mcp {
            if !m.origin_ok(
                parts
                    .headers
                    .get(header::ORIGIN)
                    .map(|v| v.to_str().unwrap_or("\u{0}")),
            ) {
                rec.reason = Some("mcp_origin_refused");
                return Err(ProxyError::Forbidden);
            }
            match parts.method {
                Method::POST => {
                    let max = m.max_message_bytes.min(limit);
                    let b = body.take().ok_or(ProxyError::Internal)?;
                    let bytes = match Limited::new(b, max).collect().await {
                        Ok(c) => c.to_bytes(),
                        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                            rec.reason = Some("mcp_message_too_large");
                            return Ok(mcp::rpc_response(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &crate::agent::mcp::error(
                                    &serde_json::Value::Null,
                                    crate::agent::mcp::code::INVALID_REQUEST,
                                    format!("message larger than {max} bytes"),
                                    None,
                                ),
                            ));
                        }
                        Err(_) => return Err(ProxyError::BodyRead),
                    };
                    let p = principal.as_deref().ok_or(ProxyError::Forbidden)?;
                    match self
                        .mcp_request(conn, route, m, p, &parts.headers, &bytes)
                        .await
                    {
                        Ok(st) => {
                            have = Some(match &st.fed {
                                Some(t) => t.body.clone(),
                                None => bytes,
                            });
                            mcp_state = Some(st);
                        }
                        Err((reason, resp)) => {
                            if !reason.is_empty() {
                                rec.reason = Some(reason);
                            }
                            return Ok(resp);
                        }
                    }
                }
                // Federation has no server-initiated stream; DELETE ends
                // the gateway's session and the servers'.
                Method::GET if !m.servers.is_empty() => {
                    let mut r = ProxyError::MethodNotAllowed.response();
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
                    rec.reason = Some(ProxyError::MethodNotAllowed.reason());
                    return Ok(r);
                }
                Method::DELETE if !m.servers.is_empty() => {
                    let p = principal.as_deref().ok_or(ProxyError::Forbidden)?;
                    return Ok(self.fed_delete(m, p, &parts.headers).await);
                }
                Method::GET | Method::DELETE => {}
                _ => {
                    let mut r = ProxyError::MethodNotAllowed.response();
                    r.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                    rec.reason = Some(ProxyError::MethodNotAllowed.reason());
                    return Ok(r);
                }
            }
        }

        // inspect request: the body, read whole (up to max_body_bytes),
        // through the detector; block, flag or log.
        let ctx = || inspect::Ctx {
            route: route.name.clone(),
            source: conn.peer.ip(),
            principal: principal.as_ref().map(|p| p.subject.clone()),
            client_id: principal.as_ref().and_then(|p| p.client_id.clone()),
            events: self.events.clone(),
        };
        let mut flag = None;
        let needs_approval =
            route.approval.is_some() || mcp_state.as_ref().is_some_and(|s| s.approval.is_some());
        let mut up_body: UpBody = match body {
            Some(b) if !bodiless => Limited::new(b, limit).boxed_unsync(),
            _ => Empty::new().map_err(|never| match never {}).boxed_unsync(),
        };
        if (route.inspect.is_some() || needs_approval) && !bodiless && have.is_none() {
            have = Some(match up_body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(ProxyError::BodyTooLarge);
                }
                Err(_) => return Err(ProxyError::BodyRead),
            });
            up_body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        }
        if let Some(ri) = &route.inspect
            && let Some(bytes) = &have
            && let Some(d) = self.inspector.inspect_request(&route.name, ri, bytes)?
        {
            ctx().detection(
                &d,
                crate::risk::EventKind::PromptInjection,
                ri.action.as_str(),
            );
            match ri.action {
                crate::inspect::Action::Block => {
                    let jsonrpc_id = (ri.mode == crate::inspect::Mode::Mcp).then(|| {
                        crate::inspect::codec::mcp_messages(bytes)
                            .ok()
                            .and_then(|m| m.first().and_then(|m| m.get("id").cloned()))
                            .unwrap_or(serde_json::Value::Null)
                    });
                    if let Some(st) = &mcp_state {
                        self.audit_tool(
                            conn,
                            route,
                            principal.as_deref(),
                            st,
                            "deny",
                            Some("prompt_injection"),
                        );
                    }
                    return Err(ProxyError::Injection {
                        category: d.verdict.category,
                        jsonrpc_id,
                    });
                }
                crate::inspect::Action::Flag => flag = Some(inspect::flag_value(&d)),
                crate::inspect::Action::Log => {}
            }
        }
        if let Some(bytes) = &have {
            up_body = Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed_unsync();
        }

        // upstream: rebuild the head for the peer.
        let fed = mcp_state.as_ref().and_then(|s| s.fed.as_ref());
        let pool = &self.pools[fed.map(|f| f.upstream).unwrap_or(route.upstream)];
        let trusted = self.is_trusted(conn.peer.ip());
        // The client behind trusted proxies is only logged: found only then.
        if logging {
            rec.client = Some(headers::client_address(
                &parts.headers,
                conn.peer.ip(),
                |ip| self.is_trusted(ip),
            ));
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_internal(&mut parts.headers, "x-ztag-");
        for h in [
            &self.cfg.identity_headers.subject,
            &self.cfg.identity_headers.client_id,
            &self.cfg.identity_headers.scopes,
        ] {
            parts.headers.remove(h);
        }
        let proto = if conn.tls { "https" } else { "http" };
        headers::set_forwarded(
            &mut parts.headers,
            conn.peer.ip(),
            proto,
            Some(host),
            trusted,
        );
        if let Some(p) = &principal {
            self.identity(&mut parts.headers, p);
        }
        parts.headers.remove(&self.inspector.config.flag_header);
        if let Some(t) = &rec.trace {
            parts.headers.insert("traceparent", t.upstream_header());
        }
        if let Some(f) = flag {
            parts
                .headers
                .insert(self.inspector.config.flag_header.clone(), f);
        }
        if route.mcp.is_some() || route.inspect.is_some() {
            rec.phase("inspect", t_inspect);
        }
        // approve: held (or answered 202) until a person decides.
        if needs_approval {
            let t = Instant::now();
            let stored = crate::agent::approvals::StoredRequest {
                method: parts.method.to_string(),
                path_and_query: match parts.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                },
                host: host.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        *k != header::AUTHORIZATION
                            && *k != header::COOKIE
                            && *k != header::PROXY_AUTHORIZATION
                    })
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                    .collect(),
                body_b64: crate::agent::approvals::b64(have.as_deref().unwrap_or_default()),
            };
            let answer = self
                .approve(
                    conn,
                    route,
                    principal.as_deref(),
                    mcp_state.as_ref(),
                    stored,
                    proto,
                    host,
                    rec,
                )
                .await;
            rec.phase("approve", t);
            if let Some(resp) = answer? {
                return Ok(resp);
            }
        }

        // credentials: the caller's upstream credential replaces its token.
        if let Some(c) = &route.credential {
            let p = principal.as_deref().ok_or(ProxyError::Forbidden)?;
            let (name, value) = self.credential(c, p, &parts.headers).await?;
            parts.headers.remove(header::AUTHORIZATION);
            parts.headers.insert(name, value);
        }

        let plan = &self.routes[ri].plan;
        if !plan.is_empty() {
            // Responses the gateway must read come uncompressed.
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        let path_and_query = match (fed, parts.uri.query()) {
            (Some(f), _) => {
                // The server's endpoint, session and own tool name (the
                // body was rewritten: hyper sets its length).
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove("mcp-session-id");
                if let Some(v) = f
                    .session
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    parts.headers.insert("mcp-session-id", v);
                }
                if parts.headers.contains_key("mcp-name")
                    && let Ok(v) = HeaderValue::from_str(&f.tool)
                {
                    parts.headers.insert("mcp-name", v);
                }
                if let Some(v) = f
                    .protocol
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    parts.headers.insert("mcp-protocol-version", v);
                }
                f.path.clone()
            }
            (None, Some(q)) => format!("{path}?{q}"),
            (None, None) => path.into_owned(),
        };
        if pool.h2 {
            parts.headers.remove(header::HOST);
        } else if !parts.headers.contains_key(header::HOST) {
            // An HTTP/2 client gave :authority; HTTP/1.1 upstreams want Host.
            let v = HeaderValue::from_str(host).map_err(|_| ProxyError::BadHost)?;
            parts.headers.insert(header::HOST, v);
        }
        parts.version = if pool.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        // Only then are the headers kept for a second attempt.
        let retryable = bodiless && is_idempotent(&parts.method) && pool.peers.len() > 1;
        let mut body: Option<UpBody> = Some(up_body);

        let mut avoid: Option<Arc<upstream::Peer>> = None;
        for attempt in 0..2 {
            let lease = pool.pick(avoid.as_ref()).ok_or(ProxyError::NoPeer)?;
            rec.upstream = Some(lease.peer.clone());
            let uri: Uri = format!("{}{}", lease.peer.base, path_and_query)
                .parse()
                .map_err(|_| ProxyError::Internal)?;
            let b = match body.take() {
                Some(b) => b,
                None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            };
            let mut up = Request::new(b);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.version_mut() = parts.version;
            *up.headers_mut() = if attempt == 0 && !retryable {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            let t_up = Instant::now();
            let sent = tokio::time::timeout(
                self.cfg.limits.upstream_response_timeout,
                pool.client().request(up),
            )
            .await;
            rec.phase("upstream", t_up);
            let res = match sent {
                Err(_) => {
                    self.peer_failed(pool, &lease.peer);
                    return Err(ProxyError::UpstreamTimeout);
                }
                Ok(r) => r,
            };
            match res {
                Ok(mut resp) => {
                    let s = resp.status();
                    let bad = matches!(s.as_u16(), 502..=504);
                    if bad {
                        self.peer_failed(pool, &lease.peer);
                    } else {
                        pool.record(&lease.peer, true);
                    }
                    headers::strip_hop_by_hop(resp.headers_mut());
                    if let Some(st) = &mcp_state {
                        if st.method == "tools/list" {
                            return self
                                .mcp_tools_list(
                                    route,
                                    principal.as_deref(),
                                    plan,
                                    resp,
                                    ctx(),
                                    limit,
                                )
                                .await;
                        }
                        if st.tool.is_some() {
                            let d = if resp.status().is_success() {
                                "allow"
                            } else {
                                "error"
                            };
                            self.audit_tool(conn, route, principal.as_deref(), st, d, None);
                        }
                    }
                    if !plan.is_empty() {
                        return self.filter_response(plan, resp, ctx(), limit).await;
                    }
                    let resp = resp.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync());
                    // The lease (outstanding count) ends with the head: the
                    // body streams on its own.
                    return Ok(resp);
                }
                Err(e) => {
                    if body_too_large(&e) {
                        return Err(ProxyError::BodyTooLarge);
                    }
                    let connect = e.is_connect();
                    self.peer_failed(pool, &lease.peer);
                    debug!(upstream = %pool.name, peer = %lease.peer.addr, "upstream error: {e:?}");
                    if connect && retryable && attempt == 0 && pool.peers.len() > 1 {
                        avoid = Some(lease.peer.clone());
                        continue;
                    }
                    return Err(if !connect {
                        ProxyError::UpstreamProtocol
                    } else if is_timeout(&e) {
                        ProxyError::UpstreamConnectTimeout
                    } else {
                        ProxyError::UpstreamConnect
                    });
                }
            }
        }
        Err(ProxyError::UpstreamConnect)
    }

    /// filter response: MCP indirect-injection inspection and the content
    /// filter, whole or streaming (see [`inspect`]).
    async fn filter_response(
        &self,
        plan: &inspect::ResponsePlan,
        resp: Response<Incoming>,
        ctx: inspect::Ctx,
        limit: usize,
    ) -> Result<Response<RespBody>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        if inspect::is_encoded(&parts.headers) {
            if plan.log_only() {
                debug!(route = %ctx.route, "compressed response passed uninspected (log-only route)");
                return Ok(Response::from_parts(
                    parts,
                    body.map_err(|e| Box::new(e) as _).boxed_unsync(),
                ));
            }
            return Err(ProxyError::ResponseUninspectable);
        }
        let sse = inspect::is_sse(&parts.headers);
        // A small body of known length is judged whole: the client gets the
        // same framing (Content-Length) as without the filter.
        let small = !sse
            && parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n <= WHOLE_RESPONSE_BYTES.min(limit));
        if small || plan.must_buffer(sse) {
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(ProxyError::ResponseUninspectable);
                }
                Err(_) => return Err(ProxyError::UpstreamProtocol),
            };
            let (out, flag) = inspect::whole(&self.inspector, plan, &ctx, bytes)
                .map_err(|_| ProxyError::ResponseBlocked)?;
            return Ok(self.whole_response(parts, out, flag));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let streamer = inspect::Streamer::new(self.inspector.clone(), plan, ctx, sse);
        Ok(Response::from_parts(
            parts,
            inspect::Filtered::new(body, streamer).boxed_unsync(),
        ))
    }

    /// One token of a route's rate limit, or 429 with the wait: in Redis
    /// across the fleet when fleet mode shares limits, else (or when Redis
    /// does not answer in time) from the local bucket.
    async fn take(&self, route: usize, key: BucketKey, r: config::Rate) -> Result<(), ProxyError> {
        if let Some(f) = self
            .fleet
            .as_ref()
            .filter(|f| f.config().global_rate_limits)
        {
            let name = &self.cfg.routes[route].name;
            let k = match &key {
                BucketKey::Source(ip) => format!("{name}:src:{ip}"),
                BucketKey::Principal(s) => format!("{name}:sub:{s}"),
                BucketKey::Route => format!("{name}:route"),
            };
            match f.take(&k, r.per_sec, r.burst).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => {
                    return Err(ProxyError::RouteRateLimited(
                        wait.max(Duration::from_secs(1)),
                    ));
                }
                Err(()) => {} // the local budget decides
            }
        }
        self.take_local(route, key, r)
    }

    fn take_local(&self, route: usize, key: BucketKey, r: config::Rate) -> Result<(), ProxyError> {
        let b = self.buckets.get_with((route, key), || {
            Arc::new(std::sync::Mutex::new((r.burst, Instant::now())))
        });
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * r.per_sec).min(r.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            Ok(())
        } else {
            Err(ProxyError::RouteRateLimited(Duration::from_secs_f64(
                ((1.0 - b.0) / r.per_sec).max(1.0),
            )))
        }
    }

    /// A response whose body was judged whole: its length, and the flag
    /// header if the inspection flagged it.
    fn whole_response(
        &self,
        mut parts: http::response::Parts,
        out: Bytes,
        flag: Option<HeaderValue>,
    ) -> Response<RespBody> {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        if let Some(f) = flag {
            parts
                .headers
                .insert(self.inspector.config.flag_header.clone(), f);
        }
        Response::from_parts(parts, full(out))
    }

    fn peer_failed(&self, pool: &Pool, peer: &upstream::Peer) {
        if pool.record(peer, false) {
            warn!(upstream = %pool.name, peer = %peer.addr, "peer ejected after repeated failures");
            self.metrics.ejected(&pool.name, &peer.addr);
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.cfg.trusted_proxies.is_empty()
            && self.cfg.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    async fn authorize(
        &self,
        conn: &Conn,
        route: &config::RouteConfig,
        method: &http::Method,
        path: &str,
        principal: Option<&Principal>,
    ) -> Result<(), ProxyError> {
        let Some(decider) = &self.authz else {
            return Err(ProxyError::Forbidden);
        };
        let facts = crate::authz::policy::RequestFacts {
            principal,
            path,
            method,
            client_ip: conn.peer.ip(),
        };
        let captures = match &route.path_pattern {
            Some(p) => p.captures(path),
            None => Some(Vec::new()),
        };
        for check in &route.authz {
            let allowed = match &captures {
                Some(c) => self.fga_check(route, decider, check, &facts, c).await,
                None => {
                    self.metrics
                        .authz(&route.name, decider.kind(), "deny", Duration::ZERO);
                    false
                }
            };
            if !allowed {
                return Err(ProxyError::Forbidden);
            }
        }
        Ok(())
    }

    /// One FGA check of a policy: `false` when it denies, when a template
    /// value is missing, or when the engine gives no answer (logged).
    async fn fga_check(
        &self,
        route: &config::RouteConfig,
        decider: &crate::authz::remote::Decider,
        check: &crate::authz::policy::CheckPolicy,
        facts: &crate::authz::policy::RequestFacts<'_>,
        captures: &[(String, String)],
    ) -> bool {
        let start = Instant::now();
        let Some(planned) = check.plan(facts, captures) else {
            self.metrics
                .authz(&route.name, decider.kind(), "deny", start.elapsed());
            debug!(route = %route.name, "authz: a template value is missing; denied");
            return false;
        };
        let result = decider.check(&planned).await;
        let label = match &result {
            Ok(true) => "allow",
            Ok(false) => "deny",
            Err(_) => "error",
        };
        self.metrics
            .authz(&route.name, decider.kind(), label, start.elapsed());
        match result {
            Ok(true) => true,
            Ok(false) => {
                debug!(route = %route.name, user = %planned.user, relation = %planned.relation, object = %planned.object, "authz: denied");
                false
            }
            Err(e) => {
                warn!(route = %route.name, user = %planned.user, relation = %planned.relation, object = %planned.object, error = %e, "authz: no decision; denied");
                false
            }
        }
    }

    fn identity(&self, h: &mut HeaderMap, p: &Principal) {
        let names = &self.cfg.identity_headers;
        let set = |h: &mut HeaderMap, name: &HeaderName, v: &str| {
            // A claim that cannot be a header value is not forwarded rather
            // than mangled; the upstream sees the header missing.
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(name.clone(), v);
            }
        };
        set(h, &names.subject, &p.subject);
        if let Some(c) = &p.client_id {
            set(h, &names.client_id, c);
        }
        if !p.scopes.is_empty() {
            set(h, &names.scopes, &p.scopes.join(" "));
        }
    }

    fn record(&self, conn: &Conn, rec: &Record, status: StatusCode, start: Instant) {
        let elapsed = start.elapsed();
        let route = rec
            .route
            .map(|i| self.cfg.routes[i].name.as_str())
            .unwrap_or("-");
        let listener = self.listeners[conn.listener].cfg.name.as_str();
        self.metrics
            .request(listener, route, status, elapsed, rec.reason);
        if let Some(r) = &self.risk {
            use crate::risk::engine::Kind;
            let p = rec.principal.as_deref();
            let (subject, client) = (
                p.map(|p| p.subject.as_str()),
                p.and_then(|p| p.client_id.as_deref()),
            );
            let ip = conn.peer.ip();
            r.observe(ip, subject, client, Kind::Request);
            if status == StatusCode::NOT_FOUND {
                r.observe_not_found(ip, subject, client, rec.path_hash.unwrap_or(0));
            }
            let kind = match (status.as_u16(), rec.reason) {
                (429, Some("rate_limited")) => Some(Kind::Throttled),
                (429, _) => None,
                (401, _) => Some(Kind::AuthnFailure),
                (
                    403,
                    Some(
                        "authz_denied"
                        | "tool_forbidden"
                        | "tool_argument_forbidden"
                        | "tool_denied",
                    ),
                ) => Some(Kind::AuthzDenied),
                (403, Some("insufficient_scope")) => Some(Kind::AuthzDenied),
                (404, _) => None, // observe_not_found above
                (400..=499, _) => Some(Kind::ClientError),
                (500..=599, _) => Some(Kind::ServerError),
                _ => None,
            };
            if let Some(k) = kind {
                r.observe(ip, subject, client, k);
            }
        }
        if !self.log.enabled() {
            return;
        }
        let version = match rec.version {
            Some(Version::HTTP_2) => "HTTP/2.0",
            Some(Version::HTTP_10) => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        self.log.log(&access_log::Entry {
            time: access_log::rfc3339(SystemTime::now() - elapsed),
            listener,
            peer: conn.peer.to_string(),
            client: rec.client.unwrap_or(conn.peer.ip()).to_string(),
            method: rec.method.as_ref().map(|m| m.as_str()).unwrap_or("-"),
            host: rec.host.as_deref().unwrap_or("-"),
            path: rec.path.as_deref().unwrap_or("-"),
            version,
            route: rec.route.map(|i| self.cfg.routes[i].name.as_str()),
            status: status.as_u16(),
            reason: rec.reason,
            subject: rec.principal.as_ref().map(|p| p.subject.as_str()),
            client_id: rec.principal.as_ref().and_then(|p| p.client_id.as_deref()),
            upstream: rec.upstream.as_ref().map(|p| p.addr.as_str()),
            duration_s: elapsed.as_secs_f64(),
        });
    }
}

/// The request's host: `:authority` (HTTP/2, absolute-form) or `Host`.
/// HTTP/1.1 without a Host header is refused (RFC 9112 §3.2).
fn request_host<'a>(uri: &'a Uri, h: &'a HeaderMap, v: Version) -> Result<&'a str, ProxyError> {
    if let Some(a) = uri.authority() {
        return Ok(a.as_str());
    }
    let mut hosts = h.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(one), None) => one.to_str().map_err(|_| ProxyError::BadHost),
        (None, None) if v == Version::HTTP_10 => Ok(""),
        _ => Err(ProxyError::BadHost),
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn body_too_large(e: &hyper_util::client::legacy::Error) -> bool {
    chain(e).any(|e| e.is::<http_body_util::LengthLimitError>())
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    chain(e).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_nodelay(true)?;
    s.bind(addr)?;
    // A deep backlog: bursts of new connections wait in the kernel rather
    // than being reset; the per-source limit applies at accept.
    s.listen(4096)
}

/// An IO that tells its connection's [`Clock`] when bytes move.
struct IdleIo<T> {
    inner: T,
    clock: Arc<Clock>,
    scan: Option<h1scan::H1Scanner>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, clock: Arc<Clock>, max_head: usize) -> Self {
        let scan = clock.h1.then(|| h1scan::H1Scanner::new(max_head));
        IdleIo { inner, clock, scan }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
            let me = &mut *self;
            if let Some(scan) = &mut me.scan
                && let Some(a) = scan.feed(&buf.filled()[before..])
            {
                me.clock.flag(a);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once the gateway drains (the watch's guard is not held across
/// an await, so the futures stay `Send`).
/// What a plain connection opens with.
#[derive(Debug, PartialEq)]
enum Sniff {
    H1,
    /// The h2c connection preface (RFC 9113 §3.4): prior knowledge.
    H2,
    /// No byte within `idle_timeout`.
    Idle,
    /// Part of the preface, and the rest not within `header_read_timeout`.
    Slow,
}

/// Tells h2c from HTTP/1 by peeking at the first bytes: hyper then reads
/// every byte itself, into a buffer of its usual size. Anything that is not
/// a prefix of the preface is HTTP/1 (EOF too: hyper sees it). While only a
/// prefix has arrived the peek is retried, backing off to 64 ms, until the
/// header timeout.
async fn h2c_preface(stream: &TcpStream, idle: Duration, head: Duration) -> std::io::Result<Sniff> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let Ok(first) = tokio::time::timeout(idle, stream.peek(&mut buf)).await else {
        return Ok(Sniff::Idle);
    };
    let mut n = first?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(Sniff::H1);
        }
        if n == PREFACE.len() {
            return Ok(Sniff::H2);
        }
        if started.elapsed() >= head {
            return Ok(Sniff::Slow);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(64));
        n = stream.peek(&mut buf).await?;
    }
}

async fn until_draining(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

//! `[gateway]`: listeners, limits, upstream pools and routes, as written in
//! the file ([`RawGateway`]) and validated ([`GatewayConfig`]). Validation
//! reads no files; certificates and keys are loaded when the gateway starts
//! (and on reload), with errors naming the same key paths.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use http::Method;
use ipnet::IpNet;
use serde::Deserialize;

use super::normalize::EncodedSlash;

/// `[gateway]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    workers: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    access_log: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    identity_headers: RawIdentityHeaders,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    tracing: Option<super::trace::RawTracing>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    upstream_connect_timeout: Option<String>,
    upstream_response_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawIdentityHeaders {
    subject: Option<String>,
    client_id: Option<String>,
    scopes: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    encoded_slash: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    bind: String,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Vec<RawCert>,
    client_auth: Option<String>,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    peers: Vec<String>,
    scheme: Option<String>,
    protocol: Option<String>,
    balance: Option<String>,
    eject_after_failures: Option<u32>,
    eject_for: Option<String>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    hosts: Option<Vec<String>>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    upstream: String,
    authenticate: Option<Vec<String>>,
    public: Option<bool>,
    require_scopes: Option<Vec<String>>,
    require_claims: Option<toml::Table>,
    path_pattern: Option<String>,
    authz: Option<Vec<crate::authz::policy::RawCheck>>,
    inspect: Option<String>,
    inspect_action: Option<String>,
    inspect_threshold: Option<f32>,
    response_filter: Option<String>,
    response_filter_kinds: Option<Vec<String>>,
    mcp: Option<crate::agent::mcp::RawMcp>,
    credential: Option<String>,
    approval: Option<String>,
    approval_mode: Option<String>,
    approval_timeout: Option<String>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_source: Option<String>,
    per_principal: Option<String>,
    per_route: Option<String>,
    burst: Option<f64>,
}

/// A static rate: tokens per second and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

/// `rate_limit = { per_source = "100/s", per_principal = "10/m", burst = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RouteRateLimit {
    /// Per client address.
    pub per_source: Option<Rate>,
    /// Per authenticated subject.
    pub per_principal: Option<Rate>,
    /// For the route as a whole, whoever calls.
    pub per_route: Option<Rate>,
}

/// Parses `N/s`, `N/m` or `N/h`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a rate like \"100/s\", \"30/m\" or \"500/h\""))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("{s:?}: unit {u:?} is not s, m or h")),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: the count must be positive"));
    }
    Ok(n / per)
}

/// Validated `[gateway]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Data-plane worker threads (0: one per core).
    pub workers: usize,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Where the JSON access log goes.
    pub access_log: AccessLogTarget,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Names of the identity headers sent upstream.
    pub identity_headers: IdentityHeaders,
    /// Encoded '/' and '\' in paths.
    pub encoded_slash: EncodedSlash,
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream pools.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, in match order.
    pub routes: Vec<RouteConfig>,
    /// OTLP trace export (`[gateway.tracing]`; `None`: off).
    pub tracing: Option<super::trace::TracingConfig>,
}

/// `gateway.access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// One JSON line per request on stdout.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// `[gateway.limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole request head (and TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Request head size; 431 above.
    pub max_header_bytes: usize,
    /// Request body size; 413 above.
    pub max_body_bytes: u64,
    /// Open client connections, all listeners.
    pub max_connections: usize,
    /// Open client connections per source address.
    pub max_connections_per_source: usize,
    /// Upstream TCP (and TLS) connect; 504 when it passes.
    pub upstream_connect_timeout: Duration,
    /// Upstream response head; 504 when it passes.
    pub upstream_response_timeout: Duration,
}

/// `[gateway.identity_headers]`.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Verified subject.
    pub subject: http::HeaderName,
    /// Verified client id.
    pub client_id: http::HeaderName,
    /// Granted scopes, space-separated.
    pub scopes: http::HeaderName,
}

/// `[[gateway.listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name (metrics label, logs).
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<TlsConfig>,
}

/// `[gateway.listener.tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificate chain and key files; the first is the default.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// Client certificates.
    pub client_auth: ClientAuth,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Key path of this listener's TLS section, for error messages.
    pub key_path: String,
}

/// `client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    Off,
    /// Asked for; verified when presented.
    Optional,
    /// Handshake fails without a valid one.
    Required,
}

/// `[[gateway.upstream]]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// `host:port` of each peer.
    pub peers: Vec<String>,
    /// TLS to the peers.
    pub https: bool,
    /// HTTP/2 (prior knowledge for http, ALPN for https) instead of HTTP/1.1.
    pub h2: bool,
    /// Peer selection.
    pub balance: Balance,
    /// Consecutive failures that eject a peer.
    pub eject_after_failures: u32,
    /// How long an ejected peer is left out.
    pub eject_for: Duration,
    /// Trust roots for https instead of the system's.
    pub ca: Option<PathBuf>,
    /// Name to verify (and send as SNI) instead of the peer's host.
    pub server_name: Option<String>,
}

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each peer in turn.
    RoundRobin,
    /// The peer with the fewest requests in flight.
    LeastOutstanding,
}

/// `[[gateway.route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name (metrics label, logs).
    pub name: String,
    /// Lower-case host names; `*.example.com` matches one label. Empty: any.
    pub hosts: Vec<String>,
    /// Path prefix (normalised form).
    pub path_prefix: String,
    /// Methods; empty: any.
    pub methods: Vec<Method>,
    /// Index into [`GatewayConfig::upstreams`].
    pub upstream: usize,
    /// Provider names, tried in order; empty only when `public`.
    pub authenticate: Vec<String>,
    /// No authentication at all.
    pub public: bool,
    /// Scopes the principal must all have.
    pub require_scopes: Vec<String>,
    /// Claims that must equal these values.
    pub require_claims: Vec<(String, serde_json::Value)>,
    /// Segments that name path variables for policy templates.
    pub path_pattern: Option<crate::authz::policy::PathPattern>,
    /// FGA checks that must all allow (none: no FGA check).
    pub authz: Vec<crate::authz::policy::CheckPolicy>,
    /// Request-body inspection (`inspect = "llm" | "mcp" | "text"`).
    pub inspect: Option<crate::inspect::RouteInspect>,
    /// Response content filter (`response_filter = …`).
    pub filter: Option<crate::inspect::RouteFilter>,
    /// The route is an MCP endpoint (`[gateway.route.mcp]`).
    pub mcp: Option<crate::agent::mcp::McpRoute>,
    /// `credential = "CONNECTION"`: the upstream gets the caller's
    /// credential for that connection, never the caller's own token.
    pub credential: Option<String>,
    /// `approval = "required"`: every request waits for a person.
    pub approval: Option<RouteApproval>,
    /// Static rate limits.
    pub rate_limit: RouteRateLimit,
}

/// `approval = "required"` on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteApproval {
    /// Held open or answered 202 with a status URL.
    pub mode: crate::agent::approvals::Mode,
    /// Overrides `agent.approvals.timeout`.
    pub timeout: Option<Duration>,
}

/// A positive duration (`default` when absent); problems name `key`.
pub(crate) fn dur(
    key: &str,
    v: &Option<String>,
    default: &str,
    problems: &mut Vec<String>,
) -> Duration {
    let s = v.as_deref().unwrap_or(default);
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("{key}: must be greater than zero"));
            Duration::from_secs(1)
        }
        Err(e) => {
            problems.push(format!(
                "{key}: {s:?} is not a duration like \"10s\" or \"500ms\" ({e})"
            ));
            Duration::from_secs(1)
        }
    }
}

fn header_name(
    key: &str,
    v: &Option<String>,
    default: &'static str,
    problems: &mut Vec<String>,
) -> http::HeaderName {
    match v {
        None => http::HeaderName::from_static(default),
        Some(s) => match http::HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                problems.push(format!("{key}: {s:?} is not a valid header name"));
                http::HeaderName::from_static(default)
            }
        },
    }
}

/// Resolves a configured path against the config file's directory.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Whether `name` is a plausible `host:port` peer.
fn valid_peer(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        None => false,
    }
}

fn valid_host_pattern(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        || h.parse::<IpAddr>().is_ok()
}

impl RawGateway {
    /// Validates into runtime types; `auth_providers` are the names routes may
    /// use in `authenticate`. Every problem is pushed as `gateway.<key>: why`.
    pub fn validate(
        self,
        base: &Path,
        auth_providers: &[String],
        problems: &mut Vec<String>,
    ) -> GatewayConfig {
        let RawGateway {
            workers,
            trusted_proxies,
            access_log,
            limits,
            identity_headers,
            paths,
            listener,
            upstream,
            route,
            tracing,
        } = self;
        let workers = workers.unwrap_or(0);
        if workers > 1024 {
            problems.push(format!("gateway.workers: {workers} is more than 1024"));
        }
        let mut trusted = Vec::new();
        for (i, s) in trusted_proxies.unwrap_or_default().iter().enumerate() {
            match crate::xdp::cidr::parse_cidr(s) {
                Ok(n) => trusted.push(n),
                Err(e) => problems.push(format!("gateway.trusted_proxies[{i}]: {e}")),
            }
        }
        let access_log = match access_log.as_deref() {
            None | Some("-") | Some("stdout") => AccessLogTarget::Stdout,
            Some("off") | Some("") => AccessLogTarget::Off,
            Some(p) => AccessLogTarget::File(resolve(base, Path::new(p))),
        };

        let RawLimits {
            header_read_timeout,
            idle_timeout,
            max_header_bytes,
            max_body_bytes,
            max_connections,
            max_connections_per_source,
            upstream_connect_timeout,
            upstream_response_timeout,
        } = limits;
        let l = "gateway.limits";
        let limits = Limits {
            header_read_timeout: dur(
                &format!("{l}.header_read_timeout"),
                &header_read_timeout,
                "10s",
                problems,
            ),
            idle_timeout: dur(&format!("{l}.idle_timeout"), &idle_timeout, "60s", problems),
            max_header_bytes: max_header_bytes.unwrap_or(16 * 1024),
            max_body_bytes: max_body_bytes.unwrap_or(10 * 1024 * 1024),
            max_connections: max_connections.unwrap_or(20_000),
            max_connections_per_source: max_connections_per_source.unwrap_or(512),
            upstream_connect_timeout: dur(
                &format!("{l}.upstream_connect_timeout"),
                &upstream_connect_timeout,
                "2s",
                problems,
            ),
            upstream_response_timeout: dur(
                &format!("{l}.upstream_response_timeout"),
                &upstream_response_timeout,
                "30s",
                problems,
            ),
        };
        if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
            problems.push(format!(
                "{l}.max_header_bytes: {} is outside 1024..=1048576",
                limits.max_header_bytes
            ));
        }
        if limits.max_connections == 0 {
            problems.push(format!("{l}.max_connections: must be at least 1"));
        }
        if limits.max_connections_per_source == 0 {
            problems.push(format!(
                "{l}.max_connections_per_source: must be at least 1"
            ));
        }

        let RawIdentityHeaders {
            subject,
            client_id,
            scopes,
        } = identity_headers;
        let ih = "gateway.identity_headers";
        let identity_headers = IdentityHeaders {
            subject: header_name(
                &format!("{ih}.subject"),
                &subject,
                "x-ztag-subject",
                problems,
            ),
            client_id: header_name(
                &format!("{ih}.client_id"),
                &client_id,
                "x-ztag-client-id",
                problems,
            ),
            scopes: header_name(&format!("{ih}.scopes"), &scopes, "x-ztag-scopes", problems),
        };

        let RawPaths { encoded_slash } = paths;
        let encoded_slash = match encoded_slash.as_deref() {
            None | Some("reject") => EncodedSlash::Reject,
            Some("keep") => EncodedSlash::Keep,
            Some(s) => {
                problems.push(format!(
                    "gateway.paths.encoded_slash: {s:?} is not \"reject\" or \"keep\""
                ));
                EncodedSlash::Reject
            }
        };

        let mut listeners = Vec::new();
        for (i, RawListener { name, bind, tls }) in listener.into_iter().enumerate() {
            let key = format!("gateway.listener[{i}]");
            let name = name.unwrap_or_else(|| format!("listener{i}"));
            let bind = match bind.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    problems.push(format!("{key}.bind: {bind:?} is not an address:port"));
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            if listeners.iter().any(|l: &ListenerConfig| l.name == name) {
                problems.push(format!("{key}.name: {name:?} is used twice"));
            }
            let tls = tls.map(|RawTls { certificates, client_auth, client_ca }| {
                let key = format!("{key}.tls");
                if certificates.is_empty() {
                    problems.push(format!("{key}.certificates: at least one certificate is needed"));
                }
                let client_auth = match client_auth.as_deref() {
                    None | Some("off") => ClientAuth::Off,
                    Some("optional") => ClientAuth::Optional,
                    Some("required") => ClientAuth::Required,
                    Some(s) => {
                        problems.push(format!(
                            "{key}.client_auth: {s:?} is not \"off\", \"optional\" or \"required\""
                        ));
                        ClientAuth::Off
                    }
                };
                if client_auth != ClientAuth::Off && client_ca.is_none() {
                    problems.push(format!(
                        "{key}.client_ca: needed when client_auth is not \"off\" (the CA bundle client certificates must chain to)"
                    ));
                }
                TlsConfig {
                    certificates: certificates
                        .into_iter()
                        .map(|RawCert { cert, key }| (resolve(base, &cert), resolve(base, &key)))
                        .collect(),
                    client_auth,
                    client_ca: client_ca.map(|p| resolve(base, &p)),
                    key_path: key,
                }
            });
            listeners.push(ListenerConfig { name, bind, tls });
        }

        let mut upstreams = Vec::new();
        for (i, u) in upstream.into_iter().enumerate() {
            let RawUpstream {
                name,
                peers,
                scheme,
                protocol,
                balance,
                eject_after_failures,
                eject_for,
                ca,
                server_name,
            } = u;
            let key = format!("gateway.upstream[{i}]");
            if upstreams.iter().any(|u: &UpstreamConfig| u.name == name) {
                problems.push(format!("{key}.name: {name:?} is used twice"));
            }
            if peers.is_empty() {
                problems.push(format!("{key}.peers: at least one peer is needed"));
            }
            for (j, p) in peers.iter().enumerate() {
                if !valid_peer(p) {
                    problems.push(format!(
                        "{key}.peers[{j}]: {p:?} is not host:port (e.g. \"127.0.0.1:8080\" or \"api.internal:443\")"
                    ));
                }
            }
            let https = match scheme.as_deref() {
                None | Some("http") => false,
                Some("https") => true,
                Some(s) => {
                    problems.push(format!("{key}.scheme: {s:?} is not \"http\" or \"https\""));
                    false
                }
            };
            let h2 = match protocol.as_deref() {
                None | Some("http1") => false,
                Some("h2") => true,
                Some(s) => {
                    problems.push(format!("{key}.protocol: {s:?} is not \"http1\" or \"h2\""));
                    false
                }
            };
            let balance = match balance.as_deref() {
                None | Some("round_robin") => Balance::RoundRobin,
                Some("least_outstanding") => Balance::LeastOutstanding,
                Some(s) => {
                    problems.push(format!(
                        "{key}.balance: {s:?} is not \"round_robin\" or \"least_outstanding\""
                    ));
                    Balance::RoundRobin
                }
            };
            if !https && (ca.is_some() || server_name.is_some()) {
                problems.push(format!(
                    "{key}: ca and server_name apply only to scheme = \"https\""
                ));
            }
            upstreams.push(UpstreamConfig {
                name,
                peers,
                https,
                h2,
                balance,
                eject_after_failures: eject_after_failures.unwrap_or(3).max(1),
                eject_for: dur(&format!("{key}.eject_for"), &eject_for, "10s", problems),
                ca: ca.map(|p| resolve(base, &p)),
                server_name,
            });
        }

        let mut routes = Vec::new();
        for (i, r) in route.into_iter().enumerate() {
            let RawRoute {
                name,
                hosts,
                path_prefix,
                methods,
                upstream,
                authenticate,
                public,
                require_scopes,
                require_claims,
                path_pattern,
                authz,
                inspect,
                inspect_action,
                inspect_threshold,
                response_filter,
                response_filter_kinds,
                mcp,
                credential,
                approval,
                approval_mode,
                approval_timeout,
                rate_limit,
            } = r;
            let key = format!("gateway.route[{i}]");
            let name = name.unwrap_or_else(|| format!("route{i}"));
            let hosts: Vec<String> = hosts
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            for (j, h) in hosts.iter().enumerate() {
                if !valid_host_pattern(h) {
                    problems.push(format!(
                        "{key}.hosts[{j}]: {h:?} is not a host name or \"*.domain\""
                    ));
                }
            }
            let path_prefix = path_prefix.unwrap_or_else(|| "/".into());
            match super::normalize::normalize_path(&path_prefix, encoded_slash) {
                Ok(n) if n == path_prefix => {}
                Ok(n) => problems.push(format!(
                    "{key}.path_prefix: {path_prefix:?} is not in normal form (requests are matched after normalisation; write {n:?})"
                )),
                Err(e) => problems.push(format!("{key}.path_prefix: {path_prefix:?}: {e}")),
            }
            let mut ms = Vec::new();
            for (j, m) in methods.unwrap_or_default().iter().enumerate() {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => ms.push(m),
                    Err(_) => problems.push(format!("{key}.methods[{j}]: {m:?} is not a method")),
                }
            }
            let upstream = match upstreams.iter().position(|u| u.name == upstream) {
                Some(u) => u,
                None => {
                    problems.push(format!(
                        "{key}.upstream: {upstream:?} is not the name of a [[gateway.upstream]]"
                    ));
                    0
                }
            };
            let public = public.unwrap_or(false);
            let authenticate = authenticate.unwrap_or_default();
            match (public, authenticate.is_empty()) {
                (true, false) => problems.push(format!(
                    "{key}: public = true and authenticate are exclusive (a public route authenticates nobody)"
                )),
                (false, true) => problems.push(format!(
                    "{key}.authenticate: a route must list authentication providers, or say public = true (nothing is public by default)"
                )),
                _ => {}
            }
            for (j, a) in authenticate.iter().enumerate() {
                if !auth_providers.contains(a) {
                    problems.push(format!(
                        "{key}.authenticate[{j}]: {a:?} is not a provider name (known: {})",
                        if auth_providers.is_empty() {
                            "none configured under [authn]".to_string()
                        } else {
                            auth_providers.join(", ")
                        }
                    ));
                }
            }
            let require_scopes = require_scopes.unwrap_or_default();
            let require_claims: Vec<(String, serde_json::Value)> = require_claims
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| match serde_json::to_value(&v) {
                    Ok(j) => Some((k, j)),
                    Err(e) => {
                        problems.push(format!("{key}.require_claims.{k}: {e}"));
                        None
                    }
                })
                .collect();
            if public && (!require_scopes.is_empty() || !require_claims.is_empty()) {
                problems.push(format!(
                    "{key}: require_scopes/require_claims need authentication, and the route is public"
                ));
            }
            let path_pattern = match path_pattern
                .as_deref()
                .map(crate::authz::policy::PathPattern::parse)
            {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    problems.push(format!("{key}.path_pattern: {e}"));
                    None
                }
            };
            let vars = path_pattern
                .as_ref()
                .map(|p| p.vars().to_vec())
                .unwrap_or_default();
            let mut checks = Vec::new();
            for (j, c) in authz.unwrap_or_default().iter().enumerate() {
                match crate::authz::policy::CheckPolicy::compile(c, &vars) {
                    Ok(c) => checks.push(c),
                    Err(e) => problems.push(format!("{key}.authz[{j}]: {e}")),
                }
            }
            if public && !checks.is_empty() {
                problems.push(format!(
                    "{key}: authz checks name the caller, and the route is public (set authenticate)"
                ));
            }
            let (inspect, filter) = crate::inspect::config::RawRouteInspect {
                inspect,
                inspect_action,
                inspect_threshold,
                response_filter,
                response_filter_kinds,
            }
            .validate(&key, problems);
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            let mcp = mcp.map(|m| m.validate(&key, &name, &names, problems));
            if mcp.is_some() && public {
                problems.push(format!(
                    "{key}.mcp: an MCP route is an OAuth resource server; it cannot be public (set authenticate)"
                ));
            }
            if credential.is_some() && public {
                problems.push(format!(
                    "{key}.credential: credentials are per user, and the route is public (set authenticate)"
                ));
            }
            let approval = match approval.as_deref() {
                None | Some("none") => {
                    if approval_mode.is_some() || approval_timeout.is_some() {
                        problems.push(format!(
                            "{key}: approval_mode/approval_timeout need approval = \"required\""
                        ));
                    }
                    None
                }
                Some("required") => {
                    let m = approval_mode.as_deref().unwrap_or("hold");
                    let mode = crate::agent::approvals::Mode::parse(m).unwrap_or_else(|| {
                        problems.push(format!(
                            "{key}.approval_mode: {m:?} is not \"hold\" or \"async\""
                        ));
                        crate::agent::approvals::Mode::Hold
                    });
                    let timeout = approval_timeout.as_ref().map(|_| {
                        dur(
                            &format!("{key}.approval_timeout"),
                            &approval_timeout,
                            "5m",
                            problems,
                        )
                    });
                    Some(RouteApproval { mode, timeout })
                }
                Some(o) => {
                    problems.push(format!(
                        "{key}.approval: {o:?} is not \"required\" or \"none\""
                    ));
                    None
                }
            };
            let rate_limit = match rate_limit {
                None => RouteRateLimit::default(),
                Some(r) => {
                    let one = |what: &str, v: &Option<String>, problems: &mut Vec<String>| {
                        v.as_deref().and_then(|s| match parse_rate(s) {
                            Ok(per_sec) => Some(Rate {
                                per_sec,
                                burst: r.burst.unwrap_or(per_sec.max(1.0)),
                            }),
                            Err(e) => {
                                problems.push(format!("{key}.rate_limit.{what}: {e}"));
                                None
                            }
                        })
                    };
                    if r.burst.is_some_and(|b| !(b.is_finite() && b >= 1.0)) {
                        problems.push(format!("{key}.rate_limit.burst: must be at least 1"));
                    }
                    let rl = RouteRateLimit {
                        per_source: one("per_source", &r.per_source, problems),
                        per_principal: one("per_principal", &r.per_principal, problems),
                        per_route: one("per_route", &r.per_route, problems),
                    };
                    if rl.per_principal.is_some() && public {
                        problems.push(format!(
                            "{key}.rate_limit.per_principal: the route is public (no principal)"
                        ));
                    }
                    rl
                }
            };
            routes.push(RouteConfig {
                name,
                hosts,
                path_prefix,
                methods: ms,
                upstream,
                authenticate,
                public,
                require_scopes,
                require_claims,
                path_pattern,
                authz: checks,
                inspect,
                filter,
                mcp,
                credential,
                approval,
                rate_limit,
            });
        }

        GatewayConfig {
            workers,
            trusted_proxies: trusted,
            access_log,
            limits,
            identity_headers,
            encoded_slash,
            listeners,
            upstreams,
            routes,
            tracing: tracing.and_then(|t| t.validate(problems)),
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("100/s"), Ok(100.0));
        assert_eq!(parse_rate("30/m"), Ok(0.5));
        assert_eq!(parse_rate(" 7200 / h "), Ok(2.0));
        assert!(parse_rate("10").unwrap_err().contains("not a rate"));
        assert!(parse_rate("10/d").unwrap_err().contains("unit"));
        assert!(parse_rate("-1/s").unwrap_err().contains("positive"));
        assert!(parse_rate("x/s").unwrap_err().contains("not a number"));
    }
}

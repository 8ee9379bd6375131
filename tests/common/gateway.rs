//! The real `ztag run` daemon as an API gateway on loopback, with a
//! generated config: a TLS listener (two SNI certificates from the test CA,
//! optional client certificates) and a plain one, routes to an echo
//! [`Upstream`], `[[authn.jwt]]` on the test [`Idp`] through OIDC discovery,
//! a client-assertion client and mTLS. `[xdp] enabled = false`, its own
//! state dir, admin socket and ports, so several run at once without root.
//! Killed on drop; its log is printed when the test failed.
//!
//! Routes (first match wins):
//! * `/docs/{id}` — `corp` tokens, then an FGA check: `user:{sub}` must be
//!   `viewer` (GET/HEAD) or `editor` (PUT/DELETE) of `document:{id}`, in
//!   the embedded store `default` with the model [`FGA_MODEL`] (or in a
//!   remote OpenFGA with [`Options::authz_remote`]);
//! * `/admin` — `corp` tokens with scope `admin`;
//! * `/v1/` — `corp`, `agents`, `mtls`, scope `api:read`;
//! * `/mtls/` — `mtls` only;
//! * `/pool/` — public, to the pool of [`Gateway::upstream`] and
//!   [`Gateway::upstream_b`] over h2c, round robin, passive health;
//! * `/dead/` — public, to a peer where nothing listens;
//! * `/` — public.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Proc, TempDir,
    idp::{Alg, Idp, SigningKey, jwks},
    pki::Ca,
    upstream::Upstream,
    ztag_bin,
};

/// The audience tokens for this gateway carry.
pub const AUDIENCE: &str = "https://api.example.com";
/// The registered client-assertion client.
pub const CLIENT_ID: &str = "billing-agent";
/// The SAN URI of the test client certificate.
pub const CLIENT_URI: &str = "spiffe://test.example/agent";
/// The default (first) certificate's name.
pub const HOST: &str = "api.example.com";
/// The second certificate's name.
pub const OTHER_HOST: &str = "other.example.com";

/// The FGA model the gateway installs at start (`authz.model_file`).
pub const FGA_MODEL: &str = "model
  schema 1.1
type user
type group
  relations
    define member: [user, group#member]
type folder
  relations
    define parent: [folder]
    define viewer: [user, group#member] or viewer from parent
type document
  relations
    define parent: [folder]
    define owner: [user]
    define editor: [user, group#member] or owner
    define viewer: [user, group#member] or editor or viewer from parent
type tool
  relations
    define can_call: [user, group#member]
";

/// The MCP resource tokens for MCP routes are issued for (also an accepted
/// audience of the `corp` provider).
pub const MCP_RESOURCE: &str = "https://api.example.com/agent-mcp";
/// The resource of the federating MCP route.
pub const MCP_FED_RESOURCE: &str = "https://api.example.com/fed-mcp";

/// The admin token of the gateway's TCP admin listener.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Remote OpenFGA settings: `(api_url, store_id, api_token)`.
pub type RemoteFga = (String, String, String);

/// What varies between tests. `Default` is a lenient, fast setup.
#[derive(Clone, Debug)]
pub struct Options {
    /// `gateway.paths.encoded_slash`.
    pub encoded_slash: &'static str,
    /// `client_auth` of the TLS listener.
    pub client_auth: &'static str,
    /// `[gateway.limits]` values, as TOML.
    pub header_read_timeout: &'static str,
    pub idle_timeout: &'static str,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub upstream_connect_timeout: &'static str,
    pub upstream_response_timeout: &'static str,
    /// `gateway.trusted_proxies`.
    pub trusted_proxies: Vec<String>,
    /// `[[authn.jwt]]` timing.
    pub refresh_interval: &'static str,
    pub min_refresh_interval: &'static str,
    pub max_staleness: &'static str,
    pub leeway: &'static str,
    /// `authn.cache.max_entries`.
    pub cache_entries: u64,
    /// `[authz] mode = "remote"` against this server instead of the
    /// embedded store.
    pub authz_remote: Option<RemoteFga>,
    /// More `[[gateway.route]]` tables, placed before the catch-all `/`
    /// route (and `[[gateway.upstream]]` tables).
    pub extra_routes: String,
    /// More TOML at the end of the file (e.g. `[agent]`).
    pub extra_config: String,
    /// Files to write in the test directory before the start: (name, text).
    pub files: Vec<(String, String)>,
    /// HTTPS on the admin listener (the `api` certificate) with client
    /// certificates from the test CA.
    pub admin_tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            encoded_slash: "reject",
            client_auth: "optional",
            header_read_timeout: "5s",
            idle_timeout: "30s",
            max_header_bytes: 16384,
            max_body_bytes: 65536,
            max_connections: 2000,
            max_connections_per_source: 512,
            upstream_connect_timeout: "1s",
            upstream_response_timeout: "5s",
            trusted_proxies: vec!["10.0.0.0/8".into()],
            refresh_interval: "5m",
            min_refresh_interval: "1s",
            max_staleness: "1h",
            leeway: "5s",
            cache_entries: 1000,
            authz_remote: None,
            extra_routes: String::new(),
            extra_config: String::new(),
            files: Vec::new(),
            admin_tls: false,
        }
    }
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768+), so that no outgoing connection of another test can take it
/// between this check and the daemon's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 400) as u16 * 25,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(p < 32_000, "no free port below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A running gateway with everything it talks to.
pub struct Gateway {
    // Drop order: the daemon first, then its peers, then the files.
    pub proc: Proc,
    pub upstream: Upstream,
    /// The second peer of the `/pool/` upstream.
    pub upstream_b: Upstream,
    pub idp: Idp,
    pub ca: Ca,
    /// The registered client's ES256 assertion key.
    pub client_key: SigningKey,
    pub tls_port: u16,
    pub plain_port: u16,
    pub metrics_port: u16,
    /// The admin TCP listener (OpenFGA API; [`ADMIN_TOKEN`]).
    pub admin_port: u16,
    /// PEM files: the CA, the client certificate and key.
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key_file: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub access_log: PathBuf,
    pub opts: Options,
    pub dir: TempDir,
}

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Gateway {
    /// Builds the world (CA, IdP, upstream), writes the config and starts
    /// the daemon; returns once both listeners accept.
    pub fn start(opts: Options) -> Gateway {
        let dir = TempDir::new();
        let d = &dir.0;
        let ca = Ca::new("ztag test CA");
        let ca_file = ca.write(d, "ca.crt");
        let (api_cert, api_key) = ca.server(&[HOST, "127.0.0.1"]).write(d, "api");
        let (other_cert, other_key) = ca.server(&[OTHER_HOST]).write(d, "other");
        let (client_cert, client_key_file) = ca.client(CLIENT_URI, "agent").write(d, "client");
        let idp = Idp::start(&ca);
        let upstream = Upstream::start();
        let upstream_b = Upstream::start();
        let dead_port = free_port();
        let client_key = SigningKey::generate(Alg::ES256, "billing-1");
        std::fs::create_dir_all(d.join("clients")).unwrap();
        std::fs::write(
            d.join("clients/billing-agent.jwks.json"),
            jwks(&[&client_key]).to_string(),
        )
        .unwrap();
        let (tls_port, plain_port, metrics_port, admin_port) =
            (free_port(), free_port(), free_port(), free_port());
        std::fs::write(d.join("admin.token"), ADMIN_TOKEN).unwrap();
        std::fs::create_dir_all(d.join("authz")).unwrap();
        std::fs::write(d.join("authz/model.fga"), FGA_MODEL).unwrap();
        let authz = match &opts.authz_remote {
            None => "[authz]\nstore = \"default\"\nmodel_file = \"authz/model.fga\"\n".to_string(),
            Some((url, store, token)) => {
                std::fs::write(d.join("fga.token"), token).unwrap();
                format!(
                    "[authz]\nmode = \"remote\"\n[authz.remote]\napi_url = {}\nstore_id = {}\ntimeout = \"500ms\"\ncache_ttl = \"200ms\"\n[authz.remote.credentials]\nmethod = \"api_token\"\napi_token_file = \"fga.token\"\n",
                    toml_str(url),
                    toml_str(store)
                )
            }
        };
        let o = &opts;
        let trusted = o
            .trusted_proxies
            .iter()
            .map(|s| toml_str(s))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"# Generated by tests/common/gateway.rs
[xdp]
enabled = false

[state]
dir = {state}

[admin]
socket = {socket}
listen = "127.0.0.1:{admin_port}"
token_file = "admin.token"
{admin_tls}

{authz}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[gateway]
workers = 2
trusted_proxies = [{trusted}]
access_log = {access_log}

[gateway.limits]
header_read_timeout = "{hrt}"
idle_timeout = "{idle}"
max_header_bytes = {mhb}
max_body_bytes = {mbb}
max_connections = {mc}
max_connections_per_source = {mcps}
upstream_connect_timeout = "{uct}"
upstream_response_timeout = "{urt}"

[gateway.identity_headers]
subject = "x-ztag-subject"
client_id = "x-ztag-client-id"
scopes = "x-ztag-scopes"

[gateway.paths]
encoded_slash = "{es}"

[[gateway.listener]]
name = "tls"
bind = "127.0.0.1:{tls_port}"
[gateway.listener.tls]
certificates = [
  {{ cert = {api_cert}, key = {api_key} }},
  {{ cert = {other_cert}, key = {other_key} }},
]
client_auth = "{client_auth}"
client_ca = {ca_file}

[[gateway.listener]]
name = "plain"
bind = "127.0.0.1:{plain_port}"

[[gateway.upstream]]
name = "echo"
peers = ["{upstream}"]
scheme = "http"
protocol = "http1"
balance = "round_robin"
eject_after_failures = 3
eject_for = "1s"

[[gateway.upstream]]
name = "pool"
peers = ["{upstream}", "{upstream_b}"]
scheme = "http"
protocol = "h2"
balance = "round_robin"
eject_after_failures = 3
eject_for = "30s"

[[gateway.upstream]]
name = "dead"
peers = ["127.0.0.1:{dead_port}"]

# HTTPS upstreams: the idp's server, verified against the test CA under the
# name "localhost"; and the same server checked against the system roots,
# which do not know the test CA.
[[gateway.upstream]]
name = "idp-tls"
peers = ["{idp_addr}"]
scheme = "https"
ca = {ca_file}
server_name = "localhost"

[[gateway.upstream]]
name = "idp-untrusted"
peers = ["{idp_addr}"]
scheme = "https"

[[gateway.route]]
name = "docs"
path_prefix = "/docs"
path_pattern = "/docs/{{id}}"
upstream = "echo"
authenticate = ["corp"]
[[gateway.route.authz]]
user = "user:{{jwt.sub}}"
relation = {{ GET = "viewer", HEAD = "viewer", PUT = "editor", DELETE = "editor" }}
object = "document:{{path.id}}"

[[gateway.route]]
name = "admin"
path_prefix = "/admin"
upstream = "echo"
authenticate = ["corp"]
require_scopes = ["admin"]

[[gateway.route]]
name = "api"
path_prefix = "/v1/"
upstream = "echo"
authenticate = ["corp", "agents", "mtls"]
require_scopes = ["api:read"]

[[gateway.route]]
name = "mtls"
path_prefix = "/mtls/"
upstream = "echo"
authenticate = ["mtls"]

[[gateway.route]]
name = "pool"
path_prefix = "/pool/"
upstream = "pool"
public = true

[[gateway.route]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
public = true

[[gateway.route]]
name = "idp-tls"
path_prefix = "/.well-known/"
upstream = "idp-tls"
public = true

[[gateway.route]]
name = "idp-untrusted"
path_prefix = "/untrusted/"
upstream = "idp-untrusted"
public = true

[[gateway.route]]
name = "llm"
path_prefix = "/llm/"
upstream = "echo"
public = true
inspect = "llm"
inspect_action = "block"

[[gateway.route]]
name = "llm-flag"
path_prefix = "/llm-flag/"
upstream = "echo"
public = true
inspect = "llm"
inspect_action = "flag"

[[gateway.route]]
name = "mcp"
path_prefix = "/mcp/"
upstream = "echo"
public = true
inspect = "mcp"
response_filter = "redact"

[[gateway.route]]
name = "filtered"
path_prefix = "/filtered/"
upstream = "echo"
public = true
response_filter = "redact"

[[gateway.route]]
name = "filter-block"
path_prefix = "/filter-block/"
upstream = "echo"
public = true
response_filter = "block"

[[gateway.route]]
name = "limited"
path_prefix = "/limited/"
upstream = "echo"
public = true
rate_limit = {{ per_source = "1/m", burst = 2 }}

[[gateway.route]]
name = "limited-user"
path_prefix = "/limited-user/"
upstream = "echo"
authenticate = ["corp"]
rate_limit = {{ per_principal = "1/m" }}

{extra_routes}

[[gateway.route]]
name = "public"
path_prefix = "/"
upstream = "echo"
public = true

[[authn.jwt]]
name = "corp"
issuer = {issuer}
audiences = ["{AUDIENCE}", "{MCP_RESOURCE}", "{MCP_FED_RESOURCE}"]
algorithms = ["RS256", "ES256", "EdDSA"]
discovery = {issuer}
ca = {ca_file}
refresh_interval = "{ri}"
min_refresh_interval = "{mri}"
max_staleness = "{ms}"
leeway = "{leeway}"
required_claims = ["sub"]

[authn.client_assertion]
name = "agents"
audience = "{AUDIENCE}"
max_lifetime = "5m"
leeway = "5s"

[[authn.client_assertion.clients]]
client_id = "{CLIENT_ID}"
jwks_file = "clients/billing-agent.jwks.json"
algorithms = ["ES256"]
scopes = ["api:read"]

[authn.mtls]
name = "mtls"
subject_from = "san_uri"

[authn.cache]
max_entries = {cache}

{extra_config}
"#,
            state = toml_str(&d.join("state").display().to_string()),
            socket = toml_str(&d.join("admin.sock").display().to_string()),
            access_log = toml_str(&d.join("access.log").display().to_string()),
            hrt = o.header_read_timeout,
            idle = o.idle_timeout,
            mhb = o.max_header_bytes,
            mbb = o.max_body_bytes,
            mc = o.max_connections,
            mcps = o.max_connections_per_source,
            uct = o.upstream_connect_timeout,
            urt = o.upstream_response_timeout,
            es = o.encoded_slash,
            api_cert = toml_str(&api_cert.display().to_string()),
            api_key = toml_str(&api_key.display().to_string()),
            other_cert = toml_str(&other_cert.display().to_string()),
            other_key = toml_str(&other_key.display().to_string()),
            client_auth = o.client_auth,
            ca_file = toml_str(&ca_file.display().to_string()),
            upstream = upstream.addr,
            upstream_b = upstream_b.addr,
            issuer = toml_str(&idp.issuer),
            idp_addr = idp.addr,
            ri = o.refresh_interval,
            mri = o.min_refresh_interval,
            ms = o.max_staleness,
            leeway = o.leeway,
            cache = o.cache_entries,
            admin_port = admin_port,
            admin_tls = if o.admin_tls {
                format!(
                    "tls_cert = {}\ntls_key = {}\nclient_ca = {}",
                    toml_str(&api_cert.display().to_string()),
                    toml_str(&api_key.display().to_string()),
                    toml_str(&ca_file.display().to_string())
                )
            } else {
                String::new()
            },
            authz = authz,
            extra_routes = o.extra_routes,
            extra_config = o.extra_config,
        );
        for (name, text) in &o.files {
            std::fs::write(d.join(name), text).unwrap();
        }
        let config_path = d.join("ztag.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut g = Gateway {
            proc: Proc(None),
            upstream,
            upstream_b,
            idp,
            ca,
            client_key,
            tls_port,
            plain_port,
            metrics_port,
            admin_port,
            ca_file,
            client_cert,
            client_key_file,
            config: config_path,
            log: d.join("ztag.log"),
            access_log: d.join("access.log"),
            opts,
            dir,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(ztag_bin())
            .arg("--socket")
            .arg(self.dir.0.join("admin.sock"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,ztag=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting ztag run");
        self.proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            // The dashboard and metrics listeners are bound after the
            // gateway's (and after the privilege drop).
            if up(self.plain_port)
                && up(self.tls_port)
                && up(self.admin_port)
                && up(self.metrics_port)
            {
                return;
            }
            if let Some(c) = self.proc.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "ztag run exited with {status}:\n{}\nconfig:\n{}",
                    self.log_text(),
                    std::fs::read_to_string(&self.config).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ztag run did not open its listeners within 30s:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Stop the daemon (SIGKILL: no clean shutdown) and start it again on
    /// the same config and state.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_file(self.dir.0.join("admin.sock"));
        self.spawn();
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.0.join("admin.sock")
    }

    /// `ztag --socket ADMIN ARGS...` with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut c = Command::new(ztag_bin())
            .arg("--socket")
            .arg(self.admin_socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ztag");
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    /// `ztag --socket ADMIN fga ARGS...`.
    pub fn fga(&self, args: &[&str]) -> Output {
        Command::new(ztag_bin())
            .arg("--socket")
            .arg(self.admin_socket())
            .arg("fga")
            .args(args)
            .output()
            .expect("running ztag fga")
    }

    /// A request to the admin TCP listener (OpenFGA API), with `token`.
    pub fn admin_api(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).expect("admin listener");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).unwrap();
        read_reply(&mut s)
    }

    /// The daemon's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `127.0.0.1:PLAIN`.
    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.plain_port))
    }

    /// A valid `corp` token (newest `alg` key) for `sub` with `scope`.
    pub fn token(&self, alg: Alg, sub: &str, scope: &str) -> String {
        self.idp.token(alg, &self.idp.claims(sub, AUDIENCE, scope))
    }

    /// A fresh client assertion from the registered client.
    pub fn assertion(&self) -> String {
        self.client_key.client_assertion(CLIENT_ID, AUDIENCE)
    }

    /// `curl -sS --max-time 10 ARGS... URL` against the TLS listener with
    /// `HOST` resolved to 127.0.0.1 and the test CA trusted; `path` is
    /// appended to `https://HOST:PORT`. Returns the output; stdout ends with
    /// `\n<status> <http_version>` (from `-w`).
    pub fn curl_tls(&self, host: &str, path: &str, args: &[&str]) -> Output {
        let port = self.tls_port;
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca_file)
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(args)
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .expect("running curl")
    }

    /// A request over plain HTTP/1.1 on a fresh connection (`Connection:
    /// close` is added unless `raw_headers` has a Connection header).
    pub fn get(&self, path: &str, raw_headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, raw_headers, b"")
    }

    /// Same, with a method and a body (Content-Length set).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        raw_headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !raw_headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            req.push_str(&format!("Host: {HOST}\r\n"));
        }
        for (k, v) in raw_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !raw_headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
        {
            req.push_str("Connection: close\r\n");
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    /// Sends `bytes` on a fresh plain connection and reads one response.
    pub fn raw(&self, bytes: &[u8]) -> Reply {
        let mut s =
            TcpStream::connect(self.plain_addr()).expect("connecting to the plain listener");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(bytes).unwrap();
        read_reply(&mut s)
    }

    /// GET `/metrics` from the metrics listener.
    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.proc.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- ztag log ({}) ----\n{}\n---- access log ----\n{}\n---- end ----",
                self.log.display(),
                tail(&self.log_text(), 200),
                tail(
                    &std::fs::read_to_string(&self.access_log).unwrap_or_default(),
                    50
                )
            );
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status code; 0 when the connection closed without a response.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Everything read, for messages.
    pub wire: Vec<u8>,
}

impl Reply {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the echo upstream's answer); panics with the
    /// response when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}):\n{}",
                String::from_utf8_lossy(&self.wire)
            )
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = String::from_utf8_lossy(&self.wire);
        let w: String = w.chars().take(2000).collect();
        write!(f, "{w}")
    }
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response: head, then a body by Content-Length, chunked, or to
/// the end of the connection.
pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut eof = false;
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                return Reply {
                    wire: buf,
                    ..Reply::default()
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut read_more = |buf: &mut Vec<u8>| -> bool {
        if eof {
            return false;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                eof = true;
                false
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < head_end + len && read_more(&mut buf) {}
        buf[head_end..(head_end + len).min(buf.len())].to_vec()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break Some(pos + i);
                }
                if !read_more(&mut buf) {
                    break None;
                }
            };
            let Some(le) = line_end else { break };
            let size_txt = String::from_utf8_lossy(&buf[pos..le]).into_owned();
            let size =
                usize::from_str_radix(size_txt.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            pos = le + 2;
            if size == 0 {
                break;
            }
            while buf.len() < pos + size + 2 && read_more(&mut buf) {}
            body.extend_from_slice(&buf[pos..(pos + size).min(buf.len())]);
            pos += size + 2;
            if pos > buf.len() {
                break;
            }
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        while read_more(&mut buf) {}
        buf[head_end..].to_vec()
    };
    Reply {
        status,
        headers,
        body,
        wire: buf,
    }
}

//! Typed configuration. The TOML is read into raw serde structs (unknown keys
//! are errors: a misspelt security key must not be silently ignored), then
//! validated into [`Config`] once; every error names its key path, and all
//! errors are reported together.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The configuration `ztag run` uses when no `--config` is given: the shipped
/// example, compiled in.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/default/ztag.toml");

/// Highest per-source connection rate the kernel's token bucket accepts
/// (keeps its fixed-point arithmetic inside 64 bits).
pub const MAX_RATE_PER_SEC: u32 = 1_000_000;

/// How the XDP/TC program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP: works on every interface, slower.
    Skb,
    /// TC ingress classifier (tcx link).
    Tc,
    /// Native, else SKB, else TC; the daemon logs which one it got.
    Auto,
}

impl AttachMode {
    /// Parses the config/CLI spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "native" => AttachMode::Native,
            "skb" => AttachMode::Skb,
            "tc" => AttachMode::Tc,
            "auto" => AttachMode::Auto,
            _ => return None,
        })
    }

    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::Tc => "tc",
            AttachMode::Auto => "auto",
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The kernel enforcement plane.
    pub xdp: XdpConfig,
    /// Durable state.
    pub state: StateConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The L7 gateway: listeners, routes, upstreams, limits.
    pub gateway: crate::proxy::config::GatewayConfig,
    /// Authentication providers (validated; keys load at start).
    pub authn: crate::authn::RawAuthn,
    /// The FGA engine route policies ask.
    pub authz: crate::authz::config::AuthzConfig,
    /// AI content inspection (detector weights, flag header).
    pub inspect: crate::inspect::InspectConfig,
    /// AI agents: vault, connections, approvals.
    pub agent: crate::agent::AgentConfig,
    /// The risk engine's score model.
    pub risk: crate::risk::config::RiskConfig,
    /// Fleet mode (`[fleet] redis = ...`); `None`: this gateway alone.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// The daemon process: the account it runs as, shutdown.
    pub process: ProcessConfig,
    /// Directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// The configuration text as loaded, for the dashboard's read-only view
    /// (inline values under secret-sounding keys replaced by "[redacted]";
    /// ztag reads secrets from files, so there should be none).
    pub text: std::sync::Arc<str>,
}

/// `[xdp]`
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// Whether the kernel plane runs at all (`false`: gateway only).
    pub enabled: bool,
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Attach mode for all of them.
    pub mode: AttachMode,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// How often expired entries are removed.
    pub sweep_interval: Duration,
    /// One drop in N becomes an event (0: none).
    pub events_sample_one_in: u32,
    /// New TCP connections per second per source (0: no limit).
    pub rate_per_sec: u32,
    /// Token bucket size.
    pub rate_burst: u32,
}

/// `[state]`
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Directory of the SQLite database.
    pub dir: PathBuf,
}

impl StateConfig {
    /// Path of the database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("ztag.db")
    }
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Unix socket path (created with mode 0600).
    pub socket: PathBuf,
    /// Optional TCP listener for the web dashboard and the
    /// OpenFGA-compatible API; every request needs the admin token (or,
    /// with `client_ca`, a verified client certificate).
    pub listen: Option<SocketAddr>,
    /// File holding the admin bearer token. With `listen` and neither
    /// `token_file` nor `client_ca` given, `<state.dir>/admin.token`, which
    /// the daemon creates (random, mode 0600) when missing.
    pub token_file: Option<PathBuf>,
    /// `token_file` is the generated default: create it when missing.
    pub token_generated: bool,
    /// Group that may use the admin socket (mode 0660); `None`: 0600,
    /// the daemon's user only.
    pub socket_group: Option<String>,
    /// HTTPS on the TCP listener (`tls_cert`, `tls_key`, optional
    /// `client_ca`); required when `listen` is not a loopback address.
    pub tls: Option<crate::proxy::config::TlsConfig>,
}

/// `[process]`
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// After attaching and binding, switch to this user (name or uid).
    pub user: Option<String>,
    /// ... and this group (default: the user's primary group).
    pub group: Option<String>,
    /// On SIGTERM, open connections get this long to finish their
    /// requests (no new ones are accepted); then the process exits.
    pub drain_timeout: Duration,
    /// On exit, detach the program and remove the pinned maps (default:
    /// they stay, so the kernel keeps dropping blocked sources).
    pub detach_on_exit: bool,
}

/// `[metrics]`
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address of the `/metrics` listener; `None` disables it.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    xdp: RawXdp,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    gateway: crate::proxy::config::RawGateway,
    #[serde(default)]
    authn: crate::authn::RawAuthn,
    #[serde(default)]
    authz: crate::authz::config::RawAuthz,
    #[serde(default)]
    inspect: crate::inspect::config::RawInspect,
    #[serde(default)]
    agent: crate::agent::RawAgent,
    #[serde(default)]
    risk: crate::risk::config::RawRisk,
    #[serde(default)]
    fleet: crate::fleet::RawFleet,
    #[serde(default)]
    process: RawProcess,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    user: Option<String>,
    group: Option<String>,
    drain_timeout: Option<String>,
    detach_on_exit: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawXdp {
    enabled: Option<bool>,
    interfaces: Option<Vec<String>>,
    mode: Option<String>,
    pin_dir: Option<PathBuf>,
    sweep_interval: Option<String>,
    events_sample_one_in: Option<u32>,
    #[serde(default)]
    rate_limit: RawRateLimit,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    new_connections_per_second: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

/// The config text with inline values of secret-sounding keys (`*secret*`,
/// `*password*`, `*passphrase*`, `*token*`, `*api_key*`, but not the
/// `*_file` keys that name files) replaced by `"[redacted]"`.
pub fn redacted(text: &str) -> String {
    fn secret_key(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        !k.ends_with("_file")
            && !k.ends_with("_path")
            && [
                "secret",
                "password",
                "passphrase",
                "token",
                "api_key",
                "private_key",
            ]
            .iter()
            .any(|s| k.contains(s))
    }
    fn walk(v: &mut toml::Value) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    if secret_key(k) && !v.is_table() && !v.is_array() {
                        *v = toml::Value::String("[redacted]".into());
                    } else {
                        walk(v);
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => {
            let mut v = toml::Value::Table(t);
            walk(&mut v);
            toml::to_string_pretty(&v).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// Default admin socket, also used by the CLI when no `--socket` is given.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ztag/admin.sock";
/// Default bpffs directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ztag";

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}:\n  {}", .source_name.as_deref().map(|s| format!(" in {s}")).unwrap_or_default(), .problems.join("\n  "))]
pub struct ConfigError {
    /// File the config came from.
    pub source_name: Option<String>,
    /// `key.path: reason` lines.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: Some(path.display().to_string()),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        Self::parse_with_base(&text, &base).map_err(|mut e| {
            e.source_name = Some(path.display().to_string());
            e
        })
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        match Self::parse(EMBEDDED_DEFAULT) {
            Ok(c) => c,
            // A test loads the embedded config, so this cannot ship broken.
            Err(e) => panic!("the embedded default configuration is invalid: {e}"),
        }
    }

    /// Validates config text; relative paths are resolved against the
    /// current directory.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        Self::parse_with_base(text, &cwd)
    }

    /// Validates config text; relative paths are resolved against `base`.
    pub fn parse_with_base(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            source_name: None,
            problems: vec![toml_error(&e)],
        })?;
        let mut problems = Vec::new();
        let RawConfig {
            xdp,
            state,
            admin,
            metrics,
            gateway,
            authn,
            authz,
            inspect,
            agent,
            risk,
            fleet,
            process,
        } = raw;

        let RawXdp {
            enabled,
            interfaces,
            mode,
            pin_dir,
            sweep_interval,
            events_sample_one_in,
            rate_limit,
        } = xdp;
        let interfaces = interfaces.unwrap_or_else(|| vec!["lo".to_string()]);
        if interfaces.is_empty() {
            problems.push("xdp.interfaces: must name at least one interface".into());
        }
        for (i, name) in interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                problems.push(format!(
                    "xdp.interfaces[{i}]: {name:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
                ));
            }
            if interfaces[..i].contains(name) {
                problems.push(format!("xdp.interfaces[{i}]: {name:?} is listed twice"));
            }
        }
        let mode_s = mode.unwrap_or_else(|| "auto".into());
        let mode = AttachMode::parse(&mode_s).unwrap_or_else(|| {
            problems.push(format!(
                "xdp.mode: {mode_s:?} is not one of \"native\", \"skb\", \"tc\", \"auto\""
            ));
            AttachMode::Auto
        });
        let pin_dir = pin_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
        if !pin_dir.is_absolute() {
            problems.push(format!(
                "xdp.pin_dir: {} must be an absolute path on a bpf filesystem",
                pin_dir.display()
            ));
        }
        let sweep_interval = parse_duration(
            "xdp.sweep_interval",
            sweep_interval.as_deref().unwrap_or("1s"),
            &mut problems,
        );
        if sweep_interval.is_zero() {
            problems.push("xdp.sweep_interval: must be greater than zero".into());
        }
        let RawRateLimit {
            new_connections_per_second,
            burst,
        } = rate_limit;
        let rate_per_sec = new_connections_per_second.unwrap_or(0);
        if rate_per_sec > MAX_RATE_PER_SEC {
            problems.push(format!(
                "xdp.rate_limit.new_connections_per_second: {rate_per_sec} is above the maximum {MAX_RATE_PER_SEC}"
            ));
        }
        let rate_burst = burst.unwrap_or(rate_per_sec);
        if rate_per_sec > 0 && rate_burst == 0 {
            problems.push(
                "xdp.rate_limit.burst: must be at least 1 when a rate is set (0 would refuse every connection)".into(),
            );
        }
        // Only when given: a defaulted burst repeats the rate's own error.
        if burst.is_some() && rate_burst > MAX_RATE_PER_SEC {
            problems.push(format!(
                "xdp.rate_limit.burst: {rate_burst} is above the maximum {MAX_RATE_PER_SEC}"
            ));
        }

        let RawState { dir } = state;
        let state_dir = dir.unwrap_or_else(|| PathBuf::from("/var/lib/ztag"));
        if !state_dir.is_absolute() {
            problems.push(format!(
                "state.dir: {} must be an absolute path",
                state_dir.display()
            ));
        }
        let RawAdmin {
            socket,
            socket_group,
            listen: admin_listen,
            token_file,
            tls_cert,
            tls_key,
            client_ca,
        } = admin;
        let admin_listen = match admin_listen.as_deref() {
            None | Some("") | Some("off") => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "admin.listen: {s:?} is not an address:port (e.g. \"127.0.0.1:9478\")"
                    ));
                    None
                }
            },
        };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let token_file = token_file.map(abs);
        let admin_tls = match (tls_cert.map(abs), tls_key.map(abs)) {
            (Some(cert), Some(key)) => Some(crate::proxy::config::TlsConfig {
                certificates: vec![(cert, key)],
                client_auth: if client_ca.is_some() {
                    crate::proxy::config::ClientAuth::Optional
                } else {
                    crate::proxy::config::ClientAuth::Off
                },
                client_ca: client_ca.map(abs),
                key_path: "admin".into(),
            }),
            (None, None) => {
                if client_ca.is_some() {
                    problems.push(
                        "admin.client_ca: needs admin.tls_cert and admin.tls_key (client certificates are a TLS feature)".into(),
                    );
                }
                None
            }
            _ => {
                problems.push("admin.tls_cert and admin.tls_key: give both or neither".into());
                None
            }
        };
        // With a listener, a token is needed unless client certificates are
        // asked for; none configured: the daemon makes one in the state dir.
        let token_generated = admin_listen.is_some()
            && token_file.is_none()
            && admin_tls.as_ref().is_none_or(|t| t.client_ca.is_none());
        if let Some(a) = admin_listen
            && !a.ip().is_loopback()
            && admin_tls.is_none()
        {
            problems.push(format!(
                "admin.listen: {a} is not a loopback address; set admin.tls_cert and admin.tls_key so that the admin token and session never cross the network in clear"
            ));
        }
        let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
        if !socket.is_absolute() {
            problems.push(format!(
                "admin.socket: {} must be an absolute path",
                socket.display()
            ));
        }
        let RawProcess {
            user,
            group,
            drain_timeout,
            detach_on_exit,
        } = process;
        let drain_timeout = parse_duration(
            "process.drain_timeout",
            drain_timeout.as_deref().unwrap_or("10s"),
            &mut problems,
        );
        if user.as_deref() == Some("") {
            problems.push("process.user: empty; leave it out to keep the starting user".into());
        }
        if group.is_some() && user.is_none() {
            problems.push("process.group: needs process.user".into());
        }
        if socket_group.as_deref() == Some("") {
            problems.push("admin.socket_group: empty; leave it out for a socket only the daemon's user can use".into());
        }
        let RawMetrics { listen } = metrics;
        let listen = match listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
            Some("") | Some("off") => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "metrics.listen: {s:?} is not an address:port (e.g. \"127.0.0.1:9477\"), or \"off\""
                    ));
                    None
                }
            },
        };

        authn.validate(&mut problems);
        let authz = authz.validate(base, &mut problems);
        let inspect = inspect.validate(base, &mut problems);
        let gateway = gateway.validate(base, &authn.provider_names(), &mut problems);
        let agent = agent.validate(base, &mut problems);
        let risk = risk.validate(&mut problems);
        let fleet = fleet.check(base, &mut problems);
        for (i, r) in gateway.routes.iter().enumerate() {
            if let Some(c) = &r.credential
                && agent.connection(c).is_none()
            {
                problems.push(format!(
                    "gateway.route[{i}].credential: {c:?} is not the name of an [[agent.connection]]"
                ));
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError {
                source_name: None,
                problems,
            });
        }
        Ok(Config {
            xdp: XdpConfig {
                enabled: enabled.unwrap_or(true),
                interfaces,
                mode,
                pin_dir,
                sweep_interval,
                events_sample_one_in: events_sample_one_in.unwrap_or(64),
                rate_per_sec,
                rate_burst,
            },
            state: StateConfig {
                dir: state_dir.clone(),
            },
            admin: AdminConfig {
                socket,
                listen: admin_listen,
                token_file: if token_generated {
                    Some(state_dir.join("admin.token"))
                } else {
                    token_file
                },
                token_generated,
                socket_group,
                tls: admin_tls,
            },
            metrics: MetricsConfig { listen },
            gateway,
            authn,
            authz,
            inspect,
            agent,
            risk,
            fleet,
            process: ProcessConfig {
                user,
                group,
                drain_timeout,
                detach_on_exit: detach_on_exit.unwrap_or(false),
            },
            base_dir: base.to_path_buf(),
            text: redacted(text).into(),
        })
    }
}

fn parse_duration(key: &str, s: &str, problems: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!(
                "{key}: {s:?} is not a duration like \"1s\" or \"500ms\" ({e})"
            ));
            Duration::from_secs(1)
        }
    }
}

fn toml_error(e: &toml::de::Error) -> String {
    // toml's message already names the key ("unknown field `x`, expected ...")
    // and the line; keep it on one line.
    e.to_string()
        .replace('\n', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_view_of_the_config_hides_inline_secrets() {
        let t = redacted(
            "[admin]\ntoken_file = \"/etc/ztag/admin.token\"\n[x]\napi_token = \"s3cr3t\"\n[[y]]\nclient_secret = \"hunter2\"\nname = \"keep\"\n",
        );
        assert!(!t.contains("s3cr3t") && !t.contains("hunter2"), "{t}");
        assert!(
            t.contains("/etc/ztag/admin.token") && t.contains("keep"),
            "{t}"
        );
        assert!(t.contains("[redacted]"), "{t}");
    }

    #[test]
    fn admin_listener_off_loopback_needs_tls() {
        let e = Config::parse("[admin]\nlisten = \"0.0.0.0:9478\"\ntoken_file = \"/t\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a loopback address"), "{e}");
        let c =
            Config::parse("[state]\ndir = \"/var/lib/zt\"\n[admin]\nlisten = \"127.0.0.1:9478\"\n")
                .unwrap();
        assert!(c.admin.token_generated);
        assert_eq!(
            c.admin.token_file,
            Some(PathBuf::from("/var/lib/zt/admin.token"))
        );
        let e = Config::parse("[admin]\ntls_cert = \"/c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("give both or neither"), "{e}");
    }

    #[test]
    fn embedded_default_is_valid_and_attaches_to_lo_in_skb_mode() {
        let c = Config::embedded();
        assert_eq!(c.xdp.interfaces, vec!["lo"]);
        assert_eq!(c.xdp.mode, AttachMode::Skb);
        assert_eq!(c.xdp.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let e = Config::parse(
            r#"
[xdp]
interfaces = ["eth0", "eth0", "a/b"]
mode = "fast"
sweep_interval = "soon"
[xdp.rate_limit]
new_connections_per_second = 2000000
[metrics]
listen = "localhost"
"#,
        )
        .unwrap_err();
        let text = e.to_string();
        for key in [
            "xdp.interfaces[1]",
            "xdp.interfaces[2]",
            "xdp.mode",
            "xdp.sweep_interval",
            "xdp.rate_limit.new_connections_per_second",
            "metrics.listen",
        ] {
            assert!(text.contains(key), "missing {key} in:\n{text}");
        }
        assert_eq!(e.problems.len(), 6, "{text}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::parse("[xdp]\ninterfaces = [\"lo\"]\nmdoe = \"skb\"\n").unwrap_err();
        assert!(e.to_string().contains("mdoe"), "{e}");
    }

    #[test]
    fn a_rate_without_burst_uses_the_rate_as_burst() {
        let c = Config::parse("[xdp.rate_limit]\nnew_connections_per_second = 50\n").unwrap();
        assert_eq!((c.xdp.rate_per_sec, c.xdp.rate_burst), (50, 50));
        let e = Config::parse("[xdp.rate_limit]\nnew_connections_per_second = 5\nburst = 0\n")
            .unwrap_err();
        assert!(e.to_string().contains("xdp.rate_limit.burst"), "{e}");
    }

    #[test]
    fn shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path().join("ztag.toml");
            if p.exists() {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no examples found under {}", dir.display());
    }
}

//! `[fleet]`: where the fleet's Redis is and how this gateway takes part.
//!
//! ```toml
//! [fleet]
//! redis = "redis://10.0.0.5:6379/0"   # or rediss:// (TLS, rustls)
//! # node = "gw-a"                     # default: the host name
//! # prefix = "ztag"                   # key prefix shared by one fleet
//! # global_rate_limits = true         # route rate limits count fleet-wide
//! # timeout = "50ms"                  # per Redis call on the request path
//! # queue_max = 100000                # local changes kept while Redis is away
//! # tombstone_ttl = "7d"              # how long removals are remembered
//! # session_key_file = "fleet.key"    # seals MCP federated sessions
//! # share_risk_events = true          # risk scores add up across gateways
//! # ca_file = "redis-ca.pem"          # rediss://: the server's CA (default: system roots)
//! ```

use std::time::Duration;

use serde::Deserialize;

/// `[fleet]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    redis: Option<String>,
    node: Option<String>,
    prefix: Option<String>,
    global_rate_limits: Option<bool>,
    timeout: Option<String>,
    queue_max: Option<u64>,
    tombstone_ttl: Option<String>,
    session_key_file: Option<std::path::PathBuf>,
    share_risk_events: Option<bool>,
    ca_file: Option<std::path::PathBuf>,
}

/// `[fleet]` once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The Redis URL (`redis://` or `rediss://`).
    pub redis: String,
    /// This gateway's name in the fleet.
    pub node: String,
    /// Key prefix.
    pub prefix: String,
    /// Route rate limits are counted in Redis, across the fleet.
    pub global_rate_limits: bool,
    /// Deadline of one Redis call made while a request waits.
    pub timeout: Duration,
    /// Outbox bound.
    pub queue_max: u64,
    /// Removals are kept this long (a gateway away longer resyncs from the
    /// entries alone).
    pub tombstone_ttl: Duration,
    /// The fleet's 32-byte key that seals MCP federated sessions into their
    /// ids (any gateway with the key continues them).
    pub session_key_file: Option<std::path::PathBuf>,
    /// The risk engine's scored events are shared: a source misbehaving a
    /// little on each of many gateways adds up on every one.
    pub share_risk_events: bool,
    /// PEM CA bundle a `rediss://` server's certificate must chain to
    /// (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Reads a session key: 32 raw bytes, 64 hex digits or base64 of 32 bytes.
pub fn read_key(path: &std::path::Path) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.len() == 32 {
        let mut k = [0u8; 32];
        k.copy_from_slice(&raw);
        return Ok(k);
    }
    let text = String::from_utf8_lossy(&raw).trim().to_string();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect::<Vec<u8>>()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|_| {
                format!(
                    "{}: not a key (32 raw bytes, 64 hex digits or base64 of 32 bytes; e.g. `openssl rand -hex 32`)",
                    path.display()
                )
            })?
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{}: the key has {} bytes, 32 are needed",
            path.display(),
            b.len()
        )
    })
}

fn duration(
    key: &str,
    v: &Option<String>,
    default: Duration,
    problems: &mut Vec<String>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                problems.push(format!(
                    "{key}: {s:?} is not a duration like \"50ms\" or \"7d\""
                ));
                default
            }
        },
    }
}

/// The host name, for the default node name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "ztag".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelTarget {
    /// `redis://host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    /// The monitored master's name.
    pub master: String,
    /// `user:password@` for the master, if given.
    pub auth: Option<String>,
    /// Database number.
    pub db: u32,
}

impl SentinelTarget {
    /// The master's URL once Sentinel named its address.
    pub fn master_url(&self, host: &str, port: u16) -> String {
        let auth = self
            .auth
            .as_deref()
            .map(|a| format!("{a}@"))
            .unwrap_or_default();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!("redis://{auth}{host}:{port}/{}", self.db)
    }
}

/// `redis+cluster://[user:password@]host:port[,host:port...]`: seed nodes
/// of a Redis Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTarget {
    /// `redis://[auth@]host:port` of each seed node.
    pub nodes: Vec<String>,
}

/// Parses a Cluster URL; `None` when `url` is not one (or is malformed).
pub fn parse_cluster(url: &str) -> Option<ClusterTarget> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (format!("{a}@"), r),
        None => (String::new(), rest),
    };
    let hosts = rest.trim_end_matches('/');
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if nodes.is_empty()
        || hosts.contains('/')
        || nodes
            .iter()
            .any(|s| redis::Client::open(s.as_str()).is_err())
    {
        return None;
    }
    Some(ClusterTarget { nodes })
}

/// Parses a Sentinel URL; `None` when `url` is not one (or is malformed,
/// which [`RawFleet::check`] reports).
pub fn parse_sentinel(url: &str) -> Option<SentinelTarget> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a.to_string()), r),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    let master = parts.next().filter(|m| !m.is_empty())?.to_string();
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d.parse().ok()?,
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if sentinels.is_empty()
        || sentinels
            .iter()
            .any(|s| redis::Client::open(s.as_str()).is_err())
    {
        return None;
    }
    Some(SentinelTarget {
        sentinels,
        master,
        auth,
        db,
    })
}

/// The URL with any password replaced, for logs and status.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split(':').next().unwrap_or("");
                if auth.contains(':') {
                    format!("{scheme}://{user}:***@{host}")
                } else {
                    format!("{scheme}://{user}@{host}")
                }
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl RawFleet {
    /// Checks `[fleet]`; `None` when no `redis` is given (fleet mode off).
    pub fn check(self, base: &std::path::Path, problems: &mut Vec<String>) -> Option<FleetConfig> {
        let redis = self.redis.filter(|s| !s.is_empty())?;
        if redis.starts_with("redis+cluster://") {
            if parse_cluster(&redis).is_none() {
                problems.push(format!(
                    "fleet.redis: {} is not redis+cluster://[user:password@]host:port[,host:port...]",
                    redacted_url(&redis)
                ));
            }
        } else if redis.starts_with("redis+sentinel://") {
            if parse_sentinel(&redis).is_none() {
                problems.push(format!(
                    "fleet.redis: {} is not redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]",
                    redacted_url(&redis)
                ));
            }
        } else if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            problems.push(format!(
                "fleet.redis: {} is not a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL",
                redacted_url(&redis)
            ));
        } else if let Err(e) = redis::Client::open(redis.as_str()) {
            problems.push(format!("fleet.redis: {}: {e}", redacted_url(&redis)));
        }
        let node = self.node.unwrap_or_else(hostname);
        if node.is_empty() || node.len() > 64 || node.contains(char::is_whitespace) {
            problems.push(format!(
                "fleet.node: {node:?} must be 1 to 64 characters without spaces"
            ));
        }
        let prefix = self.prefix.unwrap_or_else(|| "ztag".into());
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            problems.push(format!(
                "fleet.prefix: {prefix:?} must be a word without spaces"
            ));
        }
        let tls = redis.starts_with("rediss://");
        let queue_max = self.queue_max.unwrap_or(100_000);
        if queue_max == 0 {
            problems.push("fleet.queue_max: must be at least 1".into());
        }
        Some(FleetConfig {
            redis,
            node,
            prefix,
            global_rate_limits: self.global_rate_limits.unwrap_or(true),
            timeout: duration(
                "fleet.timeout",
                &self.timeout,
                Duration::from_millis(50),
                problems,
            ),
            queue_max,
            tombstone_ttl: duration(
                "fleet.tombstone_ttl",
                &self.tombstone_ttl,
                Duration::from_secs(7 * 86400),
                problems,
            ),
            session_key_file: self
                .session_key_file
                .map(|p| if p.is_absolute() { p } else { base.join(p) }),
            share_risk_events: self.share_risk_events.unwrap_or(true),
            ca_file: {
                let ca = self
                    .ca_file
                    .map(|p| if p.is_absolute() { p } else { base.join(p) });
                if ca.is_some() && !tls {
                    problems.push("fleet.ca_file: only used with a rediss:// URL".into());
                }
                ca
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> (Option<FleetConfig>, Vec<String>) {
        let raw: RawFleet = toml::from_str(toml_text).unwrap();
        let mut p = Vec::new();
        (raw.check(std::path::Path::new("/etc/ztag"), &mut p), p)
    }

    #[test]
    fn off_without_redis_and_defaults_with_it() {
        assert_eq!(check("").0, None);
        let (c, p) = check("redis = \"redis://10.0.0.5:6379/0\"\nnode = \"gw-a\"");
        assert!(p.is_empty(), "{p:?}");
        let c = c.unwrap();
        assert_eq!(c.node, "gw-a");
        assert_eq!(c.prefix, "ztag");
        assert!(c.global_rate_limits);
        assert_eq!(c.timeout, Duration::from_millis(50));
    }

    #[test]
    fn bad_values_are_named() {
        let (_, p) = check("redis = \"http://x\"\ntimeout = \"soon\"\nqueue_max = 0");
        let all = p.join("\n");
        assert!(all.contains("fleet.redis"), "{all}");
        assert!(all.contains("fleet.timeout"), "{all}");
        assert!(all.contains("fleet.queue_max"), "{all}");
    }

    #[test]
    fn session_keys_in_three_spellings() {
        let d = std::env::temp_dir().join(format!("ztag-key-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        std::fs::write(d.join("hex"), format!("{hex}\n")).unwrap();
        let k = read_key(&d.join("hex")).unwrap();
        assert_eq!(k[1], 0x11);
        std::fs::write(d.join("raw"), k).unwrap();
        assert_eq!(read_key(&d.join("raw")).unwrap(), k);
        use base64::Engine as _;
        std::fs::write(
            d.join("b64"),
            base64::engine::general_purpose::STANDARD.encode(k),
        )
        .unwrap();
        assert_eq!(read_key(&d.join("b64")).unwrap(), k);
        std::fs::write(d.join("short"), "abcd").unwrap();
        assert!(read_key(&d.join("short")).unwrap_err().contains("32"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sentinel_urls() {
        let s = parse_sentinel("redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/2")
            .unwrap();
        assert_eq!(
            s.sentinels,
            vec!["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 2);
        assert_eq!(
            s.master_url("10.0.0.9", 6380),
            "redis://app:pw@10.0.0.9:6380/2"
        );
        assert_eq!(parse_sentinel("redis://x"), None);
        let (_, p) = check("redis = \"redis+sentinel://10.0.0.1:26379/\"");
        assert!(p.join("").contains("redis+sentinel://"), "{p:?}");
        let (c, p) = check("redis = \"redis+sentinel://10.0.0.1:26379/m\"");
        assert!(p.is_empty() && c.is_some(), "{p:?}");
    }

    #[test]
    fn cluster_urls() {
        let c = parse_cluster("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/").unwrap();
        assert_eq!(
            c.nodes,
            vec!["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7001"]
        );
        assert_eq!(parse_cluster("redis+cluster://"), None);
        let (_, p) = check("redis = \"redis+cluster://10.0.0.1:7000/2\"");
        assert!(p.join("").contains("redis+cluster://"), "{p:?}");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted_url("rediss://app:s3cret@redis.internal:6380/1"),
            "rediss://app:***@redis.internal:6380/1"
        );
        let (_, p) = check("redis = \"ftp://u:s3cret@h\"");
        assert!(!p.join("").contains("s3cret"), "{p:?}");
    }
}

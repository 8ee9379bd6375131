//! `[agent]`: the token vault's keys, upstream connections (how a route's
//! `credential = "NAME"` gets its token: from the vault, or by an RFC 8693
//! token exchange) and human-in-the-loop approvals. Validation reads no
//! files; keys load when the daemon starts, with errors naming the key.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// `[agent]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    vault: Option<RawVault>,
    #[serde(default)]
    connection: Vec<RawConnection>,
    approvals: Option<RawApprovals>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawVault {
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    previous_key_files: Option<Vec<PathBuf>>,
    cache_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: String,
    header: Option<String>,
    prefix: Option<String>,
    token_endpoint: Option<String>,
    ca: Option<PathBuf>,
    timeout: Option<String>,
    exchange: Option<RawExchange>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    grant_type: Option<String>,
    subject_token_type: Option<String>,
    requested_token_type: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    timeout: Option<String>,
    public_url: Option<String>,
    webhook: Option<RawWebhook>,
    ciba: Option<RawCiba>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret_file: PathBuf,
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawCiba {
    backchannel_endpoint: String,
    token_endpoint: String,
    login_hint: String,
    scope: Option<String>,
    ca: Option<PathBuf>,
    poll_interval: Option<String>,
}

/// Where the vault's current key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding 32 bytes as base64 or hex (one line).
    File(PathBuf),
    /// An environment variable holding the same.
    Env(String),
}

/// `[agent.vault]` once checked.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// The key new secrets are sealed under.
    pub key: KeySource,
    /// Older keys, still accepted for reading (rotation).
    pub previous: Vec<PathBuf>,
    /// How long a decrypted secret stays in memory.
    pub cache_ttl: Duration,
}

/// An RFC 8693 exchange, as configured.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// `grant_type` (default `urn:ietf:params:oauth:grant-type:token-exchange`).
    pub grant_type: String,
    /// `subject_token_type` (default `urn:ietf:params:oauth:token-type:access_token`).
    pub subject_token_type: String,
    /// `requested_token_type`, if any.
    pub requested_token_type: Option<String>,
    /// `audience`, if any.
    pub audience: Option<String>,
    /// `resource`, if any.
    pub resource: Option<String>,
    /// `scope`, if any.
    pub scope: Option<String>,
    /// Further form parameters (e.g. Auth0's `connection`).
    pub params: Vec<(String, String)>,
}

/// `[[agent.connection]]` once checked.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Name routes refer to (`credential = "NAME"`).
    pub name: String,
    /// Header the upstream gets the token in.
    pub header: http::HeaderName,
    /// Text before the token in that header (`"Bearer "`).
    pub prefix: String,
    /// Token endpoint for exchanges and refresh grants.
    pub token_endpoint: Option<String>,
    /// CA bundle for that endpoint (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// Timeout of one token request.
    pub timeout: Duration,
    /// Set: the token comes from an exchange of the caller's token, not
    /// from the vault.
    pub exchange: Option<ExchangeConfig>,
}

/// `[agent.approvals.webhook]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where pending approvals are POSTed.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header.
    pub secret_file: PathBuf,
    /// CA bundle for an HTTPS webhook.
    pub ca: Option<PathBuf>,
}

/// `[agent.approvals.ciba]`: an OpenID CIBA request per approval.
#[derive(Debug, Clone)]
pub struct CibaConfig {
    /// The IdP's backchannel authentication endpoint.
    pub backchannel_endpoint: String,
    /// The IdP's token endpoint (polled).
    pub token_endpoint: String,
    /// Who is asked (`login_hint`).
    pub login_hint: String,
    /// `scope` (default `openid`).
    pub scope: String,
    /// CA bundle for the IdP.
    pub ca: Option<PathBuf>,
    /// Poll interval when the IdP names none.
    pub poll_interval: Duration,
}

/// `[agent.approvals]` once checked.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// Default time a held request waits for a decision (then: denied).
    pub timeout: Duration,
    /// Base URL the status links point at (default: the request's own
    /// scheme and host).
    pub public_url: Option<String>,
    /// Webhook notifications.
    pub webhook: Option<WebhookConfig>,
    /// CIBA requests.
    pub ciba: Option<CibaConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout: Duration::from_secs(300),
            public_url: None,
            webhook: None,
            ciba: None,
        }
    }
}

/// `[agent]` once checked.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// The token vault (none: vault credentials are refused at start).
    pub vault: Option<VaultConfig>,
    /// Upstream connections.
    pub connections: Vec<ConnectionConfig>,
    /// Approvals.
    pub approvals: ApprovalsConfig,
}

impl AgentConfig {
    /// A connection by name.
    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

fn duration(key: &str, v: Option<&str>, default: &str, problems: &mut Vec<String>) -> Duration {
    crate::proxy::config::dur(key, &v.map(str::to_string), default, problems)
}

fn url(key: &str, s: &str, problems: &mut Vec<String>) {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => problems.push(format!("{key}: {s:?} is not an http(s) URL")),
    }
}

impl RawAgent {
    /// Checks `[agent]`; relative paths resolve against `base`.
    pub fn validate(self, base: &Path, problems: &mut Vec<String>) -> AgentConfig {
        let resolve = |p: PathBuf| crate::proxy::config::resolve(base, &p);
        let vault = self.vault.and_then(|v| {
            let key = match (v.key_file, v.key_env) {
                (Some(f), None) => KeySource::File(resolve(f)),
                (None, Some(e)) if !e.is_empty() => KeySource::Env(e),
                (Some(_), Some(_)) => {
                    problems.push(
                        "agent.vault: key_file and key_env are exclusive (one current key)".into(),
                    );
                    return None;
                }
                _ => {
                    problems.push(
                        "agent.vault: key_file or key_env is required (32 random bytes, base64 or hex)"
                            .into(),
                    );
                    return None;
                }
            };
            Some(VaultConfig {
                key,
                previous: v
                    .previous_key_files
                    .unwrap_or_default()
                    .into_iter()
                    .map(resolve)
                    .collect(),
                cache_ttl: duration(
                    "agent.vault.cache_ttl",
                    v.cache_ttl.as_deref(),
                    "30s",
                    problems,
                ),
            })
        });

        let mut connections: Vec<ConnectionConfig> = Vec::new();
        for (i, c) in self.connection.into_iter().enumerate() {
            let key = format!("agent.connection[{i}]");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                problems.push(format!(
                    "{key}.name: {:?} must be letters, digits, '-', '_' or '.'",
                    c.name
                ));
            }
            if connections.iter().any(|x| x.name == c.name) {
                problems.push(format!("{key}.name: {:?} is used twice", c.name));
            }
            let header = match http::HeaderName::from_bytes(
                c.header.as_deref().unwrap_or("authorization").as_bytes(),
            ) {
                Ok(h) => h,
                Err(_) => {
                    problems.push(format!("{key}.header: {:?} is not a header name", c.header));
                    http::header::AUTHORIZATION
                }
            };
            if let Some(t) = &c.token_endpoint {
                url(&format!("{key}.token_endpoint"), t, problems);
            }
            let exchange = c.exchange.map(|x| {
                if c.token_endpoint.is_none() {
                    problems.push(format!(
                        "{key}.exchange: needs {key}.token_endpoint (where the exchange is made)"
                    ));
                }
                ExchangeConfig {
                    grant_type: x.grant_type.unwrap_or_else(|| {
                        "urn:ietf:params:oauth:grant-type:token-exchange".into()
                    }),
                    subject_token_type: x
                        .subject_token_type
                        .unwrap_or_else(|| "urn:ietf:params:oauth:token-type:access_token".into()),
                    requested_token_type: x.requested_token_type,
                    audience: x.audience,
                    resource: x.resource,
                    scope: x.scope,
                    params: x.params.into_iter().collect(),
                }
            });
            connections.push(ConnectionConfig {
                name: c.name,
                header,
                prefix: c.prefix.unwrap_or_else(|| "Bearer ".into()),
                token_endpoint: c.token_endpoint,
                ca: c.ca.map(resolve),
                timeout: duration(
                    &format!("{key}.timeout"),
                    c.timeout.as_deref(),
                    "5s",
                    problems,
                ),
                exchange,
            });
        }

        let approvals = match self.approvals {
            None => ApprovalsConfig::default(),
            Some(a) => {
                if let Some(u) = &a.public_url {
                    url("agent.approvals.public_url", u, problems);
                }
                let webhook = a.webhook.map(|w| {
                    url("agent.approvals.webhook.url", &w.url, problems);
                    WebhookConfig {
                        url: w.url,
                        secret_file: resolve(w.secret_file),
                        ca: w.ca.map(resolve),
                    }
                });
                let ciba = a.ciba.map(|c| {
                    url(
                        "agent.approvals.ciba.backchannel_endpoint",
                        &c.backchannel_endpoint,
                        problems,
                    );
                    url(
                        "agent.approvals.ciba.token_endpoint",
                        &c.token_endpoint,
                        problems,
                    );
                    if c.login_hint.is_empty() {
                        problems.push("agent.approvals.ciba.login_hint: must not be empty".into());
                    }
                    CibaConfig {
                        backchannel_endpoint: c.backchannel_endpoint,
                        token_endpoint: c.token_endpoint,
                        login_hint: c.login_hint,
                        scope: c.scope.unwrap_or_else(|| "openid".into()),
                        ca: c.ca.map(resolve),
                        poll_interval: duration(
                            "agent.approvals.ciba.poll_interval",
                            c.poll_interval.as_deref(),
                            "5s",
                            problems,
                        ),
                    }
                });
                ApprovalsConfig {
                    timeout: duration(
                        "agent.approvals.timeout",
                        a.timeout.as_deref(),
                        "5m",
                        problems,
                    ),
                    public_url: a.public_url.map(|u| u.trim_end_matches('/').to_string()),
                    webhook,
                    ciba,
                }
            }
        };
        AgentConfig {
            vault,
            connections,
            approvals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> (AgentConfig, Vec<String>) {
        let raw: RawAgent = toml::from_str(t).unwrap();
        let mut p = Vec::new();
        let c = raw.validate(Path::new("/etc/ztag"), &mut p);
        (c, p)
    }

    #[test]
    fn a_full_section_validates_and_resolves_paths() {
        let (c, p) = parse(
            r#"
[vault]
key_file = "vault.key"
previous_key_files = ["/keys/old.key"]
[[connection]]
name = "github"
[[connection]]
name = "calendar"
token_endpoint = "https://idp.example.com/oauth/token"
[connection.exchange]
grant_type = "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token"
requested_token_type = "http://auth0.com/oauth/token-type/federated-connection-access-token"
params = { connection = "google-oauth2" }
[approvals]
timeout = "2m"
[approvals.webhook]
url = "https://hooks.example.com/ztag"
secret_file = "hook.secret"
"#,
        );
        assert!(p.is_empty(), "{p:?}");
        let v = c.vault.clone().unwrap();
        assert_eq!(v.key, KeySource::File("/etc/ztag/vault.key".into()));
        assert_eq!(v.previous, vec![PathBuf::from("/keys/old.key")]);
        let cal = c.connection("calendar").unwrap();
        let x = cal.exchange.as_ref().unwrap();
        assert_eq!(
            x.params,
            vec![("connection".into(), "google-oauth2".into())]
        );
        assert_eq!(
            x.subject_token_type,
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(c.connection("github").unwrap().prefix, "Bearer ");
        assert_eq!(c.approvals.timeout, Duration::from_secs(120));
        assert_eq!(
            c.approvals.webhook.unwrap().secret_file,
            PathBuf::from("/etc/ztag/hook.secret")
        );
    }

    #[test]
    fn mistakes_are_named() {
        let (_, p) = parse(
            r#"
[vault]
key_file = "a"
key_env = "B"
[[connection]]
name = "x y"
header = "bad header"
[connection.exchange]
[[connection]]
name = "dup"
[[connection]]
name = "dup"
token_endpoint = "ftp://nope"
[approvals]
timeout = "soon"
"#,
        );
        let all = p.join("\n");
        for needle in [
            "agent.vault: key_file and key_env are exclusive",
            "agent.connection[0].name",
            "agent.connection[0].header",
            "agent.connection[0].exchange: needs agent.connection[0].token_endpoint",
            "agent.connection[2].name: \"dup\" is used twice",
            "agent.connection[2].token_endpoint",
            "agent.approvals.timeout",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }
}

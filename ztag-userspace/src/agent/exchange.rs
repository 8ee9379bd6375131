//! Upstream credentials for a route's `credential = "NAME"`: from the token
//! vault (refreshed with the stored refresh token when it has expired), or
//! by an RFC 8693 token exchange of the caller's own token at the
//! connection's token endpoint (e.g. Auth0 Token Vault's federated
//! connection exchange). ztag authenticates at the endpoint with
//! `private_key_jwt` (`[authn.outbound]`), never a client secret. Exchange
//! results are cached per (caller token, connection) until 30 s before
//! they expire; a refresh token in the answer is used for the next one.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracing::{debug, warn};

use super::{
    config::ConnectionConfig,
    vault::{Secret, Vault},
};
use crate::authn::Authn;

/// Refresh or re-exchange this long before a token expires.
const MARGIN: Duration = Duration::from_secs(30);

/// Why no credential could be had; the client sees only the label.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// Nothing stored for this user and connection.
    #[error("no credential for {user} on connection {connection}")]
    Missing {
        /// The user.
        user: String,
        /// The connection.
        connection: String,
    },
    /// Stored, expired, and nothing to refresh it with.
    #[error("the credential for {user} on connection {connection} has expired")]
    Expired {
        /// The user.
        user: String,
        /// The connection.
        connection: String,
    },
    /// The token endpoint refused or failed.
    #[error("token endpoint of connection {connection}: {why}")]
    Endpoint {
        /// The connection.
        connection: String,
        /// What happened (no secrets).
        why: String,
    },
    /// The vault failed.
    #[error("{0}")]
    Vault(String),
    /// The exchange needs the caller's bearer token and there is none.
    #[error("connection {0} exchanges the caller's token, and the request has no bearer token")]
    NoSubjectToken(String),
}

impl CredError {
    /// Metric label / client-facing reason.
    pub fn reason(&self) -> &'static str {
        match self {
            CredError::Missing { .. } => "credential_missing",
            CredError::Expired { .. } => "credential_expired",
            CredError::Endpoint { .. } | CredError::Vault(_) => "credential_unavailable",
            CredError::NoSubjectToken(_) => "credential_missing",
        }
    }
}

struct Cached {
    token: String,
    until: Instant,
    refresh: Option<String>,
}

/// The connections and what they need.
pub struct Credentials {
    connections: Vec<(ConnectionConfig, reqwest::Client)>,
    vault: Option<Arc<Vault>>,
    authn: Arc<Authn>,
    exchanged: moka::sync::Cache<(String, String), Arc<Cached>>,
    /// One refresh or exchange at a time per key; idle locks are dropped
    /// (one per caller token would otherwise pile up).
    locks: moka::sync::Cache<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// Fleet mode: exchange results shared through Redis, sealed with the
    /// fleet's key.
    shared: std::sync::OnceLock<Arc<dyn SharedCache>>,
}

/// A boxed future (the trait below is used as `dyn`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a fleet keeps exchange results for its gateways.
pub trait SharedCache: Send + Sync {
    /// The value under `key`, if any (a miss on any error).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>>;
    /// Stores a value for `ttl` (best effort).
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, ()>;
}

/// An exchange result as the fleet shares it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedResult {
    token: String,
    /// Valid until, ms since the epoch (already less the margin).
    until_ms: i64,
    #[serde(default)]
    refresh: Option<String>,
}

fn digest(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Credentials {
    /// Builds an HTTP client per connection (its CA bundle is read now).
    pub fn new(
        connections: &[ConnectionConfig],
        vault: Option<Arc<Vault>>,
        authn: Arc<Authn>,
    ) -> Result<Credentials, String> {
        let mut v = Vec::new();
        for c in connections {
            let ca = match &c.ca {
                Some(p) => Some(std::fs::read(p).map_err(|e| {
                    format!("agent.connection {:?}: ca {}: {e}", c.name, p.display())
                })?),
                None => None,
            };
            let http = crate::authn::jwks::http_client(ca.as_deref())
                .map_err(|e| format!("agent.connection {:?}: {e}", c.name))?;
            if c.token_endpoint.is_some() && authn.outbound().is_none() {
                return Err(format!(
                    "agent.connection {:?}: a token endpoint needs [authn.outbound] (ztag authenticates there with private_key_jwt)",
                    c.name
                ));
            }
            v.push((c.clone(), http));
        }
        Ok(Credentials {
            connections: v,
            vault,
            authn,
            exchanged: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            locks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Fleet mode: exchange results are also read from and written to the
    /// fleet's cache.
    pub fn share_with(&self, cache: Arc<dyn SharedCache>) {
        let _ = self.shared.set(cache);
    }

    /// The fleet's sealed cache, if fleet mode shares one.
    pub fn shared_cache(&self) -> Option<Arc<dyn SharedCache>> {
        self.shared.get().cloned()
    }

    /// Whether a connection of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.connections.iter().any(|(c, _)| c.name == name)
    }

    /// Whether any connection needs the vault.
    pub fn needs_vault(&self) -> impl Iterator<Item = &str> {
        self.connections
            .iter()
            .filter(|(c, _)| c.exchange.is_none())
            .map(|(c, _)| c.name.as_str())
    }

    /// The header to set on the upstream request: `(name, value)`.
    pub async fn header(
        &self,
        connection: &str,
        subject: &str,
        caller_token: Option<&str>,
    ) -> Result<(http::HeaderName, http::HeaderValue), CredError> {
        let (c, http) = self
            .connections
            .iter()
            .find(|(c, _)| c.name == connection)
            .ok_or_else(|| CredError::Vault(format!("no connection {connection:?}")))?;
        let token = match &c.exchange {
            Some(_) => {
                let t = caller_token.ok_or_else(|| CredError::NoSubjectToken(c.name.clone()))?;
                self.exchange(c, http, t).await?
            }
            None => self.vault_token(c, http, subject).await?,
        };
        let v = http::HeaderValue::from_str(&format!("{}{token}", c.prefix)).map_err(|_| {
            CredError::Vault(format!(
                "the credential of connection {connection} is not a valid header value"
            ))
        })?;
        let mut v = v;
        v.set_sensitive(true);
        Ok((c.header.clone(), v))
    }

    async fn vault_token(
        &self,
        c: &ConnectionConfig,
        http: &reqwest::Client,
        user: &str,
    ) -> Result<String, CredError> {
        let vault = self
            .vault
            .as_ref()
            .ok_or_else(|| CredError::Vault("no [agent.vault] configured".into()))?;
        let missing = || CredError::Missing {
            user: user.into(),
            connection: c.name.clone(),
        };
        let s = vault
            .get(user, &c.name)
            .map_err(|e| CredError::Vault(e.to_string()))?
            .ok_or_else(missing)?;
        let fresh = |s: &Secret| {
            s.expires_at_ms
                .is_none_or(|e| e - MARGIN.as_millis() as i64 > crate::state::now_ms())
        };
        if fresh(&s) {
            return Ok(s.token.clone());
        }
        let (Some(_), Some(endpoint)) = (&s.refresh_token, &c.token_endpoint) else {
            return Err(CredError::Expired {
                user: user.into(),
                connection: c.name.clone(),
            });
        };
        // One refresh per (user, connection) at a time: the others wait and
        // read the refreshed entry.
        let lock = self
            .locks
            .get_with((user.to_string(), c.name.clone()), Default::default);
        let _g = lock.lock().await;
        let s = vault
            .get(user, &c.name)
            .map_err(|e| CredError::Vault(e.to_string()))?
            .ok_or_else(missing)?;
        if fresh(&s) {
            return Ok(s.token.clone());
        }
        let Some(rt) = &s.refresh_token else {
            return Err(CredError::Expired {
                user: user.into(),
                connection: c.name.clone(),
            });
        };
        let form = vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".to_string(), rt.clone()),
        ];
        let v = self.token_request(c, http, endpoint, form).await?;
        let (token, expires_in, refresh) = parse_answer(&c.name, &v)?;
        let new = Secret {
            token: token.clone(),
            refresh_token: refresh.or_else(|| s.refresh_token.clone()),
            expires_at_ms: expires_in.map(|e| crate::state::now_ms() + e as i64 * 1000),
        };
        vault
            .put(user, &c.name, &new)
            .map_err(|e| CredError::Vault(e.to_string()))?;
        debug!(connection = %c.name, user, "vault credential refreshed");
        Ok(token)
    }

    async fn exchange(
        &self,
        c: &ConnectionConfig,
        http: &reqwest::Client,
        subject_token: &str,
    ) -> Result<String, CredError> {
        let x = c.exchange.as_ref().expect("exchange connection");
        let endpoint = c.token_endpoint.as_deref().expect("validated");
        let key = (digest(subject_token), c.name.clone());
        let lock = self.locks.get_with(key.clone(), Default::default);
        let _g = lock.lock().await;
        let mut cached = self.exchanged.get(&key);
        if let Some(k) = &cached
            && Instant::now() < k.until
        {
            return Ok(k.token.clone());
        }
        let shared_key = format!("xchg:{}:{}", key.0, key.1);
        if let Some(s) = self.shared.get()
            && let Some(raw) = s.get(&shared_key).await
            && let Ok(r) = serde_json::from_slice::<SharedResult>(&raw)
        {
            let left = r.until_ms - crate::state::now_ms();
            let k = Arc::new(Cached {
                token: r.token,
                until: Instant::now() + Duration::from_millis(left.max(0) as u64),
                refresh: r.refresh,
            });
            if left > 0 {
                debug!(connection = %c.name, "exchanged token from the fleet's cache");
                self.exchanged.insert(key, k.clone());
                return Ok(k.token.clone());
            }
            // Expired, but its refresh token may still serve.
            cached = Some(k);
        }
        let answer = match cached.as_ref().and_then(|k| k.refresh.clone()) {
            Some(rt) => {
                let form = vec![
                    ("grant_type".to_string(), "refresh_token".to_string()),
                    ("refresh_token".to_string(), rt),
                ];
                match self.token_request(c, http, endpoint, form).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        debug!(connection = %c.name, "refresh of an exchanged token failed, exchanging again: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let v = match answer {
            Some(v) => v,
            None => {
                let mut form = vec![
                    ("grant_type".to_string(), x.grant_type.clone()),
                    ("subject_token".to_string(), subject_token.to_string()),
                    (
                        "subject_token_type".to_string(),
                        x.subject_token_type.clone(),
                    ),
                ];
                for (k, v) in [
                    ("requested_token_type", &x.requested_token_type),
                    ("audience", &x.audience),
                    ("resource", &x.resource),
                    ("scope", &x.scope),
                ] {
                    if let Some(v) = v {
                        form.push((k.to_string(), v.clone()));
                    }
                }
                form.extend(x.params.iter().cloned());
                self.token_request(c, http, endpoint, form).await?
            }
        };
        let (token, expires_in, refresh) = parse_answer(&c.name, &v)?;
        let life = Duration::from_secs(expires_in.unwrap_or(300));
        let usable = life.saturating_sub(MARGIN).max(Duration::from_secs(1));
        if let Some(s) = self.shared.get() {
            let r = SharedResult {
                token: token.clone(),
                until_ms: crate::state::now_ms() + usable.as_millis() as i64,
                refresh: refresh.clone(),
            };
            if let Ok(raw) = serde_json::to_vec(&r) {
                // Kept while a refresh token may still be useful.
                s.put(&shared_key, raw, life.max(Duration::from_secs(60)) * 2)
                    .await;
            }
        }
        self.exchanged.insert(
            key,
            Arc::new(Cached {
                token: token.clone(),
                until: Instant::now() + usable,
                refresh,
            }),
        );
        Ok(token)
    }

    async fn token_request(
        &self,
        c: &ConnectionConfig,
        http: &reqwest::Client,
        endpoint: &str,
        mut form: Vec<(String, String)>,
    ) -> Result<Value, CredError> {
        let err = |why: String| CredError::Endpoint {
            connection: c.name.clone(),
            why,
        };
        let signer = self
            .authn
            .outbound()
            .ok_or_else(|| err("no [authn.outbound] signer".into()))?;
        let assertion = signer.sign(endpoint).map_err(|e| err(e.to_string()))?;
        form.push(("client_id".into(), signer.client_id().to_string()));
        form.push((
            "client_assertion_type".into(),
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ));
        form.push(("client_assertion".into(), assertion));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let resp = tokio::time::timeout(
            c.timeout,
            http.post(endpoint)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body)
                .send(),
        )
        .await
        .map_err(|_| err(format!("no answer within {:?}", c.timeout)))?
        .map_err(|e| err(format!("request failed: {e}")))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| err(format!("answer is not JSON ({e})")))?;
        if !status.is_success() {
            let why = format!(
                "answered {status}: {} {}",
                v.get("error").and_then(Value::as_str).unwrap_or("?"),
                v.get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            warn!(connection = %c.name, "{why}");
            return Err(err(why));
        }
        Ok(v)
    }
}

fn parse_answer(
    connection: &str,
    v: &Value,
) -> Result<(String, Option<u64>, Option<String>), CredError> {
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CredError::Endpoint {
            connection: connection.into(),
            why: "the answer has no access_token".into(),
        })?;
    Ok((
        token.to_string(),
        v.get("expires_in").and_then(Value::as_u64),
        v.get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_string),
    ))
}

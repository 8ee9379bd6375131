//! A remote OpenFGA / Auth0 FGA as the decision engine: `POST
//! /stores/{id}/check` over HTTPS (reqwest, rustls), with a short decision
//! cache, a timeout per decision, and credentials (a static token, OAuth
//! client credentials with a secret, or an RFC 7523 client assertion).
//! Every error or timeout is a deny.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{
    config::{Credentials, RemoteConfig},
    policy::Planned,
};
use crate::authn::AssertionSigner;

/// Why a remote decision failed (the request is denied).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer in time.
    #[error("the FGA server did not answer within {0:?}")]
    Timeout(Duration),
    /// Transport or HTTP failure.
    #[error("FGA server: {0}")]
    Http(String),
    /// The server refused the request (4xx) or answered nonsense.
    #[error("FGA server refused the check: {0}")]
    Refused(String),
    /// Credentials could not be obtained.
    #[error("FGA credentials: {0}")]
    Credentials(String),
}

enum Auth {
    None,
    Static(String),
    Oauth(Box<Oauth>),
}

struct Oauth {
    token_url: String,
    client_id: String,
    secret: Option<String>,
    signer: Option<AssertionSigner>,
    audience: Option<String>,
    scopes: Vec<String>,
    token: Mutex<Option<(String, Instant)>>,
}

/// The remote decision client.
pub struct RemoteFga {
    cfg: RemoteConfig,
    http: reqwest::Client,
    auth: Auth,
    cache: Option<moka::sync::Cache<String, bool>>,
    /// `ztag_authz_cache_total{result}`: hits, misses.
    cache_lookups: [prometheus::IntCounter; 2],
    cache_metric: prometheus::IntCounterVec,
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(s)
}

impl RemoteFga {
    /// Build the client: secrets and keys are read now, so a missing file
    /// fails the start.
    pub fn new(cfg: &RemoteConfig) -> Result<RemoteFga, String> {
        let ca = match &cfg.ca_file {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| format!("authz.remote.ca_file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let http = crate::authn::jwks::http_client(ca.as_deref())
            .map_err(|e| format!("authz.remote: {e}"))?;
        let auth = match &cfg.credentials {
            Credentials::None => Auth::None,
            Credentials::ApiToken { token_file } => Auth::Static(read_secret(
                token_file,
                "authz.remote.credentials.api_token_file",
            )?),
            Credentials::ClientCredentials {
                token_url,
                client_id,
                secret_file,
                audience,
                scopes,
            } => Auth::Oauth(Box::new(Oauth {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                secret: Some(read_secret(
                    secret_file,
                    "authz.remote.credentials.client_secret_file",
                )?),
                signer: None,
                audience: audience.clone(),
                scopes: scopes.clone(),
                token: Mutex::new(None),
            })),
            Credentials::PrivateKeyJwt {
                token_url,
                client_id,
                key_file,
                key_id,
                algorithm,
                audience,
                scopes,
            } => {
                let alg: jsonwebtoken::Algorithm = algorithm.parse().map_err(|_| {
                    format!(
                        "authz.remote.credentials.algorithm: {algorithm:?} is not a JWS algorithm"
                    )
                })?;
                let pem = std::fs::read(key_file).map_err(|e| {
                    format!(
                        "authz.remote.credentials.key_file {}: {e}",
                        key_file.display()
                    )
                })?;
                let signer = AssertionSigner::from_pem(client_id, alg, key_id.as_deref(), &pem)
                    .map_err(|e| format!("authz.remote.credentials.key_file: {e}"))?;
                Auth::Oauth(Box::new(Oauth {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    secret: None,
                    signer: Some(signer),
                    audience: audience.clone(),
                    scopes: scopes.clone(),
                    token: Mutex::new(None),
                }))
            }
        };
        let cache = (!cfg.cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.cache_size)
                .time_to_live(cfg.cache_ttl)
                .build()
        });
        let cache_metric = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ztag_authz_cache_total",
                "Remote FGA decision-cache lookups, by result (hit or miss).",
            ),
            &["result"],
        )
        .map_err(|e| e.to_string())?;
        Ok(RemoteFga {
            cfg: cfg.clone(),
            http,
            auth,
            cache,
            cache_lookups: [
                cache_metric.with_label_values(&["hit"]),
                cache_metric.with_label_values(&["miss"]),
            ],
            cache_metric,
        })
    }

    /// Registers `ztag_authz_cache_total` (when the cache is on).
    pub fn register(&self, r: &prometheus::Registry) -> Result<(), prometheus::Error> {
        if self.cache.is_some() {
            r.register(Box::new(self.cache_metric.clone()))?;
        }
        Ok(())
    }

    async fn bearer(&self) -> Result<Option<String>, RemoteError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Static(t) => Ok(Some(t.clone())),
            Auth::Oauth(o) => {
                let Oauth {
                    token_url,
                    client_id,
                    secret,
                    signer,
                    audience,
                    scopes,
                    token,
                } = &**o;
                let mut slot = token.lock().await;
                if let Some((t, until)) = slot.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(Some(t.clone()));
                }
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "client_credentials".into()),
                    ("client_id", client_id.clone()),
                ];
                if let Some(s) = secret {
                    form.push(("client_secret", s.clone()));
                }
                if let Some(signer) = signer {
                    let a = signer
                        .sign(token_url)
                        .map_err(|e| RemoteError::Credentials(e.to_string()))?;
                    form.push((
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    ));
                    form.push(("client_assertion", a));
                }
                if let Some(a) = audience {
                    form.push(("audience", a.clone()));
                }
                if !scopes.is_empty() {
                    form.push(("scope", scopes.join(" ")));
                }
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                    .finish();
                let resp = self
                    .http
                    .post(token_url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| RemoteError::Credentials(format!("token endpoint: {e}")))?;
                let status = resp.status();
                let v: Value = resp
                    .json()
                    .await
                    .map_err(|e| RemoteError::Credentials(format!("token endpoint: {e}")))?;
                if !status.is_success() {
                    return Err(RemoteError::Credentials(format!(
                        "token endpoint answered {status}: {}",
                        v.get("error").and_then(Value::as_str).unwrap_or("?")
                    )));
                }
                let t = v
                    .get("access_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        RemoteError::Credentials("no access_token in the answer".into())
                    })?
                    .to_string();
                let ttl = v.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
                let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(30).max(1));
                *slot = Some((t.clone(), until));
                Ok(Some(t))
            }
        }
    }

    /// Ask the server; cached answers within `cache_ttl`.
    pub async fn check(&self, p: &Planned) -> Result<bool, RemoteError> {
        let key = format!(
            "{}\n{}\n{}\n{}",
            p.user,
            p.relation,
            p.object,
            p.context
                .as_ref()
                .map(|c| Value::Object(c.clone()).to_string())
                .unwrap_or_default()
        );
        if let Some(c) = &self.cache {
            if let Some(v) = c.get(&key) {
                self.cache_lookups[0].inc();
                return Ok(v);
            }
            self.cache_lookups[1].inc();
        }
        let fut = async {
            let mut body = json!({
                "tuple_key": {"user": p.user, "relation": p.relation, "object": p.object},
            });
            if let Some(m) = &self.cfg.model_id {
                body["authorization_model_id"] = json!(m);
            }
            if let Some(c) = &p.context {
                body["context"] = Value::Object(c.clone());
            }
            let url = format!("{}/stores/{}/check", self.cfg.api_url, self.cfg.store_id);
            let mut req = self.http.post(&url).json(&body);
            if let Some(t) = self.bearer().await? {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    RemoteError::Timeout(self.cfg.timeout)
                } else {
                    RemoteError::Http(e.to_string())
                }
            })?;
            let status = resp.status();
            let v: Value = resp
                .json()
                .await
                .map_err(|e| RemoteError::Http(format!("answer: {e}")))?;
            if !status.is_success() {
                return Err(RemoteError::Refused(format!(
                    "{status}: {}",
                    v.get("message").and_then(Value::as_str).unwrap_or("")
                )));
            }
            v.get("allowed")
                .and_then(Value::as_bool)
                .ok_or_else(|| RemoteError::Refused("the answer has no 'allowed'".into()))
        };
        let allowed = tokio::time::timeout(self.cfg.timeout, fut)
            .await
            .map_err(|_| RemoteError::Timeout(self.cfg.timeout))??;
        if let Some(c) = &self.cache {
            c.insert(key, allowed);
        }
        Ok(allowed)
    }
}

/// The engine a gateway's route policies ask.
pub enum Decider {
    /// The embedded engine's store.
    Embedded(Arc<super::store::Store>),
    /// A remote OpenFGA.
    Remote(Arc<RemoteFga>),
}

impl Decider {
    /// One decision; `Err` denies (the reason is logged).
    pub async fn check(&self, p: &Planned) -> Result<bool, String> {
        match self {
            Decider::Embedded(store) => {
                let q = super::engine::Query {
                    contextual: &[],
                    context: p.context.as_ref(),
                };
                store
                    .check(None, &p.object, &p.relation, &p.user, &q)
                    .map_err(|e| e.to_string())
            }
            Decider::Remote(r) => r.check(p).await.map_err(|e| e.to_string()),
        }
    }

    /// "embedded" or "remote" (metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Decider::Embedded(_) => "embedded",
            Decider::Remote(_) => "remote",
        }
    }
}

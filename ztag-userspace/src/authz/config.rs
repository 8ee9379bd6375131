//! `[authz]`: which FGA engine route policies ask.
//!
//! ```toml
//! [authz]
//! mode = "embedded"            # or "remote"
//! store = "default"            # embedded: the store's name, created if missing
//! model_file = "model.fga"     # embedded: written as the store's model at start
//!                              # when it differs from the latest (.fga, .json, fga.mod)
//!
//! [authz.remote]               # mode = "remote": an OpenFGA / Auth0 FGA server
//! api_url = "https://fga.example.com"
//! store_id = "01HVMMBCMGZNT3SED4Z17ECXCA"
//! model_id = "01HVMMBD1GZ7XF7YAGJ9B6Y3EB"   # optional: the latest otherwise
//! timeout = "300ms"            # a decision that takes longer denies
//! cache_ttl = "1s"             # allowed and denied decisions are cached this long
//! [authz.remote.credentials]
//! method = "client_credentials"   # "none", "api_token", "client_credentials", "private_key_jwt"
//! token_url = "https://idp.example.com/oauth/token"
//! client_id = "ztag"
//! client_secret_file = "fga-secret"
//! audience = "https://fga.example.com/"
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// `[authz]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    mode: Option<String>,
    store: Option<String>,
    model_file: Option<PathBuf>,
    remote: Option<RawRemote>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    api_url: Option<String>,
    store_id: Option<String>,
    model_id: Option<String>,
    timeout: Option<String>,
    cache_ttl: Option<String>,
    cache_size: Option<u64>,
    ca_file: Option<PathBuf>,
    credentials: Option<RawCredentials>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    method: Option<String>,
    api_token_file: Option<PathBuf>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    audience: Option<String>,
    scopes: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    key_id: Option<String>,
    algorithm: Option<String>,
}

/// Validated `[authz]`.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthzConfig {
    /// The embedded engine.
    Embedded {
        /// Store name.
        store: String,
        /// Model file to install at start.
        model_file: Option<PathBuf>,
    },
    /// A remote OpenFGA.
    Remote(Box<RemoteConfig>),
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig::Embedded {
            store: "default".into(),
            model_file: None,
        }
    }
}

/// Remote OpenFGA settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// Base URL.
    pub api_url: String,
    /// Store id.
    pub store_id: String,
    /// Model id (latest when `None`).
    pub model_id: Option<String>,
    /// Per-decision timeout.
    pub timeout: Duration,
    /// Decision cache lifetime (zero: no cache).
    pub cache_ttl: Duration,
    /// Decision cache entries.
    pub cache_size: u64,
    /// Extra CA for the server's certificate (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// How ztag authenticates to the server.
    pub credentials: Credentials,
}

/// Credentials for the remote server.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// None.
    None,
    /// A static bearer token read from a file.
    ApiToken {
        /// File with the token.
        token_file: PathBuf,
    },
    /// OAuth client credentials (client secret).
    ClientCredentials {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// File with the client secret.
        secret_file: PathBuf,
        /// `audience` parameter.
        audience: Option<String>,
        /// Scopes.
        scopes: Vec<String>,
    },
    /// OAuth client credentials with an RFC 7523 client assertion.
    PrivateKeyJwt {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// PEM private key.
        key_file: PathBuf,
        /// `kid` header.
        key_id: Option<String>,
        /// RS256, ES256, EdDSA, ...
        algorithm: String,
        /// `audience` parameter.
        audience: Option<String>,
        /// Scopes.
        scopes: Vec<String>,
    },
}

fn dur(key: &str, v: Option<&str>, default: &str, problems: &mut Vec<String>) -> Duration {
    let s = v.unwrap_or(default);
    humantime::parse_duration(s).unwrap_or_else(|e| {
        problems.push(format!(
            "{key}: {s:?} is not a duration like \"300ms\" ({e})"
        ));
        Duration::from_secs(1)
    })
}

impl RawAuthz {
    /// Validate; relative paths resolve against `base`.
    pub fn validate(self, base: &Path, problems: &mut Vec<String>) -> AuthzConfig {
        let RawAuthz {
            mode,
            store,
            model_file,
            remote,
        } = self;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        match mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if remote.is_some() {
                    problems.push("authz.remote: set only with authz.mode = \"remote\"".into());
                }
                let store = store.unwrap_or_else(|| "default".into());
                if store.trim().is_empty() || store.len() > 64 {
                    problems.push("authz.store: must be a name of 1-64 characters".into());
                }
                AuthzConfig::Embedded {
                    store,
                    model_file: model_file.map(abs),
                }
            }
            "remote" => {
                if store.is_some() || model_file.is_some() {
                    problems.push(
                        "authz.store / authz.model_file: only for the embedded engine (remote mode names authz.remote.store_id)".into(),
                    );
                }
                let Some(r) = remote else {
                    problems.push("authz.remote: required with authz.mode = \"remote\"".into());
                    return AuthzConfig::default();
                };
                let RawRemote {
                    api_url,
                    store_id,
                    model_id,
                    timeout,
                    cache_ttl,
                    cache_size,
                    ca_file,
                    credentials,
                } = r;
                let api_url = api_url.unwrap_or_default();
                if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
                    problems.push(format!(
                        "authz.remote.api_url: {api_url:?} must be an http(s) URL"
                    ));
                }
                let store_id = store_id.unwrap_or_default();
                if ulid::Ulid::from_string(&store_id).is_err() {
                    problems.push(format!(
                        "authz.remote.store_id: {store_id:?} is not an OpenFGA store id (a ULID)"
                    ));
                }
                if let Some(m) = &model_id
                    && ulid::Ulid::from_string(m).is_err()
                {
                    problems.push(format!(
                        "authz.remote.model_id: {m:?} is not an OpenFGA model id (a ULID)"
                    ));
                }
                let credentials = credentials.unwrap_or_default();
                let need = |v: Option<String>, key: &str, problems: &mut Vec<String>| {
                    v.unwrap_or_else(|| {
                        problems.push(format!(
                            "authz.remote.credentials.{key}: required for this method"
                        ));
                        String::new()
                    })
                };
                let need_path = |v: Option<PathBuf>, key: &str, problems: &mut Vec<String>| {
                    v.map(abs).unwrap_or_else(|| {
                        problems.push(format!(
                            "authz.remote.credentials.{key}: required for this method"
                        ));
                        PathBuf::new()
                    })
                };
                let RawCredentials {
                    method,
                    api_token_file,
                    token_url,
                    client_id,
                    client_secret_file,
                    audience,
                    scopes,
                    key_file,
                    key_id,
                    algorithm,
                } = credentials;
                let credentials = match method.as_deref().unwrap_or("none") {
                    "none" => Credentials::None,
                    "api_token" => Credentials::ApiToken {
                        token_file: need_path(api_token_file, "api_token_file", problems),
                    },
                    "client_credentials" => Credentials::ClientCredentials {
                        token_url: need(token_url, "token_url", problems),
                        client_id: need(client_id, "client_id", problems),
                        secret_file: need_path(client_secret_file, "client_secret_file", problems),
                        audience,
                        scopes: scopes.unwrap_or_default(),
                    },
                    "private_key_jwt" => Credentials::PrivateKeyJwt {
                        token_url: need(token_url, "token_url", problems),
                        client_id: need(client_id, "client_id", problems),
                        key_file: need_path(key_file, "key_file", problems),
                        key_id,
                        algorithm: algorithm.unwrap_or_else(|| "RS256".into()),
                        audience,
                        scopes: scopes.unwrap_or_default(),
                    },
                    other => {
                        problems.push(format!(
                            "authz.remote.credentials.method: {other:?} is not one of \"none\", \"api_token\", \"client_credentials\", \"private_key_jwt\""
                        ));
                        Credentials::None
                    }
                };
                AuthzConfig::Remote(Box::new(RemoteConfig {
                    api_url: api_url.trim_end_matches('/').to_string(),
                    store_id,
                    model_id,
                    timeout: dur(
                        "authz.remote.timeout",
                        timeout.as_deref(),
                        "300ms",
                        problems,
                    ),
                    cache_ttl: dur(
                        "authz.remote.cache_ttl",
                        cache_ttl.as_deref(),
                        "1s",
                        problems,
                    ),
                    cache_size: cache_size.unwrap_or(100_000),
                    ca_file: ca_file.map(abs),
                    credentials,
                }))
            }
            other => {
                problems.push(format!(
                    "authz.mode: {other:?} is not \"embedded\" or \"remote\""
                ));
                AuthzConfig::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (AuthzConfig, Vec<String>) {
        let raw: RawAuthz = toml::from_str(s).unwrap();
        let mut p = Vec::new();
        let c = raw.validate(Path::new("/etc/ztag"), &mut p);
        (c, p)
    }

    #[test]
    fn embedded_is_the_default_and_paths_resolve() {
        let (c, p) = parse("model_file = \"m.fga\"");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            c,
            AuthzConfig::Embedded {
                store: "default".into(),
                model_file: Some(PathBuf::from("/etc/ztag/m.fga"))
            }
        );
    }

    #[test]
    fn the_shipped_example_config_and_model_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway");
        let c =
            crate::config::Config::load(&dir.join("ztag.toml")).unwrap_or_else(|e| panic!("{e}"));
        let AuthzConfig::Embedded { model_file, .. } = &c.authz else {
            panic!("the example uses the embedded engine")
        };
        let m = crate::authz::testfile::load_model_file(model_file.as_ref().unwrap()).unwrap();
        assert!(m.type_definitions.iter().any(|t| t.type_name == "document"));
        let docs = c.gateway.routes.iter().find(|r| r.name == "docs").unwrap();
        assert_eq!(docs.authz.len(), 1);
    }

    #[test]
    fn remote_problems_name_their_keys() {
        let (_, p) = parse(
            "mode = \"remote\"\n[remote]\napi_url = \"ftp://x\"\nstore_id = \"nope\"\n[remote.credentials]\nmethod = \"client_credentials\"\n",
        );
        let all = p.join("\n");
        assert!(all.contains("authz.remote.api_url"), "{all}");
        assert!(all.contains("authz.remote.store_id"), "{all}");
        assert!(all.contains("credentials.token_url"), "{all}");
        assert!(all.contains("credentials.client_secret_file"), "{all}");
        let (c, p) = parse(
            "mode = \"remote\"\n[remote]\napi_url = \"http://127.0.0.1:8081/\"\nstore_id = \"01HVMMBCMGZNT3SED4Z17ECXCA\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let AuthzConfig::Remote(r) = c else { panic!() };
        assert_eq!(r.api_url, "http://127.0.0.1:8081");
        assert_eq!(r.timeout, Duration::from_millis(300));
    }
}

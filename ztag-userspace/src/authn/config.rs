//! `[authn]` as written in the file, and what a valid one is. Checks here
//! touch neither files nor the network (so `ztag check-config` can run them
//! anywhere); [`super::Authn::build`] loads the files afterwards. Every
//! problem is reported, each as `authn.<key path>: <reason>`.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use reqwest::Url;
use serde::Deserialize;

use super::keys::{ACCEPTED_ALGORITHMS, AlgSet};

/// `[authn]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAuthn {
    /// `[[authn.jwt]]`: issuers of bearer tokens.
    #[serde(default)]
    pub jwt: Vec<RawJwt>,
    /// `[authn.client_assertion]`: RFC 7523 client assertions.
    pub client_assertion: Option<RawClientAssertion>,
    /// `[authn.mtls]`: identities from verified client certificates.
    pub mtls: Option<RawMtls>,
    /// `[authn.cache]`: the verified-token cache.
    #[serde(default)]
    pub cache: RawCache,
    /// `[authn.outbound]`: ztag's own client assertions.
    pub outbound: Option<RawOutbound>,
}

/// `[[authn.jwt]]`: one token issuer.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Provider name, listed by routes in `authenticate`.
    pub name: Option<String>,
    /// Exact `iss` of the tokens.
    pub issuer: Option<String>,
    /// Accepted `aud` values: a token must carry one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values (no `none`, no HMAC).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Key source: a JWKS file (relative to the config file's directory).
    pub jwks_file: Option<PathBuf>,
    /// Key source: a JWKS URL.
    pub jwks_url: Option<String>,
    /// Key source: OIDC discovery base URL.
    pub discovery: Option<String>,
    /// PEM trust roots for the IdP instead of the built-in web roots.
    pub ca: Option<PathBuf>,
    /// Key refresh period (default 5m).
    pub refresh_interval: Option<String>,
    /// Least time between two fetches caused by an unknown `kid` (default 10s).
    pub min_refresh_interval: Option<String>,
    /// Age after which the last good keys stop verifying (default 1h).
    pub max_staleness: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`/`iat` (default 30s).
    pub leeway: Option<String>,
    /// Claims every token must carry.
    #[serde(default)]
    pub required_claims: Vec<String>,
}

/// `[authn.client_assertion]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawClientAssertion {
    /// Provider name.
    pub name: Option<String>,
    /// The `aud` assertions must carry (this gateway).
    pub audience: Option<String>,
    /// Longest accepted `exp - now` (default 5m).
    pub max_lifetime: Option<String>,
    /// Clock skew (default 30s).
    pub leeway: Option<String>,
    /// Live `jti`s remembered at most (default 100000); when full, new
    /// assertions are refused rather than a live `jti` forgotten.
    pub max_replay_entries: Option<u64>,
    /// Registered clients.
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

/// `[[authn.client_assertion.clients]]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The client id: `iss` and `sub` of its assertions.
    pub client_id: Option<String>,
    /// The client's public keys as a JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// The client's public key as a PEM file.
    pub public_key_file: Option<PathBuf>,
    /// Accepted `alg` values.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Scopes granted to the client.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[authn.mtls]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// Provider name.
    pub name: Option<String>,
    /// `san_uri` (default), `san_dns` or `cn`.
    pub subject_from: Option<String>,
}

/// `[authn.cache]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Verified tokens kept (default 100000; 0 turns the cache off).
    pub max_entries: Option<u64>,
}

/// `[authn.outbound]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// ztag's client id at the token endpoints it calls.
    pub client_id: Option<String>,
    /// PKCS#8 (or PKCS#1 for RSA) PEM private key.
    pub key_file: Option<PathBuf>,
    /// `ES256` (default), `ES384`, `RS256`..`PS512` or `EdDSA`.
    pub algorithm: Option<String>,
    /// `kid` header of the assertions.
    pub kid: Option<String>,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    File(PathBuf),
    Url(Url),
    Discovery(Url),
}

/// A `[[authn.jwt]]` entry once checked.
#[derive(Debug, Clone)]
pub(crate) struct JwtSettings {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: AlgSet,
    pub source: KeySource,
    pub ca: Option<PathBuf>,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub max_staleness: Duration,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
}

/// A registered client once checked.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    pub client_id: String,
    pub key_file: ClientKeyFile,
    pub algorithms: AlgSet,
    pub scopes: Vec<String>,
}

/// How a client's keys are given.
#[derive(Debug, Clone)]
pub(crate) enum ClientKeyFile {
    Jwks(PathBuf),
    Pem(PathBuf),
}

/// `[authn.client_assertion]` once checked.
#[derive(Debug, Clone)]
pub(crate) struct AssertionSettings {
    pub name: String,
    pub audience: String,
    pub max_lifetime: Duration,
    pub leeway: Duration,
    pub max_replay_entries: u64,
    pub clients: Vec<ClientSettings>,
}

/// What an mTLS identity is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectFrom {
    /// The (single) URI subject alternative name, e.g. a SPIFFE ID.
    SanUri,
    /// The first DNS subject alternative name.
    SanDns,
    /// The subject's first common name.
    Cn,
}

/// `[authn.outbound]` once checked.
#[derive(Debug, Clone)]
pub(crate) struct OutboundSettings {
    pub client_id: String,
    pub key_file: PathBuf,
    pub algorithm: jsonwebtoken::Algorithm,
    pub kid: Option<String>,
}

/// Everything `[authn]` says, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub jwt: Vec<JwtSettings>,
    pub client_assertion: Option<AssertionSettings>,
    pub mtls: Option<(String, SubjectFrom)>,
    pub cache_max_entries: u64,
    pub outbound: Option<OutboundSettings>,
}

const MAX_LEEWAY: Duration = Duration::from_secs(300);
const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
const MAX_CACHE_ENTRIES: u64 = 10_000_000;

fn accepted_list() -> String {
    ACCEPTED_ALGORITHMS.join(", ")
}

fn algorithms(key: &str, names: &[String], problems: &mut Vec<String>) -> AlgSet {
    if names.is_empty() {
        problems.push(format!(
            "{key}: must list at least one algorithm ({})",
            accepted_list()
        ));
    }
    for (i, a) in names.iter().enumerate() {
        if super::keys::parse_alg(a).is_some() {
            continue;
        }
        let upper = a.to_ascii_uppercase();
        if upper == "NONE" || upper.starts_with("HS") {
            problems.push(format!(
                "{key}: {a:?} is not allowed: ztag never accepts \"none\" or HMAC (shared-secret) algorithms, tokens are verified with the issuer's public keys; use one of {}",
                accepted_list()
            ));
        } else {
            problems.push(format!(
                "{key}[{i}]: {a:?} is not an accepted algorithm; use one of {}",
                accepted_list()
            ));
        }
    }
    AlgSet::from_names(names)
}

fn duration(key: &str, v: Option<&str>, default: Duration, problems: &mut Vec<String>) -> Duration {
    match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!(
                    "{key}: {s:?} is not a duration like \"30s\" or \"5m\" ({e})"
                ));
                default
            }
        },
    }
}

fn required<'a>(key: &str, v: &'a Option<String>, problems: &mut Vec<String>) -> &'a str {
    match v.as_deref() {
        Some(s) if !s.is_empty() => s,
        Some(_) => {
            problems.push(format!("{key}: must not be empty"));
            ""
        }
        None => {
            problems.push(format!("{key}: required"));
            ""
        }
    }
}

/// Checks a fetch URL: https, or http to a loopback address only (keys
/// fetched in clear over a network could be replaced in transit).
pub(crate) fn check_url(key: &str, s: &str, problems: &mut Vec<String>) -> Option<Url> {
    let url = match Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!("{key}: {s:?} is not a URL ({e})"));
            return None;
        }
    };
    match url.scheme() {
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Some(url),
        "http" if is_loopback(&url) => Some(url),
        "http" => {
            problems.push(format!(
                "{key}: {s:?} uses http://, which is refused except for loopback addresses (127.0.0.0/8, [::1]): keys fetched in clear could be replaced in transit; use https://"
            ));
            None
        }
        _ => {
            problems.push(format!("{key}: {s:?} must be an https:// URL"));
            None
        }
    }
}

/// Whether the URL's host is a loopback IP literal.
pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(h) = url.host_str() else {
        return false;
    };
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

fn name(key: &str, v: &Option<String>, problems: &mut Vec<String>) -> String {
    let n = required(key, v, problems);
    if !n.is_empty()
        && (n.len() > 64
            || n == "none"
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        problems.push(format!(
            "{key}: {n:?} must be 1-64 characters of A-Z a-z 0-9 - _ . and not \"none\""
        ));
    }
    n.to_string()
}

impl RawJwt {
    fn settings(&self, i: usize, problems: &mut Vec<String>) -> JwtSettings {
        let k = |f: &str| format!("authn.jwt[{i}].{f}");
        let name = name(&k("name"), &self.name, problems);
        let issuer = required(&k("issuer"), &self.issuer, problems).to_string();
        if self.audiences.is_empty() {
            problems.push(format!(
                "{}: must list at least one audience (tokens for other services must not be accepted)",
                k("audiences")
            ));
        }
        for (j, a) in self.audiences.iter().enumerate() {
            if a.is_empty() {
                problems.push(format!("{}[{j}]: must not be empty", k("audiences")));
            }
        }
        let algs = algorithms(&k("algorithms"), &self.algorithms, problems);
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.discovery.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let mut source = KeySource::File(PathBuf::new());
        if sources != 1 {
            problems.push(format!(
                "authn.jwt[{i}]: exactly one key source is needed: jwks_file, jwks_url or discovery ({sources} given)"
            ));
        } else if let Some(f) = &self.jwks_file {
            source = KeySource::File(f.clone());
        } else if let Some(u) = &self.jwks_url {
            if let Some(u) = check_url(&k("jwks_url"), u, problems) {
                source = KeySource::Url(u);
            }
        } else if let Some(u) = &self.discovery
            && let Some(u) = check_url(&k("discovery"), u, problems)
        {
            source = KeySource::Discovery(u);
        }
        let refresh_interval = duration(
            &k("refresh_interval"),
            self.refresh_interval.as_deref(),
            Duration::from_secs(300),
            problems,
        );
        let min_refresh_interval = duration(
            &k("min_refresh_interval"),
            self.min_refresh_interval.as_deref(),
            Duration::from_secs(10),
            problems,
        );
        let max_staleness = duration(
            &k("max_staleness"),
            self.max_staleness.as_deref(),
            Duration::from_secs(3600),
            problems,
        );
        let leeway = duration(
            &k("leeway"),
            self.leeway.as_deref(),
            Duration::from_secs(30),
            problems,
        );
        if refresh_interval.is_zero() {
            problems.push(format!(
                "{}: must be greater than zero",
                k("refresh_interval")
            ));
        }
        if min_refresh_interval.is_zero() {
            problems.push(format!(
                "{}: must be greater than zero (it bounds how often an unknown kid makes ztag call the IdP)",
                k("min_refresh_interval")
            ));
        }
        if min_refresh_interval > refresh_interval {
            problems.push(format!(
                "{}: must not exceed refresh_interval",
                k("min_refresh_interval")
            ));
        }
        if max_staleness < refresh_interval {
            problems.push(format!(
                "{}: must be at least refresh_interval, or keys would go stale between two refreshes",
                k("max_staleness")
            ));
        }
        if leeway > MAX_LEEWAY {
            problems.push(format!("{}: at most 5m", k("leeway")));
        }
        for (j, c) in self.required_claims.iter().enumerate() {
            if c.is_empty() {
                problems.push(format!("{}[{j}]: must not be empty", k("required_claims")));
            }
        }
        JwtSettings {
            name,
            issuer,
            audiences: self.audiences.clone(),
            algorithms: algs,
            source,
            ca: self.ca.clone(),
            refresh_interval,
            min_refresh_interval,
            max_staleness,
            leeway,
            required_claims: self.required_claims.clone(),
        }
    }
}

impl RawClientAssertion {
    fn settings(&self, problems: &mut Vec<String>) -> AssertionSettings {
        let k = |f: &str| format!("authn.client_assertion.{f}");
        let name = name(&k("name"), &self.name, problems);
        let audience = required(&k("audience"), &self.audience, problems).to_string();
        let max_lifetime = duration(
            &k("max_lifetime"),
            self.max_lifetime.as_deref(),
            Duration::from_secs(300),
            problems,
        );
        if max_lifetime.is_zero() || max_lifetime > MAX_ASSERTION_LIFETIME {
            problems.push(format!(
                "{}: must be between 1s and 1h (assertions are short-lived by design)",
                k("max_lifetime")
            ));
        }
        let leeway = duration(
            &k("leeway"),
            self.leeway.as_deref(),
            Duration::from_secs(30),
            problems,
        );
        if leeway > MAX_LEEWAY {
            problems.push(format!("{}: at most 5m", k("leeway")));
        }
        let max_replay_entries = self.max_replay_entries.unwrap_or(100_000);
        if max_replay_entries == 0 || max_replay_entries > MAX_CACHE_ENTRIES {
            problems.push(format!(
                "{}: must be between 1 and {MAX_CACHE_ENTRIES}",
                k("max_replay_entries")
            ));
        }
        if self.clients.is_empty() {
            problems.push(format!(
                "{}: must register at least one client",
                k("clients")
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ck = |f: &str| format!("authn.client_assertion.clients[{i}].{f}");
                let client_id = required(&ck("client_id"), &c.client_id, problems).to_string();
                if let Some(id) = c.client_id.as_deref()
                    && let Some(j) = seen.insert(id, i)
                {
                    problems.push(format!(
                        "{}: {id:?} is already registered by clients[{j}]",
                        ck("client_id")
                    ));
                }
                let key_file = match (&c.jwks_file, &c.public_key_file) {
                    (Some(f), None) => ClientKeyFile::Jwks(f.clone()),
                    (None, Some(f)) => ClientKeyFile::Pem(f.clone()),
                    _ => {
                        problems.push(format!(
                            "authn.client_assertion.clients[{i}]: exactly one of jwks_file or public_key_file is needed"
                        ));
                        ClientKeyFile::Pem(PathBuf::new())
                    }
                };
                let algorithms = algorithms(&ck("algorithms"), &c.algorithms, problems);
                for (j, s) in c.scopes.iter().enumerate() {
                    if s.is_empty() || s.contains(|ch: char| ch.is_whitespace() || ch == '"' || ch == '\\') {
                        problems.push(format!(
                            "{}[{j}]: {s:?} is not a scope token (no spaces, quotes or backslashes)",
                            ck("scopes")
                        ));
                    }
                }
                ClientSettings {
                    client_id,
                    key_file,
                    algorithms,
                    scopes: c.scopes.clone(),
                }
            })
            .collect();
        AssertionSettings {
            name,
            audience,
            max_lifetime,
            leeway,
            max_replay_entries,
            clients,
        }
    }
}

impl RawAuthn {
    /// Checks what can be checked without reading files or the network;
    /// pushes `authn.<key>: reason` lines.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let _ = self.settings(problems);
    }

    /// Names a route may list in `authenticate`, in provider order.
    pub fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.jwt.iter().filter_map(|j| j.name.clone()).collect();
        v.extend(self.client_assertion.as_ref().and_then(|c| c.name.clone()));
        v.extend(self.mtls.as_ref().and_then(|m| m.name.clone()));
        v
    }

    /// The checked settings; `problems` gets every reason they are not valid.
    pub(crate) fn settings(&self, problems: &mut Vec<String>) -> Settings {
        let jwt: Vec<JwtSettings> = self
            .jwt
            .iter()
            .enumerate()
            .map(|(i, j)| j.settings(i, problems))
            .collect();
        let client_assertion = self.client_assertion.as_ref().map(|c| c.settings(problems));
        let mtls = self.mtls.as_ref().map(|m| {
            let name = name("authn.mtls.name", &m.name, problems);
            let from = match m.subject_from.as_deref().unwrap_or("san_uri") {
                "san_uri" => SubjectFrom::SanUri,
                "san_dns" => SubjectFrom::SanDns,
                "cn" => SubjectFrom::Cn,
                other => {
                    problems.push(format!(
                        "authn.mtls.subject_from: {other:?} is not one of \"san_uri\", \"san_dns\", \"cn\""
                    ));
                    SubjectFrom::SanUri
                }
            };
            (name, from)
        });

        // Provider names are one namespace: routes list them.
        let mut all: Vec<(&str, String)> = Vec::new();
        for (i, j) in jwt.iter().enumerate() {
            all.push((&j.name, format!("authn.jwt[{i}].name")));
        }
        if let Some(c) = &client_assertion {
            all.push((&c.name, "authn.client_assertion.name".into()));
        }
        if let Some((n, _)) = &mtls {
            all.push((n, "authn.mtls.name".into()));
        }
        for (i, (n, key)) in all.iter().enumerate() {
            if n.is_empty() {
                continue;
            }
            if let Some((_, first)) = all[..i].iter().find(|(m, _)| m == n) {
                problems.push(format!(
                    "{key}: provider name {n:?} is already used by {first}"
                ));
            }
        }

        // A bearer token is routed by its `iss`: a client id that is also a
        // JWT issuer would make that ambiguous.
        if let Some(c) = &client_assertion {
            for (i, cl) in c.clients.iter().enumerate() {
                if let Some(j) = jwt.iter().position(|j| j.issuer == cl.client_id) {
                    problems.push(format!(
                        "authn.client_assertion.clients[{i}].client_id: {:?} is also the issuer of authn.jwt[{j}], so its tokens could not be told apart",
                        cl.client_id
                    ));
                }
            }
        }

        let cache_max_entries = self.cache.max_entries.unwrap_or(100_000);
        if cache_max_entries > MAX_CACHE_ENTRIES {
            problems.push(format!(
                "authn.cache.max_entries: at most {MAX_CACHE_ENTRIES} (0 turns the cache off)"
            ));
        }

        let outbound = self.outbound.as_ref().map(|o| {
            let client_id =
                required("authn.outbound.client_id", &o.client_id, problems).to_string();
            let key_file = match &o.key_file {
                Some(f) => f.clone(),
                None => {
                    problems.push("authn.outbound.key_file: required".into());
                    PathBuf::new()
                }
            };
            let alg_name = o.algorithm.as_deref().unwrap_or("ES256");
            let algorithm = super::keys::parse_alg(alg_name).unwrap_or_else(|| {
                problems.push(format!(
                    "authn.outbound.algorithm: {alg_name:?} is not one of {}",
                    accepted_list()
                ));
                jsonwebtoken::Algorithm::ES256
            });
            if o.kid.as_deref() == Some("") {
                problems.push("authn.outbound.kid: must not be empty when given".into());
            }
            OutboundSettings {
                client_id,
                key_file,
                algorithm,
                kid: o.kid.clone(),
            }
        });

        Settings {
            jwt,
            client_assertion,
            mtls,
            cache_max_entries,
            outbound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RawAuthn {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(toml_text: &str) -> Vec<String> {
        let mut p = Vec::new();
        parse(toml_text).validate(&mut p);
        p
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway/ztag.toml"),
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let raw: RawAuthn = v["authn"].clone().try_into().unwrap();
        let mut p = Vec::new();
        raw.validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(raw.provider_names(), ["corp", "agents", "mtls"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let p = problems(
            r#"
[[jwt]]
name = "corp"
issuer = "https://idp"
audiences = []
algorithms = ["HS256", "none", "ES512", "RS256"]
jwks_url = "http://idp.example.com/jwks"
refresh_interval = "soon"
leeway = "1h"
[[jwt]]
name = "corp"
issuer = "https://idp2"
audiences = ["a"]
algorithms = ["ES256"]
jwks_file = "a.json"
discovery = "https://idp2"
[client_assertion]
name = "mtls"
audience = "https://gw"
max_lifetime = "2h"
[[client_assertion.clients]]
client_id = "https://idp2"
algorithms = ["HS512"]
scopes = ["a b"]
[[client_assertion.clients]]
client_id = "https://idp2"
jwks_file = "c.json"
public_key_file = "c.pem"
algorithms = ["ES256"]
[mtls]
name = "mtls"
subject_from = "email"
[cache]
max_entries = 100000000
[outbound]
key_file = "k.pem"
algorithm = "HS256"
"#,
        );
        let text = p.join("\n");
        for needle in [
            "authn.jwt[0].audiences: must list",
            "authn.jwt[0].algorithms: \"HS256\" is not allowed",
            "authn.jwt[0].algorithms: \"none\" is not allowed",
            "authn.jwt[0].algorithms[2]: \"ES512\" is not an accepted algorithm",
            "authn.jwt[0].jwks_url: \"http://idp.example.com/jwks\" uses http://, which is refused except for loopback",
            "authn.jwt[0].refresh_interval:",
            "authn.jwt[0].leeway: at most 5m",
            "authn.jwt[1]: exactly one key source",
            "authn.jwt[1].name: provider name \"corp\" is already used by authn.jwt[0].name",
            "authn.client_assertion.max_lifetime:",
            "authn.client_assertion.clients[0]: exactly one of jwks_file or public_key_file",
            "authn.client_assertion.clients[0].algorithms: \"HS512\" is not allowed",
            "authn.client_assertion.clients[0].scopes[0]:",
            "authn.client_assertion.clients[1].client_id: \"https://idp2\" is already registered",
            "authn.client_assertion.clients[1]: exactly one of",
            "authn.client_assertion.clients[0].client_id: \"https://idp2\" is also the issuer of authn.jwt[1]",
            "authn.mtls.name: provider name \"mtls\" is already used by authn.client_assertion.name",
            "authn.mtls.subject_from:",
            "authn.cache.max_entries:",
            "authn.outbound.client_id: required",
            "authn.outbound.algorithm:",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn loopback_http_is_the_only_http_allowed() {
        let mut p = Vec::new();
        assert!(check_url("k", "http://127.0.0.1:8080/jwks", &mut p).is_some());
        assert!(check_url("k", "http://[::1]/jwks", &mut p).is_some());
        assert!(check_url("k", "https://idp.example.com/jwks", &mut p).is_some());
        assert!(p.is_empty());
        assert!(check_url("k", "http://localhost.evil.com/", &mut p).is_none());
        assert!(check_url("k", "http://10.0.0.1/", &mut p).is_none());
        assert!(check_url("k", "ftp://127.0.0.1/", &mut p).is_none());
        assert!(check_url("k", "not a url", &mut p).is_none());
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("loopback"), "{p:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            toml::from_str::<RawAuthn>("[[jwt]]\nname = \"a\"\nissuer = \"b\"\naudience = \"c\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("audience"), "{e}");
        assert!(toml::from_str::<RawAuthn>("[mtls]\nsubjectfrom = \"cn\"\n").is_err());
    }
}

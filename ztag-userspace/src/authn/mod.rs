//! Authentication (`[authn]`): who is calling. JWT bearer tokens from
//! configured issuers (keys from a JWKS file, a JWKS URL or OIDC discovery),
//! RFC 7523 client assertions (private_key_jwt) from registered clients, and
//! verified client certificates (mTLS). Success is a [`Principal`]; failure
//! an [`AuthnError`] that maps to one HTTP answer and one metric label.
//!
//! How a request is routed to a provider (decided once, here):
//!
//! 1. An `Authorization` header decides whenever it is present, even if the
//!    connection also has a client certificate: a bearer token is explicit,
//!    a certificate may be ambient. A scheme other than `Bearer` is refused
//!    (`unsupported_scheme`).
//! 2. A bearer token goes to the one provider of the route that owns its
//!    unverified `iss`: the JWT provider with that issuer, or the client
//!    assertion provider with that registered client id. That provider's
//!    answer is final (no fall-through to another provider after a
//!    failure). No provider owns it: `issuer_not_accepted`.
//! 3. With no `Authorization` header, the route's mTLS provider takes the
//!    verified client certificate.
//! 4. Nothing presented that the route accepts: [`AuthnError::Missing`].
//!
//! Files: `config` (what `[authn]` may say), `token` (well-formedness),
//! `keys` (which key verifies which signature), `jwks` (key sets over time),
//! `claims`, `jwt`, `client_assertion` (+ replay cache, outbound signer),
//! `mtls`, `cache` (verified tokens), `requirements` (route scopes/claims),
//! `metrics`.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderValue, StatusCode};
use tracing::warn;

mod cache;
mod claims;
mod client_assertion;
mod config;
pub(crate) mod jwks;
mod jwt;
mod keys;
mod metrics;
mod mtls;
mod requirements;
#[cfg(test)]
mod test_support;
pub(crate) mod token;
#[cfg(test)]
mod wycheproof_tests;

pub use client_assertion::{AssertionSigner, OUTBOUND_LIFETIME_SECS, SignError};
pub use config::{
    RawAuthn, RawCache, RawClient, RawClientAssertion, RawJwt, RawMtls, RawOutbound, SubjectFrom,
};
pub use keys::{ACCEPTED_ALGORITHMS, MAX_KIDLESS_TRIES};
pub use requirements::check_requirements;
pub use token::MAX_TOKEN_BYTES;

use self::{
    cache::{TokenCache, token_hash},
    client_assertion::{Client, ClientAssertionProvider},
    config::{ClientKeyFile, KeySource},
    jwks::KeyStore,
    jwt::JwtIssuer,
    keys::{KeySet, VerifyKey},
    metrics::{AuthnMetrics, NO_PROVIDER},
    mtls::MtlsProvider,
    token::{bearer_token, parse_claims, parse_compact, unverified_issuer},
};

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A JWT bearer token from a configured issuer.
    Jwt,
    /// An RFC 7523 client assertion from a registered client.
    ClientAssertion,
    /// A verified client certificate.
    Mtls,
}

/// A verified identity.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Config name of the provider that verified it (`authn.jwt[].name`, ...).
    pub provider: Arc<str>,
    /// How.
    pub method: Method,
    /// `sub` (else the token's client id), or the certificate's identity.
    pub subject: String,
    /// `iss`, when a token.
    pub issuer: Option<String>,
    /// The client: `client_id`/`azp` claim, the assertion's client id.
    pub client_id: Option<String>,
    /// Granted scopes (`scope` string or `scp` array; a client's configured scopes).
    pub scopes: Vec<String>,
    /// Every claim of the token (empty for mTLS).
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Unix seconds after which this principal is no longer valid.
    pub expires_at: Option<u64>,
}

/// What a request presents.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a HeaderValue>,
    /// The verified client certificate (leaf, DER) of the TLS connection.
    pub client_cert: Option<&'a [u8]>,
}

/// The reasons of [`AuthnError::Invalid`] (and the other variants'), a
/// fixed set so the `reason` metric label stays bounded. Logs carry them;
/// clients see only [`AuthnError::description`].
pub mod reason {
    /// Nothing presented.
    pub const MISSING: &str = "missing";
    /// Token over [`super::MAX_TOKEN_BYTES`].
    pub const TOO_LARGE: &str = "too_large";
    /// Not a well-formed compact JWS / JWT.
    pub const MALFORMED: &str = "malformed";
    /// `Authorization` with a scheme other than `Bearer`.
    pub const UNSUPPORTED_SCHEME: &str = "unsupported_scheme";
    /// `alg` is `none`, HMAC, unknown, or not in the provider's list.
    pub const ALG_NOT_ALLOWED: &str = "alg_not_allowed";
    /// The header asks for a critical extension.
    pub const CRIT_UNSUPPORTED: &str = "crit_unsupported";
    /// `kid` not in the key set (after the rate-limited refresh).
    pub const UNKNOWN_KID: &str = "unknown_kid";
    /// No `kid`, and no key of the `alg`'s type.
    pub const NO_MATCHING_KEY: &str = "no_matching_key";
    /// The `kid`'s key cannot verify that `alg`.
    pub const ALG_KEY_MISMATCH: &str = "alg_key_mismatch";
    /// The signature does not verify.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// The issuer's keys have never been fetched.
    pub const KEYS_UNAVAILABLE: &str = "keys_unavailable";
    /// The issuer's keys are older than `max_staleness`.
    pub const KEYS_STALE: &str = "keys_stale";
    /// No provider of the route owns the token's `iss`.
    pub const ISSUER_NOT_ACCEPTED: &str = "issuer_not_accepted";
    /// `iss` is not the provider's.
    pub const WRONG_ISSUER: &str = "wrong_issuer";
    /// `aud` has none of the accepted audiences.
    pub const WRONG_AUDIENCE: &str = "wrong_audience";
    /// Past `exp` (+ leeway).
    pub const EXPIRED: &str = "expired";
    /// Before `nbf` (- leeway).
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    /// `iat` in the future (beyond leeway).
    pub const IAT_IN_FUTURE: &str = "iat_in_future";
    /// A required claim (`exp`, `jti`, `required_claims`, a subject) is absent.
    pub const MISSING_CLAIM: &str = "missing_claim";
    /// A claim has the wrong JSON type or an unusable value.
    pub const INVALID_CLAIM: &str = "invalid_claim";
    /// A client assertion's `sub` is not its `iss`.
    pub const SUBJECT_MISMATCH: &str = "subject_mismatch";
    /// A client assertion lives longer than `max_lifetime`.
    pub const LIFETIME_TOO_LONG: &str = "lifetime_too_long";
    /// A client assertion's `jti` was already used.
    pub const REPLAYED: &str = "replayed";
    /// The replay cache is full: new assertions are refused until entries expire.
    pub const REPLAY_CACHE_FULL: &str = "replay_cache_full";
    /// The client certificate does not parse.
    pub const CERTIFICATE_INVALID: &str = "certificate_invalid";
    /// The client certificate has no identity of the configured kind.
    pub const CERTIFICATE_NO_IDENTITY: &str = "certificate_no_identity";
    /// A route's scope or claim requirement is not met.
    pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
    /// Something unexpected: denied (fail closed).
    pub const INTERNAL: &str = "internal";

    /// Every reason.
    pub const ALL: &[&str] = &[
        MISSING,
        TOO_LARGE,
        MALFORMED,
        UNSUPPORTED_SCHEME,
        ALG_NOT_ALLOWED,
        CRIT_UNSUPPORTED,
        UNKNOWN_KID,
        NO_MATCHING_KEY,
        ALG_KEY_MISMATCH,
        BAD_SIGNATURE,
        KEYS_UNAVAILABLE,
        KEYS_STALE,
        ISSUER_NOT_ACCEPTED,
        WRONG_ISSUER,
        WRONG_AUDIENCE,
        EXPIRED,
        NOT_YET_VALID,
        IAT_IN_FUTURE,
        MISSING_CLAIM,
        INVALID_CLAIM,
        SUBJECT_MISMATCH,
        LIFETIME_TOO_LONG,
        REPLAYED,
        REPLAY_CACHE_FULL,
        CERTIFICATE_INVALID,
        CERTIFICATE_NO_IDENTITY,
        INSUFFICIENT_SCOPE,
        INTERNAL,
    ];
}

/// Why authentication failed. `reason()` is the metric label and log field;
/// what the client sees (`www_authenticate`) never names keys or internals.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthnError {
    /// No credentials that any of the route's methods accepts.
    #[error("no credentials")]
    Missing,
    /// A token or assertion was presented and is not valid.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// Valid, but lacks a scope or claim the route requires. The string is
    /// the route's required scopes (space-separated; empty for a claim).
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
}

impl AuthnError {
    /// Metric label / log field.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Missing => reason::MISSING,
            AuthnError::Invalid(r) => r,
            AuthnError::InsufficientScope(_) => reason::INSUFFICIENT_SCOPE,
        }
    }

    /// 401, or 403 for insufficient scope.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthnError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            AuthnError::Missing | AuthnError::Invalid(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// What the client is told: the category only. Which key, which kid,
    /// which check of the signature failed stays in the logs.
    pub fn description(&self) -> &'static str {
        match self {
            AuthnError::Missing => "no credentials were presented",
            AuthnError::InsufficientScope(s) if s.is_empty() => {
                "the token lacks a claim this resource requires"
            }
            AuthnError::InsufficientScope(_) => "the token lacks a scope this resource requires",
            AuthnError::Invalid(r) => match *r {
                reason::EXPIRED => "the token is expired",
                reason::NOT_YET_VALID | reason::IAT_IN_FUTURE => "the token is not yet valid",
                reason::TOO_LARGE => "the token is too large",
                reason::MALFORMED | reason::UNSUPPORTED_SCHEME => "the token is malformed",
                reason::ISSUER_NOT_ACCEPTED | reason::WRONG_ISSUER | reason::WRONG_AUDIENCE => {
                    "the token is not accepted here"
                }
                reason::MISSING_CLAIM | reason::INVALID_CLAIM => {
                    "the token lacks a required claim or has an invalid one"
                }
                reason::REPLAYED => "the assertion was already used",
                reason::LIFETIME_TOO_LONG => "the assertion lives too long",
                reason::SUBJECT_MISMATCH => "the assertion's subject is not its issuer",
                reason::REPLAY_CACHE_FULL => "the assertion cannot be accepted now; retry later",
                reason::CERTIFICATE_INVALID | reason::CERTIFICATE_NO_IDENTITY => {
                    "the client certificate carries no usable identity"
                }
                _ => "the token could not be verified",
            },
        }
    }

    /// RFC 6750 `WWW-Authenticate` value: `Bearer` when nothing was
    /// presented, else `Bearer error="invalid_token"` or
    /// `"insufficient_scope"` with a description (and the needed scopes).
    pub fn www_authenticate(&self) -> HeaderValue {
        let v = match self {
            AuthnError::Missing => return HeaderValue::from_static("Bearer"),
            AuthnError::Invalid(_) => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.description()
            ),
            AuthnError::InsufficientScope(scope) => {
                // Scope tokens never hold quotes or backslashes (RFC 6749
                // §3.3); drop any so the header cannot be broken out of.
                let scope: String = scope
                    .chars()
                    .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
                    .collect();
                let mut v = format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                    self.description()
                );
                if !scope.trim().is_empty() {
                    v.push_str(&format!(", scope=\"{scope}\""));
                }
                v
            }
        };
        HeaderValue::from_str(&v)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
    }
}

/// A route's `authenticate` list, resolved once at load.
#[derive(Debug, Clone, Default)]
pub struct MethodSet(pub Vec<usize>);

enum Provider {
    Jwt(JwtIssuer),
    Assertion(ClientAssertionProvider),
    Mtls(MtlsProvider),
}

/// The runtime authenticator.
pub struct Authn {
    providers: Vec<Provider>,
    names: Vec<Arc<str>>,
    cache: TokenCache,
    metrics: AuthnMetrics,
    outbound: Option<AssertionSigner>,
}

impl std::fmt::Debug for Authn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authn")
            .field("providers", &self.names)
            .finish_non_exhaustive()
    }
}

/// How long `build` waits for the first key fetches before starting anyway
/// (the issuer's tokens are then refused until a retry succeeds).
const INITIAL_FETCH_WAIT: Duration = Duration::from_secs(5);

fn read_file(base_dir: &Path, key: &str, p: &Path, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    let path = base_dir.join(p);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn load_jwks_file(
    base_dir: &Path,
    key: &str,
    p: &Path,
    errors: &mut Vec<String>,
) -> Option<KeySet> {
    let bytes = read_file(base_dir, key, p, errors)?;
    match KeySet::from_jwks(&bytes) {
        Ok((set, skipped)) => {
            for s in &skipped {
                warn!(file = %base_dir.join(p).display(), "{key}: {s}");
            }
            if set.is_empty() {
                errors.push(format!(
                    "{key}: {} has no usable signing key{}",
                    base_dir.join(p).display(),
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", skipped.join("; "))
                    }
                ));
                None
            } else {
                Some(set)
            }
        }
        Err(e) => {
            errors.push(format!("{key}: {}: {e}", base_dir.join(p).display()));
            None
        }
    }
}

impl Authn {
    /// Loads key files, starts key fetches; relative paths against `base_dir`.
    /// Returns every problem, each with its key path. Must run inside a
    /// tokio runtime (it spawns the key refreshers, which end when the
    /// `Authn` is dropped).
    pub async fn build(
        raw: &RawAuthn,
        base_dir: &Path,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Authn>, Vec<String>> {
        // jsonwebtoken picks its crypto backend from its features; install
        // aws-lc-rs explicitly so a second backend enabled elsewhere in the
        // build cannot make verification panic.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let mut errors = Vec::new();
        let settings = raw.settings(&mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut providers = Vec::new();
        let mut remote = Vec::new();
        for (i, s) in settings.jwt.iter().enumerate() {
            let k = |f: &str| format!("authn.jwt[{i}].{f}");
            let store = match &s.source {
                KeySource::File(p) => load_jwks_file(base_dir, &k("jwks_file"), p, &mut errors)
                    .map(|set| KeyStore::fixed(&s.name, set)),
                KeySource::Url(_) | KeySource::Discovery(_) => {
                    let ca = match &s.ca {
                        Some(p) => match read_file(base_dir, &k("ca"), p, &mut errors) {
                            Some(b) => Some(b),
                            None => continue,
                        },
                        None => None,
                    };
                    let (url, disc) = match &s.source {
                        KeySource::Url(u) => (Some(u.clone()), None),
                        KeySource::Discovery(u) => (None, Some((u.clone(), s.issuer.clone()))),
                        KeySource::File(_) => (None, None),
                    };
                    match KeyStore::remote(
                        &s.name,
                        url,
                        disc,
                        ca.as_deref(),
                        s.refresh_interval,
                        s.min_refresh_interval,
                        s.max_staleness,
                    ) {
                        Ok(store) => Some(store),
                        Err(e) => {
                            errors.push(format!("{}: {e}", k("ca")));
                            None
                        }
                    }
                }
            };
            if let Some(store) = store {
                let store = Arc::new(store);
                if store.is_remote() {
                    remote.push(store.clone());
                }
                providers.push(Provider::Jwt(JwtIssuer::new(s, store)));
            }
        }
        if let Some(s) = &settings.client_assertion {
            let mut clients = Vec::new();
            for (i, c) in s.clients.iter().enumerate() {
                let k = |f: &str| format!("authn.client_assertion.clients[{i}].{f}");
                let keys = match &c.key_file {
                    ClientKeyFile::Jwks(p) => {
                        load_jwks_file(base_dir, &k("jwks_file"), p, &mut errors)
                    }
                    ClientKeyFile::Pem(p) => {
                        read_file(base_dir, &k("public_key_file"), p, &mut errors).and_then(|pem| {
                            match VerifyKey::from_pem(&pem) {
                                Ok(v) => Some(KeySet::new(vec![v]).0),
                                Err(e) => {
                                    errors.push(format!(
                                        "{}: {}: {e}",
                                        k("public_key_file"),
                                        base_dir.join(p).display()
                                    ));
                                    None
                                }
                            }
                        })
                    }
                };
                if let Some(keys) = keys {
                    clients.push(Client {
                        id: c.client_id.clone(),
                        keys,
                        algorithms: c.algorithms,
                        scopes: c.scopes.clone(),
                    });
                }
            }
            providers.push(Provider::Assertion(ClientAssertionProvider::new(
                s, clients,
            )));
        }
        if let Some((name, from)) = &settings.mtls {
            providers.push(Provider::Mtls(MtlsProvider::new(name, *from)));
        }
        let outbound = settings.outbound.as_ref().and_then(|o| {
            let pem = read_file(
                base_dir,
                "authn.outbound.key_file",
                &o.key_file,
                &mut errors,
            )?;
            match AssertionSigner::from_pem(&o.client_id, o.algorithm, o.kid.as_deref(), &pem) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(format!("authn.outbound.key_file: {e}"));
                    None
                }
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let names: Vec<Arc<str>> = providers
            .iter()
            .map(|p| match p {
                Provider::Jwt(j) => j.name.clone(),
                Provider::Assertion(a) => a.name.clone(),
                Provider::Mtls(m) => m.name.clone(),
            })
            .collect();
        let label_names: Vec<&str> = names.iter().map(|n| &**n).collect();
        let metrics = AuthnMetrics::new(registry, &label_names)
            .map_err(|e| vec![format!("authn: cannot register metrics: {e}")])?;

        // First fetches in parallel, bounded; then the refreshers.
        let mut first = tokio::task::JoinSet::new();
        for (i, store) in remote.iter().enumerate() {
            let store = store.clone();
            first.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(INITIAL_FETCH_WAIT, store.refresh_now()).await,
                    Ok(Ok(()))
                );
                (i, ok)
            });
        }
        let mut ok = vec![false; remote.len()];
        while let Some(r) = first.join_next().await {
            if let Ok((i, fetched)) = r {
                ok[i] = fetched;
            }
        }
        for (store, ok) in remote.iter().zip(ok) {
            store.spawn_refresher(ok);
        }

        Ok(Arc::new(Authn {
            providers,
            names,
            cache: TokenCache::new(settings.cache_max_entries),
            metrics,
            outbound,
        }))
    }

    /// Resolves a route's list of provider names. Refuses unknown names,
    /// duplicates, and two providers that would claim the same token issuer
    /// (a bearer token must have exactly one owner on a route).
    pub fn resolve(&self, names: &[String]) -> Result<MethodSet, String> {
        let mut v: Vec<usize> = Vec::with_capacity(names.len());
        for n in names {
            let Some(i) = self.names.iter().position(|x| **x == **n) else {
                return Err(format!(
                    "unknown authentication provider {n:?} (configured: {})",
                    self.names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if v.contains(&i) {
                return Err(format!("authentication provider {n:?} is listed twice"));
            }
            if let Provider::Jwt(j) = &self.providers[i] {
                for &o in &v {
                    let clash = match &self.providers[o] {
                        Provider::Jwt(other) => other.issuer == j.issuer,
                        Provider::Assertion(a) => a.client_index(&j.issuer).is_some(),
                        Provider::Mtls(_) => false,
                    };
                    if clash {
                        return Err(format!(
                            "providers {:?} and {n:?} both accept tokens from {:?}",
                            self.names[o], j.issuer
                        ));
                    }
                }
            }
            v.push(i);
        }
        Ok(MethodSet(v))
    }

    /// ztag's own client-assertion signer, when `[authn.outbound]` is set.
    pub fn outbound(&self) -> Option<&AssertionSigner> {
        self.outbound.as_ref()
    }

    /// Authenticates a request with the route's methods, in order (see the
    /// module documentation for which credential decides). Every result is
    /// counted in `ztag_authn_results_total`.
    pub async fn authenticate(
        &self,
        methods: &MethodSet,
        creds: Credentials<'_>,
    ) -> Result<Arc<Principal>, AuthnError> {
        let (provider, r) = self.authenticate_inner(methods, creds).await;
        match (&r, provider) {
            (Ok(_), Some(i)) => self.metrics.ok(i),
            (Err(e), p) => {
                let name = p
                    .and_then(|i| self.names.get(i))
                    .map_or(NO_PROVIDER, |n| &**n);
                self.metrics.fail(name, e.reason());
            }
            // A principal without a provider cannot happen: deny.
            (Ok(_), None) => {
                self.metrics.fail(NO_PROVIDER, reason::INTERNAL);
                return Err(AuthnError::Invalid(reason::INTERNAL));
            }
        }
        r
    }

    async fn authenticate_inner(
        &self,
        methods: &MethodSet,
        creds: Credentials<'_>,
    ) -> (Option<usize>, Result<Arc<Principal>, AuthnError>) {
        let invalid = |p: Option<usize>, r: &'static str| (p, Err(AuthnError::Invalid(r)));
        if let Some(h) = creds.authorization {
            let Some(token) = bearer_token(h.as_bytes()) else {
                return invalid(None, reason::UNSUPPORTED_SCHEME);
            };
            if token.len() > MAX_TOKEN_BYTES {
                return invalid(None, reason::TOO_LARGE);
            }
            // Cache: only for the route's JWT providers.
            let mut hash = None;
            if self.cache.enabled() {
                let now = Instant::now();
                let now_unix = claims::unix_now();
                for &i in &methods.0 {
                    let Some(Provider::Jwt(j)) = self.providers.get(i) else {
                        continue;
                    };
                    let h = *hash.get_or_insert_with(|| token_hash(token));
                    if let Some(p) = self.cache.get(&(h, i), &j.keys, now, now_unix) {
                        self.metrics.cache_hits.inc();
                        return (Some(i), Ok(p));
                    }
                }
                if hash.is_some() {
                    self.metrics.cache_misses.inc();
                }
            }
            let jws = match parse_compact(token) {
                Ok(j) => j,
                Err(r) => return invalid(None, r),
            };
            let claims = match parse_claims(jws.payload_b64) {
                Ok(c) => c,
                Err(r) => return invalid(None, r),
            };
            let Some(iss) = unverified_issuer(&claims) else {
                return invalid(None, reason::ISSUER_NOT_ACCEPTED);
            };
            // The provider that owns this issuer decides; no fall-through.
            for &i in &methods.0 {
                match self.providers.get(i) {
                    Some(Provider::Jwt(j)) if j.issuer == iss => {
                        return match j.verify(&jws, claims).await {
                            Ok((p, generation)) => {
                                let p = Arc::new(p);
                                if let Some(h) = hash {
                                    self.cache.insert(
                                        (h, i),
                                        p.clone(),
                                        generation,
                                        claims::unix_now(),
                                    );
                                }
                                (Some(i), Ok(p))
                            }
                            Err(r) => invalid(Some(i), r),
                        };
                    }
                    Some(Provider::Assertion(a)) => {
                        if let Some(ci) = a.client_index(iss) {
                            // Never cached: every use goes through the replay check.
                            return match a.verify(ci, &jws, claims, claims::unix_now()) {
                                Ok(p) => (Some(i), Ok(Arc::new(p))),
                                Err(r) => invalid(Some(i), r),
                            };
                        }
                    }
                    _ => {}
                }
            }
            return invalid(None, reason::ISSUER_NOT_ACCEPTED);
        }
        if let Some(der) = creds.client_cert {
            for &i in &methods.0 {
                if let Some(Provider::Mtls(m)) = self.providers.get(i) {
                    return match m.verify(der) {
                        Ok(p) => (Some(i), Ok(Arc::new(p))),
                        Err(r) => invalid(Some(i), r),
                    };
                }
            }
        }
        (None, Err(AuthnError::Missing))
    }
}

/// The body of the `jwt` fuzz target (see `crate::fuzzing::jwt`): the
/// parser and the verifier never panic, what parses is well-formed, and no
/// input verifies against a key whose private half the fuzzer lacks.
pub(crate) fn fuzz_token(data: &[u8]) {
    use std::sync::OnceLock;
    static ISSUER: OnceLock<JwtIssuer> = OnceLock::new();
    let issuer = ISSUER.get_or_init(|| {
        // RFC 8037 §A.2 Ed25519 public key, and a P-256 key (RFC 7515 §A.3).
        let jwks = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ec"}]}"#;
        let set = KeySet::from_jwks(jwks).map(|(s, _)| s).unwrap_or_default();
        let mut errors = Vec::new();
        let raw = RawJwt {
            name: Some("fuzz".into()),
            issuer: Some("https://fuzz".into()),
            audiences: vec!["fuzz".into()],
            algorithms: ACCEPTED_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            jwks_file: Some("unused".into()),
            ..RawJwt::default()
        };
        let s = RawAuthn {
            jwt: vec![raw],
            ..RawAuthn::default()
        }
        .settings(&mut errors)
        .jwt
        .remove(0);
        JwtIssuer::new(&s, Arc::new(KeyStore::fixed("fuzz", set)))
    });
    let _ = bearer_token(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jws) = parse_compact(s) else {
        return;
    };
    assert!(
        s.len() <= MAX_TOKEN_BYTES,
        "a {}-byte token parsed",
        s.len()
    );
    assert_eq!(s.bytes().filter(|b| *b == b'.').count(), 2, "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "{s:?}"
    );
    assert_eq!(jws.signing_input.len(), s.rfind('.').unwrap_or(0));
    let Ok(claims) = parse_claims(jws.payload_b64) else {
        return;
    };
    if let Ok((p, _)) = issuer.verify_now(&jws, claims) {
        panic!("a token verified without the private key: {s:?} as {p:?}");
    }
}

#[cfg(test)]
mod tests;

//! An issuer's key set over time: loaded from a JWKS file once, or fetched
//! from a JWKS URL or through OIDC discovery and refreshed. Decides when
//! keys are usable:
//!
//! * a fetch replaces the set only when it parses and holds at least one
//!   usable key; otherwise the last good set stays (the IdP being down or
//!   serving garbage must not lock everyone out at once);
//! * a fetched set stops verifying `max_staleness` after the fetch that
//!   last confirmed it (`keys_stale`: fail closed, a revoked key must not
//!   verify forever because the IdP became unreachable);
//! * before the first successful fetch the issuer's tokens are refused
//!   (`keys_unavailable`) while a background task retries with backoff;
//! * an unknown `kid` triggers one fetch, shared by every request that
//!   waits for it (a mutex, FIFO) and at most once per
//!   `min_refresh_interval` (unknown kids are attacker-controlled).

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use reqwest::Url;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tracing::{info, warn};

use super::{config::check_url, keys::KeySet, reason};

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// One fetch (discovery + JWKS) may take this long in all.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request waits for a refresh another request started.
const REFRESH_WAIT: Duration = Duration::from_secs(12);
/// Longest backoff between retries while the IdP is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A key set as installed, with when it stops being usable.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub keys: KeySet,
    /// Changes when the keys change (not when a refresh confirms them):
    /// cached verifications are valid only for the generation they saw.
    pub generation: u64,
    /// `None` for a file: it does not age.
    pub stale_at: Option<Instant>,
}

/// Where remote keys come from.
#[derive(Debug)]
enum Remote {
    Jwks(Url),
    Discovery { base: Url, issuer: String },
}

#[derive(Debug)]
struct Fetcher {
    remote: Remote,
    client: reqwest::Client,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    max_staleness: Duration,
}

/// One issuer's (or one client's) keys.
#[derive(Debug)]
pub(crate) struct KeyStore {
    /// Provider name, for logs.
    name: String,
    current: ArcSwapOption<Loaded>,
    fetcher: Option<Fetcher>,
    /// Held during a fetch; holds when the last fetch ended.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches done (counted under `refresh`): a request that waited for
    /// the lock while another fetched does not fetch again.
    fetches: AtomicU64,
    generations: AtomicU64,
}

/// Why a fetch failed (logged with the provider's name, never shown to a
/// client).
pub(crate) type FetchError = String;

impl KeyStore {
    /// A fixed key set (a JWKS or PEM file, loaded by the caller).
    pub fn fixed(name: &str, keys: KeySet) -> KeyStore {
        KeyStore {
            name: name.into(),
            current: ArcSwapOption::from_pointee(Loaded {
                keys,
                generation: 1,
                stale_at: None,
            }),
            fetcher: None,
            refresh: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            generations: AtomicU64::new(1),
        }
    }

    /// A key set fetched from `jwks_url`, or through discovery at `base`.
    /// Nothing is fetched yet (see [`KeyStore::refresh_now`]).
    #[allow(clippy::too_many_arguments)]
    pub fn remote(
        name: &str,
        jwks_url: Option<Url>,
        discovery: Option<(Url, String)>,
        ca_pem: Option<&[u8]>,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
        max_staleness: Duration,
    ) -> Result<KeyStore, String> {
        let remote = match (jwks_url, discovery) {
            (Some(u), None) => Remote::Jwks(u),
            (None, Some((base, issuer))) => Remote::Discovery { base, issuer },
            _ => return Err("exactly one of a JWKS URL or a discovery URL is needed".into()),
        };
        Ok(KeyStore {
            name: name.into(),
            current: ArcSwapOption::empty(),
            fetcher: Some(Fetcher {
                remote,
                client: http_client(ca_pem)?,
                refresh_interval,
                min_refresh_interval,
                max_staleness,
            }),
            refresh: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            generations: AtomicU64::new(0),
        })
    }

    /// Whether keys are fetched (and so refreshed).
    pub fn is_remote(&self) -> bool {
        self.fetcher.is_some()
    }

    /// The usable key set, or why there is none.
    pub fn keys(&self, now: Instant) -> Result<Arc<Loaded>, &'static str> {
        match self.current.load_full() {
            None => Err(reason::KEYS_UNAVAILABLE),
            Some(l) if l.stale_at.is_some_and(|t| now >= t) => Err(reason::KEYS_STALE),
            Some(l) => Ok(l),
        }
    }

    /// The generation now installed, if usable: what a cache hit compares
    /// with. Cheap: one atomic load, no reference count change.
    pub fn usable_generation(&self, now: Instant) -> Option<u64> {
        let g = self.current.load();
        match g.as_ref() {
            Some(l) if l.stale_at.is_none_or(|t| now < t) => Some(l.generation),
            _ => None,
        }
    }

    /// After an unknown `kid`: fetches again unless a fetch ended less than
    /// `min_refresh_interval` ago, and waits for a fetch already under way
    /// instead of starting another (the lock is FIFO; whoever waited while
    /// another fetched uses that fetch's result). `true` when the set now
    /// installed differs from `seen_generation`, i.e. a retry may find the
    /// key.
    pub async fn refresh_for_unknown_kid(&self, seen_generation: u64) -> bool {
        let Some(f) = &self.fetcher else {
            return false;
        };
        let seen_fetches = self.fetches.load(Ordering::Acquire);
        let Ok(mut last) = tokio::time::timeout(REFRESH_WAIT, self.refresh.lock()).await else {
            return false;
        };
        if self.installed_generation() != Some(seen_generation) {
            return true;
        }
        if self.fetches.load(Ordering::Acquire) != seen_fetches
            || last.is_some_and(|t| t.elapsed() < f.min_refresh_interval)
        {
            return false;
        }
        let r = self.fetch_and_install(f).await;
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::AcqRel);
        match r {
            Ok(()) => self.installed_generation() != Some(seen_generation),
            Err(e) => {
                warn!(provider = %self.name, error = %e, "key refresh after an unknown kid failed; keeping the last good keys");
                false
            }
        }
    }

    /// Fetches now (the start-up fetch and the periodic refresh).
    pub async fn refresh_now(&self) -> Result<(), FetchError> {
        let Some(f) = &self.fetcher else {
            return Ok(());
        };
        let mut last = self.refresh.lock().await;
        let r = self.fetch_and_install(f).await;
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::AcqRel);
        drop(last);
        if let Err(e) = &r {
            warn!(provider = %self.name, error = %e, "key fetch failed; keeping the last good keys");
        }
        r
    }

    fn installed_generation(&self) -> Option<u64> {
        self.current.load().as_ref().map(|l| l.generation)
    }

    async fn fetch_and_install(&self, f: &Fetcher) -> Result<(), FetchError> {
        let keys = match tokio::time::timeout(FETCH_TIMEOUT, f.fetch()).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        let now = Instant::now();
        let old = self.current.load_full();
        let generation = match &old {
            Some(o) if o.keys.same_as(&keys) => o.generation,
            _ => self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        if old.as_ref().is_none_or(|o| o.generation != generation) {
            info!(provider = %self.name, keys = keys.len(), generation, "installed a new key set");
        }
        self.current.store(Some(Arc::new(Loaded {
            keys,
            generation,
            stale_at: Some(now + f.max_staleness),
        })));
        Ok(())
    }

    /// Starts the task that refreshes every `refresh_interval`, and retries
    /// with backoff after a failure. It ends when the store is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, last_ok: bool) {
        let Some(f) = &self.fetcher else {
            return;
        };
        let weak: Weak<KeyStore> = Arc::downgrade(self);
        let every = f.refresh_interval;
        let first_backoff = f
            .min_refresh_interval
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let max_backoff = every.min(MAX_BACKOFF).max(first_backoff);
        tokio::spawn(async move {
            let mut ok = last_ok;
            let mut backoff = first_backoff;
            loop {
                tokio::time::sleep(if ok { every } else { backoff }).await;
                let Some(store) = weak.upgrade() else {
                    return;
                };
                ok = store.refresh_now().await.is_ok();
                drop(store);
                backoff = if ok {
                    first_backoff
                } else {
                    (backoff * 2).min(max_backoff)
                };
            }
        });
    }
}

impl Fetcher {
    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let jwks_url = match &self.remote {
            Remote::Jwks(u) => u.clone(),
            Remote::Discovery { base, issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    base.as_str().trim_end_matches('/')
                );
                let doc = get(&self.client, &url).await?;
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let d: Discovery = serde_json::from_slice(&doc)
                    .map_err(|e| format!("{url}: not an OpenID configuration ({e})"))?;
                // OIDC Discovery §4.3: the document must name the issuer it
                // was fetched for, or its keys are someone else's.
                if d.issuer != *issuer {
                    return Err(format!(
                        "{url}: the document's issuer {:?} is not the configured issuer {issuer:?}",
                        d.issuer
                    ));
                }
                let mut problems = Vec::new();
                check_url("jwks_uri", &d.jwks_uri, &mut problems)
                    .ok_or_else(|| format!("{url}: {}", problems.join("; ")))?
            }
        };
        let body = get(&self.client, jwks_url.as_str()).await?;
        let (keys, skipped) = KeySet::from_jwks(&body).map_err(|e| format!("{jwks_url}: {e}"))?;
        for s in &skipped {
            warn!(url = %jwks_url, "{s}");
        }
        if keys.is_empty() {
            return Err(format!("{jwks_url}: no usable signing key"));
        }
        Ok(keys)
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("{url}: HTTP status {}", resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// An HTTPS client with rustls on aws-lc-rs, trusting the configured PEM
/// bundle or else the built-in web roots. No redirects (each URL is checked
/// against the https/loopback rule before it is fetched) and no proxy from
/// the environment (the IdP must be reached directly).
pub(crate) fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("unusable CA certificate ({e})"))?;
            }
            if roots.is_empty() {
                return Err("no certificate in the CA bundle".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {}", error_chain(&e)))
}

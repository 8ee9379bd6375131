//! The authn metrics, registered into the daemon's registry:
//! `ztag_authn_results_total{provider, result, reason}` for every
//! authentication (labels from a fixed set: configured provider names or
//! `none`, `ok`/`fail`, the `reason` constants), and the token cache's
//! `ztag_authn_token_cache_hits_total` / `_misses_total`.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry, core::Collector};

/// Provider label when no provider took the request (nothing presented,
/// a malformed token, an issuer no listed provider owns).
pub(crate) const NO_PROVIDER: &str = "none";

pub(crate) struct AuthnMetrics {
    results: IntCounterVec,
    /// One pre-resolved `result="ok"` counter per provider: the success
    /// path does no label lookup.
    ok: Vec<IntCounter>,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
}

/// Registers `c`; a collector of the same name from an earlier build (a
/// config reload) is replaced, so reloads do not fail (the counters then
/// restart from zero, which Prometheus reads as a reset).
fn register<C: Collector + Clone + 'static>(r: &Registry, c: &C) -> Result<(), String> {
    match r.register(Box::new(c.clone())) {
        Ok(()) => Ok(()),
        Err(prometheus::Error::AlreadyReg) => {
            let _ = r.unregister(Box::new(c.clone()));
            r.register(Box::new(c.clone())).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

impl AuthnMetrics {
    pub fn new(registry: &Registry, providers: &[&str]) -> Result<AuthnMetrics, String> {
        let results = IntCounterVec::new(
            Opts::new(
                "ztag_authn_results_total",
                "Authentication results by provider, result (ok, fail) and reason.",
            ),
            &["provider", "result", "reason"],
        )
        .map_err(|e| e.to_string())?;
        let cache_hits = IntCounter::new(
            "ztag_authn_token_cache_hits_total",
            "Bearer tokens answered from the verified-token cache.",
        )
        .map_err(|e| e.to_string())?;
        let cache_misses = IntCounter::new(
            "ztag_authn_token_cache_misses_total",
            "Bearer tokens not in the verified-token cache (verified in full).",
        )
        .map_err(|e| e.to_string())?;
        register(registry, &results)?;
        register(registry, &cache_hits)?;
        register(registry, &cache_misses)?;
        let ok = providers
            .iter()
            .map(|p| results.with_label_values(&[p, "ok", "ok"]))
            .collect();
        Ok(AuthnMetrics {
            results,
            ok,
            cache_hits,
            cache_misses,
        })
    }

    pub fn ok(&self, provider: usize) {
        if let Some(c) = self.ok.get(provider) {
            c.inc();
        }
    }

    pub fn fail(&self, provider: &str, reason: &'static str) {
        self.results
            .with_label_values(&[provider, "fail", reason])
            .inc();
    }
}

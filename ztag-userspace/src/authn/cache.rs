//! Which verified bearer tokens may skip verification. An entry is keyed by
//! SHA-256 of the token bytes and the provider that verified it, is served
//! only before the token's `exp` (checked on every lookup; an expired entry
//! is removed when found, and otherwise ages out with the bounded cache's
//! eviction), and is used only while that provider's key set is still the
//! one that verified it and not stale: a key rotation or an IdP outage past
//! `max_staleness` ends cached verifications too. Only JWT successes are
//! stored; client assertions never come from here (a hit would let a
//! replay through).
//!
//! The cache is quick_cache's (sharded, CLOCK-Pro eviction): an insert is
//! a hash-table insert under one shard's lock, with no timer wheel or
//! deferred maintenance, which matters when every token is new. A hit
//! hashes the token, does one lookup and one atomic load of the key set,
//! and clones an `Arc<Principal>`: no allocation.

use std::{sync::Arc, time::Instant};

use aws_lc_rs::digest::{SHA256, digest};
use quick_cache::sync::Cache;

use super::{Principal, jwks::KeyStore};

/// SHA-256 of the token, and the provider's index.
pub(crate) type CacheKey = ([u8; 32], usize);

/// A verified token.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub principal: Arc<Principal>,
    /// The key-set generation that verified it.
    pub generation: u64,
    /// The token's `exp` (Unix seconds).
    pub exp: u64,
}

/// The verified-token cache (absent when `max_entries = 0`).
pub(crate) struct TokenCache {
    cache: Option<Cache<CacheKey, Entry>>,
}

/// SHA-256 of a token.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    let d = digest(&SHA256, token.as_bytes());
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

impl TokenCache {
    pub fn new(max_entries: u64) -> TokenCache {
        TokenCache {
            cache: (max_entries > 0)
                .then(|| Cache::new(usize::try_from(max_entries).unwrap_or(usize::MAX))),
        }
    }

    /// Whether caching is on.
    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// A still-valid cached principal for this token and provider.
    pub fn get(
        &self,
        key: &CacheKey,
        keys: &KeyStore,
        now: Instant,
        now_unix: u64,
    ) -> Option<Arc<Principal>> {
        let cache = self.cache.as_ref()?;
        let e = cache.get(key)?;
        // The generation check drops entries verified by keys that rotated
        // out or went stale.
        if now_unix < e.exp && keys.usable_generation(now) == Some(e.generation) {
            Some(e.principal)
        } else {
            cache.remove(key);
            None
        }
    }

    /// Remembers a verification until the token's `exp`.
    pub fn insert(&self, key: CacheKey, principal: Arc<Principal>, generation: u64, now_unix: u64) {
        let (Some(cache), Some(exp)) = (&self.cache, principal.expires_at) else {
            return;
        };
        // A token inside its leeway past `exp` verifies but is not cached.
        if exp <= now_unix {
            return;
        }
        cache.insert(
            key,
            Entry {
                principal,
                generation,
                exp,
            },
        );
    }

    #[cfg(test)]
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cache.as_ref().is_some_and(|c| c.contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{Method, claims::unix_now, keys::KeySet};
    use std::time::Duration;

    fn principal(exp: u64) -> Arc<Principal> {
        Arc::new(Principal {
            provider: "p".into(),
            method: Method::Jwt,
            subject: "s".into(),
            issuer: None,
            client_id: None,
            scopes: vec![],
            claims: Arc::default(),
            expires_at: Some(exp),
        })
    }

    #[test]
    fn an_entry_never_outlives_its_token() {
        let store = KeyStore::fixed("p", KeySet::default());
        let c = TokenCache::new(100);
        let now = unix_now();
        let k = (token_hash("t"), 0);
        c.insert(k, principal(now + 2), 1, now);
        assert!(c.get(&k, &store, Instant::now(), unix_now()).is_some());
        // Another provider index is another key.
        assert!(
            c.get(&(k.0, 1), &store, Instant::now(), unix_now())
                .is_none()
        );
        std::thread::sleep(Duration::from_millis(2100));
        assert!(c.get(&k, &store, Instant::now(), unix_now()).is_none());
        assert!(!c.contains(&k), "the expired entry must be gone once found");
    }

    #[test]
    fn expired_tokens_are_not_cached_and_generation_changes_miss() {
        let store = KeyStore::fixed("p", KeySet::default());
        let c = TokenCache::new(100);
        let now = unix_now();
        let k = (token_hash("old"), 0);
        c.insert(k, principal(now), 1, now);
        assert!(!c.contains(&k));
        let k2 = (token_hash("new"), 0);
        c.insert(k2, principal(now + 60), 7, now);
        assert!(
            c.get(&k2, &store, Instant::now(), now).is_none(),
            "generation 7 is not installed"
        );
        assert!(!c.contains(&k2));
    }

    #[test]
    fn a_disabled_cache_stores_nothing() {
        let store = KeyStore::fixed("p", KeySet::default());
        let c = TokenCache::new(0);
        assert!(!c.enabled());
        let k = (token_hash("t"), 0);
        c.insert(k, principal(unix_now() + 60), 1, unix_now());
        assert!(c.get(&k, &store, Instant::now(), unix_now()).is_none());
    }
}

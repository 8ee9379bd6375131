//! RFC 7523 client assertions (`private_key_jwt`), both ways.
//!
//! Inbound: a registered client signs a short-lived JWT with `iss` = `sub`
//! = its client id and `aud` = this gateway; ztag verifies it with the
//! client's configured keys, bounds its lifetime (`max_lifetime`), and
//! accepts each `jti` once. The replay cache remembers every accepted
//! `jti` until its assertion could no longer be accepted (`exp` + leeway).
//! It is bounded, and when full it refuses new assertions
//! (`replay_cache_full`) instead of forgetting a live `jti`: forgetting
//! would reopen a replay window; refusing only delays honest clients,
//! whose next assertion is accepted once entries expire (within
//! `max_lifetime` + leeway). moka's own size eviction is therefore off for
//! this cache; the bound is our count of live entries.
//!
//! Outbound: [`AssertionSigner`] signs ztag's own assertions for the token
//! endpoints it calls, with a private key from a PEM file, so ztag stores
//! no client secret.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::digest::{Context, SHA256};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moka::{Expiry, notification::RemovalCause, sync::Cache};

use super::{
    Method, Principal,
    claims::{check_audience, check_times, numeric_date, string_claim, unix_now},
    config::AssertionSettings,
    keys::{AlgSet, KeySet, header_algorithm},
    reason,
    token::{Claims, Jws},
};

/// Longest accepted `jti`.
const MAX_JTI_BYTES: usize = 256;

/// A registered client.
#[derive(Debug)]
pub(crate) struct Client {
    pub id: String,
    pub keys: KeySet,
    pub algorithms: AlgSet,
    pub scopes: Vec<String>,
}

/// When a remembered `jti` may be forgotten.
#[derive(Clone, Copy, Debug)]
struct ForgetAt(Instant);

struct AtDeadline;

impl Expiry<[u8; 32], ForgetAt> for AtDeadline {
    fn expire_after_create(&self, _: &[u8; 32], v: &ForgetAt, now: Instant) -> Option<Duration> {
        Some(v.0.saturating_duration_since(now))
    }
}

/// Accepted `jti`s per client, bounded, failing closed when full.
pub(crate) struct ReplayCache {
    seen: Cache<[u8; 32], ForgetAt>,
    live: Arc<AtomicU64>,
    max: u64,
    /// Striped locks: look-up and insert of one key happen under its
    /// stripe's lock, so of concurrent uses of a jti exactly one wins
    /// (moka's entry API alone let two through under load).
    stripes: Vec<std::sync::Mutex<()>>,
}

impl ReplayCache {
    pub fn new(max: u64) -> ReplayCache {
        let live = Arc::new(AtomicU64::new(0));
        let l = live.clone();
        let seen = Cache::builder()
            // No max_capacity: size eviction would forget live jtis.
            .expire_after(AtDeadline)
            .eviction_listener(move |_, _, _: RemovalCause| {
                l.fetch_sub(1, Ordering::AcqRel);
            })
            .build();
        ReplayCache {
            seen,
            live,
            max,
            stripes: (0..64).map(|_| std::sync::Mutex::new(())).collect(),
        }
    }

    fn reserve(&self) -> bool {
        if self.live.fetch_add(1, Ordering::AcqRel) < self.max {
            return true;
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Records `jti` for `client` until `forget_at`; `Err(replayed)` when it
    /// is already there. Atomic per key: of two concurrent uses, one wins.
    pub fn first_use(
        &self,
        client: usize,
        jti: &str,
        forget_at: Instant,
    ) -> Result<(), &'static str> {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&(client as u64).to_le_bytes());
        ctx.update(jti.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        let _stripe = self.stripes[key[0] as usize % self.stripes.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A known jti is a replay whether or not the cache is full.
        if self.seen.contains_key(&key) {
            return Err(reason::REPLAYED);
        }
        if !self.reserve() {
            // Expired entries are removed lazily: purge, then look again.
            self.seen.run_pending_tasks();
            if !self.reserve() {
                return Err(reason::REPLAY_CACHE_FULL);
            }
        }
        self.seen.insert(key, ForgetAt(forget_at));
        Ok(())
    }
}

/// `[authn.client_assertion]`.
pub(crate) struct ClientAssertionProvider {
    pub name: Arc<str>,
    audience: String,
    max_lifetime: u64,
    leeway: u64,
    clients: Vec<Client>,
    by_id: HashMap<String, usize>,
    replay: ReplayCache,
}

impl ClientAssertionProvider {
    pub fn new(s: &AssertionSettings, clients: Vec<Client>) -> ClientAssertionProvider {
        let by_id = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        ClientAssertionProvider {
            name: s.name.as_str().into(),
            audience: s.audience.clone(),
            max_lifetime: s.max_lifetime.as_secs(),
            leeway: s.leeway.as_secs(),
            clients,
            by_id,
            replay: ReplayCache::new(s.max_replay_entries),
        }
    }

    /// The registered client whose id is this (unverified) `iss`.
    pub fn client_index(&self, iss: &str) -> Option<usize> {
        self.by_id.get(iss).copied()
    }

    /// Verifies an assertion from client `ci`. The `jti` is recorded last,
    /// after every other check held: a forged or expired assertion must not
    /// be able to burn a legitimate client's `jti` or fill the cache.
    pub fn verify(
        &self,
        ci: usize,
        jws: &Jws<'_>,
        claims: Claims,
        now: u64,
    ) -> Result<Principal, &'static str> {
        let client = self.clients.get(ci).ok_or(reason::INTERNAL)?;
        let alg = header_algorithm(jws, client.algorithms)?;
        client.keys.verify(jws, alg)?;
        if string_claim(&claims, "iss")? != Some(client.id.as_str()) {
            return Err(reason::WRONG_ISSUER);
        }
        // RFC 7523 §3: for client authentication `sub` is the client id.
        if string_claim(&claims, "sub")? != Some(client.id.as_str()) {
            return Err(reason::SUBJECT_MISMATCH);
        }
        check_audience(&claims, |a| a == self.audience)?;
        let exp = check_times(&claims, now, self.leeway)?;
        let limit = self.max_lifetime.saturating_add(self.leeway);
        if exp > now.saturating_add(limit) {
            return Err(reason::LIFETIME_TOO_LONG);
        }
        if let Some(iat) = numeric_date(&claims, "iat")?
            && exp.saturating_sub(iat) > limit
        {
            return Err(reason::LIFETIME_TOO_LONG);
        }
        let jti = match string_claim(&claims, "jti")? {
            None => return Err(reason::MISSING_CLAIM),
            Some(j) if j.is_empty() || j.len() > MAX_JTI_BYTES => {
                return Err(reason::INVALID_CLAIM);
            }
            Some(j) => j,
        };
        // Remembered for as long as the assertion could still be accepted,
        // plus a second for the truncation of `now`.
        let remaining = exp.saturating_add(self.leeway).saturating_sub(now) + 1;
        self.replay
            .first_use(ci, jti, Instant::now() + Duration::from_secs(remaining))?;
        Ok(Principal {
            provider: self.name.clone(),
            method: Method::ClientAssertion,
            subject: client.id.clone(),
            issuer: Some(client.id.clone()),
            client_id: Some(client.id.clone()),
            scopes: client.scopes.clone(),
            claims: Arc::new(claims),
            expires_at: Some(exp),
        })
    }
}

/// Why ztag could not sign (or load the key for) its own assertion.
#[derive(Debug, thiserror::Error)]
#[error("client assertion signer: {0}")]
pub struct SignError(String);

/// Signs ztag's own RFC 7523 client assertions (`[authn.outbound]`).
pub struct AssertionSigner {
    client_id: String,
    header: Header,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("client_id", &self.client_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Lifetime of the assertions ztag signs: long enough for one token
/// request, short enough that a leaked one is soon useless.
pub const OUTBOUND_LIFETIME_SECS: u64 = 60;

impl AssertionSigner {
    /// A signer with a PEM private key (PKCS#8; PKCS#1 also for RSA). The
    /// key is tried once here, so a key that does not fit `algorithm`
    /// fails at load, not at the first token request.
    pub fn from_pem(
        client_id: &str,
        algorithm: Algorithm,
        kid: Option<&str>,
        pem: &[u8],
    ) -> Result<AssertionSigner, SignError> {
        let key = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            _ => return Err(SignError(format!("{algorithm:?} is not accepted"))),
        }
        .map_err(|e| SignError(format!("the key does not load for {algorithm:?} ({e})")))?;
        jsonwebtoken::crypto::sign(b"probe", &key, algorithm)
            .map_err(|e| SignError(format!("the key cannot sign {algorithm:?} ({e})")))?;
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        Ok(AssertionSigner {
            client_id: client_id.into(),
            header,
            algorithm,
            key,
        })
    }

    /// ztag's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A fresh assertion for the token endpoint `audience`: `iss` = `sub` =
    /// the client id, `exp` one minute ahead, a random `jti` (so the
    /// endpoint's replay check accepts each one once).
    pub fn sign(&self, audience: &str) -> Result<String, SignError> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| SignError("no randomness".into()))?;
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + OUTBOUND_LIFETIME_SECS,
            "jti": super::token::b64_encode(jti),
        });
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| SignError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::authn::{
        config::ClientKeyFile,
        keys::{KeySet, VerifyKey},
        test_support::*,
        token::{parse_claims, parse_compact},
    };

    const GW: &str = "https://gw.test";

    fn provider(keys: &[(&str, &TestKey)], max_replay: u64) -> ClientAssertionProvider {
        let clients: Vec<Client> = keys
            .iter()
            .map(|(id, k)| {
                let v = VerifyKey::from_pem(k.public_pem().as_bytes()).unwrap();
                Client {
                    id: id.to_string(),
                    keys: KeySet::new(vec![v]).0,
                    algorithms: AlgSet::from_names(&[alg_name(k.alg)]),
                    scopes: vec!["api:read".into()],
                }
            })
            .collect();
        let s = AssertionSettings {
            name: "agents".into(),
            audience: GW.into(),
            max_lifetime: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            max_replay_entries: max_replay,
            clients: vec![crate::authn::config::ClientSettings {
                client_id: "unused".into(),
                key_file: ClientKeyFile::Pem("unused".into()),
                algorithms: AlgSet::all(),
                scopes: vec![],
            }],
        };
        ClientAssertionProvider::new(&s, clients)
    }

    fn check(p: &ClientAssertionProvider, t: &str) -> Result<Principal, &'static str> {
        let jws = parse_compact(t)?;
        let claims = parse_claims(jws.payload_b64)?;
        let iss =
            crate::authn::token::unverified_issuer(&claims).ok_or(reason::ISSUER_NOT_ACCEPTED)?;
        let ci = p.client_index(iss).ok_or(reason::ISSUER_NOT_ACCEPTED)?;
        p.verify(ci, &jws, claims, unix_now())
    }

    fn assertion(id: &str, jti: &str) -> serde_json::Value {
        let n = now();
        json!({"iss": id, "sub": id, "aud": GW, "exp": n + 60, "iat": n, "jti": jti})
    }

    #[test]
    fn a_valid_assertion_is_accepted_once() {
        let k = TestKey::es256("k");
        let p = provider(&[("billing", &k)], 100);
        let t = k.sign(&assertion("billing", "j1"));
        let pr = check(&p, &t).unwrap();
        assert_eq!(pr.subject, "billing");
        assert_eq!(pr.client_id.as_deref(), Some("billing"));
        assert_eq!(pr.scopes, ["api:read"]);
        assert_eq!(pr.method, Method::ClientAssertion);
        assert_eq!(check(&p, &t).err(), Some(reason::REPLAYED));
        // Same jti in a new assertion: still a replay.
        let t2 = k.sign(&assertion("billing", "j1"));
        assert_eq!(check(&p, &t2).err(), Some(reason::REPLAYED));
        // Another jti: fine.
        assert!(check(&p, &k.sign(&assertion("billing", "j2"))).is_ok());
    }

    #[test]
    fn jtis_are_per_client() {
        let (a, b) = (TestKey::es256("a"), TestKey::ed25519("b"));
        let p = provider(&[("a", &a), ("b", &b)], 100);
        assert!(check(&p, &a.sign(&assertion("a", "same"))).is_ok());
        assert!(check(&p, &b.sign(&assertion("b", "same"))).is_ok());
    }

    #[test]
    fn lifetime_subject_audience_and_jti_rules() {
        let k = TestKey::es256("k");
        let p = provider(&[("c", &k)], 100);
        let n = now();
        let mut far = assertion("c", "far");
        far["exp"] = json!(n + 3600);
        assert_eq!(
            check(&p, &k.sign(&far)).err(),
            Some(reason::LIFETIME_TOO_LONG)
        );
        let mut long = assertion("c", "long");
        long["iat"] = json!(n - 1000);
        assert_eq!(
            check(&p, &k.sign(&long)).err(),
            Some(reason::LIFETIME_TOO_LONG)
        );
        let mut sub = assertion("c", "sub");
        sub["sub"] = json!("someone-else");
        assert_eq!(
            check(&p, &k.sign(&sub)).err(),
            Some(reason::SUBJECT_MISMATCH)
        );
        let mut aud = assertion("c", "aud");
        aud["aud"] = json!("https://other");
        assert_eq!(check(&p, &k.sign(&aud)).err(), Some(reason::WRONG_AUDIENCE));
        let mut nojti = assertion("c", "x");
        nojti.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            check(&p, &k.sign(&nojti)).err(),
            Some(reason::MISSING_CLAIM)
        );
        let mut noexp = assertion("c", "noexp");
        noexp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&p, &k.sign(&noexp)).err(),
            Some(reason::MISSING_CLAIM)
        );
        let mut expired = assertion("c", "old");
        expired["exp"] = json!(n - 100);
        expired["iat"] = json!(n - 160);
        assert_eq!(check(&p, &k.sign(&expired)).err(), Some(reason::EXPIRED));
        // None of the refused ones consumed its jti.
        assert!(check(&p, &k.sign(&assertion("c", "far"))).is_ok());
        assert!(check(&p, &k.sign(&assertion("c", "sub"))).is_ok());
    }

    #[test]
    fn forged_assertions_do_not_burn_jtis() {
        let (k, attacker) = (TestKey::es256("k"), TestKey::es256("k"));
        let p = provider(&[("c", &k)], 100);
        let forged = attacker.sign(&assertion("c", "victim"));
        assert_eq!(check(&p, &forged).err(), Some(reason::BAD_SIGNATURE));
        assert!(check(&p, &k.sign(&assertion("c", "victim"))).is_ok());
        // HS256 with the client's public key as the secret.
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(assertion("c", "h").to_string())
        );
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.public_pem().as_bytes());
        let t = format!(
            "{input}.{}",
            b64(aws_lc_rs::hmac::sign(&key, input.as_bytes()))
        );
        assert_eq!(check(&p, &t).err(), Some(reason::ALG_NOT_ALLOWED));
    }

    #[test]
    fn a_full_replay_cache_refuses_instead_of_forgetting() {
        let k = TestKey::es256("k");
        let p = provider(&[("c", &k)], 3);
        for i in 0..3 {
            assert!(check(&p, &k.sign(&assertion("c", &format!("j{i}")))).is_ok());
        }
        assert_eq!(
            check(&p, &k.sign(&assertion("c", "j3"))).err(),
            Some(reason::REPLAY_CACHE_FULL)
        );
        // The live ones are all still remembered.
        for i in 0..3 {
            assert_eq!(
                check(&p, &k.sign(&assertion("c", &format!("j{i}")))).err(),
                Some(reason::REPLAYED)
            );
        }
    }

    #[test]
    fn replay_entries_expire_and_free_their_slot() {
        let r = ReplayCache::new(1);
        let soon = Instant::now() + Duration::from_millis(300);
        assert_eq!(r.first_use(0, "a", soon), Ok(()));
        assert_eq!(r.first_use(0, "a", soon), Err(reason::REPLAYED));
        assert_eq!(r.first_use(0, "b", soon), Err(reason::REPLAY_CACHE_FULL));
        // moka's timer wheel removes expired entries within about a second
        // of their deadline; until then the slot stays taken (fail closed).
        let start = Instant::now();
        let mut got = Err("not tried");
        while start.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(100));
            got = r.first_use(0, "b", Instant::now() + Duration::from_secs(5));
            if got.is_ok() {
                break;
            }
            assert_eq!(got, Err(reason::REPLAY_CACHE_FULL));
        }
        assert_eq!(got, Ok(()), "the expired entry never freed its slot");
        assert_eq!(r.first_use(0, "b", Instant::now()), Err(reason::REPLAYED));
    }

    #[test]
    fn concurrent_uses_of_one_jti_let_exactly_one_through() {
        let k = TestKey::es256("k");
        let p = Arc::new(provider(&[("c", &k)], 100));
        let t = Arc::new(k.sign(&assertion("c", "race")));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (p, t) = (p.clone(), t.clone());
                std::thread::spawn(move || check(&p, &t).is_ok())
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|b| *b)
            .count();
        assert_eq!(ok, 1);
    }

    #[test]
    fn ztag_signed_assertions_verify_inbound_once() {
        for k in [
            TestKey::es256("z"),
            TestKey::rs256("z"),
            TestKey::ed25519("z"),
        ] {
            let signer =
                AssertionSigner::from_pem("ztag-gw", k.alg, Some("z"), k.private_pem().as_bytes())
                    .unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
            let p = provider(&[("ztag-gw", &k)], 100);
            let a = signer.sign(GW).unwrap();
            let pr = check(&p, &a).unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
            assert_eq!(pr.subject, "ztag-gw");
            assert_eq!(check(&p, &a).err(), Some(reason::REPLAYED), "{:?}", k.alg);
            // Each signing is a new jti.
            assert!(check(&p, &signer.sign(GW).unwrap()).is_ok());
            let jws = parse_compact(&a).unwrap();
            assert_eq!(jws.header.kid.as_deref(), Some("z"));
        }
    }

    #[test]
    fn a_signer_key_that_does_not_fit_its_algorithm_fails_at_load() {
        let ec = TestKey::es256("z");
        assert!(
            AssertionSigner::from_pem("c", Algorithm::ES384, None, ec.private_pem().as_bytes())
                .is_err()
        );
        assert!(
            AssertionSigner::from_pem("c", Algorithm::RS256, None, ec.private_pem().as_bytes())
                .is_err()
        );
        assert!(AssertionSigner::from_pem("c", Algorithm::HS256, None, b"secret").is_err());
    }
}

//! Whether a bearer token from a configured issuer is valid: the header's
//! `alg` is one the issuer allows (never `none` or HMAC) and fits the key,
//! no `crit` extension is asked for, the key comes from the issuer's key
//! set only (by exact `kid`; `jku`/`x5u`/`jwk`/`x5c` are never looked at),
//! the signature holds, and then the claims: `iss` exact, `aud` one of
//! ours, `exp` required, `nbf`/`iat` honoured, required claims present.

use std::{sync::Arc, time::Instant};

use super::{
    Method, Principal,
    claims::{check_audience, check_times, scopes, string_claim, unix_now},
    config::JwtSettings,
    jwks::{KeyStore, Loaded},
    keys::{AlgSet, header_algorithm},
    reason,
    token::{Claims, Jws},
};

/// One `[[authn.jwt]]` issuer.
#[derive(Debug)]
pub(crate) struct JwtIssuer {
    pub name: Arc<str>,
    pub issuer: String,
    audiences: Vec<String>,
    algorithms: AlgSet,
    leeway: u64,
    required_claims: Vec<String>,
    pub keys: Arc<KeyStore>,
}

impl JwtIssuer {
    pub fn new(s: &JwtSettings, keys: Arc<KeyStore>) -> JwtIssuer {
        JwtIssuer {
            name: s.name.as_str().into(),
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            algorithms: s.algorithms,
            leeway: s.leeway.as_secs(),
            required_claims: s.required_claims.clone(),
            keys,
        }
    }

    /// Verifies a token this issuer claims (its unverified `iss` is ours).
    /// An unknown `kid` waits for one rate-limited key refresh, then the
    /// token is tried once more. Returns the principal and the key-set
    /// generation that verified it (for the cache).
    pub async fn verify(
        &self,
        jws: &Jws<'_>,
        claims: Claims,
    ) -> Result<(Principal, u64), &'static str> {
        let alg = header_algorithm(jws, self.algorithms)?;
        let mut loaded = self.keys.keys(Instant::now())?;
        match loaded.keys.verify(jws, alg) {
            Ok(()) => {}
            Err(r) if r == reason::UNKNOWN_KID && self.keys.is_remote() => {
                if !self.keys.refresh_for_unknown_kid(loaded.generation).await {
                    return Err(reason::UNKNOWN_KID);
                }
                loaded = self.keys.keys(Instant::now())?;
                loaded.keys.verify(jws, alg)?;
            }
            Err(r) => return Err(r),
        }
        self.finish(claims, &loaded, unix_now())
    }

    /// The same checks without a refresh: what the fuzz target runs.
    pub fn verify_now(
        &self,
        jws: &Jws<'_>,
        claims: Claims,
    ) -> Result<(Principal, u64), &'static str> {
        let alg = header_algorithm(jws, self.algorithms)?;
        let loaded = self.keys.keys(Instant::now())?;
        loaded.keys.verify(jws, alg)?;
        self.finish(claims, &loaded, unix_now())
    }

    /// Claim checks, after the signature held.
    fn finish(
        &self,
        claims: Claims,
        loaded: &Loaded,
        now: u64,
    ) -> Result<(Principal, u64), &'static str> {
        match string_claim(&claims, "iss")? {
            Some(iss) if iss == self.issuer => {}
            _ => return Err(reason::WRONG_ISSUER),
        }
        check_audience(&claims, |a| self.audiences.iter().any(|x| x == a))?;
        let exp = check_times(&claims, now, self.leeway)?;
        for c in &self.required_claims {
            if claims.get(c).is_none_or(|v| v.is_null()) {
                return Err(reason::MISSING_CLAIM);
            }
        }
        let client_id = match string_claim(&claims, "client_id")? {
            Some(c) => Some(c.to_string()),
            None => string_claim(&claims, "azp")?.map(str::to_string),
        };
        // Every principal names someone: `sub`, else the client (a
        // client-credentials token); a token with neither is refused.
        let subject = match string_claim(&claims, "sub")? {
            Some(s) if !s.is_empty() => s.to_string(),
            Some(_) => return Err(reason::INVALID_CLAIM),
            None => client_id.clone().ok_or(reason::MISSING_CLAIM)?,
        };
        let scopes = scopes(&claims)?;
        Ok((
            Principal {
                provider: self.name.clone(),
                method: Method::Jwt,
                subject,
                issuer: Some(self.issuer.clone()),
                client_id,
                scopes,
                claims: Arc::new(claims),
                expires_at: Some(exp),
            },
            loaded.generation,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The token attack suite: each forged or broken token is refused, and
    //! refused for the right reason.

    use std::time::Duration;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use serde_json::json;

    use super::*;
    use crate::authn::{
        config::KeySource,
        keys::{AlgSet, KeySet},
        test_support::*,
        token::{MAX_TOKEN_BYTES, parse_claims, parse_compact},
    };

    pub const ISS: &str = "https://idp.test";
    pub const AUD: &str = "https://api.test";

    pub fn settings(name: &str, algs: &[&str]) -> JwtSettings {
        JwtSettings {
            name: name.into(),
            issuer: ISS.into(),
            audiences: vec![AUD.into(), "other".into()],
            algorithms: AlgSet::from_names(algs),
            source: KeySource::File("unused".into()),
            ca: None,
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            max_staleness: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
            required_claims: vec!["sub".into()],
        }
    }

    pub fn issuer(keys: &[&TestKey]) -> JwtIssuer {
        let (set, skipped) = KeySet::from_jwks(&jwks(keys)).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        JwtIssuer::new(
            &settings("corp", &["RS256", "PS256", "ES256", "ES384", "EdDSA"]),
            Arc::new(KeyStore::fixed("corp", set)),
        )
    }

    pub fn claims() -> serde_json::Value {
        let n = now();
        json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": n + 300, "iat": n, "scope": "api:read api:write", "azp": "web"})
    }

    fn check(iss: &JwtIssuer, token: &str) -> Result<Principal, &'static str> {
        let jws = parse_compact(token)?;
        let claims = parse_claims(jws.payload_b64)?;
        iss.verify_now(&jws, claims).map(|(p, _)| p)
    }

    fn refused(iss: &JwtIssuer, token: &str, want: &'static str, what: &str) {
        match check(iss, token) {
            Ok(p) => panic!("{what}: accepted as {p:?}, expected refusal {want:?}"),
            Err(got) => assert_eq!(got, want, "{what}: wrong reason"),
        }
    }

    fn with(mut c: serde_json::Value, k: &str, v: serde_json::Value) -> serde_json::Value {
        c[k] = v;
        c
    }

    #[test]
    fn valid_tokens_of_every_key_type_verify() {
        let keys = [
            TestKey::rs256("r"),
            TestKey::ps256("p"),
            TestKey::es256("e"),
            TestKey::es384("e3"),
            TestKey::ed25519("d"),
        ];
        // ps256 shares the RSA key with rs256: give the set one RSA entry.
        let iss = issuer(&[&keys[0], &keys[2], &keys[3], &keys[4]]);
        for k in &keys {
            let mut h = json!({"alg": alg_name(k.alg), "kid": k.kid});
            if k.alg == jsonwebtoken::Algorithm::PS256 {
                h["kid"] = "r".into();
            }
            let t = k.sign_raw(&h.to_string(), &claims().to_string());
            let p = check(&iss, &t).unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
            assert_eq!(p.subject, "alice");
            assert_eq!(p.scopes, ["api:read", "api:write"]);
            assert_eq!(p.client_id.as_deref(), Some("web"));
            assert_eq!(p.issuer.as_deref(), Some(ISS));
            assert_eq!(p.method, Method::Jwt);
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let iss = issuer(&[&TestKey::es256("e")]);
        for h in [
            r#"{"alg":"none","kid":"e"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let t = format!("{}.{}.", b64(h), b64(claims().to_string()));
            // An empty signature segment is already malformed...
            refused(&iss, &t, reason::MALFORMED, "none, empty signature");
            // ...and with any signature bytes the algorithm is refused.
            let t = format!("{t}AAAA");
            refused(&iss, &t, reason::ALG_NOT_ALLOWED, h);
        }
    }

    fn hmac(secret: &[u8], input: &str) -> String {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        b64(aws_lc_rs::hmac::sign(&k, input.as_bytes()).as_ref())
    }

    #[test]
    fn hs256_signed_with_the_public_key_bytes_is_refused() {
        let rsa = TestKey::rs256("r");
        let iss = issuer(&[&rsa]);
        let der = rsa.public_der();
        let pem = rsa.public_pem();
        let jwk = rsa.public_jwk().to_string();
        for (what, secret) in [
            ("PEM", pem.as_bytes()),
            ("DER", &der[..]),
            ("JWK JSON", jwk.as_bytes()),
        ] {
            for h in [r#"{"alg":"HS256","kid":"r"}"#, r#"{"alg":"HS256"}"#] {
                let input = format!("{}.{}", b64(h), b64(claims().to_string()));
                let t = format!("{input}.{}", hmac(secret, &input));
                refused(&iss, &t, reason::ALG_NOT_ALLOWED, what);
            }
        }
    }

    #[test]
    fn unknown_and_path_like_kids_are_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        for kid in ["nope", "../../etc/passwd", "", "e ", "E"] {
            let h = json!({"alg": "ES256", "kid": kid}).to_string();
            refused(
                &iss,
                &k.sign_raw(&h, &claims().to_string()),
                reason::UNKNOWN_KID,
                kid,
            );
        }
    }

    #[test]
    fn embedded_and_remote_key_headers_are_never_used() {
        let ours = TestKey::es256("e");
        let attacker = TestKey::es256("e");
        let iss = issuer(&[&ours]);
        let jwk = attacker.public_jwk();
        for extra in [
            json!({"jku": "https://attacker.example/jwks.json"}),
            json!({"x5u": "https://attacker.example/cert.pem"}),
            json!({"jwk": jwk}),
            json!({"x5c": ["MIIB"]}),
        ] {
            // Under our kid: the attacker's signature does not verify with our key.
            let mut h = json!({"alg": "ES256", "kid": "e"});
            h.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let t = attacker.sign_raw(&h.to_string(), &claims().to_string());
            refused(&iss, &t, reason::BAD_SIGNATURE, &extra.to_string());
            // Under the attacker's own kid: not in our set.
            h["kid"] = "attacker".into();
            let t = attacker.sign_raw(&h.to_string(), &claims().to_string());
            refused(&iss, &t, reason::UNKNOWN_KID, &extra.to_string());
            // Without a kid: tried against our keys only.
            h.as_object_mut().unwrap().remove("kid");
            let t = attacker.sign_raw(&h.to_string(), &claims().to_string());
            refused(&iss, &t, reason::BAD_SIGNATURE, &extra.to_string());
        }
    }

    #[test]
    fn time_window_violations_are_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        let n = now();
        refused(
            &iss,
            &k.sign(&with(claims(), "exp", json!(n - 31))),
            reason::EXPIRED,
            "expired",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "nbf", json!(n + 600))),
            reason::NOT_YET_VALID,
            "nbf",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "iat", json!(n + 86400))),
            reason::IAT_IN_FUTURE,
            "iat",
        );
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        refused(&iss, &k.sign(&no_exp), reason::MISSING_CLAIM, "no exp");
        // Within leeway: accepted.
        assert!(check(&iss, &k.sign(&with(claims(), "exp", json!(n - 5)))).is_ok());
    }

    #[test]
    fn wrong_issuer_audience_and_missing_claims_are_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        refused(
            &iss,
            &k.sign(&with(claims(), "iss", json!("https://evil"))),
            reason::WRONG_ISSUER,
            "iss",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "iss", json!(ISS.to_string() + "/"))),
            reason::WRONG_ISSUER,
            "iss/",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "aud", json!("https://evil"))),
            reason::WRONG_AUDIENCE,
            "aud",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "aud", json!(["a", "b"]))),
            reason::WRONG_AUDIENCE,
            "aud[]",
        );
        assert!(check(&iss, &k.sign(&with(claims(), "aud", json!(["x", AUD])))).is_ok());
        let mut no_sub = claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        refused(
            &iss,
            &k.sign(&no_sub),
            reason::MISSING_CLAIM,
            "required sub",
        );
        refused(
            &iss,
            &k.sign(&with(claims(), "scope", json!(1))),
            reason::INVALID_CLAIM,
            "scope type",
        );
    }

    #[test]
    fn tampering_is_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        let t = k.sign(&claims());
        let (h, rest) = t.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let forged = with(claims(), "sub", json!("admin"));
        refused(
            &iss,
            &format!("{h}.{}.{s}", b64(forged.to_string())),
            reason::BAD_SIGNATURE,
            "payload",
        );
        // Header swapped to another allowed alg of a different key type.
        let h2 = b64(r#"{"alg":"EdDSA","kid":"e"}"#);
        refused(
            &iss,
            &format!("{h2}.{}", rest),
            reason::ALG_KEY_MISMATCH,
            "alg swap",
        );
        // One flipped signature bit.
        let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        sig[10] ^= 1;
        let p = rest.split_once('.').unwrap().0;
        refused(
            &iss,
            &format!("{h}.{p}.{}", b64(&sig)),
            reason::BAD_SIGNATURE,
            "bit flip",
        );
    }

    #[test]
    fn signatures_of_the_wrong_length_are_refused() {
        for k in [
            TestKey::es256("e"),
            TestKey::rs256("e"),
            TestKey::ed25519("e"),
        ] {
            let iss = issuer(&[&k]);
            let t = k.sign(&claims());
            let (input, s) = t.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(s).unwrap();
            for bad in [
                &sig[..sig.len() - 1],
                &[sig.clone(), vec![0]].concat()[..],
                &sig[..1],
            ] {
                let t = format!("{input}.{}", b64(bad));
                refused(
                    &iss,
                    &t,
                    reason::BAD_SIGNATURE,
                    &format!("{:?} len {}", k.alg, bad.len()),
                );
            }
        }
    }

    /// P-256 group order n.
    const N256: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    const N384: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ecdsa_with_r_or_s_zero_or_n_is_refused() {
        for (k, n) in [
            (TestKey::es256("e"), hex(N256)),
            (TestKey::es384("e"), hex(N384)),
        ] {
            let iss = issuer(&[&k]);
            let t = k.sign(&claims());
            let (input, s) = t.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(s).unwrap();
            let l = sig.len() / 2;
            let zero = vec![0u8; l];
            let (r, s_) = (&sig[..l], &sig[l..]);
            for (what, rr, ss) in [
                ("r=0", &zero[..], s_),
                ("s=0", r, &zero[..]),
                ("r=s=0", &zero[..], &zero[..]),
                ("r=n", &n[..], s_),
                ("s=n", r, &n[..]),
                ("r=s=n", &n[..], &n[..]),
            ] {
                let t = format!("{input}.{}", b64([rr, ss].concat()));
                refused(&iss, &t, reason::BAD_SIGNATURE, what);
            }
            // Sanity: the untouched token verifies.
            assert!(check(&iss, &t).is_ok());
        }
    }

    #[test]
    fn structural_attacks_are_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        let t = k.sign(&claims());
        refused(&iss, &format!("{t}.x"), reason::MALFORMED, "extra segment");
        refused(&iss, &format!("{t} "), reason::MALFORMED, "trailing space");
        refused(&iss, &format!("{t}=="), reason::MALFORMED, "padding");
        refused(
            &iss,
            &format!("{t}garbage!"),
            reason::MALFORMED,
            "trailing garbage",
        );
        refused(
            &iss,
            &t.replacen('.', ". ", 1),
            reason::MALFORMED,
            "inner whitespace",
        );
        let big = k.sign(&with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES))));
        refused(&iss, &big, reason::TOO_LARGE, "oversized");
        // Padding added inside the payload segment.
        let (h, rest) = t.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        refused(
            &iss,
            &format!("{h}.{p}=.{s}"),
            reason::MALFORMED,
            "payload padding",
        );
        // Trailing garbage after the header JSON.
        let h2 = b64(r#"{"alg":"ES256","kid":"e"}garbage"#);
        refused(
            &iss,
            &format!("{h2}.{p}.{s}"),
            reason::MALFORMED,
            "header garbage",
        );
        // Duplicate claims (a parser differential).
        let dup = format!(
            r#"{{"sub":"alice","sub":"admin","iss":"{ISS}","aud":"{AUD}","exp":{}}}"#,
            now() + 60
        );
        refused(
            &iss,
            &k.sign_raw(r#"{"alg":"ES256","kid":"e"}"#, &dup),
            reason::MALFORMED,
            "dup claims",
        );
    }

    #[test]
    fn crit_is_refused() {
        let k = TestKey::es256("e");
        let iss = issuer(&[&k]);
        for (h, want) in [
            (
                json!({"alg":"ES256","kid":"e","crit":["exp"],"exp":1}),
                reason::CRIT_UNSUPPORTED,
            ),
            (
                json!({"alg":"ES256","kid":"e","crit":["b64"],"b64":true}),
                reason::CRIT_UNSUPPORTED,
            ),
            (
                json!({"alg":"ES256","kid":"e","crit":[]}),
                reason::MALFORMED,
            ),
            (
                json!({"alg":"ES256","kid":"e","crit":"exp"}),
                reason::MALFORMED,
            ),
        ] {
            refused(
                &iss,
                &k.sign_raw(&h.to_string(), &claims().to_string()),
                want,
                &h.to_string(),
            );
        }
    }

    #[test]
    fn alg_outside_the_issuer_list_is_refused() {
        let k = TestKey::es384("e");
        let (set, _) = KeySet::from_jwks(&jwks(&[&k])).unwrap();
        let iss = JwtIssuer::new(
            &settings("corp", &["ES256"]),
            Arc::new(KeyStore::fixed("c", set)),
        );
        refused(
            &iss,
            &k.sign(&claims()),
            reason::ALG_NOT_ALLOWED,
            "ES384 not listed",
        );
    }

    #[test]
    fn kidless_tokens_try_only_fitting_keys_and_only_a_few() {
        let ec = TestKey::es256("e");
        let mut keys: Vec<TestKey> = (0..6).map(|i| TestKey::es256(&format!("k{i}"))).collect();
        keys.push(TestKey::es256("last"));
        let refs: Vec<&TestKey> = keys.iter().collect();
        let iss = issuer(&refs);
        // Signed by the 7th key, no kid: beyond MAX_KIDLESS_TRIES, refused.
        let t = keys[6].sign_raw(r#"{"alg":"ES256"}"#, &claims().to_string());
        refused(&iss, &t, reason::BAD_SIGNATURE, "beyond the bound");
        // Signed by the 2nd key, no kid: found.
        let t = keys[1].sign_raw(r#"{"alg":"ES256"}"#, &claims().to_string());
        assert!(check(&iss, &t).is_ok());
        // No key of the alg's type.
        let only_rsa = issuer(&[&TestKey::rs256("r")]);
        let t = ec.sign_raw(r#"{"alg":"ES256"}"#, &claims().to_string());
        refused(&only_rsa, &t, reason::NO_MATCHING_KEY, "no EC key");
    }
}

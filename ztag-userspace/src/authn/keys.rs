//! Which key may verify which signature. Keys come from JWKs (a JWKS file
//! or URL) or PEM files; each is parsed and checked once at load into a
//! [`VerifyKey`] (its `DecodingKey` built then, never per verify), and
//! anything that is not a public signing key of a kind ztag accepts is left
//! out of the set with a logged reason. At verify time a token's `alg` must
//! be allowed by the issuer AND fit the key (`kty`/`crv`, and the JWK's own
//! `alg` when it names one): an RSA key never verifies ES256, an HMAC key
//! never exists.

use std::collections::HashMap;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, ParsedPublicKey,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512,
    RSA_PSS_2048_8192_SHA256, RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512,
    VerificationAlgorithm,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::Deserialize;
use x509_parser::{
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    },
    prelude::FromDer,
    public_key::PublicKey,
    x509::SubjectPublicKeyInfo,
};

use super::{
    reason,
    token::{Jws, b64_decode, decoded_len},
};

/// The algorithms ztag accepts, as written in config and in JOSE headers.
/// `none` and every HMAC algorithm are absent on purpose: a gateway that
/// verifies with public keys must never accept a shared-secret MAC (the
/// classic attack signs HS256 with the public key's bytes as the secret).
pub const ACCEPTED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// When a token names no `kid`, at most this many keys (those whose type
/// fits the `alg`) are tried: each try is a signature check, and an
/// unbounded loop would let one request cost a key set's worth of them.
pub const MAX_KIDLESS_TRIES: usize = 4;

/// Maps an accepted algorithm name to jsonwebtoken's enum; `None` for
/// everything else (`none`, `HS256`, `ES512`, lowercase spellings, ...).
pub fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The header's `alg` when `allowed` has it. Any `crit` refuses the token:
/// ztag implements no JWS extension, and RFC 7515 §4.1.11 requires refusing
/// one that is not understood (an empty list is malformed).
pub(crate) fn header_algorithm(jws: &Jws<'_>, allowed: AlgSet) -> Result<Algorithm, &'static str> {
    if let Some(c) = &jws.header.crit {
        return Err(if c.is_empty() {
            reason::MALFORMED
        } else {
            reason::CRIT_UNSUPPORTED
        });
    }
    match parse_alg(&jws.header.alg) {
        Some(a) if allowed.contains(a) => Ok(a),
        _ => Err(reason::ALG_NOT_ALLOWED),
    }
}

/// A small set of accepted algorithms (a bit per algorithm), so the verify
/// path checks membership without a lookup or an allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    fn bit(alg: Algorithm) -> u16 {
        match alg {
            Algorithm::RS256 => 1,
            Algorithm::RS384 => 1 << 1,
            Algorithm::RS512 => 1 << 2,
            Algorithm::PS256 => 1 << 3,
            Algorithm::PS384 => 1 << 4,
            Algorithm::PS512 => 1 << 5,
            Algorithm::ES256 => 1 << 6,
            Algorithm::ES384 => 1 << 7,
            Algorithm::EdDSA => 1 << 8,
            // HMAC (and anything jsonwebtoken may add) never enters a set.
            _ => 0,
        }
    }
    /// Every algorithm ztag accepts.
    #[cfg(test)]
    pub fn all() -> AlgSet {
        AlgSet(0x1ff)
    }
    /// The set of the given names; names that are not accepted are skipped
    /// (config validation has already reported them).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> AlgSet {
        let mut s = AlgSet(0);
        for n in names {
            if let Some(a) = parse_alg(n.as_ref()) {
                s.0 |= Self::bit(a);
            }
        }
        s
    }
    /// Whether `alg` is in the set.
    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & Self::bit(alg) != 0
    }
}

/// The kind of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA, with the modulus length in bytes (= the signature length).
    Rsa(usize),
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    fn supports(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa(_),
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
    /// Length of a well-formed signature by this key (P1363 `r||s` for ECDSA).
    fn signature_len(self) -> usize {
        match self {
            KeyKind::Rsa(n) => n,
            KeyKind::P256 => 64,
            KeyKind::P384 => 96,
            KeyKind::Ed25519 => 64,
        }
    }
}

/// One public signing key, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one: the key then verifies only that.
    alg: Option<Algorithm>,
    key: DecodingKey,
    /// The key parsed by aws-lc once per algorithm it may verify: a verify
    /// then skips the key parsing (and RSA's Montgomery set-up) that
    /// jsonwebtoken's per-call path repeats.
    parsed: Box<[(Algorithm, ParsedPublicKey)]>,
}

/// A key's kind, its jsonwebtoken form (for comparisons) and its parsed forms.
type Loaded = (KeyKind, DecodingKey, Box<[(Algorithm, ParsedPublicKey)]>);

/// aws-lc's verification algorithm for a JWS `alg`.
fn aws_alg(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &ED25519,
        _ => return None,
    })
}

const ALL_ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Parses `material` (PKCS#1 DER for RSA, the point for EC, the 32 bytes
/// for Ed25519) for every algorithm `kind` supports.
fn parse_for(
    kind: KeyKind,
    material: &[u8],
) -> Result<Box<[(Algorithm, ParsedPublicKey)]>, String> {
    let mut out = Vec::new();
    for alg in ALL_ALGS.into_iter().filter(|a| kind.supports(*a)) {
        let Some(a) = aws_alg(alg) else { continue };
        let k = ParsedPublicKey::new(a, material)
            .map_err(|e| format!("the key does not load for {alg:?}: {e}"))?;
        out.push((alg, k));
    }
    Ok(out.into_boxed_slice())
}

/// DER of a PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, l: usize) {
        if l < 0x80 {
            out.push(l as u8);
        } else {
            let bytes = l.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn int(out: &mut Vec<u8>, v: &[u8]) {
        out.push(0x02);
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        len(out, v.len() + pad as usize);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    int(&mut body, n);
    int(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

impl VerifyKey {
    /// Whether this key may verify a signature made with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// The signature check itself: the one function every path (JWTs,
    /// client assertions, the Wycheproof vectors) goes through.
    /// `signature_b64` is the token's third segment.
    pub fn verify(
        &self,
        alg: Algorithm,
        signing_input: &[u8],
        signature_b64: &str,
    ) -> Result<(), &'static str> {
        if !self.accepts(alg) {
            return Err(reason::ALG_KEY_MISMATCH);
        }
        // A signature of the wrong length is refused before any crypto
        // (and before decoding: the length follows from the segment's).
        if decoded_len(signature_b64.len()) != Some(self.kind.signature_len()) {
            return Err(reason::BAD_SIGNATURE);
        }
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return Err(reason::ALG_KEY_MISMATCH);
        };
        // RSA up to 8192 bits: 1024 bytes of signature at most.
        let mut sig = [0u8; 1024];
        let n = URL_SAFE_NO_PAD
            .decode_slice(signature_b64, &mut sig)
            .map_err(|_| reason::BAD_SIGNATURE)?;
        key.verify_sig(signing_input, &sig[..n])
            .map_err(|_| reason::BAD_SIGNATURE)
    }

    /// Whether two keys are the same material with the same id and use:
    /// a refresh that brings back the same keys keeps cached verifications.
    fn same_as(&self, other: &VerifyKey) -> bool {
        let material_eq = match (self.key.kind(), other.key.kind()) {
            (DecodingKeyKind::SecretOrDer(a), DecodingKeyKind::SecretOrDer(b)) => a == b,
            (
                DecodingKeyKind::RsaModulusExponent { n: n1, e: e1 },
                DecodingKeyKind::RsaModulusExponent { n: n2, e: e2 },
            ) => n1 == n2 && e1 == e2,
            _ => false,
        };
        material_eq && self.kid == other.kid && self.kind == other.kind && self.alg == other.alg
    }

    fn rsa(n: &[u8], e: &[u8]) -> Result<Loaded, String> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = match n.first() {
            None => 0,
            Some(&b) => n.len() * 8 - b.leading_zeros() as usize,
        };
        // aws-lc verifies RSA keys of 2048..=8192 bits only; say so at load.
        if !(2048..=8192).contains(&bits) {
            return Err(format!(
                "RSA modulus of {bits} bits (2048 to 8192 accepted)"
            ));
        }
        if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
            return Err("RSA public exponent is not an odd number between 3 and 2^32".into());
        }
        let kind = KeyKind::Rsa(n.len());
        let parsed = parse_for(kind, &rsa_public_key_der(n, e))?;
        Ok((kind, DecodingKey::from_rsa_raw_components(n, e), parsed))
    }

    fn ec(kind: KeyKind, point: Vec<u8>) -> Result<Loaded, String> {
        let alg = match kind {
            KeyKind::P256 => &ECDSA_P256_SHA256_FIXED,
            _ => &ECDSA_P384_SHA384_FIXED,
        };
        // Refuses points that are not on the curve (invalid-curve attacks).
        ParsedPublicKey::new(alg, &point)
            .map_err(|_| "EC point is not on its curve".to_string())?;
        let parsed = parse_for(kind, &point)?;
        Ok((kind, DecodingKey::from_ec_der(&point), parsed))
    }

    fn ed25519(x: &[u8]) -> Result<Loaded, String> {
        if x.len() != 32 {
            return Err("Ed25519 key is not 32 bytes".into());
        }
        ParsedPublicKey::new(&ED25519, x).map_err(|_| "Ed25519 key is invalid".to_string())?;
        let parsed = parse_for(KeyKind::Ed25519, x)?;
        Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(x), parsed))
    }

    /// Parses one JWK. `Err` says why the key is not usable (logged; the
    /// key is left out of its set).
    pub fn from_jwk(v: &serde_json::Value) -> Result<VerifyKey, String> {
        #[derive(Deserialize)]
        struct RawJwk {
            kty: String,
            kid: Option<String>,
            alg: Option<String>,
            #[serde(rename = "use")]
            use_: Option<String>,
            key_ops: Option<Vec<String>>,
            crv: Option<String>,
            n: Option<String>,
            e: Option<String>,
            x: Option<String>,
            y: Option<String>,
        }
        let j = RawJwk::deserialize(v).map_err(|e| format!("not a JWK ({e})"))?;
        if let Some(u) = &j.use_
            && u != "sig"
        {
            return Err(format!("\"use\" is {u:?}, not \"sig\""));
        }
        if let Some(ops) = &j.key_ops
            && !ops.iter().any(|o| o == "verify")
        {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
        let alg = match &j.alg {
            None => None,
            Some(a) => Some(parse_alg(a).ok_or_else(|| format!("\"alg\" {a:?} is not accepted"))?),
        };
        let field = |f: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let s = f.as_deref().ok_or_else(|| format!("missing \"{name}\""))?;
            if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("\"{name}\" is not base64url"));
            }
            b64_decode(s).map_err(|_| format!("\"{name}\" is not base64url"))
        };
        let (kind, key, parsed) = match (j.kty.as_str(), j.crv.as_deref()) {
            ("RSA", _) => Self::rsa(&field(&j.n, "n")?, &field(&j.e, "e")?)?,
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (kind, len) = if crv == "P-256" {
                    (KeyKind::P256, 32)
                } else {
                    (KeyKind::P384, 48)
                };
                let (x, y) = (field(&j.x, "x")?, field(&j.y, "y")?);
                if x.len() != len || y.len() != len {
                    return Err(format!("{crv} coordinates are not {len} bytes"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Self::ec(kind, point)?
            }
            ("OKP", Some("Ed25519")) => Self::ed25519(&field(&j.x, "x")?)?,
            ("oct", _) => return Err("symmetric (\"oct\") keys are never accepted".into()),
            (kty, crv) => {
                return Err(format!(
                    "unsupported key type {kty:?}{}",
                    crv.map(|c| format!(" on curve {c:?}")).unwrap_or_default()
                ));
            }
        };
        if let Some(a) = alg
            && !kind.supports(a)
        {
            return Err(format!("\"alg\" {a:?} does not fit the key type"));
        }
        Ok(VerifyKey {
            kid: j.kid,
            kind,
            alg,
            key,
            parsed,
        })
    }

    /// Parses a PEM public key (`PUBLIC KEY`, SubjectPublicKeyInfo) or a
    /// certificate (`CERTIFICATE`, whose public key is used).
    pub fn from_pem(pem: &[u8]) -> Result<VerifyKey, String> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM file ({e})"))?;
        let cert;
        let spki_owned;
        let spki: &SubjectPublicKeyInfo = match pem.label.as_str() {
            "PUBLIC KEY" => {
                spki_owned = SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| format!("not a SubjectPublicKeyInfo ({e})"))?
                    .1;
                &spki_owned
            }
            "CERTIFICATE" => {
                cert = x509_parser::parse_x509_certificate(&pem.contents)
                    .map_err(|e| format!("not an X.509 certificate ({e})"))?
                    .1;
                cert.public_key()
            }
            l => {
                return Err(format!(
                    "PEM label {l:?}: expected \"PUBLIC KEY\" or \"CERTIFICATE\""
                ));
            }
        };
        let oid = &spki.algorithm.algorithm;
        let data = &spki.subject_public_key.data;
        let (kind, key, parsed) = if *oid == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(r)) => Self::rsa(r.modulus, r.exponent)?,
                _ => return Err("malformed RSA public key".into()),
            }
        } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => Self::ec(KeyKind::P256, data.to_vec())?,
                Some(c) if c == OID_NIST_EC_P384 => Self::ec(KeyKind::P384, data.to_vec())?,
                _ => return Err("EC key on a curve other than P-256 or P-384".into()),
            }
        } else if *oid == OID_SIG_ED25519 {
            Self::ed25519(data)?
        } else {
            return Err(format!("unsupported public key algorithm {oid}"));
        };
        Ok(VerifyKey {
            kid: None,
            kind,
            alg: None,
            key,
            parsed,
        })
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// A set of verification keys with an exact `kid` index.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
    by_kid: HashMap<String, usize>,
}

impl KeySet {
    /// A set of the given keys. A `kid` that appears twice keeps its first
    /// key only (the second is reported): a lookup must never be ambiguous.
    pub fn new(keys: Vec<VerifyKey>) -> (KeySet, Vec<String>) {
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for k in keys {
            if let Some(kid) = &k.kid {
                if set.by_kid.contains_key(kid) {
                    skipped.push(format!(
                        "kid {kid:?} appears twice; the second key is ignored"
                    ));
                    continue;
                }
                set.by_kid.insert(kid.clone(), set.keys.len());
            }
            set.keys.push(k);
        }
        (set, skipped)
    }

    /// Parses a JWKS document (`{"keys": [...]}`). Unusable keys are left
    /// out and described in the second value; the set may be empty (the
    /// caller decides whether that is an error).
    pub fn from_jwks(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let jwks: Jwks =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document ({e})"))?;
        let mut keys = Vec::with_capacity(jwks.keys.len());
        let mut skipped = Vec::new();
        for (i, v) in jwks.keys.iter().enumerate() {
            match VerifyKey::from_jwk(v) {
                Ok(k) => keys.push(k),
                Err(why) => {
                    let kid = v.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                    skipped.push(format!("key {i} (kid {kid:?}) skipped: {why}"));
                }
            }
        }
        let (set, dup) = KeySet::new(keys);
        skipped.extend(dup);
        Ok((set, skipped))
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set holds a key with this id.
    #[cfg(test)]
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Same keys, same ids, same order.
    pub fn same_as(&self, other: &KeySet) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|(a, b)| a.same_as(b))
    }

    /// Verifies a JWS's signature with `alg` (already checked against the
    /// issuer's list). With a `kid`, only the key with exactly that id is
    /// used; a `kid` no key has is `unknown_kid`, unless the set holds keys
    /// without an id (a PEM file): those have no id to match, so they are
    /// tried as for a token without `kid`. Without a `kid`, up to
    /// [`MAX_KIDLESS_TRIES`] keys that fit `alg` are tried.
    pub fn verify(&self, jws: &Jws<'_>, alg: Algorithm) -> Result<(), &'static str> {
        let kid = jws.header.kid.as_deref();
        if let Some(kid) = kid {
            if let Some(&i) = self.by_kid.get(kid) {
                return self.keys[i].verify(alg, jws.signing_input, jws.signature_b64);
            }
            if self.keys.iter().all(|k| k.kid.is_some()) {
                return Err(reason::UNKNOWN_KID);
            }
        }
        let mut tried = false;
        for k in self
            .keys
            .iter()
            .filter(|k| (kid.is_none() || k.kid.is_none()) && k.accepts(alg))
            .take(MAX_KIDLESS_TRIES)
        {
            tried = true;
            if k.verify(alg, jws.signing_input, jws.signature_b64).is_ok() {
                return Ok(());
            }
        }
        Err(if tried {
            reason::BAD_SIGNATURE
        } else {
            reason::NO_MATCHING_KEY
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::test_support::*;

    #[test]
    fn alg_set_never_contains_hmac_or_none() {
        let s = AlgSet::from_names(&["HS256", "none", "ES256", "es256"]);
        assert!(s.contains(Algorithm::ES256));
        assert!(!s.contains(Algorithm::HS256));
        assert!(!s.contains(Algorithm::ES384));
        assert!(!AlgSet::all().contains(Algorithm::HS512));
        for a in ACCEPTED_ALGORITHMS {
            assert!(AlgSet::all().contains(parse_alg(a).unwrap()), "{a}");
        }
    }

    #[test]
    fn keys_verify_only_algorithms_that_fit_them() {
        let ec = TestKey::es256("e");
        let rsa = TestKey::rs256("r");
        let ed = TestKey::ed25519("d");
        let (set, skipped) = KeySet::from_jwks(&jwks(&[&ec, &rsa, &ed])).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.len(), 3);
        let ek = &set.keys[0];
        assert!(ek.accepts(Algorithm::ES256));
        assert!(!ek.accepts(Algorithm::ES384) && !ek.accepts(Algorithm::RS256));
        let rk = &set.keys[1];
        assert!(rk.accepts(Algorithm::PS512) && !rk.accepts(Algorithm::ES256));
        assert!(!rk.accepts(Algorithm::EdDSA));
        // An RSA signature presented as ES256 under the RSA key's kid.
        let t = rsa.sign_raw(r#"{"alg":"ES256","kid":"r"}"#, "{}");
        let j = crate::authn::token::parse_compact(&t).unwrap();
        assert_eq!(
            set.verify(&j, Algorithm::ES256),
            Err(reason::ALG_KEY_MISMATCH)
        );
    }

    #[test]
    fn a_jwk_alg_restricts_the_key_to_that_alg() {
        let mut jwk = TestKey::rs256("r").public_jwk();
        jwk["alg"] = "PS256".into();
        let k = VerifyKey::from_jwk(&jwk).unwrap();
        assert!(k.accepts(Algorithm::PS256));
        assert!(!k.accepts(Algorithm::RS256));
        jwk["alg"] = "ES256".into();
        assert!(
            VerifyKey::from_jwk(&jwk).is_err(),
            "alg that does not fit kty"
        );
    }

    #[test]
    fn unusable_jwks_are_skipped_with_a_reason() {
        let good = TestKey::es256("ok").public_jwk();
        let mut enc = good.clone();
        enc["use"] = "enc".into();
        enc["kid"] = "enc".into();
        let mut ops = good.clone();
        ops["key_ops"] = serde_json::json!(["encrypt"]);
        ops["kid"] = "ops".into();
        let oct = serde_json::json!({"kty":"oct","k":"c2VjcmV0","kid":"h"});
        let p521 = serde_json::json!({"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"p"});
        let mut off_curve = good.clone();
        off_curve["y"] = off_curve["x"].clone();
        off_curve["kid"] = "off".into();
        let small_rsa = serde_json::json!({"kty":"RSA","n":"AQAB","e":"AQAB","kid":"s"});
        let mut dup = TestKey::es256("other").public_jwk();
        dup["kid"] = "ok".into();
        let doc =
            serde_json::json!({"keys":[good, enc, ops, oct, p521, off_curve, small_rsa, dup]});
        let (set, skipped) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{skipped:?}");
        assert!(set.has_kid("ok"));
        assert_eq!(skipped.len(), 7, "{skipped:?}");
    }

    #[test]
    fn pem_public_keys_and_certificates_load() {
        for k in [
            TestKey::es256("a"),
            TestKey::rs256("b"),
            TestKey::ed25519("c"),
        ] {
            let v = VerifyKey::from_pem(k.public_pem().as_bytes()).unwrap();
            assert!(v.accepts(k.alg), "{:?}", k.alg);
        }
        assert!(
            VerifyKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
        assert!(VerifyKey::from_pem(b"nothing").is_err());
    }
}

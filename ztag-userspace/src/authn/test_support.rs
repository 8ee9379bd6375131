//! Test keys and token builders shared by the authn unit tests. Keys are
//! generated per test binary (RSA once: it is slow) with aws-lc-rs, the same
//! library that verifies, and tokens are signed by hand so a test controls
//! every byte of the header.

use std::{
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaPublicKeyComponents,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::Algorithm;

/// Base64url without padding.
pub fn b64(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// PEM armour.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(&'static RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key with its public JWK.
pub struct TestKey {
    pair: Pair,
    /// The key's `kid`.
    pub kid: String,
    /// The algorithm `sign` uses.
    pub alg: Algorithm,
}

fn rsa_pair(i: usize) -> &'static RsaKeyPair {
    static KEYS: OnceLock<Vec<RsaKeyPair>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..1)
            .map(|_| RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
            .collect()
    })[i]
}

impl TestKey {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> TestKey {
        TestKey {
            pair: Pair::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
            kid: kid.into(),
            alg: Algorithm::ES256,
        }
    }
    /// A fresh P-384 key.
    pub fn es384(kid: &str) -> TestKey {
        TestKey {
            pair: Pair::Ec(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap()),
            kid: kid.into(),
            alg: Algorithm::ES384,
        }
    }
    /// The binary's first RSA-2048 key.
    pub fn rs256(kid: &str) -> TestKey {
        TestKey {
            pair: Pair::Rsa(rsa_pair(0)),
            kid: kid.into(),
            alg: Algorithm::RS256,
        }
    }
    /// The first RSA key, signing PS256.
    pub fn ps256(kid: &str) -> TestKey {
        TestKey {
            alg: Algorithm::PS256,
            ..TestKey::rs256(kid)
        }
    }
    /// A fresh Ed25519 key.
    pub fn ed25519(kid: &str) -> TestKey {
        TestKey {
            pair: Pair::Ed(Ed25519KeyPair::generate().unwrap()),
            kid: kid.into(),
            alg: Algorithm::EdDSA,
        }
    }

    /// Signs `msg` with the key's algorithm.
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ec(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Pair::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let pad = if self.alg == Algorithm::PS256 {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                k.sign(pad, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }

    /// A compact JWS with exactly this header and payload JSON, signed
    /// with the key (whatever the header says).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", b64(sig))
    }

    /// A JWT with the standard header (`alg`, `kid`) and these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let h = serde_json::json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"});
        self.sign_raw(&h.to_string(), &claims.to_string())
    }

    /// The public key as a JWK (with `kid`, `use`, no `alg`).
    pub fn public_jwk(&self) -> serde_json::Value {
        match &self.pair {
            Pair::Ec(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                serde_json::json!({"kty":"EC","crv":crv,"x":b64(&p[1..1+n]),"y":b64(&p[1+n..]),"kid":self.kid,"use":"sig"})
            }
            Pair::Ed(k) => {
                serde_json::json!({"kty":"OKP","crv":"Ed25519","x":b64(k.public_key().as_ref()),"kid":self.kid,"use":"sig"})
            }
            Pair::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                serde_json::json!({"kty":"RSA","n":b64(&c.n),"e":b64(&c.e),"kid":self.kid,"use":"sig"})
            }
        }
    }

    /// SubjectPublicKeyInfo DER.
    pub fn public_der(&self) -> Vec<u8> {
        let d: PublicKeyX509Der = match &self.pair {
            Pair::Ec(k) => k.public_key().as_der().unwrap(),
            Pair::Ed(k) => k.public_key().as_der().unwrap(),
            Pair::Rsa(k) => k.public_key().as_der().unwrap(),
        };
        d.as_ref().to_vec()
    }

    /// `-----BEGIN PUBLIC KEY-----`.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.public_der())
    }

    /// PKCS#8 `-----BEGIN PRIVATE KEY-----`.
    pub fn private_pem(&self) -> String {
        let der: Vec<u8> = match &self.pair {
            Pair::Ec(k) => k.to_pkcs8v1().unwrap().as_ref().to_vec(),
            Pair::Ed(k) => {
                let d: Pkcs8V1Der = k.as_der().unwrap();
                d.as_ref().to_vec()
            }
            Pair::Rsa(k) => {
                let d: Pkcs8V1Der = k.as_der().unwrap();
                d.as_ref().to_vec()
            }
        };
        pem("PRIVATE KEY", &der)
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => "?",
    }
}

/// A JWKS document of these keys' public halves.
pub fn jwks(keys: &[&TestKey]) -> Vec<u8> {
    let ks: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
    serde_json::json!({ "keys": ks }).to_string().into_bytes()
}

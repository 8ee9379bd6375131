//! Wycheproof vectors, read at test time from the shared data directory
//! (`../shared/data/jose/wycheproof/` from the repository root; never
//! copied into the repository).
//!
//! * The primitive files (ECDSA P-256/P-384 in the P1363 encoding JWS uses,
//!   Ed25519, RSA PKCS#1 v1.5, RSA-PSS) sign a raw `msg`, not a JWS signing
//!   input, so no compact JWS can carry them unchanged. They enter ztag's
//!   path at its signature step: the group's public JWK is loaded by the
//!   same JWK loader, and [`VerifyKey::verify`] (what `KeySet::verify`
//!   calls for every token) gets the message and the base64url signature
//!   segment. Every `invalid` vector must be refused, every `valid` one
//!   accepted; `acceptable` ones are counted.
//! * `json_web_signature_test.json` holds whole compact JWS: each goes
//!   through the token parser, the header's algorithm check and the key
//!   set configured with the group's key, i.e. everything a bearer token
//!   goes through before its claims are read. Every `invalid` one must be
//!   refused.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::{
    keys::{AlgSet, KeySet, VerifyKey, header_algorithm},
    test_support::b64,
    token::parse_compact,
};

/// `$ZTAG_SHARED_DATA/jose/wycheproof`, else `../shared/data` beside the
/// repository (where the team's checkouts and CI keep it).
fn dir() -> PathBuf {
    let shared = std::env::var_os("ZTAG_SHARED_DATA")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    shared.join("jose/wycheproof")
}

fn load(name: &str) -> Value {
    let p = dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the Wycheproof vectors live in ../shared/data beside the repository, or set ZTAG_SHARED_DATA)",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[derive(Default, Debug)]
struct Counts {
    valid_accepted: usize,
    valid_refused: Vec<String>,
    invalid_refused: usize,
    invalid_accepted: Vec<String>,
    acceptable_accepted: usize,
    acceptable_refused: usize,
}

impl Counts {
    fn record(&mut self, result: &str, accepted: bool, id: String) {
        match (result, accepted) {
            ("valid", true) => self.valid_accepted += 1,
            ("valid", false) => self.valid_refused.push(id),
            ("invalid", false) => self.invalid_refused += 1,
            ("invalid", true) => self.invalid_accepted.push(id),
            ("acceptable", true) => self.acceptable_accepted += 1,
            ("acceptable", false) => self.acceptable_refused += 1,
            (r, _) => panic!("{id}: unknown result {r:?}"),
        }
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what}: valid accepted {}/{}, invalid refused {}/{}, acceptable accepted {} refused {}",
            self.valid_accepted,
            self.valid_accepted + self.valid_refused.len(),
            self.invalid_refused,
            self.invalid_refused + self.invalid_accepted.len(),
            self.acceptable_accepted,
            self.acceptable_refused
        )
    }
}

/// One primitive file through `VerifyKey::verify`.
fn primitive(file: &str, alg: Algorithm) -> Counts {
    let d = load(file);
    let mut c = Counts::default();
    for g in d["testGroups"].as_array().unwrap() {
        // A few ECDSA groups (special points) come without a JWK: build it
        // from the uncompressed point.
        let built;
        let jwk = match g.get("publicKeyJwk").or_else(|| g.get("keyJwk")) {
            Some(j) => j,
            None => {
                let pk = &g["publicKey"];
                let point = unhex(pk["uncompressed"].as_str().unwrap());
                let n = (point.len() - 1) / 2;
                let crv = match pk["curve"].as_str() {
                    Some("secp256r1") => "P-256",
                    Some("secp384r1") => "P-384",
                    c => panic!("{file}: curve {c:?}"),
                };
                built = serde_json::json!({"kty": "EC", "crv": crv, "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..])});
                &built
            }
        };
        let key = VerifyKey::from_jwk(jwk).unwrap_or_else(|e| panic!("{file}: {jwk}: {e}"));
        for t in g["tests"].as_array().unwrap() {
            let msg = unhex(t["msg"].as_str().unwrap());
            let sig = unhex(t["sig"].as_str().unwrap());
            let ok = key.verify(alg, &msg, &b64(&sig)).is_ok();
            let id = format!(
                "{file} tcId {} ({})",
                t["tcId"],
                t["comment"].as_str().unwrap_or("")
            );
            c.record(t["result"].as_str().unwrap(), ok, id);
        }
    }
    c
}

#[test]
fn wycheproof_signature_vectors_through_ztags_signature_step() {
    let mut total = Counts::default();
    let mut report = Vec::new();
    for (file, alg) in [
        ("ecdsa_secp256r1_sha256_p1363_test.json", Algorithm::ES256),
        ("ecdsa_secp384r1_sha384_p1363_test.json", Algorithm::ES384),
        ("ed25519_test.json", Algorithm::EdDSA),
        ("rsa_signature_2048_sha256_test.json", Algorithm::RS256),
        ("rsa_signature_2048_sha384_test.json", Algorithm::RS384),
        ("rsa_signature_2048_sha512_test.json", Algorithm::RS512),
        ("rsa_signature_3072_sha256_test.json", Algorithm::RS256),
        ("rsa_signature_4096_sha512_test.json", Algorithm::RS512),
        ("rsa_pss_2048_sha256_mgf1_32_test.json", Algorithm::PS256),
        ("rsa_pss_4096_sha384_mgf1_48_test.json", Algorithm::PS384),
        ("rsa_pss_4096_sha512_mgf1_64_test.json", Algorithm::PS512),
    ] {
        let c = primitive(file, alg);
        report.push(c.line(file));
        total.valid_accepted += c.valid_accepted;
        total.valid_refused.extend(c.valid_refused);
        total.invalid_refused += c.invalid_refused;
        total.invalid_accepted.extend(c.invalid_accepted);
        total.acceptable_accepted += c.acceptable_accepted;
        total.acceptable_refused += c.acceptable_refused;
    }
    report.push(total.line("TOTAL"));
    println!("{}", report.join("\n"));
    assert!(
        total.invalid_accepted.is_empty(),
        "invalid vectors accepted:\n{}",
        total.invalid_accepted.join("\n")
    );
    assert!(
        total.valid_refused.is_empty(),
        "valid vectors refused:\n{}",
        total.valid_refused.join("\n")
    );
    // The files hold thousands of vectors; a path that silently skipped
    // them would pass the two checks above.
    assert!(
        total.valid_accepted > 300 && total.invalid_refused > 1500,
        "{}",
        total.line("TOTAL")
    );
}

#[test]
fn p521_keys_are_not_accepted_so_no_p521_vector_verifies() {
    let d = load("ecdsa_secp521r1_sha512_p1363_test.json");
    let mut n = 0;
    for g in d["testGroups"].as_array().unwrap() {
        assert!(VerifyKey::from_jwk(&g["publicKeyJwk"]).is_err());
        n += g["tests"].as_array().unwrap().len();
    }
    println!(
        "ecdsa_secp521r1_sha512_p1363_test.json: {n} vectors, all refused (ES512 is not accepted)"
    );
    assert!(n > 0);
}

#[test]
fn wycheproof_json_web_signatures_through_ztags_token_path() {
    let d = load("json_web_signature_test.json");
    let mut c = Counts::default();
    for g in d["testGroups"].as_array().unwrap() {
        // The verifier is configured with the group's public key (or its
        // only key; symmetric keys are refused by the loader).
        let jwk = g.get("public").or_else(|| g.get("private")).unwrap();
        let doc = serde_json::json!({ "keys": [jwk] }).to_string();
        let (set, _skipped) = KeySet::from_jwks(doc.as_bytes()).unwrap();
        for t in g["tests"].as_array().unwrap() {
            let id = format!("tcId {} ({}, {})", t["tcId"], g["comment"], t["comment"]);
            let accepted = match t["jws"].as_str() {
                // ztag reads compact serialization only.
                None => false,
                Some(jws) => parse_compact(jws)
                    .and_then(|j| {
                        let alg = header_algorithm(&j, AlgSet::all())?;
                        set.verify(&j, alg)
                    })
                    .is_ok(),
            };
            c.record(t["result"].as_str().unwrap(), accepted, id);
        }
    }
    println!("{}", c.line("json_web_signature_test.json"));
    println!(
        "valid JWS refused by policy (HMAC, ES512): {}",
        c.valid_refused.join("; ")
    );
    assert!(
        c.invalid_accepted.is_empty(),
        "invalid JWS accepted:\n{}",
        c.invalid_accepted.join("\n")
    );
    assert_eq!(c.invalid_refused, 355);
    // Every valid JWS of an algorithm ztag accepts verifies. The valid ones
    // refused are refused by policy: HMAC (groups "hs256", "base64", RFC
    // 7520 Figure 35), ES512 (Figure 27), and Figure 20, a PS384 token
    // whose key's JWK says `"alg": "PS256"` (a key verifies only the alg
    // its JWK names).
    for id in &c.valid_refused {
        assert!(
            [
                "\"hs256\"",
                "\"base64\"",
                "Figure35",
                "Figure27",
                "Figure20"
            ]
            .iter()
            .any(|p| id.contains(p)),
            "a valid JWS of an accepted algorithm was refused: {id}"
        );
    }
    assert!(
        c.valid_accepted >= 25,
        "{}",
        c.line("json_web_signature_test.json")
    );
}

//! What a well-formed token is, decided before any key or crypto is touched:
//! a compact JWS of three base64url segments (no padding, no whitespace),
//! at most [`MAX_TOKEN_BYTES`], whose header is a JSON object with a string
//! `alg` and whose claims (when read as a JWT) are a JSON object without
//! duplicate names. Everything else is refused here, cheaply, so that a
//! malformed token never reaches a key lookup or a signature check.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};

use super::reason;

/// Tokens longer than this are refused (`too_large`) before anything else:
/// no IdP issues 16 KiB tokens, and the bound caps the work an attacker can
/// ask of the parser.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token's claims, in the order the JSON gave them.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// The JOSE header fields ztag reads. Unknown members are ignored (IdPs add
/// `x5t`, `typ`, ...); `jku`, `x5u`, `jwk` and `x5c` are read only so that a
/// test can see they were present: they are never followed or trusted, the
/// key always comes from the configured key set.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    /// The signature algorithm, as written (mapped to an allowed algorithm
    /// by the verifier, which refuses `none` and HMAC).
    pub alg: String,
    /// Key id, looked up exactly in the configured key set.
    #[serde(default)]
    pub kid: Option<String>,
    /// Critical extensions: ztag understands none, so any name refuses.
    #[serde(default)]
    pub crit: Option<Vec<String>>,
    /// RFC 7797 unencoded payload: only the default (`true`) is accepted.
    #[serde(default)]
    pub b64: Option<bool>,
}

/// A compact JWS split into its parts; nothing here is verified yet.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    /// The parsed header.
    pub header: Header,
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The payload segment, still encoded.
    pub payload_b64: &'a str,
    /// The signature segment, still encoded (checked to be canonical base64url).
    pub signature_b64: &'a str,
}

/// `true` for the base64url alphabet (RFC 4648 §5) without `=`.
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Length of the bytes a canonical unpadded base64url string of `n`
/// characters decodes to, or `None` when no such string exists.
pub(crate) fn decoded_len(n: usize) -> Option<usize> {
    match n % 4 {
        0 => Some(n / 4 * 3),
        2 => Some(n / 4 * 3 + 1),
        3 => Some(n / 4 * 3 + 2),
        _ => None,
    }
}

/// Encodes bytes as unpadded base64url.
pub(crate) fn b64_encode(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Decodes one segment strictly: alphabet already checked; non-canonical
/// trailing bits are refused by the engine's default configuration.
pub(crate) fn b64_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| reason::MALFORMED)
}

/// Splits and checks a compact JWS; parses its header. The payload is left
/// encoded (see [`parse_claims`]); a JWS with an empty payload segment gets
/// this far and is refused when its claims are read.
pub(crate) fn parse_compact(token: &str) -> Result<Jws<'_>, &'static str> {
    let bytes = token.as_bytes();
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(reason::TOO_LARGE);
    }
    let mut dots = [0usize; 2];
    let mut n = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'.' {
            if n == 2 {
                return Err(reason::MALFORMED);
            }
            dots[n] = i;
            n += 1;
        } else if !is_b64url(b) {
            // Padding, whitespace, '+', '/', control bytes, a JSON
            // serialization: all refused.
            return Err(reason::MALFORMED);
        }
    }
    if n != 2 {
        return Err(reason::MALFORMED);
    }
    let header_b64 = &token[..dots[0]];
    let payload_b64 = &token[dots[0] + 1..dots[1]];
    let signature_b64 = &token[dots[1] + 1..];
    if header_b64.is_empty()
        || signature_b64.is_empty()
        || decoded_len(header_b64.len()).is_none()
        || decoded_len(payload_b64.len()).is_none()
        || decoded_len(signature_b64.len()).is_none()
    {
        return Err(reason::MALFORMED);
    }
    let header_json = b64_decode(header_b64)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| reason::MALFORMED)?;
    if header.b64.is_some_and(|b| !b) {
        return Err(reason::MALFORMED);
    }
    Ok(Jws {
        header,
        signing_input: &bytes[..dots[1]],
        payload_b64,
        signature_b64,
    })
}

/// Decodes the payload as a JWT claims set: a JSON object whose member
/// names are unique (RFC 7519 §4 lets a parser refuse duplicates; a
/// duplicate `sub` or `iss` is how parser differentials are exploited).
pub(crate) fn parse_claims(payload_b64: &str) -> Result<Claims, &'static str> {
    if payload_b64.is_empty() {
        return Err(reason::MALFORMED);
    }
    let json = b64_decode(payload_b64)?;
    let UniqueMap(map) = serde_json::from_slice(&json).map_err(|_| reason::MALFORMED)?;
    Ok(map)
}

/// A JSON object that refuses duplicate member names at its top level.
struct UniqueMap(Claims);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UniqueMap, A::Error> {
                let mut map = Claims::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                    map.insert(k, v);
                }
                Ok(UniqueMap(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1:
/// the scheme is case-insensitive, followed by one or more spaces).
/// `None` when the header uses another scheme or is not visible ASCII.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let start = rest.iter().position(|&b| b != b' ')?;
    if start == 0 {
        return None;
    }
    std::str::from_utf8(&rest[start..]).ok()
}

/// The `iss` of unverified claims, used only to choose which provider may
/// verify the token; never trusted on its own.
pub(crate) fn unverified_issuer(claims: &Claims) -> Option<&str> {
    claims.get("iss").and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.c2ln", b64(h), b64(p))
    }

    #[test]
    fn a_well_formed_token_splits_into_its_parts() {
        let t = tok(
            r#"{"alg":"ES256","kid":"k1","typ":"JWT","x5t":"abc"}"#,
            "{}",
        );
        let j = parse_compact(&t).unwrap();
        assert_eq!(j.header.alg, "ES256");
        assert_eq!(j.header.kid.as_deref(), Some("k1"));
        assert_eq!(j.signature_b64, "c2ln");
        assert_eq!(j.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
        assert!(parse_claims(j.payload_b64).unwrap().is_empty());
    }

    #[test]
    fn structural_defects_are_refused_as_malformed() {
        let h = b64(r#"{"alg":"ES256"}"#);
        let p = b64("{}");
        for (what, t) in [
            ("two parts", format!("{h}.{p}")),
            ("four parts", format!("{h}.{p}.c2ln.c2ln")),
            ("empty header", format!(".{p}.c2ln")),
            ("empty signature", format!("{h}.{p}.")),
            ("padding", format!("{h}.{p}.c2lnYQ==")),
            ("space", format!("{h}.{p}.c2ln ")),
            ("tab inside", format!("{h}.{p}.c2\tln")),
            ("newline", format!("{h}\n.{p}.c2ln")),
            ("std alphabet", format!("{h}.{p}.c2+/")),
            ("impossible length", format!("{h}.{p}.c2lnY")),
            ("trailing garbage", format!("{h}.{p}.c2ln.")),
            ("header not JSON", format!("{}.{p}.c2ln", b64("alg"))),
            ("header array", format!("{}.{p}.c2ln", b64("[1]"))),
            ("header no alg", format!("{}.{p}.c2ln", b64("{}"))),
            (
                "alg not string",
                format!("{}.{p}.c2ln", b64(r#"{"alg":1}"#)),
            ),
            (
                "trailing json",
                format!("{}.{p}.c2ln", b64(r#"{"alg":"ES256"}x"#)),
            ),
            (
                "dup alg",
                format!("{}.{p}.c2ln", b64(r#"{"alg":"ES256","alg":"none"}"#)),
            ),
            (
                "b64 false",
                format!("{}.{p}.c2ln", b64(r#"{"alg":"ES256","b64":false}"#)),
            ),
        ] {
            assert_eq!(
                parse_compact(&t).err(),
                Some(reason::MALFORMED),
                "{what}: {t}"
            );
        }
    }

    #[test]
    fn non_canonical_base64_bits_are_refused() {
        // "c2lnYR" and "c2lnYQ" differ only in unused low bits of the last char.
        assert!(b64_decode("YQ").is_ok());
        assert_eq!(b64_decode("YR"), Err(reason::MALFORMED));
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let t = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse_compact(&t).err(), Some(reason::TOO_LARGE));
    }

    #[test]
    fn claims_must_be_an_object_without_duplicates() {
        assert!(parse_claims(&b64(r#"{"sub":"a"}"#)).is_ok());
        for bad in [
            r#"{"sub":"a","sub":"admin"}"#,
            "[]",
            "1",
            "",
            r#"{"a":1} x"#,
        ] {
            assert_eq!(
                parse_claims(&b64(bad)).err(),
                Some(reason::MALFORMED),
                "{bad}"
            );
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_space() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bEaReR   abc"), Some("abc"));
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
    }
}

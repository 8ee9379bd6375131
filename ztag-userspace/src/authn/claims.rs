//! Claim checks shared by bearer tokens and client assertions: the time
//! window (`exp` required, `nbf`, `iat`, each with leeway), the audience
//! (`aud` a string or an array), and how scopes and identities are read.
//! A claim of the wrong JSON type is refused (`invalid_claim`), never
//! coerced.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{reason, token::Claims};

/// Seconds since the Unix epoch (0 if the clock is before it, which makes
/// every token look expired: fail closed).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A NumericDate claim (RFC 7519 §2): a non-negative JSON number, fractions
/// truncated. `Ok(None)` when absent.
pub(crate) fn numeric_date(claims: &Claims, name: &str) -> Result<Option<u64>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => {
            if let Some(n) = v.as_u64() {
                Ok(Some(n))
            } else if let Some(f) = v.as_f64()
                && f.is_finite()
                && f >= 0.0
            {
                Ok(Some(f as u64))
            } else {
                Err(reason::INVALID_CLAIM)
            }
        }
    }
}

/// Checks `exp` (required), `nbf` and `iat` against `now` with `leeway`
/// seconds of clock skew. Returns `exp`.
pub(crate) fn check_times(claims: &Claims, now: u64, leeway: u64) -> Result<u64, &'static str> {
    let exp = numeric_date(claims, "exp")?.ok_or(reason::MISSING_CLAIM)?;
    if now > exp.saturating_add(leeway) {
        return Err(reason::EXPIRED);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(reason::NOT_YET_VALID);
    }
    // A token "issued" in the future comes from a broken or hostile clock.
    if let Some(iat) = numeric_date(claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(reason::IAT_IN_FUTURE);
    }
    Ok(exp)
}

/// `aud` must be a string, or an array of strings, one of which `accepts`.
pub(crate) fn check_audience(
    claims: &Claims,
    accepts: impl Fn(&str) -> bool,
) -> Result<(), &'static str> {
    match claims.get("aud") {
        None => Err(reason::WRONG_AUDIENCE),
        Some(serde_json::Value::String(s)) => {
            if accepts(s) {
                Ok(())
            } else {
                Err(reason::WRONG_AUDIENCE)
            }
        }
        Some(serde_json::Value::Array(a)) => {
            let mut found = false;
            for v in a {
                let s = v.as_str().ok_or(reason::INVALID_CLAIM)?;
                found |= accepts(s);
            }
            if found {
                Ok(())
            } else {
                Err(reason::WRONG_AUDIENCE)
            }
        }
        Some(_) => Err(reason::INVALID_CLAIM),
    }
}

/// A claim that must be a string when present.
pub(crate) fn string_claim<'a>(
    claims: &'a Claims,
    name: &str,
) -> Result<Option<&'a str>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(reason::INVALID_CLAIM),
    }
}

/// Granted scopes: `scope` (RFC 8693 §4.2, a space-separated string)
/// and/or `scp` (an array of strings, or a space-separated string), merged
/// without duplicates.
pub(crate) fn scopes(claims: &Claims) -> Result<Vec<String>, &'static str> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        for t in s.split_ascii_whitespace() {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    };
    match claims.get("scope") {
        None => {}
        Some(serde_json::Value::String(s)) => add(s),
        Some(_) => return Err(reason::INVALID_CLAIM),
    }
    match claims.get("scp") {
        None => {}
        Some(serde_json::Value::String(s)) => add(s),
        Some(serde_json::Value::Array(a)) => {
            for v in a {
                add(v.as_str().ok_or(reason::INVALID_CLAIM)?);
            }
        }
        Some(_) => return Err(reason::INVALID_CLAIM),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn c(v: serde_json::Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_time_window_honours_leeway() {
        let now = 1_000_000;
        assert_eq!(
            check_times(&c(json!({"exp": now + 10})), now, 0),
            Ok(now + 10)
        );
        assert_eq!(
            check_times(&c(json!({"exp": now - 10})), now, 30),
            Ok(now - 10)
        );
        assert_eq!(
            check_times(&c(json!({"exp": now - 31})), now, 30),
            Err(reason::EXPIRED)
        );
        assert_eq!(
            check_times(&c(json!({})), now, 30),
            Err(reason::MISSING_CLAIM)
        );
        assert_eq!(
            check_times(&c(json!({"exp": "soon"})), now, 30),
            Err(reason::INVALID_CLAIM)
        );
        assert_eq!(
            check_times(&c(json!({"exp": -1})), now, 30),
            Err(reason::INVALID_CLAIM)
        );
        let nbf = c(json!({"exp": now + 100, "nbf": now + 31}));
        assert_eq!(check_times(&nbf, now, 30), Err(reason::NOT_YET_VALID));
        let nbf_ok = c(json!({"exp": now + 100, "nbf": now + 29}));
        assert!(check_times(&nbf_ok, now, 30).is_ok());
        let iat = c(json!({"exp": now + 100, "iat": now + 3600}));
        assert_eq!(check_times(&iat, now, 30), Err(reason::IAT_IN_FUTURE));
        let frac = c(json!({"exp": (now + 5) as f64 + 0.5}));
        assert_eq!(check_times(&frac, now, 0), Ok(now + 5));
    }

    #[test]
    fn audience_is_a_string_or_an_array() {
        let ok = |a: &str| a == "api";
        assert!(check_audience(&c(json!({"aud": "api"})), ok).is_ok());
        assert!(check_audience(&c(json!({"aud": ["x", "api"]})), ok).is_ok());
        assert_eq!(
            check_audience(&c(json!({"aud": ["x"]})), ok),
            Err(reason::WRONG_AUDIENCE)
        );
        assert_eq!(
            check_audience(&c(json!({})), ok),
            Err(reason::WRONG_AUDIENCE)
        );
        assert_eq!(
            check_audience(&c(json!({"aud": ["api", 1]})), ok),
            Err(reason::INVALID_CLAIM)
        );
        assert_eq!(
            check_audience(&c(json!({"aud": {"a": 1}})), ok),
            Err(reason::INVALID_CLAIM)
        );
    }

    #[test]
    fn scopes_merge_scope_and_scp() {
        let s = scopes(&c(json!({"scope": "a b  a", "scp": ["c", "b"]}))).unwrap();
        assert_eq!(s, ["a", "b", "c"]);
        assert_eq!(scopes(&c(json!({"scp": "x y"}))).unwrap(), ["x", "y"]);
        assert_eq!(
            scopes(&c(json!({"scope": ["a"]}))),
            Err(reason::INVALID_CLAIM)
        );
        assert_eq!(scopes(&c(json!({"scp": [1]}))), Err(reason::INVALID_CLAIM));
    }
}

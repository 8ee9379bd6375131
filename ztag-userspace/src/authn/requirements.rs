//! Whether an authenticated principal meets a route's `require_scopes`
//! (every one granted) and `require_claims` (each claim equal to the
//! expected value). Failing either is 403 `insufficient_scope`.

use super::{AuthnError, Principal};

/// Checks a route's requirements against a principal.
///
/// * `require_scopes`: every scope must be granted. The error carries the
///   route's whole scope list, which `WWW-Authenticate` returns as `scope`
///   (RFC 6750 §3: the scopes needed for the resource).
/// * `require_claims`: each claim must equal the expected JSON value
///   (numbers compare by value, so `1` equals `1.0`); when the claim is an
///   array and the expected value is not, the array must contain it
///   (`groups = "admins"` matches `"groups": ["admins", "dev"]`). A missing
///   claim fails. The error then carries no scope.
pub fn check_requirements(
    principal: &Principal,
    require_scopes: &[String],
    require_claims: &[(String, serde_json::Value)],
) -> Result<(), AuthnError> {
    if !require_scopes
        .iter()
        .all(|s| principal.scopes.iter().any(|g| g == s))
    {
        return Err(AuthnError::InsufficientScope(require_scopes.join(" ")));
    }
    for (name, expected) in require_claims {
        let ok = principal
            .claims
            .get(name.as_str())
            .is_some_and(|actual| claim_matches(actual, expected));
        if !ok {
            return Err(AuthnError::InsufficientScope(String::new()));
        }
    }
    Ok(())
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| x == y)
        }
        _ => a == b,
    }
}

fn claim_matches(actual: &serde_json::Value, expected: &serde_json::Value) -> bool {
    if json_eq(actual, expected) {
        return true;
    }
    match (actual, expected) {
        (serde_json::Value::Array(items), e) if !e.is_array() => {
            items.iter().any(|i| json_eq(i, e))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::authn::Method;

    fn p() -> Principal {
        Principal {
            provider: "corp".into(),
            method: Method::Jwt,
            subject: "alice".into(),
            issuer: None,
            client_id: None,
            scopes: vec!["api:read".into(), "api:write".into()],
            claims: Arc::new(
                json!({"email_verified": true, "level": 3, "groups": ["admins", "dev"], "tenant": "t1"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            expires_at: None,
        }
    }

    fn claims(v: serde_json::Value) -> Vec<(String, serde_json::Value)> {
        v.as_object().unwrap().clone().into_iter().collect()
    }

    #[test]
    fn scopes_must_all_be_granted() {
        let none = claims(json!({}));
        assert!(check_requirements(&p(), &["api:read".into()], &none).is_ok());
        let e = check_requirements(&p(), &["api:read".into(), "admin".into()], &none).unwrap_err();
        match &e {
            AuthnError::InsufficientScope(s) => assert_eq!(s, "api:read admin"),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn claims_must_match() {
        let ok = claims(
            json!({"email_verified": true, "level": 3.0, "groups": "admins", "tenant": "t1"}),
        );
        assert!(check_requirements(&p(), &[], &ok).is_ok());
        for bad in [
            json!({"email_verified": false}),
            json!({"level": 4}),
            json!({"groups": "ops"}),
            json!({"missing": 1}),
            json!({"tenant": ["t1"]}),
        ] {
            assert!(
                check_requirements(&p(), &[], &claims(bad.clone())).is_err(),
                "{bad}"
            );
        }
    }
}

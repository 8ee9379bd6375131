//! Admin API for the agent module: `/v1/vault`, `/v1/approvals`,
//! `/v1/audit`. Secrets go in (`POST /v1/vault`) and never come out.

use hyper::{Method, Request, StatusCode, body::Incoming};
use serde::{Deserialize, Serialize};

use super::{MAX_JSON_BODY, Resp, Shared, body, error, json, query_param};
use crate::agent::{
    approvals::{DecideError, Status},
    vault::{Secret, VaultError},
};

/// Body of `POST /v1/vault`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPut {
    /// The user (principal subject).
    pub user: String,
    /// The connection.
    pub connection: String,
    /// API key or access token.
    pub token: String,
    /// OAuth refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds until `token` expires.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Body of `POST /v1/vault/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRemove {
    /// The user.
    pub user: String,
    /// The connection.
    pub connection: String,
}

/// Body of `POST /v1/approvals/{id}/approve|deny`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Who decides (shown in the audit log).
    pub by: String,
    /// Why.
    #[serde(default)]
    pub note: Option<String>,
}

fn vault_error(e: VaultError) -> Resp {
    match e {
        VaultError::BadInput(_) => error(StatusCode::BAD_REQUEST, e),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A decision for an approval another gateway of the fleet holds.
pub async fn remote_decision(
    shared: &Shared,
    id: &str,
    approve: bool,
    by: &str,
    note: Option<&str>,
) -> Resp {
    use crate::fleet::RemoteDecideError as E;
    let Some(f) = &shared.fleet else {
        return error(StatusCode::NOT_FOUND, format!("no approval {id}"));
    };
    match f.decide_remote(id, approve, by, note).await {
        Ok(a) => json(StatusCode::OK, &a),
        Err(e @ E::NotFound) => error(StatusCode::NOT_FOUND, e),
        Err(e @ E::Decided(_)) => error(StatusCode::CONFLICT, e),
        Err(e @ E::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Handles `/v1/vault…`, `/v1/approvals…`, `/v1/audit`; `None`: not ours.
pub async fn handle(req: Request<Incoming>, parts: &[&str], shared: &Shared) -> Option<Resp> {
    if !matches!(parts.get(1), Some(&"vault" | &"approvals" | &"audit")) {
        return None;
    }
    let Some(agent) = &shared.agent else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent module is not running",
        ));
    };
    let method = req.method().clone();
    let r = match (method, &parts[1..]) {
        (Method::GET, ["vault"]) => match &agent.vault {
            None => error(StatusCode::NOT_FOUND, "no [agent.vault] configured"),
            Some(v) => {
                let user = query_param(&req, "user");
                match v.list(user.as_deref()) {
                    Ok(l) => json(StatusCode::OK, &l),
                    Err(e) => vault_error(e),
                }
            }
        },
        (Method::POST, ["vault"]) => match &agent.vault {
            None => error(StatusCode::NOT_FOUND, "no [agent.vault] configured"),
            Some(v) => {
                let b = match body(req, MAX_JSON_BODY).await {
                    Ok(b) => b,
                    Err(r) => return Some(r),
                };
                match serde_json::from_slice::<VaultPut>(&b) {
                    Err(e) => error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
                    Ok(p) => {
                        let s = Secret {
                            token: p.token,
                            refresh_token: p.refresh_token,
                            expires_at_ms: p
                                .expires_in
                                .map(|s| crate::state::now_ms() + s as i64 * 1000),
                        };
                        match v.put(&p.user, &p.connection, &s) {
                            Ok(()) => json(
                                StatusCode::CREATED,
                                &serde_json::json!({"user": p.user, "connection": p.connection, "key_id": v.key_id()}),
                            ),
                            Err(e) => vault_error(e),
                        }
                    }
                }
            }
        },
        (Method::POST, ["vault", "remove"]) => match &agent.vault {
            None => error(StatusCode::NOT_FOUND, "no [agent.vault] configured"),
            Some(v) => {
                let b = match body(req, MAX_JSON_BODY).await {
                    Ok(b) => b,
                    Err(r) => return Some(r),
                };
                match serde_json::from_slice::<VaultRemove>(&b) {
                    Err(e) => error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
                    Ok(r) => match v.remove(&r.user, &r.connection) {
                        Ok(true) => json(StatusCode::OK, &serde_json::json!({"removed": true})),
                        Ok(false) => error(
                            StatusCode::NOT_FOUND,
                            format!("no vault entry for {} on {}", r.user, r.connection),
                        ),
                        Err(e) => vault_error(e),
                    },
                }
            }
        },
        (Method::POST, ["vault", "rotate"]) => match &agent.vault {
            None => error(StatusCode::NOT_FOUND, "no [agent.vault] configured"),
            Some(v) => match v.rotate() {
                Ok(n) => json(
                    StatusCode::OK,
                    &serde_json::json!({"resealed": n, "key_id": v.key_id()}),
                ),
                Err(e) => vault_error(e),
            },
        },
        (Method::GET, ["approvals"]) => {
            let status = match query_param(&req, "status").as_deref() {
                None | Some("all") => None,
                Some("pending") => Some(Status::Pending),
                Some("approved") => Some(Status::Approved),
                Some("denied") => Some(Status::Denied),
                Some("expired") => Some(Status::Expired),
                Some(o) => {
                    return Some(error(
                        StatusCode::BAD_REQUEST,
                        format!("status {o:?} is not pending, approved, denied, expired or all"),
                    ));
                }
            };
            let limit = query_param(&req, "limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            match agent.approvals.list(status, limit) {
                Ok(l) => match &shared.fleet {
                    None => json(StatusCode::OK, &l),
                    Some(f) => {
                        // The other gateways' too (with their node).
                        let mut v: Vec<serde_json::Value> = l
                            .iter()
                            .filter_map(|a| serde_json::to_value(a).ok())
                            .collect();
                        v.extend(
                            f.remote_approvals()
                                .await
                                .into_iter()
                                .filter(|a| status.is_none_or(|s| a["status"] == s.as_str())),
                        );
                        json(StatusCode::OK, &v)
                    }
                },
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (Method::GET, ["approvals", id]) => match agent.approvals.get(id) {
            Ok(Some(a)) => json(StatusCode::OK, &a),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no approval {id}")),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (Method::POST, ["approvals", id, verb @ ("approve" | "deny")]) => {
            let id = id.to_string();
            let approve = *verb == "approve";
            let b = match body(req, MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(r) => return Some(r),
            };
            let d: Decision = if b.is_empty() {
                Decision::default()
            } else {
                match serde_json::from_slice(&b) {
                    Ok(d) => d,
                    Err(e) => {
                        return Some(error(
                            StatusCode::BAD_REQUEST,
                            format!("bad JSON body: {e}"),
                        ));
                    }
                }
            };
            if d.by.trim().is_empty() {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "\"by\" must name the approver (it goes into the audit log)",
                ));
            }
            match agent
                .approvals
                .decide(&id, approve, d.by.trim(), d.note.as_deref())
            {
                Ok(a) => json(StatusCode::OK, &a),
                Err(DecideError::NotFound(_)) if shared.fleet.is_some() => {
                    remote_decision(shared, &id, approve, d.by.trim(), d.note.as_deref()).await
                }
                Err(e @ DecideError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
                Err(e @ DecideError::Decided { .. }) => error(StatusCode::CONFLICT, e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (Method::GET, ["audit"]) => {
            agent.audit.flush();
            let limit = query_param(&req, "limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            let kind = query_param(&req, "kind");
            match agent.audit.recent(kind.as_deref(), limit) {
                Ok(l) => json(StatusCode::OK, &l),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        _ => return None,
    };
    Some(r)
}

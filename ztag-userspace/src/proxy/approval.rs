//! The approve and credentials phases of the request path, the status URL
//! of async approvals, and the sender of approved async requests (see
//! [`crate::agent::approvals`]).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    APPROVAL_STATUS_PREFIX, Conn, Gateway, ProxyError, Record, RespBody, config::RouteConfig, full,
    inspect, mcp,
};
use crate::{
    agent::{
        approvals::{self, Mode, NewApproval, Status, StoredRequest, StoredResult},
        audit,
        mcp::code,
    },
    authn::{Credentials, Principal},
};

fn json_response(status: StatusCode, v: &Value) -> Response<RespBody> {
    mcp::rpc_response(status, v)
}

impl Gateway {
    /// The approve phase. `Ok(None)`: approved, go on; `Ok(Some(r))`: the
    /// answer (202, or a JSON-RPC refusal on an MCP route).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn approve(
        &self,
        conn: &Conn,
        route: &RouteConfig,
        principal: Option<&Principal>,
        st: Option<&mcp::State>,
        stored: StoredRequest,
        proto: &str,
        host: &str,
        rec: &mut Record,
    ) -> Result<Option<Response<RespBody>>, ProxyError> {
        let agent = self.agent.as_ref().ok_or(ProxyError::Internal)?;
        let tool = st.and_then(|s| s.tool.as_ref());
        let (why, timeout, mode) = match (st.and_then(|s| s.approval.clone()), &route.approval) {
            (Some((why, t)), _) => (why, t, Mode::Hold),
            (None, Some(a)) => (
                format!("route {} requires approval", route.name),
                a.timeout,
                // A JSON-RPC call is answered on its own request.
                if route.mcp.is_some() {
                    Mode::Hold
                } else {
                    a.mode
                },
            ),
            (None, None) => return Ok(None),
        };
        let timeout = timeout.unwrap_or(agent.approvals.default_timeout());
        let target = match (tool, &route.mcp) {
            (Some((t, _)), Some(m)) => format!("{}/{t}", m.server),
            _ => format!("{} {}", stored.method, stored.path_and_query),
        };
        let summary = match tool {
            Some((_, args)) => args.to_string(),
            None => String::from_utf8_lossy(&approvals::unb64(&stored.body_b64)).into_owned(),
        };
        let (a, mut rx) = agent
            .approvals
            .create(NewApproval {
                mode,
                route: route.name.clone(),
                target,
                subject: principal.map(|p| p.subject.clone()),
                client_id: principal.and_then(|p| p.client_id.clone()),
                source: conn.peer.ip().to_string(),
                why,
                summary,
                timeout,
                request: stored,
            })
            .map_err(|e| {
                warn!("approval not recorded: {e}");
                ProxyError::Internal
            })?;
        let url = match agent.approvals.public_url() {
            Some(base) => format!("{base}{APPROVAL_STATUS_PREFIX}{}", a.id),
            None => format!("{proto}://{host}{APPROVAL_STATUS_PREFIX}{}", a.id),
        };
        if mode == Mode::Async {
            rec.reason = Some("approval_pending");
            let mut r = json_response(
                StatusCode::ACCEPTED,
                &json!({
                    "approval": a.id,
                    "status": "pending",
                    "status_url": url,
                    "expires_at_ms": a.deadline_ms,
                }),
            );
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(Some(r));
        }
        // Hold: wait for the decision (the sweeper expires it at the
        // deadline; a little slack, then expire it here).
        let until = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
        let status = loop {
            let s = *rx.borrow_and_update();
            if s != Status::Pending {
                break s;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break *rx.borrow() },
                _ = tokio::time::sleep_until(until) => break Status::Pending,
            }
        };
        agent.approvals.release(&a.id);
        let status = match status {
            Status::Pending => agent.approvals.expire_now(&a.id).unwrap_or(Status::Expired),
            s => s,
        };
        // Decided between the wait and the release: what the row says.
        let status = if status == Status::Pending {
            Status::Expired
        } else {
            status
        };
        let (err, label) = match status {
            Status::Approved => return Ok(None),
            Status::Denied => (ProxyError::ApprovalDenied, "denied by an approver"),
            _ => (ProxyError::ApprovalExpired, "no decision in time"),
        };
        if let Some(st) = st
            && st.tool.is_some()
        {
            self.audit_tool(conn, route, principal, st, "deny", Some(err.reason()));
            rec.reason = Some(err.reason());
            return Ok(Some(mcp::rpc_response(
                StatusCode::OK,
                &crate::agent::mcp::error(
                    &st.id,
                    code::FORBIDDEN,
                    format!("tool call not approved: {label} (approval {})", a.id),
                    Some(json!({"reason": err.reason(), "approval": a.id})),
                ),
            )));
        }
        Err(err)
    }

    /// The credentials phase: the header carrying the caller's upstream
    /// credential for `connection`.
    pub(super) async fn credential(
        &self,
        connection: &str,
        p: &Principal,
        headers: &HeaderMap,
    ) -> Result<(HeaderName, HeaderValue), ProxyError> {
        let agent = self.agent.as_ref().ok_or(ProxyError::Internal)?;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            });
        agent
            .credentials
            .header(connection, &p.subject, bearer)
            .await
            .map_err(|e| {
                warn!(connection, subject = %p.subject, "no upstream credential: {e}");
                ProxyError::Credential(e.reason())
            })
    }

    /// `GET /.ztag/approvals/{id}`: where an async approval stands, and
    /// once sent, the upstream's answer. Only the requester sees it.
    pub(super) async fn approval_status(
        &self,
        conn: &Conn,
        id: &str,
        parts: &http::request::Parts,
    ) -> Result<Response<RespBody>, ProxyError> {
        let agent = self.agent.as_ref().ok_or(ProxyError::NoRoute)?;
        if parts.method != http::Method::GET {
            return Err(ProxyError::MethodNotAllowed);
        }
        if !approvals::valid_id(id) {
            return Err(ProxyError::NoRoute);
        }
        let local = agent.approvals.get(id).map_err(|_| ProxyError::Internal)?;
        // Fleet mode: an approval another gateway holds.
        let (a, remote) = match local {
            Some(a) => (a, false),
            None => match &self.fleet {
                Some(f) => (
                    f.remote_approval(id).await.ok_or(ProxyError::NoRoute)?,
                    true,
                ),
                None => return Err(ProxyError::NoRoute),
            },
        };
        let ri = self
            .cfg
            .routes
            .iter()
            .position(|r| r.name == a.route)
            .ok_or(ProxyError::NoRoute)?;
        if !self.cfg.routes[ri].public {
            let p = self
                .authn
                .authenticate(
                    &self.routes[ri].methods,
                    Credentials {
                        authorization: parts.headers.get(header::AUTHORIZATION),
                        client_cert: conn.client_cert.as_deref(),
                    },
                )
                .await?;
            if a.subject.as_deref() != Some(p.subject.as_str()) {
                // Someone else's approval: as if it did not exist.
                return Err(ProxyError::NoRoute);
            }
        }
        let body = json!({
            "approval": a.id,
            "status": a.status,
            "target": a.target,
            "expires_at_ms": a.deadline_ms,
            "decided_by": a.decided_by,
            "note": a.note,
        });
        match a.status {
            Status::Pending => {
                let mut r = json_response(StatusCode::ACCEPTED, &body);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                Ok(r)
            }
            Status::Denied | Status::Expired => Ok(json_response(StatusCode::FORBIDDEN, &body)),
            Status::Approved => match if remote {
                self.remote_result(agent, id).await
            } else {
                agent
                    .approvals
                    .result(id)
                    .map_err(|_| ProxyError::Internal)?
            } {
                None => {
                    let mut r = json_response(StatusCode::ACCEPTED, &body);
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    Ok(r)
                }
                Some(res) => {
                    let mut r = Response::new(full(approvals::unb64(&res.body_b64)));
                    *r.status_mut() =
                        StatusCode::from_u16(res.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    if let Some(ct) = res
                        .content_type
                        .and_then(|c| HeaderValue::from_str(&c).ok())
                    {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    if let Ok(v) = HeaderValue::from_str(&a.id) {
                        r.headers_mut().insert("x-ztag-approval", v);
                    }
                    Ok(r)
                }
            },
        }
    }

    /// Another gateway's answer to an approved request, from the fleet's
    /// sealed cache.
    async fn remote_result(&self, agent: &crate::agent::Agent, id: &str) -> Option<StoredResult> {
        let c = agent.credentials.shared_cache()?;
        let raw = c.get(&format!("approval-result:{id}")).await?;
        serde_json::from_slice(&raw).ok()
    }

    /// Sends approved async requests (and holds whose caller has gone) as
    /// they arrive, keeping each answer for the status URL. Runs forever.
    pub async fn run_approved(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        while let Some(id) = rx.recv().await {
            let me = self.clone();
            tokio::spawn(async move {
                let res = me.send_approved(&id).await;
                let Some(agent) = &me.agent else { return };
                let (status, label) = match &res {
                    Ok(r) => (r.status, "sent"),
                    Err(e) => (e.status().as_u16(), e.reason()),
                };
                let stored = match res {
                    Ok(r) => r,
                    Err(e) => StoredResult {
                        status,
                        content_type: Some("application/json".into()),
                        body_b64: approvals::b64(
                            format!(
                                "{{\"error\":\"approved request not sent\",\"reason\":\"{}\"}}",
                                e.reason()
                            )
                            .as_bytes(),
                        ),
                    },
                };
                if let Err(e) = agent.approvals.store_result(&id, &stored) {
                    warn!(id, "approved request's answer not stored: {e}");
                }
                // Fleet mode: the answer, sealed, for the other gateways'
                // status URL (kept as long as the local one).
                if let Some(c) = agent.credentials.shared_cache()
                    && let Ok(raw) = serde_json::to_vec(&stored)
                {
                    c.put(
                        &format!("approval-result:{id}"),
                        raw,
                        std::time::Duration::from_secs(24 * 3600),
                    )
                    .await;
                }
                info!(id, status, result = label, "approved request sent");
                let a = agent.approvals.get(&id).ok().flatten();
                agent.audit.write(audit::Record {
                    time_ms: crate::state::now_ms(),
                    kind: "approval".into(),
                    route: a.as_ref().map(|a| a.route.clone()).unwrap_or_default(),
                    subject: a.as_ref().and_then(|a| a.subject.clone()),
                    client_id: a.as_ref().and_then(|a| a.client_id.clone()),
                    source: a.as_ref().and_then(|a| a.source.clone()),
                    target: a.as_ref().map(|a| a.target.clone()).unwrap_or_default(),
                    decision: "executed".into(),
                    reason: Some(format!("{label} {status}")),
                    detail: Some(json!({"approval": id}).to_string()),
                    ..Default::default()
                });
            });
        }
    }

    async fn send_approved(&self, id: &str) -> Result<StoredResult, ProxyError> {
        let agent = self.agent.as_ref().ok_or(ProxyError::Internal)?;
        let a = found(agent.approvals.get(id))?;
        let req = found(agent.approvals.request(id))?;
        let ri = self
            .cfg
            .routes
            .iter()
            .position(|r| r.name == a.route)
            .ok_or(ProxyError::NoRoute)?;
        let route = &self.cfg.routes[ri];
        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        if let Some(c) = &route.credential {
            let subject = a.subject.as_deref().ok_or(ProxyError::Forbidden)?;
            let (n, v) = agent
                .credentials
                .header(c, subject, None)
                .await
                .map_err(|e| {
                    warn!(id, connection = %c, "approved request: no upstream credential: {e}");
                    ProxyError::Credential(e.reason())
                })?;
            headers.insert(n, v);
        }
        let pool = &self.pools[route.upstream];
        if pool.h2 {
            headers.remove(header::HOST);
        }
        let lease = pool.pick(None).ok_or(ProxyError::NoPeer)?;
        let uri: Uri = format!("{}{}", lease.peer.base, req.path_and_query)
            .parse()
            .map_err(|_| ProxyError::Internal)?;
        let body = approvals::unb64(&req.body_b64);
        let mut up = Request::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *up.method_mut() = req.method.parse().map_err(|_| ProxyError::Internal)?;
        *up.uri_mut() = uri;
        *up.version_mut() = if pool.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        *up.headers_mut() = headers;
        let resp: Response<Incoming> = tokio::time::timeout(
            self.cfg.limits.upstream_response_timeout,
            pool.client().request(up),
        )
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
        .map_err(|_| ProxyError::UpstreamConnect)?;
        let (parts, body) = resp.into_parts();
        let limit = self.cfg.limits.max_body_bytes as usize;
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| ProxyError::ResponseUninspectable)?
            .to_bytes();
        let plan = &self.routes[ri].plan;
        let bytes = if plan.is_empty() {
            bytes
        } else {
            let ctx = inspect::Ctx {
                route: route.name.clone(),
                source: a
                    .source
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                principal: a.subject.clone(),
                client_id: a.client_id.clone(),
                events: self.events.clone(),
            };
            inspect::whole(&self.inspector, plan, &ctx, bytes)
                .map_err(|_| ProxyError::ResponseBlocked)?
                .0
        };
        Ok(StoredResult {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body_b64: approvals::b64(&bytes),
        })
    }
}

/// A row that must exist.
fn found<T>(r: rusqlite::Result<Option<T>>) -> Result<T, ProxyError> {
    r.ok().flatten().ok_or(ProxyError::Internal)
}

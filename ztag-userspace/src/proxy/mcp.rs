//! The MCP gateway on the request path (rules in [`crate::agent::mcp`]):
//! RFC 9728 metadata, JSON-RPC validation, per-tool authorisation and
//! argument rules, `tools/list` filtering and the tool-call audit.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::debug;

use super::{Conn, Gateway, ProxyError, RespBody, config::RouteConfig, full, inspect};
use crate::{
    agent::{
        audit::Record,
        mcp::{self as rules, Kind, McpRoute, code},
    },
    authn::Principal,
    authz::policy::{CheckPolicy, RequestFacts},
};

/// What the request phase learnt about one MCP message.
pub struct State {
    /// The JSON-RPC id (null for notifications).
    pub id: Value,
    /// The method ("" for responses).
    pub method: String,
    /// `tools/call`: the tool and its arguments.
    pub tool: Option<(String, Value)>,
    /// Why the call needs a person, and how long it may wait.
    pub approval: Option<(String, Option<std::time::Duration>)>,
    /// When the request started (tool-call durations).
    pub started: Instant,
    /// Federation: where the call goes.
    pub fed: Option<super::mcp_fed::Target>,
}

/// A JSON answer.
pub fn rpc_response(status: StatusCode, body: &Value) -> Response<RespBody> {
    let mut r = Response::new(full(format!("{body}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

type Refused = (&'static str, Response<RespBody>);

fn refuse(reason: &'static str, id: &Value, code: i64, msg: String) -> Refused {
    (
        reason,
        rpc_response(
            StatusCode::OK,
            &rules::error(id, code, msg, Some(json!({ "reason": reason }))),
        ),
    )
}

/// A header that contradicts the body: 400, -32600.
fn mismatch(id: &Value, what: &str) -> Refused {
    (
        "mcp_header_mismatch",
        rpc_response(
            StatusCode::BAD_REQUEST,
            &rules::error(id, code::INVALID_REQUEST, what, None),
        ),
    )
}

impl Gateway {
    /// `GET /.well-known/oauth-protected-resource[/path]`: the metadata of
    /// the MCP route whose resource it is.
    pub(super) fn protected_resource_metadata(
        &self,
        path: &str,
        method: &Method,
    ) -> Option<Response<RespBody>> {
        let m = self
            .cfg
            .routes
            .iter()
            .filter_map(|r| r.mcp.as_ref())
            .find(|m| m.metadata_path == path)?;
        if method != Method::GET && method != Method::HEAD {
            let mut r = ProxyError::MethodNotAllowed.response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(r);
        }
        let mut r = rpc_response(StatusCode::OK, &m.metadata());
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        Some(r)
    }

    async fn allowed(
        &self,
        route: &RouteConfig,
        check: &CheckPolicy,
        facts: &RequestFacts<'_>,
        captures: &[(String, String)],
    ) -> bool {
        match &self.authz {
            Some(d) => self.fga_check(route, d, check, facts, captures).await,
            None => false,
        }
    }

    /// Whether `principal` may call `tool` (with `args`); `Err` names why not.
    async fn tool_allowed(
        &self,
        client_ip: std::net::IpAddr,
        route: &RouteConfig,
        m: &McpRoute,
        principal: &Principal,
        tool: &str,
        args: Option<&Value>,
    ) -> Result<(), (&'static str, String)> {
        let rule = m.rule(tool);
        if rule.is_some_and(|r| r.deny) {
            return Err((
                "tool_denied",
                format!("tool {tool} is not available through this gateway"),
            ));
        }
        // Federation: `server__tool`; checks see the server's own names.
        let (server, tool) = if m.servers.is_empty() {
            (m.server.as_str(), tool)
        } else {
            match m.split_tool(tool) {
                Some((s, t)) => (s.name.as_str(), t),
                None => return Err(("tool_unknown", format!("unknown tool {tool}"))),
            }
        };
        let empty = json!({});
        let caps = rules::captures(server, tool, args.unwrap_or(&empty));
        let path = route.path_prefix.as_str();
        let facts = RequestFacts {
            principal: Some(principal),
            path,
            method: &Method::POST,
            client_ip,
        };
        let denied = || {
            (
                "tool_forbidden",
                format!("not authorised to call {server}/{tool}"),
            )
        };
        if let Some(c) = &m.tool_check
            && !self.allowed(route, c, &facts, &caps).await
        {
            return Err(denied());
        }
        // Argument-level rules apply to calls (a listing has no arguments).
        if let (Some(r), Some(args)) = (rule, args) {
            if let Some(a) = r.bad_argument(args) {
                return Err((
                    "tool_argument_forbidden",
                    format!("argument {a:?} of {tool} is not allowed"),
                ));
            }
            for c in &r.checks {
                if !self.allowed(route, c, &facts, &caps).await {
                    return Err(denied());
                }
            }
        }
        Ok(())
    }

    /// The request phase for one POSTed MCP message. `Err` is the answer
    /// (a JSON-RPC error) with its reason label.
    pub(super) async fn mcp_request(
        &self,
        conn: &Conn,
        route: &RouteConfig,
        m: &McpRoute,
        principal: &Principal,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<State, Refused> {
        let started = Instant::now();
        let (msg, kind) = rules::classify(body).map_err(|r| {
            (
                "mcp_invalid_message",
                rpc_response(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
                    &r.body,
                ),
            )
        })?;
        let (id, method) = match &kind {
            Kind::Request { id, method } => (id.clone(), method.clone()),
            Kind::Notification { method } => (Value::Null, method.clone()),
            Kind::Response { id } => (id.clone(), String::new()),
        };
        // The modern transport repeats the method and tool name in headers;
        // they must say what the body says.
        let hdr = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(h) = hdr("mcp-method")
            && !method.is_empty()
            && h != method
        {
            return Err(mismatch(
                &id,
                "Mcp-Method header does not match the body's method",
            ));
        }
        let mut st = State {
            id: id.clone(),
            method: method.clone(),
            tool: None,
            approval: None,
            started,
            fed: None,
        };
        if !m.servers.is_empty() {
            let ctx = inspect::Ctx {
                route: route.name.clone(),
                source: conn.peer.ip(),
                principal: Some(principal.subject.clone()),
                client_id: principal.client_id.clone(),
                events: self.events.clone(),
            };
            st.fed = self
                .fed_request(route, m, principal, headers, &msg, &id, &method, ctx)
                .await?;
        }
        if method != "tools/call" {
            return Ok(st);
        }
        let (tool, args) = rules::tool_call(&msg)
            .map_err(|e| refuse("mcp_invalid_params", &id, code::INVALID_PARAMS, e))?;
        if let Some(h) = hdr("mcp-name")
            && h != tool
        {
            return Err(mismatch(&id, "Mcp-Name header does not match params.name"));
        }
        st.tool = Some((tool.clone(), args));
        let args = &st.tool.as_ref().expect("set").1;
        if let Err((reason, why)) = self
            .tool_allowed(conn.peer.ip(), route, m, principal, &tool, Some(args))
            .await
        {
            debug!(route = %route.name, subject = %principal.subject, tool, reason, "MCP tool call refused");
            self.audit_tool(conn, route, Some(principal), &st, "deny", Some(reason));
            return Err(refuse(
                reason,
                &id,
                code::FORBIDDEN,
                format!("tool call refused by the gateway: {why}"),
            ));
        }
        if let Some(r) = m.rule(&tool)
            && r.needs_approval(args, || self.inspector.mcp_request_score(&msg))
        {
            let why = if r.approval_when_args.is_empty() && r.approval_when_score_above.is_none() {
                format!("tool {tool} requires approval")
            } else {
                format!("tool {tool} requires approval for these arguments")
            };
            st.approval = Some((why, r.approval_timeout));
        }
        Ok(st)
    }

    /// Audits a tool call.
    pub(super) fn audit_tool(
        &self,
        conn: &Conn,
        route: &RouteConfig,
        principal: Option<&Principal>,
        st: &State,
        decision: &str,
        reason: Option<&str>,
    ) {
        let (Some(agent), Some((tool, _))) = (&self.agent, &st.tool) else {
            return;
        };
        let server = route.mcp.as_ref().map(|m| m.server.as_str()).unwrap_or("-");
        agent.audit.write(Record {
            time_ms: crate::state::now_ms(),
            kind: "tool_call".into(),
            route: route.name.clone(),
            subject: principal.map(|p| p.subject.clone()),
            client_id: principal.and_then(|p| p.client_id.clone()),
            source: Some(conn.peer.ip().to_string()),
            target: format!("{server}/{tool}"),
            decision: decision.into(),
            reason: reason.map(str::to_string),
            duration_us: Some(st.started.elapsed().as_micros() as i64),
            detail: None,
            ..Default::default()
        });
    }

    /// A `tools/list` answer, JSON or SSE: only the tools the caller may
    /// call stay; then the route's response inspection as usual.
    pub(super) async fn mcp_tools_list(
        &self,
        route: &RouteConfig,
        principal: Option<&Principal>,
        plan: &inspect::ResponsePlan,
        resp: Response<Incoming>,
        ctx: inspect::Ctx,
        limit: usize,
    ) -> Result<Response<RespBody>, ProxyError> {
        let (parts, body) = resp.into_parts();
        if inspect::is_encoded(&parts.headers) {
            return Err(ProxyError::ResponseUninspectable);
        }
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::ResponseUninspectable);
            }
            Err(_) => return Err(ProxyError::UpstreamProtocol),
        };
        let m = route.mcp.as_ref().ok_or(ProxyError::Internal)?;
        let p = principal.ok_or(ProxyError::Forbidden)?;
        let ip = ctx.source;
        let sse = inspect::is_sse(&parts.headers);
        let mut flag = None;
        let mut out = Vec::with_capacity(bytes.len());
        if sse {
            let mut parser = crate::inspect::codec::SseParser::new(limit);
            let mut events = parser
                .push(&bytes)
                .map_err(|_| ProxyError::ResponseUninspectable)?;
            let tail = parser.finish();
            if !tail.is_empty() {
                events.push(tail);
            }
            for ev in events {
                match crate::inspect::codec::sse_data(&ev)
                    .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                {
                    Some(v) => {
                        // Keep the event's other fields (id:, event:).
                        for line in String::from_utf8_lossy(&ev).lines() {
                            if !line.starts_with("data:") && !line.is_empty() {
                                out.extend_from_slice(line.as_bytes());
                                out.push(b'\n');
                            }
                        }
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(
                            &self
                                .judge_tools(ip, route, m, p, plan, &ctx, v, &mut flag)
                                .await?,
                        );
                        out.extend_from_slice(b"\n\n");
                    }
                    // Not JSON (a comment, a retry: line): the server's
                    // framing, passed as it is.
                    None => {
                        out.extend_from_slice(&ev);
                        if !ev.ends_with(b"\n\n") {
                            out.extend_from_slice(b"\n\n");
                        }
                    }
                }
            }
        } else {
            let v: Value =
                serde_json::from_slice(&bytes).map_err(|_| ProxyError::UpstreamProtocol)?;
            out = self
                .judge_tools(ip, route, m, p, plan, &ctx, v, &mut flag)
                .await?
                .to_vec();
        }
        Ok(self.whole_response(parts, Bytes::from(out), flag))
    }

    /// One `tools/list` message: the tools the caller may call, then the
    /// route's response inspection (tool descriptions, content filter).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn judge_tools(
        &self,
        ip: std::net::IpAddr,
        route: &RouteConfig,
        m: &McpRoute,
        p: &Principal,
        plan: &inspect::ResponsePlan,
        ctx: &inspect::Ctx,
        mut v: Value,
        flag: &mut Option<HeaderValue>,
    ) -> Result<Bytes, ProxyError> {
        if let Some(Value::Array(tools)) = v.pointer_mut("/result/tools") {
            let all = std::mem::take(tools);
            let mut keep = Vec::with_capacity(all.len());
            for t in all {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if self.tool_allowed(ip, route, m, p, name, None).await.is_ok() {
                    keep.push(t);
                }
            }
            if let Some(Value::Array(tools)) = v.pointer_mut("/result/tools") {
                *tools = keep;
            }
        }
        let (b, f) = inspect::whole(&self.inspector, plan, ctx, Bytes::from(v.to_string()))
            .map_err(|_| ProxyError::ResponseBlocked)?;
        if f.is_some() {
            *flag = f;
        }
        Ok(b)
    }
}

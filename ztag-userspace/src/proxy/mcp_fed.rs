//! MCP federation: several MCP servers behind one endpoint. The gateway is
//! the MCP server its clients see: it opens a session with every backend
//! on `initialize`, lists their tools under `server__tool` names (only
//! those the caller may call), answers `ping` itself, and sends each
//! `tools/call` to the server that owns the tool (under its own name, in
//! that server's session) through the usual request path — inspection,
//! approval, credentials, response filtering. Gateway sessions are bound
//! to the subject that opened them and idle out after an hour; only tools
//! are federated (resources and prompts: -32601), and there is no GET
//! stream (405), as the transport allows.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{Gateway, ProxyError, RespBody, config::RouteConfig, inspect, mcp::rpc_response};
use crate::{
    agent::mcp::{self as rules, McpRoute, Server, code},
    authn::Principal,
};

/// One client session of a federating route. It lives in its id: sealed
/// (AES-256-GCM) with the fleet's session key (`fleet.session_key_file`),
/// so any gateway of the fleet can continue it, and a restarted one too;
/// without fleet mode the key is random per process.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct FedSession {
    #[serde(rename = "s")]
    subject: String,
    /// Each server's own session id (by `McpRoute::servers` index).
    #[serde(rename = "b")]
    backends: Vec<Option<String>>,
    #[serde(rename = "p")]
    protocol: Option<String>,
    /// Opened at, seconds since the epoch.
    #[serde(rename = "t")]
    created: u64,
}

/// Where a federated `tools/call` goes.
pub struct Target {
    /// Upstream index.
    pub upstream: usize,
    /// The server's MCP path.
    pub path: String,
    /// The server's session id.
    pub session: Option<String>,
    /// The message with the server's own tool name.
    pub body: Bytes,
    /// The server's own tool name.
    pub tool: String,
    /// Protocol version the session negotiated.
    pub protocol: Option<String>,
}

/// A sealed session lasts this long (there is no server-side state to
/// keep an idle timer in).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const SEAL_AAD: &[u8] = b"ztag mcp federated session v1";
const SEAL_PREFIX: &str = "z1.";

/// Seals and opens federated sessions; remembers ended ones.
pub struct Sessions {
    key: aws_lc_rs::aead::LessSafeKey,
    /// Ids ended with DELETE here (until they would have expired anyway).
    ended: moka::sync::Cache<String, ()>,
    /// Opened sessions, to skip the decryption on the next message.
    open: moka::sync::Cache<String, Arc<FedSession>>,
}

impl Sessions {
    /// With the fleet's key, or a random one.
    pub fn new(key: Option<[u8; 32]>) -> Sessions {
        let raw = key.unwrap_or_else(|| {
            let mut b = [0u8; 32];
            aws_lc_rs::rand::fill(&mut b).expect("randomness");
            b
        });
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &raw)
                .expect("32-byte key"),
        );
        Sessions {
            key,
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(SESSION_LIFETIME)
                .build(),
            open: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// The session's id: `z1.` + base64url(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, s: &FedSession) -> String {
        use base64::Engine as _;
        let mut data = serde_json::to_vec(s).unwrap_or_default();
        let mut nonce = [0u8; aws_lc_rs::aead::NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("randomness");
        self.key
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(SEAL_AAD),
                &mut data,
            )
            .expect("sealing");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!(
            "{SEAL_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// The session behind an id, if it was sealed with this key, has not
    /// expired and was not ended here.
    pub fn open(&self, id: &str) -> Option<Arc<FedSession>> {
        use base64::Engine as _;
        if id.len() > 8192 || self.ended.contains_key(id) {
            return None;
        }
        if let Some(s) = self.open.get(id) {
            return Some(s);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id.strip_prefix(SEAL_PREFIX)?)
            .ok()?;
        if raw.len() < aws_lc_rs::aead::NONCE_LEN + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(aws_lc_rs::aead::NONCE_LEN);
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(
                aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                aws_lc_rs::aead::Aad::from(SEAL_AAD),
                &mut buf,
            )
            .ok()?;
        let s: FedSession = serde_json::from_slice(plain).ok()?;
        if s.created + SESSION_LIFETIME.as_secs() < now_secs() {
            return None;
        }
        let s = Arc::new(s);
        self.open.insert(id.to_string(), s.clone());
        Some(s)
    }

    /// Ends a session on this gateway.
    pub fn end(&self, id: &str) {
        self.open.invalidate(id);
        self.ended.insert(id.to_string(), ());
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Answer = (&'static str, Response<RespBody>);

fn answer(id: &Value, result: Value) -> Response<RespBody> {
    rpc_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
}

impl Gateway {
    /// One message to one backend; its answer (`None`: 202, a
    /// notification accepted) and the session id it set.
    async fn fed_post(
        &self,
        s: &Server,
        session: Option<&str>,
        protocol: Option<&str>,
        principal: &Principal,
        msg: &Value,
    ) -> Result<(Option<Value>, Option<String>), ProxyError> {
        let pool = &self.pools[s.upstream];
        let lease = pool.pick(None).ok_or(ProxyError::NoPeer)?;
        let uri: http::Uri = format!("{}{}", lease.peer.base, s.path)
            .parse()
            .map_err(|_| ProxyError::Internal)?;
        let mut req = Request::new(
            Full::new(Bytes::from(msg.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        *req.version_mut() = if pool.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if !pool.h2
            && let Ok(v) = HeaderValue::from_str(&lease.peer.addr.to_string())
        {
            h.insert(header::HOST, v);
        }
        if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            h.insert("mcp-session-id", v);
        }
        if let Some(v) = protocol.and_then(|s| HeaderValue::from_str(s).ok()) {
            h.insert("mcp-protocol-version", v);
        }
        self.identity(h, principal);
        let resp = tokio::time::timeout(
            self.cfg.limits.upstream_response_timeout,
            pool.client().request(req),
        )
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
        .map_err(|e| {
            debug!(server = %s.name, "federated MCP server: {e:?}");
            ProxyError::UpstreamConnect
        })?;
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status();
        let sse = inspect::is_sse(resp.headers());
        let limit = self.cfg.limits.max_body_bytes as usize;
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|_| ProxyError::UpstreamProtocol)?
            .to_bytes();
        if status == StatusCode::ACCEPTED || msg.get("id").is_none() {
            return Ok((None, sid));
        }
        if !status.is_success() {
            debug!(server = %s.name, %status, "federated MCP server refused");
            return Err(ProxyError::UpstreamProtocol);
        }
        let v = if sse {
            let mut p = crate::inspect::codec::SseParser::new(limit);
            let mut evs = p.push(&body).map_err(|_| ProxyError::UpstreamProtocol)?;
            evs.push(p.finish());
            evs.iter()
                .filter_map(|e| crate::inspect::codec::sse_data(e))
                .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
                .find(|v| v.get("id") == msg.get("id"))
                .ok_or(ProxyError::UpstreamProtocol)?
        } else {
            serde_json::from_slice(&body).map_err(|_| ProxyError::UpstreamProtocol)?
        };
        Ok((Some(v), sid))
    }

    fn fed_session(&self, headers: &HeaderMap, p: &Principal) -> Option<(String, Arc<FedSession>)> {
        let id = headers.get("mcp-session-id")?.to_str().ok()?;
        let s = self.fed_sessions.open(id)?;
        (s.subject == p.subject).then(|| (id.to_string(), s))
    }

    /// A federating route's POST: answered here, or a `tools/call` to
    /// send on ([`Target`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fed_request(
        &self,
        route: &RouteConfig,
        m: &McpRoute,
        principal: &Principal,
        headers: &HeaderMap,
        msg: &Value,
        id: &Value,
        method: &str,
        ctx: inspect::Ctx,
    ) -> Result<Option<Target>, Answer> {
        let gone = || {
            (
                "mcp_unknown_session",
                rpc_response(
                    StatusCode::NOT_FOUND,
                    &rules::error(
                        id,
                        code::INVALID_REQUEST,
                        "unknown or expired session: initialize again",
                        None,
                    ),
                ),
            )
        };
        let failed = |e: ProxyError| -> Answer {
            (
                e.reason(),
                rpc_response(
                    StatusCode::OK,
                    &rules::error(
                        id,
                        -32603,
                        format!("a federated server failed ({})", e.reason()),
                        None,
                    ),
                ),
            )
        };
        if method == "initialize" {
            let mut backends = Vec::new();
            let mut protocol = None;
            let mut instructions = Vec::new();
            for s in &m.servers {
                let (v, sid) = self
                    .fed_post(s, None, None, principal, msg)
                    .await
                    .map_err(failed)?;
                let r = v
                    .as_ref()
                    .and_then(|v| v.get("result"))
                    .ok_or_else(|| failed(ProxyError::UpstreamProtocol))?;
                if protocol.is_none() {
                    protocol = r
                        .get("protocolVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                if let Some(i) = r.get("instructions").and_then(Value::as_str) {
                    instructions.push(format!("{}: {i}", s.name));
                }
                backends.push(sid);
            }
            let sid = self.fed_sessions.seal(&FedSession {
                subject: principal.subject.clone(),
                backends,
                protocol: protocol.clone(),
                created: now_secs(),
            });
            let mut result = json!({
                "protocolVersion": protocol.unwrap_or_else(|| "2025-06-18".into()),
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": format!("ztag:{}", route.name), "version": env!("CARGO_PKG_VERSION")},
            });
            if !instructions.is_empty() {
                result["instructions"] = json!(instructions.join("\n"));
            }
            let mut r = answer(id, result);
            if let Ok(v) = HeaderValue::from_str(&sid) {
                r.headers_mut().insert("mcp-session-id", v);
            }
            return Err(("", r));
        }
        if method == "server/discover" {
            // The stateless era's probe: this endpoint speaks the
            // initialize handshake.
            return Err((
                "",
                rpc_response(
                    StatusCode::OK,
                    &rules::error(id, code::METHOD_NOT_FOUND, "use initialize", None),
                ),
            ));
        }
        let (_, sess) = self.fed_session(headers, principal).ok_or_else(gone)?;
        let proto = sess.protocol.as_deref();
        match method {
            "" => Err(("", accepted())),
            "ping" => Err(("", answer(id, json!({})))),
            m_ if m_.starts_with("notifications/") => {
                for (i, s) in m.servers.iter().enumerate() {
                    if let Err(e) = self
                        .fed_post(s, sess.backends[i].as_deref(), proto, principal, msg)
                        .await
                    {
                        warn!(server = %s.name, "notification not delivered: {}", e.reason());
                    }
                }
                Err(("", accepted()))
            }
            "tools/list" => {
                let mut tools = Vec::new();
                for (i, s) in m.servers.iter().enumerate() {
                    let mut cursor: Option<Value> = None;
                    for _ in 0..20 {
                        let mut q = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}});
                        if let Some(c) = &cursor {
                            q["params"]["cursor"] = c.clone();
                        }
                        let (v, _) = self
                            .fed_post(s, sess.backends[i].as_deref(), proto, principal, &q)
                            .await
                            .map_err(failed)?;
                        let r = v
                            .and_then(|v| v.get("result").cloned())
                            .unwrap_or(Value::Null);
                        for mut t in r
                            .get("tools")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                        {
                            let Some(n) = t.get("name").and_then(Value::as_str) else {
                                continue;
                            };
                            t["name"] = json!(format!("{}{}{n}", s.name, m.separator));
                            tools.push(t);
                        }
                        cursor = r.get("nextCursor").filter(|c| !c.is_null()).cloned();
                        if cursor.is_none() {
                            break;
                        }
                    }
                }
                let v = json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}});
                let plan = &self.routes[self.route_index(route)].plan;
                let mut flag = None;
                let out = self
                    .judge_tools(ctx.source, route, m, principal, plan, &ctx, v, &mut flag)
                    .await
                    .map_err(|e| (e.reason(), e.response()))?;
                let mut r = Response::new(super::full(out));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Some(f) = flag {
                    r.headers_mut()
                        .insert(self.inspector.config.flag_header.clone(), f);
                }
                Err(("", r))
            }
            "tools/call" => {
                let (name, _) = rules::tool_call(msg).map_err(|e| {
                    (
                        "mcp_invalid_params",
                        rpc_response(
                            StatusCode::OK,
                            &rules::error(id, code::INVALID_PARAMS, e, None),
                        ),
                    )
                })?;
                let Some((s, tool)) = m.split_tool(&name) else {
                    return Err((
                        "mcp_unknown_tool",
                        rpc_response(
                            StatusCode::OK,
                            &rules::error(
                                id,
                                code::INVALID_PARAMS,
                                format!("unknown tool: {name}"),
                                None,
                            ),
                        ),
                    ));
                };
                let i = m.servers.iter().position(|x| x.name == s.name).unwrap_or(0);
                let mut body = msg.clone();
                body["params"]["name"] = json!(tool);
                Ok(Some(Target {
                    upstream: s.upstream,
                    path: s.path.clone(),
                    session: sess.backends[i].clone(),
                    body: Bytes::from(body.to_string()),
                    tool: tool.to_string(),
                    protocol: sess.protocol.clone(),
                }))
            }
            _ => Err((
                "mcp_method_not_federated",
                rpc_response(
                    StatusCode::OK,
                    &rules::error(
                        id,
                        code::METHOD_NOT_FOUND,
                        format!("{method} is not available on a federated endpoint (tools only)"),
                        None,
                    ),
                ),
            )),
        }
    }

    /// DELETE on a federating route: ends the session here and at every
    /// server.
    pub(super) async fn fed_delete(
        &self,
        m: &McpRoute,
        principal: &Principal,
        headers: &HeaderMap,
    ) -> Response<RespBody> {
        let Some((id, sess)) = self.fed_session(headers, principal) else {
            return rpc_response(StatusCode::NOT_FOUND, &json!({"error": "unknown session"}));
        };
        self.fed_sessions.end(&id);
        for (i, s) in m.servers.iter().enumerate() {
            let Some(sid) = &sess.backends[i] else {
                continue;
            };
            let pool = &self.pools[s.upstream];
            let Some(lease) = pool.pick(None) else {
                continue;
            };
            let Ok(uri) = format!("{}{}", lease.peer.base, s.path).parse::<http::Uri>() else {
                continue;
            };
            let mut req = Request::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *req.method_mut() = http::Method::DELETE;
            *req.uri_mut() = uri;
            if let Ok(v) = HeaderValue::from_str(sid) {
                req.headers_mut().insert("mcp-session-id", v);
            }
            if !pool.h2
                && let Ok(v) = HeaderValue::from_str(&lease.peer.addr.to_string())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), pool.client().request(req)).await;
        }
        let mut r = Response::new(super::full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    fn route_index(&self, route: &RouteConfig) -> usize {
        self.cfg
            .routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(0)
    }
}

fn accepted() -> Response<RespBody> {
    let mut r = Response::new(super::full(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(subject: &str, created: u64) -> FedSession {
        FedSession {
            subject: subject.into(),
            backends: vec![Some("files-1".into()), None],
            protocol: Some("2025-06-18".into()),
            created,
        }
    }

    #[test]
    fn a_sealed_session_opens_on_any_gateway_with_the_key() {
        let key = [7u8; 32];
        let (a, b) = (Sessions::new(Some(key)), Sessions::new(Some(key)));
        let id = a.seal(&session("alice", now_secs()));
        assert!(id.starts_with(SEAL_PREFIX));
        assert!(!id.contains("alice"), "the id must not show the subject");
        let s = b.open(&id).expect("another gateway opens it");
        assert_eq!(s.subject, "alice");
        assert_eq!(s.backends, vec![Some("files-1".to_string()), None]);
        // Another fleet's key, or none, does not.
        assert!(Sessions::new(Some([8u8; 32])).open(&id).is_none());
        assert!(Sessions::new(None).open(&id).is_none());
    }

    #[test]
    fn tampered_expired_and_ended_sessions_do_not_open() {
        let s = Sessions::new(Some([1u8; 32]));
        let id = s.seal(&session("alice", now_secs()));
        let mut bytes = id.clone().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(s.open(&String::from_utf8(bytes).unwrap()).is_none());
        assert!(s.open("z1.").is_none() && s.open("not-a-session").is_none());
        let old = s.seal(&session(
            "alice",
            now_secs() - SESSION_LIFETIME.as_secs() - 10,
        ));
        assert!(s.open(&old).is_none());
        assert!(s.open(&id).is_some());
        s.end(&id);
        assert!(s.open(&id).is_none());
    }
}

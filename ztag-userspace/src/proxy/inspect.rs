//! The inspection phases of the request path: request bodies through the
//! prompt-injection detector (before the upstream), responses through
//! indirect-injection inspection (MCP) and the content filter (after it).
//!
//! Responses are streamed: the content filter keeps a bounded tail per
//! stream (see [`crate::inspect::content::StreamFilter`]) and MCP SSE
//! streams are inspected event by event (each event at most
//! `inspect.max_sse_event_bytes`). A response is buffered only when it
//! must be judged whole before its head goes out: an MCP JSON response, or
//! a `response_filter = "block"` route's non-SSE response (both up to
//! `gateway.limits.max_body_bytes`; larger is refused, fail closed).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use hyper::body::{Body, Frame, Incoming};
use pin_project_lite::pin_project;
use serde_json::{Value, json};
use tracing::warn;

use crate::inspect::{
    Detection, FilterAction, Inspector, Mode, RouteInspect,
    codec::{self, SseParser},
    content::{ContentFilter, Finding, StreamFilter},
};
use crate::risk::{Event, EventKind, Events};

/// Who and where, for log lines and risk events.
#[derive(Clone)]
pub struct Ctx {
    /// The route's name.
    pub route: String,
    /// The TCP peer.
    pub source: std::net::IpAddr,
    /// Authenticated subject.
    pub principal: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Where events go.
    pub events: Option<Events>,
}

impl Ctx {
    /// Logs a detection and publishes its risk event.
    pub fn detection(&self, d: &Detection, kind: EventKind, action: &str) {
        warn!(
            route = %self.route,
            source = %self.source,
            principal = self.principal.as_deref().unwrap_or("-"),
            category = d.verdict.category,
            score = d.verdict.score,
            role = %d.role,
            action,
            reasons = %d.verdict.reasons.join(","),
            "{}",
            if kind == EventKind::IndirectInjection { "indirect prompt injection in a response" } else { "prompt injection in a request" }
        );
        self.publish(kind, d.verdict.category.to_owned(), Some(d.verdict.score));
    }

    /// Logs content-filter findings and publishes one risk event per kind.
    pub fn findings(&self, insp: &Inspector, fs: &[Finding], action: FilterAction) {
        let mut seen: Vec<&'static str> = Vec::new();
        for f in fs {
            insp.count_finding(&self.route, f.kind, action);
            if !seen.contains(&f.kind.as_str()) {
                seen.push(f.kind.as_str());
            }
        }
        if seen.is_empty() {
            return;
        }
        warn!(
            route = %self.route,
            source = %self.source,
            principal = self.principal.as_deref().unwrap_or("-"),
            kinds = %seen.join(","),
            count = fs.len(),
            action = action.as_str(),
            "sensitive content in a response"
        );
        for k in seen {
            self.publish(EventKind::ContentLeak, k.to_owned(), None);
        }
    }

    fn publish(&self, kind: EventKind, detail: String, score: Option<f32>) {
        if let Some(ev) = &self.events {
            ev.publish(Event {
                time_ms: crate::state::now_ms(),
                source: self.source,
                principal: self.principal.clone(),
                client_id: self.client_id.clone(),
                route: self.route.clone(),
                kind,
                detail,
                score,
            });
        }
    }
}

/// The header value a `flag` action adds.
pub fn flag_value(d: &Detection) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "injection; category={}; score={:.3}; in={}",
        d.verdict.category,
        d.verdict.score,
        d.role
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("injection"))
}

/// A JSON-RPC error answering `id` for a blocked message.
pub fn jsonrpc_blocked(id: &Value, category: &str, what: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": -32001,
            "message": format!("blocked by the gateway: {what} ({category})"),
            "data": {"reason": "prompt_injection", "category": category}
        }
    })
}

/// What a route does to responses.
#[derive(Clone)]
pub struct ResponsePlan {
    /// MCP indirect-injection inspection.
    pub mcp: Option<RouteInspect>,
    /// Content filter and its action.
    pub filter: Option<(Arc<ContentFilter>, FilterAction)>,
}

impl ResponsePlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.mcp.is_none() && self.filter.is_none()
    }

    /// Only logging: an unreadable (compressed) response may pass.
    pub fn log_only(&self) -> bool {
        self.mcp
            .is_none_or(|m| m.action == crate::inspect::Action::Log)
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.1 == FilterAction::Log)
    }

    /// Must the body be judged whole before the head is sent?
    pub fn must_buffer(&self, sse: bool) -> bool {
        !sse && (self.mcp.is_some()
            || self
                .filter
                .as_ref()
                .is_some_and(|f| f.1 == FilterAction::Block))
    }
}

/// Whether the response is an SSE stream.
pub fn is_sse(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Whether the body is content-encoded (compressed) and so unreadable.
pub fn is_encoded(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Why a response was not delivered.
#[derive(Debug)]
pub enum Refused {
    /// The content filter found something on a `block` route.
    Blocked,
}

/// Judges a whole response body. Returns the body to send and whether a
/// flag header should be added.
pub fn whole(
    insp: &Inspector,
    plan: &ResponsePlan,
    ctx: &Ctx,
    body: Bytes,
) -> Result<(Bytes, Option<HeaderValue>), Refused> {
    let mut out = body;
    let mut flag = None;
    if let Some(ri) = &plan.mcp
        && let Ok(msgs) = codec::mcp_messages(&out)
    {
        let batch = out.first() == Some(&b'[');
        let mut changed = false;
        let mut rewritten = Vec::with_capacity(msgs.len());
        for m in msgs {
            match insp.inspect_mcp_response(&ctx.route, ri, &m) {
                Some(d) => {
                    ctx.detection(&d, EventKind::IndirectInjection, ri.action.as_str());
                    match ri.action {
                        crate::inspect::Action::Block => {
                            changed = true;
                            let id = m.get("id").cloned().unwrap_or(Value::Null);
                            rewritten.push(jsonrpc_blocked(
                                &id,
                                d.verdict.category,
                                "the server's result carries instructions",
                            ));
                        }
                        crate::inspect::Action::Flag => {
                            flag = Some(flag_value(&d));
                            rewritten.push(m);
                        }
                        crate::inspect::Action::Log => rewritten.push(m),
                    }
                }
                None => rewritten.push(m),
            }
        }
        if changed {
            let v = if batch {
                Value::Array(rewritten)
            } else {
                rewritten.pop().unwrap_or(Value::Null)
            };
            out = Bytes::from(v.to_string());
        }
    }
    if let Some((f, action)) = &plan.filter {
        match action {
            FilterAction::Redact => {
                let (red, fs) = f.redact(&out);
                ctx.findings(insp, &fs, *action);
                if !fs.is_empty() {
                    out = Bytes::from(red);
                }
            }
            FilterAction::Block | FilterAction::Log => {
                let fs = f.scan(&out);
                ctx.findings(insp, &fs, *action);
                if *action == FilterAction::Block && !fs.is_empty() {
                    return Err(Refused::Blocked);
                }
            }
        }
    }
    Ok((out, flag))
}

/// The streaming counterpart of [`whole`]: one per response.
pub struct Streamer {
    insp: Arc<Inspector>,
    ctx: Ctx,
    mcp: Option<(RouteInspect, SseParser)>,
    filter: Option<(StreamFilter, FilterAction)>,
    buf: Vec<u8>,
}

/// The stream was cut (a `block` finding mid-stream, or an SSE event over
/// its bound).
#[derive(Debug, thiserror::Error)]
#[error("response stream cut by the gateway: {0}")]
pub struct Cut(&'static str);

impl Streamer {
    /// A streamer for one response; `sse` says whether MCP events are parsed.
    pub fn new(insp: Arc<Inspector>, plan: &ResponsePlan, ctx: Ctx, sse: bool) -> Streamer {
        let max = insp.config.max_sse_event_bytes;
        Streamer {
            mcp: plan
                .mcp
                .filter(|m| sse && m.mode == Mode::Mcp)
                .map(|m| (m, SseParser::new(max))),
            filter: plan
                .filter
                .as_ref()
                .map(|(f, a)| (StreamFilter::new(f.clone(), *a == FilterAction::Redact), *a)),
            insp,
            ctx,
            buf: Vec::new(),
        }
    }

    /// Processes one chunk; returns what may be sent now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, Cut> {
        let staged = match &mut self.mcp {
            // Plain streams go straight to the filter, uncopied.
            None => return self.filter_bytes(chunk, false),
            Some((ri, p)) => {
                let events = p
                    .push(chunk)
                    .map_err(|_| Cut("SSE event over inspect.max_sse_event_bytes"))?;
                let ri = *ri;
                let mut s = Vec::with_capacity(chunk.len());
                for ev in events {
                    self.event(&ri, ev, &mut s);
                }
                s
            }
        };
        self.filter_bytes(&staged, false)
    }

    /// End of the body: flushes what was held back.
    pub fn finish(&mut self) -> Result<Bytes, Cut> {
        let rest = match &mut self.mcp {
            Some((_, p)) => p.finish(),
            None => Vec::new(),
        };
        self.filter_bytes(&rest, true)
    }

    fn event(&self, ri: &RouteInspect, ev: Vec<u8>, out: &mut Vec<u8>) {
        let msg = codec::sse_data(&ev).and_then(|d| serde_json::from_str::<Value>(&d).ok());
        let Some(m) = msg else {
            out.extend_from_slice(&ev);
            return;
        };
        match self.insp.inspect_mcp_response(&self.ctx.route, ri, &m) {
            Some(d) => {
                self.ctx
                    .detection(&d, EventKind::IndirectInjection, ri.action.as_str());
                if ri.action == crate::inspect::Action::Block {
                    let id = m.get("id").cloned().unwrap_or(Value::Null);
                    let e = jsonrpc_blocked(
                        &id,
                        d.verdict.category,
                        "the server's result carries instructions",
                    );
                    out.extend_from_slice(format!("event: message\ndata: {e}\n\n").as_bytes());
                } else {
                    out.extend_from_slice(&ev);
                }
            }
            None => out.extend_from_slice(&ev),
        }
    }

    fn filter_bytes(&mut self, staged: &[u8], last: bool) -> Result<Bytes, Cut> {
        let Some((sf, action)) = &mut self.filter else {
            return Ok(Bytes::copy_from_slice(staged));
        };
        self.buf.clear();
        let mut fs = sf.push(staged, &mut self.buf);
        if last {
            fs.extend(sf.finish(&mut self.buf));
        }
        let action = *action;
        self.ctx.findings(&self.insp, &fs, action);
        if action == FilterAction::Block && !fs.is_empty() {
            return Err(Cut(
                "sensitive content on a response_filter = \"block\" route",
            ));
        }
        // The output buffer is handed over, not copied.
        Ok(Bytes::from(std::mem::take(&mut self.buf)))
    }
}

pin_project! {
    /// A response body passed through a [`Streamer`].
    pub struct Filtered {
        #[pin]
        inner: Incoming,
        streamer: Streamer,
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl Filtered {
    /// Wraps an upstream body.
    pub fn new(inner: Incoming, streamer: Streamer) -> Filtered {
        Filtered {
            inner,
            streamer,
            trailers: None,
            done: false,
        }
    }
}

impl Body for Filtered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        let out = this.streamer.push(&d)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(f) => {
                        *this.trailers = f.into_trailers().ok();
                        *this.done = true;
                        let out = this.streamer.finish()?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => {
                    *this.done = true;
                    let out = this.streamer.finish()?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }
}

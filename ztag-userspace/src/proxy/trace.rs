//! Request tracing: W3C trace context in and out, and OpenTelemetry spans
//! exported over OTLP/HTTP (JSON encoding) when `[gateway.tracing]` names an
//! endpoint (off by default).
//!
//! Each request is a server span (a child of the client's `traceparent`
//! when it sends a valid one, else a new trace) with a child span per phase
//! that ran (authenticate, authorize, inspect, approve, upstream); the
//! upstream gets a `traceparent` naming the upstream span as its parent.
//! Spans go through a bounded queue to one exporter task that posts them in
//! batches (at most 512, or every second); a full queue drops spans (counted
//! in `ztag_trace_spans_dropped_total`), never slows a request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// `[gateway.tracing]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
}

/// `[gateway.tracing]` once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name`.
    pub service: String,
    /// Share of new traces recorded (a client's sampled flag is followed).
    pub sample_ratio: f64,
}

impl RawTracing {
    /// `None` when tracing is off.
    pub fn validate(self, problems: &mut Vec<String>) -> Option<TracingConfig> {
        let endpoint = self.otlp_endpoint?;
        match reqwest::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "gateway.tracing.otlp_endpoint: {endpoint:?} is not an http(s) URL"
            )),
        }
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            problems.push(format!(
                "gateway.tracing.sample_ratio: {sample_ratio} is not between 0 and 1"
            ));
        }
        Some(TracingConfig {
            endpoint,
            service: self.service_name.unwrap_or_else(|| "ztag".into()),
            sample_ratio,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// A `traceparent` header: (trace id, parent span id, sampled). Invalid
/// ones (wrong length, non-hex, all-zero ids, version ff) are ignored.
pub fn parse_traceparent(h: &HeaderMap) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = h.get("traceparent")?.to_str().ok()?.trim();
    let mut it = v.split('-');
    let (ver, tid, pid, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if ver.len() != 2 || ver == "ff" || (ver == "00" && it.next().is_some()) {
        return None;
    }
    let tid = unhex::<16>(tid)?;
    let pid = unhex::<8>(pid)?;
    let flags = unhex::<1>(flags)?;
    if tid == [0; 16] || pid == [0; 8] {
        return None;
    }
    Some((tid, pid, flags[0] & 1 == 1))
}

/// One request's trace.
pub struct Ctx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    /// Recorded and exported.
    pub sampled: bool,
    upstream_span: [u8; 8],
    wall0: SystemTime,
    t0: Instant,
    phases: Vec<(&'static str, [u8; 8], Instant, Instant)>,
}

impl Ctx {
    /// Starts the server span.
    pub fn start(h: &HeaderMap, sample_ratio: f64) -> Ctx {
        let (trace_id, parent, sampled) = match parse_traceparent(h) {
            Some((t, p, s)) => (t, Some(p), s),
            None => {
                let r: [u8; 8] = random();
                let x = u64::from_le_bytes(r) as f64 / u64::MAX as f64;
                (random(), None, x < sample_ratio)
            }
        };
        Ctx {
            trace_id,
            span_id: random(),
            parent,
            sampled,
            upstream_span: random(),
            wall0: SystemTime::now(),
            t0: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// A phase ran from `start` until now.
    pub fn phase(&mut self, name: &'static str, start: Instant) {
        let id = if name == "upstream" {
            self.upstream_span
        } else {
            random()
        };
        self.phases.push((name, id, start, Instant::now()));
    }

    /// The `traceparent` the upstream gets (its parent: the upstream span).
    pub fn upstream_header(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.upstream_span),
            if self.sampled { "01" } else { "00" }
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn nanos(&self, t: Instant) -> String {
        let at = self.wall0 + t.saturating_duration_since(self.t0);
        at.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos()
            .to_string()
    }
}

fn attr(k: &str, v: Value) -> Value {
    let value = match v {
        Value::Number(n) => json!({"intValue": n.to_string()}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": k, "value": value})
}

/// The exporter's handle.
#[derive(Clone)]
pub struct Tracer {
    tx: mpsc::Sender<Value>,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    dropped: prometheus::IntCounter,
}

impl Tracer {
    /// Starts the exporter task.
    pub fn start(cfg: &TracingConfig, registry: &prometheus::Registry) -> Result<Tracer, String> {
        let dropped = prometheus::IntCounter::new(
            "ztag_trace_spans_dropped_total",
            "Spans dropped because the OTLP exporter fell behind",
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(|e| e.to_string())?;
        let http = crate::authn::jwks::http_client(None).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(export(rx, http, cfg.clone()));
        Ok(Tracer {
            tx,
            sample_ratio: cfg.sample_ratio,
            dropped,
        })
    }

    /// Ends the request: its spans go to the exporter.
    pub fn finish(&self, ctx: &Ctx, name: String, attrs: Vec<(&str, Value)>, error: bool) {
        if !ctx.sampled {
            return;
        }
        let end = Instant::now();
        let trace = hex(&ctx.trace_id);
        let mut server = json!({
            "traceId": trace,
            "spanId": hex(&ctx.span_id),
            "name": name,
            "kind": 2,
            "startTimeUnixNano": ctx.nanos(ctx.t0),
            "endTimeUnixNano": ctx.nanos(end),
            "attributes": attrs.into_iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
            "status": {"code": if error { 2 } else { 0 }},
        });
        if let Some(p) = ctx.parent {
            server["parentSpanId"] = json!(hex(&p));
        }
        let mut spans = vec![server];
        for (n, id, s, e) in &ctx.phases {
            spans.push(json!({
                "traceId": trace,
                "spanId": hex(id),
                "parentSpanId": hex(&ctx.span_id),
                "name": n,
                "kind": if *n == "upstream" { 3 } else { 1 },
                "startTimeUnixNano": ctx.nanos(*s),
                "endTimeUnixNano": ctx.nanos(*e),
            }));
        }
        for s in spans {
            if self.tx.try_send(s).is_err() {
                self.dropped.inc();
            }
        }
    }
}

async fn export(mut rx: mpsc::Receiver<Value>, http: reqwest::Client, cfg: TracingConfig) {
    let resource = json!({"attributes": [attr("service.name", json!(cfg.service))]});
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < 512 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        let body = json!({"resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{"scope": {"name": "ztag", "version": env!("CARGO_PKG_VERSION")}, "spans": batch}],
        }]});
        match http
            .post(&cfg.endpoint)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => debug!(spans = n, "spans exported"),
            Ok(r) => warn!(status = %r.status(), spans = n, "OTLP endpoint refused spans"),
            Err(e) => warn!(spans = n, "OTLP export failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("traceparent", HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn traceparent_is_parsed_and_bad_ones_ignored() {
        let (t, p, s) = parse_traceparent(&h(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert!(s);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz",
        ] {
            assert!(parse_traceparent(&h(bad)).is_none(), "{bad}");
        }
        let c = Ctx::start(
            &h("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            1.0,
        );
        assert!(!c.sampled, "the client's flag is followed");
        let up = c.upstream_header();
        let up = up.to_str().unwrap();
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && up.ends_with("-00"));
        let c = Ctx::start(&HeaderMap::new(), 1.0);
        assert!(c.sampled && c.parent.is_none());
    }
}

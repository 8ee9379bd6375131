//! AI content inspection: the prompt-injection detector (normalisation,
//! signatures, a trained classifier) and the response content filter (PII
//! and secrets), with the body codecs that find the text to inspect in
//! OpenAI, Anthropic and MCP messages and SSE streams.
//!
//! The gateway holds one [`Inspector`]; routes say what it does for them
//! (`inspect = "llm" | "mcp" | "text"`, `response_filter = …`).

pub mod classifier;
pub mod codec;
pub mod config;
pub mod content;
#[cfg(test)]
mod content_fixtures;
pub mod dataset;
pub mod detector;
pub mod normalize;
pub mod signatures;
pub mod train;

use std::{hash::BuildHasher, sync::Arc};

use anyhow::{Context, Result};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

pub use config::{Action, FilterAction, InspectConfig, Mode, RouteFilter, RouteInspect};
pub use detector::{Detector, Verdict};

use codec::{CodecError, Segment};

/// Bytes taken from each side of a message seam.
const SEAM_BYTES: usize = 256;

/// The largest char boundary at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What the request inspection found.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The verdict of the most suspicious text.
    pub verdict: Verdict,
    /// Where that text was (`user`, `tool`, `arguments`, `conversation` …).
    pub role: String,
}

/// The detector and the content filters, shared by every request.
pub struct Inspector {
    detector: Detector,
    /// Global settings.
    pub config: InspectConfig,
    all_kinds: Arc<content::ContentFilter>,
    metrics: InspectMetrics,
    cache: Option<moka::sync::Cache<u64, f32>>,
    hasher: std::hash::RandomState,
}

impl Inspector {
    /// Loads the weights (compiled-in, or `model_file`) and registers the
    /// metrics.
    pub fn new(config: InspectConfig, registry: &Registry) -> Result<Inspector> {
        let detector = match &config.model_file {
            None => Detector::embedded()?,
            Some(p) => {
                let b = std::fs::read(p)
                    .with_context(|| format!("inspect.model_file: reading {}", p.display()))?;
                let m = classifier::Model::from_bytes(&b)
                    .with_context(|| format!("inspect.model_file: {}", p.display()))?;
                Detector::with_model(m)
            }
        };
        let cache = (config.cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .build()
        });
        Ok(Inspector {
            detector,
            all_kinds: content::ContentFilter::shared_all(),
            metrics: InspectMetrics::new(registry)?,
            cache,
            hasher: std::hash::RandomState::new(),
            config,
        })
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The content filter for a route's kinds (shared when it is every kind).
    pub fn filter_for(&self, f: &RouteFilter) -> Arc<content::ContentFilter> {
        if f.kinds.is_empty() {
            self.all_kinds.clone()
        } else {
            Arc::new(content::ContentFilter::new(&f.kinds))
        }
    }

    /// Inspects a request body; `Ok(None)`: nothing over the threshold.
    pub fn inspect_request(
        &self,
        route: &str,
        ri: &RouteInspect,
        body: &[u8],
    ) -> Result<Option<Detection>, CodecError> {
        let start = std::time::Instant::now();
        let segments = match ri.mode {
            Mode::Llm => codec::llm_request(body)?,
            Mode::Text => codec::text_request(body),
            Mode::Mcp => {
                let mut out = Vec::new();
                for m in codec::mcp_messages(body)? {
                    codec::mcp_request(&m, &mut out);
                }
                out
            }
        };
        let d = self.worst(&segments, ri.threshold);
        self.metrics.observe(
            route,
            ri.mode,
            "request",
            d.as_ref(),
            ri.action.as_str(),
            start,
        );
        Ok(d)
    }

    /// The highest detector score of the text an MCP request carries
    /// (arguments; 0 when none) — a risk signal below the block threshold.
    pub fn mcp_request_score(&self, msg: &serde_json::Value) -> f32 {
        let mut segs = Vec::new();
        codec::mcp_request(msg, &mut segs);
        segs.iter().map(|s| self.score(&s.text)).fold(0.0, f32::max)
    }

    /// Inspects text coming back from an MCP server (one JSON-RPC message).
    pub fn inspect_mcp_response(
        &self,
        route: &str,
        ri: &RouteInspect,
        msg: &serde_json::Value,
    ) -> Option<Detection> {
        let start = std::time::Instant::now();
        let mut segs = Vec::new();
        codec::mcp_response(msg, &mut segs);
        let d = self.worst(&segs, ri.threshold);
        self.metrics.observe(
            route,
            ri.mode,
            "response",
            d.as_ref(),
            ri.action.as_str(),
            start,
        );
        d
    }

    /// Counts a content-filter finding.
    pub fn count_finding(&self, route: &str, kind: content::Kind, action: FilterAction) {
        self.metrics
            .findings
            .with_label_values(&[route, kind.as_str(), action.as_str()])
            .inc();
    }

    /// The detector's score, from the verdict cache when this exact text was
    /// scored before (system prompts and conversation history come back on
    /// every turn). Keys are SipHash with a per-process random key, so a
    /// client cannot aim a collision at a cached benign text.
    fn score(&self, text: &str) -> f32 {
        let Some(cache) = &self.cache else {
            return self.detector.score(text);
        };
        let key = self.hasher.hash_one(text);
        if let Some(s) = cache.get(&key) {
            self.metrics.cache_hit.inc();
            return s;
        }
        self.metrics.cache_miss.inc();
        let s = self.detector.score(text);
        cache.insert(key, s);
        s
    }

    /// Scores every segment, and each seam between two (an attack split
    /// across messages); the highest score wins.
    fn worst(&self, segments: &[Segment], threshold: Option<f32>) -> Option<Detection> {
        let threshold = threshold.unwrap_or(self.detector.threshold());
        let mut best: Option<(f32, usize)> = None;
        for (i, s) in segments.iter().enumerate() {
            let sc = self.score(&s.text);
            if best.is_none_or(|b| sc > b.0) {
                best = Some((sc, i));
            }
        }
        // An attack split across two messages straddles their seam: each
        // seam is scored on the end of one message and the start of the next.
        let mut seams: Vec<String> = Vec::new();
        for w in segments.windows(2) {
            let (a, b) = (w[0].text.as_str(), w[1].text.as_str());
            let mut t = String::with_capacity(2 * SEAM_BYTES + 1);
            t.push_str(&a[floor_char(a, a.len().saturating_sub(SEAM_BYTES))..]);
            t.push('\n');
            t.push_str(&b[..floor_char(b, SEAM_BYTES.min(b.len()))]);
            let sc = self.score(&t);
            if best.is_none_or(|x| sc > x.0) {
                best = Some((sc, usize::MAX - seams.len()));
            }
            seams.push(t);
        }
        let (score, i) = best?;
        if score < threshold {
            return None;
        }
        let (text, role) = match segments.get(i) {
            Some(s) => (s.text.as_str(), s.role.clone()),
            None => match seams.get(usize::MAX - i) {
                Some(t) => (t.as_str(), "conversation".to_owned()),
                None => return None,
            },
        };
        let mut verdict = self.detector.detect(text);
        verdict.injection = true;
        Some(Detection { verdict, role })
    }
}

/// `ztag_inspect_*` metrics. The children with fixed labels are looked up
/// once here, not on every request.
struct InspectMetrics {
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    verdicts: IntCounterVec,
    /// By [`Mode`]: llm, mcp, text.
    seconds: [Histogram; 3],
    findings: IntCounterVec,
}

impl InspectMetrics {
    fn new(r: &Registry) -> Result<InspectMetrics, prometheus::Error> {
        let verdicts = IntCounterVec::new(
            Opts::new(
                "ztag_inspect_verdicts_total",
                "Inspected bodies, by route, mode, direction (request or response), category (\"clean\" when nothing was found) and the route's action.",
            ),
            &["route", "mode", "direction", "category", "action"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "ztag_inspect_duration_seconds",
                "Time to extract and score the text of one body or message, by mode.",
            )
            .buckets(vec![
                5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 2.5e-2,
            ]),
            &["mode"],
        )?;
        let findings = IntCounterVec::new(
            Opts::new(
                "ztag_filter_findings_total",
                "PII and secrets found in responses, by route, kind and the route's action.",
            ),
            &["route", "kind", "action"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "ztag_inspect_cache_total",
                "Detector verdict-cache lookups, by result (hit or miss).",
            ),
            &["result"],
        )?;
        r.register(Box::new(cache.clone()))?;
        r.register(Box::new(verdicts.clone()))?;
        r.register(Box::new(seconds.clone()))?;
        r.register(Box::new(findings.clone()))?;
        Ok(InspectMetrics {
            cache_hit: cache.with_label_values(&["hit"]),
            cache_miss: cache.with_label_values(&["miss"]),
            verdicts,
            seconds: [Mode::Llm, Mode::Mcp, Mode::Text]
                .map(|m| seconds.with_label_values(&[m.as_str()])),
            findings,
        })
    }

    fn observe(
        &self,
        route: &str,
        mode: Mode,
        dir: &str,
        d: Option<&Detection>,
        action: &str,
        start: std::time::Instant,
    ) {
        let i = match mode {
            Mode::Llm => 0,
            Mode::Mcp => 1,
            Mode::Text => 2,
        };
        self.seconds[i].observe(start.elapsed().as_secs_f64());
        let cat = d.map(|d| d.verdict.category).unwrap_or("clean");
        let action = if d.is_some() { action } else { "pass" };
        self.verdicts
            .with_label_values(&[route, mode.as_str(), dir, cat, action])
            .inc();
    }
}

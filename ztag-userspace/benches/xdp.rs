//! `cargo xtask bench xdp [--quick]` (or `cargo bench -p ztag-userspace
//! --bench xdp -- [--quick]`, as root): the XDP program's per-packet cost
//! next to Debian's `xdp-filter` and a bare `XDP_DROP` program (the floor),
//! and the speed of a bulk blocklist import.
//!
//! Method:
//! * every program runs on the same crafted Ethernet + IPv4 + TCP ACK frame
//!   with `BPF_PROG_TEST_RUN` (`repeat` times per run; the kernel reports
//!   the mean ns per run); each figure is the median of `rounds` runs, and
//!   the programs take turns inside every round (order rotated each round)
//!   so that machine noise hits them alike;
//! * the blocklists hold N distinct /32s (odd addresses from
//!   100.64.0.0/10); DROP frames come from the middle entry, PASS frames
//!   from the address just above it (not blocked, same trie neighbourhood);
//! * ztag: a fresh `Plane` (pinned under a per-process bpffs directory) fed
//!   by `Enforcer::import`, whose duration is the update-speed figure;
//! * xdp-filter: `xdp-filter load -m native` on a veth in a per-process
//!   network namespace, one `xdp-filter ip -m src ADDR` per address, run
//!   with a private bpffs (so nothing lands in the host's
//!   /sys/fs/bpf/xdp-filter); the program measured is the one `ip link`
//!   shows attached (libxdp's dispatcher when libxdp could load it, the
//!   filter program itself otherwise);
//! * floor: ztag's `ztag_floor`, which returns `XDP_DROP` at once.
//!
//! The flood part (trafgen over a veth between two namespaces; see
//! `bench_flood`) runs ztag as the real daemon (`target/release/ztag run`,
//! built when missing or older than the sources) and reports, besides the
//! softirq cost per dropped packet, the daemon's own CPU during each flood
//! and an allowed client's TCP latency, idle and under a paced flood, for
//! ztag, nftables and iptables.
//!
//! Reports go to `target/bench/xdp-YYYYMMDD-HHMMSS.{md,json}` (UTC); the
//! markdown is printed as well. Every namespace, veth and pin this creates
//! carries the process id and is removed on exit, on error and on Ctrl-C.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{Xdp, XdpMode};
use serde_json::{Value, json};
use ztag::{
    config::AttachMode,
    state::{ListKind, StateDb},
    xdp::{
        FLOOR_PROGRAM, Plane, XDP_PROGRAM, detach_all, ifindex,
        lists::{AddSpec, Enforcer},
        test_run::{self, ACK, Frame, XDP_DROP, XDP_PASS},
    },
};
use ztag_common::{Reason, XdpConfig};

/// xdp-filter's `filter_ipv4` map holds at most this many addresses.
const XDP_FILTER_MAX: usize = 10_000;
/// The update-speed goal for a 1M-entry import.
const IMPORT_GOAL_SECS: f64 = 10.0;
/// The per-packet goal: ztag at most this much slower than xdp-filter.
const GOAL_RATIO: f64 = 1.10;

// ---------------------------------------------------------------- options

struct Opts {
    quick: bool,
    rounds: usize,
    repeat: u32,
    sizes: Vec<usize>,
    out_dir: PathBuf,
    flood: bool,
    flood_packets: u64,
    flood_rounds: usize,
    probes: usize,
    probe_pps: u64,
}

const USAGE: &str = "\
usage: xdp [--quick] [--rounds N] [--repeat N] [--sizes N,N,...] [--out DIR]
  --quick     3 rounds of 100k, lists of 1, 1k and 100k entries (< 1 min)
  --rounds N  runs per figure (median reported); default 5
  --repeat N  BPF_PROG_TEST_RUN repetitions per run; default 1000000
  --sizes L   blocklist sizes; default 1,10000,1000000
  --out DIR   report directory; default <workspace>/target/bench
  --no-flood  skip the trafgen flood (ztag XDP vs nftables vs iptables)
  --flood-packets N  frames per flood run; default 3000000 (quick: 300000)
  --flood-rounds N   flood runs per dropper; default 3 (quick: 1)
  --probes N         allowed-client requests per latency sample; default 200
  --probe-pps N      frames/s of the paced flood the client is probed under;
                     default 200000";

fn parse_opts() -> Result<Opts> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends `--bench` to harness-less benchmarks.
    args.retain(|a| a != "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        rounds: if quick { 3 } else { 5 },
        repeat: if quick { 100_000 } else { 1_000_000 },
        sizes: if quick {
            vec![1, 1_000, 100_000]
        } else {
            vec![1, 10_000, 1_000_000]
        },
        out_dir: default_out_dir(),
        flood: true,
        flood_packets: if quick { 300_000 } else { 3_000_000 },
        flood_rounds: if quick { 1 } else { 3 },
        probes: 200,
        probe_pps: 200_000,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => {}
            "--rounds" => o.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--repeat" => o.repeat = value("--repeat")?.parse().context("--repeat")?,
            "--sizes" => {
                o.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes")?
            }
            "--out" => o.out_dir = value("--out")?.into(),
            "--no-flood" => o.flood = false,
            "--flood-packets" => {
                o.flood_packets = value("--flood-packets")?
                    .replace('_', "")
                    .parse()
                    .context("--flood-packets")?
            }
            "--flood-rounds" => {
                o.flood_rounds = value("--flood-rounds")?.parse().context("--flood-rounds")?
            }
            "--probes" => o.probes = value("--probes")?.parse().context("--probes")?,
            "--probe-pps" => {
                o.probe_pps = value("--probe-pps")?
                    .replace('_', "")
                    .parse()
                    .context("--probe-pps")?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        o.rounds > 0
            && o.repeat > 0
            && o.flood_packets > 0
            && o.flood_rounds > 0
            && o.probes > 0
            && o.probe_pps > 0,
        "--rounds, --repeat, --flood-packets, --flood-rounds, --probes and --probe-pps must be \
         positive"
    );
    ensure!(
        o.sizes.iter().all(|&n| (1..=2_000_000).contains(&n)),
        "--sizes must be between 1 and 2000000 (the list maps' capacity)"
    );
    Ok(o)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn default_out_dir() -> PathBuf {
    target_dir().join("bench")
}

// ------------------------------------------------------- signals, cleanup

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag that the loops check, so the guards below
/// still run and remove what this process created.
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

/// A network namespace of ours, deleted on drop (with the veths in it, which
/// detaches their XDP programs).
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Netns> {
        run("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// A veth pair inside the namespace, both ends up.
    fn veth_pair(&self, a: &str, b: &str) -> Result<()> {
        let ns = self.name.as_str();
        run(
            "ip",
            &[
                "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b,
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", a, "up"])?;
        run("ip", &["-n", ns, "link", "set", b, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A pin directory of ours under /sys/fs/bpf, detached and removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = detach_all(&self.0) {
            eprintln!("warning: cleaning up {}: {e}", self.0.display());
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ------------------------------------------------------------- contenders

/// ztag with a fresh plane holding `addrs` in its static blocklist.
struct Ztag {
    // Field order is drop order: the plane before its pins.
    enforcer: Enforcer,
    _pins: PinDir,
    import_secs: f64,
}

fn load_ztag(tag: &str, addrs: &[Ipv4Addr]) -> Result<Ztag> {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/ztag-bench-{}-{tag}",
        std::process::id()
    ));
    ensure!(!dir.exists(), "{} already exists", dir.display());
    let pins = PinDir(dir.clone());
    let plane =
        Plane::load(&dir).with_context(|| format!("loading ztag under {}", dir.display()))?;
    let db = StateDb::in_memory()?;
    let base = XdpConfig {
        rate_per_sec: 0,
        rate_burst: 0,
        sample_one_in: 0,
        flags: 0,
    };
    let mut enforcer = Enforcer::new(db, plane, base);
    enforcer.reconcile()?;
    // BPF_PROG_TEST_RUN hands the program frames as if received on the
    // loopback device: give it the counters slot an attached interface has,
    // so that the counting costs what it costs in production.
    let lo = ifindex("lo")?;
    enforcer.plane_mut().register_interface(lo)?;
    let mut text = String::with_capacity(addrs.len() * 18);
    for a in addrs {
        let _ = writeln!(text, "{a}/32");
    }
    let start = Instant::now();
    let n = enforcer.import(ListKind::Block, &text, &AddSpec::default())?;
    let import_secs = start.elapsed().as_secs_f64();
    ensure!(
        n == addrs.len(),
        "import took {n} of {} entries",
        addrs.len()
    );
    Ok(Ztag {
        enforcer,
        _pins: pins,
        import_secs,
    })
}

/// xdp-filter on a veth in a namespace of ours, holding `addrs` (src mode).
struct XdpFilter {
    // The fd before the namespace (drop order).
    fd: OwnedFd,
    prog_name: String,
    prog_id: u32,
    fill_secs: f64,
    _ns: Netns,
}

fn load_xdp_filter(tag: &str, addrs: &[Ipv4Addr]) -> Result<XdpFilter> {
    let pid = std::process::id();
    let ns = Netns::create(format!("ztag-bench-{pid}-{tag}"))?;
    let (a, b) = (format!("zb{pid}{tag}a"), format!("zb{pid}{tag}b"));
    ensure!(a.len() <= 15, "interface name {a} is too long");
    ns.veth_pair(&a, &b)?;
    // `ip netns exec` runs in a new mount namespace with a fresh /sys: a
    // private bpffs there keeps xdp-filter's pins away from the host's.
    // Everything happens in one shell, since the pins live only as long as
    // it does; the attached program keeps itself and its maps alive after.
    let script = r#"
        mount -t bpf bpf /sys/fs/bpf
        xdp-filter load -m native "$1" >/dev/null
        t0=$(date +%s%N)
        xargs -r -n 1 xdp-filter ip -m src >/dev/null
        t1=$(date +%s%N)
        echo "fill_ns=$((t1 - t0))"
        echo "entries=$(xdp-filter status | grep -c ' src ')"
    "#;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-ec", script, "sh", &a])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `ip netns exec ... xdp-filter`")?;
    let mut list = String::with_capacity(addrs.len() * 16);
    for a in addrs {
        let _ = writeln!(list, "{a}");
    }
    let mut stdin = child.stdin.take().context("xdp-filter stdin")?;
    // Fed from a thread, so that a chatty stderr cannot block both sides.
    let feeder = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let out = child.wait_with_output().context("waiting for xdp-filter")?;
    let fed = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "loading xdp-filter failed ({}): {}{}",
        out.status,
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    fed.context("feeding addresses to xdp-filter")?;
    let field = |k: &str| -> Result<u64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {k} in the xdp-filter script's output: {stdout}"))
    };
    let fill_secs = field("fill_ns")? as f64 / 1e9;
    let entries = field("entries")? as usize;
    ensure!(
        entries == addrs.len(),
        "xdp-filter holds {entries} addresses, expected {}",
        addrs.len()
    );
    // The program attached to the veth (the dispatcher if libxdp used one).
    let json = capture(
        "ip",
        &["-n", &ns.name, "-j", "-d", "link", "show", "dev", &a],
    )
    .context("`ip -j -d link show` failed")?;
    let v: Value = serde_json::from_str(&json).context("parsing `ip -j link` output")?;
    let prog = &v[0]["xdp"]["prog"];
    let prog_id = prog["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {a}: {json}"))? as u32;
    let prog_name = prog["name"].as_str().unwrap_or("?").to_string();
    let raw = test_run::prog_fd_by_id(prog_id)
        .with_context(|| format!("opening xdp-filter's program (id {prog_id})"))?;
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(XdpFilter {
        fd,
        prog_name,
        prog_id,
        fill_secs,
        _ns: ns,
    })
}

// ------------------------------------------------------------ measurement

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Ztag,
    XdpFilter,
    Floor,
}

impl Who {
    fn key(self) -> &'static str {
        match self {
            Who::Ztag => "ztag",
            Who::XdpFilter => "xdp_filter",
            Who::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Drop => "DROP",
        }
    }
}

/// One run: the kernel's mean ns per repetition (whole ns, as
/// BPF_PROG_TEST_RUN reports it), after checking the verdict. (Wall-clock
/// time around the syscall is no good here: for a program attached nowhere
/// the kernel adds it to and removes it from its XDP dispatcher on every
/// call, a fixed cost of milliseconds outside the timed loop.)
fn one_run(fd: i32, frame: &[u8], repeat: u32, expect: u32, what: &str) -> Result<u32> {
    let r =
        test_run::run(fd, frame, repeat).with_context(|| format!("BPF_PROG_TEST_RUN {what}"))?;
    ensure!(
        r.retval == expect,
        "{what} returned {} (expected {expect})",
        r.retval
    );
    Ok(r.ns_per_run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Cell {
    samples: Vec<u32>,
}

impl Cell {
    fn median(&self) -> f64 {
        median(self.samples.iter().map(|&s| f64::from(s)).collect())
    }
    fn json(&self) -> Value {
        json!({
            "median_ns": self.median(),
            "samples_ns": self.samples,
        })
    }
}

struct Row {
    entries: usize,
    verdict: Verdict,
    ztag: Cell,
    xdp_filter: Option<Cell>,
    floor: Cell,
}

impl Row {
    fn ratio_xf(&self) -> Option<f64> {
        let xf = self.xdp_filter.as_ref()?.median();
        Some(self.ztag.median() / xf)
    }
    fn ratio_floor(&self) -> f64 {
        self.ztag.median() / self.floor.median()
    }
}

struct SizeResult {
    entries: usize,
    ztag_import_secs: f64,
    xdp_filter: Option<(String, u32, f64)>,
    rows: Vec<Row>,
}

/// The blocklist of `n` distinct odd addresses from 100.64.0.0/10, the
/// address to drop (the middle entry) and one to pass (just above it).
fn addresses(n: usize) -> (Vec<Ipv4Addr>, Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let addrs: Vec<Ipv4Addr> = (0..n as u32)
        .map(|i| Ipv4Addr::from(base + 2 * i + 1))
        .collect();
    let drop = addrs[n / 2];
    let pass = Ipv4Addr::from(u32::from(drop) + 1);
    (addrs, drop, pass)
}

fn bench_size(o: &Opts, index: usize, n: usize) -> Result<SizeResult> {
    let (addrs, drop_src, pass_src) = addresses(n);
    let tag = index.to_string();
    eprintln!("[{n} entries] ztag: importing {n} /32s ...");
    let ztag = load_ztag(&tag, &addrs)?;
    eprintln!("[{n} entries] ztag: import took {:.3} s", ztag.import_secs);
    check_interrupted()?;
    let xf = if n <= XDP_FILTER_MAX {
        eprintln!("[{n} entries] xdp-filter: loading and adding {n} addresses ...");
        let xf = load_xdp_filter(&tag, &addrs)?;
        eprintln!(
            "[{n} entries] xdp-filter: {} (id {}), addresses added in {:.3} s",
            xf.prog_name, xf.prog_id, xf.fill_secs
        );
        Some(xf)
    } else {
        eprintln!("[{n} entries] xdp-filter: n/a (holds at most {XDP_FILTER_MAX} addresses)");
        None
    };
    check_interrupted()?;
    let plane = ztag.enforcer.plane();
    let ztag_fd = plane
        .program_fd(XDP_PROGRAM)
        .context("ztag's XDP program has no fd")?;
    let floor_fd = plane
        .program_fd(FLOOR_PROGRAM)
        .context("the floor program has no fd")?;
    let xf_fd = xf.as_ref().map(|x| x.fd.as_raw_fd());

    let frames = [
        (
            Verdict::Pass,
            Frame::new().tcp(IpAddr::V4(pass_src), ACK, 0),
            XDP_PASS,
        ),
        (
            Verdict::Drop,
            Frame::new().tcp(IpAddr::V4(drop_src), ACK, 0),
            XDP_DROP,
        ),
    ];
    let mut who = vec![Who::Ztag, Who::Floor];
    if xf_fd.is_some() {
        who.insert(1, Who::XdpFilter);
    }
    let fd_of = |w: Who| match w {
        Who::Ztag => ztag_fd,
        Who::XdpFilter => xf_fd.unwrap_or(-1),
        Who::Floor => floor_fd,
    };
    let expect = |w: Who, verdict: u32| if w == Who::Floor { XDP_DROP } else { verdict };

    // Warm-up (and a check of every verdict before any figure is kept).
    for (v, frame, verdict) in &frames {
        for &w in &who {
            let what = format!("{} on a {} frame", w.key(), v.name());
            one_run(
                fd_of(w),
                frame,
                o.repeat.min(10_000),
                expect(w, *verdict),
                &what,
            )?;
        }
    }

    // samples[frame][who]
    let mut samples: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); who.len()]; frames.len()];
    for round in 0..o.rounds {
        check_interrupted()?;
        for f in 0..frames.len() {
            let fi = (f + round) % frames.len();
            let (v, frame, verdict) = &frames[fi];
            for k in 0..who.len() {
                let wi = (k + round) % who.len();
                let w = who[wi];
                let what = format!("{} on a {} frame", w.key(), v.name());
                let s = one_run(fd_of(w), frame, o.repeat, expect(w, *verdict), &what)?;
                samples[fi][wi].push(s);
            }
        }
        eprintln!("[{n} entries] round {}/{} done", round + 1, o.rounds);
    }

    let mut rows = Vec::new();
    for (fi, (v, _, _)) in frames.iter().enumerate() {
        let take = |w: Who| {
            who.iter().position(|x| *x == w).map(|i| Cell {
                samples: samples[fi][i].clone(),
            })
        };
        let ztag_cell = take(Who::Ztag).context("no ztag samples")?;
        let xf_cell = take(Who::XdpFilter);
        let floor_cell = take(Who::Floor).context("no floor samples")?;
        rows.push(Row {
            entries: n,
            verdict: *v,
            ztag: ztag_cell,
            xdp_filter: xf_cell,
            floor: floor_cell,
        });
    }
    Ok(SizeResult {
        entries: n,
        ztag_import_secs: ztag.import_secs,
        xdp_filter: xf
            .as_ref()
            .map(|x| (x.prog_name.clone(), x.prog_id, x.fill_secs)),
        rows,
    })
}

// ------------------------------------------------------------------ flood

/// The flooding source (blocked by every dropper) and the receiver.
const FLOOD_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const FLOOD_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The allowed client's source address (sending namespace; no dropper
/// blocks it).
const CLIENT_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The ztag daemon turns one drop in this many into an event it reads.
const DAEMON_SAMPLE_ONE_IN: u32 = 64;
/// The client's connect and answer timeouts (one SYN retransmit fits).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A latency sample stops after this long, whatever it has done by then.
const PROBE_BUDGET: Duration = Duration::from_secs(30);
/// The paced flood runs this long before the client starts.
const PROBE_LEAD: Duration = Duration::from_millis(300);
/// The client's pause between requests (idle as under the flood), so that
/// its requests span about a second of the flood.
const PROBE_GAP: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dropper {
    ZtagXdp,
    XdpFloor,
    NftIngress,
    IptablesRaw,
}

impl Dropper {
    const ALL: [Dropper; 4] = [
        Dropper::ZtagXdp,
        Dropper::XdpFloor,
        Dropper::NftIngress,
        Dropper::IptablesRaw,
    ];

    fn key(self) -> &'static str {
        match self {
            Dropper::ZtagXdp => "ztag_xdp",
            Dropper::XdpFloor => "xdp_floor",
            Dropper::NftIngress => "nft_netdev_ingress",
            Dropper::IptablesRaw => "iptables_raw",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Dropper::ZtagXdp => "ztag XDP (native on the veth, 1-entry blocklist)",
            Dropper::XdpFloor => "floor: bare XDP_DROP program (native on the veth) ²",
            Dropper::NftIngress => "nftables netdev ingress (`ip saddr X counter drop`)",
            Dropper::IptablesRaw => "iptables raw PREROUTING (`-s X -j DROP`)",
        }
    }
}

/// Two namespaces joined by a veth: trafgen sends from `tx`, the droppers
/// sit in `rx`. Nothing leaves them.
struct FloodNet {
    tx_if: String,
    rx_if: String,
    tx_mac: String,
    rx_mac: String,
    // Deleting the namespaces deletes the veth and whatever is armed on it.
    rx: Netns,
    tx: Netns,
}

fn mac_of(ns: &str, iface: &str) -> Result<String> {
    let json = capture("ip", &["-n", ns, "-j", "link", "show", "dev", iface])
        .with_context(|| format!("`ip -n {ns} link show dev {iface}` failed"))?;
    let v: Value = serde_json::from_str(&json).context("parsing `ip -j link` output")?;
    v[0]["address"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("no MAC address for {iface}: {json}"))
}

fn flood_net() -> Result<FloodNet> {
    let pid = std::process::id();
    let tx = Netns::create(format!("ztag-bench-{pid}-tx"))?;
    let rx = Netns::create(format!("ztag-bench-{pid}-rx"))?;
    let (tx_if, rx_if) = (format!("zb{pid}t"), format!("zb{pid}r"));
    let (t, r) = (tx.name.as_str(), rx.name.as_str());
    run(
        "ip",
        &[
            "-n", t, "link", "add", &tx_if, "type", "veth", "peer", "name", &rx_if, "netns", r,
        ],
    )?;
    let src = format!("{FLOOD_SRC}/24");
    let dst = format!("{FLOOD_DST}/24");
    let client = format!("{CLIENT_SRC}/24");
    run("ip", &["-n", t, "addr", "add", &src, "dev", &tx_if])?;
    run("ip", &["-n", t, "addr", "add", &client, "dev", &tx_if])?;
    run("ip", &["-n", r, "addr", "add", &dst, "dev", &rx_if])?;
    run("ip", &["-n", t, "link", "set", &tx_if, "up"])?;
    run("ip", &["-n", r, "link", "set", &rx_if, "up"])?;
    run("ip", &["-n", r, "link", "set", "lo", "up"])?;
    // The allowed client's connections leave from CLIENT_SRC (trafgen writes
    // whole frames and takes no route); `probe` checks it.
    let client_ip = CLIENT_SRC.to_string();
    run(
        "ip",
        &[
            "-n",
            t,
            "route",
            "replace",
            "198.18.0.0/24",
            "dev",
            &tx_if,
            "src",
            &client_ip,
        ],
    )?;
    Ok(FloodNet {
        tx_mac: mac_of(t, &tx_if)?,
        rx_mac: mac_of(r, &rx_if)?,
        tx_if,
        rx_if,
        rx,
        tx,
    })
}

/// Runs `f` on a thread that has entered the network namespace `ns` (the
/// rest of the process stays where it is).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// The ztag daemon, `<target>/release/ztag`, built first (`cargo build
/// --release -p ztag-userspace --bin ztag`) when missing or older than the
/// sources.
fn ztag_daemon_bin() -> Result<PathBuf> {
    let bin = target_dir().join("release/ztag");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = ["ztag-userspace/src", "ztag-ebpf/src", "ztag-common/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    let stale = match (built, sources) {
        (None, _) => Some("missing"),
        (Some(b), Some(s)) if b < s => Some("older than the sources"),
        _ => None,
    };
    if let Some(why) = stale {
        eprintln!(
            "[flood] {} is {why}: cargo build --release -p ztag-userspace --bin ztag",
            bin.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "ztag-userspace",
                "--bin",
                "ztag",
            ])
            .current_dir(&root)
            .stdin(Stdio::null())
            .status()
            .context("starting cargo")?;
        ensure!(
            status.success(),
            "building the ztag daemon failed ({status})"
        );
    }
    ensure!(bin.exists(), "{} is missing", bin.display());
    Ok(fs::canonicalize(&bin).unwrap_or(bin))
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let t = if m.is_dir() {
            newest_mtime(&e.path())
        } else {
            m.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// CPU time of the daemon process (all its threads).
#[derive(Clone, Copy)]
struct DaemonCpu {
    /// utime + stime from /proc/PID/stat, in clock ticks.
    ticks: u64,
    /// The sum of the threads' on-CPU time from /proc/PID/task/*/schedstat
    /// (ns; `None`: no schedstat in this kernel).
    sched_ns: Option<u64>,
}

impl DaemonCpu {
    fn since(self, before: DaemonCpu) -> DaemonCpu {
        DaemonCpu {
            ticks: self.ticks.saturating_sub(before.ticks),
            sched_ns: self
                .sched_ns
                .zip(before.sched_ns)
                .map(|(a, b)| a.saturating_sub(b)),
        }
    }

    fn ms(self) -> f64 {
        self.ticks as f64 * 1e3 / clock_ticks_per_sec()
    }

    fn sched_ms(self) -> Option<f64> {
        self.sched_ns.map(|ns| ns as f64 / 1e6)
    }

    fn json(self, secs: f64) -> Value {
        json!({
            "ticks": self.ticks,
            "ms": round3(self.ms()),
            "percent_of_one_core": round3(pct_of_core(self.ms(), secs)),
            "schedstat_ms": self.sched_ms().map(round3),
            "schedstat_percent_of_one_core":
                self.sched_ms().map(|ms| round3(pct_of_core(ms, secs))),
        })
    }
}

/// `ztag run`, the real daemon, in the receiving namespace, with its pins,
/// state and admin socket named after this process. On drop it is stopped
/// (SIGTERM, then SIGKILL), detached (what `ztag detach --force` does: the
/// pinned link would keep the program attached) and its files removed.
struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    pins: PathBuf,
    iface: String,
    child: Option<Child>,
}

impl Daemon {
    fn start(bin: &Path, ns: &str, iface: &str) -> Result<Daemon> {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ztag-bench-{pid}-daemon"));
        let pins = PathBuf::from(format!("/sys/fs/bpf/ztag-bench-{pid}-daemon"));
        ensure!(!pins.exists(), "{} already exists", pins.display());
        ensure!(!dir.exists(), "{} already exists", dir.display());
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            dir,
            pins,
            iface: iface.to_string(),
            child: None,
        };
        fs::create_dir_all(&d.dir).with_context(|| format!("creating {}", d.dir.display()))?;
        let cfg = d.dir.join("ztag.toml");
        fs::write(
            &cfg,
            format!(
                "[xdp]\ninterfaces = [\"{iface}\"]\nmode = \"native\"\npin_dir = \"{}\"\n\
                 events_sample_one_in = {DAEMON_SAMPLE_ONE_IN}\n[state]\ndir = \"{}\"\n\
                 [admin]\nsocket = \"{}\"\n[metrics]\nlisten = \"off\"\n",
                d.pins.display(),
                d.dir.join("state").display(),
                d.socket().display()
            ),
        )?;
        let log = fs::File::create(d.log())?;
        // nsenter (not `ip netns exec`, which remounts /sys and would hide
        // /sys/fs/bpf) execs the daemon: the child's pid is the daemon's.
        d.child = Some(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg(&d.bin)
                .arg("--socket")
                .arg(d.socket())
                .args(["run", "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting `nsenter ... ztag run`")?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.cli(&["stats"]).is_err() {
            check_interrupted()?;
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("ztag run exited ({status}): {}", d.log_text());
            }
            ensure!(
                Instant::now() < deadline,
                "ztag run did not answer within 30 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let comm = fs::read_to_string(format!("/proc/{}/comm", d.pid()?)).unwrap_or_default();
        ensure!(
            comm.trim() == "ztag",
            "the daemon's process is {:?}, not ztag",
            comm.trim()
        );
        d.cli(&["block", "add", &FLOOD_SRC.to_string()])?;
        Ok(d)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("ztag.log")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn pid(&self) -> Result<u32> {
        Ok(self
            .child
            .as_ref()
            .context("the daemon is not running")?
            .id())
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("starting the ztag CLI")?;
        ensure!(
            out.status.success(),
            "`ztag {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Blocklist drops on the flood's interface (`ztag stats --json`).
    fn blocklist_drops(&self) -> Result<u64> {
        let json = self.cli(&["stats", "--json"])?;
        let v: Value = serde_json::from_str(&json).context("parsing `ztag stats --json`")?;
        Ok(v.as_array()
            .with_context(|| format!("`ztag stats --json` is not a list: {json}"))?
            .iter()
            .filter(|r| r["interface"] == self.iface.as_str() && r["reason"] == "blocklist")
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }

    fn cpu(&self) -> Result<DaemonCpu> {
        let pid = self.pid()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .context("bad /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |i: usize| -> Result<u64> {
            f.get(i - 3)
                .and_then(|x| x.parse().ok())
                .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
        };
        let sched_ns = fs::read_dir(format!("/proc/{pid}/task")).ok().map(|d| {
            d.flatten()
                .filter_map(|t| {
                    fs::read_to_string(t.path().join("schedstat"))
                        .ok()?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        });
        Ok(DaemonCpu {
            ticks: field(14)? + field(15)?,
            sched_ns,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: a signal to our own child, not yet reaped.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if self.pins.exists()
            && let Err(e) = detach_all(&self.pins)
        {
            eprintln!("warning: cleaning up {}: {e}", self.pins.display());
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && self.dir.exists()
        {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// Moves the calling thread (only) into the network namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let file = fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening /run/netns/{ns}"))?;
    // SAFETY: a valid network-namespace fd; setns only moves this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {ns}"));
    }
    Ok(())
}

/// A dropper set up in the receiving namespace; undone on drop.
enum Armed {
    /// ztag through the library's `Plane` (when the daemon is not at hand).
    Ztag(Box<Ztag>),
    /// The real daemon, `ztag run`, with the source blocked by `ztag block add`.
    Daemon(Box<Daemon>),
    /// The floor program attached (the link belongs to the loaded object and
    /// goes with it); it counts nothing, so `dropped` is what was sent.
    Floor {
        _ztag: Box<Ztag>,
    },
    Nft {
        ns: String,
        table: String,
    },
    Iptables {
        ns: String,
    },
}

const IPT_RULE: [&str; 4] = ["-s", "198.18.0.2/32", "-j", "DROP"];

fn arm(d: Dropper, net: &FloodNet, daemon: Option<&Path>) -> Result<Armed> {
    let ns = net.rx.name.clone();
    match d {
        Dropper::ZtagXdp if daemon.is_some() => {
            let bin = daemon.context("no daemon")?;
            Ok(Armed::Daemon(Box::new(Daemon::start(
                bin, &ns, &net.rx_if,
            )?)))
        }
        Dropper::ZtagXdp => {
            let iface = net.rx_if.clone();
            in_netns(&ns, move || {
                let mut z = load_ztag("flood", &[FLOOD_SRC])?;
                z.enforcer
                    .plane_mut()
                    .attach(&iface, AttachMode::Native)
                    .with_context(|| format!("attaching ztag to {iface} (native)"))?;
                Ok(Armed::Ztag(Box::new(z)))
            })
        }
        Dropper::XdpFloor => {
            let iface = net.rx_if.clone();
            in_netns(&ns, move || {
                let mut z = load_ztag("floor", &[])?;
                let p: &mut Xdp = z
                    .enforcer
                    .plane_mut()
                    .ebpf_mut()
                    .program_mut(FLOOR_PROGRAM)
                    .context("no floor program")?
                    .try_into()?;
                p.attach(&iface, XdpMode::Driver)
                    .with_context(|| format!("attaching the floor to {iface} (native)"))?;
                Ok(Armed::Floor { _ztag: Box::new(z) })
            })
        }
        Dropper::NftIngress => {
            let table = format!("ztag_bench_{}", std::process::id());
            let rules = format!(
                "table netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500;\n    ip saddr {FLOOD_SRC} counter drop\n  }}\n}}\n",
                net.rx_if
            );
            let mut child = Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting nft")?;
            child
                .stdin
                .take()
                .context("nft stdin")?
                .write_all(rules.as_bytes())?;
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(Armed::Nft { ns, table })
        }
        Dropper::IptablesRaw => {
            let mut args = vec![
                "netns",
                "exec",
                &ns,
                "iptables",
                "-w",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
            ];
            args.extend(IPT_RULE);
            run("ip", &args)?;
            Ok(Armed::Iptables { ns })
        }
    }
}

impl Armed {
    /// The daemon's CPU time so far (`None`: no daemon).
    fn daemon_cpu(&self) -> Result<Option<DaemonCpu>> {
        match self {
            Armed::Daemon(d) => d.cpu().map(Some),
            _ => Ok(None),
        }
    }

    /// Packets this dropper has dropped so far (`None`: it does not count).
    fn dropped(&self) -> Result<Option<u64>> {
        Ok(Some(match self {
            Armed::Floor { .. } => return Ok(None),
            Armed::Daemon(d) => d.blocklist_drops()?,
            Armed::Ztag(z) => {
                let counters = z.enforcer.plane().counters()?;
                counters
                    .values()
                    .map(|c| c.by_reason[Reason::Blocklist as usize].packets)
                    .sum()
            }
            Armed::Nft { ns, table } => {
                let json = capture(
                    "ip",
                    &[
                        "netns", "exec", ns, "nft", "-j", "list", "table", "netdev", table,
                    ],
                )
                .context("`nft -j list table` failed")?;
                let v: Value = serde_json::from_str(&json).context("parsing nft -j output")?;
                v["nftables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["rule"]["expr"].as_array())
                    .flatten()
                    .find_map(|e| e["counter"]["packets"].as_u64())
                    .with_context(|| format!("no counter in the nft rule: {json}"))?
            }
            Armed::Iptables { ns } => {
                let out = capture(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "iptables",
                        "-w",
                        "-t",
                        "raw",
                        "-L",
                        "PREROUTING",
                        "-v",
                        "-x",
                        "-n",
                    ],
                )
                .context("`iptables -t raw -L` failed")?;
                out.lines()
                    .find(|l| l.contains(" DROP "))
                    .and_then(|l| l.split_whitespace().next()?.parse().ok())
                    .with_context(|| format!("no DROP rule in iptables' listing: {out}"))?
            }
        }))
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        // ztag: the Ztag guard detaches (its link pin goes with the pins);
        // the Daemon guard stops the daemon and detaches.
        match self {
            Armed::Ztag(_) | Armed::Daemon(_) | Armed::Floor { .. } => {}
            Armed::Nft { ns, table } => {
                let _ = Command::new("ip")
                    .args([
                        "netns", "exec", ns, "nft", "delete", "table", "netdev", table,
                    ])
                    .stderr(Stdio::null())
                    .status();
            }
            Armed::Iptables { ns } => {
                let mut args = vec![
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-w",
                    "-t",
                    "raw",
                    "-D",
                    "PREROUTING",
                ];
                args.extend(IPT_RULE);
                let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
            }
        }
    }
}

/// The aggregate softirq time of all CPUs, in clock ticks (/proc/stat).
fn softirq_ticks() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    stat.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7)?.parse().ok())
        .context("no softirq column in /proc/stat")
}

/// Whether the kernel accounts softirq time exactly (`None`: its config is
/// not readable).
fn irq_time_accounting() -> Option<bool> {
    let config = capture(
        "sh",
        &[
            "-c",
            "zcat /proc/config.gz 2>/dev/null || cat \"/boot/config-$(uname -r)\"",
        ],
    )?;
    Some(
        config
            .lines()
            .any(|l| l.trim() == "CONFIG_IRQ_TIME_ACCOUNTING=y"),
    )
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

struct FloodSample {
    softirq_ns_per_pkt: f64,
    dropped: u64,
    sent: u64,
    secs: f64,
    /// The ztag daemon's CPU over the flood (ztag with the daemon only).
    daemon: Option<DaemonCpu>,
    /// The allowed client, idle and under a paced flood (not for the floor).
    probe: Option<ProbeSample>,
}

/// A trafgen run in the sending namespace: frames from FLOOD_SRC to
/// FLOOD_DST. Killed on drop if still running.
struct Trafgen {
    child: Option<Child>,
    started: Instant,
}

impl Trafgen {
    /// `packets` frames, as fast as trafgen goes (its TX ring).
    fn start(net: &FloodNet, packets: u64) -> Result<Trafgen> {
        let conf = format!(
            "{{ eth(da={}, sa={}), ipv4(saddr={FLOOD_SRC}, daddr={FLOOD_DST}, ttl=64), \
             tcp(sp=40000, dp=80, ack, seq=1, ackseq=1) }}\n",
            net.rx_mac, net.tx_mac
        );
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &net.tx.name,
            "trafgen",
            "-o",
            &net.tx_if,
            "-i",
            "-",
            "-n",
        ])
        .arg(packets.to_string())
        // One sender; leave the host's socket memory and IRQ affinity alone.
        .args(["--cpus", "1", "--no-sock-mem", "--notouch-irq"]);
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting trafgen")?;
        let stdin = child.stdin.take();
        let t = Trafgen {
            child: Some(child),
            started,
        };
        // Closing stdin ends the configuration: trafgen starts.
        stdin.context("trafgen stdin")?.write_all(conf.as_bytes())?;
        Ok(t)
    }

    /// Waits for trafgen to end; the frames it sent and its seconds.
    fn finish(mut self) -> Result<(u64, f64)> {
        let child = self.child.take().context("trafgen already waited for")?;
        let out = child.wait_with_output().context("waiting for trafgen")?;
        let secs = self.started.elapsed().as_secs_f64();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "trafgen failed ({}): {}",
            out.status,
            text.trim()
        );
        let sent = text
            .lines()
            .find(|l| l.contains("packets outgoing"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no packet count in trafgen's output: {text}"))?;
        Ok((sent, secs))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                signal_tree(c.id(), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to the process `pid` and its descendants, children first
/// (trafgen forks a worker per CPU, which does the sending).
fn signal_tree(pid: u32, sig: libc::c_int) {
    // The processes whose parent (field 4 of /proc/PID/stat) is `pid`.
    let children: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect();
    for c in children {
        signal_tree(c, sig);
    }
    // SAFETY: kill has no memory-safety preconditions; `pid` is a process
    // of ours (or its descendant) that has not been reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// One flood of `packets` frames from FLOOD_SRC through the armed dropper.
fn flood_once(net: &FloodNet, armed: &Armed, packets: u64) -> Result<FloodSample> {
    let before = armed.dropped()?;
    let cpu0 = armed.daemon_cpu()?;
    let s0 = softirq_ticks()?;
    let (sent, secs) = Trafgen::start(net, packets)?.finish()?;
    let s1 = softirq_ticks()?;
    let cpu1 = armed.daemon_cpu()?;
    let dropped = match (armed.dropped()?, before) {
        (Some(after), Some(before)) => after - before,
        _ => sent,
    };
    ensure!(dropped > 0, "nothing was dropped (sent {sent})");
    let ns = (s1 - s0) as f64 * 1e9 / clock_ticks_per_sec();
    Ok(FloodSample {
        softirq_ns_per_pkt: ns / dropped as f64,
        dropped,
        sent,
        secs,
        daemon: cpu1.zip(cpu0).map(|(a, b)| a.since(b)),
        probe: None,
    })
}

/// A one-byte echo server on FLOOD_DST in the receiving namespace (a thread
/// of ours that entered it); stopped on drop.
struct EchoServer {
    port: u16,
    fd: i32,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &str) -> Result<EchoServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopped = stop.clone();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            let bound = (|| -> Result<TcpListener> {
                enter_netns(&ns)?;
                let l = TcpListener::bind((FLOOD_DST, 0)).context("binding the echo server")?;
                // accept wakes up now and then to see whether to stop.
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                // SAFETY: a valid socket and option of the right size.
                let rc = unsafe {
                    libc::setsockopt(
                        l.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast(),
                        size_of::<libc::timeval>() as libc::socklen_t,
                    )
                };
                ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
                Ok(l)
            })();
            let l = match bound.and_then(|l| Ok((l.local_addr()?.port(), l))) {
                Ok((port, l)) => {
                    let _ = tx.send(Ok((port, l.as_raw_fd())));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stopped.load(Ordering::SeqCst) {
                if let Ok((mut c, _)) = l.accept() {
                    let _ = c.set_nodelay(true);
                    let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_ok() {
                        let _ = c.write_all(&b);
                    }
                }
            }
        });
        let (port, fd) = match rx.recv() {
            Ok(r) => r?,
            Err(_) => bail!("the echo server thread died"),
        };
        Ok(EchoServer {
            port,
            fd,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the listener is open until its thread ends (joined below);
        // shutting it down wakes a blocked accept at once.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An allowed client's request round trips (µs).
#[derive(Default)]
struct Latency {
    /// Requests asked for.
    target: usize,
    us: Vec<f64>,
    /// Requests that failed (timeout, reset, ...).
    failed: usize,
}

/// `n` sequential requests from CLIENT_SRC (a thread in the sending
/// namespace): TCP connect to the echo server, one byte each way, close.
fn probe(net: &FloodNet, port: u16, n: usize) -> Result<Latency> {
    let dst = SocketAddr::from((FLOOD_DST, port));
    in_netns(&net.tx.name, move || {
        let mut l = Latency {
            target: n,
            ..Latency::default()
        };
        let t0 = Instant::now();
        for i in 0..n {
            check_interrupted()?;
            if t0.elapsed() > PROBE_BUDGET {
                break;
            }
            if i > 0 {
                std::thread::sleep(PROBE_GAP);
            }
            let t = Instant::now();
            match round_trip(dst) {
                Ok(src) => {
                    ensure!(
                        src == IpAddr::V4(CLIENT_SRC),
                        "the client's connection left from {src}, not {CLIENT_SRC}"
                    );
                    l.us.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Err(_) => l.failed += 1,
            }
        }
        ensure!(!l.us.is_empty(), "none of the client's requests succeeded");
        Ok(l)
    })
}

/// One request; the source address it went out from.
fn round_trip(dst: SocketAddr) -> std::io::Result<IpAddr> {
    let mut c = TcpStream::connect_timeout(&dst, PROBE_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(PROBE_TIMEOUT))?;
    c.write_all(b"?")?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    Ok(c.local_addr()?.ip())
}

/// The `p` quantile (nearest rank) of `v`.
fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

struct ProbeSample {
    /// The dropper armed, no flood.
    idle: Latency,
    /// During the paced flood.
    flood: Latency,
    /// The paced flood: frames sent, sends that failed, dropped by the
    /// dropper, its seconds.
    sent: u64,
    send_failed: u64,
    dropped: u64,
    secs: f64,
    daemon: Option<DaemonCpu>,
}

/// The flood's frame as trafgen builds it: Ethernet to the receiving veth,
/// IPv4 from FLOOD_SRC to FLOOD_DST, TCP ACK 40000 → 80.
fn flood_frame(net: &FloodNet) -> Result<Vec<u8>> {
    let mac = |m: &str| -> Result<Vec<u8>> {
        let b: Vec<u8> = m
            .split(':')
            .map(|x| u8::from_str_radix(x, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad MAC address {m}"))?;
        ensure!(b.len() == 6, "bad MAC address {m}");
        Ok(b)
    };
    let mut f = Frame::new().tcp(IpAddr::V4(FLOOD_SRC), ACK, 0);
    f[0..6].copy_from_slice(&mac(&net.rx_mac)?);
    f[6..12].copy_from_slice(&mac(&net.tx_mac)?);
    // IPv4 header at 14: the destination, then the header checksum again.
    f[30..34].copy_from_slice(&FLOOD_DST.octets());
    f[24..26].fill(0);
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Ok(f)
}

/// What the paced sender did: frames sent, sends that failed, seconds.
struct Paced {
    sent: u64,
    failed: u64,
    secs: f64,
}

/// Sends `frame` out of the sending veth from an AF_PACKET socket (the
/// calling thread must be in the sending namespace), `pps` frames a second
/// in 1 ms batches, until `stop`.
fn paced_flood(iface: &str, frame: &[u8], pps: u64, stop: &AtomicBool) -> Result<Paced> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}");
    // SAFETY: plain socket creation; the fd is owned right away. Protocol 0:
    // the socket sends only.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd of ours.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a valid socket and address of the stated size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "binding the AF_PACKET socket to {iface}: {}",
        std::io::Error::last_os_error()
    );
    let batch = (pps / 1000).max(1);
    let (mut sent, mut failed, mut tried) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) && !INTERRUPTED.load(Ordering::SeqCst) {
        for _ in 0..batch {
            // SAFETY: a valid socket and buffer.
            let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n == frame.len() as isize {
                sent += 1;
            } else {
                let e = std::io::Error::last_os_error();
                ensure!(
                    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)),
                    "sending on {iface}: {e}"
                );
                failed += 1;
            }
        }
        // Paced on what was tried: failures do not make a burst later.
        tried += batch;
        let due = Duration::from_secs_f64(tried as f64 / pps as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(Paced {
        sent,
        failed,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// The allowed client's latency through the armed dropper: idle, then during
/// a flood paced to `o.probe_pps` that starts PROBE_LEAD before the client
/// and stops after its last request.
fn probe_flood(net: &FloodNet, armed: &Armed, port: u16, o: &Opts) -> Result<ProbeSample> {
    let idle = probe(net, port, o.probes).context("the client, no flood")?;
    let frame = flood_frame(net)?;
    let before = armed.dropped()?;
    let cpu0 = armed.daemon_cpu()?;
    let stop = AtomicBool::new(false);
    let (lat, paced) = std::thread::scope(|sc| {
        let sender = sc.spawn(|| {
            enter_netns(&net.tx.name)?;
            paced_flood(&net.tx_if, &frame, o.probe_pps, &stop)
        });
        std::thread::sleep(PROBE_LEAD);
        let lat = if sender.is_finished() {
            Err(anyhow::anyhow!(
                "the paced flood ended before the client started"
            ))
        } else {
            probe(net, port, o.probes)
        };
        let ran_through = !sender.is_finished();
        stop.store(true, Ordering::SeqCst);
        let paced = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the paced sender panicked"))
            .and_then(|r| r);
        ensure!(
            ran_through || lat.is_err() || paced.is_err(),
            "the paced flood ended before the client's requests did"
        );
        Ok((lat, paced))
    })?;
    let paced = paced.context("the paced flood")?;
    let lat = lat.context("the client, under the paced flood")?;
    let cpu1 = armed.daemon_cpu()?;
    let dropped = match (armed.dropped()?, before) {
        (Some(after), Some(before)) => after - before,
        _ => paced.sent,
    };
    Ok(ProbeSample {
        idle,
        flood: lat,
        sent: paced.sent,
        send_failed: paced.failed,
        dropped,
        secs: paced.secs,
        daemon: cpu1.zip(cpu0).map(|(a, b)| a.since(b)),
    })
}

struct FloodResult {
    packets: u64,
    retries: u32,
    rounds: usize,
    iptables: String,
    idle_ticks_per_sec: f64,
    /// The ztag daemon run (or why ztag went through the library instead).
    daemon: Result<PathBuf, String>,
    probes: usize,
    probe_pps: u64,
    probe_errors: Vec<String>,
    samples: Vec<(Dropper, Vec<FloodSample>)>,
}

enum Flood {
    NotRun(String),
    Done(FloodResult),
}

fn bench_flood(o: &Opts) -> Result<Flood> {
    if !o.flood {
        return Ok(Flood::NotRun("skipped with --no-flood".into()));
    }
    for tool in ["trafgen", "nft", "iptables", "nsenter"] {
        if !have(tool) {
            return Ok(Flood::NotRun(format!("{tool} is not installed")));
        }
    }
    let daemon = ztag_daemon_bin().map_err(|e| {
        eprintln!(
            "[flood] warning: no ztag daemon ({e:#}); ztag goes through the library's Plane \
             and its CPU is not measured"
        );
        format!("{e:#}")
    });
    eprintln!("[flood] idle softirq baseline (2 s) ...");
    let s0 = softirq_ticks()?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_ticks_per_sec = (softirq_ticks()? - s0) as f64 / 2.0;
    let net = flood_net()?;
    // Declared after the namespaces: it leaves the receiving one first.
    let server = EchoServer::start(&net.rx.name)?;
    let mut samples: Vec<(Dropper, Vec<FloodSample>)> =
        Dropper::ALL.iter().map(|&d| (d, Vec::new())).collect();
    let mut retries = 0;
    let mut probe_errors = Vec::new();
    for round in 0..o.flood_rounds {
        for k in 0..Dropper::ALL.len() {
            check_interrupted()?;
            let i = (k + round) % Dropper::ALL.len();
            let d = Dropper::ALL[i];
            let armed = arm(d, &net, daemon.as_deref().ok())
                .with_context(|| format!("setting up {}", d.key()))?;
            // trafgen gives up when a TX ring flush meets a full socket
            // buffer (EAGAIN), now and then when the receiver lags: start over.
            let mut attempt = 1;
            let mut s = loop {
                match flood_once(&net, &armed, o.flood_packets) {
                    Err(e) if attempt < 3 && format!("{e:#}").contains("TX_RING") => {
                        eprintln!("[flood] {}: trafgen gave up ({e:#}); again", d.key());
                        retries += 1;
                        attempt += 1;
                        check_interrupted()?;
                    }
                    r => break r.with_context(|| format!("flooding through {}", d.key()))?,
                }
            };
            eprintln!(
                "[flood] round {}/{}: {}: {:.0} ns softirq per dropped packet ({} of {} dropped, {:.2} Mpps){}",
                round + 1,
                o.flood_rounds,
                d.key(),
                s.softirq_ns_per_pkt,
                s.dropped,
                s.sent,
                s.sent as f64 / s.secs / 1e6,
                s.daemon.map_or(String::new(), |c| format!(
                    "; daemon CPU {:.0} ms = {:.1}% of a core",
                    c.ms(),
                    pct_of_core(c.ms(), s.secs)
                ))
            );
            // The floor drops the client too.
            if d != Dropper::XdpFloor {
                check_interrupted()?;
                match probe_flood(&net, &armed, server.port, o) {
                    Ok(p) => {
                        eprintln!(
                            "[flood] round {}/{}: {}: client median {:.0} µs idle, {:.0} µs under {:.0} kpps ({} of {} requests failed)",
                            round + 1,
                            o.flood_rounds,
                            d.key(),
                            quantile(&p.idle.us, 0.5),
                            quantile(&p.flood.us, 0.5),
                            p.sent as f64 / p.secs / 1e3,
                            p.flood.failed,
                            p.flood.target
                        );
                        s.probe = Some(p);
                    }
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("[flood] {}: the client probe failed: {e:#}", d.key());
                        probe_errors.push(format!("round {}, {}: {e:#}", round + 1, d.key()));
                    }
                }
            }
            drop(armed);
            samples[i].1.push(s);
        }
    }
    drop(server);
    Ok(Flood::Done(FloodResult {
        packets: o.flood_packets,
        retries,
        rounds: o.flood_rounds,
        iptables: capture("iptables", &["-V"]).unwrap_or_else(|| "?".into()),
        idle_ticks_per_sec,
        daemon: daemon.map(|p| p.to_path_buf()),
        probes: o.probes,
        probe_pps: o.probe_pps,
        probe_errors,
        samples,
    }))
}

fn flood_markdown(f: &Flood) -> String {
    let mut md = String::from("## Flood: softirq CPU per dropped packet (trafgen)\n\n");
    let w = &mut md;
    let r = match f {
        Flood::NotRun(why) => {
            let _ = writeln!(w, "Not run: {why}.");
            return md;
        }
        Flood::Done(r) => r,
    };
    let tck = clock_ticks_per_sec();
    let _ = writeln!(
        w,
        "trafgen (one process, `--cpus 1`) sends {} TCP ACK frames from {FLOOD_SRC} per run over a \
         veth pair between two namespaces of this process; in the receiving namespace exactly \
         one dropper is set up per run, fresh, and the droppers take turns ({} round(s), order \
         rotated). CPU cost: the growth of the aggregate softirq time in /proc/stat (all CPUs; \
         the receive processing of a veth runs as NET_RX softirq) during the run, divided by the \
         packets the dropper counted as dropped (/proc/stat counts in units of 1/{tck:.0} s). \
         {} The idle baseline measured before the runs was {:.2} ticks/s (not subtracted). \
         On a veth, native XDP sees frames that trafgen's skbs were converted to (copied) on \
         the receiving side, so this compares the drop paths of one host's stack, not a NIC \
         driver's. iptables: `{}`.{}\n",
        r.packets,
        r.rounds,
        match irq_time_accounting() {
            Some(true) => "This kernel accounts softirq time exactly (CONFIG_IRQ_TIME_ACCOUNTING).",
            Some(false) => {
                "This kernel samples softirq time at the tick (no CONFIG_IRQ_TIME_ACCOUNTING), \
                 so each figure is statistical."
            }
            None => {
                "Whether this kernel accounts softirq time exactly or samples it at the tick \
                 (CONFIG_IRQ_TIME_ACCOUNTING) is unknown."
            }
        },
        r.idle_ticks_per_sec,
        r.iptables,
        if r.retries > 0 {
            format!(
                " trafgen gave up on a full socket buffer {} time(s); those runs were repeated.",
                r.retries
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        w,
        "| dropper | softirq ns per dropped packet (median, min–max) | relative to ztag XDP | dropped / sent | sender rate (Mpps, median) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|");
    let ztag = r
        .samples
        .iter()
        .find(|(d, _)| *d == Dropper::ZtagXdp)
        .map(|(_, s)| median(s.iter().map(|x| x.softirq_ns_per_pkt).collect()));
    for (d, s) in &r.samples {
        let ns: Vec<f64> = s.iter().map(|x| x.softirq_ns_per_pkt).collect();
        let m = median(ns.clone());
        let lo = ns.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ns.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let dropped: u64 = s.iter().map(|x| x.dropped).sum();
        let sent: u64 = s.iter().map(|x| x.sent).sum();
        let rate = median(s.iter().map(|x| x.sent as f64 / x.secs / 1e6).collect());
        let rel = ztag.map_or("n/a".to_string(), |z| format!("{:.2}", m / z));
        let name = dropper_name(*d, r);
        let _ = writeln!(
            w,
            "| {name} | {m:.0} ({lo:.0}–{hi:.0}) | {rel} | {dropped} / {sent} | {rate:.2} |"
        );
    }
    let _ = writeln!(
        w,
        "\n² The floor counts nothing: its \"dropped\" is what trafgen sent. ztag XDP minus \
         the floor is ztag's own share; the floor itself is what a veth spends to hand a \
         trafgen skb to any XDP program."
    );
    match &r.daemon {
        Ok(bin) => {
            let _ = writeln!(
                w,
                "\n³ `{}` in the receiving namespace (`nsenter --net`), started afresh for \
                 each of its runs with its own pins, state and admin socket; its figure \
                 includes the drop-event sampling that the daemon reads.",
                bin.display()
            );
        }
        Err(why) => {
            let _ = writeln!(
                w,
                "\nztag went through the library's `Plane` (no drop events), not the daemon: \
                 {why}."
            );
        }
    }
    daemon_cpu_markdown(w, r);
    client_markdown(w, r);
    md
}

/// How the reports name a dropper (ztag: as it ran).
fn dropper_name(d: Dropper, r: &FloodResult) -> String {
    match (d, &r.daemon) {
        (Dropper::ZtagXdp, Ok(_)) => format!(
            "ztag XDP: the daemon (`ztag run`, native on the veth, `ztag block add`, events \
             1 in {DAEMON_SAMPLE_ONE_IN}) ³"
        ),
        _ => d.describe().to_string(),
    }
}

fn pct_of_core(ms: f64, secs: f64) -> f64 {
    ms / 10.0 / secs
}

fn daemon_cpu_markdown(w: &mut String, r: &FloodResult) {
    let _ = writeln!(w, "\n### ztag daemon CPU during the flood\n");
    if r.daemon.is_err() {
        let _ = writeln!(w, "Not measured: the daemon was not run (see above).");
        return;
    }
    let _ = writeln!(
        w,
        "Method: the daemon's utime+stime (/proc/PID/stat, all threads, in 1/{:.0} s ticks) \
         and its threads' on-CPU time (sum of /proc/PID/task/*/schedstat, ns), read just \
         before trafgen starts and after it ends; the difference in ms and as % of one core \
         over the flood's wall time. \"unpaced\": the flood above; \"paced\": the flood \
         the allowed client is probed under (below).\n",
        clock_ticks_per_sec()
    );
    let _ = writeln!(
        w,
        "| round | flood | wall s | dropped by ztag | daemon CPU ms (utime+stime) | % of one core | daemon on-CPU ms (schedstat) | % of one core |"
    );
    let _ = writeln!(w, "|---:|---|---:|---:|---:|---:|---:|---:|");
    let runs = r
        .samples
        .iter()
        .filter(|(d, _)| *d == Dropper::ZtagXdp)
        .flat_map(|(_, s)| s);
    let (mut total_ms, mut total_sched_ms, mut total_secs) = (0.0, Some(0.0), 0.0);
    for (round, s) in runs.enumerate() {
        let floods = [
            Some(("unpaced", s.secs, s.dropped, s.daemon)),
            s.probe
                .as_ref()
                .map(|p| ("paced", p.secs, p.dropped, p.daemon)),
        ];
        for (kind, secs, dropped, cpu) in floods.into_iter().flatten() {
            let Some(c) = cpu else { continue };
            let sched = c.sched_ms().map_or("n/a | n/a".into(), |ms| {
                format!("{ms:.1} | {:.2}", pct_of_core(ms, secs))
            });
            let _ = writeln!(
                w,
                "| {} | {kind} | {secs:.2} | {dropped} | {:.0} | {:.2} | {sched} |",
                round + 1,
                c.ms(),
                pct_of_core(c.ms(), secs)
            );
            if kind == "unpaced" {
                total_ms += c.ms();
                total_sched_ms = total_sched_ms.zip(c.sched_ms()).map(|(a, b)| a + b);
                total_secs += secs;
            }
        }
    }
    if total_secs > 0.0 {
        let _ = writeln!(
            w,
            "\nOver all unpaced floods ({total_secs:.2} s): {total_ms:.0} ms of daemon CPU by \
             utime+stime = {:.2}% of one core{}.",
            pct_of_core(total_ms, total_secs),
            total_sched_ms.map_or(String::new(), |ms| format!(
                "; {ms:.1} ms on-CPU by schedstat = {:.2}% of one core",
                pct_of_core(ms, total_secs)
            ))
        );
    }
}

fn client_markdown(w: &mut String, r: &FloodResult) {
    let _ = writeln!(w, "\n### Allowed client latency during the flood\n");
    let _ = writeln!(
        w,
        "Method: a one-byte echo server on {FLOOD_DST} in the receiving namespace; from \
         {CLIENT_SRC} (blocked by no dropper) in the sending namespace, {} sequential \
         requests {} ms apart (TCP connect, one byte each way, close; round trip timed) with \
         the dropper \
         armed and no flood (idle), then {} more during a flood of the same frames as \
         trafgen's from {FLOOD_SRC}, paced to {} frames/s by an AF_PACKET sender of this \
         process in the sending namespace (1 ms batches; started {} ms before the first \
         request, stopped after the last; trafgen's own `-b` sends each second's budget at \
         full speed, then pauses); medians and p99 (nearest rank) over all rounds. One \
         offered rate puts every dropper under the same load (unpaced, the cheaper dropper \
         would face the heavier flood). The floor drops the client too and is skipped.\n",
        r.probes,
        PROBE_GAP.as_millis(),
        r.probes,
        r.probe_pps,
        PROBE_LEAD.as_millis()
    );
    let _ = writeln!(
        w,
        "| dropper | idle median µs | idle p99 µs | flood median µs | flood p99 µs | median × idle | p99 × idle | failed (idle / flood) | paced flood kpps (achieved) | dropped / sent (paced) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (d, s) in &r.samples {
        if *d == Dropper::XdpFloor {
            continue;
        }
        let c = ClientStats::of(s);
        if c.runs == 0 {
            let _ = writeln!(
                w,
                "| {} | — | — | — | — | — | — | — | — | — |",
                dropper_name(*d, r)
            );
            continue;
        }
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} / {} | {:.0} | {} / {}{} |",
            dropper_name(*d, r),
            c.idle_p50,
            c.idle_p99,
            c.flood_p50,
            c.flood_p99,
            c.flood_p50 / c.idle_p50,
            c.flood_p99 / c.idle_p99,
            c.idle_failed,
            c.flood_failed,
            c.kpps,
            c.dropped,
            c.sent,
            if c.send_failed > 0 {
                format!(" ({} sends failed)", c.send_failed)
            } else {
                String::new()
            }
        );
    }
    for e in &r.probe_errors {
        let _ = writeln!(w, "\nNo client figure for {e}.");
    }
}

/// The allowed client's latency over a dropper's runs.
struct ClientStats {
    runs: usize,
    idle_p50: f64,
    idle_p99: f64,
    flood_p50: f64,
    flood_p99: f64,
    idle_n: usize,
    flood_n: usize,
    idle_failed: usize,
    flood_failed: usize,
    /// Median achieved rate of the paced floods.
    kpps: f64,
    dropped: u64,
    sent: u64,
    send_failed: u64,
}

impl ClientStats {
    fn of(samples: &[FloodSample]) -> ClientStats {
        let probes: Vec<&ProbeSample> = samples.iter().filter_map(|s| s.probe.as_ref()).collect();
        let idle: Vec<f64> = probes.iter().flat_map(|p| p.idle.us.clone()).collect();
        let flood: Vec<f64> = probes.iter().flat_map(|p| p.flood.us.clone()).collect();
        ClientStats {
            runs: probes.len(),
            idle_p50: quantile(&idle, 0.5),
            idle_p99: quantile(&idle, 0.99),
            flood_p50: quantile(&flood, 0.5),
            flood_p99: quantile(&flood, 0.99),
            idle_n: idle.len(),
            flood_n: flood.len(),
            idle_failed: probes.iter().map(|p| p.idle.failed).sum(),
            flood_failed: probes.iter().map(|p| p.flood.failed).sum(),
            kpps: median(
                probes
                    .iter()
                    .map(|p| p.sent as f64 / p.secs / 1e3)
                    .collect(),
            ),
            dropped: probes.iter().map(|p| p.dropped).sum(),
            sent: probes.iter().map(|p| p.sent).sum(),
            send_failed: probes.iter().map(|p| p.send_failed).sum(),
        }
    }

    fn json(&self) -> Value {
        if self.runs == 0 {
            return Value::Null;
        }
        json!({
            "idle": {
                "median_us": round3(self.idle_p50),
                "p99_us": round3(self.idle_p99),
                "requests_ok": self.idle_n,
                "requests_failed": self.idle_failed,
            },
            "flood": {
                "median_us": round3(self.flood_p50),
                "p99_us": round3(self.flood_p99),
                "requests_ok": self.flood_n,
                "requests_failed": self.flood_failed,
            },
            "median_ratio_flood_over_idle": round3(self.flood_p50 / self.idle_p50),
            "p99_ratio_flood_over_idle": round3(self.flood_p99 / self.idle_p99),
            "paced_flood_kpps_achieved_median": round3(self.kpps),
            "paced_flood_dropped": self.dropped,
            "paced_flood_sent": self.sent,
            "paced_flood_send_failed": self.send_failed,
        })
    }
}

fn flood_json(f: &Flood) -> Value {
    match f {
        Flood::NotRun(why) => json!({ "run": false, "reason": why }),
        Flood::Done(r) => json!({
            "run": true,
            "packets_per_run": r.packets,
            "trafgen_retries": r.retries,
            "rounds": r.rounds,
            "iptables": r.iptables,
            "clock_ticks_per_sec": clock_ticks_per_sec(),
            "irq_time_accounting": irq_time_accounting(),
            "idle_softirq_ticks_per_sec": r.idle_ticks_per_sec,
            "ztag_daemon": r.daemon.as_ref().ok().map(|p| p.display().to_string()),
            "ztag_daemon_not_run": r.daemon.as_ref().err(),
            "ztag_daemon_events_sample_one_in": r.daemon.is_ok().then_some(DAEMON_SAMPLE_ONE_IN),
            "daemon_cpu_method": "utime+stime of the daemon (/proc/PID/stat, clock ticks) and \
                the sum of its threads' /proc/PID/task/*/schedstat on-CPU ns, difference over \
                each flood; percent of one core over the flood's wall time",
            "client": {
                "method": "sequential TCP connect + 1-byte request/answer round trips from the \
                    allowed source to an echo server in the receiving namespace; idle (dropper \
                    armed, no flood), then during a flood of trafgen's frame from the blocked \
                    source paced to probe_pps frames/s by an AF_PACKET sender (1 ms batches); \
                    quantiles nearest-rank over all rounds",
                "src": CLIENT_SRC.to_string(),
                "dst": FLOOD_DST.to_string(),
                "requests_per_sample": r.probes,
                "probe_pps": r.probe_pps,
                "lead_ms": PROBE_LEAD.as_millis() as u64,
                "gap_between_requests_ms": PROBE_GAP.as_millis() as u64,
                "errors": r.probe_errors,
            },
            "droppers": r.samples.iter().map(|(d, s)| json!({
                "dropper": d.key(),
                "median_softirq_ns_per_dropped_packet":
                    round3(median(s.iter().map(|x| x.softirq_ns_per_pkt).collect())),
                "client_latency": ClientStats::of(s).json(),
                "runs": s.iter().map(|x| json!({
                    "softirq_ns_per_dropped_packet": round3(x.softirq_ns_per_pkt),
                    "dropped": x.dropped,
                    "sent": x.sent,
                    "secs": round3(x.secs),
                    "daemon_cpu": x.daemon.map(|c| c.json(x.secs)),
                    "client_probe": x.probe.as_ref().map(|p| json!({
                        "idle_median_us": round3(quantile(&p.idle.us, 0.5)),
                        "idle_p99_us": round3(quantile(&p.idle.us, 0.99)),
                        "idle_failed": p.idle.failed,
                        "flood_median_us": round3(quantile(&p.flood.us, 0.5)),
                        "flood_p99_us": round3(quantile(&p.flood.us, 0.99)),
                        "flood_requests": p.flood.target,
                        "flood_failed": p.flood.failed,
                        "paced_sent": p.sent,
                        "paced_send_failed": p.send_failed,
                        "paced_dropped": p.dropped,
                        "paced_secs": round3(p.secs),
                        "daemon_cpu": p.daemon.map(|c| c.json(p.secs)),
                    })),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }
}

// ---------------------------------------------------------------- report

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// UTC civil time from the epoch seconds (Howard Hinnant's algorithm).
fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

struct Host {
    kernel: String,
    cpu: String,
    cpus: usize,
    loadavg: String,
    xdp_tools: String,
    git: String,
}

fn host() -> Host {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Host {
        kernel: capture("uname", &["-r"]).unwrap_or_else(|| "?".into()),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "?".into()),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg: fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        xdp_tools: capture("dpkg-query", &["-W", "-f", "${Version}", "xdp-tools"])
            .unwrap_or_else(|| "?".into()),
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

fn fmt_ns(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// "median (min–max)".
fn fmt_cell(c: &Cell) -> String {
    let lo = c.samples.iter().min().copied().unwrap_or(0);
    let hi = c.samples.iter().max().copied().unwrap_or(0);
    format!("{} ({lo}–{hi})", fmt_ns(c.median()))
}

fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

fn markdown(o: &Opts, stamp: &str, h: &Host, results: &[SizeResult]) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# ztag XDP benchmark, {stamp} UTC\n");
    let _ = writeln!(
        w,
        "Host: Linux {}, {} ({} CPUs), load average at start {}; xdp-tools {}; ztag {}.{}\n",
        h.kernel,
        h.cpu,
        h.cpus,
        h.loadavg,
        h.xdp_tools,
        h.git,
        if o.quick { " **Quick run.**" } else { "" }
    );
    let xf_prog = results
        .iter()
        .find_map(|r| r.xdp_filter.as_ref())
        .map(|(name, _, _)| name.as_str());
    let _ = writeln!(
        w,
        "## Per-packet cost (BPF_PROG_TEST_RUN)\n\n\
         ns/packet as the kernel reports it (whole ns): median (and min–max) of {} runs of {} repetitions \
         on one 54-byte Ethernet/IPv4/TCP ACK frame. ztag, xdp-filter and the floor take \
         turns within every round (order rotated per round). DROP frames come from a listed \
         address, PASS frames from the unlisted address next to it. xdp-filter measured as \
         the program attached to its interface: `{}`. Floor: `{FLOOR_PROGRAM}` (returns \
         XDP_DROP at once).\n",
        o.rounds,
        o.repeat,
        xf_prog.unwrap_or("n/a")
    );
    let _ = writeln!(
        w,
        "| entries | verdict | ztag ns/pkt | xdp-filter ns/pkt | floor ns/pkt | ztag/xdp-filter | ztag/floor | ztag within 10% of xdp-filter |"
    );
    let _ = writeln!(w, "|---:|:---:|---:|---:|---:|---:|---:|:---:|");
    let mut na_note = false;
    for r in results.iter().flat_map(|r| &r.rows) {
        let (xf, ratio, goal) = match (&r.xdp_filter, r.ratio_xf()) {
            (Some(c), Some(q)) => (
                fmt_cell(c),
                format!("{q:.2}"),
                if q <= GOAL_RATIO { "yes" } else { "**no**" }.to_string(),
            ),
            _ => {
                na_note = true;
                ("n/a ¹".into(), "n/a".into(), "n/a".into())
            }
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {} |",
            fmt_count(r.entries),
            r.verdict.name(),
            fmt_cell(&r.ztag),
            xf,
            fmt_cell(&r.floor),
            ratio,
            r.ratio_floor(),
            goal
        );
    }
    if na_note {
        let _ = writeln!(
            w,
            "\n¹ n/a: xdp-filter holds exact addresses only, up to {} per family \
             (its `filter_ipv4` map has max_entries {XDP_FILTER_MAX}).",
            fmt_count(XDP_FILTER_MAX)
        );
    }
    let _ = writeln!(w, "\n## Blocklist update speed\n");
    let _ = writeln!(w, "| what | entries | seconds | entries/s | goal |");
    let _ = writeln!(w, "|---|---:|---:|---:|:---:|");
    for r in results {
        let goal = if r.entries >= 1_000_000 {
            if r.ztag_import_secs < IMPORT_GOAL_SECS {
                "1M in < 10 s: yes"
            } else {
                "1M in < 10 s: **no**"
            }
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "| ztag `Enforcer::import` (/32 lines; in-memory state DB + BPF maps) | {} | {:.3} | {:.0} | {goal} |",
            fmt_count(r.entries),
            r.ztag_import_secs,
            r.entries as f64 / r.ztag_import_secs
        );
    }
    for r in results {
        if let Some((_, _, secs)) = &r.xdp_filter {
            let _ = writeln!(
                w,
                "| xdp-filter, one `xdp-filter ip -m src ADDR` per address | {} | {:.3} | {:.0} | |",
                fmt_count(r.entries),
                secs,
                r.entries as f64 / secs
            );
        }
    }
    md
}

fn json_report(o: &Opts, stamp: &str, h: &Host, results: &[SizeResult], flood: &Flood) -> Value {
    let rows: Vec<Value> = results
        .iter()
        .flat_map(|r| &r.rows)
        .map(|r| {
            json!({
                "entries": r.entries,
                "verdict": r.verdict.name(),
                "ztag": r.ztag.json(),
                "xdp_filter": r.xdp_filter.as_ref().map(Cell::json),
                "floor": r.floor.json(),
                "ratio_ztag_xdp_filter": r.ratio_xf().map(round3),
                "ratio_ztag_floor": round3(r.ratio_floor()),
                "within_10pct_of_xdp_filter": r.ratio_xf().map(|q| q <= GOAL_RATIO),
            })
        })
        .collect();
    let updates: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "entries": r.entries,
                "ztag_import_secs": r.ztag_import_secs,
                "xdp_filter_fill_secs": r.xdp_filter.as_ref().map(|x| x.2),
                "xdp_filter_program": r.xdp_filter.as_ref().map(|x| x.0.clone()),
            })
        })
        .collect();
    json!({
        "benchmark": "xdp",
        "timestamp_utc": stamp,
        "quick": o.quick,
        "rounds": o.rounds,
        "repeat": o.repeat,
        "host": {
            "kernel": h.kernel,
            "cpu": h.cpu,
            "cpus": h.cpus,
            "loadavg_at_start": h.loadavg,
            "xdp_tools": h.xdp_tools,
            "git": h.git,
        },
        "per_packet": rows,
        "updates": updates,
        "import_goal_secs": IMPORT_GOAL_SECS,
        "flood": flood_json(flood),
    })
}

// ------------------------------------------------------------------ main

/// Names this benchmark gives its namespaces and pin directories carry the
/// process id: point out leftovers of runs that were killed outright.
fn warn_stale() {
    let alive = |name: &str| {
        name.strip_prefix("ztag-bench-")
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut stale = Vec::new();
    if let Some(list) = capture("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with("ztag-bench-") && !alive(name) {
                stale.push(format!("ip netns del {name}"));
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/sys/fs/bpf") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ztag-bench-") && !alive(&name) {
                stale.push(format!("rm -r /sys/fs/bpf/{name}"));
            }
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "warning: leftovers of an earlier, killed benchmark run:\n  {}",
            stale.join("\n  ")
        );
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xdp bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let o = parse_opts()?;
    if !is_root() {
        bail!(
            "this benchmark must run as root (it loads BPF programs and creates network \
             namespaces); e.g. `sudo -E env PATH=\"$PATH\" cargo xtask bench xdp`"
        );
    }
    for tool in ["ip", "xdp-filter", "xargs", "sh"] {
        ensure!(
            have(tool),
            "{tool} is not installed (run `cargo xtask setup`)"
        );
    }
    install_signal_handlers();
    warn_stale();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, hh, mi, ss) = utc(now);
    let file_stamp = format!("{y:04}{mo:02}{d:02}-{hh:02}{mi:02}{ss:02}");
    let stamp = format!("{y:04}-{mo:02}-{d:02} {hh:02}:{mi:02}:{ss:02}");
    let h = host();

    let mut results = Vec::new();
    for (i, &n) in o.sizes.iter().enumerate() {
        results.push(bench_size(&o, i, n)?);
    }

    let flood = bench_flood(&o)?;
    let mut md = markdown(&o, &stamp, &h, &results);
    md.push('\n');
    md.push_str(&flood_markdown(&flood));
    let json = json_report(&o, &stamp, &h, &results, &flood);

    fs::create_dir_all(&o.out_dir).with_context(|| format!("creating {}", o.out_dir.display()))?;
    let base = o.out_dir.join(format!("xdp-{file_stamp}"));
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

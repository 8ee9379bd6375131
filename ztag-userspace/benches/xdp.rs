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
//! Reports go to `target/bench/xdp-YYYYMMDD-HHMMSS.{md,json}` (UTC); the
//! markdown is printed as well. Every namespace, veth and pin this creates
//! carries the process id and is removed on exit, on error and on Ctrl-C.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
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
  --flood-rounds N   flood runs per dropper; default 3 (quick: 1)";

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
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        o.rounds > 0 && o.repeat > 0 && o.flood_packets > 0 && o.flood_rounds > 0,
        "--rounds, --repeat, --flood-packets and --flood-rounds must be positive"
    );
    ensure!(
        o.sizes.iter().all(|&n| (1..=2_000_000).contains(&n)),
        "--sizes must be between 1 and 2000000 (the list maps' capacity)"
    );
    Ok(o)
}

fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench")
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
    run("ip", &["-n", t, "addr", "add", &src, "dev", &tx_if])?;
    run("ip", &["-n", r, "addr", "add", &dst, "dev", &rx_if])?;
    run("ip", &["-n", t, "link", "set", &tx_if, "up"])?;
    run("ip", &["-n", r, "link", "set", &rx_if, "up"])?;
    run("ip", &["-n", r, "link", "set", "lo", "up"])?;
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
    let file = fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening /run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a valid network-namespace fd; setns only moves this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("entering network namespace {ns}"));
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// A dropper set up in the receiving namespace; undone on drop.
enum Armed {
    Ztag(Box<Ztag>),
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

fn arm(d: Dropper, net: &FloodNet) -> Result<Armed> {
    let ns = net.rx.name.clone();
    match d {
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
    /// Packets this dropper has dropped so far (`None`: it does not count).
    fn dropped(&self) -> Result<Option<u64>> {
        Ok(Some(match self {
            Armed::Floor { .. } => return Ok(None),
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
        // ztag: the Ztag guard detaches (its link pin goes with the pins).
        match self {
            Armed::Ztag(_) | Armed::Floor { .. } => {}
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
}

/// One flood of `packets` frames from FLOOD_SRC through the armed dropper.
fn flood_once(net: &FloodNet, armed: &Armed, packets: u64) -> Result<FloodSample> {
    let conf = format!(
        "{{ eth(da={}, sa={}), ipv4(saddr={FLOOD_SRC}, daddr={FLOOD_DST}, ttl=64), \
         tcp(sp=40000, dp=80, ack, seq=1, ackseq=1) }}\n",
        net.rx_mac, net.tx_mac
    );
    let before = armed.dropped()?;
    let s0 = softirq_ticks()?;
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args([
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
        .args(["--cpus", "1", "--no-sock-mem", "--notouch-irq"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting trafgen")?;
    child
        .stdin
        .take()
        .context("trafgen stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output().context("waiting for trafgen")?;
    let secs = t0.elapsed().as_secs_f64();
    let s1 = softirq_ticks()?;
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
    })
}

struct FloodResult {
    packets: u64,
    retries: u32,
    rounds: usize,
    iptables: String,
    idle_ticks_per_sec: f64,
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
    for tool in ["trafgen", "nft", "iptables"] {
        if !have(tool) {
            return Ok(Flood::NotRun(format!("{tool} is not installed")));
        }
    }
    eprintln!("[flood] idle softirq baseline (2 s) ...");
    let s0 = softirq_ticks()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let idle_ticks_per_sec = (softirq_ticks()? - s0) as f64 / 2.0;
    let net = flood_net()?;
    let mut samples: Vec<(Dropper, Vec<FloodSample>)> =
        Dropper::ALL.iter().map(|&d| (d, Vec::new())).collect();
    let mut retries = 0;
    for round in 0..o.flood_rounds {
        for k in 0..Dropper::ALL.len() {
            check_interrupted()?;
            let i = (k + round) % Dropper::ALL.len();
            let d = Dropper::ALL[i];
            let armed = arm(d, &net).with_context(|| format!("setting up {}", d.key()))?;
            // trafgen gives up when a TX ring flush meets a full socket
            // buffer (EAGAIN), now and then when the receiver lags: start over.
            let mut attempt = 1;
            let s = loop {
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
                "[flood] round {}/{}: {}: {:.0} ns softirq per dropped packet ({} of {} dropped, {:.2} Mpps)",
                round + 1,
                o.flood_rounds,
                d.key(),
                s.softirq_ns_per_pkt,
                s.dropped,
                s.sent,
                s.sent as f64 / s.secs / 1e6
            );
            drop(armed);
            samples[i].1.push(s);
        }
    }
    Ok(Flood::Done(FloodResult {
        packets: o.flood_packets,
        retries,
        rounds: o.flood_rounds,
        iptables: capture("iptables", &["-V"]).unwrap_or_else(|| "?".into()),
        idle_ticks_per_sec,
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
        let _ = writeln!(
            w,
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {rel} | {dropped} / {sent} | {rate:.2} |",
            d.describe()
        );
    }
    let _ = writeln!(
        w,
        "\n² The floor counts nothing: its \"dropped\" is what trafgen sent. ztag XDP minus \
         the floor is ztag's own share; the floor itself is what a veth spends to hand a \
         trafgen skb to any XDP program."
    );
    md
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
            "droppers": r.samples.iter().map(|(d, s)| json!({
                "dropper": d.key(),
                "median_softirq_ns_per_dropped_packet":
                    round3(median(s.iter().map(|x| x.softirq_ns_per_pkt).collect())),
                "runs": s.iter().map(|x| json!({
                    "softirq_ns_per_dropped_packet": round3(x.softirq_ns_per_pkt),
                    "dropped": x.dropped,
                    "sent": x.sent,
                    "secs": round3(x.secs),
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

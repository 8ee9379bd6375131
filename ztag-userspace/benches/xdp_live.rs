//! `cargo xtask bench xdp` (second part): a flood of real frames from a
//! blocked source, dropped by ztag's XDP program, a bare XDP_DROP (floor),
//! nftables at netdev ingress and iptables in the raw table, side by side.
//!
//! The frames come from BPF_PROG_TEST_RUN in live-frames mode (the kernel's
//! packet generator, what xdp-trafgen uses): a tiny program redirects each
//! frame into a veth, whose peer receives it as an xdp_frame, with no skb.
//! That is the path a real NIC driver gives native XDP; a trafgen flood over
//! a veth instead hands XDP a copy of an skb, and hides the saving.
//! nftables and iptables need an skb: the peer builds one (GRO on, so the
//! veth runs NAPI) and they drop it at their hooks.
//!
//! ztag runs as the real daemon (`ztag run`, attached natively to the
//! receiving veth, the source blocked with `ztag block add`, drop events
//! sampled 1 in 64 and read by the daemon).
//!
//! Measured per dropped frame: softirq CPU time (/proc/stat, all CPUs) on the
//! receiving side, and the sender's wall time; for ztag also the daemon's own
//! CPU during the flood; for every dropper the latency of an allowed client
//! (TCP connect + one request/answer from another address) during the flood
//! against an idle baseline. Rounds interleave the four droppers, the order
//! rotating each round; medians and ratios are reported. Every dropper's own
//! counter is checked against the frames sent.

use std::{
    fs,
    io::{Read, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use ztag::xdp::{
    BENCH_TX_PROGRAM, FLOOR_PROGRAM, Plane,
    test_run::{ACK, Frame, run_live},
};

const SRC: &str = "198.18.7.2";

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    ensure!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces, veth and pins of this run, removed on drop.
struct Env {
    tx_ns: String,
    rx_ns: String,
    pins: PathBuf,
    /// The daemon's pins, state and socket.
    daemon_pins: PathBuf,
    daemon_dir: PathBuf,
    ztag: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [&self.tx_ns, &self.rx_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_file(self.pins.join("prog_floor"));
        let _ = ztag::xdp::detach_all(&self.pins);
        let _ = ztag::xdp::detach_all(&self.daemon_pins);
        let _ = fs::remove_dir_all(&self.daemon_dir);
    }
}

/// A running `ztag run` in the receiving namespace; stopped and detached on
/// drop.
struct Daemon<'a> {
    env: &'a Env,
    child: std::process::Child,
}

impl Daemon<'_> {
    fn socket(env: &Env) -> PathBuf {
        env.daemon_dir.join("admin.sock")
    }

    fn cli(env: &Env, args: &[&str]) -> Result<String> {
        let out = Command::new(&env.ztag)
            .arg("--socket")
            .arg(Self::socket(env))
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "ztag {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start(env: &Env) -> Result<Daemon<'_>> {
        fs::create_dir_all(&env.daemon_dir)?;
        let cfg = env.daemon_dir.join("ztag.toml");
        fs::write(
            &cfg,
            format!(
                "[xdp]\ninterfaces = [\"zb0\"]\nmode = \"native\"\npin_dir = \"{}\"\nevents_sample_one_in = 64\n[state]\ndir = \"{}\"\n[admin]\nsocket = \"{}\"\n[metrics]\nlisten = \"off\"\n",
                env.daemon_pins.display(),
                env.daemon_dir.join("state").display(),
                Self::socket(env).display()
            ),
        )?;
        let log = fs::File::create(env.daemon_dir.join("ztag.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", env.rx_ns))
            .arg(&env.ztag)
            .arg("--socket")
            .arg(Self::socket(env))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ztag run")?;
        let d = Daemon { env, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Self::cli(env, &["stats"]).is_err() {
            ensure!(
                Instant::now() < deadline,
                "ztag run did not come up: {}",
                fs::read_to_string(env.daemon_dir.join("ztag.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self::cli(env, &["block", "add", SRC, "--reason", "bench flood"])?;
        Ok(d)
    }

    fn blocklist_drops(&self) -> Result<u64> {
        let v: serde_json::Value =
            serde_json::from_str(&Self::cli(self.env, &["stats", "--json"])?)?;
        Ok(v.as_array()
            .context("stats is not a list")?
            .iter()
            .filter(|r| r["interface"] == "zb0" && r["reason"] == "blocklist")
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }

    /// utime + stime of the daemon, in clock ticks (nsenter execs it, so the
    /// child's pid is the daemon's).
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(')').context("bad /proc/pid/stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pinned link keeps the program attached: remove it.
        let _ = ztag::xdp::detach_all(&self.env.daemon_pins);
        let _ = fs::remove_dir_all(self.env.daemon_dir.join("state"));
    }
}

fn softirq_ticks() -> Result<u64> {
    let s = fs::read_to_string("/proc/stat")?;
    let cpu = s.lines().next().context("empty /proc/stat")?;
    cpu.split_whitespace()
        .nth(7)
        .context("no softirq column in /proc/stat")?
        .parse()
        .context("softirq column")
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf with a valid name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn ifindex_in(ns: &str, dev: &str) -> Result<u32> {
    let j: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {ns} -j link show {dev}"))?)?;
    j[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .context("no ifindex in `ip -j link`")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dropper {
    Ztag,
    Floor,
    Nft,
    Iptables,
}

impl Dropper {
    fn name(self) -> &'static str {
        match self {
            Dropper::Ztag => "ztag XDP (native, 1-entry blocklist)",
            Dropper::Floor => "floor: bare XDP_DROP (native)",
            Dropper::Nft => "nftables netdev ingress",
            Dropper::Iptables => "iptables raw PREROUTING",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Dropper::Ztag => "ztag",
            Dropper::Floor => "floor",
            Dropper::Nft => "nftables",
            Dropper::Iptables => "iptables",
        }
    }
}

fn arm(env: &Env, d: Dropper) -> Result<Option<Daemon<'_>>> {
    let rx = &env.rx_ns;
    let nsenter = format!("nsenter --net=/run/netns/{rx}");
    match d {
        // GRO on for ztag as for nftables/iptables: the same veth setup for
        // every dropper that lets the allowed client through.
        Dropper::Ztag => {
            sh(&format!(
                "ip netns exec {rx} ethtool -K zb0 gro on >/dev/null"
            ))?;
            return Ok(Some(Daemon::start(env)?));
        }
        // nsenter, not `ip -n`: the latter remounts /sys and hides the pins.
        Dropper::Floor => sh(&format!(
            "{nsenter} ip link set dev zb0 xdpdrv pinned {}",
            env.pins.join("prog_floor").display()
        ))?,
        Dropper::Nft => sh(&format!(
            "ip netns exec {rx} ethtool -K zb0 gro on >/dev/null && \
             ip netns exec {rx} nft add table netdev ztagbench && \
             ip netns exec {rx} nft 'add chain netdev ztagbench ing {{ type filter hook ingress device zb0 priority -500; }}' && \
             ip netns exec {rx} nft add rule netdev ztagbench ing ip saddr {SRC} counter drop"
        ))?,
        Dropper::Iptables => sh(&format!(
            "ip netns exec {rx} ethtool -K zb0 gro on >/dev/null && \
             ip netns exec {rx} iptables -t raw -A PREROUTING -s {SRC} -j DROP"
        ))?,
    };
    Ok(None)
}

fn disarm(env: &Env, d: Dropper) -> Result<()> {
    let rx = &env.rx_ns;
    match d {
        // The daemon detaches when its guard drops.
        Dropper::Ztag => sh(&format!(
            "ip netns exec {rx} ethtool -K zb0 gro off >/dev/null"
        ))?,
        Dropper::Floor => sh(&format!("ip -n {rx} link set dev zb0 xdpdrv off"))?,
        Dropper::Nft => sh(&format!(
            "ip netns exec {rx} nft delete table netdev ztagbench; ip netns exec {rx} ethtool -K zb0 gro off >/dev/null"
        ))?,
        Dropper::Iptables => sh(&format!(
            "ip netns exec {rx} iptables -t raw -F; ip netns exec {rx} ethtool -K zb0 gro off >/dev/null"
        ))?,
    };
    Ok(())
}

/// Frames the dropper itself says it dropped (None: it keeps no count).
fn dropped(env: &Env, d: Dropper, daemon: Option<&Daemon<'_>>) -> Result<u64> {
    let rx = &env.rx_ns;
    Ok(match d {
        Dropper::Ztag => daemon
            .context("ztag daemon not running")?
            .blocklist_drops()?,
        // The veth's own count of frames its XDP program dropped.
        Dropper::Floor => {
            let out = sh(&format!("ip netns exec {rx} ethtool -S zb0"))?;
            out.lines()
                .filter(|l| l.contains("xdp_drops:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum()
        }
        Dropper::Nft => {
            let out = sh(&format!(
                "ip netns exec {rx} nft list table netdev ztagbench"
            ))?;
            out.split("packets ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .context("no packet counter in the nft rule")?
        }
        Dropper::Iptables => {
            let out = sh(&format!(
                "ip netns exec {rx} iptables -t raw -L PREROUTING -v -x -n"
            ))?;
            out.lines()
                .find(|l| l.contains("DROP"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .context("no DROP rule counter in iptables")?
        }
    })
}

/// An allowed client's request latencies (µs): TCP connect from 198.18.7.3
/// to a listener in the receiving namespace, one byte each way.
fn probe(
    env: &Env,
    port: u16,
    n: usize,
    delay: Duration,
) -> std::thread::JoinHandle<Result<Vec<f64>>> {
    let ns = env.tx_ns.clone();
    std::thread::spawn(move || {
        enter(&ns)?;
        std::thread::sleep(delay);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut c = std::net::TcpStream::connect_timeout(
                &format!("198.18.7.1:{port}").parse()?,
                Duration::from_secs(2),
            )?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"?")?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b)?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(out)
    })
}

fn enter(ns: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on the calling thread only.
    ensure!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A one-byte echo server in the receiving namespace; returns its port.
fn serve(env: &Env) -> Result<u16> {
    let ns = env.rx_ns.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let l = enter(&ns).and_then(|()| Ok(std::net::TcpListener::bind("198.18.7.1:0")?));
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(l.local_addr().map(|a| a.port()).map_err(Into::into));
        for mut c in l.incoming().flatten() {
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
        }
    });
    rx.recv()?
}

struct Sample {
    softirq_ticks: u64,
    wall_ns: f64,
    latency_us: Vec<f64>,
}

/// One flood; with `port`, an allowed client probes latency meanwhile.
fn flood(env: &Env, tx_fd: i32, frame: &[u8], frames: u32, port: Option<u16>) -> Result<Sample> {
    let ns = env.tx_ns.clone();
    let frame = frame.to_vec();
    let s0 = softirq_ticks()?;
    // With a probe, the flood is paced to the same offered rate for every
    // dropper: an unpaced sender goes as fast as the receiver lets it, so a
    // cheaper dropper would face a heavier flood.
    let paced = port.is_some();
    let sender = std::thread::spawn(move || -> Result<Duration> {
        enter(&ns)?;
        let t = Instant::now();
        if paced {
            let chunk = PROBE_PPS / 100;
            let mut sent = 0u32;
            while sent < frames {
                let n = chunk.min(frames - sent);
                run_live(tx_fd, &frame, n, 64).context("BPF_PROG_TEST_RUN (live frames)")?;
                sent += n;
                let due = Duration::from_secs_f64(f64::from(sent) / f64::from(PROBE_PPS));
                if let Some(wait) = due.checked_sub(t.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        } else {
            run_live(tx_fd, &frame, frames, 64).context("BPF_PROG_TEST_RUN (live frames)")?;
        }
        Ok(t.elapsed())
    });
    let latency = port.map(|p| probe(env, p, PROBES, Duration::from_millis(50)));
    let wall = sender
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let ds = softirq_ticks()? - s0;
    let latency_us = match latency {
        Some(h) => h
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))??,
        None => Vec::new(),
    };
    Ok(Sample {
        softirq_ticks: ds,
        wall_ns: wall.as_nanos() as f64 / f64::from(frames),
        latency_us,
    })
}

/// Requests an allowed client makes during each flood (and at baseline).
const PROBES: usize = 200;
/// Offered rate of the flood the client probes under (frames/s), for
/// PROBE_SECS: within what every dropper here can take.
const PROBE_PPS: u32 = 500_000;
const PROBE_SECS: u32 = 2;

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xdp_live bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("xdp_live bench: [--quick] [--rounds N] [--frames N] [--out DIR]");
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = opt("--rounds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(if quick { 1 } else { 3 });
    let frames: u32 = opt("--frames")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(if quick { 500_000 } else { 5_000_000 });
    let out_dir = opt("--out").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("bench")
    });
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (BPF programs, network namespaces)");
    }
    let id = std::process::id();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let ztag_bin = target.join("release/ztag");
    ensure!(
        ztag_bin.exists(),
        "{} is missing: `cargo build --release -p ztag-userspace --bin ztag` (cargo xtask bench xdp does)",
        ztag_bin.display()
    );
    let env = Env {
        tx_ns: format!("ztlive-tx-{id}"),
        rx_ns: format!("ztlive-rx-{id}"),
        pins: PathBuf::from(format!("/sys/fs/bpf/ztag-bench-live-{id}")),
        daemon_pins: PathBuf::from(format!("/sys/fs/bpf/ztag-bench-live-daemon-{id}")),
        daemon_dir: std::env::temp_dir().join(format!("ztag-bench-live-{id}")),
        ztag: ztag_bin,
    };
    sh(&format!("ip netns add {}", env.tx_ns))?;
    sh(&format!("ip netns add {}", env.rx_ns))?;
    sh(&format!(
        "ip link add za0 netns {} type veth peer name zb0 netns {}",
        env.tx_ns, env.rx_ns
    ))?;
    // The allowed client's address; the flood's blocked source (SRC) is
    // written into the frames and needs no address of its own.
    sh(&format!(
        "ip -n {} link set za0 up && ip -n {} addr add 198.18.7.3/24 dev za0",
        env.tx_ns, env.tx_ns
    ))?;
    sh(&format!(
        "ip -n {} link set zb0 up && ip -n {} addr add 198.18.7.1/24 dev zb0",
        env.rx_ns, env.rx_ns
    ))?;

    let mut plane = Plane::load(&env.pins)?;
    let p: &mut aya::programs::Xdp = plane
        .ebpf_mut()
        .program_mut(FLOOR_PROGRAM)
        .context("floor program missing")?
        .try_into()?;
    p.pin(env.pins.join("prog_floor"))?;
    let tx_fd = plane
        .program_fd(BENCH_TX_PROGRAM)
        .context("bench tx program")?;
    plane.set_bench_tx(ifindex_in(&env.tx_ns, "za0")?)?;

    let rx_mac: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {} -j link show zb0", env.rx_ns))?)?;
    let mac = rx_mac[0]["address"].as_str().context("no MAC")?.to_string();
    let mut frame = Frame::new().tcp(SRC.parse()?, ACK, 0);
    for (i, b) in mac.split(':').enumerate().take(6) {
        frame[i] = u8::from_str_radix(b, 16)?;
    }

    let port = serve(&env)?;
    let baseline = probe(&env, port, PROBES, Duration::ZERO)
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;

    let droppers = [
        Dropper::Ztag,
        Dropper::Floor,
        Dropper::Nft,
        Dropper::Iptables,
    ];
    let mut soft: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    let mut delivered: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    let mut daemon_cpu_pct: Vec<f64> = Vec::new();
    for round in 0..rounds {
        for k in 0..droppers.len() {
            let i = (k + round) % droppers.len();
            let d = droppers[i];
            let daemon = arm(&env, d)?;
            let before = dropped(&env, d, daemon.as_ref())?;
            let cpu0 = daemon.as_ref().map(|x| x.cpu_ticks()).transpose()?;
            let t0 = Instant::now();
            // Cost first, with nothing else running; then a second flood
            // with the allowed client probing (the floor drops everything,
            // the client included, so it gets no probe).
            let s = flood(&env, tx_fd, &frame, frames, None);
            let elapsed = t0.elapsed();
            let cpu1 = daemon.as_ref().map(|x| x.cpu_ticks()).transpose()?;
            let after = dropped(&env, d, daemon.as_ref())?;
            let probed = if d == Dropper::Floor {
                Ok(Vec::new())
            } else {
                flood(&env, tx_fd, &frame, PROBE_PPS * PROBE_SECS, Some(port)).map(|x| x.latency_us)
            };
            drop(daemon);
            disarm(&env, d)?;
            let s = s?;
            // A sender faster than the receiver overflows the veth's ring;
            // costs are per frame the dropper itself counted as dropped.
            let n = after.saturating_sub(before);
            ensure!(
                n >= u64::from(frames) / 2,
                "{}: dropped only {n} of {frames} frames",
                d.name()
            );
            let softirq_ns = s.softirq_ticks as f64 * 1e9 / ticks_per_sec() / n as f64;
            delivered[i].push(n as f64 / f64::from(frames));
            if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
                daemon_cpu_pct
                    .push((c1 - c0) as f64 / ticks_per_sec() / elapsed.as_secs_f64() * 100.0);
            }
            eprintln!(
                "round {round} {:<40} softirq {:>6.0} ns/dropped frame, sender wall {:>6.0} ns/frame, {n} of {frames} dropped",
                d.name(),
                softirq_ns,
                s.wall_ns,
            );
            soft[i].push(softirq_ns);
            wall[i].push(s.wall_ns);
            lat[i].extend(probed?);
        }
    }

    let med_soft: Vec<f64> = soft.iter().map(|v| median(v.clone())).collect();
    let med_wall: Vec<f64> = wall.iter().map(|v| median(v.clone())).collect();
    let (b50, b99) = (pct(&baseline, 0.5), pct(&baseline, 0.99));
    let stamp = sh("date -u +%Y%m%d-%H%M%S")?.trim().to_string();
    let mut md = format!(
        "# ztag flood benchmark (live XDP frames), {stamp} UTC\n\n\
         {frames} frames per run from one blocked source, {rounds} round(s), droppers interleaved. \
         Frames: BPF_PROG_TEST_RUN live-frames redirect into a veth (xdp_frames, no skb; \
         nftables/iptables get an skb built by the veth; GRO on for every dropper but the floor). \
         ztag is the real daemon (`ztag run`, native XDP, `ztag block add`, events 1 in 64 read by the daemon). \
         softirq: /proc/stat softirq time of all CPUs during the run ÷ frames (tick-sampled); \
         wall: the sender's time ÷ frames (it includes the receiver's work, which runs on the same CPU). \
         softirq is per frame the dropper itself counted (ztag: its stats; floor: the veth's xdp_drops; \
         nftables/iptables: their rule counters); frames the veth's ring overflowed never reached a dropper. \
         Allowed client: {PROBES} sequential TCP connect + 1-byte request/answer from 198.18.7.3 per run, \
         during a second flood paced to {PROBE_PPS} frames/s for every dropper, against an idle baseline (p50 {b50:.0} µs, p99 {b99:.0} µs).\n\n\
         | dropper | softirq ns per dropped frame (median) | × ztag | sender wall ns/frame (median) | × ztag | dropped/sent | client p50 µs (× idle) | client p99 µs (× idle) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (i, d) in droppers.iter().enumerate() {
        let (p50, p99) = (pct(&lat[i], 0.5), pct(&lat[i], 0.99));
        let client = if lat[i].is_empty() {
            "— (drops the client too) | —".to_string()
        } else {
            format!("{p50:.0} ({:.2}) | {p99:.0} ({:.2})", p50 / b50, p99 / b99)
        };
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {client} |\n",
            d.name(),
            med_soft[i],
            med_soft[i] / med_soft[0],
            med_wall[i],
            med_wall[i] / med_wall[0],
            median(delivered[i].clone()),
        ));
    }
    let goal = med_soft[2] / med_soft[0];
    let cpu = median(daemon_cpu_pct.clone());
    md.push_str(&format!(
        "\nGoal ≥ 4× cheaper than nftables per dropped packet: {:.2}× ({}).\n\
         ztag daemon CPU during its floods: {cpu:.2}% of one core (median; utime+stime of the process).\n",
        goal,
        if goal >= 4.0 { "met" } else { "not met" }
    ));
    let report = json!({
        "stamp": stamp,
        "frames_per_run": frames,
        "rounds": rounds,
        "client_baseline_us": { "p50": b50, "p99": b99, "samples": baseline },
        "ztag_daemon_cpu_percent_of_one_core": daemon_cpu_pct,
        "droppers": droppers.iter().enumerate().map(|(i, d)| json!({
            "dropper": d.key(),
            "softirq_ns_per_frame": soft[i],
            "softirq_ns_median": med_soft[i],
            "wall_ns_per_frame": wall[i],
            "wall_ns_median": med_wall[i],
            "dropped_over_sent": delivered[i],
            "client_p50_us": pct(&lat[i], 0.5),
            "client_p99_us": pct(&lat[i], 0.99),
        })).collect::<Vec<_>>(),
        "nftables_over_ztag_softirq": goal,
    });
    fs::create_dir_all(&out_dir)?;
    let base = out_dir.join(format!("xdp-live-{stamp}"));
    fs::write(base.with_extension("md"), &md)?;
    fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{md}\nwritten: {}.{{md,json}}", base.display());
    drop(plane);
    Ok(())
}

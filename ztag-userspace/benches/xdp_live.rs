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
//! Measured per dropped frame: softirq CPU time (/proc/stat, all CPUs) on the
//! receiving side, and the sender's wall time. Rounds interleave the four
//! droppers, the order rotating each round; medians and ratios are reported.
//! Every dropper's own counter is checked against the frames sent.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use ztag::{
    state::{ListKind, StateDb},
    xdp::{
        BENCH_TX_PROGRAM, FLOOR_PROGRAM, Plane, XDP_PROGRAM,
        lists::{AddSpec, Enforcer},
        test_run::{ACK, Frame, run_live},
    },
};
use ztag_common::{Reason, XdpConfig};

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
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [&self.tx_ns, &self.rx_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for p in ["prog_ztag", "prog_floor"] {
            let _ = fs::remove_file(self.pins.join(p));
        }
        let _ = ztag::xdp::detach_all(&self.pins);
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

struct Sample {
    softirq_ns: f64,
    wall_ns: f64,
}

fn arm(env: &Env, d: Dropper) -> Result<()> {
    let rx = &env.rx_ns;
    let nsenter = format!("nsenter --net=/run/netns/{rx}");
    match d {
        // nsenter, not `ip -n`: the latter remounts /sys and hides the pins.
        Dropper::Ztag => sh(&format!(
            "{nsenter} ip link set dev zb0 xdpdrv pinned {}",
            env.pins.join("prog_ztag").display()
        ))?,
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
    Ok(())
}

fn disarm(env: &Env, d: Dropper) -> Result<()> {
    let rx = &env.rx_ns;
    match d {
        Dropper::Ztag | Dropper::Floor => sh(&format!("ip -n {rx} link set dev zb0 xdpdrv off"))?,
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
fn dropped(env: &Env, d: Dropper, enforcer: &Enforcer) -> Result<Option<u64>> {
    let rx = &env.rx_ns;
    Ok(match d {
        Dropper::Ztag => Some(
            enforcer
                .plane()
                .counters()?
                .values()
                .map(|c| c.by_reason[Reason::Blocklist as usize].packets)
                .sum(),
        ),
        Dropper::Floor => None,
        Dropper::Nft => {
            let out = sh(&format!(
                "ip netns exec {rx} nft list table netdev ztagbench"
            ))?;
            let n = out
                .split("packets ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .context("no packet counter in the nft rule")?;
            Some(n)
        }
        Dropper::Iptables => {
            let out = sh(&format!(
                "ip netns exec {rx} iptables -t raw -L PREROUTING -v -x -n"
            ))?;
            let n = out
                .lines()
                .find(|l| l.contains("DROP"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .context("no DROP rule counter in iptables")?;
            Some(n)
        }
    })
}

fn flood(env: &Env, tx_fd: i32, frame: &[u8], frames: u32) -> Result<Sample> {
    let ns = env.tx_ns.clone();
    let frame = frame.to_vec();
    let s0 = softirq_ticks()?;
    let wall = std::thread::spawn(move || -> Result<Duration> {
        let f = fs::File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: setns on this (short-lived) thread only.
        ensure!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
            "setns: {}",
            std::io::Error::last_os_error()
        );
        let t = Instant::now();
        run_live(tx_fd, &frame, frames, 64).context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(t.elapsed())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let ds = softirq_ticks()? - s0;
    Ok(Sample {
        softirq_ns: ds as f64 * 1e9 / ticks_per_sec() / f64::from(frames),
        wall_ns: wall.as_nanos() as f64 / f64::from(frames),
    })
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
    let env = Env {
        tx_ns: format!("ztlive-tx-{id}"),
        rx_ns: format!("ztlive-rx-{id}"),
        pins: PathBuf::from(format!("/sys/fs/bpf/ztag-bench-live-{id}")),
    };
    sh(&format!("ip netns add {}", env.tx_ns))?;
    sh(&format!("ip netns add {}", env.rx_ns))?;
    sh(&format!(
        "ip link add za0 netns {} type veth peer name zb0 netns {}",
        env.tx_ns, env.rx_ns
    ))?;
    sh(&format!(
        "ip -n {} link set za0 up && ip -n {} addr add 198.18.7.2/24 dev za0",
        env.tx_ns, env.tx_ns
    ))?;
    sh(&format!(
        "ip -n {} link set zb0 up && ip -n {} addr add 198.18.7.1/24 dev zb0",
        env.rx_ns, env.rx_ns
    ))?;

    let mut plane = Plane::load(&env.pins)?;
    for (prog, pin) in [(XDP_PROGRAM, "prog_ztag"), (FLOOR_PROGRAM, "prog_floor")] {
        let p: &mut aya::programs::Xdp = plane
            .ebpf_mut()
            .program_mut(prog)
            .context("program missing")?
            .try_into()?;
        p.pin(env.pins.join(pin))?;
    }
    let tx_fd = plane
        .program_fd(BENCH_TX_PROGRAM)
        .context("bench tx program")?;
    plane.set_bench_tx(ifindex_in(&env.tx_ns, "za0")?)?;
    // Count under the receiving interface's own slot, as in production.
    plane.register_interface(ifindex_in(&env.rx_ns, "zb0")?)?;
    let ring = plane.take_events();
    // The daemon's defaults: events sampled 1 in 64, drained as it would.
    let base = XdpConfig {
        sample_one_in: 64,
        ..XdpConfig::default()
    };
    let mut enforcer = Enforcer::new(StateDb::in_memory()?, plane, base);
    enforcer.reconcile()?;
    enforcer.add(ListKind::Block, SRC, &AddSpec::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        let mut ring = ring;
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = ring.as_mut() {
                    while r.next().is_some() {
                        n += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };

    let rx_mac: serde_json::Value =
        serde_json::from_str(&sh(&format!("ip -n {} -j link show zb0", env.rx_ns))?)?;
    let mac = rx_mac[0]["address"].as_str().context("no MAC")?.to_string();
    let mut frame = Frame::new().tcp(SRC.parse()?, ACK, 0);
    for (i, b) in mac.split(':').enumerate().take(6) {
        frame[i] = u8::from_str_radix(b, 16)?;
    }

    let droppers = [
        Dropper::Ztag,
        Dropper::Floor,
        Dropper::Nft,
        Dropper::Iptables,
    ];
    let mut soft: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); droppers.len()];
    for round in 0..rounds {
        for k in 0..droppers.len() {
            let i = (k + round) % droppers.len();
            let d = droppers[i];
            arm(&env, d)?;
            let before = dropped(&env, d, &enforcer)?;
            let s = flood(&env, tx_fd, &frame, frames);
            let after = dropped(&env, d, &enforcer)?;
            disarm(&env, d)?;
            let s = s?;
            if let (Some(b), Some(a)) = (before, after) {
                ensure!(
                    a - b == u64::from(frames),
                    "{}: dropped {} of {frames} frames",
                    d.name(),
                    a - b
                );
            }
            eprintln!(
                "round {round} {:<40} softirq {:>6.0} ns/frame, sender wall {:>6.0} ns/frame",
                d.name(),
                s.softirq_ns,
                s.wall_ns
            );
            soft[i].push(s.softirq_ns);
            wall[i].push(s.wall_ns);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let events_seen = drain.join().unwrap_or(0);

    let med_soft: Vec<f64> = soft.iter().map(|v| median(v.clone())).collect();
    let med_wall: Vec<f64> = wall.iter().map(|v| median(v.clone())).collect();
    let stamp = sh("date -u +%Y%m%d-%H%M%S")?.trim().to_string();
    let mut md = format!(
        "# ztag flood benchmark (live XDP frames), {stamp} UTC\n\n\
         {frames} frames per run from one blocked source, {rounds} round(s), droppers interleaved. \
         Frames: BPF_PROG_TEST_RUN live-frames redirect into a veth (xdp_frames, no skb; \
         nftables/iptables get an skb built by the veth with GRO on). \
         softirq: /proc/stat softirq time of all CPUs during the run ÷ frames (tick-sampled); \
         wall: the sender's time ÷ frames (it includes the receiver's work, which runs on the same CPU). \
         Each dropper's own counter matched the frames sent (the floor keeps none). \
         Drop events sampled 1 in 64 and drained ({events_seen} read).\n\n\
         | dropper | softirq ns/frame (median) | × ztag | sender wall ns/frame (median) | × ztag |\n\
         |---|---:|---:|---:|---:|\n"
    );
    for (i, d) in droppers.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} |\n",
            d.name(),
            med_soft[i],
            med_soft[i] / med_soft[0],
            med_wall[i],
            med_wall[i] / med_wall[0]
        ));
    }
    let goal = med_soft[2] / med_soft[0];
    md.push_str(&format!(
        "\nGoal ≥ 4× cheaper than nftables per dropped packet: {:.2}× ({}).\n",
        goal,
        if goal >= 4.0 { "met" } else { "not met" }
    ));
    let report = json!({
        "stamp": stamp,
        "frames_per_run": frames,
        "rounds": rounds,
        "events_read": events_seen,
        "droppers": droppers.iter().enumerate().map(|(i, d)| json!({
            "dropper": d.key(),
            "softirq_ns_per_frame": soft[i],
            "softirq_ns_median": med_soft[i],
            "wall_ns_per_frame": wall[i],
            "wall_ns_median": med_wall[i],
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
    drop(enforcer);
    Ok(())
}

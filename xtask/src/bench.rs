//! `cargo xtask bench xdp [--quick] [-- ARGS...]`: setup, then the XDP
//! benchmark (`ztag-userspace/benches/xdp.rs`), which writes
//! `target/bench/xdp-YYYYMMDD-HHMMSS.{md,json}` and prints the markdown.
//!
//! `cargo xtask bench fga [--quick]`: setup, then the FGA engine benchmark
//! (`ztag-userspace/benches/fga.rs`), which writes
//! `target/bench/fga-YYYYMMDD-HHMMSS.md` and prints it.
//!
//! `cargo xtask bench mcp [--quick] [-- ARGS...]`: a release build of
//! `ztag`, then the MCP gateway benchmark (`ztag-userspace/benches/mcp.rs`),
//! which writes `target/bench/mcp-YYYYMMDD-HHMMSS.md` and prints it.
//!
//! `cargo xtask bench risk [--quick]`: a release build of `ztag`, then the
//! risk engine benchmark (`ztag-userspace/benches/risk.rs`), which writes
//! `target/bench/risk-YYYYMMDD-HHMMSS.md` and prints it.
//!
//! `cargo xtask bench proxy [--quick] [-- ARGS...]`: setup, a release build
//! of `ztag`, then the L7 benchmark (`ztag-userspace/benches/proxy.rs`:
//! ztag's gateway against HAProxy, Envoy and nginx), which writes
//! `target/bench/proxy-YYYYMMDD-HHMMSS.{md,json}` and prints the markdown.

use std::ffi::OsString;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::{header, run_command, setup};

#[derive(Args)]
pub struct BenchArgs {
    /// The suite; none: every suite in one run, writing BENCHMARKS.md.
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Subcommand)]
enum Which {
    /// Every suite below (quick settings, under 15 minutes), each with its
    /// peers in the same run, then BENCHMARKS.md with the machine, medians,
    /// ratios and PNG charts (docs/bench/). Same as `cargo xtask bench`.
    /// Name suites to run only those: `bench all proxy fga`.
    All {
        /// Only these suites (xdp, proxy, fga, inspect, mcp, risk, fleet).
        only: Vec<String>,
    },
    /// Redraws BENCHMARKS.md's charts (docs/bench/*.png) from the newest
    /// proxy report, without running anything.
    Charts,
    /// Per-packet cost of the XDP program next to xdp-filter and a bare
    /// XDP_DROP program, bulk blocklist import speed, a trafgen flood and a
    /// flood of live XDP frames against nftables and iptables drops (needs
    /// root). Extra args after `--` go to the first benchmark.
    Xdp(XdpArgs),
    /// The gateway with JWT validation against HAProxy (jwt_verify) and
    /// Envoy (jwt_authn), with nginx (no auth) as the baseline: peak req/s
    /// (wrk), latency at a fixed rate, RSS with 10k TLS connections. Extra
    /// args after `--` go to the benchmark binary.
    Proxy(ProxyArgs),
    /// The embedded FGA engine on a Drive-like store of 1,000,000 tuples:
    /// checks/s on 1 and 2 threads, check latency, batch check, cold start
    /// from SQLite, memory; OpenFGA's own engine (its CLI's `model test`)
    /// on the same test file as the anchor.
    Fga(FgaArgs),
    /// The prompt-injection detector (1 KB latency, MB/s on mixed text), the
    /// content filter (MB/s with and without hits, whole and streamed), and
    /// the gateway with and without inspection on one route each (h2load,
    /// nginx upstream, alternating rounds).
    Inspect(FgaArgs),
    /// An MCP tools/call through ztag (JWT, per-tool FGA check, inspection
    /// of arguments and result, audit) against calling the MCP server
    /// directly: p50/p99 at a fixed moderate rate, alternating rounds.
    /// Extra args after `--`: `--rate N --connections N --seconds N --rounds N`.
    Mcp(FgaArgs),
    /// The risk engine: event intake per second on one thread, and gateway
    /// throughput with the engine on vs off (h2load, nginx upstream,
    /// alternating rounds).
    Risk(FgaArgs),
    /// Fleet mode: route rate-limit decisions in Redis (added latency per
    /// request, decisions/s pipelined, redis-benchmark as the peer) and the
    /// propagation of a block between two gateways (needs root).
    Fleet(FgaArgs),
    /// A soak, not a speed test: the release `ztag` under mixed valid,
    /// invalid and hostile load for 30 minutes (`-- --minutes N`); fails on
    /// any unexpected answer, connection error, ERROR log line, or RSS
    /// growth after the first minute above `--rss-bound-mb` (64).
    Soak(FgaArgs),
}

#[derive(Args)]
struct FgaArgs {
    /// 100,000 tuples, 1 s per measure: done in under a minute.
    #[arg(long)]
    quick: bool,
    /// More options for the benchmark binary (`-- --tuples N --seconds S`).
    #[arg(last = true)]
    args: Vec<OsString>,
}

#[derive(Args)]
struct ProxyArgs {
    /// One short round: done in under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// More options for the benchmark binary, e.g. `-- --rounds 5 --no-rss`
    /// (`-- --help` lists them).
    #[arg(last = true)]
    args: Vec<OsString>,
}

#[derive(Args)]
struct XdpArgs {
    /// Fewer rounds and entries: done in under a minute.
    #[arg(long)]
    quick: bool,
    /// More options for the benchmark binary, e.g. `-- --rounds 9 --no-flood`
    /// (`-- --help` lists them).
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let Some(which) = args.which else {
        header("setup");
        setup::run()?;
        build_release()?;
        return crate::report::run(&[]);
    };
    match which {
        Which::Charts => crate::report::charts(),
        Which::All { only } => {
            header("setup");
            setup::run()?;
            build_release()?;
            crate::report::run(&only)
        }
        Which::Xdp(xdp) => run_xdp(xdp),
        Which::Proxy(proxy) => run_proxy(proxy),
        Which::Inspect(a) => {
            header("cargo bench -p ztag-userspace --bench inspect");
            let mut bench =
                crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "inspect", "--"]);
            if a.quick {
                bench.arg("--quick");
            }
            bench.args(&a.args);
            run_command(&mut bench)
        }
        Which::Mcp(a) => {
            build_release()?;
            header("cargo bench -p ztag-userspace --bench mcp");
            let mut bench = crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "mcp", "--"]);
            if a.quick {
                bench.arg("--quick");
            }
            bench.args(&a.args);
            run_command(&mut bench)
        }
        Which::Fleet(a) => {
            build_release()?;
            header("cargo bench -p ztag-userspace --bench fleet");
            let mut bench =
                crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "fleet", "--"]);
            if a.quick {
                bench.arg("--quick");
            }
            bench.args(&a.args);
            run_command(&mut bench)
        }
        Which::Soak(a) => {
            build_release()?;
            header("cargo bench -p ztag-userspace --bench soak");
            let mut bench =
                crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "soak", "--"]);
            if a.quick {
                bench.arg("--quick");
            }
            bench.args(&a.args);
            run_command(&mut bench)
        }
        Which::Risk(a) => {
            build_release()?;
            header("cargo bench -p ztag-userspace --bench risk");
            let mut bench =
                crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "risk", "--"]);
            if a.quick {
                bench.arg("--quick");
            }
            bench.args(&a.args);
            run_command(&mut bench)
        }
        Which::Fga(fga) => {
            header("setup");
            setup::run()?;
            header("cargo bench -p ztag-userspace --bench fga");
            let mut bench = crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "fga", "--"]);
            if fga.quick {
                bench.arg("--quick");
            }
            bench.args(&fga.args);
            if std::env::var_os("ZTAG_FGA").is_none() {
                bench.env("ZTAG_FGA", setup::fga_dir().join("bin/fga"));
            }
            run_command(&mut bench)
        }
    }
}

/// The release `ztag` the gateway benchmarks run.
fn build_release() -> Result<()> {
    header("cargo build --release -p ztag-userspace --bin ztag");
    run_command(&mut crate::cargo([
        "build",
        "--release",
        "-p",
        "ztag-userspace",
        "--bin",
        "ztag",
    ]))
}

fn run_proxy(args: ProxyArgs) -> Result<()> {
    header("setup");
    setup::run()?;

    build_release()?;

    header("cargo bench -p ztag-userspace --bench proxy");
    let mut bench = crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "proxy", "--"]);
    if args.quick {
        bench.arg("--quick");
    }
    bench.args(&args.args);
    // Where setup put Envoy, so the benchmark need not guess.
    if std::env::var_os("ZTAG_ENVOY").is_none() {
        bench.env("ZTAG_ENVOY", setup::envoy_dir().join("envoy/_bin/envoy"));
    }
    run_command(&mut bench)
}

fn run_xdp(args: XdpArgs) -> Result<()> {
    // Fail before building anything when the benchmark could not run.
    if !is_root() {
        bail!(
            "`cargo xtask bench xdp` must run as root (it loads BPF programs and creates \
             network namespaces); e.g. `sudo -E env PATH=\"$PATH\" cargo xtask bench xdp`"
        );
    }
    header("setup");
    setup::run()?;

    header("cargo bench -p ztag-userspace --bench xdp");
    let mut bench = crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "xdp", "--"]);
    if args.quick {
        bench.arg("--quick");
    }
    bench.args(&args.args);
    run_command(&mut bench)?;

    // The flood of live XDP frames (xdp_frames, no skb: the native path a
    // NIC driver gives) against nftables and iptables.
    // The flood runs the real daemon.
    header("cargo build --release -p ztag-userspace --bin ztag");
    run_command(&mut crate::cargo([
        "build",
        "--release",
        "-p",
        "ztag-userspace",
        "--bin",
        "ztag",
    ]))?;
    header("cargo bench -p ztag-userspace --bench xdp_live");
    let mut live = crate::cargo(["bench", "-p", "ztag-userspace", "--bench", "xdp_live", "--"]);
    if args.quick {
        live.arg("--quick");
    }
    run_command(&mut live)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            == Some("0")
    })
}

//! `cargo xtask bench risk`: the risk engine's cost.
//!
//! 1. Event intake on one thread: requests (the rate sketch only), failures
//!    of a few hundred known sources (sketch + exact table + decisions), and
//!    a flood of one-off spoofed sources (sketch only), events/s.
//! 2. Through the gateway: two `ztag run` (release, no kernel plane) in
//!    front of the same nginx, one with `[risk] enabled = false`; h2load
//!    sends the same GET to each in alternating rounds from a non-exempt
//!    address (127.0.0.2: loopback is exempt by default, so the bench sets
//!    `exempt = []`, and a rate baseline no single client reaches, so every
//!    request is scored and answered 200). Reports req/s per round, medians
//!    and the on/off ratio.
//!
//! Goals (issue 7): intake ≥ 1M events/s per core; the engine costs ≤ 3 %
//! of gateway throughput. Writes `target/bench/risk-YYYYMMDD-HHMMSS.md`.

/// The daemon's allocator (huge pages for the large tables).
#[global_allocator]
static ALLOC: ztag::alloc::ZtagAlloc = ztag::alloc::ZtagAlloc;

use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    time::Instant,
};

use ztag::risk::{
    config::RiskConfig,
    engine::{Engine, Kind},
};

#[path = "support/mod.rs"]
mod support;
use support::{Kill, free_port, wait_port};

fn intake(name: &str, n: u32, f: impl Fn(&Engine, u32)) -> (String, f64) {
    let (e, _rx) = Engine::new(
        RiskConfig {
            exempt: Vec::new(),
            ..RiskConfig::default()
        },
        &prometheus::Registry::new(),
    )
    .unwrap();
    let t = Instant::now();
    for i in 0..n {
        f(&e, i);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    (name.to_string(), rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn h2load(port: u16, n: usize) -> f64 {
    let out = Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "16", "-t", "1", "--h1"])
        .arg(format!("http://127.0.0.2:{port}/x"))
        .output()
        .expect("h2load");
    let s = String::from_utf8_lossy(&out.stdout);
    // Every answer a 200: a rate-limited run would measure 429s.
    assert!(
        s.contains(&format!("status codes: {n} 2xx")),
        "not all 2xx: {s}"
    );
    s.lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|r| r.trim().split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("h2load output: {s}"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 2_000_000 } else { 10_000_000 };
    let mut rows = Vec::new();
    let src = |i: u32| IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i % 256)));
    rows.push(intake("requests (rate sketch)", n, |e, i| {
        e.observe(src(i), None, None, Kind::Request)
    }));
    rows.push(intake(
        "client errors from 256 sources (table)",
        n,
        |e, i| e.observe(src(i), None, None, Kind::ClientError),
    ));
    rows.push(intake(
        "404s from one-off spoofed sources (sketch)",
        n,
        |e, i| {
            e.observe(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
                None,
                None,
                Kind::NotFound,
            )
        },
    ));
    rows.push(intake(
        "client errors with subject and client id (table ×3)",
        n / 4,
        |e, i| e.observe(src(i), Some("alice"), Some("agent"), Kind::ClientError),
    ));

    // Through the gateway.
    let root = support::root();
    let ztag = support::ztag_bin();
    let dir = std::env::temp_dir().join(format!("ztag-risk-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let up = free_port();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n server {{\n  listen 127.0.0.1:{up};\n  location / {{ return 200 'ok'; }}\n }}\n}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let _nginx = Kill(
        Command::new("nginx")
            .args(["-p", &format!("{}/", dir.display()), "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    wait_port(up);
    let mut gws = Vec::new();
    for (name, on) in [("on", true), ("off", false)] {
        let port = free_port();
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("ztag.toml"),
            format!(
                "[xdp]\nenabled = false\n[state]\ndir = \"{s}/state\"\n[admin]\nsocket = \"{s}/admin.sock\"\n[metrics]\nlisten = \"off\"\n[risk]\nenabled = {on}\nexempt = []\nrate_baseline = 10000000.0\n[gateway]\nworkers = 1\naccess_log = \"off\"\n[[gateway.listener]]\nname = \"plain\"\nbind = \"127.0.0.2:{port}\"\n[[gateway.upstream]]\nname = \"web\"\npeers = [\"127.0.0.1:{up}\"]\n[[gateway.route]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"web\"\npublic = true\n",
                s = d.display()
            ),
        )
        .unwrap();
        let k = Kill(
            Command::new(&ztag)
                .args(["run", "--config"])
                .arg(d.join("ztag.toml"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ztag run"),
        );
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
            assert!(t0.elapsed().as_secs() < 20, "ztag did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        gws.push((k, port));
    }
    let (rounds, reqs) = if quick { (3, 20_000) } else { (15, 100_000) };
    h2load(gws[0].1, 2000);
    h2load(gws[1].1, 2000);
    let (mut on, mut off, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut table = String::new();
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            let a = h2load(gws[0].1, reqs);
            (a, h2load(gws[1].1, reqs))
        } else {
            let b = h2load(gws[1].1, reqs);
            (h2load(gws[0].1, reqs), b)
        };
        table.push_str(&format!("| {} | {a:.0} | {b:.0} | {:.3} |\n", r + 1, a / b));
        on.push(a);
        off.push(b);
        ratio.push(a / b);
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let report = format!(
        "# Risk engine\n\nMachine: {cpu}. One thread for the intake; ztag `workers = 1`, h2load 16 connections (HTTP/1.1), nginx upstream, {rounds} alternating rounds of {reqs} requests.\n\n\
         ## Intake (events/s, one thread)\n\n| events | per second |\n|---|---:|\n{}\n\n\
         ## Gateway throughput with the engine on and off\n\n| round | on req/s | off req/s | on/off |\n|---:|---:|---:|---:|\n{table}\n\
         **Medians:** on {:.0} req/s, off {:.0} req/s; **on/off {:.3}** (goal ≥ 0.97).\n\n\
         Cross-check without the load generator's noise: one request event costs the engine 1 / {:.0} s (intake above); at {:.0} req/s on one worker that is **{:.2} %** of the worker's time.\n",
        rows.iter()
            .map(|(n, r)| format!("| {n} | {r:.0} |"))
            .collect::<Vec<_>>()
            .join("\n"),
        median(on.clone()),
        median(off.clone()),
        median(ratio),
        rows[0].1,
        median(off.clone()),
        median(off) / rows[0].1 * 100.0,
    );
    let stamp = String::from_utf8(
        Command::new("date")
            .arg("+%Y%m%d-%H%M%S")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("risk-{}.md", stamp.trim()));
    std::fs::write(&path, &report).unwrap();
    println!("{report}\nwritten to {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
}

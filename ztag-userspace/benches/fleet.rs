//! `cargo xtask bench fleet`: what fleet mode costs and how fast it is.
//!
//! 1. Route rate limits in Redis (Debian's redis-server on loopback, no
//!    persistence), through ztag's own client (`Fleet::take`: GCRA in a
//!    Lua script over one multiplexed connection):
//!    * the added latency per request: one decision at a time, p50/p99;
//!    * decisions/s with 64 in flight (pipelined on the connection);
//!    * as the peer, `redis-benchmark` on the same server: `EVALSHA` of a
//!      trivial script with 64 clients, the server's own ceiling for a
//!      script call.
//! 2. Propagation of a block between two `ztag run` (release) in the root
//!    namespace, each with its XDP program on its own veth (pair) and
//!    its own pin dir, state dir and admin socket: an entry added through
//!    one gateway's admin socket, then the other's list polled through its
//!    admin socket until the entry is there; p50/p99 over the samples.
//!
//! Goal (issue 9): added latency p99 < 1 ms on loopback. Needs root (XDP).
//! Writes `target/bench/fleet-YYYYMMDD-HHMMSS.md`.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ztag::fleet::{Fleet, FleetConfig};

#[path = "support/mod.rs"]
mod support;
use support::{Kill, free_port, root, wait_port, ztag_bin};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn redis(port: u16) -> Kill {
    let k = Kill(
        Command::new("redis-server")
            .current_dir(std::env::temp_dir())
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)"),
    );
    wait_port(port);
    k
}

fn fleet_cfg(port: u16, node: &str) -> FleetConfig {
    FleetConfig {
        redis: format!("redis://127.0.0.1:{port}"),
        node: node.into(),
        prefix: format!("bench{}", std::process::id()),
        global_rate_limits: true,
        timeout: Duration::from_secs(1),
        queue_max: 100_000,
        tombstone_ttl: Duration::from_secs(3600),
        session_key_file: None,
        share_risk_events: false,
        ca_file: None,
    }
}

/// (p50 µs, p99 µs, decisions/s sequential, decisions/s with 64 in flight)
fn rate_limits(port: u16, seconds: f64) -> (f64, f64, f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Fleet::new(fleet_cfg(port, "bench"), &prometheus::Registry::new()).unwrap();
        // Warm up (connection, script load).
        for i in 0..2000 {
            f.take(&format!("warm:{i}"), 1e6, 1e6).await.unwrap();
        }
        let mut lat = Vec::new();
        let t0 = Instant::now();
        let mut i = 0u64;
        while t0.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            f.take(
                &format!("route:src:10.0.{}.{}", (i / 250) % 250, i % 250),
                1e6,
                1e6,
            )
            .await
            .expect("a decision");
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            i += 1;
        }
        let seq_rate = lat.len() as f64 / t0.elapsed().as_secs_f64();
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let (f, done, stop) = (f.clone(), done.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if f.take(&format!("par:{t}:{}", i % 1000), 1e6, 1e6)
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let par_rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        (p50, p99, seq_rate, par_rate)
    })
}

/// redis-benchmark's EVALSHA of a one-line script, 64 clients: requests/s.
fn peer_evalsha(port: u16, n: u64) -> f64 {
    let p = port.to_string();
    let sha = Command::new("redis-cli")
        .args([
            "-p",
            &p,
            "SCRIPT",
            "LOAD",
            "return redis.call('INCR', KEYS[1])",
        ])
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &p,
            "-c",
            "64",
            "-n",
            &n.to_string(),
            "-r",
            "1000",
            "--csv",
        ])
        .args(["EVALSHA", &sha, "1", "bench:peer:__rand_int__"])
        .output()
        .expect("redis-benchmark");
    let s = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...","<rps>",...
    s.lines()
        .filter_map(|l| l.split("\",\"").nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next_back()
        .unwrap_or(0.0)
}

struct Gw {
    _proc: Kill,
    socket: PathBuf,
    iface: String,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.iface])
            .status();
    }
}

fn gateway(dir: &Path, name: &str, redis_port: u16) -> Gw {
    let iface = format!("zfb{}{name}", std::process::id() % 10000);
    let _ = Command::new("ip")
        .args(["link", "del", &iface])
        .stderr(Stdio::null())
        .status();
    let peer = format!("{iface}p");
    let ok = Command::new("ip")
        .args(["link", "add", &iface, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap()
        .success()
        && [&iface, &peer].iter().all(|i| {
            Command::new("ip")
                .args(["link", "set", i, "up"])
                .status()
                .unwrap()
                .success()
        });
    assert!(ok, "creating the veth pair {iface} (needs root)");
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let socket = d.join("admin.sock");
    let port = free_port();
    let config = format!(
        r#"[xdp]
interfaces = ["{iface}"]
mode = "skb"
pin_dir = "/sys/fs/bpf/ztag-bench-fleet-{pid}-{name}"
[state]
dir = "{state}"
[admin]
socket = "{socket}"
[metrics]
listen = "off"
[fleet]
redis = "redis://127.0.0.1:{redis_port}"
node = "{name}"
prefix = "benchlists{pid}"
[gateway]
access_log = "off"
[[gateway.listener]]
name = "plain"
bind = "127.0.0.1:{port}"
[[gateway.upstream]]
name = "none"
peers = ["127.0.0.1:9"]
[[gateway.route]]
name = "all"
path_prefix = "/"
upstream = "none"
public = true
"#,
        pid = std::process::id(),
        state = d.join("state").display(),
        socket = socket.display(),
    );
    std::fs::write(d.join("ztag.toml"), config).unwrap();
    let log = std::fs::File::create(d.join("ztag.log")).unwrap();
    let proc = Kill(
        Command::new(ztag_bin())
            .args(["--socket"])
            .arg(&socket)
            .args(["run", "--config"])
            .arg(d.join("ztag.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while admin(&socket, "GET", "/v1/fleet", "").map(|b| !b.contains("\"connected\":true"))
        != Some(false)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "gateway {name} did not join the fleet: {}",
            std::fs::read_to_string(d.join("ztag.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Gw {
        _proc: proc,
        socket,
        iface,
    }
}

/// One admin request over the Unix socket; the body of a 2xx answer.
fn admin(socket: &Path, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ztag\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let ok = head.split(' ').nth(1)?.starts_with('2');
    ok.then(|| body.to_string())
}

fn propagation(dir: &Path, redis_port: u16, samples: usize) -> Vec<f64> {
    let a = gateway(dir, "a", redis_port);
    let b = gateway(dir, "b", redis_port);
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let ip = format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1);
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        admin(
            &from.socket,
            "POST",
            "/v1/lists/block",
            &format!("{{\"cidr\":\"{ip}\",\"ttl_secs\":600}}"),
        )
        .expect("adding a block");
        let t0 = Instant::now();
        let want = format!("\"{ip}/32\"");
        loop {
            if admin(&to.socket, "GET", "/v1/lists/block", "").is_some_and(|l| l.contains(&want)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{ip} never arrived");
        }
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 1.0 } else { 4.0 };
    let port = free_port();
    let _redis = redis(port);
    let (p50, p99, seq, par) = rate_limits(port, seconds);
    let peer = peer_evalsha(port, if quick { 100_000 } else { 500_000 });

    let dir = std::env::temp_dir().join(format!("ztag-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let samples = if quick { 40 } else { 200 };
    let mut prop = propagation(&dir, port, samples);
    let (pp50, pp99) = (pct(&mut prop, 0.5), pct(&mut prop, 0.99));
    let pmax = prop.iter().cloned().fold(0.0, f64::max);
    for p in ["a", "b"] {
        let _ = std::fs::remove_dir_all(format!(
            "/sys/fs/bpf/ztag-bench-fleet-{}-{p}",
            std::process::id()
        ));
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
        "# Fleet mode\n\nMachine: {cpu}, 2 cores. Debian's redis-server on loopback (no persistence).\n\n\
         ## Route rate limits in Redis (GCRA Lua script, ztag's client)\n\n\
         | measure | value |\n|---|---:|\n\
         | added latency per request, p50 | {p50:.0} µs |\n\
         | added latency per request, p99 | {p99:.0} µs (goal < 1000) |\n\
         | decisions/s, one at a time | {seq:.0} |\n\
         | decisions/s, 64 in flight (pipelined) | {par:.0} |\n\
         | peer: redis-benchmark EVALSHA (trivial script), 64 clients | {peer:.0} |\n\
         | ztag pipelined / peer | {:.2} |\n\n\
         ## Propagation of a block between two gateways\n\n\
         Added through one gateway's admin socket, then polled in the other's list; {samples} samples, alternating direction.\n\n\
         | p50 | p99 | max |\n|---:|---:|---:|\n| {pp50:.2} ms | {pp99:.2} ms | {pmax:.2} ms |\n",
        par / peer.max(1.0)
    );
    let stamp = String::from_utf8(
        Command::new("date")
            .arg("+%Y%m%d-%H%M%S")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("fleet-{}.md", stamp.trim()));
    std::fs::write(&path, &report).unwrap();
    println!("{report}\nwritten to {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
}

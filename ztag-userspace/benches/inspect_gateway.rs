//! `cargo xtask bench inspect`, second part: what inspection costs through
//! the gateway. One `ztag run` (release build, `xdp.enabled = false`) with
//! two routes to the same nginx upstream: `/plain/` and `/inspected/`
//! (`inspect = "llm"`, `response_filter = "redact"`). h2load posts the same
//! 1 KB OpenAI chat request to each, in alternating rounds, and the upstream
//! answers a 1 KB chat completion without hits. Reports req/s and mean
//! latency per round, medians and the inspected/plain ratio.
//!
//! Writes `target/bench/inspect-gateway-YYYYMMDD-HHMMSS.md` and prints it.
//! Goal (issue 5): the inspected route costs ≤ 10% more.

use std::process::{Command, Stdio};

#[path = "support/mod.rs"]
mod support;
use support::{Kill, free_port, wait_port};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Every request here carries the same prompt: with the verdict cache on
    // (the default) the detector runs once; --no-cache makes it run on
    // every request, the cost of prompts never seen before.
    let no_cache = std::env::args().any(|a| a == "--no-cache");
    let (rounds, n) = if quick { (3, 4000) } else { (7, 20000) };
    let root = support::root();
    let ztag = support::ztag_bin();
    let dir = std::env::temp_dir().join(format!("ztag-inspect-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let (up, gw) = (free_port(), free_port());
    let answer = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
        "content": "Paris is the capital and most populous city of France. ".repeat(17)}}],
        "usage": {"prompt_tokens": 250, "completion_tokens": 220, "total_tokens": 470}})
    .to_string();
    assert!(!answer.contains('\'') && !answer.contains('$'));
    // One process (master_process off): killing it leaves nothing behind.
    let nginx_conf = format!(
        "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d};\n server {{\n  listen 127.0.0.1:{up};\n  location / {{ default_type application/json; return 200 '{answer}'; }}\n }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
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
    let config = format!(
        r#"[xdp]
enabled = false
[state]
dir = "{d}/state"
[admin]
socket = "{d}/admin.sock"
[metrics]
listen = "off"
[inspect]
cache_entries = {cache}
[gateway]
workers = 1
access_log = "off"
[[gateway.listener]]
name = "plain"
bind = "127.0.0.1:{gw}"
[[gateway.upstream]]
name = "llm"
peers = ["127.0.0.1:{up}"]
[[gateway.route]]
name = "plain"
path_prefix = "/plain/"
upstream = "llm"
public = true
[[gateway.route]]
name = "inspected"
path_prefix = "/inspected/"
upstream = "llm"
public = true
inspect = "llm"
response_filter = "redact"
"#,
        d = dir.display(),
        cache = if no_cache { 0 } else { 65536 },
    );
    std::fs::write(dir.join("ztag.toml"), config).unwrap();
    let _ztag = Kill(
        Command::new(&ztag)
            .args(["run", "--config"])
            .arg(dir.join("ztag.toml"))
            .stderr(std::fs::File::create(dir.join("ztag.log")).unwrap())
            .spawn()
            .expect("ztag"),
    );
    wait_port(gw);
    let prompt = "I am planning a trip to France next spring and would like some help. ".repeat(10);
    let body = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are a helpful travel assistant. Answer briefly."},
        {"role": "user", "content": prompt}]})
    .to_string();
    std::fs::write(dir.join("body.json"), &body).unwrap();
    let run = |path: &str| -> (f64, f64) {
        let out = Command::new("h2load")
            .args([
                "--h1",
                "-c",
                "16",
                "-n",
                &n.to_string(),
                "-H",
                "content-type: application/json",
                "-d",
            ])
            .arg(dir.join("body.json"))
            .arg(format!("http://127.0.0.1:{gw}{path}v1/chat/completions"))
            .output()
            .expect("h2load");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{n} succeeded")),
            "h2load on {path}: {text}"
        );
        let rps = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let mean_us = text
            .lines()
            .find(|l| l.trim_start().starts_with("time for request:"))
            .and_then(|l| l.split_whitespace().nth(5))
            .map(parse_us)
            .unwrap_or(0.0);
        (rps, mean_us)
    };
    // Check the inspected route answers (and redacts nothing here).
    run("/inspected/");
    run("/plain/");
    let mut rows = Vec::new();
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            ("/plain/", "/inspected/")
        } else {
            ("/inspected/", "/plain/")
        };
        let ra = run(a);
        let rb = run(b);
        let (p, i) = if a == "/plain/" { (ra, rb) } else { (rb, ra) };
        rows.push((p, i));
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let p_rps = med(rows.iter().map(|r| r.0.0).collect());
    let i_rps = med(rows.iter().map(|r| r.1.0).collect());
    let ratios: Vec<f64> = rows.iter().map(|r| r.1.0 / r.0.0).collect();
    let mut md = String::from("# Inspection through the gateway\n\n");
    md.push_str(&format!(
        "ztag (1 worker) → nginx, h2load --h1 -c 16 -n {n}, 1 KB chat request (system + user message), 1 KB answer; {rounds} alternating rounds; verdict cache {}\n\n| round | plain req/s | inspected req/s | ratio | plain mean | inspected mean |\n|---:|---:|---:|---:|---:|---:|\n",
        if no_cache { "off (every request scored)" } else { "on (the repeated prompt is scored once)" }
    ));
    for (k, ((pr, pl), (ir, il))) in rows.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {pr:.0} | {ir:.0} | {:.3} | {pl:.0} µs | {il:.0} µs |\n",
            k + 1,
            ir / pr
        ));
    }
    md.push_str(&format!(
        "\nmedian: plain {p_rps:.0} req/s, inspected {i_rps:.0} req/s; median per-round ratio {:.3} (goal ≥ 0.91, i.e. ≤ 10% more cost)\n",
        med(ratios)
    ));
    println!("{md}");
    let out = root.join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let _ = std::fs::write(out.join(format!("inspect-gateway-{stamp}.md")), md);
    let _ = std::fs::remove_dir_all(&dir);
}

fn parse_us(v: &str) -> f64 {
    let num: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let x: f64 = num.parse().unwrap_or(0.0);
    if v.ends_with("ms") {
        x * 1000.0
    } else if v.ends_with("us") {
        x
    } else if v.ends_with('s') {
        x * 1e6
    } else {
        x
    }
}

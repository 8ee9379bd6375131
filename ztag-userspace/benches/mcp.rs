//! `cargo xtask bench mcp`: what the MCP gateway adds to a `tools/call`.
//!
//! One MCP server (a minimal Streamable HTTP JSON-RPC server in this
//! process, JSON answers) and one `ztag run` (release build, no kernel
//! plane) whose MCP route does everything a production route does: JWT
//! validation (ES256, JWKS file), the audience binding, a per-tool FGA
//! check in the embedded engine, prompt-injection inspection of the
//! arguments, indirect-injection inspection and the content filter on the
//! result, the audit record. Every call carries different text, so the
//! detector's verdict cache never hits.
//!
//! Load is open-loop at a fixed, moderate rate (default 400 calls/s over 8
//! keep-alive connections); each latency is measured from the call's
//! scheduled time, so a stall is not hidden by the generator waiting.
//! Rounds alternate direct / through ztag; the report gives p50, p99 and
//! p99.9 per round, their medians, and the added p99.
//!
//! Goal (issue 6): the gateway adds p99 < 2 ms.
//! Writes `target/bench/mcp-YYYYMMDD-HHMMSS.md` and prints it.

use std::{
    convert::Infallible,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const RESOURCE: &str = "https://bench.ztag.invalid/mcp";
const ISSUER: &str = "https://issuer.bench.ztag.invalid";

#[path = "support/mod.rs"]
mod support;
use support::{Kill, free_port, wait_port};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The MCP server: initialize, notifications, tools/list, tools/call
/// (echoes `arguments.text`), JSON answers.
async fn mcp_server(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|c| c.to_bytes());
    let msg: Value = body
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let result = match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => {
            json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "bench", "version": "1"}})
        }
        Some("tools/list") => json!({"tools": [{"name": "echo", "description": "Echo the text.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]}),
        Some("tools/call") => {
            let text = msg
                .pointer("/params/arguments/text")
                .and_then(Value::as_str)
                .unwrap_or("");
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => {
            return Ok(Response::builder()
                .status(202)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
    };
    let out = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("mcp-session-id", "bench-session")
        .body(Full::new(Bytes::from(out)))
        .unwrap())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Latencies (µs) of one round at `rate` calls/s for `secs` over `conns`
/// connections to `port`.
async fn round(port: u16, token: Arc<str>, rate: u64, secs: u64, conns: u64, seq: u64) -> Vec<u64> {
    let per_conn = rate / conns;
    let interval = Duration::from_nanos(1_000_000_000 / per_conn.max(1));
    let n = per_conn * secs;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            tcp.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let start = tokio::time::Instant::now() + interval.mul_f64(c as f64 / conns as f64);
            let mut lat = Vec::with_capacity(n as usize);
            for i in 0..n {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due).await;
                let text = format!(
                    "Summarise section {} of report {seq}-{c}-{i} for the finance team: revenue, costs, and the outlook for the next quarter, in three short bullet points.",
                    i * 7 + c
                );
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": text}}})
                .to_string();
                let req = Request::post("/mcp")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("authorization", format!("Bearer {token}"))
                    .header("mcp-session-id", "bench-session")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let resp = send.send_request(req).await.expect("request");
                let status = resp.status();
                let b = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(
                    status == 200 && b.windows(8).any(|w| w == b"\"result\""),
                    "bad answer {status}: {}",
                    String::from_utf8_lossy(&b)
                );
                lat.push(due.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rate: u64 = arg("--rate", 400);
    let conns: u64 = arg("--connections", 8);
    let secs: u64 = arg("--seconds", if quick { 3 } else { 10 });
    let rounds: usize = arg("--rounds", if quick { 3 } else { 5 });
    let root = support::root();
    let ztag = support::ztag_bin();
    let dir = std::env::temp_dir().join(format!("ztag-mcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Keys and a token.
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let p = kp.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
        "use": "sig", "x": b64(&p[1..33]), "y": b64(&p[33..65])}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let token: Arc<str> = jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "sub": "alice", "aud": RESOURCE, "iat": now, "exp": now + 3600,
            "client_id": "bench-agent", "scope": "mcp:tools"}),
        &jsonwebtoken::EncodingKey::from_ec_der(doc.as_ref()),
    )
    .unwrap()
    .into();
    std::fs::write(
        dir.join("model.fga"),
        "model\n  schema 1.1\ntype user\ntype tool\n  relations\n    define can_call: [user]\n",
    )
    .unwrap();

    // The MCP server on its own thread and runtime.
    let up = free_port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", up))
                .await
                .unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), service_fn(mcp_server)),
                );
            }
        });
    });
    wait_port(up);

    let gw = free_port();
    let config = format!(
        r#"[xdp]
enabled = false
[state]
dir = "{d}/state"
[admin]
socket = "{d}/admin.sock"
[metrics]
listen = "off"
[authz]
store = "default"
model_file = "{d}/model.fga"
[gateway]
workers = 1
access_log = "off"
[[gateway.listener]]
name = "plain"
bind = "127.0.0.1:{gw}"
[[gateway.upstream]]
name = "mcp"
peers = ["127.0.0.1:{up}"]
[[gateway.route]]
name = "mcp"
path_prefix = "/mcp"
upstream = "mcp"
authenticate = ["corp"]
inspect = "mcp"
response_filter = "redact"
[gateway.route.mcp]
resource = "{RESOURCE}"
authorization_servers = ["{ISSUER}"]
server = "bench"
[gateway.route.mcp.tool_check]
user = "user:{{jwt.sub}}"
relation = "can_call"
object = "tool:{{mcp.server}}_{{mcp.tool}}"
[[authn.jwt]]
name = "corp"
issuer = "{ISSUER}"
audiences = ["{RESOURCE}"]
algorithms = ["ES256"]
jwks_file = "{d}/jwks.json"
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("ztag.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("ztag.log")).unwrap();
    let _ztag = Kill(
        Command::new(&ztag)
            .args(["run", "--config"])
            .arg(dir.join("ztag.toml"))
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ztag run"),
    );
    wait_port(gw);
    let out = Command::new(&ztag)
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .args([
            "fga",
            "tuple",
            "write",
            "user:alice",
            "can_call",
            "tool:bench_echo",
        ])
        .stdout(Stdio::null())
        .output()
        .expect("ztag fga");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warm-up: connections, token cache, FGA, detector.
    rt.block_on(round(gw, token.clone(), rate, 1, conns, 0));
    rt.block_on(round(up, token.clone(), rate, 1, conns, 0));
    let mut rows = Vec::new();
    let (mut d50, mut d99, mut g50, mut g99, mut add99) = (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let direct = rt.block_on(round(
            up,
            token.clone(),
            rate,
            secs,
            conns,
            2 * r as u64 + 1,
        ));
        let via = rt.block_on(round(
            gw,
            token.clone(),
            rate,
            secs,
            conns,
            2 * r as u64 + 2,
        ));
        let ms = |v: u64| v as f64 / 1000.0;
        let (a50, a99, a999) = (pct(&direct, 0.5), pct(&direct, 0.99), pct(&direct, 0.999));
        let (b50, b99, b999) = (pct(&via, 0.5), pct(&via, 0.99), pct(&via, 0.999));
        rows.push(format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} |",
            r + 1,
            via.len(),
            ms(a50),
            ms(a99),
            ms(a999),
            ms(b50),
            ms(b99),
            ms(b999),
            ms(b99) - ms(a99)
        ));
        d50.push(ms(a50));
        d99.push(ms(a99));
        g50.push(ms(b50));
        g99.push(ms(b99));
        add99.push(ms(b99) - ms(a99));
        eprintln!(
            "round {}: direct p99 {:.3} ms, via ztag p99 {:.3} ms",
            r + 1,
            ms(a99),
            ms(b99)
        );
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
        "# MCP tools/call through ztag vs direct\n\n\
         {rate} calls/s, open loop, {conns} keep-alive connections, {secs} s per round, {rounds} rounds \
         alternating; ztag `workers = 1`: JWT (ES256), audience binding, per-tool FGA check, \
         argument and result inspection (no verdict-cache hits), content filter, audit record. \
         Latency from each call's scheduled send time, ms. Machine: {cpu}, {} cores.\n\n\
         | round | calls | direct p50 | direct p99 | direct p99.9 | ztag p50 | ztag p99 | ztag p99.9 | added p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n\n\
         **Medians:** direct p50 {:.3} ms, p99 {:.3} ms; through ztag p50 {:.3} ms, p99 {:.3} ms; \
         **added p99 {:.3} ms** (median of the per-round differences; goal < 2 ms).\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        rows.join("\n"),
        median(d50),
        median(d99),
        median(g50),
        median(g99),
        median(add99),
    );
    let stamp = {
        let out = Command::new("date")
            .arg("+%Y%m%d-%H%M%S")
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join(format!("mcp-{stamp}.md"));
    std::fs::write(&path, &report).unwrap();
    println!("{report}\nwritten to {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
}

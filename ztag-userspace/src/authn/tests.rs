//! `Authn` as the proxy uses it: config → build → resolve → authenticate,
//! with the routing rules, the verified-token cache and its metrics, and
//! key sets fetched from an in-process HTTPS IdP (tokio + hyper + rustls,
//! certificates from an rcgen CA) that can rotate keys, answer 503 or
//! report another issuer.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::json;

use super::{test_support::*, *};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ztag-authn-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const AUD: &str = "https://api.test";

fn raw(text: &str) -> RawAuthn {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn auth(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

async fn run(
    a: &Authn,
    m: &MethodSet,
    authz: Option<&str>,
    cert: Option<&[u8]>,
) -> Result<Arc<Principal>, AuthnError> {
    let h = authz.map(auth);
    a.authenticate(
        m,
        Credentials {
            authorization: h.as_ref(),
            client_cert: cert,
        },
    )
    .await
}

fn metric(reg: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// A file-based setup: issuer "https://idp.test" with an ES256 and an
/// RSA key, one registered client, mTLS from the URI SAN.
struct Fixture {
    _dir: TempDir,
    authn: Arc<Authn>,
    reg: prometheus::Registry,
    es: TestKey,
    client: TestKey,
}

async fn fixture(cache: u64) -> Fixture {
    let dir = TempDir::new();
    let es = TestKey::es256("es-1");
    let rs = TestKey::rs256("rs-1");
    let client = TestKey::es256("c-1");
    dir.write("idp.jwks.json", jwks(&[&es, &rs]));
    std::fs::create_dir_all(dir.0.join("clients")).unwrap();
    dir.write("clients/billing.pem", client.public_pem());
    dir.write("ztag.pem", client.private_pem());
    let text = format!(
        r#"
[[jwt]]
name = "corp"
issuer = "https://idp.test"
audiences = ["{AUD}"]
algorithms = ["ES256", "RS256"]
jwks_file = "idp.jwks.json"
[client_assertion]
name = "agents"
audience = "{AUD}"
[[client_assertion.clients]]
client_id = "billing"
public_key_file = "clients/billing.pem"
algorithms = ["ES256"]
scopes = ["api:read"]
[mtls]
name = "mtls"
subject_from = "san_uri"
[cache]
max_entries = {cache}
[outbound]
client_id = "billing"
key_file = "ztag.pem"
algorithm = "ES256"
kid = "c-1"
"#
    );
    let reg = prometheus::Registry::new();
    let authn = Authn::build(&raw(&text), &dir.0, &reg)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    Fixture {
        _dir: dir,
        authn,
        reg,
        es,
        client,
    }
}

fn claims(sub: &str) -> serde_json::Value {
    let n = now();
    json!({"iss": "https://idp.test", "aud": AUD, "sub": sub, "exp": n + 300, "iat": n, "scope": "api:read"})
}

fn assertion(jti: &str) -> serde_json::Value {
    let n = now();
    json!({"iss": "billing", "sub": "billing", "aud": AUD, "exp": n + 60, "iat": n, "jti": jti})
}

fn client_cert(uri: &str) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

#[tokio::test]
async fn routing_follows_the_token_issuer_and_the_documented_rules() {
    let f = fixture(1000).await;
    let a = &f.authn;
    let all = a
        .resolve(&["corp".into(), "agents".into(), "mtls".into()])
        .unwrap();
    let corp_only = a.resolve(&["corp".into()]).unwrap();
    let mtls_only = a.resolve(&["mtls".into()]).unwrap();

    let t = f.es.sign(&claims("alice"));
    let p = run(a, &all, Some(&format!("Bearer {t}")), None)
        .await
        .unwrap();
    assert_eq!(
        (p.method, &*p.provider, p.subject.as_str()),
        (Method::Jwt, "corp", "alice")
    );

    let asr = f.client.sign(&assertion("j-1"));
    let p = run(a, &all, Some(&format!("Bearer {asr}")), None)
        .await
        .unwrap();
    assert_eq!(
        (p.method, &*p.provider, p.subject.as_str()),
        (Method::ClientAssertion, "agents", "billing")
    );
    // A client assertion is never served from the cache: the replay is caught.
    let e = run(a, &all, Some(&format!("Bearer {asr}")), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::REPLAYED);

    // A route without the assertion provider does not accept assertions.
    let asr2 = f.client.sign(&assertion("j-2"));
    let e = run(a, &corp_only, Some(&format!("Bearer {asr2}")), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::ISSUER_NOT_ACCEPTED);

    // An unknown issuer.
    let mut c = claims("x");
    c["iss"] = json!("https://other.test");
    let e = run(a, &all, Some(&format!("Bearer {}", f.es.sign(&c))), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::ISSUER_NOT_ACCEPTED);

    // mTLS without a bearer token.
    let der = client_cert("spiffe://corp/billing");
    let p = run(a, &all, None, Some(&der)).await.unwrap();
    assert_eq!(
        (p.method, p.subject.as_str()),
        (Method::Mtls, "spiffe://corp/billing")
    );
    // Both present: the bearer token decides (here: it is invalid).
    let e = run(a, &all, Some("Bearer x.y.z"), Some(&der))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::MALFORMED);
    // ...even on an mTLS-only route.
    let e = run(a, &mtls_only, Some(&format!("Bearer {t}")), Some(&der))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::ISSUER_NOT_ACCEPTED);
    // A certificate on a route without mTLS, or nothing at all: Missing.
    assert!(matches!(
        run(a, &corp_only, None, Some(&der)).await,
        Err(AuthnError::Missing)
    ));
    assert!(matches!(
        run(a, &all, None, None).await,
        Err(AuthnError::Missing)
    ));
    assert!(matches!(
        run(a, &MethodSet::default(), Some(&format!("Bearer {t}")), None).await,
        Err(AuthnError::Invalid(reason::ISSUER_NOT_ACCEPTED))
    ));
    // Another scheme.
    let e = run(a, &all, Some("Basic dXNlcjpwYXNz"), Some(&der))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::UNSUPPORTED_SCHEME);
    // Oversized before anything else.
    let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
    assert_eq!(
        run(a, &all, Some(&big), None).await.unwrap_err().reason(),
        reason::TOO_LARGE
    );

    // Every result counted, with bounded labels.
    assert_eq!(
        metric(
            &f.reg,
            "ztag_authn_results_total",
            &[("provider", "corp"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &f.reg,
            "ztag_authn_results_total",
            &[("provider", "agents"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &f.reg,
            "ztag_authn_results_total",
            &[("provider", "agents"), ("reason", "replayed")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &f.reg,
            "ztag_authn_results_total",
            &[("provider", "mtls"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &f.reg,
            "ztag_authn_results_total",
            &[("provider", "none"), ("reason", "missing")]
        ),
        2.0
    );
    assert_eq!(
        metric(&f.reg, "ztag_authn_results_total", &[("result", "fail")]),
        10.0
    );
}

#[tokio::test]
async fn resolve_refuses_unknown_duplicate_and_ambiguous_providers() {
    let f = fixture(10).await;
    assert!(f.authn.resolve(&[]).unwrap().0.is_empty());
    let e = f.authn.resolve(&["nope".into()]).unwrap_err();
    assert!(e.contains("\"nope\"") && e.contains("\"corp\""), "{e}");
    assert!(
        f.authn
            .resolve(&["corp".into(), "corp".into()])
            .unwrap_err()
            .contains("twice")
    );
    assert_eq!(
        f.authn.resolve(&["mtls".into(), "corp".into()]).unwrap().0,
        [2, 0]
    );
}

#[tokio::test]
async fn a_second_verification_is_a_cache_hit() {
    let f = fixture(1000).await;
    let m = f.authn.resolve(&["agents".into(), "corp".into()]).unwrap();
    let t = format!("Bearer {}", f.es.sign(&claims("alice")));
    let p1 = run(&f.authn, &m, Some(&t), None).await.unwrap();
    assert_eq!(
        metric(&f.reg, "ztag_authn_token_cache_misses_total", &[]),
        1.0
    );
    let p2 = run(&f.authn, &m, Some(&t), None).await.unwrap();
    assert!(
        Arc::ptr_eq(&p1, &p2),
        "the hit returns the cached principal"
    );
    assert_eq!(
        metric(&f.reg, "ztag_authn_token_cache_hits_total", &[]),
        1.0
    );
    // The same token on a route without its provider is not a hit.
    let other = f.authn.resolve(&["mtls".into()]).unwrap();
    assert!(run(&f.authn, &other, Some(&t), None).await.is_err());
    assert_eq!(
        metric(&f.reg, "ztag_authn_token_cache_hits_total", &[]),
        1.0
    );

    // Cost of a hit (debug builds are far slower than release; the bound
    // is loose, the number printed).
    let h = auth(&t);
    let creds = Credentials {
        authorization: Some(&h),
        client_cert: None,
    };
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        let p = f.authn.authenticate(&m, creds).await.unwrap();
        std::hint::black_box(p);
    }
    let per = start.elapsed() / n;
    println!("verified-token cache hit: {per:?} per authenticate() call");
    assert!(per < Duration::from_micros(50), "{per:?}");
    assert_eq!(
        metric(&f.reg, "ztag_authn_token_cache_hits_total", &[]),
        1.0 + n as f64
    );
}

#[tokio::test]
async fn a_disabled_cache_verifies_every_time() {
    let f = fixture(0).await;
    let m = f.authn.resolve(&["corp".into()]).unwrap();
    let t = format!("Bearer {}", f.es.sign(&claims("alice")));
    let p1 = run(&f.authn, &m, Some(&t), None).await.unwrap();
    let p2 = run(&f.authn, &m, Some(&t), None).await.unwrap();
    assert!(!Arc::ptr_eq(&p1, &p2));
    assert_eq!(
        metric(&f.reg, "ztag_authn_token_cache_hits_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn the_outbound_signer_is_accepted_by_the_inbound_verifier_once() {
    let f = fixture(10).await;
    let m = f.authn.resolve(&["agents".into()]).unwrap();
    let signer = f.authn.outbound().expect("[authn.outbound] is set");
    assert_eq!(signer.client_id(), "billing");
    let a = signer.sign(AUD).unwrap();
    let p = run(&f.authn, &m, Some(&format!("Bearer {a}")), None)
        .await
        .unwrap();
    assert_eq!(p.client_id.as_deref(), Some("billing"));
    let e = run(&f.authn, &m, Some(&format!("Bearer {a}")), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::REPLAYED);
}

#[test]
fn www_authenticate_says_the_category_only() {
    assert_eq!(AuthnError::Missing.www_authenticate(), "Bearer");
    assert_eq!(
        AuthnError::Invalid(reason::EXPIRED).www_authenticate(),
        "Bearer error=\"invalid_token\", error_description=\"the token is expired\""
    );
    for r in [
        reason::UNKNOWN_KID,
        reason::BAD_SIGNATURE,
        reason::ALG_KEY_MISMATCH,
        reason::KEYS_STALE,
    ] {
        assert_eq!(
            AuthnError::Invalid(r).www_authenticate(),
            "Bearer error=\"invalid_token\", error_description=\"the token could not be verified\"",
            "{r}"
        );
    }
    assert_eq!(
        AuthnError::InsufficientScope("api:read api:write".into()).www_authenticate(),
        "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a scope this resource requires\", scope=\"api:read api:write\""
    );
    let injected = AuthnError::InsufficientScope("a\", evil=\"x\\".into()).www_authenticate();
    assert!(
        !injected.to_str().unwrap().contains("evil=\""),
        "{injected:?}"
    );
    for r in reason::ALL {
        let e = AuthnError::Invalid(r);
        let v = e.www_authenticate();
        assert!(v.to_str().unwrap().starts_with("Bearer error="), "{r}");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.reason(), *r);
    }
}

#[tokio::test]
async fn build_reports_every_file_problem_with_its_key() {
    let dir = TempDir::new();
    dir.write(
        "empty.jwks.json",
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    );
    dir.write("bad.pem", "not a pem");
    let text = r#"
[[jwt]]
name = "a"
issuer = "https://a"
audiences = ["x"]
algorithms = ["ES256"]
jwks_file = "missing.json"
[[jwt]]
name = "b"
issuer = "https://b"
audiences = ["x"]
algorithms = ["ES256"]
jwks_file = "empty.jwks.json"
[[jwt]]
name = "c"
issuer = "https://c"
audiences = ["x"]
algorithms = ["ES256"]
discovery = "https://127.0.0.1:1"
ca = "no-ca.pem"
[client_assertion]
name = "agents"
audience = "x"
[[client_assertion.clients]]
client_id = "k"
public_key_file = "bad.pem"
algorithms = ["ES256"]
[outbound]
client_id = "z"
key_file = "nokey.pem"
"#;
    let e = Authn::build(&raw(text), &dir.0, &prometheus::Registry::new())
        .await
        .unwrap_err();
    let all = e.join("\n");
    for k in [
        "authn.jwt[0].jwks_file: cannot read",
        "authn.jwt[1].jwks_file:",
        "symmetric",
        "authn.jwt[2].ca: cannot read",
        "authn.client_assertion.clients[0].public_key_file:",
        "authn.outbound.key_file: cannot read",
    ] {
        assert!(all.contains(k), "missing {k:?} in:\n{all}");
    }
    assert_eq!(e.len(), 5, "{all}");
    // Validation problems come first, without touching files.
    let e = Authn::build(
        &raw("[[jwt]]\nname = \"a\"\n"),
        &dir.0,
        &prometheus::Registry::new(),
    )
    .await
    .unwrap_err();
    assert!(
        e.iter().any(|p| p.starts_with("authn.jwt[0].issuer")),
        "{e:?}"
    );
}

#[tokio::test]
async fn building_twice_into_one_registry_works() {
    let f = fixture(10).await;
    let dir = TempDir::new();
    dir.write("k.json", jwks(&[&f.es]));
    let text = "[[jwt]]\nname = \"corp\"\nissuer = \"https://idp.test\"\naudiences = [\"x\"]\nalgorithms = [\"ES256\"]\njwks_file = \"k.json\"\n";
    Authn::build(&raw(text), &dir.0, &f.reg).await.unwrap();
}

// ------------------------------------------------------------ HTTPS IdP

struct IdpState {
    issuer: Mutex<String>,
    jwks: Mutex<Vec<u8>>,
    unavailable: AtomicBool,
    jwks_fetches: AtomicUsize,
    delay_ms: AtomicU64,
}

struct Idp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    fn issuer(&self) -> String {
        format!("https://{}", self.addr)
    }
    fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.jwks.lock().unwrap() = jwks(keys);
    }
    fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn idp(keys: &[&TestKey]) -> Idp {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![srv.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(IdpState {
        issuer: Mutex::new(format!("https://{addr}")),
        jwks: Mutex::new(jwks(keys)),
        unavailable: AtomicBool::new(false),
        jwks_fetches: AtomicUsize::new(0),
        delay_ms: AtomicU64::new(0),
    });
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(serve(&st, req.uri().path()).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Idp {
        addr,
        state,
        ca_pem: ca_cert.pem(),
        task,
    }
}

async fn serve(st: &IdpState, path: &str) -> Response<Full<Bytes>> {
    let reply = |code: u16, body: Vec<u8>| {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if st.unavailable.load(Ordering::SeqCst) {
        return reply(503, b"{}".to_vec());
    }
    match path {
        "/.well-known/openid-configuration" => {
            let iss = st.issuer.lock().unwrap().clone();
            let me = st.jwks_uri();
            reply(
                200,
                json!({"issuer": iss, "jwks_uri": me})
                    .to_string()
                    .into_bytes(),
            )
        }
        "/jwks" => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let d = st.delay_ms.load(Ordering::SeqCst);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            let body = st.jwks.lock().unwrap().clone();
            reply(200, body)
        }
        _ => reply(404, b"{}".to_vec()),
    }
}

impl IdpState {
    fn jwks_uri(&self) -> String {
        // The issuer in the document may be changed by a test; the JWKS
        // always lives on this server.
        let iss = self.issuer.lock().unwrap().clone();
        let host = iss
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        format!("https://{host}/jwks")
    }
}

async fn remote_authn(
    dir: &TempDir,
    idp: &Idp,
    source: &str,
    ca: bool,
    timing: (&str, &str, &str),
) -> (Arc<Authn>, MethodSet) {
    let ca_line = if ca {
        let p = dir.write("idp-ca.pem", &idp.ca_pem);
        format!("ca = {:?}", p.display().to_string())
    } else {
        String::new()
    };
    let text = format!(
        r#"
[[jwt]]
name = "corp"
issuer = "{iss}"
audiences = ["{AUD}"]
algorithms = ["ES256", "RS256"]
{source}
{ca_line}
refresh_interval = "{}"
min_refresh_interval = "{}"
max_staleness = "{}"
leeway = "5s"
[cache]
max_entries = 100
"#,
        timing.0,
        timing.1,
        timing.2,
        iss = idp.issuer(),
    );
    let a = Authn::build(&raw(&text), Path::new("/"), &prometheus::Registry::new())
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let m = a.resolve(&["corp".into()]).unwrap();
    (a, m)
}

fn token(idp: &Idp, k: &TestKey, sub: &str) -> String {
    let n = now();
    format!(
        "Bearer {}",
        k.sign(&json!({"iss": idp.issuer(), "aud": AUD, "sub": sub, "exp": n + 300, "iat": n}))
    )
}

async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_rotation_and_the_unknown_kid_refresh() {
    let (a, b) = (TestKey::es256("a"), TestKey::rs256("b"));
    let idp = idp(&[&a]).await;
    let dir = TempDir::new();
    let src = format!("discovery = {:?}", idp.issuer());
    let (authn, m) = remote_authn(&dir, &idp, &src, true, ("10m", "300ms", "1h")).await;
    run(&authn, &m, Some(&token(&idp, &a, "x")), None)
        .await
        .unwrap();
    let cached = token(&idp, &a, "cached");
    run(&authn, &m, Some(&cached), None).await.unwrap();

    // Rotation: b appears; its first token triggers the refresh (no wait for
    // the 10 m periodic one).
    idp.set_keys(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = idp.fetches();
    let p = run(&authn, &m, Some(&token(&idp, &b, "rotated")), None).await;
    assert_eq!(
        p.map(|p| p.subject.clone()).ok().as_deref(),
        Some("rotated")
    );
    assert_eq!(idp.fetches(), before + 1);

    // a withdrawn: after the next refresh, a's tokens (even cached ones)
    // no longer verify.
    idp.set_keys(&[&b]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let unknown = TestKey::es256("nobody");
    let e = run(&authn, &m, Some(&token(&idp, &unknown, "x")), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::UNKNOWN_KID);
    let e = run(&authn, &m, Some(&cached), None).await.unwrap_err();
    assert_eq!(
        e.reason(),
        reason::UNKNOWN_KID,
        "a cached token of a withdrawn key"
    );

    // A storm of unknown kids: at most one fetch per min_refresh_interval.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = idp.fetches();
    let start = Instant::now();
    for i in 0..60 {
        let k = TestKey::es256(&format!("unknown-{i}"));
        let e = run(&authn, &m, Some(&token(&idp, &k, "x")), None)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), reason::UNKNOWN_KID);
    }
    let fetched = idp.fetches() - before;
    let allowed = (start.elapsed().as_millis() / 300) as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} fetches for 60 unknown kids in {:?}",
        start.elapsed()
    );

    // Concurrent unknown kids share one fetch (the IdP answers slowly).
    tokio::time::sleep(Duration::from_millis(350)).await;
    idp.state.delay_ms.store(300, Ordering::SeqCst);
    let before = idp.fetches();
    let tokens: Vec<String> = (0..32)
        .map(|i| token(&idp, &TestKey::es256(&format!("herd-{i}")), "x"))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for t in tokens {
        let (authn, m) = (authn.clone(), m.clone());
        set.spawn(async move {
            run(&authn, &m, Some(&t), None)
                .await
                .err()
                .map(|e| e.reason())
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), Some(reason::UNKNOWN_KID));
    }
    assert_eq!(
        idp.fetches() - before,
        1,
        "32 concurrent unknown kids, one fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_keeps_the_last_good_keys_until_max_staleness() {
    let k = TestKey::es256("k");
    let idp = idp(&[&k]).await;
    let dir = TempDir::new();
    let src = format!("jwks_url = \"{}/jwks\"", idp.issuer());
    let (authn, m) = remote_authn(&dir, &idp, &src, true, ("500ms", "100ms", "2s")).await;
    let up = token(&idp, &k, "up");
    run(&authn, &m, Some(&up), None).await.unwrap();
    // Wait for a periodic refresh so the staleness clock is known.
    let f = idp.fetches();
    assert!(eventually(Duration::from_secs(3), async || idp.fetches() > f).await);
    idp.state.unavailable.store(true, Ordering::SeqCst);
    let down_at = Instant::now();
    // Fresh tokens (not cached) still verify with the last good keys...
    run(&authn, &m, Some(&token(&idp, &k, "down")), None)
        .await
        .unwrap();
    // ...until max_staleness: then refused, fail closed.
    let mut last = None;
    let refused = eventually(Duration::from_secs(6), async || {
        last = run(&authn, &m, Some(&token(&idp, &k, "stale")), None)
            .await
            .err();
        last.is_some()
    })
    .await;
    assert!(
        refused,
        "still accepted 6 s after the IdP went down (max_staleness 2s)"
    );
    assert!(
        down_at.elapsed() >= Duration::from_millis(1400),
        "refused after {:?}",
        down_at.elapsed()
    );
    assert_eq!(last.map(|e| e.reason()), Some(reason::KEYS_STALE));
    // A cached token is refused as well.
    let e = run(&authn, &m, Some(&up), None).await.unwrap_err();
    assert_eq!(e.reason(), reason::KEYS_STALE);
    // The IdP comes back: the retry with backoff picks the keys up again.
    idp.state.unavailable.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), async || run(
            &authn,
            &m,
            Some(&token(&idp, &k, "back")),
            None
        )
        .await
        .is_ok())
        .await,
        "not accepted again within 5 s of the IdP's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_unreachable_at_start_refuses_until_a_retry_succeeds() {
    let k = TestKey::es256("k");
    let idp = idp(&[&k]).await;
    idp.state.unavailable.store(true, Ordering::SeqCst);
    let dir = TempDir::new();
    let src = format!("discovery = {:?}", idp.issuer());
    let start = Instant::now();
    let (authn, m) = remote_authn(&dir, &idp, &src, true, ("2s", "200ms", "1h")).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "build waited {:?}",
        start.elapsed()
    );
    let e = run(&authn, &m, Some(&token(&idp, &k, "x")), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), reason::KEYS_UNAVAILABLE);
    idp.state.unavailable.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), async || run(
            &authn,
            &m,
            Some(&token(&idp, &k, "x")),
            None
        )
        .await
        .is_ok())
        .await,
        "keys not fetched within 5 s of the IdP's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_for_another_issuer_and_untrusted_certificates_yield_no_keys() {
    let k = TestKey::es256("k");
    let idp = idp(&[&k]).await;
    *idp.state.issuer.lock().unwrap() = format!("https://{}/other", idp.addr);
    let dir = TempDir::new();
    let src = format!("discovery = {:?}", idp.issuer());
    let (authn, m) = remote_authn(&dir, &idp, &src, true, ("10m", "10s", "1h")).await;
    let e = run(&authn, &m, Some(&token(&idp, &k, "x")), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.reason(),
        reason::KEYS_UNAVAILABLE,
        "issuer mismatch in discovery"
    );
    assert_eq!(
        idp.fetches(),
        0,
        "the JWKS of a mismatched issuer was fetched"
    );

    // Without the CA, the IdP's certificate is not trusted (web roots only).
    let idp2 = self::idp(&[&k]).await;
    let src = format!("jwks_url = \"{}/jwks\"", idp2.issuer());
    let (authn, m) = remote_authn(&dir, &idp2, &src, false, ("10m", "10s", "1h")).await;
    let e = run(&authn, &m, Some(&token(&idp2, &k, "x")), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.reason(),
        reason::KEYS_UNAVAILABLE,
        "untrusted certificate"
    );
    assert_eq!(idp2.fetches(), 0);
}

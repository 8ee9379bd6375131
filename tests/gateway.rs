//! End to end: the real `ztag run` as an API gateway on loopback
//! (`[xdp] enabled = false`), with real clients — curl (HTTP/1.1 and HTTP/2
//! over TLS, SNI, client certificates), h2load, and raw TCP for what no
//! well-behaved client sends — against a real HTTPS identity provider and an
//! echo upstream that reports exactly what it received. Each test starts its
//! own daemon and peers, all torn down by guards even when it fails.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use aws_lc_rs::hmac;
use serde_json::{Value, json};
use ztag_tests::{
    gateway::{AUDIENCE, CLIENT_ID, CLIENT_URI, Gateway, HOST, OTHER_HOST, Options, Reply},
    idp::{Alg, SigningKey, b64, b64_decode, jws, now},
    pki::Ca,
};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The values the upstream saw for header `name`.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Splits curl's `-w "\n%{http_code} %{http_version}"` tail off its output.
fn curl_result(out: &std::process::Output) -> (String, String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.to_owned(), version.to_owned(), body.to_owned())
}

#[track_caller]
fn expect_status(r: &Reply, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: expected {want}, got:\n{r}");
}

/// The upstream's view of a request that should have been forwarded.
#[track_caller]
fn forwarded(g: &Gateway, path: &str, headers: &[(&str, &str)]) -> Value {
    let r = g.get(path, headers);
    expect_status(&r, 200, &format!("GET {path}"));
    r.json()
}

// ------------------------------------------------------------ helpers

/// The peers on their own, without a gateway: the IdP over real TLS
/// (discovery, JWKS, rotation, down, 503) and the echo upstream over
/// HTTP/1.1 and h2c. A failure here is the harness, not ztag.
#[test]
fn helpers_idp_and_upstream_work() {
    let dir = ztag_tests::TempDir::new();
    let ca = Ca::new("helper CA");
    let ca_file = ca.write(&dir.0, "ca.crt");
    let idp = ztag_tests::idp::Idp::start(&ca);
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca_file)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("{}{path}", idp.issuer))
            .output()
            .unwrap();
        (out.status.code(), curl_result(&out))
    };
    let (rc, (code, _, body)) = curl("/.well-known/openid-configuration");
    assert_eq!((rc, code.as_str()), (Some(0), "200"), "discovery: {body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], idp.issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{}/jwks.json", idp.issuer));
    let (_, (code, _, body)) = curl("/jwks.json");
    assert_eq!(code, "200");
    let kids = |body: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(body).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kids(&body), ["rs-1", "es-1", "ed-1"]);
    assert_eq!(idp.jwks_fetches(), 1);
    let new = idp.rotate(Alg::ES256);
    let (_, (_, _, body)) = curl("/jwks.json");
    assert_eq!(kids(&body), ["rs-1", "ed-1", new.kid.as_str()]);
    assert_eq!(
        idp.key_by_kid("es-1").kid,
        "es-1",
        "withdrawn keys still sign"
    );
    idp.down();
    let (rc, _) = curl("/jwks.json");
    assert_eq!(
        rc,
        Some(7),
        "idp down: curl should fail to connect (exit 7)"
    );
    idp.up();
    let (rc, (code, _, _)) = curl("/jwks.json");
    assert_eq!((rc, code.as_str()), (Some(0), "200"), "idp up again");
    idp.set_unavailable(true);
    assert_eq!(curl("/jwks.json").1.0, "503");
    idp.set_unavailable(false);
    assert_eq!(idp.jwks_fetches(), 3);
    // Minted tokens have the advertised shape.
    let t = idp.token(Alg::EdDSA, &idp.claims("s", AUDIENCE, "a"));
    let parts: Vec<&str> = t.split('.').collect();
    let header: Value = serde_json::from_slice(&b64_decode(parts[0])).unwrap();
    assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"}));
    assert_eq!(b64_decode(parts[2]).len(), 64);

    let up = ztag_tests::upstream::Upstream::start();
    for (flag, version) in [
        ("--http1.1", "HTTP/1.1"),
        ("--http2-prior-knowledge", "HTTP/2.0"),
    ] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                flag,
                "-H",
                "x-test: 1",
                "-H",
                "x-test: 2",
            ])
            .arg(format!("http://{}/a/b?c=d", up.addr))
            .output()
            .unwrap();
        let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(echo["path"], "/a/b?c=d", "{flag}: {echo}");
        assert_eq!(echo["version"], version, "{flag}: {echo}");
        assert_eq!(seen(&echo, "x-test"), ["1", "2"], "{flag}: {echo}");
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "x-echo-status: 502",
        ])
        .arg(format!("http://{}/", up.addr))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    assert_eq!(up.requests(), 3);
}

// ------------------------------------------------------------------ TLS

#[test]
fn tls_http1_and_http2_with_sni() {
    let g = Gateway::start(Options::default());
    let auth = format!(
        "authorization: Bearer {}",
        g.token(Alg::RS256, "alice", "api:read")
    );
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        for host in [HOST, OTHER_HOST] {
            let out = g.curl_tls(host, "/v1/items?x=1", &[flag, "-H", &auth]);
            let (code, v, body) = curl_result(&out);
            assert_eq!(
                (code.as_str(), v.as_str()),
                ("200", version),
                "curl {flag} https://{host}: expected 200 over HTTP/{version}, got {code} {v}\nstderr: {}\nbody: {body}",
                String::from_utf8_lossy(&out.stderr)
            );
            let echo: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(echo["path"], "/v1/items?x=1", "{flag} {host}: {echo}");
            assert_eq!(seen(&echo, "x-ztag-subject"), ["alice"], "{flag} {host}");
            assert_eq!(seen(&echo, "x-forwarded-proto"), ["https"], "{flag} {host}");
        }
    }
    // No ALPN: HTTP/1.1 (h2 over TLS is negotiated, never sniffed). Two
    // URLs, so curl sends two requests on the one connection.
    let first = format!("https://{HOST}:{}/v1/items", g.tls_port);
    let out = g.curl_tls(HOST, "/v1/items", &["--no-alpn", "-H", &auth, &first]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.matches("\n200 1.1").count(),
        2,
        "curl --no-alpn: expected two 200s over HTTP/1.1\nstdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A name no certificate has gets the default one, which curl refuses
    // to accept for that name (exit 60: peer certificate mismatch).
    let out = g.curl_tls("unknown.example.com", "/", &["--http1.1"]);
    assert_eq!(
        out.status.code(),
        Some(60),
        "SNI unknown.example.com: expected curl exit 60 (name mismatch on the default certificate), got {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // The default certificate is the first one: api.example.com.
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", g.tls_port))
        .args(["-servername", "unknown.example.com"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("CN = {HOST}")) || text.contains(&format!("CN={HOST}")),
        "default certificate should be {HOST}:\n{text}"
    );
}

#[test]
fn client_certificate_optional() {
    let g = Gateway::start(Options::default());
    let cert = g.client_cert.display().to_string();
    let key = g.client_key_file.display().to_string();
    let out = g.curl_tls(HOST, "/mtls/whoami", &["--cert", &cert, "--key", &key]);
    let (code, _, body) = curl_result(&out);
    assert_eq!(
        code,
        "200",
        "mTLS route with a client certificate: expected 200, got {code}\nstderr: {}\nbody: {body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen(&echo, "x-ztag-subject"), [CLIENT_URI], "{echo}");
    // The same certificate satisfies the `api` route's third method.
    let out = g.curl_tls(HOST, "/v1/x", &["--http2", "--cert", &cert, "--key", &key]);
    let (code, _, body) = curl_result(&out);
    assert_eq!(
        code, "403",
        "mTLS identity without the api:read scope on /v1/: expected 403, got {code}: {body}"
    );
    // Without a certificate the handshake succeeds, the route refuses.
    let out = g.curl_tls(HOST, "/mtls/whoami", &[]);
    let (code, _, body) = curl_result(&out);
    assert_eq!(
        code, "401",
        "mTLS route without a certificate: expected 401, got {code}: {body}"
    );
    let out = g.curl_tls(HOST, "/public", &[]);
    assert_eq!(
        curl_result(&out).0,
        "200",
        "public route without a certificate"
    );
    // A certificate from another CA is never an identity.
    let rogue = Ca::new("rogue CA").client(CLIENT_URI, "agent");
    let (rc, rk) = rogue.write(&g.dir.0, "rogue");
    let out = g.curl_tls(
        HOST,
        "/mtls/whoami",
        &[
            "--cert",
            &rc.display().to_string(),
            "--key",
            &rk.display().to_string(),
        ],
    );
    let (code, _, body) = curl_result(&out);
    assert_ne!(
        code, "200",
        "a certificate from an untrusted CA was accepted: {body}"
    );
}

#[test]
fn client_certificate_required() {
    let g = Gateway::start(Options {
        client_auth: "required",
        ..Options::default()
    });
    let out = g.curl_tls(HOST, "/public", &[]);
    let (code, _, _) = curl_result(&out);
    assert!(
        !out.status.success() && code == "000",
        "client_auth=required without a certificate: expected a failed handshake, got exit {:?} status {code}",
        out.status.code()
    );
    let cert = g.client_cert.display().to_string();
    let key = g.client_key_file.display().to_string();
    for flag in ["--http1.1", "--http2"] {
        let out = g.curl_tls(
            HOST,
            "/mtls/whoami",
            &[flag, "--cert", &cert, "--key", &key],
        );
        let (code, _, body) = curl_result(&out);
        assert_eq!(
            code,
            "200",
            "client_auth=required with a certificate ({flag}): expected 200, got {code}\nstderr: {}\nbody: {body}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn h2load_with_a_valid_token_is_all_2xx() {
    let g = Gateway::start(Options::default());
    let auth = format!(
        "authorization: Bearer {}",
        g.token(Alg::ES256, "load", "api:read")
    );
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10", "-H", &auth])
        .arg(format!("https://127.0.0.1:{}/v1/load", g.tls_port))
        .output()
        .expect("running h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Application protocol: h2"),
        "h2load did not negotiate h2:\n{text}"
    );
    assert!(
        text.contains("status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx")
            && text.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load: expected 2000 2xx, got:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        g.upstream.requests() >= 2000,
        "upstream saw {}",
        g.upstream.requests()
    );
}

// ----------------------------------------------------------- tokens

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hs256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

/// Replaces the signature part of a compact JWS.
fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}

fn signature(token: &str) -> Vec<u8> {
    b64_decode(token.rsplit_once('.').unwrap().1)
}

/// Every refusal must be 401 with an RFC 6750 challenge that names no key.
#[track_caller]
fn check_refused(r: &Reply, what: &str, secrets: &[&str], failures: &mut Vec<String>) {
    let www = r.header("www-authenticate").unwrap_or("");
    let mut bad = Vec::new();
    if r.status != 401 {
        bad.push(format!("status {} (want 401)", r.status));
    }
    if !www.starts_with("Bearer") {
        bad.push(format!("WWW-Authenticate {www:?} (want Bearer ...)"));
    }
    if !www.contains("error=\"invalid_token\"") {
        bad.push(format!(
            "WWW-Authenticate {www:?} lacks error=\"invalid_token\""
        ));
    }
    for s in secrets {
        if www.contains(s) || r.text().contains(s) {
            bad.push(format!("answer reveals {s:?}"));
        }
    }
    if !bad.is_empty() {
        failures.push(format!(
            "{what}: {}\n    {}",
            bad.join("; "),
            String::from_utf8_lossy(&r.wire[..r.wire.len().min(300)]).replace("\r\n", "\n    ")
        ));
    }
}

#[test]
fn token_attacks_are_401_without_key_ids() {
    let g = Gateway::start(Options {
        max_header_bytes: 65536,
        ..Options::default()
    });
    let idp = &g.idp;
    let rs = idp.key(Alg::RS256);
    let es = idp.key(Alg::ES256);
    let ed = idp.key(Alg::EdDSA);
    let claims = idp.claims("mallory", AUDIENCE, "api:read admin");
    let t = now();

    // Controls: the same claims, properly signed, pass — so a 401 below is
    // the attack being caught, not a broken setup.
    for k in [&rs, &es, &ed] {
        let r = g.get(
            "/v1/x",
            &[("authorization", &bearer(&k.token(&claims, &json!({}))))],
        );
        expect_status(&r, 200, &format!("control: valid {:?} token", k.alg));
    }
    let mut padded = claims.clone();
    padded["pad"] = json!("p".repeat(6000));
    let r = g.get(
        "/v1/x",
        &[("authorization", &bearer(&rs.token(&padded, &json!({}))))],
    );
    expect_status(&r, 200, "control: an 8 KiB valid token");
    let before = g.upstream.requests();

    let attacker = SigningKey::generate(Alg::RS256, "attacker-1");
    let attacker_es = SigningKey::generate(Alg::ES256, "attacker-2");
    let mut cases: Vec<(String, String)> = Vec::new();
    let mut case = |name: &str, token: String| cases.push((name.to_owned(), token));

    // alg: none, in its spellings, with and without a kid.
    for alg in ["none", "None", "NONE", "nOnE"] {
        case(
            &format!("alg {alg}"),
            jws(&json!({"alg": alg, "typ": "JWT"}), &claims, |_| Vec::new()),
        );
    }
    case(
        "alg none with a known kid",
        jws(&json!({"alg": "none", "kid": rs.kid}), &claims, |_| {
            Vec::new()
        }),
    );
    case(
        "alg none with the real RSA signature",
        rs.token(&claims, &json!({"alg": "none"})),
    );
    // HMAC keyed with the public key (algorithm confusion).
    let pem = rs.public_pem();
    for (label, key) in [
        ("PEM", pem.as_bytes().to_vec()),
        ("PEM without newline", pem.trim_end().as_bytes().to_vec()),
        ("JWK JSON", rs.jwk().to_string().into_bytes()),
        ("modulus", b64_decode(rs.jwk()["n"].as_str().unwrap())),
    ] {
        let h = json!({"alg": "HS256", "typ": "JWT", "kid": rs.kid});
        case(
            &format!("HS256 keyed with the RSA public key ({label})"),
            jws(&h, &claims, |m| hs256(&key, m)),
        );
    }
    case(
        "HS256 without kid keyed with the RSA PEM",
        jws(&json!({"alg": "HS256"}), &claims, |m| {
            hs256(pem.as_bytes(), m)
        }),
    );
    // Unknown and path-like kids.
    let path_kids = [
        "no-such-key",
        "../../../../../../dev/null",
        "/etc/passwd",
        "file:///dev/null",
        "rs-1/../rs-1",
        "' OR '1'='1",
        "",
    ];
    for kid in path_kids {
        case(
            &format!("kid {kid:?}, attacker RSA key"),
            attacker.token(&claims, &json!({"kid": kid})),
        );
        case(
            &format!("kid {kid:?}, HS256 with an empty key"),
            jws(&json!({"alg": "HS256", "kid": kid}), &claims, |m| {
                hs256(b"", m)
            }),
        );
    }
    // Keys named by the token itself.
    let evil = "https://127.0.0.1:9/jwks.json";
    case(
        "embedded jwk (attacker's key)",
        attacker.token(&claims, &json!({"jwk": attacker.jwk()})),
    );
    case(
        "embedded jwk with a known kid",
        attacker.token(&claims, &json!({"kid": rs.kid, "jwk": attacker.jwk()})),
    );
    case(
        "embedded EC jwk",
        attacker_es.token(&claims, &json!({"jwk": attacker_es.jwk()})),
    );
    case(
        "jku elsewhere",
        attacker.token(&claims, &json!({"jku": evil})),
    );
    case(
        "jku at the IdP with an unknown kid",
        attacker.token(
            &claims,
            &json!({"jku": format!("{}/jwks.json", idp.issuer)}),
        ),
    );
    case(
        "jku elsewhere with a known kid",
        attacker.token(&claims, &json!({"kid": rs.kid, "jku": evil})),
    );
    case(
        "x5u elsewhere",
        attacker.token(&claims, &json!({"x5u": evil})),
    );
    case(
        "x5u elsewhere with a known kid",
        attacker.token(&claims, &json!({"kid": rs.kid, "x5u": evil})),
    );
    // Time.
    let mut c = claims.clone();
    c["exp"] = json!(t - 120);
    c["iat"] = json!(t - 600);
    c["nbf"] = json!(t - 600);
    case("expired", rs.token(&c, &json!({})));
    let mut c = claims.clone();
    c["nbf"] = json!(t + 120);
    case("not yet valid (nbf)", rs.token(&c, &json!({})));
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove("exp");
    case("no exp", rs.token(&c, &json!({})));
    let mut c = claims.clone();
    c["exp"] = json!(format!("{}", t + 300));
    case("exp as a string", rs.token(&c, &json!({})));
    // Issuer and audience.
    for (label, k, v) in [
        ("wrong iss", "iss", json!("https://evil.example")),
        (
            "iss with a trailing slash",
            "iss",
            json!(format!("{}/", idp.issuer)),
        ),
        ("wrong aud", "aud", json!("https://other.example.com")),
        (
            "aud list without ours",
            "aud",
            json!(["https://a.example", "https://b.example"]),
        ),
        ("no aud", "aud", Value::Null),
        ("no sub", "sub", Value::Null),
    ] {
        let mut c = claims.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        case(label, rs.token(&c, &json!({})));
    }
    // Tampering.
    let good = rs.token(&claims, &json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims.clone();
    c["sub"] = json!("admin");
    case(
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        ),
    );
    case(
        "tampered header (kid swapped to es-1)",
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "RS256", "typ": "JWT", "kid": es.kid})
                .to_string()
                .as_bytes()),
            parts[1],
            parts[2]
        ),
    );
    case(
        "RS256 signature on an ES256 kid",
        rs.token(&claims, &json!({"kid": es.kid})),
    );
    case(
        "ES256 header on the RSA kid",
        es.token(&claims, &json!({"kid": rs.kid})),
    );
    // Signature lengths.
    let sig = signature(&good);
    case(
        "RS256 signature one byte short",
        with_signature(&good, &sig[..sig.len() - 1]),
    );
    case(
        "RS256 signature one byte long",
        with_signature(&good, &[&sig[..], &[0]].concat()),
    );
    case(
        "RS256 empty signature",
        format!("{}.{}.", parts[0], parts[1]),
    );
    let es_good = es.token(&claims, &json!({}));
    let es_sig = signature(&es_good);
    case(
        "ES256 signature 63 bytes",
        with_signature(&es_good, &es_sig[..63]),
    );
    case(
        "ES256 signature 65 bytes",
        with_signature(&es_good, &[&es_sig[..], &[1]].concat()),
    );
    let der = {
        // The same (r, s) DER-encoded, as some libraries emit.
        let int = |b: &[u8]| {
            let b = &b[b.iter().position(|&x| x != 0).unwrap_or(b.len() - 1)..];
            let mut v = vec![0x02];
            if b[0] & 0x80 != 0 {
                v.push(b.len() as u8 + 1);
                v.push(0);
            } else {
                v.push(b.len() as u8);
            }
            v.extend_from_slice(b);
            v
        };
        let body = [int(&es_sig[..32]), int(&es_sig[32..])].concat();
        [vec![0x30, body.len() as u8], body].concat()
    };
    case(
        "ES256 signature DER-encoded",
        with_signature(&es_good, &der),
    );
    // ECDSA with r or s zero ("psychic signatures").
    case(
        "ECDSA r = 0",
        with_signature(&es_good, &[&[0u8; 32][..], &es_sig[32..]].concat()),
    );
    case(
        "ECDSA s = 0",
        with_signature(&es_good, &[&es_sig[..32], &[0u8; 32][..]].concat()),
    );
    case("ECDSA r = s = 0", with_signature(&es_good, &[0u8; 64]));
    let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    case(
        "ECDSA r = s = n (the group order)",
        with_signature(&es_good, &[&n[..], &n[..]].concat()),
    );
    let ed_good = ed.token(&claims, &json!({}));
    case(
        "EdDSA signature all zero",
        with_signature(&ed_good, &[0u8; 64]),
    );
    // Trailing garbage and malformed compact forms.
    case("a fourth part", format!("{good}."));
    case("a fourth part with data", format!("{good}.AAAA"));
    case("garbage after the signature", format!("{good}AAAA"));
    case("padding after the signature", format!("{good}=="));
    case("space and garbage", format!("{good} garbage"));
    case("two parts", format!("{}.{}", parts[0], parts[1]));
    case("not a JWT", "definitely-not-a-jwt".to_owned());
    case("dots only", "..".to_owned());
    case(
        "standard base64 with padding",
        good.replace('-', "+").replace('_', "/") + "=",
    );
    // Oversized: a valid signature over 24 KiB of claims.
    let mut big = claims.clone();
    big["pad"] = json!("p".repeat(24 * 1024));
    case(
        "oversized token (24 KiB, validly signed)",
        rs.token(&big, &json!({})),
    );

    let secrets: Vec<&str> = [
        rs.kid.as_str(),
        es.kid.as_str(),
        ed.kid.as_str(),
        "attacker-1",
        "attacker-2",
        "dev/null",
        "passwd",
    ]
    .to_vec();
    let mut failures = Vec::new();
    for (name, token) in &cases {
        let r = g.get("/v1/x", &[("authorization", &bearer(token))]);
        check_refused(&r, name, &secrets, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} token attacks were not refused properly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        g.upstream.requests(),
        before,
        "the upstream received requests with forged tokens: {:?}",
        &g.upstream.log()[before..]
    );
}

#[test]
fn client_assertion_replay_is_401() {
    let g = Gateway::start(Options::default());
    let a = g.assertion();
    let echo = forwarded(&g, "/v1/agent", &[("authorization", &bearer(&a))]);
    assert_eq!(seen(&echo, "x-ztag-subject"), [CLIENT_ID], "{echo}");
    assert_eq!(seen(&echo, "x-ztag-client-id"), [CLIENT_ID], "{echo}");
    assert_eq!(seen(&echo, "x-ztag-scopes"), ["api:read"], "{echo}");
    let r = g.get("/v1/agent", &[("authorization", &bearer(&a))]);
    let mut failures = Vec::new();
    check_refused(
        &r,
        "replayed client assertion",
        &["billing-1"],
        &mut failures,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A fresh assertion from the same client still works.
    forwarded(
        &g,
        "/v1/agent",
        &[("authorization", &bearer(&g.assertion()))],
    );
    // An assertion for another audience does not.
    let other = g
        .client_key
        .client_assertion(CLIENT_ID, "https://other.example.com");
    let r = g.get("/v1/agent", &[("authorization", &bearer(&other))]);
    let mut failures = Vec::new();
    check_refused(
        &r,
        "client assertion for another audience",
        &["billing-1"],
        &mut failures,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ----------------------------------------------- identity and forwarding

#[test]
fn identity_and_forwarding_headers() {
    let g = Gateway::start(Options::default());
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let token = g.token(alg, "alice", "api:read api:write");
        let echo = forwarded(
            &g,
            "/v1/me",
            &[
                ("authorization", &bearer(&token)),
                ("x-ztag-subject", "mallory"),
                ("X-Ztag-Scopes", "admin"),
                ("X-ZTAG-CLIENT-ID", "evil"),
                ("x-ztag-anything", "1"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "7.7.7.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=6.6.6.6;host=evil.example"),
                // Hop-by-hop abuse: ask ztag to drop what it adds.
                (
                    "connection",
                    "close, x-ztag-subject, x-forwarded-for, forwarded",
                ),
            ],
        );
        let what = format!("{alg:?}: upstream saw {echo}");
        assert_eq!(seen(&echo, "x-ztag-subject"), ["alice"], "{what}");
        assert_eq!(seen(&echo, "x-ztag-client-id"), ["test-client"], "{what}");
        assert_eq!(
            seen(&echo, "x-ztag-scopes"),
            ["api:read api:write"],
            "{what}"
        );
        assert!(seen(&echo, "x-ztag-anything").is_empty(), "{what}");
        assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.1"], "{what}");
        assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"], "{what}");
        assert_eq!(seen(&echo, "x-forwarded-host"), [HOST], "{what}");
        let fwd = seen(&echo, "forwarded");
        assert!(
            fwd.len() == 1
                && fwd[0].contains("for=127.0.0.1")
                && fwd[0].contains("proto=http")
                && !fwd[0].contains("6.6.6.6")
                && !fwd[0].contains("evil"),
            "{what}"
        );
        assert!(seen(&echo, "connection").is_empty(), "{what}");
    }
    // A public route still gets no client-supplied identity.
    let echo = forwarded(&g, "/public", &[("x-ztag-subject", "admin")]);
    assert!(
        seen(&echo, "x-ztag-subject").is_empty(),
        "public route: {echo}"
    );
}

// ------------------------------------------------ smuggling and paths

#[test]
fn smuggling_attempts_are_400() {
    let g = Gateway::start(Options::default());
    let cases: &[(&str, &str)] = &[
        (
            "CL + TE",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "TE + CL",
            "POST /public HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
        (
            "two equal Content-Length",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "two different Content-Length",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        ),
        (
            "Content-Length list",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
        ),
        (
            "Content-Length with a sign",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
        ),
        (
            "obsolete line folding",
            "GET /public HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "obsolete line folding of Content-Length",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding gzip, chunked",
            "POST /public HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Transfer-Encoding headers",
            "POST /public HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /public HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before the colon",
            "POST /public HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
        ),
    ];
    let mut failures = Vec::new();
    for (name, req) in cases {
        let r = g.raw(req.as_bytes());
        if r.status != 400 {
            failures.push(format!("{name}: expected 400, got {}:\n{r}", r.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        g.upstream.requests(),
        0,
        "smuggling attempts reached the upstream: {:?}",
        g.upstream.log()
    );
}

#[test]
fn paths_are_normalised_once() {
    let g = Gateway::start(Options::default());
    let admin = bearer(&g.token(Alg::RS256, "root", "admin"));
    let cases = [
        ("/admin/../public", "/public"),
        ("/public/%2e%2e/other", "/other"),
        ("/x/%2E%2E/%2e%2E/y", "/y"),
        ("//public//a", "/public/a"),
        ("/public/./a/.", "/public/a/"),
        ("/public/%7Euser/%41", "/public/~user/A"),
        ("/public/caf%c3%a9", "/public/caf%C3%A9"),
        ("/public/%252e%252e/x", "/public/%252e%252e/x"),
        ("/a/b/../../../../public", "/public"),
        ("/public?q=..%2F&r=/../x", "/public?q=..%2F&r=/../x"),
    ];
    for (sent, want) in cases {
        let echo = forwarded(&g, sent, &[]);
        assert_eq!(
            echo["path"], want,
            "GET {sent}: upstream got {}",
            echo["path"]
        );
    }
    // Routing and policy see the normalised path: these reach the admin
    // route, which wants a token.
    let before = g.upstream.requests();
    for sent in [
        "//admin",
        "/public/%2e%2e/admin",
        "/public/../admin/",
        "/x/../../admin",
    ] {
        let r = g.get(sent, &[]);
        expect_status(&r, 401, &format!("GET {sent} (admin route, no token)"));
    }
    assert_eq!(
        g.upstream.requests(),
        before,
        "unauthenticated admin requests reached the upstream"
    );
    let echo = forwarded(&g, "//admin", &[("authorization", &admin)]);
    assert_eq!(echo["path"], "/admin", "GET //admin with an admin token");
    // A token good for /v1/ does not open /admin through a dot segment.
    let reader = bearer(&g.token(Alg::RS256, "bob", "api:read"));
    let r = g.get("/v1/../admin", &[("authorization", &reader)]);
    assert_eq!(
        r.status, 403,
        "GET /v1/../admin with an api:read token: expected 403, got:\n{r}"
    );
    // Refused outright.
    let mut failures = Vec::new();
    for sent in [
        "/public%2Fsecret",
        "/public/..%2Fadmin",
        "/public/..%2fadmin",
        "/public/..%5Cadmin",
        "/public/%00",
        "/public/%0d%0a",
        "/public/%zz",
        "/public/%4",
        "/public/..\\admin",
    ] {
        let r = g.get(sent, &[]);
        if r.status != 400 {
            failures.push(format!("GET {sent}: expected 400, got {}", r.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        g.upstream.requests(),
        before + 1,
        "refused paths reached the upstream: {:?}",
        g.upstream.log()
    );
}

#[test]
fn encoded_slash_keep_forwards_it_encoded() {
    let g = Gateway::start(Options {
        encoded_slash: "keep",
        ..Options::default()
    });
    for (sent, want) in [
        ("/public/a%2Fb", "/public/a%2Fb"),
        ("/public/a%2fb", "/public/a%2Fb"),
        ("/public/..%2Fadmin", "/public/..%2Fadmin"),
        ("/public/x%2Fy/../z", "/public/z"),
    ] {
        let echo = forwarded(&g, sent, &[]);
        assert_eq!(
            echo["path"], want,
            "keep: GET {sent}: upstream got {}",
            echo["path"]
        );
    }
}

// ------------------------------------------------------------- limits

#[test]
fn header_and_body_limits() {
    let g = Gateway::start(Options::default());
    let big = "a".repeat(20_000);
    let r = g.get("/public", &[("x-big", &big)]);
    expect_status(&r, 431, "a 20 kB header with max_header_bytes = 16384");
    // The same head as the second request of a kept-alive connection
    // (hyper let it through there: 431 comes from ztag's own scanner).
    let mut s = TcpStream::connect(g.plain_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /public HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .unwrap();
    expect_status(
        &ztag_tests::gateway::read_reply(&mut s),
        200,
        "first request on the connection",
    );
    s.write_all(format!("GET /public HTTP/1.1\r\nHost: {HOST}\r\nx-big: {big}\r\n\r\n").as_bytes())
        .unwrap();
    expect_status(
        &ztag_tests::gateway::read_reply(&mut s),
        431,
        "a 20 kB header on a kept-alive connection",
    );
    let many: Vec<(String, String)> = (0..400)
        .map(|i| (format!("x-h{i}"), "v".repeat(40)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = g.get("/public", &many);
    expect_status(
        &r,
        431,
        "400 headers of 50 bytes with max_header_bytes = 16384",
    );

    // Declared too large: refused before the body is read.
    let r = g.raw(
        b"POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
    );
    expect_status(&r, 413, "Content-Length 100000 with max_body_bytes = 65536");
    // Chunked, growing past the limit.
    let mut s = TcpStream::connect(g.plain_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /public HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let chunk = format!("4000\r\n{}\r\n", "b".repeat(0x4000));
    for _ in 0..6 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = ztag_tests::gateway::read_reply(&mut s);
    expect_status(&r, 413, "a 96 KiB chunked body with max_body_bytes = 65536");
    // Within the limit, the body arrives whole.
    let body = vec![b'c'; 60_000];
    let r = g.request("POST", "/public", &[], &body);
    expect_status(&r, 200, "a 60000-byte body");
    assert_eq!(
        r.json()["body_len"],
        60_000,
        "upstream body length: {}",
        r.text()
    );
}

#[test]
fn slow_upstream_is_504() {
    let g = Gateway::start(Options {
        upstream_response_timeout: "1s",
        ..Options::default()
    });
    let start = Instant::now();
    let r = g.get("/public/slow", &[("x-echo-delay-ms", "4000")]);
    let took = start.elapsed();
    expect_status(
        &r,
        504,
        "upstream 4 s slower than upstream_response_timeout = 1s",
    );
    assert!(
        took < Duration::from_millis(3500),
        "504 took {took:?}; it should come after about 1 s"
    );
    // A fast request afterwards is served.
    forwarded(&g, "/public/fast", &[]);
    // Upstream errors pass through as they are.
    let r = g.get("/public/err", &[("x-echo-status", "503")]);
    expect_status(&r, 503, "upstream answering 503");
}

#[test]
fn dead_peer_is_502_and_failing_peer_is_ejected() {
    let g = Gateway::start(Options::default());
    let r = g.get("/dead/x", &[]);
    expect_status(&r, 502, "a peer where nothing listens");
    // Round robin over A (healthy) and B (503): B is left out after three
    // failures in a row, then everything goes to A.
    g.upstream_b.set_status(503);
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = g.get(&format!("/pool/{i}"), &[]);
        if r.status == 200 {
            assert_eq!(r.json()["version"], "HTTP/2.0", "the pool speaks h2c: {r}");
        }
        statuses.push(r.status);
    }
    let b = g.upstream_b.requests();
    assert!(
        (3..=4).contains(&b),
        "the failing peer got {b} of 20 requests; expected it ejected after 3 failures (eject_after_failures = 3). Statuses: {statuses:?}"
    );
    assert!(
        statuses[10..].iter().all(|&s| s == 200),
        "after the ejection every request should reach the healthy peer: {statuses:?}"
    );
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the gateway's TLS listener for `HOST`, trusting the
/// test CA (HTTP/1.1, no ALPN).
fn tls_connect(g: &Gateway) -> TlsStream {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&g.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", g.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.flush().unwrap();
    // Drive the handshake to completion so the peer certificate is known.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

fn leaf(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// One keep-alive GET on an open connection; returns the status.
fn get_on(s: &mut TlsStream, path: &str) -> u16 {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("reading the response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[test]
fn certificates_reload_without_dropping_open_connections() {
    let g = Gateway::start(Options::default());
    let mut old = tls_connect(&g);
    let before = leaf(&old);
    assert_eq!(get_on(&mut old, "/public/1"), 200);
    // Renewal: a new key and certificate for the same names, written over
    // the files the config names; SIGHUP reloads at once (the file watcher
    // would within 5 s).
    g.ca.server(&[HOST, "127.0.0.1"]).write(&g.dir.0, "api");
    let pid = g.proc.0.as_ref().expect("daemon running").id();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let after = loop {
        let fresh = leaf(&tls_connect(&g));
        if fresh != before {
            break fresh;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still get the old certificate 8 s after the renewal and SIGHUP\n{}",
            g.log_text()
        );
        sleep(Duration::from_millis(200));
    };
    assert_ne!(after, before);
    // The connection opened before the reload keeps working, with its
    // certificate.
    assert_eq!(
        get_on(&mut old, "/public/2"),
        200,
        "the open connection was dropped"
    );
    assert_eq!(leaf(&old), before);
    // A certificate file that does not load keeps the running one.
    std::fs::write(g.dir.0.join("api.crt"), "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    sleep(Duration::from_millis(500));
    assert_eq!(
        leaf(&tls_connect(&g)),
        after,
        "a broken file replaced the running certificate"
    );
    assert!(
        g.log_text().contains("not reloaded"),
        "the failed reload should be logged:\n{}",
        g.log_text()
    );
}

#[test]
fn https_upstream_is_verified_against_its_ca() {
    let g = Gateway::start(Options::default());
    // Through an HTTPS upstream verified against the test CA: the idp's
    // discovery document comes back.
    let r = g.get("/.well-known/openid-configuration", &[]);
    expect_status(&r, 200, "https upstream with the test CA");
    assert_eq!(r.json()["issuer"], g.idp.issuer.as_str(), "{r}");
    // The same server against the system roots: its certificate is not
    // trusted, so nothing is forwarded.
    let r = g.get("/untrusted/x", &[]);
    expect_status(&r, 502, "https upstream whose certificate is not trusted");
}

/// Reads until the peer closes (EOF or reset); returns the bytes read and
/// when the close came, or None if it stayed open past `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
    (got, None)
}

#[test]
fn slowloris_is_disconnected_after_header_read_timeout() {
    let g = Gateway::start(Options {
        header_read_timeout: "1s",
        ..Options::default()
    });
    // A partial head, then silence.
    let mut s = TcpStream::connect(g.plain_addr()).unwrap();
    s.write_all(b"GET /public HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let (got, closed) = wait_closed(&mut s, Duration::from_secs(8));
    let closed = closed.unwrap_or_else(|| {
        panic!("a stalled partial header was still open after 8 s (header_read_timeout = 1s)")
    });
    assert!(
        closed >= Duration::from_millis(700) && closed < Duration::from_secs(4),
        "stalled header closed after {closed:?}, expected about 1 s; got {:?}",
        String::from_utf8_lossy(&got)
    );
    // Trickling one byte at a time does not reset the clock: the whole
    // head must arrive within the timeout.
    let mut s = TcpStream::connect(g.plain_addr()).unwrap();
    s.write_all(b"GET /public HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut w = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..60 {
            if w.write_all(b"X").is_err() {
                return;
            }
            sleep(Duration::from_millis(100));
        }
    });
    let (_, closed) = wait_closed(&mut s, Duration::from_secs(8));
    let _ = trickle.join();
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "a header trickled at 10 bytes/s was still open after 8 s (header_read_timeout = 1s)"
        )
    });
    assert!(
        closed < Duration::from_secs(4),
        "trickled header closed after {closed:?}, expected about 1 s"
    );
    // Part of the h2c preface, then silence: the same timeout.
    let mut s = TcpStream::connect(g.plain_addr()).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let (_, closed) = wait_closed(&mut s, Duration::from_secs(8));
    let closed = closed.unwrap_or_else(|| {
        panic!("a stalled partial h2c preface was still open after 8 s (header_read_timeout = 1s)")
    });
    assert!(
        closed >= Duration::from_millis(700) && closed < Duration::from_secs(4),
        "stalled h2c preface closed after {closed:?}, expected about 1 s"
    );
    assert_eq!(
        g.upstream.requests(),
        0,
        "a partial request reached the upstream"
    );
    // h2c with prior knowledge and HTTP/1.1 on the plain listener (the
    // preface is peeked at, hyper reads every byte itself).
    let url = format!("http://{}/public", g.plain_addr());
    for (flag, version) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{http_version}", flag, &url])
            .output()
            .expect("running curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}"),
            "curl {flag} {url}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn connections_over_the_per_source_limit_are_closed() {
    let g = Gateway::start(Options {
        max_connections_per_source: 4,
        header_read_timeout: "10s",
        idle_timeout: "30s",
        ..Options::default()
    });
    let keep = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        ztag_tests::gateway::read_reply(s)
    };
    let mut open = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(g.plain_addr()).unwrap();
        let r = keep(&mut s);
        expect_status(&r, 200, &format!("connection {i} of 4"));
        open.push(s);
    }
    for extra in 0..2 {
        let mut s = TcpStream::connect(g.plain_addr()).unwrap();
        let _ = s.write_all(b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n");
        let (got, closed) = wait_closed(&mut s, Duration::from_secs(3));
        assert!(
            closed.is_some_and(|d| d < Duration::from_secs(1)),
            "connection {} over max_connections_per_source = 4: expected closed at once, closed after {closed:?} with {:?}",
            5 + extra,
            String::from_utf8_lossy(&got)
        );
        assert!(
            !String::from_utf8_lossy(&got).contains(" 200 "),
            "connection over the limit was served"
        );
    }
    // The admitted ones still work, and a freed slot is reusable.
    let r = keep(&mut open[0]);
    expect_status(&r, 200, "an admitted connection after the refusals");
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(g.plain_addr()).unwrap();
        let r = keep(&mut s);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a slot freed by closing a connection was not reusable within 5 s: {r}"
        );
        sleep(Duration::from_millis(100));
    }
}

// --------------------------------------------------------------- JWKS

/// Polls `f` every 200 ms until it returns true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn jwks_rotation_is_picked_up_and_unknown_kids_are_rate_limited() {
    let g = Gateway::start(Options {
        refresh_interval: "5m",
        min_refresh_interval: "1s",
        ..Options::default()
    });
    let status = |t: &str| g.get("/v1/r", &[("authorization", &bearer(t))]).status;
    let old = g.idp.key(Alg::RS256);
    assert_eq!(
        status(&g.token(Alg::RS256, "a", "api:read")),
        200,
        "before rotation"
    );
    let new = g.idp.rotate(Alg::RS256);
    assert_ne!(new.kid, old.kid);
    let got = eventually(Duration::from_secs(10), || {
        status(&g.token(Alg::RS256, "a", "api:read")) == 200
    });
    assert!(
        got.is_some(),
        "a token with the new kid {} was not accepted within 10 s of rotation (JWKS fetches: {})",
        new.kid,
        g.idp.jwks_fetches()
    );
    // The withdrawn key no longer verifies new tokens.
    let old_token = old.token(&g.idp.claims("a", AUDIENCE, "api:read"), &json!({}));
    assert_eq!(
        status(&old_token),
        401,
        "a fresh token with the withdrawn kid {}",
        old.kid
    );
    // A storm of unknown kids makes at most about one fetch per
    // min_refresh_interval.
    sleep(Duration::from_millis(1100));
    let attacker = SigningKey::generate(Alg::ES256, "x");
    let before = g.idp.jwks_fetches();
    let start = Instant::now();
    for i in 0..40 {
        let t = attacker.token(
            &g.idp.claims("a", AUDIENCE, "api:read"),
            &json!({"kid": format!("unknown-{i}")}),
        );
        assert_eq!(status(&t), 401, "unknown kid {i}");
    }
    let secs = start.elapsed().as_secs_f64();
    let fetched = g.idp.jwks_fetches() - before;
    assert!(
        fetched as f64 <= secs.ceil() + 1.0,
        "40 unknown kids in {secs:.1}s caused {fetched} JWKS fetches (min_refresh_interval = 1s)"
    );
}

#[test]
fn idp_down_last_good_keys_verify_until_max_staleness() {
    let g = Gateway::start(Options {
        refresh_interval: "1s",
        min_refresh_interval: "1s",
        max_staleness: "4s",
        ..Options::default()
    });
    // Fresh tokens each time, so the verified-token cache cannot answer.
    let status = || {
        g.get(
            "/v1/s",
            &[(
                "authorization",
                &bearer(&g.token(Alg::ES256, "a", "api:read")),
            )],
        )
    };
    expect_status(&status(), 200, "IdP up");
    for (mode, down, up) in [
        (
            "refusing connections",
            &(|| g.idp.down()) as &dyn Fn(),
            &(|| g.idp.up()) as &dyn Fn(),
        ),
        (
            "answering 503",
            &(|| g.idp.set_unavailable(true)) as &dyn Fn(),
            &(|| g.idp.set_unavailable(false)) as &dyn Fn(),
        ),
    ] {
        // Start from a fresh fetch so the staleness clock is known.
        let f = g.idp.jwks_fetches();
        assert!(
            eventually(Duration::from_secs(5), || g.idp.jwks_fetches() > f).is_some(),
            "no periodic JWKS refresh within 5 s (refresh_interval = 1s)"
        );
        down();
        let t0 = Instant::now();
        let r = status();
        expect_status(&r, 200, &format!("IdP {mode}, keys 0 s stale"));
        let mut last = r;
        let refused_after = eventually(Duration::from_secs(10), || {
            last = status();
            last.status == 401
        });
        let refused_after = refused_after.map(|_| t0.elapsed()).unwrap_or_else(|| {
            panic!("IdP {mode}: tokens still accepted 10 s later (max_staleness = 4s): {last}")
        });
        assert!(
            refused_after >= Duration::from_millis(2500),
            "IdP {mode}: tokens refused after only {refused_after:?}; the last good keys should verify for max_staleness = 4s"
        );
        let mut failures = Vec::new();
        check_refused(
            &last,
            &format!("stale keys, IdP {mode}"),
            &["es-1"],
            &mut failures,
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        up();
        assert!(
            eventually(Duration::from_secs(8), || status().status == 200).is_some(),
            "IdP back ({mode}): tokens not accepted again within 8 s"
        );
    }
}

// ------------------------------------------------------------ metrics

/// Sum of every sample of `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap_or(0.0);
        *found.get_or_insert(0.0) += v;
    }
    found
}

#[test]
fn metrics_count_requests_authn_and_cache_hits() {
    let g = Gateway::start(Options::default());
    let t = bearer(&g.token(Alg::RS256, "m", "api:read"));
    for _ in 0..3 {
        forwarded(&g, "/v1/m", &[("authorization", &t)]);
    }
    let r = g.get("/v1/m", &[("authorization", "Bearer not.a.token")]);
    expect_status(&r, 401, "garbage token");
    forwarded(&g, "/public", &[]);
    let text = g.metrics();
    let mut failures = Vec::new();
    for (name, at_least) in [
        ("ztag_http_requests_total", 5.0),
        ("ztag_authn_results_total", 4.0),
        ("ztag_authn_token_cache_hits_total", 2.0),
    ] {
        match metric_sum(&text, name) {
            Some(v) if v >= at_least => {}
            got => failures.push(format!("{name}: expected at least {at_least}, got {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n/metrics:\n{}",
        failures.join("\n"),
        text.lines()
            .filter(|l| l.contains("ztag_http") || l.contains("ztag_authn"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn static_rate_limits_per_route_source_and_principal() {
    let gw = Gateway::start(Options::default());
    // Per source: a burst of 2, then 429 with Retry-After.
    assert_eq!(gw.get("/limited/a", &[]).status, 200);
    assert_eq!(gw.get("/limited/b", &[]).status, 200);
    let r = gw.get("/limited/c", &[]);
    assert_eq!(r.status, 429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Other routes are not affected.
    assert_eq!(gw.get("/x", &[]).status, 200);
    // Per principal: one a minute each.
    let t = |sub: &str| format!("Bearer {}", gw.token(Alg::ES256, sub, "api"));
    let (alice, bob) = (t("alice"), t("bob"));
    assert_eq!(
        gw.get("/limited-user/1", &[("Authorization", &alice)])
            .status,
        200
    );
    assert_eq!(
        gw.get("/limited-user/2", &[("Authorization", &alice)])
            .status,
        429
    );
    assert_eq!(
        gw.get("/limited-user/3", &[("Authorization", &bob)]).status,
        200
    );
    let m = gw.metrics();
    assert!(m.contains("reason=\"route_rate_limit\""), "{m}");
}

/// A minimal OTLP/HTTP collector: keeps the JSON bodies POSTed to it.
fn otlp_collector() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
                let mut w = &s;
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        }
    });
    (port, got)
}

#[test]
fn traces_follow_the_client_context_and_reach_the_otlp_collector() {
    let (port, got) = otlp_collector();
    let gw = Gateway::start(Options {
        extra_config: format!(
            "[gateway.tracing]\notlp_endpoint = \"http://127.0.0.1:{port}/v1/traces\"\nservice_name = \"ztag-test\"\n"
        ),
        ..Options::default()
    });
    let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
    let pid = "00f067aa0ba902b7";
    let token = gw.token(Alg::ES256, "alice", "api:read");
    let r = gw.get(
        "/v1/things",
        &[
            ("traceparent", &format!("00-{tid}-{pid}-01")),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    assert_eq!(r.status, 200);
    // The upstream is a child of ztag's upstream span, in the client's trace.
    let up = gw.upstream.last().unwrap();
    let tp = up["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", tid, "01"), "{tp}");
    assert_ne!(parts[2], pid);
    // The spans arrive: the server span under the client's, a child per phase.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spans: Vec<Value> = loop {
        let all: Vec<Value> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|s| s["traceId"] == tid)
            .collect();
        if all.len() >= 3 {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "spans: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["parentSpanId"], pid);
    assert_eq!(server["name"], "GET api");
    let upstream = spans.iter().find(|s| s["name"] == "upstream").unwrap();
    assert_eq!(upstream["spanId"], parts[2]);
    assert_eq!(upstream["parentSpanId"], server["spanId"]);
    assert!(spans.iter().any(|s| s["name"] == "authenticate"));
    let body = got.lock().unwrap()[0].to_string();
    assert!(body.contains("ztag-test"), "{body}");
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_accepts_no_new_connection() {
    let mut g = Gateway::start(Options {
        extra_config: "[process]\ndrain_timeout = \"5s\"\n".into(),
        ..Options::default()
    });
    let addr = g.plain_addr();
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET /pool/slow HTTP/1.1\r\nHost: api.test\r\nx-echo-delay-ms: 1500\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    // The request is at the upstream when the signal comes.
    std::thread::sleep(Duration::from_millis(400));
    let mut proc = std::mem::replace(&mut g.proc, ztag_tests::Proc(None));
    let waiter = std::thread::spawn(move || proc.terminate(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "a new connection was accepted while draining"
    );
    let reply = slow.join().unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the request in flight did not finish: {reply:?}\n{}",
        g.log_text()
    );
    let status = waiter
        .join()
        .unwrap()
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM:\n{}", g.log_text()));
    assert!(status.success(), "{status}\n{}", g.log_text());
    assert!(
        g.log_text().contains("drained: no connection left open"),
        "{}",
        g.log_text()
    );
}

/// The base64 lines of a PEM file's body (what would leak if a key did).
fn pem_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[test]
fn secrets_stay_out_of_logs_metrics_errors_and_help() {
    const VAULT_KEY: &str = "c2VjcmV0LXZhdWx0LWtleS0zMi1ieXRlcy1sb25nISE=";
    let mut g = Gateway::start(Options {
        files: vec![("vault.key".into(), format!("{VAULT_KEY}\n"))],
        extra_config: "[agent.vault]\nkey_file = \"vault.key\"\n".into(),
        ..Options::default()
    });
    let d = g.dir.0.clone();
    let mut secrets: Vec<String> = vec![VAULT_KEY.into(), ztag_tests::gateway::ADMIN_TOKEN.into()];
    for key in ["api.key", "other.key", "client.key"] {
        if d.join(key).exists() {
            secrets.extend(pem_lines(&d.join(key)));
        }
    }
    assert!(secrets.len() > 4, "key files of the harness: {secrets:?}");
    // Traffic that logs: good and bad tokens, a reload, a dashboard login
    // with a wrong token.
    let good = g.token(Alg::ES256, "alice", "api:read");
    let _ = g.get("/v1/x", &[("Authorization", &bearer(&good))]);
    let _ = g.get("/v1/x", &[("Authorization", "Bearer not.a.token")]);
    ztag_tests::sh(&["kill", "-HUP", &g.proc.pid().unwrap().to_string()]);
    sleep(Duration::from_millis(300));
    let metrics = g.metrics();
    g.restart();
    let log = g.log_text();
    let mut leaks = Vec::new();
    let mut look = |what: &str, text: &str| {
        for s in &secrets {
            if text.contains(s.as_str()) {
                leaks.push(format!("{what} shows {s:?}"));
            }
        }
    };
    look("the daemon log", &log);
    look("/metrics", &metrics);
    // --help of every subcommand.
    let help = |args: &[&str]| {
        let out = Command::new(ztag_tests::ztag_bin())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let top = help(&["--help"]);
    look("ztag --help", &top);
    for sub in [
        "run",
        "check-config",
        "block",
        "allow",
        "fga",
        "vault",
        "approvals",
        "risk",
        "fleet",
        "inspect",
        "detach",
        "stats",
        "events",
        "top",
        "audit",
    ] {
        look(&format!("ztag {sub} --help"), &help(&[sub, "--help"]));
    }
    // Errors about the secret files name the file, not what is in it.
    std::fs::write(d.join("bad-vault.key"), "c2VjcmV0LWJ1dC10b28tc2hvcnQ=\n").unwrap();
    std::fs::write(
        d.join("bad-tls.key"),
        "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let secrets2 = [
        "c2VjcmV0LWJ1dC10b28tc2hvcnQ=",
        "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD",
    ];
    let config = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("key_file = \"vault.key\"", "key_file = \"bad-vault.key\"")
        .replace("api.key", "bad-tls.key");
    let bad = d.join("bad.toml");
    std::fs::write(&bad, config).unwrap();
    for args in [
        vec!["check-config", "--config", bad.to_str().unwrap()],
        vec!["run", "--config", bad.to_str().unwrap()],
    ] {
        let out = Command::new(ztag_tests::ztag_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted bad keys");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bad-tls.key") || text.contains("bad-vault.key"),
            "{args:?}: the error names no file:\n{text}"
        );
        for s in secrets2 {
            if text.contains(s) {
                leaks.push(format!("ztag {args:?} error shows {s:?}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

/// testssl.sh (Debian's) against a TLS listener of the daemon, with a
/// certificate as a production one would be (a CA the scan is told about,
/// a year of validity, a CRL distribution point): no HIGH or CRITICAL
/// finding. The summary is saved in target/test-artifacts/testssl.txt.
#[test]
fn testssl_finds_nothing_high_or_critical() {
    if !ztag_tests::tool_available("testssl", "testssl_finds_nothing_high_or_critical") {
        return;
    }
    let work = ztag_tests::TempDir::new();
    let w = &work.0;
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(w)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=ztag audit CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        w.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\ncrlDistributionPoints=URI:http://crl.ztag.test/audit.crl\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        "ext.cnf",
        "-out",
        "srv.crt",
    ]);
    let port = ztag_tests::gateway::free_port();
    let read = |f: &str| std::fs::read_to_string(w.join(f)).unwrap();
    let g = Gateway::start(Options {
        files: vec![
            ("audit.crt".into(), read("srv.crt") + &read("ca.crt")),
            ("audit.key".into(), read("srv.key")),
        ],
        extra_config: format!(
            "[[gateway.listener]]\nname = \"audit\"\nbind = \"127.0.0.1:{port}\"\n[gateway.listener.tls]\ncertificates = [{{ cert = \"audit.crt\", key = \"audit.key\" }}]\n"
        ),
        ..Options::default()
    });
    let json = w.join("testssl.json");
    let out = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "batch", "--add-ca"])
        .arg(w.join("ca.crt"))
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no JSON from testssl ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut bad = Vec::new();
    let mut lesser = Vec::new();
    for f in report
        .as_array()
        .expect("testssl --jsonfile: an array of findings")
    {
        let sev = f["severity"].as_str().unwrap_or("?").to_string();
        if sev == "HIGH" || sev == "CRITICAL" {
            bad.push(format!("{sev} {}: {}", f["id"], f["finding"]));
        }
        if sev == "MEDIUM" || sev == "LOW" || sev == "WARN" {
            lesser.push(format!("{sev} {}: {}", f["id"], f["finding"]));
        }
        *counts.entry(sev).or_default() += 1;
    }
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(
        artifacts.join("testssl.txt"),
        format!(
            "findings by severity: {counts:?}\nbelow HIGH: {}\n\n{}",
            lesser.join("; "),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
    .unwrap();
    assert!(
        counts.get("OK").copied().unwrap_or(0) > 10,
        "testssl found too little to judge: {counts:?}"
    );
    assert!(
        bad.is_empty(),
        "testssl: {}\n{counts:?}\n{}",
        bad.join("\n"),
        g.log_text()
    );
}

//! A test authorization server for ztag's outbound OAuth: the token endpoint
//! (RFC 8693 token exchange, refresh grants, CIBA polls), a CIBA
//! backchannel endpoint and an approvals webhook receiver, on plain HTTP on
//! 127.0.0.1. Every token-endpoint call must authenticate with a
//! `private_key_jwt` client assertion from ztag's own key ([`ClientKey`]):
//! the signature, `iss` = `sub` = the client id, `aud` = the endpoint URL,
//! a future `exp` and an unused `jti` are all checked, and a failure is
//! answered `invalid_client` (and counted).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, runtime::Runtime};

/// ztag's outbound client id in the tests.
pub const ZTAG_CLIENT_ID: &str = "ztag-gateway";

/// ztag's ES256 key: the PEM it signs with, the public key the server checks.
pub struct ClientKey {
    /// PKCS#8 PEM.
    pub pem: String,
    public: Vec<u8>,
}

impl ClientKey {
    /// A fresh P-256 key.
    pub fn generate() -> ClientKey {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for l in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(l).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        ClientKey {
            pem,
            public: kp.public_key().as_ref().to_vec(),
        }
    }
}

/// What a CIBA request will be answered with when polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CibaAnswer {
    /// `authorization_pending`.
    Pending,
    /// A token (approved).
    Approve,
    /// `access_denied`.
    Deny,
}

#[derive(Default)]
struct State {
    /// Token endpoint form posts that passed client authentication.
    token_requests: Vec<HashMap<String, String>>,
    /// Assertions refused.
    bad_assertions: usize,
    jtis: HashSet<String>,
    issued: usize,
    expires_in: u64,
    /// CIBA: auth_req_id → (login_hint, binding_message, answer).
    ciba: HashMap<String, (String, String, CibaAnswer)>,
    webhooks: Vec<(String, String)>,
}

struct Shared {
    public: Vec<u8>,
    base: String,
    state: Mutex<State>,
}

/// The server. Dropping it stops it.
pub struct OAuthServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Arc<Shared>,
    rt: Option<Runtime>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

impl OAuthServer {
    /// Starts on a free port; tokens it issues live `expires_in` seconds.
    pub fn start(key: &ClientKey, expires_in: u64) -> OAuthServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared {
            public: key.public.clone(),
            base: base.clone(),
            state: Mutex::new(State {
                expires_in,
                ..Default::default()
            }),
        });
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(serve(&s, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        OAuthServer {
            base,
            shared,
            rt: Some(rt),
        }
    }

    /// `…/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.base)
    }

    /// Authenticated token-endpoint requests so far (form fields, the
    /// client assertion removed).
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.shared.state.lock().unwrap().token_requests.clone()
    }

    /// Client assertions refused so far.
    pub fn bad_assertions(&self) -> usize {
        self.shared.state.lock().unwrap().bad_assertions
    }

    /// CIBA requests: (auth_req_id, login_hint, binding_message).
    pub fn ciba_requests(&self) -> Vec<(String, String, String)> {
        let st = self.shared.state.lock().unwrap();
        let mut v: Vec<_> = st
            .ciba
            .iter()
            .map(|(k, (h, b, _))| (k.clone(), h.clone(), b.clone()))
            .collect();
        v.sort();
        v
    }

    /// How polls of `auth_req_id` are answered from now on.
    pub fn set_ciba(&self, auth_req_id: &str, a: CibaAnswer) {
        if let Some(e) = self.shared.state.lock().unwrap().ciba.get_mut(auth_req_id) {
            e.2 = a;
        }
    }

    /// Webhook deliveries: (signature header, body).
    pub fn webhooks(&self) -> Vec<(String, String)> {
        self.shared.state.lock().unwrap().webhooks.clone()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn oauth_error(e: &str) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, json!({"error": e}))
}

/// Checks a private_key_jwt assertion for `aud`.
fn check_assertion(s: &Shared, form: &HashMap<String, String>, aud: &str) -> Result<(), String> {
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("client_assertion_type".into());
    }
    let a = form.get("client_assertion").ok_or("no client_assertion")?;
    let parts: Vec<&str> = a.split('.').collect();
    if parts.len() != 3 {
        return Err("not a JWS".into());
    }
    let header: Value =
        serde_json::from_slice(&b64url(parts[0]).ok_or("header")?).map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let sig = b64url(parts[2]).ok_or("signature")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &s.public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "bad signature".to_string())?;
    let c: Value =
        serde_json::from_slice(&b64url(parts[1]).ok_or("claims")?).map_err(|e| e.to_string())?;
    if c["iss"] != ZTAG_CLIENT_ID || c["sub"] != ZTAG_CLIENT_ID {
        return Err("iss/sub".into());
    }
    if form.get("client_id").map(String::as_str) != Some(ZTAG_CLIENT_ID) {
        return Err("client_id".into());
    }
    if c["aud"] != aud {
        return Err(format!("aud {} is not {aud}", c["aud"]));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if c["exp"].as_u64().is_none_or(|e| e < now) {
        return Err("expired".into());
    }
    let jti = c["jti"].as_str().ok_or("no jti")?.to_string();
    if !s.state.lock().unwrap().jtis.insert(jti) {
        return Err("jti replayed".into());
    }
    Ok(())
}

async fn serve(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let sig = req
        .headers()
        .get("x-ztag-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path == "/webhook" {
        s.state
            .lock()
            .unwrap()
            .webhooks
            .push((sig, String::from_utf8_lossy(&body).into_owned()));
        return reply(StatusCode::OK, json!({}));
    }
    let form: HashMap<String, String> = form_pairs(&body);
    let aud = format!("{}{}", s.base, path);
    if let Err(e) = check_assertion(s, &form, &aud) {
        eprintln!("oauth test server: refused client assertion: {e}");
        s.state.lock().unwrap().bad_assertions += 1;
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let mut recorded = form.clone();
    recorded.remove("client_assertion");
    let mut st = s.state.lock().unwrap();
    match path.as_str() {
        "/bc-authorize" => {
            st.issued += 1;
            let id = format!("req-{}", st.issued);
            st.ciba.insert(
                id.clone(),
                (
                    form.get("login_hint").cloned().unwrap_or_default(),
                    form.get("binding_message").cloned().unwrap_or_default(),
                    CibaAnswer::Pending,
                ),
            );
            reply(
                StatusCode::OK,
                json!({"auth_req_id": id, "expires_in": 120, "interval": 1}),
            )
        }
        "/token" => {
            st.token_requests.push(recorded);
            let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
            match grant {
                "urn:openid:params:grant-type:ciba" => {
                    let id = form.get("auth_req_id").cloned().unwrap_or_default();
                    match st.ciba.get(&id).map(|e| e.2) {
                        None => oauth_error("invalid_grant"),
                        Some(CibaAnswer::Pending) => oauth_error("authorization_pending"),
                        Some(CibaAnswer::Deny) => oauth_error("access_denied"),
                        Some(CibaAnswer::Approve) => reply(
                            StatusCode::OK,
                            json!({"access_token": "ciba-at", "id_token": "x", "token_type": "Bearer", "expires_in": 60}),
                        ),
                    }
                }
                "refresh_token" => {
                    st.issued += 1;
                    let n = st.issued;
                    reply(
                        StatusCode::OK,
                        json!({"access_token": format!("refreshed-{n}"), "token_type": "Bearer",
                               "expires_in": st.expires_in, "refresh_token": format!("rt-{n}")}),
                    )
                }
                g if g.contains("token-exchange") => {
                    if form.get("subject_token").is_none_or(|t| t.is_empty()) {
                        return oauth_error("invalid_request");
                    }
                    st.issued += 1;
                    let n = st.issued;
                    reply(
                        StatusCode::OK,
                        json!({"access_token": format!("xchg-{n}"), "token_type": "Bearer",
                               "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                               "expires_in": st.expires_in, "refresh_token": format!("rt-{n}")}),
                    )
                }
                _ => oauth_error("unsupported_grant_type"),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    let s = String::from_utf8_lossy(body);
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((pct(k), pct(v)))
        })
        .collect()
}

fn pct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

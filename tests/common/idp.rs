//! A real HTTPS identity provider for the gateway tests, on 127.0.0.1 in its
//! own tokio runtime: OIDC discovery (`/.well-known/openid-configuration`)
//! and `/jwks.json`, RS256 / ES256 / EdDSA signing keys that it rotates
//! (publish a new `kid`, withdraw an old one), switched down (connections
//! refused, or 503) and up again, and a count of JWKS fetches. It also mints
//! tokens, well-formed or deliberately broken, with any of its keys — also
//! keys it no longer publishes.
//!
//! JWS are built here with aws-lc-rs rather than a JWT library, so that a
//! test controls every byte of header, payload and signature.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    encoding::{AsDer, PublicKeyX509Der},
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
        RsaKeyPair,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, runtime::Runtime, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::pki::Ca;

/// A JWS algorithm the test keys sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key with its `kid`.
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    signer: Signer,
}

impl SigningKey {
    /// A fresh key.
    pub fn generate(alg: Alg, kid: &str) -> SigningKey {
        let signer = match alg {
            Alg::RS256 => Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()),
            Alg::ES256 => {
                Signer::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
            }
            Alg::EdDSA => Signer::Ed(Ed25519KeyPair::generate().unwrap()),
        };
        SigningKey {
            kid: kid.to_owned(),
            alg,
            signer,
        }
    }

    /// Signs `msg` as `alg` (the raw JWS signature: r||s for ES256).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
                    .unwrap();
                sig
            }
            Signer::Ec(k) => k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec(),
            Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub fn jwk(&self) -> Value {
        let (kid, alg) = (&self.kid, self.alg.name());
        match &self.signer {
            Signer::Rsa(k) => {
                let p = k.public_key();
                json!({
                    "kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                    "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(p.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({
                    "kty": "EC", "kid": kid, "alg": alg, "use": "sig", "crv": "P-256",
                    "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65]),
                })
            }
            Signer::Ed(k) => json!({
                "kty": "OKP", "kid": kid, "alg": alg, "use": "sig", "crv": "Ed25519",
                "x": B64.encode(k.public_key().as_ref()),
            }),
        }
    }

    /// The public key as SPKI PEM (what an HS256-confusion attacker uses as
    /// the HMAC secret).
    pub fn public_pem(&self) -> String {
        let der: PublicKeyX509Der<'static> = match &self.signer {
            Signer::Rsa(k) => k.public_key().as_der().unwrap(),
            Signer::Ec(k) => k.public_key().as_der().unwrap(),
            Signer::Ed(k) => k.public_key().as_der().unwrap(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// A compact JWS: the header gets `alg`, `typ` and `kid` unless `extra`
    /// sets them (a `null` in `extra` removes a member).
    pub fn token(&self, claims: &Value, extra: &Value) -> String {
        let mut header = json!({"alg": self.alg.name(), "typ": "JWT", "kid": self.kid});
        merge(&mut header, extra);
        jws(&header, claims, |m| self.sign(m))
    }

    /// A client assertion (RFC 7523) from `client_id` for `audience`, unique
    /// `jti`, five minutes of life.
    pub fn client_assertion(&self, client_id: &str, audience: &str) -> String {
        let now = now();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "iat": now, "exp": now + 120, "jti": unique_jti(),
        });
        self.token(&claims, &json!({}))
    }
}

/// `a` with the members of `b` set (or removed where `b` has `null`).
pub fn merge(a: &mut Value, b: &Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            if v.is_null() {
                a.remove(k);
            } else {
                a.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `b64(header).b64(claims).b64(sign(signing input))`.
pub fn jws(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// Base64url without padding, as JWS uses.
pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

/// Decodes base64url without padding.
pub fn b64_decode(s: &str) -> Vec<u8> {
    B64.decode(s).unwrap()
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `jti` no other call returns.
pub fn unique_jti() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "jti-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

struct Keys {
    /// Published in the JWKS.
    published: Vec<Arc<SigningKey>>,
    /// Withdrawn, but the test can still sign with them.
    withdrawn: Vec<Arc<SigningKey>>,
    next: usize,
}

struct Shared {
    issuer: String,
    keys: Mutex<Keys>,
    unavailable: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// The identity provider. Dropping it stops the server and its runtime.
pub struct Idp {
    /// `https://127.0.0.1:PORT` — also the discovery base.
    pub issuer: String,
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    server: Mutex<Option<JoinHandle<()>>>,
    // Last: dropped after the server handle.
    rt: Option<Runtime>,
}

impl Idp {
    /// Starts an IdP with a server certificate from `ca` for 127.0.0.1 and
    /// one key of each algorithm (`rs-1`, `es-1`, `ed-1`).
    pub fn start(ca: &Ca) -> Idp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cert = ca.server(&["127.0.0.1", "localhost"]);
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.private_key())
        .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("https://{addr}");
        let keys = [
            SigningKey::generate(Alg::RS256, "rs-1"),
            SigningKey::generate(Alg::ES256, "es-1"),
            SigningKey::generate(Alg::EdDSA, "ed-1"),
        ];
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            keys: Mutex::new(Keys {
                published: keys.into_iter().map(Arc::new).collect(),
                withdrawn: Vec::new(),
                next: 2,
            }),
            unavailable: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let idp = Idp {
            issuer,
            addr,
            shared,
            acceptor,
            server: Mutex::new(None),
            rt: Some(rt),
        };
        idp.serve(listener);
        idp
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn serve(&self, listener: TcpListener) {
        let acceptor = self.acceptor.clone();
        let shared = self.shared.clone();
        let task = self.rt().spawn(async move {
            // Connections live in this set: aborting the server task drops
            // them all, so "down" means no keep-alive connection survives.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((tcp, _)) = r else { continue };
                        let acceptor = acceptor.clone();
                        let shared = shared.clone();
                        conns.spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let svc = service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(respond(&shared, req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// Stops listening and closes every connection: the gateway's fetches
    /// are refused.
    pub fn down(&self) {
        if let Some(t) = self.server.lock().unwrap().take() {
            t.abort();
            let _ = self.rt().block_on(t);
        }
    }

    /// Listens again on the same address.
    pub fn up(&self) {
        self.down();
        let addr = self.addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match self.rt().block_on(TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "idp: rebinding {addr}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.serve(listener);
    }

    /// Answers 503 to everything (true) or serves again (false).
    pub fn set_unavailable(&self, on: bool) {
        self.shared.unavailable.store(on, Ordering::SeqCst);
    }

    /// JWKS documents served (200) so far.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Discovery documents served (200) so far.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The published key with this algorithm (the newest).
    pub fn key(&self, alg: Alg) -> Arc<SigningKey> {
        let keys = self.shared.keys.lock().unwrap();
        keys.published
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .cloned()
            .unwrap_or_else(|| panic!("idp has no published {alg:?} key"))
    }

    /// Any key it has had, published or withdrawn, by `kid`.
    pub fn key_by_kid(&self, kid: &str) -> Arc<SigningKey> {
        let keys = self.shared.keys.lock().unwrap();
        keys.published
            .iter()
            .chain(&keys.withdrawn)
            .find(|k| k.kid == kid)
            .cloned()
            .unwrap_or_else(|| panic!("idp never had kid {kid:?}"))
    }

    /// Rotation: publishes a new `alg` key and withdraws the older ones of
    /// that algorithm. Returns the new key.
    pub fn rotate(&self, alg: Alg) -> Arc<SigningKey> {
        let mut keys = self.shared.keys.lock().unwrap();
        let prefix = match alg {
            Alg::RS256 => "rs",
            Alg::ES256 => "es",
            Alg::EdDSA => "ed",
        };
        let kid = format!("{prefix}-{}", keys.next);
        keys.next += 1;
        let new = Arc::new(SigningKey::generate(alg, &kid));
        let (old, keep): (Vec<_>, Vec<_>) = keys.published.drain(..).partition(|k| k.alg == alg);
        keys.published = keep;
        keys.published.push(new.clone());
        keys.withdrawn.extend(old);
        new
    }

    /// Standard claims: this issuer, `aud`, `sub`, `scope`, five minutes.
    pub fn claims(&self, sub: &str, aud: &str, scope: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "sub": sub, "aud": aud, "scope": scope,
            "iat": now, "nbf": now, "exp": now + 300, "jti": unique_jti(),
            "client_id": "test-client",
        })
    }

    /// A valid token from the newest `alg` key.
    pub fn token(&self, alg: Alg, claims: &Value) -> String {
        self.key(alg).token(claims, &json!({}))
    }

    /// The document `/jwks.json` serves now.
    pub fn jwks(&self) -> Value {
        let keys = self.shared.keys.lock().unwrap();
        jwks(&keys.published.iter().map(|k| &**k).collect::<Vec<_>>())
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(t) = self.server.lock().unwrap().take() {
            t.abort();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn respond(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if shared.unavailable.load(Ordering::SeqCst) {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let iss = &shared.issuer;
            let doc = json!({
                "issuer": iss,
                "jwks_uri": format!("{iss}/jwks.json"),
                "authorization_endpoint": format!("{iss}/authorize"),
                "token_endpoint": format!("{iss}/token"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            });
            reply(StatusCode::OK, doc.to_string())
        }
        "/jwks.json" => {
            shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys = shared.keys.lock().unwrap();
            let doc = jwks(&keys.published.iter().map(|k| &**k).collect::<Vec<_>>());
            reply(StatusCode::OK, doc.to_string())
        }
        _ => reply(StatusCode::NOT_FOUND, "{}".into()),
    }
}

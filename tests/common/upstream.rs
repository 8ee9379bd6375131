//! An echo upstream for the gateway tests: HTTP/1.1 and h2c (prior
//! knowledge) on 127.0.0.1, answering JSON
//! `{method, path, version, headers, body_len}` — `path` with its query,
//! `headers` as name → list of values — so a test asserts exactly what the
//! gateway forwarded. Requests are also kept in a log.
//!
//! Behaviour for failure tests: a fixed delay and status for every request
//! ([`Upstream::set_delay`], [`Upstream::set_status`]), or per request with
//! the headers `x-echo-delay-ms` and `x-echo-status`.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

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

#[derive(Default)]
struct Shared {
    delay_ms: AtomicU64,
    status: AtomicU16,
    requests: AtomicUsize,
    log: Mutex<Vec<Value>>,
}

/// The echo server. Dropping it stops it.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<Runtime>,
}

impl Upstream {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(echo(&s, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            shared,
            rt: Some(rt),
        }
    }

    /// Delays every answer by this much (0: none).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers every request with this status (0: 200).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request received, as echoed.
    pub fn log(&self) -> Vec<Value> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The most recent request received.
    pub fn last(&self) -> Option<Value> {
        self.shared.log.lock().unwrap().last().cloned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A body sent as separate chunks (chunked transfer encoding / DATA frames).
pub struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `x-echo-reply: body` answers with the request's own body (or the
/// base64 `x-echo-body-b64` header: the test's chosen response), with `x-echo-content-type` as its type, in chunks of
/// `x-echo-chunk` bytes.
async fn echo(s: &Shared, req: Request<Incoming>) -> Response<EchoBody> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let hdr = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = hdr("x-echo-delay-ms").unwrap_or(s.delay_ms.load(Ordering::SeqCst));
    let status = hdr("x-echo-status")
        .map(|v| v as u16)
        .unwrap_or(s.status.load(Ordering::SeqCst));
    let raw = body.collect().await.map(|b| b.to_bytes()).ok();
    let body_len = raw.as_ref().map(|b| b.len() as i64).unwrap_or(-1);
    let reply_raw = parts
        .headers
        .get("x-echo-reply")
        .is_some_and(|v| v == "body");
    let content_type = parts
        .headers
        .get("x-echo-content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let chunk = hdr("x-echo-chunk").unwrap_or(0) as usize;
    let doc = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    s.log.lock().unwrap().push(doc.clone());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if reply_raw {
        use base64::Engine as _;
        // `x-echo-body-b64` gives the reply instead of the request body.
        let raw = match parts.headers.get("x-echo-body-b64") {
            Some(v) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .unwrap_or_default(),
            ),
            None => raw.unwrap_or_default(),
        };
        let parts: std::collections::VecDeque<Bytes> = if chunk == 0 {
            [raw].into()
        } else {
            raw.chunks(chunk).map(Bytes::copy_from_slice).collect()
        };
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", content_type)
            .body(Chunks(parts).boxed())
            .unwrap();
    }
    Response::builder()
        .status(if status.as_u16() < 200 {
            StatusCode::OK
        } else {
            status
        })
        .header("content-type", "application/json")
        .header("x-echo", "1")
        .body(Full::new(Bytes::from(doc.to_string())).boxed())
        .unwrap()
}

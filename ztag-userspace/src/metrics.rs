//! Prometheus metrics and the `/metrics` endpoint. Kernel counters are read
//! from the per-CPU map at scrape time, so a scrape always shows the
//! kernel's current totals.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::admin::{Shared, stats};

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    entries: IntGaugeVec,
    /// Sampled drop events read from the ring buffer.
    pub drop_events: IntCounter,
    scrape: std::sync::Mutex<()>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let labels = &["interface", "action", "reason"];
        let packets = IntCounterVec::new(
            Opts::new(
                "ztag_xdp_packets_total",
                "Packets seen by the XDP/TC program, by interface, action and reason.",
            ),
            labels,
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "ztag_xdp_bytes_total",
                "Bytes seen by the XDP/TC program, by interface, action and reason.",
            ),
            labels,
        )?;
        let entries = IntGaugeVec::new(
            Opts::new(
                "ztag_blocklist_entries",
                "Entries in the kernel's lists, by kind (allow, block, dynamic).",
            ),
            &["kind"],
        )?;
        let drop_events = IntCounter::new(
            "ztag_xdp_drop_events_total",
            "Sampled drop events received from the kernel's ring buffer.",
        )?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(drop_events.clone()))?;
        Ok(Metrics {
            registry,
            packets,
            bytes,
            entries,
            drop_events,
            scrape: std::sync::Mutex::new(()),
        })
    }

    /// The registry, for other modules' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Brings the kernel-side values up to date and renders the text format.
    pub fn render(&self, shared: &Shared) -> Result<String, String> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let rows = stats(shared).map_err(|e| e.to_string())?;
        for r in rows {
            let l = [r.interface.as_str(), r.action.as_str(), r.reason.as_str()];
            set_counter(&self.packets.with_label_values(&l), r.packets);
            set_counter(&self.bytes.with_label_values(&l), r.bytes);
        }
        if let Some(e) = &shared.enforcer {
            let e = e.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in e.entry_counts() {
                self.entries.with_label_values(&[k.as_str()]).set(n as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// Moves a counter to an absolute value read from the kernel (which only
/// goes down when the maps were recreated, e.g. after `ztag detach`).
fn set_counter(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v >= cur {
        c.inc_by(v - cur);
    } else {
        c.reset();
        c.inc_by(v);
    }
}

/// Serves `GET /metrics` on `addr`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (m, s) = (metrics.clone(), shared.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (m, s) = (m.clone(), s.clone());
                    async move {
                        let resp = if req.method() == Method::GET && req.uri().path() == "/metrics"
                        {
                            match tokio::task::spawn_blocking(move || m.render(&s)).await {
                                Ok(Ok(text)) => Response::builder()
                                    .header(
                                        "content-type",
                                        "text/plain; version=0.0.4; charset=utf-8",
                                    )
                                    .body(Full::new(Bytes::from(text))),
                                other => {
                                    let why = match other {
                                        Ok(Err(e)) => e,
                                        Err(e) => e.to_string(),
                                        Ok(Ok(_)) => String::new(),
                                    };
                                    warn!("metrics scrape failed: {why}");
                                    Response::builder()
                                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                                        .body(Full::new(Bytes::from_static(b"scrape failed\n")))
                                }
                            }
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
                        };
                        Ok::<_, hyper::http::Error>(resp.unwrap_or_default())
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!("metrics connection: {e}");
                }
            });
        }
    });
    Ok(())
}

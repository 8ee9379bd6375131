//! The gateway's Prometheus metrics. Label values come from config names
//! and fixed reason strings only, so cardinality stays bounded.

use std::time::Duration;

use http::StatusCode;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Handles to every gateway metric.
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    denials: IntCounterVec,
    handshakes: IntCounterVec,
    connections: IntGaugeVec,
    refused: IntCounterVec,
    ejections: IntCounterVec,
    authz: IntCounterVec,
    authz_seconds: HistogramVec,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
}

/// Decrements the open-connections gauge when dropped.
pub struct OpenGuard(IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl HttpMetrics {
    /// Registers the metrics in `r`.
    pub fn new(r: &Registry) -> Result<HttpMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "ztag_http_requests_total",
                "Requests answered, by listener, route (\"-\": none matched) and status.",
            ),
            &["listener", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ztag_http_request_duration_seconds",
                "Time from request head to response head, by route and status.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route", "status"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "ztag_http_denials_total",
                "Requests ztag answered itself (refused or failed), by reason.",
            ),
            &["reason"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "ztag_tls_handshakes_total",
                "TLS handshakes, by listener, result (ok, error, timeout) and version.",
            ),
            &["listener", "result", "version"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "ztag_http_connections",
                "Open client connections, by listener.",
            ),
            &["listener"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "ztag_http_connections_refused_total",
                "Connections closed at accept, by listener and limit.",
            ),
            &["listener", "limit"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "ztag_upstream_ejections_total",
                "Upstream peers ejected by passive health checks.",
            ),
            &["upstream", "peer"],
        )?;
        let authz = IntCounterVec::new(
            Opts::new(
                "ztag_authz_decisions_total",
                "Route-policy FGA decisions, by route, engine (embedded, remote) and result (allow, deny, error).",
            ),
            &["route", "engine", "result"],
        )?;
        let authz_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ztag_authz_check_duration_seconds",
                "Time to decide one route-policy check, by engine.",
            )
            .buckets(vec![
                0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
                0.001, 0.005, 0.025, 0.1, 0.5,
            ]),
            &["engine"],
        )?;
        let access_log_dropped = IntCounter::new(
            "ztag_access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        )?;
        r.register(Box::new(requests.clone()))?;
        r.register(Box::new(duration.clone()))?;
        r.register(Box::new(denials.clone()))?;
        r.register(Box::new(handshakes.clone()))?;
        r.register(Box::new(connections.clone()))?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(ejections.clone()))?;
        r.register(Box::new(authz.clone()))?;
        r.register(Box::new(authz_seconds.clone()))?;
        r.register(Box::new(access_log_dropped.clone()))?;
        Ok(HttpMetrics {
            requests,
            duration,
            denials,
            handshakes,
            connections,
            refused,
            ejections,
            authz,
            authz_seconds,
            access_log_dropped,
        })
    }

    /// One answered request.
    pub fn request(
        &self,
        listener: &str,
        route: &str,
        status: StatusCode,
        took: Duration,
        denied: Option<&'static str>,
    ) {
        let s = status.as_str();
        self.requests.with_label_values(&[listener, route, s]).inc();
        self.duration
            .with_label_values(&[route, s])
            .observe(took.as_secs_f64());
        if let Some(r) = denied {
            self.denials.with_label_values(&[r]).inc();
        }
    }

    /// A connection or request refused for `reason` outside a request.
    pub fn denied(&self, reason: &str) {
        self.denials.with_label_values(&[reason]).inc();
    }

    /// One TLS handshake.
    pub fn handshake(&self, listener: &str, result: &str, version: &str) {
        self.handshakes
            .with_label_values(&[listener, result, version])
            .inc();
    }

    /// A connection opened; the guard closes it in the gauge.
    pub fn open(&self, listener: &str) -> OpenGuard {
        let g = self.connections.with_label_values(&[listener]);
        g.inc();
        OpenGuard(g)
    }

    /// A connection refused at accept.
    pub fn refused(&self, listener: &str, limit: &str) {
        self.refused.with_label_values(&[listener, limit]).inc();
    }

    /// One route-policy decision.
    pub fn authz(&self, route: &str, engine: &str, result: &str, took: Duration) {
        self.authz.with_label_values(&[route, engine, result]).inc();
        self.authz_seconds
            .with_label_values(&[engine])
            .observe(took.as_secs_f64());
    }

    /// A peer ejected.
    pub fn ejected(&self, upstream: &str, peer: &str) {
        self.ejections.with_label_values(&[upstream, peer]).inc();
    }
}

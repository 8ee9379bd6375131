//! Upstream pools: peer selection (round robin or least outstanding
//! requests), passive health (a peer failing `eject_after_failures` times in
//! a row is left out for `eject_for`), pooled HTTP/1.1 or h2 connections,
//! HTTPS with certificate verification.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

use super::config::{Balance, UpstreamConfig};

/// Body type sent upstream.
pub type UpBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// One peer of a pool.
pub struct Peer {
    /// `host:port`.
    pub addr: String,
    /// `scheme://host:port` prefix for request URIs.
    pub base: String,
    outstanding: AtomicUsize,
    failures: AtomicU32,
    /// Ejected until this many ms after the pool's epoch (0: not ejected).
    ejected_until: AtomicU64,
}

impl Peer {
    /// Requests in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// A pool of peers with one connection pool (hyper's) shared by them.
pub struct Pool {
    /// Config name.
    pub name: String,
    /// Peers.
    pub peers: Vec<Arc<Peer>>,
    client: Client<Connector, UpBody>,
    balance: Balance,
    next: AtomicUsize,
    eject_after: u32,
    eject_for: Duration,
    epoch: Instant,
    /// Whether requests go as HTTP/2.
    pub h2: bool,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct PoolError {
    key: String,
    why: String,
}

/// A peer picked for one request; counts it as outstanding until dropped.
pub struct Lease {
    /// The peer.
    pub peer: Arc<Peer>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.peer.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Builds the pool and its client.
    pub fn new(
        i: usize,
        cfg: &UpstreamConfig,
        connect_timeout: Duration,
    ) -> Result<Pool, PoolError> {
        let key = format!("gateway.upstream[{i}]");
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let provider = super::tls::provider();
        let roots = match &cfg.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| PoolError {
                        key: format!("{key}.ca"),
                        why: format!("{}: {e}", ca.display()),
                    })?;
                for c in certs {
                    roots.add(c).map_err(|e| PoolError {
                        key: format!("{key}.ca"),
                        why: format!("{}: not a usable CA certificate: {e}", ca.display()),
                    })?;
                }
                if roots.is_empty() {
                    return Err(PoolError {
                        key: format!("{key}.ca"),
                        why: format!("{}: no CERTIFICATE in the file", ca.display()),
                    });
                }
                roots
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        // hyper-rustls sets ALPN itself from enable_http1/enable_http2.
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| PoolError {
                key: key.clone(),
                why: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if cfg.https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let builder = match &cfg.server_name {
            Some(n) => {
                let name = ServerName::try_from(n.clone()).map_err(|_| PoolError {
                    key: format!("{key}.server_name"),
                    why: format!("{n:?} is not a DNS name or address"),
                })?;
                builder.with_server_name_resolver(FixedName(name))
            }
            None => builder,
        };
        let connector = if cfg.h2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .http2_only(cfg.h2)
            .http1_title_case_headers(false)
            .http1_preserve_header_case(false);
        if cfg.h2 {
            client
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Some(Duration::from_secs(30)));
        }
        let client = client.build(connector);
        let scheme = if cfg.https { "https" } else { "http" };
        Ok(Pool {
            name: cfg.name.clone(),
            peers: cfg
                .peers
                .iter()
                .map(|p| {
                    Arc::new(Peer {
                        addr: p.clone(),
                        base: format!("{scheme}://{p}"),
                        outstanding: AtomicUsize::new(0),
                        failures: AtomicU32::new(0),
                        ejected_until: AtomicU64::new(0),
                    })
                })
                .collect(),
            client,
            balance: cfg.balance,
            next: AtomicUsize::new(0),
            eject_after: cfg.eject_after_failures,
            eject_for: cfg.eject_for,
            epoch: Instant::now(),
            h2: cfg.h2,
        })
    }

    /// The shared client.
    pub fn client(&self) -> &Client<Connector, UpBody> {
        &self.client
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn healthy(&self, p: &Peer, now: u64) -> bool {
        p.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Picks a peer, skipping ejected ones and `avoid` (a peer that just
    /// failed this request). When every peer is ejected, `None`: the
    /// request fails fast with 503 rather than piling onto dead peers.
    pub fn pick(&self, avoid: Option<&Arc<Peer>>) -> Option<Lease> {
        let now = self.now_ms();
        let n = self.peers.len();
        let ok = |p: &Arc<Peer>| self.healthy(p, now) && avoid.is_none_or(|a| !Arc::ptr_eq(a, p));
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| &self.peers[(start + k) % n]).find(|p| ok(p))
            }
            Balance::LeastOutstanding => {
                // Ties go round robin so that idle pools spread load too.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| &self.peers[(start + k) % n])
                    .filter(|p| ok(p))
                    .min_by_key(|p| p.outstanding())
            }
        }?;
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            peer: chosen.clone(),
        })
    }

    /// Records the outcome of a request to `peer`; returns true when this
    /// failure ejected it.
    pub fn record(&self, peer: &Peer, ok: bool) -> bool {
        if ok {
            if peer.failures.load(Ordering::Relaxed) != 0 {
                peer.failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let f = peer.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f >= self.eject_after {
            peer.failures.store(0, Ordering::Relaxed);
            peer.ejected_until.store(
                self.now_ms() + self.eject_for.as_millis() as u64,
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }
}

/// Verifies every peer's certificate against one configured name.
#[derive(Clone)]
struct FixedName(ServerName<'static>);

impl hyper_rustls::ResolveServerName for FixedName {
    fn resolve(
        &self,
        _uri: &http::Uri,
    ) -> Result<ServerName<'static>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, peers: &[&str]) -> Pool {
        let cfg = UpstreamConfig {
            name: "t".into(),
            peers: peers.iter().map(|s| s.to_string()).collect(),
            https: false,
            h2: false,
            balance,
            eject_after_failures: 2,
            eject_for: Duration::from_secs(60),
            ca: None,
            server_name: None,
        };
        Pool::new(0, &cfg, Duration::from_secs(1)).unwrap()
    }

    #[tokio::test]
    async fn round_robin_takes_turns_and_skips_ejected_peers() {
        let p = pool(
            Balance::RoundRobin,
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        );
        let order: Vec<String> = (0..3)
            .map(|_| p.pick(None).unwrap().peer.addr.clone())
            .collect();
        assert_eq!(order, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let second = p.peers[1].clone();
        assert!(!p.record(&second, false));
        assert!(
            p.record(&second, false),
            "the second failure in a row ejects"
        );
        for _ in 0..6 {
            assert_ne!(p.pick(None).unwrap().peer.addr, "127.0.0.1:2");
        }
        // A success in between resets the count.
        let first = p.peers[0].clone();
        assert!(!p.record(&first, false));
        p.record(&first, true);
        assert!(!p.record(&first, false));
    }

    #[tokio::test]
    async fn least_outstanding_prefers_the_idle_peer_and_all_ejected_is_none() {
        let p = pool(Balance::LeastOutstanding, &["127.0.0.1:1", "127.0.0.1:2"]);
        let a = p.pick(None).unwrap();
        let b = p.pick(None).unwrap();
        assert_ne!(a.peer.addr, b.peer.addr, "the idle peer is chosen");
        let busy = a.peer.addr.clone();
        drop(b);
        for _ in 0..4 {
            assert_ne!(p.pick(None).unwrap().peer.addr, busy);
        }
        drop(a);
        for peer in p.peers.clone() {
            p.record(&peer, false);
            p.record(&peer, false);
        }
        assert!(p.pick(None).is_none());
    }

    #[tokio::test]
    async fn avoid_skips_the_peer_that_just_failed() {
        let p = pool(Balance::RoundRobin, &["127.0.0.1:1", "127.0.0.1:2"]);
        let first = p.peers[0].clone();
        for _ in 0..4 {
            assert_eq!(p.pick(Some(&first)).unwrap().peer.addr, "127.0.0.1:2");
        }
    }
}

//! TLS for listeners: TLS 1.2 and 1.3 only, with the modern suites of the
//! aws-lc-rs provider (AEADs with ECDHE; no CBC, no RSA key exchange), ALPN
//! h2 and http/1.1, SNI choosing among several certificates (by the names in
//! each certificate), optional or required client certificates, and reload:
//! each listener holds its `ServerConfig` in an `ArcSwap`, so a new
//! handshake uses the new certificates while open connections keep theirs.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::config::{ClientAuth, TlsConfig};

/// Why a listener's TLS could not be set up. Names the key path and file;
/// never the key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{key}: {path}: {why}")]
    File {
        /// Config key path.
        key: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("{key}: {why}")]
    Config {
        /// Config key path.
        key: String,
        /// What was wrong.
        why: String,
    },
}

/// The process-wide crypto provider (aws-lc-rs), with its default (modern)
/// suites and key-exchange groups.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SNI → certificate, by the DNS names in each certificate; the first
/// configured certificate answers when nothing matches.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return Some(k.clone());
        }
        Some(self.default.clone())
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::File {
        key: key.to_string(),
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names
}

/// Loads the certificates and builds the listener's `ServerConfig`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for (i, (cert_path, key_path)) in cfg.certificates.iter().enumerate() {
        let key = format!("{}.certificates[{i}]", cfg.key_path);
        let chain = read_certs(&format!("{key}.cert"), cert_path)?;
        let pk = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
            key: format!("{key}.key"),
            path: key_path.clone(),
            why: format!("no usable private key: {e}"),
        })?;
        let signing = provider
            .key_provider
            .load_private_key(pk)
            .map_err(|e| TlsError::File {
                key: format!("{key}.key"),
                path: key_path.clone(),
                why: format!("unsupported private key: {e}"),
            })?;
        let names = dns_names(&chain[0]);
        let ck = Arc::new(CertifiedKey::new(chain, signing));
        ck.keys_match().map_err(|e| TlsError::Config {
            key: key.clone(),
            why: format!("the key does not match the certificate: {e}"),
        })?;
        for n in names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()).or_insert(ck.clone()),
                None => exact.entry(n).or_insert(ck.clone()),
            };
        }
        default.get_or_insert(ck);
    }
    let Some(default) = default else {
        return Err(TlsError::Config {
            key: format!("{}.certificates", cfg.key_path),
            why: "at least one certificate is needed".into(),
        });
    };
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            key: cfg.key_path.clone(),
            why: e.to_string(),
        })?;
    let builder = match (cfg.client_auth, &cfg.client_ca) {
        (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let key = format!("{}.client_ca", cfg.key_path);
            let mut roots = RootCertStore::empty();
            for c in read_certs(&key, ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    key: key.clone(),
                    path: ca.clone(),
                    why: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v.build().map_err(|e| TlsError::Config {
                key: key.clone(),
                why: e.to_string(),
            })?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut sc = builder.with_cert_resolver(resolver);
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (AEADs with forward secrecy, strongest first), not
    // whatever a client lists first: a TLS audit's "cipher order" finding.
    sc.ignore_client_order = true;
    // Stateless TLS 1.3 resumption: cheap reconnects for clients that
    // come back, without a server-side session cache to bound.
    if let Ok(t) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        sc.ticketer = t;
    }
    Ok(Arc::new(sc))
}

/// A listener's current TLS configuration and the files it came from.
pub struct TlsState {
    cfg: TlsConfig,
    current: ArcSwap<ServerConfig>,
    stamp: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl TlsState {
    /// Loads the listener's certificates.
    pub fn new(cfg: TlsConfig) -> Result<TlsState, TlsError> {
        let sc = server_config(&cfg)?;
        let stamp = stamps(&cfg);
        Ok(TlsState {
            cfg,
            current: ArcSwap::new(sc),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reloads when any file changed (or always with `force`). A failed
    /// reload keeps the running certificates. Returns whether it swapped.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.cfg);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *last == now {
            return Ok(false);
        }
        let sc = server_config(&self.cfg)?;
        self.current.store(sc);
        *last = now;
        Ok(true)
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    cfg.certificates
        .iter()
        .flat_map(|(c, k)| [c, k])
        .chain(cfg.client_ca.iter())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

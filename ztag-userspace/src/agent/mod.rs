//! AI agent security: the MCP gateway's rules ([`mcp`]; its request path is
//! in `proxy::mcp`), the token vault ([`vault`]) and upstream credentials
//! by vault or RFC 8693 token exchange ([`exchange`]), human-in-the-loop
//! approvals ([`approvals`]) and the audit log ([`audit`]). State lives in
//! the daemon's SQLite state DB (`agent_*` tables, one connection of its
//! own, WAL).

pub mod approvals;
pub mod audit;
pub mod config;
pub mod exchange;
pub mod mcp;
pub mod vault;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use rusqlite::Connection;

pub use config::{AgentConfig, RawAgent};

/// Everything the gateway and the admin API share.
pub struct Agent {
    /// The token vault (`[agent.vault]`).
    pub vault: Option<Arc<vault::Vault>>,
    /// Upstream credentials.
    pub credentials: exchange::Credentials,
    /// Approvals.
    pub approvals: Arc<approvals::Approvals>,
    /// The audit log.
    pub audit: audit::Audit,
}

/// Opens the agent tables' own connection (WAL, synchronous=FULL: an
/// acknowledged approval decision or vault write survives a crash).
pub fn open_db(path: &Path) -> Result<Arc<Mutex<Connection>>> {
    let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(Arc::new(Mutex::new(c)))
}

impl Agent {
    /// Opens the tables, loads the vault keys and the connections' CA
    /// files. Returns the queue of approved requests the gateway sends.
    pub fn start(
        cfg: &AgentConfig,
        db_path: &Path,
        authn: Arc<crate::authn::Authn>,
        registry: &prometheus::Registry,
    ) -> Result<(Arc<Agent>, tokio::sync::mpsc::UnboundedReceiver<String>)> {
        let db = open_db(db_path)?;
        let vault = match &cfg.vault {
            Some(v) => Some(Arc::new(vault::Vault::open(v, db.clone())?)),
            None => None,
        };
        let credentials =
            exchange::Credentials::new(&cfg.connections, vault.clone(), authn.clone())
                .map_err(anyhow::Error::msg)?;
        if vault.is_none()
            && let Some(c) = credentials.needs_vault().next()
        {
            anyhow::bail!(
                "agent.connection {c:?} takes its credentials from the vault, and [agent.vault] is not configured"
            );
        }
        let audit = audit::Audit::start(db.clone(), registry)?;
        let (approvals, rx) =
            approvals::Approvals::open(db, &cfg.approvals, audit.clone(), authn, registry)?;
        Ok((
            Arc::new(Agent {
                vault,
                credentials,
                approvals,
                audit,
            }),
            rx,
        ))
    }
}

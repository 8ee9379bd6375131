//! The token vault: upstream credentials per (user, connection), sealed
//! with AES-256-GCM in the state DB (`agent_vault`). The key comes from a
//! file or an environment variable and is never written beside the data;
//! each row names the key id it was sealed under, so older keys
//! (`previous_key_files`) still open their rows while `rotate` re-seals
//! them under the current key. The additional data binds a ciphertext to
//! its (user, connection): a row copied onto another user does not open.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::config::{KeySource, VaultConfig};
use crate::state::now_ms;

/// Vault errors; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A key file or variable is missing or malformed.
    #[error("{0}")]
    Key(String),
    /// SQLite failed.
    #[error("vault database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A row does not open with any configured key.
    #[error(
        "vault entry {user}/{connection} was sealed under key {key_id}, which is not configured (add it to agent.vault.previous_key_files)"
    )]
    UnknownKey {
        /// Row's user.
        user: String,
        /// Row's connection.
        connection: String,
        /// Key id on the row.
        key_id: String,
    },
    /// A row fails authentication (tampered, or moved to another user).
    #[error("vault entry {user}/{connection} does not open: it was altered or moved")]
    Corrupt {
        /// Row's user.
        user: String,
        /// Row's connection.
        connection: String,
    },
    /// Bad input from the admin API.
    #[error("{0}")]
    BadInput(String),
}

/// What a vault entry holds. `Debug` never prints the tokens.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret {
    /// The credential the upstream gets (API key or access token).
    pub token: String,
    /// An OAuth refresh token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When `token` expires (ms since the epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A row as `ztag vault list` shows it: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryView {
    /// The user (principal subject).
    pub user: String,
    /// The connection name.
    pub connection: String,
    /// Id of the key it is sealed under.
    pub key_id: String,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Token expiry, ms since the epoch.
    pub expires_at_ms: Option<i64>,
    /// Last write, ms since the epoch.
    pub updated_at_ms: i64,
}

struct SealKey {
    id: String,
    key: LessSafeKey,
}

/// The vault.
pub struct Vault {
    db: Arc<Mutex<Connection>>,
    current: SealKey,
    previous: Vec<SealKey>,
    cache: moka::sync::Cache<(String, String), Arc<Secret>>,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS agent_vault (
    user          TEXT NOT NULL,
    connection    TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    sealed        BLOB NOT NULL,
    has_refresh   INTEGER NOT NULL,
    expires_at_ms INTEGER,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user, connection)
) WITHOUT ROWID;";

/// Parses key text: 32 bytes as base64 (standard or URL-safe, padded or
/// not) or as 64 hex digits.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        let e = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t));
        e.map_err(|_| "not base64 or hex".to_string())?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, a key is 32", b.len()))
}

fn seal_key(raw: [u8; 32]) -> SealKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"ztag-vault-key-id\0");
    ctx.update(&raw);
    let d = ctx.finish();
    let id: String = d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    // 32 bytes always make an AES-256 key.
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte key"));
    SealKey { id, key }
}

fn load_key(src: &KeySource) -> Result<SealKey, VaultError> {
    let (what, text) = match src {
        KeySource::File(p) => (
            format!("agent.vault.key_file {}", p.display()),
            std::fs::read_to_string(p).map_err(|e| {
                VaultError::Key(format!("agent.vault.key_file {}: {e}", p.display()))
            })?,
        ),
        KeySource::Env(v) => (
            format!("agent.vault.key_env ${v}"),
            std::env::var(v)
                .map_err(|_| VaultError::Key(format!("agent.vault.key_env: ${v} is not set")))?,
        ),
    };
    parse_key(&text)
        .map(seal_key)
        .map_err(|e| VaultError::Key(format!("{what}: {e}")))
}

fn aad(user: &str, connection: &str) -> Vec<u8> {
    let mut a = b"ztag-vault-v1\0".to_vec();
    a.extend_from_slice(user.as_bytes());
    a.push(0);
    a.extend_from_slice(connection.as_bytes());
    a
}

/// Names of users and connections: printable, no control characters.
fn check_name(what: &str, s: &str) -> Result<(), VaultError> {
    if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_control()) {
        return Err(VaultError::BadInput(format!(
            "{what}: must be 1-512 printable characters"
        )));
    }
    Ok(())
}

impl Vault {
    /// Loads the keys and creates the table if needed.
    pub fn open(cfg: &VaultConfig, db: Arc<Mutex<Connection>>) -> Result<Vault, VaultError> {
        let current = load_key(&cfg.key)?;
        let mut previous = Vec::new();
        for p in &cfg.previous {
            previous.push(load_key(&KeySource::File(p.clone())).map_err(|e| {
                VaultError::Key(e.to_string().replace("key_file", "previous_key_files"))
            })?);
        }
        db.lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_batch(TABLE)?;
        Ok(Vault {
            db,
            current,
            previous,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(if cfg.cache_ttl.is_zero() {
                    Duration::from_millis(1)
                } else {
                    cfg.cache_ttl
                })
                .build(),
        })
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    fn seal(
        &self,
        user: &str,
        connection: &str,
        s: &Secret,
    ) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| VaultError::Key("no randomness".into()))?;
        let mut buf = serde_json::to_vec(s).map_err(|e| VaultError::BadInput(e.to_string()))?;
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(user, connection)),
                &mut buf,
            )
            .map_err(|_| VaultError::Key("sealing failed".into()))?;
        Ok((nonce.to_vec(), buf))
    }

    fn open_row(
        &self,
        user: &str,
        connection: &str,
        key_id: &str,
        nonce: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<Secret, VaultError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                user: user.into(),
                connection: connection.into(),
                key_id: key_id.into(),
            })?;
        let corrupt = || VaultError::Corrupt {
            user: user.into(),
            connection: connection.into(),
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad(user, connection)), &mut sealed)
            .map_err(|_| corrupt())?;
        serde_json::from_slice(plain).map_err(|_| corrupt())
    }

    /// Stores (or replaces) a credential.
    pub fn put(&self, user: &str, connection: &str, s: &Secret) -> Result<(), VaultError> {
        check_name("user", user)?;
        check_name("connection", connection)?;
        if s.token.is_empty() {
            return Err(VaultError::BadInput("the secret is empty".into()));
        }
        let (nonce, sealed) = self.seal(user, connection, s)?;
        self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "INSERT OR REPLACE INTO agent_vault
               (user, connection, key_id, nonce, sealed, has_refresh, expires_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                user,
                connection,
                self.current.id,
                nonce,
                sealed,
                s.refresh_token.is_some(),
                s.expires_at_ms,
                now_ms()
            ],
        )?;
        self.cache
            .insert((user.into(), connection.into()), Arc::new(s.clone()));
        Ok(())
    }

    /// The credential, if stored.
    pub fn get(&self, user: &str, connection: &str) -> Result<Option<Arc<Secret>>, VaultError> {
        let k = (user.to_string(), connection.to_string());
        if let Some(s) = self.cache.get(&k) {
            return Ok(Some(s));
        }
        let row: Option<(String, Vec<u8>, Vec<u8>)> = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_row(
                "SELECT key_id, nonce, sealed FROM agent_vault WHERE user = ?1 AND connection = ?2",
                params![user, connection],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((key_id, nonce, sealed)) = row else {
            return Ok(None);
        };
        let s = Arc::new(self.open_row(user, connection, &key_id, &nonce, sealed)?);
        self.cache.insert(k, s.clone());
        Ok(Some(s))
    }

    /// Every entry, without secrets; `user` narrows.
    pub fn list(&self, user: Option<&str>) -> Result<Vec<EntryView>, VaultError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = db.prepare(
            "SELECT user, connection, key_id, has_refresh, expires_at_ms, updated_at_ms
               FROM agent_vault WHERE ?1 IS NULL OR user = ?1 ORDER BY user, connection",
        )?;
        let rows = st.query_map(params![user], |r| {
            Ok(EntryView {
                user: r.get(0)?,
                connection: r.get(1)?,
                key_id: r.get(2)?,
                has_refresh_token: r.get(3)?,
                expires_at_ms: r.get(4)?,
                updated_at_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes an entry; `false` if there was none.
    pub fn remove(&self, user: &str, connection: &str) -> Result<bool, VaultError> {
        let n = self.db.lock().unwrap_or_else(|p| p.into_inner()).execute(
            "DELETE FROM agent_vault WHERE user = ?1 AND connection = ?2",
            params![user, connection],
        )?;
        self.cache
            .invalidate(&(user.to_string(), connection.to_string()));
        Ok(n > 0)
    }

    /// Re-seals every row not under the current key; returns how many.
    /// A row that opens with no configured key stops the rotation (and
    /// nothing is changed: one transaction).
    pub fn rotate(&self) -> Result<usize, VaultError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction()?;
        type Row = (String, String, String, Vec<u8>, Vec<u8>);
        let rows: Vec<Row> = {
            let mut st = tx.prepare(
                "SELECT user, connection, key_id, nonce, sealed FROM agent_vault WHERE key_id != ?1",
            )?;
            st.query_map(params![self.current.id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?
        };
        for (user, connection, key_id, nonce, sealed) in &rows {
            let s = self.open_row(user, connection, key_id, nonce, sealed.clone())?;
            let (n, c) = self.seal(user, connection, &s)?;
            tx.execute(
                "UPDATE agent_vault SET key_id = ?3, nonce = ?4, sealed = ?5 WHERE user = ?1 AND connection = ?2",
                params![user, connection, self.current.id, n, c],
            )?;
        }
        tx.commit()?;
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, name: &str, byte: u8) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            base64::engine::general_purpose::STANDARD.encode([byte; 32]),
        )
        .unwrap();
        p
    }

    fn tmp() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("ztag-vault-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn secret(t: &str) -> Secret {
        Secret {
            token: t.into(),
            refresh_token: Some("r-".to_string() + t),
            expires_at_ms: Some(1),
        }
    }

    #[test]
    fn secrets_are_sealed_bound_to_their_row_and_rotate() {
        let d = tmp();
        let db_path = d.join("v.db");
        let old = key_file(&d, "old.key", 1);
        let new = key_file(&d, "new.key", 2);
        let conn = || Arc::new(Mutex::new(Connection::open(&db_path).unwrap()));
        let cfg = |k: &std::path::Path, prev: Vec<std::path::PathBuf>| VaultConfig {
            key: KeySource::File(k.to_path_buf()),
            previous: prev,
            cache_ttl: Duration::from_millis(1),
        };
        let v1 = Vault::open(&cfg(&old, vec![]), conn()).unwrap();
        v1.put("alice", "github", &secret("ghp_alice")).unwrap();
        v1.put("bob", "github", &secret("ghp_bob")).unwrap();
        // The secret is not in the file in the clear.
        let raw = std::fs::read(&db_path).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"ghp_alice"));
        assert_eq!(
            v1.get("alice", "github").unwrap().unwrap().token,
            "ghp_alice"
        );
        assert!(v1.get("carol", "github").unwrap().is_none());

        // Moving bob's ciphertext onto alice's row does not open.
        {
            let c = Connection::open(&db_path).unwrap();
            c.execute(
                "UPDATE agent_vault SET sealed = (SELECT sealed FROM agent_vault WHERE user='bob'), nonce = (SELECT nonce FROM agent_vault WHERE user='bob') WHERE user = 'alice'",
                [],
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        let e = v1.get("alice", "github").unwrap_err();
        assert!(matches!(e, VaultError::Corrupt { .. }), "{e}");
        v1.put("alice", "github", &secret("ghp_alice")).unwrap();

        // A new key without the old one: the old rows name a missing key.
        let v2 = Vault::open(&cfg(&new, vec![]), conn()).unwrap();
        let e = v2.get("bob", "github").unwrap_err();
        assert!(e.to_string().contains("previous_key_files"), "{e}");
        // With the old key as previous: readable, and rotation re-seals.
        let v3 = Vault::open(&cfg(&new, vec![old.clone()]), conn()).unwrap();
        assert_eq!(v3.get("bob", "github").unwrap().unwrap().token, "ghp_bob");
        assert_eq!(v3.rotate().unwrap(), 2);
        assert_eq!(v3.rotate().unwrap(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(v2.get("bob", "github").unwrap().unwrap().token, "ghp_bob");
        let l = v3.list(None).unwrap();
        assert_eq!(l.len(), 2);
        assert!(
            l.iter()
                .all(|e| e.key_id == v3.key_id() && e.has_refresh_token)
        );
        assert!(v3.remove("bob", "github").unwrap());
        assert!(!v3.remove("bob", "github").unwrap());
        assert_eq!(v3.list(Some("bob")).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_must_be_32_bytes() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(parse_key(&format!("{b}\n")).unwrap(), [7; 32]);
        assert!(parse_key("c2hvcnQ=").unwrap_err().contains("5 bytes"));
        assert!(parse_key("not a key!").is_err());
        assert!(!format!("{:?}", secret("ghp_x")).contains("ghp_x"));
    }
}

//! The durable copy of the FGA stores: stores, authorization models, tuples
//! and a change log, in the daemon's SQLite state DB (its own connection,
//! WAL, `fga_` tables). A write the API acknowledged has been committed
//! here before it is applied in memory.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::now_ms;
use crate::authz::model::{AuthorizationModel, JsonObject, RelationshipCondition, TupleKey};

/// Errors of the FGA tables.
#[derive(Debug, thiserror::Error)]
pub enum FgaStateError {
    /// No such store.
    #[error("store '{0}' not found")]
    StoreNotFound(String),
    /// No such model.
    #[error("authorization model '{0}' not found")]
    ModelNotFound(String),
    /// The tuple is already there.
    #[error("cannot write a tuple which already exists: {0}")]
    DuplicateWrite(String),
    /// The tuple is not there.
    #[error("cannot delete a tuple which does not exist: {0}")]
    MissingDelete(String),
    /// More tuples than one request may carry.
    #[error("the number of write operations should not exceed {max}")]
    TooManyTuples {
        /// The limit.
        max: usize,
    },
    /// A continuation token this DB did not issue.
    #[error("invalid continuation token '{0}'")]
    InvalidToken(String),
    /// A tuple the DB cannot store (malformed object or user).
    #[error("invalid tuple: {0}")]
    InvalidTuple(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored model is not valid JSON.
    #[error("stored model {0}: {1}")]
    Corrupt(String, String),
}

/// A store's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRecord {
    /// ULID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Last update, ms since the epoch.
    pub updated_at_ms: i64,
}

/// A tuple row as streamed at cold start (borrowed fields, no allocation).
#[derive(Debug)]
pub struct TupleRow<'a> {
    /// Object type.
    pub object_type: &'a str,
    /// Object id.
    pub object_id: &'a str,
    /// Relation.
    pub relation: &'a str,
    /// User type.
    pub user_type: &'a str,
    /// User id (`*` for a wildcard).
    pub user_id: &'a str,
    /// Userset relation, empty for none.
    pub user_relation: &'a str,
    /// Condition name.
    pub condition_name: Option<&'a str>,
    /// Condition context (JSON object text).
    pub condition_context: Option<&'a str>,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The tuple.
    pub tuple: TupleKey,
    /// "write" or "delete".
    pub operation: String,
    /// When, ms since the epoch.
    pub timestamp_ms: i64,
}

/// A page of tuples with their insertion times (ms), and the token for
/// the next page.
pub type TuplePage = (Vec<(TupleKey, i64)>, Option<String>);

/// The FGA tables.
pub struct FgaDb {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fga_stores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fga_models (
    store TEXT NOT NULL REFERENCES fga_stores(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (store, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fga_tuples (
    store TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    relation TEXT NOT NULL,
    user_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_relation TEXT NOT NULL,
    condition_name TEXT,
    condition_context TEXT,
    inserted_at_ms INTEGER NOT NULL,
    UNIQUE (store, object_type, object_id, relation, user_type, user_id, user_relation)
);
CREATE TABLE IF NOT EXISTS fga_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    operation TEXT NOT NULL,
    object TEXT NOT NULL,
    relation TEXT NOT NULL,
    user TEXT NOT NULL,
    condition_name TEXT,
    condition_context TEXT,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS fga_changes_store ON fga_changes (store, seq);
";

/// A tuple split into its columns.
struct Cols<'a> {
    ot: &'a str,
    oi: &'a str,
    rel: &'a str,
    ut: &'a str,
    ui: &'a str,
    ur: &'a str,
}

fn cols(k: &TupleKey) -> Result<Cols<'_>, FgaStateError> {
    let bad = || FgaStateError::InvalidTuple(k.to_string());
    let (ot, oi) = crate::authz::tuples::split_object(&k.object).ok_or_else(bad)?;
    let (ut, ui, ur) = crate::authz::tuples::split_user(&k.user).ok_or_else(bad)?;
    if !crate::authz::tuples::valid_relation(&k.relation) {
        return Err(bad());
    }
    Ok(Cols {
        ot,
        oi,
        rel: &k.relation,
        ut,
        ui,
        ur,
    })
}

fn cond_cols(k: &TupleKey) -> (Option<&str>, Option<String>) {
    match &k.condition {
        None => (None, None),
        Some(c) => (
            Some(c.name.as_str()),
            c.context
                .as_ref()
                .filter(|m| !m.0.is_empty())
                .map(|m| serde_json::to_string(&m.0).unwrap_or_default()),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn row_key(
    ot: &str,
    oi: &str,
    rel: &str,
    ut: &str,
    ui: &str,
    ur: &str,
    cn: Option<String>,
    cc: Option<String>,
) -> TupleKey {
    let mut user = format!("{ut}:{ui}");
    if !ur.is_empty() {
        user.push('#');
        user.push_str(ur);
    }
    TupleKey {
        object: format!("{ot}:{oi}"),
        relation: rel.to_string(),
        user,
        condition: cn.map(|name| RelationshipCondition {
            name,
            context: cc.and_then(|c| serde_json::from_str(&c).ok().map(JsonObject)),
        }),
    }
}

/// Continuation tokens: the decimal rowid/offset, base64url so clients
/// treat them as opaque.
fn token(n: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_string())
}

fn untoken(t: Option<&str>) -> Result<i64, FgaStateError> {
    use base64::Engine;
    let Some(t) = t.filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FgaStateError::InvalidToken(t.to_string()))
}

impl FgaDb {
    /// Open (creating if needed) the DB file.
    pub fn open(path: &Path) -> Result<FgaDb, FgaStateError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory DB (tests).
    pub fn in_memory() -> Result<FgaDb, FgaStateError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<FgaDb, FgaStateError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(FgaDb { conn })
    }

    /// Create a store.
    pub fn create_store(&mut self, name: &str) -> Result<StoreRecord, FgaStateError> {
        let now = now_ms();
        let rec = StoreRecord {
            id: crate::authz::store::new_ulid(),
            name: name.to_string(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.conn.execute(
            "INSERT INTO fga_stores (id, name, created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?3)",
            params![rec.id, rec.name, now],
        )?;
        Ok(rec)
    }

    /// Every store, oldest first.
    pub fn all_stores(&self) -> Result<Vec<StoreRecord>, FgaStateError> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, created_at_ms, updated_at_ms FROM fga_stores ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(StoreRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at_ms: r.get(2)?,
                updated_at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Delete a store with its models, tuples and changes.
    pub fn delete_store(&mut self, id: &str) -> Result<(), FgaStateError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM fga_stores WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(FgaStateError::StoreNotFound(id.to_string()));
        }
        tx.execute("DELETE FROM fga_tuples WHERE store = ?1", [id])?;
        tx.execute("DELETE FROM fga_changes WHERE store = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    fn touch(tx: &rusqlite::Transaction<'_>, store: &str) -> Result<(), FgaStateError> {
        let n = tx.execute(
            "UPDATE fga_stores SET updated_at_ms = ?2 WHERE id = ?1",
            params![store, now_ms()],
        )?;
        if n == 0 {
            return Err(FgaStateError::StoreNotFound(store.to_string()));
        }
        Ok(())
    }

    /// Store a model; returns its new id (also written into the JSON).
    pub fn write_model(
        &mut self,
        store: &str,
        m: &AuthorizationModel,
    ) -> Result<String, FgaStateError> {
        let mut m = m.clone();
        m.id = crate::authz::store::new_ulid();
        let json = serde_json::to_string(&m)
            .map_err(|e| FgaStateError::Corrupt(m.id.clone(), e.to_string()))?;
        let tx = self.conn.transaction()?;
        Self::touch(&tx, store)?;
        tx.execute(
            "INSERT INTO fga_models (store, id, json) VALUES (?1, ?2, ?3)",
            params![store, m.id, json],
        )?;
        tx.commit()?;
        Ok(m.id)
    }

    /// Every model of a store, oldest first.
    pub fn all_models(&self, store: &str) -> Result<Vec<AuthorizationModel>, FgaStateError> {
        let mut st = self
            .conn
            .prepare("SELECT id, json FROM fga_models WHERE store = ?1 ORDER BY id")?;
        let rows = st.query_map([store], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push(
                serde_json::from_str(&json)
                    .map_err(|e| FgaStateError::Corrupt(id, e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Tuples in a store.
    pub fn count_tuples(&self, store: &str) -> Result<u64, FgaStateError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM fga_tuples WHERE store = ?1",
            [store],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Write and delete atomically with OpenFGA's rules: a tuple that
    /// exists cannot be written, a missing one cannot be deleted; on any
    /// error nothing changes. Each operation goes to the change log.
    pub fn write(
        &mut self,
        store: &str,
        writes: &[TupleKey],
        deletes: &[TupleKey],
    ) -> Result<(), FgaStateError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        Self::touch(&tx, store)?;
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM fga_tuples WHERE store = ?1 AND object_type = ?2 AND object_id = ?3
                 AND relation = ?4 AND user_type = ?5 AND user_id = ?6 AND user_relation = ?7",
            )?;
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO fga_tuples (store, object_type, object_id, relation, user_type,
                 user_id, user_relation, condition_name, condition_context, inserted_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut log = tx.prepare_cached(
                "INSERT INTO fga_changes (store, operation, object, relation, user, condition_name,
                 condition_context, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for k in deletes {
                let c = cols(k)?;
                if del.execute(params![store, c.ot, c.oi, c.rel, c.ut, c.ui, c.ur])? == 0 {
                    return Err(FgaStateError::MissingDelete(format!(
                        "{}#{}@{}",
                        k.object, k.relation, k.user
                    )));
                }
                log.execute(params![
                    store,
                    "delete",
                    k.object,
                    k.relation,
                    k.user,
                    None::<String>,
                    None::<String>,
                    now
                ])?;
            }
            for k in writes {
                let c = cols(k)?;
                let (cn, cc) = cond_cols(k);
                if ins.execute(params![
                    store, c.ot, c.oi, c.rel, c.ut, c.ui, c.ur, cn, cc, now
                ])? == 0
                {
                    return Err(FgaStateError::DuplicateWrite(format!(
                        "{}#{}@{}",
                        k.object, k.relation, k.user
                    )));
                }
                log.execute(params![
                    store, "write", k.object, k.relation, k.user, cn, cc, now
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Bulk load (the CLI's import): duplicates are skipped, one
    /// transaction per 50,000 tuples, no change-log entry per tuple.
    /// Returns (written, skipped).
    pub fn import(
        &mut self,
        store: &str,
        tuples: impl Iterator<Item = TupleKey>,
    ) -> Result<(usize, usize), FgaStateError> {
        let now = now_ms();
        let (mut written, mut skipped) = (0, 0);
        let mut it = tuples.peekable();
        while it.peek().is_some() {
            let tx = self.conn.transaction()?;
            Self::touch(&tx, store)?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR IGNORE INTO fga_tuples (store, object_type, object_id, relation, user_type,
                     user_id, user_relation, condition_name, condition_context, inserted_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for k in it.by_ref().take(50_000) {
                    let c = cols(&k)?;
                    let (cn, cc) = cond_cols(&k);
                    if ins.execute(params![
                        store, c.ot, c.oi, c.rel, c.ut, c.ui, c.ur, cn, cc, now
                    ])? == 1
                    {
                        written += 1;
                    } else {
                        skipped += 1;
                    }
                }
            }
            tx.commit()?;
        }
        Ok((written, skipped))
    }

    /// Stream every tuple of a store (cold start).
    pub fn load_all(
        &self,
        store: &str,
        mut f: impl FnMut(&TupleRow<'_>),
    ) -> Result<(), FgaStateError> {
        let mut st = self.conn.prepare(
            "SELECT object_type, object_id, relation, user_type, user_id, user_relation,
             condition_name, condition_context FROM fga_tuples WHERE store = ?1",
        )?;
        let mut rows = st.query([store])?;
        while let Some(r) = rows.next()? {
            use rusqlite::types::ValueRef;
            let s = |i: usize| -> Result<&str, rusqlite::Error> {
                match r.get_ref(i)? {
                    ValueRef::Text(t) => {
                        std::str::from_utf8(t).map_err(|e| rusqlite::Error::Utf8Error(i, e))
                    }
                    _ => Ok(""),
                }
            };
            let opt = |i: usize| -> Result<Option<&str>, rusqlite::Error> {
                match r.get_ref(i)? {
                    ValueRef::Text(t) => Ok(Some(
                        std::str::from_utf8(t).map_err(|e| rusqlite::Error::Utf8Error(i, e))?,
                    )),
                    _ => Ok(None),
                }
            };
            f(&TupleRow {
                object_type: s(0)?,
                object_id: s(1)?,
                relation: s(2)?,
                user_type: s(3)?,
                user_id: s(4)?,
                user_relation: s(5)?,
                condition_name: opt(6)?,
                condition_context: opt(7)?,
            });
        }
        Ok(())
    }

    /// One page of tuples matching an OpenFGA Read filter: `object` is
    /// `type:id` or `type:` (whole type); relation and user exact.
    pub fn read(
        &self,
        store: &str,
        object: Option<&str>,
        relation: Option<&str>,
        user: Option<&str>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<TuplePage, FgaStateError> {
        let after = untoken(continuation)?;
        let mut sql = String::from(
            "SELECT rowid, object_type, object_id, relation, user_type, user_id, user_relation,
             condition_name, condition_context, inserted_at_ms FROM fga_tuples WHERE store = ?1 AND rowid > ?2",
        );
        let mut args: Vec<String> = vec![store.to_string(), after.to_string()];
        let mut add = |clause: &str, v: &str, sql: &mut String| {
            args.push(v.to_string());
            sql.push_str(&format!(" AND {clause} = ?{}", args.len()));
        };
        if let Some(o) = object.filter(|o| !o.is_empty()) {
            let (ty, id) = o.split_once(':').unwrap_or((o, ""));
            add("object_type", ty, &mut sql);
            if !id.is_empty() {
                add("object_id", id, &mut sql);
            }
        }
        if let Some(r) = relation.filter(|r| !r.is_empty()) {
            add("relation", r, &mut sql);
        }
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            let (ut, ui, ur) = crate::authz::tuples::split_user(u)
                .ok_or_else(|| FgaStateError::InvalidTuple(format!("user '{u}'")))?;
            add("user_type", ut, &mut sql);
            add("user_id", ui, &mut sql);
            add("user_relation", ur, &mut sql);
        }
        let limit = page_size.clamp(1, 100_000);
        sql.push_str(&format!(" ORDER BY rowid LIMIT {}", limit + 1));
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                row_key(
                    &r.get::<_, String>(1)?,
                    &r.get::<_, String>(2)?,
                    &r.get::<_, String>(3)?,
                    &r.get::<_, String>(4)?,
                    &r.get::<_, String>(5)?,
                    &r.get::<_, String>(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ),
                r.get::<_, i64>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut last = 0;
        let mut more = false;
        for row in rows {
            let (rowid, k, at) = row?;
            if out.len() == limit {
                more = true;
                break;
            }
            last = rowid;
            out.push((k, at));
        }
        Ok((out, more.then(|| token(last))))
    }

    /// One page of the change log, oldest first; `type_filter` keeps the
    /// changes of one object type.
    pub fn read_changes(
        &self,
        store: &str,
        type_filter: Option<&str>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<Change>, Option<String>), FgaStateError> {
        let after = untoken(continuation)?;
        let limit = page_size.clamp(1, 100_000);
        let mut st = self.conn.prepare(
            "SELECT seq, operation, object, relation, user, condition_name, condition_context, at_ms
             FROM fga_changes WHERE store = ?1 AND seq > ?2
             AND (?3 = '' OR object LIKE ?3 || ':%') ORDER BY seq LIMIT ?4",
        )?;
        let rows = st.query_map(
            params![store, after, type_filter.unwrap_or(""), limit as i64],
            |r| {
                let cn: Option<String> = r.get(5)?;
                let cc: Option<String> = r.get(6)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    Change {
                        operation: r.get(1)?,
                        tuple: TupleKey {
                            object: r.get(2)?,
                            relation: r.get(3)?,
                            user: r.get(4)?,
                            condition: cn.map(|name| RelationshipCondition {
                                name,
                                context: cc
                                    .and_then(|c| serde_json::from_str(&c).ok().map(JsonObject)),
                            }),
                        },
                        timestamp_ms: r.get(7)?,
                    },
                ))
            },
        )?;
        let mut out = Vec::new();
        let mut last = after;
        for row in rows {
            let (seq, c) = row?;
            last = seq;
            out.push(c);
        }
        // OpenFGA always returns a token for ReadChanges (to poll from).
        Ok((out, Some(token(last))))
    }

    /// The store's record.
    pub fn store(&self, id: &str) -> Result<StoreRecord, FgaStateError> {
        self.conn
            .query_row(
                "SELECT id, name, created_at_ms, updated_at_ms FROM fga_stores WHERE id = ?1",
                [id],
                |r| {
                    Ok(StoreRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at_ms: r.get(2)?,
                        updated_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| FgaStateError::StoreNotFound(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(o: &str, r: &str, u: &str) -> TupleKey {
        TupleKey::new(o, r, u)
    }

    #[test]
    fn writes_are_all_or_nothing_with_openfga_rules() {
        let mut db = FgaDb::in_memory().unwrap();
        let s = db.create_store("s").unwrap().id;
        db.write(
            &s,
            &[
                key("doc:1", "viewer", "user:a"),
                key("doc:1", "viewer", "group:g#member"),
            ],
            &[],
        )
        .unwrap();
        // A duplicate in a batch refuses the whole batch.
        let e = db
            .write(
                &s,
                &[
                    key("doc:2", "viewer", "user:b"),
                    key("doc:1", "viewer", "user:a"),
                ],
                &[],
            )
            .unwrap_err();
        assert!(matches!(e, FgaStateError::DuplicateWrite(_)), "{e}");
        assert_eq!(db.count_tuples(&s).unwrap(), 2, "doc:2 was not written");
        let e = db
            .write(&s, &[], &[key("doc:9", "viewer", "user:a")])
            .unwrap_err();
        assert!(matches!(e, FgaStateError::MissingDelete(_)), "{e}");
        db.write(&s, &[], &[key("doc:1", "viewer", "user:a")])
            .unwrap();
        assert_eq!(db.count_tuples(&s).unwrap(), 1);
        let (changes, tok) = db.read_changes(&s, None, 10, None).unwrap();
        let ops: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
        assert_eq!(ops, ["write", "write", "delete"]);
        let (more, _) = db.read_changes(&s, None, 10, tok.as_deref()).unwrap();
        assert!(more.is_empty());
        assert!(
            db.write("nope", &[key("doc:1", "v", "user:a")], &[])
                .is_err()
        );
    }

    #[test]
    fn tuples_models_and_conditions_survive_reopening() {
        let p = std::env::temp_dir().join(format!("ztag-fga-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let s;
        {
            let mut db = FgaDb::open(&p).unwrap();
            s = db.create_store("s").unwrap().id;
            let m = crate::authz::dsl::parse("model\n  schema 1.1\ntype user\n").unwrap();
            db.write_model(&s, &m).unwrap();
            let mut k = key("doc:1", "viewer", "user:*");
            let mut ctx = serde_json::Map::new();
            ctx.insert("x".into(), 1.into());
            k.condition = Some(RelationshipCondition {
                name: "c".into(),
                context: Some(JsonObject(ctx)),
            });
            db.write(&s, &[k], &[]).unwrap();
        }
        let db = FgaDb::open(&p).unwrap();
        assert_eq!(db.all_stores().unwrap()[0].id, s);
        assert_eq!(db.all_models(&s).unwrap().len(), 1);
        let mut rows = Vec::new();
        db.load_all(&s, |r| {
            rows.push((
                r.user_id.to_string(),
                r.condition_name.map(str::to_string),
                r.condition_context.map(str::to_string),
            ))
        })
        .unwrap();
        assert_eq!(
            rows,
            [(
                "*".to_string(),
                Some("c".to_string()),
                Some("{\"x\":1}".to_string())
            )]
        );
        drop(db);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(p.with_extension("db-wal"));
        let _ = std::fs::remove_file(p.with_extension("db-shm"));
    }

    #[test]
    fn reads_filter_and_page() {
        let mut db = FgaDb::in_memory().unwrap();
        let s = db.create_store("s").unwrap().id;
        let (w, skipped) = db
            .import(
                &s,
                (0..250).map(|i| key(&format!("doc:{i}"), "viewer", &format!("user:u{}", i % 10))),
            )
            .unwrap();
        assert_eq!((w, skipped), (250, 0));
        let (w, skipped) = db
            .import(&s, std::iter::once(key("doc:0", "viewer", "user:u0")))
            .unwrap();
        assert_eq!((w, skipped), (0, 1));
        let mut all = Vec::new();
        let mut tok: Option<String> = None;
        loop {
            let (page, next) = db
                .read(&s, Some("doc:"), None, None, 100, tok.as_deref())
                .unwrap();
            all.extend(page);
            match next {
                Some(t) => tok = Some(t),
                None => break,
            }
        }
        assert_eq!(all.len(), 250);
        let (page, _) = db
            .read(&s, Some("doc:7"), Some("viewer"), None, 10, None)
            .unwrap();
        assert_eq!(page.len(), 1);
        let (page, _) = db.read(&s, None, None, Some("user:u3"), 100, None).unwrap();
        assert_eq!(page.len(), 25);
        assert!(matches!(
            db.read(&s, None, None, None, 10, Some("!!")),
            Err(FgaStateError::InvalidToken(_))
        ));
    }
}

//! OpenFGA stores held in memory: each store's tuples (indexed for checks)
//! and its authorization models, compiled against the tuples' names. Writes
//! are validated against a model, follow OpenFGA's rules (no duplicate
//! write, no delete of a missing tuple, all or nothing) and, when a state DB
//! is attached, are made durable before they are applied in memory.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use super::{
    engine::{AuthzError, BatchItem, Engine, Model, Query},
    model::{AuthorizationModel, TupleKey},
    tuples::TupleStore,
    validate,
};
use crate::state::fga::{FgaDb, FgaStateError};

/// OpenFGA's default limit of tuples per write request.
pub const MAX_TUPLES_PER_WRITE: usize = 100;

/// Errors of store operations; `code()` is OpenFGA's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such store.
    #[error("store '{0}' not found")]
    StoreNotFound(String),
    /// No such model (or the store has none yet).
    #[error("authorization model '{0}' not found")]
    ModelNotFound(String),
    /// The model is invalid.
    #[error("invalid authorization model: {0}")]
    InvalidModel(String),
    /// A write that OpenFGA refuses.
    #[error("{0}")]
    WriteRefused(String),
    /// A check-path error.
    #[error(transparent)]
    Authz(#[from] AuthzError),
    /// The state DB failed.
    #[error("state database: {0}")]
    State(#[from] FgaStateError),
}

impl StoreError {
    /// OpenFGA's numeric error code (or HTTP-ish class for internal ones).
    pub fn code(&self) -> u32 {
        match self {
            StoreError::StoreNotFound(_) => 2011,
            StoreError::ModelNotFound(_) => 2001,
            StoreError::InvalidModel(_) => 2000,
            StoreError::WriteRefused(_) => 2017,
            StoreError::Authz(e) => e.code(),
            StoreError::State(FgaStateError::StoreNotFound(_)) => 2011,
            StoreError::State(FgaStateError::ModelNotFound(_)) => 2001,
            StoreError::State(
                FgaStateError::DuplicateWrite(_)
                | FgaStateError::MissingDelete(_)
                | FgaStateError::TooManyTuples { .. },
            ) => 2017,
            StoreError::State(FgaStateError::InvalidToken(_)) => 2000,
            StoreError::State(_) => 4000,
        }
    }

    /// Whether the caller's input was at fault (400) or the server (500).
    pub fn is_client_error(&self) -> bool {
        self.code() < 4000
    }
}

/// One store's in-memory state.
pub struct StoreState {
    /// The tuples.
    pub tuples: TupleStore,
    /// Models by id.
    models: BTreeMap<String, Arc<Model>>,
    /// The newest model.
    latest: Option<Arc<Model>>,
}

/// One OpenFGA store.
pub struct Store {
    /// Store id (a ULID).
    pub id: String,
    /// Store name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Read-mostly: a sharded lock, so that checks on different cores do
    /// not contend on one reader count.
    state: ShardedLock<StoreState>,
    db: Option<Arc<Mutex<FgaDb>>>,
    /// Serialises writers so that the durable write and the in-memory apply
    /// happen in the same order.
    write_lock: Mutex<()>,
}

/// A new ULID, strictly increasing within this process (OpenFGA orders
/// models by id).
pub fn new_ulid() -> String {
    static GEN: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut g = GEN.lock().unwrap_or_else(|p| p.into_inner());
    let g = g.get_or_insert_with(ulid::Generator::new);
    g.generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// Parse and validate a model from DSL or OpenFGA JSON text.
pub fn parse_model(text: &str) -> Result<AuthorizationModel, StoreError> {
    let trimmed = text.trim_start();
    let m: AuthorizationModel = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| StoreError::InvalidModel(format!("JSON: {e}")))?
    } else {
        super::dsl::parse(text).map_err(|e| StoreError::InvalidModel(e.to_string()))?
    };
    validate::validate(&m).map_err(|e| StoreError::InvalidModel(e.to_string()))?;
    Ok(m)
}

impl Store {
    /// A new empty store.
    pub fn new(id: String, name: String, db: Option<Arc<Mutex<FgaDb>>>) -> Store {
        Store {
            id,
            name,
            created_at_ms: crate::state::now_ms(),
            state: ShardedLock::new(StoreState {
                tuples: TupleStore::new(),
                models: BTreeMap::new(),
                latest: None,
            }),
            db,
            write_lock: Mutex::new(()),
        }
    }

    fn read(&self) -> ShardedLockReadGuard<'_, StoreState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> ShardedLockWriteGuard<'_, StoreState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a validated model (already durable when loaded from the DB) and
    /// make it the latest when it is newer. Returns its id.
    pub fn add_model(
        &self,
        mut m: AuthorizationModel,
        persist: bool,
    ) -> Result<String, StoreError> {
        validate::validate(&m).map_err(|e| StoreError::InvalidModel(e.to_string()))?;
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if persist {
            if let Some(db) = &self.db {
                let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
                m.id = db.write_model(&self.id, &m)?;
            } else if m.id.is_empty() {
                m.id = new_ulid();
            }
        } else if m.id.is_empty() {
            m.id = new_ulid();
        }
        let id = m.id.clone();
        let mut st = self.write_state();
        let compiled = Model::compile(m, &mut st.tuples)?;
        let compiled = Arc::new(compiled);
        st.models.insert(id.clone(), compiled.clone());
        // Models arrive oldest first (from the DB) or as they are written.
        st.latest = Some(compiled);
        Ok(id)
    }

    /// The model `id`, or the latest when `None`/empty.
    pub fn model(&self, id: Option<&str>) -> Result<Arc<Model>, StoreError> {
        let st = self.read();
        Self::model_in(&st, id).cloned()
    }

    /// Borrowed from the guard: no allocation and no shared refcount
    /// touched on the check path.
    fn model_in<'a>(st: &'a StoreState, id: Option<&str>) -> Result<&'a Arc<Model>, StoreError> {
        match id.filter(|s| !s.is_empty()) {
            Some(id) => st
                .models
                .get(id)
                .ok_or_else(|| StoreError::ModelNotFound(id.to_string())),
            None => st
                .latest
                .as_ref()
                .ok_or_else(|| StoreError::ModelNotFound("latest (the store has no model)".into())),
        }
    }

    /// Model ids, newest first.
    pub fn model_ids(&self) -> Vec<String> {
        self.read().models.keys().rev().cloned().collect()
    }

    /// Number of tuples.
    pub fn tuple_count(&self) -> usize {
        self.read().tuples.len()
    }

    /// Run `f` with an engine on the model `model_id` (or the latest) under
    /// the read lock.
    pub fn with_engine<T>(
        &self,
        model_id: Option<&str>,
        f: impl FnOnce(&Engine<'_>) -> Result<T, AuthzError>,
    ) -> Result<T, StoreError> {
        let st = self.read();
        let model = Self::model_in(&st, model_id)?;
        let engine = Engine::new(model, &st.tuples);
        Ok(f(&engine)?)
    }

    /// Check.
    pub fn check(
        &self,
        model_id: Option<&str>,
        object: &str,
        relation: &str,
        user: &str,
        q: &Query<'_>,
    ) -> Result<bool, StoreError> {
        self.with_engine(model_id, |e| e.check(object, relation, user, q))
    }

    /// Several checks under one read lock; each answer on its own.
    pub fn check_batch(
        &self,
        model_id: Option<&str>,
        items: &[(&str, &str, &str)],
        q: &Query<'_>,
    ) -> Result<Vec<Result<bool, AuthzError>>, StoreError> {
        let st = self.read();
        let model = Self::model_in(&st, model_id)?;
        let engine = Engine::new(model, &st.tuples);
        let items: Vec<BatchItem<'_>> = items
            .iter()
            .map(|&(object, relation, user)| BatchItem {
                object,
                relation,
                user,
                q,
            })
            .collect();
        Ok(engine.check_many(&items))
    }

    /// Write and delete tuples atomically with OpenFGA's rules, validated
    /// against the model `model_id` (or the latest). `limit`: the most
    /// tuples in one request (`None` for imports).
    pub fn write(
        &self,
        model_id: Option<&str>,
        writes: &[TupleKey],
        deletes: &[TupleKey],
        limit: Option<usize>,
    ) -> Result<(), StoreError> {
        if let Some(max) = limit
            && writes.len() + deletes.len() > max
        {
            return Err(StoreError::WriteRefused(format!(
                "the number of write operations should not exceed {max}"
            )));
        }
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let st = self.read();
            let model = Self::model_in(&st, model_id)?;
            let engine = Engine::new(model, &st.tuples);
            let mut seen = std::collections::HashSet::new();
            for k in writes {
                engine.validate_write(k)?;
                if !seen.insert((&k.object, &k.relation, &k.user)) {
                    return Err(StoreError::WriteRefused(format!(
                        "duplicate tuple in write request: {k}"
                    )));
                }
                if st
                    .tuples
                    .lookup_tuple(&k.object, &k.relation, &k.user)
                    .is_some_and(|t| st.tuples.get(t.obj, t.rel, t.user).is_some())
                {
                    return Err(StoreError::WriteRefused(format!(
                        "cannot write a tuple which already exists: {}#{}@{}",
                        k.object, k.relation, k.user
                    )));
                }
            }
            for k in deletes {
                if !seen.insert((&k.object, &k.relation, &k.user)) {
                    return Err(StoreError::WriteRefused(format!(
                        "duplicate tuple in write request: {k}"
                    )));
                }
                let present = st
                    .tuples
                    .lookup_tuple(&k.object, &k.relation, &k.user)
                    .is_some_and(|t| st.tuples.get(t.obj, t.rel, t.user).is_some());
                if !present {
                    return Err(StoreError::WriteRefused(format!(
                        "cannot delete a tuple which does not exist: {}#{}@{}",
                        k.object, k.relation, k.user
                    )));
                }
            }
        }
        if let Some(db) = &self.db {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            db.write(&self.id, writes, deletes)?;
        }
        let mut st = self.write_state();
        for k in deletes {
            if let Some(t) = st.tuples.lookup_tuple(&k.object, &k.relation, &k.user) {
                st.tuples.remove(t);
            }
        }
        for k in writes {
            st.tuples
                .insert_key(k)
                .map_err(|e| AuthzError::Validation(e.to_string()))?;
        }
        Ok(())
    }

    /// Bulk import: every tuple validated against the latest model first
    /// (the first invalid one refuses the import, naming it), then written
    /// durably (duplicates skipped) and applied. Returns (written, skipped).
    pub fn import(&self, tuples: Vec<TupleKey>) -> Result<(usize, usize), StoreError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let st = self.read();
            let model = Self::model_in(&st, None)?;
            let engine = Engine::new(model, &st.tuples);
            for (i, k) in tuples.iter().enumerate() {
                engine.validate_write(k).map_err(|e| {
                    StoreError::WriteRefused(format!("tuple {} of the import: {e}", i + 1))
                })?;
            }
        }
        let counts = match &self.db {
            Some(db) => {
                let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
                Some(db.import(&self.id, tuples.iter().cloned())?)
            }
            None => None,
        };
        let mut st = self.write_state();
        let (mut written, mut skipped) = (0, 0);
        for k in &tuples {
            match st.tuples.insert_key(k) {
                Ok(true) => written += 1,
                Ok(false) => skipped += 1,
                Err(e) => return Err(AuthzError::Validation(e.to_string()).into()),
            }
        }
        Ok(counts.unwrap_or((written, skipped)))
    }

    /// Load tuples into memory without validation or persistence (cold
    /// start from the DB).
    pub fn load_tuples(&self, f: impl FnOnce(&mut TupleStore)) {
        let mut st = self.write_state();
        f(&mut st.tuples);
    }

    /// Every tuple matching an OpenFGA Read filter (`object` may be
    /// `type:` for a whole type), from memory.
    pub fn read_tuples(
        &self,
        object: Option<&str>,
        relation: Option<&str>,
        user: Option<&str>,
    ) -> Vec<TupleKey> {
        let st = self.read();
        let t = &st.tuples;
        let mut out = Vec::new();
        let (oty, oid) = match object.filter(|o| !o.is_empty()) {
            Some(o) => match o.split_once(':') {
                Some((ty, id)) => (Some(ty), Some(id).filter(|i| !i.is_empty())),
                None => (Some(o), None),
            },
            None => (None, None),
        };
        for (obj, rel) in t.object_relations() {
            if oty.is_some_and(|ty| t.syms.name(obj.ty()) != ty)
                || oid.is_some_and(|id| t.syms.name(obj.id()) != id)
                || relation.is_some_and(|r| !r.is_empty() && t.syms.name(rel) != r)
            {
                continue;
            }
            for &(u, c) in t.users(obj, rel) {
                let k = t.to_key(obj, rel, u, c);
                if user.is_some_and(|x| !x.is_empty() && k.user != x) {
                    continue;
                }
                out.push(k);
            }
        }
        out.sort();
        out
    }
}

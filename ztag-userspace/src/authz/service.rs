//! The embedded FGA service: every store, loaded from the state DB at start
//! (the durable copy) into memory (the indexed copy the checks read).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use super::store::{Store, StoreError};
use crate::state::fga::{FgaDb, FgaStateError};

/// All stores.
pub struct Authz {
    db: Option<Arc<Mutex<FgaDb>>>,
    stores: RwLock<BTreeMap<String, Arc<Store>>>,
}

impl Authz {
    /// Stores that live only in memory (tests, `fga test`).
    pub fn in_memory() -> Authz {
        Authz {
            db: None,
            stores: RwLock::new(BTreeMap::new()),
        }
    }

    /// Open the state DB at `path` (created if missing) and load every
    /// store: models compiled, tuples indexed. `None`: in memory only.
    pub fn open(path: Option<&Path>) -> Result<Authz, StoreError> {
        let Some(path) = path else {
            return Ok(Authz::in_memory());
        };
        let db = FgaDb::open(path)?;
        let db = Arc::new(Mutex::new(db));
        let mut stores = BTreeMap::new();
        {
            let d = db.lock().unwrap_or_else(|p| p.into_inner());
            for rec in d.all_stores()? {
                let store = Arc::new(Store::new(
                    rec.id.clone(),
                    rec.name.clone(),
                    Some(db.clone()),
                ));
                store.load_tuples(|t| {
                    let n = d.count_tuples(&rec.id).unwrap_or(0);
                    t.reserve(n as usize);
                });
                // Tuples first (so names are interned in one pass), then
                // models, oldest first.
                let mut failure: Option<FgaStateError> = None;
                store.load_tuples(|t| {
                    if let Err(e) = d.load_all(&rec.id, |row| {
                        let _ = t.insert_row(row);
                    }) {
                        failure = Some(e);
                    }
                });
                if let Some(e) = failure {
                    return Err(e.into());
                }
                for m in d.all_models(&rec.id)? {
                    store.add_model(m, false)?;
                }
                stores.insert(rec.id.clone(), store);
            }
        }
        Ok(Authz {
            db: Some(db),
            stores: RwLock::new(stores),
        })
    }

    /// Create a store.
    pub fn create_store(&self, name: &str) -> Result<Arc<Store>, StoreError> {
        let id = match &self.db {
            Some(db) => {
                let mut d = db.lock().unwrap_or_else(|p| p.into_inner());
                d.create_store(name)?.id
            }
            None => super::store::new_ulid(),
        };
        let store = Arc::new(Store::new(id.clone(), name.to_string(), self.db.clone()));
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, store.clone());
        Ok(store)
    }

    /// A store by id.
    pub fn store(&self, id: &str) -> Option<Arc<Store>> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The first store with this name (oldest first).
    pub fn store_by_name(&self, name: &str) -> Option<Arc<Store>> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Every store, oldest first.
    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Delete a store and its tuples and models.
    pub fn delete_store(&self, id: &str) -> Result<(), StoreError> {
        if self.store(id).is_none() {
            return Err(StoreError::StoreNotFound(id.to_string()));
        }
        if let Some(db) = &self.db {
            let mut d = db.lock().unwrap_or_else(|p| p.into_inner());
            d.delete_store(id)?;
        }
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// The state DB, when attached (for reads the API serves from it:
    /// tuple pages, changes).
    pub fn db(&self) -> Option<&Arc<Mutex<FgaDb>>> {
        self.db.as_ref()
    }
}

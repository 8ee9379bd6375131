//! The in-memory copy of a store's tuples, indexed for the check paths.
//!
//! Every name (type, id, relation) is interned once into a [`Sym`]; an object
//! is a `(type, id)` pair packed into a `u64`, a user an object plus an
//! optional relation (`group:eng#member`), and `type:*` is the object whose
//! id is `*`. Three indexes serve the engine:
//! * `direct`: `(object, relation, user)` → condition — "is this tuple
//!   there?" in one probe;
//! * `by_object`: object → relation → users — the usersets and tupleset
//!   parents a check expands, and the forward walk of list users;
//! * `by_user`: `user` → `(object, relation)` — the reverse walk of list
//!   objects.
//!
//! The indexes do not depend on the model: tuples outlive model changes, and
//! the engine filters tuples that the current model no longer allows, as
//! OpenFGA does.

use std::{hash::BuildHasher, sync::Arc};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use smallvec::SmallVec;

use super::model::{JsonObject, RelationshipCondition, TupleKey};

/// An interned name.
pub type Sym = u32;

/// The symbol of `*` (interned first in every store).
pub const STAR: Sym = 0;

/// No relation (a plain object as user).
pub const NO_REL: Sym = u32::MAX;

/// `(type, id)` packed: type in the high half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Obj(pub u64);

impl Obj {
    /// Pack a type and an id.
    #[inline]
    pub fn new(ty: Sym, id: Sym) -> Obj {
        Obj(((ty as u64) << 32) | id as u64)
    }
    /// The type.
    #[inline]
    pub fn ty(self) -> Sym {
        (self.0 >> 32) as Sym
    }
    /// The id.
    #[inline]
    pub fn id(self) -> Sym {
        self.0 as Sym
    }
}

/// A user: an object, `type:*`, or a userset `object#relation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    /// The object (`type:*` for a wildcard).
    pub obj: Obj,
    /// The userset relation, or [`NO_REL`].
    pub rel: Sym,
}

/// Index of a tuple condition in the store's side table; `NO_COND` for none.
pub type CondRef = u32;
/// No condition.
pub const NO_COND: CondRef = u32::MAX;

/// A tuple's condition as the engine evaluates it.
#[derive(Debug, Clone, PartialEq)]
pub struct TupleCond {
    /// Condition name.
    pub name: Sym,
    /// Stored context.
    pub context: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// One interner table slot: the symbol, and names up to 11 bytes inline, so
/// that looking up a short name (most ids) touches only the table, not the
/// name's heap copy.
#[derive(Clone, Copy)]
struct Slot {
    sym: Sym,
    /// Length of an inline name, or `LONG`.
    len: u8,
    bytes: [u8; INLINE],
}

const INLINE: usize = 11;
const LONG: u8 = u8::MAX;

impl Slot {
    fn new(sym: Sym, s: &str) -> Slot {
        let mut bytes = [0u8; INLINE];
        let len = if s.len() <= INLINE {
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            s.len() as u8
        } else {
            LONG
        };
        Slot { sym, len, bytes }
    }

    #[inline]
    fn matches(&self, s: &str, names: &[Box<str>]) -> bool {
        if self.len == LONG {
            s.len() > INLINE && &*names[self.sym as usize] == s
        } else {
            s.len() == self.len as usize && &self.bytes[..s.len()] == s.as_bytes()
        }
    }
}

/// A string interner that keeps each name once.
#[derive(Default)]
pub struct Interner {
    names: Vec<Box<str>>,
    table: HashTable<Slot>,
    hasher: DefaultHashBuilder,
}

impl Interner {
    /// The symbol of `s`, if interned.
    #[inline]
    pub fn get(&self, s: &str) -> Option<Sym> {
        let h = self.hasher.hash_one(s);
        if s.len() <= INLINE {
            // Short names (most ids) compare as one zero-padded array: two
            // integer compares instead of a `memcmp` call per candidate.
            let key = Slot::new(0, s);
            return self
                .table
                .find(h, |slot| slot.len == key.len && slot.bytes == key.bytes)
                .map(|slot| slot.sym);
        }
        self.table
            .find(h, |slot| slot.matches(s, &self.names))
            .map(|slot| slot.sym)
    }

    /// The symbol of `s`, interning it if new.
    pub fn intern(&mut self, s: &str) -> Sym {
        let h = self.hasher.hash_one(s);
        if let Some(slot) = self.table.find(h, |slot| slot.matches(s, &self.names)) {
            return slot.sym;
        }
        let sym = self.names.len() as Sym;
        self.names.push(s.into());
        let names = &self.names;
        let hasher = &self.hasher;
        self.table.insert_unique(h, Slot::new(sym, s), |slot| {
            hasher.hash_one(&*names[slot.sym as usize])
        });
        sym
    }

    /// The name of a symbol.
    #[inline]
    pub fn name(&self, sym: Sym) -> &str {
        &self.names[sym as usize]
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No names yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Key of the `direct` index: object, user object, relation and user
/// relation packed so the bucket stays at 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DirectKey {
    obj: u64,
    user: u64,
    rel: Sym,
    urel: Sym,
}

/// Users of one `object#relation` (most have one or two).
pub type UserList = SmallVec<[(User, CondRef); 1]>;
/// The relations of one object that have tuples, with their users.
type ObjRels = SmallVec<[(Sym, UserList); 2]>;
/// Objects a user is related to.
pub type ObjList = SmallVec<[(Obj, Sym); 1]>;

/// A parsed tuple: interned object, relation and user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// The object.
    pub obj: Obj,
    /// The relation.
    pub rel: Sym,
    /// The user.
    pub user: User,
}

/// Why a tuple string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TupleSyntaxError {
    /// `object` is not `type:id`.
    #[error("invalid 'object' field format: '{0}' (want type:id)")]
    Object(String),
    /// `user` is not `type:id`, `type:*` or `type:id#relation`.
    #[error("the 'user' field is malformed: '{0}' (want type:id, type:* or type:id#relation)")]
    User(String),
    /// Relation empty or with forbidden characters.
    #[error("the 'relation' field is malformed: '{0}'")]
    Relation(String),
}

/// Split `type:id`; both parts non-empty, no whitespace, no `#` in the type.
pub fn split_object(s: &str) -> Option<(&str, &str)> {
    // One pass over the bytes (this runs on every check): the first `:`,
    // no `#`, no ASCII whitespace; Unicode whitespace only when there are
    // non-ASCII bytes at all.
    let mut colon = None;
    let mut ascii = true;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        match c {
            b':' if colon.is_none() => colon = Some(i),
            b'#' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => return None,
            0x80.. => ascii = false,
            _ => {}
        }
    }
    if !ascii && s.chars().any(char::is_whitespace) {
        return None;
    }
    let i = colon?;
    let (ty, id) = (&s[..i], &s[i + 1..]);
    if ty.is_empty() || id.is_empty() {
        return None;
    }
    Some((ty, id))
}

/// Split a user: `(type, id, relation)`; relation empty for none.
pub fn split_user(s: &str) -> Option<(&str, &str, &str)> {
    let (obj, rel) = match s.rsplit_once('#') {
        Some((o, r)) => {
            if r.is_empty() {
                return None;
            }
            (o, r)
        }
        None => (s, ""),
    };
    let (ty, id) = split_object(obj)?;
    if id == "*" && !rel.is_empty() {
        return None;
    }
    Some((ty, id, rel))
}

/// A valid relation name: non-empty, no `:`, `#`, `@` or whitespace.
pub fn valid_relation(r: &str) -> bool {
    let mut ascii = true;
    for &c in r.as_bytes() {
        match c {
            b':' | b'#' | b'@' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => return false,
            0x80.. => ascii = false,
            _ => {}
        }
    }
    !r.is_empty() && (ascii || !r.chars().any(char::is_whitespace))
}

/// All tuples of one store, indexed.
pub struct TupleStore {
    /// Names.
    pub syms: Interner,
    direct: HashMap<DirectKey, CondRef>,
    /// Grouped by object: a check reads several relations of the same
    /// object (`viewer`, `editor`, `owner`, `parent` …), and one probe into
    /// the big table then serves them all from one or two cache lines
    /// instead of one random probe each.
    by_object: HashMap<Obj, ObjRels>,
    by_user: HashMap<User, ObjList>,
    conds: Vec<Option<TupleCond>>,
    free_conds: Vec<CondRef>,
}

impl Default for TupleStore {
    fn default() -> Self {
        TupleStore::new()
    }
}

impl TupleStore {
    /// An empty store.
    pub fn new() -> TupleStore {
        let mut syms = Interner::default();
        let star = syms.intern("*");
        debug_assert_eq!(star, STAR);
        TupleStore {
            syms,
            direct: HashMap::new(),
            by_object: HashMap::new(),
            by_user: HashMap::new(),
            conds: Vec::new(),
            free_conds: Vec::new(),
        }
    }

    /// Pre-size the indexes for `n` tuples (cold start).
    pub fn reserve(&mut self, n: usize) {
        self.direct.reserve(n);
        self.by_user.reserve(n / 2);
        self.by_object.reserve(n / 3);
    }

    /// Number of tuples.
    pub fn len(&self) -> usize {
        self.direct.len()
    }

    /// No tuples.
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty()
    }

    /// Parse and intern a tuple's names (object, relation, user).
    pub fn intern_tuple(
        &mut self,
        object: &str,
        relation: &str,
        user: &str,
    ) -> Result<Tuple, TupleSyntaxError> {
        let (oty, oid) =
            split_object(object).ok_or_else(|| TupleSyntaxError::Object(object.to_string()))?;
        if !valid_relation(relation) {
            return Err(TupleSyntaxError::Relation(relation.to_string()));
        }
        let (uty, uid, urel) =
            split_user(user).ok_or_else(|| TupleSyntaxError::User(user.to_string()))?;
        let obj = Obj::new(self.syms.intern(oty), self.syms.intern(oid));
        let rel = self.syms.intern(relation);
        let uobj = Obj::new(self.syms.intern(uty), self.syms.intern(uid));
        let urel = if urel.is_empty() {
            NO_REL
        } else {
            self.syms.intern(urel)
        };
        Ok(Tuple {
            obj,
            rel,
            user: User {
                obj: uobj,
                rel: urel,
            },
        })
    }

    /// Look a tuple up without interning (None: some name is unknown, so the
    /// tuple cannot be there).
    pub fn lookup_tuple(&self, object: &str, relation: &str, user: &str) -> Option<Tuple> {
        let (oty, oid) = split_object(object)?;
        let (uty, uid, urel) = split_user(user)?;
        let obj = Obj::new(self.syms.get(oty)?, self.syms.get(oid)?);
        let rel = self.syms.get(relation)?;
        let uobj = Obj::new(self.syms.get(uty)?, self.syms.get(uid)?);
        let urel = if urel.is_empty() {
            NO_REL
        } else {
            self.syms.get(urel)?
        };
        Some(Tuple {
            obj,
            rel,
            user: User {
                obj: uobj,
                rel: urel,
            },
        })
    }

    /// Insert a tuple; false when it was already there (its condition is
    /// left as it was).
    pub fn insert(&mut self, t: Tuple, cond: Option<TupleCond>) -> bool {
        let key = DirectKey {
            obj: t.obj.0,
            user: t.user.obj.0,
            rel: t.rel,
            urel: t.user.rel,
        };
        if self.direct.contains_key(&key) {
            return false;
        }
        let cref = match cond {
            None => NO_COND,
            Some(c) => match self.free_conds.pop() {
                Some(i) => {
                    self.conds[i as usize] = Some(c);
                    i
                }
                None => {
                    self.conds.push(Some(c));
                    (self.conds.len() - 1) as CondRef
                }
            },
        };
        self.direct.insert(key, cref);
        let rels = self.by_object.entry(t.obj).or_default();
        match rels.iter_mut().find(|(r, _)| *r == t.rel) {
            Some((_, list)) => list.push((t.user, cref)),
            None => rels.push((t.rel, smallvec::smallvec![(t.user, cref)])),
        }
        self.by_user.entry(t.user).or_default().push((t.obj, t.rel));
        true
    }

    /// Insert a tuple given as strings (interning the names).
    pub fn insert_key(&mut self, k: &TupleKey) -> Result<bool, TupleSyntaxError> {
        let t = self.intern_tuple(&k.object, &k.relation, &k.user)?;
        let cond = k.condition.as_ref().map(|c| self.tuple_cond(c));
        Ok(self.insert(t, cond))
    }

    /// Insert a row streamed from the state DB (cold start): names interned
    /// straight from the row's fields.
    pub fn insert_row(
        &mut self,
        r: &crate::state::fga::TupleRow<'_>,
    ) -> Result<bool, TupleSyntaxError> {
        let obj = Obj::new(
            self.syms.intern(r.object_type),
            self.syms.intern(r.object_id),
        );
        let rel = self.syms.intern(r.relation);
        let uobj = Obj::new(self.syms.intern(r.user_type), self.syms.intern(r.user_id));
        let urel = if r.user_relation.is_empty() {
            NO_REL
        } else {
            self.syms.intern(r.user_relation)
        };
        let cond = match r.condition_name.filter(|n| !n.is_empty()) {
            None => None,
            Some(name) => Some(TupleCond {
                name: self.syms.intern(name),
                context: match r.condition_context.filter(|c| !c.is_empty() && *c != "{}") {
                    None => None,
                    Some(c) => Some(Arc::new(serde_json::from_str(c).map_err(|e| {
                        TupleSyntaxError::Object(format!("condition context: {e}"))
                    })?)),
                },
            }),
        };
        Ok(self.insert(
            Tuple {
                obj,
                rel,
                user: User {
                    obj: uobj,
                    rel: urel,
                },
            },
            cond,
        ))
    }

    /// Intern a tuple's condition.
    pub fn tuple_cond(&mut self, c: &RelationshipCondition) -> TupleCond {
        TupleCond {
            name: self.syms.intern(&c.name),
            context: c
                .context
                .as_ref()
                .filter(|m| !m.0.is_empty())
                .map(|m| Arc::new(m.0.clone())),
        }
    }

    /// Remove a tuple; false when it was not there.
    pub fn remove(&mut self, t: Tuple) -> bool {
        let key = DirectKey {
            obj: t.obj.0,
            user: t.user.obj.0,
            rel: t.rel,
            urel: t.user.rel,
        };
        let Some(cref) = self.direct.remove(&key) else {
            return false;
        };
        if cref != NO_COND {
            self.conds[cref as usize] = None;
            self.free_conds.push(cref);
        }
        if let Some(rels) = self.by_object.get_mut(&t.obj) {
            if let Some(i) = rels.iter().position(|(r, _)| *r == t.rel) {
                rels[i].1.retain(|(u, _)| *u != t.user);
                if rels[i].1.is_empty() {
                    rels.swap_remove(i);
                }
            }
            if rels.is_empty() {
                self.by_object.remove(&t.obj);
            }
        }
        if let Some(list) = self.by_user.get_mut(&t.user) {
            list.retain(|(o, r)| !(*o == t.obj && *r == t.rel));
            if list.is_empty() {
                self.by_user.remove(&t.user);
            }
        }
        true
    }

    /// The condition of a stored tuple: `None` absent, `Some(NO_COND)` no
    /// condition.
    #[inline]
    pub fn get(&self, obj: Obj, rel: Sym, user: User) -> Option<CondRef> {
        self.direct
            .get(&DirectKey {
                obj: obj.0,
                user: user.obj.0,
                rel,
                urel: user.rel,
            })
            .copied()
    }

    /// Every relation of `obj` that has tuples, with its users.
    #[inline]
    pub fn relations_of(&self, obj: Obj) -> &[(Sym, UserList)] {
        self.by_object.get(&obj).map_or(&[], |r| r.as_slice())
    }

    /// The users of `rel` among an object's [`TupleStore::relations_of`].
    #[inline]
    pub fn users_in(rels: &[(Sym, UserList)], rel: Sym) -> &[(User, CondRef)] {
        rels.iter()
            .find(|(r, _)| *r == rel)
            .map_or(&[], |(_, l)| l.as_slice())
    }

    /// Users of `object#relation`.
    #[inline]
    pub fn users(&self, obj: Obj, rel: Sym) -> &[(User, CondRef)] {
        match self.by_object.get(&obj) {
            Some(rels) => rels
                .iter()
                .find(|(r, _)| *r == rel)
                .map_or(&[], |(_, l)| l.as_slice()),
            None => &[],
        }
    }

    /// `(object, relation)` pairs where `user` is the user.
    #[inline]
    pub fn objects_of(&self, user: User) -> &[(Obj, Sym)] {
        self.by_user.get(&user).map_or(&[], |l| l.as_slice())
    }

    /// A condition by reference.
    #[inline]
    pub fn cond(&self, c: CondRef) -> Option<&TupleCond> {
        self.conds.get(c as usize).and_then(Option::as_ref)
    }

    /// Every `(object, relation)` key with tuples.
    pub fn object_relations(&self) -> impl Iterator<Item = (Obj, Sym)> + '_ {
        self.by_object
            .iter()
            .flat_map(|(&o, rels)| rels.iter().map(move |&(r, _)| (o, r)))
    }

    /// Render an object.
    pub fn obj_str(&self, o: Obj) -> String {
        format!("{}:{}", self.syms.name(o.ty()), self.syms.name(o.id()))
    }

    /// Render a user.
    pub fn user_str(&self, u: User) -> String {
        if u.rel == NO_REL {
            self.obj_str(u.obj)
        } else {
            format!("{}#{}", self.obj_str(u.obj), self.syms.name(u.rel))
        }
    }

    /// A stored tuple back as a [`TupleKey`].
    pub fn to_key(&self, obj: Obj, rel: Sym, user: User, cref: CondRef) -> TupleKey {
        TupleKey {
            object: self.obj_str(obj),
            relation: self.syms.name(rel).to_string(),
            user: self.user_str(user),
            condition: self.cond(cref).map(|c| RelationshipCondition {
                name: self.syms.name(c.name).to_string(),
                context: c.context.as_ref().map(|m| JsonObject((**m).clone())),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_and_users() {
        assert_eq!(split_object("doc:1"), Some(("doc", "1")));
        assert_eq!(split_object("doc:a:b"), Some(("doc", "a:b")));
        assert_eq!(split_object("doc:"), None);
        assert_eq!(split_object(":1"), None);
        assert_eq!(split_object("doc"), None);
        assert_eq!(split_object("doc:a b"), None);
        assert_eq!(
            split_user("group:eng#member"),
            Some(("group", "eng", "member"))
        );
        assert_eq!(split_user("user:*"), Some(("user", "*", "")));
        assert_eq!(split_user("user:*#member"), None);
        assert_eq!(split_user("group:eng#"), None);
        assert_eq!(split_user("anne"), None);
        // Whitespace, ASCII or not, anywhere; non-ASCII names are fine.
        assert_eq!(split_object("doc:a\tb"), None);
        assert_eq!(split_object("doc:a\u{a0}b"), None);
        assert_eq!(split_object("do\u{2003}c:1"), None);
        assert_eq!(split_object("doc:é"), Some(("doc", "é")));
        assert_eq!(split_object("doc#x:1"), None);
        assert!(valid_relation("viewer"));
        assert!(valid_relation("lecteur_é"));
        for bad in ["", "a:b", "a#b", "a@b", "a b", "a\u{85}b", "a\u{3000}"] {
            assert!(!valid_relation(bad), "{bad:?}");
        }
    }

    #[test]
    fn insert_lookup_remove_keep_every_index_in_step() {
        let mut s = TupleStore::new();
        let k = TupleKey::new("doc:1", "viewer", "group:eng#member");
        assert!(s.insert_key(&k).unwrap());
        assert!(!s.insert_key(&k).unwrap(), "duplicate");
        let t = s
            .lookup_tuple("doc:1", "viewer", "group:eng#member")
            .unwrap();
        assert_eq!(s.get(t.obj, t.rel, t.user), Some(NO_COND));
        assert_eq!(s.users(t.obj, t.rel).len(), 1);
        assert_eq!(s.objects_of(t.user), &[(t.obj, t.rel)]);
        assert_eq!(s.to_key(t.obj, t.rel, t.user, NO_COND), k);
        assert!(s.remove(t));
        assert!(!s.remove(t));
        assert!(s.is_empty());
        assert!(s.users(t.obj, t.rel).is_empty());
        assert!(s.objects_of(t.user).is_empty());
    }

    #[test]
    fn conditions_are_kept_and_slots_reused() {
        let mut s = TupleStore::new();
        let mut k = TupleKey::new("doc:1", "viewer", "user:anne");
        let mut ctx = serde_json::Map::new();
        ctx.insert("x".into(), 1.into());
        k.condition = Some(RelationshipCondition {
            name: "xcond".into(),
            context: Some(JsonObject(ctx)),
        });
        s.insert_key(&k).unwrap();
        let t = s.lookup_tuple("doc:1", "viewer", "user:anne").unwrap();
        let c = s.get(t.obj, t.rel, t.user).unwrap();
        assert_eq!(s.to_key(t.obj, t.rel, t.user, c), k);
        s.remove(t);
        s.insert_key(&k).unwrap();
        assert_eq!(s.get(t.obj, t.rel, t.user), Some(c), "slot reused");
    }

    #[test]
    fn the_interner_tells_short_and_long_names_apart() {
        let mut i = Interner::default();
        let names = [
            "",
            "a",
            "d123456",
            "exactly11ch",
            "twelve-chars",
            "a-much-longer-name-than-eleven",
        ];
        let syms: Vec<Sym> = names.iter().map(|n| i.intern(n)).collect();
        for (n, s) in names.iter().zip(&syms) {
            assert_eq!(i.get(n), Some(*s), "{n}");
            assert_eq!(i.name(*s), *n);
            assert_eq!(i.intern(n), *s, "interned once");
        }
        assert_eq!(i.get("exactly11c"), None);
        assert_eq!(i.get("twelve-charz"), None);
        for k in 0..10_000 {
            i.intern(&format!("id{k}"));
        }
        assert_eq!(i.get("id9999").map(|s| i.name(s)), Some("id9999"));
        assert_eq!(i.get("a-much-longer-name-than-eleven"), Some(syms[5]));
    }

    #[test]
    fn bad_tuples_are_named() {
        let mut s = TupleStore::new();
        let e = s.intern_tuple("doc", "viewer", "user:anne").unwrap_err();
        assert!(e.to_string().contains("'doc'"));
        let e = s.intern_tuple("doc:1", "view er", "user:anne").unwrap_err();
        assert!(matches!(e, TupleSyntaxError::Relation(_)));
        let e = s.intern_tuple("doc:1", "viewer", "anne").unwrap_err();
        assert!(matches!(e, TupleSyntaxError::User(_)));
    }
}

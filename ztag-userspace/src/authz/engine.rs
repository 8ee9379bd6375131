//! The relationship engine: a validated model compiled against a store's
//! names, and Check, ListObjects and ListUsers over a [`TupleStore`] plus a
//! request's contextual tuples, with OpenFGA's semantics:
//!
//! * `this` looks up the exact tuple, the `type:*` wildcard tuple (when the
//!   relation allows it) and expands userset tuples (`group:eng#member`);
//!   tuples the current model no longer allows (type restriction, condition,
//!   tupleset rule) are ignored, as OpenFGA's read filter does;
//! * union is allowed when any operand is; an error matters only when no
//!   operand allows. Intersection is denied when any operand denies; errors
//!   matter only when none denies. Exclusion is denied when the base denies or
//!   the subtracted set allows (or either ran into a cycle);
//! * each expansion through a tuple (userset, tuple-to-userset) is one level;
//!   reaching 25 levels is an error ("resolution too complex"); meeting the same
//!   `object#relation` again on one path is a cycle, which does not allow;
//! * a condition whose parameters are missing, or whose evaluation fails, is an
//!   error of the check (unless another path decides it).

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use super::{
    condition::{CompiledCondition, ConditionError},
    model::{AuthorizationModel, TupleKey, Userset},
    tuples::{
        CondRef, NO_COND, NO_REL, Obj, Sym, TupleCond, TupleStore, User, split_object, split_user,
        valid_relation,
    },
};

/// OpenFGA's resolution depth limit.
pub const MAX_DEPTH: u32 = 25;

/// Request context: the JSON object of condition parameters.
pub type Context = Map<String, Value>;

/// Why a request could not be answered; `code()` is OpenFGA's error code.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A malformed field or a bad request (2000).
    #[error("{0}")]
    Validation(String),
    /// The resolution needed more than 25 levels (2002).
    #[error("authorization model resolution too complex (more than {MAX_DEPTH} levels)")]
    TooComplex,
    /// A type the model does not define (2021).
    #[error("type '{0}' not found")]
    TypeNotFound(String),
    /// A relation the type does not define (2022).
    #[error("relation '{type_name}#{relation}' not found")]
    RelationNotFound {
        /// The type.
        type_name: String,
        /// The relation.
        relation: String,
    },
    /// A tuple the model does not allow (2027).
    #[error("invalid tuple '{tuple}': {reason}")]
    InvalidTuple {
        /// The tuple.
        tuple: String,
        /// Why.
        reason: String,
    },
    /// A condition could not be evaluated (2000).
    #[error("{0}")]
    Condition(#[from] ConditionError),
    /// The model cannot be compiled.
    #[error("invalid model: {0}")]
    Model(String),
}

impl AuthzError {
    /// OpenFGA's numeric error code.
    pub fn code(&self) -> u32 {
        match self {
            AuthzError::Validation(_) | AuthzError::Condition(_) | AuthzError::Model(_) => 2000,
            AuthzError::TooComplex => 2002,
            AuthzError::TypeNotFound(_) => 2021,
            AuthzError::RelationNotFound { .. } => 2022,
            AuthzError::InvalidTuple { .. } => 2027,
        }
    }
}

/// A compiled rewrite.
#[derive(Debug, Clone)]
enum Rw {
    This,
    Computed(Sym),
    Ttu { tupleset: Sym, computed: Sym },
    Union(Vec<Rw>),
    Inter(Vec<Rw>),
    Diff(Box<Rw>, Box<Rw>),
}

/// One type restriction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restriction {
    ty: Sym,
    rel: Sym,
    wildcard: bool,
    /// Condition name, or `NO_REL` for none.
    cond: Sym,
}

#[derive(Debug, Clone)]
struct RelInfo {
    name: Sym,
    rw: Rw,
    restrictions: Vec<Restriction>,
    /// Used as the tupleset of some `x from <this>` in the type.
    tupleset: bool,
    /// The rewrite is exactly `this`.
    direct_only: bool,
    /// The user kinds some path from this relation leads to (see
    /// `Model::rels`), here too so that the check path tests them on the
    /// relation it already holds, without two more hash probes.
    reach: Vec<(Sym, Sym)>,
}

#[derive(Debug)]
struct TypeInfo {
    relations: HashMap<Sym, RelInfo>,
    /// Relation names in declaration order.
    order: Vec<Sym>,
}

/// A model compiled against a store's names.
pub struct Model {
    /// The model as written (OpenFGA JSON form).
    pub source: AuthorizationModel,
    types: HashMap<Sym, TypeInfo>,
    /// Every relation by (type, relation): one probe on the check path.
    /// Each carries its `reach`: the kinds of user — (type, NO_REL) for
    /// objects and wildcards, (type, relation) for usersets — that some path
    /// of the model can lead to (OpenFGA's `PathExists`): a check for a user
    /// no path leads to is "not allowed" without reading a tuple.
    rels: HashMap<(Sym, Sym), Arc<RelInfo>>,
    conditions: HashMap<Sym, Arc<CompiledCondition>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.source.id)
            .finish()
    }
}

fn compile_rw(u: &Userset, syms: &mut super::tuples::Interner) -> Result<Rw, AuthzError> {
    if u.this.is_some() {
        Ok(Rw::This)
    } else if let Some(c) = &u.computed_userset {
        Ok(Rw::Computed(syms.intern(&c.relation)))
    } else if let Some(t) = &u.tuple_to_userset {
        Ok(Rw::Ttu {
            tupleset: syms.intern(&t.tupleset.relation),
            computed: syms.intern(&t.computed_userset.relation),
        })
    } else if let Some(c) = &u.union {
        Ok(Rw::Union(
            c.child
                .iter()
                .map(|c| compile_rw(c, syms))
                .collect::<Result<_, _>>()?,
        ))
    } else if let Some(c) = &u.intersection {
        Ok(Rw::Inter(
            c.child
                .iter()
                .map(|c| compile_rw(c, syms))
                .collect::<Result<_, _>>()?,
        ))
    } else if let Some(d) = &u.difference {
        Ok(Rw::Diff(
            Box::new(compile_rw(&d.base, syms)?),
            Box::new(compile_rw(&d.subtract, syms)?),
        ))
    } else {
        Err(AuthzError::Model(
            "a relation rewrite with no operator".into(),
        ))
    }
}

/// The user kinds each relation can lead to, to a fixed point.
fn reachability(
    rels: &HashMap<(Sym, Sym), Arc<RelInfo>>,
) -> HashMap<(Sym, Sym), HashSet<(Sym, Sym)>> {
    let mut reach: HashMap<(Sym, Sym), HashSet<(Sym, Sym)>> =
        rels.keys().map(|k| (*k, HashSet::new())).collect();
    fn leaves(
        rw: &Rw,
        ty: Sym,
        ri: &RelInfo,
        rels: &HashMap<(Sym, Sym), Arc<RelInfo>>,
        reach: &HashMap<(Sym, Sym), HashSet<(Sym, Sym)>>,
        out: &mut HashSet<(Sym, Sym)>,
    ) {
        let from = |k: (Sym, Sym), out: &mut HashSet<(Sym, Sym)>| {
            if let Some(s) = reach.get(&k) {
                out.extend(s.iter().copied());
            }
        };
        match rw {
            Rw::This => {
                for r in &ri.restrictions {
                    out.insert((r.ty, r.rel));
                    if r.rel != NO_REL {
                        from((r.ty, r.rel), out);
                    }
                }
            }
            Rw::Computed(r) => {
                // The userset `object#r` itself is met on the way.
                out.insert((ty, *r));
                from((ty, *r), out)
            }
            Rw::Ttu { tupleset, computed } => {
                if let Some(ts) = rels.get(&(ty, *tupleset)) {
                    for r in &ts.restrictions {
                        if r.rel == NO_REL && rels.contains_key(&(r.ty, *computed)) {
                            out.insert((r.ty, *computed));
                            from((r.ty, *computed), out);
                        }
                    }
                }
            }
            Rw::Union(c) | Rw::Inter(c) => {
                for c in c {
                    leaves(c, ty, ri, rels, reach, out);
                }
            }
            // Only the base can grant.
            Rw::Diff(base, _) => leaves(base, ty, ri, rels, reach, out),
        }
    }
    loop {
        let mut changed = false;
        for (&(ty, rel), ri) in rels {
            let mut out = HashSet::new();
            leaves(&ri.rw, ty, ri, rels, &reach, &mut out);
            let cur = reach.get_mut(&(ty, rel)).expect("every relation");
            let before = cur.len();
            cur.extend(out);
            changed |= cur.len() != before;
        }
        if !changed {
            return reach;
        }
    }
}

fn collect_tuplesets(rw: &Rw, out: &mut Vec<Sym>) {
    match rw {
        Rw::Ttu { tupleset, .. } => out.push(*tupleset),
        Rw::Union(c) | Rw::Inter(c) => c.iter().for_each(|c| collect_tuplesets(c, out)),
        Rw::Diff(a, b) => {
            collect_tuplesets(a, out);
            collect_tuplesets(b, out);
        }
        Rw::This | Rw::Computed(_) => {}
    }
}

impl Model {
    /// Compile a model (already validated) against `store`'s names.
    pub fn compile(
        source: AuthorizationModel,
        store: &mut TupleStore,
    ) -> Result<Model, AuthzError> {
        let syms = &mut store.syms;
        let mut types = HashMap::new();
        for td in &source.type_definitions {
            let name = syms.intern(&td.type_name);
            let mut relations = HashMap::new();
            let mut order = Vec::new();
            for (rname, rw) in &td.relations {
                let rel = syms.intern(rname);
                let rw = compile_rw(rw, syms)?;
                let mut restrictions = Vec::new();
                if let Some(meta) = td.metadata.as_ref().and_then(|m| m.relations.get(rname)) {
                    for r in &meta.directly_related_user_types {
                        restrictions.push(Restriction {
                            ty: syms.intern(&r.type_name),
                            rel: r.relation.as_deref().map_or(NO_REL, |x| syms.intern(x)),
                            wildcard: r.wildcard.is_some(),
                            cond: if r.condition.is_empty() {
                                NO_REL
                            } else {
                                syms.intern(&r.condition)
                            },
                        });
                    }
                }
                let direct_only = matches!(rw, Rw::This);
                order.push(rel);
                relations.insert(
                    rel,
                    RelInfo {
                        name: rel,
                        rw,
                        restrictions,
                        tupleset: false,
                        direct_only,
                        reach: Vec::new(),
                    },
                );
            }
            let mut ts = Vec::new();
            for r in relations.values() {
                collect_tuplesets(&r.rw, &mut ts);
            }
            for t in ts {
                if let Some(r) = relations.get_mut(&t) {
                    r.tupleset = true;
                }
            }
            if types.insert(name, TypeInfo { relations, order }).is_some() {
                return Err(AuthzError::Model(format!(
                    "type '{}' is defined twice",
                    td.type_name
                )));
            }
        }
        let mut conditions = HashMap::new();
        for (name, c) in &source.conditions {
            let compiled = CompiledCondition::compile(c)
                .map_err(|e| AuthzError::Model(format!("condition '{name}': {e}")))?;
            conditions.insert(syms.intern(name), Arc::new(compiled));
        }
        let rels = types
            .iter()
            .flat_map(|(&t, ti)| {
                ti.relations
                    .iter()
                    .map(move |(&r, info)| ((t, r), Arc::new(info.clone())))
            })
            .collect();
        let reach = reachability(&rels);
        let rels = rels
            .into_iter()
            .map(|(k, ri)| {
                let mut ri = (*ri).clone();
                ri.reach = reach.get(&k).into_iter().flatten().copied().collect();
                ri.reach.sort_unstable();
                (k, Arc::new(ri))
            })
            .collect();
        Ok(Model {
            source,
            types,
            rels,
            conditions,
        })
    }

    /// Can some path of the model lead from `ty#rel` (`ri`) to `user`?
    #[inline]
    fn reachable(ty: Sym, ri: &RelInfo, user: User) -> bool {
        (user.obj.ty() == ty && user.rel == ri.name)
            || ri.reach.contains(&(user.obj.ty(), user.rel))
    }

    fn rel(&self, ty: Sym, rel: Sym) -> Option<&RelInfo> {
        self.rels.get(&(ty, rel)).map(|r| &**r)
    }

    /// Is a stored tuple readable under this model (OpenFGA's
    /// `ValidateTupleForRead`)?
    fn readable(&self, ri: &RelInfo, user: User, star: Sym, cond: Option<&TupleCond>) -> bool {
        let is_wild = user.obj.id() == star && user.rel == NO_REL;
        if ri.tupleset && (!ri.direct_only || is_wild || user.rel != NO_REL) {
            return false;
        }
        let uty = user.obj.ty();
        let type_ok = ri.restrictions.iter().any(|r| {
            r.ty == uty
                && if user.rel != NO_REL {
                    r.rel == user.rel
                } else if is_wild {
                    r.wildcard
                } else {
                    !r.wildcard && r.rel == NO_REL
                }
        });
        if !type_ok {
            return false;
        }
        match cond {
            None => ri.restrictions.iter().any(|r| {
                r.ty == uty
                    && r.cond == NO_REL
                    && if r.rel != NO_REL {
                        r.rel == user.rel
                    } else if r.wildcard {
                        is_wild
                    } else {
                        !is_wild
                    }
            }),
            Some(c) => {
                self.conditions.contains_key(&c.name)
                    && ri
                        .restrictions
                        .iter()
                        .any(|r| r.ty == uty && r.cond == c.name)
            }
        }
    }
}

/// A request's contextual tuples, interned against the store (names the
/// store does not know get request-local symbols).
#[derive(Default)]
pub struct Contextual {
    /// Made on the first request-local name only: building a hashbrown
    /// map seeds its hasher through a process-wide atomic, a cache line
    /// every checking thread would otherwise write on every check.
    extra: Option<HashMap<String, Sym>>,
    names: Vec<String>,
    base: Sym,
    tuples: Vec<(Obj, Sym, User, Option<TupleCond>)>,
}

impl Contextual {
    fn sym(&mut self, store: &TupleStore, s: &str) -> Sym {
        if let Some(x) = store.syms.get(s) {
            return x;
        }
        if let Some(&x) = self.extra.as_ref().and_then(|m| m.get(s)) {
            return x;
        }
        let x = self.base + self.names.len() as Sym;
        self.names.push(s.to_string());
        self.extra
            .get_or_insert_with(HashMap::new)
            .insert(s.to_string(), x);
        x
    }

    fn name<'a>(&'a self, store: &'a TupleStore, s: Sym) -> &'a str {
        if s >= self.base {
            &self.names[(s - self.base) as usize]
        } else {
            store.syms.name(s)
        }
    }
}

/// One check of [`Engine::check_many`].
#[derive(Debug, Clone)]
pub struct BatchItem<'a> {
    /// `type:id`.
    pub object: &'a str,
    /// The relation.
    pub relation: &'a str,
    /// `type:id`, `type:*` or `type:id#relation`.
    pub user: &'a str,
    /// Contextual tuples and condition context of this check.
    pub q: &'a Query<'a>,
}

/// A check, list-objects or list-users request in its string form.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    /// Contextual tuples (validated as writes).
    pub contextual: &'a [TupleKey],
    /// Condition parameters.
    pub context: Option<&'a Context>,
}

/// The engine bound to one model and one tuple store (under the caller's
/// read lock).
pub struct Engine<'a> {
    model: &'a Model,
    store: &'a TupleStore,
    star: Sym,
}

/// One resolution's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Allowed,
    Denied { cycle: bool },
}

const DENIED: Out = Out::Denied { cycle: false };

struct Resolver<'e> {
    m: &'e Model,
    s: &'e TupleStore,
    cx: &'e Contextual,
    context: Option<&'e Context>,
    user: User,
    star: Sym,
    /// Do not let `type:*` tuples stand for the user (ListUsers lists a
    /// concrete user only for a path of its own; the wildcard is listed as
    /// `type:*`).
    no_public: bool,
    path: SmallVec<[(Obj, Sym); 16]>,
    /// Results already known in this request, with the depth they were
    /// found at: only those that met no cycle and no error (they do not
    /// depend on the path), reused at the same depth or above (as much
    /// room or more).
    memo: SmallVec<[(Obj, Sym, u32, bool); 16]>,
    /// The object whose relations were read last, with them: a check reads
    /// several relations of one object in a row (`viewer`, `editor`,
    /// `owner`, `parent`), and these skip the hash probe.
    last: Option<(Obj, &'e [(Sym, super::tuples::UserList)])>,
}

impl<'a> Engine<'a> {
    /// Bind a model to a tuple store. `store` must be the one the model was
    /// compiled against.
    pub fn new(model: &'a Model, store: &'a TupleStore) -> Engine<'a> {
        Engine {
            model,
            store,
            star: super::tuples::STAR,
        }
    }

    fn type_sym(&self, cx: &Contextual, ty: &str) -> Result<Sym, AuthzError> {
        match self.store.syms.get(ty) {
            Some(t) if self.model.types.contains_key(&t) => Ok(t),
            _ => {
                let _ = cx;
                Err(AuthzError::TypeNotFound(ty.to_string()))
            }
        }
    }

    fn rel_sym(&self, ty: Sym, ty_name: &str, rel: &str) -> Result<Sym, AuthzError> {
        if !valid_relation(rel) {
            return Err(AuthzError::Validation(format!(
                "the 'relation' field is malformed: '{rel}'"
            )));
        }
        match self.store.syms.get(rel) {
            Some(r) if self.model.rel(ty, r).is_some() => Ok(r),
            _ => Err(AuthzError::RelationNotFound {
                type_name: ty_name.to_string(),
                relation: rel.to_string(),
            }),
        }
    }

    /// Validate and intern a user (OpenFGA's `ValidateUser`).
    fn user(&self, cx: &mut Contextual, user: &str) -> Result<User, AuthzError> {
        let (uty, uid, urel) = split_user(user).ok_or_else(|| {
            AuthzError::Validation(format!(
                "the 'user' field is malformed: '{user}' (want type:id, type:* or type:id#relation)"
            ))
        })?;
        let ty = self.type_sym(cx, uty)?;
        let rel = if urel.is_empty() {
            NO_REL
        } else {
            self.rel_sym(ty, uty, urel)?
        };
        let id = cx.sym(self.store, uid);
        Ok(User {
            obj: Obj::new(ty, id),
            rel,
        })
    }

    fn object(&self, cx: &mut Contextual, object: &str) -> Result<(Obj, &'a str), AuthzError> {
        let (ty, id) = split_object(object).ok_or_else(|| {
            AuthzError::Validation(format!(
                "invalid 'object' field format: '{object}' (want type:id)"
            ))
        })?;
        if id == "*" {
            return Err(AuthzError::Validation(format!(
                "the 'object' field cannot reference a typed wildcard: '{object}'"
            )));
        }
        let t = self.type_sym(cx, ty)?;
        let name = self.store.syms.name(t);
        Ok((Obj::new(t, cx.sym(self.store, id)), name))
    }

    /// Validate a tuple as a write (OpenFGA's `ValidateTupleForWrite`):
    /// every failure is an invalid tuple.
    pub fn validate_write(&self, k: &TupleKey) -> Result<(), AuthzError> {
        let mut cx = self.new_cx();
        self.intern_write(&mut cx, k).map(|_| ())
    }

    fn intern_write(
        &self,
        cx: &mut Contextual,
        k: &TupleKey,
    ) -> Result<(Obj, Sym, User, Option<TupleCond>), AuthzError> {
        let invalid = |reason: String| AuthzError::InvalidTuple {
            tuple: k.to_string(),
            reason,
        };
        let user = self.user(cx, &k.user).map_err(|e| invalid(e.to_string()))?;
        let (obj, ty_name) = self
            .object(cx, &k.object)
            .map_err(|e| invalid(e.to_string()))?;
        let rel = self
            .rel_sym(obj.ty(), ty_name, &k.relation)
            .map_err(|e| invalid(e.to_string()))?;
        let ri = self.model.rel(obj.ty(), rel).expect("checked");
        let cond = match &k.condition {
            None => None,
            Some(c) => {
                let Some(name) = self
                    .store
                    .syms
                    .get(&c.name)
                    .filter(|n| self.model.conditions.contains_key(n))
                else {
                    return Err(invalid(format!("undefined condition '{}'", c.name)));
                };
                Some(TupleCond {
                    name,
                    context: c
                        .context
                        .as_ref()
                        .filter(|m| !m.0.is_empty())
                        .map(|m| Arc::new(m.0.clone())),
                })
            }
        };
        if user.obj.id() == self.star && user.rel != NO_REL {
            return Err(invalid("a wildcard cannot carry a relation".into()));
        }
        if user.obj == obj && user.rel == rel {
            return Err(invalid(
                "cannot write a tuple that is implicit (an object#relation is always its own member)".into(),
            ));
        }
        if !self.model.readable(ri, user, self.star, cond.as_ref()) {
            let reason = if ri.tupleset && user.rel != NO_REL {
                format!(
                    "a userset cannot be assigned to the tupleset relation '{}#{}'",
                    ty_name, k.relation
                )
            } else if cond.is_some() {
                format!(
                    "condition '{}' is not allowed for '{}' on '{}#{}'",
                    k.condition.as_ref().map_or("", |c| c.name.as_str()),
                    k.user,
                    ty_name,
                    k.relation
                )
            } else if ri
                .restrictions
                .iter()
                .any(|r| r.ty == user.obj.ty() && r.cond != NO_REL && r.rel == user.rel)
                && !ri
                    .restrictions
                    .iter()
                    .any(|r| r.ty == user.obj.ty() && r.cond == NO_REL && r.rel == user.rel)
            {
                format!(
                    "condition is missing for '{}' on '{}#{}'",
                    k.user, ty_name, k.relation
                )
            } else {
                format!(
                    "type '{}' is not an allowed type restriction for '{}#{}'",
                    user_type_text(&k.user),
                    ty_name,
                    k.relation
                )
            };
            return Err(invalid(reason));
        }
        Ok((obj, rel, user, cond))
    }

    fn add_contextual(&self, cx: &mut Contextual, q: &Query<'_>) -> Result<(), AuthzError> {
        for k in q.contextual {
            let t = self.intern_write(cx, k)?;
            cx.tuples.push(t);
        }
        Ok(())
    }

    fn resolver<'e>(&'e self, cx: &'e Contextual, q: &Query<'e>, user: User) -> Resolver<'e> {
        Resolver {
            m: self.model,
            s: self.store,
            cx,
            context: q.context,
            user,
            star: self.star,
            no_public: false,
            path: SmallVec::new(),
            memo: SmallVec::new(),
            last: None,
        }
    }

    fn new_cx(&self) -> Contextual {
        Contextual {
            base: self.store.syms.len() as Sym,
            ..Default::default()
        }
    }

    /// Check: may `user` have `relation` on `object`?
    pub fn check(
        &self,
        object: &str,
        relation: &str,
        user: &str,
        q: &Query<'_>,
    ) -> Result<bool, AuthzError> {
        let mut cx = self.new_cx();
        // OpenFGA answers every problem with the checked tuple as a
        // validation error (2000).
        let as_validation = |e: AuthzError| match e {
            AuthzError::TypeNotFound(_) | AuthzError::RelationNotFound { .. } => {
                AuthzError::Validation(format!("invalid check tuple: {e}"))
            }
            e => e,
        };
        let u = self.user(&mut cx, user).map_err(as_validation)?;
        let (obj, ty_name) = self.object(&mut cx, object).map_err(as_validation)?;
        let rel = self
            .rel_sym(obj.ty(), ty_name, relation)
            .map_err(as_validation)?;
        self.add_contextual(&mut cx, q)?;
        self.check_interned(&cx, q, obj, rel, u)
    }

    /// Several checks, each with its own query, answered as [`Engine::check`]
    /// would answer them one by one. Faster per check than single calls:
    /// every item's names are interned first and its object's tuples are
    /// touched before any resolution starts, so the cache misses of
    /// independent items overlap instead of following one another; identical
    /// items without contextual data are resolved once.
    pub fn check_many(&self, items: &[BatchItem<'_>]) -> Vec<Result<bool, AuthzError>> {
        let as_validation = |e: AuthzError| match e {
            AuthzError::TypeNotFound(_) | AuthzError::RelationNotFound { .. } => {
                AuthzError::Validation(format!("invalid check tuple: {e}"))
            }
            e => e,
        };
        // 1. Parse and intern every item (independent lookups).
        let mut parsed: Vec<Result<(Contextual, Obj, Sym, User), AuthzError>> = items
            .iter()
            .map(|it| {
                let mut cx = self.new_cx();
                let u = self.user(&mut cx, it.user).map_err(as_validation)?;
                let (obj, ty_name) = self.object(&mut cx, it.object).map_err(as_validation)?;
                let rel = self
                    .rel_sym(obj.ty(), ty_name, it.relation)
                    .map_err(as_validation)?;
                self.add_contextual(&mut cx, it.q)?;
                Ok((cx, obj, rel, u))
            })
            .collect();
        // 2. Touch each object's tuples: the loads are independent, so the
        // CPU overlaps their misses.
        for p in parsed.iter().flatten() {
            std::hint::black_box(self.store.users(p.1, p.2).len());
        }
        // 3. Resolve; an identical plain item reuses the first answer.
        let mut seen: HashMap<(Obj, Sym, User), usize> = HashMap::new();
        let mut out: Vec<Result<bool, AuthzError>> = Vec::with_capacity(items.len());
        for (i, (it, p)) in items.iter().zip(parsed.iter_mut()).enumerate() {
            let (cx, obj, rel, u) = match p {
                Ok(p) => p,
                Err(e) => {
                    let e = std::mem::replace(e, AuthzError::TooComplex);
                    out.push(Err(e));
                    continue;
                }
            };
            let plain = it.q.contextual.is_empty() && it.q.context.is_none();
            if plain {
                if let Some(&j) = seen.get(&(*obj, *rel, *u))
                    && let Ok(v) = out[j]
                {
                    out.push(Ok(v));
                    continue;
                }
                seen.insert((*obj, *rel, *u), i);
            }
            out.push(self.check_interned(cx, it.q, *obj, *rel, *u));
        }
        out
    }

    fn check_interned(
        &self,
        cx: &Contextual,
        q: &Query<'_>,
        obj: Obj,
        rel: Sym,
        user: User,
    ) -> Result<bool, AuthzError> {
        let mut r = self.resolver(cx, q, user);
        Ok(r.resolve(obj, rel, 0)? == Out::Allowed)
    }

    /// ListObjects: every object of `object_type` on which `user` has
    /// `relation`, sorted.
    pub fn list_objects(
        &self,
        object_type: &str,
        relation: &str,
        user: &str,
        q: &Query<'_>,
    ) -> Result<Vec<String>, AuthzError> {
        let mut cx = self.new_cx();
        let ty = self.type_sym(&cx, object_type)?;
        let rel = self.rel_sym(ty, object_type, relation)?;
        let u = self.user(&mut cx, user).map_err(|e| match e {
            AuthzError::TypeNotFound(_) | AuthzError::RelationNotFound { .. } => {
                AuthzError::Validation(format!("invalid user: {e}"))
            }
            e => e,
        })?;
        self.add_contextual(&mut cx, q)?;
        // Reverse walk: everything reachable from the user through tuples.
        let mut seen: HashSet<User> = HashSet::new();
        let mut queue = vec![u];
        seen.insert(u);
        if u.rel == NO_REL && u.obj.id() != self.star {
            let w = User {
                obj: Obj::new(u.obj.ty(), self.star),
                rel: NO_REL,
            };
            seen.insert(w);
            queue.push(w);
        }
        let mut candidates: HashSet<Obj> = HashSet::new();
        if u.rel != NO_REL {
            if u.obj.ty() == ty {
                candidates.insert(u.obj);
            }
            // A userset's object leads on (as a tupleset parent, or through
            // its other relations).
            let mut seeds = vec![User {
                obj: u.obj,
                rel: NO_REL,
            }];
            if let Some(ti) = self.model.types.get(&u.obj.ty()) {
                seeds.extend(ti.order.iter().map(|&r| User { obj: u.obj, rel: r }));
            }
            for s in seeds {
                if seen.insert(s) {
                    queue.push(s);
                }
            }
        }
        while let Some(e) = queue.pop() {
            let mut visit = |o: Obj, r: Sym, queue: &mut Vec<User>| {
                if o.ty() == ty {
                    candidates.insert(o);
                }
                for next in [
                    User { obj: o, rel: r },
                    User {
                        obj: o,
                        rel: NO_REL,
                    },
                ] {
                    if seen.insert(next) {
                        queue.push(next);
                    }
                }
                // The object's other relations may be used as usersets.
                if let Some(ti) = self.model.types.get(&o.ty()) {
                    for &r2 in &ti.order {
                        let us = User { obj: o, rel: r2 };
                        if seen.insert(us) {
                            queue.push(us);
                        }
                    }
                }
            };
            for &(o, r) in self.store.objects_of(e) {
                visit(o, r, &mut queue);
            }
            for &(o, r, tu, _) in &cx.tuples {
                if tu == e {
                    visit(o, r, &mut queue);
                }
            }
        }
        let mut out = Vec::new();
        for o in candidates {
            if self.check_interned(&cx, q, o, rel, u)? {
                out.push(format!(
                    "{}:{}",
                    cx.name(self.store, o.ty()),
                    cx.name(self.store, o.id())
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// ListUsers: every user of the filter type (`user`, or usersets like
    /// `group#member`) that has `relation` on `object`, sorted; `type:*`
    /// when a wildcard grants (concrete users are listed only for a path of
    /// their own, as OpenFGA does).
    pub fn list_users(
        &self,
        object: &str,
        relation: &str,
        filter_type: &str,
        filter_relation: Option<&str>,
        q: &Query<'_>,
    ) -> Result<Vec<String>, AuthzError> {
        let mut cx = self.new_cx();
        let (obj, ty_name) = self.object(&mut cx, object)?;
        let rel = self.rel_sym(obj.ty(), ty_name, relation)?;
        let fty = self.type_sym(&cx, filter_type)?;
        let frel = match filter_relation.filter(|r| !r.is_empty()) {
            None => NO_REL,
            Some(r) => self.rel_sym(fty, filter_type, r)?,
        };
        self.add_contextual(&mut cx, q)?;
        let mut x = Expander {
            r: self.resolver(&cx, q, User { obj, rel: NO_REL }),
            fty,
            frel,
        };
        let set = x.expand(obj, rel, 0)?;
        let name = |u: &User| {
            let mut s = format!(
                "{}:{}",
                cx.name(self.store, u.obj.ty()),
                cx.name(self.store, u.obj.id())
            );
            if u.rel != NO_REL {
                s.push('#');
                s.push_str(cx.name(self.store, u.rel));
            }
            s
        };
        let mut out: Vec<String> = set.concrete.iter().map(name).collect();
        if set.wildcard.is_some() && frel == NO_REL {
            out.push(format!("{}:*", cx.name(self.store, fty)));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl Engine<'_> {
    /// Expand: the userset tree of `object#relation`, one level deep, in
    /// OpenFGA's JSON shape (`{"root": {"name", "union"|"intersection"|
    /// "difference"|"leaf"}}`); computed usersets and tuple-to-userset
    /// targets are named, not expanded.
    pub fn expand(&self, object: &str, relation: &str, q: &Query<'_>) -> Result<Value, AuthzError> {
        let mut cx = self.new_cx();
        let (obj, ty_name) = self.object(&mut cx, object)?;
        let rel = self.rel_sym(obj.ty(), ty_name, relation)?;
        self.add_contextual(&mut cx, q)?;
        let ri = self.model.rel(obj.ty(), rel).expect("checked");
        let r = self.resolver(&cx, q, User { obj, rel: NO_REL });
        let name = format!("{object}#{relation}");
        Ok(serde_json::json!({ "root": self.expand_node(&r, &cx, &ri.rw, ri, obj, &name) }))
    }

    fn expand_node(
        &self,
        r: &Resolver<'_>,
        cx: &Contextual,
        rw: &Rw,
        ri: &RelInfo,
        obj: Obj,
        name: &str,
    ) -> Value {
        let s = self.store;
        let obj_name = |o: Obj| format!("{}:{}", cx.name(s, o.ty()), cx.name(s, o.id()));
        let user_name = |u: User| {
            if u.rel == NO_REL {
                obj_name(u.obj)
            } else {
                format!("{}#{}", obj_name(u.obj), cx.name(s, u.rel))
            }
        };
        let nodes = |c: &[Rw]| -> Value {
            Value::Array(
                c.iter()
                    .map(|c| self.expand_node(r, cx, c, ri, obj, name))
                    .collect(),
            )
        };
        let body = match rw {
            Rw::This => {
                let mut users: Vec<String> = r
                    .tuples_of(obj, ri.name)
                    .filter(|(u, c)| self.model.readable(ri, *u, self.star, *c))
                    .map(|(u, _)| user_name(u))
                    .collect();
                users.sort();
                serde_json::json!({"leaf": {"users": {"users": users}}})
            }
            Rw::Computed(c) => {
                serde_json::json!({"leaf": {"computed": {"userset": format!("{}#{}", obj_name(obj), cx.name(s, *c))}}})
            }
            Rw::Ttu { tupleset, computed } => {
                let mut targets: Vec<Value> = match self.model.rel(obj.ty(), *tupleset) {
                    Some(tri) => r
                        .tuples_of(obj, *tupleset)
                        .filter(|(u, c)| self.model.readable(tri, *u, self.star, *c))
                        .filter(|(u, _)| self.model.rel(u.obj.ty(), *computed).is_some())
                        .map(|(u, _)| serde_json::json!({"userset": format!("{}#{}", obj_name(u.obj), cx.name(s, *computed))}))
                        .collect(),
                    None => Vec::new(),
                };
                targets.sort_by_key(|v| v.to_string());
                serde_json::json!({"leaf": {"tupleToUserset": {"tupleset": format!("{}#{}", obj_name(obj), cx.name(s, *tupleset)), "computed": targets}}})
            }
            Rw::Union(c) => serde_json::json!({"union": {"nodes": nodes(c)}}),
            Rw::Inter(c) => serde_json::json!({"intersection": {"nodes": nodes(c)}}),
            Rw::Diff(b, sub) => serde_json::json!({"difference": {
                "base": self.expand_node(r, cx, b, ri, obj, name),
                "subtract": self.expand_node(r, cx, sub, ri, obj, name),
            }}),
        };
        let mut node = serde_json::Map::new();
        node.insert("name".into(), Value::String(name.to_string()));
        if let Value::Object(m) = body {
            node.extend(m);
        }
        Value::Object(node)
    }
}

/// The users of one subtree: concrete users, and maybe "everyone of the
/// type except these".
#[derive(Debug, Default, Clone)]
struct UserSet {
    concrete: HashSet<User>,
    wildcard: Option<HashSet<User>>,
}

impl UserSet {
    fn union(mut self, o: UserSet) -> UserSet {
        self.wildcard = match (self.wildcard.take(), o.wildcard) {
            (Some(a), Some(b)) => Some(a.intersection(&b).copied().collect()),
            (Some(a), None) => Some(a.difference(&o.concrete).copied().collect()),
            (None, Some(b)) => Some(b.difference(&self.concrete).copied().collect()),
            (None, None) => None,
        };
        self.concrete.extend(o.concrete);
        self
    }

    fn intersect(self, o: UserSet) -> UserSet {
        let mut c: HashSet<User> = self.concrete.intersection(&o.concrete).copied().collect();
        if let Some(ex) = &self.wildcard {
            c.extend(o.concrete.iter().filter(|u| !ex.contains(*u)));
        }
        if let Some(ex) = &o.wildcard {
            c.extend(self.concrete.iter().filter(|u| !ex.contains(*u)));
        }
        let wildcard = match (self.wildcard, o.wildcard) {
            (Some(a), Some(b)) => Some(a.union(&b).copied().collect()),
            _ => None,
        };
        UserSet {
            concrete: c,
            wildcard,
        }
    }

    fn minus(self, o: UserSet) -> UserSet {
        match o.wildcard {
            Some(ex_s) => {
                // base ∖ (everyone ∖ ex_s) = base ∩ ex_s
                let mut c: HashSet<User> = self.concrete.intersection(&ex_s).copied().collect();
                if let Some(ex_b) = &self.wildcard {
                    c.extend(ex_s.iter().filter(|u| !ex_b.contains(*u)));
                }
                UserSet {
                    concrete: c,
                    wildcard: None,
                }
            }
            None => UserSet {
                concrete: self.concrete.difference(&o.concrete).copied().collect(),
                wildcard: self.wildcard.map(|mut ex| {
                    ex.extend(o.concrete.iter().copied());
                    ex
                }),
            },
        }
    }
}

/// ListUsers by expansion: the relation's rewrite evaluated as set algebra
/// over the users of the filter type.
struct Expander<'e> {
    r: Resolver<'e>,
    fty: Sym,
    frel: Sym,
}

impl<'e> Expander<'e> {
    fn expand(&mut self, obj: Obj, rel: Sym, depth: u32) -> Result<UserSet, AuthzError> {
        if depth >= MAX_DEPTH {
            return Err(AuthzError::TooComplex);
        }
        let mut set = UserSet::default();
        if self.frel != NO_REL && obj.ty() == self.fty && rel == self.frel {
            set.concrete.insert(User { obj, rel });
        }
        if self.r.path.contains(&(obj, rel)) {
            return Ok(set);
        }
        let m = self.r.m;
        let Some(ri) = m.rel(obj.ty(), rel) else {
            return Ok(set);
        };
        self.r.path.push((obj, rel));
        let out = self.rewrite(&ri.rw, ri, obj, depth);
        self.r.path.pop();
        Ok(set.union(out?))
    }

    fn tuples(&self, obj: Obj, rel: Sym) -> Vec<(User, Option<&'e TupleCond>)> {
        self.r.tuples_of(obj, rel).collect()
    }

    fn rewrite(
        &mut self,
        rw: &Rw,
        ri: &RelInfo,
        obj: Obj,
        depth: u32,
    ) -> Result<UserSet, AuthzError> {
        match rw {
            Rw::This => {
                let mut set = UserSet::default();
                for (u, c) in self.tuples(obj, ri.name) {
                    if !self.r.m.readable(ri, u, self.r.star, c) || !self.r.cond_met(c)? {
                        continue;
                    }
                    if u.rel == NO_REL {
                        if u.obj.ty() == self.fty && self.frel == NO_REL {
                            if u.obj.id() == self.r.star {
                                set.wildcard.get_or_insert_with(HashSet::new);
                            } else {
                                set.concrete.insert(u);
                            }
                        }
                    } else {
                        let sub = self.expand(u.obj, u.rel, depth + 1)?;
                        set = set.union(sub);
                    }
                }
                Ok(set)
            }
            Rw::Computed(r) => self.expand(obj, *r, depth),
            Rw::Ttu { tupleset, computed } => {
                let mut set = UserSet::default();
                let Some(tri) = self.r.m.rel(obj.ty(), *tupleset) else {
                    return Ok(set);
                };
                for (p, c) in self.tuples(obj, *tupleset) {
                    if !self.r.m.readable(tri, p, self.r.star, c) || !self.r.cond_met(c)? {
                        continue;
                    }
                    if self.r.m.rel(p.obj.ty(), *computed).is_none() {
                        continue;
                    }
                    let sub = self.expand(p.obj, *computed, depth + 1)?;
                    set = set.union(sub);
                }
                Ok(set)
            }
            Rw::Union(children) => {
                let mut set = UserSet::default();
                for c in children {
                    set = set.union(self.rewrite(c, ri, obj, depth)?);
                }
                Ok(set)
            }
            Rw::Inter(children) => {
                let mut it = children.iter();
                let mut set = match it.next() {
                    Some(c) => self.rewrite(c, ri, obj, depth)?,
                    None => return Ok(UserSet::default()),
                };
                for c in it {
                    set = set.intersect(self.rewrite(c, ri, obj, depth)?);
                }
                Ok(set)
            }
            Rw::Diff(base, sub) => {
                let b = self.rewrite(base, ri, obj, depth)?;
                let s = self.rewrite(sub, ri, obj, depth)?;
                Ok(b.minus(s))
            }
        }
    }
}

fn user_type_text(user: &str) -> String {
    match split_user(user) {
        Some((t, "*", _)) => format!("{t}:*"),
        Some((t, _, r)) if !r.is_empty() => format!("{t}#{r}"),
        Some((t, _, _)) => t.to_string(),
        None => user.to_string(),
    }
}

impl<'e> Resolver<'e> {
    /// The tuples of `obj#rel`, stored and contextual, with conditions.
    /// The stored users of `obj#rel` (through the last-object cache).
    #[inline]
    fn stored_users(&mut self, obj: Obj, rel: Sym) -> &'e [(User, CondRef)] {
        let rels = match self.last {
            Some((o, rels)) if o == obj => rels,
            _ => {
                let rels = self.s.relations_of(obj);
                self.last = Some((obj, rels));
                rels
            }
        };
        TupleStore::users_in(rels, rel)
    }

    fn tuples_of(
        &self,
        obj: Obj,
        rel: Sym,
    ) -> impl Iterator<Item = (User, Option<&'e TupleCond>)> + 'e {
        Self::with_contextual(self.s, self.cx, self.s.users(obj, rel), obj, rel)
    }

    /// [`Resolver::tuples_of`] through the last-object cache.
    fn tuples_of_cached(
        &mut self,
        obj: Obj,
        rel: Sym,
    ) -> impl Iterator<Item = (User, Option<&'e TupleCond>)> + 'e {
        let stored = self.stored_users(obj, rel);
        Self::with_contextual(self.s, self.cx, stored, obj, rel)
    }

    fn with_contextual(
        s: &'e TupleStore,
        cx: &'e Contextual,
        stored: &'e [(User, CondRef)],
        obj: Obj,
        rel: Sym,
    ) -> impl Iterator<Item = (User, Option<&'e TupleCond>)> + 'e {
        stored
            .iter()
            .map(move |&(u, c)| (u, if c == NO_COND { None } else { s.cond(c) }))
            .chain(
                cx.tuples
                    .iter()
                    .filter(move |(o, r, _, _)| *o == obj && *r == rel)
                    .map(|(_, _, u, c)| (*u, c.as_ref())),
            )
    }

    /// Whether a found tuple counts: readable under the model and its
    /// condition met. A condition error is kept in `err` (it decides only
    /// if nothing else allows).
    fn admit(
        &self,
        ri: &RelInfo,
        u: User,
        c: Option<&TupleCond>,
        err: &mut Option<AuthzError>,
    ) -> bool {
        if !self.m.readable(ri, u, self.star, c) {
            return false;
        }
        match self.cond_met(c) {
            Ok(met) => met,
            Err(e) => {
                *err = Some(e);
                false
            }
        }
    }

    fn resolve(&mut self, obj: Obj, rel: Sym, depth: u32) -> Result<Out, AuthzError> {
        if depth >= MAX_DEPTH {
            return Err(AuthzError::TooComplex);
        }
        if self.path.contains(&(obj, rel)) {
            return Ok(Out::Denied { cycle: true });
        }
        if self.user.obj == obj && self.user.rel == rel {
            return Ok(Out::Allowed);
        }
        let Some(ri) = self.m.rel(obj.ty(), rel) else {
            return Err(AuthzError::RelationNotFound {
                type_name: self.s.syms.name(obj.ty()).to_string(),
                relation: self.s.syms.name(rel).to_string(),
            });
        };
        if !Model::reachable(obj.ty(), ri, self.user) {
            return Ok(DENIED);
        }
        if let Some(&(_, _, _, allowed)) = self
            .memo
            .iter()
            .find(|(o, r, d, _)| *o == obj && *r == rel && depth <= *d)
        {
            return Ok(if allowed { Out::Allowed } else { DENIED });
        }
        self.path.push((obj, rel));
        let r = self.rewrite(&ri.rw, ri, obj, depth);
        self.path.pop();
        match r {
            Ok(Out::Allowed) => self.memo.push((obj, rel, depth, true)),
            Ok(Out::Denied { cycle: false }) => self.memo.push((obj, rel, depth, false)),
            _ => {}
        }
        r
    }

    /// Condition of a found tuple: true, false or an error.
    fn cond_met(&self, c: Option<&TupleCond>) -> Result<bool, AuthzError> {
        let Some(c) = c else { return Ok(true) };
        let Some(cc) = self.m.conditions.get(&c.name) else {
            return Ok(false);
        };
        Ok(cc.evaluate(c.context.as_deref(), self.context)?)
    }

    fn stored_cond(&self, cref: CondRef) -> Option<&TupleCond> {
        if cref == NO_COND {
            None
        } else {
            self.s.cond(cref)
        }
    }

    /// A direct tuple `(obj, rel, user)` from the store or the request:
    /// Some(condition) when present and readable.
    fn find(
        &self,
        ri: &RelInfo,
        obj: Obj,
        user: User,
        list: &[(User, CondRef)],
    ) -> Result<bool, AuthzError> {
        let mut err = None;
        // `list` is the object#relation's users, already fetched: a short
        // one is scanned (contiguous, cheaper than a random probe into the
        // big index).
        let stored = if list.len() <= 48 {
            list.iter().find(|(u, _)| *u == user).map(|&(_, c)| c)
        } else {
            self.s.get(obj, ri.name, user)
        };
        if let Some(cref) = stored {
            let c = self.stored_cond(cref);
            if self.m.readable(ri, user, self.star, c) {
                match self.cond_met(c) {
                    Ok(true) => return Ok(true),
                    Ok(false) => {}
                    Err(e) => err = Some(e),
                }
            }
        }
        for (o, r, u, c) in &self.cx.tuples {
            if *o == obj
                && *r == ri.name
                && *u == user
                && self.m.readable(ri, user, self.star, c.as_ref())
            {
                match self.cond_met(c.as_ref()) {
                    Ok(true) => return Ok(true),
                    Ok(false) => {}
                    Err(e) => err = Some(e),
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    fn rewrite(&mut self, rw: &Rw, ri: &RelInfo, obj: Obj, depth: u32) -> Result<Out, AuthzError> {
        match rw {
            Rw::This => self.this(ri, obj, depth),
            Rw::Computed(r) => self.resolve(obj, *r, depth),
            Rw::Ttu { tupleset, computed } => self.ttu(obj, ri.name, *tupleset, *computed, depth),
            Rw::Union(children) => {
                let mut err = None;
                let mut cycle = false;
                for c in children {
                    match self.rewrite(c, ri, obj, depth) {
                        Ok(Out::Allowed) => return Ok(Out::Allowed),
                        Ok(Out::Denied { cycle: cy }) => cycle |= cy,
                        Err(e) => err = Some(e),
                    }
                }
                match err {
                    Some(e) => Err(e),
                    None => Ok(Out::Denied { cycle }),
                }
            }
            Rw::Inter(children) => {
                let mut err = None;
                for c in children {
                    match self.rewrite(c, ri, obj, depth) {
                        Ok(Out::Allowed) => {}
                        Ok(d @ Out::Denied { .. }) => return Ok(d),
                        Err(e) => {
                            if err.is_none() {
                                err = Some(e)
                            }
                        }
                    }
                }
                match err {
                    Some(e) => Err(e),
                    None => Ok(Out::Allowed),
                }
            }
            Rw::Diff(base, sub) => {
                let b = self.rewrite(base, ri, obj, depth);
                if let Ok(d @ Out::Denied { .. }) = b {
                    return Ok(d);
                }
                let s = self.rewrite(sub, ri, obj, depth);
                match s {
                    Ok(Out::Allowed) => return Ok(DENIED),
                    Ok(Out::Denied { cycle: true }) => return Ok(Out::Denied { cycle: true }),
                    _ => {}
                }
                b?;
                s?;
                Ok(Out::Allowed)
            }
        }
    }

    fn this(&mut self, ri: &RelInfo, obj: Obj, depth: u32) -> Result<Out, AuthzError> {
        let user = self.user;
        let uty = user.obj.ty();
        let mut err = None;
        // One probe: every stored user of object#relation.
        let s = self.s;
        let list = self.stored_users(obj, ri.name);
        // The exact tuple, when the user's type (or userset) is directly
        // related.
        let direct = ri
            .restrictions
            .iter()
            .any(|r| r.ty == uty && !r.wildcard && r.rel == user.rel);
        if direct {
            match self.find(ri, obj, user, list) {
                Ok(true) => return Ok(Out::Allowed),
                Ok(false) => {}
                Err(e) => err = Some(e),
            }
        }
        // The `type:*` tuple, for an object user.
        if user.rel == NO_REL
            && !self.no_public
            && ri.restrictions.iter().any(|r| r.ty == uty && r.wildcard)
        {
            let w = User {
                obj: Obj::new(uty, self.star),
                rel: NO_REL,
            };
            match self.find(ri, obj, w, list) {
                Ok(true) => return Ok(Out::Allowed),
                Ok(false) => {}
                Err(e) => err = Some(e),
            }
        }
        // Userset tuples: expand each.
        let mut cycle = false;
        if ri.restrictions.iter().any(|r| r.rel != NO_REL) {
            let cx = self.cx;
            let stored = list
                .iter()
                .map(|&(u, c)| (u, if c == NO_COND { None } else { s.cond(c) }));
            let extra = cx
                .tuples
                .iter()
                .filter(|(o, r, _, _)| *o == obj && *r == ri.name)
                .map(|(_, _, u, c)| (*u, c.as_ref()));
            for (u, c) in stored.chain(extra) {
                if u.rel == NO_REL || !self.admit(ri, u, c, &mut err) {
                    continue;
                }
                // A relation that expands into itself (`member: [group#member]`)
                // is walked by OpenFGA's recursive resolver, for which
                // meeting an object again is not a cycle, just nothing new.
                let recursive = u.obj.ty() == obj.ty() && u.rel == ri.name;
                match self.resolve(u.obj, u.rel, depth + 1) {
                    Ok(Out::Allowed) => return Ok(Out::Allowed),
                    Ok(Out::Denied { cycle: c }) => cycle |= c && !recursive,
                    Err(e) => err = Some(e),
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(Out::Denied { cycle }),
        }
    }

    fn ttu(
        &mut self,
        obj: Obj,
        rel: Sym,
        tupleset: Sym,
        computed: Sym,
        depth: u32,
    ) -> Result<Out, AuthzError> {
        let Some(tri) = self.m.rel(obj.ty(), tupleset) else {
            return Ok(DENIED);
        };
        let mut err = None;
        let mut cycle = false;
        for (parent, c) in self.tuples_of_cached(obj, tupleset) {
            if !self.admit(tri, parent, c, &mut err) {
                continue;
            }
            if self.m.rel(parent.obj.ty(), computed).is_none() {
                continue;
            }
            // `viewer from parent` inside `viewer` itself: OpenFGA's
            // recursive resolver; an object met again is not a cycle.
            let recursive = parent.obj.ty() == obj.ty() && computed == rel;
            match self.resolve(parent.obj, computed, depth + 1) {
                Ok(Out::Allowed) => return Ok(Out::Allowed),
                Ok(Out::Denied { cycle: c }) => cycle |= c && !recursive,
                Err(e) => err = Some(e),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(Out::Denied { cycle }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{dsl, model::TupleKey, store::Store};

    fn store() -> Store {
        let s = Store::new("s".into(), "s".into(), None);
        let m = dsl::parse(
            "model\n  schema 1.1\ntype user\ntype group\n  relations\n    define member: [user]\ntype folder\n  relations\n    define viewer: [user]\ntype doc\n  relations\n    define parent: [folder]\n    define owner: [user]\n    define blocked: [user]\n    define viewer: ([user, group#member] or owner or viewer from parent) but not blocked\n",
        )
        .unwrap();
        s.add_model(m, false).unwrap();
        let t = |o: &str, r: &str, u: &str| TupleKey::new(o, r, u);
        s.write(
            None,
            &[
                t("doc:1", "viewer", "user:anne"),
                t("doc:1", "viewer", "group:eng#member"),
                t("doc:1", "parent", "folder:a"),
                t("folder:a", "viewer", "user:bob"),
                t("doc:1", "blocked", "user:carl"),
                t("folder:a", "viewer", "user:carl"),
            ],
            &[],
            None,
        )
        .unwrap();
        s
    }

    #[test]
    fn expand_names_one_level_in_openfga_shape() {
        let s = store();
        let tree = s
            .with_engine(None, |e| e.expand("doc:1", "viewer", &Query::default()))
            .unwrap();
        let root = &tree["root"];
        assert_eq!(root["name"], "doc:1#viewer");
        let base = &root["difference"]["base"]["union"]["nodes"];
        assert_eq!(
            base[0]["leaf"]["users"]["users"],
            serde_json::json!(["group:eng#member", "user:anne"])
        );
        assert_eq!(base[1]["leaf"]["computed"]["userset"], "doc:1#owner");
        assert_eq!(
            base[2]["leaf"]["tupleToUserset"]["computed"],
            serde_json::json!([{"userset": "folder:a#viewer"}])
        );
        assert_eq!(
            root["difference"]["subtract"]["leaf"]["computed"]["userset"],
            "doc:1#blocked"
        );
    }

    #[test]
    fn check_many_answers_as_single_checks_do() {
        let s = store();
        let plain = Query::default();
        let extra = [TupleKey::new("group:eng", "member", "user:dan")];
        let with_dan = Query {
            contextual: &extra,
            context: None,
        };
        let bad_extra = [TupleKey::new("group:eng", "nope", "user:dan")];
        let bad = Query {
            contextual: &bad_extra,
            context: None,
        };
        let cases: Vec<(&str, &str, &str, &Query<'_>)> = vec![
            ("doc:1", "viewer", "user:bob", &plain),
            ("doc:1", "viewer", "user:carl", &plain),
            ("doc:1", "viewer", "user:dan", &with_dan),
            ("doc:1", "viewer", "user:dan", &plain),
            ("doc:1", "viewer", "user:bob", &plain),
            ("doc:1", "editor", "user:dan", &plain),
            ("doc:1", "viewer", "nobody", &plain),
            ("doc:1", "viewer", "user:bob", &bad),
            ("doc:404", "viewer", "user:new", &plain),
        ];
        let items: Vec<BatchItem<'_>> = cases
            .iter()
            .map(|&(object, relation, user, q)| BatchItem {
                object,
                relation,
                user,
                q,
            })
            .collect();
        let many = s.with_engine(None, |e| Ok(e.check_many(&items))).unwrap();
        assert_eq!(many.len(), cases.len());
        for ((o, r, u, q), got) in cases.iter().zip(many) {
            let want = s.check(None, o, r, u, q);
            match (want, got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{o}#{r}@{u}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.code(), b.code(), "{o}#{r}@{u}");
                    assert_eq!(a.to_string(), b.to_string(), "{o}#{r}@{u}");
                }
                (a, b) => panic!("{o}#{r}@{u}: single {a:?}, batch {b:?}"),
            }
        }
    }

    #[test]
    fn checks_follow_parents_and_exclusions() {
        let s = store();
        let q = Query::default();
        assert!(s.check(None, "doc:1", "viewer", "user:bob", &q).unwrap());
        assert!(
            !s.check(None, "doc:1", "viewer", "user:carl", &q).unwrap(),
            "blocked"
        );
        assert!(!s.check(None, "doc:1", "viewer", "user:dan", &q).unwrap());
        // Contextual tuples count for this request only.
        let extra = [TupleKey::new("group:eng", "member", "user:dan")];
        let q2 = Query {
            contextual: &extra,
            context: None,
        };
        assert!(s.check(None, "doc:1", "viewer", "user:dan", &q2).unwrap());
        assert!(!s.check(None, "doc:1", "viewer", "user:dan", &q).unwrap());
        let e = s
            .check(None, "doc:1", "editor", "user:dan", &q)
            .unwrap_err();
        assert_eq!(e.code(), 2000, "{e}");
        assert!(e.to_string().contains("doc#editor"), "{e}");
    }
}

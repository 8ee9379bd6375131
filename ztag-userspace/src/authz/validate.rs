//! Semantic validation of an authorization model with OpenFGA's rules; every
//! error names the type, the relation and the reason, in OpenFGA's words
//! where it has them.

use std::collections::{BTreeMap, HashSet};

use super::model::{AuthorizationModel, RelationReference, Userset};

/// Every problem found in a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ModelErrors(pub Vec<String>);

const PARAM_TYPES: &[&str] = &[
    "TYPE_NAME_ANY",
    "TYPE_NAME_BOOL",
    "TYPE_NAME_STRING",
    "TYPE_NAME_INT",
    "TYPE_NAME_UINT",
    "TYPE_NAME_DOUBLE",
    "TYPE_NAME_DURATION",
    "TYPE_NAME_TIMESTAMP",
    "TYPE_NAME_MAP",
    "TYPE_NAME_LIST",
    "TYPE_NAME_IPADDRESS",
];

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 254
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

struct Ctx<'a> {
    m: &'a AuthorizationModel,
    types: BTreeMap<&'a str, usize>,
}

impl<'a> Ctx<'a> {
    fn rel(&self, ty: &str, rel: &str) -> Option<&'a Userset> {
        let td = &self.m.type_definitions[*self.types.get(ty)?];
        td.relations.get(rel)
    }

    fn direct(&self, ty: &str, rel: &str) -> &'a [RelationReference] {
        self.types
            .get(ty)
            .and_then(|&i| self.m.type_definitions[i].metadata.as_ref())
            .and_then(|m| m.relations.get(rel))
            .map_or(&[], |r| r.directly_related_user_types.as_slice())
    }

    /// Can `ty#rel` ever be satisfied by some tuple? `visiting` guards
    /// cycles; `loop_seen` records that one was met.
    fn entry(
        &self,
        ty: &str,
        rel: &str,
        visiting: &mut HashSet<(String, String)>,
        loop_seen: &mut bool,
    ) -> bool {
        let Some(rw) = self.rel(ty, rel) else {
            return false;
        };
        let key = (ty.to_string(), rel.to_string());
        if !visiting.insert(key.clone()) {
            *loop_seen = true;
            return false;
        }
        let r = self.entry_rw(ty, rel, rw, visiting, loop_seen);
        visiting.remove(&key);
        r
    }

    fn entry_rw(
        &self,
        ty: &str,
        rel: &str,
        rw: &Userset,
        visiting: &mut HashSet<(String, String)>,
        loop_seen: &mut bool,
    ) -> bool {
        if rw.this.is_some() {
            return self.direct(ty, rel).iter().any(|r| match &r.relation {
                None => true,
                Some(ur) => self.entry(&r.type_name, ur, visiting, loop_seen),
            });
        }
        if let Some(c) = &rw.computed_userset {
            return self.entry(ty, &c.relation, visiting, loop_seen);
        }
        if let Some(t) = &rw.tuple_to_userset {
            return self.direct(ty, &t.tupleset.relation).iter().any(|r| {
                r.relation.is_none()
                    && self
                        .rel(&r.type_name, &t.computed_userset.relation)
                        .is_some()
                    && self.entry(
                        &r.type_name,
                        &t.computed_userset.relation,
                        visiting,
                        loop_seen,
                    )
            });
        }
        if let Some(u) = &rw.union {
            return u
                .child
                .iter()
                .any(|c| self.entry_rw(ty, rel, c, visiting, loop_seen));
        }
        if let Some(u) = &rw.intersection {
            return u
                .child
                .iter()
                .all(|c| self.entry_rw(ty, rel, c, visiting, loop_seen));
        }
        if let Some(d) = &rw.difference {
            return self.entry_rw(ty, rel, &d.base, visiting, loop_seen);
        }
        false
    }

    fn check_rw(
        &self,
        ty: &str,
        rel: &str,
        rw: &Userset,
        has_this: &mut bool,
        errs: &mut Vec<String>,
    ) {
        let set = [
            rw.this.is_some(),
            rw.computed_userset.is_some(),
            rw.tuple_to_userset.is_some(),
            rw.union.is_some(),
            rw.intersection.is_some(),
            rw.difference.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            errs.push(format!(
                "relation '{ty}#{rel}': a rewrite must set exactly one of this, computedUserset, tupleToUserset, union, intersection, difference"
            ));
            return;
        }
        if rw.this.is_some() {
            *has_this = true;
        } else if let Some(c) = &rw.computed_userset {
            if self.rel(ty, &c.relation).is_none() {
                errs.push(format!(
                    "relation '{ty}#{rel}': the relation `{}` does not exist.",
                    c.relation
                ));
            }
        } else if let Some(t) = &rw.tuple_to_userset {
            let ts = &t.tupleset.relation;
            let cr = &t.computed_userset.relation;
            match self.rel(ty, ts) {
                None => errs.push(format!(
                    "relation '{ty}#{rel}': the relation `{ts}` does not exist."
                )),
                Some(tsrw) => {
                    let direct = self.direct(ty, ts);
                    if tsrw.this.is_none()
                        || direct
                            .iter()
                            .any(|r| r.relation.is_some() || r.wildcard.is_some())
                    {
                        errs.push(format!(
                            "relation '{ty}#{rel}': `{ts}` relation used inside from allows only direct relation."
                        ));
                    }
                    let targets: Vec<&RelationReference> =
                        direct.iter().filter(|r| r.relation.is_none()).collect();
                    if !targets.is_empty()
                        && !targets.iter().any(|r| self.rel(&r.type_name, cr).is_some())
                    {
                        errs.push(format!(
                            "the `{rel}` relation definition on type `{ty}` is not valid: `{cr}` does not exist on `{ts}`, which is of type `{}`.",
                            targets[0].type_name
                        ));
                    }
                }
            }
        } else if let Some(u) = rw.union.as_ref().or(rw.intersection.as_ref()) {
            if u.child.len() < 2 {
                errs.push(format!(
                    "relation '{ty}#{rel}': a union or intersection needs at least two operands"
                ));
            }
            let mut seen = Vec::new();
            for c in &u.child {
                if let Some(prev) = seen.iter().find(|p: &&&Userset| ***p == *c) {
                    let _ = prev;
                    errs.push(format!(
                        "relation '{ty}#{rel}': the partial relation definition `{}` is a duplicate in the relation `{rel}`.",
                        partial_text(c)
                    ));
                }
                seen.push(c);
                self.check_rw(ty, rel, c, has_this, errs);
            }
        } else if let Some(d) = &rw.difference {
            if d.base == d.subtract {
                errs.push(format!(
                    "relation '{ty}#{rel}': the partial relation definition `{}` is a duplicate in the relation `{rel}`.",
                    partial_text(&d.base)
                ));
            }
            self.check_rw(ty, rel, &d.base, has_this, errs);
            self.check_rw(ty, rel, &d.subtract, has_this, errs);
        }
    }
}

fn computed_refs<'a>(rw: &'a Userset, out: &mut Vec<&'a str>) {
    if let Some(c) = &rw.computed_userset {
        out.push(&c.relation);
    }
    for u in rw.union.iter().chain(rw.intersection.iter()) {
        for c in &u.child {
            computed_refs(c, out);
        }
    }
    if let Some(d) = &rw.difference {
        computed_refs(&d.base, out);
        computed_refs(&d.subtract, out);
    }
}

/// Does `ty#rel` reach itself through computed usersets only?
fn computed_cycle(cx: &Ctx<'_>, ty: &str, rel: &str) -> bool {
    let mut stack = vec![rel.to_string()];
    let mut seen = HashSet::new();
    while let Some(r) = stack.pop() {
        let Some(rw) = cx.rel(ty, &r) else { continue };
        let mut refs = Vec::new();
        computed_refs(rw, &mut refs);
        for x in refs {
            if x == rel {
                return true;
            }
            if seen.insert(x.to_string()) {
                stack.push(x.to_string());
            }
        }
    }
    false
}

fn partial_text(u: &Userset) -> String {
    if let Some(c) = &u.computed_userset {
        c.relation.clone()
    } else if let Some(t) = &u.tuple_to_userset {
        format!(
            "{} from {}",
            t.computed_userset.relation, t.tupleset.relation
        )
    } else if u.this.is_some() {
        "[...]".into()
    } else {
        "(...)".into()
    }
}

/// Validate a model; all problems at once.
pub fn validate(m: &AuthorizationModel) -> Result<(), ModelErrors> {
    let mut errs = Vec::new();
    match m.schema_version.as_str() {
        "1.1" | "1.2" => {}
        "" => errs.push("schema version required".into()),
        v => errs.push(format!("invalid schema {v} (ztag supports 1.1)")),
    }
    let mut types = BTreeMap::new();
    for (i, td) in m.type_definitions.iter().enumerate() {
        let t = td.type_name.as_str();
        if t == "self" || t == "this" {
            errs.push(format!(
                "type '{t}': a type cannot be named 'self' or 'this'."
            ));
        } else if !ident_ok(t) {
            errs.push(format!("type '{t}': invalid type name"));
        }
        if types.insert(t, i).is_some() {
            errs.push(format!("the type `{t}` is a duplicate."));
        }
    }
    let cx = Ctx { m, types };
    for (name, c) in &m.conditions {
        if &c.name != name {
            errs.push(format!(
                "condition '{name}': its name field says '{}'",
                c.name
            ));
        }
        if c.expression.trim().is_empty() {
            errs.push(format!("condition '{name}': empty expression"));
        }
        for (p, t) in &c.parameters {
            let mut stack = vec![t];
            while let Some(t) = stack.pop() {
                if !PARAM_TYPES.contains(&t.type_name.as_str()) {
                    errs.push(format!(
                        "condition '{name}': parameter '{p}' has unknown type '{}'",
                        t.type_name
                    ));
                }
                let generic = matches!(t.type_name.as_str(), "TYPE_NAME_MAP" | "TYPE_NAME_LIST");
                if generic != (t.generic_types.len() == 1) {
                    errs.push(format!(
                        "condition '{name}': parameter '{p}': {} takes {} type argument",
                        t.type_name,
                        if generic { "one" } else { "no" }
                    ));
                }
                stack.extend(t.generic_types.iter());
            }
        }
    }
    for td in &m.type_definitions {
        let ty = td.type_name.as_str();
        let meta_rels = td.metadata.as_ref().map(|m| &m.relations);
        for (rel, rw) in &td.relations {
            if rel == "self" || rel == "this" {
                errs.push(format!(
                    "relation '{ty}#{rel}': a relation cannot be named 'self' or 'this'."
                ));
            } else if !ident_ok(rel) || rel.len() > 50 {
                errs.push(format!("relation '{ty}#{rel}': invalid relation name"));
            }
            let mut has_this = false;
            cx.check_rw(ty, rel, rw, &mut has_this, &mut errs);
            let direct = cx.direct(ty, rel);
            if has_this && direct.is_empty() {
                errs.push(format!(
                    "relation '{ty}#{rel}': direct assignment '[...]' needs at least one type restriction"
                ));
            }
            if !has_this && !direct.is_empty() {
                errs.push(format!(
                    "relation '{ty}#{rel}': type restrictions are given but the relation is not directly assignable"
                ));
            }
            let mut seen: Vec<&RelationReference> = Vec::new();
            for r in direct {
                let shown = match (&r.relation, &r.wildcard) {
                    (Some(x), _) => format!("{}#{x}", r.type_name),
                    (None, Some(_)) => format!("{}:*", r.type_name),
                    _ => r.type_name.clone(),
                };
                if seen.iter().any(|s| {
                    s.type_name == r.type_name
                        && s.relation == r.relation
                        && s.wildcard.is_some() == r.wildcard.is_some()
                        && s.condition == r.condition
                }) {
                    errs.push(format!(
                        "relation '{ty}#{rel}': the type restriction `{shown}` is a duplicate in the relation `{rel}`."
                    ));
                }
                seen.push(r);
                if r.relation.is_some() && r.wildcard.is_some() {
                    errs.push(format!(
                        "relation '{ty}#{rel}': `{shown}` cannot be both a wildcard and a userset"
                    ));
                }
                if !cx.types.contains_key(r.type_name.as_str()) {
                    errs.push(format!(
                        "relation '{ty}#{rel}': `{}` is not a valid type.",
                        r.type_name
                    ));
                } else if let Some(ur) = &r.relation
                    && cx.rel(&r.type_name, ur).is_none()
                {
                    errs.push(format!(
                        "relation '{ty}#{rel}': `{ur}` is not a valid relation for `{}`.",
                        r.type_name
                    ));
                }
                if !r.condition.is_empty() && !m.conditions.contains_key(&r.condition) {
                    errs.push(format!(
                        "relation '{ty}#{rel}': `{}` is not a defined condition in the model.",
                        r.condition
                    ));
                }
            }
        }
        if let Some(mr) = meta_rels {
            for name in mr.keys() {
                if !td.relations.contains_key(name) {
                    errs.push(format!(
                        "type '{ty}': metadata names relation '{name}' that is not defined"
                    ));
                }
            }
        }
    }
    for name in m.conditions.keys() {
        let used = m.type_definitions.iter().any(|td| {
            td.metadata.as_ref().is_some_and(|md| {
                md.relations.values().any(|r| {
                    r.directly_related_user_types
                        .iter()
                        .any(|x| &x.condition == name)
                })
            })
        });
        if !used {
            errs.push(format!("`{name}` condition is not used in the model."));
        }
    }
    // Loops through computed usersets alone (no tuple in between) can never
    // resolve: OpenFGA refuses them as "potential loop".
    if errs.is_empty() {
        for td in &m.type_definitions {
            for rel in td.relations.keys() {
                if computed_cycle(&cx, &td.type_name, rel) {
                    errs.push(format!(
                        "`{rel}` is an impossible relation for `{}` (potential loop).",
                        td.type_name
                    ));
                }
            }
        }
    }
    // Entry points, once the references are known to resolve.
    if errs.is_empty() {
        for td in &m.type_definitions {
            for rel in td.relations.keys() {
                let mut loop_seen = false;
                if !cx.entry(&td.type_name, rel, &mut HashSet::new(), &mut loop_seen) {
                    errs.push(format!(
                        "`{rel}` is an impossible relation for `{}` ({}).",
                        td.type_name,
                        if loop_seen {
                            "potential loop"
                        } else {
                            "no entrypoint"
                        }
                    ));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ModelErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::dsl::parse;

    fn errors(dsl: &str) -> Vec<String> {
        match parse(dsl) {
            Err(e) => vec![e.to_string()],
            Ok(m) => validate(&m).err().map(|e| e.0).unwrap_or_default(),
        }
    }

    #[test]
    fn invalid_models_name_type_relation_and_reason() {
        let e =
            errors("model\n  schema 1.1\ntype user\ntype doc\n  relations\n    define v: [usr]\n");
        assert!(
            e[0].contains("doc#v") && e[0].contains("`usr` is not a valid type"),
            "{e:?}"
        );
        let e = errors(
            "model\n  schema 1.1\ntype doc\n  relations\n    define a: b\n    define b: a\n",
        );
        assert!(
            e.iter()
                .any(|x| x.contains("`a` is an impossible relation for `doc`")),
            "{e:?}"
        );
        let e = errors(
            "model\n  schema 1.1\ntype user\ntype doc\n  relations\n    define p: [user]\n    define v: x from p\n",
        );
        assert!(e[0].contains("`x` does not exist on `p`"), "{e:?}");
        let e = errors(
            "model\n  schema 1.1\ntype user\ntype doc\n  relations\n    define v: [user with c]\n",
        );
        assert!(e[0].contains("`c` is not a defined condition"), "{e:?}");
        assert!(
            errors("model\n  schema 1.1\ntype user\ntype doc\n  relations\n    define v: [user]\n")
                .is_empty()
        );
    }

    #[test]
    fn semantic_cases_are_refused_as_openfga_does() {
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            dsl: String,
            #[serde(default)]
            expected_errors: Option<Vec<serde_yaml_ng::Value>>,
        }
        let p = crate::authz::shared_data()
            .join("openfga/language-dsl/dsl-semantic-validation-cases.yaml");
        let cases: Vec<Case> =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        // OpenFGA's language validator accepts these, but its server refuses
        // them (`HasCycle`: a relation that reaches itself through computed
        // usersets); ztag follows the server, which is what answers checks.
        let server_refuses = [
            "union does not require all child to have entry",
            "union does not require all child to have entry even for intersection child",
            "union does not require all child to have entry even for exclusion child",
        ];
        let mut wrong = Vec::new();
        for c in &cases {
            let refused = c.expected_errors.as_ref().is_some_and(|e| !e.is_empty())
                || server_refuses.contains(&c.name.as_str());
            let e = errors(&c.dsl);
            if e.is_empty() == refused {
                wrong.push(format!(
                    "{}: expected {}, got {e:?}",
                    c.name,
                    if refused { "errors" } else { "ok" }
                ));
            }
        }
        for w in &wrong {
            eprintln!("WRONG {w}");
        }
        eprintln!(
            "semantic cases: {} / {} as expected",
            cases.len() - wrong.len(),
            cases.len()
        );
        assert!(wrong.is_empty());
    }
}

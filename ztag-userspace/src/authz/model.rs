//! The authorization model and tuple types in OpenFGA's JSON form
//! (`openfga.v1.AuthorizationModel`, `TupleKey`), as the API, the CLI and
//! `.fga.yaml` test files carry them. The DSL parser (`dsl.rs`) produces an
//! [`AuthorizationModel`]; `validate.rs` checks it; the engine compiles a
//! validated one into its own indexed form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An authorization model (schema 1.1).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AuthorizationModel {
    /// Model id (a ULID) once stored; empty before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Always "1.1" for the models ztag accepts.
    pub schema_version: String,
    /// Types in declaration order.
    #[serde(default)]
    pub type_definitions: Vec<TypeDefinition>,
    /// Conditions by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, Condition>,
}

/// One `type` block.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TypeDefinition {
    /// Type name, e.g. "document".
    #[serde(rename = "type")]
    pub type_name: String,
    /// Relation rewrites by relation name.
    #[serde(default)]
    pub relations: BTreeMap<String, Userset>,
    /// Type restrictions of the relations; `None` for a type without relations.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// Type metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// Per relation: which user types may be written directly.
    #[serde(default)]
    pub relations: BTreeMap<String, RelationMetadata>,
    /// Module name (modular models); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// Source file (modular models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_info: Option<SourceInfo>,
}

/// Where a type or relation was declared (modular models).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceInfo {
    /// File name.
    #[serde(default)]
    pub file: String,
}

/// Metadata of one relation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RelationMetadata {
    /// The type restrictions `[user, group#member, user:*, user with cond]`.
    #[serde(default)]
    pub directly_related_user_types: Vec<RelationReference>,
    /// Module name (modular models).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// Source file (modular models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_info: Option<SourceInfo>,
}

/// One type restriction: `user`, `group#member`, `user:*`, `user with cond`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RelationReference {
    /// The user's type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `group#member`: the relation; `None` for a plain type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// `user:*`: present (as `{}` in JSON) for a wildcard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<Wildcard>,
    /// `with cond`: the condition's name; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub condition: String,
}

/// The `{}` that marks a wildcard restriction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wildcard {}

/// A relation rewrite (OpenFGA's `Userset`): exactly one field is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Userset {
    /// Direct assignment (`[...]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this: Option<DirectUserset>,
    /// Another relation of the same object.
    #[serde(
        default,
        rename = "computedUserset",
        alias = "computed_userset",
        skip_serializing_if = "Option::is_none"
    )]
    pub computed_userset: Option<ObjectRelation>,
    /// `relation from tupleset`.
    #[serde(
        default,
        rename = "tupleToUserset",
        alias = "tuple_to_userset",
        skip_serializing_if = "Option::is_none"
    )]
    pub tuple_to_userset: Option<TupleToUserset>,
    /// `a or b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub union: Option<Usersets>,
    /// `a and b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intersection: Option<Usersets>,
    /// `a but not b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difference: Option<Box<Difference>>,
}

/// The `{}` of `this`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectUserset {}

/// `{object, relation}`; `object` is empty in models.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectRelation {
    /// Unused in models (always empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// Relation name.
    #[serde(default)]
    pub relation: String,
}

/// `computed from tupleset`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TupleToUserset {
    /// The relation whose tuples name the parent objects.
    pub tupleset: ObjectRelation,
    /// The relation checked on each parent.
    #[serde(rename = "computedUserset", alias = "computed_userset")]
    pub computed_userset: ObjectRelation,
}

/// Children of a union or intersection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usersets {
    /// The operands, in order.
    #[serde(default)]
    pub child: Vec<Userset>,
}

/// `base but not subtract`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Difference {
    /// What grants.
    pub base: Userset,
    /// What takes away.
    pub subtract: Userset,
}

/// A condition: a CEL expression over typed parameters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Condition {
    /// Its name (same as the map key).
    pub name: String,
    /// CEL source.
    pub expression: String,
    /// Parameter types by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, ConditionParamTypeRef>,
}

/// A parameter type: `TYPE_NAME_INT`, `TYPE_NAME_LIST` + generic, ...
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConditionParamTypeRef {
    /// `TYPE_NAME_ANY`, `_BOOL`, `_STRING`, `_INT`, `_UINT`, `_DOUBLE`,
    /// `_DURATION`, `_TIMESTAMP`, `_MAP`, `_LIST`, `_IPADDRESS`.
    pub type_name: String,
    /// Element type of a list or map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generic_types: Vec<ConditionParamTypeRef>,
}

/// A relationship tuple as the API carries it: `user` is `type:id`,
/// `type:*` or `type:id#relation`; `object` is `type:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct TupleKey {
    /// `type:id`.
    pub object: String,
    /// Relation name.
    pub relation: String,
    /// `type:id`, `type:*` or `type:id#relation`.
    pub user: String,
    /// Optional condition on the tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<RelationshipCondition>,
}

/// A tuple's condition: the name and the context stored with the tuple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct RelationshipCondition {
    /// Condition name from the model.
    pub name: String,
    /// Stored parameter values (a JSON object), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<JsonObject>,
}

/// A JSON object with a total order and hash (by its canonical text), so
/// that tuples can sit in sets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonObject(pub serde_json::Map<String, serde_json::Value>);

impl std::hash::Hash for JsonObject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        serde_json::to_string(&self.0)
            .unwrap_or_default()
            .hash(state)
    }
}

impl PartialOrd for JsonObject {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for JsonObject {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let a = serde_json::to_string(&self.0).unwrap_or_default();
        let b = serde_json::to_string(&other.0).unwrap_or_default();
        a.cmp(&b)
    }
}

impl TupleKey {
    /// A tuple without a condition.
    pub fn new(object: &str, relation: &str, user: &str) -> TupleKey {
        TupleKey {
            object: object.to_string(),
            relation: relation.to_string(),
            user: user.to_string(),
            condition: None,
        }
    }
}

impl std::fmt::Display for TupleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}@{}", self.object, self.relation, self.user)?;
        if let Some(c) = &self.condition {
            write!(f, " (condition {})", c.name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openfga_json_round_trips() {
        let p = crate::authz::shared_data()
            .join("openfga/language-dsl/transformer/91-gdrive/authorization-model.json");
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (set ZTAG_SHARED_DATA)", p.display()));
        let m: AuthorizationModel = serde_json::from_str(&text).unwrap();
        assert_eq!(m.schema_version, "1.1");
        let folder = m
            .type_definitions
            .iter()
            .find(|t| t.type_name == "folder")
            .unwrap();
        let viewer = &folder.relations["viewer"];
        let u = viewer.union.as_ref().unwrap();
        assert!(u.child[0].this.is_some());
        assert_eq!(
            u.child[1].computed_userset.as_ref().unwrap().relation,
            "owner"
        );
        let ttu = u.child[2].tuple_to_userset.as_ref().unwrap();
        assert_eq!(ttu.tupleset.relation, "parent");
        let meta = &folder.metadata.as_ref().unwrap().relations["viewer"];
        assert!(meta.directly_related_user_types[1].wildcard.is_some());
        let back: AuthorizationModel =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}

//! OpenFGA's HTTP API (v1) over the embedded stores, for the admin listeners:
//! stores, authorization models, write/read tuples, changes, check,
//! batch-check, list-objects and list-users, with OpenFGA's request and
//! response shapes so that its SDKs and CLI can manage ztag's stores.
//! `POST /stores/{id}/import` (JSON lines body) is ztag's bulk import.

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    engine::{self, AuthzError, Query},
    model::{AuthorizationModel, TupleKey},
    service::Authz,
    store::{MAX_TUPLES_PER_WRITE, Store, StoreError},
};

/// An API answer: HTTP status and JSON body (`None`: empty body).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Option<Value>,
}

fn ok(v: Value) -> Answer {
    Answer {
        status: 200,
        body: Some(v),
    }
}

fn error_name(code: u32) -> &'static str {
    match code {
        2001 => "authorization_model_not_found",
        2002 => "authorization_model_resolution_too_complex",
        2011 => "store_id_not_found",
        2017 => "write_failed_due_to_invalid_input",
        2021 => "type_not_found",
        2022 => "relation_not_found",
        2027 => "invalid_tuple",
        _ => "validation_error",
    }
}

fn fail(e: StoreError) -> Answer {
    let code = e.code();
    let status = match code {
        2011 => 404,
        c if c >= 4000 => 500,
        _ => 400,
    };
    let message = if status == 500 {
        tracing::warn!(error = %e, "FGA API: internal error");
        "internal error".to_string()
    } else {
        e.to_string()
    };
    Answer {
        status,
        body: Some(
            json!({"code": if status == 500 { "internal_error" } else { error_name(code) }, "message": message}),
        ),
    }
}

fn bad(msg: impl Into<String>) -> Answer {
    Answer {
        status: 400,
        body: Some(json!({"code": "validation_error", "message": msg.into()})),
    }
}

fn not_found(what: &str) -> Answer {
    Answer {
        status: 404,
        body: Some(
            json!({"code": "undefined_endpoint", "message": format!("no such endpoint: {what}")}),
        ),
    }
}

fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

/// OpenFGA's clients send `null` for empty lists.
#[derive(Deserialize, Default)]
struct TupleKeys {
    #[serde(default)]
    tuple_keys: Option<Vec<TupleKey>>,
}

#[derive(Deserialize)]
struct CheckKey {
    user: String,
    relation: String,
    object: String,
}

#[derive(Deserialize)]
struct CheckBody {
    tuple_key: CheckKey,
    #[serde(default)]
    contextual_tuples: Option<TupleKeys>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct BatchItem {
    tuple_key: CheckKey,
    #[serde(default)]
    contextual_tuples: Option<TupleKeys>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    correlation_id: String,
}

#[derive(Deserialize)]
struct BatchBody {
    checks: Vec<BatchItem>,
    #[serde(default)]
    authorization_model_id: Option<String>,
}

#[derive(Deserialize)]
struct WriteBody {
    #[serde(default)]
    writes: Option<TupleKeys>,
    #[serde(default)]
    deletes: Option<TupleKeys>,
    #[serde(default)]
    authorization_model_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct ReadKey {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    relation: Option<String>,
    #[serde(default)]
    object: Option<String>,
}

#[derive(Deserialize)]
struct ReadBody {
    #[serde(default)]
    tuple_key: Option<ReadKey>,
    #[serde(default)]
    page_size: Option<usize>,
    #[serde(default)]
    continuation_token: Option<String>,
}

#[derive(Deserialize)]
struct ListObjectsBody {
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(rename = "type")]
    object_type: String,
    relation: String,
    user: String,
    #[serde(default)]
    contextual_tuples: Option<TupleKeys>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct ObjRef {
    #[serde(rename = "type")]
    object_type: String,
    id: String,
}

#[derive(Deserialize)]
struct UserFilter {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    relation: Option<String>,
}

#[derive(Deserialize)]
struct ListUsersBody {
    #[serde(default)]
    authorization_model_id: Option<String>,
    object: ObjRef,
    relation: String,
    user_filters: Vec<UserFilter>,
    #[serde(default)]
    contextual_tuples: Option<Vec<TupleKey>>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct CreateStore {
    name: String,
}

fn store_json(s: &Store) -> Value {
    let created = rfc3339_ms(s.created_at_ms);
    json!({"id": s.id, "name": s.name, "created_at": created, "updated_at": created})
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Serve one request. `path` starts with `/stores`; `query` is the raw
/// query string.
pub fn handle(authz: &Authz, method: &str, path: &str, query: &str, body: &[u8]) -> Answer {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        ("POST", ["stores"]) => {
            let b: CreateStore = match parse(body) {
                Ok(b) => b,
                Err(a) => return a,
            };
            if b.name.trim().is_empty() || b.name.len() > 64 {
                return bad("store name must be 1-64 characters");
            }
            match authz.create_store(&b.name) {
                Ok(s) => Answer {
                    status: 201,
                    body: Some(store_json(&s)),
                },
                Err(e) => fail(e),
            }
        }
        ("GET", ["stores"]) => {
            let stores: Vec<Value> = authz.stores().iter().map(|s| store_json(s)).collect();
            ok(json!({"stores": stores, "continuation_token": ""}))
        }
        (m, ["stores", id, rest @ ..]) => {
            let Some(store) = authz.store(id) else {
                return fail(StoreError::StoreNotFound(id.to_string()));
            };
            store_endpoint(authz, &store, m, rest, query, body)
        }
        _ => not_found(path),
    }
}

fn contextual(t: &Option<TupleKeys>) -> &[TupleKey] {
    t.as_ref()
        .and_then(|t| t.tuple_keys.as_deref())
        .unwrap_or(&[])
}

fn store_endpoint(
    authz: &Authz,
    store: &Store,
    method: &str,
    rest: &[&str],
    query: &str,
    body: &[u8],
) -> Answer {
    macro_rules! body {
        ($t:ty) => {
            match parse::<$t>(body) {
                Ok(b) => b,
                Err(a) => return a,
            }
        };
    }
    match (method, rest) {
        ("GET", []) => ok(store_json(store)),
        ("DELETE", []) => match authz.delete_store(&store.id) {
            Ok(()) => Answer {
                status: 204,
                body: None,
            },
            Err(e) => fail(e),
        },
        ("POST", ["authorization-models"]) => {
            let mut m: AuthorizationModel = body!(AuthorizationModel);
            m.id.clear();
            match store.add_model(m, true) {
                Ok(id) => Answer {
                    status: 201,
                    body: Some(json!({"authorization_model_id": id})),
                },
                Err(e) => fail(e),
            }
        }
        ("GET", ["authorization-models"]) => {
            let models: Vec<Value> = store
                .model_ids()
                .iter()
                .filter_map(|id| store.model(Some(id)).ok())
                .map(|m| serde_json::to_value(&m.source).unwrap_or(Value::Null))
                .collect();
            ok(json!({"authorization_models": models, "continuation_token": ""}))
        }
        ("GET", ["authorization-models", id]) => match store.model(Some(id)) {
            Ok(m) => ok(json!({"authorization_model": m.source})),
            Err(e) => fail(e),
        },
        ("POST", ["write"]) => {
            let b = body!(WriteBody);
            let writes = contextual(&b.writes);
            let deletes = contextual(&b.deletes);
            match store.write(
                b.authorization_model_id.as_deref(),
                writes,
                deletes,
                Some(MAX_TUPLES_PER_WRITE),
            ) {
                Ok(()) => ok(json!({})),
                Err(e) => fail(e),
            }
        }
        ("POST", ["read"]) => {
            let b = body!(ReadBody);
            let k = b.tuple_key.unwrap_or_default();
            let page = b.page_size.unwrap_or(50).clamp(1, 100);
            let res = match authz.db() {
                Some(db) => {
                    let db = db.lock().unwrap_or_else(|p| p.into_inner());
                    db.read(
                        &store.id,
                        k.object.as_deref(),
                        k.relation.as_deref(),
                        k.user.as_deref(),
                        page,
                        b.continuation_token.as_deref(),
                    )
                    .map_err(StoreError::from)
                }
                None => Ok((
                    store
                        .read_tuples(
                            k.object.as_deref(),
                            k.relation.as_deref(),
                            k.user.as_deref(),
                        )
                        .into_iter()
                        .map(|t| (t, 0))
                        .collect(),
                    None,
                )),
            };
            match res {
                Ok((tuples, token)) => {
                    let tuples: Vec<Value> = tuples
                        .into_iter()
                        .map(|(k, at)| json!({"key": k, "timestamp": rfc3339_ms(at)}))
                        .collect();
                    ok(json!({"tuples": tuples, "continuation_token": token.unwrap_or_default()}))
                }
                Err(e) => fail(e),
            }
        }
        ("GET", ["changes"]) => {
            let Some(db) = authz.db() else {
                return ok(json!({"changes": [], "continuation_token": ""}));
            };
            let page = query_param(query, "page_size")
                .and_then(|p| p.parse().ok())
                .unwrap_or(50usize)
                .clamp(1, 100);
            let ty = query_param(query, "type");
            let token = query_param(query, "continuation_token");
            let db = db.lock().unwrap_or_else(|p| p.into_inner());
            match db.read_changes(&store.id, ty.as_deref(), page, token.as_deref()) {
                Ok((changes, token)) => {
                    let changes: Vec<Value> = changes
                        .into_iter()
                        .map(|c| {
                            json!({
                                "tuple_key": c.tuple,
                                "operation": if c.operation == "write" { "TUPLE_OPERATION_WRITE" } else { "TUPLE_OPERATION_DELETE" },
                                "timestamp": rfc3339_ms(c.timestamp_ms),
                            })
                        })
                        .collect();
                    ok(json!({"changes": changes, "continuation_token": token.unwrap_or_default()}))
                }
                Err(e) => fail(e.into()),
            }
        }
        ("POST", ["check"]) => {
            let b = body!(CheckBody);
            let q = Query {
                contextual: contextual(&b.contextual_tuples),
                context: b.context.as_ref(),
            };
            let k = &b.tuple_key;
            match store.check(
                b.authorization_model_id.as_deref(),
                &k.object,
                &k.relation,
                &k.user,
                &q,
            ) {
                Ok(allowed) => ok(json!({"allowed": allowed, "resolution": ""})),
                Err(e) => fail(e),
            }
        }
        ("POST", ["batch-check"]) => {
            let b = body!(BatchBody);
            if b.checks.is_empty() || b.checks.len() > 50 {
                return bad("batch-check takes 1 to 50 checks");
            }
            let mut result = BTreeMap::new();
            let r = store.with_engine(b.authorization_model_id.as_deref(), |e| {
                let queries: Vec<Query<'_>> = b
                    .checks
                    .iter()
                    .map(|c| Query {
                        contextual: contextual(&c.contextual_tuples),
                        context: c.context.as_ref(),
                    })
                    .collect();
                let items: Vec<engine::BatchItem<'_>> = b
                    .checks
                    .iter()
                    .zip(&queries)
                    .map(|(c, q)| engine::BatchItem {
                        object: &c.tuple_key.object,
                        relation: &c.tuple_key.relation,
                        user: &c.tuple_key.user,
                        q,
                    })
                    .collect();
                for (c, answer) in b.checks.iter().zip(e.check_many(&items)) {
                    let v = match answer {
                        Ok(allowed) => json!({"allowed": allowed}),
                        Err(err) => json!({"error": {"input_error": error_name(err.code()), "message": err.to_string()}}),
                    };
                    result.insert(c.correlation_id.clone(), v);
                }
                Ok::<_, AuthzError>(())
            });
            match r {
                Ok(()) => ok(json!({"result": result})),
                Err(e) => fail(e),
            }
        }
        ("POST", ["list-objects"]) => {
            let b = body!(ListObjectsBody);
            let q = Query {
                contextual: contextual(&b.contextual_tuples),
                context: b.context.as_ref(),
            };
            match store.with_engine(b.authorization_model_id.as_deref(), |e| {
                e.list_objects(&b.object_type, &b.relation, &b.user, &q)
            }) {
                Ok(objects) => ok(json!({"objects": objects})),
                Err(e) => fail(e),
            }
        }
        ("POST", ["list-users"]) => {
            let b = body!(ListUsersBody);
            let ctx_tuples = b.contextual_tuples.unwrap_or_default();
            let q = Query {
                contextual: &ctx_tuples,
                context: b.context.as_ref(),
            };
            let object = format!("{}:{}", b.object.object_type, b.object.id);
            let mut users = Vec::new();
            for f in &b.user_filters {
                match store.with_engine(b.authorization_model_id.as_deref(), |e| {
                    e.list_users(
                        &object,
                        &b.relation,
                        &f.type_name,
                        f.relation.as_deref(),
                        &q,
                    )
                }) {
                    Ok(list) => users.extend(list),
                    Err(e) => return fail(e),
                }
            }
            users.sort();
            users.dedup();
            let users: Vec<Value> = users.iter().map(|u| user_json(u)).collect();
            ok(json!({"users": users}))
        }
        ("POST", ["expand"]) => {
            #[derive(Deserialize)]
            struct ExpandKey {
                relation: String,
                object: String,
            }
            #[derive(Deserialize)]
            struct ExpandBody {
                tuple_key: ExpandKey,
                #[serde(default)]
                authorization_model_id: Option<String>,
                #[serde(default)]
                contextual_tuples: Option<TupleKeys>,
            }
            let b = body!(ExpandBody);
            let q = Query {
                contextual: contextual(&b.contextual_tuples),
                context: None,
            };
            match store.with_engine(b.authorization_model_id.as_deref(), |e| {
                e.expand(&b.tuple_key.object, &b.tuple_key.relation, &q)
            }) {
                Ok(tree) => ok(json!({ "tree": tree })),
                Err(e) => fail(e),
            }
        }
        ("POST", ["import"]) => {
            let text = String::from_utf8_lossy(body);
            let tuples = match super::testfile::parse_tuples(&text, "jsonl") {
                Ok(t) => t,
                Err(e) => return bad(format!("import: {e}")),
            };
            match store.import(tuples) {
                Ok((written, skipped)) => ok(json!({"written": written, "skipped": skipped})),
                Err(e) => fail(e),
            }
        }
        _ => not_found(&format!("{method} /stores/{}/{}", store.id, rest.join("/"))),
    }
}

/// `user:anne` → `{object: {type, id}}`, `group:x#member` → `{userset}`,
/// `user:*` → `{wildcard}`.
fn user_json(u: &str) -> Value {
    let (obj, rel) = match u.rsplit_once('#') {
        Some((o, r)) => (o, Some(r)),
        None => (u, None),
    };
    let (ty, id) = obj.split_once(':').unwrap_or((obj, ""));
    match (id, rel) {
        ("*", _) => json!({"wildcard": {"type": ty}}),
        (_, Some(r)) => json!({"userset": {"type": ty, "id": id, "relation": r}}),
        _ => json!({"object": {"type": ty, "id": id}}),
    }
}

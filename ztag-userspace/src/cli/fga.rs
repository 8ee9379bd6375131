//! `ztag fga ...`: manage the daemon's FGA stores through the admin socket
//! (OpenFGA's API paths), and `ztag fga test` (local, no daemon).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use crate::{
    admin::client::AdminClient,
    authz::{
        dsl,
        model::{AuthorizationModel, JsonObject, RelationshipCondition, TupleKey},
        testfile,
    },
};

/// `ztag fga` subcommands.
#[derive(Debug, Subcommand)]
pub enum FgaCmd {
    /// Stores: list, create, delete.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Authorization models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Relationship tuples.
    #[command(subcommand)]
    Tuple(TupleCmd),
    /// May USER have RELATION on OBJECT? Prints allowed/denied; exit status
    /// 0 when allowed, 1 when denied.
    Check {
        /// e.g. user:anne
        user: String,
        /// e.g. viewer
        relation: String,
        /// e.g. document:roadmap
        object: String,
        /// Condition context, a JSON object.
        #[arg(long)]
        context: Option<String>,
        /// A contextual tuple "USER RELATION OBJECT" (repeatable).
        #[arg(long = "contextual-tuple")]
        contextual: Vec<String>,
    },
    /// Objects of TYPE on which USER has RELATION.
    ListObjects {
        /// e.g. user:anne
        user: String,
        /// e.g. viewer
        relation: String,
        /// e.g. document
        object_type: String,
        /// Condition context, a JSON object.
        #[arg(long)]
        context: Option<String>,
    },
    /// Users (of the filter types) that have RELATION on OBJECT.
    ListUsers {
        /// e.g. document:roadmap
        object: String,
        /// e.g. viewer
        relation: String,
        /// User type, or userset type#relation (repeatable; default: user).
        #[arg(long = "filter", default_value = "user")]
        filters: Vec<String>,
        /// Condition context, a JSON object.
        #[arg(long)]
        context: Option<String>,
    },
    /// Bulk-load tuples from a file: CSV (OpenFGA's columns user_type,
    /// user_id, user_relation, relation, object_type, object_id,
    /// condition_name, condition_context), JSON lines, JSON or YAML.
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Run a model test file in the format of `fga model test`
    /// (FILE.fga.yaml) against the embedded engine, locally; prints every
    /// failure and a summary; exit status 1 on any failure.
    Test {
        /// The test file(s).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `ztag fga store`.
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// List stores.
    List,
    /// Create a store.
    Create {
        /// Its name.
        name: String,
    },
    /// Delete a store (by id or name) with its models and tuples.
    Delete {
        /// Id or name.
        store: String,
    },
}

/// `ztag fga model`.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Write a model (.fga DSL, .json, or an fga.mod manifest) as the
    /// store's latest.
    Write {
        /// The model file.
        file: PathBuf,
    },
    /// Print a model (the latest by default) as DSL, or JSON with --json.
    Get {
        /// Model id.
        #[arg(long)]
        id: Option<String>,
        /// Print OpenFGA's JSON form.
        #[arg(long)]
        json: bool,
    },
    /// List model ids, newest first.
    List,
}

/// `ztag fga tuple`.
#[derive(Debug, Subcommand)]
pub enum TupleCmd {
    /// Write one tuple.
    Write {
        /// e.g. user:anne, user:*, group:eng#member
        user: String,
        /// e.g. viewer
        relation: String,
        /// e.g. document:roadmap
        object: String,
        /// Condition name.
        #[arg(long)]
        condition: Option<String>,
        /// Condition context stored with the tuple, a JSON object.
        #[arg(long, requires = "condition")]
        context: Option<String>,
    },
    /// Delete one tuple.
    Delete {
        /// User.
        user: String,
        /// Relation.
        relation: String,
        /// Object.
        object: String,
    },
    /// Read tuples (filters are optional; an object may be `type:` for a
    /// whole type).
    Read {
        /// User filter.
        #[arg(long)]
        user: Option<String>,
        /// Relation filter.
        #[arg(long)]
        relation: Option<String>,
        /// Object filter.
        #[arg(long)]
        object: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn context_arg(s: &Option<String>) -> Result<Option<serde_json::Map<String, Value>>> {
    match s {
        None => Ok(None),
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) => bail!("--context must be a JSON object, e.g. '{{\"ip\": \"10.0.0.1\"}}'"),
            Err(e) => bail!("--context is not JSON: {e}"),
        },
    }
}

async fn call(client: &AdminClient, method: Method, path: &str, body: Value) -> Result<Value> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(&body)?)
    };
    let b = client.call(method, path, body).await?;
    if b.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&b).context("the daemon's answer is not JSON")
}

/// The id of the store named (or with the id) `store`.
async fn store_id(client: &AdminClient, store: &str) -> Result<String> {
    let v = call(client, Method::GET, "/stores", Value::Null).await?;
    let stores = v["stores"].as_array().cloned().unwrap_or_default();
    for s in &stores {
        if s["id"] == store || s["name"] == store {
            return Ok(s["id"].as_str().unwrap_or_default().to_string());
        }
    }
    let names: Vec<String> = stores
        .iter()
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect();
    bail!(
        "no FGA store named {store:?} (stores: {}); create one with `ztag fga store create NAME`",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

/// Run one `ztag fga` command; `store` is `--store`.
pub async fn run(client: &AdminClient, store: &str, cmd: FgaCmd) -> Result<()> {
    if let FgaCmd::Test { files } = &cmd {
        let mut failed = 0;
        let mut passed = 0;
        for f in files {
            let o = testfile::run(f).map_err(|e| anyhow::anyhow!(e))?;
            for line in &o.failures {
                println!("FAIL {}: {line}", f.display());
            }
            passed += o.passed;
            failed += o.failures.len();
        }
        println!(
            "{} file(s): {passed} assertion(s) passed, {failed} failed",
            files.len()
        );
        if failed > 0 {
            std::process::exit(1);
        }
        return Ok(());
    }
    if let FgaCmd::Store(s) = &cmd {
        match s {
            StoreCmd::List => {
                let v = call(client, Method::GET, "/stores", Value::Null).await?;
                for s in v["stores"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}",
                        s["id"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or(""),
                        s["created_at"].as_str().unwrap_or("")
                    );
                }
            }
            StoreCmd::Create { name } => {
                let v = call(client, Method::POST, "/stores", json!({ "name": name })).await?;
                println!("{}", v["id"].as_str().unwrap_or(""));
            }
            StoreCmd::Delete { store } => {
                let id = store_id(client, store).await?;
                call(
                    client,
                    Method::DELETE,
                    &format!("/stores/{id}"),
                    Value::Null,
                )
                .await?;
                println!("deleted store {id}");
            }
        }
        return Ok(());
    }
    let id = store_id(client, store).await?;
    let base = format!("/stores/{id}");
    match cmd {
        FgaCmd::Store(_) | FgaCmd::Test { .. } => unreachable!("handled above"),
        FgaCmd::Model(ModelCmd::Write { file }) => {
            let m = testfile::load_model_file(&file).map_err(|e| anyhow::anyhow!(e))?;
            let v = call(
                client,
                Method::POST,
                &format!("{base}/authorization-models"),
                serde_json::to_value(&m)?,
            )
            .await?;
            println!("{}", v["authorization_model_id"].as_str().unwrap_or(""));
        }
        FgaCmd::Model(ModelCmd::List) => {
            let v = call(
                client,
                Method::GET,
                &format!("{base}/authorization-models"),
                Value::Null,
            )
            .await?;
            for m in v["authorization_models"].as_array().into_iter().flatten() {
                println!("{}", m["id"].as_str().unwrap_or(""));
            }
        }
        FgaCmd::Model(ModelCmd::Get { id: mid, json }) => {
            let v = match mid {
                Some(m) => call(
                    client,
                    Method::GET,
                    &format!("{base}/authorization-models/{m}"),
                    Value::Null,
                )
                .await?["authorization_model"]
                    .clone(),
                None => call(
                    client,
                    Method::GET,
                    &format!("{base}/authorization-models"),
                    Value::Null,
                )
                .await?["authorization_models"]
                    .get(0)
                    .cloned()
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "the store has no model yet; write one with `ztag fga model write FILE`"
                        )
                    })?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let m: AuthorizationModel = serde_json::from_value(v)?;
                print!("{}", dsl::to_dsl(&m));
            }
        }
        FgaCmd::Tuple(TupleCmd::Write {
            user,
            relation,
            object,
            condition,
            context,
        }) => {
            let k = TupleKey {
                object,
                relation,
                user,
                condition: condition.map(|name| RelationshipCondition {
                    name,
                    context: None,
                }),
            };
            let mut k = k;
            if let (Some(c), Some(ctx)) = (k.condition.as_mut(), context_arg(&context)?) {
                c.context = Some(JsonObject(ctx));
            }
            call(
                client,
                Method::POST,
                &format!("{base}/write"),
                json!({"writes": {"tuple_keys": [k]}}),
            )
            .await?;
            println!("written: {k}");
        }
        FgaCmd::Tuple(TupleCmd::Delete {
            user,
            relation,
            object,
        }) => {
            let k = TupleKey::new(&object, &relation, &user);
            call(
                client,
                Method::POST,
                &format!("{base}/write"),
                json!({"deletes": {"tuple_keys": [k]}}),
            )
            .await?;
            println!("deleted: {k}");
        }
        FgaCmd::Tuple(TupleCmd::Read {
            user,
            relation,
            object,
            json,
        }) => {
            let mut token = String::new();
            loop {
                let v = call(
                    client,
                    Method::POST,
                    &format!("{base}/read"),
                    json!({"tuple_key": {"user": user, "relation": relation, "object": object}, "page_size": 100, "continuation_token": token}),
                )
                .await?;
                for t in v["tuples"].as_array().into_iter().flatten() {
                    let k: TupleKey = serde_json::from_value(t["key"].clone())?;
                    if json {
                        println!("{}", serde_json::to_string(&k)?);
                    } else {
                        println!("{k}");
                    }
                }
                token = v["continuation_token"].as_str().unwrap_or("").to_string();
                if token.is_empty() {
                    break;
                }
            }
        }
        FgaCmd::Check {
            user,
            relation,
            object,
            context,
            contextual,
        } => {
            let mut tuples = Vec::new();
            for c in &contextual {
                let f: Vec<&str> = c.split_whitespace().collect();
                let [u, r, o] = f.as_slice() else {
                    bail!("--contextual-tuple {c:?}: want \"USER RELATION OBJECT\"");
                };
                tuples.push(TupleKey::new(o, r, u));
            }
            let mut body = json!({
                "tuple_key": {"user": user, "relation": relation, "object": object},
                "contextual_tuples": {"tuple_keys": tuples},
            });
            if let Some(c) = context_arg(&context)? {
                body["context"] = Value::Object(c);
            }
            let v = call(client, Method::POST, &format!("{base}/check"), body).await?;
            if v["allowed"].as_bool() == Some(true) {
                println!("allowed");
            } else {
                println!("denied");
                std::process::exit(1);
            }
        }
        FgaCmd::ListObjects {
            user,
            relation,
            object_type,
            context,
        } => {
            let mut body = json!({"user": user, "relation": relation, "type": object_type});
            if let Some(c) = context_arg(&context)? {
                body["context"] = Value::Object(c);
            }
            let v = call(client, Method::POST, &format!("{base}/list-objects"), body).await?;
            for o in v["objects"].as_array().into_iter().flatten() {
                println!("{}", o.as_str().unwrap_or(""));
            }
        }
        FgaCmd::ListUsers {
            object,
            relation,
            filters,
            context,
        } => {
            let (ty, oid) = object
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("OBJECT must be type:id"))?;
            let filters: Vec<Value> = filters
                .iter()
                .map(|f| match f.split_once('#') {
                    Some((t, r)) => json!({"type": t, "relation": r}),
                    None => json!({"type": f}),
                })
                .collect();
            let mut body = json!({"object": {"type": ty, "id": oid}, "relation": relation, "user_filters": filters});
            if let Some(c) = context_arg(&context)? {
                body["context"] = Value::Object(c);
            }
            let v = call(client, Method::POST, &format!("{base}/list-users"), body).await?;
            for u in v["users"].as_array().into_iter().flatten() {
                let s = if let Some(o) = u.get("object") {
                    format!(
                        "{}:{}",
                        o["type"].as_str().unwrap_or(""),
                        o["id"].as_str().unwrap_or("")
                    )
                } else if let Some(o) = u.get("userset") {
                    format!(
                        "{}:{}#{}",
                        o["type"].as_str().unwrap_or(""),
                        o["id"].as_str().unwrap_or(""),
                        o["relation"].as_str().unwrap_or("")
                    )
                } else {
                    format!("{}:*", u["wildcard"]["type"].as_str().unwrap_or(""))
                };
                println!("{s}");
            }
        }
        FgaCmd::Import { file } => {
            let tuples = testfile::read_tuple_file(&file).map_err(|e| anyhow::anyhow!(e))?;
            let n = tuples.len();
            let mut body = Vec::new();
            for t in &tuples {
                serde_json::to_writer(&mut body, t)?;
                body.push(b'\n');
            }
            let started = std::time::Instant::now();
            let b = client
                .call(Method::POST, &format!("{base}/import"), Bytes::from(body))
                .await?;
            let v: Value = serde_json::from_slice(&b)?;
            println!(
                "imported {n} tuple(s) from {}: {} written, {} already present, {:.1} s",
                file.display(),
                v["written"],
                v["skipped"],
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

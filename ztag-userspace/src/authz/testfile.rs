//! `ztag fga test FILE.fga.yaml`: model tests in the format of OpenFGA's
//! `fga model test`, run against the embedded engine.
//!
//! A file has `model` (DSL or JSON text) or `model_file` (`.fga`, `.json`
//! or an `fga.mod` manifest), global `tuples` and/or `tuple_file` /
//! `tuple_files` (YAML, JSON, JSON lines or CSV), and `tests`, each with
//! its own `tuples` and `check`, `list_objects` and `list_users`
//! assertions. Every test runs in a fresh store holding the global tuples
//! plus the test's.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    engine::Query,
    model::{AuthorizationModel, JsonObject, RelationshipCondition, TupleKey},
    store::{Store, StoreError, parse_model},
};

/// A test file.
#[derive(Debug, Deserialize)]
pub struct TestFile {
    /// Store name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Model text.
    #[serde(default)]
    pub model: Option<String>,
    /// Model file, relative to the test file.
    #[serde(default)]
    pub model_file: Option<String>,
    /// Global tuples.
    #[serde(default)]
    pub tuples: Option<Vec<FileTuple>>,
    /// A tuple file.
    #[serde(default)]
    pub tuple_file: Option<String>,
    /// Tuple files.
    #[serde(default)]
    pub tuple_files: Option<Vec<String>>,
    /// The tests.
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

/// A tuple as test files write it.
#[derive(Debug, Clone, Deserialize)]
pub struct FileTuple {
    /// `type:id`, `type:*` or `type:id#relation`.
    pub user: String,
    /// Relation.
    pub relation: String,
    /// `type:id`.
    pub object: String,
    /// Optional condition.
    #[serde(default)]
    pub condition: Option<FileCondition>,
}

/// A tuple's condition.
#[derive(Debug, Clone, Deserialize)]
pub struct FileCondition {
    /// Name.
    pub name: String,
    /// Context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

impl FileTuple {
    /// As a [`TupleKey`].
    pub fn key(&self) -> TupleKey {
        TupleKey {
            object: self.object.clone(),
            relation: self.relation.clone(),
            user: self.user.clone(),
            condition: self.condition.as_ref().map(|c| RelationshipCondition {
                name: c.name.clone(),
                context: c.context.clone().map(JsonObject),
            }),
        }
    }
}

/// One test.
#[derive(Debug, Deserialize)]
pub struct TestCase {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Tuples for this test only.
    #[serde(default)]
    pub tuples: Option<Vec<FileTuple>>,
    /// Check assertions.
    #[serde(default)]
    pub check: Vec<CheckCase>,
    /// ListObjects assertions.
    #[serde(default)]
    pub list_objects: Vec<ListObjectsCase>,
    /// ListUsers assertions.
    #[serde(default)]
    pub list_users: Vec<ListUsersCase>,
}

/// `user` or `users`, `object` or `objects`.
#[derive(Debug, Deserialize)]
pub struct CheckCase {
    /// One user.
    #[serde(default)]
    pub user: Option<String>,
    /// Several users.
    #[serde(default)]
    pub users: Option<Vec<String>>,
    /// One object.
    #[serde(default)]
    pub object: Option<String>,
    /// Several objects.
    #[serde(default)]
    pub objects: Option<Vec<String>>,
    /// Condition context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// Relation → expected result.
    pub assertions: BTreeMap<String, bool>,
}

/// A ListObjects assertion.
#[derive(Debug, Deserialize)]
pub struct ListObjectsCase {
    /// The user.
    pub user: String,
    /// The object type.
    #[serde(rename = "type")]
    pub object_type: String,
    /// Condition context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// Relation → expected objects.
    pub assertions: BTreeMap<String, Option<Vec<String>>>,
}

/// A ListUsers assertion.
#[derive(Debug, Deserialize)]
pub struct ListUsersCase {
    /// The object.
    pub object: String,
    /// `[{type: user}, {type: group, relation: member}]`.
    pub user_filter: Vec<UserFilter>,
    /// Condition context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// Relation → `{users: [...]}`.
    pub assertions: BTreeMap<String, UsersExpectation>,
}

/// A user filter.
#[derive(Debug, Deserialize)]
pub struct UserFilter {
    /// Type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Relation (usersets).
    #[serde(default)]
    pub relation: Option<String>,
}

/// Expected users.
#[derive(Debug, Deserialize)]
pub struct UsersExpectation {
    /// The users.
    #[serde(default)]
    pub users: Option<Vec<String>>,
}

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Assertions that held.
    pub passed: usize,
    /// One line per failed assertion.
    pub failures: Vec<String>,
}

/// Read a tuple file: YAML/JSON array, JSON lines, or CSV with OpenFGA's
/// header (`user_type,user_id,user_relation,relation,object_type,object_id,
/// condition_name,condition_context`).
pub fn read_tuple_file(path: &Path) -> Result<Vec<TupleKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_tuples(
        &text,
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse tuples in the format `ext` names ("csv", "jsonl", "json", "yaml").
pub fn parse_tuples(text: &str, ext: &str) -> Result<Vec<TupleKey>, String> {
    match ext {
        "csv" => parse_csv(text),
        "jsonl" | "ndjson" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<FileTuple>(l)
                    .map(|t| t.key())
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect(),
        "json" => serde_json::from_str::<Vec<FileTuple>>(text)
            .map(|v| v.iter().map(FileTuple::key).collect())
            .map_err(|e| e.to_string()),
        _ => serde_yaml_ng::from_str::<Vec<FileTuple>>(text)
            .map(|v| v.iter().map(FileTuple::key).collect())
            .map_err(|e| e.to_string()),
    }
}

fn parse_csv(text: &str) -> Result<Vec<TupleKey>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let need = |name: &str| col(name).ok_or_else(|| format!("CSV header lacks '{name}'"));
    let (ut, ui, rel, ot, oi) = (
        need("user_type")?,
        need("user_id")?,
        need("relation")?,
        need("object_type")?,
        need("object_id")?,
    );
    let (ur, cn, cc) = (
        col("user_relation"),
        col("condition_name"),
        col("condition_context"),
    );
    let mut out = Vec::new();
    for (i, line) in lines {
        let f = split_csv(line);
        let get = |c: usize| f.get(c).map(String::as_str).unwrap_or("");
        let mut user = format!("{}:{}", get(ut), get(ui));
        if let Some(c) = ur
            && !get(c).is_empty()
        {
            user.push('#');
            user.push_str(get(c));
        }
        let condition = match cn.map(get).filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => {
                let context = match cc.map(get).filter(|s| !s.is_empty()) {
                    None => None,
                    Some(j) => {
                        Some(JsonObject(serde_json::from_str(j).map_err(|e| {
                            format!("line {}: condition_context: {e}", i + 1)
                        })?))
                    }
                };
                Some(RelationshipCondition {
                    name: name.to_string(),
                    context,
                })
            }
        };
        out.push(TupleKey {
            object: format!("{}:{}", get(ot), get(oi)),
            relation: get(rel).to_string(),
            user,
            condition,
        });
    }
    Ok(out)
}

/// Split one CSV line (double quotes, `""` escapes).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// Load the model a test file names.
pub fn load_model(file: &TestFile, dir: &Path) -> Result<AuthorizationModel, String> {
    match (&file.model, &file.model_file) {
        (Some(text), None) => parse_model(text).map_err(|e| e.to_string()),
        (None, Some(f)) => load_model_file(&dir.join(f)),
        (Some(_), Some(_)) => Err("give either 'model' or 'model_file', not both".into()),
        (None, None) => Err("the file has neither 'model' nor 'model_file'".into()),
    }
}

/// Load a model file: DSL, JSON, or an `fga.mod` manifest.
pub fn load_model_file(path: &Path) -> Result<AuthorizationModel, String> {
    if path.file_name().and_then(|n| n.to_str()) == Some("fga.mod") {
        let m = super::dsl::parse_modular(path).map_err(|e| format!("{}: {e}", path.display()))?;
        super::validate::validate(&m).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(m);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_model(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn global_tuples(file: &TestFile, dir: &Path) -> Result<Vec<TupleKey>, String> {
    let mut out: Vec<TupleKey> = file.tuples.iter().flatten().map(FileTuple::key).collect();
    let files: Vec<&String> = file
        .tuple_file
        .iter()
        .chain(file.tuple_files.iter().flatten())
        .collect();
    for f in files {
        out.extend(read_tuple_file(&dir.join(f))?);
    }
    Ok(out)
}

fn err_text(e: StoreError) -> String {
    format!("error {}: {e}", e.code())
}

/// Run a test file.
pub fn run(path: &Path) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TestFile =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    run_parsed(&file, &dir)
}

/// Run a parsed file; `dir` resolves relative file names.
pub fn run_parsed(file: &TestFile, dir: &Path) -> Result<Outcome, String> {
    let model = load_model(file, dir)?;
    let global = global_tuples(file, dir)?;
    let mut out = Outcome::default();
    for (ti, test) in file.tests.iter().enumerate() {
        let tname = test
            .name
            .clone()
            .unwrap_or_else(|| format!("test {}", ti + 1));
        let store = Store::new("test".into(), tname.clone(), None);
        store
            .add_model(model.clone(), false)
            .map_err(|e| format!("{tname}: {e}"))?;
        let mut tuples = global.clone();
        tuples.extend(test.tuples.iter().flatten().map(FileTuple::key));
        if let Err(e) = store.write(None, &tuples, &[], None) {
            out.failures
                .push(format!("{tname}: tuples: {}", err_text(e)));
            continue;
        }
        for c in &test.check {
            let users: Vec<&String> = c.user.iter().chain(c.users.iter().flatten()).collect();
            let objects: Vec<&String> = c.object.iter().chain(c.objects.iter().flatten()).collect();
            if users.is_empty() || objects.is_empty() {
                out.failures
                    .push(format!("{tname}: a check needs 'user(s)' and 'object(s)'"));
                continue;
            }
            let q = Query {
                contextual: &[],
                context: c.context.as_ref(),
            };
            for u in &users {
                for o in &objects {
                    for (rel, want) in &c.assertions {
                        match store.check(None, o, rel, u, &q) {
                            Ok(got) if got == *want => out.passed += 1,
                            Ok(got) => out.failures.push(format!(
                                "{tname}: check {u} {rel} {o}: expected {want}, got {got}"
                            )),
                            Err(e) => out.failures.push(format!(
                                "{tname}: check {u} {rel} {o}: expected {want}, got {}",
                                err_text(e)
                            )),
                        }
                    }
                }
            }
        }
        for l in &test.list_objects {
            let q = Query {
                contextual: &[],
                context: l.context.as_ref(),
            };
            for (rel, want) in &l.assertions {
                let want: BTreeSet<&String> = want.iter().flatten().collect();
                match store.with_engine(None, |e| e.list_objects(&l.object_type, rel, &l.user, &q))
                {
                    Ok(got) if got.iter().collect::<BTreeSet<_>>() == want => out.passed += 1,
                    Ok(got) => out.failures.push(format!(
                        "{tname}: list_objects {} {rel} {}: expected {want:?}, got {got:?}",
                        l.user, l.object_type
                    )),
                    Err(e) => out.failures.push(format!(
                        "{tname}: list_objects {} {rel} {}: {}",
                        l.user,
                        l.object_type,
                        err_text(e)
                    )),
                }
            }
        }
        for l in &test.list_users {
            let q = Query {
                contextual: &[],
                context: l.context.as_ref(),
            };
            for (rel, want) in &l.assertions {
                let want: BTreeSet<String> = want.users.iter().flatten().cloned().collect();
                let mut got = BTreeSet::new();
                let mut failed = None;
                for f in &l.user_filter {
                    match store.with_engine(None, |e| {
                        e.list_users(&l.object, rel, &f.type_name, f.relation.as_deref(), &q)
                    }) {
                        Ok(v) => got.extend(v),
                        Err(e) => failed = Some(err_text(e)),
                    }
                }
                match failed {
                    None if got == want => out.passed += 1,
                    None => out.failures.push(format!(
                        "{tname}: list_users {} {rel}: expected {want:?}, got {got:?}",
                        l.object
                    )),
                    Some(e) => out
                        .failures
                        .push(format!("{tname}: list_users {} {rel}: {e}", l.object)),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_jsonl_tuples_parse() {
        let csv = "user_type,user_id,user_relation,relation,object_type,object_id,condition_name,condition_context\n\
                   user,anne,,viewer,document,1,,\n\
                   group,eng,member,viewer,document,2,in_range,\"{\"\"x\"\": 1}\"\n";
        let t = parse_tuples(csv, "csv").unwrap();
        assert_eq!(t[0], TupleKey::new("document:1", "viewer", "user:anne"));
        assert_eq!(t[1].user, "group:eng#member");
        let c = t[1].condition.as_ref().unwrap();
        assert_eq!(c.name, "in_range");
        assert_eq!(c.context.as_ref().unwrap().0["x"], 1);
        let jl = "{\"user\":\"user:a\",\"relation\":\"r\",\"object\":\"d:1\"}\n\n{\"user\":\"user:b\",\"relation\":\"r\",\"object\":\"d:2\"}\n";
        assert_eq!(parse_tuples(jl, "jsonl").unwrap().len(), 2);
        let e = parse_tuples("{\"user\":1}", "jsonl").unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
        assert!(
            parse_tuples("user,relation\n", "csv")
                .unwrap_err()
                .contains("user_type")
        );
    }

    /// Every sample store of OpenFGA's sample-stores passes.
    #[test]
    fn openfga_sample_stores_pass() {
        let root = crate::authz::shared_data().join("openfga/sample-stores");
        let mut files = Vec::new();
        for d in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
            let d = d.unwrap().path();
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                if f.to_string_lossy().ends_with(".fga.yaml") {
                    files.push(f);
                }
            }
        }
        files.sort();
        let (mut passed, mut failed) = (0, Vec::new());
        for f in &files {
            match run(f) {
                Ok(o) => {
                    passed += o.passed;
                    failed.extend(
                        o.failures
                            .into_iter()
                            .map(|x| format!("{}: {x}", f.display())),
                    );
                }
                Err(e) => failed.push(e),
            }
        }
        eprintln!(
            "sample stores: {} files, {passed} assertions passed, {} failed",
            files.len(),
            failed.len()
        );
        for f in &failed {
            eprintln!("  FAIL {f}");
        }
        assert!(failed.is_empty());
    }
}

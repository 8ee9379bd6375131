//! OpenFGA's own conformance tests (../shared/data/openfga/conformance) run
//! against the embedded engine: every Check, ListObjects and ListUsers
//! assertion of every stage. Each test gets a fresh store; a test's stages
//! share it (tuples accumulate, the model changes).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    engine::Query,
    model::TupleKey,
    store::{Store, parse_model},
};

#[derive(Debug, Deserialize)]
struct File {
    tests: Vec<Test>,
}

#[derive(Debug, Deserialize)]
struct Test {
    name: String,
    stages: Vec<Stage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stage {
    model: String,
    #[serde(default)]
    tuples: Option<Vec<YTuple>>,
    #[serde(default)]
    check_assertions: Option<Vec<CheckAssertion>>,
    #[serde(default)]
    list_objects_assertions: Option<Vec<ListObjectsAssertion>>,
    #[serde(default)]
    list_users_assertions: Option<Vec<ListUsersAssertion>>,
}

/// Conformance files write tuples as `.fga.yaml` files do.
type YTuple = super::testfile::FileTuple;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckAssertion {
    #[serde(default)]
    name: Option<String>,
    tuple: YTuple,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    contextual_tuples: Option<Vec<YTuple>>,
    #[serde(default)]
    expectation: Option<bool>,
    #[serde(default)]
    error_code: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LoRequest {
    user: String,
    #[serde(rename = "type")]
    object_type: String,
    relation: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListObjectsAssertion {
    request: LoRequest,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    contextual_tuples: Option<Vec<YTuple>>,
    #[serde(default)]
    expectation: Option<Vec<String>>,
    #[serde(default)]
    error_code: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LuRequest {
    filters: Vec<String>,
    object: String,
    relation: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListUsersAssertion {
    request: LuRequest,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    contextual_tuples: Option<Vec<YTuple>>,
    #[serde(default)]
    expectation: Option<Vec<String>>,
    #[serde(default)]
    error_code: Option<u32>,
}

#[derive(Default, Debug)]
struct Tally {
    pass: usize,
    fail: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
            self.failures.push(what());
        }
    }
}

#[derive(Default, Debug)]
struct Report {
    check: Tally,
    list_objects: Tally,
    list_users: Tally,
}

fn keys(v: &Option<Vec<YTuple>>) -> Vec<TupleKey> {
    v.iter().flatten().map(YTuple::key).collect()
}

fn run_file(name: &str, report: &mut Report) {
    let p = super::shared_data().join("openfga/conformance").join(name);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (set ZTAG_SHARED_DATA)", p.display()));
    let file: File = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    for test in &file.tests {
        let store = Store::new("conformance".into(), test.name.clone(), None);
        for (si, stage) in test.stages.iter().enumerate() {
            let setup = parse_model(&stage.model)
                .and_then(|m| store.add_model(m, false))
                .and_then(|_| store.write(None, &keys(&stage.tuples), &[], None));
            let here = |kind: &str, i: usize, extra: &str| {
                format!("{name} / {} / stage {si} / {kind} #{i}{extra}", test.name)
            };
            for (i, a) in stage.check_assertions.iter().flatten().enumerate() {
                let ctx_tuples = keys(&a.contextual_tuples);
                let q = Query {
                    contextual: &ctx_tuples,
                    context: a.context.as_ref(),
                };
                let got = setup
                    .as_ref()
                    .map_err(|e| format!("setup: {e}"))
                    .and_then(|_| {
                        store
                            .check(None, &a.tuple.object, &a.tuple.relation, &a.tuple.user, &q)
                            .map_err(|e| format!("{} {e}", e.code()))
                    });
                let ok = match (&got, a.error_code) {
                    (Err(e), Some(code)) => e.starts_with(&code.to_string()),
                    (Ok(allowed), None) => Some(*allowed) == a.expectation,
                    _ => false,
                };
                report.check.record(ok, || {
                    here(
                        "check",
                        i,
                        &format!(
                            " {}{} {}#{}@{}: want {:?}/{:?}, got {:?}",
                            a.name.as_deref().unwrap_or(""),
                            if a.context.is_some() { " (ctx)" } else { "" },
                            a.tuple.object,
                            a.tuple.relation,
                            a.tuple.user,
                            a.expectation,
                            a.error_code,
                            got
                        ),
                    )
                });
            }
            for (i, a) in stage.list_objects_assertions.iter().flatten().enumerate() {
                let ctx_tuples = keys(&a.contextual_tuples);
                let q = Query {
                    contextual: &ctx_tuples,
                    context: a.context.as_ref(),
                };
                let r = &a.request;
                let got = setup
                    .as_ref()
                    .map_err(|e| format!("setup: {e}"))
                    .and_then(|_| {
                        store
                            .with_engine(None, |e| {
                                e.list_objects(&r.object_type, &r.relation, &r.user, &q)
                            })
                            .map_err(|e| format!("{} {e}", e.code()))
                    });
                let want: BTreeSet<&String> = a.expectation.iter().flatten().collect();
                let ok = match (&got, a.error_code) {
                    (Err(e), Some(code)) => e.starts_with(&code.to_string()),
                    (Ok(list), None) => list.iter().collect::<BTreeSet<_>>() == want,
                    _ => false,
                };
                report.list_objects.record(ok, || {
                    here(
                        "list_objects",
                        i,
                        &format!(
                            " {} {} {}: want {:?}/{:?}, got {:?}",
                            r.user, r.relation, r.object_type, want, a.error_code, got
                        ),
                    )
                });
            }
            for (i, a) in stage.list_users_assertions.iter().flatten().enumerate() {
                let ctx_tuples = keys(&a.contextual_tuples);
                let q = Query {
                    contextual: &ctx_tuples,
                    context: a.context.as_ref(),
                };
                let r = &a.request;
                let got = setup
                    .as_ref()
                    .map_err(|e| format!("setup: {e}"))
                    .and_then(|_| {
                        let mut all = BTreeSet::new();
                        for f in &r.filters {
                            let (ty, rel) = match f.split_once('#') {
                                Some((t, r)) => (t, Some(r)),
                                None => (f.as_str(), None),
                            };
                            let users = store
                                .with_engine(None, |e| {
                                    e.list_users(&r.object, &r.relation, ty, rel, &q)
                                })
                                .map_err(|e| format!("{} {e}", e.code()))?;
                            all.extend(users);
                        }
                        Ok(all)
                    });
                let want: BTreeSet<String> = a.expectation.iter().flatten().cloned().collect();
                let ok = match (&got, a.error_code) {
                    (Err(e), Some(code)) => e.starts_with(&code.to_string()),
                    (Ok(list), None) => *list == want,
                    _ => false,
                };
                report.list_users.record(ok, || {
                    here(
                        "list_users",
                        i,
                        &format!(
                            " {:?} {}#{}: want {:?}/{:?}, got {:?}",
                            r.filters, r.object, r.relation, want, a.error_code, got
                        ),
                    )
                });
            }
        }
    }
}

fn summary(file: &str) -> Report {
    let mut r = Report::default();
    run_file(file, &mut r);
    for (kind, t) in [
        ("check", &r.check),
        ("list_objects", &r.list_objects),
        ("list_users", &r.list_users),
    ] {
        eprintln!("{file}: {kind}: {} pass, {} fail", t.pass, t.fail);
        for f in t.failures.iter().take(40) {
            eprintln!("  FAIL {f}");
        }
    }
    r
}

fn assert_all_pass(r: &Report) {
    let failed = r.check.fail + r.list_objects.fail + r.list_users.fail;
    assert_eq!(failed, 0, "conformance failures (see stderr)");
}

#[test]
fn openfga_consolidated_1_1() {
    assert_all_pass(&summary("consolidated_1_1_tests.yaml"));
}

#[test]
fn openfga_abac() {
    assert_all_pass(&summary("abac_tests.yaml"));
}

#[test]
fn openfga_check_matrix() {
    assert_all_pass(&summary("matrix_check_tests.derived.yaml"));
}

#[test]
fn openfga_list_objects_matrix() {
    assert_all_pass(&summary("matrix_listobjects_tests.derived.yaml"));
}

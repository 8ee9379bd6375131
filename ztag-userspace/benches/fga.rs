//! The embedded FGA engine on a Drive-like store of about 1,000,000 tuples:
//! users, groups with nested groups, folders three levels deep under a root,
//! documents with owner/editor/viewer, public folders.
//!
//! Measures, on this machine:
//! * checks/s with 1 and 2 threads (mixed allowed/denied) and the latency
//!   distribution of single checks (p50/p99/p99.9);
//! * batch check (`check_batch`) per-check cost;
//! * cold start: the tuples in the state DB (SQLite) loaded into memory and
//!   the model compiled, ready to answer;
//! * memory: RSS growth for the tuples in memory.
//!
//! `cargo bench -p ztag-userspace --bench fga [-- --tuples N --seconds S]`;
//! writes `target/bench/fga-YYYYMMDD-HHMMSS.md` and prints it.

/// The daemon's allocator (huge pages for the large tables).
#[global_allocator]
static ALLOC: ztag::alloc::ZtagAlloc = ztag::alloc::ZtagAlloc;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ztag::{
    authz::{
        engine::Query,
        model::TupleKey,
        service::Authz,
        store::{Store, parse_model},
    },
    state::fga::FgaDb,
};

const MODEL: &str = r#"model
  schema 1.1
type user
type group
  relations
    define member: [user, group#member]
type folder
  relations
    define parent: [folder]
    define owner: [user]
    define editor: [user, group#member] or owner or editor from parent
    define viewer: [user, user:*, group#member] or editor or viewer from parent
type document
  relations
    define parent: [folder]
    define owner: [user]
    define editor: [user, group#member] or owner or editor from parent
    define viewer: [user, group#member] or editor or viewer from parent
"#;

/// splitmix64: a reproducible stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Shape {
    users: u64,
    groups: u64,
    roots: u64,
    docs: u64,
}

impl Shape {
    /// About `n` tuples.
    fn for_tuples(n: u64) -> Shape {
        let k = (n as f64 / 1_000_000.0).max(0.001);
        Shape {
            users: (100_000.0 * k) as u64 + 10,
            groups: (10_000.0 * k) as u64 + 2,
            roots: (1_000.0 * k) as u64 + 1,
            docs: (240_000.0 * k) as u64 + 10,
        }
    }
}

/// The tuples, in a fixed order; returns each document's owner (user id).
fn generate(shape: &Shape, mut emit: impl FnMut(TupleKey)) -> Vec<u64> {
    let mut owners = Vec::with_capacity(shape.docs as usize);
    let mut rng = Rng(42);
    let t = |o: String, r: &str, u: String| TupleKey {
        object: o,
        relation: r.to_string(),
        user: u,
        condition: None,
    };
    // Groups: 20 members each; every 5th group nests the next one.
    for g in 0..shape.groups {
        for _ in 0..20 {
            emit(t(
                format!("group:g{g}"),
                "member",
                format!("user:u{}", rng.below(shape.users)),
            ));
        }
        if g % 5 == 0 && g + 1 < shape.groups {
            emit(t(
                format!("group:g{g}"),
                "member",
                format!("group:g{}#member", g + 1),
            ));
        }
    }
    // Folders: roots, 10 children each, 10 grandchildren each.
    let mut leaves = Vec::new();
    for r in 0..shape.roots {
        let root = format!("folder:r{r}");
        emit(t(
            root.clone(),
            "owner",
            format!("user:u{}", rng.below(shape.users)),
        ));
        emit(t(
            root.clone(),
            "viewer",
            format!("group:g{}#member", rng.below(shape.groups)),
        ));
        if r % 50 == 0 {
            emit(t(root.clone(), "viewer", "user:*".into()));
        }
        for c in 0..10 {
            let child = format!("folder:r{r}c{c}");
            emit(t(child.clone(), "parent", root.clone()));
            emit(t(
                child.clone(),
                "editor",
                format!("group:g{}#member", rng.below(shape.groups)),
            ));
            for l in 0..10 {
                let leaf = format!("folder:r{r}c{c}l{l}");
                emit(t(leaf.clone(), "parent", child.clone()));
                emit(t(
                    leaf.clone(),
                    "viewer",
                    format!("user:u{}", rng.below(shape.users)),
                ));
                leaves.push(leaf);
            }
        }
    }
    // Documents.
    for d in 0..shape.docs {
        let doc = format!("document:d{d}");
        let leaf = &leaves[rng.below(leaves.len() as u64) as usize];
        emit(t(doc.clone(), "parent", leaf.clone()));
        let owner = rng.below(shape.users);
        owners.push(owner);
        emit(t(doc.clone(), "owner", format!("user:u{owner}")));
        if d % 3 == 0 {
            emit(t(
                doc.clone(),
                "viewer",
                format!("user:u{}", rng.below(shape.users)),
            ));
        }
        if d % 7 == 0 {
            emit(t(
                doc.clone(),
                "editor",
                format!("group:g{}#member", rng.below(shape.groups)),
            ));
        }
    }
    owners
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Args {
    tuples: u64,
    seconds: f64,
    anchor: bool,
}

fn args() -> Args {
    let mut a = Args {
        tuples: 1_000_000,
        seconds: 3.0,
        anchor: true,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        match v[i].as_str() {
            "--tuples" => {
                a.tuples = v[i + 1].parse().expect("--tuples N");
                i += 1;
            }
            "--seconds" => {
                a.seconds = v[i + 1].parse().expect("--seconds S");
                i += 1;
            }
            "--quick" => {
                a.tuples = 100_000;
                a.seconds = 1.0;
            }
            "--no-anchor" => a.anchor = false,
            "--bench" => {}
            other => panic!(
                "unknown argument {other} (use --tuples N, --seconds S, --quick, --no-anchor)"
            ),
        }
        i += 1;
    }
    a
}

/// Queries: (object, relation, user). Half are built to be allowed (owner
/// of the document, viewer through a folder, group member), half random.
fn queries(shape: &Shape, owners: &[u64], n: usize) -> Vec<(String, &'static str, String)> {
    let mut rng = Rng(7);
    let mut out = Vec::with_capacity(n);
    let rels = ["viewer", "editor", "owner", "viewer"];
    while out.len() < n {
        let d = rng.below(shape.docs);
        let obj = format!("document:d{d}");
        let rel = rels[rng.below(4) as usize];
        if rng.below(2) == 0 {
            // The owner: allowed for every relation.
            out.push((obj, rel, format!("user:u{}", owners[d as usize])));
            continue;
        }
        out.push((obj, rel, format!("user:u{}", rng.below(shape.users))));
    }
    out
}

/// `$ZTAG_FGA`, else setup's install, else PATH.
fn fga_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ZTAG_FGA").filter(|p| !p.is_empty()) {
        return p.into();
    }
    if let Some(h) = std::env::var_os("HOME") {
        // Where `cargo xtask setup` puts it.
        let p = std::path::PathBuf::from(h).join(".local/share/ztag/fga/bin/fga");
        if p.exists() {
            return p;
        }
    }
    "fga".into()
}

/// Write a test file with `checks` check assertions over a small store.
fn anchor_file(dir: &std::path::Path, checks: usize) -> std::path::PathBuf {
    let shape = Shape::for_tuples(10_000);
    let mut tuples = Vec::new();
    let owners = generate(&shape, |t| tuples.push(t));
    let mut y = format!(
        "model: |\n{}\ntuples:\n",
        MODEL
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut seen = std::collections::HashSet::new();
    for t in &tuples {
        if seen.insert((t.object.clone(), t.relation.clone(), t.user.clone())) {
            y.push_str(&format!(
                "  - user: \"{}\"\n    relation: {}\n    object: \"{}\"\n",
                t.user, t.relation, t.object
            ));
        }
    }
    y.push_str("tests:\n  - name: anchor\n    check:\n");
    for (o, r, u) in queries(&shape, &owners, checks) {
        y.push_str(&format!("      - user: \"{u}\"\n        object: \"{o}\"\n        assertions:\n          {r}: true\n"));
    }
    let p = dir.join(format!("anchor-{checks}.fga.yaml"));
    std::fs::write(&p, y).expect("anchor file");
    p
}

fn anchor(dir: &std::path::Path) -> Result<(f64, f64), String> {
    let fga = fga_bin();
    let k = 2_000;
    let (small, big) = (anchor_file(dir, k), anchor_file(dir, 10 * k));
    let time_fga = |f: &std::path::Path| -> Result<f64, String> {
        let t = Instant::now();
        let out = std::process::Command::new(&fga)
            .args(["model", "test", "--tests"])
            .arg(f)
            .output()
            .map_err(|e| format!("{}: {e} (cargo xtask setup installs it)", fga.display()))?;
        // Assertions fail on purpose (all expect true); only a crash counts.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !text.contains("Test Summary") {
            return Err(text.lines().last().unwrap_or("no output").to_string());
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let time_ztag = |f: &std::path::Path| -> Result<f64, String> {
        let t = Instant::now();
        ztag::authz::testfile::run(f)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut fga_runs = Vec::new();
    let mut ztag_runs = Vec::new();
    for _ in 0..3 {
        fga_runs.push((time_fga(&big)? - time_fga(&small)?) / (9 * k) as f64 * 1e6);
        ztag_runs.push((time_ztag(&big)? - time_ztag(&small)?) / (9 * k) as f64 * 1e6);
    }
    fga_runs.sort_by(f64::total_cmp);
    ztag_runs.sort_by(f64::total_cmp);
    Ok((fga_runs[1], ztag_runs[1].max(0.01)))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let a = args();
    let shape = Shape::for_tuples(a.tuples);
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    line(format!(
        "# FGA engine benchmark ({})\n",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    ));
    line(format!(
        "Machine: {} cores; Drive-like model (users, nested groups, folders 3 levels, documents owner/editor/viewer).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    // 1. Durable copy: write the tuples into a fresh state DB.
    let dir = std::env::temp_dir().join(format!("ztag-fga-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("state.db");
    let model = parse_model(MODEL).expect("model");
    let store_id;
    let n_tuples;
    let owners;
    {
        let authz = Authz::open(Some(&db_path)).expect("open state DB");
        let store = authz.create_store("drive").expect("store");
        store_id = store.id.clone();
        store.add_model(model.clone(), true).expect("model");
        let mut batch = Vec::new();
        let t0 = Instant::now();
        owners = generate(&shape, |t| batch.push(t));
        let mut db = FgaDb::open(&db_path).expect("db");
        let (written, _duplicates) = db.import(&store_id, batch.into_iter()).expect("import");
        n_tuples = written;
        line(format!(
            "Import of {n_tuples} tuples into SQLite: {:.2} s\n",
            t0.elapsed().as_secs_f64()
        ));
    }

    // 2. Cold start: open the DB, load every store, compile models.
    let rss0 = rss_kb();
    let t0 = Instant::now();
    let authz = Authz::open(Some(&db_path)).expect("open");
    let cold = t0.elapsed();
    let rss1 = rss_kb();
    let store: Arc<Store> = authz.store(&store_id).expect("store loaded");
    assert_eq!(store.tuple_count(), n_tuples, "every tuple loaded");
    line("| measure | value | goal |".into());
    line("|---|---|---|".into());
    line(format!(
        "| cold start: {n_tuples} tuples from SQLite to ready | {:.2} s | < 5 s |",
        cold.as_secs_f64()
    ));
    line(format!(
        "| memory (RSS growth, tuples in memory) | {:.0} MB | < 300 MB |",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0
    ));

    // 3. Checks.
    let qs = Arc::new(queries(&shape, &owners, 200_000));
    let q = Query::default();
    let mut allowed = 0usize;
    for (o, r, u) in qs.iter().take(20_000) {
        if store.check(None, o, r, u, &q).expect("check") {
            allowed += 1;
        }
    }
    let mix = allowed as f64 / 20_000.0 * 100.0;
    let run = |threads: usize| -> f64 {
        let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                let qs = qs.clone();
                std::thread::spawn(move || {
                    let q = Query::default();
                    let mut n = 0u64;
                    let mut i = t * 7919;
                    while Instant::now() < deadline {
                        for _ in 0..256 {
                            let (o, r, u) = &qs[i % qs.len()];
                            let _ = std::hint::black_box(store.check(None, o, r, u, &q));
                            i += 1;
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        total as f64 / a.seconds
    };
    let one = run(1);
    let two = run(2);
    line(format!(
        "| checks/s, 1 thread ({mix:.0}% allowed) | {:.0} | |",
        one
    ));
    line(format!(
        "| checks/s, 2 threads | {:.0} | ≥ 1,000,000 |",
        two
    ));

    // Latency of single checks.
    let mut lat: Vec<u64> = Vec::with_capacity(qs.len());
    for (o, r, u) in qs.iter() {
        let t = Instant::now();
        let _ = std::hint::black_box(store.check(None, o, r, u, &q));
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    line(format!(
        "| check latency p50 / p99 / p99.9 | {:.2} / {:.2} / {:.2} µs | p99 < 20 µs |",
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        percentile(&lat, 0.999) as f64 / 1000.0
    ));

    // Batch check: 50 checks per call (OpenFGA's batch limit), against
    // single checks on the same 50,000 queries, in alternating rounds.
    let slice = &qs[..50_000.min(qs.len())];
    let (mut singles, mut batches) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        for (o, r, u) in slice {
            let _ = std::hint::black_box(store.check(None, o, r, u, &q));
        }
        singles.push(slice.len() as f64 / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for chunk in slice.chunks(50) {
            let items: Vec<(&str, &str, &str)> = chunk
                .iter()
                .map(|(o, r, u)| (o.as_str(), *r, u.as_str()))
                .collect();
            let res = store.check_batch(None, &items, &q);
            std::hint::black_box(&res);
        }
        batches.push(slice.len() as f64 / t0.elapsed().as_secs_f64());
    }
    singles.sort_by(f64::total_cmp);
    batches.sort_by(f64::total_cmp);
    let (single, batch) = (singles[2], batches[2]);
    line(format!(
        "| batch check (50 per call), 1 thread, per check (median of 5 rounds against single checks on the same queries) | {batch:.0} vs {single:.0} checks/s ({:.2}× single) | ≥ 1× single |",
        batch / single
    ));

    // The anchor: OpenFGA's own engine (embedded in its CLI, `fga model
    // test`) and ztag's on the same test file, a 10,000-tuple slice of the
    // same shape. Each runs the file with K and 10*K checks; the difference
    // divided by 9K is the cost of one check (start-up and tuple loading
    // cancel out).
    match if a.anchor {
        anchor(&dir)
    } else {
        Err("--no-anchor".into())
    } {
        Ok((fga_us, ztag_us)) => line(format!(
            "| anchor, same .fga.yaml (10k tuples): per check, OpenFGA CLI engine vs ztag | {fga_us:.1} µs vs {ztag_us:.2} µs ({:.0}× fewer) | OpenFGA is the anchor to beat |",
            fga_us / ztag_us
        )),
        Err(e) => line(format!("| anchor: OpenFGA CLI | skipped: {e} | |")),
    }

    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let stamp = std::process::Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let path = out_dir.join(format!("fga-{stamp}.md"));
    let _ = std::fs::write(&path, &report);
    println!("\nreport: {}", path.display());
    drop(authz);
    let _ = std::fs::remove_dir_all(&dir);
}

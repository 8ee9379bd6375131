//! `cargo xtask bench inspect`: the prompt-injection detector and the
//! content filter, one core each.
//!
//! * detector latency on 1 KB prompts (p50/p99 over every call) and
//!   throughput on mixed text (the labelled prompts of ../shared/data, all
//!   sources, attacks and benign, as they come);
//! * content filter throughput on text with no hits (benign prompts and
//!   Alpaca answers, 1 MB), on JSON of the same text, and with a hit every
//!   ~2 KB; streaming in 16 KB chunks.
//!
//! Writes `target/bench/inspect-YYYYMMDD-HHMMSS.md` and prints it. Goals
//! (issue 5): detector p99 ≤ 20 µs per 1 KB prompt and ≥ 100 MB/s; filter
//! ≥ 300 MB/s on responses with no hits.

use std::time::{Duration, Instant};

use ztag::inspect::{
    Detector,
    content::{ContentFilter, StreamFilter},
    dataset,
};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 1.0 } else { 4.0 };
    let data = std::env::var_os("ZTAG_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
        });
    let samples = dataset::load(&data).expect("../shared/data/prompt-injection loads");
    let det = Detector::embedded().expect("weights");
    let mut md = String::from("# Inspection benchmark\n\n");
    md.push_str(&format!(
        "machine: {} cores; one thread per measure\n\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ));

    // 1 KB prompts: each sample repeated/cut to 1024 bytes (on a char boundary).
    let kb: Vec<String> = samples
        .iter()
        .map(|s| {
            let mut t = s.text.clone();
            while t.len() < 1024 {
                t.push(' ');
                t.push_str(&s.text);
            }
            let mut cut = 1024;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
            t
        })
        .collect();
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let t = &kb[i % kb.len()];
        let t0 = Instant::now();
        std::hint::black_box(det.score(t));
        lat.push(t0.elapsed().as_nanos() as u64);
        i += 1;
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    // Where the time goes, per 1 KB prompt (mean over the set).
    {
        use ztag::inspect::{classifier, normalize, signatures::Signatures};
        let sigs = Signatures::new();
        let norm: Vec<_> = kb.iter().map(|t| normalize::normalize(t, 4096)).collect();
        let mut hits_all = Vec::new();
        for n in &norm {
            let mut h = Vec::new();
            sigs.scan(&n.text, &mut h);
            hits_all.push(h);
        }
        let mean = |f: &mut dyn FnMut(usize)| {
            let t0 = Instant::now();
            let mut n = 0;
            while t0.elapsed() < Duration::from_secs_f64(secs / 4.0) {
                f(n % kb.len());
                n += 1;
            }
            t0.elapsed().as_nanos() as f64 / n as f64 / 1000.0
        };
        let t_norm = mean(&mut |i| {
            std::hint::black_box(normalize::normalize(&kb[i], 4096));
        });
        let t_sig = mean(&mut |i| {
            let mut h = Vec::new();
            sigs.scan(&norm[i].text, &mut h);
            std::hint::black_box(h);
        });
        let mut fv = Vec::new();
        let t_feat = mean(&mut |i| {
            classifier::features(
                &norm[i].text,
                &kb[i],
                &hits_all[i],
                &norm[i].transforms,
                &mut fv,
            );
            std::hint::black_box(&fv);
        });
        let feats: Vec<_> = (0..kb.len())
            .map(|i| {
                let mut f = Vec::new();
                classifier::features(
                    &norm[i].text,
                    &kb[i],
                    &hits_all[i],
                    &norm[i].transforms,
                    &mut f,
                );
                f
            })
            .collect();
        let t_score = mean(&mut |i| {
            std::hint::black_box(det.model().score(&feats[i]));
        });
        md.push_str(&format!(
            "stages per 1 KB prompt (mean): normalise {t_norm:.1} µs, signatures {t_sig:.1} µs, features {t_feat:.1} µs, score {t_score:.1} µs\n\n"
        ));
    }
    // Mixed text as it comes.
    let bytes: usize = samples.iter().map(|s| s.text.len()).sum();
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        for s in &samples {
            std::hint::black_box(det.score(&s.text));
        }
        rounds += 1;
    }
    let mbps = (bytes * rounds) as f64 / t0.elapsed().as_secs_f64() / 1e6;
    md.push_str("## Prompt-injection detector\n\n| measure | value | goal |\n|---|---:|---:|\n");
    md.push_str(&format!(
        "| 1 KB prompt, p50 | {:.1} µs | |\n| 1 KB prompt, p99 | {:.1} µs | ≤ 20 µs |\n",
        pct(0.5),
        pct(0.99)
    ));
    md.push_str(&format!(
        "| mixed text ({} prompts, {:.1} MB) | {:.0} MB/s | ≥ 100 MB/s |\n\n",
        samples.len(),
        bytes as f64 / 1e6,
        mbps
    ));

    if std::env::args().any(|a| a == "--detector-only") {
        println!("{md}");
        return;
    }
    // Content filter.
    let f = ContentFilter::shared_all();
    let benign: Vec<&str> = samples
        .iter()
        .filter(|s| !s.injection)
        .map(|s| s.text.as_str())
        .collect();
    let mut prose = String::new();
    let mut k = 0;
    while prose.len() < 1 << 20 {
        prose.push_str(benign[k % benign.len()]);
        prose.push_str("\n\n");
        k += 1;
    }
    let no_hit_prose: String = {
        // Drop whatever the fixtures happen to contain that is a finding.
        let (red, _) = f.redact(prose.as_bytes());
        String::from_utf8_lossy(&red).replace("[REDACTED:", "[")
    };
    let json = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": no_hit_prose}}]}).to_string();
    let mut hits = String::new();
    for (n, chunk) in no_hit_prose.as_bytes().chunks(2048).enumerate() {
        hits.push_str(&String::from_utf8_lossy(chunk));
        hits.push_str(if n % 2 == 0 {
            " mail ops@example.org "
        } else {
            " key AKIAQ3EGRQZ7WYR2M4PK "
        });
    }
    md.push_str("## Content filter\n\n| input | whole body | streamed (16 KB chunks) | goal |\n|---|---:|---:|---:|\n");
    for (name, text) in [
        ("prose, no hits", no_hit_prose.as_str()),
        ("JSON, no hits", json.as_str()),
        ("a hit every ~2 KB", hits.as_str()),
    ] {
        let b = text.as_bytes();
        let whole = throughput(secs, b.len(), || {
            std::hint::black_box(f.scan(b));
        });
        let streamed = throughput(secs, b.len(), || {
            let mut sf = StreamFilter::new(f.clone(), true);
            let mut out = Vec::with_capacity(b.len() + 1024);
            for c in b.chunks(16 * 1024) {
                sf.push(c, &mut out);
            }
            sf.finish(&mut out);
            std::hint::black_box(out);
        });
        let goal = if name.contains("no hits") {
            "≥ 300 MB/s"
        } else {
            ""
        };
        md.push_str(&format!(
            "| {name} ({:.1} MB) | {whole:.0} MB/s | {streamed:.0} MB/s | {goal} |\n",
            b.len() as f64 / 1e6
        ));
    }
    println!("{md}");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let _ = std::fs::write(dir.join(format!("inspect-{stamp}.md")), md);
}

fn throughput(secs: f64, bytes: usize, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        f();
        n += 1;
    }
    (bytes * n) as f64 / t0.elapsed().as_secs_f64() / 1e6
}

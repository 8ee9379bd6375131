//! `cargo xtask bench` (no suite named, or `bench all`): every benchmark in
//! one run — XDP, proxy (with a throughput-vs-concurrency sweep), FGA,
//! inspection, MCP, risk, fleet — each with its peers in the same run, then
//! `BENCHMARKS.md` at the top of the repository: the machine, each suite's
//! report (medians and ratios), and PNG charts in `docs/bench/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

use crate::{header, workspace_root};

/// The suites, in order, with the arguments of the one-command run and the
/// prefixes of the reports they write under target/bench.
const SUITES: &[(&str, &[&str], &[&str])] = &[
    ("xdp", &["--quick"], &["xdp-live-", "xdp-"]),
    (
        "proxy",
        &["--quick", "--", "--sweep", "1,4,16,64,256"],
        &["proxy-"],
    ),
    ("fga", &["--quick"], &["fga-"]),
    ("inspect", &["--quick"], &["inspect-gateway-", "inspect-"]),
    ("mcp", &["--quick"], &["mcp-"]),
    ("risk", &["--quick"], &["risk-"]),
    ("fleet", &["--quick"], &["fleet-"]),
];

/// Runs every suite (or those named) and writes the report.
pub fn run(only: &[String]) -> Result<()> {
    let root = workspace_root();
    let bench_dir = root.join("target/bench");
    let started = SystemTime::now();
    let t0 = Instant::now();
    let me = std::env::current_exe().context("the xtask binary")?;
    let mut ran = Vec::new();
    for (name, args, _) in SUITES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        header(&format!("bench {name} {}", args.join(" ")));
        let t = Instant::now();
        let status = Command::new(&me)
            .arg("bench")
            .arg(name)
            .args(*args)
            .current_dir(&root)
            .status();
        let ok = status.as_ref().is_ok_and(|s| s.success());
        ran.push((*name, ok, t.elapsed()));
    }
    let total = t0.elapsed();
    write_report(&root, &bench_dir, started, &ran, total)
}

fn newest(dir: &Path, prefix: &str, ext: &str, since: SystemTime) -> Option<PathBuf> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let name = p.file_name()?.to_string_lossy().into_owned();
        // "xdp-" must not pick up "xdp-live-…": the next character is a digit.
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) || !name.ends_with(ext) {
            continue;
        }
        let m = e.metadata().ok()?.modified().ok()?;
        if m >= since && best.as_ref().is_none_or(|(b, _)| m > *b) {
            best = Some((m, p));
        }
    }
    best.map(|(_, p)| p)
}

fn capture(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!(
        "{cpu}, {cores} cores{mem}; Linux {}; {}",
        capture("uname", &["-r"]),
        capture("sh", &["-c", ". /etc/os-release && echo $PRETTY_NAME"])
    )
}

/// Two levels deeper, so each report's title sits under its suite's `##`.
fn demote(md: &str) -> String {
    md.lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("##{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_report(
    root: &Path,
    bench_dir: &Path,
    since: SystemTime,
    ran: &[(&str, bool, Duration)],
    total: Duration,
) -> Result<()> {
    let charts_dir = root.join("docs/bench");
    std::fs::create_dir_all(&charts_dir)?;
    let mut md = String::new();
    md += "# ztag benchmarks\n\n";
    md += &format!(
        "Written by `cargo xtask bench` on {} UTC at commit {} in {:.1} minutes.\n\n",
        capture("date", &["-u", "+%Y-%m-%d %H:%M"]),
        capture("git", &["rev-parse", "--short", "HEAD"]),
        total.as_secs_f64() / 60.0
    );
    md += &format!("**Machine:** {}.\n\n", machine());
    md += "Every figure compares ztag with its peer **measured in the same run on the same inputs** \
           (the machine is shared and noisy: absolute numbers move between runs, ratios much less). \
           This one-command run uses each suite's `--quick` settings so that the whole report takes \
           under 15 minutes; run a suite alone without `--quick` (e.g. `cargo xtask bench proxy`) for \
           more rounds and tighter ranges.\n\n";
    md += "| suite | command | result | minutes |\n|---|---|---|---:|\n";
    for (name, ok, d) in ran {
        md += &format!(
            "| {name} | `cargo xtask bench {name} --quick` | {} | {:.1} |\n",
            if *ok {
                "ran"
            } else {
                "**failed** (see its output)"
            },
            d.as_secs_f64() / 60.0
        );
    }
    md += "\n";

    // Charts from the proxy suite's JSON.
    if let Some(json) = newest(bench_dir, "proxy-", ".json", since) {
        let v: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        let mut charts = Vec::new();
        if let Err(e) = sweep_chart(&v, &charts_dir.join("throughput-vs-concurrency.png")) {
            eprintln!("warning: no throughput chart: {e:#}");
        } else {
            charts.push((
                "Throughput vs concurrency (peak req/s, reuse tokens, TLS, one worker each)",
                "docs/bench/throughput-vs-concurrency.png",
            ));
        }
        if let Err(e) = latency_chart(&v, &charts_dir.join("latency-percentiles.png")) {
            eprintln!("warning: no latency chart: {e:#}");
        } else {
            charts.push((
                "Latency percentiles at a fixed rate (µs, log scale; medians over rounds)",
                "docs/bench/latency-percentiles.png",
            ));
        }
        md += &sweep_table(&v);
        if !charts.is_empty() {
            md += "## Charts\n\n";
            for (what, path) in charts {
                md += &format!("{what}:\n\n![{what}]({path})\n\n");
            }
        }
    }

    for (name, _, _) in ran {
        let prefixes = SUITES
            .iter()
            .find(|s| s.0 == *name)
            .map(|s| s.2)
            .unwrap_or(&[]);
        md += &format!("## {name}\n\n");
        let mut any = false;
        for p in prefixes {
            if let Some(f) = newest(bench_dir, p, ".md", since) {
                md += &demote(&std::fs::read_to_string(&f)?);
                md += &format!(
                    "\n\n*(from `target/bench/{}`)*\n\n",
                    f.file_name().unwrap().to_string_lossy()
                );
                any = true;
            }
        }
        if !any {
            md += "No report: the suite did not finish in this run.\n\n";
        }
    }
    let out = root.join("BENCHMARKS.md");
    std::fs::write(&out, md)?;
    eprintln!(
        "wrote {} ({:.1} min)",
        out.display(),
        total.as_secs_f64() / 60.0
    );
    Ok(())
}

fn font() -> Result<()> {
    use std::sync::OnceLock;
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let Ok(bytes) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    anyhow::ensure!(
        ok,
        "DejaVu Sans not found (fonts-dejavu-core, installed by `cargo xtask setup`)"
    );
    Ok(())
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x99, 0x99, 0x99),
    RGBColor(0x94, 0x67, 0xbd),
];

/// The sweep's figures as a table (the chart's numbers), with ztag's ratio
/// to each peer at every connection count.
fn sweep_table(v: &Value) -> String {
    let Some(sweep) = v["sweep"].as_array().filter(|s| !s.is_empty()) else {
        return String::new();
    };
    let rps = |s: &Value, c: u64| {
        s["points"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["connections"].as_u64() == Some(c)))
            .and_then(|p| p["rps"].as_f64())
    };
    let conns: Vec<u64> = sweep[0]["points"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["connections"].as_u64()).collect())
        .unwrap_or_default();
    let ztag = sweep.iter().find(|s| s["proxy"] == "ztag");
    let mut md = String::from(
        "## Throughput vs concurrency\n\nPeak req/s (wrk, 1 thread, reuse tokens, TLS, one worker each, one run per point, in the proxy suite's run); in brackets ztag ÷ that proxy.\n\n| proxy |",
    );
    for c in &conns {
        md += &format!(" {c} conn. |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(conns.len());
    md += "\n";
    for s in sweep {
        md += &format!("| {} |", s["proxy"].as_str().unwrap_or("?"));
        for &c in &conns {
            let r = rps(s, c);
            let ratio = match (ztag.and_then(|z| rps(z, c)), r) {
                (Some(z), Some(r)) if s["proxy"] != "ztag" && r > 0.0 => {
                    format!(" ({:.2}×)", z / r)
                }
                _ => String::new(),
            };
            md += &match r {
                Some(r) => format!(" {r:.0}{ratio} |"),
                None => " — |".into(),
            };
        }
        md += "\n";
    }
    md + "\n"
}

/// The same colour for a proxy on every chart.
fn colour(name: &str, i: usize) -> RGBColor {
    match name {
        "ztag" => COLORS[0],
        "haproxy" => COLORS[1],
        "envoy" => COLORS[2],
        "nginx" => COLORS[3],
        "direct" => COLORS[4],
        _ => COLORS[i % COLORS.len()],
    }
}

/// Redraws the charts from the newest proxy report (`bench charts`) and
/// prints the sweep's table.
pub fn charts() -> Result<()> {
    let root = workspace_root();
    let json = newest(
        &root.join("target/bench"),
        "proxy-",
        ".json",
        SystemTime::UNIX_EPOCH,
    )
    .context(
        "no target/bench/proxy-*.json: run cargo xtask bench proxy -- --sweep 1,4,16,64,256",
    )?;
    let v: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let dir = root.join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    sweep_chart(&v, &dir.join("throughput-vs-concurrency.png"))?;
    latency_chart(&v, &dir.join("latency-percentiles.png"))?;
    eprintln!("charts from {} in {}", json.display(), dir.display());
    print!("{}", sweep_table(&v));
    Ok(())
}

fn sweep_chart(v: &Value, path: &Path) -> Result<()> {
    font()?;
    let series: Vec<(String, Vec<(f64, f64)>)> = v["sweep"]
        .as_array()
        .context("no sweep in the proxy report (run with --sweep)")?
        .iter()
        .map(|s| {
            let pts = s["points"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p["connections"].as_f64()?, p["rps"].as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            (s["proxy"].as_str().unwrap_or("?").to_string(), pts)
        })
        .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    anyhow::ensure!(!series.is_empty(), "the sweep has no points");
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Peak requests/s vs concurrent connections",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..xmax * 1.2).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("keep-alive TLS connections (wrk, 1 thread)")
        .y_desc("requests/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    lines(&mut chart, &series, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// One line with dots per series, in the palette's colours, and a legend.
fn lines<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    series: &[(String, Vec<(f64, f64)>)],
    legend: SeriesLabelPosition,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate<From = (f64, f64)>,
{
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colour(name, i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn latency_chart(v: &Value, path: &Path) -> Result<()> {
    font()?;
    const PCT: [(&str, &str); 5] = [
        ("p50", "p50_us"),
        ("p90", "p90_us"),
        ("p99", "p99_us"),
        ("p99.9", "p999_us"),
        ("max", "max_us"),
    ];
    let series: Vec<(String, Vec<f64>)> = v["latency"]
        .as_array()
        .context("no latency in the proxy report")?
        .iter()
        .map(|t| {
            let rounds = t["rounds"].as_array().cloned().unwrap_or_default();
            let vals = PCT
                .iter()
                .map(|(_, k)| median(rounds.iter().filter_map(|r| r[*k].as_f64()).collect()))
                .collect();
            (t["target"].as_str().unwrap_or("?").to_string(), vals)
        })
        .filter(|(_, v): &(String, Vec<f64>)| v.iter().all(|x| x.is_finite() && *x > 0.0))
        .collect();
    anyhow::ensure!(!series.is_empty(), "no latency figures");
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(10.0, f64::max)
        * 2.0;
    let ymin = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 2.0;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency percentiles at a fixed request rate",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..(PCT.len() - 1) as f64, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(PCT.len())
        .x_label_formatter(&|x| {
            PCT.get(x.round() as usize)
                .map_or(String::new(), |p| p.0.to_string())
        })
        .y_desc("µs (from the scheduled send time)")
        .label_style(("sans-serif", 14))
        .draw()?;
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.into_iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, v))
                    .collect(),
            )
        })
        .collect();
    lines(&mut chart, &series, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_from_a_proxy_report() {
        let v = serde_json::json!({
            "sweep": [
                {"proxy": "ztag", "points": [{"connections": 1, "rps": 4000.0}, {"connections": 64, "rps": 20000.0}]},
                {"proxy": "nginx", "points": [{"connections": 1, "rps": 5000.0}, {"connections": 64, "rps": 24000.0}, {"connections": 256, "rps": null}]}
            ],
            "latency": [
                {"target": "ztag", "rounds": [{"p50_us": 900.0, "p90_us": 4000.0, "p99_us": 9000.0, "p999_us": 12000.0, "max_us": 15000.0}]},
                {"target": "direct", "rounds": [{"p50_us": 80.0, "p90_us": 390.0, "p99_us": 3400.0, "p999_us": 5100.0, "max_us": 5800.0}]}
            ]
        });
        let dir = std::env::temp_dir().join(format!("ztag-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, draw) in [
            ("sweep.png", sweep_chart as fn(&Value, &Path) -> Result<()>),
            ("latency.png", latency_chart),
        ] {
            let p = dir.join(name);
            draw(&v, &p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
            assert!(
                bytes.len() > 10_000,
                "{name}: {} bytes, an empty chart?",
                bytes.len()
            );
        }
        // A report without a sweep says so instead of drawing nothing.
        let e = sweep_chart(&serde_json::json!({}), &dir.join("none.png")).unwrap_err();
        assert!(e.to_string().contains("sweep"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_are_demoted_and_found_by_exact_prefix() {
        assert_eq!(demote("# A\ntext\n## B"), "### A\ntext\n#### B");
        let dir = std::env::temp_dir().join(format!("ztag-report-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let since = SystemTime::now() - Duration::from_secs(5);
        std::fs::write(dir.join("xdp-live-20260101-000000.md"), "live").unwrap();
        std::fs::write(dir.join("xdp-20260101-000000.md"), "xdp").unwrap();
        let f = newest(&dir, "xdp-", ".md", since).unwrap();
        assert!(f.ends_with("xdp-20260101-000000.md"), "{}", f.display());
        assert!(newest(&dir, "fga-", ".md", since).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

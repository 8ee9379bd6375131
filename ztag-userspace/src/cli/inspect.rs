//! `ztag inspect`: the detector and the content filter, offline, on your
//! own text; training and evaluation of the detector.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::inspect::{Detector, classifier::Model, dataset, train};

/// `ztag inspect` subcommands.
#[derive(Debug, Subcommand)]
pub enum InspectCmd {
    /// Run the prompt-injection detector on text: one prompt per line (or,
    /// with --jsonl, JSON lines with a "text" field); one verdict per input,
    /// in input order.
    Prompt {
        /// Input file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
        /// Input is JSON lines with a "text" field; print one JSON verdict
        /// per line ({"injection", "score", "category", "reasons"}).
        #[arg(long)]
        jsonl: bool,
        /// Weights file instead of the compiled-in weights.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Run the response content filter (PII and secrets) on text: one input
    /// per line (or JSON lines with --jsonl); prints the findings and the
    /// redacted text.
    Content {
        /// Input file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
        /// Input is JSON lines with a "text" field; output is JSON lines.
        #[arg(long)]
        jsonl: bool,
    },
    /// Train the detector on the labelled data and write the weights
    /// (what `cargo xtask train-detector` runs); prints the held-out report.
    Train {
        /// The shared data directory (with prompt-injection/).
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Where to write the weights.
        #[arg(long, default_value = "ztag-userspace/models/detector.bin")]
        out: PathBuf,
    },
    /// Score the held-out split of the labelled data: TPR and FPR per source.
    Eval {
        /// The shared data directory (with prompt-injection/).
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Weights file instead of the compiled-in weights.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Also print TPR/FPR at a range of thresholds.
        #[arg(long)]
        sweep: bool,
        /// Also print every misclassified held-out sample.
        #[arg(long)]
        errors: bool,
    },
}

/// Runs one `ztag inspect` command. A reader that goes away (`| head`)
/// ends the output quietly.
pub fn run(cmd: InspectCmd) -> Result<()> {
    match run_cmd(cmd) {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Writes to standard output (errors, such as a closed pipe, are returned).
fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}

fn run_cmd(cmd: InspectCmd) -> Result<()> {
    match cmd {
        InspectCmd::Prompt { file, jsonl, model } => {
            let det = detector(model.as_deref())?;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            for_each_input(&file, jsonl, |text| {
                let v = det.detect(text);
                if jsonl {
                    serde_json::to_writer(&mut out, &v)?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "{}\t{:.3}\t{}\t{}",
                        if v.injection { "INJECTION" } else { "ok" },
                        v.score,
                        if v.injection { v.category } else { "-" },
                        v.reasons.join(",")
                    )?;
                }
                Ok(())
            })?;
            out.flush()?;
            Ok(())
        }
        InspectCmd::Content { file, jsonl } => content(&file, jsonl),
        InspectCmd::Train { data, out } => {
            let (model, report) = train::train(&data)?;
            std::fs::write(&out, model.to_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            self::out(&format!(
                "wrote {} (threshold {:.4}, data fingerprint {:016x})\n\nrules on the training split:\n{}\nheld-out split:\n{}\n",
                out.display(),
                model.threshold,
                model.data_hash,
                report.rules,
                report.table()
            ))
        }
        InspectCmd::Eval {
            data,
            model,
            sweep,
            errors,
        } => {
            let det = detector(model.as_deref())?;
            let samples = dataset::load(&data)?;
            let r = train::evaluate(&det, &samples, dataset::Split::Test);
            out(&format!(
                "threshold {:.4}\n{}\n",
                det.threshold(),
                r.table()
            ))?;
            if sweep {
                let ts: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
                out(&format!(
                    "{}\n",
                    train::sweep(&det, &samples, dataset::Split::Test, &ts)
                ))?;
            }
            if errors {
                out(&train::errors(&det, &samples, dataset::Split::Test))?;
            }
            Ok(())
        }
    }
}

fn detector(model: Option<&Path>) -> Result<Detector> {
    Ok(match model {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Detector::with_model(Model::from_bytes(&b).with_context(|| p.display().to_string())?)
        }
        None => Detector::embedded()?,
    })
}

fn content(file: &str, jsonl: bool) -> Result<()> {
    let f = crate::inspect::content::ContentFilter::shared_all();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for_each_input(file, jsonl, |text| {
        let (red, fs) = f.redact(text.as_bytes());
        let red = String::from_utf8_lossy(&red);
        if jsonl {
            let findings: Vec<serde_json::Value> = fs
                .iter()
                .map(|x| serde_json::json!({"kind": x.kind.as_str(), "start": x.start, "end": x.end}))
                .collect();
            let v =
                serde_json::json!({"found": !fs.is_empty(), "findings": findings, "redacted": red});
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            let kinds: Vec<&str> = fs.iter().map(|x| x.kind.as_str()).collect();
            let tag = if kinds.is_empty() {
                "ok".to_owned()
            } else {
                kinds.join(",")
            };
            writeln!(out, "{tag}\t{red}")?;
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

/// Calls `f` with each input: a line, or the "text" of a JSON line. A JSON
/// line without a string "text" is an error naming the line.
fn for_each_input(file: &str, jsonl: bool, mut f: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let reader: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {file}"))?)
    };
    let mut r = BufReader::new(reader);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        n += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if jsonl {
            if text.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(text)
                .with_context(|| format!("{file}: line {n} is not JSON"))?;
            let Some(t) = v.get("text").and_then(|t| t.as_str()) else {
                bail!("{file}: line {n} has no string \"text\" field");
            };
            f(t)?;
        } else {
            f(text)?;
        }
    }
}

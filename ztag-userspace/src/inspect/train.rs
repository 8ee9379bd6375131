//! Training and evaluation of the detector on the labelled data
//! (`cargo xtask train-detector`, `ztag inspect eval`).
//!
//! Training uses only the `train` split (see [`super::dataset`]). The
//! threshold is chosen by 4-fold cross-validation inside it: the out-of-fold
//! scores of its benign samples set the lowest threshold whose
//! false-positive rate is at most [`TARGET_FPR`]. The reported figures come
//! from the `test` split, which neither step sees.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::classifier::{self, Features, Model, TrainParams};
use super::dataset::{self, Sample, Split};
use super::detector::Detector;

/// False-positive rate the threshold aims at on cross-validated scores
/// (below the 1 % goal, for margin on unseen data).
pub const TARGET_FPR: f64 = 0.006;
const FOLDS: usize = 4;

/// Per-source counts on one split.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    /// Source set.
    pub source: &'static str,
    /// Attacks and how many were caught.
    pub attacks: usize,
    /// Caught attacks.
    pub caught: usize,
    /// Benign samples.
    pub benign: usize,
    /// Benign samples flagged.
    pub false_positives: usize,
}

/// Evaluation of a detector on the held-out split.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per source, in first-seen order.
    pub sources: Vec<SourceStats>,
    /// Threshold used.
    pub threshold: f32,
    /// Rule firing counts and weights on the training split (Markdown).
    pub rules: String,
}

impl Report {
    /// Totals over every source.
    pub fn total(&self) -> SourceStats {
        let mut t = SourceStats {
            source: "all",
            ..Default::default()
        };
        for s in &self.sources {
            t.attacks += s.attacks;
            t.caught += s.caught;
            t.benign += s.benign;
            t.false_positives += s.false_positives;
        }
        t
    }

    /// A Markdown table of the figures.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| source | attacks | caught | TPR | benign | flagged | FPR |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in self.sources.iter().chain(std::iter::once(&self.total())) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.source,
                s.attacks,
                s.caught,
                pct(s.caught, s.attacks),
                s.benign,
                s.false_positives,
                pct(s.false_positives, s.benign)
            );
        }
        out
    }
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "–".into()
    } else {
        format!("{:.1}%", a as f64 * 100.0 / b as f64)
    }
}

/// Trains on the `train` split under `root` and returns the model (with its
/// threshold) and the held-out report.
pub fn train(root: &Path) -> Result<(Model, Report)> {
    let samples = dataset::load(root)?;
    let probe = Detector::with_model(empty_model());
    let train: Vec<&Sample> = samples.iter().filter(|s| s.split == Split::Train).collect();
    let mut hash = classifier::FINGERPRINT_SEED;
    let mut data: Vec<(Features, bool)> = Vec::with_capacity(train.len());
    for s in &train {
        hash = classifier::fingerprint(hash, s.text.as_bytes());
        hash = classifier::fingerprint(hash, &[s.injection as u8]);
        let mut f = Vec::new();
        let mut hits = Vec::new();
        probe.analyze(&s.text, &mut f, &mut hits);
        data.push((f, s.injection));
    }
    let params = TrainParams::default();
    let weights = source_weights(&train);
    let mut oof_benign = Vec::new();
    for k in 0..FOLDS {
        let keep = |i: &usize| i % FOLDS != k;
        let fit: Vec<(Features, bool)> = (0..data.len())
            .filter(keep)
            .map(|i| data[i].clone())
            .collect();
        let fw: Vec<f64> = (0..data.len()).filter(keep).map(|i| weights[i]).collect();
        let m = classifier::train(&fit, &fw, params, hash);
        for (_, d) in data
            .iter()
            .enumerate()
            .filter(|(i, d)| i % FOLDS == k && !d.1)
        {
            oof_benign.push(m.score(&d.0));
        }
    }
    let mut model = classifier::train(&data, &weights, params, hash);
    model.threshold = threshold(&mut oof_benign);
    let det = Detector::with_model(model.clone());
    let mut report = evaluate(&det, &samples, Split::Test);
    report.rules = rule_table(&det, &samples, Split::Train);
    Ok((model, report))
}

/// The lowest threshold that keeps the benign scores' flag rate at most
/// [`TARGET_FPR`].
fn threshold(benign: &mut [f32]) -> f32 {
    benign.sort_by(|a, b| b.total_cmp(a));
    let allowed = (benign.len() as f64 * TARGET_FPR).floor() as usize;
    let t = match benign.get(allowed) {
        Some(&s) => s + 1e-4,
        None => 0.5,
    };
    t.clamp(0.05, 0.99)
}

/// Scores one split of the data with `det`.
pub fn evaluate(det: &Detector, samples: &[Sample], split: Split) -> Report {
    let mut r = Report {
        threshold: det.threshold(),
        ..Default::default()
    };
    for s in samples.iter().filter(|s| s.split == split) {
        let flagged = det.score(&s.text) >= det.threshold();
        let idx = match r.sources.iter().position(|x| x.source == s.source) {
            Some(i) => i,
            None => {
                r.sources.push(SourceStats {
                    source: s.source,
                    ..Default::default()
                });
                r.sources.len() - 1
            }
        };
        let st = &mut r.sources[idx];
        if s.injection {
            st.attacks += 1;
            st.caught += flagged as usize;
        } else {
            st.benign += 1;
            st.false_positives += flagged as usize;
        }
    }
    r
}

/// Per-sample weights: a source with more than [`SOURCE_CAP`] samples
/// weighs as much as [`SOURCE_CAP`] samples in total, so one large set
/// (Tensor Trust's 1,300 attacks) does not teach its own style only.
fn source_weights(train: &[&Sample]) -> Vec<f64> {
    use std::collections::HashMap;
    let mut n: HashMap<&str, usize> = HashMap::new();
    for s in train {
        *n.entry(s.source).or_default() += 1;
    }
    train
        .iter()
        .map(|s| (SOURCE_CAP / n[s.source] as f64).min(1.0))
        .collect()
}

/// See [`source_weights`].
const SOURCE_CAP: f64 = 300.0;

fn empty_model() -> Model {
    classifier::train(
        &[],
        &[],
        TrainParams {
            epochs: 0,
            ..Default::default()
        },
        0,
    )
}

/// TPR and FPR on `split` at each threshold in `thresholds` (a curve for
/// choosing one's own trade-off).
pub fn sweep(det: &Detector, samples: &[Sample], split: Split, thresholds: &[f32]) -> String {
    let scored: Vec<(f32, bool)> = samples
        .iter()
        .filter(|s| s.split == split)
        .map(|s| (det.score(&s.text), s.injection))
        .collect();
    let attacks = scored.iter().filter(|s| s.1).count();
    let benign = scored.len() - attacks;
    let mut out = String::from("| threshold | TPR | FPR |\n|---:|---:|---:|\n");
    for &t in thresholds {
        let tp = scored.iter().filter(|s| s.1 && s.0 >= t).count();
        let fp = scored.iter().filter(|s| !s.1 && s.0 >= t).count();
        let _ = writeln!(
            out,
            "| {t:.3} | {} | {} |",
            pct(tp, attacks),
            pct(fp, benign)
        );
    }
    out
}

/// The misclassified samples of `split` (missed attacks, flagged benign
/// prompts), with their scores, for looking at what the detector gets wrong.
pub fn errors(det: &Detector, samples: &[Sample], split: Split) -> String {
    let mut out = String::new();
    for s in samples.iter().filter(|s| s.split == split) {
        let v = det.detect(&s.text);
        if v.injection != s.injection {
            let kind = if s.injection {
                "missed"
            } else {
                "false-positive"
            };
            let text: String = s
                .text
                .chars()
                .take(160)
                .collect::<String>()
                .replace('\n', " ");
            let _ = writeln!(
                out,
                "{kind}\t{}\t{:.3}\t{}\t{text}",
                s.source,
                v.score,
                v.reasons.join(",")
            );
        }
    }
    out
}

/// How often each rule fires on attacks and on benign samples of `split`,
/// with its learned weight: which rules carry the verdicts.
pub fn rule_table(det: &Detector, samples: &[Sample], split: Split) -> String {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let (mut f, mut hits) = (Vec::new(), Vec::new());
    for s in samples.iter().filter(|s| s.split == split) {
        det.analyze(&s.text, &mut f, &mut hits);
        for h in &hits {
            let c = counts.entry(h.id).or_default();
            if s.injection {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    let mut out = String::from("| rule | attacks | benign | weight |\n|---|---:|---:|---:|\n");
    for (id, (a, b)) in counts {
        let _ = writeln!(
            out,
            "| {id} | {a} | {b} | {:.2} |",
            det.model().rule_weight(id)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask train-detector` is reproducible: training again on the
    /// same data gives the shipped weights byte for byte; and the held-out
    /// figures it reports stay where they were measured.
    #[test]
    fn retraining_reproduces_the_shipped_weights() {
        let (model, report) = train(&crate::authz::shared_data()).expect("training data loads");
        println!("held-out split:\n{}", report.table());
        assert!(
            model.to_bytes() == super::super::detector::EMBEDDED_WEIGHTS,
            "retrained weights differ from models/detector.bin: run `cargo xtask train-detector` and commit"
        );
        let t = report.total();
        assert!(
            t.false_positives * 100 <= t.benign,
            "held-out FPR over 1%: {t:?}"
        );
        assert!(
            t.caught * 100 >= t.attacks * 80,
            "held-out TPR under 80%: {t:?}"
        );
    }
}

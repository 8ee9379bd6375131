//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the cargo-fuzz targets of
//! `fuzz/` (every `[[bin]]` of fuzz/Cargo.toml, or the one named) for N
//! seconds each with the nightly toolchain, installing cargo-fuzz first when
//! it is missing. Crashes land in fuzz/artifacts/TARGET/ and fail the run;
//! each one found so far is a regression test next to its parser.

use anyhow::Result;
use clap::Args;

use crate::{header, run_command, setup};

#[derive(Args)]
pub struct FuzzArgs {
    /// One target (see fuzz/Cargo.toml: packet, cidr, config, path, jwt,
    /// h1scan, fga_dsl, fga_api, inspect_detector, inspect_content,
    /// inspect_codecs, agent_mcp, fleet); default: every one in turn.
    target: Option<String>,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    header("setup");
    setup::run()?;
    let have = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", setup::path_with_cargo_bin())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        header("cargo install cargo-fuzz --locked");
        run_command(&mut crate::cargo(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets = match args.target {
        Some(t) => vec![t],
        None => targets()?,
    };
    let mut failed = Vec::new();
    for t in &targets {
        header(&format!("cargo +nightly fuzz run {t} ({} s)", args.seconds));
        let mut cmd = std::process::Command::new("rustup");
        cmd.args(["run", "nightly", "cargo", "fuzz", "run", t, "--"])
            .arg(format!("-max_total_time={}", args.seconds))
            .current_dir(crate::workspace_root().join("fuzz"))
            .env("PATH", setup::path_with_cargo_bin());
        if let Err(e) = run_command(&mut cmd) {
            eprintln!("fuzz target {t}: {e:#} (the input is under fuzz/artifacts/{t}/)");
            failed.push(t.clone());
        }
    }
    if failed.is_empty() {
        eprintln!(
            "fuzzed {} target(s) for {} s each: no crash",
            targets.len(),
            args.seconds
        );
        Ok(())
    } else {
        anyhow::bail!(
            "crashes in: {} (make each a regression test)",
            failed.join(", ")
        )
    }
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in file order.
fn targets() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(crate::workspace_root().join("fuzz/Cargo.toml"))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
        } else if in_bin && let Some(v) = l.strip_prefix("name") {
            let name = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            out.push(name.to_string());
        }
    }
    anyhow::ensure!(!out.is_empty(), "no [[bin]] targets in fuzz/Cargo.toml");
    Ok(out)
}

//! `cargo xtask fuzz TARGET [--seconds N]`: runs a cargo-fuzz target of
//! `fuzz/` (cidr, config, path, jwt, h1scan, fga_dsl, fga_api, inspect_detector, inspect_content, inspect_codecs, agent_mcp) with the nightly toolchain, installing cargo-fuzz
//! first when it is missing. Crashes land in fuzz/artifacts/TARGET/.

use anyhow::Result;
use clap::Args;

use crate::{header, run_command, setup};

#[derive(Args)]
pub struct FuzzArgs {
    /// The target: cidr, config, path, jwt, h1scan, fga_dsl, fga_api, inspect_detector, inspect_content, inspect_codecs, agent_mcp or fleet (see fuzz/Cargo.toml).
    target: String,
    /// How long to fuzz.
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
    header(&format!("cargo +nightly fuzz run {}", args.target));
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "run", &args.target, "--"])
        .arg(format!("-max_total_time={}", args.seconds))
        .current_dir(crate::workspace_root().join("fuzz"))
        .env("PATH", setup::path_with_cargo_bin());
    run_command(&mut cmd)
}

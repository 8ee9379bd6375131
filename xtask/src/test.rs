//! `cargo xtask test`: setup, lint, build everything, run the test suite.

use std::env;

use anyhow::Result;
use clap::Args;

use crate::{header, run_command, setup};

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    no_lint: bool,
}

pub fn run(args: TestArgs) -> Result<()> {
    header("setup");
    setup::run()?;

    if !args.no_lint {
        header("cargo fmt --all -- --check");
        run_command(&mut crate::cargo(["fmt", "--all", "--", "--check"]))?;

        // The default members: ztag-ebpf builds only for the BPF target
        // (through ztag-userspace's build.rs), never for the host.
        header("cargo clippy --all-targets -- -D warnings");
        run_command(&mut crate::cargo([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }

    header("cargo build --all-targets");
    run_command(&mut crate::cargo(["build", "--all-targets"]))?;

    header("cargo test");
    let mut test = crate::cargo(["test"]);
    if env::var("CI").is_ok_and(|v| v == "true") {
        eprintln!("CI=true: exporting ZTAG_REQUIRE_PRIVILEGED=1 (skips become failures)");
        test.env("ZTAG_REQUIRE_PRIVILEGED", "1");
    }
    run_command(&mut test)
}

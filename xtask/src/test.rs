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

    // A fresh CI checkout gains nothing from incremental compilation; its
    // caches would take gigabytes of disk for one build.
    let ci = env::var("CI").is_ok_and(|v| v == "true");
    let cargo = |args: &[&str]| {
        let mut c = crate::cargo(args.iter().copied());
        if ci {
            c.env("CARGO_INCREMENTAL", "0");
        }
        c
    };

    if !args.no_lint {
        header("cargo fmt --all -- --check");
        run_command(&mut cargo(&["fmt", "--all", "--", "--check"]))?;

        // The default members: ztag-ebpf builds only for the BPF target
        // (through ztag-userspace's build.rs), never for the host.
        header("cargo clippy --all-targets -- -D warnings");
        run_command(&mut cargo(&[
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }

    header("cargo build --all-targets");
    run_command(&mut cargo(&["build", "--all-targets"]))?;

    header("cargo test");
    let mut test = cargo(&["test"]);
    if ci {
        eprintln!("CI=true: exporting ZTAG_REQUIRE_PRIVILEGED=1 (skips become failures)");
        test.env("ZTAG_REQUIRE_PRIVILEGED", "1");
    }
    run_command(&mut test)
}

//! `cargo xtask run [-- ARGS...]`: setup, then run the gateway (release).

use std::ffi::OsString;

use anyhow::Result;
use clap::Args;

use crate::{header, run_command, setup};

#[derive(Args)]
pub struct RunArgs {
    /// Extra arguments for `ztag run`, e.g. `--config examples/default/ztag.toml`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: RunArgs) -> Result<()> {
    header("setup");
    setup::run()?;

    header("cargo run --release -p ztag-userspace --bin ztag -- run");
    let mut run = crate::cargo([
        "run",
        "--release",
        "-p",
        "ztag-userspace",
        "--bin",
        "ztag",
        "--",
        "run",
    ]);
    run.args(&args.args);
    run_command(&mut run)
}

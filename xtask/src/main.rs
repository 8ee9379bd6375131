//! Developer tasks for the ztag workspace: `cargo xtask <setup|test|run|bench|fuzz>`.

mod bench;
mod fuzz;
mod report;
mod run;
mod setup;
mod test;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "ztag developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing to build and test ztag (idempotent).
    Setup,
    /// Setup, lint (fmt + clippy), build and run the workspace tests.
    Test(test::TestArgs),
    /// Setup, then run the gateway in release mode.
    Run(run::RunArgs),
    /// Setup, then run a benchmark (`bench xdp`, `bench proxy` or `bench fga`, `--quick`; xdp needs root).
    Bench(bench::BenchArgs),
    /// Run a fuzz target of fuzz/ for a while (nightly, cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Retrain the prompt-injection detector from ../shared/data and write
    /// ztag-userspace/models/detector.bin (deterministic: the same data gives
    /// the same bytes); prints the held-out report.
    TrainDetector,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(args),
        Task::Run(args) => run::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::TrainDetector => train_detector(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask train-detector`.
fn train_detector() -> Result<()> {
    let root = workspace_root();
    let data = std::env::var_os("ZTAG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let out = root.join("ztag-userspace/models/detector.bin");
    header("training the prompt-injection detector");
    run_command(
        cargo([
            "run",
            "--release",
            "-q",
            "-p",
            "ztag-userspace",
            "--bin",
            "ztag",
            "--",
            "inspect",
            "train",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out),
    )
}

/// The workspace root (parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Render a command line for messages.
fn describe(program: &OsStr, args: &[&OsStr]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for arg in args {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Run `program args...` in the workspace root with inherited stdio; fail
/// with an error naming the command if it cannot start or exits non-zero.
pub fn cmd<P, I, S>(program: P, args: I) -> Result<()>
where
    P: AsRef<OsStr>,
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program.as_ref());
    command.args(args).current_dir(workspace_root());
    run_command(&mut command)
}

/// Run a prepared command with inherited stdio; errors name the command.
pub fn run_command(command: &mut Command) -> Result<()> {
    let args: Vec<&OsStr> = command.get_args().collect();
    let line = describe(command.get_program(), &args);
    let status = command
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// A `cargo` command (the cargo running xtask, if known) in the workspace
/// root, with the cargo bin directory on PATH so aya-build finds bpf-linker.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_cargo_bin());
    command
}

/// Print a step header.
pub fn header(title: &str) {
    eprintln!("\n==> {title}");
}

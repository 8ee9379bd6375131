//! The `ztag` binary: parse, run, print the error chain, pick the exit code.
use std::process::ExitCode;

use clap::Parser;

/// Huge pages for the large tables (see `ztag::alloc`).
#[global_allocator]
static ALLOC: ztag::alloc::ZtagAlloc = ztag::alloc::ZtagAlloc;

fn main() -> ExitCode {
    let cli = ztag::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZTAG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        // One JSON object per line on stdout, for journald or a collector
        // (no files, so nothing to rotate).
        ztag::cli::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .init(),
        ztag::cli::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only on a terminal: log files and journals get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // `run` sizes the data plane from gateway.workers (0: one per core).
    let workers = ztag::cli::worker_threads(&cli);
    // One worker: a current-thread runtime. Every task and the IO driver
    // then live on the one thread, with no work-stealing bookkeeping and
    // no cross-thread wakeups (measured: lower CPU per request and a
    // shorter latency tail than a one-worker multi-thread runtime).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().thread_name("ztag");
    if workers > 1 {
        builder.worker_threads(workers);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ztag: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ztag::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztag: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

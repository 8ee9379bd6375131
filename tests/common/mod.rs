//! Shared helpers of the end-to-end tests: the privileged-test policy, unique
//! names, guards that always clean up (pin directories, network namespaces,
//! daemon processes), and a two-namespace topology with a real HTTP server.
#![allow(missing_docs)]

pub mod gateway;
pub mod idp;
pub mod oauth;
pub mod pki;
pub mod upstream;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

/// True when the test may use root-only facilities (BPF, namespaces).
/// Without root the test reports itself skipped by name; under CI=true (or
/// ZTAG_REQUIRE_PRIVILEGED=1) a skip is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let strict = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ZTAG_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if strict {
        panic!("{test} needs root (BPF, network namespaces) and CI requires it to run");
    }
    eprintln!("SKIPPED {test}: needs root (BPF, network namespaces)");
    false
}

/// Whether `tool` is on PATH; like [`privileged`], a missing tool skips the
/// test with a line, except under CI=true (the setup installs it) where it
/// fails.
pub fn tool_available(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let strict = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ZTAG_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if strict {
        panic!("{test} needs {tool} (installed by `cargo xtask setup`)");
    }
    eprintln!("SKIPPED {test}: {tool} is not installed (`cargo xtask setup`)");
    false
}

/// A short name unique to this process and call (fits interface names).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// The `ztag` binary under test.
/// OpenFGA's CLI: `$ZTAG_FGA`, else where `cargo xtask setup` installs it
/// (`$XDG_DATA_HOME/ztag/fga/bin/fga`, default under `~/.local/share`),
/// else `fga` on PATH.
pub fn fga_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ZTAG_FGA").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    if let Some(d) = data {
        let p = d.join("ztag/fga/bin/fga");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("fga")
}

/// The MCP Python SDK's interpreter: `$ZTAG_MCP_PYTHON`, else the venv
/// `cargo xtask setup` makes (`$XDG_DATA_HOME/ztag/mcp`, default under
/// `~/.local/share`).
pub fn mcp_python() -> PathBuf {
    if let Some(p) = std::env::var_os("ZTAG_MCP_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .expect("HOME or XDG_DATA_HOME");
    let p = data.join("ztag/mcp/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the MCP Python SDK)",
        p.display()
    );
    p
}

pub fn ztag_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ZTAG_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("target/debug/ztag");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build`; `cargo xtask test` does)",
        p.display()
    );
    p
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes every pin under a test's own bpffs directory on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            unique("ztag-test-")
        )))
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = ztag::xdp::detach_all(&self.0);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("ztag-e2e-"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME args...`, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Path for nsenter; unlike `ip netns exec`, nsenter keeps /sys/fs/bpf
    /// (the pins) visible.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A killable child process, SIGKILLed and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(|c| c.id())
    }

    /// Sends SIGTERM and waits for the exit (`None` if still running
    /// after `within`; the process is then left to the drop's SIGKILL).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.0 = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two namespaces joined by a veth pair: `srv` (198.18.N.1, HTTP server on
/// port 8080, the ztag program attached to its veth) and `cli` with two
/// addresses, 198.18.N.2 and 198.18.N.3, so one source can be blocked while
/// the other is served. 198.18.0.0/15 is the benchmarking range (RFC 2544).
pub struct Topology {
    // Field order is drop order: processes, then namespaces.
    pub server: Proc,
    pub srv: NetNs,
    pub cli: NetNs,
    pub srv_if: String,
    pub net: u8,
}

impl Topology {
    pub fn new() -> Self {
        static NET: AtomicU32 = AtomicU32::new(0);
        let net = (std::process::id() + NET.fetch_add(1, Ordering::Relaxed) * 7) % 250 + 1;
        let net = net as u8;
        let srv = NetNs::new(unique("ztsrv"));
        let cli = NetNs::new(unique("ztcli"));
        let srv_if = unique("zs");
        let cli_if = unique("zc");
        sh(&[
            "ip", "link", "add", &srv_if, "netns", &srv.name, "type", "veth", "peer", "name",
            &cli_if, "netns", &cli.name,
        ]);
        let a = |h: u8| format!("198.18.{net}.{h}/24");
        srv.exec(&["ip", "addr", "add", &a(1), "dev", &srv_if]);
        cli.exec(&["ip", "addr", "add", &a(2), "dev", &cli_if]);
        cli.exec(&["ip", "addr", "add", &a(3), "dev", &cli_if]);
        srv.exec(&["ip", "link", "set", &srv_if, "up"]);
        cli.exec(&["ip", "link", "set", &cli_if, "up"]);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &srv.name,
                "python3",
                "-m",
                "http.server",
                "--bind",
            ])
            .arg(format!("198.18.{net}.1"))
            .arg("8080")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server");
        let t = Topology {
            server: Proc(Some(child)),
            srv,
            cli,
            srv_if,
            net,
        };
        // Wait for the server to answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.served(2) {
            assert!(
                Instant::now() < deadline,
                "test HTTP server did not come up"
            );
            sleep(Duration::from_millis(100));
        }
        t
    }

    /// Address 198.18.N.host.
    pub fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.net)
    }

    /// Whether an HTTP GET from 198.18.N.host gets an answer within 1 s.
    pub fn served(&self, host: u8) -> bool {
        self.served_within(host, "1")
    }

    /// Same, with a max time in seconds (curl syntax).
    pub fn served_within(&self, host: u8, secs: &str) -> bool {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.cli.name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}", "--max-time", secs, "--interface"])
            .arg(self.addr(host))
            .arg(format!("http://{}:8080/", self.addr(1)))
            .output()
            .expect("running curl");
        out.status.success() && out.stdout == b"200"
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A `ztag run` daemon inside a namespace with its own pin dir, state dir
/// and admin socket.
pub struct Daemon {
    pub proc: Proc,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub ns_path: String,
}

impl Daemon {
    /// Writes a config for `iface` in `mode` and starts the daemon.
    pub fn start(ns: &NetNs, iface: &str, mode: &str, pins: &PinDir, dir: &TempDir) -> Self {
        Self::start_with(ns, iface, mode, pins, dir, "")
    }

    /// Same, with more TOML at the end of the config.
    pub fn start_with(
        ns: &NetNs,
        iface: &str,
        mode: &str,
        pins: &PinDir,
        dir: &TempDir,
        extra: &str,
    ) -> Self {
        Self::start_full(ns, iface, mode, pins, dir, "", extra)
    }

    /// Same, with more keys in `[admin]` (e.g. the TCP listener).
    pub fn start_full(
        ns: &NetNs,
        iface: &str,
        mode: &str,
        pins: &PinDir,
        dir: &TempDir,
        admin_extra: &str,
        extra: &str,
    ) -> Self {
        let socket = dir.0.join("admin.sock");
        let config = dir.0.join("ztag.toml");
        std::fs::write(
            &config,
            format!(
                "[xdp]\ninterfaces = [\"{iface}\"]\nmode = \"{mode}\"\npin_dir = \"{}\"\nsweep_interval = \"200ms\"\nevents_sample_one_in = 1\n\n[state]\ndir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n{admin_extra}\n\n[metrics]\nlisten = \"127.0.0.1:9477\"\n{extra}\n",
                pins.0.display(),
                dir.0.join("state").display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            proc: Proc(None),
            socket,
            config,
            log: dir.0.join("ztag.log"),
            ns_path: ns.path(),
        };
        d.restart();
        d
    }

    /// (Re)starts the process and waits until its admin API answers.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .arg(ztag_bin())
            .args(["--socket"])
            .arg(&self.socket)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting ztag run");
        self.proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["stats"]).status.success() {
                return;
            }
            if let Some(c) = self.proc.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("ztag run exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ztag run did not come up:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `ztag --socket S args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(ztag_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the ztag CLI")
    }

    /// Runs the CLI and panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ztag {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

//! Helpers the gateway benchmarks share (`#[path]`-included).

use std::{
    net::TcpStream,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

/// A child process killed (and reaped) on drop.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (up to 20 s) until something accepts on `port`.
pub fn wait_port(port: u16) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `ztag` (or `$ZTAG_BIN`), which must exist.
pub fn ztag_bin() -> PathBuf {
    let ztag = std::env::var_os("ZTAG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/ztag"));
    assert!(
        ztag.exists(),
        "{} missing: cargo build --release --bin ztag",
        ztag.display()
    );
    ztag
}

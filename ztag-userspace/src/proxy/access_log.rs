//! The JSON access log: one line per request, written by a thread of its
//! own so that a slow disk never stalls the data plane. When the queue is
//! full, lines are dropped and counted (`ztag_access_log_dropped_total`)
//! rather than blocking requests.

use std::{
    io::Write,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
};

use prometheus::IntCounter;
use serde::Serialize;

use super::config::AccessLogTarget;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 time the request head arrived (UTC, ms).
    pub time: String,
    /// Listener name.
    pub listener: &'a str,
    /// TCP peer.
    pub peer: String,
    /// Client address (X-Forwarded-For from trusted proxies, else the peer).
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Host (lower case, no port).
    pub host: &'a str,
    /// Normalised path (what routing, policy and the upstream saw); the
    /// query string is not logged (it may carry secrets).
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'a str,
    /// Route name, when one matched.
    pub route: Option<&'a str>,
    /// Response status.
    pub status: u16,
    /// Why ztag answered itself (`no_route`, `expired`, `upstream_timeout`…).
    pub reason: Option<&'a str>,
    /// Verified subject.
    pub subject: Option<&'a str>,
    /// Verified client id.
    pub client_id: Option<&'a str>,
    /// Upstream peer used.
    pub upstream: Option<&'a str>,
    /// Time to response head, seconds.
    pub duration_s: f64,
}

/// Sends lines to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer for `target`.
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { tx: None, dropped }),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
        std::thread::Builder::new()
            .name("ztag-access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
        })
    }

    /// Whether lines are written at all (skip building them when not).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one entry.
    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = match serde_json::to_vec(e) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Batch what is already queued, then flush so lines show up promptly.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time crate.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = |s: u64, ms: u64| {
            rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(s * 1000 + ms))
        };
        assert_eq!(t(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(t(1_795_887_000, 123), "2026-11-28T17:30:00.123Z");
    }
}

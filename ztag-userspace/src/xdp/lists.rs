//! The allow-, block- and dynamic lists as operators and the risk engine see
//! them: every change goes to the state DB and to the kernel's maps in one
//! step (the DB transaction commits only after the maps took the change), so
//! "acknowledged" means durable and enforced. Also the TTL sweeper and the
//! start-up reconciliation of maps to the DB.

use std::{collections::HashSet, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::info;
use ztag_common::{XdpConfig, config_flags as cf};

use super::{MapList, Plane, XdpError, boottime_ns, cidr, expiry_to_boot_ns};
use crate::state::{
    Entry, FleetOp, FleetRecord, ListKind, Origin, StateDb, StateError, Writer, now_ms, now_us,
};

/// Errors of list operations, each mapped to one admin API status.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The operator's input was wrong (400).
    #[error("{0}")]
    BadInput(String),
    /// Several import lines were wrong; nothing was applied (400).
    #[error("{} invalid line(s), nothing was imported:\n{}", .0.len(), .0.iter().take(20).map(|(n, e)| format!("  line {n}: {e}")).collect::<Vec<_>>().join("\n"))]
    BadLines(Vec<(usize, String)>),
    /// The entry does not exist (404).
    #[error("{0} is not on the {1} list")]
    NotFound(String, &'static str),
    /// The state DB failed (500).
    #[error(transparent)]
    State(#[from] StateError),
    /// The kernel maps failed (500).
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// The daemon runs without the kernel plane (503).
    #[error(
        "the kernel plane is disabled on this gateway (xdp.enabled = false): no lists to manage"
    )]
    Disabled,
    /// Fleet mode: Redis has been away so long that the outbox is full
    /// (503); the change was not made.
    #[error(
        "the fleet outbox is full ({0} changes wait for Redis): change refused, nothing was applied"
    )]
    FleetQueueFull(u64),
}

impl From<rusqlite::Error> for ListError {
    fn from(e: rusqlite::Error) -> Self {
        ListError::State(StateError::Sqlite(e))
    }
}

/// An entry as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// "allow", "block" or "dynamic".
    pub kind: ListKind,
    /// The prefix.
    pub cidr: String,
    /// Wall-clock expiry (ms since the epoch), if any.
    pub expires_at_ms: Option<i64>,
    /// Seconds left, if it expires.
    pub ttl_secs: Option<u64>,
    /// The reason given.
    pub reason: Option<String>,
    /// When it was added (ms since the epoch).
    pub created_at_ms: i64,
    /// Who added it: "cli", "dashboard", "risk" or "fleet".
    #[serde(default)]
    pub origin: Origin,
}

impl EntryView {
    fn from_entry(e: &Entry, now: i64) -> Self {
        EntryView {
            kind: e.kind,
            cidr: e.cidr.to_string(),
            expires_at_ms: e.expires_at_ms,
            ttl_secs: e
                .expires_at_ms
                .map(|x| ((x - now).max(0) as u64).div_ceil(1000)),
            reason: e.reason.clone(),
            created_at_ms: e.created_at_ms,
            origin: e.origin,
        }
    }
}

fn map_list(kind: ListKind) -> MapList {
    match kind {
        ListKind::Allow => MapList::Allow,
        ListKind::Block => MapList::Block,
        ListKind::Dynamic => MapList::Dynamic,
    }
}

/// Per-map entry counts (allow, block prefixes, dynamic, block hosts; per
/// family); they drive the "map is non-empty" flags the program uses to skip
/// lookups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    v4: [u64; 4],
    v6: [u64; 4],
}

/// Index of the host blocklist in [`Counts`].
const HOST: usize = 3;

/// Writes the program config when the flags (or settings) changed.
fn push_config(plane: &mut Plane, counts: &Counts, base: &XdpConfig) -> Result<(), XdpError> {
    let cfg = XdpConfig {
        flags: counts.flags() | cf::INITIALISED,
        ..*base
    };
    if cfg != plane.current_config() {
        plane.write_config(cfg)?;
    }
    Ok(())
}

/// The map an entry lives in: single blocked addresses go to the host hash.
fn map_idx(k: ListKind, host: bool) -> usize {
    if k == ListKind::Block && host {
        HOST
    } else {
        kind_idx(k)
    }
}

fn kind_idx(k: ListKind) -> usize {
    match k {
        ListKind::Allow => 0,
        ListKind::Block => 1,
        ListKind::Dynamic => 2,
    }
}

impl Counts {
    /// From (list, is IPv6, is a single address, count) rows.
    fn from_rows(rows: &[(ListKind, bool, bool, u64)]) -> Self {
        let mut c = Counts::default();
        for &(k, v6, host, n) in rows {
            let i = map_idx(k, host);
            if v6 {
                c.v6[i] += n;
            } else {
                c.v4[i] += n;
            }
        }
        c
    }

    fn slot(&mut self, k: ListKind, net: &IpNet) -> &mut u64 {
        let i = map_idx(k, super::is_host(net));
        match net {
            IpNet::V4(_) => &mut self.v4[i],
            IpNet::V6(_) => &mut self.v6[i],
        }
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        let bits = [
            (self.v4[0], cf::HAS_ALLOW_V4),
            (self.v6[0], cf::HAS_ALLOW_V6),
            (self.v4[1], cf::HAS_BLOCK_V4),
            (self.v6[1], cf::HAS_BLOCK_V6),
            (self.v4[2], cf::HAS_DYN_V4),
            (self.v6[2], cf::HAS_DYN_V6),
            (self.v4[HOST], cf::HAS_BLOCK_HOST_V4),
            (self.v6[HOST], cf::HAS_BLOCK_HOST_V6),
        ];
        for (n, bit) in bits {
            if n > 0 {
                f |= bit;
            }
        }
        f
    }
}

/// The state DB and the kernel maps, kept in step.
pub struct Enforcer {
    db: StateDb,
    plane: Plane,
    counts: Counts,
    base: XdpConfig,
    /// Fleet mode: local changes are queued for Redis, up to this many.
    outbox: Option<u64>,
    /// Woken after a change was queued (the fleet's sender).
    queued: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// How an entry is to be added.
#[derive(Debug, Clone, Default)]
pub struct AddSpec {
    /// Time to live; `None`: permanent.
    pub ttl: Option<Duration>,
    /// Free-text reason.
    pub reason: Option<String>,
    /// Who adds it.
    pub origin: Origin,
}

/// Longest reason text accepted.
pub const MAX_REASON_LEN: usize = 256;

fn check_reason(reason: &Option<String>) -> Result<(), ListError> {
    if let Some(r) = reason {
        if r.len() > MAX_REASON_LEN {
            return Err(ListError::BadInput(format!(
                "reason is {} bytes; at most {MAX_REASON_LEN} are kept",
                r.len()
            )));
        }
        if r.chars().any(|c| c.is_control()) {
            return Err(ListError::BadInput(
                "reason contains control characters".into(),
            ));
        }
    }
    Ok(())
}

fn check_ttl(ttl: Option<Duration>) -> Result<(), ListError> {
    if let Some(t) = ttl {
        if t.is_zero() {
            return Err(ListError::BadInput(
                "ttl must be positive (omit it for a permanent entry)".into(),
            ));
        }
        if t > Duration::from_secs(100 * 365 * 86_400) {
            return Err(ListError::BadInput(
                "ttl is over 100 years (omit it for a permanent entry)".into(),
            ));
        }
    }
    Ok(())
}

impl Enforcer {
    /// Joins the DB and the loaded plane; `base` carries the rate limit and
    /// sampling settings. Call [`Enforcer::reconcile`] next.
    pub fn new(db: StateDb, plane: Plane, base: XdpConfig) -> Self {
        Enforcer {
            db,
            plane,
            counts: Counts::default(),
            base,
            outbox: None,
            queued: None,
        }
    }

    /// Fleet mode: from now on, changes not from the fleet are queued in
    /// the state DB's outbox (at most `max`) in the same transaction.
    pub fn set_outbox(&mut self, max: u64, notify: std::sync::Arc<tokio::sync::Notify>) {
        self.outbox = Some(max);
        self.queued = Some(notify);
    }

    /// After a commit: wakes the fleet's sender if the change was queued.
    fn wake(&self, origin: Origin) {
        if origin != Origin::Fleet
            && let Some(n) = &self.queued
        {
            n.notify_one();
        }
    }

    /// Queues a change for the fleet, if fleet mode is on and the change is
    /// not the fleet's own. A full outbox refuses the change, except the
    /// risk engine's (it applies here only, with a warning).
    fn queue(
        outbox: Option<u64>,
        tx: &rusqlite::Transaction<'_>,
        rec: FleetRecord,
    ) -> Result<(), ListError> {
        let Some(max) = outbox else {
            return Ok(());
        };
        if rec.origin == Origin::Fleet {
            return Ok(());
        }
        let n = Writer::outbox_len(tx)?;
        if n >= max {
            if rec.origin == Origin::Risk {
                tracing::warn!(cidr = %rec.cidr, queued = n, "fleet outbox full: a risk decision applies on this gateway only");
                return Ok(());
            }
            return Err(ListError::FleetQueueFull(n));
        }
        Writer::outbox_push(tx, &rec)?;
        Ok(())
    }

    /// Outbox records waiting for Redis, oldest first.
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<(i64, FleetRecord)>, ListError> {
        Ok(self.db.outbox_peek(limit)?)
    }

    /// Drops outbox records Redis has.
    pub fn outbox_ack(&mut self, ids: &[i64]) -> Result<(), ListError> {
        Ok(self.db.outbox_ack(ids)?)
    }

    /// Records waiting for Redis.
    pub fn outbox_len(&self) -> Result<u64, ListError> {
        Ok(self.db.outbox_len()?)
    }

    /// The stored entry for a prefix, if any (expired or not).
    pub fn entry(&self, kind: ListKind, cidr_text: &str) -> Result<Option<Entry>, ListError> {
        let net = cidr::parse_cidr(cidr_text).map_err(|e| ListError::BadInput(e.to_string()))?;
        Ok(self.db.get(kind, &net)?)
    }

    /// Every stored entry, expired ones included (the fleet's resync).
    pub fn entries(&self) -> Result<Vec<Entry>, ListError> {
        Ok(self.db.list(None)?)
    }

    /// Replaces the rate limit and sampling settings (SIGHUP reload).
    pub fn set_program_config(&mut self, base: XdpConfig) -> Result<(), ListError> {
        self.base = XdpConfig { flags: 0, ..base };
        push_config(&mut self.plane, &self.counts, &self.base)?;
        Ok(())
    }

    /// The plane, for attaching and counters.
    pub fn plane(&self) -> &Plane {
        &self.plane
    }

    /// The plane, mutably.
    pub fn plane_mut(&mut self) -> &mut Plane {
        &mut self.plane
    }

    fn push_config(&mut self) -> Result<(), XdpError> {
        push_config(&mut self.plane, &self.counts, &self.base)
    }

    /// Makes the maps hold exactly the DB's live entries: removes keys the DB
    /// does not have (e.g. a write whose commit a crash interrupted), writes
    /// every DB entry, drops expired ones. Returns the number of live entries.
    pub fn reconcile(&mut self) -> Result<usize, ListError> {
        let now = now_ms();
        let boot = boottime_ns();
        // First sweep what expired while the daemon was away.
        self.sweep()?;
        let entries = self.db.list(None)?;
        self.counts = Counts::default();
        for e in &entries {
            *self.counts.slot(e.kind, &e.cidr) += 1;
        }
        // Flags first so that no lookup is skipped while entries go in.
        let cfg = XdpConfig {
            flags: self.counts.flags(),
            ..self.base
        };
        self.plane.write_config(cfg)?;
        for kind in ListKind::ALL {
            let want: HashSet<IpNet> = entries
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.cidr)
                .collect();
            let mut stale = 0;
            for k in self.plane.keys(map_list(kind))? {
                if !want.contains(&k) {
                    self.plane.remove(map_list(kind), &k)?;
                    stale += 1;
                }
            }
            if stale > 0 {
                info!(
                    list = kind.as_str(),
                    stale, "removed map entries the state DB does not have"
                );
            }
        }
        for e in &entries {
            let exp = expiry_to_boot_ns(e.expires_at_ms, now, boot);
            self.plane
                .insert(map_list(e.kind), &e.cidr, exp, e.reason_id)?;
        }
        Ok(entries.len())
    }

    /// Adds (or replaces) an entry. On return it is in the DB and the maps.
    pub fn add(
        &mut self,
        kind: ListKind,
        cidr_text: &str,
        spec: &AddSpec,
    ) -> Result<EntryView, ListError> {
        let net = cidr::parse_cidr(cidr_text).map_err(|e| ListError::BadInput(e.to_string()))?;
        check_reason(&spec.reason)?;
        check_ttl(spec.ttl)?;
        if kind == ListKind::Dynamic && net.prefix_len() != net.max_prefix_len() {
            return Err(ListError::BadInput(format!(
                "dynamic blocks are single addresses; {net} is a prefix"
            )));
        }
        let now = now_ms();
        let expires_at_ms = spec.ttl.map(|t| now + t.as_millis() as i64);
        let tx = self.db.transaction()?;
        let reason_id = Writer::reason_id(&tx, spec.reason.as_deref())?;
        let e = Entry {
            kind,
            cidr: net,
            expires_at_ms,
            reason: spec.reason.clone(),
            reason_id,
            created_at_ms: now,
            origin: spec.origin,
        };
        Self::queue(
            self.outbox,
            &tx,
            FleetRecord::local(
                kind,
                net.to_string(),
                FleetOp::Add,
                expires_at_ms,
                spec.reason.clone(),
                spec.origin,
                now_us(),
            ),
        )?;
        let new = Writer::upsert(&tx, &e)?;
        if new {
            *self.counts.slot(kind, &net) += 1;
            if let Err(err) = push_config(&mut self.plane, &self.counts, &self.base) {
                *self.counts.slot(kind, &net) -= 1;
                return Err(err.into());
            }
        }
        let exp = expiry_to_boot_ns(expires_at_ms, now, boottime_ns());
        if let Err(err) = self.plane.insert(map_list(kind), &net, exp, reason_id) {
            if new {
                *self.counts.slot(kind, &net) -= 1;
                let _ = push_config(&mut self.plane, &self.counts, &self.base);
            }
            return Err(err.into());
        }
        tx.commit()?;
        self.wake(spec.origin);
        Ok(EntryView::from_entry(&e, now))
    }

    /// Removes an entry from the DB and the maps.
    pub fn remove(&mut self, kind: ListKind, cidr_text: &str) -> Result<(), ListError> {
        self.remove_from(kind, cidr_text, Origin::Cli)
    }

    /// Removes an entry; `origin` says who asked (the fleet's own removals
    /// are not queued back to it).
    pub fn remove_from(
        &mut self,
        kind: ListKind,
        cidr_text: &str,
        origin: Origin,
    ) -> Result<(), ListError> {
        let net = cidr::parse_cidr(cidr_text).map_err(|e| ListError::BadInput(e.to_string()))?;
        let tx = self.db.transaction()?;
        if !Writer::remove(&tx, kind, &net)? {
            return Err(ListError::NotFound(net.to_string(), kind.as_str()));
        }
        Self::queue(
            self.outbox,
            &tx,
            FleetRecord::local(
                kind,
                net.to_string(),
                FleetOp::Del,
                None,
                None,
                origin,
                now_us(),
            ),
        )?;
        self.plane.remove(map_list(kind), &net)?;
        tx.commit()?;
        self.wake(origin);
        let slot = self.counts.slot(kind, &net);
        *slot = slot.saturating_sub(1);
        push_config(&mut self.plane, &self.counts, &self.base)?;
        Ok(())
    }

    /// Adds many entries at once (one per line; blank lines and `#` comments
    /// are skipped; a line may be `CIDR` or `CIDR reason text`). Every line is
    /// validated first: if any is wrong, nothing is applied and every bad
    /// line is reported with its number.
    pub fn import(
        &mut self,
        kind: ListKind,
        text: &str,
        spec: &AddSpec,
    ) -> Result<usize, ListError> {
        check_reason(&spec.reason)?;
        check_ttl(spec.ttl)?;
        let mut parsed = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (c, reason) = match line.split_once(char::is_whitespace) {
                Some((c, r)) => (c, Some(r.trim().to_string())),
                None => (line, None),
            };
            match cidr::parse_cidr(c) {
                Ok(n) if kind == ListKind::Dynamic && n.prefix_len() != n.max_prefix_len() => bad
                    .push((
                        i + 1,
                        format!("dynamic blocks are single addresses; {n} is a prefix"),
                    )),
                Ok(n) => {
                    let reason = reason.or_else(|| spec.reason.clone());
                    if let Err(e) = check_reason(&reason) {
                        bad.push((i + 1, e.to_string()));
                    } else {
                        parsed.push((n, reason));
                    }
                }
                Err(e) => bad.push((i + 1, e.to_string())),
            }
        }
        if !bad.is_empty() {
            return Err(ListError::BadLines(bad));
        }
        let now = now_ms();
        let boot = boottime_ns();
        let expires_at_ms = spec.ttl.map(|t| now + t.as_millis() as i64);
        let exp = expiry_to_boot_ns(expires_at_ms, now, boot);
        let tx = self.db.transaction()?;
        let mut reason_ids = std::collections::HashMap::new();
        let mut rows = Vec::with_capacity(parsed.len());
        for (net, reason) in parsed {
            let reason_id = match reason_ids.get(&reason) {
                Some(id) => *id,
                None => {
                    let id = Writer::reason_id(&tx, reason.as_deref())?;
                    reason_ids.insert(reason, id);
                    id
                }
            };
            rows.push((net, reason_id));
        }
        Writer::bulk_upsert(&tx, kind, &rows, expires_at_ms, now, spec.origin)?;
        if let Some(max) = self.outbox
            && spec.origin != Origin::Fleet
        {
            let queued = Writer::outbox_len(&tx)?;
            if queued + rows.len() as u64 > max {
                return Err(ListError::FleetQueueFull(queued));
            }
            let ts = now_us();
            let names: std::collections::HashMap<u32, Option<String>> = reason_ids
                .iter()
                .map(|(text, id)| (*id, text.clone()))
                .collect();
            for (net, reason_id) in &rows {
                Self::queue(
                    self.outbox,
                    &tx,
                    FleetRecord::local(
                        kind,
                        net.to_string(),
                        FleetOp::Add,
                        expires_at_ms,
                        names.get(reason_id).cloned().flatten(),
                        spec.origin,
                        ts,
                    ),
                )?;
            }
        }
        // Flags before entries: never skip a lookup for an entry already in.
        let before = self.counts;
        let mut provisional = self.counts;
        for (net, _) in &rows {
            let slot = provisional.slot(kind, net);
            *slot = (*slot).max(1);
        }
        push_config(&mut self.plane, &provisional, &self.base)?;
        for (net, reason_id) in &rows {
            if let Err(e) = self.plane.insert(map_list(kind), net, exp, *reason_id) {
                // Undo what went in and roll the DB back.
                drop(tx);
                for (n, _) in &rows {
                    let _ = self.plane.remove(map_list(kind), n);
                }
                self.counts = before;
                let _ = self.reconcile_after_failed_import(kind);
                return Err(e.into());
            }
        }
        let counts = Counts::from_rows(&Writer::family_counts(&tx)?);
        tx.commit()?;
        self.wake(spec.origin);
        self.counts = counts;
        push_config(&mut self.plane, &self.counts, &self.base)?;
        Ok(rows.len())
    }

    /// After a failed import the maps may have lost entries that the DB
    /// still holds (an import can overwrite existing keys): write them back.
    fn reconcile_after_failed_import(&mut self, kind: ListKind) -> Result<(), ListError> {
        let now = now_ms();
        let boot = boottime_ns();
        for e in self.db.list(Some(kind))? {
            let exp = expiry_to_boot_ns(e.expires_at_ms, now, boot);
            self.plane
                .insert(map_list(kind), &e.cidr, exp, e.reason_id)?;
        }
        self.push_config()?;
        Ok(())
    }

    /// Live entries matching `q` (see [`StateDb::search`]), newest first.
    pub fn search(&self, q: &str, limit: usize) -> Result<Vec<EntryView>, ListError> {
        let now = now_ms();
        Ok(self
            .db
            .search(q, now, limit)?
            .iter()
            .map(|e| EntryView::from_entry(e, now))
            .collect())
    }

    /// Entries of one list (or all).
    pub fn list(&self, kind: Option<ListKind>) -> Result<Vec<EntryView>, ListError> {
        let now = now_ms();
        Ok(self
            .db
            .list(kind)?
            .iter()
            .filter(|e| e.expires_at_ms.is_none_or(|x| x > now))
            .map(|e| EntryView::from_entry(e, now))
            .collect())
    }

    /// Number of entries per list, for `ztag_blocklist_entries{kind}`.
    pub fn entry_counts(&self) -> [(ListKind, u64); 3] {
        ListKind::ALL.map(|k| {
            let i = kind_idx(k);
            let mut n = self.counts.v4[i] + self.counts.v6[i];
            if k == ListKind::Block {
                n += self.counts.v4[HOST] + self.counts.v6[HOST];
            }
            (k, n)
        })
    }

    /// Removes expired entries from the maps and the DB; returns how many.
    pub fn sweep(&mut self) -> Result<usize, ListError> {
        let due = self.db.expired(now_ms())?;
        if due.is_empty() {
            return Ok(0);
        }
        let tx = self.db.transaction()?;
        for e in &due {
            self.plane.remove(map_list(e.kind), &e.cidr)?;
            if Writer::remove(&tx, e.kind, &e.cidr)? {
                let slot = self.counts.slot(e.kind, &e.cidr);
                *slot = slot.saturating_sub(1);
            }
        }
        tx.commit()?;
        push_config(&mut self.plane, &self.counts, &self.base)?;
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_counts() {
        let mut c = Counts::default();
        assert_eq!(c.flags(), 0);
        *c.slot(ListKind::Block, &"10.0.0.0/8".parse().unwrap()) += 1;
        *c.slot(ListKind::Allow, &"2001:db8::/32".parse().unwrap()) += 1;
        assert_eq!(c.flags(), cf::HAS_BLOCK_V4 | cf::HAS_ALLOW_V6);
        *c.slot(ListKind::Block, &"2001:db8::1/128".parse().unwrap()) += 1;
        *c.slot(ListKind::Allow, &"192.0.2.1/32".parse().unwrap()) += 1;
        assert_eq!(
            c.flags(),
            cf::HAS_BLOCK_V4 | cf::HAS_ALLOW_V6 | cf::HAS_BLOCK_HOST_V6 | cf::HAS_ALLOW_V4,
            "hosts of the blocklist go to the host hash, of the allowlist to the trie"
        );
    }

    #[test]
    fn reasons_and_ttls_are_checked() {
        assert!(check_reason(&Some("scanner from abuse report #12".into())).is_ok());
        assert!(check_reason(&Some("a\nb".into())).is_err());
        assert!(check_reason(&Some("x".repeat(MAX_REASON_LEN + 1))).is_err());
        assert!(check_ttl(Some(Duration::ZERO)).is_err());
        assert!(check_ttl(Some(Duration::from_secs(600))).is_ok());
        assert!(check_ttl(None).is_ok());
    }
}

//! Types shared by the ztag kernel program (`ztag-ebpf`) and the daemon
//! (`ztag-userspace`): map names and sizes, map keys and values, verdict and
//! reason indices, and the layout of drop events in the ring buffer.
//!
//! Every struct is `#[repr(C)]` with its padding written out as fields, so the
//! kernel and userspace agree on the layout byte for byte; `aya::Pod` impls live
//! behind the `user` feature, which only the userspace crate turns on.
#![no_std]
#![deny(missing_docs)]

/// Names of the BPF maps, shared by both sides. The kernel program declares
/// its maps under exactly these names; the daemon opens them by name and pins
/// them under the pin directory (default `/sys/fs/bpf/ztag`).
pub mod map_names {
    /// Allowlist, IPv4 (LPM trie): a match always passes.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// Allowlist, IPv6 (LPM trie).
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Static blocklist, IPv4 (LPM trie, value [`super::BlockEntry`]).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// Static blocklist, IPv6 (LPM trie).
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// Static blocklist, single IPv4 addresses (/32): a hash lookup is far
    /// cheaper than an LPM walk, and most blocklist entries are hosts.
    pub const BLOCK_HOST_V4: &str = "BLOCK_HOST_V4";
    /// Static blocklist, single IPv6 addresses (/128).
    pub const BLOCK_HOST_V6: &str = "BLOCK_HOST_V6";
    /// Dynamic blocks from the risk engine, IPv4 (hash by address).
    pub const DYN_V4: &str = "DYN_V4";
    /// Dynamic blocks from the risk engine, IPv6 (hash by address).
    pub const DYN_V6: &str = "DYN_V6";
    /// Token buckets for new TCP connections, IPv4 sources (LRU hash).
    pub const RATE_V4: &str = "RATE_V4";
    /// Token buckets for new TCP connections, IPv6 sources by /64 (LRU hash).
    pub const RATE_V6: &str = "RATE_V6";
    /// Program configuration (array of one [`super::XdpConfig`]).
    pub const CONFIG: &str = "CONFIG";
    /// The lists' generation (array of one `u64`): the daemon adds one after
    /// every change to a list map, which voids every CPU's cached verdict.
    pub const GENERATION: &str = "GENERATION";
    /// Per-CPU packet and byte counters per interface (array of
    /// [`super::IfCounters`], slot from [`super::counter_slot`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// Sampled drop events (ring buffer of [`super::DropEvent`]).
    pub const EVENTS: &str = "EVENTS";
}

/// Every map the daemon pins, in a fixed order (used by `ztag detach`).
pub const PINNED_MAPS: [&str; 14] = [
    map_names::ALLOW_V4,
    map_names::ALLOW_V6,
    map_names::BLOCK_V4,
    map_names::BLOCK_V6,
    map_names::BLOCK_HOST_V4,
    map_names::BLOCK_HOST_V6,
    map_names::DYN_V4,
    map_names::DYN_V6,
    map_names::RATE_V4,
    map_names::RATE_V6,
    map_names::CONFIG,
    map_names::GENERATION,
    map_names::COUNTERS,
    map_names::EVENTS,
];

/// Capacity of each static list (allow and block, per family). Entries are
/// allocated on demand (LPM tries are never preallocated).
pub const LIST_MAX_ENTRIES: u32 = 2_000_000;
/// Capacity of the dynamic block maps (allocated on demand).
pub const DYN_MAX_ENTRIES: u32 = 1_000_000;
/// Sources tracked by the rate limiter per family; the least recently seen
/// source is evicted first (an evicted source starts again with a full bucket).
pub const RATE_MAX_ENTRIES: u32 = 65_536;
/// Counter slots: slot 0 counts packets of interfaces without a slot of
/// their own; the others belong to one interface each.
pub const COUNTER_SLOTS: u32 = 256;
/// Ring buffer size for drop events, bytes (a power of two, page aligned).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// The "owner" of counter slot 0: packets on an interface the daemon did not
/// register, or whose slot another interface holds, are counted there, so
/// that nothing goes uncounted.
pub const UNKNOWN_IFINDEX: u32 = 0;

/// The counter slot of an interface: an array index the JIT inlines, instead
/// of a hash lookup per packet. The slot's `ifindex` says who owns it; two
/// attached interfaces whose indices collide share slot 0 (the daemon warns).
pub const fn counter_slot(ifindex: u32) -> u32 {
    1 + ifindex % (COUNTER_SLOTS - 1)
}

/// Why a packet got its verdict. Each reason belongs to exactly one action;
/// counters are indexed by reason.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Passed: no rule matched (the default).
    Default = 0,
    /// Passed: the source is on the allowlist.
    Allowlist = 1,
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...); the host stack decides.
    NonIp = 2,
    /// Dropped: the source matches the static blocklist.
    Blocklist = 3,
    /// Dropped: the source has a dynamic block from the risk engine.
    Dynamic = 4,
    /// Dropped: a new TCP connection over the per-source rate limit.
    RateLimit = 5,
    /// Dropped: the frame claims IPv4/IPv6 (or carries more VLAN tags than
    /// ztag parses) but is too short or malformed to read the source address.
    Malformed = 6,
}

/// Number of [`Reason`] values; the length of the counter arrays.
pub const REASON_COUNT: usize = 7;

impl Reason {
    /// All reasons, in index order.
    pub const ALL: [Reason; REASON_COUNT] = [
        Reason::Default,
        Reason::Allowlist,
        Reason::NonIp,
        Reason::Blocklist,
        Reason::Dynamic,
        Reason::RateLimit,
        Reason::Malformed,
    ];

    /// Whether packets with this reason are dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::Blocklist | Reason::Dynamic | Reason::RateLimit | Reason::Malformed
        )
    }

    /// The metric label of this reason.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Default => "default",
            Reason::Allowlist => "allowlist",
            Reason::NonIp => "non_ip",
            Reason::Blocklist => "blocklist",
            Reason::Dynamic => "dynamic",
            Reason::RateLimit => "rate_limit",
            Reason::Malformed => "malformed",
        }
    }

    /// The metric label of this reason's action.
    pub const fn action_label(self) -> &'static str {
        if self.is_drop() { "drop" } else { "pass" }
    }

    /// The reason with this index, if any.
    pub const fn from_index(i: u32) -> Option<Reason> {
        if (i as usize) < REASON_COUNT {
            Some(Reason::ALL[i as usize])
        } else {
            None
        }
    }
}

/// Packets and bytes for one reason.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (the frame length as the program saw it).
    pub bytes: u64,
}

/// Value of the per-CPU `COUNTERS` array: the slot's owner and one
/// [`Counter`] per [`Reason`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Interface index that owns this slot (0: none, or slot 0).
    pub ifindex: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Indexed by `Reason as usize`.
    pub by_reason: [Counter; REASON_COUNT],
}

/// Value of the static list tries and of the host blocklist hashes.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry no longer applies;
    /// 0 means it never expires.
    pub expires_ns: u64,
    /// Prefix length of this entry, so that when it has expired the program
    /// can look for a shorter, still valid prefix.
    pub prefix_len: u32,
    /// Id of the operator's reason text in the state DB (0: none).
    pub reason_id: u32,
}

/// Value of the dynamic block maps.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DynEntry {
    /// `CLOCK_BOOTTIME` nanoseconds after which the block lapses (0: never).
    pub expires_ns: u64,
    /// Id of the risk decision's reason (0: none).
    pub reason_id: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Token bucket of one source (rate limit on new TCP connections).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Available tokens, in thousandths of a connection.
    pub tokens_milli: u64,
    /// `CLOCK_BOOTTIME` of the last refill.
    pub last_ns: u64,
}

/// Flags in [`XdpConfig::flags`].
pub mod config_flags {
    /// The allowlist has IPv4 entries (skip the lookup when clear).
    pub const HAS_ALLOW_V4: u32 = 1 << 0;
    /// The allowlist has IPv6 entries.
    pub const HAS_ALLOW_V6: u32 = 1 << 1;
    /// The blocklist has IPv4 prefixes (shorter than /32).
    pub const HAS_BLOCK_V4: u32 = 1 << 2;
    /// The blocklist has IPv6 prefixes (shorter than /128).
    pub const HAS_BLOCK_V6: u32 = 1 << 3;
    /// The blocklist has single IPv4 addresses.
    pub const HAS_BLOCK_HOST_V4: u32 = 1 << 6;
    /// The blocklist has single IPv6 addresses.
    pub const HAS_BLOCK_HOST_V6: u32 = 1 << 7;
    /// Dynamic blocks exist for IPv4.
    pub const HAS_DYN_V4: u32 = 1 << 4;
    /// Dynamic blocks exist for IPv6.
    pub const HAS_DYN_V6: u32 = 1 << 5;
    /// The config has been written by a daemon. Until then (a freshly loaded
    /// program) every lookup is made, so that no entry is skipped.
    pub const INITIALISED: u32 = 1 << 31;
}

/// The program's configuration, index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// New TCP connections per second allowed per source; 0 disables the limit.
    pub rate_per_sec: u32,
    /// Bucket size: connections a source may open at once.
    pub rate_burst: u32,
    /// One drop in `sample_one_in` becomes an event (0 disables events).
    pub sample_one_in: u32,
    /// [`config_flags`].
    pub flags: u32,
}

/// Address family of a [`DropEvent`].
pub const FAMILY_V4: u8 = 4;
/// Address family of a [`DropEvent`].
pub const FAMILY_V6: u8 = 6;

/// A sampled drop, written to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `CLOCK_BOOTTIME` nanoseconds at the drop.
    pub time_ns: u64,
    /// Source address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Reason id carried by the matching entry (0: none).
    pub reason_id: u32,
    /// [`Reason`] as u32.
    pub reason: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with padding
    // written out as fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::IfCounters {}
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::DynEntry {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::DropEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<IfCounters>(), 8 + 16 * REASON_COUNT);
        assert_eq!(size_of::<BlockEntry>(), 16);
        assert_eq!(size_of::<DynEntry>(), 16);
        assert_eq!(size_of::<TokenBucket>(), 16);
        assert_eq!(size_of::<XdpConfig>(), 16);
        assert_eq!(size_of::<DropEvent>(), 8 + 16 + 4 + 4 + 4 + 1 + 3);
    }

    #[test]
    fn counter_slots_stay_in_range_and_skip_slot_zero() {
        for i in [1u32, 2, 254, 255, 256, 1000, u32::MAX] {
            let s = counter_slot(i);
            assert!((1..COUNTER_SLOTS).contains(&s), "{i} -> {s}");
        }
        assert_eq!(counter_slot(1), counter_slot(256), "255 apart collide");
    }

    #[test]
    fn reasons_round_trip_and_split_into_pass_and_drop() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(Reason::from_index(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_index(REASON_COUNT as u32), None);
        let drops: usize = Reason::ALL.iter().filter(|r| r.is_drop()).count();
        assert_eq!(drops, 4);
        assert_eq!(Reason::Blocklist.action_label(), "drop");
        assert_eq!(Reason::Allowlist.action_label(), "pass");
    }
}

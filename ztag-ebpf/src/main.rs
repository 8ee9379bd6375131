//! ztag's kernel data plane: one XDP program and the same logic as a TC
//! ingress classifier. It decides per packet from maps alone, in this order:
//!
//! 1. allowlist (LPM, v4/v6): always pass;
//! 2. static blocklist (single addresses in a hash, prefixes in an LPM trie,
//!    v4/v6, with expiry): drop;
//! 3. dynamic blocks from the risk engine (hash by address, with expiry): drop;
//! 4. per-source token bucket on new TCP connections (SYN without ACK): drop
//!    over the limit;
//! 5. pass.
//!
//! Rules for odd frames (documented in the README as well):
//! * frames that are not IPv4/IPv6 (ARP, LLDP, ...) pass, counted as `non_ip`;
//! * a frame whose EtherType says IPv4/IPv6 but that is too short to hold the
//!   IP header, an IPv4 header with IHL < 5, or a frame with more than two VLAN
//!   tags is dropped, counted as `malformed` (the host stack would discard it
//!   anyway, and ztag never guesses a source address);
//! * IPv4/IPv6 fragments are judged by their source address like any packet;
//!   only first fragments can count as new TCP connections.
//!
//! A flood comes from few sources: each CPU remembers the last source it
//! dropped by a list (blocklist or dynamic block), the entry's expiry and the
//! lists' generation. The next packet from that source, while the generation
//! is unchanged and the entry still live, skips the list lookups: same
//! verdict, same counters, same events. The daemon adds one to the
//! generation after every change to a list, so no cached verdict outlives the
//! state it was read from (the generation is read before the lookups it
//! vouches for).
//!
//! No policy lives here: userspace owns every map.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_boot_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use ztag_common::{
    BlockEntry, COUNTER_SLOTS, DYN_MAX_ENTRIES, DropEvent, DynEntry, EVENTS_BYTES, FAMILY_V4,
    IfCounters, LIST_MAX_ENTRIES, RATE_MAX_ENTRIES, REASON_COUNT, Reason, TokenBucket, XdpConfig,
    config_flags as cf, counter_slot,
};

use crate::parse::{Source, parse_source};

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::pinned(LIST_MAX_ENTRIES, 0);
#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(LIST_MAX_ENTRIES, 0);
#[map(name = "BLOCK_V4")]
static BLOCK_V4: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::pinned(LIST_MAX_ENTRIES, 0);
#[map(name = "BLOCK_V6")]
static BLOCK_V6: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(LIST_MAX_ENTRIES, 0);
/// Single addresses of the static blocklist. BPF_F_NO_PREALLOC (flag 1): a
/// million entries are not reserved up front.
#[map(name = "BLOCK_HOST_V4")]
static BLOCK_HOST_V4: HashMap<[u8; 4], BlockEntry> = HashMap::pinned(LIST_MAX_ENTRIES, 1);
#[map(name = "BLOCK_HOST_V6")]
static BLOCK_HOST_V6: HashMap<[u8; 16], BlockEntry> = HashMap::pinned(LIST_MAX_ENTRIES, 1);
/// BPF_F_NO_PREALLOC: a million dynamic entries are not reserved up front.
#[map(name = "DYN_V4")]
static DYN_V4: HashMap<[u8; 4], DynEntry> = HashMap::pinned(DYN_MAX_ENTRIES, 1);
#[map(name = "DYN_V6")]
static DYN_V6: HashMap<[u8; 16], DynEntry> = HashMap::pinned(DYN_MAX_ENTRIES, 1);
#[map(name = "RATE_V4")]
static RATE_V4: LruHashMap<[u8; 4], TokenBucket> = LruHashMap::pinned(RATE_MAX_ENTRIES, 0);
/// IPv6 sources are limited per /64, the usual size of one host's allocation.
#[map(name = "RATE_V6")]
static RATE_V6: LruHashMap<[u8; 8], TokenBucket> = LruHashMap::pinned(RATE_MAX_ENTRIES, 0);
#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::pinned(1, 0);
#[map(name = "GENERATION")]
static GENERATION: Array<u64> = Array::pinned(1, 0);
/// Each CPU's last list drop and event countdown; not pinned (a reloaded
/// program starts empty).
#[map(name = "CPU_STATE")]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<IfCounters> = PerCpuArray::pinned(COUNTER_SLOTS, 0);
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// How many expired LPM matches in a row the program looks past before it
/// gives up (the sweeper removes expired entries within a second anyway).
const MAX_EXPIRED_HOPS: u32 = 8;
const NS_PER_SEC: u64 = 1_000_000_000;
/// bpf_ringbuf_output flag: do not wake the consumer.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// Refill time is capped so `elapsed * rate` cannot overflow (rate ≤ 1e6).
const MAX_REFILL_NS: u64 = 1_000 * NS_PER_SEC;

/// One address family's maps and "non-empty" flags; `R` is the rate-limit
/// key length (IPv6 sources are limited per /64).
struct Family<const N: usize, const R: usize> {
    allow: &'static LpmTrie<[u8; N], BlockEntry>,
    host: &'static HashMap<[u8; N], BlockEntry>,
    block: &'static LpmTrie<[u8; N], BlockEntry>,
    dynamic: &'static HashMap<[u8; N], DynEntry>,
    rate: &'static LruHashMap<[u8; R], TokenBucket>,
    has_allow: u32,
    has_host: u32,
    has_block: u32,
    has_dyn: u32,
}

/// A CPU's last list drop. `generation` 0: empty (the daemon's generations
/// start at 1).
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedVerdict {
    generation: u64,
    /// The matched entry's expiry (0: never).
    expires_ns: u64,
    /// The source address as two words (IPv4 in the first 4 bytes).
    addr: [u64; 2],
    reason_id: u32,
    family: u8,
    /// 1: a dynamic block; 0: the static blocklist.
    dynamic: u8,
    _pad: [u8; 2],
}

/// Per-CPU state of the program.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuState {
    cache: CachedVerdict,
    /// Drops until the next sampled event. Re-armed at random, uniform in
    /// 1..2N-1 (mean N), after each event: one random number per event
    /// rather than per drop, and no aliasing with periodic traffic (a plain
    /// 1-in-N counter would always pick the same of N alternating sources).
    countdown: u32,
    _pad: u32,
}

#[inline(always)]
fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// Built where it is used (not a static holding map pointers, which the
/// loader could not relocate): after inlining, each field is a direct map
/// reference.
#[inline(always)]
fn v4() -> Family<4, 4> {
    Family {
        allow: &ALLOW_V4,
        host: &BLOCK_HOST_V4,
        block: &BLOCK_V4,
        dynamic: &DYN_V4,
        rate: &RATE_V4,
        has_allow: cf::HAS_ALLOW_V4,
        has_host: cf::HAS_BLOCK_HOST_V4,
        has_block: cf::HAS_BLOCK_V4,
        has_dyn: cf::HAS_DYN_V4,
    }
}

#[inline(always)]
fn v6() -> Family<16, 8> {
    Family {
        allow: &ALLOW_V6,
        host: &BLOCK_HOST_V6,
        block: &BLOCK_V6,
        dynamic: &DYN_V6,
        rate: &RATE_V6,
        has_allow: cf::HAS_ALLOW_V6,
        has_host: cf::HAS_BLOCK_HOST_V6,
        has_block: cf::HAS_BLOCK_V6,
        has_dyn: cf::HAS_DYN_V6,
    }
}

/// The decision order, written once for both families: allowlist, host
/// blocklist, prefix blocklist, dynamic blocks, SYN rate limit, pass.
#[inline(always)]
fn decide<const N: usize, const R: usize>(
    f: &Family<N, R>,
    a: [u8; N],
    rate_key: &[u8; R],
    syn: bool,
    cfg: &XdpConfig,
    now: &mut Clock,
) -> (Reason, u32, u64) {
    if has(cfg, f.has_allow) && lpm_live(f.allow, a, now).is_some() {
        return (Reason::Allowlist, 0, 0);
    }
    if has(cfg, f.has_host)
        && let Some((id, exp)) = expiring_live(f.host, &a, now)
    {
        return (Reason::Blocklist, id, exp);
    }
    if has(cfg, f.has_block)
        && let Some((id, exp)) = lpm_live(f.block, a, now)
    {
        return (Reason::Blocklist, id, exp);
    }
    if has(cfg, f.has_dyn)
        && let Some((id, exp)) = expiring_live(f.dynamic, &a, now)
    {
        return (Reason::Dynamic, id, exp);
    }
    if cfg.rate_per_sec != 0 && syn && !take_token(f.rate, rate_key, cfg, now.get()) {
        return (Reason::RateLimit, 0, 0);
    }
    (Reason::Default, 0, 0)
}

/// The outcome of classifying one frame.
struct Decision {
    reason: Reason,
    reason_id: u32,
    src: Option<Source>,
    /// From the config already read for this packet: sampling needs no
    /// second lookup.
    sample_one_in: u32,
}

impl Decision {
    const fn new(reason: Reason, sample_one_in: u32) -> Self {
        Decision {
            reason,
            reason_id: 0,
            src: None,
            sample_one_in,
        }
    }
}

#[xdp]
pub fn ztag_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let ifindex = ctx.ingress_ifindex() as u32;
    let d = classify(data, end);
    if d.reason == Reason::Malformed {
        // Rare by construction; the daemon prints these at debug level.
        debug!(
            &ctx,
            "xdp: malformed frame of {} bytes on ifindex {}",
            end - data,
            ifindex
        );
    }
    if finish(&d, ifindex, (end - data) as u64) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[classifier]
pub fn ztag_tc(ctx: TcContext) -> i32 {
    // Headers may sit outside the linear part of an skb: pull what the
    // parser can read at most (or the whole packet when it is shorter).
    let len = ctx.len();
    let want = if len < parse::MAX_HEADER_BYTES {
        len
    } else {
        parse::MAX_HEADER_BYTES
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: reading ingress_ifindex from the skb context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let d = classify(data, end);
    if d.reason == Reason::Malformed {
        debug!(
            &ctx,
            "tc: malformed frame of {} bytes on ifindex {}", len, ifindex
        );
    }
    if finish(&d, ifindex, len as u64) {
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_OK as i32
    }
}

/// The benchmark floor: drops everything, does nothing else. `cargo xtask
/// bench xdp` compares ztag's per-packet cost against it; the daemon never
/// attaches it.
#[xdp]
pub fn ztag_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Benchmark traffic source: redirects every frame to the interface in
/// BENCH_TX[0]. Run with BPF_PROG_TEST_RUN in live-frames mode, it sends
/// xdp_frames into a veth at memory speed (what xdp-trafgen does), so the
/// receiving side's XDP sees frames without an skb. Never attached.
#[map(name = "BENCH_TX")]
static BENCH_TX: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn ztag_bench_tx(_ctx: XdpContext) -> u32 {
    match BENCH_TX.get(0) {
        // SAFETY: helper with plain integer arguments.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// `CLOCK_BOOTTIME`, read at most once per packet and only when a decision
/// needs it (an entry with an expiry, the rate limit, an event): most
/// packets never pay for the clock.
struct Clock(u64);

impl Clock {
    #[inline(always)]
    fn get(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ns();
        }
        self.0
    }
}

#[inline(always)]
fn config() -> XdpConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => XdpConfig::default(),
    }
}

#[inline(always)]
fn has(cfg: &XdpConfig, flag: u32) -> bool {
    cfg.flags & cf::INITIALISED == 0 || cfg.flags & flag != 0
}

#[inline(always)]
fn live(expires_ns: u64, now: &mut Clock) -> bool {
    expires_ns == 0 || expires_ns > now.get()
}

/// Longest live match in an LPM trie: when the longest match has expired,
/// looks again below its prefix length.
#[inline(always)]
fn lpm_live<const N: usize>(
    trie: &LpmTrie<[u8; N], BlockEntry>,
    addr: [u8; N],
    now: &mut Clock,
) -> Option<(u32, u64)> {
    let mut plen = (N * 8) as u32;
    for _ in 0..MAX_EXPIRED_HOPS {
        let e = trie.get(Key::new(plen, addr))?;
        if live(e.expires_ns, now) {
            return Some((e.reason_id, e.expires_ns));
        }
        if e.prefix_len == 0 || e.prefix_len > plen {
            return None;
        }
        plen = e.prefix_len - 1;
    }
    None
}

/// Values with an expiry and a reason: host blocklist and dynamic entries.
trait Expiring {
    fn expires_ns(&self) -> u64;
    fn reason_id(&self) -> u32;
}

impl Expiring for BlockEntry {
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn reason_id(&self) -> u32 {
        self.reason_id
    }
}

impl Expiring for DynEntry {
    #[inline(always)]
    fn expires_ns(&self) -> u64 {
        self.expires_ns
    }
    #[inline(always)]
    fn reason_id(&self) -> u32 {
        self.reason_id
    }
}

/// A live exact-address entry (host blocklist, dynamic blocks). An expired
/// host entry does not match, and the LPM trie is consulted next.
#[inline(always)]
fn expiring_live<const N: usize, V: Expiring>(
    map: &HashMap<[u8; N], V>,
    addr: &[u8; N],
    now: &mut Clock,
) -> Option<(u32, u64)> {
    // SAFETY: the value is read at once; a concurrent delete can at worst
    // make us read a just-removed entry, which was valid a moment ago.
    let e = unsafe { map.get(addr) }?;
    if live(e.expires_ns(), now) {
        Some((e.reason_id(), e.expires_ns()))
    } else {
        None
    }
}

/// Takes one token from the source's bucket; false when the bucket is empty.
#[inline(always)]
fn take_token<const N: usize>(
    map: &LruHashMap<[u8; N], TokenBucket>,
    key: &[u8; N],
    cfg: &XdpConfig,
    now: u64,
) -> bool {
    let cap = cfg.rate_burst as u64 * 1000;
    match map.get_ptr_mut(key) {
        Some(b) => {
            // SAFETY: pointer to a map value, valid for this program run. Two
            // CPUs may race on one bucket; the limit is then approximate by at
            // most one connection, which is accepted for lock-free updates.
            let b = unsafe { &mut *b };
            let mut elapsed = now.saturating_sub(b.last_ns);
            if elapsed > MAX_REFILL_NS {
                elapsed = MAX_REFILL_NS;
            }
            let refill = elapsed * cfg.rate_per_sec as u64 / 1_000_000;
            let mut tokens = b.tokens_milli + refill;
            if tokens > cap {
                tokens = cap;
            }
            // Only advance the clock when tokens were credited, so that a
            // flood of very close SYNs cannot starve the refill by rounding.
            if refill > 0 {
                b.last_ns = now;
            }
            if tokens < 1000 {
                b.tokens_milli = tokens;
                false
            } else {
                b.tokens_milli = tokens - 1000;
                true
            }
        }
        None => {
            if cap < 1000 {
                return false;
            }
            let b = TokenBucket {
                tokens_milli: cap - 1000,
                last_ns: now,
            };
            let _ = map.insert(key, &b, 0);
            true
        }
    }
}

#[inline(always)]
fn classify(data: usize, end: usize) -> Decision {
    let src = match parse_source(data, end) {
        Ok(Some(s)) => s,
        // Passes: never sampled, so no config read.
        Ok(None) => return Decision::new(Reason::NonIp, 0),
        // A drop, sampled like the others (rare: the config read is fine).
        Err(()) => return Decision::new(Reason::Malformed, config().sample_one_in),
    };
    let cfg = config();
    let mut now = Clock(0);
    // Read before any list lookup: a change made after this read bumps the
    // generation, so what is cached below is re-checked on the next packet.
    let generation = match GENERATION.get(0) {
        Some(g) => *g,
        None => 0,
    };
    let words = addr_words(&src.addr);
    let cache = CPU_STATE.get_ptr_mut(0);
    if generation != 0
        && let Some(st) = cache
    {
        // SAFETY: this CPU's value, valid for this run; no other writer.
        let c = unsafe { &(*st).cache };
        if c.generation == generation
            && c.addr[0] == words[0]
            && c.addr[1] == words[1]
            && c.family == src.family
            && live(c.expires_ns, &mut now)
        {
            return Decision {
                reason: if c.dynamic != 0 {
                    Reason::Dynamic
                } else {
                    Reason::Blocklist
                },
                reason_id: c.reason_id,
                src: Some(src),
                sample_one_in: cfg.sample_one_in,
            };
        }
    }
    let (reason, reason_id, expires_ns) = match src.family {
        FAMILY_V4 => {
            let a = [src.addr[0], src.addr[1], src.addr[2], src.addr[3]];
            decide(&v4(), a, &a, src.tcp_syn, &cfg, &mut now)
        }
        _ => {
            let a = src.addr;
            let per64 = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
            decide(&v6(), a, &per64, src.tcp_syn, &cfg, &mut now)
        }
    };
    // Only list drops are cached: they come before the rate limit in the
    // decision order, and passing traffic must not evict a flood's source.
    if generation != 0
        && matches!(reason, Reason::Blocklist | Reason::Dynamic)
        && let Some(st) = cache
    {
        // SAFETY: as above.
        unsafe {
            (*st).cache = CachedVerdict {
                generation,
                expires_ns,
                addr: words,
                reason_id,
                family: src.family,
                dynamic: (reason == Reason::Dynamic) as u8,
                _pad: [0; 2],
            };
        }
    }
    Decision {
        reason,
        reason_id,
        src: Some(src),
        sample_one_in: cfg.sample_one_in,
    }
}

/// The one exit point: counts the packet, samples drop events, and says
/// whether to drop. Every path goes through here, so none goes uncounted.
#[inline(always)]
fn finish(d: &Decision, ifindex: u32, bytes: u64) -> bool {
    let idx = d.reason as usize;
    let slot = match COUNTERS.get_ptr_mut(counter_slot(ifindex)) {
        // SAFETY: per-CPU array value, valid for this run.
        Some(p) if unsafe { (*p).ifindex } == ifindex => Some(p),
        _ => COUNTERS.get_ptr_mut(0),
    };
    if let Some(p) = slot
        && idx < REASON_COUNT
    {
        // SAFETY: per-CPU value, no other writer on this CPU.
        let c = unsafe { &mut (*p).by_reason[idx] };
        c.packets += 1;
        c.bytes += bytes;
    }
    let drop = d.reason.is_drop();
    if drop {
        sample_event(d, ifindex);
    }
    drop
}

#[inline(always)]
fn sample_event(d: &Decision, ifindex: u32) {
    let every = d.sample_one_in;
    if every == 0 {
        return;
    }
    if every > 1 {
        let Some(st) = CPU_STATE.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's value, valid for this run; no other writer.
        let st = unsafe { &mut *st };
        if st.countdown > 1 {
            st.countdown -= 1;
            return;
        }
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        st.countdown = 1 + r % (every.saturating_mul(2) - 1);
    }
    let (addr, family) = match &d.src {
        Some(s) => (s.addr, s.family),
        None => ([0u8; 16], 0),
    };
    let ev = DropEvent {
        time_ns: now_ns(),
        addr,
        ifindex,
        reason_id: d.reason_id,
        reason: d.reason as u32,
        family,
        _pad: [0; 3],
    };
    // BPF_RB_NO_WAKEUP: the daemon polls the ring on a timer. A wakeup per
    // event would cost the dropping CPU an irq_work each time, in a flood.
    let _ = EVENTS.output::<DropEvent>(&ev, BPF_RB_NO_WAKEUP);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! The kernel program fed crafted frames through BPF_PROG_TEST_RUN, with the
//! lists written through the same `Enforcer` the daemon uses (state DB and
//! maps in step).

use std::{
    net::{IpAddr, Ipv6Addr},
    thread::sleep,
    time::Duration,
};

use ztag::{
    state::{ListKind, StateDb},
    xdp::{
        Plane, TC_PROGRAM, XDP_PROGRAM,
        lists::{AddSpec, Enforcer},
        test_run::{ACK, Frame, SYN, XDP_DROP, XDP_PASS, run},
    },
};
use ztag_common::{DropEvent, Reason, XdpConfig};
use ztag_tests::{PinDir, privileged};

struct Fixture {
    enforcer: Enforcer,
    xdp: i32,
    tc: i32,
    // Last: the pins go after the maps' fds are closed.
    _pins: PinDir,
}

fn fixture(base: XdpConfig) -> Fixture {
    let pins = PinDir::new();
    let plane = Plane::load(&pins.0).expect("loading the program");
    let xdp = plane.program_fd(XDP_PROGRAM).expect("xdp fd");
    let tc = plane.program_fd(TC_PROGRAM).expect("tc fd");
    let mut enforcer = Enforcer::new(StateDb::in_memory().unwrap(), plane, base);
    enforcer.reconcile().unwrap();
    Fixture {
        enforcer,
        xdp,
        tc,
        _pins: pins,
    }
}

fn no_limits() -> XdpConfig {
    XdpConfig::default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl Fixture {
    fn verdict(&self, frame: &[u8]) -> u32 {
        run(self.xdp, frame, 1).expect("BPF_PROG_TEST_RUN").retval
    }

    fn add(&mut self, kind: ListKind, cidr: &str, ttl: Option<Duration>) {
        self.enforcer
            .add(
                kind,
                cidr,
                &AddSpec {
                    ttl,
                    reason: Some("test".into()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("adding {cidr} to {kind:?}: {e}"));
    }

    /// Packets counted for a reason, over all interfaces.
    fn count(&self, r: Reason) -> u64 {
        self.enforcer
            .plane()
            .counters()
            .unwrap()
            .values()
            .map(|c| c.by_reason[r as usize].packets)
            .sum()
    }
}

fn expect(f: &Fixture, frame: &[u8], want: u32, what: &str) {
    let got = f.verdict(frame);
    let name = |v| match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "other",
    };
    assert_eq!(
        got,
        want,
        "{what}: expected {} got {}",
        name(want),
        name(got)
    );
}

#[test]
fn ipv4_and_ipv6_blocklist_allowlist_precedence() {
    if !privileged("ipv4_and_ipv6_blocklist_allowlist_precedence") {
        return;
    }
    let mut f = fixture(no_limits());
    let fr = Frame::new();
    expect(
        &f,
        &fr.tcp(ip("192.0.2.7"), ACK, 0),
        XDP_PASS,
        "empty lists pass",
    );
    f.add(ListKind::Block, "192.0.2.0/24", None);
    f.add(ListKind::Block, "2001:db8:bad::/48", None);
    expect(
        &f,
        &fr.tcp(ip("192.0.2.7"), ACK, 0),
        XDP_DROP,
        "v4 in blocked /24",
    );
    expect(
        &f,
        &fr.tcp(ip("192.0.3.7"), ACK, 0),
        XDP_PASS,
        "v4 outside the /24",
    );
    expect(
        &f,
        &fr.tcp(ip("2001:db8:bad::1"), ACK, 0),
        XDP_DROP,
        "v6 in blocked /48",
    );
    expect(
        &f,
        &fr.tcp(ip("2001:db8:bae::1"), ACK, 0),
        XDP_PASS,
        "v6 outside the /48",
    );
    // The allowlist wins over the blocklist.
    f.add(ListKind::Allow, "192.0.2.7", None);
    expect(
        &f,
        &fr.tcp(ip("192.0.2.7"), ACK, 0),
        XDP_PASS,
        "allowlisted inside blocked /24",
    );
    expect(
        &f,
        &fr.tcp(ip("192.0.2.8"), ACK, 0),
        XDP_DROP,
        "neighbour still blocked",
    );
    // Removal takes effect.
    f.enforcer.remove(ListKind::Block, "192.0.2.0/24").unwrap();
    expect(
        &f,
        &fr.tcp(ip("192.0.2.8"), ACK, 0),
        XDP_PASS,
        "after block rm",
    );
    assert_eq!(f.count(Reason::Blocklist), 3);
    assert_eq!(f.count(Reason::Allowlist), 1);
    assert_eq!(f.count(Reason::Default), 4);
}

#[test]
fn vlan_qinq_and_odd_frames() {
    if !privileged("vlan_qinq_and_odd_frames") {
        return;
    }
    let mut f = fixture(no_limits());
    f.add(ListKind::Block, "198.51.100.9", None);
    f.add(ListKind::Block, "2001:db8::9", None);
    let bad4 = ip("198.51.100.9");
    let bad6 = ip("2001:db8::9");
    for (frame, what) in [
        (Frame::new().vlan(100).tcp(bad4, ACK, 0), "802.1Q v4"),
        (
            Frame::new().vlan(100).vlan(200).tcp(bad4, ACK, 0),
            "QinQ (802.1ad + 802.1Q) v4",
        ),
        (
            Frame::new().tpid(0x88a8).vlan(7).tcp(bad6, ACK, 0),
            "802.1ad v6",
        ),
        (Frame::new().vlan(1).vlan(2).tcp(bad6, ACK, 0), "QinQ v6"),
        (Frame::new().tcp(bad4, ACK, 100), "non-first IPv4 fragment"),
        (Frame::new().tcp(bad6, ACK, 100), "non-first IPv6 fragment"),
    ] {
        expect(&f, &frame, XDP_DROP, what);
    }
    // Three tags: more than ztag parses: dropped as malformed.
    let triple = Frame::new()
        .vlan(1)
        .vlan(2)
        .vlan(3)
        .tcp(ip("192.0.2.1"), ACK, 0);
    expect(&f, &triple, XDP_DROP, "three VLAN tags");
    // Truncated IP headers: claim IP, cannot be read.
    let full = Frame::new().tcp(ip("192.0.2.1"), ACK, 0);
    expect(
        &f,
        &full[..14 + 19],
        XDP_DROP,
        "IPv4 header cut at 19 bytes",
    );
    expect(&f, &full[..14], XDP_DROP, "EtherType IPv4, no header");
    let full6 = Frame::new().tcp(ip("2001:db8::1"), ACK, 0);
    expect(
        &f,
        &full6[..14 + 39],
        XDP_DROP,
        "IPv6 header cut at 39 bytes",
    );
    let vlan_cut = Frame::new().vlan(5).tcp(ip("192.0.2.1"), ACK, 0);
    expect(&f, &vlan_cut[..16], XDP_DROP, "VLAN tag cut short");
    // IHL < 5 and a wrong version nibble.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    expect(&f, &bad_ihl, XDP_DROP, "IPv4 IHL 4");
    let mut bad_ver = full.clone();
    bad_ver[14] = 0x65;
    expect(&f, &bad_ver, XDP_DROP, "version 6 in an IPv4 frame");
    // A TCP header cut short is still judged by its (unblocked) source.
    expect(
        &f,
        &full[..14 + 20 + 10],
        XDP_PASS,
        "IPv4 with half a TCP header",
    );
    // Non-IP passes.
    let arp = Frame::new().raw(0x0806, &[0u8; 28]);
    expect(&f, &arp, XDP_PASS, "ARP");
    let lldp = Frame::new().vlan(9).raw(0x88cc, &[0u8; 40]);
    expect(&f, &lldp, XDP_PASS, "LLDP behind a VLAN tag");
    assert_eq!(f.count(Reason::Malformed), 7);
    assert_eq!(f.count(Reason::NonIp), 2);
    assert_eq!(f.count(Reason::Blocklist), 6);
}

#[test]
fn expired_entries_stop_matching_and_shorter_prefixes_still_apply() {
    if !privileged("expired_entries_stop_matching_and_shorter_prefixes_still_apply") {
        return;
    }
    let mut f = fixture(no_limits());
    let fr = Frame::new();
    f.add(ListKind::Block, "203.0.113.5", Some(Duration::from_secs(1)));
    f.add(ListKind::Block, "10.0.0.0/8", None);
    f.add(ListKind::Block, "10.1.0.0/16", Some(Duration::from_secs(1)));
    f.add(ListKind::Block, "10.9.9.9", Some(Duration::from_secs(1)));
    f.add(ListKind::Block, "2001:db8::7", Some(Duration::from_secs(1)));
    expect(
        &f,
        &fr.tcp(ip("203.0.113.5"), ACK, 0),
        XDP_DROP,
        "before expiry",
    );
    sleep(Duration::from_millis(1300));
    // No sweep has run: the program itself ignores expired entries...
    expect(
        &f,
        &fr.tcp(ip("203.0.113.5"), ACK, 0),
        XDP_PASS,
        "after expiry, unswept",
    );
    // ...and looks past an expired longest match to a live shorter prefix.
    expect(
        &f,
        &fr.tcp(ip("10.1.2.3"), ACK, 0),
        XDP_DROP,
        "expired /16 inside live /8",
    );
    // An expired single address (host hash) falls through to the trie.
    expect(
        &f,
        &fr.tcp(ip("10.9.9.9"), ACK, 0),
        XDP_DROP,
        "expired host in live /8",
    );
    expect(
        &f,
        &fr.tcp(ip("2001:db8::7"), ACK, 0),
        XDP_PASS,
        "expired v6 host",
    );
    assert_eq!(f.enforcer.sweep().unwrap(), 4);
    let left: Vec<String> = f
        .enforcer
        .list(Some(ListKind::Block))
        .unwrap()
        .into_iter()
        .map(|e| e.cidr)
        .collect();
    assert_eq!(left, vec!["10.0.0.0/8".to_string()]);
}

/// Runs `frame` `n` times in one BPF_PROG_TEST_RUN (one CPU): after the
/// first run, a list drop comes from that CPU's cached verdict.
fn expect_n(f: &Fixture, frame: &[u8], n: u32, want: u32, what: &str) {
    let got = run(f.xdp, frame, n).expect("BPF_PROG_TEST_RUN").retval;
    assert_eq!(got, want, "{what} (×{n})");
}

#[test]
fn cached_verdicts_never_outlive_a_list_change() {
    if !privileged("cached_verdicts_never_outlive_a_list_change") {
        return;
    }
    let mut f = fixture(no_limits());
    let fr = Frame::new();
    let x = fr.tcp(ip("198.51.100.9"), ACK, 0);
    let gen0 = f.enforcer.plane().generation();
    f.add(ListKind::Block, "198.51.100.9", None);
    assert!(f.enforcer.plane().generation() > gen0, "a change bumps it");
    expect_n(&f, &x, 100, XDP_DROP, "blocked host, cached after one");
    assert_eq!(f.count(Reason::Blocklist), 100, "cached drops still count");
    // Each change below must be seen by the very next packet.
    f.add(ListKind::Allow, "198.51.100.0/24", None);
    expect_n(&f, &x, 10, XDP_PASS, "allowlist added over a cached drop");
    f.enforcer
        .remove(ListKind::Allow, "198.51.100.0/24")
        .unwrap();
    expect_n(&f, &x, 10, XDP_DROP, "allowlist removed");
    f.enforcer.remove(ListKind::Block, "198.51.100.9").unwrap();
    expect_n(&f, &x, 10, XDP_PASS, "block removed");
    // Another source's drop replaces the cached one; both stay right.
    let y = fr.tcp(ip("198.51.100.10"), ACK, 0);
    f.add(ListKind::Block, "198.51.100.8/30", None);
    expect_n(&f, &y, 10, XDP_DROP, "prefix drop");
    expect_n(&f, &x, 10, XDP_DROP, "neighbour in the prefix");
    f.enforcer
        .remove(ListKind::Block, "198.51.100.8/30")
        .unwrap();
    expect_n(&f, &x, 10, XDP_PASS, "prefix removed");
    // The same four bytes as IPv6 are another source.
    f.add(ListKind::Block, "198.51.100.9", None);
    expect_n(&f, &x, 10, XDP_DROP, "v4 cached");
    let v6 = fr.tcp(
        IpAddr::V6(Ipv6Addr::new(0xc633, 0x6409, 0, 0, 0, 0, 0, 0)),
        ACK,
        0,
    );
    expect_n(&f, &v6, 10, XDP_PASS, "v6 with the same leading bytes");
    // Dynamic blocks: cached as dynamic, voided by their removal.
    f.add(ListKind::Dynamic, "203.0.113.77", None);
    let z = fr.tcp(ip("203.0.113.77"), ACK, 0);
    let dyn0 = f.count(Reason::Dynamic);
    expect_n(&f, &z, 20, XDP_DROP, "dynamic block");
    assert_eq!(f.count(Reason::Dynamic), dyn0 + 20, "counted as dynamic");
    f.enforcer
        .remove(ListKind::Dynamic, "203.0.113.77")
        .unwrap();
    expect_n(&f, &z, 10, XDP_PASS, "dynamic block removed");
    // An entry's expiry applies to its cached verdict: no change, no sweep.
    f.add(
        ListKind::Block,
        "203.0.113.88",
        Some(Duration::from_secs(1)),
    );
    let t = fr.tcp(ip("203.0.113.88"), ACK, 0);
    expect_n(&f, &t, 50, XDP_DROP, "before expiry");
    sleep(Duration::from_millis(1300));
    expect_n(&f, &t, 10, XDP_PASS, "after expiry, unswept, cached before");
}

#[test]
fn dynamic_blocks_drop_until_removed() {
    if !privileged("dynamic_blocks_drop_until_removed") {
        return;
    }
    let mut f = fixture(no_limits());
    let fr = Frame::new();
    f.add(
        ListKind::Dynamic,
        "192.0.2.44",
        Some(Duration::from_secs(60)),
    );
    f.add(ListKind::Dynamic, "2001:db8::44", None);
    expect(
        &f,
        &fr.tcp(ip("192.0.2.44"), ACK, 0),
        XDP_DROP,
        "dynamic v4",
    );
    expect(
        &f,
        &fr.tcp(ip("2001:db8::44"), ACK, 0),
        XDP_DROP,
        "dynamic v6",
    );
    expect(&f, &fr.tcp(ip("192.0.2.45"), ACK, 0), XDP_PASS, "other v4");
    assert!(
        f.enforcer
            .add(ListKind::Dynamic, "192.0.2.0/24", &AddSpec::default())
            .is_err(),
        "dynamic entries are single addresses"
    );
    f.enforcer.remove(ListKind::Dynamic, "192.0.2.44").unwrap();
    expect(
        &f,
        &fr.tcp(ip("192.0.2.44"), ACK, 0),
        XDP_PASS,
        "after removal",
    );
    assert_eq!(f.count(Reason::Dynamic), 2);
}

#[test]
fn new_connections_over_the_rate_limit_are_dropped() {
    if !privileged("new_connections_over_the_rate_limit_are_dropped") {
        return;
    }
    let f = fixture(XdpConfig {
        rate_per_sec: 1,
        rate_burst: 3,
        ..XdpConfig::default()
    });
    let fr = Frame::new();
    let syn = fr.tcp(ip("192.0.2.50"), SYN, 0);
    for i in 0..3 {
        expect(&f, &syn, XDP_PASS, &format!("SYN {i} within burst"));
    }
    expect(&f, &syn, XDP_DROP, "4th SYN over the limit");
    // Established traffic (ACK) and other sources are not limited.
    expect(
        &f,
        &fr.tcp(ip("192.0.2.50"), ACK, 0),
        XDP_PASS,
        "ACK from limited source",
    );
    expect(
        &f,
        &fr.tcp(ip("192.0.2.51"), SYN, 0),
        XDP_PASS,
        "SYN from another source",
    );
    // SYN+ACK is not a new connection.
    expect(
        &f,
        &fr.tcp(ip("192.0.2.50"), SYN | ACK, 0),
        XDP_PASS,
        "SYN+ACK",
    );
    // IPv6: per /64, and a SYN behind a destination-options header counts.
    let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
    let b: Ipv6Addr = "2001:db8:1:2::2".parse().unwrap();
    for _ in 0..3 {
        expect(
            &f,
            &fr.tcp6_with_dstopts(a, SYN),
            XDP_PASS,
            "v6 SYN within burst",
        );
    }
    expect(
        &f,
        &fr.tcp(IpAddr::V6(b), SYN, 0),
        XDP_DROP,
        "same /64, over the limit",
    );
    // After a second, one token is back.
    sleep(Duration::from_millis(1100));
    expect(&f, &syn, XDP_PASS, "a token refilled");
    expect(&f, &syn, XDP_DROP, "and only one");
    assert_eq!(f.count(Reason::RateLimit), 3);
}

#[test]
fn drops_are_sampled_into_the_ring_buffer() {
    if !privileged("drops_are_sampled_into_the_ring_buffer") {
        return;
    }
    let mut f = fixture(XdpConfig {
        sample_one_in: 1,
        ..XdpConfig::default()
    });
    let mut ring = f.enforcer.plane_mut().take_events().expect("events ring");
    f.add(ListKind::Block, "192.0.2.60", None);
    expect(
        &f,
        &Frame::new().tcp(ip("192.0.2.60"), ACK, 0),
        XDP_DROP,
        "blocked",
    );
    expect(
        &f,
        &Frame::new().tcp(ip("192.0.2.61"), ACK, 0),
        XDP_PASS,
        "passes, no event",
    );
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= std::mem::size_of::<DropEvent>());
        // SAFETY: the program writes whole DropEvents.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) });
    }
    assert_eq!(events.len(), 1, "one drop, one event: {events:?}");
    let e = events[0];
    assert_eq!(&e.addr[..4], &[192, 0, 2, 60]);
    assert_eq!(e.family, ztag_common::FAMILY_V4);
    assert_eq!(e.reason, Reason::Blocklist as u32);
    assert_ne!(
        e.reason_id, 0,
        "the entry's reason id travels with the event"
    );
    assert!(e.time_ns > 0);
}

#[test]
fn one_drop_in_n_is_sampled_without_aliasing() {
    if !privileged("one_drop_in_n_is_sampled_without_aliasing") {
        return;
    }
    let mut f = fixture(XdpConfig {
        sample_one_in: 16,
        ..XdpConfig::default()
    });
    let mut ring = f.enforcer.plane_mut().take_events().expect("events ring");
    f.add(ListKind::Block, "192.0.2.70", None);
    f.add(ListKind::Block, "192.0.2.71", None);
    let a = Frame::new().tcp(ip("192.0.2.70"), ACK, 0);
    let b = Frame::new().tcp(ip("192.0.2.71"), ACK, 0);
    // Two sources strictly alternating: a fixed 1-in-16 counter would only
    // ever sample one of them.
    for _ in 0..1600 {
        expect(&f, &a, XDP_DROP, "a");
        expect(&f, &b, XDP_DROP, "b");
    }
    let (mut na, mut nb) = (0, 0);
    while let Some(item) = ring.next() {
        // SAFETY: the program writes whole DropEvents.
        let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) };
        match e.addr[3] {
            70 => na += 1,
            71 => nb += 1,
            other => panic!("event for .{other}"),
        }
    }
    // 3200 drops, 1 in 16 on average: 200 events, 100 each; bounds far
    // outside the binomial spread.
    assert!((140..=260).contains(&(na + nb)), "events: {na} + {nb}");
    assert!(na >= 50 && nb >= 50, "both sources sampled: {na} / {nb}");
}

#[test]
fn the_tc_classifier_makes_the_same_decisions() {
    if !privileged("the_tc_classifier_makes_the_same_decisions") {
        return;
    }
    let mut f = fixture(no_limits());
    f.add(ListKind::Block, "192.0.2.0/24", None);
    f.add(ListKind::Allow, "192.0.2.1", None);
    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    let tc = |frame: &[u8]| run(f.tc, frame, 1).expect("BPF_PROG_TEST_RUN (tc)").retval;
    assert_eq!(tc(&Frame::new().tcp(ip("192.0.2.9"), ACK, 0)), TC_ACT_SHOT);
    assert_eq!(
        tc(&Frame::new().vlan(3).tcp(ip("192.0.2.9"), ACK, 0)),
        TC_ACT_SHOT
    );
    assert_eq!(tc(&Frame::new().tcp(ip("192.0.2.1"), ACK, 0)), TC_ACT_OK);
    assert_eq!(tc(&Frame::new().tcp(ip("198.51.100.1"), ACK, 0)), TC_ACT_OK);
}

#[test]
fn bulk_import_is_all_or_nothing() {
    if !privileged("bulk_import_is_all_or_nothing") {
        return;
    }
    let mut f = fixture(no_limits());
    let err = f
        .enforcer
        .import(
            ListKind::Block,
            "# comment\n192.0.2.1\n\n10.0.0.1/8\n2001:db8::/32 bad range\nnonsense\n",
            &AddSpec::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4") && err.contains("line 6"), "{err}");
    assert!(!err.contains("line 2"), "{err}");
    assert!(
        f.enforcer.list(None).unwrap().is_empty(),
        "nothing imported"
    );
    expect(
        &f,
        &Frame::new().tcp(ip("192.0.2.1"), ACK, 0),
        XDP_PASS,
        "not imported",
    );
    let n = f
        .enforcer
        .import(
            ListKind::Block,
            "192.0.2.1\n2001:db8::/32 known bad range\n",
            &AddSpec::default(),
        )
        .unwrap();
    assert_eq!(n, 2);
    expect(
        &f,
        &Frame::new().tcp(ip("192.0.2.1"), ACK, 0),
        XDP_DROP,
        "imported v4",
    );
    expect(
        &f,
        &Frame::new().tcp(ip("2001:db8::5"), ACK, 0),
        XDP_DROP,
        "imported v6",
    );
    let v6 = f.enforcer.list(Some(ListKind::Block)).unwrap();
    assert!(
        v6.iter()
            .any(|e| e.reason.as_deref() == Some("known bad range"))
    );
}

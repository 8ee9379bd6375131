//! End to end: the real `ztag run` daemon attached to a veth in a network
//! namespace, a real HTTP server behind it, curl as the client from two
//! source addresses, and the CLI managing the blocklist.

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use ztag_tests::{Daemon, PinDir, TempDir, Topology, privileged, unique};

/// Blocks .2, checks .2 times out while .3 is served, in one attach mode.
fn blocked_times_out_allowed_is_served(mode: &str) {
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, mode, &pins, &dir);
    let health = d.log_text();
    assert!(
        health.contains(&format!("mode=\"{mode}\"")),
        "daemon did not attach in {mode} mode:\n{health}"
    );
    assert!(topo.served(2), "{mode}: .2 served before any block");
    d.ok(&["block", "add", &topo.addr(2), "--reason", "e2e"]);
    assert!(!topo.served(2), "{mode}: blocked source must time out");
    assert!(topo.served(3), "{mode}: other source must be served");
    let stats = d.ok(&["stats", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let dropped: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["interface"] == topo.srv_if.as_str() && r["reason"] == "blocklist")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(
        dropped >= 1,
        "{mode}: no blocklist drops counted on {}: {stats}",
        topo.srv_if
    );
    d.ok(&["block", "rm", &topo.addr(2)]);
    assert!(topo.served(2), "{mode}: served again after block rm");
}

#[test]
fn skb_mode_drops_blocked_source_and_serves_others() {
    if privileged("skb_mode_drops_blocked_source_and_serves_others") {
        blocked_times_out_allowed_is_served("skb");
    }
}

#[test]
fn native_mode_drops_blocked_source_and_serves_others() {
    if privileged("native_mode_drops_blocked_source_and_serves_others") {
        blocked_times_out_allowed_is_served("native");
    }
}

#[test]
fn tc_mode_drops_blocked_source_and_serves_others() {
    if privileged("tc_mode_drops_blocked_source_and_serves_others") {
        blocked_times_out_allowed_is_served("tc");
    }
}

#[test]
fn auto_mode_picks_native_on_veth() {
    if !privileged("auto_mode_picks_native_on_veth") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "auto", &pins, &dir);
    let log = d.log_text();
    assert!(
        log.contains("mode=\"native\"") && log.contains("requested=\"auto\""),
        "{log}"
    );
}

#[test]
fn a_block_is_enforced_when_the_cli_returns() {
    if !privileged("a_block_is_enforced_when_the_cli_returns") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "native", &pins, &dir);
    assert!(topo.served(2));
    let t = Instant::now();
    d.ok(&["block", "add", &format!("{}/32", topo.addr(2))]);
    let ack = t.elapsed();
    // The very next connection attempt after the acknowledgement fails.
    assert!(!topo.served(2), "not enforced at acknowledgement");
    eprintln!("block add round trip (CLI start to ack): {ack:?}");
}

#[test]
fn ttl_expiry_unblocks() {
    if !privileged("ttl_expiry_unblocks") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "skb", &pins, &dir);
    d.ok(&["block", "add", &topo.addr(2), "--ttl", "2s"]);
    assert!(!topo.served(2), "blocked during its TTL");
    sleep(Duration::from_millis(2300));
    assert!(topo.served(2), "served after the TTL");
    // The sweeper removed it from the durable list as well.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let list = d.ok(&["block", "list", "--json"]);
        if list.trim() == "[]" {
            break;
        }
        assert!(Instant::now() < deadline, "expired entry not swept: {list}");
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_keeps_sources_blocked_and_restart_keeps_every_entry() {
    if !privileged("kill_9_keeps_sources_blocked_and_restart_keeps_every_entry") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let mut d = Daemon::start(&topo.srv, &topo.srv_if, "native", &pins, &dir);
    d.ok(&["block", "add", &topo.addr(2), "--reason", "kill test"]);
    d.ok(&["block", "add", "192.0.2.0/24", "--ttl", "1h"]);
    d.ok(&["block", "add", "2001:db8::/32"]);
    d.ok(&["allow", "add", "192.0.2.10"]);
    let before = d.ok(&["block", "list", "--json"]);
    d.proc.kill9();
    // No daemon: the pinned program and maps keep enforcing.
    let out = d.cli(&["block", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("daemon is not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !topo.served(2),
        "blocked source reached the server after kill -9"
    );
    assert!(topo.served(3), "other source not served after kill -9");
    d.restart();
    assert!(
        d.log_text().contains("reused_pinned_link=true"),
        "restart did not re-use the pinned link:\n{}",
        d.log_text()
    );
    let after = d.ok(&["block", "list", "--json"]);
    let cidrs = |s: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["cidr"], e["reason"]))
            .collect()
    };
    assert_eq!(cidrs(&before), cidrs(&after));
    assert_eq!(cidrs(&after).len(), 3);
    assert!(d.ok(&["allow", "list"]).contains("192.0.2.10/32"));
    assert!(!topo.served(2), "still blocked after restart");
    d.ok(&["block", "rm", &topo.addr(2)]);
    assert!(topo.served(2), "served after rm on the restarted daemon");
}

#[test]
fn a_million_entries_load_and_still_drop_correctly() {
    if !privileged("a_million_entries_load_and_still_drop_correctly") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "native", &pins, &dir);
    // 999,999 distinct /32s in 100.64.0.0/10 plus the source under test.
    let mut text = String::with_capacity(16 * 1_000_000);
    for i in 0u32..999_999 {
        let a = 0x6440_0000u32 + i;
        text.push_str(&format!(
            "{}.{}.{}.{}\n",
            a >> 24,
            (a >> 16) & 0xff,
            (a >> 8) & 0xff,
            a & 0xff
        ));
    }
    text.push_str(&format!("{}\n", topo.addr(2)));
    let file = dir.0.join(format!("{}.txt", unique("million")));
    std::fs::write(&file, &text).unwrap();
    let t = Instant::now();
    let out = d.ok(&[
        "block",
        "import",
        file.to_str().unwrap(),
        "--reason",
        "bulk",
    ]);
    eprintln!(
        "import of 1,000,000 entries: {:?} ({})",
        t.elapsed(),
        out.trim()
    );
    assert!(out.contains("imported 1000000 entries"), "{out}");
    assert!(
        !topo.served(2),
        "blocked source among 1M entries must be dropped"
    );
    assert!(
        topo.served(3),
        "unlisted source must be served with 1M entries loaded"
    );
    let metrics = topo
        .srv
        .exec(&["curl", "-s", "http://127.0.0.1:9477/metrics"]);
    let m = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        m.contains("ztag_blocklist_entries{kind=\"block\"} 1000000"),
        "metrics: {}",
        m.lines()
            .filter(|l| l.contains("entries"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn metrics_pass_promtool_and_count_drops() {
    if !privileged("metrics_pass_promtool_and_count_drops") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "skb", &pins, &dir);
    d.ok(&["block", "add", &topo.addr(2)]);
    assert!(!topo.served(2));
    let out = topo
        .srv
        .exec(&["curl", "-s", "http://127.0.0.1:9477/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = format!(
        "ztag_xdp_packets_total{{action=\"drop\",interface=\"{}\",reason=\"blocklist\"}}",
        topo.srv_if
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no {want} in:\n{text}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1, "{line}");
    assert!(text.contains("ztag_xdp_bytes_total{"), "{text}");
    assert!(
        text.contains("ztag_blocklist_entries{kind=\"block\"} 1"),
        "{text}"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    // Events: every drop is sampled in this config.
    let ev = d.ok(&["events", "--json"]);
    assert!(
        ev.contains(&topo.addr(2)),
        "no drop event for the blocked source: {ev}"
    );
}

#[test]
fn cli_errors_are_clear() {
    // No root needed for these: they fail before any privileged step.
    let dir = TempDir::new();
    let sock = dir.0.join("none.sock");
    let run = |args: &[&str]| {
        std::process::Command::new(ztag_tests::ztag_bin())
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let err = |args: &[&str]| String::from_utf8_lossy(&run(args).stderr).into_owned();
    assert!(
        err(&["block", "add", "10.0.0.300"]).contains("is not an IPv4/IPv6 address or CIDR prefix")
    );
    assert!(err(&["block", "add", "10.0.0.1/8"]).contains("did you mean 10.0.0.0/8"));
    assert!(err(&["block", "add", "::ffff:10.0.0.1"]).contains("write the IPv4 form 10.0.0.1/32"));
    assert!(err(&["block", "add", "10.0.0.1", "--ttl", "soon"]).contains("is not a duration"));
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        assert!(err(&["block", "list"]).contains("daemon is not running"));
    } else {
        assert!(err(&["block", "list"]).contains("must run as root"));
    }
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[xdp]\nmode = \"fast\"\ninterfaces = []\n").unwrap();
    let e = err(&["check-config", "--config", bad.to_str().unwrap()]);
    assert!(
        e.contains("xdp.mode") && e.contains("xdp.interfaces"),
        "{e}"
    );
    assert!(run(&["check-config"]).status.success());
}

#[test]
fn sighup_applies_a_new_rate_limit_and_survives_a_bad_file() {
    if !privileged("sighup_applies_a_new_rate_limit_and_survives_a_bad_file") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let d = Daemon::start(&topo.srv, &topo.srv_if, "skb", &pins, &dir);
    let pid = d.proc.pid().expect("daemon pid").to_string();
    let rate_drops = || -> u64 {
        let v: serde_json::Value = serde_json::from_str(&d.ok(&["stats", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"] == "rate_limit")
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    };
    for _ in 0..3 {
        assert!(topo.served(2), "no limit yet");
    }
    assert_eq!(rate_drops(), 0);
    // A file that does not validate changes nothing.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{good}\n[xdp.rate_limit]\nbogus = 1\n")).unwrap();
    ztag_tests::sh(&["kill", "-HUP", &pid]);
    sleep(Duration::from_millis(300));
    assert!(
        d.log_text().contains("configuration not reloaded"),
        "{}",
        d.log_text()
    );
    assert!(topo.served(2), "still serving after a bad reload");
    // One new connection per second per source, burst 1.
    std::fs::write(
        &d.config,
        format!("{good}\n[xdp.rate_limit]\nnew_connections_per_second = 1\nburst = 1\n"),
    )
    .unwrap();
    ztag_tests::sh(&["kill", "-HUP", &pid]);
    sleep(Duration::from_millis(300));
    assert!(
        d.log_text().contains("configuration reloaded"),
        "{}",
        d.log_text()
    );
    for _ in 0..3 {
        topo.served_within(2, "0.5");
    }
    assert!(
        rate_drops() >= 1,
        "no SYN was rate limited after the reload"
    );
}

/// Every thread of the daemon, from /proc: (uids, gids, CapEff, CapPrm,
/// CapBnd, NoNewPrivs).
fn thread_creds(pid: u32) -> Vec<(String, String, u64, u64, u64, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap();
        out.push((
            field("Uid"),
            field("Gid"),
            hex("CapEff"),
            hex("CapPrm"),
            hex("CapBnd"),
            field("NoNewPrivs"),
        ));
    }
    out
}

#[test]
fn runs_as_a_dedicated_user_with_two_capabilities_and_detaches_on_exit() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !privileged("runs_as_a_dedicated_user_with_two_capabilities_and_detaches_on_exit") {
        return;
    }
    let pins = PinDir::new();
    let dir = TempDir::new();
    let topo = Topology::new();
    let mut d = Daemon::start_full(
        &topo.srv,
        &topo.srv_if,
        "skb",
        &pins,
        &dir,
        "socket_group = \"nogroup\"",
        "[process]\nuser = \"nobody\"\ndrain_timeout = \"2s\"\ndetach_on_exit = true\n",
    );
    let pid = d.proc.pid().unwrap();
    // The start line says so (the admin socket answers a moment before),
    // and every thread shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("privileges dropped") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        sleep(Duration::from_millis(20));
    }
    let bpf_and_net_admin = (1u64 << 39) | (1 << 12);
    let threads = thread_creds(pid);
    assert!(threads.len() > 1, "the runtime has threads: {threads:?}");
    for t in &threads {
        assert_eq!(
            t.0, "65534 65534 65534 65534",
            "uids of a thread: {threads:?}"
        );
        assert_eq!(
            t.1, "65534 65534 65534 65534",
            "gids of a thread: {threads:?}"
        );
        assert_eq!(
            (t.2, t.3, t.4),
            (bpf_and_net_admin, bpf_and_net_admin, bpf_and_net_admin),
            "capabilities of a thread: {threads:?}"
        );
        assert_eq!(t.5, "1", "no_new_privs: {threads:?}");
    }
    // The admin socket: the group may use it, nobody else.
    let m = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), 65534);
    // With only CAP_BPF and CAP_NET_ADMIN the daemon still blocks and
    // unblocks in the kernel, and writes its state DB.
    assert!(topo.served(2));
    d.ok(&["block", "add", &topo.addr(2), "--reason", "least privilege"]);
    assert!(!topo.served(2), "blocked after the switch");
    d.ok(&["block", "rm", &topo.addr(2)]);
    assert!(topo.served(2), "unblocked");
    let list = d.ok(&["block", "list", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0,
        "{list}"
    );
    // SIGTERM: drained, then (detach_on_exit) the pins go and the program
    // leaves the interface.
    assert!(pins.0.join("links").is_dir());
    let status = d
        .proc
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM:\n{}", d.log_text()));
    assert!(status.success(), "exit status {status}:\n{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("detach_on_exit: removed"), "{log}");
    assert!(
        !pins.0.exists(),
        "pin dir {} still there:\n{log}",
        pins.0.display()
    );
    let link = std::process::Command::new("ip")
        .args(["-n", &topo.srv.name, "link", "show", &topo.srv_if])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "still attached: {link}");
}

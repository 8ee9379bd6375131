//! Operations: the shipped systemd unit, the example configurations, the
//! man-page-like help of every subcommand.

use std::process::Command;

use ztag_tests::{TempDir, tool_available, ztag_bin};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_systemd_unit_verifies() {
    if !tool_available("systemd-analyze", "the_systemd_unit_verifies") {
        return;
    }
    let unit = std::fs::read_to_string(root().join("packaging/ztag.service")).unwrap();
    // The unit names the installed binary; point it at the one under test.
    assert!(unit.contains("ExecStart=/usr/local/bin/ztag "), "{unit}");
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let dir = TempDir::new();
    let path = dir.0.join("ztag.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ztag", ztag_bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn example_configs_name_only_what_a_host_provides() {
    // Every example parses and validates; check-config then only misses
    // what the example host would have (certificates, accounts).
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let p = entry.unwrap().path().join("ztag.toml");
        if !p.exists() {
            continue;
        }
        n += 1;
        let out = Command::new(ztag_bin())
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(
                err.contains("for this host"),
                "{}: not a host problem:\n{err}",
                p.display()
            );
            for line in err.lines().skip(1) {
                let line = line.trim();
                assert!(
                    line.contains("No such file")
                        || line.starts_with("process.user: no user")
                        || line.starts_with("admin.socket_group: no group"),
                    "{}: {line}",
                    p.display()
                );
            }
        }
    }
    assert!(n >= 4, "examples: default, gateway, mcp-gateway, llm-proxy");
}

#[test]
fn every_subcommand_has_a_manual_page_like_help() {
    let help = |args: &[&str]| {
        let out = Command::new(ztag_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let subs: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(subs.len() >= 15, "{subs:?}");
    for s in &subs {
        let h = help(&[s, "--help"]);
        assert!(h.contains("Usage: ztag"), "{s}: {h}");
        // A description above the usage line, not just the synopsis.
        let about = h.split("Usage:").next().unwrap().trim();
        assert!(
            about.len() >= 20,
            "ztag {s} --help has no description:\n{h}"
        );
    }
    let run = help(&["run", "--help"]);
    for flag in [
        "--config",
        "--interface",
        "--mode",
        "--user",
        "--detach-on-exit",
        "--log-format",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}:\n{run}");
    }
}

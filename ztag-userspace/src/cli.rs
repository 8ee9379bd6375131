//! The `ztag` command line: the daemon (`run`), list management (`block`,
//! `allow`), counters (`stats`), FGA stores (`fga`), `check-config` and
//! `detach`.

pub mod agent;
pub mod fga;
pub mod inspect;

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hyper::Method;

use crate::{
    admin::{AddRequest, ImportResponse, RemoveRequest, StatRow, client::AdminClient},
    config::{AttachMode, Config, DEFAULT_ADMIN_SOCKET},
    daemon::is_root,
    xdp::lists::EntryView,
};

/// ztag — zero-trust API gateway with kernel-level (XDP/TC) enforcement.
#[derive(Debug, Parser)]
#[command(name = "ztag", version, about, long_about = None)]
pub struct Cli {
    /// Admin socket of the running daemon.
    #[arg(long, global = true, env = "ZTAG_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
    /// Log lines as text on stderr, or as JSON objects on stdout (one per
    /// line: time, level, target, message and fields; for journald or a
    /// log collector). The level is set with ZTAG_LOG (default: info).
    #[arg(long, global = true, env = "ZTAG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const STATS_HELP: &str = "\
Per interface, verdict (pass/drop) and reason (allowlist, blocklist,
dynamic, rate_limit, malformed, non_ip, default): packets and bytes, summed
over the kernel program's per-CPU counters since it was loaded.

EXAMPLES:
    ztag stats
    ztag stats --json | jq '.[] | select(.reason == \"blocklist\")'";

const EVENTS_HELP: &str = "\
Drops are sampled one in xdp.events_sample_one_in into a ring buffer that
the daemon reads; these are the latest it kept.

EXAMPLES:
    ztag events --limit 50
    ztag events --json";

const TOP_HELP: &str = "\
Refreshes in place until interrupted (Ctrl-C); --once prints one snapshot.

EXAMPLES:
    ztag top
    ztag top --interval 5s --limit 30
    ztag top --once";

const AUDIT_HELP: &str = "\
Every MCP tool call (allowed or refused, with the reason) and every approval
decision (with the approver), from the state DB.

EXAMPLES:
    ztag audit --limit 20
    ztag audit --kind approval --json";

const INSPECT_HELP: &str = "\
Runs without a daemon, on files or stdin.

EXAMPLES:
    ztag inspect prompt prompts.txt
    ztag inspect prompt --jsonl < prompts.jsonl
    ztag inspect content --jsonl < responses.jsonl
    ztag inspect eval --sweep";

const CHECK_CONFIG_HELP: &str = "\
Exits 0 and prints a summary when the file is valid; otherwise prints every
problem at once, each with its key path (gateway.route[2].upstream: ...),
then the files it names that do not load and the users or groups this host
lacks, and exits 1.

EXAMPLES:
    ztag check-config --config /etc/ztag/ztag.toml
    ztag check-config            # the embedded default";

const BLOCK_HELP: &str = "\
Static entries: an address or CIDR (IPv4 or IPv6) whose packets the XDP/TC
program drops before the host's network stack. Entries are kept in the
state DB, survive restarts, and with fleet mode reach every gateway.
Dynamic entries (the risk engine's) show in `list` as kind dynamic.

EXAMPLES:
    ztag block add 203.0.113.7 --ttl 1h --reason \"credential stuffing\"
    ztag block add 2001:db8::/48
    ztag block list --json
    ztag block rm 203.0.113.7
    ztag block import bad-ips.txt --ttl 7d     # all lines checked first";

const ALLOW_HELP: &str = "\
Allowlisted sources always pass, even when a blocklist entry or the risk
engine covers them.

EXAMPLES:
    ztag allow add 10.0.0.0/8 --reason internal
    ztag allow list";

const FGA_HELP: &str = "\
The daemon's OpenFGA-compatible stores (models in the OpenFGA DSL or JSON,
tuples in the state DB); `fga test` runs OpenFGA model test files offline.
`ztag fga <command> --help` shows each command's arguments.";

const VAULT_HELP: &str = "\
Secrets are read from stdin (never argv), sealed with AES-256-GCM under
[agent.vault] key_file, and never printed.

EXAMPLES:
    ztag vault put --user alice --connection github < token.txt
    ztag vault list
    ztag vault rm --user alice --connection github";

const APPROVALS_HELP: &str = "\
Requests and MCP tool calls that a route or tool rule holds for a person.

EXAMPLES:
    ztag approvals list
    ztag approvals show ID
    ztag approvals approve ID --note \"checked with the team\"
    ztag approvals deny ID";

const RISK_HELP: &str = "\
The risk engine scores sources (address, /24 or /64) and principals from
every phase's events; above its thresholds it rate-limits (429) and then
blocks in the kernel for a growing TTL.";

const FLEET_HELP: &str = "\
Fleet mode shares lists, risk decisions, rate limits and approvals through
Redis ([fleet] redis = ...).

EXAMPLES:
    ztag fleet status";

const DETACH_HELP: &str = "\
Removes the pinned links (the program leaves every interface) and maps.
The state DB keeps the lists: the next `ztag run` restores them.

EXAMPLES:
    ztag detach --config /etc/ztag/ztag.toml
    ztag detach --pin-dir /sys/fs/bpf/ztag";

const RUN_HELP: &str = "\
PRIVILEGES:
    Starts as root (loads, attaches and pins the eBPF program, binds its
    sockets), then every thread keeps only CAP_BPF and CAP_NET_ADMIN (and
    CAP_NET_BIND_SERVICE for ports below 1024), with no_new_privs; with
    --user or [process] user it also switches to that account.

SIGNALS:
    SIGHUP   re-read the config file and the certificates; a file that does
             not validate changes nothing.
    SIGTERM  stop accepting, let requests in flight finish (within
             [process] drain_timeout, default 10 s), exit. The program and
             its maps stay pinned unless --detach-on-exit.

FILES:
    /etc/ztag/ztag.toml      the usual --config (check it: ztag check-config)
    /var/lib/ztag/           state DB (lists, FGA tuples, vault, approvals)
    /sys/fs/bpf/ztag/        pinned maps and links (ztag detach removes them)
    /run/ztag/admin.sock     admin API for the CLI (0600, or 0660 with admin.socket_group)

ENVIRONMENT:
    ZTAG_LOG          log filter (info, debug, ztag::fleet=debug, ...)
    ZTAG_LOG_FORMAT   text (stderr) or json (stdout, one object per line)

EXAMPLES:
    ztag run --config /etc/ztag/ztag.toml
    ztag run --interface eth0 --mode auto --user ztag
    ztag --log-format json run --config /etc/ztag/ztag.toml --detach-on-exit";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stdout.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the XDP/TC program, restore the lists, serve
    /// the admin API and /metrics. Without --config, uses the embedded
    /// default (attach to `lo` in SKB mode).
    #[command(after_long_help = RUN_HELP)]
    Run(RunArgs),
    /// Validate a configuration file and print every problem with its key.
    #[command(after_long_help = CHECK_CONFIG_HELP)]
    CheckConfig {
        /// The file to check (default: the embedded configuration).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the static blocklist (sources dropped in the kernel).
    #[command(subcommand)]
    #[command(after_long_help = BLOCK_HELP)]
    Block(ListCmd),
    /// Manage the allowlist (sources that always pass, even if blocked).
    #[command(subcommand)]
    #[command(after_long_help = ALLOW_HELP)]
    Allow(ListCmd),
    /// Show packet and byte counters per interface, verdict and reason.
    #[command(after_long_help = STATS_HELP)]
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show recent sampled drop events (source, interface, reason).
    #[command(after_long_help = EVENTS_HELP)]
    Events {
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fine-grained authorisation: the daemon's OpenFGA-compatible stores
    /// (models, tuples, checks), and `fga test` for model test files.
    #[command(after_long_help = FGA_HELP)]
    Fga {
        /// The store: its name or id.
        #[arg(long, global = true, env = "ZTAG_FGA_STORE", default_value = "default")]
        store: String,
        /// What to do.
        #[command(subcommand)]
        cmd: fga::FgaCmd,
    },
    /// The token vault: upstream credentials per user and connection
    /// (sealed in the state DB; `list` never shows secrets).
    #[command(subcommand)]
    #[command(after_long_help = VAULT_HELP)]
    Vault(agent::VaultCmd),
    /// Human-in-the-loop approvals: list, show, approve, deny.
    #[command(subcommand)]
    #[command(after_long_help = APPROVALS_HELP)]
    Approvals(agent::ApprovalsCmd),
    /// The risk engine: the riskiest sources and principals, its decisions.
    #[command(subcommand)]
    #[command(after_long_help = RISK_HELP)]
    Risk(RiskCmd),
    /// Fleet mode: this gateway's link to the fleet's Redis.
    #[command(subcommand)]
    #[command(after_long_help = FLEET_HELP)]
    Fleet(FleetCmd),
    /// A live view: kernel drops per second by reason, the busiest and the
    /// riskiest sources and principals, the latest decisions, pending
    /// approvals.
    #[command(after_long_help = TOP_HELP)]
    Top {
        /// Refresh every this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Rows of risky keys.
        #[arg(long, default_value_t = 15)]
        limit: usize,
        /// Print one snapshot (rates over one interval) and exit.
        #[arg(long)]
        once: bool,
    },
    /// The audit log: MCP tool calls and approval decisions, newest first.
    #[command(after_long_help = AUDIT_HELP)]
    Audit {
        /// Only this kind (tool_call, approval).
        #[arg(long)]
        kind: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// AI content inspection offline: the prompt-injection detector and the
    /// content filter on your own text; detector training and evaluation.
    #[command(subcommand)]
    #[command(after_long_help = INSPECT_HELP)]
    Inspect(inspect::InspectCmd),
    /// Detach the program from every interface and remove the pinned maps.
    /// Stop the daemon first; blocked sources are no longer dropped after this.
    #[command(after_long_help = DETACH_HELP)]
    Detach {
        /// Config whose xdp.pin_dir to clean (default: the embedded one).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The pin directory, instead of reading a config.
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// Detach even though a daemon answers on the admin socket.
        #[arg(long)]
        force: bool,
    },
}

/// `ztag risk`.
#[derive(Debug, Subcommand)]
pub enum RiskCmd {
    /// The riskiest tracked sources, prefixes and principals, with their
    /// recent events.
    Top {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The latest decisions (rate limits, blocks) with their reasons.
    Decisions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `ztag fleet`.
#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Connected or degraded, last sync, lag, queued changes, peers seen.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `ztag run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (default: the embedded configuration).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Attach to these interfaces instead of xdp.interfaces (repeatable).
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// Attach mode instead of xdp.mode: native, skb, tc or auto.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<AttachMode>,
    /// Run as this user once attached and bound (instead of
    /// process.user); it keeps only CAP_BPF, CAP_NET_ADMIN and, for ports
    /// below 1024, CAP_NET_BIND_SERVICE.
    #[arg(long)]
    pub user: Option<String>,
    /// On exit, detach the program and remove its pinned maps (default:
    /// they stay and keep dropping blocked sources; process.detach_on_exit).
    #[arg(long)]
    pub detach_on_exit: bool,
}

fn parse_mode(s: &str) -> Result<AttachMode, String> {
    AttachMode::parse(s).ok_or_else(|| format!("{s:?} is not one of native, skb, tc, auto"))
}

/// Worker threads the command's runtime should have (0: one per core):
/// `run` takes `gateway.workers` from its configuration.
pub fn worker_threads(cli: &Cli) -> usize {
    match &cli.command {
        Command::Run(a) => load_config(a.config.as_deref())
            .map(|c| c.gateway.workers)
            .unwrap_or(0),
        _ => 0,
    }
}

/// `block` / `allow` subcommands.
#[derive(Debug, Subcommand)]
pub enum ListCmd {
    /// Add an address or CIDR prefix (takes effect when the command returns).
    Add {
        /// e.g. 203.0.113.7, 198.51.100.0/24, 2001:db8::/48
        cidr: String,
        /// Remove it automatically after this long (e.g. 90s, 10m, 12h, 7d).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Why (kept in the state DB, shown by `list`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove an entry.
    Rm {
        /// The address or prefix as it was added.
        cidr: String,
    },
    /// List entries.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add many entries from a file (one CIDR per line, optionally followed
    /// by a reason; `#` comments and blank lines skipped; `-` reads stdin).
    /// All lines are checked first: one bad line and nothing is imported.
    Import {
        /// The file, or `-`.
        file: PathBuf,
        /// TTL for every entry.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Reason for lines that give none.
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 90s, 10m, 12h or 7d ({e})"))?;
    if d.is_zero() {
        return Err("the TTL must be positive; omit --ttl for a permanent entry".into());
    }
    Ok(d)
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let client = AdminClient::new(&cli.socket);
    match cli.command {
        Command::Run(args) => {
            let mut config = load_config(args.config.as_deref())?;
            if !args.interfaces.is_empty() {
                config.xdp.interfaces = args.interfaces;
            }
            if let Some(m) = args.mode {
                config.xdp.mode = m;
            }
            if let Some(u) = args.user {
                config.process.user = Some(u);
            }
            if args.detach_on_exit {
                config.process.detach_on_exit = true;
            }
            // Overrides given on the command line stay in force on reload.
            let reload = args.config.map(|path| crate::daemon::Reload {
                path,
                interfaces: config.xdp.interfaces.clone(),
                mode: config.xdp.mode,
            });
            crate::daemon::run(config, reload).await
        }
        Command::CheckConfig { config } => {
            let c = load_config(config.as_deref())?;
            let mut problems = crate::proxy::check_files(&c.gateway);
            problems.extend(crate::daemon::host_problems(&c));
            if !problems.is_empty() {
                bail!(
                    "invalid configuration for this host (files that do not load, accounts it does not have):\n  {}",
                    problems.join("\n  ")
                );
            }
            println!(
                "configuration OK: xdp {} on {:?} ({}), pin dir {}, state {}, admin socket {}; \
                 gateway: {} listener(s), {} route(s), {} upstream(s)",
                if c.xdp.enabled { "enabled" } else { "disabled" },
                c.xdp.interfaces,
                c.xdp.mode.as_str(),
                c.xdp.pin_dir.display(),
                c.state.dir.display(),
                c.admin.socket.display(),
                c.gateway.listeners.len(),
                c.gateway.routes.len(),
                c.gateway.upstreams.len(),
            );
            Ok(())
        }
        Command::Block(cmd) => list_cmd(&client, "block", cmd).await,
        Command::Allow(cmd) => list_cmd(&client, "allow", cmd).await,
        Command::Fga { store, cmd } => fga::run(&client, &store, cmd).await,
        Command::Inspect(cmd) => inspect::run(cmd),
        Command::Vault(cmd) => agent::vault(&client, cmd).await,
        Command::Approvals(cmd) => agent::approvals(&client, cmd).await,
        Command::Audit { kind, limit, json } => agent::audit(&client, kind, limit, json).await,
        Command::Risk(cmd) => risk_cmd(&client, cmd).await,
        Command::Fleet(FleetCmd::Status { json }) => fleet_status(&client, json).await,
        Command::Top {
            interval,
            limit,
            once,
        } => top(&client, interval, limit, once).await,
        Command::Stats { json } => {
            need_root("ztag stats", &cli.socket)?;
            let rows: Vec<StatRow> = client.get("/v1/stats").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<6} {:<11} {:>14} {:>16}",
                    "INTERFACE", "ACTION", "REASON", "PACKETS", "BYTES"
                );
                for r in rows {
                    println!(
                        "{:<16} {:<6} {:<11} {:>14} {:>16}",
                        r.interface, r.action, r.reason, r.packets, r.bytes
                    );
                }
            }
            Ok(())
        }
        Command::Events { limit, json } => {
            need_root("ztag events", &cli.socket)?;
            let rows: Vec<crate::admin::EventView> =
                client.get(&format!("/v1/events?limit={limit}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<40} {:<16} {:<11} {:>15}",
                    "SOURCE", "INTERFACE", "REASON", "AGE"
                );
                let now = crate::state::now_ms();
                for r in rows {
                    let age = Duration::from_millis((now - r.time_ms).max(0) as u64);
                    println!(
                        "{:<40} {:<16} {:<11} {:>15}",
                        r.source,
                        r.interface,
                        r.reason,
                        humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
                    );
                }
            }
            Ok(())
        }
        Command::Detach {
            config,
            pin_dir,
            force,
        } => {
            let pin_dir = match pin_dir {
                Some(p) => p,
                None => load_config(config.as_deref())?.xdp.pin_dir,
            };
            if !is_root() {
                bail!(
                    "ztag detach must run as root (it removes pins under {})",
                    pin_dir.display()
                );
            }
            if !force && std::os::unix::net::UnixStream::connect(&cli.socket).is_ok() {
                bail!(
                    "a ztag daemon is running (it answers on {}); stop it first, or pass --force",
                    cli.socket.display()
                );
            }
            let r = crate::xdp::detach_all(&pin_dir)?;
            println!(
                "detached: removed {} link(s) and {} map(s) under {}",
                r.links.len(),
                r.maps.len(),
                pin_dir.display()
            );
            Ok(())
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    })
}

fn need_root(what: &str, socket: &Path) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} must run as root: the admin socket {} is root-only (mode 0600)",
            socket.display()
        );
    }
    Ok(())
}

async fn list_cmd(client: &AdminClient, kind: &str, cmd: ListCmd) -> Result<()> {
    match cmd {
        ListCmd::Add { cidr, ttl, reason } => {
            // Validate locally first: a clear error without a round trip.
            crate::xdp::cidr::parse_cidr(&cidr)?;
            need_root(&format!("ztag {kind} add"), client.socket())?;
            let v: EntryView = client
                .post(
                    &format!("/v1/lists/{kind}"),
                    &AddRequest {
                        cidr,
                        ttl_secs: ttl.map(|d| d.as_secs().max(1)),
                        reason,
                    },
                )
                .await?;
            match v.ttl_secs {
                Some(t) => println!(
                    "{kind}: added {} (expires in {})",
                    v.cidr,
                    humantime::format_duration(Duration::from_secs(t))
                ),
                None => println!("{kind}: added {}", v.cidr),
            }
        }
        ListCmd::Rm { cidr } => {
            let net = crate::xdp::cidr::parse_cidr(&cidr)?;
            need_root(&format!("ztag {kind} rm"), client.socket())?;
            let _: serde_json::Value = client
                .post(&format!("/v1/lists/{kind}/remove"), &RemoveRequest { cidr })
                .await?;
            println!("{kind}: removed {net}");
        }
        ListCmd::List { json } => {
            need_root(&format!("ztag {kind} list"), client.socket())?;
            let mut rows: Vec<EntryView> = client.get(&format!("/v1/lists/{kind}")).await?;
            // The blocklist shows the risk engine's dynamic blocks too.
            if kind == "block" {
                let dynamic: Vec<EntryView> = client.get("/v1/lists/dynamic").await?;
                rows.extend(dynamic);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<43} {:<8} {:<10} {:<14} REASON",
                    "CIDR", "KIND", "ORIGIN", "EXPIRES IN"
                );
                for r in rows {
                    let exp = match r.ttl_secs {
                        Some(t) => humantime::format_duration(Duration::from_secs(t)).to_string(),
                        None => "never".into(),
                    };
                    println!(
                        "{:<43} {:<8} {:<10} {:<14} {}",
                        r.cidr,
                        r.kind.as_str(),
                        r.origin.as_str(),
                        exp,
                        r.reason.unwrap_or_default()
                    );
                }
            }
        }
        ListCmd::Import { file, ttl, reason } => {
            need_root(&format!("ztag {kind} import"), client.socket())?;
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading stdin")?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(t) = ttl {
                q.append_pair("ttl_secs", &t.as_secs().max(1).to_string());
            }
            if let Some(r) = &reason {
                q.append_pair("reason", r);
            }
            let q = q.finish();
            let path = if q.is_empty() {
                format!("/v1/lists/{kind}/import")
            } else {
                format!("/v1/lists/{kind}/import?{q}")
            };
            let b = client.call(Method::POST, &path, Bytes::from(text)).await?;
            let r: ImportResponse = serde_json::from_slice(&b)?;
            println!(
                "{kind}: imported {} entries in {} ms",
                r.imported, r.elapsed_ms
            );
        }
    }
    Ok(())
}

async fn fleet_status(client: &AdminClient, json: bool) -> Result<()> {
    let s: crate::fleet::Status = client.get("/v1/fleet").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let ago = |ms: i64| {
        let d = Duration::from_millis((crate::state::now_ms() - ms).max(0) as u64);
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        )
    };
    println!("node        {}", s.node);
    println!("redis       {}", s.redis);
    if let Some(m) = &s.master {
        println!("master      {m}");
    }
    match (s.connected, s.degraded_since_ms) {
        (true, _) => println!("state       connected"),
        (false, Some(t)) => println!("state       DEGRADED since {}", ago(t)),
        (false, None) => println!("state       DEGRADED"),
    }
    println!(
        "last sync   {}",
        s.last_sync_ms.map(ago).unwrap_or_else(|| "never".into())
    );
    println!(
        "lag         {}",
        s.lag_ms
            .map(|l| format!("{l} ms (latest change from a peer)"))
            .unwrap_or_else(|| "-".into())
    );
    println!("queued      {} change(s) waiting for Redis", s.queued);
    println!("sent        {}    applied {}", s.sent, s.applied);
    println!(
        "rate limits {} decided in Redis, {} locally (Redis too slow or away)",
        s.rate_limits_redis, s.rate_limits_fallback
    );
    if let Some(e) = &s.last_error {
        println!("last error  {e}");
    }
    println!("peers       {}", s.peers.len());
    for p in &s.peers {
        println!(
            "  {:<24} seen {:<12} queued {:<6} v{}",
            p.node,
            ago(p.seen_ms),
            p.queued,
            p.version
        );
    }
    Ok(())
}

async fn risk_cmd(client: &AdminClient, cmd: RiskCmd) -> Result<()> {
    match cmd {
        RiskCmd::Top { limit, json } => {
            let rows: Vec<serde_json::Value> =
                client.get(&format!("/v1/risk/top?limit={limit}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            print!("{}", risky_table("KEY", &rows));
        }
        RiskCmd::Decisions { json } => {
            let rows: Vec<serde_json::Value> = client.get("/v1/risk/decisions").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in rows {
                println!(
                    "{} {:<24} {} score {:.1} {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + Duration::from_millis(
                                r["time_ms"].as_i64().unwrap_or(0).max(0) as u64
                            )
                    ),
                    r["action"].as_str().unwrap_or("?"),
                    key_text(&r["key"]),
                    r["score"].as_f64().unwrap_or(0.0),
                    r["ttl_s"]
                        .as_u64()
                        .map(|t| format!("for {t} s"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Drop counters by reason, summed over interfaces.
async fn drop_counts(client: &AdminClient) -> Result<std::collections::BTreeMap<String, u64>> {
    let rows: Vec<StatRow> = client.get("/v1/stats").await?;
    let mut m = std::collections::BTreeMap::new();
    for r in rows.into_iter().filter(|r| r.action == "drop") {
        *m.entry(r.reason).or_insert(0) += r.packets;
    }
    Ok(m)
}

async fn top(client: &AdminClient, interval: Duration, limit: usize, once: bool) -> Result<()> {
    let mut before = drop_counts(client).await?;
    let mut t0 = std::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let now = drop_counts(client).await?;
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        t0 = std::time::Instant::now();
        let risky: Vec<serde_json::Value> = client
            .get(&format!("/v1/risk/top?limit={limit}"))
            .await
            .unwrap_or_default();
        let decisions: Vec<serde_json::Value> =
            client.get("/v1/risk/decisions").await.unwrap_or_default();
        let busiest: Vec<serde_json::Value> = client
            .get("/v1/risk/busiest?limit=5")
            .await
            .unwrap_or_default();
        let pending: Vec<serde_json::Value> = client
            .get("/v1/approvals?status=pending&limit=1000")
            .await
            .unwrap_or_default();
        let mut out = String::new();
        if !once {
            out.push_str("\x1b[2J\x1b[H");
        }
        let total: f64 = now
            .iter()
            .map(|(k, v)| v.saturating_sub(*before.get(k).unwrap_or(&0)) as f64)
            .sum::<f64>()
            / secs;
        out.push_str(&format!(
            "ztag top — every {}   drops/s {total:.0}   pending approvals {}\n\n",
            humantime::format_duration(interval),
            pending.len()
        ));
        out.push_str("DROPS/S BY REASON\n");
        for (k, v) in &now {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0)) as f64 / secs;
            out.push_str(&format!("  {k:<12} {d:>10.0}\n"));
        }
        out.push_str("\nBUSIEST SOURCES (requests since start, estimated)\n");
        for b in &busiest {
            out.push_str(&format!(
                "  {:<40} {:>12}\n",
                b["source"].as_str().unwrap_or("?"),
                b["requests"]
            ));
        }
        out.push('\n');
        out.push_str(&risky_table("RISKIEST", &risky));
        out.push_str("\nLATEST DECISIONS\n");
        for d in decisions.iter().rev().take(5) {
            out.push_str(&format!(
                "  {:<24} {} (score {:.1})\n",
                d["action"].as_str().unwrap_or("?"),
                key_text(&d["key"]),
                d["score"].as_f64().unwrap_or(0.0)
            ));
        }
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        if let Err(e) = o.write_all(out.as_bytes()).and_then(|_| o.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
        if once {
            return Ok(());
        }
        before = now;
    }
}

/// A key of `/v1/risk/*` as text: `source 203.0.113.7`.
fn key_text(k: &serde_json::Value) -> String {
    format!(
        "{} {}",
        k["type"].as_str().unwrap_or("?"),
        k["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| k["id"].to_string())
    )
}

/// The rows of `/v1/risk/top` as a table.
fn risky_table(title: &str, rows: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<44} {:>8} {:<8} {:<8} EVENTS\n",
        title, "SCORE", "LIMITED", "BLOCKED"
    );
    for r in rows {
        let events: Vec<String> = r["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{}×{}", e[0].as_str().unwrap_or("?"), e[1]))
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<44} {:>8.1} {:<8} {:<8} {}\n",
            key_text(&r["key"]),
            r["score"].as_f64().unwrap_or(0.0),
            if r["limited"] == true { "yes" } else { "no" },
            if r["blocked_until_ms"].is_null() {
                "no"
            } else {
                "yes"
            },
            events.join(", ")
        ));
    }
    out
}

//! `ztag run`: loads and attaches the kernel program, restores the lists from
//! the state DB into the maps, and serves the admin API and `/metrics` while
//! sweeping expired entries and reading drop events. On SIGTERM/SIGINT it
//! exits and leaves the program attached: the pinned links and maps keep
//! enforcing until `ztag detach`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{debug, info, warn};
use ztag_common::{DropEvent, Reason, XdpConfig};

use crate::{
    admin::{self, EventView, RECENT_EVENTS, Shared},
    authn::Authn,
    config::Config,
    metrics::Metrics,
    proxy::{Gateway, StartError},
    state::{StateDb, now_ms},
    xdp::{Plane, boottime_ns, cidr::addr_from_event, lists::Enforcer},
};

/// Whether this process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where SIGHUP re-reads the configuration from, and the command-line
/// overrides that stay in force.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The config file.
    pub path: std::path::PathBuf,
    /// Interfaces in force (file or --interface).
    pub interfaces: Vec<String>,
    /// Mode in force (file or --mode).
    pub mode: crate::config::AttachMode,
}

fn program_config(config: &Config) -> XdpConfig {
    XdpConfig {
        rate_per_sec: config.xdp.rate_per_sec,
        rate_burst: config.xdp.rate_burst,
        sample_one_in: config.xdp.events_sample_one_in,
        flags: 0,
    }
}

/// SIGHUP: re-reads the file and applies what can change live (the rate
/// limit and event sampling); names every other changed setting, which
/// needs a restart. A file that no longer validates changes nothing.
fn reload(shared: &Shared, running: &Config, r: &Reload) -> Result<Config> {
    let mut new = Config::load(&r.path)?;
    new.xdp.interfaces = r.interfaces.clone();
    new.xdp.mode = r.mode;
    let mut restart = Vec::new();
    if new.xdp.pin_dir != running.xdp.pin_dir {
        restart.push("xdp.pin_dir");
    }
    if new.xdp.sweep_interval != running.xdp.sweep_interval {
        restart.push("xdp.sweep_interval");
    }
    if new.state.dir != running.state.dir {
        restart.push("state.dir");
    }
    if new.admin.socket != running.admin.socket {
        restart.push("admin.socket");
    }
    if new.metrics.listen != running.metrics.listen {
        restart.push("metrics.listen");
    }
    if new.xdp.enabled != running.xdp.enabled {
        restart.push("xdp.enabled");
    }
    if format!("{:?}", new.gateway) != format!("{:?}", running.gateway) {
        restart.push("gateway (listeners, routes, upstreams, limits; certificates reload now)");
    }
    if format!("{:?}", new.authn) != format!("{:?}", running.authn) {
        restart.push("authn");
    }
    if let Some(e) = &shared.enforcer {
        e.lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_program_config(program_config(&new))?;
    }
    if !restart.is_empty() {
        warn!(settings = ?restart, "SIGHUP: these changes take effect at the next restart");
    }
    info!(
        rate_per_sec = new.xdp.rate_per_sec,
        burst = new.xdp.rate_burst,
        events_sample_one_in = new.xdp.events_sample_one_in,
        "SIGHUP: configuration reloaded"
    );
    Ok(new)
}

/// Raises the soft open-files limit to the hard one: every client and
/// upstream connection is a descriptor.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The kernel plane: program loaded and attached, lists restored.
struct Kernel {
    enforcer: Enforcer,
    interfaces: Vec<(String, String)>,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

fn start_kernel(config: &Config) -> Result<Kernel> {
    let db = StateDb::open(&config.state.dir)
        .with_context(|| format!("opening the state DB in {}", config.state.dir.display()))?;
    let plane = Plane::load(&config.xdp.pin_dir).context("loading the XDP/TC program")?;
    let base = program_config(config);
    let mut enforcer = Enforcer::new(db, plane, base);
    let restored = enforcer
        .reconcile()
        .context("restoring the lists into the maps")?;
    info!(
        entries = restored,
        "restored the lists from the state DB into the maps"
    );

    let mut interfaces = Vec::new();
    for iface in &config.xdp.interfaces {
        let a = enforcer
            .plane_mut()
            .attach(iface, config.xdp.mode)
            .with_context(|| format!("attaching to {iface}"))?;
        info!(
            interface = %a.iface,
            ifindex = a.ifindex,
            mode = a.mode.as_str(),
            requested = config.xdp.mode.as_str(),
            reused_pinned_link = a.reused,
            "attached"
        );
        interfaces.push((a.iface.clone(), a.mode.as_str().to_string()));
    }
    let events = enforcer.plane_mut().take_events();
    if let Some(logger) = enforcer.plane_mut().take_logger() {
        tokio::spawn(async move {
            if let Err(e) = forward_program_logs(logger).await {
                warn!("eBPF log reader stopped: {e}");
            }
        });
    }
    Ok(Kernel {
        enforcer,
        interfaces,
        events,
    })
}

type AuthzParts = (
    Option<Arc<crate::authz::service::Authz>>,
    Option<Arc<crate::authz::remote::Decider>>,
);

/// The FGA side: the embedded stores (loaded from the state DB), and the
/// engine route policies ask (the configured store, or a remote OpenFGA).
fn start_authz(config: &Config, registry: &prometheus::Registry) -> Result<AuthzParts> {
    use crate::authz::{
        config::AuthzConfig,
        remote::{Decider, RemoteFga},
        service::Authz,
    };
    use std::os::unix::fs::DirBuilderExt;
    let dir = &config.state.dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating state.dir {}", dir.display()))?;
    let started = std::time::Instant::now();
    let authz = Arc::new(Authz::open(Some(&config.state.db_path())).with_context(|| {
        format!(
            "loading the FGA stores from {}",
            config.state.db_path().display()
        )
    })?);
    let tuples: usize = authz.stores().iter().map(|s| s.tuple_count()).sum();
    info!(
        stores = authz.stores().len(),
        tuples,
        ms = started.elapsed().as_millis() as u64,
        "FGA stores loaded"
    );
    let decider = match &config.authz {
        AuthzConfig::Embedded { store, model_file } => {
            let s = match authz.store_by_name(store) {
                Some(s) => s,
                None => {
                    info!(store = %store, "creating FGA store");
                    authz.create_store(store)?
                }
            };
            if let Some(f) = model_file {
                let m = crate::authz::testfile::load_model_file(f)
                    .map_err(|e| anyhow::anyhow!("authz.model_file: {e}"))?;
                let same = s.model(None).is_ok_and(|cur| {
                    let mut a = cur.source.clone();
                    a.id.clear();
                    a == m
                });
                if !same {
                    let id = s.add_model(m, true)?;
                    info!(store = %store, model = %id, file = %f.display(), "FGA model written");
                }
            }
            Decider::Embedded(s)
        }
        AuthzConfig::Remote(r) => {
            let remote = RemoteFga::new(r).map_err(|e| anyhow::anyhow!(e))?;
            remote
                .register(registry)
                .map_err(|e| anyhow::anyhow!("registering authz cache metrics: {e}"))?;
            Decider::Remote(Arc::new(remote))
        }
    };
    Ok((Some(authz), Some(Arc::new(decider))))
}

/// Problems of the host with a valid configuration: accounts and groups
/// that `[process]` and `[admin]` name and this host does not have.
pub fn host_problems(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = &c.process.user
        && let Err(e) = crate::privileges::resolve(u, c.process.group.as_deref())
    {
        out.push(e);
    }
    if let Some(g) = &c.admin.socket_group
        && g.parse::<u32>().is_err()
        && crate::privileges::group_id(g).is_none()
    {
        out.push(format!("admin.socket_group: no group {g:?} on this host"));
    }
    out
}

/// What the daemon keeps once it is attached and bound: CAP_BPF and
/// CAP_NET_ADMIN with the kernel plane, CAP_NET_BIND_SERVICE when a
/// listener's port is below 1024; never more than it started with.
fn privilege_target(
    config: &Config,
    account: Option<crate::privileges::Account>,
) -> Option<crate::privileges::Target> {
    use crate::privileges::{CAP_BPF, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, Target};
    let now = crate::privileges::current()?;
    if now.prm == 0 && account.is_none() {
        // Nothing to drop (an unprivileged gateway without the kernel plane).
        return None;
    }
    let mut keep = 0u64;
    if config.xdp.enabled {
        keep |= (1 << CAP_BPF) | (1 << CAP_NET_ADMIN);
    }
    let low = config
        .gateway
        .listeners
        .iter()
        .map(|l| l.bind)
        .chain(config.admin.listen)
        .chain(config.metrics.listen)
        .any(|a| a.port() != 0 && a.port() < 1024);
    if low {
        keep |= 1 << CAP_NET_BIND_SERVICE;
    }
    Some(Target {
        keep: keep & now.prm,
        account,
    })
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads `reload.path`.
pub async fn run(config: Config, reload_from: Option<Reload>) -> Result<()> {
    let mut config = config;
    if config.xdp.enabled && !is_root() {
        bail!(
            "ztag run must run as root: it loads eBPF programs, pins them under {} and binds {} \
             (xdp.enabled = false runs the gateway alone; process.user makes it switch to an \
             unprivileged user once attached)",
            config.xdp.pin_dir.display(),
            config.admin.socket.display()
        );
    }
    let problems = host_problems(&config);
    if !problems.is_empty() {
        return Err(StartError(problems).into());
    }
    let account = match &config.process.user {
        None => None,
        Some(u) => {
            if !is_root() {
                bail!("process.user = {u:?}: ztag run must start as root to switch users");
            }
            Some(
                crate::privileges::resolve(u, config.process.group.as_deref())
                    .map_err(|e| StartError(vec![e]))?,
            )
        }
    };
    let socket_gid = match &config.admin.socket_group {
        None => None,
        Some(g) => Some(
            g.parse::<u32>()
                .ok()
                .or_else(|| crate::privileges::group_id(g))
                .ok_or_else(|| {
                    StartError(vec![format!(
                        "admin.socket_group: no group {g:?} on this host"
                    )])
                })?,
        ),
    };
    raise_nofile();
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);

    // The gateway is built first: bad certificates or keys fail the start
    // before anything is attached.
    let authn = Authn::build(&config.authn, &config.base_dir, metrics.registry())
        .await
        .map_err(StartError)?;
    let (authz, decider) = start_authz(&config, metrics.registry())?;
    let inspector = Arc::new(
        crate::inspect::Inspector::new(config.inspect.clone(), metrics.registry())
            .map_err(|e| StartError(vec![format!("{e:#}")]))?,
    );
    let risk_events = crate::risk::Events::new(4096, metrics.registry())
        .map_err(|e| StartError(vec![format!("registering risk metrics: {e}")]))?;
    let (agent, approved) = crate::agent::Agent::start(
        &config.agent,
        &config.state.db_path(),
        authn.clone(),
        metrics.registry(),
    )
    .map_err(|e| StartError(vec![format!("{e:#}")]))?;
    let (risk, block_orders) = if config.risk.enabled {
        let mut rc = config.risk.clone();
        rc.exempt
            .extend(config.gateway.trusted_proxies.iter().copied());
        let (e, rx) = crate::risk::engine::Engine::new(rc, metrics.registry())
            .map_err(|e| StartError(vec![format!("registering risk metrics: {e}")]))?;
        (Some(e), Some(rx))
    } else {
        (None, None)
    };
    if let Some(r) = &risk {
        // Detections of the inspection phases, from the event bus.
        let mut sub = risk_events.subscribe();
        let r = r.clone();
        tokio::spawn(async move {
            use crate::risk::{EventKind, engine::Kind};
            loop {
                match sub.recv().await {
                    Ok(ev) => {
                        let k = match ev.kind {
                            EventKind::PromptInjection => Kind::PromptInjection,
                            EventKind::IndirectInjection => Kind::IndirectInjection,
                            EventKind::ContentLeak => Kind::ContentLeak,
                        };
                        r.observe(
                            ev.source,
                            ev.principal.as_deref(),
                            ev.client_id.as_deref(),
                            k,
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(lost = n, "risk engine fell behind the event bus");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let fleet = match &config.fleet {
        Some(fc) => Some(
            crate::fleet::Fleet::new(fc.clone(), metrics.registry())
                .map_err(|e| StartError(vec![format!("{e:#}")]))?,
        ),
        None => None,
    };
    let session_key = match config
        .fleet
        .as_ref()
        .and_then(|f| f.session_key_file.as_ref())
    {
        None => None,
        Some(p) => Some(
            crate::fleet::config::read_key(p)
                .map_err(|e| StartError(vec![format!("fleet.session_key_file: {e}")]))?,
        ),
    };
    if let (Some(f), Some(k)) = (&fleet, session_key) {
        agent
            .credentials
            .share_with(Arc::new(crate::fleet::SealedCache::new(f.clone(), k)));
    }
    let gateway = Gateway::new(
        &config.gateway,
        crate::proxy::Deps {
            authn,
            authz: decider,
            inspector,
            events: Some(risk_events),
            agent: Some(agent.clone()),
            risk: risk.clone(),
            fleet: fleet.clone(),
            session_key,
        },
        metrics.registry(),
    )?;
    let bound = gateway.bind()?;

    let (enforcer, interfaces, events) = if config.xdp.enabled {
        let mut k = start_kernel(&config)?;
        if let Some(f) = &fleet {
            k.enforcer
                .set_outbox(f.config().queue_max, f.notify.clone());
        }
        (Some(Mutex::new(k.enforcer)), k.interfaces, k.events)
    } else {
        info!("xdp.enabled = false: running the gateway without the kernel plane");
        (None, Vec::new(), None)
    };
    let shared = Arc::new(Shared {
        enforcer,
        events: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        interfaces,
        authz,
        agent: Some(agent.clone()),
        risk: risk.clone(),
        hits: Default::default(),
        fleet: fleet.clone(),
    });
    let listener = admin::bind(&config.admin.socket, socket_gid)
        .with_context(|| format!("binding the admin socket {}", config.admin.socket.display()))?;
    // Attached and bound: from here on only what the daemon still needs
    // (before the fleet, the gateway and the timers start their work: the
    // switch signals every thread of the runtime).
    if let Some(target) = privilege_target(&config, account) {
        if let Some(a) = account {
            // The daemon still writes its state and (on --detach-on-exit)
            // its pins after the switch.
            for dir in [&config.state.dir, &config.xdp.pin_dir] {
                crate::privileges::chown_tree(dir, a).with_context(|| {
                    format!("giving {} to uid {} gid {}", dir.display(), a.uid, a.gid)
                })?;
            }
        }
        tokio::task::spawn_blocking(move || crate::privileges::drop_to(target))
            .await
            .context("dropping privileges")?
            .map_err(|e| anyhow::anyhow!("dropping privileges: {e}"))?;
        info!(
            user = config.process.user.as_deref().unwrap_or("(unchanged)"),
            capabilities = ?target.names(),
            "privileges dropped: only these capabilities remain, no_new_privs set"
        );
    }
    if let Some(f) = &fleet {
        tokio::spawn(f.clone().run(shared.clone()));
    }
    if let (Some(r), Some(rx)) = (&risk, block_orders) {
        start_risk_blocks(r.clone(), rx, shared.clone());
    }
    gateway.serve(bound);
    tokio::spawn(agent.approvals.clone().run());
    tokio::spawn(gateway.clone().run_approved(approved));

    let series = Arc::new(admin::overview::Series::default());
    tokio::spawn(admin::overview::run(
        series.clone(),
        metrics.registry().clone(),
        shared.clone(),
    ));
    if let Some(addr) = config.admin.listen {
        let token = match &config.admin.token_file {
            None => None,
            Some(token_file) => {
                if config.admin.token_generated && !token_file.exists() {
                    admin::ui::write_new_token(token_file).with_context(|| {
                        format!("creating the admin token file {}", token_file.display())
                    })?;
                    info!(file = %token_file.display(), "created an admin token for the dashboard");
                }
                let token = std::fs::read_to_string(token_file).with_context(|| {
                    format!("reading admin.token_file {}", token_file.display())
                })?;
                let token = token.trim();
                if token.len() < 16 {
                    bail!(
                        "admin.token_file {}: the token must be at least 16 characters",
                        token_file.display()
                    );
                }
                Some(Arc::from(token))
            }
        };
        let tls = match &config.admin.tls {
            None => None,
            Some(t) => {
                let sc = crate::proxy::tls::server_config(t).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut sc = (*sc).clone();
                sc.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))
            }
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin.listen {addr}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let dash = Arc::new(admin::ui::Dashboard::new(token, series.clone(), &config));
        tokio::spawn(admin::ui::serve(l, tls, dash, shared.clone()));
        match &config.admin.token_file {
            Some(f) => {
                info!(%addr, token_file = %f.display(), "admin dashboard on {scheme}://{addr}/ (log in with the token in the file; the OpenFGA-compatible API takes it as a bearer token)")
            }
            None => {
                info!(%addr, "admin dashboard on {scheme}://{addr}/ (client certificate required)")
            }
        }
    }

    if let Some(addr) = config.metrics.listen {
        crate::metrics::serve(addr, metrics.clone(), shared.clone())
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        info!(%addr, "metrics on http://{addr}/metrics");
    }

    // Last: an admin socket that answers means every listener is bound
    // (what `ztag` CLI callers, tests and orchestration wait for).
    tokio::spawn(admin::serve(listener, shared.clone()));
    info!(socket = %config.admin.socket.display(), "admin API listening");

    if let Some(ring) = events {
        let (s, m) = (shared.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = read_events(ring, s, m).await {
                warn!("drop events reader stopped: {e}");
            }
        });
    }

    if shared.enforcer.is_some() {
        let s = shared.clone();
        let every = config.xdp.sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = s.clone();
                let r = tokio::task::spawn_blocking(move || match &s.enforcer {
                    Some(e) => e.lock().unwrap_or_else(|p| p.into_inner()).sweep(),
                    None => Ok(0),
                })
                .await;
                match r {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => info!(expired = n, "swept expired entries"),
                    Ok(Err(e)) => warn!("sweeping expired entries: {e}"),
                    Err(e) => warn!("sweeper task: {e}"),
                }
            }
        });
    }

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match &reload_from {
                None => warn!("SIGHUP: running on the embedded configuration, nothing to reload (start with --config FILE)"),
                Some(r) => match reload(&shared, &config, r) {
                    Ok(new) => {
                        gateway.reload_tls(true);
                        config = new;
                    }
                    Err(e) => warn!("SIGHUP: configuration not reloaded, the running one stays: {e:#}"),
                },
            },
        }
    }
    let drain = config.process.drain_timeout;
    info!(within = ?drain, "stopping: draining open connections");
    let cut = gateway.drain(drain).await;
    if cut > 0 {
        warn!(
            connections = cut,
            "drain_timeout passed: closing the connections still open"
        );
    } else {
        info!("drained: no connection left open");
    }
    let _ = std::fs::remove_file(&config.admin.socket);
    if config.process.detach_on_exit && shared.enforcer.is_some() {
        match crate::xdp::detach_all(&config.xdp.pin_dir) {
            Ok(r) => info!(
                links = r.links.len(),
                maps = r.maps.len(),
                pin_dir = %config.xdp.pin_dir.display(),
                "detach_on_exit: removed the pinned links and maps; the program detaches as the process exits"
            ),
            Err(e) => warn!("detach_on_exit: {e}"),
        }
    } else {
        info!(
            pin_dir = %config.xdp.pin_dir.display(),
            "stopping; the program stays attached through its pinned links (`ztag detach` removes it)"
        );
    }
    Ok(())
}

/// The risk engine's blocks go into the XDP dynamic map (with the
/// enforcer); the engine's copy of the allowlist is refreshed every 2 s.
fn start_risk_blocks(
    risk: Arc<crate::risk::engine::Engine>,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::risk::engine::BlockOrder>,
    shared: Arc<Shared>,
) {
    use crate::{state::ListKind, xdp::lists::AddSpec};
    let s = shared.clone();
    let apply = move |o: crate::risk::engine::BlockOrder| -> Result<(), String> {
        let Some(e) = &s.enforcer else {
            return Err("the kernel plane is off (xdp.enabled = false): rate-limited only".into());
        };
        let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
        // Never an allowlisted source, whatever the engine's copy says.
        let allowed = e
            .list(Some(ListKind::Allow))
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|x| x.cidr.parse::<ipnet::IpNet>().ok())
            .any(|n| n.contains(&o.source));
        if allowed {
            return Err(format!("{} is allowlisted: not blocked", o.source));
        }
        e.add(
            ListKind::Dynamic,
            &o.source.to_string(),
            &AddSpec {
                ttl: Some(o.ttl),
                reason: Some(o.reason),
                origin: crate::state::Origin::Risk,
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    tokio::spawn(crate::risk::engine::apply_blocks(rx, apply));
    if shared.enforcer.is_some() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tick.tick().await;
                let s = shared.clone();
                let nets = tokio::task::spawn_blocking(move || match &s.enforcer {
                    Some(e) => e
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .list(Some(ListKind::Allow))
                        .map(|v| v.iter().filter_map(|x| x.cidr.parse().ok()).collect())
                        .unwrap_or_default(),
                    None => Vec::new(),
                })
                .await
                .unwrap_or_default();
                risk.set_allowlist(nets);
            }
        });
    }
}

/// Forwards the program's aya-log lines to the daemon's log (they arrive
/// through the `log` crate, which tracing-subscriber picks up).
async fn forward_program_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// How often the daemon drains the drop-event ring. The program writes
/// events without waking anyone (a wakeup per event is an irq_work on the
/// dropping CPU); 1 MiB of ring holds ~18k events, several seconds of a
/// 400k packets/s flood sampled 1 in 64.
const EVENT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

async fn read_events(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(EVENT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the program writes whole DropEvents; read unaligned.
            let ev: DropEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) };
            batch.push(ev);
        }
        if batch.is_empty() {
            continue;
        }
        metrics.drop_events.inc_by(batch.len() as u64);
        let names = match &shared.enforcer {
            Some(e) => e
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .plane()
                .interface_names(),
            None => Default::default(),
        };
        let (now, boot) = (now_ms(), boottime_ns());
        let mut recent = shared.events.lock().unwrap_or_else(|p| p.into_inner());
        // Only the newest RECENT_EVENTS of a batch are kept for `ztag
        // events`: the others are counted and scored without building a
        // view (two strings each), which is most of the batch in a flood.
        let keep_from = batch.len().saturating_sub(RECENT_EVENTS);
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        for (i, ev) in batch.into_iter().enumerate() {
            let reason = Reason::from_index(ev.reason)
                .map(|r| r.label())
                .unwrap_or("unknown");
            let ip = addr_from_event(ev.family, ev.addr);
            if let Some(ip) = ip {
                shared.hits.record(reason, ip);
                if let Some(r) = &shared.risk {
                    r.observe(ip, None, None, crate::risk::engine::Kind::XdpDrop);
                }
            }
            if i < keep_from && !debug {
                continue;
            }
            let source = ip.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            let view = EventView {
                source,
                interface: names
                    .get(&ev.ifindex)
                    .cloned()
                    .unwrap_or_else(|| format!("ifindex{}", ev.ifindex)),
                reason: reason.into(),
                reason_id: ev.reason_id,
                time_ms: now - (boot.saturating_sub(ev.time_ns) / 1_000_000) as i64,
            };
            debug!(source = %view.source, interface = %view.interface, reason = %view.reason, "drop");
            if i < keep_from {
                continue;
            }
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(view);
        }
    }
}

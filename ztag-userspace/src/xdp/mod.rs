//! The kernel enforcement plane from userspace: loads the eBPF object,
//! attaches it to interfaces (native XDP, SKB XDP or TC ingress), pins maps
//! and links under the pin directory so that enforcement outlives the daemon,
//! and gives typed access to every map.

pub mod cidr;
pub mod lists;
pub mod packet;
pub mod test_run;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    ffi::CString,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use tracing::{info, warn};
use ztag_common::{
    BlockEntry, DynEntry, IfCounters, PINNED_MAPS, REASON_COUNT, UNKNOWN_IFINDEX, XdpConfig,
    config_flags as cf, counter_slot, map_names as mn,
};

use crate::config::AttachMode;

/// The compiled eBPF object (built by build.rs with aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztag"));

/// XDP program name in the object.
pub const XDP_PROGRAM: &str = "ztag_xdp";
/// TC classifier name in the object.
pub const TC_PROGRAM: &str = "ztag_tc";
/// The benchmark floor (drops everything).
pub const FLOOR_PROGRAM: &str = "ztag_floor";
/// The benchmark traffic source (redirects to the ifindex in BENCH_TX).
pub const BENCH_TX_PROGRAM: &str = "ztag_bench_tx";

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Errors of the enforcement plane; each says which map, interface or path.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading the object or a program failed (verifier, permissions ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program failed to load or attach.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// What went wrong.
        source: aya::programs::ProgramError,
    },
    /// An interface could not be attached in any of the allowed modes.
    #[error("attaching to interface {iface} ({mode}): {why}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Requested mode.
        mode: &'static str,
        /// Every attempt's error.
        why: String,
    },
    /// No such interface.
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    /// A map was missing from the object or had the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        source: aya::maps::MapError,
    },
    /// A map is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The pin directory is not usable.
    #[error("pin directory {path}: {why}")]
    PinDir {
        /// The directory.
        path: String,
        /// Why.
        why: String,
    },
    /// Pinning or reading a link pin failed.
    #[error("link pin {path}: {why}")]
    Pin {
        /// The pin path.
        path: String,
        /// Why.
        why: String,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// Where one interface's program is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Its index in this network namespace.
    pub ifindex: u32,
    /// The mode actually used (never `Auto`).
    pub mode: AttachMode,
    /// Whether an existing pinned link was re-used (daemon restart).
    pub reused: bool,
}

/// Loaded program and its maps.
pub struct Plane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    allow_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    allow_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    block_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    block_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    block_host_v4: HashMap<MapData, [u8; 4], BlockEntry>,
    block_host_v6: HashMap<MapData, [u8; 16], BlockEntry>,
    dyn_v4: HashMap<MapData, [u8; 4], DynEntry>,
    dyn_v6: HashMap<MapData, [u8; 16], DynEntry>,
    config: Array<MapData, XdpConfig>,
    /// The lists' generation: one more after every list change, so that no
    /// CPU's cached verdict outlives the entries it came from.
    generation_map: Array<MapData, u64>,
    generation: u64,
    counters: PerCpuArray<MapData, IfCounters>,
    events: Option<RingBuf<MapData>>,
    current: XdpConfig,
    attachments: Vec<Attachment>,
    /// aya-log's reader; must live while the programs are loaded.
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Which of the kernel's maps a list lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapList {
    /// ALLOW_V4 / ALLOW_V6.
    Allow,
    /// BLOCK_V4 / BLOCK_V6.
    Block,
    /// DYN_V4 / DYN_V6 (single addresses only).
    Dynamic,
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock the program compares
/// expiries against (`bpf_ktime_get_boot_ns`).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts a wall-clock expiry (ms since the epoch) to the program's
/// boottime nanoseconds; `None` in, 0 (never) out. An expiry already past
/// maps to 1 (expired).
pub fn expiry_to_boot_ns(expires_at_ms: Option<i64>, now_ms: i64, boot_now_ns: u64) -> u64 {
    match expires_at_ms {
        None => 0,
        Some(e) if e <= now_ms => 1,
        Some(e) => boot_now_ns + (e - now_ms) as u64 * 1_000_000,
    }
}

/// Makes sure `dir` is on a bpf filesystem, mounting bpffs on /sys/fs/bpf
/// when that is where it should be and nothing is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), XdpError> {
    let fail = |why: String| XdpError::PinDir {
        path: dir.display().to_string(),
        why,
    };
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && fs_magic(root) != Some(BPF_FS_MAGIC) {
        let src = CString::new("bpf").unwrap_or_default();
        let target = CString::new("/sys/fs/bpf").unwrap_or_default();
        // SAFETY: valid C strings; mount(2) with no data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(fail(format!(
                "/sys/fs/bpf is not a bpf filesystem and mounting one failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir.join("links")).map_err(|e| fail(e.to_string()))?;
    if fs_magic(dir) != Some(BPF_FS_MAGIC) {
        return Err(fail(
            "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
        ));
    }
    Ok(())
}

fn fs_magic(p: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_type as i64)
}

/// The index of an interface in the current network namespace.
pub fn ifindex(iface: &str) -> Result<u32, XdpError> {
    let c = CString::new(iface).map_err(|_| XdpError::NoInterface(iface.to_string()))?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(XdpError::NoInterface(iface.to_string()));
    }
    Ok(i)
}

/// Pin path of an interface's link. bpffs refuses names with '.', which
/// interface names may contain (eth0.100) but ':' they may not: swap them.
fn link_pin(pin_dir: &Path, iface: &str, mode: AttachMode) -> PathBuf {
    pin_dir
        .join("links")
        .join(format!("{}_{}", mode.as_str(), iface.replace('.', ":")))
}

impl Plane {
    /// Loads the object with its maps pinned under `pin_dir` (re-using pins
    /// a previous daemon left), and loads the XDP and TC programs.
    pub fn load(pin_dir: &Path) -> Result<Plane, XdpError> {
        ensure_bpffs(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)
            .map_err(|e| XdpError::Load(Box::new(e)))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("eBPF debug logs are unavailable: {e}");
                None
            }
        };
        for name in [XDP_PROGRAM, FLOOR_PROGRAM, BENCH_TX_PROGRAM] {
            let p: &mut Xdp = program(&mut ebpf, name)?;
            p.load().map_err(|source| XdpError::Program {
                program: static_name(name),
                source,
            })?;
        }
        {
            let p: &mut SchedClassifier = program(&mut ebpf, TC_PROGRAM)?;
            p.load().map_err(|source| XdpError::Program {
                program: TC_PROGRAM,
                source,
            })?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(XdpError::MissingMap(name));
        let allow_v4 = LpmTrie::try_from(take(mn::ALLOW_V4)?).map_err(map_err(mn::ALLOW_V4))?;
        let allow_v6 = LpmTrie::try_from(take(mn::ALLOW_V6)?).map_err(map_err(mn::ALLOW_V6))?;
        let block_v4 = LpmTrie::try_from(take(mn::BLOCK_V4)?).map_err(map_err(mn::BLOCK_V4))?;
        let block_v6 = LpmTrie::try_from(take(mn::BLOCK_V6)?).map_err(map_err(mn::BLOCK_V6))?;
        let block_host_v4 =
            HashMap::try_from(take(mn::BLOCK_HOST_V4)?).map_err(map_err(mn::BLOCK_HOST_V4))?;
        let block_host_v6 =
            HashMap::try_from(take(mn::BLOCK_HOST_V6)?).map_err(map_err(mn::BLOCK_HOST_V6))?;
        let dyn_v4 = HashMap::try_from(take(mn::DYN_V4)?).map_err(map_err(mn::DYN_V4))?;
        let dyn_v6 = HashMap::try_from(take(mn::DYN_V6)?).map_err(map_err(mn::DYN_V6))?;
        let config = Array::try_from(take(mn::CONFIG)?).map_err(map_err(mn::CONFIG))?;
        let counters = PerCpuArray::try_from(take(mn::COUNTERS)?).map_err(map_err(mn::COUNTERS))?;
        let events = RingBuf::try_from(take(mn::EVENTS)?).map_err(map_err(mn::EVENTS))?;
        let current = config.get(&0, 0).map_err(map_err(mn::CONFIG))?;
        let mut generation_map: Array<MapData, u64> =
            Array::try_from(take(mn::GENERATION)?).map_err(map_err(mn::GENERATION))?;
        // Re-used pins keep counting up: a program still attached from the
        // previous daemon must not meet a generation it has cached.
        let generation = generation_map
            .get(&0, 0)
            .map_err(map_err(mn::GENERATION))?
            .wrapping_add(1)
            .max(1);
        generation_map
            .set(0, generation, 0)
            .map_err(map_err(mn::GENERATION))?;
        let mut plane = Plane {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            allow_v4,
            allow_v6,
            block_v4,
            block_v6,
            block_host_v4,
            block_host_v6,
            dyn_v4,
            dyn_v6,
            config,
            generation_map,
            generation,
            counters,
            events: Some(events),
            current,
            attachments: Vec::new(),
            _logger: logger,
        };
        plane.register_interface(UNKNOWN_IFINDEX)?;
        Ok(plane)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Interfaces attached so far.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Hands the aya-log reader (debug lines of the program) to its task.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self._logger.take()
    }

    /// Hands the drop-event ring buffer to its reader (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Mutable access to a loaded program, for tests and benchmarks.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Gives the interface its counters slot, so its packets are counted
    /// under its own name. A slot already owned by this interface (pinned by
    /// an earlier daemon) keeps its totals; a slot owned by an interface that
    /// no longer exists is taken over; a slot owned by another live interface
    /// is left alone, and this one is counted as "unknown" (logged).
    pub fn register_interface(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let slot = if ifindex == UNKNOWN_IFINDEX {
            0
        } else {
            counter_slot(ifindex)
        };
        let cur = self.counters.get(&slot, 0).map_err(map_err(mn::COUNTERS))?;
        let owner = cur.iter().map(|c| c.ifindex).max().unwrap_or(0);
        if owner == ifindex && (slot == 0 || owner != 0) {
            return Ok(());
        }
        if owner != 0 && owner != ifindex && interface_exists(owner) {
            warn!(
                ifindex,
                other = owner,
                "counter slot taken by another interface; this one's packets are counted as \"unknown\""
            );
            return Ok(());
        }
        let values = PerCpuValues::try_from(vec![
            IfCounters {
                ifindex,
                ..IfCounters::default()
            };
            cur.len()
        ])
        .map_err(|e| XdpError::Map {
            name: mn::COUNTERS,
            source: aya::maps::MapError::IoError(e),
        })?;
        self.counters
            .set(slot, values, 0)
            .map_err(map_err(mn::COUNTERS))
    }

    /// Attaches to `iface` in `mode` (for `Auto`: native, then SKB, then TC).
    /// A link pinned by an earlier daemon for the same interface and mode is
    /// re-used: the new program replaces the old one atomically, so
    /// enforcement never lapses across a restart.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attachment, XdpError> {
        let idx = ifindex(iface)?;
        self.register_interface(idx)?;
        let candidates: &[AttachMode] = match mode {
            AttachMode::Auto => &[AttachMode::Native, AttachMode::Skb, AttachMode::Tc],
            AttachMode::Native => &[AttachMode::Native],
            AttachMode::Skb => &[AttachMode::Skb],
            AttachMode::Tc => &[AttachMode::Tc],
        };
        // A link already pinned in one of the acceptable modes: re-use it.
        for &m in candidates {
            let pin = link_pin(&self.pin_dir, iface, m);
            if pin.exists() {
                match self.replace_pinned(&pin, m) {
                    Ok(()) => {
                        self.remove_other_pins(iface, m);
                        let a = Attachment {
                            iface: iface.into(),
                            ifindex: idx,
                            mode: m,
                            reused: true,
                        };
                        self.attachments.push(a.clone());
                        return Ok(a);
                    }
                    Err(e) => {
                        warn!(
                            iface,
                            mode = m.as_str(),
                            "pinned link is stale ({e}); attaching anew"
                        );
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
        }
        // Switching modes: release links in other modes first (an interface
        // has one XDP link at a time).
        let mut errors = Vec::new();
        for &m in candidates {
            self.remove_other_pins(iface, m);
            match self.attach_new(iface, m) {
                Ok(()) => {
                    let a = Attachment {
                        iface: iface.into(),
                        ifindex: idx,
                        mode: m,
                        reused: false,
                    };
                    self.attachments.push(a.clone());
                    return Ok(a);
                }
                Err(e) => errors.push(format!("{}: {e}", m.as_str())),
            }
        }
        Err(XdpError::Attach {
            iface: iface.into(),
            mode: mode.as_str(),
            why: errors.join("; "),
        })
    }

    fn remove_other_pins(&self, iface: &str, keep: AttachMode) {
        for m in [AttachMode::Native, AttachMode::Skb, AttachMode::Tc] {
            if m != keep {
                let p = link_pin(&self.pin_dir, iface, m);
                if p.exists() {
                    info!(
                        iface,
                        mode = m.as_str(),
                        "removing the link of the previous mode"
                    );
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    fn replace_pinned(&mut self, pin: &Path, mode: AttachMode) -> Result<(), String> {
        let link = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
        let fd: FdLink = link.into();
        if mode == AttachMode::Tc {
            let link = SchedClassifierLink::try_from(fd).map_err(|e: LinkError| e.to_string())?;
            let p: &mut SchedClassifier =
                program(&mut self.ebpf, TC_PROGRAM).map_err(|e| e.to_string())?;
            let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
            // The pin keeps the link; our handle must not outlive the process
            // as an owner that detaches on drop.
            let link = p.take_link(id).map_err(|e| e.to_string())?;
            drop(FdLink::try_from(link).map_err(|e| e.to_string())?);
        } else {
            let link = XdpLink::try_from(fd).map_err(|e: LinkError| e.to_string())?;
            let p: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM).map_err(|e| e.to_string())?;
            let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
            let link = p.take_link(id).map_err(|e| e.to_string())?;
            drop(FdLink::try_from(link).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    fn attach_new(&mut self, iface: &str, mode: AttachMode) -> Result<(), String> {
        let pin = link_pin(&self.pin_dir, iface, mode);
        let fd: FdLink = match mode {
            AttachMode::Tc => {
                let p: &mut SchedClassifier =
                    program(&mut self.ebpf, TC_PROGRAM).map_err(|e| e.to_string())?;
                let id = p
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| format!("tcx attach (needs Linux 6.6+): {e}"))?;
                let link = p.take_link(id).map_err(|e| e.to_string())?;
                FdLink::try_from(link).map_err(|e| e.to_string())?
            }
            AttachMode::Native | AttachMode::Skb => {
                let xm = if mode == AttachMode::Native {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                let p: &mut Xdp =
                    program(&mut self.ebpf, XDP_PROGRAM).map_err(|e| e.to_string())?;
                let id = p.attach(iface, xm).map_err(|e| e.to_string())?;
                let link = p.take_link(id).map_err(|e| e.to_string())?;
                FdLink::try_from(link).map_err(|_| {
                    "the kernel only offered a netlink attachment, which cannot be pinned (needs bpf_link, Linux 5.9+)".to_string()
                })?
            }
            AttachMode::Auto => return Err("auto is not a concrete mode".into()),
        };
        fd.pin(&pin)
            .map_err(|e| format!("pinning {}: {}", pin.display(), error_chain(&e)))?;
        Ok(())
    }

    /// Writes the program configuration; the flags say which lists are
    /// non-empty so the program can skip lookups in empty maps.
    pub fn write_config(&mut self, cfg: XdpConfig) -> Result<(), XdpError> {
        let cfg = XdpConfig {
            flags: cfg.flags | cf::INITIALISED,
            ..cfg
        };
        self.config.set(0, cfg, 0).map_err(map_err(mn::CONFIG))?;
        self.current = cfg;
        Ok(())
    }

    /// The configuration last written.
    pub fn current_config(&self) -> XdpConfig {
        self.current
    }

    /// Voids every CPU's cached verdict: called after each list change,
    /// before the change is acknowledged.
    fn bump_generation(&mut self) -> Result<(), XdpError> {
        let next = self.generation.wrapping_add(1).max(1);
        self.generation_map
            .set(0, next, 0)
            .map_err(map_err(mn::GENERATION))?;
        self.generation = next;
        Ok(())
    }

    /// The lists' generation last written.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Inserts or replaces an entry.
    pub fn insert(
        &mut self,
        list: MapList,
        net: &IpNet,
        expires_ns: u64,
        reason_id: u32,
    ) -> Result<(), XdpError> {
        self.insert_entry(list, net, expires_ns, reason_id)?;
        self.bump_generation()
    }

    fn insert_entry(
        &mut self,
        list: MapList,
        net: &IpNet,
        expires_ns: u64,
        reason_id: u32,
    ) -> Result<(), XdpError> {
        let value = BlockEntry {
            expires_ns,
            prefix_len: u32::from(net.prefix_len()),
            reason_id,
        };
        match (list, net) {
            (MapList::Allow, IpNet::V4(n)) => {
                let (l, k) = cidr::v4_key(n);
                self.allow_v4
                    .insert(&Key::new(l, k), value, 0)
                    .map_err(map_err(mn::ALLOW_V4))
            }
            (MapList::Allow, IpNet::V6(n)) => {
                let (l, k) = cidr::v6_key(n);
                self.allow_v6
                    .insert(&Key::new(l, k), value, 0)
                    .map_err(map_err(mn::ALLOW_V6))
            }
            (MapList::Block, IpNet::V4(n)) if is_host(net) => self
                .block_host_v4
                .insert(n.addr().octets(), value, 0)
                .map_err(map_err(mn::BLOCK_HOST_V4)),
            (MapList::Block, IpNet::V6(n)) if is_host(net) => self
                .block_host_v6
                .insert(n.addr().octets(), value, 0)
                .map_err(map_err(mn::BLOCK_HOST_V6)),
            (MapList::Block, IpNet::V4(n)) => {
                let (l, k) = cidr::v4_key(n);
                self.block_v4
                    .insert(&Key::new(l, k), value, 0)
                    .map_err(map_err(mn::BLOCK_V4))
            }
            (MapList::Block, IpNet::V6(n)) => {
                let (l, k) = cidr::v6_key(n);
                self.block_v6
                    .insert(&Key::new(l, k), value, 0)
                    .map_err(map_err(mn::BLOCK_V6))
            }
            (MapList::Dynamic, IpNet::V4(n)) => {
                let v = DynEntry {
                    expires_ns,
                    reason_id,
                    _pad: 0,
                };
                self.dyn_v4
                    .insert(n.addr().octets(), v, 0)
                    .map_err(map_err(mn::DYN_V4))
            }
            (MapList::Dynamic, IpNet::V6(n)) => {
                let v = DynEntry {
                    expires_ns,
                    reason_id,
                    _pad: 0,
                };
                self.dyn_v6
                    .insert(n.addr().octets(), v, 0)
                    .map_err(map_err(mn::DYN_V6))
            }
        }
    }

    /// Removes an entry; a missing entry is not an error.
    pub fn remove(&mut self, list: MapList, net: &IpNet) -> Result<(), XdpError> {
        let r = match (list, net) {
            (MapList::Allow, IpNet::V4(n)) => {
                let (l, k) = cidr::v4_key(n);
                self.allow_v4.remove(&Key::new(l, k))
            }
            (MapList::Allow, IpNet::V6(n)) => {
                let (l, k) = cidr::v6_key(n);
                self.allow_v6.remove(&Key::new(l, k))
            }
            (MapList::Block, IpNet::V4(n)) if is_host(net) => {
                self.block_host_v4.remove(&n.addr().octets())
            }
            (MapList::Block, IpNet::V6(n)) if is_host(net) => {
                self.block_host_v6.remove(&n.addr().octets())
            }
            (MapList::Block, IpNet::V4(n)) => {
                let (l, k) = cidr::v4_key(n);
                self.block_v4.remove(&Key::new(l, k))
            }
            (MapList::Block, IpNet::V6(n)) => {
                let (l, k) = cidr::v6_key(n);
                self.block_v6.remove(&Key::new(l, k))
            }
            (MapList::Dynamic, IpNet::V4(n)) => self.dyn_v4.remove(&n.addr().octets()),
            (MapList::Dynamic, IpNet::V6(n)) => self.dyn_v6.remove(&n.addr().octets()),
        };
        match r {
            Ok(()) => self.bump_generation(),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(XdpError::Map {
                name: map_name(list, net),
                source: e,
            }),
        }
    }

    /// Every key currently in the kernel's maps for a list (used to
    /// reconcile the maps with the state DB at start).
    pub fn keys(&self, list: MapList) -> Result<Vec<IpNet>, XdpError> {
        let mut out = Vec::new();
        match list {
            MapList::Allow | MapList::Block => {
                let (v4, v6) = if list == MapList::Allow {
                    (&self.allow_v4, &self.allow_v6)
                } else {
                    (&self.block_v4, &self.block_v6)
                };
                for k in v4.keys() {
                    let k = k.map_err(map_err(mn::BLOCK_V4))?;
                    let (len, data) = (k.prefix_len(), k.data());
                    if let Ok(n) = ipnet::Ipv4Net::new(data.into(), len as u8) {
                        out.push(IpNet::V4(n));
                    }
                }
                for k in v6.keys() {
                    let k = k.map_err(map_err(mn::BLOCK_V6))?;
                    let (len, data) = (k.prefix_len(), k.data());
                    if let Ok(n) = ipnet::Ipv6Net::new(data.into(), len as u8) {
                        out.push(IpNet::V6(n));
                    }
                }
                if list == MapList::Block {
                    for k in self.block_host_v4.keys() {
                        let k = k.map_err(map_err(mn::BLOCK_HOST_V4))?;
                        out.push(IpNet::V4(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(k))));
                    }
                    for k in self.block_host_v6.keys() {
                        let k = k.map_err(map_err(mn::BLOCK_HOST_V6))?;
                        out.push(IpNet::V6(ipnet::Ipv6Net::from(std::net::Ipv6Addr::from(k))));
                    }
                }
            }
            MapList::Dynamic => {
                for k in self.dyn_v4.keys() {
                    let k = k.map_err(map_err(mn::DYN_V4))?;
                    out.push(IpNet::V4(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(k))));
                }
                for k in self.dyn_v6.keys() {
                    let k = k.map_err(map_err(mn::DYN_V6))?;
                    out.push(IpNet::V6(ipnet::Ipv6Net::from(std::net::Ipv6Addr::from(k))));
                }
            }
        }
        Ok(out)
    }

    /// Counters per interface index (0: "unknown"), summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<u32, IfCounters>, XdpError> {
        let mut out = BTreeMap::new();
        for (slot, item) in self.counters.iter().enumerate() {
            let per_cpu = item.map_err(map_err(mn::COUNTERS))?;
            let ifindex = per_cpu.iter().map(|c| c.ifindex).max().unwrap_or(0);
            if slot != 0 && ifindex == 0 {
                continue;
            }
            let mut sum = IfCounters {
                ifindex,
                ..IfCounters::default()
            };
            for c in per_cpu.iter() {
                for r in 0..REASON_COUNT {
                    sum.by_reason[r].packets += c.by_reason[r].packets;
                    sum.by_reason[r].bytes += c.by_reason[r].bytes;
                }
            }
            out.insert(ifindex, sum);
        }
        Ok(out)
    }

    /// Interface names by index, for labels (attached ones, then the
    /// kernel's name for any other index).
    pub fn interface_names(&self) -> StdHashMap<u32, String> {
        let mut m: StdHashMap<u32, String> = self
            .attachments
            .iter()
            .map(|a| (a.ifindex, a.iface.clone()))
            .collect();
        m.insert(UNKNOWN_IFINDEX, "unknown".into());
        m
    }

    /// Points the benchmark traffic source at an interface (by index in the
    /// caller's network namespace).
    pub fn set_bench_tx(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut("BENCH_TX")
            .ok_or(XdpError::MissingMap("BENCH_TX"))?;
        let mut a: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err("BENCH_TX"))?;
        a.set(0, ifindex, 0).map_err(map_err("BENCH_TX"))
    }

    /// The raw fd of a loaded program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self, name: &str) -> Option<i32> {
        let p = self.ebpf.program(name)?;
        p.fd().ok().map(|fd| fd.as_fd().as_raw_fd())
    }
}

/// A single address (/32, /128): kept in the host hash, not the LPM trie.
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

fn interface_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

fn map_name(list: MapList, net: &IpNet) -> &'static str {
    match (list, net) {
        (MapList::Allow, IpNet::V4(_)) => mn::ALLOW_V4,
        (MapList::Allow, IpNet::V6(_)) => mn::ALLOW_V6,
        (MapList::Block, IpNet::V4(_)) if is_host(net) => mn::BLOCK_HOST_V4,
        (MapList::Block, IpNet::V6(_)) if is_host(net) => mn::BLOCK_HOST_V6,
        (MapList::Block, IpNet::V4(_)) => mn::BLOCK_V4,
        (MapList::Block, IpNet::V6(_)) => mn::BLOCK_V6,
        (MapList::Dynamic, IpNet::V4(_)) => mn::DYN_V4,
        (MapList::Dynamic, IpNet::V6(_)) => mn::DYN_V6,
    }
}

fn static_name(name: &str) -> &'static str {
    match name {
        XDP_PROGRAM => XDP_PROGRAM,
        TC_PROGRAM => TC_PROGRAM,
        BENCH_TX_PROGRAM => BENCH_TX_PROGRAM,
        _ => FLOOR_PROGRAM,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, XdpError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| XdpError::Program {
        program: static_name(name),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into().map_err(|source| XdpError::Program {
        program: static_name(name),
        source,
    })
}

/// What `ztag detach` removed.
#[derive(Debug, Default)]
pub struct DetachReport {
    /// Link pins removed (each one detaches a program from an interface).
    pub links: Vec<String>,
    /// Map pins removed.
    pub maps: Vec<String>,
}

/// Removes every pinned link (detaching the program from its interface) and
/// every pinned map under `pin_dir`, then the directory. Safe to run twice.
pub fn detach_all(pin_dir: &Path) -> Result<DetachReport, XdpError> {
    let mut report = DetachReport::default();
    let fail = |p: &Path, e: std::io::Error| XdpError::Pin {
        path: p.display().to_string(),
        why: e.to_string(),
    };
    let links = pin_dir.join("links");
    if links.is_dir() {
        for entry in std::fs::read_dir(&links).map_err(|e| fail(&links, e))? {
            let entry = entry.map_err(|e| fail(&links, e))?;
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| fail(&p, e))?;
            report.links.push(p.display().to_string());
        }
        std::fs::remove_dir(&links).map_err(|e| fail(&links, e))?;
    }
    for name in PINNED_MAPS {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| fail(&p, e))?;
            report.maps.push(name.to_string());
        }
    }
    if pin_dir.is_dir() {
        std::fs::remove_dir(pin_dir).map_err(|e| fail(pin_dir, e))?;
    }
    Ok(report)
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_convert_to_boottime() {
        assert_eq!(expiry_to_boot_ns(None, 1_000, 5), 0);
        assert_eq!(expiry_to_boot_ns(Some(900), 1_000, 5), 1);
        assert_eq!(expiry_to_boot_ns(Some(1_000), 1_000, 5), 1);
        assert_eq!(expiry_to_boot_ns(Some(1_250), 1_000, 5), 5 + 250_000_000);
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }
}

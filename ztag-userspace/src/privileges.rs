//! Least privilege for the daemon: once the program is attached and every
//! socket is bound, ztag keeps only the capabilities it still needs
//! (CAP_BPF and CAP_NET_ADMIN for the maps and links, CAP_NET_BIND_SERVICE
//! when a listener has a port below 1024), empties the bounding and ambient
//! sets, sets no_new_privs, and with `[process] user` switches to that user.
//!
//! Capabilities, user ids and no_new_privs belong to each thread in Linux,
//! and the async runtime's threads already run when this happens. So every
//! thread applies the change itself: the caller's directly, the others from
//! a real-time signal handler that makes the same raw system calls (what the
//! C library does for `setuid` in a threaded process). Then every thread's
//! `/proc/self/task/TID/status` is read back; a thread that does not show the
//! new credentials is signalled again, and the start fails if one still does
//! not after a few rounds: the daemon never runs believing it dropped
//! privileges it still holds.

use std::{
    ffi::CString,
    path::Path,
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// CAP_NET_BIND_SERVICE.
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// CAP_NET_ADMIN.
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_BPF.
pub const CAP_BPF: u32 = 39;

/// Names of the capabilities ztag may keep, for logs and errors.
pub fn cap_name(cap: u32) -> String {
    match cap {
        CAP_NET_BIND_SERVICE => "CAP_NET_BIND_SERVICE".into(),
        CAP_NET_ADMIN => "CAP_NET_ADMIN".into(),
        CAP_BPF => "CAP_BPF".into(),
        n => format!("capability {n}"),
    }
}

/// A resolved account to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Group id (the user's primary group unless `[process] group` says).
    pub gid: u32,
}

/// Looks up `user` (a name or a number) and `group` (default: the user's
/// primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Account, String> {
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, lookup_uid(n).map(|(_, g)| g)),
        Err(_) => {
            let (uid, gid) = lookup_user(user)
                .ok_or_else(|| format!("process.user: no user {user:?} on this host"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                group_id(g).ok_or_else(|| format!("process.group: no group {g:?} on this host"))?
            }
        },
        None => primary.ok_or_else(|| {
            format!("process.user: uid {uid} has no passwd entry; set process.group")
        })?,
    };
    if uid == 0 {
        return Err(
            "process.user: running as root is what process.user avoids; name an unprivileged user"
                .into(),
        );
    }
    Ok(Account { uid, gid })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, which outlive the call.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

fn lookup_uid(uid: u32) -> Option<(u32, u32)> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// The id of group `name`.
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `gr` and `buf`, which outlive the call.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// Gives `path` and everything under it to `who` (the state directory and
/// the pin directory, before the switch: ztag must still write them).
pub fn chown_tree(path: &Path, who: Account) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(who.uid), Some(who.gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), who)?;
        }
    }
    Ok(())
}

/// What every thread ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Capabilities kept (bit n: capability n), effective and permitted.
    pub keep: u64,
    /// The account to switch to, or stay with the current ids.
    pub account: Option<Account>,
}

impl Target {
    /// The kept capabilities' names.
    pub fn names(&self) -> Vec<String> {
        (0..64)
            .filter(|c| self.keep & (1u64 << c) != 0)
            .map(cap_name)
            .collect()
    }
}

// What the signal handler applies (set before any signal is sent).
static KEEP: AtomicU64 = AtomicU64::new(0);
static UID: AtomicU32 = AtomicU32::new(u32::MAX);
static GID: AtomicU32 = AtomicU32::new(u32::MAX);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
// The first failing system call's errno on any thread (0: none).
static FAILED: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Applies the target to the calling thread with raw system calls only
/// (async-signal-safe: it runs in a signal handler).
fn apply_here() {
    let keep = KEEP.load(Ordering::SeqCst);
    let uid = UID.load(Ordering::SeqCst);
    let gid = GID.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    let fail = |step: i32| {
        // SAFETY: reading errno is async-signal-safe.
        let e = unsafe { *libc::__errno_location() };
        let _ = FAILED.compare_exchange(0, step * 1000 + e, Ordering::SeqCst, Ordering::SeqCst);
    };
    // SAFETY: plain system calls on this thread's credentials.
    unsafe {
        for cap in 0..=last {
            if keep & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            {
                fail(1);
            }
        }
        // Ambient capabilities would survive an execve; there is none.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        // Real-time signals queue: a thread signalled twice (the check
        // loop re-signals one that had not run its handler yet) runs this
        // twice, and a second switch would fail without CAP_SETUID.
        let switched = libc::syscall(libc::SYS_getuid) as u32 == uid;
        if uid != u32::MAX && !switched {
            // Keep the permitted set across the uid change; capset below
            // trims it to `keep`.
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(2);
            }
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) != 0 {
                fail(3);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(4);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(5);
            }
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let lo = keep as u32;
        let hi = (keep >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            fail(6);
        }
        if uid != u32::MAX && !switched {
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(7);
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; the handler must leave it as it was.
    let saved = unsafe { *libc::__errno_location() };
    apply_here();
    unsafe { *libc::__errno_location() = saved };
}

fn signal_number() -> libc::c_int {
    // glibc keeps the first real-time signals for itself; SIGRTMIN() is
    // the first one it leaves to programs.
    libc::SIGRTMIN() + 6
}

/// One thread's credentials, from /proc/self/task/TID/status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Thread id.
    pub tid: i32,
    /// Real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gids.
    pub gids: Vec<u32>,
    /// Effective capabilities.
    pub eff: u64,
    /// Permitted capabilities.
    pub prm: u64,
    /// Bounding set.
    pub bnd: u64,
    /// Ambient set.
    pub amb: u64,
    /// no_new_privs.
    pub no_new_privs: bool,
}

/// Parses a `status` file of /proc.
pub fn parse_status(tid: i32, text: &str) -> ThreadCreds {
    let mut c = ThreadCreds {
        tid,
        ..Default::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let hex = || u64::from_str_radix(v, 16).unwrap_or(u64::MAX);
        let ids = || {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        match k {
            "Uid" => c.uids = ids(),
            "Gid" => c.gids = ids(),
            "CapEff" => c.eff = hex(),
            "CapPrm" => c.prm = hex(),
            "CapBnd" => c.bnd = hex(),
            "CapAmb" => c.amb = hex(),
            "NoNewPrivs" => c.no_new_privs = v == "1",
            _ => {}
        }
    }
    c
}

fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn thread_creds(tid: i32) -> Option<ThreadCreds> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    Some(parse_status(tid, &text))
}

impl ThreadCreds {
    /// Whether this thread shows the target.
    pub fn matches(&self, t: &Target) -> bool {
        let ids_ok = match t.account {
            None => true,
            Some(a) => {
                self.uids.len() == 4
                    && self.uids.iter().all(|&u| u == a.uid)
                    && self.gids.len() == 4
                    && self.gids.iter().all(|&g| g == a.gid)
            }
        };
        ids_ok
            && self.eff == t.keep
            && self.prm == t.keep
            && self.bnd & !t.keep == 0
            && self.amb == 0
            && self.no_new_privs
    }
}

/// Drops to `target` on every thread of the process. Errors name what did
/// not take; on error the caller must not go on serving.
pub fn drop_to(target: Target) -> Result<(), String> {
    KEEP.store(target.keep, Ordering::SeqCst);
    if let Some(a) = target.account {
        UID.store(a.uid, Ordering::SeqCst);
        GID.store(a.gid, Ordering::SeqCst);
    }
    if let Some(n) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        LAST_CAP.store(n.min(63), Ordering::SeqCst);
    }
    FAILED.store(0, Ordering::SeqCst);
    let sig = signal_number();
    // SAFETY: installing a handler that only makes raw system calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "installing the signal handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: getpid/gettid cannot fail.
    let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
    apply_here();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let e = FAILED.load(Ordering::SeqCst);
        if e != 0 {
            let step = [
                "",
                "dropping from the bounding set",
                "PR_SET_KEEPCAPS",
                "setgroups",
                "setresgid",
                "setresuid",
                "capset",
                "PR_SET_NO_NEW_PRIVS",
            ];
            return Err(format!(
                "{} failed: {}",
                step.get((e / 1000) as usize).unwrap_or(&"?"),
                std::io::Error::from_raw_os_error(e % 1000)
            ));
        }
        let behind: Vec<ThreadCreds> = threads()
            .into_iter()
            .filter_map(thread_creds)
            .filter(|c| !c.matches(&target))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "threads still holding other credentials: {:?}",
                behind
            ));
        }
        for c in &behind {
            if c.tid == me {
                apply_here();
            } else {
                // SAFETY: signalling a thread of this process.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, c.tid, sig) };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The calling process's capabilities and ids, for the start log line and
/// tests.
pub fn current() -> Option<ThreadCreds> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(parse_status(0, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tztag\nUid:\t998\t998\t998\t998\nGid:\t997\t997\t997\t997\n\
        NoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\n\
        CapEff:\t0000008000001000\nCapBnd:\t0000008000001000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn status_is_parsed_and_matched() {
        let c = parse_status(7, STATUS);
        assert_eq!(c.uids, vec![998; 4]);
        assert_eq!(c.eff, (1 << CAP_BPF) | (1 << CAP_NET_ADMIN));
        assert!(c.no_new_privs);
        let t = Target {
            keep: (1 << CAP_BPF) | (1 << CAP_NET_ADMIN),
            account: Some(Account { uid: 998, gid: 997 }),
        };
        assert!(c.matches(&t));
        assert_eq!(t.names(), ["CAP_NET_ADMIN", "CAP_BPF"]);
        // One capability too many, another account, or no no_new_privs:
        // not a match.
        let more = Target {
            keep: t.keep | (1 << CAP_NET_BIND_SERVICE),
            ..t
        };
        assert!(!c.matches(&more));
        let other = Target {
            account: Some(Account { uid: 0, gid: 0 }),
            ..t
        };
        assert!(!c.matches(&other));
        let lax = parse_status(7, &STATUS.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0"));
        assert!(!lax.matches(&t));
    }

    #[test]
    fn accounts_resolve_or_name_the_problem() {
        let e = resolve("no-such-user-ztag", None).unwrap_err();
        assert!(e.contains("no-such-user-ztag"), "{e}");
        let e = resolve("root", None).unwrap_err();
        assert!(e.contains("root"), "{e}");
        let a = resolve("nobody", None).expect("nobody exists on Debian");
        assert_ne!(a.uid, 0);
        let e = resolve("nobody", Some("no-such-group-ztag")).unwrap_err();
        assert!(e.contains("no-such-group-ztag"), "{e}");
    }
}

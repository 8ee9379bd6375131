//! Running a loaded program on crafted frames with `BPF_PROG_TEST_RUN`, and
//! the frame builders the tests and `cargo xtask bench xdp` use. The syscall
//! is made directly so any program fd works, including one obtained by id
//! (a peer such as xdp-filter).

use std::{io, net::IpAddr, os::fd::RawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

#[repr(C, align(8))]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C, align(8))]
#[derive(Default)]
struct GetFdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
    _pad: [u32; 13],
}

/// What one test run returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunResult {
    /// The program's return value (XDP_DROP = 1, XDP_PASS = 2; TC_ACT_OK = 0,
    /// TC_ACT_SHOT = 2).
    pub retval: u32,
    /// Average run time per repetition, as the kernel measured it, ns.
    pub ns_per_run: u32,
}

/// XDP_DROP.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS.
pub const XDP_PASS: u32 = 2;

/// Runs the program `prog_fd` on `frame`, `repeat` times.
pub fn run(prog_fd: RawFd, frame: &[u8], repeat: u32) -> io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    test_run(&mut attr)?;
    Ok(RunResult {
        retval: attr.retval,
        ns_per_run: attr.duration,
    })
}

fn test_run(attr: &mut TestAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed, and the
    // caller's data pointers are valid for the sizes it gives.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// BPF_F_TEST_XDP_LIVE_FRAMES.
const LIVE_FRAMES: u32 = 1 << 1;

/// Runs an XDP program in live-frames mode: every repetition is a real
/// frame, and XDP_REDIRECT / XDP_TX really transmit it (the kernel's packet
/// generator mode, as xdp-trafgen uses). Runs in the caller's network
/// namespace; `batch` frames per NAPI-like batch (0: the kernel's 64).
pub fn run_live(prog_fd: RawFd, frame: &[u8], repeat: u32, batch: u32) -> io::Result<()> {
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        flags: LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    test_run(&mut attr)
}

/// Opens a loaded program by its id (as listed by `bpftool prog` or
/// `ip link`); the caller closes the fd.
pub fn prog_fd_by_id(id: u32) -> io::Result<RawFd> {
    let mut attr = GetFdAttr {
        id,
        ..Default::default()
    };
    // SAFETY: valid attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &mut attr as *mut GetFdAttr,
            std::mem::size_of::<GetFdAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as RawFd)
}

/// Builds Ethernet frames for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct Frame {
    vlans: Vec<u16>,
    vlan_tpid: u16,
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

/// TCP flags for [`Frame::tcp`].
pub const SYN: u8 = 0x02;
/// TCP ACK.
pub const ACK: u8 = 0x10;

impl Frame {
    /// Untagged frames.
    pub fn new() -> Self {
        Frame {
            vlans: Vec::new(),
            vlan_tpid: 0x8100,
        }
    }

    /// Adds a VLAN tag (802.1Q; the outer one of two uses 802.1ad).
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    /// Uses `tpid` for every tag (0x8100 or 0x88a8).
    pub fn tpid(mut self, tpid: u16) -> Self {
        self.vlan_tpid = tpid;
        self
    }

    fn l2(&self, ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let n = self.vlans.len();
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid = if n > 1 && i == 0 && self.vlan_tpid == 0x8100 {
                0x88a8
            } else {
                self.vlan_tpid
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// A frame with any EtherType and payload.
    pub fn raw(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = self.l2(ethertype);
        f.extend_from_slice(payload);
        f
    }

    /// A TCP segment from `src` with `flags` (UDP-free: TCP is what the rate
    /// limit looks at). `frag_off` (in 8-byte units) makes a non-first
    /// fragment when non-zero.
    pub fn tcp(&self, src: IpAddr, flags: u8, frag_off: u16) -> Vec<u8> {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        match src {
            IpAddr::V4(a) => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&40u16.to_be_bytes());
                ip[6..8].copy_from_slice(&(frag_off & 0x1fff).to_be_bytes());
                ip[8] = 64;
                ip[9] = 6;
                ip[12..16].copy_from_slice(&a.octets());
                ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
                // A valid header checksum, so the host stack accepts the
                // frame as far as its hooks (iptables in the benchmark).
                let sum: u32 = ip
                    .chunks(2)
                    .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                    .sum();
                let sum = (sum & 0xffff) + (sum >> 16);
                let sum = (sum & 0xffff) + (sum >> 16);
                ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                let mut f = self.l2(0x0800);
                f.extend_from_slice(&ip);
                f.extend_from_slice(&tcp);
                f
            }
            IpAddr::V6(a) => {
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[8..24].copy_from_slice(&a.octets());
                ip[24] = 0x20;
                ip[25] = 0x01;
                ip[26] = 0x0d;
                ip[27] = 0xb8;
                ip[39] = 1;
                ip[7] = 64;
                let mut f = self.l2(0x86DD);
                if frag_off != 0 {
                    ip[4..6].copy_from_slice(&(8u16 + 20).to_be_bytes());
                    ip[6] = 44;
                    f.extend_from_slice(&ip);
                    let mut fh = [0u8; 8];
                    fh[0] = 6;
                    fh[2..4].copy_from_slice(&(frag_off << 3).to_be_bytes());
                    f.extend_from_slice(&fh);
                } else {
                    ip[4..6].copy_from_slice(&20u16.to_be_bytes());
                    ip[6] = 6;
                    f.extend_from_slice(&ip);
                }
                f.extend_from_slice(&tcp);
                f
            }
        }
    }

    /// An IPv6 TCP segment behind a destination-options extension header.
    pub fn tcp6_with_dstopts(&self, src: std::net::Ipv6Addr, flags: u8) -> Vec<u8> {
        let mut f = self.tcp(IpAddr::V6(src), flags, 0);
        let ip_off = f.len() - 20 - 40;
        f[ip_off + 6] = 60;
        let opts = [6u8, 0, 1, 4, 0, 0, 0, 0];
        let tcp_at = f.len() - 20;
        f.splice(tcp_at..tcp_at, opts);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_expected_layout() {
        let f = Frame::new().tcp("192.0.2.9".parse().unwrap(), SYN, 0);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[26..30], &[192, 0, 2, 9]);
        assert_eq!(f[14 + 20 + 13], SYN);
        // The IPv4 header checksum verifies: the one's complement sum is 0xffff.
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        let q = Frame::new()
            .vlan(10)
            .vlan(20)
            .tcp("2001:db8::1".parse().unwrap(), ACK, 0);
        assert_eq!(&q[12..14], &[0x88, 0xa8], "outer tag of QinQ is 802.1ad");
        assert_eq!(&q[16..18], &[0x81, 0x00]);
        assert_eq!(&q[20..22], &[0x86, 0xdd]);
        assert_eq!(q.len(), 14 + 8 + 40 + 20);
        let d = Frame::new().tcp6_with_dstopts("2001:db8::1".parse().unwrap(), SYN);
        assert_eq!(d.len(), 14 + 40 + 8 + 20);
        assert_eq!(d[14 + 6], 60);
        assert_eq!(d[14 + 40], 6, "dstopts' next header is TCP");
    }
}

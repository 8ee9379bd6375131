//! The kernel program's packet parser, compiled for userspace from the very
//! same source file (`ztag-ebpf/src/parse.rs`), so that it can be fuzzed
//! under AddressSanitizer (`cargo xtask fuzz packet`) and compared with the
//! loaded program (tests/prog_test_run.rs): a bounds check missing there is
//! an out-of-bounds read here.

#[path = "../../../ztag-ebpf/src/parse.rs"]
#[allow(dead_code, clippy::all)]
mod kernel;

pub use kernel::{MAX_HEADER_BYTES, Source};

/// What the program reads from `frame`: `Ok(None)` not IP (passes),
/// `Err(())` claims IP but cannot be read (dropped as malformed).
#[allow(clippy::result_unit_err)]
pub fn parse(frame: &[u8]) -> Result<Option<Source>, ()> {
    let data = frame.as_ptr() as usize;
    kernel::parse_source(data, data + frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(proto: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&proto.to_be_bytes());
        f
    }

    #[test]
    fn frames_parse_as_the_kernel_reads_them() {
        // A runt passes as non-IP.
        assert!(matches!(parse(&[0; 13]), Ok(None)));
        // IPv4 SYN from 192.0.2.7 behind two VLAN tags.
        let mut f = eth(0x88A8);
        f.extend_from_slice(&[0, 1, 0x81, 0x00, 0, 2, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[192, 0, 2, 7]);
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[13] = 0x02;
        f.extend_from_slice(&tcp);
        let s = parse(&f).unwrap().unwrap();
        assert_eq!(&s.addr[..4], &[192, 0, 2, 7]);
        assert!(s.tcp_syn);
        // Cut inside the IPv4 header: malformed.
        assert!(parse(&f[..30]).is_err());
        // Cut inside the TCP header: the source still counts, not a SYN.
        let s = parse(&f[..f.len() - 1]).unwrap().unwrap();
        assert!(!s.tcp_syn);
        // A third VLAN tag: malformed.
        let mut g = eth(0x8100);
        g.extend_from_slice(&[0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00]);
        g.extend_from_slice(&ip);
        assert!(parse(&g).is_err());
        // ARP passes.
        assert!(matches!(parse(&eth(0x0806)), Ok(None)));
    }
}

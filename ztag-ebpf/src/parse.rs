//! Packet parsing: Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 and
//! IPv6 (with extension headers), and the TCP flags needed to recognise a new
//! connection. Every read goes through [`ptr_at`], which checks the bounds
//! against `data_end` first.

use core::mem::size_of;

use ztag_common::{FAMILY_V4, FAMILY_V6};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const TCP_FLAGS_OFF: usize = 13;
const TCP_MIN_HLEN: usize = 20;
const NO_NEXT_HEADER: u8 = 59;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers followed before giving up on finding TCP. A packet
/// with more is still judged by its source address; it just cannot count as
/// a new TCP connection for the rate limit.
const MAX_IPV6_EXT: usize = 4;

/// Bytes the TC program pulls into the skb's linear area before parsing:
/// Ethernet, two VLAN tags, IPv6, the usual extension headers and TCP.
pub const MAX_HEADER_BYTES: u32 = 256;

/// What the program needs from a packet.
#[derive(Copy, Clone)]
pub struct Source {
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// FAMILY_V4 or FAMILY_V6 (ztag-common).
    pub family: u8,
    /// A TCP segment with SYN and without ACK: a new connection.
    pub tcp_syn: bool,
}

/// A bounds-checked pointer to a `T` at `off` bytes from `data`.
#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, off: usize) -> Result<*const T, ()> {
    let start = data + off;
    if start + size_of::<T>() > end {
        return Err(());
    }
    Ok(start as *const T)
}

/// Reads a `T` at `off`. Variable offsets (IPv4 options, IPv6 extension
/// headers) are read as whole fixed-size blocks through one checked pointer:
/// checking one byte at a time lets LLVM rewrite `p + 1 > end` as
/// `p >= end`, which the verifier cannot use to bound the read.
#[inline(always)]
fn read<T: Copy>(data: usize, end: usize, off: usize) -> Result<T, ()> {
    // SAFETY: ptr_at checked the bounds; unaligned read of plain bytes.
    Ok(unsafe { ptr_at::<T>(data, end, off)?.read_unaligned() })
}

#[inline(always)]
fn read_be16(data: usize, end: usize, off: usize) -> Result<u16, ()> {
    Ok(u16::from_be_bytes(read::<[u8; 2]>(data, end, off)?))
}

/// Parses up to the source address. `Ok(None)`: not IP (pass). `Err`: the
/// frame claims IP but cannot be read (drop as malformed).
#[inline(always)]
pub fn parse_source(data: usize, end: usize) -> Result<Option<Source>, ()> {
    // A frame shorter than an Ethernet header carries no EtherType at all:
    // nothing to judge, so it passes as non-IP (the stack discards runts).
    let Ok(mut proto) = read_be16(data, end, 12) else {
        return Ok(None);
    };
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = read_be16(data, end, off + 2)?;
        off += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = read_be16(data, end, off + 2)?;
            off += VLAN_HLEN;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                return Err(());
            }
        }
    }
    match proto {
        ETH_P_IP => parse_v4(data, end, off).map(Some),
        ETH_P_IPV6 => parse_v6(data, end, off).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_v4(data: usize, end: usize, off: usize) -> Result<Source, ()> {
    // SAFETY: ptr_at checked that the 20-byte header is inside the frame.
    let h = unsafe { ptr_at::<[u8; IPV4_MIN_HLEN]>(data, end, off)?.read_unaligned() };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(());
    }
    let mut addr = [0u8; 16];
    addr[0] = h[12];
    addr[1] = h[13];
    addr[2] = h[14];
    addr[3] = h[15];
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let mut tcp_syn = false;
    if h[9] == IPPROTO_TCP && frag_off == 0 {
        // A first fragment too short to hold a TCP header is not a SYN we
        // can see; it is still judged by its source address.
        if let Ok(t) = read::<[u8; TCP_MIN_HLEN]>(data, end, off + ihl) {
            tcp_syn = t[TCP_FLAGS_OFF] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
    }
    Ok(Source {
        addr,
        family: FAMILY_V4,
        tcp_syn,
    })
}

#[inline(always)]
fn parse_v6(data: usize, end: usize, off: usize) -> Result<Source, ()> {
    // SAFETY: ptr_at checked that the fixed 40-byte header is inside.
    let h = unsafe { ptr_at::<[u8; IPV6_HLEN]>(data, end, off)?.read_unaligned() };
    if h[0] >> 4 != 6 {
        return Err(());
    }
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&h[8..24]);
    let mut next = h[6];
    let mut l4 = off + IPV6_HLEN;
    let mut tcp_syn = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Every extension header is at least 8 bytes: read them whole.
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Ok(h) = read::<[u8; 8]>(data, end, l4) else {
                    break;
                };
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Ok(h) = read::<[u8; 8]>(data, end, l4) else {
                    break;
                };
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    // Not the first fragment: no TCP header here.
                    next = NO_NEXT_HEADER;
                    break;
                }
                next = h[0];
                l4 += 8;
            }
            _ => break,
        }
    }
    if next == IPPROTO_TCP
        && let Ok(t) = read::<[u8; TCP_MIN_HLEN]>(data, end, l4)
    {
        tcp_syn = t[TCP_FLAGS_OFF] & (TCP_SYN | TCP_ACK) == TCP_SYN;
    }
    Ok(Source {
        addr,
        family: FAMILY_V6,
        tcp_syn,
    })
}

//! Parsing of the addresses and prefixes operators give to `ztag block` and
//! `ztag allow`. Strict on purpose: a blocklist line that means something
//! other than what the operator thought is worse than an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a prefix was refused. Each message names the input and says what to
/// write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not an address or prefix at all.
    #[error(
        "{input:?} is not an IPv4/IPv6 address or CIDR prefix (expected e.g. 192.0.2.0/24, 198.51.100.7 or 2001:db8::/32)"
    )]
    Malformed {
        /// What the operator wrote.
        input: String,
    },
    /// A prefix length out of range for its family.
    #[error("{input:?}: prefix length /{len} is out of range for {family} (0..={max})")]
    BadLength {
        /// What the operator wrote.
        input: String,
        /// The length given.
        len: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set after the prefix length: probably a typo.
    #[error("{input:?} has host bits set after /{len}; did you mean {network}?")]
    HostBits {
        /// What the operator wrote.
        input: String,
        /// The prefix length.
        len: u8,
        /// The network the operator probably meant.
        network: IpNet,
    },
    /// An IPv4-mapped IPv6 prefix (::ffff:a.b.c.d): IPv4 clients arrive as IPv4
    /// packets, so such an entry would never match what the operator meant.
    #[error(
        "{input:?} is an IPv4-mapped IPv6 prefix; packets from IPv4 clients carry IPv4 addresses, so write the IPv4 form {v4} instead"
    )]
    V4Mapped {
        /// What the operator wrote.
        input: String,
        /// The IPv4 prefix to use instead.
        v4: Ipv4Net,
    },
}

/// Parses `192.0.2.0/24`, `198.51.100.7` (a /32), `2001:db8::/32` or `::1`
/// (a /128) into a network. Refuses host bits after the prefix length,
/// IPv4-mapped IPv6 prefixes, zone ids and anything else.
pub fn parse_cidr(input: &str) -> Result<IpNet, CidrError> {
    let s = input.trim();
    let malformed = || CidrError::Malformed {
        input: input.to_string(),
    };
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| malformed())?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let len: u8 = match len {
        None => max,
        Some(l) => {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
                return Err(malformed());
            }
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::BadLength {
                        input: input.to_string(),
                        len: l.to_string(),
                        family,
                        max,
                    });
                }
            }
        }
    };
    let net = IpNet::new(addr, len).map_err(|_| malformed())?;
    if net.network() != addr {
        return Err(CidrError::HostBits {
            input: input.to_string(),
            len,
            network: net.trunc(),
        });
    }
    if let IpNet::V6(v6) = net
        && let Some(v4) = v4_mapped(&v6)
    {
        return Err(CidrError::V4Mapped {
            input: input.to_string(),
            v4,
        });
    }
    Ok(net)
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix (inside ::ffff:0:0/96) stands for.
fn v4_mapped(v6: &Ipv6Net) -> Option<Ipv4Net> {
    if v6.prefix_len() < 96 {
        return None;
    }
    let o = v6.network().octets();
    if o[..10] != [0; 10] || o[10] != 0xff || o[11] != 0xff {
        return None;
    }
    let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    Ipv4Net::new(v4, v6.prefix_len() - 96).ok()
}

/// The key bytes and prefix length of a network, as the LPM tries store it.
pub fn v4_key(net: &Ipv4Net) -> (u32, [u8; 4]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// See [`v4_key`].
pub fn v6_key(net: &Ipv6Net) -> (u32, [u8; 16]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// An address as ztag prints it in events (IPv4 in the first four bytes).
pub fn addr_from_event(family: u8, addr: [u8; 16]) -> Option<IpAddr> {
    match family {
        ztag_common::FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        ztag_common::FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(addr))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_prefixes_and_plain_addresses() {
        assert_eq!(
            parse_cidr("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            parse_cidr(" 198.51.100.7 ").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_cidr("::/0").unwrap().to_string(), "::/0");
    }

    #[test]
    fn refuses_malformed_input_with_the_input_named() {
        for bad in [
            "",
            "/24",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "10.0.0.0/24/1",
            "fe80::1%eth0",
            "999.1.1.1",
            "10.0.0.0 /8",
            "10.0.0.0/0008",
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(
                matches!(e, CidrError::Malformed { .. }),
                "{bad:?} gave {e:?}, expected Malformed"
            );
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn refuses_out_of_range_lengths() {
        let e = parse_cidr("10.0.0.0/33").unwrap_err();
        assert!(matches!(e, CidrError::BadLength { max: 32, .. }), "{e:?}");
        let e = parse_cidr("2001:db8::/129").unwrap_err();
        assert!(matches!(e, CidrError::BadLength { max: 128, .. }), "{e:?}");
    }

    #[test]
    fn refuses_host_bits_and_suggests_the_network() {
        let e = parse_cidr("10.1.2.3/8").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.1.2.3/8\" has host bits set after /8; did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn refuses_v4_mapped_v6_and_names_the_v4_form() {
        let e = parse_cidr("::ffff:192.0.2.1").unwrap_err();
        assert_eq!(
            e,
            CidrError::V4Mapped {
                input: "::ffff:192.0.2.1".into(),
                v4: "192.0.2.1/32".parse().unwrap()
            }
        );
        let e = parse_cidr("::ffff:10.0.0.0/104").unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
        // A v6 prefix that merely contains the mapped range is a plain v6 prefix.
        assert!(parse_cidr("::/64").is_ok());
    }

    #[test]
    fn keys_carry_network_bytes_and_length() {
        let IpNet::V4(n) = parse_cidr("192.0.2.0/24").unwrap() else {
            panic!("v4 expected")
        };
        assert_eq!(v4_key(&n), (24, [192, 0, 2, 0]));
        let IpNet::V6(n) = parse_cidr("2001:db8::/32").unwrap() else {
            panic!("v6 expected")
        };
        let (len, bytes) = v6_key(&n);
        assert_eq!(len, 32);
        assert_eq!(&bytes[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    }
}

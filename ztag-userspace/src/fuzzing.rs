//! Bodies of the fuzz targets (`fuzz/`), kept in the library so that the
//! unit tests run them on seeds and pseudo-random input on every build and
//! they cannot rot. Each asserts the parser's invariants, not just "no panic".

use crate::{config::Config, xdp::cidr::parse_cidr};

/// `parse_cidr`: never panics; whatever it accepts prints back to a prefix
/// that parses to the same network with no host bits and no v4-mapped form.
pub fn cidr(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = parse_cidr(s) {
        let again = parse_cidr(&net.to_string())
            .unwrap_or_else(|e| panic!("{s:?} parsed to {net}, which does not re-parse: {e}"));
        assert_eq!(net, again, "{s:?}");
        assert_eq!(net, net.trunc(), "{s:?} kept host bits");
    }
}

/// `Config::parse`: never panics; an error always names at least one problem.
pub fn config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(s) {
        Ok(c) => assert!(!c.xdp.interfaces.is_empty()),
        Err(e) => assert!(!e.problems.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes biased towards the parsers' alphabet.
    fn inputs(n: usize, alphabet: &[u8]) -> Vec<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let len = (next() % 48) as usize;
                (0..len)
                    .map(|_| {
                        let r = next();
                        if r % 8 == 0 {
                            (r >> 8) as u8
                        } else {
                            alphabet[(r >> 8) as usize % alphabet.len()]
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn cidr_target_holds_on_seeds_and_random_input() {
        for seed in [
            "10.0.0.0/8",
            "::/0",
            "::ffff:1.2.3.4/128",
            "1.2.3.4/33",
            "2001:db8::1/64",
            "0.0.0.0",
            "255.255.255.255/32",
            "::",
            "1::/1",
            "/",
            "1.1.1.1//1",
        ] {
            cidr(seed.as_bytes());
        }
        for i in inputs(20_000, b"0123456789abcdef.:/ %") {
            cidr(&i);
        }
    }

    #[test]
    fn config_target_holds_on_seeds_and_random_input() {
        config(crate::config::EMBEDDED_DEFAULT.as_bytes());
        for seed in [
            "",
            "[xdp]",
            "[xdp]\ninterfaces = []",
            "x = 1",
            "[metrics]\nlisten = 5",
        ] {
            config(seed.as_bytes());
        }
        for i in inputs(5_000, b"[]=\"\nxdpmoe_ \t0123.:") {
            config(&i);
        }
    }
}

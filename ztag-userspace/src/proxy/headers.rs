//! Header hygiene and request framing: what may come in, what goes on to the
//! upstream, and which client address ztag believes.
//!
//! * [`check_framing`] refuses every request whose body length two parsers
//!   could read differently (request smuggling): Content-Length with
//!   Transfer-Encoding, several Content-Lengths (even equal), a length that
//!   is not plain digits, any Transfer-Encoding but a lone `chunked` in
//!   HTTP/1.1, and Transfer-Encoding at all in HTTP/1.0 and HTTP/2.
//! * [`strip_hop_by_hop`] and [`strip_internal`] clean a request before it is
//!   forwarded. Call them on the incoming headers *before* ztag adds its own
//!   (identity, forwarding): a client naming `x-ztag-subject` or
//!   `x-forwarded-for` in `Connection` must not be able to remove what the
//!   gateway set.
//! * [`set_forwarded`] writes X-Forwarded-For/-Proto/-Host and `Forwarded`
//!   (RFC 7239): extended for a trusted proxy, replaced for anyone else.
//! * [`client_address`] reads the client behind trusted proxies, for logs and
//!   limits.
//!
//! These run on every request: no regex, and nothing allocates when there is
//! nothing to change.

use std::net::{IpAddr, SocketAddr};

use http::{
    HeaderMap, HeaderName, HeaderValue, Version,
    header::{
        CONNECTION, CONTENT_LENGTH, FORWARDED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
        TRAILER, TRANSFER_ENCODING, UPGRADE,
    },
};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1,
/// plus the non-standard Keep-Alive and Proxy-Connection).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Why a request's framing was refused. Every variant answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Content-Length and Transfer-Encoding together.
    #[error("Content-Length together with Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// More than one Content-Length, as headers or as a comma list.
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    /// A Content-Length that is not plain digits (or does not fit in 64 bits).
    #[error("invalid Content-Length")]
    BadContentLength,
    /// HTTP/1.1 Transfer-Encoding other than exactly `chunked`.
    #[error("unsupported Transfer-Encoding")]
    BadTransferEncoding,
    /// Transfer-Encoding in a version that has none (HTTP/1.0, HTTP/2).
    #[error("Transfer-Encoding not allowed in this HTTP version")]
    TransferEncodingNotAllowed,
    /// An HTTP/1 request head longer than max_header_bytes (seen by the
    /// connection's scanner on every request, not only the first).
    #[error("request head larger than max_header_bytes")]
    HeadTooLarge,
}

impl FramingError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::ContentLengthWithTransferEncoding => {
                "content_length_and_transfer_encoding"
            }
            FramingError::DuplicateContentLength => "duplicate_content_length",
            FramingError::BadContentLength => "bad_content_length",
            FramingError::BadTransferEncoding => "bad_transfer_encoding",
            FramingError::TransferEncodingNotAllowed => "transfer_encoding_not_allowed",
            FramingError::HeadTooLarge => "header_too_large",
        }
    }

    /// The answer: 431 for a head over the limit, else 400.
    pub fn status(&self) -> http::StatusCode {
        match self {
            FramingError::HeadTooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Refuses a request whose body framing is ambiguous (see the module
/// documentation). Hyper already reads the body one way; this makes sure no
/// upstream or middlebox could read it another.
pub fn check_framing(headers: &HeaderMap, version: Version) -> Result<(), FramingError> {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if let Some(v) = length {
        if lengths.next().is_some() || v.as_bytes().contains(&b',') {
            return Err(FramingError::DuplicateContentLength);
        }
        let b = v.as_bytes();
        // u64::MAX has 20 digits; refuse anything that could overflow.
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::BadContentLength);
        }
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(te) = codings.next() else {
        return Ok(());
    };
    if length.is_some() {
        return Err(FramingError::ContentLengthWithTransferEncoding);
    }
    if version != Version::HTTP_11 {
        return Err(FramingError::TransferEncodingNotAllowed);
    }
    if codings.next().is_some() || !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
        return Err(FramingError::BadTransferEncoding);
    }
    Ok(())
}

/// Removes the hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for n in &named {
            headers.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

fn has_prefix(name: &HeaderName, prefix: &[u8]) -> bool {
    let n = name.as_str().as_bytes();
    n.len() >= prefix.len() && n[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Removes every header whose name starts with `prefix` (case-insensitive),
/// so a client cannot pose as the gateway (`x-ztag-subject: admin`).
pub fn strip_internal(headers: &mut HeaderMap, prefix: &str) {
    let p = prefix.as_bytes();
    if !headers.keys().any(|n| has_prefix(n, p)) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| has_prefix(n, p))
        .cloned()
        .collect();
    for n in &names {
        headers.remove(n);
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `value` as an RFC 7239 token or quoted-string.
fn push_forwarded_value(out: &mut String, value: &str) {
    if !value.is_empty() && value.bytes().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The `Forwarded` element for this hop: `for=` the peer (IPv6 quoted and
/// bracketed), `proto=`, and `host=` when it is printable.
fn forwarded_element(out: &mut String, peer: IpAddr, proto: &str, host: Option<&str>) {
    match peer {
        IpAddr::V4(a) => {
            out.push_str("for=");
            out.push_str(&a.to_string());
        }
        IpAddr::V6(a) => {
            out.push_str("for=\"[");
            out.push_str(&a.to_string());
            out.push_str("]\"");
        }
    }
    if !proto.is_empty() && proto.bytes().all(is_tchar) {
        out.push_str(";proto=");
        out.push_str(proto);
    }
    if let Some(h) = host.filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic())) {
        out.push_str(";host=");
        push_forwarded_value(out, h);
    }
}

/// The visible-ASCII values of every `name` header, joined by ", ".
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let Ok(s) = v.to_str() else { continue };
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(s);
    }
    out
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    } else {
        headers.remove(name);
    }
}

/// Writes the forwarding headers for the upstream. `peer` is the address of
/// the TCP connection, `proto` `http` or `https`, `host` the Host (or
/// `:authority`) the request came with. For a trusted proxy the peer is
/// appended to its X-Forwarded-For and Forwarded chains and its
/// X-Forwarded-Proto/-Host are kept (set when missing); for anyone else every
/// incoming forwarding header is replaced by what ztag saw.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &str,
    host: Option<&str>,
    trusted_peer: bool,
) {
    let peer = peer.to_canonical();
    let mut xff = if trusted_peer {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        String::new()
    };
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer.to_string());
    insert(headers, X_FORWARDED_FOR, &xff);

    let mut fwd = if trusted_peer {
        joined(headers, &FORWARDED)
    } else {
        String::new()
    };
    if !fwd.is_empty() {
        fwd.push_str(", ");
    }
    forwarded_element(&mut fwd, peer, proto, host);
    insert(headers, FORWARDED, &fwd);

    if !trusted_peer || !headers.contains_key(X_FORWARDED_PROTO) {
        insert(headers, X_FORWARDED_PROTO, proto);
    }
    if !trusted_peer || !headers.contains_key(X_FORWARDED_HOST) {
        match host {
            Some(h) => insert(headers, X_FORWARDED_HOST, h),
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// One X-Forwarded-For entry: an address, optionally bracketed or with a
/// port (some proxies add one). `unknown`, obfuscated names and garbage give
/// `None`.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<std::net::Ipv6Addr>().ok())
        .map(|a| IpAddr::V6(a).to_canonical())
}

/// The client's address for logs and limits: the peer unless it is a trusted
/// proxy; then X-Forwarded-For walked from the right, skipping trusted
/// proxies, to the first address that is not one. An entry that does not
/// parse stops the walk at the last address known good (trusted proxies
/// append valid addresses, so anything left of garbage is the client's own
/// claim); a chain of trusted proxies only gives its leftmost.
pub fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted(client) {
        return client;
    }
    for v in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = v.to_str() else {
            return client;
        };
        for entry in s.rsplit(',') {
            let Some(ip) = parse_xff_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Header names present, sorted (removal reorders a HeaderMap).
    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[track_caller]
    fn framing(pairs: &[(&str, &str)], v: Version) -> Result<(), FramingError> {
        check_framing(&map(pairs), v)
    }

    #[test]
    fn framing_accepts_plain_requests() {
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(framing(&[], v), Ok(()), "{v:?}");
            assert_eq!(framing(&[("content-length", "0")], v), Ok(()), "{v:?}");
            assert_eq!(
                framing(&[("content-length", "1048576")], v),
                Ok(()),
                "{v:?}"
            );
        }
        assert_eq!(
            framing(&[("transfer-encoding", "chunked")], Version::HTTP_11),
            Ok(())
        );
        assert_eq!(
            framing(&[("transfer-encoding", "Chunked ")], Version::HTTP_11),
            Ok(())
        );
        assert_eq!(
            framing(&[("transfer-encoding", "CHUNKED")], Version::HTTP_11),
            Ok(())
        );
    }

    #[test]
    fn framing_refuses_ambiguity() {
        use FramingError::*;
        let v11 = Version::HTTP_11;
        type Case<'a> = (&'a [(&'a str, &'a str)], Version, FramingError);
        let cases: &[Case] = &[
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                v11,
                ContentLengthWithTransferEncoding,
            ),
            (
                &[("transfer-encoding", "chunked"), ("content-length", "0")],
                v11,
                ContentLengthWithTransferEncoding,
            ),
            (
                &[("content-length", "5"), ("content-length", "5")],
                v11,
                DuplicateContentLength,
            ),
            (
                &[("content-length", "5"), ("content-length", "6")],
                v11,
                DuplicateContentLength,
            ),
            (&[("content-length", "5, 5")], v11, DuplicateContentLength),
            (
                &[("content-length", "5,6")],
                Version::HTTP_2,
                DuplicateContentLength,
            ),
            (&[("content-length", "+5")], v11, BadContentLength),
            (&[("content-length", "-1")], v11, BadContentLength),
            (&[("content-length", "0x10")], v11, BadContentLength),
            (&[("content-length", " 5")], v11, BadContentLength),
            (&[("content-length", "")], v11, BadContentLength),
            (&[("content-length", "1e3")], v11, BadContentLength),
            (
                &[("content-length", "99999999999999999999")],
                v11,
                BadContentLength,
            ),
            (
                &[("transfer-encoding", "gzip, chunked")],
                v11,
                BadTransferEncoding,
            ),
            (
                &[("transfer-encoding", "chunked, chunked")],
                v11,
                BadTransferEncoding,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                v11,
                BadTransferEncoding,
            ),
            (
                &[("transfer-encoding", "xchunked")],
                v11,
                BadTransferEncoding,
            ),
            (
                &[("transfer-encoding", "identity")],
                v11,
                BadTransferEncoding,
            ),
            (
                &[("transfer-encoding", "chunked")],
                Version::HTTP_10,
                TransferEncodingNotAllowed,
            ),
            (
                &[("transfer-encoding", "chunked")],
                Version::HTTP_2,
                TransferEncodingNotAllowed,
            ),
        ];
        for (pairs, v, want) in cases {
            assert_eq!(framing(pairs, *v), Err(*want), "{pairs:?} {v:?}");
            assert_eq!(want.status(), http::StatusCode::BAD_REQUEST);
        }
        // The comma test runs before the digit test, so labels are stable.
        assert_eq!(DuplicateContentLength.reason(), "duplicate_content_length");
        assert_eq!(
            ContentLengthWithTransferEncoding.reason(),
            "content_length_and_transfer_encoding"
        );
        assert_eq!(BadContentLength.reason(), "bad_content_length");
        assert_eq!(BadTransferEncoding.reason(), "bad_transfer_encoding");
        assert_eq!(
            TransferEncodingNotAllowed.reason(),
            "transfer_encoding_not_allowed"
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-authenticate", "Basic"),
            ("accept", "*/*"),
            ("host", "api.example.com"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["accept", "host"]);
    }

    #[test]
    fn headers_named_in_connection_go_whatever_they_are() {
        let mut h = map(&[
            ("connection", "x-ztag-subject, authorization"),
            ("connection", " X-Custom ,,  , bad name, x/y, :path"),
            ("x-ztag-subject", "admin"),
            ("authorization", "Bearer t"),
            ("x-custom", "1"),
            ("x-other", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-other"]);
        // Nothing to strip: nothing changes.
        let mut h = map(&[("accept", "*/*"), ("x-a", "1")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn internal_headers_go_by_prefix() {
        let mut h = map(&[
            ("x-ztag-subject", "admin"),
            ("X-Ztag-Scopes", "api:admin"),
            ("x-ztag-subject", "root"),
            ("x-ztag", "not the prefix"),
            ("x-ztagsubject", "nor this"),
            ("accept", "*/*"),
        ]);
        strip_internal(&mut h, "X-ZTAG-");
        assert_eq!(names(&h), ["accept", "x-ztag", "x-ztagsubject"]);
        let before = h.clone();
        strip_internal(&mut h, "x-ztag-");
        assert_eq!(h, before);
    }

    #[test]
    fn forwarded_from_an_untrusted_peer_is_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "10.9.9.9, garbage"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.1.1.1;host=evil"),
        ]);
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        set_forwarded(&mut h, peer, "https", Some("api.example.com"), false);
        assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["api.example.com"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=203.0.113.7;proto=https;host=api.example.com"]
        );
        // No host seen: an incoming X-Forwarded-Host is still dropped.
        let mut h = map(&[("x-forwarded-host", "evil.example")]);
        set_forwarded(&mut h, peer, "http", None, false);
        assert!(h.get("x-forwarded-host").is_none(), "{h:?}");
        assert_eq!(all(&h, "forwarded"), ["for=203.0.113.7;proto=http"]);
    }

    #[test]
    fn forwarded_from_a_trusted_peer_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let peer: IpAddr = "10.0.0.3".parse().unwrap();
        set_forwarded(&mut h, peer, "http", Some("internal:8080"), true);
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["198.51.100.1, 10.0.0.2, 10.0.0.3"]
        );
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["api.example.com"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=198.51.100.1, for=10.0.0.3;proto=http;host=\"internal:8080\""]
        );
        // Missing ones are set from what ztag saw.
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, peer, "https", Some("a.example"), true);
        assert_eq!(all(&h, "x-forwarded-for"), ["10.0.0.3"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["a.example"]);
    }

    #[test]
    fn forwarded_quotes_ipv6_and_odd_hosts() {
        let mut h = HeaderMap::new();
        let peer: IpAddr = "2001:db8::7".parse().unwrap();
        set_forwarded(&mut h, peer, "https", Some("[::1]:8443"), false);
        assert_eq!(all(&h, "x-forwarded-for"), ["2001:db8::7"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"[2001:db8::7]\";proto=https;host=\"[::1]:8443\""]
        );
        // A v4-mapped peer is written as the IPv4 address it is.
        let mut h = HeaderMap::new();
        let peer: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        set_forwarded(&mut h, peer, "http", Some("a\"b\\c"), false);
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.1"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.1;proto=http;host=\"a\\\"b\\\\c\""]
        );
    }

    #[test]
    fn client_address_walks_trusted_proxies_from_the_right() {
        let trusted = |ip: IpAddr| matches!(ip, IpAddr::V4(a) if a.octets()[0] == 10);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: &[(&[&str], &str)] = &[
            // Untrusted client's own claim on the left is ignored.
            (&["6.6.6.6, 198.51.100.9, 10.0.0.5"], "198.51.100.9"),
            // Several headers form one chain, last header rightmost.
            (&["6.6.6.6", "198.51.100.9", "10.0.0.5"], "198.51.100.9"),
            (
                &["6.6.6.6, 198.51.100.9", "10.0.0.5, 10.0.0.6"],
                "198.51.100.9",
            ),
            // Garbage stops the walk at the last good address.
            (&["198.51.100.9, garbage, 10.0.0.5"], "10.0.0.5"),
            (&["198.51.100.9, , 10.0.0.5"], "10.0.0.5"),
            (&["junk"], "10.0.0.1"),
            (&["unknown"], "10.0.0.1"),
            // Only trusted proxies: the leftmost.
            (&["10.0.0.7, 10.0.0.5"], "10.0.0.7"),
            (&[], "10.0.0.1"),
            // Ports and brackets some proxies add.
            (&["198.51.100.9:5555, 10.0.0.5"], "198.51.100.9"),
            (&["[2001:db8::1]:443"], "2001:db8::1"),
            (&["[2001:db8::2]"], "2001:db8::2"),
            (&["::ffff:198.51.100.3"], "198.51.100.3"),
        ];
        for (xff, want) in cases {
            let h = map(&xff
                .iter()
                .map(|v| ("x-forwarded-for", *v))
                .collect::<Vec<_>>());
            assert_eq!(client_address(&h, peer, trusted), ip(want), "XFF {xff:?}");
        }
        // An untrusted peer is the client, whatever it claims.
        let h = map(&[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(
            client_address(&h, ip("203.0.113.1"), trusted),
            ip("203.0.113.1")
        );
        // Non-ASCII bytes in a header stop the walk too.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap(),
        );
        assert_eq!(client_address(&h, peer, trusted), peer);
    }
}

//! Path normalisation: the one place that decides what a request path means.
//!
//! It runs once per request, before routing; routing, every policy and the
//! upstream see only its output, so no component can read the path
//! differently from another (the classic `/public/../admin` and `%2e%2e`
//! bypasses exploit exactly such a disagreement). The rule, applied to the
//! path of an origin-form request target (no query):
//!
//! 1. It must start with `/` (`*`, absolute and authority forms are refused).
//! 2. A raw backslash is refused: some backends treat it as a slash.
//!    Raw control characters (below 0x20, 0x7F) are refused.
//! 3. Percent-encodings are checked and normalised:
//!    * `%` not followed by two hex digits (`%zz`, `%4`) is refused;
//!    * an encoded control character (`%00`–`%1F`, `%7F`) is refused;
//!    * an encoded unreserved character (ALPHA, DIGIT, `-`, `.`, `_`, `~`)
//!      is decoded, so `%2e` is `.` *before* step 4: `/a/%2e%2e/admin` is
//!      `/admin`, exactly what a decoding backend would serve;
//!    * `%2F` and `%5C` (encoded slash and backslash) are refused under
//!      [`EncodedSlash::Reject`]; under [`EncodedSlash::Keep`] they stay
//!      encoded and are never decoded: an ordinary character of their
//!      segment, never a separator;
//!    * every other encoding stays encoded with upper-case hex (`%c3` →
//!      `%C3`). Decoding happens once: `%252e` is `%25` then `2e`, and stays
//!      so.
//! 4. Dot segments are removed (RFC 3986 §5.2.4); `..` above the root stays
//!    at the root.
//! 5. Empty segments are removed (`//admin` is `/admin`); a trailing slash is
//!    kept (`/a/` and `/a/b/..` both give `/a/`).
//!
//! The output is a fixed point: normalising it again changes nothing. A path
//! that is already normal is returned borrowed, without allocating.

use std::borrow::Cow;

use serde::Deserialize;

/// What to do with `%2F` and `%5C` in a path (`gateway.paths.encoded_slash`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlash {
    /// Answer 400: the safe default, since backends disagree on whether
    /// `%2F` separates segments.
    #[default]
    Reject,
    /// Keep it encoded, never decode it; it is part of its segment.
    Keep,
}

/// Why a path was refused. Every variant answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C` under [`EncodedSlash::Reject`].
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    BadPercentEncoding,
    /// A control character, raw or percent-encoded.
    #[error("control character in path")]
    ControlCharacter,
    /// A raw backslash.
    #[error("backslash in path")]
    Backslash,
    /// The path does not start with `/`.
    #[error("request target is not in origin form")]
    NotOriginForm,
}

impl PathError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::EncodedSlash => "encoded_slash",
            PathError::BadPercentEncoding => "bad_percent_encoding",
            PathError::ControlCharacter => "control_character",
            PathError::Backslash => "backslash",
            PathError::NotOriginForm => "not_origin_form",
        }
    }

    /// The answer: always 400.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::BAD_REQUEST
    }
}

/// Normalises `path` by the rule in the module documentation.
pub fn normalize_path(path: &str, encoded_slash: EncodedSlash) -> Result<Cow<'_, str>, PathError> {
    if scan(path.as_bytes(), encoded_slash)? {
        Ok(Cow::Owned(rewrite(path.as_bytes())))
    } else {
        Ok(Cow::Borrowed(path))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Validates the whole path and says whether it needs rewriting. The single
/// pass every request pays; `rewrite` runs only when this says so.
fn scan(p: &[u8], encoded_slash: EncodedSlash) -> Result<bool, PathError> {
    if p.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut change = false;
    // Start of the current segment (just after its '/').
    let mut seg = 1;
    let mut i = 1;
    while i <= p.len() {
        let b = if i < p.len() { p[i] } else { b'/' };
        match b {
            b'/' => {
                let s = &p[seg..i];
                let last = i == p.len();
                // An empty segment that is not the trailing one is a `//`.
                if (s.is_empty() && !last) || s == b"." || s == b".." {
                    change = true;
                }
                seg = i + 1;
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    p.get(i + 1).copied().and_then(hex),
                    p.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let v = h << 4 | l;
                if is_control(v) {
                    return Err(PathError::ControlCharacter);
                }
                if (v == b'/' || v == b'\\') && encoded_slash == EncodedSlash::Reject {
                    return Err(PathError::EncodedSlash);
                }
                if is_unreserved(v)
                    || p[i + 1].is_ascii_lowercase()
                    || p[i + 2].is_ascii_lowercase()
                {
                    change = true;
                }
                i += 2;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if is_control(b) => return Err(PathError::ControlCharacter),
            _ => {}
        }
        i += 1;
    }
    Ok(change)
}

/// Decodes and re-encodes one segment of a path that `scan` accepted.
fn push_decoded(out: &mut String, s: &[u8]) {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            // `scan` validated: two hex digits follow.
            let v = hex(s[i + 1]).unwrap_or(0) << 4 | hex(s[i + 2]).unwrap_or(0);
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(UPPER[usize::from(v >> 4)] as char);
                out.push(UPPER[usize::from(v & 0xf)] as char);
            }
            i += 3;
        } else {
            // Copy the run up to the next '%' as text; `s` came from a &str
            // and is split only at ASCII bytes, so the run is valid UTF-8.
            let end = s[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(s.len(), |n| i + n);
            out.push_str(std::str::from_utf8(&s[i..end]).unwrap_or_default());
            i = end;
        }
    }
}

/// The slow path: segment by segment, decode, then resolve dot and empty
/// segments on an output stack (RFC 3986 §5.2.4 with `//` collapsed).
fn rewrite(p: &[u8]) -> String {
    let mut out = String::with_capacity(p.len());
    // Byte offsets in `out` where each kept segment's '/' starts.
    let mut starts: Vec<usize> = Vec::new();
    let mut seg = String::new();
    let mut trailing = false;
    let body = &p[1..];
    let n = body.split(|&b| b == b'/').count();
    for (k, raw) in body.split(|&b| b == b'/').enumerate() {
        let last = k + 1 == n;
        seg.clear();
        push_decoded(&mut seg, raw);
        match seg.as_str() {
            "" | "." => trailing = last,
            ".." => {
                if let Some(s) = starts.pop() {
                    out.truncate(s);
                }
                trailing = last;
            }
            _ => {
                starts.push(out.len());
                out.push('/');
                out.push_str(&seg);
                trailing = false;
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p, EncodedSlash::Reject).map(Cow::into_owned)
    }

    fn keep(p: &str) -> Result<String, PathError> {
        normalize_path(p, EncodedSlash::Keep).map(Cow::into_owned)
    }

    #[track_caller]
    fn check(input: &str, want: &str) {
        let got = norm(input);
        assert_eq!(got.as_deref(), Ok(want), "normalize_path({input:?})");
    }

    #[test]
    fn bypasses_from_the_issue() {
        check("/admin/../", "/");
        check("/public/../admin", "/admin");
        check("/admin/../public", "/public");
        check("/a/%2e%2e/admin", "/admin");
        check("/a/%2E%2E/admin", "/admin");
        check("/a/.%2e/admin", "/admin");
        check("/a/%2e./admin", "/admin");
        check("/public/%2e%2e/admin", "/admin");
        check("//admin", "/admin");
        check("///admin//x", "/admin/x");
        assert_eq!(norm("/admin%2Fsecret"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/admin%2fsecret"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%5Cb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/public/..%2Fadmin"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn dot_segments() {
        check("/./", "/");
        check("/./a", "/a");
        check("/a/./b", "/a/b");
        check("/a/.", "/a/");
        check("/a/b/..", "/a/");
        check("/a/b/../", "/a/");
        check("/a/b/../c", "/a/c");
        check("/a/b/../../..", "/");
        check("/../../etc/passwd", "/etc/passwd");
        check("/..", "/");
        check("/.", "/");
        check("/a/..b/c", "/a/..b/c");
        check("/a/.../c", "/a/.../c");
        check("/a/b./c", "/a/b./c");
    }

    #[test]
    fn slashes() {
        check("/", "/");
        check("//", "/");
        check("/a/", "/a/");
        check("/a//", "/a/");
        check("/a//b///c", "/a/b/c");
        check("/a/b/", "/a/b/");
    }

    #[test]
    fn percent_encodings() {
        // Unreserved characters are decoded, in either case.
        check("/%41%62%7e%2D%5f", "/Ab~-_");
        check("/%7E%7e", "/~~");
        // Others stay, hex upper-cased.
        check("/caf%c3%a9", "/caf%C3%A9");
        check("/a%20b", "/a%20b");
        check("/a%3fb", "/a%3Fb");
        check("/%25", "/%25");
        // Double encoding is decoded once only.
        check("/%252e%252e/admin", "/%252e%252e/admin");
        check("/%252E", "/%252E");
        check("/%25%32%65", "/%252e");
        check("/a/%25%32%65%25%32%65/b", "/a/%252e%252e/b");
        assert_eq!(norm("/%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/%4"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%g1"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%1g"), Err(PathError::BadPercentEncoding));
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a%0a"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a%1F"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a%7f"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a\tb"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/..\\admin"), Err(PathError::Backslash));
        assert_eq!(norm(""), Err(PathError::NotOriginForm));
        assert_eq!(norm("*"), Err(PathError::NotOriginForm));
        assert_eq!(norm("admin"), Err(PathError::NotOriginForm));
        assert_eq!(norm("http://x/admin"), Err(PathError::NotOriginForm));
        // Refusals win over rewrites wherever they sit.
        assert_eq!(norm("//a/../%zz"), Err(PathError::BadPercentEncoding));
        for (e, r) in [
            (PathError::EncodedSlash, "encoded_slash"),
            (PathError::BadPercentEncoding, "bad_percent_encoding"),
            (PathError::ControlCharacter, "control_character"),
            (PathError::Backslash, "backslash"),
            (PathError::NotOriginForm, "not_origin_form"),
        ] {
            assert_eq!(e.reason(), r);
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn keep_leaves_encoded_slashes_inside_their_segment() {
        assert_eq!(keep("/a%2Fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(keep("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(keep("/a%5cb").as_deref(), Ok("/a%5Cb"));
        // Never a separator: `..` removes the whole segment holding it.
        assert_eq!(keep("/x/a%2Fb/../c").as_deref(), Ok("/x/c"));
        assert_eq!(
            keep("/public/..%2Fadmin").as_deref(),
            Ok("/public/..%2Fadmin")
        );
        assert_eq!(keep("/%2F%2F").as_deref(), Ok("/%2F%2F"));
        // Other refusals still hold under Keep.
        assert_eq!(keep("/a\\b"), Err(PathError::Backslash));
        assert_eq!(keep("/%00"), Err(PathError::ControlCharacter));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/users/42",
            "/a/",
            "/a%20b",
            "/caf%C3%A9",
            "/a/..b/.c/",
            "/%25",
            "/caf\u{e9}",
        ] {
            match normalize_path(p, EncodedSlash::Reject) {
                Ok(Cow::Borrowed(b)) => assert_eq!(b, p),
                other => panic!("{p:?}: expected Borrowed({p:?}), got {other:?}"),
            }
        }
        assert!(matches!(
            normalize_path("/a%2Fb", EncodedSlash::Keep),
            Ok(Cow::Borrowed("/a%2Fb"))
        ));
        assert!(matches!(
            normalize_path("/a//b", EncodedSlash::Reject),
            Ok(Cow::Owned(_))
        ));
    }

    /// Every path over a small alphabet up to a length: output is stable
    /// under a second pass, borrowed exactly when unchanged, and free of
    /// `//`, `/./`, `/../` and decodable encodings.
    #[test]
    fn properties_over_small_paths() {
        let alphabet: &[&str] = &["/", ".", "a", "%2e", "%2E", "%2F", "%41", "%c3", "%25", "~"];
        let mut paths = vec![String::from("/")];
        let mut frontier = paths.clone();
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &frontier {
                for a in alphabet {
                    next.push(format!("{p}{a}"));
                }
            }
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        assert!(paths.len() > 100_000);
        for mode in [EncodedSlash::Reject, EncodedSlash::Keep] {
            for p in &paths {
                let Ok(once) = normalize_path(p, mode) else {
                    assert!(mode == EncodedSlash::Reject && p.contains("%2F"), "{p:?}");
                    continue;
                };
                if let Cow::Borrowed(b) = once {
                    assert_eq!(b, p);
                }
                if matches!(once, Cow::Owned(_)) {
                    assert_ne!(&*once, p, "{p:?}: allocated for no change");
                }
                let twice = normalize_path(&once, mode)
                    .unwrap_or_else(|e| panic!("{p:?} -> {once:?} re-normalises to {e}"));
                assert!(
                    matches!(twice, Cow::Borrowed(_)),
                    "{p:?} -> {once:?} -> {twice:?}: not a fixed point"
                );
                assert!(once.starts_with('/'), "{p:?} -> {once:?}");
                for bad in ["//", "/./", "/../", "%2e", "%2E", "%41", "%c3"] {
                    assert!(!once.contains(bad), "{p:?} -> {once:?} contains {bad:?}");
                }
                assert!(
                    !once.ends_with("/.") && !once.ends_with("/.."),
                    "{p:?} -> {once:?}"
                );
            }
        }
    }
}

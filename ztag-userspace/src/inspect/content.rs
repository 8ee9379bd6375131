//! The response content filter: PII and secrets in response bodies, found
//! in one pass and redacted, blocked or logged — on whole bodies and on
//! streams.
//!
//! One combined byte regex (no captures, ASCII word boundaries, so the lazy
//! DFA runs) finds candidates; each candidate is then attributed to the
//! first kind whose own pattern matches there and whose check passes (Luhn
//! for cards, ISO 7064 mod-97 and the country's length for IBANs, the
//! issued ranges for SSNs, entropy and placeholder checks for generic
//! secrets). Private-key blocks run from their BEGIN line to the END line
//! (or the end of the body).
//!
//! Streams ([`StreamFilter`]) hold back at most [`HOLD`] bytes so that a
//! match straddling chunks is found whole; inside a private-key block
//! nothing is held (the block is dropped as it streams, up to its END
//! line). Memory per stream is therefore bounded by `HOLD` plus one chunk.

use std::sync::{Arc, LazyLock};

use regex::bytes::{Regex, RegexBuilder};

/// Kinds of findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// E-mail address.
    Email,
    /// Telephone number (international or NANP forms, with separators).
    Phone,
    /// Payment card number that passes Luhn.
    CreditCard,
    /// IBAN that passes its mod-97 check.
    Iban,
    /// US social security number in an issued range.
    UsSsn,
    /// AWS access key id.
    AwsAccessKey,
    /// AWS secret access key (next to its name).
    AwsSecretKey,
    /// GitHub token.
    GithubToken,
    /// GitLab token.
    GitlabToken,
    /// Slack token or webhook URL.
    SlackToken,
    /// PEM/OpenSSH/PGP private key block.
    PrivateKey,
    /// JSON Web Token.
    Jwt,
    /// A high-entropy value next to a credential keyword.
    GenericSecret,
}

impl Kind {
    /// Every kind, in attribution order (specific before generic).
    pub const ALL: &'static [Kind] = &[
        Kind::PrivateKey,
        Kind::AwsAccessKey,
        Kind::AwsSecretKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::Jwt,
        Kind::GenericSecret,
        Kind::Email,
        Kind::Iban,
        Kind::UsSsn,
        Kind::CreditCard,
        Kind::Phone,
    ];

    /// The snake_case name (markers, metrics, config).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::AwsSecretKey => "aws_secret_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::GenericSecret => "generic_secret",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// A secret (as opposed to PII).
    pub fn is_secret(self) -> bool {
        !matches!(
            self,
            Kind::Email | Kind::Phone | Kind::CreditCard | Kind::Iban | Kind::UsSsn
        )
    }

    fn pattern(self) -> &'static str {
        match self {
            Kind::PrivateKey => r"-----BEGIN[ A-Z0-9]{0,32}PRIVATE KEY(?: BLOCK)?-----",
            Kind::AwsAccessKey => r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
            Kind::AwsSecretKey => {
                r#"(?i:aws)[A-Za-z0-9_.-]{0,24}(?i:secret|sak)[A-Za-z0-9_.-]{0,24}["']?\s{0,4}(?::|=|=>|:=)\s{0,4}["']?[A-Za-z0-9/+]{40}\b"#
            }
            Kind::GithubToken => {
                r"\b(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{70,255})\b"
            }
            Kind::GitlabToken => {
                // Each token type has its length (as GitLab issues them); a
                // longer run is something else.
                r"\b(?:glpat-[A-Za-z0-9_\-]{20}|glpat-[A-Za-z0-9_\-]{27,300}\.[0-9a-z]{9}|glptt-[A-Za-z0-9_\-]{40}|glimt-[A-Za-z0-9_\-]{25}|glagent-[A-Za-z0-9_\-]{50,1024}|gloas-[A-Za-z0-9_\-]{64}|glcbt-(?:[0-9a-fA-F]{1,5}_)?[A-Za-z0-9_\-]{20}|GR1348941[A-Za-z0-9_\-]{20}|gl(?:dt|rt|ft|soat|ffct)-[A-Za-z0-9_\-]{20})(?:[^A-Za-z0-9_\-]|$)"
            }
            Kind::SlackToken => {
                r"\b(?:xoxb-[0-9]{8,14}-(?:[0-9]{10,13}-)?[A-Za-z0-9]{18,34}|xox[pe](?:-[0-9]{10,13}){3}-[A-Za-z0-9\-]{28,34}|xox[os]-[0-9]+-[0-9]+-[0-9]+-[a-fA-F0-9]+|xox[ar]-(?:[0-9]-)?[0-9A-Za-z]{8,48}|xoxe(?:\.xox[bp])?-[0-9]-[A-Za-z0-9]{140,170}|xapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-z0-9]+)|https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,100}"
            }
            Kind::Jwt => {
                r"\beyJ[A-Za-z0-9_\-]{8,}={0,2}\.eyJ[A-Za-z0-9_\-]{8,}={0,2}(?:\.[A-Za-z0-9_\-]*)?"
            }
            Kind::GenericSecret => {
                r#"(?i:pass(?:word|wd|phrase)?|pwd|secret|token|auth|api[_\-]?key|apikey|access[_\-]?key|auth[_\-]?key|private[_\-]?key|client[_\-]?secret|credentials?)[A-Za-z0-9_\-]{0,20}(?:\s{1,4}[A-Za-z\[\]]{2,12})?(?:["']?\s{0,4}(?:[:?.]{0,3}=>?|:)\s{0,4}["'`]?|["']\s{0,4},\s{0,4}["'`]|>\s{0,8})[A-Za-z0-9+/=_\-.!@#$%^&*~]{12,200}"#
            }
            Kind::Email => {
                r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"
            }
            Kind::Iban => r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
            Kind::UsSsn => r"\b[0-9]{3}(?:-[0-9]{2}-|\x20[0-9]{2}\x20)[0-9]{4}\b",
            Kind::CreditCard => r"\b[2-6][0-9]{3}(?:[ \-]?[0-9]{2,4}){2,5}\b",
            Kind::Phone => {
                r"(?:\+1[ .\-]?)?(?:\([0-9]{3}\)\s?|\b[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}\b|\+[1-9][0-9]{0,2}[ .\-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})(?:[ .\-][0-9]{2,4}){1,4}\b|\+[1-9][0-9]{7,14}\b"
            }
        }
    }

    fn validate(self, m: &[u8]) -> bool {
        match self {
            Kind::CreditCard => luhn(m),
            Kind::Iban => iban(m),
            Kind::UsSsn => ssn(m),
            Kind::Phone => phone(m),
            Kind::GenericSecret => generic(m),
            Kind::Email => !m.starts_with(b".") && !m.contains(&b'\\'),
            Kind::Jwt => jwt(m),
            // A runner token body is random: letters too, not a digit run.
            Kind::GitlabToken => {
                !m.starts_with(b"GR1348941") || m[9..].iter().any(u8::is_ascii_alphabetic)
            }
            _ => true,
        }
    }
}

/// Longest candidate the stream may need to see whole (bytes).
pub const HOLD: usize = 512;

struct Compiled {
    any: Regex,
    each: Vec<(Kind, Regex)>,
}

fn compile(kinds: &[Kind]) -> Compiled {
    let ordered: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| kinds.contains(k))
        .collect();
    let ascii = |p: &str| p.replace(r"\b", r"(?-u:\b)");
    let build = |p: &str| {
        RegexBuilder::new(&ascii(p))
            .unicode(false)
            .size_limit(32 << 20)
            .dfa_size_limit(32 << 20)
            .build()
            .expect("content patterns compile")
    };
    let any = ordered
        .iter()
        .map(|k| format!("(?:{})", k.pattern()))
        .collect::<Vec<_>>()
        .join("|");
    let any = if any.is_empty() {
        "[^\\s\\S]".to_owned()
    } else {
        any
    };
    Compiled {
        any: build(&any),
        each: ordered
            .iter()
            .map(|k| (*k, build(&format!("^(?:{})", k.pattern()))))
            .collect(),
    }
}

/// One finding: byte offsets into the scanned input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: Kind,
    /// Start (inclusive).
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
}

/// The compiled filter, shared by every stream of the routes using it.
pub struct ContentFilter {
    c: Compiled,
}

static ALL: LazyLock<Arc<ContentFilter>> =
    LazyLock::new(|| Arc::new(ContentFilter::build(Kind::ALL)));

impl ContentFilter {
    /// A filter for these kinds only.
    pub fn new(kinds: &[Kind]) -> ContentFilter {
        ContentFilter::build(kinds)
    }

    fn build(kinds: &[Kind]) -> ContentFilter {
        ContentFilter { c: compile(kinds) }
    }

    /// A filter for every kind.
    pub fn all() -> ContentFilter {
        ContentFilter::build(Kind::ALL)
    }

    /// The shared every-kind filter.
    pub fn shared_all() -> Arc<ContentFilter> {
        ALL.clone()
    }

    /// Every finding in `text`, non-overlapping, in order.
    pub fn scan(&self, text: &[u8]) -> Vec<Finding> {
        let mut out = Vec::new();
        self.scan_from(text, 0, text.len(), true, &mut out);
        out
    }

    /// Findings that start in `text[from..]`; stops early with the first
    /// finding ending after `limit` unless `complete` (then everything is
    /// reported; a private key without its END runs to the end).
    fn scan_from(
        &self,
        text: &[u8],
        from: usize,
        limit: usize,
        complete: bool,
        out: &mut Vec<Finding>,
    ) -> usize {
        let mut at = from;
        while at < text.len() {
            let Some(m) = self.c.any.find_at(text, at) else {
                break;
            };
            match self.attribute(text, m.start(), m.end()) {
                Some(mut f) => {
                    if f.kind == Kind::PrivateKey {
                        match key_end(text, f.end) {
                            Some(e) if key_body_len(&text[f.end..e]) < MIN_KEY_BODY => {
                                at = m.start() + 1;
                                continue;
                            }
                            Some(e) => f.end = e,
                            None if complete => f.end = text.len(),
                            None => return f.start,
                        }
                    }
                    if !complete && f.end > limit {
                        return f.start;
                    }
                    at = f.end.max(m.start() + 1);
                    out.push(f);
                }
                None => at = m.start() + 1,
            }
        }
        text.len()
    }

    /// The first kind that matches at `start` and passes its check. A
    /// keyword=value match whose value is itself a known token is that
    /// token's kind.
    fn attribute(&self, text: &[u8], start: usize, _end: usize) -> Option<Finding> {
        for (kind, re) in &self.c.each {
            if let Some(m) = re.find(&text[start..]) {
                let (s, e) = (start, start + m.end());
                if *kind == Kind::GenericSecret && !keyword_ok(text, s) {
                    continue;
                }
                let (vs, ve) = value_span(*kind, text, s, e);
                if *kind == Kind::GenericSecret
                    && let Some(f) = self.specific_at(text, vs)
                {
                    return Some(f);
                }
                if kind.validate(&text[vs..ve]) && !(kind.is_secret() && placeholder(&text[vs..ve]))
                {
                    return Some(Finding {
                        kind: *kind,
                        start: vs,
                        end: ve,
                    });
                }
            }
        }
        None
    }

    /// A specific (non-generic) kind matching at `at`.
    fn specific_at(&self, text: &[u8], at: usize) -> Option<Finding> {
        self.c
            .each
            .iter()
            .filter(|(k, _)| k.is_secret() && *k != Kind::GenericSecret)
            .find_map(|(k, re)| {
                let m = re.find(&text[at..])?;
                let (s, e) = value_span(*k, text, at, at + m.end());
                (k.validate(&text[s..e]) && !placeholder(&text[s..e])).then_some(Finding {
                    kind: *k,
                    start: s,
                    end: e,
                })
            })
    }

    /// `text` with each finding replaced by `[REDACTED:<kind>]`.
    pub fn redact(&self, text: &[u8]) -> (Vec<u8>, Vec<Finding>) {
        let fs = self.scan(text);
        if fs.is_empty() {
            return (text.to_vec(), fs);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for f in &fs {
            out.extend_from_slice(&text[at..f.start]);
            marker(f.kind, &mut out);
            at = f.end;
        }
        out.extend_from_slice(&text[at..]);
        (out, fs)
    }
}

fn marker(k: Kind, out: &mut Vec<u8>) {
    out.extend_from_slice(b"[REDACTED:");
    out.extend_from_slice(k.as_str().as_bytes());
    out.push(b']');
}

/// Documentation examples and filler (`AKIAIOSFODNN7EXAMPLE`, `XXXX…`).
fn placeholder(v: &[u8]) -> bool {
    let upper = v.to_ascii_uppercase();
    memchr::memmem::find(&upper, b"EXAMPLE").is_some()
        || v.windows(8)
            .any(|w| w.iter().all(|&b| b == w[0] && b.is_ascii_alphabetic()))
}

/// A credential keyword must start its key (`api_key`, `client_secret`,
/// not `publicToken` or `jsonwebtoken`), and a key naming something else
/// about the credential (`credentialsId`, `SECRET_NAME`, `TokenFile`,
/// `csrf-token`) is not a secret.
fn keyword_ok(text: &[u8], s: usize) -> bool {
    if s > 0 && text[s - 1].is_ascii_alphabetic() {
        // Only at a camelCase boundary (`genericToken`), and not after a
        // word that says it is public or a storage name.
        if !(text[s - 1].is_ascii_lowercase() && text[s].is_ascii_uppercase()) {
            return false;
        }
        let mut p = s;
        while p > 0 && text[p - 1].is_ascii_alphanumeric() {
            p -= 1;
        }
        let prefix = text[p..s].to_ascii_lowercase();
        if [&b"public"[..], b"store"]
            .iter()
            .any(|w| prefix.ends_with(w))
        {
            return false;
        }
    }
    let rest = &text[s..text.len().min(s + 48)];
    let key_end = rest
        .iter()
        .position(|&b| matches!(b, b'"' | b'\'' | b':' | b'=' | b' ' | b'\t'))
        .unwrap_or(rest.len());
    let key = rest[..key_end].to_ascii_lowercase();
    const NOT_SECRET: &[&[u8]] = &[
        b"id",
        b"ids",
        b"name",
        b"file",
        b"path",
        b"type",
        b"url",
        b"uri",
        b"version",
        b"count",
        b"length",
        b"size",
        b"format",
        b"endpoint",
        b"header",
        b"field",
        b"location",
        b"ref",
        b"author",
        b"authority",
        b"authors",
        b"source",
        b"method",
        b"mode",
    ];
    let before = if s > 0 {
        text[s.saturating_sub(5)..s].to_ascii_lowercase()
    } else {
        Vec::new()
    };
    !NOT_SECRET.iter().any(|n| key.ends_with(n))
        && memchr::memmem::find(&before, b"csrf").is_none()
        && memchr::memmem::find(&before, b"xsrf").is_none()
}

fn uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, &b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

/// For keyword=value kinds, only the value is the finding.
fn value_span(kind: Kind, text: &[u8], s: usize, e: usize) -> (usize, usize) {
    match kind {
        Kind::AwsSecretKey => (e - 40, e),
        Kind::GenericSecret => {
            // Past the key (keyword and suffix), an optional type word, then
            // the operator and quotes: the rest is the value.
            let key = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            let mut v = s;
            while v < e && key(text[v]) {
                v += 1;
            }
            let op = |b: u8| {
                matches!(
                    b,
                    b':' | b'='
                        | b'>'
                        | b'?'
                        | b'.'
                        | b','
                        | b' '
                        | b'\t'
                        | b'\r'
                        | b'\n'
                        | b'"'
                        | b'\''
                        | b'`'
                )
            };
            let after_key = v;
            while v < e && op(text[v]) {
                v += 1;
            }
            // `string x = …`: a type word between key and operator.
            if v < e
                && !text[after_key..v]
                    .iter()
                    .any(|&b| matches!(b, b':' | b'=' | b'>' | b','))
            {
                while v < e && (text[v].is_ascii_alphabetic() || matches!(text[v], b'[' | b']')) {
                    v += 1;
                }
                while v < e && op(text[v]) {
                    v += 1;
                }
            }
            // A JSON escape at the end is not part of the value.
            let mut end = e;
            while end > v && text[end - 1] == b'\\' {
                end -= 1;
            }
            (v, end)
        }
        // The character after the token's fixed length is not part of it.
        Kind::GitlabToken
            if e > s
                && !(text[e - 1].is_ascii_alphanumeric() || matches!(text[e - 1], b'_' | b'-')) =>
        {
            (s, e - 1)
        }
        _ => (s, e),
    }
}

/// A private-key block shorter than this (base64 characters between its
/// BEGIN and END lines) is an example, not a key.
const MIN_KEY_BODY: usize = 32;

fn key_body_len(block: &[u8]) -> usize {
    let end = memchr::memmem::find(block, b"-----END").unwrap_or(block.len());
    block[..end]
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .count()
}

/// The end of a private-key block whose header ends at `from`.
fn key_end(text: &[u8], from: usize) -> Option<usize> {
    let rest = &text[from..];
    let i = memchr::memmem::find(rest, b"-----END")?;
    let tail = &rest[i + 8..];
    let j = memchr::memmem::find(&tail[..tail.len().min(64)], b"-----")?;
    Some(from + i + 8 + j + 5)
}

fn digits(m: &[u8]) -> Vec<u8> {
    m.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

fn luhn(m: &[u8]) -> bool {
    let d = digits(m);
    if !card_length_ok(&d) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A JWT's header and payload decode to JSON objects.
fn jwt(m: &[u8]) -> bool {
    use base64::Engine as _;
    let mut parts = m.split(|&b| b == b'.');
    let object = |p: Option<&[u8]>| {
        let p = p.unwrap_or_default();
        let p: Vec<u8> = p.iter().copied().filter(|&b| b != b'=').collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&p)
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
            .is_some_and(|v| v.is_object())
    };
    object(parts.next()) && object(parts.next())
}

/// The number's length fits its network (by prefix).
fn card_length_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p2 = d.first().map_or(0, |&a| {
        a as u32 * 10 + d.get(1).copied().unwrap_or(0) as u32
    });
    match p2 {
        34 | 37 => n == 15,
        30 | 36 | 38 | 39 => n == 14 || n == 16,
        40..=49 => matches!(n, 13 | 16 | 19),
        51..=55 | 22..=27 => n == 16,
        35 | 60..=69 => (16..=19).contains(&n),
        _ => false,
    }
}

fn iban(m: &[u8]) -> bool {
    let s: Vec<u8> = m.iter().copied().filter(|b| *b != b' ').collect();
    let want = iban_len(&s[..2]);
    if want.is_some_and(|w| w != s.len()) || !(15..=34).contains(&s.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in s[4..].iter().chain(&s[..4]) {
        let v = match b {
            b'0'..=b'9' => (b - b'0') as u32,
            b'A'..=b'Z' => (b - b'A') as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBAN lengths of the common countries (others: 15–34 and the checksum).
fn iban_len(cc: &[u8]) -> Option<usize> {
    Some(match cc {
        b"DE" => 22,
        b"GB" | b"IE" => 22,
        b"FR" | b"MC" | b"IT" => 27,
        b"ES" | b"SE" | b"SK" | b"CZ" | b"RO" => 24,
        b"NL" => 18,
        b"BE" => 16,
        b"CH" | b"LI" => 21,
        b"AT" | b"LU" => 20,
        b"PL" => 28,
        b"PT" => 25,
        b"DK" | b"FI" => 18,
        b"NO" => 15,
        _ => return None,
    })
}

fn ssn(m: &[u8]) -> bool {
    let d = digits(m);
    if d.len() != 9 {
        return false;
    }
    let area = d[0] as u32 * 100 + d[1] as u32 * 10 + d[2] as u32;
    let group = d[3] as u32 * 10 + d[4] as u32;
    let serial: u32 = d[5..].iter().fold(0, |a, &x| a * 10 + x as u32);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn phone(m: &[u8]) -> bool {
    let n = digits(m).len();
    (10..=15).contains(&n)
}

/// A generic secret: long enough, not a placeholder, and random-looking.
fn generic(v: &[u8]) -> bool {
    if v.len() < 12 || uuid(v) {
        return false;
    }
    let lower = String::from_utf8_lossy(v).to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "xxxx",
        "****",
        "....",
        "changeme",
        "example",
        "placeholder",
        "your",
        "<",
        "${",
        "{{",
        "redacted",
        "dummy",
        "sample",
        "secret",
        "password",
        "token",
        "null",
        "none",
        "undefined",
        "process.env",
        "os.environ",
        "getenv",
        "config.",
        "settings.",
    ];
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return false;
    }
    let classes = [
        v.iter().any(u8::is_ascii_lowercase),
        v.iter().any(u8::is_ascii_uppercase),
        v.iter().any(u8::is_ascii_digit),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let hex = v.iter().all(u8::is_ascii_hexdigit);
    let h = entropy(v);
    if hex {
        h >= 3.0 && v.len() >= 16
    } else {
        classes >= 2 && h >= 3.5
    }
}

fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in v {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// The filter on one stream: feed chunks, get the bytes that are final.
pub struct StreamFilter {
    f: Arc<ContentFilter>,
    redact: bool,
    /// Bytes not yet emitted.
    pending: Vec<u8>,
    /// Stream offset of `pending[0]`.
    base: usize,
    /// The last emitted byte (word-boundary context).
    prev: Option<u8>,
    /// Inside a private-key block since this stream offset.
    in_key: Option<usize>,
}

impl StreamFilter {
    /// A stream over `filter`; `redact` replaces findings, else bytes pass
    /// unchanged and findings are only reported.
    pub fn new(filter: Arc<ContentFilter>, redact: bool) -> StreamFilter {
        StreamFilter {
            f: filter,
            redact,
            pending: Vec::new(),
            base: 0,
            prev: None,
            in_key: None,
        }
    }

    /// Feeds one chunk; appends what is final to `out`; returns findings
    /// completed now (offsets in the whole stream).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<Finding> {
        self.pending.extend_from_slice(chunk);
        self.run(false, out)
    }

    /// End of stream: flushes what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Finding> {
        self.run(true, out)
    }

    fn run(&mut self, last: bool, out: &mut Vec<u8>) -> Vec<Finding> {
        let mut found = Vec::new();
        loop {
            if let Some(start) = self.in_key {
                // Inside a key block: look for its END line.
                match key_end(&self.pending, 0) {
                    Some(e) => {
                        self.emit_raw(e, !self.redact, out);
                        found.push(Finding {
                            kind: Kind::PrivateKey,
                            start,
                            end: self.base,
                        });
                        self.in_key = None;
                        continue;
                    }
                    None if last => {
                        let n = self.pending.len();
                        self.emit_raw(n, !self.redact, out);
                        found.push(Finding {
                            kind: Kind::PrivateKey,
                            start,
                            end: self.base,
                        });
                        self.in_key = None;
                        return found;
                    }
                    None => {
                        // Keep a tail that may hold a split END marker.
                        let keep = 80.min(self.pending.len());
                        let n = self.pending.len() - keep;
                        self.emit_raw(n, !self.redact, out);
                        return found;
                    }
                }
            }
            let (text, off) = self.context();
            let limit = if last {
                text.len()
            } else {
                text.len().saturating_sub(HOLD)
            };
            let mut fs = Vec::new();
            let stop = self.f.scan_from(&text, off, limit.max(off), last, &mut fs);
            let safe = if last {
                text.len()
            } else {
                stop.min(limit.max(off))
            };
            let mut at = off;
            for f in &fs {
                self.emit_clean(&text[at..f.start], out);
                if self.redact {
                    marker(f.kind, out);
                } else {
                    out.extend_from_slice(&text[f.start..f.end]);
                }
                found.push(Finding {
                    kind: f.kind,
                    start: self.base + f.start - off,
                    end: self.base + f.end - off,
                });
                at = f.end;
            }
            let emit_to = safe.max(at);
            self.emit_clean(&text[at..emit_to], out);
            let consumed = emit_to - off;
            self.prev = if emit_to > 0 {
                Some(text[emit_to - 1])
            } else {
                self.prev
            };
            self.pending.drain(..consumed);
            self.base += consumed;
            // A key header whose END is not here yet: enter key mode.
            if !last && stop < limit.max(off) {
                let probe = &text[stop..];
                if let Some(m) = self
                    .f
                    .c
                    .each
                    .iter()
                    .find(|(k, _)| *k == Kind::PrivateKey)
                    .and_then(|(_, r)| r.find(probe))
                    && stop == emit_to
                {
                    if self.redact {
                        marker(Kind::PrivateKey, out);
                    } else {
                        out.extend_from_slice(&probe[..m.end()]);
                    }
                    self.in_key = Some(self.base);
                    self.pending.drain(..m.end());
                    self.base += m.end();
                    continue;
                }
            }
            return found;
        }
    }

    fn emit_clean(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(bytes);
    }

    /// Drops or passes the first `n` pending bytes (key block content).
    fn emit_raw(&mut self, n: usize, pass: bool, out: &mut Vec<u8>) {
        if pass {
            out.extend_from_slice(&self.pending[..n]);
        }
        if n > 0 {
            self.prev = Some(self.pending[n - 1]);
        }
        self.pending.drain(..n);
        self.base += n;
    }

    /// The pending bytes with one byte of emitted context in front.
    fn context(&self) -> (Vec<u8>, usize) {
        match self.prev {
            Some(p) => {
                let mut v = Vec::with_capacity(self.pending.len() + 1);
                v.push(p);
                v.extend_from_slice(&self.pending);
                (v, 1)
            }
            None => (self.pending.clone(), 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<&'static str> {
        ContentFilter::shared_all()
            .scan(t.as_bytes())
            .iter()
            .map(|f| f.kind.as_str())
            .collect()
    }

    #[test]
    fn each_kind_is_found_and_checked() {
        let cases = [
            ("mail me at jane.doe@example.com today", "email"),
            ("call +1 415 555 0132 now", "phone"),
            ("call (415) 555-0132 now", "phone"),
            ("card 4111 1111 1111 1111 exp", "credit_card"),
            ("iban DE89 3704 0044 0532 0130 00 ok", "iban"),
            ("ssn 123-45-6789 on file", "us_ssn"),
            ("key AKIAQ3EGRQZ7WYR2M4PK here", "aws_access_key"),
            (
                "aws_secret_access_key = \"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\"",
                "aws_secret_key",
            ),
            (
                "token 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 end",
                "github_token",
            ),
            ("glpat-abcdefghij0123456789 x", "gitlab_token"),
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "slack_token",
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "jwt",
            ),
            ("api_key = \"Zq8vR2kP9xLm4TnW7bYc\"", "generic_secret"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----",
                "private_key",
            ),
        ];
        for (t, k) in cases {
            assert_eq!(kinds(t), vec![k], "{t:?}");
        }
        for t in [
            "card 4111 1111 1111 1112 exp",
            "iban DE89 3704 0044 0532 0130 01 ok",
            "ssn 666-45-6789 and 000-12-3456",
            "order 1234567890123",
            "password = \"changeme-please\"",
            "api_key = \"${API_KEY_FROM_ENV}\"",
            "The quick brown fox jumps over the lazy dog.",
        ] {
            assert!(kinds(t).is_empty(), "{t:?}: {:?}", kinds(t));
        }
    }

    #[test]
    fn redaction_keeps_json_valid() {
        let v = serde_json::json!({"text": "key AKIAQ3EGRQZ7WYR2M4PK and -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY----- mail a@b.io",
                                   "password": "Zq8vR2kP9xLm4TnW7bYc"});
        let s = v.to_string();
        let (out, fs) = ContentFilter::shared_all().redact(s.as_bytes());
        assert!(fs.len() >= 3, "{fs:?}");
        let back: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        let text = back["text"].as_str().unwrap();
        assert!(
            text.contains("[REDACTED:aws_access_key]") && text.contains("[REDACTED:private_key]"),
            "{text}"
        );
        assert!(!String::from_utf8_lossy(&out).contains("AKIA"));
    }

    fn stream(input: &[u8], cuts: &[usize], redact: bool) -> (Vec<u8>, Vec<Finding>) {
        let mut sf = StreamFilter::new(ContentFilter::shared_all(), redact);
        let mut out = Vec::new();
        let mut fs = Vec::new();
        let mut at = 0;
        for &c in cuts {
            fs.extend(sf.push(&input[at..c], &mut out));
            at = c;
        }
        fs.extend(sf.push(&input[at..], &mut out));
        fs.extend(sf.finish(&mut out));
        (out, fs)
    }

    #[test]
    fn streams_equal_whole_body_redaction_for_every_split() {
        let input = b"hello a.b@example.org, key AKIAQ3EGRQZ7WYR2M4PK; card 4111-1111-1111-1111.\n\
            data: {\"t\":\"-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oZnqUo4wB2Zqo\\n-----END EC PRIVATE KEY-----\"}\n\
            jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end";
        let (whole, wf) = ContentFilter::shared_all().redact(input);
        for cut in 0..input.len() {
            let (out, fs) = stream(input, &[cut], true);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&whole),
                "cut {cut}"
            );
            assert_eq!(fs.len(), wf.len(), "cut {cut}");
        }
        let every: Vec<usize> = (1..input.len()).collect();
        let (out, _) = stream(input, &every, true);
        assert_eq!(out, whole);
        let (out, fs) = stream(input, &[17, 90], false);
        assert_eq!(out, input.to_vec());
        assert_eq!(fs.len(), wf.len());
    }

    #[test]
    fn a_long_key_block_streams_in_bounded_memory() {
        let mut input = b"start -----BEGIN OPENSSH PRIVATE KEY-----\n".to_vec();
        for _ in 0..20000 {
            input.extend_from_slice(b"AAAAB3NzaC1yc2EAAAADAQABAAABAQC7\n");
        }
        input.extend_from_slice(b"-----END OPENSSH PRIVATE KEY-----\nafter");
        let mut sf = StreamFilter::new(ContentFilter::shared_all(), true);
        let mut out = Vec::new();
        for c in input.chunks(1000) {
            sf.push(c, &mut out);
            assert!(sf.pending.len() <= HOLD + 1000, "{}", sf.pending.len());
        }
        sf.finish(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "start [REDACTED:private_key]\nafter"
        );
        // Unterminated at the end of the stream: still redacted.
        let (out, _) = stream(b"x -----BEGIN PRIVATE KEY-----\nMIIE", &[10], true);
        assert_eq!(out, b"x [REDACTED:private_key]".to_vec());
    }

    #[test]
    fn random_bytes_do_not_panic_and_stay_bounded() {
        let mut x: u64 = 0x243F6A8885A308D3;
        let mut input = Vec::new();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let alphabet = b"aA0 @.-:=_\"'+\n-----BEGINPRIVATE KEY";
            input.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        let (whole, _) = ContentFilter::shared_all().redact(&input);
        let cuts: Vec<usize> = (1..input.len()).step_by(977).collect();
        let (out, _) = stream(&input, &cuts, true);
        assert_eq!(out.len(), whole.len());
    }
}

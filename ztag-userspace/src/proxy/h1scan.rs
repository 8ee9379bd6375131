//! A raw look at HTTP/1 request heads before hyper parses them.
//!
//! hyper normalises two smuggling shapes away before a service sees the
//! headers: it drops `Content-Length` when `Transfer-Encoding` is present,
//! and folds a repeated, equal `Content-Length` into one. What it forwards is
//! then unambiguous, but a front end and a back end that disagree on framing
//! is exactly what request smuggling needs, and such a request is never
//! legitimate (RFC 9112 §6.3 lets a server reject it). So the connection's IO
//! wrapper feeds every byte the client sends through this scanner, which
//! follows HTTP/1 framing (heads, Content-Length bodies, chunked bodies) and
//! flags a head with both headers or with several Content-Length lines. The
//! request is then answered 400 and the connection closed.
//!
//! It also enforces `max_header_bytes` on every request head of the
//! connection (hyper applies its own limit reliably only to the first).
//! Otherwise the scanner never decides what hyper accepts: when it cannot
//! follow the stream (bytes httparse refuses, an upgrade) it stops and
//! leaves the connection to hyper's own checks.

use super::headers::FramingError as Ambiguity;

enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines until an empty one.
    Trailers,
    /// Not following the stream any more.
    Done,
}

/// Follows one connection's request stream.
pub struct H1Scanner {
    state: State,
    buf: Vec<u8>,
    max_head: usize,
}

const MAX_HEADERS: usize = 128;
/// A chunk-size line longer than this is malformed (hyper refuses it too).
const MAX_CHUNK_LINE: usize = 4096;

impl H1Scanner {
    /// A scanner for heads up to `max_head` bytes.
    pub fn new(max_head: usize) -> H1Scanner {
        H1Scanner {
            state: State::Head,
            buf: Vec::new(),
            max_head,
        }
    }

    /// Feeds bytes read from the client; returns the first ambiguity seen.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<Ambiguity> {
        while !data.is_empty() {
            match self.state {
                State::Done => return None,
                State::Body(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::Head => {
                    // Blank lines between requests are tolerated (RFC 9112 §2.2).
                    if self.buf.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            break;
                        }
                        // The usual case: the whole head in one read,
                        // checked where it lies, without a copy.
                        let window = &data[..data.len().min(self.max_head + 4)];
                        if let Some(p) = memchr::memmem::find(window, b"\r\n\r\n") {
                            let (head, rest) = data.split_at(p + 4);
                            data = rest;
                            match self.head(head) {
                                Ok(next) => self.state = next,
                                Err(a) => {
                                    self.state = State::Done;
                                    return Some(a);
                                }
                            }
                            continue;
                        }
                    }
                    let (line, rest) = self.take_until(data, b"\r\n\r\n", self.max_head);
                    data = rest;
                    match line {
                        Take::More => {}
                        // hyper enforces its buffer limit on a connection's
                        // first request but was seen letting a 20 kB head
                        // through on a kept-alive one: refused here, 431.
                        Take::TooLong => {
                            self.state = State::Done;
                            return Some(Ambiguity::HeadTooLarge);
                        }
                        Take::Line => {
                            let head = std::mem::take(&mut self.buf);
                            match self.head(&head) {
                                Ok(next) => self.state = next,
                                Err(a) => {
                                    self.state = State::Done;
                                    return Some(a);
                                }
                            }
                        }
                    }
                }
                State::ChunkSize => {
                    let (line, rest) = self.take_until(data, b"\r\n", MAX_CHUNK_LINE);
                    data = rest;
                    match line {
                        Take::More => {}
                        Take::TooLong => self.state = State::Done,
                        Take::Line => {
                            let l = std::mem::take(&mut self.buf);
                            let hex: Vec<u8> = l
                                .iter()
                                .copied()
                                .take_while(|b| b.is_ascii_hexdigit())
                                .collect();
                            let size = std::str::from_utf8(&hex)
                                .ok()
                                .and_then(|h| u64::from_str_radix(h, 16).ok());
                            self.state = match size {
                                None => State::Done,
                                Some(0) => State::Trailers,
                                Some(n) => State::ChunkData(n),
                            };
                        }
                    }
                }
                State::ChunkEnd => {
                    let (line, rest) = self.take_until(data, b"\r\n", 0);
                    data = rest;
                    match line {
                        Take::More => {}
                        Take::TooLong => self.state = State::Done,
                        Take::Line => {
                            self.buf.clear();
                            self.state = State::ChunkSize;
                        }
                    }
                }
                State::Trailers => {
                    let (line, rest) = self.take_until(data, b"\r\n", self.max_head);
                    data = rest;
                    match line {
                        Take::More => {}
                        Take::TooLong => self.state = State::Done,
                        Take::Line => {
                            let empty = self.buf.len() == 2;
                            self.buf.clear();
                            if empty {
                                self.state = State::Head;
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Appends to `buf` up to and including `end`, which may come after at
    /// most `max` other bytes; returns what is left.
    fn take_until<'d>(&mut self, data: &'d [u8], end: &[u8], max: usize) -> (Take, &'d [u8]) {
        // Search where the terminator could start: it may straddle reads.
        let from = self.buf.len().saturating_sub(end.len() - 1);
        let old = self.buf.len();
        let room = max.saturating_sub(old) + end.len();
        let chunk = &data[..data.len().min(room)];
        self.buf.extend_from_slice(chunk);
        let found = memchr::memmem::find(&self.buf[from..], end).map(|p| from + p + end.len());
        match found {
            Some(stop) => {
                let used = stop - old;
                self.buf.truncate(stop);
                (Take::Line, &data[used..])
            }
            // `max` bytes and then `end` fit; once the buffer holds that
            // many without `end`, no completion can.
            None if self.buf.len() >= max + end.len() => (Take::TooLong, &[]),
            None => (Take::More, &data[chunk.len()..]),
        }
    }

    /// Checks one complete head; returns what follows it.
    fn head(&self, head: &[u8]) -> Result<State, Ambiguity> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper answers these itself (400/431).
            _ => return Ok(State::Done),
        }
        let mut cl = 0usize;
        let mut length = None;
        let mut te: Option<&[u8]> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                // After an upgrade the stream is not HTTP/1 any more.
                return Ok(State::Done);
            }
        }
        if cl > 0 && te.is_some() {
            return Err(Ambiguity::ContentLengthWithTransferEncoding);
        }
        if cl > 1 {
            return Err(Ambiguity::DuplicateContentLength);
        }
        if req.method == Some("CONNECT") {
            return Ok(State::Done);
        }
        Ok(match (te, length) {
            (Some(v), _) => {
                let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    State::ChunkSize
                } else {
                    // hyper refuses a request body it cannot frame.
                    State::Done
                }
            }
            (None, Some(0)) | (None, None) if cl == 0 => State::Head,
            (None, Some(n)) => State::Body(n),
            // A Content-Length that is not a number: hyper answers 400.
            (None, None) => State::Done,
        })
    }
}

enum Take {
    Line,
    More,
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(parts: &[&[u8]]) -> Option<Ambiguity> {
        let mut s = H1Scanner::new(16 * 1024);
        parts.iter().find_map(|p| s.feed(p))
    }

    fn bytewise(data: &[u8]) -> Option<Ambiguity> {
        let mut s = H1Scanner::new(16 * 1024);
        data.chunks(1).find_map(|b| s.feed(b))
    }

    #[test]
    fn the_head_limit_is_the_same_in_one_read_and_byte_by_byte() {
        // max_head counts the head without its final CRLF CRLF.
        for (extra, want) in [(0, None), (1, Some(Ambiguity::HeadTooLarge))] {
            let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
            head.resize(100 + extra, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            let mut whole = H1Scanner::new(100);
            assert_eq!(whole.feed(&head), want, "one read, {extra} over");
            let mut bytes = H1Scanner::new(100);
            assert_eq!(
                head.chunks(1).find_map(|b| bytes.feed(b)),
                want,
                "bytewise, {extra} over"
            );
            // Two requests in one read: the second is checked too.
            let mut two = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            two.extend_from_slice(&head);
            assert_eq!(
                H1Scanner::new(100).feed(&two),
                want,
                "second head, {extra} over"
            );
        }
    }

    #[test]
    fn plain_requests_pass_in_any_split() {
        let data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan_all(&[data]), None);
        assert_eq!(bytewise(data), None);
    }

    #[test]
    fn cl_with_te_is_flagged_in_either_order_and_when_split() {
        let a = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let b = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
        for d in [&a[..], &b[..]] {
            assert_eq!(
                scan_all(&[d]),
                Some(Ambiguity::ContentLengthWithTransferEncoding)
            );
            assert_eq!(
                bytewise(d),
                Some(Ambiguity::ContentLengthWithTransferEncoding)
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_is_flagged_on_any_request_of_the_connection() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Junk: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let small = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan_all(&[big.as_bytes()]), Some(Ambiguity::HeadTooLarge));
        // The second request of a kept-alive connection, in pieces.
        let mut s = H1Scanner::new(16 * 1024);
        assert_eq!(s.feed(small), None);
        let found = big.as_bytes().chunks(1000).find_map(|c| s.feed(c));
        assert_eq!(found, Some(Ambiguity::HeadTooLarge));
        // Just under the limit passes.
        let fits = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Junk: {}\r\n\r\n",
            "a".repeat(16 * 1024 - 60)
        );
        assert_eq!(scan_all(&[small, fits.as_bytes(), small]), None);
    }

    #[test]
    fn duplicate_content_length_is_flagged_even_when_equal() {
        let d = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(scan_all(&[d]), Some(Ambiguity::DuplicateContentLength));
    }

    #[test]
    fn a_smuggled_head_after_a_body_is_found() {
        // The ambiguity hides in the second, pipelined request, after a
        // chunked body whose data looks like a head.
        let d = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n19\r\nContent-Length: 4\r\n\r\nabcd\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            bytewise(d),
            Some(Ambiguity::ContentLengthWithTransferEncoding)
        );
        // Body bytes that look like the ambiguous header are not a head.
        let body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\n\r\nContent-Length: 4\r\nTransfer-Encoding: chunked";
        assert_eq!(scan_all(&[body]), None);
    }

    #[test]
    fn oversized_heads_are_flagged_and_garbage_stops_the_scanner_quietly() {
        let mut s = H1Scanner::new(1024);
        let big = vec![b'a'; 5000];
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nX: "), None);
        assert_eq!(s.feed(&big), Some(Ambiguity::HeadTooLarge));
        assert!(matches!(s.state, State::Done));
        let mut s = H1Scanner::new(1024);
        assert_eq!(s.feed(b"\x00\x01garbage\r\n\r\n"), None);
        assert!(matches!(s.state, State::Done));
    }
}

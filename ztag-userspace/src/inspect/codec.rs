//! Body codecs: where the text to inspect sits in each kind of message.
//!
//! * `llm` requests: OpenAI chat completions (`messages[].content`, string or
//!   parts), OpenAI responses (`instructions`, `input` string or items),
//!   legacy completions (`prompt`), Anthropic messages (`system`,
//!   `messages[].content` string or blocks, `tool_result` contents).
//! * `mcp` messages (JSON-RPC 2.0, single or batch): requests' `tools/call`
//!   and `prompts/get` arguments (every string, recursively); responses'
//!   tool results (`content[].text`, `structuredContent`), resource contents
//!   (`contents[].text`), prompt messages, and tool descriptions of
//!   `tools/list` (tool poisoning).
//! * `text`: the body as UTF-8 (invalid sequences replaced).
//! * SSE framing for streamed responses ([`SseParser`]).

use serde_json::Value;

/// One piece of text with where it came from (a role, or a JSON path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `user`, `system`, `tool`, `assistant`, `arguments`, `result`, …
    pub role: String,
    /// The text.
    pub text: String,
}

/// A body that the route's codec cannot read (refused: what cannot be
/// inspected does not pass).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a shape this codec knows.
    #[error("{0}")]
    Shape(&'static str),
}

fn seg(role: &str, text: &str, out: &mut Vec<Segment>) {
    if !text.trim().is_empty() {
        out.push(Segment {
            role: role.to_owned(),
            text: text.to_owned(),
        });
    }
}

/// Text of an LLM API request (OpenAI or Anthropic).
pub fn llm_request(body: &[u8]) -> Result<Vec<Segment>, CodecError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| CodecError::NotJson(e.to_string()))?;
    let Value::Object(o) = &v else {
        return Err(CodecError::Shape("an LLM request must be a JSON object"));
    };
    let mut out = Vec::new();
    if let Some(s) = o.get("system") {
        content("system", s, &mut out);
    }
    if let Some(s) = o.get("instructions").and_then(Value::as_str) {
        seg("system", s, &mut out);
    }
    if let Some(p) = o.get("prompt") {
        content("user", p, &mut out);
    }
    for key in ["messages", "input"] {
        match o.get(key) {
            Some(Value::String(s)) => seg("user", s, &mut out),
            Some(Value::Array(items)) => {
                for m in items {
                    message(m, &mut out);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One chat message or responses-API item.
fn message(m: &Value, out: &mut Vec<Segment>) {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
    if let Some(c) = m.get("content") {
        content(role, c, out);
    }
    // Responses API items: function_call_output carries a tool result.
    if let Some(s) = m.get("output").and_then(Value::as_str) {
        seg("tool", s, out);
    }
    if let Some(s) = m.get("text").and_then(Value::as_str) {
        seg(role, s, out);
    }
}

/// A content value: a string, or an array of parts/blocks.
fn content(role: &str, c: &Value, out: &mut Vec<Segment>) {
    match c {
        Value::String(s) => seg(role, s, out),
        Value::Array(parts) => {
            for p in parts {
                match p {
                    Value::String(s) => seg(role, s, out),
                    Value::Object(b) => {
                        if let Some(s) = b.get("text").and_then(Value::as_str) {
                            seg(role, s, out);
                        }
                        // Anthropic tool_result blocks nest their content.
                        if b.get("type").and_then(Value::as_str) == Some("tool_result")
                            && let Some(inner) = b.get("content")
                        {
                            content("tool", inner, out);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Parsed JSON-RPC message(s) of an MCP body.
pub fn mcp_messages(body: &[u8]) -> Result<Vec<Value>, CodecError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| CodecError::NotJson(e.to_string()))?;
    match v {
        Value::Array(a) if !a.is_empty() => Ok(a),
        Value::Array(_) => Err(CodecError::Shape("empty JSON-RPC batch")),
        Value::Object(_) => Ok(vec![v]),
        _ => Err(CodecError::Shape(
            "a JSON-RPC message must be an object or a batch",
        )),
    }
}

/// Text an MCP client sends: `tools/call` and `prompts/get` arguments,
/// and results the client returns (sampling, elicitation).
pub fn mcp_request(msg: &Value, out: &mut Vec<Segment>) {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    if matches!(method, "tools/call" | "prompts/get")
        && let Some(args) = msg.pointer("/params/arguments")
    {
        strings("arguments", args, 0, out);
    }
    if let Some(r) = msg.get("result") {
        strings("result", r, 0, out);
    }
}

/// Text an MCP server sends back: tool results, resource contents, prompt
/// messages, tool descriptions.
pub fn mcp_response(msg: &Value, out: &mut Vec<Segment>) {
    let Some(r) = msg.get("result") else {
        return;
    };
    for key in ["content", "contents"] {
        if let Some(Value::Array(items)) = r.get(key) {
            for it in items {
                if let Some(s) = it.get("text").and_then(Value::as_str) {
                    seg("tool", s, out);
                }
                if let Some(s) = it.pointer("/resource/text").and_then(Value::as_str) {
                    seg("resource", s, out);
                }
            }
        }
    }
    if let Some(sc) = r.get("structuredContent") {
        strings("tool", sc, 0, out);
    }
    if let Some(Value::Array(ms)) = r.get("messages") {
        for m in ms {
            if let Some(s) = m.pointer("/content/text").and_then(Value::as_str) {
                seg("prompt", s, out);
            }
        }
    }
    if let Some(Value::Array(tools)) = r.get("tools") {
        for t in tools {
            if let Some(s) = t.get("description").and_then(Value::as_str) {
                seg("tool_description", s, out);
            }
        }
    }
}

/// Every string in `v` (depth-limited: nesting beyond 32 levels is not
/// followed; serde_json already refuses deeper documents).
fn strings(role: &str, v: &Value, depth: u32, out: &mut Vec<Segment>) {
    if depth > 32 {
        return;
    }
    match v {
        Value::String(s) => seg(role, s, out),
        Value::Array(a) => a.iter().for_each(|x| strings(role, x, depth + 1, out)),
        Value::Object(o) => o.values().for_each(|x| strings(role, x, depth + 1, out)),
        _ => {}
    }
}

/// A plain-text body.
pub fn text_request(body: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    seg("text", &String::from_utf8_lossy(body), &mut out);
    out
}

/// Incremental Server-Sent Events framing: bytes in, whole events out.
/// Memory is bounded: an event longer than `max_event` bytes is an error.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    max_event: usize,
}

/// An SSE event longer than the parser's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SSE event longer than {0} bytes")]
pub struct EventTooLong(pub usize);

impl SseParser {
    /// A parser holding at most `max_event` bytes of an unfinished event.
    pub fn new(max_event: usize) -> SseParser {
        SseParser {
            buf: Vec::new(),
            max_event,
        }
    }

    /// Feeds bytes; returns each completed event's raw bytes (with its
    /// terminating blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, EventTooLong> {
        let scan_from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = scan_from;
        while let Some(end) = event_end(&self.buf, i) {
            events.push(self.buf[start..end].to_vec());
            start = end;
            i = end;
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max_event {
            return Err(EventTooLong(self.max_event));
        }
        Ok(events)
    }

    /// What is left at the end of the stream (an unterminated event).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// The end (exclusive) of the first event ending at or after `from`: a
/// blank line, in any of SSE's line-ending styles.
fn event_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        let nl = match b[i] {
            b'\n' => 1,
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let j = i + nl;
        match b.get(j) {
            Some(b'\n') => return Some(j + 1),
            Some(b'\r') if b.get(j + 1) == Some(&b'\n') => return Some(j + 2),
            Some(b'\r') if j + 1 < b.len() => return Some(j + 1),
            _ => i = j,
        }
    }
    None
}

/// The `data:` payload of one event (lines joined with `\n`).
pub fn sse_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        let v = if let Some(v) = line.strip_prefix("data:") {
            v.strip_prefix(' ').unwrap_or(v)
        } else if line == "data" {
            ""
        } else {
            continue;
        };
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(v);
            }
            None => data = Some(v.to_owned()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(v: Vec<Segment>) -> Vec<(String, String)> {
        v.into_iter().map(|s| (s.role, s.text)).collect()
    }

    #[test]
    fn openai_chat_and_responses_and_anthropic() {
        let chat = json!({"model":"m","messages":[
            {"role":"system","content":"be nice"},
            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"tool","content":"tool says"}]});
        assert_eq!(
            texts(llm_request(chat.to_string().as_bytes()).unwrap()),
            vec![
                ("system".into(), "be nice".into()),
                ("user".into(), "hello".into()),
                ("tool".into(), "tool says".into())
            ]
        );
        let resp = json!({"model":"m","instructions":"sys","input":[
            {"role":"user","content":[{"type":"input_text","text":"hi"}]},
            {"type":"function_call_output","call_id":"c","output":"result text"}]});
        assert_eq!(
            texts(llm_request(resp.to_string().as_bytes()).unwrap()),
            vec![
                ("system".into(), "sys".into()),
                ("user".into(), "hi".into()),
                ("tool".into(), "result text".into())
            ]
        );
        let anth = json!({"model":"m","system":[{"type":"text","text":"sys"}],"messages":[
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"from tool"}]}]}]});
        assert_eq!(
            texts(llm_request(anth.to_string().as_bytes()).unwrap()),
            vec![
                ("system".into(), "sys".into()),
                ("tool".into(), "from tool".into())
            ]
        );
        assert!(matches!(
            llm_request(b"not json"),
            Err(CodecError::NotJson(_))
        ));
        assert!(matches!(llm_request(b"[1]"), Err(CodecError::Shape(_))));
    }

    #[test]
    fn mcp_arguments_results_and_descriptions() {
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"q":"find","nested":{"x":["a","b"]}}}});
        let mut out = Vec::new();
        for m in mcp_messages(call.to_string().as_bytes()).unwrap() {
            mcp_request(&m, &mut out);
        }
        assert_eq!(out.len(), 3);
        let res = json!({"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"tool output"},
            {"type":"resource","resource":{"uri":"file:///x","text":"file text"}}],"tools":[{"name":"a","description":"desc"}]}});
        let mut out = Vec::new();
        mcp_response(&res, &mut out);
        assert_eq!(
            texts(out),
            vec![
                ("tool".into(), "tool output".into()),
                ("resource".into(), "file text".into()),
                ("tool_description".into(), "desc".into())
            ]
        );
        assert!(mcp_messages(b"[]").is_err());
        assert!(mcp_messages(b"3").is_err());
    }

    #[test]
    fn sse_events_split_anywhere_are_reassembled() {
        let stream = b"event: message\ndata: {\"a\":1}\n\ndata: line1\ndata: line2\r\n\r\n: comment\n\ndata: last\n\n";
        for cut in 0..stream.len() {
            let mut p = SseParser::new(1024);
            let mut evs = p.push(&stream[..cut]).unwrap();
            evs.extend(p.push(&stream[cut..]).unwrap());
            assert_eq!(evs.len(), 4, "cut at {cut}");
            assert_eq!(sse_data(&evs[0]).as_deref(), Some("{\"a\":1}"));
            assert_eq!(sse_data(&evs[1]).as_deref(), Some("line1\nline2"));
            assert_eq!(sse_data(&evs[2]), None);
            assert!(p.finish().is_empty());
        }
        let mut p = SseParser::new(8);
        assert!(p.push(b"data: 0123456789").is_err());
    }
}

//! The MCP gateway's route configuration (`[gateway.route.mcp]`) and the
//! JSON-RPC rules it enforces; the request path is in `proxy::mcp`.
//!
//! * The route is an OAuth 2.1 resource server (MCP authorization spec):
//!   a request without a valid token gets 401 with
//!   `WWW-Authenticate: Bearer resource_metadata="…"`, and the RFC 9728
//!   metadata is served at `/.well-known/oauth-protected-resource` + the
//!   resource's path. Tokens must name the resource in `aud`.
//! * A request with an `Origin` header not in `allowed_origins` is refused
//!   403 (the transport spec's DNS-rebinding defence).
//! * One JSON-RPC message per POST (MCP 2025-06-18 removed batches: a batch
//!   is refused with -32600), at most `max_message_bytes`; unparsable JSON
//!   is -32700, a malformed message -32600, a method MCP does not define
//!   -32601 — answered by the gateway, never forwarded.
//! * `tools/call` is checked per tool (`tool_check`, `[[…tool]]` rules with
//!   argument-level checks and patterns); `tools/list` answers keep only the
//!   tools the caller may call.

use std::{collections::BTreeMap, time::Duration};

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::authz::policy::{CheckPolicy, RawCheck};

/// Every method of MCP (2024-11-05 … 2026-07-28) a client may send, or a
/// server may send to a client over the streams; anything else is -32601.
pub const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "subscriptions/listen",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "roots/list",
    "sampling/createMessage",
    "elicitation/create",
];

/// JSON-RPC error codes.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object (or a batch).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad params.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The gateway refused the call (authorisation, approval).
    pub const FORBIDDEN: i64 = -32003;
}

/// `[gateway.route.mcp]` as written.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Option<Vec<String>>,
    resource_name: Option<String>,
    server: Option<String>,
    max_message_bytes: Option<usize>,
    allowed_origins: Option<Vec<String>>,
    tool_check: Option<RawCheck>,
    #[serde(default)]
    tool: Vec<RawTool>,
    #[serde(default)]
    servers: Vec<RawServer>,
    tool_separator: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    upstream: String,
    path: String,
}

/// One MCP server behind a federating route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name: the tool-name prefix and `{mcp.server}`.
    pub name: String,
    /// Index into the gateway's upstreams.
    pub upstream: usize,
    /// Its MCP endpoint path.
    pub path: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: String,
    deny: Option<bool>,
    checks: Option<Vec<RawCheck>>,
    allow_args: Option<BTreeMap<String, String>>,
    approval: Option<String>,
    approval_when_args: Option<BTreeMap<String, String>>,
    approval_when_score_above: Option<f32>,
    approval_timeout: Option<String>,
}

/// A per-tool rule.
#[derive(Debug, Clone)]
pub struct ToolRule {
    /// Tool name, or a prefix ending in `*`.
    pub pattern: String,
    /// Never callable.
    pub deny: bool,
    /// FGA checks (may use `{arg.NAME}`), all must allow.
    pub checks: Vec<CheckPolicy>,
    /// Each named argument must be a string matching its pattern.
    pub allow_args: Vec<(String, Regex)>,
    /// The call waits for a human.
    pub approval: bool,
    /// …only when one of these arguments matches, or (either) when the
    /// detector scores the arguments at least this (neither: always).
    pub approval_when_args: Vec<(String, Regex)>,
    /// See `approval_when_args`.
    pub approval_when_score_above: Option<f32>,
    /// Wait for a decision this long (default `agent.approvals.timeout`).
    pub approval_timeout: Option<Duration>,
}

impl ToolRule {
    /// Whether the rule is for `tool`.
    pub fn matches(&self, tool: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(p) => tool.starts_with(p),
            None => self.pattern == tool,
        }
    }

    /// Whether this call needs approval; `score` is the prompt-injection
    /// detector's score of the arguments (asked only when a rule uses it).
    pub fn needs_approval(&self, args: &Value, score: impl FnOnce() -> f32) -> bool {
        if !self.approval {
            return false;
        }
        if self.approval_when_args.is_empty() && self.approval_when_score_above.is_none() {
            return true;
        }
        self.approval_when_args
            .iter()
            .any(|(k, re)| arg_text(args, k).is_some_and(|v| re.is_match(&v)))
            || self.approval_when_score_above.is_some_and(|t| score() >= t)
    }

    /// The first argument pattern that fails, if any.
    pub fn bad_argument(&self, args: &Value) -> Option<&str> {
        self.allow_args
            .iter()
            .find(|(k, re)| !arg_text(args, k).is_some_and(|v| re.is_match(&v)))
            .map(|(k, _)| k.as_str())
    }
}

/// A string or number argument as text.
pub fn arg_text(args: &Value, name: &str) -> Option<String> {
    match args.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `[gateway.route.mcp]` once checked.
#[derive(Debug, Clone)]
pub struct McpRoute {
    /// The resource identifier (tokens' audience).
    pub resource: String,
    /// Path the metadata is served at.
    pub metadata_path: String,
    /// Absolute URL of the metadata.
    pub metadata_url: String,
    /// Authorization servers the metadata names.
    pub authorization_servers: Vec<String>,
    /// Scopes the metadata lists.
    pub scopes_supported: Vec<String>,
    /// Human-readable name.
    pub resource_name: Option<String>,
    /// `{mcp.server}` in checks.
    pub server: String,
    /// Largest JSON-RPC message.
    pub max_message_bytes: usize,
    /// `Origin` values accepted (DNS-rebinding defence: a request with any
    /// other Origin is refused 403; requests without one pass).
    pub allowed_origins: Vec<String>,
    /// The per-tool check.
    pub tool_check: Option<CheckPolicy>,
    /// Per-tool rules, first match wins.
    pub tools: Vec<ToolRule>,
    /// Federation: several servers behind this endpoint (empty: the
    /// route's upstream is the one server, proxied as it is).
    pub servers: Vec<Server>,
    /// Between a server's name and its tool's (`files__read`).
    pub separator: String,
}

/// Placeholders MCP checks may use besides the usual ones.
pub fn check_vars() -> Vec<String> {
    vec!["mcp.server".into(), "mcp.tool".into(), "arg.*".into()]
}

fn regexes(
    key: &str,
    m: Option<BTreeMap<String, String>>,
    problems: &mut Vec<String>,
) -> Vec<(String, Regex)> {
    let mut out = Vec::new();
    for (k, v) in m.unwrap_or_default() {
        match Regex::new(&v) {
            Ok(r) => out.push((k, r)),
            Err(e) => problems.push(format!(
                "{key}.{k}: {v:?} is not a regular expression ({e})"
            )),
        }
    }
    out
}

impl RawMcp {
    /// Checks the table; `route` names the route (default server name).
    pub fn validate(
        self,
        key: &str,
        route: &str,
        upstreams: &[&str],
        problems: &mut Vec<String>,
    ) -> McpRoute {
        let key = format!("{key}.mcp");
        let separator = self.tool_separator.unwrap_or_else(|| "__".into());
        if separator.is_empty()
            || !separator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            problems.push(format!(
                "{key}.tool_separator: {separator:?} must be 1+ of letters, digits, '_', '-', '.', '/'"
            ));
        }
        let mut servers: Vec<Server> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            let sk = format!("{key}.servers[{i}]");
            if s.name.is_empty()
                || s.name.contains(&separator)
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                problems.push(format!(
                    "{sk}.name: {:?} must be letters, digits, '_' or '-', without the separator {separator:?}",
                    s.name
                ));
            }
            if servers.iter().any(|x| x.name == s.name) {
                problems.push(format!("{sk}.name: {:?} is used twice", s.name));
            }
            let upstream = upstreams
                .iter()
                .position(|u| *u == s.upstream)
                .unwrap_or_else(|| {
                    problems.push(format!(
                        "{sk}.upstream: {:?} is not the name of a [[gateway.upstream]]",
                        s.upstream
                    ));
                    0
                });
            if !s.path.starts_with('/') {
                problems.push(format!("{sk}.path: {:?} must start with '/'", s.path));
            }
            servers.push(Server {
                name: s.name.clone(),
                upstream,
                path: s.path.clone(),
            });
        }
        if servers.len() == 1 {
            problems.push(format!(
                "{key}.servers: federation needs two servers or more (one server: use the route's upstream)"
            ));
        }
        let (metadata_path, metadata_url) = match reqwest::Url::parse(&self.resource) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => {
                let path = u.path().trim_end_matches('/');
                let mp = format!("/.well-known/oauth-protected-resource{path}");
                let mut m = u.clone();
                m.set_path(&mp);
                m.set_query(None);
                (mp, m.to_string())
            }
            _ => {
                problems.push(format!(
                    "{key}.resource: {:?} must be an http(s) URL without a fragment (the MCP server's canonical URI)",
                    self.resource
                ));
                (String::new(), String::new())
            }
        };
        if self.authorization_servers.is_empty() {
            problems.push(format!(
                "{key}.authorization_servers: name at least one (RFC 9728 metadata lists them for clients)"
            ));
        }
        for (i, a) in self.authorization_servers.iter().enumerate() {
            if reqwest::Url::parse(a)
                .map(|u| u.scheme() != "https" && u.scheme() != "http")
                .unwrap_or(true)
            {
                problems.push(format!(
                    "{key}.authorization_servers[{i}]: {a:?} is not a URL"
                ));
            }
        }
        let vars = check_vars();
        let tool_check = self
            .tool_check
            .and_then(|c| match CheckPolicy::compile(&c, &vars) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(format!("{key}.tool_check: {e}"));
                    None
                }
            });
        let mut tools = Vec::new();
        for (i, t) in self.tool.into_iter().enumerate() {
            let tk = format!("{key}.tool[{i}]");
            if t.name.is_empty() || t.name[..t.name.len().saturating_sub(1)].contains('*') {
                problems.push(format!(
                    "{tk}.name: {:?} must be a tool name or a prefix ending in '*'",
                    t.name
                ));
            }
            let mut checks = Vec::new();
            for (j, c) in t.checks.unwrap_or_default().iter().enumerate() {
                match CheckPolicy::compile(c, &vars) {
                    Ok(c) => checks.push(c),
                    Err(e) => problems.push(format!("{tk}.checks[{j}]: {e}")),
                }
            }
            let approval = match t.approval.as_deref() {
                None | Some("none") => false,
                Some("required") => true,
                Some(o) => {
                    problems.push(format!(
                        "{tk}.approval: {o:?} is not \"required\" or \"none\""
                    ));
                    false
                }
            };
            let approval_when_args = regexes(
                &format!("{tk}.approval_when_args"),
                t.approval_when_args,
                problems,
            );
            if !approval && !approval_when_args.is_empty() {
                problems.push(format!(
                    "{tk}.approval_when_args: only with approval = \"required\""
                ));
            }
            match t.approval_when_score_above {
                Some(s) if !approval => problems.push(format!(
                    "{tk}.approval_when_score_above: only with approval = \"required\" (got {s})"
                )),
                Some(s) if !(0.0..=1.0).contains(&s) => problems.push(format!(
                    "{tk}.approval_when_score_above: {s} is not a score between 0 and 1"
                )),
                _ => {}
            }
            let approval_timeout =
                t.approval_timeout
                    .and_then(|s| match humantime::parse_duration(&s) {
                        Ok(d) if !d.is_zero() => Some(d),
                        _ => {
                            problems
                                .push(format!("{tk}.approval_timeout: {s:?} is not a duration"));
                            None
                        }
                    });
            tools.push(ToolRule {
                pattern: t.name,
                deny: t.deny.unwrap_or(false),
                checks,
                allow_args: regexes(&format!("{tk}.allow_args"), t.allow_args, problems),
                approval,
                approval_when_args,
                approval_when_score_above: t.approval_when_score_above,
                approval_timeout,
            });
        }
        let max_message_bytes = self.max_message_bytes.unwrap_or(1 << 20);
        if max_message_bytes < 1024 {
            problems.push(format!("{key}.max_message_bytes: at least 1024"));
        }
        McpRoute {
            resource: self.resource,
            metadata_path,
            metadata_url,
            authorization_servers: self.authorization_servers,
            scopes_supported: self.scopes_supported.unwrap_or_default(),
            resource_name: self.resource_name,
            server: self.server.unwrap_or_else(|| route.to_string()),
            max_message_bytes,
            allowed_origins: self
                .allowed_origins
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            tool_check,
            tools,
            servers,
            separator,
        }
    }
}

impl McpRoute {
    /// The RFC 9728 document.
    pub fn metadata(&self) -> Value {
        let mut m = json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
        });
        if !self.scopes_supported.is_empty() {
            m["scopes_supported"] = json!(self.scopes_supported);
        }
        if let Some(n) = &self.resource_name {
            m["resource_name"] = json!(n);
        }
        m
    }

    /// The `WWW-Authenticate` value for a 401/403 of this route: the
    /// authn module's challenge plus `resource_metadata`.
    pub fn challenge(&self, base: &http::HeaderValue) -> http::HeaderValue {
        let b = base.to_str().unwrap_or("Bearer");
        let v = if b == "Bearer" {
            format!("Bearer resource_metadata=\"{}\"", self.metadata_url)
        } else {
            format!("{b}, resource_metadata=\"{}\"", self.metadata_url)
        };
        http::HeaderValue::from_str(&v).unwrap_or_else(|_| base.clone())
    }

    /// Whether the token was issued for this resource (`aud`).
    pub fn audience_ok(&self, claims: &serde_json::Map<String, Value>) -> bool {
        let want = self.resource.trim_end_matches('/');
        match claims.get("aud") {
            Some(Value::String(a)) => a.trim_end_matches('/') == want,
            Some(Value::Array(a)) => a
                .iter()
                .any(|x| x.as_str().is_some_and(|s| s.trim_end_matches('/') == want)),
            _ => false,
        }
    }

    /// Whether a request's `Origin` header (if any) is acceptable.
    pub fn origin_ok(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                self.allowed_origins.contains(&o)
            }
        }
    }

    /// Federation: the server and the server's own tool name of a
    /// prefixed tool name.
    pub fn split_tool<'a>(&self, name: &'a str) -> Option<(&Server, &'a str)> {
        let (s, t) = name.split_once(self.separator.as_str())?;
        let server = self.servers.iter().find(|x| x.name == s)?;
        (!t.is_empty()).then_some((server, t))
    }

    /// The rule for `tool`, if any.
    pub fn rule(&self, tool: &str) -> Option<&ToolRule> {
        self.tools.iter().find(|r| r.matches(tool))
    }
}

/// What a POSTed message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A request (has an id).
    Request {
        /// Its id.
        id: Value,
        /// Its method.
        method: String,
    },
    /// A notification.
    Notification {
        /// Its method.
        method: String,
    },
    /// A response to a server's request.
    Response {
        /// Its id.
        id: Value,
    },
}

/// A refused message: the HTTP status and the JSON-RPC error body.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// JSON-RPC error response.
    pub body: Value,
}

/// A JSON-RPC error response.
pub fn error(id: &Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut e = json!({"code": code, "message": message.into()});
    if let Some(d) = data {
        e["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": e})
}

/// Parses one POSTed message and says what it is.
pub fn classify(body: &[u8]) -> Result<(Value, Kind), Refusal> {
    let refuse = |status, id: &Value, code, msg: String| Refusal {
        status,
        body: error(id, code, msg, None),
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            400,
            &Value::Null,
            code::PARSE_ERROR,
            format!("parse error: {e}"),
        )
    })?;
    let obj = match &v {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(refuse(
                400,
                &Value::Null,
                code::INVALID_REQUEST,
                "JSON-RPC batches are not supported (MCP sends one message per POST)".into(),
            ));
        }
        _ => {
            return Err(refuse(
                400,
                &Value::Null,
                code::INVALID_REQUEST,
                "a JSON-RPC message is an object".into(),
            ));
        }
    };
    let id = obj.get("id").cloned();
    let id_shown = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(refuse(
            400,
            &id_shown,
            code::INVALID_REQUEST,
            "\"jsonrpc\" must be \"2.0\"".into(),
        ));
    }
    if let Some(i) = &id
        && !matches!(i, Value::String(_) | Value::Number(_))
    {
        return Err(refuse(
            400,
            &Value::Null,
            code::INVALID_REQUEST,
            "\"id\" must be a string or a number".into(),
        ));
    }
    let kind = match (obj.get("method"), id) {
        (Some(Value::String(m)), Some(id)) => Kind::Request {
            id,
            method: m.clone(),
        },
        (Some(Value::String(m)), None) => Kind::Notification { method: m.clone() },
        (Some(_), _) => {
            return Err(refuse(
                400,
                &id_shown,
                code::INVALID_REQUEST,
                "\"method\" must be a string".into(),
            ));
        }
        (None, Some(id)) if obj.contains_key("result") ^ obj.contains_key("error") => {
            Kind::Response { id }
        }
        _ => {
            return Err(refuse(
                400,
                &id_shown,
                code::INVALID_REQUEST,
                "neither a request, a notification nor a response".into(),
            ));
        }
    };
    if let Some(p) = obj.get("params")
        && !matches!(p, Value::Object(_) | Value::Array(_))
    {
        return Err(refuse(
            400,
            &id_shown,
            code::INVALID_REQUEST,
            "\"params\" must be an object".into(),
        ));
    }
    if let Kind::Request { method, id } = &kind
        && !KNOWN_METHODS.contains(&method.as_str())
    {
        return Err(Refusal {
            status: 200,
            body: error(
                id,
                code::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
                None,
            ),
        });
    }
    Ok((v, kind))
}

/// The `tools/call` target: name and arguments (`{}` when absent).
pub fn tool_call(msg: &Value) -> Result<(String, Value), String> {
    let name = msg
        .pointer("/params/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("tools/call needs params.name (a string)")?;
    let args = match msg.pointer("/params/arguments") {
        None | Some(Value::Null) => json!({}),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => return Err("tools/call params.arguments must be an object".into()),
    };
    Ok((name.to_string(), args))
}

/// The values MCP check templates read.
pub fn captures(server: &str, tool: &str, args: &Value) -> Vec<(String, String)> {
    let mut c = vec![
        ("mcp.server".to_string(), server.to_string()),
        ("mcp.tool".to_string(), tool.to_string()),
    ];
    if let Value::Object(o) = args {
        for k in o.keys() {
            if let Some(v) = arg_text(args, k) {
                c.push((format!("arg.{k}"), v));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(extra: &str) -> (McpRoute, Vec<String>) {
        let raw: RawMcp = toml::from_str(&format!(
            "resource = \"https://gw.example.com/mcp\"\nauthorization_servers = [\"https://idp.example.com\"]\n{extra}"
        ))
        .unwrap();
        let mut p = Vec::new();
        let r = raw.validate("gateway.route[0]", "files", &["a", "b"], &mut p);
        (r, p)
    }

    #[test]
    fn metadata_follows_rfc_9728() {
        let (r, p) = route("scopes_supported = [\"mcp:tools\"]");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            r.metadata_url,
            "https://gw.example.com/.well-known/oauth-protected-resource/mcp"
        );
        let m = r.metadata();
        assert_eq!(m["resource"], "https://gw.example.com/mcp");
        assert_eq!(m["authorization_servers"][0], "https://idp.example.com");
        assert_eq!(m["scopes_supported"][0], "mcp:tools");
        let c = r.challenge(&http::HeaderValue::from_static("Bearer"));
        assert_eq!(
            c,
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        let mut claims = serde_json::Map::new();
        claims.insert(
            "aud".into(),
            json!(["other", "https://gw.example.com/mcp/"]),
        );
        assert!(r.audience_ok(&claims));
        claims.insert("aud".into(), json!("https://gw.example.com/other"));
        assert!(!r.audience_ok(&claims));
        assert_eq!(r.server, "files");
    }

    #[test]
    fn tool_rules_validate_and_match() {
        let (r, p) = route(
            r#"
[tool_check]
user = "user:{jwt.sub}"
relation = "can_call"
object = "tool:{mcp.server}/{mcp.tool}"
[[tool]]
name = "delete_*"
approval = "required"
approval_when_args = { path = "^/etc/" }
allow_args = { path = "^/" }
[[tool]]
name = "read_file"
checks = [{ user = "user:{jwt.sub}", relation = "reader", object = "dir:{arg.dir}" }]
[[tool]]
name = "send_*"
approval = "required"
approval_when_score_above = 0.3
"#,
        );
        assert!(p.is_empty(), "{p:?}");
        let s = r.rule("send_mail").unwrap();
        assert!(s.needs_approval(&json!({}), || 0.31));
        assert!(!s.needs_approval(&json!({}), || 0.29));
        let d = r.rule("delete_file").unwrap();
        assert!(d.needs_approval(&json!({"path": "/etc/passwd"}), || 0.0));
        assert!(!d.needs_approval(&json!({"path": "/tmp/x"}), || 1.0));
        assert_eq!(d.bad_argument(&json!({"path": "relative"})), Some("path"));
        assert_eq!(d.bad_argument(&json!({})), Some("path"));
        assert_eq!(d.bad_argument(&json!({"path": "/x"})), None);
        assert!(r.rule("read_file").is_some() && r.rule("echo").is_none());
        let (_, p) = route(
            r#"
[tool_check]
user = "user:{jwt.sub}"
relation = "can_call"
object = "tool:{mcp.nope}"
[[tool]]
name = "a*b"
approval = "maybe"
allow_args = { x = "(" }
approval_when_score_above = 1.5
"#,
        );
        let all = p.join("\n");
        for n in [
            "tool_check",
            "tool[0].name",
            "tool[0].approval",
            "tool[0].allow_args.x",
            "tool[0].approval_when_score_above",
        ] {
            assert!(all.contains(n), "{n}: {all}");
        }
    }

    #[test]
    fn messages_are_classified_and_refused_as_json_rpc_says() {
        let r = |b: &str| classify(b.as_bytes());
        let e = r("{nope").unwrap_err();
        assert_eq!((e.status, &e.body["error"]["code"]), (400, &json!(-32700)));
        assert_eq!(e.body["id"], Value::Null);
        let e = r(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err();
        assert_eq!(e.body["error"]["code"], -32600);
        let e = r(r#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#).unwrap_err();
        assert_eq!(
            (e.body["error"]["code"].clone(), e.body["id"].clone()),
            (json!(-32600), json!(7))
        );
        let e = r(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).unwrap_err();
        assert_eq!(e.body["error"]["code"], -32600);
        let e = r(r#"{"jsonrpc":"2.0","id":"a","method":"admin/shutdown"}"#).unwrap_err();
        assert_eq!(
            (e.status, e.body["error"]["code"].clone()),
            (200, json!(-32601))
        );
        assert_eq!(e.body["id"], "a");
        let e = r(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}"#).unwrap_err();
        assert_eq!(e.body["error"]["code"], -32600);
        let (_, k) =
            r(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}"#)
                .unwrap();
        assert_eq!(
            k,
            Kind::Request {
                id: json!(3),
                method: "tools/call".into()
            }
        );
        let (_, k) = r(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(k, Kind::Notification { .. }));
        let (_, k) = r(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#).unwrap();
        assert_eq!(k, Kind::Response { id: json!(9) });
        assert!(r(r#"{"jsonrpc":"2.0","id":9,"result":{},"error":{}}"#).is_err());
    }

    #[test]
    fn tool_calls_and_captures() {
        let m =
            json!({"params": {"name": "read_file", "arguments": {"path": "/a", "n": 2, "o": {}}}});
        let (n, a) = tool_call(&m).unwrap();
        assert_eq!(n, "read_file");
        let c = captures("files", &n, &a);
        assert!(c.contains(&("arg.path".into(), "/a".into())));
        assert!(c.contains(&("arg.n".into(), "2".into())));
        assert!(!c.iter().any(|(k, _)| k == "arg.o"));
        assert!(tool_call(&json!({"params": {}})).is_err());
        assert!(tool_call(&json!({"params": {"name": "x", "arguments": [1]}})).is_err());
    }
}

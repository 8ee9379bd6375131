//! `[inspect]` (global) and the per-route inspection keys of
//! `[[gateway.route]]`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[inspect]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInspect {
    model_file: Option<PathBuf>,
    flag_header: Option<String>,
    max_sse_event_bytes: Option<usize>,
    cache_entries: Option<u64>,
}

/// Validated `[inspect]`.
#[derive(Debug, Clone)]
pub struct InspectConfig {
    /// Detector weights instead of the compiled-in ones.
    pub model_file: Option<PathBuf>,
    /// Header a `flag` action adds to the upstream request.
    pub flag_header: http::HeaderName,
    /// Longest SSE event an inspected stream may carry (bounded memory).
    pub max_sse_event_bytes: usize,
    /// Detector verdicts kept for texts seen again (0: no cache).
    pub cache_entries: u64,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            model_file: None,
            flag_header: http::HeaderName::from_static("x-ztag-inspect"),
            max_sse_event_bytes: 1 << 20,
            cache_entries: 65536,
        }
    }
}

impl RawInspect {
    /// Validates; problems are `inspect.key: reason` lines.
    pub fn validate(self, base: &Path, problems: &mut Vec<String>) -> InspectConfig {
        let mut c = InspectConfig {
            model_file: self.model_file.map(|p| base.join(p)),
            ..Default::default()
        };
        if let Some(h) = self.flag_header {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => c.flag_header = n,
                Err(_) => problems.push(format!("inspect.flag_header: {h:?} is not a header name")),
            }
        }
        if let Some(n) = self.cache_entries {
            c.cache_entries = n;
        }
        if let Some(n) = self.max_sse_event_bytes {
            if n < 1024 {
                problems.push("inspect.max_sse_event_bytes: must be at least 1024".into());
            } else {
                c.max_sse_event_bytes = n;
            }
        }
        c
    }
}

/// Where a route looks for instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// OpenAI / Anthropic API requests.
    Llm,
    /// MCP JSON-RPC: requests' arguments, and responses' results (indirect
    /// injection).
    Mcp,
    /// The whole body as text.
    Text,
}

impl Mode {
    /// Parses `llm`, `mcp`, `text`.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "llm" => Mode::Llm,
            "mcp" => Mode::Mcp,
            "text" => Mode::Text,
            _ => return None,
        })
    }

    /// The config spelling (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Llm => "llm",
            Mode::Mcp => "mcp",
            Mode::Text => "text",
        }
    }
}

/// What a detection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse: 403 with the category (a JSON-RPC error for MCP).
    Block,
    /// Pass, with a header to the upstream and a log line.
    Flag,
    /// Pass; log line and metrics only.
    Log,
}

impl Action {
    /// Parses `block`, `flag`, `log`.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "block" => Action::Block,
            "flag" => Action::Flag,
            "log" => Action::Log,
            _ => return None,
        })
    }

    /// The config spelling (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Flag => "flag",
            Action::Log => "log",
        }
    }
}

/// What the response filter does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    /// Replace it with `[REDACTED:<kind>]`.
    Redact,
    /// Do not deliver the response (502); a stream already under way is
    /// cut at the finding.
    Block,
    /// Deliver unchanged; log line and metrics.
    Log,
}

impl FilterAction {
    /// Parses `redact`, `block`, `log`.
    pub fn parse(s: &str) -> Option<FilterAction> {
        Some(match s {
            "redact" => FilterAction::Redact,
            "block" => FilterAction::Block,
            "log" => FilterAction::Log,
            _ => return None,
        })
    }

    /// The config spelling (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Redact => "redact",
            FilterAction::Block => "block",
            FilterAction::Log => "log",
        }
    }
}

/// A route's request inspection.
#[derive(Debug, Clone, Copy)]
pub struct RouteInspect {
    /// Where to look.
    pub mode: Mode,
    /// What a detection does.
    pub action: Action,
    /// Score threshold instead of the model's.
    pub threshold: Option<f32>,
}

/// A route's response filter.
#[derive(Debug, Clone)]
pub struct RouteFilter {
    /// What a finding does.
    pub action: FilterAction,
    /// Kinds looked for (empty: every kind).
    pub kinds: Vec<super::content::Kind>,
}

/// The per-route keys as written.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct RawRouteInspect {
    /// `inspect = "llm" | "mcp" | "text"`.
    pub inspect: Option<String>,
    /// `inspect_action = "block" | "flag" | "log"` (default block).
    pub inspect_action: Option<String>,
    /// `inspect_threshold = 0.0..1.0`.
    pub inspect_threshold: Option<f32>,
    /// `response_filter = "redact" | "block" | "log"`.
    pub response_filter: Option<String>,
    /// `response_filter_kinds = ["email", "aws_access_key", …]`.
    pub response_filter_kinds: Option<Vec<String>>,
}

impl RawRouteInspect {
    /// Validates a route's keys (`key` is `gateway.route[i]`).
    pub fn validate(
        &self,
        key: &str,
        problems: &mut Vec<String>,
    ) -> (Option<RouteInspect>, Option<RouteFilter>) {
        let inspect = self.inspect.as_deref().and_then(|m| match Mode::parse(m) {
            Some(mode) => Some(mode),
            None => {
                problems.push(format!("{key}.inspect: {m:?} is not one of llm, mcp, text"));
                None
            }
        });
        let action = match self.inspect_action.as_deref() {
            None => Action::Block,
            Some(a) => Action::parse(a).unwrap_or_else(|| {
                problems.push(format!(
                    "{key}.inspect_action: {a:?} is not one of block, flag, log"
                ));
                Action::Block
            }),
        };
        if let Some(t) = self.inspect_threshold
            && !(0.0..=1.0).contains(&t)
        {
            problems.push(format!(
                "{key}.inspect_threshold: {t} is not between 0 and 1"
            ));
        }
        if inspect.is_none() && (self.inspect_action.is_some() || self.inspect_threshold.is_some())
        {
            problems.push(format!("{key}: inspect_action/inspect_threshold need inspect = \"llm\", \"mcp\" or \"text\""));
        }
        let filter_action =
            self.response_filter
                .as_deref()
                .and_then(|a| match FilterAction::parse(a) {
                    Some(f) => Some(f),
                    None => {
                        problems.push(format!(
                            "{key}.response_filter: {a:?} is not one of redact, block, log"
                        ));
                        None
                    }
                });
        let mut kinds = Vec::new();
        for (j, k) in self.response_filter_kinds.iter().flatten().enumerate() {
            match super::content::Kind::parse(k) {
                Some(k) => kinds.push(k),
                None => problems.push(format!(
                    "{key}.response_filter_kinds[{j}]: {k:?} is not a kind (known: {})",
                    super::content::Kind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if filter_action.is_none() && self.response_filter_kinds.is_some() {
            problems.push(format!(
                "{key}.response_filter_kinds: needs response_filter"
            ));
        }
        (
            inspect.map(|mode| RouteInspect {
                mode,
                action,
                threshold: self.inspect_threshold,
            }),
            filter_action.map(|action| RouteFilter { action, kinds }),
        )
    }
}

//! The OpenFGA modelling language (schema 1.1) → [`AuthorizationModel`],
//! and back ([`to_dsl`]).
//!
//! ```text
//! model
//!   schema 1.1
//! type user
//! type document
//!   relations
//!     define owner: [user]
//!     define viewer: [user, user:*, group#member with cond] or owner or viewer from parent
//! condition cond(x: int, l: list<string>) {
//!   x < 100 && "a" in l
//! }
//! ```
//!
//! One operator kind per level (`a or b and c` needs parentheses), `but not`
//! takes one operand on each side. Comments start with `#` at the start of a
//! line or after whitespace. Modular models (`fga.mod` + `module` files with
//! `extend type`) are read by [`parse_modular`].

use std::{collections::BTreeMap, path::Path};

use super::model::{
    AuthorizationModel, Condition, ConditionParamTypeRef, Difference, DirectUserset, Metadata,
    ObjectRelation, RelationMetadata, RelationReference, SourceInfo, TupleToUserset,
    TypeDefinition, Userset, Usersets, Wildcard,
};

/// A syntax error with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct DslError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, column: usize, message: impl Into<String>) -> DslError {
    DslError {
        line,
        column,
        message: message.into(),
    }
}

/// Strip a comment: `#` at the start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_ident_char)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrack,
    RBrack,
    LParen,
    RParen,
    Comma,
    Hash,
    Colon,
    Star,
    Ident(String),
}

fn tokenize(s: &str, line: usize, col0: usize) -> Result<Vec<(Tok, usize)>, DslError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = col0 + i;
        let t = match c {
            ' ' | '\t' | '\r' => {
                i += 1;
                continue;
            }
            '[' => Tok::LBrack,
            ']' => Tok::RBrack,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '#' => Tok::Hash,
            ':' => Tok::Colon,
            '*' => Tok::Star,
            c if is_ident_char(c) => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                out.push((Tok::Ident(chars[start..i].iter().collect()), col));
                continue;
            }
            other => return Err(err(line, col, format!("unexpected character '{other}'"))),
        };
        out.push((t, col));
        i += 1;
    }
    Ok(out)
}

struct ExprParser<'a> {
    toks: &'a [(Tok, usize)],
    pos: usize,
    line: usize,
    end_col: usize,
    direct: Option<Vec<RelationReference>>,
}

#[derive(PartialEq, Clone, Copy, Debug)]
enum Op {
    Or,
    And,
    ButNot,
}

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }
    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end_col, |(_, c)| *c)
    }
    fn ident(&mut self, what: &str) -> Result<String, DslError> {
        match self.toks.get(self.pos) {
            Some((Tok::Ident(s), _)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            _ => Err(err(self.line, self.col(), format!("expected {what}"))),
        }
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), DslError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(err(self.line, self.col(), format!("expected {what}")))
        }
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == kw)
    }

    fn op(&mut self) -> Result<Option<Op>, DslError> {
        if self.is_kw("or") {
            self.pos += 1;
            Ok(Some(Op::Or))
        } else if self.is_kw("and") {
            self.pos += 1;
            Ok(Some(Op::And))
        } else if self.is_kw("but") {
            self.pos += 1;
            if !self.is_kw("not") {
                return Err(err(self.line, self.col(), "expected 'not' after 'but'"));
            }
            self.pos += 1;
            Ok(Some(Op::ButNot))
        } else {
            Ok(None)
        }
    }

    fn expr(&mut self) -> Result<Userset, DslError> {
        let first = self.operand()?;
        let mut items = vec![first];
        let mut kind: Option<Op> = None;
        loop {
            let col = self.col();
            let Some(op) = self.op()? else { break };
            match kind {
                None => kind = Some(op),
                Some(Op::ButNot) => {
                    return Err(err(
                        self.line,
                        col,
                        "'but not' takes one operand; use parentheses to combine it with other operators",
                    ));
                }
                Some(k) if k != op => {
                    return Err(err(
                        self.line,
                        col,
                        "mixing operators at one level is ambiguous; use parentheses",
                    ));
                }
                _ => {}
            }
            if self.peek() == Some(&Tok::LBrack) {
                return Err(err(
                    self.line,
                    self.col(),
                    "direct type restrictions '[...]' must come first in a definition or group",
                ));
            }
            items.push(self.operand()?);
        }
        Ok(match kind {
            None => items.pop().expect("one operand"),
            Some(Op::Or) => Userset {
                union: Some(Usersets { child: items }),
                ..Default::default()
            },
            Some(Op::And) => Userset {
                intersection: Some(Usersets { child: items }),
                ..Default::default()
            },
            Some(Op::ButNot) => {
                let subtract = items.pop().expect("two");
                let base = items.pop().expect("two");
                Userset {
                    difference: Some(Box::new(Difference { base, subtract })),
                    ..Default::default()
                }
            }
        })
    }

    fn operand(&mut self) -> Result<Userset, DslError> {
        match self.peek() {
            Some(Tok::LBrack) => {
                let col = self.col();
                self.pos += 1;
                if self.direct.is_some() {
                    return Err(err(
                        self.line,
                        col,
                        "direct type restrictions '[...]' may appear only once in a relation",
                    ));
                }
                let mut refs = Vec::new();
                loop {
                    let ty = self.ident("a type name")?;
                    let mut r = RelationReference {
                        type_name: ty,
                        ..Default::default()
                    };
                    match self.peek() {
                        Some(Tok::Colon) => {
                            self.pos += 1;
                            self.expect(Tok::Star, "'*' after ':' (a wildcard is 'type:*')")?;
                            r.wildcard = Some(Wildcard {});
                        }
                        Some(Tok::Hash) => {
                            self.pos += 1;
                            r.relation = Some(self.ident("a relation name after '#'")?);
                        }
                        _ => {}
                    }
                    if self.is_kw("with") {
                        self.pos += 1;
                        r.condition = self.ident("a condition name after 'with'")?;
                    }
                    refs.push(r);
                    match self.peek() {
                        Some(Tok::Comma) => self.pos += 1,
                        Some(Tok::RBrack) => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(err(self.line, self.col(), "expected ',' or ']'")),
                    }
                }
                self.direct = Some(refs);
                Ok(Userset {
                    this: Some(DirectUserset {}),
                    ..Default::default()
                })
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Some(Tok::Ident(s)) if !matches!(s.as_str(), "or" | "and" | "but" | "from") => {
                let name = s.clone();
                self.pos += 1;
                if self.is_kw("from") {
                    self.pos += 1;
                    let ts = self.ident("a relation name after 'from'")?;
                    return Ok(Userset {
                        tuple_to_userset: Some(TupleToUserset {
                            tupleset: ObjectRelation {
                                object: String::new(),
                                relation: ts,
                            },
                            computed_userset: ObjectRelation {
                                object: String::new(),
                                relation: name,
                            },
                        }),
                        ..Default::default()
                    });
                }
                Ok(Userset {
                    computed_userset: Some(ObjectRelation {
                        object: String::new(),
                        relation: name,
                    }),
                    ..Default::default()
                })
            }
            _ => Err(err(
                self.line,
                self.col(),
                "expected '[', '(' or a relation name",
            )),
        }
    }
}

/// Parse a relation definition's right-hand side: the rewrite and the
/// direct type restrictions.
fn parse_rewrite(
    text: &str,
    line: usize,
    col0: usize,
) -> Result<(Userset, Vec<RelationReference>), DslError> {
    let toks = tokenize(text, line, col0)?;
    if toks.is_empty() {
        return Err(err(line, col0, "a relation needs a definition after ':'"));
    }
    let mut p = ExprParser {
        toks: &toks,
        pos: 0,
        line,
        end_col: col0 + text.len(),
        direct: None,
    };
    let u = p.expr()?;
    if p.pos != toks.len() {
        return Err(err(line, p.col(), "unexpected input after the definition"));
    }
    Ok((u, p.direct.unwrap_or_default()))
}

fn param_type(s: &str, line: usize, col: usize) -> Result<ConditionParamTypeRef, DslError> {
    let s = s.trim();
    let simple = |n: &str| ConditionParamTypeRef {
        type_name: n.to_string(),
        generic_types: vec![],
    };
    let generic = |outer: &str, inner: &str| -> Result<ConditionParamTypeRef, DslError> {
        Ok(ConditionParamTypeRef {
            type_name: outer.to_string(),
            generic_types: vec![param_type(inner, line, col)?],
        })
    };
    if let Some(inner) = s.strip_prefix("list<").and_then(|x| x.strip_suffix('>')) {
        return generic("TYPE_NAME_LIST", inner);
    }
    if let Some(inner) = s.strip_prefix("map<").and_then(|x| x.strip_suffix('>')) {
        return generic("TYPE_NAME_MAP", inner);
    }
    Ok(simple(match s {
        "any" => "TYPE_NAME_ANY",
        "bool" => "TYPE_NAME_BOOL",
        "string" => "TYPE_NAME_STRING",
        "int" => "TYPE_NAME_INT",
        "uint" => "TYPE_NAME_UINT",
        "double" => "TYPE_NAME_DOUBLE",
        "duration" => "TYPE_NAME_DURATION",
        "timestamp" => "TYPE_NAME_TIMESTAMP",
        "ipaddress" => "TYPE_NAME_IPADDRESS",
        other => {
            return Err(err(
                line,
                col,
                format!(
                    "unknown parameter type '{other}' (use any, bool, string, int, uint, double, duration, timestamp, ipaddress, list<T>, map<T>)"
                ),
            ));
        }
    }))
}

/// What one file declares (a model or a module).
#[derive(Default)]
struct Parsed {
    module: Option<String>,
    schema: Option<String>,
    types: Vec<(TypeDefinition, bool, usize)>,
    conditions: Vec<(Condition, usize)>,
}

fn parse_file(dsl: &str) -> Result<Parsed, DslError> {
    let lines: Vec<&str> = dsl.lines().collect();
    let mut out = Parsed::default();
    let mut i = 0;
    let mut header_done = false;
    // The current type: index into out.types.
    let mut cur: Option<usize> = None;
    let mut in_relations = false;
    while i < lines.len() {
        let ln = i + 1;
        let raw = lines[i];
        let line = strip_comment(raw);
        let trimmed = line.trim();
        let col = line.len() - line.trim_start().len() + 1;
        i += 1;
        if trimmed.is_empty() {
            continue;
        }
        let mut words = trimmed.split_whitespace();
        let first = words.next().unwrap_or("");
        if !header_done {
            match first {
                "model" => {
                    if words.next().is_some() {
                        return Err(err(ln, col, "unexpected input after 'model'"));
                    }
                    // `schema 1.1` on a following line.
                    loop {
                        let Some(next) = lines.get(i) else {
                            return Err(err(ln, col, "expected 'schema 1.1' after 'model'"));
                        };
                        i += 1;
                        let t = strip_comment(next).trim();
                        if t.is_empty() {
                            continue;
                        }
                        let mut w = t.split_whitespace();
                        if w.next() != Some("schema") {
                            return Err(err(i, 1, "expected 'schema 1.1' after 'model'"));
                        }
                        let v = w.next().unwrap_or("");
                        if w.next().is_some() || v.is_empty() {
                            return Err(err(i, 1, "expected 'schema <version>'"));
                        }
                        let numeric =
                            |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
                        if !v
                            .split_once('.')
                            .is_some_and(|(a, b)| numeric(a) && numeric(b))
                        {
                            return Err(err(
                                i,
                                1,
                                format!("invalid schema version '{v}' (expected e.g. 1.1)"),
                            ));
                        }
                        out.schema = Some(v.to_string());
                        break;
                    }
                    header_done = true;
                    continue;
                }
                "module" => {
                    let name = words
                        .next()
                        .filter(|n| valid_ident(n))
                        .ok_or_else(|| err(ln, col, "expected a module name after 'module'"))?;
                    out.module = Some(name.to_string());
                    header_done = true;
                    continue;
                }
                _ => {
                    return Err(err(
                        ln,
                        col,
                        format!("expected 'model' (or 'module') before '{first}'"),
                    ));
                }
            }
        }
        match first {
            "type" | "extend" => {
                let extend = first == "extend";
                if extend && words.next() != Some("type") {
                    return Err(err(ln, col, "expected 'type' after 'extend'"));
                }
                let name = words
                    .next()
                    .ok_or_else(|| err(ln, col, "expected a type name"))?;
                if !valid_ident(name) {
                    return Err(err(ln, col, format!("invalid type name '{name}'")));
                }
                if let Some(extra) = words.next() {
                    return Err(err(
                        ln,
                        col,
                        format!("unexpected '{extra}' after the type name"),
                    ));
                }
                out.types.push((
                    TypeDefinition {
                        type_name: name.to_string(),
                        relations: BTreeMap::new(),
                        metadata: None,
                    },
                    extend,
                    ln,
                ));
                cur = Some(out.types.len() - 1);
                in_relations = false;
            }
            "relations" => {
                let Some(c) = cur else {
                    return Err(err(ln, col, "'relations' outside a type"));
                };
                if words.next().is_some() {
                    return Err(err(ln, col, "unexpected input after 'relations'"));
                }
                if in_relations {
                    return Err(err(ln, col, "'relations' twice in one type"));
                }
                in_relations = true;
                out.types[c]
                    .0
                    .metadata
                    .get_or_insert_with(Metadata::default);
            }
            "define" => {
                let Some(c) = cur.filter(|_| in_relations) else {
                    return Err(err(ln, col, "'define' outside a type's 'relations'"));
                };
                let rest = trimmed["define".len()..].trim_start();
                let Some((name, def)) = rest.split_once(':') else {
                    return Err(err(ln, col, "expected 'define NAME: DEFINITION'"));
                };
                let name = name.trim();
                if !valid_ident(name) {
                    return Err(err(ln, col + 7, format!("invalid relation name '{name}'")));
                }
                let def_col = raw.find(':').map_or(col, |p| p + 2);
                let (rw, direct) = parse_rewrite(def, ln, def_col)?;
                let td = &mut out.types[c].0;
                if td.relations.contains_key(name) {
                    return Err(err(
                        ln,
                        col,
                        format!("relation '{}#{name}' is defined twice", td.type_name),
                    ));
                }
                td.relations.insert(name.to_string(), rw);
                td.metadata
                    .get_or_insert_with(Metadata::default)
                    .relations
                    .insert(
                        name.to_string(),
                        RelationMetadata {
                            directly_related_user_types: direct,
                            ..Default::default()
                        },
                    );
            }
            "condition" => {
                cur = None;
                in_relations = false;
                // condition NAME(params) { body }
                let mut text = trimmed["condition".len()..].to_string();
                let start_line = ln;
                while !text.contains('{') {
                    let Some(next) = lines.get(i) else {
                        return Err(err(
                            start_line,
                            col,
                            "expected '{' to open the condition body",
                        ));
                    };
                    i += 1;
                    text.push(' ');
                    text.push_str(strip_comment(next).trim());
                }
                let open = text.find('{').expect("found");
                let head = text[..open].trim().to_string();
                let mut body = text[open + 1..].to_string();
                // Read until the braces balance (strings may hold braces).
                loop {
                    if let Some(end) = closing_brace(&body) {
                        let after = body[end + 1..].trim();
                        if !after.is_empty() {
                            return Err(err(i.max(start_line), 1, "unexpected input after '}'"));
                        }
                        body.truncate(end);
                        break;
                    }
                    let Some(next) = lines.get(i) else {
                        return Err(err(
                            start_line,
                            col,
                            "the condition body is not closed with '}'",
                        ));
                    };
                    i += 1;
                    body.push('\n');
                    body.push_str(next);
                }
                let (name, params) = head
                    .split_once('(')
                    .ok_or_else(|| err(start_line, col, "expected 'condition NAME(PARAMS) {'"))?;
                let name = name.trim();
                if !valid_ident(name) {
                    return Err(err(
                        start_line,
                        col,
                        format!("invalid condition name '{name}'"),
                    ));
                }
                let params = params
                    .trim()
                    .strip_suffix(')')
                    .ok_or_else(|| err(start_line, col, "expected ')' after the parameters"))?;
                let mut parameters = BTreeMap::new();
                for p in split_params(params) {
                    let p = p.trim();
                    if p.is_empty() {
                        continue;
                    }
                    let (pn, pt) = p.split_once(':').ok_or_else(|| {
                        err(
                            start_line,
                            col,
                            format!("parameter '{p}' needs a type ('name: type')"),
                        )
                    })?;
                    let pn = pn.trim();
                    if !valid_ident(pn) {
                        return Err(err(
                            start_line,
                            col,
                            format!("invalid parameter name '{pn}'"),
                        ));
                    }
                    if parameters
                        .insert(pn.to_string(), param_type(pt, start_line, col)?)
                        .is_some()
                    {
                        return Err(err(start_line, col, format!("parameter '{pn}' twice")));
                    }
                }
                let expression = body
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim()
                    .to_string();
                if expression.is_empty() {
                    return Err(err(
                        start_line,
                        col,
                        format!("condition '{name}' has an empty body"),
                    ));
                }
                out.conditions.push((
                    Condition {
                        name: name.to_string(),
                        expression,
                        parameters,
                    },
                    start_line,
                ));
            }
            "model" | "schema" | "module" => {
                return Err(err(
                    ln,
                    col,
                    format!("'{first}' may appear only once, at the top"),
                ));
            }
            other => {
                return Err(err(
                    ln,
                    col,
                    format!(
                        "unexpected '{other}' (expected 'type', 'relations', 'define' or 'condition')"
                    ),
                ));
            }
        }
    }
    if !header_done {
        return Err(err(1, 1, "expected 'model' and 'schema 1.1' at the top"));
    }
    Ok(out)
}

/// Index of the `}` that closes a body whose `{` is already consumed.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    None
}

/// Split parameters at top-level commas (`map<string>` has none inside,
/// but be safe with nesting).
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parse a model.
pub fn parse(dsl: &str) -> Result<AuthorizationModel, DslError> {
    let p = parse_file(dsl)?;
    if let Some(m) = &p.module {
        return Err(err(
            1,
            1,
            format!("'module {m}' is part of a modular model: load it through its fga.mod"),
        ));
    }
    let mut model = AuthorizationModel {
        id: String::new(),
        schema_version: p.schema.unwrap_or_default(),
        type_definitions: Vec::new(),
        conditions: BTreeMap::new(),
    };
    for (td, extend, ln) in p.types {
        if extend {
            return Err(err(ln, 1, "'extend type' is only allowed in modules"));
        }
        if model
            .type_definitions
            .iter()
            .any(|t| t.type_name == td.type_name)
        {
            return Err(err(
                ln,
                1,
                format!("type '{}' is defined twice", td.type_name),
            ));
        }
        model.type_definitions.push(td);
    }
    for (c, ln) in p.conditions {
        if model.conditions.contains_key(&c.name) {
            return Err(err(
                ln,
                1,
                format!("condition '{}' is defined twice", c.name),
            ));
        }
        model.conditions.insert(c.name.clone(), c);
    }
    Ok(model)
}

/// Parse a modular model: an `fga.mod` manifest (`schema: '1.2'`,
/// `contents: [files]`) and its module files.
pub fn parse_modular(manifest: &Path) -> Result<AuthorizationModel, DslError> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| err(1, 1, format!("{}: {e}", manifest.display())))?;
    #[derive(serde::Deserialize)]
    struct Mod {
        schema: String,
        contents: Vec<String>,
    }
    let m: Mod = serde_yaml_ng::from_str(&text)
        .map_err(|e| err(1, 1, format!("{}: {e}", manifest.display())))?;
    if m.schema != "1.2" {
        return Err(err(
            1,
            1,
            format!("fga.mod: schema must be '1.2', not '{}'", m.schema),
        ));
    }
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let mut model = AuthorizationModel {
        id: String::new(),
        schema_version: "1.2".into(),
        type_definitions: Vec::new(),
        conditions: BTreeMap::new(),
    };
    for file in &m.contents {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(1, 1, format!("{}: {e}", path.display())))?;
        let p = parse_file(&text).map_err(|e| DslError {
            message: format!("{file}: {}", e.message),
            ..e
        })?;
        let module = p.module.clone().ok_or_else(|| {
            err(
                1,
                1,
                format!("{file}: a module file must start with 'module NAME'"),
            )
        })?;
        let src = || Some(SourceInfo { file: file.clone() });
        for (mut td, extend, ln) in p.types {
            if extend {
                let Some(existing) = model
                    .type_definitions
                    .iter_mut()
                    .find(|t| t.type_name == td.type_name)
                else {
                    return Err(err(
                        ln,
                        1,
                        format!(
                            "{file}: 'extend type {}' but the type is not defined",
                            td.type_name
                        ),
                    ));
                };
                let meta = existing.metadata.get_or_insert_with(Metadata::default);
                for (name, rw) in td.relations {
                    if existing.relations.contains_key(&name) {
                        return Err(err(
                            ln,
                            1,
                            format!(
                                "{file}: relation '{}#{name}' is defined twice",
                                td.type_name
                            ),
                        ));
                    }
                    let mut rm = td
                        .metadata
                        .as_mut()
                        .and_then(|m| m.relations.remove(&name))
                        .unwrap_or_default();
                    rm.module = module.clone();
                    rm.source_info = src();
                    meta.relations.insert(name.clone(), rm);
                    existing.relations.insert(name, rw);
                }
            } else {
                if model
                    .type_definitions
                    .iter()
                    .any(|t| t.type_name == td.type_name)
                {
                    return Err(err(
                        ln,
                        1,
                        format!("{file}: type '{}' is defined twice", td.type_name),
                    ));
                }
                let meta = td.metadata.get_or_insert_with(Metadata::default);
                meta.module = module.clone();
                meta.source_info = src();
                model.type_definitions.push(td);
            }
        }
        for (c, ln) in p.conditions {
            if model.conditions.contains_key(&c.name) {
                return Err(err(
                    ln,
                    1,
                    format!("{file}: condition '{}' is defined twice", c.name),
                ));
            }
            model.conditions.insert(c.name.clone(), c);
        }
    }
    Ok(model)
}

fn rw_to_dsl(u: &Userset, direct: &[RelationReference], top: bool) -> String {
    let wrap = |s: String| if top { s } else { format!("({s})") };
    if u.this.is_some() {
        let refs: Vec<String> = direct
            .iter()
            .map(|r| {
                let mut s = r.type_name.clone();
                if r.wildcard.is_some() {
                    s.push_str(":*");
                } else if let Some(rel) = &r.relation {
                    s.push('#');
                    s.push_str(rel);
                }
                if !r.condition.is_empty() {
                    s.push_str(" with ");
                    s.push_str(&r.condition);
                }
                s
            })
            .collect();
        format!("[{}]", refs.join(", "))
    } else if let Some(c) = &u.computed_userset {
        c.relation.clone()
    } else if let Some(t) = &u.tuple_to_userset {
        format!(
            "{} from {}",
            t.computed_userset.relation, t.tupleset.relation
        )
    } else if let Some(c) = &u.union {
        wrap(
            c.child
                .iter()
                .map(|c| rw_to_dsl(c, direct, false))
                .collect::<Vec<_>>()
                .join(" or "),
        )
    } else if let Some(c) = &u.intersection {
        wrap(
            c.child
                .iter()
                .map(|c| rw_to_dsl(c, direct, false))
                .collect::<Vec<_>>()
                .join(" and "),
        )
    } else if let Some(d) = &u.difference {
        wrap(format!(
            "{} but not {}",
            rw_to_dsl(&d.base, direct, false),
            rw_to_dsl(&d.subtract, direct, false)
        ))
    } else {
        String::new()
    }
}

fn param_to_dsl(p: &ConditionParamTypeRef) -> String {
    let base = p
        .type_name
        .strip_prefix("TYPE_NAME_")
        .unwrap_or(&p.type_name)
        .to_ascii_lowercase();
    match p.generic_types.first() {
        Some(g) => format!("{base}<{}>", param_to_dsl(g)),
        None => base,
    }
}

/// Write a model as DSL (relations in the model's order: alphabetical for
/// JSON models, as OpenFGA stores them).
pub fn to_dsl(m: &AuthorizationModel) -> String {
    let mut out = format!("model\n  schema {}\n", m.schema_version);
    for t in &m.type_definitions {
        out.push_str(&format!("\ntype {}\n", t.type_name));
        if !t.relations.is_empty() {
            out.push_str("  relations\n");
            for (name, rw) in &t.relations {
                let direct = t
                    .metadata
                    .as_ref()
                    .and_then(|m| m.relations.get(name))
                    .map(|r| r.directly_related_user_types.as_slice())
                    .unwrap_or(&[]);
                out.push_str(&format!(
                    "    define {name}: {}\n",
                    rw_to_dsl(rw, direct, true)
                ));
            }
        }
    }
    for c in m.conditions.values() {
        let params: Vec<String> = c
            .parameters
            .iter()
            .map(|(n, t)| format!("{n}: {}", param_to_dsl(t)))
            .collect();
        out.push_str(&format!(
            "\ncondition {}({}) {{\n  {}\n}}\n",
            c.name,
            params.join(", "),
            c.expression
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transformer_dirs() -> Vec<std::path::PathBuf> {
        let root = crate::authz::shared_data().join("openfga/language-dsl/transformer");
        let mut v: Vec<_> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|d| d.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Compare ignoring relation order (maps) and condition-expression
    /// whitespace.
    fn normalise(mut v: serde_json::Value) -> serde_json::Value {
        if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_object_mut()) {
            for c in conds.values_mut() {
                if let Some(e) = c.get_mut("expression") {
                    let s = e
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    *e = s.into();
                }
            }
            if conds.is_empty() {
                v.as_object_mut().unwrap().remove("conditions");
            }
        }
        v
    }

    #[test]
    fn every_transformer_fixture_parses_to_openfga_json() {
        let (mut pass, mut fail) = (0, Vec::new());
        for d in transformer_dirs() {
            let dsl = std::fs::read_to_string(d.join("authorization-model.fga")).unwrap();
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(d.join("authorization-model.json")).unwrap(),
            )
            .unwrap();
            match parse(&dsl) {
                Ok(m) => {
                    let got = normalise(serde_json::to_value(&m).unwrap());
                    let want = normalise(
                        serde_json::to_value(
                            serde_json::from_value::<AuthorizationModel>(json).unwrap(),
                        )
                        .unwrap(),
                    );
                    if got == want {
                        // And back: DSL written from the model parses to it.
                        let again = parse(&to_dsl(&m)).unwrap();
                        assert_eq!(again, m, "{}: to_dsl round trip", d.display());
                        pass += 1;
                    } else {
                        fail.push(format!("{}: got {got}\nwant {want}", d.display()));
                    }
                }
                Err(e) => fail.push(format!("{}: {e}", d.display())),
            }
        }
        for f in &fail {
            eprintln!("FAIL {f}");
        }
        eprintln!("transformer fixtures: {pass} pass, {} fail", fail.len());
        assert!(fail.is_empty());
    }

    #[test]
    fn syntax_cases_are_accepted_or_refused_as_openfga_does() {
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            dsl: String,
            #[serde(default)]
            expected_errors: Option<Vec<serde_yaml_ng::Value>>,
        }
        let p = crate::authz::shared_data()
            .join("openfga/language-dsl/dsl-syntax-validation-cases.yaml");
        let cases: Vec<Case> =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut wrong = Vec::new();
        for c in &cases {
            let refused = c.expected_errors.as_ref().is_some_and(|e| !e.is_empty());
            let got = parse(&c.dsl);
            if got.is_ok() == refused {
                wrong.push(format!(
                    "{}: expected {}, got {:?}",
                    c.name,
                    if refused { "an error" } else { "ok" },
                    got.err()
                ));
            }
        }
        for w in &wrong {
            eprintln!("WRONG {w}");
        }
        eprintln!(
            "syntax cases: {} / {} as expected",
            cases.len() - wrong.len(),
            cases.len()
        );
        assert!(wrong.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e =
            parse("model\n  schema 1.1\ntype doc\n  relations\n    define v: [user] or and x\n")
                .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = parse("model\n  schema 1.1\ntype doc\n  relations\n    define v: a or b and c\n")
            .unwrap_err();
        assert!(e.message.contains("parentheses"), "{e}");
        let e = parse("type user\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}

//! Route policies: the checks a route makes, written as templates over the
//! request and the principal, parsed once at config load.
//!
//! ```toml
//! [[gateway.route]]
//! path_prefix = "/docs"
//! path_pattern = "/docs/{id}"
//! [[gateway.route.authz]]
//! user = "user:{jwt.sub}"
//! relation = { GET = "viewer", HEAD = "viewer", PUT = "editor", DELETE = "editor" }
//! object = "document:{path.id}"
//! ```
//!
//! Placeholders: `{jwt.CLAIM}` (a string or number claim of the verified
//! token), `{principal.subject}`, `{principal.client_id}`, `{path.NAME}` (a
//! `{NAME}` segment of `path_pattern`), `{method}`, `{client.ip}`. A
//! placeholder with no value (claim absent, pattern not matched) makes the
//! check fail closed: the request is denied. Values that would change the
//! shape of an FGA identifier (`:`, `#`, `@`, whitespace, empty) also deny.

use std::collections::BTreeMap;

use http::Method;
use serde::Deserialize;

use crate::authn::Principal;

/// `[[gateway.route.authz]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// User template, e.g. `user:{jwt.sub}`.
    pub user: String,
    /// One relation, or one per method (`{ GET = "viewer", PUT = "editor" }`).
    pub relation: RawRelation,
    /// Object template, e.g. `document:{path.id}`.
    pub object: String,
    /// Condition context values (templates), e.g. `{ ip = "{client.ip}" }`.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
}

/// A relation for every method, or per method.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRelation {
    /// The same for all methods.
    One(String),
    /// By method name; a method not listed is denied.
    PerMethod(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Claim(String),
    Subject,
    ClientId,
    PathVar(String),
    Method,
    ClientIp,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

/// What templates read.
pub struct RequestFacts<'a> {
    /// The verified principal, if the route authenticates.
    pub principal: Option<&'a Principal>,
    /// The normalised path.
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The client address.
    pub client_ip: std::net::IpAddr,
}

impl Template {
    /// Parse `text`; `vars` are the names `path_pattern` captures.
    pub fn parse(text: &str, vars: &[String]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("'{text}': unclosed '{{'"))?
                + start;
            let name = &rest[start + 1..end];
            let part = match name {
                "principal.subject" => Part::Subject,
                "principal.client_id" => Part::ClientId,
                "method" => Part::Method,
                "client.ip" => Part::ClientIp,
                _ => {
                    if name.contains('.')
                        && (vars.iter().any(|x| x == name)
                            || (name.len() > 4
                                && name.starts_with("arg.")
                                && vars.iter().any(|x| x == "arg.*")))
                    {
                        // Request facts a caller supplies by name (MCP:
                        // mcp.server, mcp.tool, arg.NAME).
                        Part::PathVar(name.to_string())
                    } else if let Some(c) = name.strip_prefix("jwt.").filter(|c| !c.is_empty()) {
                        Part::Claim(c.to_string())
                    } else if let Some(v) = name.strip_prefix("path.") {
                        if !vars.iter().any(|x| x == v) {
                            return Err(format!(
                                "'{text}': {{path.{v}}} is not a variable of path_pattern (it has: {})",
                                if vars.is_empty() {
                                    "none".to_string()
                                } else {
                                    vars.join(", ")
                                }
                            ));
                        }
                        Part::PathVar(v.to_string())
                    } else {
                        return Err(format!(
                            "'{text}': unknown placeholder {{{name}}} (use jwt.CLAIM, principal.subject, principal.client_id, path.NAME, method or client.ip)"
                        ));
                    }
                }
            };
            parts.push(part);
            rest = &rest[end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("'{text}': unmatched '}}'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template(parts))
    }

    /// Fill the template; `None` when a value is missing or unsafe.
    pub fn render(&self, f: &RequestFacts<'_>, captures: &[(String, String)]) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            let v: std::borrow::Cow<'_, str> = match p {
                Part::Lit(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Claim(c) => match f.principal?.claims.get(c)? {
                    serde_json::Value::String(s) => s.as_str().into(),
                    serde_json::Value::Number(n) => n.to_string().into(),
                    _ => return None,
                },
                Part::Subject => f.principal?.subject.as_str().into(),
                Part::ClientId => f.principal?.client_id.as_deref()?.into(),
                Part::PathVar(name) => captures
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())?
                    .into(),
                Part::Method => f.method.as_str().into(),
                Part::ClientIp => f.client_ip.to_string().into(),
            };
            if v.is_empty()
                || v.chars().any(|c| {
                    matches!(c, ':' | '#' | '@' | '*') || c.is_whitespace() || c.is_control()
                })
            {
                // A value that would change the identifier's shape.
                if !matches!(p, Part::ClientIp) {
                    return None;
                }
            }
            out.push_str(&v);
        }
        Some(out)
    }
}

/// `path_pattern`: literal segments and `{name}` segments.
#[derive(Debug, Clone, PartialEq)]
pub struct PathPattern {
    segs: Vec<Option<String>>,
    vars: Vec<String>,
    /// Trailing `{name...}`? Not supported; whole segments only.
    _private: (),
}

impl PathPattern {
    /// Parse `/docs/{id}`.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("path_pattern '{text}': must start with '/'"));
        }
        let mut segs = Vec::new();
        let mut vars = Vec::new();
        for s in text[1..].split('/') {
            if let Some(name) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("path_pattern '{text}': bad variable '{s}'"));
                }
                if vars.iter().any(|v| v == name) {
                    return Err(format!("path_pattern '{text}': variable '{name}' twice"));
                }
                vars.push(name.to_string());
                segs.push(None);
            } else if s.contains('{') || s.contains('}') {
                return Err(format!(
                    "path_pattern '{text}': a variable must be a whole segment ('{s}')"
                ));
            } else {
                segs.push(Some(s.to_string()));
            }
        }
        Ok(PathPattern {
            segs,
            vars,
            _private: (),
        })
    }

    /// Variable names.
    pub fn vars(&self) -> &[String] {
        &self.vars
    }

    /// Captures for a normalised path; `None` when it does not match (the
    /// pattern must match the whole path).
    pub fn captures(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segs.len() {
            return None;
        }
        let mut out = Vec::new();
        let mut vi = 0;
        for (seg, part) in self.segs.iter().zip(parts) {
            match seg {
                Some(lit) => {
                    if lit != part {
                        return None;
                    }
                }
                None => {
                    if part.is_empty() {
                        return None;
                    }
                    out.push((self.vars[vi].clone(), part.to_string()));
                    vi += 1;
                }
            }
        }
        Some(out)
    }
}

/// A compiled check.
#[derive(Debug, Clone)]
pub struct CheckPolicy {
    user: Template,
    relation: Relation,
    object: Template,
    context: Vec<(String, Template)>,
}

#[derive(Debug, Clone)]
enum Relation {
    One(String),
    PerMethod(Vec<(Method, String)>),
}

/// One check to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// `type:id`.
    pub user: String,
    /// Relation.
    pub relation: String,
    /// `type:id`.
    pub object: String,
    /// Condition context.
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CheckPolicy {
    /// Compile a raw check against the route's path variables.
    pub fn compile(raw: &RawCheck, vars: &[String]) -> Result<CheckPolicy, String> {
        let relation = match &raw.relation {
            RawRelation::One(r) => {
                if !super::tuples::valid_relation(r) {
                    return Err(format!("relation '{r}' is not a valid relation name"));
                }
                Relation::One(r.clone())
            }
            RawRelation::PerMethod(m) => {
                if m.is_empty() {
                    return Err("relation: the per-method table is empty".into());
                }
                let mut v = Vec::new();
                for (method, r) in m {
                    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("relation: '{method}' is not an HTTP method"))?;
                    if !super::tuples::valid_relation(r) {
                        return Err(format!("relation '{r}' is not a valid relation name"));
                    }
                    v.push((method, r.clone()));
                }
                Relation::PerMethod(v)
            }
        };
        let mut context = Vec::new();
        for (k, v) in &raw.context {
            context.push((k.clone(), Template::parse(v, vars)?));
        }
        Ok(CheckPolicy {
            user: Template::parse(&raw.user, vars)?,
            relation,
            object: Template::parse(&raw.object, vars)?,
            context,
        })
    }

    /// The check for this request; `None` denies (a value is missing or
    /// the method has no relation).
    pub fn plan(&self, f: &RequestFacts<'_>, captures: &[(String, String)]) -> Option<Planned> {
        let relation = match &self.relation {
            Relation::One(r) => r.clone(),
            Relation::PerMethod(m) => m.iter().find(|(x, _)| x == f.method)?.1.clone(),
        };
        let context = if self.context.is_empty() {
            None
        } else {
            let mut m = serde_json::Map::new();
            for (k, t) in &self.context {
                m.insert(k.clone(), t.render(f, captures)?.into());
            }
            Some(m)
        };
        Some(Planned {
            user: self.user.render(f, captures)?,
            relation,
            object: self.object.render(f, captures)?,
            context,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use super::*;
    use crate::authn::Method as AuthnMethod;

    fn principal(sub: &str) -> Principal {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("tenant".into(), 42.into());
        claims.insert("roles".into(), serde_json::json!(["a"]));
        Principal {
            provider: Arc::from("idp"),
            method: AuthnMethod::Jwt,
            subject: sub.into(),
            issuer: None,
            client_id: Some("app".into()),
            scopes: vec![],
            claims: Arc::new(claims),
            expires_at: None,
        }
    }

    fn facts<'a>(p: Option<&'a Principal>, path: &'a str, m: &'a Method) -> RequestFacts<'a> {
        RequestFacts {
            principal: p,
            path,
            method: m,
            client_ip: IpAddr::from([10, 0, 0, 1]),
        }
    }

    #[test]
    fn templates_fill_from_claims_paths_and_methods() {
        let pat = PathPattern::parse("/docs/{id}/v/{ver}").unwrap();
        let caps = pat.captures("/docs/roadmap/v/3").unwrap();
        assert!(pat.captures("/docs/roadmap").is_none());
        assert!(pat.captures("/docs//v/3").is_none());
        let raw: RawCheck = toml::from_str(
            r#"user = "user:{jwt.sub}"
relation = { GET = "viewer", put = "editor" }
object = "document:{path.id}-{path.ver}"
context = { ip = "{client.ip}", t = "{jwt.tenant}" }"#,
        )
        .unwrap();
        let c = CheckPolicy::compile(&raw, pat.vars()).unwrap();
        let p = principal("anne");
        let get = Method::GET;
        let planned = c
            .plan(&facts(Some(&p), "/docs/roadmap/v/3", &get), &caps)
            .unwrap();
        assert_eq!(planned.user, "user:anne");
        assert_eq!(planned.relation, "viewer");
        assert_eq!(planned.object, "document:roadmap-3");
        let ctx = planned.context.unwrap();
        assert_eq!(ctx["ip"], "10.0.0.1");
        assert_eq!(ctx["t"], "42");
        let put = Method::PUT;
        assert_eq!(
            c.plan(&facts(Some(&p), "/", &put), &caps).unwrap().relation,
            "editor"
        );
        // A method with no relation, no principal, or a hostile value: deny.
        assert!(
            c.plan(&facts(Some(&p), "/", &Method::DELETE), &caps)
                .is_none()
        );
        assert!(c.plan(&facts(None, "/", &get), &caps).is_none());
        let evil = principal("anne#member");
        assert!(c.plan(&facts(Some(&evil), "/", &get), &caps).is_none());
        let evil = principal("x:y");
        assert!(c.plan(&facts(Some(&evil), "/", &get), &caps).is_none());
    }

    #[test]
    fn bad_templates_are_named() {
        let e = Template::parse("user:{jwt.sub", &[]).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = Template::parse("document:{path.id}", &[]).unwrap_err();
        assert!(e.contains("path.id"), "{e}");
        let e = Template::parse("user:{nope}", &[]).unwrap_err();
        assert!(e.contains("unknown placeholder"), "{e}");
        assert!(PathPattern::parse("docs/{id}").is_err());
        assert!(PathPattern::parse("/docs/x{id}").is_err());
        assert!(PathPattern::parse("/docs/{id}/{id}").is_err());
    }
}

//! OpenFGA conditions: CEL expressions over typed parameters, evaluated
//! with the context stored on a tuple and the context of the request.
//!
//! Semantics, as OpenFGA's server has them (`internal/condition`):
//! * the request context and the tuple's context are merged, the tuple's
//!   values winning on a shared key; keys that are not parameters are
//!   ignored;
//! * every value is converted to its parameter's declared type (an `int`
//!   accepts a JSON number or numeric string with no fraction, a `duration`
//!   a Go duration string like `1h30m`, a `timestamp` an RFC 3339 string, an
//!   `ipaddress` a textual address); a value that does not convert is an
//!   error naming the parameter;
//! * a declared parameter with no value makes the evaluation an error
//!   ("missing context parameters") whatever the expression's value;
//! * the expression must yield a bool.
//!
//! Beyond CEL's standard library: `ipaddress("10.0.0.1")`, `ip ==
//! ipaddress(..)` and `ip.in_cidr("10.0.0.0/8")`.

use std::{net::IpAddr, sync::Arc};

use cel::{Context, ExecutionError, Program, Value, extractors::This, objects::Opaque};
use serde_json::{Map, Value as Json};

use super::model;

/// A parameter type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    /// Anything JSON.
    Any,
    /// bool
    Bool,
    /// string
    String,
    /// int (i64)
    Int,
    /// uint (u64)
    Uint,
    /// double
    Double,
    /// duration
    Duration,
    /// timestamp
    Timestamp,
    /// ipaddress
    IpAddress,
    /// list<T>
    List(Box<ParamType>),
    /// map<T> (string keys)
    Map(Box<ParamType>),
}

impl ParamType {
    fn from_ref(r: &model::ConditionParamTypeRef) -> Result<ParamType, String> {
        let generic = || -> Result<Box<ParamType>, String> {
            match r.generic_types.as_slice() {
                [g] => Ok(Box::new(ParamType::from_ref(g)?)),
                _ => Err(format!("{} takes exactly one type argument", r.type_name)),
            }
        };
        Ok(match r.type_name.as_str() {
            "TYPE_NAME_ANY" => ParamType::Any,
            "TYPE_NAME_BOOL" => ParamType::Bool,
            "TYPE_NAME_STRING" => ParamType::String,
            "TYPE_NAME_INT" => ParamType::Int,
            "TYPE_NAME_UINT" => ParamType::Uint,
            "TYPE_NAME_DOUBLE" => ParamType::Double,
            "TYPE_NAME_DURATION" => ParamType::Duration,
            "TYPE_NAME_TIMESTAMP" => ParamType::Timestamp,
            "TYPE_NAME_IPADDRESS" => ParamType::IpAddress,
            "TYPE_NAME_LIST" => ParamType::List(generic()?),
            "TYPE_NAME_MAP" => ParamType::Map(generic()?),
            other => return Err(format!("unknown parameter type '{other}'")),
        })
    }
}

/// Why a condition could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// The expression or a parameter type is invalid.
    #[error("condition '{condition}' does not compile: {reason}")]
    Compile {
        /// Condition name.
        condition: String,
        /// Why.
        reason: String,
    },
    /// Parameters without a value.
    #[error("condition '{condition}' is missing context parameters {params:?}")]
    MissingParameters {
        /// Condition name.
        condition: String,
        /// The missing parameter names, sorted.
        params: Vec<String>,
    },
    /// A value that does not convert to its parameter's type.
    #[error("condition '{condition}': parameter '{param}': {reason}")]
    InvalidParameter {
        /// Condition name.
        condition: String,
        /// Parameter.
        param: String,
        /// Why.
        reason: String,
    },
    /// The expression failed at run time.
    #[error("condition '{condition}' failed to evaluate: {reason}")]
    Evaluation {
        /// Condition name.
        condition: String,
        /// Why.
        reason: String,
    },
    /// The expression's value is not a bool.
    #[error("condition '{condition}' did not yield a bool")]
    NotBoolean {
        /// Condition name.
        condition: String,
    },
}

/// An IP address as a CEL value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpAddress(IpAddr);

impl Opaque for IpAddress {
    fn runtime_type_name(&self) -> &str {
        "ipaddress"
    }
}

/// A compiled condition.
pub struct CompiledCondition {
    name: String,
    params: Vec<(String, ParamType)>,
    program: Program,
}

impl std::fmt::Debug for CompiledCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCondition")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish()
    }
}

fn ipaddress_fn(s: Arc<String>) -> Result<Value, ExecutionError> {
    s.parse::<IpAddr>()
        .map(|ip| Value::Opaque(Arc::new(IpAddress(ip))))
        .map_err(|_| {
            ExecutionError::function_error("ipaddress", format!("'{s}' is not an IP address"))
        })
}

fn in_cidr_fn(This(this): This<Value>, cidr: Arc<String>) -> Result<bool, ExecutionError> {
    let Value::Opaque(o) = &this else {
        return Err(ExecutionError::function_error(
            "in_cidr",
            "not an ipaddress",
        ));
    };
    let Some(ip) = o.downcast_ref::<IpAddress>() else {
        return Err(ExecutionError::function_error(
            "in_cidr",
            "not an ipaddress",
        ));
    };
    let net: ipnet::IpNet = cidr.parse().map_err(|_| {
        ExecutionError::function_error("in_cidr", format!("'{cidr}' is not a CIDR"))
    })?;
    Ok(net.contains(&ip.0))
}

/// Parse a Go duration string (`300ms`, `-1.5h`, `2h45m`).
fn parse_go_duration(s: &str) -> Option<chrono::Duration> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total_ns += n * unit;
    }
    if !total_ns.is_finite() || total_ns > i64::MAX as f64 {
        return None;
    }
    let d = chrono::Duration::nanoseconds(total_ns.round() as i64);
    Some(if neg { -d } else { d })
}

/// A JSON number or numeric string as a float, with OpenFGA's rules.
fn numeric(v: &Json) -> Result<f64, String> {
    let f = numeric_raw(v)?;
    if !f.is_finite() {
        return Err(format!("number cannot be represented as a float64: {v}"));
    }
    Ok(f)
}

fn numeric_raw(v: &Json) -> Result<f64, String> {
    match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("'{n}' is not a number")),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, but found invalid string value '{s}'")),
        other => Err(format!("expected a number, found {}", json_kind(other))),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

fn convert(t: &ParamType, v: &Json) -> Result<Value, String> {
    Ok(match t {
        ParamType::Any => any_value(v),
        ParamType::Bool => match v {
            Json::Bool(b) => Value::Bool(*b),
            other => return Err(format!("expected a bool, found {}", json_kind(other))),
        },
        ParamType::String => match v {
            Json::String(s) => Value::String(Arc::new(s.clone())),
            other => return Err(format!("expected a string, found {}", json_kind(other))),
        },
        ParamType::Int => {
            if let Json::Number(n) = v
                && let Some(i) = n.as_i64()
            {
                return Ok(Value::Int(i));
            }
            let f = numeric(v)?;
            if f.fract() != 0.0 || !f.is_finite() || f.abs() > 9.2e18 {
                return Err(format!(
                    "expected an int value, but found numeric value '{f}'"
                ));
            }
            Value::Int(f as i64)
        }
        ParamType::Uint => {
            if let Json::Number(n) = v
                && let Some(u) = n.as_u64()
            {
                return Ok(Value::UInt(u));
            }
            let f = numeric(v)?;
            if f.fract() != 0.0 || !f.is_finite() || !(0.0..=1.8e19).contains(&f) {
                return Err(format!(
                    "expected a uint value, but found numeric value '{f}'"
                ));
            }
            Value::UInt(f as u64)
        }
        ParamType::Double => Value::Float(numeric(v)?),
        ParamType::Duration => match v {
            Json::String(s) => Value::Duration(
                parse_go_duration(s)
                    .ok_or_else(|| format!("expected a valid duration string, but found: '{s}'"))?,
            ),
            other => {
                return Err(format!(
                    "expected a duration string, found {}",
                    json_kind(other)
                ));
            }
        },
        ParamType::Timestamp => match v {
            Json::String(s) => {
                Value::Timestamp(chrono::DateTime::parse_from_rfc3339(s).map_err(|_| {
                    format!("expected RFC 3339 formatted timestamp string, but found '{s}'")
                })?)
            }
            other => {
                return Err(format!(
                    "expected RFC 3339 formatted timestamp string, found {}",
                    json_kind(other)
                ));
            }
        },
        ParamType::IpAddress => {
            match v {
                Json::String(s) => Value::Opaque(Arc::new(IpAddress(s.parse().map_err(|_| {
                    format!("expected a well-formed IP address, but found: '{s}'")
                })?))),
                other => {
                    return Err(format!(
                        "expected an ipaddress string, found {}",
                        json_kind(other)
                    ));
                }
            }
        }
        ParamType::List(inner) => match v {
            Json::Array(items) => Value::List(Arc::new(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| convert(inner, x).map_err(|e| format!("item {i}: {e}")))
                    .collect::<Result<_, _>>()?,
            )),
            other => return Err(format!("list requires a list, found {}", json_kind(other))),
        },
        ParamType::Map(inner) => match v {
            Json::Object(m) => {
                let mut out = std::collections::HashMap::new();
                for (k, x) in m {
                    out.insert(
                        k.clone(),
                        convert(inner, x).map_err(|e| format!("key '{k}': {e}"))?,
                    );
                }
                Value::from(out)
            }
            other => return Err(format!("map requires a map, found {}", json_kind(other))),
        },
    })
}

/// JSON as CEL sees a `google.protobuf.Value`: numbers are doubles.
fn any_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(any_value).collect())),
        Json::Object(m) => Value::from(
            m.iter()
                .map(|(k, x)| (k.clone(), any_value(x)))
                .collect::<std::collections::HashMap<String, Value>>(),
        ),
    }
}

impl CompiledCondition {
    /// Compile a model's condition.
    pub fn compile(c: &model::Condition) -> Result<CompiledCondition, ConditionError> {
        let compile_err = |reason: String| ConditionError::Compile {
            condition: c.name.clone(),
            reason,
        };
        let mut params = Vec::new();
        for (name, t) in &c.parameters {
            params.push((
                name.clone(),
                ParamType::from_ref(t)
                    .map_err(|e| compile_err(format!("parameter '{name}': {e}")))?,
            ));
        }
        let program = Program::compile(&c.expression).map_err(|e| compile_err(e.to_string()))?;
        Ok(CompiledCondition {
            name: c.name.clone(),
            params,
            program,
        })
    }

    /// The condition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Evaluate with a tuple's stored context and the request's context
    /// (the tuple's values win).
    pub fn evaluate(
        &self,
        tuple_ctx: Option<&Map<String, Json>>,
        request_ctx: Option<&Map<String, Json>>,
    ) -> Result<bool, ConditionError> {
        let mut ctx = Context::default();
        ctx.add_function("ipaddress", ipaddress_fn)
            .and_then(|_| ctx.add_function("in_cidr", in_cidr_fn))
            .map_err(|e| ConditionError::Evaluation {
                condition: self.name.clone(),
                reason: e.to_string(),
            })?;
        let mut missing = Vec::new();
        for (name, t) in &self.params {
            let v = tuple_ctx
                .and_then(|m| m.get(name))
                .or_else(|| request_ctx.and_then(|m| m.get(name)));
            match v {
                None => missing.push(name.clone()),
                Some(v) => {
                    let value =
                        convert(t, v).map_err(|reason| ConditionError::InvalidParameter {
                            condition: self.name.clone(),
                            param: name.clone(),
                            reason,
                        })?;
                    ctx.add_variable_from_value(name.as_str(), value);
                }
            }
        }
        if !missing.is_empty() {
            return Err(ConditionError::MissingParameters {
                condition: self.name.clone(),
                params: missing,
            });
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(_) => Err(ConditionError::NotBoolean {
                condition: self.name.clone(),
            }),
            Err(e) => Err(ConditionError::Evaluation {
                condition: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::model::{Condition, ConditionParamTypeRef};

    fn cond(expr: &str, params: &[(&str, &str)]) -> CompiledCondition {
        let mut c = Condition {
            name: "c".into(),
            expression: expr.into(),
            parameters: Default::default(),
        };
        for (n, t) in params {
            let r = match t.split_once('<') {
                Some((outer, inner)) => ConditionParamTypeRef {
                    type_name: format!("TYPE_NAME_{}", outer.to_uppercase()),
                    generic_types: vec![ConditionParamTypeRef {
                        type_name: format!(
                            "TYPE_NAME_{}",
                            inner.trim_end_matches('>').to_uppercase()
                        ),
                        generic_types: vec![],
                    }],
                },
                None => ConditionParamTypeRef {
                    type_name: format!("TYPE_NAME_{}", t.to_uppercase()),
                    generic_types: vec![],
                },
            };
            c.parameters.insert(n.to_string(), r);
        }
        CompiledCondition::compile(&c).unwrap()
    }

    fn ctx(v: serde_json::Value) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn types_convert_and_evaluate() {
        let c = cond("x < 100", &[("x", "int")]);
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"x": 10}))))
                .unwrap()
        );
        assert!(
            !c.evaluate(None, Some(&ctx(serde_json::json!({"x": 200}))))
                .unwrap()
        );
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"x": "10"}))))
                .unwrap()
        );
        let e = c
            .evaluate(None, Some(&ctx(serde_json::json!({"x": 1.5}))))
            .unwrap_err();
        assert!(matches!(e, ConditionError::InvalidParameter { .. }), "{e}");
        let c = cond("x > 0.0", &[("x", "double")]);
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"x": 0.5}))))
                .unwrap()
        );
        let c = cond(
            "ts < timestamp(\"2023-10-11T10:00:00.000Z\")",
            &[("ts", "timestamp")],
        );
        assert!(
            c.evaluate(
                None,
                Some(&ctx(serde_json::json!({"ts": "2023-10-11T09:00:00Z"})))
            )
            .unwrap()
        );
        let c = cond(
            "current < grant + dur",
            &[
                ("current", "timestamp"),
                ("grant", "timestamp"),
                ("dur", "duration"),
            ],
        );
        let v = ctx(
            serde_json::json!({"current": "2023-01-01T00:10:00Z", "grant": "2023-01-01T00:00:00Z", "dur": "1h"}),
        );
        assert!(c.evaluate(None, Some(&v)).unwrap());
        let c = cond(
            "ip.in_cidr(cidr)",
            &[("ip", "ipaddress"), ("cidr", "string")],
        );
        let v = ctx(serde_json::json!({"ip": "192.168.0.10", "cidr": "192.168.0.0/24"}));
        assert!(c.evaluate(None, Some(&v)).unwrap());
        let v = ctx(serde_json::json!({"ip": "10.0.0.1", "cidr": "192.168.0.0/24"}));
        assert!(!c.evaluate(None, Some(&v)).unwrap());
        let c = cond("ip != ipaddress(\"192.0.0.1\")", &[("ip", "ipaddress")]);
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"ip": "192.0.0.2"}))))
                .unwrap()
        );
        assert!(
            !c.evaluate(None, Some(&ctx(serde_json::json!({"ip": "192.0.0.1"}))))
                .unwrap()
        );
        let c = cond(
            "\"1\" in l && l.exists(x, x > \"\")",
            &[("l", "list<string>")],
        );
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"l": ["1", "2"]}))))
                .unwrap()
        );
        let c = cond("m[\"k\"] == 2", &[("m", "map<int>")]);
        assert!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"m": {"k": 2}}))))
                .unwrap()
        );
    }

    #[test]
    fn tuple_context_wins_and_missing_parameters_are_errors() {
        let c = cond("x < 100 || y < 50", &[("x", "int"), ("y", "int")]);
        let t = ctx(serde_json::json!({"x": 1}));
        let r = ctx(serde_json::json!({"x": 500, "y": 500}));
        assert!(c.evaluate(Some(&t), Some(&r)).unwrap(), "tuple's x wins");
        let e = c.evaluate(Some(&t), None).unwrap_err();
        assert_eq!(
            e,
            ConditionError::MissingParameters {
                condition: "c".into(),
                params: vec!["y".into()]
            }
        );
        let c = cond("x", &[("x", "int")]);
        assert!(matches!(
            c.evaluate(None, Some(&ctx(serde_json::json!({"x": 1})))),
            Err(ConditionError::NotBoolean { .. })
        ));
        let bad = Condition {
            name: "b".into(),
            expression: "x <".into(),
            parameters: Default::default(),
        };
        assert!(matches!(
            CompiledCondition::compile(&bad),
            Err(ConditionError::Compile { .. })
        ));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            parse_go_duration("1h30m"),
            Some(chrono::Duration::minutes(90))
        );
        assert_eq!(
            parse_go_duration("-1.5s"),
            Some(chrono::Duration::milliseconds(-1500))
        );
        assert_eq!(
            parse_go_duration("300ms"),
            Some(chrono::Duration::milliseconds(300))
        );
        assert_eq!(parse_go_duration("0"), Some(chrono::Duration::zero()));
        assert_eq!(parse_go_duration("1d"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}

//! OpenFGA conditions: CEL expressions over typed parameters, compiled once per
//! model and evaluated against a tuple's stored context and the request's
//! context.
//!
//! Semantics follow OpenFGA's `internal/condition` package:
//!
//! * **Types** (`types/*.go`): parameter values arrive as JSON and are
//!   converted to the declared type. JSON numbers are doubles (as in
//!   `structpb`), so an `int` accepts `3` or `3.0` or `"3"`, never `3.5`; a
//!   `uint` rejects negatives; an `any` keeps JSON's own types (numbers as
//!   doubles); `duration` is a Go duration string, `timestamp` RFC 3339,
//!   `ipaddress` an IP address string.
//! * **Merge** (`eval/eval.go`, `EvaluateTupleCondition`): the request's context
//!   is merged first and the tuple's stored context over it, so the tuple's
//!   value wins a conflict. Keys that aren't parameters are ignored.
//! * **Missing parameters** (`condition.go`, `Evaluate`, and `eval.go`): the
//!   expression is evaluated partially, the missing parameters as unknowns; a
//!   runtime error is an error; otherwise any declared parameter missing from
//!   the merged context fails the check, even when the partial result is
//!   determined (OpenFGA's conformance test `direct_relations_with_condition`:
//!   `x < 100 || y < 50` with only `x: 10` is error 2000).
//!   [`CompiledCondition::evaluate_partial`] gives the partial result itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, LiteralValue, operators};
use cel::extractors::This;
use cel::objects::{Key, Map, Opaque};
use cel::parser::Expression;
use cel::{Context, Env, ExecutionError, Program, Value};
use serde_json::Value as Json;

use super::model;

/// A JSON object: a context as the API carries it.
pub type JsonMap = serde_json::Map<String, Json>;

/// Why a condition could not be compiled or evaluated. Every message names the
/// condition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// The expression or a parameter type is invalid.
    #[error("failed to compile expression on condition '{condition}' - {reason}")]
    Compile {
        /// Condition name.
        condition: String,
        /// What is wrong.
        reason: String,
    },
    /// Parameters the condition declares are in neither context.
    #[error("condition '{condition}' is missing context parameters {params:?}")]
    MissingParameters {
        /// Condition name.
        condition: String,
        /// The missing parameter names, sorted.
        params: Vec<String>,
    },
    /// A context value doesn't convert to its parameter's type.
    #[error(
        "parameter type error on condition '{condition}' - failed to convert context parameter '{param}': {reason}"
    )]
    InvalidParameter {
        /// Condition name.
        condition: String,
        /// Parameter name (empty when the condition declares none).
        param: String,
        /// What is wrong.
        reason: String,
    },
    /// The expression failed at runtime.
    #[error("'{condition}' - failed to evaluate condition expression: {reason}")]
    Evaluation {
        /// Condition name.
        condition: String,
        /// The CEL error.
        reason: String,
    },
    /// The expression evaluated to something other than a bool.
    #[error("'{condition}' - expected a bool condition result, but found {found}")]
    NotBoolean {
        /// Condition name.
        condition: String,
        /// The value found.
        found: String,
    },
}

/// The outcome of a partial evaluation: OpenFGA's `EvaluationResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialEvaluation {
    /// The result, or `None` when it depends on missing parameters.
    pub condition_met: Option<bool>,
    /// Declared parameters absent from both contexts, sorted.
    pub missing: Vec<String>,
}

/// A parameter type, decoded from a [`model::ConditionParamTypeRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParamType {
    Any,
    Bool,
    String,
    Int,
    UInt,
    Double,
    Duration,
    Timestamp,
    IpAddress,
    List(Box<ParamType>),
    Map(Box<ParamType>),
}

impl ParamType {
    /// OpenFGA's `DecodeParameterType`.
    fn decode(r: &model::ConditionParamTypeRef) -> Result<ParamType, String> {
        let (t, generics) = match r.type_name.as_str() {
            "TYPE_NAME_ANY" => (ParamType::Any, 0),
            "TYPE_NAME_BOOL" => (ParamType::Bool, 0),
            "TYPE_NAME_STRING" => (ParamType::String, 0),
            "TYPE_NAME_INT" => (ParamType::Int, 0),
            "TYPE_NAME_UINT" => (ParamType::UInt, 0),
            "TYPE_NAME_DOUBLE" => (ParamType::Double, 0),
            "TYPE_NAME_DURATION" => (ParamType::Duration, 0),
            "TYPE_NAME_TIMESTAMP" => (ParamType::Timestamp, 0),
            "TYPE_NAME_IPADDRESS" => (ParamType::IpAddress, 0),
            "TYPE_NAME_LIST" | "TYPE_NAME_MAP" => (ParamType::Any, 1),
            other => return Err(format!("unknown condition parameter type `{other}`")),
        };
        if r.generic_types.len() != generics {
            return Err(format!(
                "condition parameter type `{}` requires {generics} generic types; found {}",
                r.type_name,
                r.generic_types.len()
            ));
        }
        Ok(match r.type_name.as_str() {
            "TYPE_NAME_LIST" => ParamType::List(Box::new(Self::decode(&r.generic_types[0])?)),
            "TYPE_NAME_MAP" => ParamType::Map(Box::new(Self::decode(&r.generic_types[0])?)),
            _ => t,
        })
    }

    /// The static type of a variable of this type.
    fn ty(&self) -> Ty {
        match self {
            ParamType::Any => Ty::Dyn,
            ParamType::Bool => Ty::Bool,
            ParamType::String => Ty::String,
            ParamType::Int => Ty::Int,
            ParamType::UInt => Ty::UInt,
            ParamType::Double => Ty::Double,
            ParamType::Duration => Ty::Duration,
            ParamType::Timestamp => Ty::Timestamp,
            ParamType::IpAddress => Ty::IpAddress,
            ParamType::List(t) => Ty::List(Box::new(t.ty())),
            ParamType::Map(t) => Ty::Map(Box::new(t.ty())),
        }
    }

    /// OpenFGA's `ConvertValue` for this type, from a JSON value.
    fn convert(&self, v: &Json) -> Result<Value, String> {
        match self {
            ParamType::Any => Ok(json_to_value(v)),
            ParamType::Bool => match v {
                Json::Bool(b) => Ok(Value::Bool(*b)),
                _ => Err(format!(
                    "expected type value 'bool', but found '{}'",
                    go_type(v)
                )),
            },
            ParamType::String => match v {
                Json::String(s) => Ok(Value::String(Arc::new(s.clone()))),
                _ => Err(format!(
                    "expected type value 'string', but found '{}'",
                    go_type(v)
                )),
            },
            ParamType::Int => convert_int(v).map(Value::Int),
            ParamType::UInt => convert_uint(v).map(Value::UInt),
            ParamType::Double => convert_double(v).map(Value::Float),
            ParamType::Duration => match v {
                Json::String(s) => parse_go_duration(s)
                    .map(|ns| Value::Duration(chrono::Duration::nanoseconds(ns)))
                    .ok_or_else(|| format!("expected a valid duration string, but found: '{s}'")),
                _ => Err(format!(
                    "expected a duration string, but found: {} '{}'",
                    go_type(v),
                    go_display(v)
                )),
            },
            ParamType::Timestamp => match v {
                Json::String(s) => parse_rfc3339(s).map(Value::Timestamp).ok_or_else(|| {
                    format!("expected RFC 3339 formatted timestamp string, but found '{s}'")
                }),
                _ => Err(format!(
                    "expected RFC 3339 formatted timestamp string, but found: {} '{}'",
                    go_type(v),
                    go_display(v)
                )),
            },
            ParamType::IpAddress => match v {
                Json::String(s) => parse_ip(s)
                    .map(|ip| Value::Opaque(Arc::new(ip)))
                    .ok_or_else(|| format!("expected a well-formed IP address, but found: '{s}'")),
                _ => Err(format!(
                    "expected an ipaddress string, but found: {} '{}'",
                    go_type(v),
                    go_display(v)
                )),
            },
            ParamType::List(item) => match v {
                Json::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        item.convert(x)
                            .map_err(|e| format!("found an invalid list item at index `{i}`: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|l| Value::List(Arc::new(l))),
                _ => Err(format!("list requires a list, found: {}", go_type(v))),
            },
            ParamType::Map(item) => match v {
                Json::Object(m) => {
                    let mut out = HashMap::with_capacity(m.len());
                    for (k, x) in m {
                        let x = item
                            .convert(x)
                            .map_err(|e| format!("found an invalid value for key '{k}': {e}"))?;
                        out.insert(Key::String(Arc::new(k.clone())), x);
                    }
                    Ok(Value::Map(Map { map: Arc::new(out) }))
                }
                _ => Err(format!("map requires a map, found: {}", go_type(v))),
            },
        }
    }
}

/// The Go type `structpb.Value.AsInterface` gives a JSON value, for messages.
fn go_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "<nil>",
        Json::Bool(_) => "bool",
        Json::Number(_) => "float64",
        Json::String(_) => "string",
        Json::Array(_) => "[]interface {}",
        Json::Object(_) => "map[string]interface {}",
    }
}

fn go_display(v: &Json) -> String {
    match v {
        Json::Null => "<nil>".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON value as `structpb` holds it, as a CEL value: numbers are doubles.
fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(l) => Value::List(Arc::new(l.iter().map(json_to_value).collect())),
        Json::Object(m) => Value::Map(Map {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_value(v)))
                    .collect(),
            ),
        }),
    }
}

/// A number for the numeric converters: a JSON number (a double, as in
/// `structpb`), or a string Go's `big.ParseFloat` accepts.
enum Numeric {
    /// Exact integer value (from a string that is an integer literal).
    Integer(i128),
    /// Anything else, as the nearest double; `exact` if no rounding happened
    /// (Go's `big.Float` accuracy when converting to float64).
    Float { value: f64, exact: bool },
}

fn numeric(v: &Json, want: &str) -> Result<Numeric, String> {
    match v {
        Json::Number(n) => Ok(Numeric::Float {
            value: n.as_f64().unwrap_or(f64::NAN),
            exact: true,
        }),
        Json::String(s) => parse_decimal(s).ok_or_else(|| {
            format!("expected a {want} value, but found invalid string value '{s}'")
        }),
        _ => Err(format!(
            "expected type value '{want}', but found '{}'",
            go_type(v)
        )),
    }
}

/// Parses a base-10 number as Go's `big.ParseFloat(s, 10, 64, 0)` does.
fn parse_decimal(s: &str) -> Option<Numeric> {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.eq_ignore_ascii_case("inf") {
        let value = if s.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        return Some(Numeric::Float { value, exact: true });
    }
    // Digits, '.', exponent only: Rust's parser also takes "nan", "infinity".
    if unsigned.is_empty()
        || !unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if let Ok(i) = s.parse::<i128>() {
        return Some(Numeric::Integer(i));
    }
    let value: f64 = s.parse().ok()?;
    Some(Numeric::Float {
        value,
        exact: value.is_finite() && decimal_is_exact(unsigned),
    })
}

/// Whether a decimal literal (no sign) is exactly a double: `m·10^e` with the
/// value's odd part fitting 53 bits. Literals too long to decide are taken as
/// exact.
fn decimal_is_exact(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mut exp10 = exp - frac.len() as i32;
    let mut digits = digits;
    while let Some(d) = digits.strip_suffix('0') {
        digits = d;
        exp10 += 1;
    }
    if digits.is_empty() {
        return true;
    }
    if digits.len() > 38 {
        return true;
    }
    let Ok(mut m) = digits.parse::<u128>() else {
        return true;
    };
    if exp10 >= 0 {
        for _ in 0..exp10 {
            match m.checked_mul(10) {
                Some(x) => m = x,
                None => return true,
            }
        }
    } else {
        // m / 10^n = (m / 5^n) / 2^n: exact only if 5^n divides m.
        for _ in 0..-exp10 {
            if m % 5 != 0 {
                return false;
            }
            m /= 5;
        }
    }
    let significant = 128 - m.leading_zeros() - m.trailing_zeros();
    significant <= 53
}

/// OpenFGA's `numericTypeConverterFunc[int64]`.
fn convert_int(v: &Json) -> Result<i64, String> {
    match numeric(v, "int64")? {
        Numeric::Integer(i) => Ok(i.clamp(i64::MIN as i128, i64::MAX as i128) as i64),
        Numeric::Float { value, .. } if value.is_finite() && value.fract() == 0.0 => {
            Ok(value as i64)
        }
        Numeric::Float { value, .. } => Err(format!(
            "expected an int value, but found numeric value '{value}'"
        )),
    }
}

/// OpenFGA's `numericTypeConverterFunc[uint64]`: through a (saturating) int64.
fn convert_uint(v: &Json) -> Result<u64, String> {
    let i = match numeric(v, "uint64")? {
        Numeric::Integer(i) => i.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        Numeric::Float { value, .. } if value.is_finite() && value.fract() == 0.0 => value as i64,
        Numeric::Float { value, .. } => {
            return Err(format!(
                "expected a uint value, but found numeric value '{value}'"
            ));
        }
    };
    u64::try_from(i).map_err(|_| format!("expected a uint value, but found int64 value '{i}'"))
}

/// OpenFGA's `numericTypeConverterFunc[float64]`: a string that doesn't round
/// exactly to a double is an error.
fn convert_double(v: &Json) -> Result<f64, String> {
    match numeric(v, "float64")? {
        Numeric::Integer(i) => {
            let f = i as f64;
            if f as i128 == i && f.is_finite() {
                Ok(f)
            } else {
                Err(format!("number cannot be represented as a float64: {i}"))
            }
        }
        Numeric::Float { value, exact: true } if !value.is_nan() => Ok(value),
        Numeric::Float { .. } => Err(format!(
            "number cannot be represented as a float64: {}",
            go_display(v)
        )),
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit: u64 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let mut v: u64 = 0;
        for d in int.bytes() {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        if v > (1u64 << 63) / unit {
            return None;
        }
        v *= unit;
        if !frac.is_empty() {
            // As Go: the fraction's leading digits, scaled in floating point.
            let mut f: u64 = 0;
            let mut scale = 1f64;
            for d in frac.bytes() {
                if f > (1u64 << 63) / 10 {
                    break;
                }
                f = f * 10 + u64::from(d - b'0');
                scale *= 10.0;
            }
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
            if v > 1u64 << 63 {
                return None;
            }
        }
        total = total.checked_add(v)?;
        if total > 1u64 << 63 {
            return None;
        }
        rest = after;
    }
    if neg {
        Some((total as i128).wrapping_neg() as i64)
    } else if total > i64::MAX as u64 {
        None
    } else {
        Some(total as i64)
    }
}

/// Go's `time.Parse(time.RFC3339, s)`.
fn parse_rfc3339(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    if s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

/// An IP address: OpenFGA's `IPAddress` custom CEL type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpAddress(IpAddr);

impl Opaque for IpAddress {
    fn runtime_type_name(&self) -> &str {
        "IPAddress"
    }
}

/// OpenFGA's `ParseIPAddress`: IPv4-mapped IPv6 addresses are unmapped.
fn parse_ip(s: &str) -> Option<IpAddress> {
    let ip: IpAddr = s.parse().ok()?;
    Some(IpAddress(ip.to_canonical()))
}

/// `ipaddress(string)`.
fn cel_ipaddress(s: Arc<String>) -> Result<Value, ExecutionError> {
    parse_ip(&s)
        .map(|ip| Value::Opaque(Arc::new(ip)))
        .ok_or_else(|| {
            ExecutionError::function_error(
                "ipaddress",
                format!("ParseAddr(\"{s}\"): unable to parse IP"),
            )
        })
}

/// `ipaddress.in_cidr(string)`, as OpenFGA's `ipaddressCELBinaryBinding`.
fn cel_in_cidr(This(this): This<Value>, cidr: Value) -> Result<bool, ExecutionError> {
    let Value::String(cidr) = cidr else {
        return Err(ExecutionError::function_error(
            "in_cidr",
            "a CIDR string is required for comparison",
        ));
    };
    let network: ipnet::IpNet = cidr.parse().map_err(|_| {
        ExecutionError::function_error("in_cidr", format!("'{cidr}' is a malformed CIDR string"))
    })?;
    let ip = match &this {
        Value::Opaque(o) => o.downcast_ref::<IpAddress>().map(|ip| ip.0),
        _ => None,
    }
    .ok_or_else(|| {
        ExecutionError::function_error(
            "in_cidr",
            "an IPAddress parameter value is required for comparison",
        )
    })?;
    // An IPv4-mapped IPv6 network is the IPv4 network.
    let network = match network {
        ipnet::IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
            Some(v4) if n.prefix_len() >= 96 => {
                ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).map_or(network, ipnet::IpNet::V4)
            }
            _ => network,
        },
        v4 => v4,
    };
    Ok(network.contains(&ip))
}

/// The standard environment: CEL's standard library.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// The root scope every evaluation runs in: the standard library plus
/// OpenFGA's `ipaddress` functions.
static ROOT: LazyLock<Context<'static, 'static>> = LazyLock::new(|| {
    let mut ctx = Context::with_env(Arc::clone(&ENV));
    ctx.add_function("ipaddress", cel_ipaddress)
        .expect("ipaddress is not a standard function");
    ctx.add_function("in_cidr", cel_in_cidr)
        .expect("in_cidr is not a standard function");
    ctx
});

/// A condition compiled once per model: its parsed expression and decoded
/// parameter types.
pub struct CompiledCondition {
    name: String,
    program: Program,
    /// Parameters by name, sorted.
    params: Vec<(String, ParamType)>,
}

impl std::fmt::Debug for CompiledCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCondition")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// A three-valued logic result of partial evaluation.
enum Partial {
    Bool(bool),
    Unknown,
    Other(Value),
    Error(ExecutionError),
}

impl CompiledCondition {
    /// Parses the expression and decodes the parameter types; checks that
    /// every identifier is a parameter (or a macro variable) and that the
    /// expression's type, where it can be told statically, is `bool`.
    pub fn compile(c: &model::Condition) -> Result<CompiledCondition, ConditionError> {
        let compile_err = |reason: String| ConditionError::Compile {
            condition: c.name.clone(),
            reason,
        };
        let params = c
            .parameters
            .iter()
            .map(|(name, r)| {
                ParamType::decode(r)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| {
                        compile_err(format!(
                            "failed to decode parameter type for parameter '{name}': {e}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let program = ENV
            .compile(&c.expression)
            .map_err(|e| compile_err(e.to_string().trim().to_string()))?;
        let mut checker = Checker {
            params: &params,
            scope: Vec::new(),
        };
        let ty = checker.infer(program.expression()).map_err(compile_err)?;
        if ty != Ty::Bool && ty.is_known() {
            return Err(compile_err(format!(
                "expected a bool condition expression output, but got '{}'",
                ty.name()
            )));
        }
        Ok(CompiledCondition {
            name: c.name.clone(),
            program,
            params,
        })
    }

    /// The condition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Evaluates with the tuple's stored context and the request's context
    /// (the tuple's value wins a conflict), as OpenFGA's
    /// `EvaluateTupleCondition`: an error if a declared parameter is missing
    /// from both.
    pub fn evaluate(
        &self,
        tuple_ctx: Option<&JsonMap>,
        request_ctx: Option<&JsonMap>,
    ) -> Result<bool, ConditionError> {
        let partial = self.evaluate_partial(tuple_ctx, request_ctx)?;
        if !partial.missing.is_empty() {
            return Err(ConditionError::MissingParameters {
                condition: self.name.clone(),
                params: partial.missing,
            });
        }
        Ok(partial.condition_met.unwrap_or(false))
    }

    /// Evaluates with missing parameters as unknowns, as OpenFGA's
    /// `EvaluableCondition.Evaluate`: `condition_met` is `None` when the
    /// result depends on them (`true || unknown` is `true`, `false && unknown`
    /// is `false`). Fails on an invalid parameter value, a runtime error or a
    /// non-bool result.
    pub fn evaluate_partial(
        &self,
        tuple_ctx: Option<&JsonMap>,
        request_ctx: Option<&JsonMap>,
    ) -> Result<PartialEvaluation, ConditionError> {
        if self.params.is_empty() {
            let empty = |c: Option<&JsonMap>| c.is_none_or(|c| c.is_empty());
            if !empty(tuple_ctx) || !empty(request_ctx) {
                return Err(ConditionError::InvalidParameter {
                    condition: self.name.clone(),
                    param: String::new(),
                    reason: "no parameters defined for the condition".into(),
                });
            }
        }
        let mut scope = ROOT.new_inner_scope();
        let mut missing = Vec::new();
        for (name, ty) in &self.params {
            let value = tuple_ctx
                .and_then(|c| c.get(name))
                .or_else(|| request_ctx.and_then(|c| c.get(name)));
            match value {
                Some(v) => {
                    let v = ty
                        .convert(v)
                        .map_err(|reason| ConditionError::InvalidParameter {
                            condition: self.name.clone(),
                            param: name.clone(),
                            reason,
                        })?;
                    scope.add_variable_from_value(name.as_str(), v);
                }
                None => missing.push(name.clone()),
            }
        }
        let result = if missing.is_empty() {
            match self.program.execute(&scope) {
                Ok(Value::Bool(b)) => Partial::Bool(b),
                Ok(v) => Partial::Other(v),
                Err(e) => Partial::Error(e),
            }
        } else {
            partial_eval(self.program.expression(), &scope, &missing)
        };
        let condition_met = match result {
            Partial::Bool(b) => Some(b),
            Partial::Unknown => None,
            Partial::Other(v) => {
                return Err(ConditionError::NotBoolean {
                    condition: self.name.clone(),
                    found: format!("{v:?}"),
                });
            }
            Partial::Error(e) => {
                return Err(ConditionError::Evaluation {
                    condition: self.name.clone(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(PartialEvaluation {
            condition_met,
            missing,
        })
    }
}

/// Evaluates `e` with the missing parameters as unknowns: the logical
/// operators and the conditional absorb them as cel-go's partial evaluation
/// does; anything else that touches one is unknown.
fn partial_eval(e: &Expression, ctx: &Context<'_, '_>, missing: &[String]) -> Partial {
    if let Expr::Call(call) = &e.expr
        && call.target.is_none()
    {
        match (call.func_name.as_str(), call.args.as_slice()) {
            (operators::LOGICAL_OR | operators::LOGICAL_AND, [l, r]) => {
                let decisive = call.func_name == operators::LOGICAL_OR;
                let l = partial_eval(l, ctx, missing);
                if matches!(l, Partial::Bool(b) if b == decisive) {
                    return l;
                }
                let r = partial_eval(r, ctx, missing);
                return match (l, r) {
                    (_, Partial::Bool(b)) if b == decisive => Partial::Bool(b),
                    (Partial::Bool(_), r @ (Partial::Bool(_) | Partial::Unknown)) => r,
                    (Partial::Unknown, _) | (_, Partial::Unknown) => Partial::Unknown,
                    (Partial::Error(e), _) | (_, Partial::Error(e)) => Partial::Error(e),
                    (Partial::Other(v), _) | (_, Partial::Other(v)) => {
                        Partial::Error(ExecutionError::no_such_overload(
                            &call.func_name,
                            vec![v.type_of().to_string()],
                        ))
                    }
                };
            }
            (operators::LOGICAL_NOT, [x]) => {
                return match partial_eval(x, ctx, missing) {
                    Partial::Bool(b) => Partial::Bool(!b),
                    Partial::Other(v) => Partial::Error(ExecutionError::no_such_overload(
                        "!_",
                        vec![v.type_of().to_string()],
                    )),
                    other => other,
                };
            }
            (operators::CONDITIONAL, [c, t, f]) => {
                return match partial_eval(c, ctx, missing) {
                    Partial::Bool(true) => partial_eval(t, ctx, missing),
                    Partial::Bool(false) => partial_eval(f, ctx, missing),
                    Partial::Other(v) => Partial::Error(ExecutionError::no_such_overload(
                        "_?_:_",
                        vec![v.type_of().to_string()],
                    )),
                    other => other,
                };
            }
            _ => {}
        }
    }
    match ctx.resolve(e) {
        Ok(Value::Bool(b)) => Partial::Bool(b),
        Ok(v) => Partial::Other(v),
        Err(ExecutionError::UndeclaredReference(name)) if missing.iter().any(|m| **m == *name) => {
            Partial::Unknown
        }
        Err(e) => Partial::Error(e),
    }
}

/// A static type, as far as the checker can tell.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    Null,
    Duration,
    Timestamp,
    IpAddress,
    Type,
    List(Box<Ty>),
    Map(Box<Ty>),
    /// CEL's `dyn`: known to be unknown until runtime (an `any` parameter).
    Dyn,
    /// The checker can't tell; left to runtime.
    Unknown,
}

impl Ty {
    fn is_known(&self) -> bool {
        *self != Ty::Unknown
    }

    fn name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::UInt => "uint".into(),
            Ty::Double => "double".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null_type".into(),
            Ty::Duration => "google.protobuf.Duration".into(),
            Ty::Timestamp => "google.protobuf.Timestamp".into(),
            Ty::IpAddress => "IPAddress".into(),
            Ty::Type => "type".into(),
            Ty::List(t) => format!("list({})", t.name()),
            Ty::Map(t) => format!("map(string, {})", t.name()),
            Ty::Dyn => "dyn".into(),
            Ty::Unknown => "unknown".into(),
        }
    }

    /// The element type of a list, or the value type of a map.
    fn element(&self) -> Ty {
        match self {
            Ty::List(t) | Ty::Map(t) => (**t).clone(),
            Ty::Dyn => Ty::Dyn,
            _ => Ty::Unknown,
        }
    }

    /// What iterating it binds: list elements, map keys.
    fn iterated(&self) -> Ty {
        match self {
            Ty::List(t) => (**t).clone(),
            Ty::Map(_) => Ty::String,
            Ty::Dyn => Ty::Dyn,
            _ => Ty::Unknown,
        }
    }

    /// The type of values of either type (a list's elements, a conditional).
    fn join(a: Ty, b: Ty) -> Ty {
        if a == b {
            a
        } else if !a.is_known() || !b.is_known() || a == Ty::Null || b == Ty::Null {
            Ty::Unknown
        } else {
            Ty::Dyn
        }
    }
}

/// A light version of cel-go's checker: undeclared identifiers, and the
/// expression's type where it can be told.
struct Checker<'a> {
    params: &'a [(String, ParamType)],
    /// Macro variables in scope, innermost last.
    scope: Vec<(String, Ty)>,
}

/// Names an expression can use without declaring them: type denotations.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

impl Checker<'_> {
    fn infer(&mut self, e: &Expression) -> Result<Ty, String> {
        Ok(match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::UInt,
            },
            Expr::Ident(name) => self.ident(name)?,
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for x in &l.elements {
                    let t = self.infer(x)?;
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => Ty::join(prev, t),
                    });
                }
                Ty::List(Box::new(elem.unwrap_or(Ty::Unknown)))
            }
            Expr::Map(m) => {
                let mut val: Option<Ty> = None;
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.infer(&me.key)?;
                            let t = self.infer(&me.value)?;
                            val = Some(match val {
                                None => t,
                                Some(prev) => Ty::join(prev, t),
                            });
                        }
                        EntryExpr::StructField(f) => {
                            self.infer(&f.value)?;
                        }
                    }
                }
                Ty::Map(Box::new(val.unwrap_or(Ty::Unknown)))
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.infer(&f.value)?;
                    }
                }
                Ty::Unknown
            }
            Expr::Select(s) => {
                let operand = self.infer(&s.operand)?;
                if s.test {
                    Ty::Bool
                } else {
                    match operand {
                        Ty::Map(_) | Ty::Dyn => operand.element(),
                        _ => Ty::Unknown,
                    }
                }
            }
            Expr::Comprehension(c) => {
                let range = self.infer(&c.iter_range)?;
                let accu = self.infer(&c.accu_init)?;
                let depth = self.scope.len();
                match &c.iter_var2 {
                    // Two-variable form: index/key, then value.
                    Some(v2) => {
                        let first = match &range {
                            Ty::List(_) => Ty::Int,
                            Ty::Map(_) => Ty::String,
                            _ => Ty::Unknown,
                        };
                        self.scope.push((c.iter_var.clone(), first));
                        self.scope.push((v2.clone(), range.element()));
                    }
                    None => self.scope.push((c.iter_var.clone(), range.iterated())),
                }
                self.scope.push((c.accu_var.clone(), accu));
                let checked = (|| {
                    self.infer(&c.loop_cond)?;
                    self.infer(&c.loop_step)?;
                    self.infer(&c.result)
                })();
                self.scope.truncate(depth);
                checked?
            }
            Expr::Call(call) => self.call(call)?,
            Expr::Unspecified => Ty::Unknown,
        })
    }

    fn ident(&self, name: &str) -> Result<Ty, String> {
        if let Some((_, t)) = self.scope.iter().rev().find(|(n, _)| n == name) {
            return Ok(t.clone());
        }
        if let Some((_, t)) = self.params.iter().find(|(n, _)| n == name) {
            return Ok(t.ty());
        }
        if TYPE_NAMES.contains(&name) {
            return Ok(Ty::Type);
        }
        Err(format!("undeclared reference to '{name}'"))
    }

    fn call(&mut self, call: &cel::common::ast::CallExpr) -> Result<Ty, String> {
        let target = match &call.target {
            Some(t) => Some(self.infer(t)?),
            None => None,
        };
        let args = call
            .args
            .iter()
            .map(|a| self.infer(a))
            .collect::<Result<Vec<_>, _>>()?;
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Unknown);
        Ok(match call.func_name.as_str() {
            operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::NOT_STRICTLY_FALSE
            | operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS
            | operators::IN => Ty::Bool,
            operators::CONDITIONAL => Ty::join(arg(1), arg(2)),
            operators::NEGATE => arg(0),
            operators::INDEX => arg(0).element(),
            operators::ADD => match (arg(0), arg(1)) {
                (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Ty::Timestamp,
                (a, b) if a == b && a.is_known() && a != Ty::Dyn => a,
                _ => Ty::Unknown,
            },
            operators::SUBSTRACT => match (arg(0), arg(1)) {
                (Ty::Timestamp, Ty::Duration) => Ty::Timestamp,
                (Ty::Timestamp, Ty::Timestamp) => Ty::Duration,
                (a, b) if a == b && a.is_known() && a != Ty::Dyn => a,
                _ => Ty::Unknown,
            },
            operators::MULTIPLY | operators::DIVIDE | operators::MODULO => match (arg(0), arg(1)) {
                (a, b) if a == b && matches!(a, Ty::Int | Ty::UInt | Ty::Double) => a,
                _ => Ty::Unknown,
            },
            "startsWith" | "endsWith" | "contains" | "matches" | "in_cidr" => Ty::Bool,
            "size" => Ty::Int,
            "int" => Ty::Int,
            "uint" => Ty::UInt,
            "double" => Ty::Double,
            "string" => Ty::String,
            "bool" => Ty::Bool,
            "bytes" => Ty::Bytes,
            "timestamp" => Ty::Timestamp,
            "duration" => Ty::Duration,
            "ipaddress" => Ty::IpAddress,
            "dyn" => Ty::Dyn,
            "type" => Ty::Type,
            "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
            | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds"
                if target.is_some() =>
            {
                Ty::Int
            }
            _ => Ty::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::shared_data;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn ty(name: &str) -> model::ConditionParamTypeRef {
        let (outer, inner) = match name.split_once('<') {
            Some((o, i)) => (o, Some(i.trim_end_matches('>'))),
            None => (name, None),
        };
        model::ConditionParamTypeRef {
            type_name: format!("TYPE_NAME_{}", outer.to_ascii_uppercase()),
            generic_types: inner.map(ty).into_iter().collect(),
        }
    }

    /// A condition from `name(a: t, ..)` parameters.
    fn cond(expression: &str, params: &[(&str, &str)]) -> model::Condition {
        model::Condition {
            name: "c".into(),
            expression: expression.into(),
            parameters: params
                .iter()
                .map(|(n, t)| ((*n).to_string(), ty(t)))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn compile(expression: &str, params: &[(&str, &str)]) -> CompiledCondition {
        CompiledCondition::compile(&cond(expression, params))
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    fn obj(v: Json) -> JsonMap {
        match v {
            Json::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// Evaluates with the request context only.
    fn eval(c: &CompiledCondition, request: Json) -> Result<bool, ConditionError> {
        c.evaluate(None, Some(&obj(request)))
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn compiled_condition_is_send_and_sync() {
        assert_send_sync::<CompiledCondition>();
    }

    #[test]
    fn int_parameter() {
        let c = compile("x < 100", &[("x", "int")]);
        assert_eq!(eval(&c, json!({"x": 10})), Ok(true));
        assert_eq!(eval(&c, json!({"x": 101})), Ok(false));
        assert_eq!(eval(&c, json!({"x": 10.0})), Ok(true));
        assert_eq!(eval(&c, json!({"x": "10"})), Ok(true));
        assert_eq!(eval(&c, json!({"x": "1e2"})), Ok(false));
        for bad in [
            json!(10.5),
            json!("ten"),
            json!(true),
            json!(null),
            json!("10.5"),
        ] {
            assert!(
                matches!(
                    eval(&c, json!({ "x": bad })),
                    Err(ConditionError::InvalidParameter { ref param, .. }) if param == "x"
                ),
                "{bad}"
            );
        }
        // Saturates as Go's big.Float.Int64.
        let c = compile("x == 9223372036854775807", &[("x", "int")]);
        assert_eq!(eval(&c, json!({"x": 1e20})), Ok(true));
    }

    #[test]
    fn uint_parameter() {
        let c = compile("x < 100u", &[("x", "uint")]);
        assert_eq!(eval(&c, json!({"x": 10})), Ok(true));
        assert_eq!(eval(&c, json!({"x": "200"})), Ok(false));
        assert!(matches!(
            eval(&c, json!({"x": -1})),
            Err(ConditionError::InvalidParameter { .. })
        ));
        assert!(matches!(
            eval(&c, json!({"x": 1.5})),
            Err(ConditionError::InvalidParameter { .. })
        ));
    }

    #[test]
    fn double_parameter() {
        let c = compile("x > 0.0", &[("x", "double")]);
        assert_eq!(
            eval(&c, json!({"x": 1.797_693_134_862_315_7e308})),
            Ok(true)
        );
        assert_eq!(eval(&c, json!({"x": -1.5})), Ok(false));
        assert_eq!(eval(&c, json!({"x": 3})), Ok(true));
        assert_eq!(eval(&c, json!({"x": "0.5"})), Ok(true));
        // Out of range, or not exactly a double (Go's big.Float accuracy).
        for bad in [
            "1.79769313486231570814527423731704356798070e+309",
            "0.1",
            "x",
        ] {
            assert!(
                matches!(
                    eval(&c, json!({ "x": bad })),
                    Err(ConditionError::InvalidParameter { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bool_and_string_parameters() {
        let c = compile("b && s == 'hello'", &[("b", "bool"), ("s", "string")]);
        assert_eq!(eval(&c, json!({"b": true, "s": "hello"})), Ok(true));
        assert_eq!(eval(&c, json!({"b": false, "s": "hello"})), Ok(false));
        assert!(matches!(
            eval(&c, json!({"b": "true", "s": "hello"})),
            Err(ConditionError::InvalidParameter { ref param, .. }) if param == "b"
        ));
        assert!(matches!(
            eval(&c, json!({"b": true, "s": 1})),
            Err(ConditionError::InvalidParameter { ref param, .. }) if param == "s"
        ));
    }

    #[test]
    fn string_functions() {
        let c = compile(
            "s.startsWith('ab') && s.endsWith('yz') && s.contains('mm') && s.matches('^a.*z$')",
            &[("s", "string")],
        );
        assert_eq!(eval(&c, json!({"s": "abmmyz"})), Ok(true));
        assert_eq!(eval(&c, json!({"s": "abyz"})), Ok(false));
    }

    #[test]
    fn duration_and_timestamp_parameters() {
        let c = compile(
            "current_time < grant_time + grant_duration",
            &[
                ("current_time", "timestamp"),
                ("grant_time", "timestamp"),
                ("grant_duration", "duration"),
            ],
        );
        let ctx = |now: &str, d: &str| json!({"current_time": now, "grant_time": "2023-01-01T00:00:00Z", "grant_duration": d});
        assert_eq!(eval(&c, ctx("2023-01-01T00:09:59Z", "10m")), Ok(true));
        assert_eq!(eval(&c, ctx("2023-01-01T00:10:01Z", "10m")), Ok(false));
        assert_eq!(
            eval(&c, ctx("2023-01-01T01:29:59+00:00", "1h30m")),
            Ok(true)
        );
        assert_eq!(eval(&c, ctx("2023-01-01T00:00:01.5Z", "1.5s")), Ok(false));
        for (now, d) in [
            ("2023-01-01", "1h"),
            ("2023-01-01T00:00:00Z", "1d"),
            ("x", "10"),
        ] {
            assert!(
                matches!(
                    eval(&c, ctx(now, d)),
                    Err(ConditionError::InvalidParameter { .. })
                ),
                "{now} {d}"
            );
        }
        let c = compile(
            "t > timestamp('2023-01-01T00:00:00Z') && d >= duration('90m')",
            &[("t", "timestamp"), ("d", "duration")],
        );
        assert_eq!(
            eval(&c, json!({"t": "2023-06-01T00:00:00Z", "d": "1h30m"})),
            Ok(true)
        );
        assert_eq!(
            eval(&c, json!({"t": "2023-06-01T00:00:00Z", "d": "89m59s"})),
            Ok(false)
        );
    }

    #[test]
    fn go_durations() {
        let h = 3_600_000_000_000i64;
        assert_eq!(parse_go_duration("1h30m"), Some(h * 3 / 2));
        assert_eq!(parse_go_duration("-1.5h"), Some(-h * 3 / 2));
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("1us"), Some(1_000));
        assert_eq!(parse_go_duration("1µs"), Some(1_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        for bad in ["", "1", "1d", "h", ".s", "1h 2m", "9999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipaddress_parameter() {
        let c = compile(
            "user_ip.in_cidr(cidr)",
            &[("user_ip", "ipaddress"), ("cidr", "string")],
        );
        let run = |ip: &str, cidr: &str| eval(&c, json!({"user_ip": ip, "cidr": cidr}));
        assert_eq!(run("192.168.0.1", "192.168.0.0/24"), Ok(true));
        assert_eq!(run("192.168.1.0", "192.168.0.0/24"), Ok(false));
        assert_eq!(run("::ffff:10.1.2.3", "10.0.0.0/8"), Ok(true));
        assert_eq!(run("10.1.2.3", "::ffff:10.0.0.0/104"), Ok(true));
        assert_eq!(run("2001:db8::1", "2001:db8::/32"), Ok(true));
        assert_eq!(run("2001:db8::1", "10.0.0.0/8"), Ok(false));
        assert!(matches!(
            run("192.168.0.1", "not a cidr"),
            Err(ConditionError::Evaluation { .. })
        ));
        assert!(matches!(
            run("192.168.0", "10.0.0.0/8"),
            Err(ConditionError::InvalidParameter { ref param, .. }) if param == "user_ip"
        ));
        let c = compile(
            "ip == ipaddress('10.0.0.1') && ipaddress('10.1.1.1').in_cidr('10.0.0.0/8')",
            &[("ip", "ipaddress")],
        );
        assert_eq!(eval(&c, json!({"ip": "10.0.0.1"})), Ok(true));
        assert_eq!(eval(&c, json!({"ip": "10.0.0.2"})), Ok(false));
        let c = compile("ipaddress('nope') == ip", &[("ip", "ipaddress")]);
        assert!(matches!(
            eval(&c, json!({"ip": "10.0.0.1"})),
            Err(ConditionError::Evaluation { .. })
        ));
    }

    #[test]
    fn list_and_map_parameters() {
        let c = compile(
            "'admin' in roles && roles[0] == 'user' && size(roles) == 2 && m['k'] > 1 && 'k' in m",
            &[("roles", "list<string>"), ("m", "map<int>")],
        );
        assert_eq!(
            eval(&c, json!({"roles": ["user", "admin"], "m": {"k": 2}})),
            Ok(true)
        );
        assert_eq!(
            eval(&c, json!({"roles": ["user", "guest"], "m": {"k": 2}})),
            Ok(false)
        );
        for bad in [
            json!({"roles": ["user", 1], "m": {"k": 2}}),
            json!({"roles": "user", "m": {"k": 2}}),
            json!({"roles": ["user"], "m": {"k": 2.5}}),
            json!({"roles": ["user"], "m": [1]}),
        ] {
            assert!(
                matches!(
                    eval(&c, bad.clone()),
                    Err(ConditionError::InvalidParameter { .. })
                ),
                "{bad}"
            );
        }
        let c = compile(
            "xs.exists(x, x > 2) && xs.all(x, x > 0) && xs.exists_one(x, x == 3) \
             && xs.map(x, x * 2) == [2, 4, 6] && xs.filter(x, x > 1).size() == 2",
            &[("xs", "list<int>")],
        );
        assert_eq!(eval(&c, json!({"xs": [1, 2, 3]})), Ok(true));
        assert_eq!(eval(&c, json!({"xs": [1, 2, 3, 3]})), Ok(false));
    }

    #[test]
    fn any_parameter_keeps_json_types() {
        let c = compile(
            "x == 1 && user.favoriteColor == color && user.tags[1] == 'b' && n == null",
            &[
                ("x", "any"),
                ("user", "map<any>"),
                ("color", "string"),
                ("n", "any"),
            ],
        );
        let ctx = json!({"x": 1, "user": {"favoriteColor": "red", "tags": ["a", "b"]}, "color": "red", "n": null});
        assert_eq!(eval(&c, ctx), Ok(true));
    }

    #[test]
    fn tuple_context_wins_over_request_context() {
        let c = compile("x < 100", &[("x", "int")]);
        let tuple = obj(json!({"x": 1}));
        let request = obj(json!({"x": 1000}));
        assert_eq!(c.evaluate(Some(&tuple), Some(&request)), Ok(true));
        assert_eq!(c.evaluate(Some(&request), Some(&tuple)), Ok(false));
        // An invalid request value is shadowed by the tuple's.
        let bad = obj(json!({"x": "nope"}));
        assert_eq!(c.evaluate(Some(&tuple), Some(&bad)), Ok(true));
    }

    #[test]
    fn context_keys_that_are_not_parameters_are_ignored() {
        let c = compile("x < 100", &[("x", "int")]);
        assert_eq!(eval(&c, json!({"x": 1, "y": "whatever"})), Ok(true));
    }

    #[test]
    fn a_condition_without_parameters_rejects_context() {
        let c = compile("true", &[]);
        assert_eq!(c.evaluate(None, None), Ok(true));
        assert_eq!(c.evaluate(None, Some(&JsonMap::new())), Ok(true));
        assert!(matches!(
            eval(&c, json!({"x": 1})),
            Err(ConditionError::InvalidParameter { .. })
        ));
    }

    #[test]
    fn missing_parameters_are_an_error_even_when_the_result_is_determined() {
        let c = compile("x < 100 || y < 50", &[("x", "int"), ("y", "int")]);
        assert_eq!(eval(&c, json!({"x": 10, "y": 5})), Ok(true));
        assert_eq!(eval(&c, json!({"x": 101, "y": 51})), Ok(false));
        for ctx in [json!({"x": 10}), json!({"y": 10}), json!({})] {
            assert!(
                matches!(
                    eval(&c, ctx.clone()),
                    Err(ConditionError::MissingParameters { .. })
                ),
                "{ctx}"
            );
        }
        let err = c.evaluate(None, None).unwrap_err();
        assert_eq!(
            err,
            ConditionError::MissingParameters {
                condition: "c".into(),
                params: vec!["x".into(), "y".into()]
            }
        );
        assert!(err.to_string().contains("'c'"));
    }

    fn partial(c: &CompiledCondition, request: Json) -> Option<bool> {
        c.evaluate_partial(None, Some(&obj(request)))
            .unwrap()
            .condition_met
    }

    #[test]
    fn partial_evaluation_determined_or_unknown() {
        let or = compile("x < 100 || y < 50", &[("x", "int"), ("y", "int")]);
        assert_eq!(partial(&or, json!({"x": 1})), Some(true));
        assert_eq!(partial(&or, json!({"y": 1})), Some(true));
        assert_eq!(partial(&or, json!({"x": 101})), None);
        let and = compile("x < 100 && y < 50", &[("x", "int"), ("y", "int")]);
        assert_eq!(partial(&and, json!({"x": 101})), Some(false));
        assert_eq!(partial(&and, json!({"y": 51})), Some(false));
        assert_eq!(partial(&and, json!({"x": 1})), None);
        let not = compile("!(x < 100 && y < 50)", &[("x", "int"), ("y", "int")]);
        assert_eq!(partial(&not, json!({"x": 101})), Some(true));
        assert_eq!(partial(&not, json!({"x": 1})), None);
        let tern = compile("x > 0 ? y > 0 : true", &[("x", "int"), ("y", "int")]);
        assert_eq!(partial(&tern, json!({"x": -1})), Some(true));
        assert_eq!(partial(&tern, json!({"x": 1})), None);
        assert_eq!(partial(&tern, json!({"y": 1})), None);
        let arith = compile(
            "x + y > 3 || z",
            &[("x", "int"), ("y", "int"), ("z", "bool")],
        );
        assert_eq!(partial(&arith, json!({"x": 1, "z": true})), Some(true));
        assert_eq!(partial(&arith, json!({"x": 1, "z": false})), None);
        let missing = or
            .evaluate_partial(None, Some(&obj(json!({"x": 1}))))
            .unwrap();
        assert_eq!(missing.missing, vec!["y".to_string()]);
    }

    #[test]
    fn runtime_errors_win_over_missing_parameters() {
        let c = compile("x / 0 == 1", &[("x", "int"), ("y", "int")]);
        assert!(matches!(
            eval(&c, json!({"x": 1})),
            Err(ConditionError::Evaluation { .. })
        ));
        // but an unknown absorbs an error, as in cel-go
        let c = compile("x / 0 == 1 || y > 0", &[("x", "int"), ("y", "int")]);
        assert!(matches!(
            eval(&c, json!({"x": 1})),
            Err(ConditionError::MissingParameters { .. })
        ));
    }

    #[test]
    fn runtime_errors() {
        let c = compile("m['missing'] == 1", &[("m", "map<int>")]);
        let err = eval(&c, json!({"m": {}})).unwrap_err();
        assert!(matches!(err, ConditionError::Evaluation { .. }), "{err}");
        assert!(err.to_string().contains("'c'"));
        let c = compile("l[3] == 1", &[("l", "list<int>")]);
        assert!(matches!(
            eval(&c, json!({"l": [1]})),
            Err(ConditionError::Evaluation { .. })
        ));
    }

    #[test]
    fn non_bool_result() {
        // The checker can't type a conditional joining null and bool: only
        // known at runtime.
        let c = compile("x ? null : true", &[("x", "bool")]);
        assert_eq!(eval(&c, json!({"x": false})), Ok(true));
        assert!(matches!(
            eval(&c, json!({"x": true})),
            Err(ConditionError::NotBoolean { .. })
        ));
    }

    #[test]
    fn compile_errors() {
        let bad = |expression: &str, params: &[(&str, &str)]| {
            let err = CompiledCondition::compile(&cond(expression, params)).unwrap_err();
            assert!(
                matches!(err, ConditionError::Compile { ref condition, .. } if condition == "c"),
                "{expression}: {err}"
            );
            err
        };
        bad("x <", &[("x", "int")]);
        bad("x < 100 &&", &[("x", "int")]);
        let e = bad("y < 100", &[("x", "int")]);
        assert!(e.to_string().contains("undeclared reference to 'y'"), "{e}");
        bad("x + 1", &[("x", "int")]);
        bad("x", &[("x", "string")]);
        bad("x", &[("x", "any")]);
        bad("xs.map(v, v)", &[("xs", "list<int>")]);
        bad("xs.exists(v, w > 1)", &[("xs", "list<int>")]);
        bad("true", &[("x", "TYPE_NAME_NOPE")]);
        let mut c = cond("true", &[]);
        c.parameters.insert(
            "l".into(),
            model::ConditionParamTypeRef {
                type_name: "TYPE_NAME_LIST".into(),
                generic_types: vec![],
            },
        );
        assert!(matches!(
            CompiledCondition::compile(&c),
            Err(ConditionError::Compile { .. })
        ));
        // fine
        compile("x", &[("x", "bool")]);
        compile("xs.exists(v, v > 1)", &[("xs", "list<int>")]);
        compile("m.k", &[("m", "map<bool>")]);
        compile("m.all(k, k.startsWith('a'))", &[("m", "map<int>")]);
    }

    /// The `condition name(a: t, ..) { expr }` blocks of a DSL model, as
    /// model conditions (DSL type `list<string>` is `TYPE_NAME_LIST` of
    /// `TYPE_NAME_STRING`).
    fn dsl_conditions(dsl: &str) -> BTreeMap<String, model::Condition> {
        let mut out = BTreeMap::new();
        let mut rest = dsl;
        while let Some(at) = rest.find("condition ") {
            let after = &rest[at + "condition ".len()..];
            let open = after.find('(').expect("(");
            let close = after.find(')').expect(")");
            let body_open = after.find('{').expect("{");
            let mut depth = 0;
            let body_close = body_open
                + after[body_open..]
                    .char_indices()
                    .find(|&(_, ch)| {
                        depth += match ch {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .expect("}")
                    .0;
            let name = after[..open].trim().to_string();
            let parameters = after[open + 1..close]
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    let (n, t) = p.split_once(':').expect("name: type");
                    (n.trim().to_string(), ty(&t.replace(' ', "")))
                })
                .collect();
            let expression = after[body_open + 1..body_close]
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string();
            out.insert(
                name.clone(),
                model::Condition {
                    name,
                    expression,
                    parameters,
                },
            );
            rest = &after[body_close..];
        }
        out
    }

    fn yaml(path: &std::path::Path) -> Json {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn transformer_102_data_types_compile_and_evaluate() {
        let path = shared_data().join(
            "openfga/language-dsl/transformer/102-conditions-data-types/authorization-model.json",
        );
        let text = std::fs::read_to_string(&path).expect("authorization-model.json");
        let m: model::AuthorizationModel = serde_json::from_str(&text).expect("model");
        assert!(m.conditions.len() >= 9);
        let compiled: BTreeMap<_, _> = m
            .conditions
            .iter()
            .map(|(n, c)| {
                let cc = CompiledCondition::compile(c).unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(cc.name(), n);
                (n.as_str(), cc)
            })
            .collect();
        let cases = [
            ("is_valid_int", json!({"_int": 1}), Ok(true)),
            ("is_valid_int", json!({"_int": 0}), Ok(false)),
            ("is_valid_uint", json!({"_uint": 1}), Ok(true)),
            ("is_valid_double", json!({"_double": 0.5}), Ok(true)),
            ("is_valid_duration", json!({"_duration": "1s"}), Ok(true)),
            ("is_valid_duration", json!({"_duration": "0s"}), Ok(false)),
            (
                "is_valid_timestamp",
                json!({"_timestamp": "2023-01-01T00:00:00Z"}),
                Ok(true),
            ),
            (
                "is_valid_ipaddress",
                json!({"_ipaddress": "10.0.0.1"}),
                Ok(true),
            ),
            (
                "is_valid_ipaddress",
                json!({"_ipaddress": "192.0.0.1"}),
                Ok(false),
            ),
            (
                "is_valid_map_string",
                json!({"_mapstring": {"key": "v"}}),
                Ok(true),
            ),
            (
                "is_valid_map_string",
                json!({"_mapstring": {"other": "v"}}),
                Ok(false),
            ),
            (
                "is_valid_list_string",
                json!({"_liststring": ["1"]}),
                Ok(true),
            ),
            (
                "is_valid_list_string",
                json!({"_liststring": ["1", "2"]}),
                Ok(false),
            ),
        ];
        for (name, ctx, want) in cases {
            let Some(c) = compiled.get(name) else {
                continue;
            };
            assert_eq!(eval(c, ctx.clone()), want, "{name} {ctx}");
        }
    }

    #[test]
    fn every_condition_in_the_sample_stores_and_conformance_tests_compiles() {
        let mut models = Vec::new();
        let stores = shared_data().join("openfga/sample-stores");
        for dir in std::fs::read_dir(&stores).expect("sample-stores") {
            let path = dir.expect("entry").path().join("store.fga.yaml");
            if let Some(Json::String(m)) = path
                .exists()
                .then(|| yaml(&path))
                .and_then(|y| y.get("model").cloned())
            {
                models.push(m);
            }
        }
        let abac = yaml(&shared_data().join("openfga/conformance/abac_tests.yaml"));
        for t in abac["tests"].as_array().expect("tests") {
            for stage in t["stages"].as_array().into_iter().flatten() {
                if let Some(m) = stage["model"].as_str() {
                    models.push(m.to_string());
                }
            }
        }
        let mut n = 0;
        for m in &models {
            for (name, c) in dsl_conditions(m) {
                CompiledCondition::compile(&c)
                    .unwrap_or_else(|e| panic!("{name} ({}): {e}", c.expression));
                n += 1;
            }
        }
        assert!(n >= 30, "only {n} conditions found");
    }

    /// The conformance checks whose answer is one tuple's condition: the
    /// checked relation is `define r: [t with cond]` and the stage has one
    /// tuple for that object and relation, the checked one.
    #[test]
    fn abac_conformance_single_tuple_checks() {
        let abac = yaml(&shared_data().join("openfga/conformance/abac_tests.yaml"));
        let mut checked = 0;
        for t in abac["tests"].as_array().expect("tests") {
            for stage in t["stages"].as_array().into_iter().flatten() {
                let Some(dsl) = stage["model"].as_str() else {
                    continue;
                };
                let conditions = dsl_conditions(dsl);
                // (type, relation) -> definition
                let mut defs = BTreeMap::new();
                let mut current = "";
                for line in dsl.lines().map(str::trim) {
                    if let Some(ty) = line.strip_prefix("type ") {
                        current = ty.trim();
                    } else if let Some((rel, body)) =
                        line.strip_prefix("define ").and_then(|d| d.split_once(':'))
                    {
                        defs.insert(
                            (current.to_string(), rel.trim().to_string()),
                            body.trim().to_string(),
                        );
                    }
                }
                let tuples = stage["tuples"].as_array().cloned().unwrap_or_default();
                for a in stage["checkAssertions"].as_array().into_iter().flatten() {
                    let key = &a["tuple"];
                    let same_slot: Vec<_> = tuples
                        .iter()
                        .filter(|x| {
                            x["object"] == key["object"] && x["relation"] == key["relation"]
                        })
                        .collect();
                    let [tuple] = same_slot.as_slice() else {
                        continue;
                    };
                    if tuple["user"] != key["user"] {
                        continue;
                    }
                    let Some(cond_name) = tuple["condition"]["name"].as_str() else {
                        continue;
                    };
                    let object_type = key["object"].as_str().unwrap().split(':').next().unwrap();
                    let user_type = key["user"].as_str().unwrap().split(':').next().unwrap();
                    let rel = key["relation"].as_str().unwrap();
                    let Some(def) = defs.get(&(object_type.to_string(), rel.to_string())) else {
                        continue;
                    };
                    if *def != format!("[{user_type} with {cond_name}]") {
                        continue;
                    }
                    let c = CompiledCondition::compile(&conditions[cond_name]).expect("compiles");
                    let tuple_ctx = tuple["condition"]["context"].as_object();
                    let request_ctx = a["context"].as_object();
                    let got = c.evaluate(tuple_ctx, request_ctx);
                    let what = format!(
                        "{} {cond_name} {:?} {:?}",
                        t["name"], tuple_ctx, request_ctx
                    );
                    if a.get("errorCode").is_some() {
                        assert!(got.is_err(), "{what}: {got:?}");
                    } else {
                        assert_eq!(got, Ok(a["expectation"].as_bool().expect("bool")), "{what}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "only {checked} single-tuple checks");
    }
}

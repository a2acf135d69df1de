//! Every function conform adds to DataFusion, in one registry.
//!
//! Mapping expressions and validation rules are plain DataFusion expressions; what SQL lacks is
//! provided here as scalar UDFs with *try* semantics: a value that does not convert becomes null
//! (the validator then reports it as a `type`/`format` error on that row), never a batch error.
//! The functions carry no hidden state: everything they need is in their arguments (formats and
//! schemas are literals), so a plan that uses them can be serialised and run elsewhere.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Builder, Float64Builder, StringArray,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use rayon::prelude::*;

type DfResult<T> = datafusion::error::Result<T>;

/// All conform functions, ready to register.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        udf(Kind::TryToDate),
        udf(Kind::TryToTimestamp),
        udf(Kind::ParseNumber),
        udf(Kind::ParseBool),
        udf(Kind::Clean),
        udf(Kind::RequiredOk),
        udf(Kind::ConvertedOk),
        udf(Kind::IsFormat),
        udf(Kind::JsonSchemaErrors),
        guard::WithinBudget::udf(),
    ]
}

pub(crate) mod guard;
mod parse;

pub use guard::is_guarded;
use parse::days_since_epoch;
pub use parse::{DateFormats, parse_bool_str, parse_number_str};

/// Functions a mapping expression may call: pure, deterministic, and row-level.
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    // conform's own try-variants and cleaning functions
    "try_to_date",
    "try_to_timestamp",
    "parse_number",
    "parse_bool",
    "clean",
    // strings
    "lower",
    "upper",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "concat",
    "concat_ws",
    "substr",
    "substring",
    "left",
    "right",
    "lpad",
    "rpad",
    "replace",
    "regexp_replace",
    "regexp_like",
    "split_part",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "reverse",
    "repeat",
    "strpos",
    "starts_with",
    "ends_with",
    "translate",
    "ascii",
    "chr",
    "contains",
    "to_hex",
    // null handling
    "nullif",
    "coalesce",
    "nvl",
    "nvl2",
    "ifnull",
    // numbers
    "abs",
    "round",
    "floor",
    "ceil",
    "trunc",
    "power",
    "pow",
    "sqrt",
    "ln",
    "log",
    "log10",
    "log2",
    "exp",
    "signum",
    "greatest",
    "least",
    // dates
    "date_part",
    "date_trunc",
    "to_char",
    "make_date",
    "from_unixtime",
    // nested values
    "get_field",
    "named_struct",
    "struct",
    "make_array",
    "array_element",
];

/// conform's own functions of the allow-list: syntax and result, for the reference.
const OWN: &[(&str, &str, &str)] = &[
    (
        "try_to_date",
        "try_to_date(text, format, ...)",
        "date: the first chrono format (`'%d/%m/%Y'`) that parses; null if none",
    ),
    (
        "try_to_timestamp",
        "try_to_timestamp(text, format, ...)",
        "timestamp (µs, UTC); no format = RFC 3339 / ISO 8601",
    ),
    (
        "parse_number",
        "parse_number(text)",
        "double: strips currency signs, spaces and thousands separators (`'$1,234.50'`, \
         `'1.234,50 €'`, `'(12)'`); null if not a number",
    ),
    (
        "parse_bool",
        "parse_bool(text)",
        "boolean: `true/t/yes/y/1/on`, `false/f/no/n/0/off`, and `ja/nein`, `oui/non`, \
         `sí/no`, `sim/não`, `wahr/falsch`, `vrai/faux`, any case; null otherwise",
    ),
    (
        "clean",
        "clean(text)",
        "text trimmed of ASCII whitespace; empty → null",
    ),
];

/// `docs/functions.md`: every function a mapping expression may call, generated from the
/// allow-list, conform's own functions and DataFusion's documentation of its built-ins. A test
/// compares the committed page with this text.
pub fn reference_markdown() -> String {
    let ctx = SessionContext::new();
    register_all(&ctx);
    let mut md = String::from(
        "# Functions of the mapping language\n\n\
         Every function a mapping expression may call, generated from the allow-list in \
         `src/functions/mod.rs` (do not edit by hand: `CONFORM_UPDATE_DOCS=1 cargo test --test it \
         generated_references` rewrites it). Any other function is refused when the mapping \
         compiles. Built-ins run in a guarded form: a row on which the call fails gets null \
         (and is reported by the validator) instead of failing the batch. The growing \
         functions share one output budget per expression: together at most \
         1048576 bytes per row and 268435456 bytes per batch; a row past it gets null there and \
         is invalid, and a call on literals past it is a compile error.\n\n\
         | function | syntax | result | row-level behaviour |\n|---|---|---|---|\n",
    );
    // DataFusion's descriptions link to pages of its own site: the link text is kept.
    let unlink = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)").expect("a valid pattern");
    let cell = |s: &str| {
        let s = unlink.replace_all(s, "$1");
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|")
    };
    for name in ALLOWED_FUNCTIONS {
        let (syntax, result) = match OWN.iter().find(|(n, _, _)| n == name) {
            Some((_, syntax, result)) => (syntax.to_string(), result.to_string()),
            None => match datafusion::execution::FunctionRegistry::udf(&ctx, name)
                .ok()
                .and_then(|f| {
                    f.documentation()
                        .map(|d| (d.syntax_example.clone(), d.description.clone()))
                }) {
                Some((syntax, description)) => (syntax, description),
                None => (format!("{name}(...)"), "DataFusion's built-in".to_string()),
            },
        };
        let behaviour = if guard::GROWING.contains(name) {
            "guarded; shares the output budget"
        } else if is_guarded(name) {
            "guarded"
        } else {
            "total (never fails a row)"
        };
        md.push_str(&format!(
            "| `{name}` | `{}` | {} | {behaviour} |\n",
            cell(&syntax).replace('`', ""),
            cell(&result)
        ));
    }
    md
}

/// Registers every conform function on a session, and the allow-listed built-ins in their
/// guarded form (row-level try semantics, bounded output).
pub fn register_all(ctx: &SessionContext) {
    for f in all() {
        ctx.register_udf(f);
    }
    guard::register(ctx);
}

/// Names and signatures of the conform functions, for documentation and prompts.
pub const SIGNATURES: &[(&str, &str)] = &[
    (
        "try_to_date",
        "try_to_date(text, format, ...) -> date: the first chrono format that parses; null if none",
    ),
    (
        "try_to_timestamp",
        "try_to_timestamp(text, format, ...) -> timestamp(µs, UTC): as try_to_date; no format = RFC 3339 / ISO 8601",
    ),
    (
        "parse_number",
        "parse_number(text) -> double: strips currency signs, spaces and thousands separators ('$1,234.50', '1.234,50 €', '(12)'); null if not a number",
    ),
    (
        "clean",
        "clean(text) -> text: trims ASCII whitespace (space, tab, CR, LF); an empty result is null",
    ),
    (
        "parse_bool",
        "parse_bool(text) -> boolean: true/t/yes/y/1/on and false/f/no/n/0/off (also ja/nein, oui/non, sí/no, sim/não), any case; null otherwise",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    TryToDate,
    TryToTimestamp,
    ParseNumber,
    ParseBool,
    Clean,
    RequiredOk,
    ConvertedOk,
    IsFormat,
    JsonSchemaErrors,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ConformUdf {
    kind: Kind,
    signature: Signature,
}

fn udf(kind: Kind) -> ScalarUDF {
    let signature = match kind {
        Kind::ParseNumber | Kind::ParseBool | Kind::Clean => {
            Signature::any(1, Volatility::Immutable)
        }
        Kind::IsFormat => Signature::any(2, Volatility::Immutable),
        Kind::JsonSchemaErrors => Signature::any(3, Volatility::Immutable),
        Kind::TryToDate | Kind::TryToTimestamp | Kind::RequiredOk | Kind::ConvertedOk => {
            Signature::variadic_any(Volatility::Immutable)
        }
    };
    ScalarUDF::new_from_impl(ConformUdf { kind, signature })
}

impl ScalarUDFImpl for ConformUdf {
    fn name(&self) -> &str {
        match self.kind {
            Kind::TryToDate => "try_to_date",
            Kind::TryToTimestamp => "try_to_timestamp",
            Kind::ParseNumber => "parse_number",
            Kind::ParseBool => "parse_bool",
            Kind::Clean => "clean",
            Kind::RequiredOk => "required_ok",
            Kind::ConvertedOk => "converted_ok",
            Kind::IsFormat => "is_format",
            Kind::JsonSchemaErrors => "json_schema_errors",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::TryToDate => DataType::Date32,
            Kind::TryToTimestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::ParseNumber => DataType::Float64,
            Kind::ParseBool | Kind::RequiredOk | Kind::ConvertedOk | Kind::IsFormat => {
                DataType::Boolean
            }
            Kind::JsonSchemaErrors | Kind::Clean => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let name = self.name().to_string();
        let out: ArrayRef = match self.kind {
            Kind::TryToDate | Kind::TryToTimestamp => {
                let Some((value, formats)) = args.args.split_first() else {
                    return exec_err!("{name} needs a value and optional format strings");
                };
                let formats = DateFormats::new(&literal_strings(&name, formats)?)
                    .map_err(|e| DataFusionError::Execution(format!("{name}: {e}")))?;
                let text = as_text(value, n)?;
                if self.kind == Kind::TryToDate {
                    let mut b = Date32Builder::with_capacity(n);
                    for v in text.iter() {
                        b.append_option(
                            v.and_then(|v| formats.date(v.trim())).map(days_since_epoch),
                        );
                    }
                    Arc::new(b.finish())
                } else {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                    for v in text.iter() {
                        b.append_option(v.and_then(|v| formats.timestamp_micros(v.trim())));
                    }
                    Arc::new(b.finish())
                }
            }
            Kind::ParseNumber => {
                let value = &args.args[0];
                if value.data_type().is_numeric() {
                    value
                        .to_array(n)
                        .and_then(|a| Ok(arrow::compute::cast(&a, &DataType::Float64)?))?
                } else {
                    let text = as_text(value, n)?;
                    let mut b = Float64Builder::with_capacity(n);
                    text.iter()
                        .for_each(|v| b.append_option(v.and_then(parse_number_str)));
                    Arc::new(b.finish())
                }
            }
            Kind::ParseBool => {
                let value = &args.args[0];
                if value.data_type() == DataType::Boolean {
                    value.to_array(n)?
                } else {
                    let text = as_text(value, n)?;
                    let mut b = BooleanBuilder::with_capacity(n);
                    text.iter()
                        .for_each(|v| b.append_option(v.and_then(parse_bool_str)));
                    Arc::new(b.finish())
                }
            }
            Kind::Clean => {
                let text = as_text(&args.args[0], n)?;
                let ws = [' ', '\t', '\r', '\n'];
                let changes = |v: &str| v.is_empty() || v.starts_with(ws) || v.ends_with(ws);
                // Most values are already clean: then the input is the output, without a copy.
                if !text.iter().flatten().any(changes) {
                    return Ok(ColumnarValue::Array(Arc::new(text)));
                }
                let out: StringArray = text
                    .iter()
                    .map(|v| {
                        v.map(|v| v.trim_matches([' ', '\t', '\r', '\n']))
                            .filter(|v| !v.is_empty())
                    })
                    .collect();
                Arc::new(out)
            }
            Kind::RequiredOk | Kind::ConvertedOk => {
                // (target value, source columns...): a row passes when its value is there, or
                // else when a source value is present (required) / absent (converted). One
                // pass that looks at the sources only where the value is null; the same test
                // written as `v IS NOT NULL OR …` makes DataFusion filter the whole batch for
                // the few rows where the left side is false.
                let Some((value, sources)) = args.args.split_first() else {
                    return exec_err!("{name} needs a value and its source columns");
                };
                let value = value.to_array(n)?;
                let sources = sources
                    .iter()
                    .map(|s| s.to_array(n))
                    .collect::<DfResult<Vec<_>>>()?;
                let wanted = self.kind == Kind::RequiredOk;
                let mut ok = arrow::array::BooleanBufferBuilder::new(n);
                ok.append_n(n, true);
                if let Some(nulls) = value.logical_nulls() {
                    for i in (0..n).filter(|&i| nulls.is_null(i)) {
                        let present = sources.iter().any(|a| is_present(a.as_ref(), i));
                        ok.set_bit(i, present == wanted);
                    }
                }
                Arc::new(BooleanArray::new(ok.finish(), None))
            }
            Kind::IsFormat => {
                let format = literal_strings(&name, &args.args[1..])?
                    .pop()
                    .unwrap_or_default();
                let text = as_text(&args.args[0], n)?;
                let out: BooleanArray = text
                    .iter()
                    .map(|v| v.map(|v| crate::format::check(&format, v)))
                    .collect();
                Arc::new(out)
            }
            Kind::JsonSchemaErrors => {
                // (value, schema text, 'json' when the value is JSON text to parse first)
                let mut lits = literal_strings(&name, &args.args[1..])?.into_iter();
                let schema_text = lits.next().unwrap_or_default();
                let text_is_json = lits.next().as_deref() == Some("json");
                json_schema_errors(&args.args[0].to_array(n)?, &schema_text, text_is_json)?
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Whether a source value counts as given: not null, and for text not blank.
pub(crate) fn is_present(a: &dyn Array, i: usize) -> bool {
    use arrow::array::AsArray;
    if a.is_null(i) {
        return false;
    }
    match a.data_type() {
        DataType::Utf8 => !a.as_string::<i32>().value(i).trim().is_empty(),
        DataType::LargeUtf8 => !a.as_string::<i64>().value(i).trim().is_empty(),
        DataType::Utf8View => !a.as_string_view().value(i).trim().is_empty(),
        _ => true,
    }
}

/// Reads the constant string arguments (formats, schema text) of a call.
fn literal_strings(name: &str, args: &[ColumnarValue]) -> DfResult<Vec<String>> {
    args.iter()
        .map(|a| match a {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
            | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s)))
            | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
            _ => exec_err!("{name}: format arguments must be string literals"),
        })
        .collect()
}

/// Any argument as a Utf8 array of `n` rows.
fn as_text(value: &ColumnarValue, n: usize) -> DfResult<StringArray> {
    let arr = value.to_array(n)?;
    let arr = if arr.data_type() == &DataType::Utf8 {
        arr
    } else {
        arrow::compute::cast(&arr, &DataType::Utf8)?
    };
    Ok(arr
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Internal("cast to Utf8 gave another type".into()))?
        .clone())
}

/// Per-row JSON Schema validation for keywords the vectorized rules do not cover. Returns, per
/// row, null when the value is valid (or null) and the joined error messages otherwise. With
/// `text_is_json` the values are JSON text (a free-form JSON field) and are parsed first.
fn json_schema_errors(
    values: &ArrayRef,
    schema_text: &str,
    text_is_json: bool,
) -> DfResult<ArrayRef> {
    // The schema's nesting was bounded when it was loaded (`limits::MAX_SCHEMA_DEPTH`, above
    // serde_json's default of 128 levels), so the parser's own limit is lifted here.
    let mut de = serde_json::Deserializer::from_str(schema_text);
    de.disable_recursion_limit();
    let schema = <serde_json::Value as serde::Deserialize>::deserialize(&mut de)
        .map_err(|e| DataFusionError::Execution(format!("json_schema_errors: bad schema: {e}")))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| DataFusionError::Execution(format!("json_schema_errors: {e}")))?;
    let json = column_to_json(values)?;
    let errors: Vec<Option<String>> = json
        .par_iter()
        .map(|v| {
            if v.is_null() {
                return None;
            }
            let parsed;
            let v = match v {
                serde_json::Value::String(text) if text_is_json => {
                    match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(p) => {
                            parsed = p;
                            &parsed
                        }
                        Err(e) => return Some(format!("not valid JSON: {e}")),
                    }
                }
                other => other,
            };
            let msgs: Vec<String> = validator
                .iter_errors(v)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            (!msgs.is_empty()).then(|| msgs.join("; "))
        })
        .collect();
    let mut b = StringBuilder::with_capacity(errors.len(), 0);
    errors.iter().for_each(|e| b.append_option(e.as_deref()));
    Ok(Arc::new(b.finish()))
}

/// Converts one column to JSON values, one per row (null for null rows).
pub fn column_to_json(values: &ArrayRef) -> DfResult<Vec<serde_json::Value>> {
    use serde_json::Value;
    // Text columns (every CSV and JSON source) convert directly; other types go through the
    // Arrow JSON writer, which knows how to render each of them.
    if let Some(text) = values.as_any().downcast_ref::<StringArray>() {
        return Ok(text
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
            .collect());
    }
    let field = arrow::datatypes::Field::new("v", values.data_type().clone(), true);
    let batch = arrow::array::RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![field])),
        vec![Arc::clone(values)],
    )?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch)?;
        w.finish()?;
    }
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut obj: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(l).map_err(|e| DataFusionError::Execution(e.to_string()))?;
            Ok(obj.remove("v").unwrap_or(serde_json::Value::Null))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn numbers_for_people() {
        assert_eq!(parse_number_str("$1,234.50"), Some(1234.5));
        assert_eq!(parse_number_str("1.234,50 €"), Some(1234.5));
        assert_eq!(parse_number_str("12,5"), Some(12.5));
        assert_eq!(parse_number_str("(12)"), Some(-12.0));
        assert_eq!(parse_number_str("USD 7"), Some(7.0));
        assert_eq!(parse_number_str("-3"), Some(-3.0));
        assert_eq!(parse_number_str("1,234,567"), Some(1234567.0));
        assert_eq!(parse_number_str("N/A"), None);
        assert_eq!(parse_number_str("12 lbs"), None);
        assert_eq!(parse_number_str(""), None);
        assert_eq!(parse_number_str("."), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool_str(" Yes"), Some(true));
        assert_eq!(parse_bool_str("0"), Some(false));
        assert_eq!(parse_bool_str("maybe"), None);
    }

    #[test]
    fn dates_try_formats_in_order() {
        let f = DateFormats::new(&[
            "%Y-%m-%dT%H:%M:%S".to_string(),
            "%d/%m/%Y %H:%M".to_string(),
        ])
        .unwrap();
        let none = DateFormats::new(&[]).unwrap();
        let parse_date = |v: &str, f: &DateFormats| f.date(v);
        assert_eq!(
            parse_date("2023-04-05T13:45:12", &f),
            NaiveDate::from_ymd_opt(2023, 4, 5)
        );
        assert_eq!(
            parse_date("05/04/2023 13:45", &f),
            NaiveDate::from_ymd_opt(2023, 4, 5)
        );
        assert_eq!(parse_date("2023-02-30T10:00:00", &f), None);
        assert_eq!(parse_date("31/13/2023 10:00", &f), None);
        assert_eq!(
            parse_date("2023-04-05", &none),
            NaiveDate::from_ymd_opt(2023, 4, 5)
        );
        assert_eq!(
            none.timestamp_micros("1970-01-01T00:00:01Z"),
            Some(1_000_000)
        );
        assert_eq!(
            none.timestamp_micros("1970-01-01 00:00:02"),
            Some(2_000_000)
        );
    }
}

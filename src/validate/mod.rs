//! Validation compiled from the JSON Schema into boolean DataFusion expressions, one per rule
//! and field ("masks"), evaluated per batch inside the source's plan. A row is valid when every
//! mask is true; per-row error lists are built only for invalid rows ([`report`]).

pub mod report;

use datafusion::prelude::{Expr, lit};
use serde_json::Value;

use crate::mapping::CompiledMapping;
use crate::schema::{FieldKind, TargetField, TargetSchema};

/// Prefix of the pass-through copies of source columns inside a plan (they may share names with
/// target fields).
pub const SRC_PREFIX: &str = "__src__";

/// What a check tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// A required field is missing (its source is null or blank).
    Required,
    /// A non-blank source value did not convert to the target type.
    Type,
    /// Like `Type`, for dates and date-times (reported as `format`).
    DateFormat,
    /// `minimum`.
    Minimum(f64),
    /// `maximum`.
    Maximum(f64),
    /// `exclusiveMinimum`.
    ExclusiveMinimum(f64),
    /// `exclusiveMaximum`.
    ExclusiveMaximum(f64),
    /// `multipleOf`.
    MultipleOf(f64),
    /// `minLength`.
    MinLength(u64),
    /// `maxLength`.
    MaxLength(u64),
    /// `pattern`.
    Pattern(String),
    /// `enum`.
    Enum(Vec<Value>),
    /// `const`.
    Const(Value),
    /// `format`.
    Format(String),
    /// Keywords checked per row by the `jsonschema` crate.
    Schema,
}

impl Rule {
    /// The rule's name in error lists (the JSON Schema keyword, or `required`/`type`).
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Type => "type",
            Rule::DateFormat | Rule::Format(_) => "format",
            Rule::Minimum(_) => "minimum",
            Rule::Maximum(_) => "maximum",
            Rule::ExclusiveMinimum(_) => "exclusiveMinimum",
            Rule::ExclusiveMaximum(_) => "exclusiveMaximum",
            Rule::MultipleOf(_) => "multipleOf",
            Rule::MinLength(_) => "minLength",
            Rule::MaxLength(_) => "maxLength",
            Rule::Pattern(_) => "pattern",
            Rule::Enum(_) => "enum",
            Rule::Const(_) => "const",
            Rule::Schema => "schema",
        }
    }
}

/// One vectorized check.
#[derive(Debug, Clone)]
pub struct Check {
    /// Target field.
    pub field: String,
    /// The rule.
    pub rule: Rule,
    /// True when the row passes; never null.
    pub ok: Expr,
    /// Extra per-row text for the message (the fallback validator's errors), if any.
    pub detail: Option<Expr>,
    /// The field's kind, for messages.
    pub kind_name: &'static str,
    /// The source columns the field reads, for `type` messages.
    pub sources: Vec<String>,
    /// The field's expression has growing calls (`repeat`, `lpad`, …): a null there may be
    /// the output budget's refusal, which the `type` message then names.
    pub grows: bool,
}

/// The compiled validator of one source: checks in field order, then rule order.
#[derive(Debug, Clone)]
pub struct Validator {
    /// All checks.
    pub checks: Vec<Check>,
}

fn num(x: f64, kind: &FieldKind) -> Expr {
    if *kind == FieldKind::Integer && x.fract() == 0.0 && x.abs() < 9.0e15 {
        lit(x as i64)
    } else {
        lit(x)
    }
}

fn json_lit(v: &Value, kind: &FieldKind) -> Option<Expr> {
    match (kind, v) {
        (FieldKind::Integer, Value::Number(n)) => n.as_i64().map(lit),
        (FieldKind::Number, Value::Number(n)) => n.as_f64().map(lit),
        (FieldKind::String | FieldKind::Json, Value::String(s)) => Some(lit(s.clone())),
        (FieldKind::Boolean, Value::Bool(b)) => Some(lit(*b)),
        _ => None,
    }
}

/// `cond` as a mask that passes null values (the rule does not apply to a missing value).
fn unless_null(v: &Expr, cond: Expr) -> Expr {
    v.clone().is_null().or(cond)
}

impl Validator {
    /// Builds the checks for a target schema and a compiled mapping (for the fields' sources).
    pub fn new(target: &TargetSchema, mapping: &CompiledMapping) -> Validator {
        let sources: Vec<&[String]> = mapping
            .fields
            .iter()
            .map(|m| m.sources.as_slice())
            .collect();
        Validator::with_sources(target, &sources)
    }

    /// The validator from the columns each field reads (in target order), without the
    /// compiled mapping: what an executor needs to describe invalid rows of a plan that was
    /// built elsewhere.
    pub fn with_sources(target: &TargetSchema, sources: &[&[String]]) -> Validator {
        let mut checks = Vec::new();
        for (t, s) in target.fields.iter().zip(sources) {
            field_checks(t, s, &mut checks);
        }
        Validator { checks }
    }

    /// [`Validator::new`], with the fields whose expressions have growing calls marked so that
    /// their `type` messages name the output budget.
    pub fn for_mapping(target: &TargetSchema, mapping: &CompiledMapping) -> Validator {
        let mut v = Validator::new(target, mapping);
        for m in &mapping.fields {
            if crate::mapping::compile::grows(&m.expr) {
                for c in v.checks.iter_mut().filter(|c| c.field == m.name) {
                    c.grows = true;
                }
            }
        }
        v
    }
}

fn field_checks(t: &TargetField, sources: &[String], out: &mut Vec<Check>) {
    let v = crate::mapping::compile::column(&t.name);
    // The value, then the source columns it is read from, for the presence checks.
    let presence = |f: &str| {
        let mut args = vec![v.clone()];
        args.extend(
            sources
                .iter()
                .map(|s| crate::mapping::compile::column(&format!("{SRC_PREFIX}{s}"))),
        );
        call_udf(f, args)
    };
    let mut push = |rule: Rule, ok: Expr, detail: Option<Expr>| {
        out.push(Check {
            field: t.name.clone(),
            rule,
            ok,
            detail,
            kind_name: t.kind.json_name(),
            sources: sources.to_vec(),
            grows: false,
        })
    };
    if t.required {
        // With no source mapped, a null value fails.
        let ok = if sources.is_empty() {
            v.clone().is_not_null()
        } else {
            presence("required_ok")
        };
        push(Rule::Required, ok, None);
    }
    let conversion = if matches!(t.kind, FieldKind::Date | FieldKind::DateTime) {
        Rule::DateFormat
    } else {
        Rule::Type
    };
    if !sources.is_empty() {
        push(conversion, presence("converted_ok"), None);
    }
    let c = &t.constraints;
    let numeric = matches!(t.kind, FieldKind::Integer | FieldKind::Number);
    let stringy = matches!(t.kind, FieldKind::String | FieldKind::Json);
    if numeric {
        if let Some(x) = c.minimum {
            push(
                Rule::Minimum(x),
                unless_null(&v, v.clone().gt_eq(num(x, &t.kind))),
                None,
            );
        }
        if let Some(x) = c.maximum {
            push(
                Rule::Maximum(x),
                unless_null(&v, v.clone().lt_eq(num(x, &t.kind))),
                None,
            );
        }
        if let Some(x) = c.exclusive_minimum {
            push(
                Rule::ExclusiveMinimum(x),
                unless_null(&v, v.clone().gt(num(x, &t.kind))),
                None,
            );
        }
        if let Some(x) = c.exclusive_maximum {
            push(
                Rule::ExclusiveMaximum(x),
                unless_null(&v, v.clone().lt(num(x, &t.kind))),
                None,
            );
        }
        if let Some(m) = c.multiple_of.filter(|m| *m > 0.0) {
            let ok = if t.kind == FieldKind::Integer && m.fract() == 0.0 {
                (v.clone() % lit(m as i64)).eq(lit(0i64))
            } else {
                // Within a relative tolerance: 0.3 is a multiple of 0.1 in decimal terms.
                let q = v.clone() / lit(m);
                let diff = datafusion::functions::expr_fn::abs(
                    q.clone() - datafusion::functions::expr_fn::round(vec![q.clone()]),
                );
                diff.lt_eq(
                    lit(1e-9)
                        * datafusion::functions::expr_fn::greatest(vec![
                            lit(1.0),
                            datafusion::functions::expr_fn::abs(q),
                        ]),
                )
            };
            push(Rule::MultipleOf(m), unless_null(&v, ok), None);
        }
    }
    if stringy {
        let len = || datafusion::functions::expr_fn::character_length(v.clone());
        if let Some(n) = c.min_length {
            push(
                Rule::MinLength(n),
                unless_null(&v, len().gt_eq(lit(n as i64))),
                None,
            );
        }
        if let Some(n) = c.max_length {
            push(
                Rule::MaxLength(n),
                unless_null(&v, len().lt_eq(lit(n as i64))),
                None,
            );
        }
        if let Some(p) = &c.pattern {
            let m = datafusion::functions::expr_fn::regexp_like(v.clone(), lit(p.clone()), None);
            push(Rule::Pattern(p.clone()), unless_null(&v, m), None);
        }
    }
    if let Some(values) = &c.enum_values {
        let lits: Vec<Expr> = values.iter().filter_map(|x| json_lit(x, &t.kind)).collect();
        let ok = if lits.is_empty() {
            lit(false)
        } else {
            v.clone().in_list(lits, false)
        };
        push(Rule::Enum(values.clone()), unless_null(&v, ok), None);
    }
    if let Some(value) = &c.const_value {
        let ok = json_lit(value, &t.kind)
            .map(|l| v.clone().eq(l))
            .unwrap_or(lit(false));
        push(Rule::Const(value.clone()), unless_null(&v, ok), None);
    }
    if let Some(f) = c
        .format
        .as_ref()
        .filter(|f| stringy && crate::format::is_known(f))
    {
        let call = call_udf("is_format", vec![v.clone(), lit(f.clone())]);
        push(Rule::Format(f.clone()), unless_null(&v, call), None);
    }
    if t.needs_fallback {
        // A free-form JSON field holds JSON text: validate the value it encodes.
        let mode = if t.kind == FieldKind::Json {
            "json"
        } else {
            "value"
        };
        let detail = call_udf(
            "json_schema_errors",
            vec![v.clone(), lit(t.schema.to_string()), lit(mode)],
        );
        push(Rule::Schema, detail.clone().is_null(), Some(detail));
    }
}

fn call_udf(name: &str, args: Vec<Expr>) -> Expr {
    let f = crate::functions::all()
        .into_iter()
        .find(|f| f.name() == name)
        .expect("conform function is registered");
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        std::sync::Arc::new(f),
        args,
    ))
}

#[cfg(test)]
mod tests {
    //! One pass/fail pair per rule: a one-column source `v` (text) mapped as-is onto the target
    //! field `f`, run through the real plan and split.

    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::{MemTable, provider_as_source};
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::DataFrame;
    use serde_json::json;

    use super::Validator;
    use crate::mapping::{MappingDocument, compile};
    use crate::schema::TargetSchema;
    use crate::source::with_provenance;
    use crate::split::split;

    /// The invalid rows of a one-column source `v` mapped as-is onto `f`.
    fn invalid_rows(
        property: serde_json::Value,
        required: bool,
        values: &[Option<&str>],
    ) -> Vec<super::report::InvalidRow> {
        let req = if required { json!(["f"]) } else { json!([]) };
        let target = TargetSchema::try_new(
            &json!({"type": "object", "required": req, "properties": {"f": property}}),
        )
        .unwrap();
        let data = Schema::new(vec![Field::new("v", DataType::Utf8, true)]);
        let doc: MappingDocument = serde_json::from_value(json!({
            "source": "s", "source_fingerprint": "-", "mapper": "file", "fields": {"f": {"expr": "v"}}
        }))
        .unwrap();
        let ctx = crate::mapping::compile::session();
        let mapping = compile(&ctx, &doc, &data, &target).unwrap();
        let validator = Validator::new(&target, &mapping);
        let schema = with_provenance(&data);
        let n = values.len();
        let batch = crate::source::assemble(
            &schema,
            vec![Arc::new(StringArray::from(values.to_vec()))],
            "t.csv",
            (1..=n as u64).collect(),
            vec![None; n],
            vec![None; n],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        let scan =
            LogicalPlanBuilder::scan("s", provider_as_source(Arc::new(table)), None).unwrap();
        let (plan, layout) = crate::plan::build(scan, &data, &mapping, &validator).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let batches = rt
            .block_on(DataFrame::new(ctx.state(), plan).collect())
            .unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let (valid, bad) =
                split(b, &layout, &validator.checks, &target.valid_arrow_schema()).unwrap();
            assert_eq!(
                valid.num_rows() + bad.len(),
                b.num_rows(),
                "every row lands on one side"
            );
            out.extend(bad);
        }
        out
    }

    /// The rules each value fails, in input order (empty = valid).
    fn failures(
        property: serde_json::Value,
        required: bool,
        values: &[Option<&str>],
    ) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); values.len()];
        for row in invalid_rows(property, required, values) {
            assert!(!row.errors.is_empty(), "an invalid row says why");
            out[row.row as usize - 1] = row.errors.iter().map(|e| e.rule.clone()).collect();
        }
        out
    }

    #[test]
    fn invalid_rows_keep_their_source_values_and_say_why() {
        let rows = invalid_rows(
            json!({"type": "integer"}),
            true,
            &[Some("12"), Some("twelve \"12\""), Some("  "), None],
        );
        let got: Vec<(u64, String, Vec<String>)> = rows
            .iter()
            .map(|r| {
                let messages = r.errors.iter().map(|e| e.message.clone()).collect();
                (r.row, r.record.as_json().to_string(), messages)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    2,
                    r#"{"v":"twelve \"12\""}"#.to_string(),
                    vec![r#"`f`: "twelve \"12\"" of `v` is not a valid integer"#.to_string()]
                ),
                (
                    3,
                    r#"{"v":"  "}"#.to_string(),
                    vec!["`f` is required but the source value is missing".to_string()]
                ),
                (
                    4,
                    r#"{"v":null}"#.to_string(),
                    vec!["`f` is required but the source value is missing".to_string()]
                ),
            ]
        );
    }

    fn pass_fail(property: serde_json::Value, pass: &str, fail: &str, rule: &str) {
        let got = failures(property.clone(), false, &[Some(pass), Some(fail)]);
        assert_eq!(
            got,
            vec![vec![], vec![rule.to_string()]],
            "{property}: {pass:?} passes, {fail:?} fails {rule}"
        );
    }

    #[test]
    fn each_rule_has_a_passing_and_a_failing_value() {
        pass_fail(json!({"type": "integer"}), "12", "12.5", "type");
        pass_fail(json!({"type": "number"}), "-1.5e3", "abc", "type");
        pass_fail(json!({"type": "boolean"}), "true", "maybe", "type");
        pass_fail(
            json!({"type": "string", "format": "date"}),
            "2023-02-28",
            "2023-02-30",
            "format",
        );
        pass_fail(
            json!({"type": "string", "format": "date-time"}),
            "2023-02-28T10:00:00Z",
            "noon",
            "format",
        );
        pass_fail(
            json!({"type": "integer", "minimum": 5}),
            "5",
            "4",
            "minimum",
        );
        pass_fail(
            json!({"type": "integer", "maximum": 5}),
            "5",
            "6",
            "maximum",
        );
        pass_fail(
            json!({"type": "number", "exclusiveMinimum": 0}),
            "0.1",
            "0",
            "exclusiveMinimum",
        );
        pass_fail(
            json!({"type": "number", "exclusiveMaximum": 1}),
            "0.9",
            "1",
            "exclusiveMaximum",
        );
        pass_fail(
            json!({"type": "number", "multipleOf": 0.1}),
            "0.3",
            "0.35",
            "multipleOf",
        );
        pass_fail(
            json!({"type": "integer", "multipleOf": 3}),
            "9",
            "10",
            "multipleOf",
        );
        pass_fail(
            json!({"type": "string", "minLength": 2}),
            "ab",
            "a",
            "minLength",
        );
        pass_fail(
            json!({"type": "string", "maxLength": 3}),
            "abç",
            "abcd",
            "maxLength",
        );
        pass_fail(
            json!({"type": "string", "pattern": "^[a-z]+$"}),
            "abc",
            "ab1",
            "pattern",
        );
        pass_fail(
            json!({"type": "string", "enum": ["a", "b"]}),
            "b",
            "c",
            "enum",
        );
        pass_fail(json!({"type": "integer", "enum": [1, 2]}), "2", "3", "enum");
        pass_fail(json!({"type": "string", "const": "x"}), "x", "y", "const");
        pass_fail(
            json!({"type": "string", "format": "email"}),
            "a@b.org",
            "a.b.org",
            "format",
        );
        pass_fail(
            json!({"type": "string", "format": "uuid"}),
            "123e4567-e89b-12d3-a456-426614174000",
            "123",
            "format",
        );
        pass_fail(
            json!({"type": "string", "format": "ipv4"}),
            "10.0.0.1",
            "10.0.0.256",
            "format",
        );
        pass_fail(
            json!({"type": "string", "format": "uri"}),
            "https://example.com/x",
            "not a uri",
            "format",
        );
    }

    #[test]
    fn null_values_pass_value_rules_and_fail_required() {
        let optional = failures(json!({"type": "integer", "minimum": 5}), false, &[None]);
        assert_eq!(optional, vec![Vec::<String>::new()]);
        let required = failures(
            json!({"type": "integer", "minimum": 5}),
            true,
            &[None, Some("   "), Some("7")],
        );
        assert_eq!(
            required,
            vec![
                vec!["required".to_string()],
                vec!["required".to_string()],
                vec![]
            ]
        );
    }

    #[test]
    fn one_value_can_break_several_rules_in_rule_order() {
        let got = failures(
            json!({"type": "string", "minLength": 5, "pattern": "^[0-9]+$"}),
            false,
            &[Some("ab")],
        );
        assert_eq!(
            got,
            vec![vec!["minLength".to_string(), "pattern".to_string()]]
        );
    }
}

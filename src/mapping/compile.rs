//! From a mapping document to checked, typed DataFusion expressions.
//!
//! Each field's SQL is parsed with DataFusion's expression parser against the source's columns,
//! checked (known columns, allow-listed functions, no aggregates or subqueries), type-coerced,
//! and made total: every `CAST` becomes `TRY_CAST`, division by zero yields null, and the result
//! is converted to the target's Arrow type with try-semantics. A value that does not convert is
//! null, and the validator reports it on that row; nothing here can fail a batch.

use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue, SchemaError};
use datafusion::logical_expr::expr::{Cast, TryCast};
use datafusion::logical_expr::{BinaryExpr, ExprSchemable, Operator};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::prelude::{Expr, SessionContext, ident, lit};

use super::MappingDocument;
use super::names::{edit_distance, similarity};
use crate::error::{Error, Result};
use crate::schema::TargetSchema;

pub use crate::functions::ALLOWED_FUNCTIONS;

/// The functions reference (`docs/functions.md`), generated from the allow-list.
pub fn functions_reference() -> String {
    crate::functions::reference_markdown()
}

/// One compiled target field.
#[derive(Debug, Clone)]
pub struct CompiledField {
    /// Target field name.
    pub name: String,
    /// The expression, converted to the target type and aliased to the field name.
    pub expr: Expr,
    /// Source columns it reads.
    pub sources: Vec<String>,
    /// The expression as written in the document (None = unmapped).
    pub text: Option<String>,
}

/// All target fields of a source, in target order.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    /// Fields in target schema order.
    pub fields: Vec<CompiledField>,
}

/// A session with conform's functions and case-sensitive identifiers (`Cust_Email` means the
/// column `Cust_Email`, as users and models write it).
pub fn session() -> SessionContext {
    let config = datafusion::prelude::SessionConfig::new()
        .with_target_partitions(1)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = SessionContext::new_with_config(config);
    crate::functions::register_all(&ctx);
    ctx
}

/// Compiles every field of `doc`; the first bad field stops compilation with a message naming it.
pub fn compile(
    ctx: &SessionContext,
    doc: &MappingDocument,
    source: &Schema,
    target: &TargetSchema,
) -> Result<CompiledMapping> {
    for name in doc.fields.keys() {
        if target.field(name).is_none() {
            return Err(Error::mapping(
                &doc.source,
                format!(
                    "the document maps `{name}`, which is not a target field. Valid fields are {}",
                    list(&target.field_names())
                ),
            ));
        }
    }
    let fields = target
        .fields
        .iter()
        .map(|t| {
            let text = doc.fields.get(&t.name).and_then(|m| m.expr.clone());
            compile_field(ctx, source, &t.name, &t.kind.data_type(), text.as_deref()).map_err(
                |message| Error::mapping(&doc.source, format!("field `{}`: {message}", t.name)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CompiledMapping { fields })
}

/// Whether a compiled expression has growing calls that share an output budget.
pub fn grows(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && crate::functions::guard::GROWING.contains(&f.func.name())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Divides the expression's per-row output budget among its growing calls (`repeat`, `lpad`,
/// …), so that `concat(repeat(…), repeat(…), …)` stays within one budget rather than one per
/// call; a growing call on literals past its share is refused here.
fn share_output_budget(parsed: Expr) -> std::result::Result<Expr, String> {
    use crate::functions::guard;
    let mut growing = 0usize;
    parsed
        .apply(|e| {
            if let Expr::ScalarFunction(f) = e
                && guard::GROWING.contains(&f.func.name())
            {
                growing += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
    if growing == 0 {
        return Ok(parsed);
    }
    let limit = guard::row_limit(growing);
    let mut refused: Option<String> = None;
    // One budget check per growing call: the whole expression is null on a row where any
    // call would exceed its share.
    let mut checks: Vec<Expr> = Vec::new();
    let out = parsed
        .transform_up(|e| {
            Ok(match e {
                Expr::ScalarFunction(f) if guard::GROWING.contains(&f.func.name()) => {
                    let literals: Option<Vec<ScalarValue>> = f
                        .args
                        .iter()
                        .map(|a| match a {
                            Expr::Literal(v, _) => Some(v.clone()),
                            _ => None,
                        })
                        .collect();
                    if let Some(size) = literals
                        .as_deref()
                        .and_then(|l| guard::literal_size(f.func.name(), l))
                        && size > limit
                        && refused.is_none()
                    {
                        refused = Some(format!(
                            "`{}` on these literals would produce {size} bytes per row; the \
                             growing calls of an expression may produce at most {} bytes per \
                             row together ({growing} such call(s) here)",
                            f.func.name(),
                            crate::limits::MAX_VALUE_BYTES
                        ));
                    }
                    let func = guard::with_share(&f.func, growing);
                    let mut check_args = vec![lit(growing as i64), lit(f.func.name().to_string())];
                    check_args.extend(f.args.iter().cloned());
                    checks.push(Expr::ScalarFunction(
                        datafusion::logical_expr::expr::ScalarFunction::new_udf(
                            std::sync::Arc::new(guard::WithinBudget::udf()),
                            check_args,
                        ),
                    ));
                    Transformed::yes(Expr::ScalarFunction(
                        datafusion::logical_expr::expr::ScalarFunction::new_udf(func, f.args),
                    ))
                }
                other => Transformed::no(other),
            })
        })
        .map_err(|e| e.to_string())?
        .data;
    if let Some(why) = refused {
        return Err(why);
    }
    let within = checks
        .into_iter()
        .reduce(|a, b| a.and(b))
        .expect("at least one growing call");
    datafusion::logical_expr::when(within, out)
        .end()
        .map_err(|e| e.to_string())
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compiles one field's expression; the error is a message for a person (or a model) to act on.
pub fn compile_field(
    ctx: &SessionContext,
    source: &Schema,
    name: &str,
    target_type: &DataType,
    text: Option<&str>,
) -> std::result::Result<CompiledField, String> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        let null = ScalarValue::try_from(target_type).map_err(|e| e.to_string())?;
        return Ok(CompiledField {
            name: name.to_string(),
            expr: lit(null).alias(name),
            sources: vec![],
            text: None,
        });
    };
    // Parsing and every tree walk after it recurse; an oversized expression is refused first,
    // and never echoed whole.
    if text.len() > crate::limits::MAX_EXPR_BYTES {
        return Err(format!(
            "the expression is {} bytes long; an expression may be at most {} bytes (`{}`)",
            text.len(),
            crate::limits::MAX_EXPR_BYTES,
            crate::limits::shorten(text, 60)
        ));
    }
    let depth = crate::limits::expr_depth(text);
    if depth > crate::limits::MAX_EXPR_DEPTH {
        return Err(format!(
            "the expression nests {depth} levels deep (parentheses, CASE and chained operators); an expression may nest at most {} levels (`{}`)",
            crate::limits::MAX_EXPR_DEPTH,
            crate::limits::shorten(text, 60)
        ));
    }
    let shown = crate::limits::shorten(text, 200);
    let text_for_messages = shown.as_str();
    let df_schema = DFSchema::try_from(source.clone()).map_err(|e| e.to_string())?;
    let parsed = ctx
        .parse_sql_expr(text, &df_schema)
        .map_err(|e| match e.find_root() {
            // The parser resolves columns; answer with conform's wording and suggestion.
            datafusion::error::DataFusionError::SchemaError(err, _) => match err.as_ref() {
                SchemaError::FieldNotFound { field, .. } => unknown_column(&field.name, source),
                _ => format!(
                    "cannot parse `{text_for_messages}`: {}",
                    strip_df(&e.to_string())
                ),
            },
            _ => {
                let msg = strip_df(&e.to_string());
                format!(
                    "cannot parse `{text_for_messages}`: {msg}{}",
                    dialect_hint(&msg)
                )
            }
        })?;
    // Some SQL forms (`SUBSTRING(x FROM 2)`, `substr`, `EXTRACT`, `POSITION`) are planned
    // with DataFusion's own function objects, bypassing the session's registry: point every
    // guarded built-in at the session's guarded form.
    let parsed = parsed
        .transform_up(|e| {
            Ok(match e {
                Expr::ScalarFunction(f) if crate::functions::is_guarded(f.func.name()) => {
                    match datafusion::execution::FunctionRegistry::udf(ctx, f.func.name()) {
                        Ok(guarded) => Transformed::yes(Expr::ScalarFunction(
                            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                                guarded, f.args,
                            ),
                        )),
                        Err(_) => Transformed::no(Expr::ScalarFunction(f)),
                    }
                }
                other => Transformed::no(other),
            })
        })
        .map_err(|e| e.to_string())?
        .data;
    let mut sources: Vec<String> = Vec::new();
    let mut problem: Option<String> = None;
    parsed
        .apply(|e| {
            match e {
                Expr::Column(c) => {
                    if source.field_with_name(&c.name).is_err() {
                        problem = Some(unknown_column(&c.name, source));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    if !sources.contains(&c.name) {
                        sources.push(c.name.clone());
                    }
                }
                Expr::ScalarFunction(f)
                    if matches!(f.func.name(), "try_to_date" | "try_to_timestamp") =>
                {
                    // Formats are read once per batch, so they must be literal text, and valid.
                    let mut formats = Vec::new();
                    for a in f.args.iter().skip(1) {
                        match a {
                            Expr::Literal(
                                ScalarValue::Utf8(Some(s))
                                | ScalarValue::LargeUtf8(Some(s))
                                | ScalarValue::Utf8View(Some(s)),
                                _,
                            ) => formats.push(s.clone()),
                            _ => {
                                problem = Some(format!(
                                    "the formats of `{}` must be string literals ('%Y-%m-%d')",
                                    f.func.name()
                                ));
                                return Ok(TreeNodeRecursion::Stop);
                            }
                        }
                    }
                    if f.args.is_empty() {
                        problem = Some(format!("`{}` needs a value", f.func.name()));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    if let Some(bad) = formats.iter().find(|f| !f.contains('%')) {
                        // A format with no %-code only matches itself: every row would fail.
                        problem = Some(format!(
                            "`{}` formats use chrono's %-codes, not Java patterns: write {} instead of '{bad}'",
                            f.func.name(),
                            crate::sql::literal(&java_to_chrono(bad))
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    if let Err(e) = crate::functions::DateFormats::new(&formats) {
                        problem = Some(format!("`{}`: {e}", f.func.name()));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Expr::ScalarFunction(f) if f.func.name() == "from_unixtime" && f.args.len() > 1 => {
                    // The time zone makes the result's type, so it must be a literal that names one.
                    let valid = matches!(
                        &f.args[1],
                        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
                            if s.parse::<arrow::array::timezone::Tz>().is_ok()
                    );
                    if !valid {
                        problem = Some("the time zone of `from_unixtime` must be a literal time zone name ('UTC', 'Europe/Paris', '+02:00')".into());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Expr::ScalarFunction(f) => {
                    let fname = f.func.name();
                    if !ALLOWED_FUNCTIONS.contains(&fname) {
                        let hint = match fname {
                            "to_date" => " (use try_to_date, which gives null instead of failing)",
                            "to_timestamp" | "to_timestamp_seconds" | "to_timestamp_millis" | "to_timestamp_micros" => {
                                " (use try_to_timestamp, which gives null instead of failing)"
                            }
                            _ => "",
                        };
                        problem = Some(format!("function `{fname}` is not allowed in a mapping{hint}"));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Expr::Cast(Cast { field, .. }) | Expr::TryCast(TryCast { field, .. })
                    if matches!(
                        field.data_type(),
                        DataType::Decimal32(_, s) | DataType::Decimal64(_, s) | DataType::Decimal128(_, s) | DataType::Decimal256(_, s) if *s < 0
                    ) =>
                {
                    problem = Some("a DECIMAL with a negative scale is not supported; use a scale of 0 or more (`DECIMAL(12, 2)`)".into());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Expr::AggregateFunction(_) | Expr::WindowFunction(_) => {
                    problem = Some("aggregate and window functions are not allowed: a mapping computes each row from that row".into());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::SetComparison(_) => {
                    problem = Some("subqueries are not allowed in a mapping".into());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Expr::Placeholder(_) | Expr::OuterReferenceColumn(..) => {
                    problem = Some("placeholders are not allowed in a mapping".into());
                    return Ok(TreeNodeRecursion::Stop);
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
    if let Some(p) = problem {
        return Err(p);
    }
    // After the allow-list check: the budget's own check function is not for users to call.
    let parsed = share_output_budget(parsed)?;
    let guarded = guard_division(parsed).map_err(|e| e.to_string())?;
    let coerced = guarded
        .rewrite(&mut TypeCoercionRewriter::new(&df_schema))
        .map_err(|e| {
            format!(
                "type error in `{text_for_messages}`: {}",
                strip_df(&e.to_string())
            )
        })?
        .data;
    let total = try_casts(coerced).map_err(|e| e.to_string())?;
    let actual = total.get_type(&df_schema).map_err(|e| {
        format!(
            "type error in `{text_for_messages}`: {}",
            strip_df(&e.to_string())
        )
    })?;
    let expr = if &actual == target_type {
        total
    } else if actual == DataType::Null || arrow::compute::can_cast_types(&actual, target_type) {
        Expr::TryCast(TryCast::new(Box::new(total), target_type.clone()))
    } else {
        return Err(format!(
            "`{text_for_messages}` gives {actual}, which cannot be converted to {target_type}"
        ));
    };
    // Plan it now so that anything DataFusion would reject fails here, before data flows:
    // the optimizer's simplification (constant folding, rewrites such as `coalesce` → CASE),
    // then the physical expression.
    let simplify = datafusion::logical_expr::simplify::SimplifyContext::builder()
        .with_schema(std::sync::Arc::new(df_schema.clone()))
        .build();
    datafusion::optimizer::simplify_expressions::ExprSimplifier::new(simplify)
        .simplify(expr.clone())
        .map_err(|e| {
            format!(
                "cannot plan `{text_for_messages}`: {}",
                strip_df(&e.to_string())
            )
        })?;
    ctx.state()
        .create_physical_expr(expr.clone(), &df_schema)
        .map_err(|e| {
            format!(
                "cannot plan `{text_for_messages}`: {}",
                strip_df(&e.to_string())
            )
        })?;
    Ok(CompiledField {
        name: name.to_string(),
        expr: expr.alias(name),
        sources,
        text: Some(text.to_string()),
    })
}

/// `a / b` and `a % b` → `a / nullif(b, 0)`: integer division by zero is null, not an error.
fn guard_division(expr: Expr) -> datafusion::error::Result<Expr> {
    expr.transform_up(|e| {
        Ok(match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: op @ (Operator::Divide | Operator::Modulo),
                right,
            }) => {
                let guarded = datafusion::functions::expr_fn::nullif(*right, lit(0));
                Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                    left,
                    op,
                    Box::new(guarded),
                )))
            }
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

/// Every CAST, written or inserted by type coercion, becomes TRY_CAST.
fn try_casts(expr: Expr) -> datafusion::error::Result<Expr> {
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Cast(Cast { expr, field }) => {
                Transformed::yes(Expr::TryCast(TryCast { expr, field }))
            }
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

/// A Java/ICU date pattern (`yyyy-MM-dd HH:mm:ss`) in chrono's %-codes.
fn java_to_chrono(pattern: &str) -> String {
    const CODES: &[(&str, &str)] = &[
        ("yyyy", "%Y"),
        ("YYYY", "%Y"),
        ("yy", "%y"),
        ("MMMM", "%B"),
        ("MMM", "%b"),
        ("MM", "%m"),
        ("dd", "%d"),
        ("DD", "%d"),
        ("HH", "%H"),
        ("hh", "%I"),
        ("mm", "%M"),
        ("ss", "%S"),
        ("SSS", "%3f"),
        ("a", "%p"),
    ];
    let mut out = String::new();
    let mut rest = pattern;
    'outer: while !rest.is_empty() {
        for (java, chrono) in CODES {
            if let Some(r) = rest.strip_prefix(java) {
                out.push_str(chrono);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What to write instead, for dialect mistakes models make: Arrow type names in `CAST` and
/// conversion functions that do not exist.
fn dialect_hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("utf8") || m.contains("int64") || m.contains("float64") {
        " (CAST takes SQL type names: VARCHAR, BIGINT, DOUBLE, BOOLEAN, DATE, TIMESTAMP)"
    } else if m.contains("invalid function") && m.contains("try_to_") {
        " (conform's conversions are try_to_date and try_to_timestamp; for numbers use CAST(x AS BIGINT) or parse_number(x), for yes/no parse_bool(x), for text clean(x))"
    } else {
        ""
    }
}

fn unknown_column(name: &str, source: &Schema) -> String {
    let cols: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
    let best = cols
        .iter()
        .map(|c| (similarity(name, c), *c))
        .filter(|(s, _)| *s >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
        // A typo (`Emial` for `E-mail`) shares no word with the column but is a few edits away.
        .or_else(|| {
            let key = |s: &str| {
                s.chars()
                    .filter(|c| c.is_alphanumeric())
                    .flat_map(char::to_lowercase)
                    .collect::<String>()
            };
            let k = key(name);
            let limit = (k.chars().count() / 4).max(1);
            cols.iter()
                .map(|c| (edit_distance(&k, &key(c)), *c))
                .filter(|(d, _)| *d <= limit)
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| c)
        });
    let hint = best
        .map(|c| format!(" Did you mean `{c}`?"))
        .unwrap_or_default();
    format!(
        "No column named `{name}`.{hint} Valid columns are {}.",
        list(&cols)
    )
}

/// DataFusion prefixes messages with its error kind; users need only the message.
fn strip_df(msg: &str) -> String {
    let msg = msg.trim();
    for p in [
        "Error during planning: ",
        "Schema error: ",
        "Execution error: ",
        "SQL error: ",
        "Optimizer rule",
    ] {
        if let Some(rest) = msg.strip_prefix(p) {
            return rest.to_string();
        }
    }
    msg.to_string()
}

/// References a source column by exact name (no SQL identifier parsing).
pub fn column(name: &str) -> Expr {
    ident(name)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::{compile_field, session};

    fn source() -> Schema {
        Schema::new(vec![
            Field::new("Cust_Email", DataType::Utf8, true),
            Field::new("amount_cents", DataType::Utf8, true),
            Field::new("first", DataType::Utf8, true),
            Field::new("last", DataType::Utf8, true),
        ])
    }

    fn try_compile(text: &str, target: DataType) -> Result<super::CompiledField, String> {
        compile_field(&session(), &source(), "t", &target, Some(text))
    }

    #[test]
    fn lineage_is_the_columns_the_expression_reads() {
        let f = try_compile("concat_ws(' ', clean(\"first\"), \"last\")", DataType::Utf8).unwrap();
        assert_eq!(f.sources, ["first", "last"]);
        let f = compile_field(&session(), &source(), "t", &DataType::Int64, None).unwrap();
        assert!(f.sources.is_empty() && f.text.is_none(), "unmapped field");
    }

    #[test]
    fn unknown_columns_are_named_with_a_suggestion() {
        let e = try_compile("lower(\"Cust_Emial\")", DataType::Utf8).unwrap_err();
        assert!(e.contains("No column named `Cust_Emial`"), "{e}");
        assert!(e.contains("Did you mean `Cust_Email`?"), "{e}");
        assert!(e.contains("Valid columns are"), "{e}");
    }

    #[test]
    fn only_allowed_row_level_functions() {
        let e = try_compile("random()", DataType::Float64).unwrap_err();
        assert!(e.contains("function `random` is not allowed"), "{e}");
        let e = try_compile("to_date(\"first\")", DataType::Date32).unwrap_err();
        assert!(e.contains("use try_to_date"), "{e}");
        let e = try_compile(
            "try_to_timestamp(\"first\", 'yyyy-MM-dd HH:mm:ss')",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
        )
        .unwrap_err();
        assert!(
            e.contains("write '%Y-%m-%d %H:%M:%S' instead of 'yyyy-MM-dd HH:mm:ss'"),
            "{e}"
        );
        let e = try_compile("CAST(\"first\" AS Utf8)", DataType::Utf8).unwrap_err();
        assert!(e.contains("CAST takes SQL type names"), "{e}");
        let e = try_compile("try_to_int(\"first\")", DataType::Int64).unwrap_err();
        assert!(e.contains("for numbers use CAST(x AS BIGINT)"), "{e}");
        let e = try_compile("sum(CAST(amount_cents AS BIGINT))", DataType::Int64).unwrap_err();
        assert!(e.contains("aggregate"), "{e}");
    }

    #[test]
    fn casts_become_try_casts_and_division_by_zero_is_guarded() {
        let f = try_compile("CAST(amount_cents AS BIGINT) / 0", DataType::Float64).unwrap();
        let shown = format!("{}", f.expr);
        assert!(shown.contains("TRY_CAST"), "{shown}");
        assert!(!shown.contains(" CAST("), "no plain cast left: {shown}");
        assert!(shown.contains("nullif"), "division guarded: {shown}");
    }

    #[test]
    fn results_that_cannot_become_the_target_type_are_rejected() {
        let e = try_compile("make_array(1, 2)", DataType::Int64).unwrap_err();
        assert!(e.contains("cannot be converted to Int64"), "{e}");
        let e = try_compile("lower(", DataType::Utf8).unwrap_err();
        assert!(e.contains("cannot parse"), "{e}");
    }
}

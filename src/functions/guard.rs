//! Row-level try semantics for DataFusion's built-in functions in the mapping allow-list.
//!
//! Built-ins fail a whole batch on one bad value (`make_date` with month 13, `chr` out of
//! range, `abs` of the smallest integer, a regex pattern read from a column holding `(`). Each
//! allow-listed built-in is registered under its own name as a wrapper that evaluates the batch
//! and, only when that fails, evaluates it again row by row: a row whose call fails gets null,
//! so the validator reports that field on that row and the batch goes on. Functions whose
//! output size follows an argument (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`) get
//! null instead of a result past their share of the expression's budget (the expression's
//! growing calls together stay within [`MAX_VALUE_BYTES`] per row and
//! [`MAX_BATCH_OUTPUT_BYTES`] per batch), decided before anything is allocated.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, new_null_array};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

use crate::limits::{MAX_BATCH_OUTPUT_BYTES, MAX_VALUE_BYTES};

type DfResult<T> = datafusion::error::Result<T>;

/// Functions of the allow-list used as they are: conform's own (total by design) and the
/// null-handling and nesting constructors, which cannot fail on a value and which DataFusion
/// rewrites while planning (`coalesce` becomes CASE). Every other allow-listed built-in can fail
/// on a value, or grow its output with one, and is guarded.
const UNGUARDED: &[&str] = &[
    "try_to_date",
    "try_to_timestamp",
    "parse_number",
    "parse_bool",
    "clean",
    "coalesce",
    "nvl",
    "nvl2",
    "ifnull",
    "get_field",
    "named_struct",
    "struct",
    "make_array",
];

/// Whether `name` is an allow-listed built-in that runs in its guarded form.
pub fn is_guarded(name: &str) -> bool {
    super::ALLOWED_FUNCTIONS.contains(&name) && !UNGUARDED.contains(&name)
}

/// The guarded built-ins, in allow-list order.
fn guarded() -> impl Iterator<Item = &'static str> {
    super::ALLOWED_FUNCTIONS
        .iter()
        .copied()
        .filter(|n| is_guarded(n))
}

/// Replaces each guarded built-in on the session by its guarded form, under the same name (so
/// plans, `explain` and the cluster's function registry see the usual names).
pub fn register(ctx: &SessionContext) {
    for name in guarded() {
        if let Some(inner) = ctx.state().scalar_functions().get(name).cloned() {
            let any: &dyn std::any::Any = inner.inner().as_ref();
            if any.is::<Guarded>() {
                continue;
            }
            ctx.register_udf(ScalarUDF::new_from_impl(Guarded { inner, share: 1 }));
        }
    }
}

/// A built-in with row-level try semantics.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Guarded {
    inner: Arc<ScalarUDF>,
    /// Growing calls in the expression that share its output budget (1 outside a mapping).
    share: usize,
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[datafusion::prelude::Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        // A row that fails is null, so the result is always nullable.
        let f = self.inner.return_field_from_args(args)?;
        Ok(Arc::new(f.as_ref().clone().with_nullable(true)))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        size_guard(self.name(), &mut args.args, n, self.share)?;
        match call(&self.inner, args.clone()) {
            Ok(v) => Ok(v),
            Err(_) => by_row(&self.inner, args),
        }
    }
}

/// One call; a panic inside a built-in is an error like any other.
fn call(f: &ScalarUDF, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f.invoke_with_args(args))) {
        Ok(r) => r,
        Err(_) => Err(DataFusionError::Execution(format!("{} panicked", f.name()))),
    }
}

/// The batch again, one row at a time; failing rows are null.
fn by_row(f: &ScalarUDF, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
    let n = args.number_rows;
    let out_type = args.return_field.data_type().clone();
    let all_scalar = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    if all_scalar {
        // Every row is the same call, and it failed.
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&out_type)?));
    }
    let mut pieces: Vec<ArrayRef> = Vec::with_capacity(n);
    for i in 0..n {
        let one = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Array(arr) => ColumnarValue::Array(arr.slice(i, 1)),
                ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.clone()),
            })
            .collect();
        let row_args = ScalarFunctionArgs {
            args: one,
            arg_fields: args.arg_fields.clone(),
            number_rows: 1,
            return_field: Arc::clone(&args.return_field),
            config_options: Arc::clone(&args.config_options),
        };
        let piece = call(f, row_args)
            .and_then(|v| v.into_array(1))
            .ok()
            .filter(|a| a.len() == 1 && a.data_type() == &out_type)
            .unwrap_or_else(|| new_null_array(&out_type, 1));
        pieces.push(piece);
    }
    let refs: Vec<&dyn Array> = pieces.iter().map(AsRef::as_ref).collect();
    Ok(ColumnarValue::Array(arrow::compute::concat(&refs)?))
}

/// Functions whose output size follows an argument rather than their input: they share the
/// expression's output budget.
pub const GROWING: &[&str] = &["repeat", "lpad", "rpad", "replace", "regexp_replace"];

/// The bytes each row's result could take, for the growing functions (None: no bound needed,
/// or a null argument). Computed from lengths and counts only, before anything is built.
fn predicted_sizes(name: &str, args: &[ColumnarValue], n: usize) -> DfResult<Option<Vec<i128>>> {
    Ok(Some(match name {
        // repeat(text, count): len · count bytes.
        "repeat" if args.len() == 2 => {
            let lens = byte_lengths(&args[0], n)?;
            let counts = integers(&args[1], n)?;
            (0..n)
                .map(|i| match (lens[i], counts[i]) {
                    (Some(l), Some(c)) => (l as i128) * (c.max(0) as i128),
                    _ => 0,
                })
                .collect()
        }
        // lpad/rpad(text, length[, fill]): up to 4 bytes per character of `length`.
        "lpad" | "rpad" if args.len() >= 2 => integers(&args[1], n)?
            .iter()
            .map(|l| l.map_or(0, |l| (l.max(0) as i128) * 4))
            .collect(),
        // replace(text, from, to): `to` for every occurrence of `from`, and at worst between
        // every two characters when `from` is empty; regexp_replace likewise (a pattern can
        // match the empty string).
        "replace" | "regexp_replace" if args.len() >= 3 => {
            let lens = byte_lengths(&args[0], n)?;
            let froms = byte_lengths(&args[1], n)?;
            let tos = byte_lengths(&args[2], n)?;
            (0..n)
                .map(|i| match (lens[i], tos[i]) {
                    (Some(l), Some(t)) => {
                        let (l, t) = (l as i128, t as i128);
                        match froms[i] {
                            Some(f) if f > 0 && name == "replace" => l + (l / f as i128) * t,
                            _ => (l + 1) * t + l,
                        }
                    }
                    _ => 0,
                })
                .collect()
        }
        _ => return Ok(None),
    }))
}

/// The largest result of one growing call in an expression with `share` growing calls: the
/// expression's per-row budget ([`MAX_VALUE_BYTES`]) divided among them, so that together
/// they stay within it.
pub fn row_limit(share: usize) -> i128 {
    MAX_VALUE_BYTES as i128 / share.max(1) as i128
}

/// Nulls every argument of the rows whose result would exceed this call's share of the
/// per-row budget, or would take the call's output for the batch past its share of
/// [`MAX_BATCH_OUTPUT_BYTES`], so the function returns null for them without building the
/// result (some size their output buffer from the length arguments of all rows, so the text
/// alone is not enough).
fn size_guard(name: &str, args: &mut [ColumnarValue], n: usize, share: usize) -> DfResult<()> {
    let too_big: Vec<bool> = match over_budget(name, args, n, share)? {
        Some(refused) => refused,
        None => match name {
            // from_unixtime(seconds): outside the years chrono can represent (about ±262,000),
            // the timestamp cannot be shown or converted later; null instead.
            "from_unixtime" if !args.is_empty() => {
                const MAX_SECONDS: i64 = 8_200_000_000_000;
                integers(&args[0], n)?
                    .iter()
                    .map(|s| s.is_some_and(|s| s.unsigned_abs() > MAX_SECONDS as u64))
                    .collect()
            }
            _ => return Ok(()),
        },
    };
    if !too_big.iter().any(|b| *b) {
        return Ok(());
    }
    let mask = BooleanArray::from(too_big);
    for arg in args.iter_mut() {
        let arr = arg.to_array(n)?;
        *arg = ColumnarValue::Array(arrow::compute::nullif(&arr, &mask)?);
    }
    Ok(())
}

/// For a growing call, the rows whose result would exceed the call's share of the per-row
/// budget, or take its output for the batch past its share of [`MAX_BATCH_OUTPUT_BYTES`]
/// (rows in order until the share is spent). `None` for other functions.
fn over_budget(
    name: &str,
    args: &[ColumnarValue],
    n: usize,
    share: usize,
) -> DfResult<Option<Vec<bool>>> {
    let row = row_limit(share);
    let batch = MAX_BATCH_OUTPUT_BYTES as i128 / share.max(1) as i128;
    Ok(predicted_sizes(name, args, n)?.map(|sizes| {
        let mut total = 0i128;
        sizes
            .iter()
            .map(|&s| {
                if s > row {
                    return true;
                }
                total += s;
                total > batch
            })
            .collect()
    }))
}

/// The name of the check that keeps a whole expression within its output budget.
pub const WITHIN_BUDGET: &str = "output_within_budget";

/// `output_within_budget(share, 'repeat', arg, …)`: true for the rows on which that growing
/// call stays within its share of the expression's budget. A mapping expression with growing
/// calls is compiled as `CASE WHEN <every call within budget> THEN expr END`, so that a row
/// over the budget is null as a whole (and reported), not a `concat` of the calls that did
/// fit, and the refused calls are never evaluated on it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WithinBudget {
    signature: Signature,
}

impl WithinBudget {
    /// The function, ready to register.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(WithinBudget {
            signature: Signature::variadic_any(datafusion::logical_expr::Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for WithinBudget {
    fn name(&self) -> &str {
        WITHIN_BUDGET
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let (share, name) = match (args.args.first(), args.args.get(1)) {
            (
                Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(share)))),
                Some(ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(name)) | ScalarValue::Utf8View(Some(name)),
                )),
            ) => (*share, name.clone()),
            _ => {
                return Err(DataFusionError::Execution(format!(
                    "{WITHIN_BUDGET} takes a share and a function name"
                )));
            }
        };
        let refused = over_budget(&name, &args.args[2..], n, share.max(1) as usize)?
            .unwrap_or_else(|| vec![false; n]);
        let ok: BooleanArray = refused.iter().map(|r| Some(!r)).collect();
        Ok(ColumnarValue::Array(Arc::new(ok)))
    }
}

/// The size of a growing call whose arguments are all literals, known when it is compiled.
pub fn literal_size(name: &str, args: &[ScalarValue]) -> Option<i128> {
    let args: Vec<ColumnarValue> = args.iter().cloned().map(ColumnarValue::Scalar).collect();
    predicted_sizes(name, &args, 1)
        .ok()
        .flatten()
        .and_then(|v| v.first().copied())
}

/// The guarded form of a growing built-in that shares the expression's budget with
/// `share - 1` other growing calls.
pub fn with_share(f: &Arc<ScalarUDF>, share: usize) -> Arc<ScalarUDF> {
    let any: &dyn std::any::Any = f.inner().as_ref();
    let inner = match any.downcast_ref::<Guarded>() {
        Some(g) => Arc::clone(&g.inner),
        None => Arc::clone(f),
    };
    Arc::new(ScalarUDF::new_from_impl(Guarded {
        inner,
        share: share.max(1),
    }))
}

/// Byte length of each row's text (None for null or non-text).
fn byte_lengths(v: &ColumnarValue, n: usize) -> DfResult<Vec<Option<usize>>> {
    let arr = v.to_array(n)?;
    if !matches!(
        arr.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(vec![None; n]);
    }
    let lens = arrow::compute::kernels::length::length(&arr)?;
    let lens = arrow::compute::cast(&lens, &DataType::Int64)?;
    let lens = arrow::array::AsArray::as_primitive::<Int64Type>(lens.as_ref());
    Ok(lens.iter().map(|l| l.map(|l| l.max(0) as usize)).collect())
}

/// Each row's integer argument (None for null or not a number).
fn integers(v: &ColumnarValue, n: usize) -> DfResult<Vec<Option<i64>>> {
    let arr = v.to_array(n)?;
    if !arr.data_type().is_numeric() {
        return Ok(vec![None; n]);
    }
    let ints = arrow::compute::cast(&arr, &DataType::Int64)?;
    let ints = arrow::array::AsArray::as_primitive::<Int64Type>(ints.as_ref());
    Ok(ints.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::FunctionRegistry;

    #[test]
    fn every_guarded_builtin_is_replaced() {
        let ctx = crate::mapping::compile::session();
        assert!(
            guarded().count() > 40,
            "the allow-list's built-ins are guarded"
        );
        for name in guarded() {
            let f = ctx.udf(name).unwrap();
            let any: &dyn std::any::Any = f.inner().as_ref();
            assert!(any.is::<Guarded>(), "{name} is not guarded ({})", f.name());
        }
    }
}

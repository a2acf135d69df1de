//! A mapping evaluated on a source's first rows, row by row: what each field's expression made
//! of the row, and the reasons the row fails. The review page shows it for the chosen
//! expressions and for each rank of candidates.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Schema, UInt64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::error::{Error, Result};
use crate::mapping::CompiledMapping;
use crate::mapping::compile::CompiledField;
use crate::schema::TargetSchema;
use crate::validate::Validator;
use crate::validate::report::{InvalidRow, RowError};

/// Longest text of one shown value: a review shows values, not documents.
const SHOWN_CHARS: usize = 120;

/// The outcome of one mapping on the sample.
#[derive(Debug, Clone, Default)]
pub struct SampleRun {
    /// Mapped values, `[row][target field]` in target order; `None` is null.
    pub mapped: Vec<Vec<Option<String>>>,
    /// The reasons each row fails, by row (empty for a valid row).
    pub errors: Vec<Vec<RowError>>,
    /// The invalid rows as the run's invalid output would have them.
    pub invalid: Vec<InvalidRow>,
    /// Each field's errors as (row, index into that row's errors), rows ascending: a wide
    /// target asks about hundreds of fields, and every question is then one lookup.
    by_field: HashMap<String, Vec<(usize, usize)>>,
}

impl SampleRun {
    /// Rows that pass every check.
    pub fn valid_rows(&self) -> usize {
        self.errors.iter().filter(|e| e.is_empty()).count()
    }

    /// Rows with an error on `field`.
    pub fn failing(&self, field: &str) -> usize {
        let Some(errors) = self.by_field.get(field) else {
            return 0;
        };
        let mut rows = 0;
        let mut last = None;
        for (r, _) in errors {
            if last != Some(*r) {
                rows += 1;
                last = Some(*r);
            }
        }
        rows
    }

    /// Every error on `field` with its row, rows ascending.
    pub fn errors_of<'a>(
        &'a self,
        field: &str,
    ) -> impl Iterator<Item = (usize, &'a RowError)> + 'a {
        self.by_field
            .get(field)
            .into_iter()
            .flatten()
            .map(|&(r, i)| (r, &self.errors[r][i]))
    }
}

/// Runs `fields` (one compiled expression per target field, in target order) over `rows` and
/// checks every row as a run would.
pub async fn run(
    ctx: &SessionContext,
    target: &TargetSchema,
    data_schema: &Schema,
    rows: &RecordBatch,
    fields: Vec<CompiledField>,
) -> Result<SampleRun> {
    let mapping = CompiledMapping { fields };
    let validator = Validator::for_mapping(target, &mapping);
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?;
    let scan = LogicalPlanBuilder::scan("sample", provider_as_source(Arc::new(table)), None)?;
    let (plan, layout) = crate::plan::build(scan, data_schema, &mapping, &validator)?;
    let batches = DataFrame::new(ctx.state(), plan).collect().await?;
    let valid_schema = target.valid_arrow_schema();
    let opts = FormatOptions::default();
    let mut out = SampleRun::default();
    for b in &batches {
        let formatters = (0..layout.n_targets)
            .map(|i| ArrayFormatter::try_new(b.column(i).as_ref(), &opts))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let files = b.column(layout.file).as_string::<i32>();
        let numbers = b.column(layout.row).as_primitive::<UInt64Type>();
        let first = out.errors.len();
        let mut position: HashMap<(String, u64), usize> = HashMap::new();
        for r in 0..b.num_rows() {
            position.insert((files.value(r).to_string(), numbers.value(r)), first + r);
            out.mapped.push(
                (0..layout.n_targets)
                    .map(|i| {
                        (!b.column(i).is_null(r))
                            .then(|| shorten(&formatters[i].value(r).to_string()))
                    })
                    .collect(),
            );
            out.errors.push(Vec::new());
        }
        let (_, invalid) = crate::split::split(b, &layout, &validator.checks, &valid_schema)?;
        for row in invalid {
            let at = position
                .get(&(row.source_file.clone(), row.row))
                .copied()
                .ok_or_else(|| {
                    Error::Internal(format!("an invalid row ({}) not in the sample", row.row))
                })?;
            out.errors[at] = row.errors.clone();
            out.invalid.push(row);
        }
    }
    for (r, errs) in out.errors.iter().enumerate() {
        for (i, e) in errs.iter().enumerate() {
            if let Some(f) = &e.field {
                out.by_field.entry(f.clone()).or_default().push((r, i));
            }
        }
    }
    if out.mapped.len() != rows.num_rows() {
        return Err(Error::Internal(format!(
            "the sample run returned {} of {} rows",
            out.mapped.len(),
            rows.num_rows()
        )));
    }
    Ok(out)
}

/// The source's values of `columns` in each row, as shown to a reviewer: `a | b`, or the one
/// value alone; `None` where every column is null.
pub fn source_values(rows: &RecordBatch, columns: &[String]) -> Result<Vec<Option<String>>> {
    let opts = FormatOptions::default();
    let mut arrays = Vec::new();
    for c in columns {
        if let Some(a) = rows.column_by_name(c) {
            arrays.push(a.clone());
        }
    }
    let formatters = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &opts))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((0..rows.num_rows())
        .map(|r| {
            let parts: Vec<String> = arrays
                .iter()
                .zip(&formatters)
                .map(|(a, f)| {
                    if a.is_null(r) {
                        "∅".to_string()
                    } else {
                        shorten(&f.value(r).to_string())
                    }
                })
                .collect();
            (!parts.is_empty() && arrays.iter().any(|a| !a.is_null(r))).then(|| parts.join(" | "))
        })
        .collect())
}

/// At most 120 characters (`SHOWN_CHARS`), with a marker when cut.
pub fn shorten(s: &str) -> String {
    if s.chars().count() <= SHOWN_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(SHOWN_CHARS).collect();
    t.push('…');
    t
}

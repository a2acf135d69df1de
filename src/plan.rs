//! The one function that turns a source scan, a compiled mapping and a validator into a
//! DataFusion logical plan: scan → mapping projection → validation masks → `__valid`.
//!
//! The plan only uses DataFusion expressions and the functions in [`crate::functions`], so the
//! same plan can run on a local `SessionContext` or be shipped to another engine. The valid/
//! invalid split is a filter on `__valid`; locally [`crate::split::split`] does it per batch
//! and builds error lists for the invalid side.

use arrow::datatypes::Schema;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::{Expr, lit};

use crate::error::Result;
use crate::mapping::CompiledMapping;
use crate::mapping::compile::column;
use crate::source::{ERROR_COL, FILE_COL, RAW_COL, RECORD_COL, ROW_COL};
use crate::validate::{SRC_PREFIX, Validator};

/// Name of the row-is-valid column.
pub const VALID_COL: &str = "__valid";

/// Where things are in the plan's output batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// Target fields come first, in schema order.
    pub n_targets: usize,
    /// Target field names.
    pub targets: Vec<String>,
    /// First check mask column; check `i` is at `ok_start + i`.
    pub ok_start: usize,
    /// Column of each check's detail text, if it has one.
    pub detail: Vec<Option<usize>>,
    /// The struct column of all source values (see [`RECORD_COL`]).
    pub record: usize,
    /// Source column names, in source order (the record's fields).
    pub src_columns: Vec<String>,
    /// Provenance columns.
    pub file: usize,
    /// Row-number column.
    pub row: usize,
    /// Malformed-reason column.
    pub error: usize,
    /// Raw-text column.
    pub raw: usize,
    /// The `__valid` column.
    pub valid: usize,
}

impl Layout {
    /// Column index of a target field.
    pub fn target_index(&self, name: &str) -> usize {
        self.targets
            .iter()
            .position(|t| t == name)
            .expect("target field in layout")
    }
}

/// Builds the plan on top of `scan`, whose output is the source's columns plus provenance.
pub fn build(
    scan: LogicalPlanBuilder,
    data_schema: &Schema,
    mapping: &CompiledMapping,
    validator: &Validator,
) -> Result<(LogicalPlan, Layout)> {
    let src_columns: Vec<String> = data_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let provenance = [FILE_COL, ROW_COL, ERROR_COL, RAW_COL, RECORD_COL];
    let targets: Vec<String> = mapping.fields.iter().map(|f| f.name.clone()).collect();
    // 1. Mapping: target fields, plus the source columns the checks read (as read, for the
    //    presence checks), plus provenance with the whole record for the invalid output.
    let mut p1: Vec<Expr> = mapping.fields.iter().map(|f| f.expr.clone()).collect();
    let mut checked: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in validator
        .checks
        .iter()
        .flat_map(|c| c.sources.iter())
        .chain(mapping.fields.iter().flat_map(|f| f.sources.iter()))
    {
        if seen.insert(s.as_str()) {
            checked.push(s);
        }
    }
    p1.extend(
        checked
            .iter()
            .map(|s| column(s).alias(format!("{SRC_PREFIX}{s}"))),
    );
    p1.extend(provenance.iter().map(|c| column(c)));
    // 2. Validation: one mask per check (null counts as failure), detail texts. Names are kept
    //    so that step 3 can refer to every column.
    let mut p2: Vec<(Expr, String)> = targets.iter().map(|t| (column(t), t.clone())).collect();
    let ok_start = p2.len();
    for (i, c) in validator.checks.iter().enumerate() {
        let name = format!("__ok_{i}");
        p2.push((
            datafusion::functions::expr_fn::coalesce(vec![c.ok.clone(), lit(false)]).alias(&name),
            name,
        ));
    }
    let mut detail = Vec::with_capacity(validator.checks.len());
    for (i, c) in validator.checks.iter().enumerate() {
        match &c.detail {
            Some(d) => {
                detail.push(Some(p2.len()));
                let name = format!("__detail_{i}");
                p2.push((d.clone().alias(&name), name));
            }
            None => detail.push(None),
        }
    }
    let prov_start = p2.len();
    p2.extend(provenance.iter().map(|c| (column(c), c.to_string())));
    // 3. The verdict, from the masks already computed (a separate projection, so the masks are
    //    evaluated once).
    let mut p3: Vec<Expr> = p2.iter().map(|(_, name)| column(name)).collect();
    let mut verdict = column(ERROR_COL).is_null();
    for i in 0..validator.checks.len() {
        verdict = verdict.and(column(&format!("__ok_{i}")));
    }
    p3.push(verdict.alias(VALID_COL));
    let p2: Vec<Expr> = p2.into_iter().map(|(e, _)| e).collect();
    let plan = scan.project(p1)?.project(p2)?.project(p3)?.build()?;
    let layout = Layout {
        n_targets: targets.len(),
        targets,
        ok_start,
        detail,
        record: prov_start + 4,
        src_columns,
        file: prov_start,
        row: prov_start + 1,
        error: prov_start + 2,
        raw: prov_start + 3,
        valid: prov_start + provenance.len(),
    };
    Ok((plan, layout))
}

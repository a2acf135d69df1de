//! The monitor between the plan and the writer: profiles valid batches, holds back a first run's reference rows, adds the flags column.

use super::*;

/// Per-field row-rule state.
pub(super) struct RowRules {
    /// Outlier reference (numbers with a MAD above zero).
    pub(super) reference: Option<Reference>,
    pub(super) outliers: u64,
    pub(super) outlier_examples: Vec<Value>,
    /// Values seen in earlier runs of a category column.
    pub(super) known: Option<HashSet<String>>,
    pub(super) new_values: BTreeMap<String, u64>,
}

/// Profiles the valid batches of one source run and raises the flags. Batches go in through
/// [`Monitor::push`] and come out (with the flags column when asked) ready to write; on a first
/// run the first `reference_rows` rows are held back until the outlier reference is known.
pub struct Monitor {
    pub(super) config: AnomalyConfig,
    pub(super) schema: SchemaRef,
    pub(super) out_schema: SchemaRef,
    pub(super) columns: Vec<ColumnState>,
    pub(super) rules: Vec<RowRules>,
    pub(super) previous: Vec<RunProfile>,
    /// Rows held back on a first run.
    pub(super) held: Vec<RecordBatch>,
    pub(super) held_rows: usize,
    pub(super) reference_ready: bool,
    pub(super) reference_from: String,
    pub(super) rows: u64,
    pub(super) rows_flagged: u64,
    pub(super) hashes: Vec<u64>,
}

impl Monitor {
    /// A monitor for valid batches of `schema`, judged against the source's earlier profiles
    /// (oldest first; only the last `history_runs` count).
    pub fn new(
        config: &AnomalyConfig,
        schema: SchemaRef,
        mut previous: Vec<RunProfile>,
    ) -> Result<Monitor> {
        let keep = config.history_runs.max(1);
        if previous.len() > keep {
            previous.drain(..previous.len() - keep);
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnState::new(f))
            .collect::<Result<Vec<_>>>()?;
        let last = previous.last();
        let mut need_reference = false;
        let rules = schema
            .fields()
            .iter()
            .map(|f| {
                let before = last.and_then(|p| p.columns.get(f.name()));
                let integer = f.data_type().is_integer();
                let earlier =
                    before.and_then(|b| reference_from(b, last.map_or(0, |p| p.rows), integer));
                // A column an earlier run saw too few numbers of, or an identifier, has no
                // reference; one the earlier runs did not have gets one from the first rows.
                let reference = match Measure::of(f.data_type()) {
                    Measure::Number if before.is_none() => {
                        need_reference = true;
                        None
                    }
                    _ => earlier,
                };
                // A column is a category column when every earlier run saw few values.
                let known = if previous.is_empty() {
                    None
                } else {
                    previous
                        .iter()
                        .map(|p| p.columns.get(f.name()).and_then(|c| c.categories.as_ref()))
                        .collect::<Option<Vec<_>>>()
                        .map(|sets| sets.iter().flat_map(|s| s.keys().cloned()).collect())
                };
                RowRules {
                    reference,
                    outliers: 0,
                    outlier_examples: Vec::new(),
                    known,
                    new_values: BTreeMap::new(),
                }
            })
            .collect();
        let out_schema = if config.flag_rows {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(flags_field()));
            Arc::new(Schema::new(fields))
        } else {
            Arc::clone(&schema)
        };
        let reference_from = if need_reference {
            format!("first {} rows", config.reference_rows)
        } else if previous.is_empty() {
            "none (no numeric columns)".to_string()
        } else {
            "previous run".to_string()
        };
        Ok(Monitor {
            config: config.clone(),
            schema,
            out_schema,
            columns,
            rules,
            previous,
            held: Vec::new(),
            held_rows: 0,
            reference_ready: !need_reference,
            reference_from,
            rows: 0,
            rows_flagged: 0,
            hashes: Vec::new(),
        })
    }

    /// Schema of the batches [`Monitor::push`] returns.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    /// Takes one valid batch; returns the batches ready to be written, in order.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if self.reference_ready {
            return Ok(vec![self.process(batch)?]);
        }
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        if self.held_rows < self.config.reference_rows {
            return Ok(vec![]);
        }
        self.release()
    }

    /// Releases the held rows (end of input); call before [`Monitor::finish`].
    pub fn flush(&mut self) -> Result<Vec<RecordBatch>> {
        if self.reference_ready {
            return Ok(vec![]);
        }
        self.release()
    }

    pub(super) fn release(&mut self) -> Result<Vec<RecordBatch>> {
        for (i, f) in self.schema.fields().iter().enumerate() {
            if Measure::of(f.data_type()) != Measure::Number || self.rules[i].reference.is_some() {
                continue;
            }
            let mut xs = Vec::with_capacity(self.held_rows);
            for b in &self.held {
                let c = cast(b.column(i), &DataType::Float64)?;
                xs.extend(
                    c.as_primitive::<arrow::datatypes::Float64Type>()
                        .iter()
                        .flatten()
                        .filter(|x| x.is_finite()),
                );
            }
            self.rules[i].reference = reference_of(xs, f.data_type().is_integer());
        }
        self.reference_from = format!("first {} rows", self.held_rows);
        self.reference_ready = true;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|b| self.process(b))
            .collect()
    }

    /// Profiles a batch and applies the row rules.
    pub(super) fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut tripped: Vec<Vec<String>> = if self.config.flag_rows {
            vec![Vec::new(); n]
        } else {
            Vec::new()
        };
        let mut any = vec![false; n];
        for (i, col) in batch.columns().iter().enumerate() {
            let numbers = (self.columns[i].measure == Measure::Number)
                .then(|| cast(col, &DataType::Float64))
                .transpose()?;
            let numbers = numbers
                .as_ref()
                .map(|a| a.as_primitive::<arrow::datatypes::Float64Type>());
            self.columns[i].observe(col, numbers, &mut self.hashes)?;
            let field = self.schema.field(i).name();
            let rules = &mut self.rules[i];
            if let (Some(r), Some(f)) = (rules.reference.filter(|r| r.mad > 0.0), numbers) {
                let mask = outlier_mask(f, r, self.config.outlier_threshold);
                for (k, x) in f.iter().enumerate() {
                    if !mask.value(k) {
                        continue;
                    }
                    rules.outliers += 1;
                    any[k] = true;
                    if rules.outlier_examples.len() < EXAMPLES {
                        rules.outlier_examples.push(serde_json::json!({
                            "value": x,
                            "valid_row": self.rows + k as u64,
                        }));
                    }
                    if let Some(t) = tripped.get_mut(k) {
                        t.push(format!("outlier:{field}"));
                    }
                }
            }
            if let Some(known) = &rules.known {
                let strings = cast(col, &DataType::Utf8)?;
                for (k, v) in strings.as_string::<i32>().iter().enumerate() {
                    let Some(v) = v else { continue };
                    if known.contains(v) {
                        continue;
                    }
                    *rules.new_values.entry(v.to_string()).or_default() += 1;
                    any[k] = true;
                    if let Some(t) = tripped.get_mut(k) {
                        t.push(format!("new_value:{field}"));
                    }
                }
            }
        }
        self.rows += n as u64;
        self.rows_flagged += any.iter().filter(|x| **x).count() as u64;
        if !self.config.flag_rows {
            return Ok(batch);
        }
        let mut list = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            false,
        )));
        for t in tripped {
            for r in t {
                list.values().append_value(r);
            }
            list.append(true);
        }
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        cols.push(Arc::new(list.finish()));
        Ok(RecordBatch::try_new(Arc::clone(&self.out_schema), cols)?)
    }

    /// The run's profile and flags (call after the last batch was written).
    pub fn finish(self, at: String) -> (RunProfile, AnomalyReport) {
        let rows = self.rows;
        let max_categories = self.config.max_categories;
        let profile = RunProfile {
            at,
            rows,
            columns: self
                .columns
                .into_iter()
                .map(|c| (c.name.clone(), c.finish(rows, max_categories)))
                .collect(),
        };
        let mut flags = Vec::new();
        for (i, f) in self.schema.fields().iter().enumerate() {
            let name = f.name();
            let r = &self.rules[i];
            if r.outliers > 0 {
                let reference = r.reference.expect("outliers need a reference");
                let shown: Vec<String> = r
                    .outlier_examples
                    .iter()
                    .map(|e| e["value"].to_string())
                    .collect();
                flags.push(Flag {
                    rule: "outliers",
                    field: name.clone(),
                    count: Some(r.outliers),
                    value: None,
                    baseline: Some(if reference.log {
                        reference.median.exp()
                    } else {
                        reference.median
                    }),
                    examples: r.outlier_examples.clone(),
                    message: if reference.log {
                        format!(
                            "{name}: {} outliers (robust z > {} on a log scale; median {}, MAD of ln {}), e.g. {}",
                            r.outliers,
                            self.config.outlier_threshold,
                            round(reference.median.exp()),
                            round(reference.mad),
                            shown.join(", ")
                        )
                    } else {
                        format!(
                            "{name}: {} outliers (robust z > {}; median {}, MAD {}), e.g. {}",
                            r.outliers,
                            self.config.outlier_threshold,
                            round(reference.median),
                            round(reference.mad),
                            shown.join(", ")
                        )
                    },
                });
            }
            if !r.new_values.is_empty() {
                let count = r.new_values.values().sum();
                let mut values: Vec<(&String, &u64)> = r.new_values.iter().collect();
                values.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                flags.push(Flag {
                    rule: "new_values",
                    field: name.clone(),
                    count: Some(count),
                    value: None,
                    baseline: None,
                    examples: values
                        .iter()
                        .take(EXAMPLES)
                        .map(|(v, n)| serde_json::json!({"value": v, "rows": n}))
                        .collect(),
                    message: format!(
                        "{name}: {count} rows with values not seen in earlier runs: {}",
                        values
                            .iter()
                            .take(EXAMPLES)
                            .map(|(v, n)| format!("{v:?} ({n})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let recent: Vec<&RunProfile> = self.previous.iter().rev().collect();
        flags.extend(drift(&profile, &recent, &self.config));
        let report = AnomalyReport {
            reference: self.reference_from,
            compared_runs: recent.len(),
            rows_flagged: self.rows_flagged,
            flags,
        };
        (profile, report)
    }
}

/// The `_anomalies` column: a list of rule names, never null.
pub fn flags_field() -> Field {
    Field::new(
        FLAGS_COL,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
        false,
    )
}

/// True where the robust z-score exceeds the threshold (false for nulls).
pub(super) fn outlier_mask(xs: &Float64Array, r: Reference, threshold: f64) -> BooleanArray {
    let limit = threshold * r.mad / MAD_SCALE;
    let values: Vec<bool> = if r.log {
        // A value that is not positive has no logarithm; in a column of positive numbers it is
        // an outlier by itself.
        xs.values()
            .iter()
            .map(|x| *x <= 0.0 || (x.ln() - r.median).abs() > limit)
            .collect()
    } else {
        xs.values()
            .iter()
            .map(|x| (x - r.median).abs() > limit)
            .collect()
    };
    let mask = BooleanArray::from(values);
    match xs.nulls() {
        Some(n) => {
            arrow::compute::and(&mask, &BooleanArray::new(n.inner().clone(), None)).unwrap_or(mask)
        }
        None => mask,
    }
}

pub(super) fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        (x * 100.0).round() / 100.0
    } else {
        let scale = 10f64.powi(4 - x.abs().log10().ceil().max(0.0) as i32);
        (x * scale).round() / scale
    }
}

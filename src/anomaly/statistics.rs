//! Running per-column statistics of one run: distinct counts (HyperLogLog++ over Arrow's hashes), t-digest quantiles, top values.

use super::*;

/// Passes a precomputed 64-bit hash through unchanged, so HyperLogLog++ counts the hashes
/// Arrow's vectorized hashing already produced.
#[derive(Default)]
pub(super) struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else so the hasher stays total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type Hll = HyperLogLogPF<u64, BuildHasherDefault<Passthrough>>;

/// What is measured of a column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Measure {
    /// Cast to f64: mean, std, quantiles, outliers.
    Number,
    /// Counted by value: top values, categories.
    Text,
    /// Counted by value.
    Boolean,
    /// Min/max only.
    Temporal,
    /// Nulls and distinct count only.
    Other,
}

impl Measure {
    pub(super) fn of(t: &DataType) -> Measure {
        match t {
            t if t.is_numeric() => Measure::Number,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Measure::Text,
            DataType::Boolean => Measure::Boolean,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => Measure::Temporal,
            _ => Measure::Other,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Measure::Number => "number",
            Measure::Text => "text",
            Measure::Boolean => "boolean",
            Measure::Temporal => "date",
            Measure::Other => "other",
        }
    }
}

/// Running state of one column.
pub(super) struct ColumnState {
    pub(super) name: String,
    pub(super) measure: Measure,
    pub(super) nulls: u64,
    pub(super) hll: Hll,
    /// Exact counts until more than `TOP_CAP` distinct values are seen.
    pub(super) counts: Option<HashMap<String, u64>>,
    /// Numbers: count, mean and sum of squared deviations (Chan's parallel update).
    pub(super) n: u64,
    pub(super) mean: f64,
    pub(super) m2: f64,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) digest: TDigest,
    pub(super) pending: Vec<f64>,
    /// Temporal min/max as display text and the Arrow order key.
    pub(super) tmin: Option<(i64, String)>,
    pub(super) tmax: Option<(i64, String)>,
}

impl ColumnState {
    pub(super) fn new(field: &Field) -> Result<ColumnState> {
        let measure = Measure::of(field.data_type());
        Ok(ColumnState {
            name: field.name().clone(),
            measure,
            nulls: 0,
            hll: Hll::new(14, BuildHasherDefault::default())
                .map_err(|e| Error::source("(profile)", format!("{e:?}")))?,
            counts: matches!(measure, Measure::Text | Measure::Boolean).then(HashMap::new),
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: None,
            max: None,
            digest: TDigest::new(DIGEST_SIZE),
            pending: Vec::new(),
            tmin: None,
            tmax: None,
        })
    }

    /// Adds the column's non-null values to the distinct-count sketch.
    pub(super) fn sketch(&mut self, col: &dyn Array, hashes: &mut Vec<u64>) -> Result<()> {
        hashes.clear();
        hashes.resize(col.len(), 0);
        create_hashes([col], &HLL_RANDOM_STATE, hashes)?;
        for (i, h) in hashes.iter().enumerate() {
            if col.is_valid(i) {
                self.hll.insert(h);
            }
        }
        Ok(())
    }

    /// Adds a batch's column; `numbers` is the column cast to f64 for a numeric column (cast
    /// once per batch by the caller, which also judges outliers on it).
    pub(super) fn observe(
        &mut self,
        col: &ArrayRef,
        numbers: Option<&Float64Array>,
        hashes: &mut Vec<u64>,
    ) -> Result<()> {
        self.nulls += col.null_count() as u64;
        // Text with few values is counted exactly; hashing every value for the sketch is
        // only needed once a column has too many values to count.
        if !matches!(self.measure, Measure::Boolean | Measure::Other)
            && (self.measure != Measure::Text || self.counts.is_none())
        {
            self.sketch(col.as_ref(), hashes)?;
        }
        match self.measure {
            Measure::Number => {
                if let Some(f) = numbers {
                    self.observe_numbers(f);
                }
            }
            Measure::Text => {
                if let Some(counts) = &mut self.counts {
                    let strings = cast(col, &DataType::Utf8)?;
                    for s in strings.as_string::<i32>().iter().flatten() {
                        match counts.get_mut(s) {
                            Some(c) => *c += 1,
                            None => {
                                counts.insert(s.to_string(), 1);
                            }
                        }
                    }
                    if counts.len() > TOP_CAP {
                        // Too many values to count: the sketch takes over, seeded with every
                        // value seen so far (hashed the same way as later batches).
                        let seen = arrow::array::StringArray::from_iter_values(counts.keys());
                        self.counts = None;
                        self.sketch(&seen, hashes)?;
                    }
                }
            }
            Measure::Boolean => {
                if let Some(counts) = &mut self.counts {
                    let b = col.as_boolean();
                    let t = b.true_count() as u64;
                    let f = (b.len() - b.null_count()) as u64 - t;
                    for (k, n) in [("true", t), ("false", f)] {
                        if n > 0 {
                            *counts.entry(k.to_string()).or_default() += n;
                        }
                    }
                }
            }
            Measure::Temporal => {
                // One pass for the positions of the smallest and largest non-null values;
                // only those two are turned into text.
                let keys = cast(col, &DataType::Int64)?;
                let keys = keys.as_primitive::<arrow::datatypes::Int64Type>();
                let mut lo: Option<(i64, usize)> = None;
                let mut hi: Option<(i64, usize)> = None;
                for (i, v) in keys.iter().enumerate() {
                    let Some(v) = v else { continue };
                    if lo.is_none_or(|(m, _)| v < m) {
                        lo = Some((v, i));
                    }
                    if hi.is_none_or(|(m, _)| v > m) {
                        hi = Some((v, i));
                    }
                }
                let text = |i: usize| -> String {
                    arrow::util::display::array_value_to_string(col, i).unwrap_or_default()
                };
                if let Some((v, i)) = lo
                    && self.tmin.as_ref().is_none_or(|(m, _)| v < *m)
                {
                    self.tmin = Some((v, text(i)));
                }
                if let Some((v, i)) = hi
                    && self.tmax.as_ref().is_none_or(|(m, _)| v > *m)
                {
                    self.tmax = Some((v, text(i)));
                }
            }
            Measure::Other => {}
        }
        Ok(())
    }

    pub(super) fn observe_numbers(&mut self, f: &Float64Array) {
        let (mut n, mut sum) = (0u64, 0.0f64);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let start = self.pending.len();
        for x in f.iter().flatten() {
            if !x.is_finite() {
                continue;
            }
            n += 1;
            sum += x;
            lo = lo.min(x);
            hi = hi.max(x);
            self.pending.push(x);
        }
        if n == 0 {
            return;
        }
        // Chan et al.: combine this batch's mean and squared deviations with the running ones.
        let mean_b = sum / n as f64;
        let m2_b: f64 = self.pending[start..]
            .iter()
            .map(|x| (x - mean_b) * (x - mean_b))
            .sum();
        let total = self.n + n;
        let delta = mean_b - self.mean;
        self.mean += delta * n as f64 / total as f64;
        self.m2 += m2_b + delta * delta * self.n as f64 * n as f64 / total as f64;
        self.n = total;
        self.min = Some(self.min.map_or(lo, |m| m.min(lo)));
        self.max = Some(self.max.map_or(hi, |m| m.max(hi)));
        if self.pending.len() >= DIGEST_BUFFER {
            self.flush_digest();
        }
    }

    pub(super) fn flush_digest(&mut self) {
        if !self.pending.is_empty() {
            self.digest = self
                .digest
                .merge_unsorted_f64(std::mem::take(&mut self.pending));
        }
    }

    pub(super) fn finish(mut self, rows: u64, max_categories: usize) -> ColumnProfile {
        self.flush_digest();
        let counts = self.counts.take();
        let distinct = match (&counts, self.measure) {
            (_, Measure::Other) => None,
            (Some(c), _) => Some(c.len() as u64),
            (None, _) => Some(self.hll.count().round() as u64),
        };
        let mut p = ColumnProfile {
            kind: self.measure.name().into(),
            nulls: self.nulls,
            null_share: if rows == 0 {
                0.0
            } else {
                self.nulls as f64 / rows as f64
            },
            distinct,
            ..Default::default()
        };
        if self.measure == Measure::Number && self.n > 0 {
            p.min = self.min.map(Value::from);
            p.max = self.max.map(Value::from);
            p.mean = Some(self.mean);
            p.std = Some((self.m2 / self.n as f64).sqrt());
            for (k, q) in [
                ("p01", 0.01),
                ("p05", 0.05),
                ("p25", 0.25),
                ("p50", 0.5),
                ("p75", 0.75),
                ("p95", 0.95),
                ("p99", 0.99),
            ] {
                p.quantiles
                    .insert(k.into(), self.digest.estimate_quantile(q));
            }
            p.mad = Some(digest_mad(&self.digest, false));
            if self.min.is_some_and(|m| m > 0.0) {
                p.log_mad = Some(digest_mad(&self.digest, true));
            }
        }
        if self.measure == Measure::Temporal {
            p.min = self.tmin.map(|(_, s)| Value::from(s));
            p.max = self.tmax.map(|(_, s)| Value::from(s));
        }
        if let Some(c) = counts {
            let mut top: Vec<(String, u64)> = c.iter().map(|(k, v)| (k.clone(), *v)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(TOP);
            p.top = top;
            let seen = rows - self.nulls;
            if c.len() <= max_categories
                && !c.is_empty()
                && seen >= MIN_ROWS_PER_CATEGORY * c.len() as u64
            {
                p.categories = Some(c.into_iter().collect());
            }
        }
        p
    }
}

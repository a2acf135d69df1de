//! The robust centre and spread outliers are judged against: from a first run's leading rows or from an earlier run's profile.

use super::*;

/// The median absolute deviation estimated from a t-digest: the weighted median of the
/// centroids' distances from the median (of their logarithms with `log`; quantiles commute
/// with the logarithm, so the log-scale median is the log of the median).
pub(super) fn digest_mad(d: &TDigest, log: bool) -> f64 {
    let f = |x: f64| if log { x.ln() } else { x };
    let median = f(d.estimate_quantile(0.5));
    let mut dev: Vec<(f64, f64)> = d
        .centroids()
        .iter()
        .map(|c| ((f(c.mean()) - median).abs(), c.weight()))
        .collect();
    dev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = dev.iter().map(|x| x.1).sum::<f64>() / 2.0;
    let mut acc = 0.0;
    for (x, w) in dev {
        acc += w;
        if acc >= half {
            return x;
        }
    }
    0.0
}

/// Exact median and MAD of a set of numbers.
pub(super) fn median_mad(mut xs: Vec<f64>) -> Option<(f64, f64)> {
    pub(super) fn median(xs: &mut [f64]) -> f64 {
        let n = xs.len();
        xs.sort_by(f64::total_cmp);
        if n % 2 == 1 {
            xs[n / 2]
        } else {
            (xs[n / 2 - 1] + xs[n / 2]) / 2.0
        }
    }
    if xs.len() < MIN_REFERENCE {
        return None;
    }
    let m = median(&mut xs);
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    Some((m, median(&mut dev)))
}

/// Robust centre and spread of a numeric column, of `ln(x)` when `log`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reference {
    pub(super) median: f64,
    pub(super) mad: f64,
    pub(super) log: bool,
}

/// A right-skewed column of positive numbers (amounts, sizes, durations): its long tail is its
/// normal shape, so it is judged on a log scale, where such data is roughly symmetric.
pub(super) fn skewed(p01: f64, p50: f64, p99: f64) -> bool {
    p01 > 0.0 && (p99 - p50) > 3.0 * (p50 - p01)
}

/// An integer column whose values are almost all distinct is an identifier or a counter: its
/// spread says nothing about a single value, so it is not judged for outliers.
pub(super) fn identifier(integer: bool, distinct: u64, values: u64) -> bool {
    integer && values > 0 && distinct as f64 > 0.95 * values as f64
}

/// The reference from a set of numbers (a first run's leading rows).
pub(super) fn reference_of(mut xs: Vec<f64>, integer: bool) -> Option<Reference> {
    if xs.len() < MIN_REFERENCE {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let distinct = 1 + xs.windows(2).filter(|w| w[0] != w[1]).count();
    if identifier(integer, distinct as u64, xs.len() as u64) {
        return None;
    }
    let q = |p: f64| xs[((xs.len() - 1) as f64 * p).round() as usize];
    let log = skewed(q(0.01), q(0.5), q(0.99));
    if log {
        xs.iter_mut().for_each(|x| *x = x.ln());
    }
    median_mad(xs).map(|(median, mad)| Reference { median, mad, log })
}

/// The reference from an earlier run's profile of the column.
pub(super) fn reference_from(c: &ColumnProfile, rows: u64, integer: bool) -> Option<Reference> {
    let values = rows.saturating_sub(c.nulls);
    if values < MIN_REFERENCE as u64 || identifier(integer, c.distinct.unwrap_or(0), values) {
        return None;
    }
    let (p01, p50, p99) = (
        *c.quantiles.get("p01")?,
        *c.quantiles.get("p50")?,
        *c.quantiles.get("p99")?,
    );
    match c.log_mad {
        Some(log_mad) if skewed(p01, p50, p99) => Some(Reference {
            median: p50.ln(),
            mad: log_mad,
            log: true,
        }),
        _ => Some(Reference {
            median: p50,
            mad: c.mad?,
            log: false,
        }),
    }
}

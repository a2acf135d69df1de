//! Column-level drift of a run against the source's earlier runs.

use super::*;

/// Column-level drift of `now` against earlier runs (newest first).
pub(super) fn drift(now: &RunProfile, earlier: &[&RunProfile], cfg: &AnomalyConfig) -> Vec<Flag> {
    let mut flags = Vec::new();
    if earlier.is_empty() {
        return flags;
    }
    for (name, c) in &now.columns {
        let before: Vec<&ColumnProfile> =
            earlier.iter().filter_map(|p| p.columns.get(name)).collect();
        if before.is_empty() || now.rows == 0 {
            continue;
        }
        let avg = |f: &dyn Fn(&ColumnProfile) -> Option<f64>| -> Option<f64> {
            let xs: Vec<f64> = before.iter().filter_map(|c| f(c)).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        };
        let null_before = avg(&|c| Some(c.null_share)).unwrap_or(0.0);
        if (c.null_share - null_before).abs() > cfg.max_null_share_change {
            flags.push(Flag {
                rule: "null_share_drift",
                field: name.clone(),
                count: Some(c.nulls),
                value: Some(c.null_share),
                baseline: Some(null_before),
                examples: vec![],
                message: format!(
                    "{name}: null share {:.1}% (earlier runs {:.1}%)",
                    c.null_share * 100.0,
                    null_before * 100.0
                ),
            });
        }
        if let (Some(mean), Some(mean_before), Some(std_before)) =
            (c.mean, avg(&|c| c.mean), avg(&|c| c.std))
        {
            let shift = (mean - mean_before).abs();
            let drifted = if std_before > 0.0 {
                shift / std_before > cfg.max_mean_shift
            } else {
                shift > 0.0
            };
            if drifted {
                flags.push(Flag {
                    rule: "mean_drift",
                    field: name.clone(),
                    count: None,
                    value: Some(mean),
                    baseline: Some(mean_before),
                    examples: vec![],
                    message: format!(
                        "{name}: mean {} (earlier runs {}, a shift of {:.2} standard deviations)",
                        round(mean),
                        round(mean_before),
                        if std_before > 0.0 {
                            shift / std_before
                        } else {
                            f64::INFINITY
                        }
                    ),
                });
            }
        }
        // Category shares against the newest earlier run.
        if let (Some(now_c), Some(prev_c)) = (&c.categories, before[0].categories.as_ref()) {
            let total_now: u64 = now_c.values().sum();
            let total_prev: u64 = prev_c.values().sum();
            if total_now > 0 && total_prev > 0 {
                let keys: HashSet<&String> = now_c.keys().chain(prev_c.keys()).collect();
                let share = |m: &BTreeMap<String, u64>, k: &String, t: u64| {
                    m.get(k).copied().unwrap_or(0) as f64 / t as f64
                };
                let distance = keys
                    .iter()
                    .map(|k| (share(now_c, k, total_now) - share(prev_c, k, total_prev)).abs())
                    .sum::<f64>()
                    / 2.0;
                if distance > cfg.max_category_shift {
                    let gone: Vec<&String> =
                        prev_c.keys().filter(|k| !now_c.contains_key(*k)).collect();
                    flags.push(Flag {
                        rule: "category_drift",
                        field: name.clone(),
                        count: None,
                        value: Some(distance),
                        baseline: None,
                        examples: gone.iter().map(|g| Value::from(g.as_str())).collect(),
                        message: format!(
                            "{name}: value shares moved by {:.1}% since the previous run{}",
                            distance * 100.0,
                            if gone.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "; no longer seen: {}",
                                    gone.iter()
                                        .map(|g| format!("{g:?}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ),
                    });
                }
            }
        }
    }
    flags
}

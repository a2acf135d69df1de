//! What a pair's evidence score is worth as a confidence on a target of a given width.
//!
//! The matcher's scores say how well a column's name, description and values fit a field.
//! On a target of a few dozen fields that is close to the chance of being right (the narrow
//! evaluation groups are right in 86–100 % of the pairs of every band from 0.5 up), but on a
//! standard of hundreds of fields most columns fit some field well, and the same score is
//! right about half the time at 0.9 and a quarter at 0.5. A confidence is meant to be that
//! chance, whatever the width, so that one `min_confidence` means the same on both.
//!
//! The model is a logistic regression of whether a chosen pair is right on its evidence
//! score, the logarithm of the target's width and the kind of evidence, fitted by
//! `scripts/fit_calibration` on the pairs of the tuned groups (hand-made, real, wide; the
//! frozen groups only score it). Among n fields the prior odds of any one pair fall about as
//! 1/n, and the fitted width coefficient is close to that (1.05); evidence that is only the
//! column's words found in the field's description is worth less the more descriptions there
//! are to find them in. On targets no wider than the narrow groups' widest the scores are
//! kept: they are already at or below the precision of their band there. From that width to
//! the wide groups' narrowest the two are blended on a log scale, and a score is never raised.

/// The evidence label of a pair identified only by its column's words in the field's
/// description.
pub(super) const BY_FIELD_DESCRIPTION: &str = "matches the field's description";

// Fitted by `scripts/fit_calibration` (2026-12-04): intercept, evidence-score logit, ln(width),
// ln(width) for field-description evidence.
const INTERCEPT: f64 = 5.80;
const EVIDENCE: f64 = 0.28;
const PER_LN_WIDTH: f64 = -1.05;
const DESCRIPTION_PER_LN_WIDTH: f64 = -0.25;
/// The widest target of the narrow groups: up to here a score is its confidence.
const NARROW: f64 = 22.0;
/// The narrowest target of the wide groups: from here the fitted model alone.
const WIDE: f64 = 206.0;

/// The calibration for one target.
#[derive(Debug, Clone, Copy)]
pub(super) struct Width {
    ln: f64,
    /// How far the target is from narrow (0) to wide (1), on a log scale.
    blend: f64,
}

impl Width {
    pub(super) fn of(fields: usize) -> Width {
        let n = (fields as f64).max(1.0);
        Width {
            ln: n.ln(),
            blend: ((n / NARROW).ln() / (WIDE / NARROW).ln()).clamp(0.0, 1.0),
        }
    }

    /// The confidence of a pair scoring `score` on evidence labelled `by`, rounded like the
    /// scores.
    pub(super) fn calibrated(&self, score: f64, by: &str) -> f64 {
        if self.blend == 0.0 {
            return score;
        }
        let logit = |p: f64| {
            let p = p.clamp(0.01, 0.99);
            (p / (1.0 - p)).ln()
        };
        let per_ln = PER_LN_WIDTH
            + if by == BY_FIELD_DESCRIPTION {
                DESCRIPTION_PER_LN_WIDTH
            } else {
                0.0
            };
        let fitted = INTERCEPT + EVIDENCE * logit(score) + per_ln * self.ln;
        let z = (1.0 - self.blend) * logit(score) + self.blend * fitted;
        let p = 1.0 / (1.0 + (-z).exp());
        // Never raised; never rounded to nothing (a zero offers nothing to a reviewer).
        (p.min(score) * 100.0).round().max(1.0) / 100.0
    }
}

/// Every field's confidence and every candidate's score, from evidence scores
/// ([`super::HeuristicMapper::map_evidence`]) to confidences for a target of `fields` fields,
/// as [`super::HeuristicMapper::map_now`] does; the kind of evidence is read from the
/// rationale (the matcher writes it there). A lowered confidence says so in the rationale.
pub fn calibrate_document(doc: &mut crate::mapping::MappingDocument, fields: usize) {
    let width = Width::of(fields);
    if width.blend == 0.0 {
        return;
    }
    let kind = |why: &str| {
        if why.contains(BY_FIELD_DESCRIPTION) {
            BY_FIELD_DESCRIPTION
        } else {
            ""
        }
    };
    for m in doc.fields.values_mut() {
        if m.expr.is_some() {
            let evidence = m.confidence;
            m.confidence = width.calibrated(evidence, kind(&m.rationale));
            if m.confidence < evidence {
                m.rationale = format!(
                    "{}; evidence {evidence:.2}, confidence {:.2} among {fields} fields",
                    m.rationale, m.confidence
                );
            }
        }
        for c in &mut m.candidates {
            c.score = width.calibrated(c.score, kind(&c.why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_targets_keep_their_scores() {
        for n in [1, 5, 22] {
            for s in [0.25, 0.5, 0.73, 1.0] {
                assert_eq!(Width::of(n).calibrated(s, "matches by name"), s);
                assert_eq!(Width::of(n).calibrated(s, BY_FIELD_DESCRIPTION), s);
            }
        }
    }

    #[test]
    fn wider_targets_lower_the_same_evidence_more() {
        let at = |n: usize, by: &str| Width::of(n).calibrated(0.9, by);
        let name = "matches by name";
        assert!(at(23, name) <= 0.9);
        assert!(at(100, name) < at(23, name));
        assert!(at(432, name) < at(100, name));
        assert!(at(798, name) < at(432, name));
        // A 432-field standard: a 0.9 pair by name is about as likely right as wrong.
        assert!((0.4..0.6).contains(&at(432, name)), "{}", at(432, name));
        // Words found in one of hundreds of descriptions are worth less than a name.
        assert!(at(432, BY_FIELD_DESCRIPTION) < at(432, name));
        // Order by evidence is kept within a kind.
        let w = Width::of(432);
        assert!(w.calibrated(0.6, name) < w.calibrated(0.8, name));
        assert!(w.calibrated(0.25, BY_FIELD_DESCRIPTION) >= 0.01);
    }
}

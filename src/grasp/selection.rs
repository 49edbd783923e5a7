//! Which singular values to keep: importance scores and the rank rule.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How a singular value's importance is measured from its gradient g = dL/dS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// |g · S|: first-order Taylor estimate of the loss change when S is zeroed (the paper's default).
    Taylor,
    /// |g|.
    Gradient,
}

pub fn importance(metric: Metric, s: &[f64], grad: &[f64]) -> Vec<f64> {
    s.iter()
        .zip(grad)
        .map(|(s, g)| match metric {
            Metric::Taylor => (g * s).abs(),
            Metric::Gradient => g.abs(),
        })
        .collect()
}

/// How many singular values to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    /// k = ⌊in·out·(1 − ratio) / (in + out)⌋: the factorized module has (1 − ratio) of the
    /// dense parameter count.
    Ratio(f64),
    /// The smallest top-importance set whose importance reaches this share of the total.
    Threshold(f64),
}

impl RankRule {
    pub fn validate(self) -> Result<Self> {
        let (name, v) = match self {
            RankRule::Ratio(r) => ("--ratio", r),
            RankRule::Threshold(t) => ("--threshold-ratio", t),
        };
        if !(v > 0.0 && v < 1.0) {
            bail!("{name} must be in (0, 1), got {v}");
        }
        Ok(self)
    }
}

/// k for the ratio rule, clamped to [1, full rank].
pub fn rank_for_ratio(in_features: usize, out_features: usize, ratio: f64) -> usize {
    let full = in_features.min(out_features);
    let k =
        (in_features * out_features) as f64 * (1.0 - ratio) / (in_features + out_features) as f64;
    (k.floor() as usize).clamp(1, full)
}

/// Indices sorted by importance, largest first; ties keep the lower (larger-σ) index first.
pub fn importance_order(importance: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..importance.len()).collect();
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    order
}

/// The outcome of selection for one module.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// Kept indices in importance order.
    pub in_importance_order: Vec<usize>,
    /// Kept indices ascending (the order the truncated factors are stored in).
    pub kept: Vec<usize>,
    pub retained_importance_fraction: f64,
    /// Relative gap between the last kept and the first dropped importance (0 when nothing is
    /// dropped): a swap at a gap this small is numerical noise.
    pub boundary_rel_gap: f64,
}

pub fn select(
    importance: &[f64],
    rule: RankRule,
    in_features: usize,
    out_features: usize,
) -> Selection {
    let order = importance_order(importance);
    let total: f64 = importance.iter().sum();
    let k = match rule {
        RankRule::Ratio(r) => rank_for_ratio(in_features, out_features, r).min(order.len()),
        RankRule::Threshold(t) => {
            let mut acc = 0.0;
            let mut k = order.len();
            for (n, &i) in order.iter().enumerate() {
                acc += importance[i];
                if acc >= t * total {
                    k = n + 1;
                    break;
                }
            }
            k
        }
    };
    let chosen = order[..k].to_vec();
    let mut kept = chosen.clone();
    kept.sort_unstable();
    let retained: f64 = chosen.iter().map(|&i| importance[i]).sum();
    let boundary_rel_gap = match order.get(k) {
        Some(&next) => {
            let (a, b) = (importance[order[k - 1]], importance[next]);
            (a - b) / a.abs().max(f64::MIN_POSITIVE)
        }
        None => 0.0,
    };
    Selection {
        in_importance_order: chosen,
        kept,
        retained_importance_fraction: if total > 0.0 { retained / total } else { 0.0 },
        boundary_rel_gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rank_matches_the_paper_formula() {
        // 172×64 down_proj of stories260K at ratio 0.5: ⌊172·64·0.5 / 236⌋ = 23.
        assert_eq!(rank_for_ratio(172, 64, 0.5), 23);
        assert_eq!(rank_for_ratio(4096, 4096, 0.7), 614);
        assert_eq!(rank_for_ratio(4, 4, 0.999), 1);
        assert_eq!(rank_for_ratio(4, 100, 0.0001), 3);
    }

    #[test]
    fn keeps_top_importance_and_reports_sorted_indices() {
        let imp = [0.1, 0.5, 0.05, 0.3, 0.05];
        let sel = select(&imp, RankRule::Ratio(0.5), 4, 4);
        assert_eq!(sel.in_importance_order, vec![1]);
        let sel = select(&imp, RankRule::Threshold(0.8), 4, 4);
        // 0.5 + 0.3 = 0.8 of a total of 1.0 reaches the threshold exactly.
        assert_eq!(sel.in_importance_order, vec![1, 3]);
        assert_eq!(sel.kept, vec![1, 3]);
        assert!((sel.retained_importance_fraction - 0.8).abs() < 1e-12);
        assert!((sel.boundary_rel_gap - (0.3 - 0.1) / 0.3).abs() < 1e-12);
    }

    #[test]
    fn metrics() {
        assert_eq!(
            importance(Metric::Taylor, &[2.0, 3.0], &[-0.5, 0.1]),
            vec![1.0, 0.30000000000000004]
        );
        assert_eq!(
            importance(Metric::Gradient, &[2.0, 3.0], &[-0.5, 0.1]),
            vec![0.5, 0.1]
        );
    }

    #[test]
    fn rejects_ratios_outside_the_open_unit_interval() {
        assert!(RankRule::Ratio(1.0).validate().is_err());
        assert!(RankRule::Threshold(0.0).validate().is_err());
        assert!(RankRule::Ratio(0.7).validate().is_ok());
    }
}

//! Block Influence: how much each decoder layer changes the hidden state it is given.
//!
//! BI_i = mean over calibration tokens of 1 − cos(h_i, h_{i+1}) (ShortGPT). As in the original
//! GRASP (which reads transformers' `output_hidden_states`), the last layer is scored against
//! the output AFTER the final RMSNorm. The angular variant (Gromov et al.) compares h_i with
//! h_{i+n} on the last token only, arccos(cos)/π, and picks the contiguous block of n layers
//! with the smallest distance.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use indicatif::ProgressBar;
use serde::Serialize;

use super::attribution::InputCollector;
use crate::data::calibration::Calibration;
use crate::model::Llama;

#[derive(Clone, Debug, Serialize)]
pub struct BlockInfluence {
    /// Cosine mode: one score per layer. Angular mode: one per block start i (layers i..i+n).
    pub scores: Vec<f64>,
    pub angular: bool,
    /// Layers each angular score spans (1 in cosine mode).
    pub span: usize,
    pub windows: usize,
}

/// Cosine similarity along the last axis, in f32: (…, d) × (…, d) → (…).
fn cosine(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let dot = (&a * &b)?.sum(D::Minus1)?;
    let norms = (a.sqr()?.sum(D::Minus1)?.sqrt()? * b.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    dot / norms
}

/// Scores every layer (or every block of `span` layers when `angular`) on the calibration set.
/// The pass computes every layer's input; `inputs` keeps those it collects for the gradient
/// passes, which then need no forward pass of their own up to their layer.
pub fn block_influence(
    model: &Llama,
    calib: &Calibration,
    batch_size: usize,
    angular: bool,
    span: usize,
    progress: &ProgressBar,
    mut inputs: Option<&mut InputCollector>,
) -> Result<BlockInfluence> {
    let n_layers = model.num_layers();
    if span == 0 || span > n_layers {
        bail!("cannot score blocks of {span} layers in a model of {n_layers}");
    }
    let n_scores = if angular {
        n_layers - span + 1
    } else {
        n_layers
    };
    let mut sums = vec![0f64; n_scores];
    let mut windows = 0usize;
    for batch in calib.batches(batch_size) {
        let ids = Calibration::batch_tensor(batch, model.device())?;
        let (b, t) = ids.dims2()?;
        let first = windows;
        let embedded = model.embed(&ids)?;
        if let Some(c) = inputs.as_deref_mut() {
            c.keep(0, first, &embedded)?;
        }
        // Angular mode needs h_i and h_{i+span}: only the last token of each is kept.
        let mut last_tokens = vec![embedded.narrow(1, t - 1, 1)?];
        let mut prev = embedded;
        model.run_layers(&prev.clone(), 0, n_layers, |i, out| {
            if let Some(c) = inputs.as_deref_mut() {
                c.keep(i + 1, first, out)?;
            }
            let out = if i + 1 == n_layers {
                model.final_norm(out)?
            } else {
                out.clone()
            };
            if angular {
                last_tokens.push(out.narrow(1, t - 1, 1)?);
            } else {
                let one_minus_cos = (1.0 - cosine(&prev, &out)?)?;
                sums[i] += one_minus_cos
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    / t as f64;
            }
            prev = out;
            Ok(())
        })?;
        if angular {
            for (i, sum) in sums.iter_mut().enumerate() {
                let cos = cosine(&last_tokens[i], &last_tokens[i + span])?.clamp(-1f32, 1f32)?;
                let angle: Vec<f32> = cos.flatten_all()?.to_vec1()?;
                *sum += angle
                    .iter()
                    .map(|c| (*c as f64).acos() / std::f64::consts::PI)
                    .sum::<f64>();
            }
        }
        windows += b;
        progress.inc(b as u64);
    }
    if windows == 0 {
        bail!("no calibration windows to score block influence on");
    }
    Ok(BlockInfluence {
        scores: sums.iter().map(|s| s / windows as f64).collect(),
        angular,
        span: if angular { span } else { 1 },
        windows,
    })
}

impl BlockInfluence {
    /// The `n` redundant layers, ascending: the n lowest scores, or in angular mode the block
    /// starting where the angular distance is smallest.
    pub fn redundant_layers(&self, n: usize) -> Vec<usize> {
        let order = ascending_order(&self.scores);
        if self.angular {
            let start = order[0];
            (start..start + self.span).collect()
        } else {
            let mut chosen: Vec<usize> = order.into_iter().take(n).collect();
            chosen.sort_unstable();
            chosen
        }
    }
}

fn ascending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_lowest_layers_or_the_best_angular_block() {
        let bi = BlockInfluence {
            scores: vec![0.5, 0.1, 0.3, 0.05, 0.9],
            angular: false,
            span: 1,
            windows: 1,
        };
        assert_eq!(bi.redundant_layers(2), vec![1, 3]);
        let bi = BlockInfluence {
            scores: vec![0.5, 0.1, 0.3],
            angular: true,
            span: 3,
            windows: 1,
        };
        assert_eq!(bi.redundant_layers(3), vec![1, 2, 3]);
    }
}

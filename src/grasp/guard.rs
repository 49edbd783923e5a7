//! The hybrid guard: a compressed layer stays only where it beats deleting the layer.
//!
//! Once both blocks of layer L are truncated, the mean calibration loss is measured twice from
//! L's input h_L (the unmodified model's hidden state, since layers are processed highest
//! first): through the truncated layer and every layer above it, and with layer L removed,
//! h_L passed straight to layer L + 1. The lower loss decides; a tie goes to removal, which
//! keeps fewer parameters. The layers above are already in their final form, so each choice
//! is made with every earlier choice in place. Both measurements are forward passes only, over
//! the batches the caller passes (a leading subset of the calibration set, see
//! [`Batches::first_windows`]): both losses come from the same windows, so the comparison
//! stays paired.

use std::time::Instant;

use anyhow::Result;
use candle_core::DType;
use indicatif::ProgressBar;
use serde::Serialize;

use super::attribution::{for_each_batch, Batches, Inputs};
use crate::model::Llama;

/// What the guard measured for one layer and what it chose.
#[derive(Clone, Debug, Serialize)]
pub struct GuardDecision {
    pub layer: usize,
    /// Mean calibration loss with the layer as compressed.
    pub compressed_loss: f64,
    /// Mean calibration loss with the layer removed.
    pub removed_loss: f64,
    pub removed: bool,
    /// Calibration windows both losses were measured on.
    pub windows: usize,
    pub seconds: f64,
}

/// Measures both losses for `layer` of `model` (already truncated) over `batches`, from the
/// cached `inputs` of those batches (or of a set they lead). The caller removes the layer when
/// [`GuardDecision::removed`] says so.
pub fn guard_layer(
    model: &Llama,
    layer: usize,
    batches: &Batches,
    inputs: &Inputs,
    progress: &ProgressBar,
) -> Result<GuardDecision> {
    let started = Instant::now();
    let both = |n: usize| -> Result<(f64, f64)> {
        let input = inputs.get(n)?;
        let loss = |start: usize| -> Result<f64> {
            let loss = batches.loss_from(model, start, n, &input)?;
            Ok(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let losses = (loss(layer)?, loss(layer + 1)?);
        progress.inc(batches.ids[n].dims()[0] as u64);
        Ok(losses)
    };
    let per_batch = for_each_batch(model, layer, batches, both)?;
    let jobs = batches.ids.len();
    let mean =
        |pick: fn(&(f64, f64)) -> f64| per_batch.iter().map(pick).sum::<f64>() / jobs.max(1) as f64;
    let (compressed_loss, removed_loss) = (mean(|l| l.0), mean(|l| l.1));
    Ok(GuardDecision {
        layer,
        compressed_loss,
        removed_loss,
        removed: removed_loss <= compressed_loss,
        windows: batches.windows(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

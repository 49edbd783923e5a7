//! Gradient attribution: dL/dS of every singular value of a block's projections, summed over
//! the calibration batches (each batch contributing the gradient of its mean next-token loss).
//!
//! Layers are compressed highest index first, so the input of layer i is always the unmodified
//! model's hidden state: it is computed once ([`LayerInputs`]) and each gradient pass runs only
//! from layer i to the head. Backward then stops at layer i by itself, since the cached input
//! is a constant to the graph. The result is the same as a full forward and backward pass.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use indicatif::ProgressBar;

use crate::model::linear::Linear;
use crate::model::llama::Projection;
use crate::model::Llama;

/// The calibration batches as (batch, seq) id tensors on the model's device.
pub struct Batches {
    pub ids: Vec<Tensor>,
}

impl Batches {
    pub fn windows(&self) -> usize {
        self.ids.iter().map(|t| t.dims()[0]).sum()
    }
}

/// Hidden-state inputs of some decoder layers for every calibration batch.
pub struct LayerInputs {
    inputs: BTreeMap<usize, Vec<Tensor>>,
}

impl LayerInputs {
    /// One forward pass of the model as it is now, up to the highest requested layer.
    pub fn collect(model: &Llama, batches: &Batches, layers: &[usize]) -> Result<Self> {
        let mut inputs: BTreeMap<usize, Vec<Tensor>> =
            layers.iter().map(|&l| (l, Vec::new())).collect();
        let Some(&top) = layers.iter().max() else {
            return Ok(Self { inputs });
        };
        for ids in &batches.ids {
            let embedded = model.embed(ids)?;
            if let Some(v) = inputs.get_mut(&0) {
                v.push(embedded.clone());
            }
            model.run_layers(&embedded, 0, top, |i, out| {
                if let Some(v) = inputs.get_mut(&(i + 1)) {
                    v.push(out.clone());
                }
                Ok(())
            })?;
        }
        Ok(Self { inputs })
    }

    /// Bytes one layer's inputs take: windows × seq × hidden × dtype size.
    pub fn bytes_per_layer(model: &Llama, batches: &Batches) -> usize {
        let tokens: usize = batches.ids.iter().map(|t| t.elem_count()).sum();
        tokens * model.config.hidden_size * model.dtype().size_in_bytes()
    }

    pub fn take(&mut self, layer: usize) -> Option<Vec<Tensor>> {
        self.inputs.remove(&layer)
    }
}

/// Gradients of one block's singular values.
pub struct BlockGradients {
    /// dL/dS per target projection, in the order given.
    pub grads: Vec<Vec<f64>>,
    /// Mean calibration loss over the batches (with every block processed so far truncated).
    pub loss_mean: f64,
}

/// Accumulates dL/dS over the batches for `targets` of `layer`, which must already be in
/// [`Linear::Svd`] form. `inputs[b]` is layer `layer`'s input for batch `b`.
pub fn singular_value_gradients(
    model: &Llama,
    layer: usize,
    targets: &[Projection],
    batches: &Batches,
    inputs: &[Tensor],
    progress: &ProgressBar,
) -> Result<BlockGradients> {
    let vars: Vec<_> = targets
        .iter()
        .map(|&p| match model.layers[layer].projection(p) {
            Linear::Svd { s, .. } => Ok(s.clone()),
            _ => bail!("{} is not in SVD form", p.module_name(layer)),
        })
        .collect::<Result<_>>()?;
    let mut grads: Vec<Vec<f64>> = vars
        .iter()
        .map(|v| vec![0.0; v.as_tensor().elem_count()])
        .collect();
    let mut loss_sum = 0.0;
    for (n, (ids, input)) in batches.ids.iter().zip(inputs).enumerate() {
        let loss = model.next_token_loss_from(layer, input, ids)?;
        let store = loss.backward()?;
        for ((acc, var), &p) in grads.iter_mut().zip(&vars).zip(targets) {
            let Some(g) = store.get(var.as_tensor()) else {
                bail!(
                    "no gradient reached the singular values of {}",
                    p.module_name(layer)
                );
            };
            let g: Vec<f64> = g.to_dtype(DType::F64)?.to_vec1()?;
            acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        }
        let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        loss_sum += loss;
        progress.inc(ids.dims()[0] as u64);
        progress.set_message(format!("loss {:.4}", loss_sum / (n + 1) as f64));
    }
    for (g, &p) in grads.iter().zip(targets) {
        let name = p.module_name(layer);
        if g.iter().any(|x| !x.is_finite()) {
            bail!("the gradient of {name}'s singular values is not finite (NaN or inf)");
        }
        if g.iter().all(|&x| x == 0.0) {
            bail!("the gradient of {name}'s singular values is all zero");
        }
    }
    Ok(BlockGradients {
        grads,
        loss_mean: loss_sum / batches.ids.len().max(1) as f64,
    })
}

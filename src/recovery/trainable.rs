//! The tensors recovery training updates: every tensor of the chosen decoder layers (norms,
//! dense weights, the two thin factors of a factorized projection, biases), as [`Var`]s in at
//! least f32 whatever the model's dtype, so that gradients and AdamW's moments accumulate in
//! full precision (an f64 model, as the gradient tests run, keeps f64). Everything else stays the model's own tensor, frozen.

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::model::linear::Linear;
use crate::model::llama::{DecoderLayer, Projection};
use crate::model::ops;
use crate::model::Llama;

/// What recovery trains.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every tensor of these layers.
    Layers(Vec<usize>),
    /// Rank-`rank` adapters on every projection of every layer (A drawn as PEFT does, B zero,
    /// update scaled by alpha / rank), merged into the weights at the end.
    Lora { rank: usize, alpha: f64 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Layers(layers) => write!(f, "every tensor of layers {layers:?}"),
            Target::Lora { rank, alpha } => {
                write!(
                    f,
                    "rank-{rank} LoRA adapters (alpha {alpha}) on every projection"
                )
            }
        }
    }
}

/// The trainable tensors, named as in the checkpoint (`….lora_A.weight` for adapters).
pub struct Trainable {
    pub target: Target,
    pub layers: Vec<usize>,
    adapters: bool,
    names: Vec<String>,
    vars: Vec<Var>,
}

impl Trainable {
    /// Copies the target's tensors into [`Var`]s; for [`Target::Lora`] the adapters are first
    /// attached to `model` (A seeded with `seed`). A projection in SVD form (singular values
    /// under training) is refused: recovery trains a checkpoint.
    pub fn new(model: &mut Llama, target: &Target, seed: u64) -> Result<Self> {
        let (layers, adapters) = match target {
            Target::Layers(layers) => {
                let mut layers = layers.clone();
                layers.sort_unstable();
                layers.dedup();
                (layers, false)
            }
            Target::Lora { rank, alpha } => {
                attach_adapters(model, *rank, *alpha, seed)?;
                ((0..model.num_layers()).collect(), true)
            }
        };
        if layers.is_empty() {
            bail!("no layer to train");
        }
        if let Some(&bad) = layers.iter().find(|&&l| l >= model.num_layers()) {
            bail!(
                "layer {bad} is out of range (the model has {} layers)",
                model.num_layers()
            );
        }
        let (mut names, mut vars) = (Vec::new(), Vec::new());
        for &l in &layers {
            visit_tensors(&mut model.layers[l], l, adapters, &mut |name, t| {
                names.push(name);
                vars.push(Var::from_tensor(&ops::at_least_f32(t)?)?);
                Ok(())
            })?;
        }
        Ok(Self {
            target: target.clone(),
            layers,
            adapters,
            names,
            vars,
        })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn num_params(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Puts the variables into `model`, in its dtype: `tracked` keeps them in the gradient
    /// graph (a training step), otherwise they enter as plain tensors (validation, saving).
    pub fn apply(&self, model: &mut Llama, tracked: bool) -> Result<()> {
        let dtype = model.dtype();
        let mut vars = self.vars.iter();
        for &l in &self.layers {
            visit_tensors(&mut model.layers[l], l, self.adapters, &mut |_, t| {
                let var = vars
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("layer changed shape"))?;
                let value = if tracked {
                    var.as_tensor().clone()
                } else {
                    var.as_tensor().detach()
                };
                *t = value.to_dtype(dtype)?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Leaves the trained values in `model` for good: plain tensors, adapters merged.
    pub fn finish(&self, model: &mut Llama) -> Result<()> {
        self.apply(model, false)?;
        if self.adapters {
            for layer in &mut model.layers {
                for p in Projection::ALL {
                    let merged = layer.projection(p).merge_adapter()?;
                    *layer.projection_mut(p) = merged;
                }
            }
        }
        Ok(())
    }
}

/// Wraps every projection of every layer in a LoRA adapter: A (rank, in) uniform in
/// ±1/√in (PEFT's Kaiming-uniform with a = √5), B (out, rank) zero, so training starts from
/// the model as it is.
fn attach_adapters(model: &mut Llama, rank: usize, alpha: f64, seed: u64) -> Result<()> {
    if rank == 0 {
        bail!("--lora must be at least 1");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (dtype, device) = (model.dtype(), model.device().clone());
    for layer in &mut model.layers {
        for p in Projection::ALL {
            let base = layer.projection(p).clone();
            let (i, o) = (base.in_features(), base.out_features());
            let bound = 1.0 / (i as f64).sqrt();
            let a: Vec<f64> = (0..rank * i)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (rank, i), &device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((o, rank), dtype, &device)?;
            *layer.projection_mut(p) = Linear::Lora {
                base: Box::new(base),
                a,
                b,
                scale: alpha / rank as f64,
            };
        }
    }
    Ok(())
}

/// Calls `f` with the checkpoint name and a mutable reference of every trainable tensor of
/// `layer` (index `l`), in a fixed order: every tensor, or with `adapters` the LoRA factors
/// alone.
fn visit_tensors(
    layer: &mut DecoderLayer,
    l: usize,
    adapters: bool,
    f: &mut impl FnMut(String, &mut Tensor) -> Result<()>,
) -> Result<()> {
    if !adapters {
        f(
            format!("model.layers.{l}.input_layernorm.weight"),
            &mut layer.input_layernorm,
        )?;
        f(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            &mut layer.post_attention_layernorm,
        )?;
    }
    for p in Projection::ALL {
        let name = p.module_name(l);
        match (adapters, layer.projection_mut(p)) {
            (true, Linear::Lora { a, b, .. }) => {
                f(format!("{name}.lora_A.weight"), a)?;
                f(format!("{name}.lora_B.weight"), b)?;
            }
            (false, Linear::Dense { weight, bias }) => {
                f(format!("{name}.weight"), weight)?;
                if let Some(b) = bias {
                    f(format!("{name}.bias"), b)?;
                }
            }
            (
                false,
                Linear::Factorized {
                    svd_in,
                    svd_out,
                    bias,
                },
            ) => {
                f(format!("{name}.svd_in.weight"), svd_in)?;
                f(format!("{name}.svd_out.weight"), svd_out)?;
                if let Some(b) = bias {
                    f(format!("{name}.bias"), b)?;
                }
            }
            (_, Linear::Svd { .. }) => bail!("{name} is in SVD form; save the checkpoint first"),
            (true, _) => bail!("{name} has no adapter"),
            (false, Linear::Lora { .. }) => bail!("{name} carries an adapter"),
        }
    }
    Ok(())
}

/// The layers with a factorized (compressed) projection, in order: what GRASP compressed,
/// whether just now or in a loaded factorized checkpoint.
pub fn compressed_layers(model: &Llama) -> Vec<usize> {
    (0..model.num_layers())
        .filter(|&l| {
            Projection::ALL.iter().any(|&p| {
                matches!(
                    model.layers[l].projection(p),
                    Linear::Factorized { .. } | Linear::Svd { .. }
                )
            })
        })
        .collect()
}

/// The layers that stand where `removed` (indices before removal) were deleted, after
/// removal: for each run of deleted layers, the layer just below it (the one just above when
/// the run starts at layer 0). What recovery trains after `--method remove`.
pub fn layers_beside_removed(removed: &[usize]) -> Vec<usize> {
    let mut removed = removed.to_vec();
    removed.sort_unstable();
    removed.dedup();
    let mut layers: Vec<usize> = removed
        .iter()
        .filter(|&&a| a == 0 || !removed.contains(&(a - 1)))
        .map(|&a| {
            let below = removed.iter().filter(|&&r| r < a).count();
            if a == 0 {
                0
            } else {
                a - 1 - below
            }
        })
        .collect();
    layers.dedup();
    layers
}

#[cfg(test)]
mod tests {
    use super::layers_beside_removed;

    #[test]
    fn layers_beside_removed_runs_are_renumbered() {
        assert_eq!(
            layers_beside_removed(&[12, 13, 14, 15, 17, 25]),
            [11, 12, 19]
        );
        assert_eq!(layers_beside_removed(&[0, 1, 5]), [0, 2]);
        assert_eq!(layers_beside_removed(&[3]), [2]);
    }
}

//! The GRASP loop: for each redundant layer, highest index first, the MLP block then the
//! attention block: SVD the targets, attribute the loss to each singular value, keep the
//! important ones, truncate, and move on with the truncated block in place.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use super::attribution::{singular_value_gradients, Batches, Inputs, LayerInputs};
use super::guard::{guard_layer, GuardDecision};
use super::selection::{importance, select, Metric, RankRule};
use super::svd::{thin_svd, SvdDtype};
use crate::model::linear::Linear;
use crate::model::llama::{Block, Projection};
use crate::model::Llama;
use crate::progress;
use crate::runtime;

/// What to do with the redundant layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Keep the singular values with the largest gradient attribution (the paper).
    Grasp,
    /// Keep the largest singular values (plain truncated SVD, no gradients).
    Svd,
    /// Delete the layers (ShortGPT).
    Remove,
    /// GRASP, then per layer keep whichever of the compressed layer and its removal gives the
    /// lower calibration loss.
    Hybrid,
}

impl Method {
    /// Whether the method takes gradient passes (and so needs the chosen layers' inputs).
    pub fn uses_gradients(self) -> bool {
        matches!(self, Method::Grasp | Method::Hybrid)
    }
}

#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub method: Method,
    pub metric: Metric,
    pub rule: RankRule,
    pub mlp_targets: Vec<Projection>,
    pub attn_targets: Vec<Projection>,
    pub svd_dtype: SvdDtype,
    pub input_cache: InputCache,
}

/// Where the chosen layers' inputs wait between the pass that computes them all and each
/// layer's gradient passes: in memory up to `memory_budget` bytes, else in files under
/// `disk_dir` when its file system has room, else nowhere (recomputed layer by layer).
#[derive(Clone, Debug)]
pub struct InputCache {
    pub memory_budget: usize,
    pub disk_dir: Option<PathBuf>,
}

/// Where layer inputs of a given size go under an [`InputCache`].
pub enum Placement<'a> {
    Memory,
    Disk(&'a Path),
    Recompute,
}

impl InputCache {
    pub fn place(&self, bytes: usize) -> Placement<'_> {
        if bytes <= self.memory_budget {
            return Placement::Memory;
        }
        match self.disk_dir.as_deref() {
            Some(dir)
                if runtime::free_disk_bytes(dir)
                    .is_some_and(|free| free >= bytes as u64 + DISK_MARGIN) =>
            {
                Placement::Disk(dir)
            }
            _ => Placement::Recompute,
        }
    }
}

/// Room left on the disk beyond the layer inputs, so that the output still fits.
const DISK_MARGIN: u64 = 1 << 30;

#[derive(Clone, Debug, Serialize)]
pub struct ModuleReport {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub full_rank: usize,
    pub k: usize,
    pub kept_indices: Vec<usize>,
    pub kept_in_importance_order: Vec<usize>,
    pub singular_values: Vec<f64>,
    /// dL/dS summed over the calibration batches (empty for `--method svd`).
    pub grad: Vec<f64>,
    pub importance: Vec<f64>,
    pub retained_importance_fraction: f64,
    pub retained_sigma_energy_fraction: f64,
    pub boundary_rel_gap: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    pub layer: usize,
    pub block: &'static str,
    pub modules: Vec<String>,
    /// Mean calibration loss during this block's gradient pass (GRASP only).
    pub calib_loss_mean: Option<f64>,
    pub svd_seconds: f64,
    pub gradient_seconds: f64,
    /// Matrix FLOPs of the gradient pass: forward plus an input-only backward (twice the
    /// forward), the least any implementation must do; divided by the time, a rate to compare.
    pub gradient_gflop: f64,
    pub select_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Compression {
    pub modules: Vec<ModuleReport>,
    pub blocks: Vec<BlockReport>,
    /// Where layer inputs were kept: "memory" or "disk" (one pass for all layers), or
    /// "recomputed" (one pass per layer); "none" without gradient passes.
    pub layer_inputs: &'static str,
    /// `--method hybrid`: per layer, highest first, both losses and the choice.
    pub guard: Vec<GuardDecision>,
}

/// Where [`compress_layers`] finds the chosen layers' inputs, computed by an earlier pass over
/// the unmodified model (the block-influence pass).
pub enum CollectedInputs<'a> {
    /// None: one pass collects them (or each layer's are recomputed).
    None,
    /// Used up, and their files deleted, layer by layer.
    Owned(LayerInputs),
    /// Left as they are for further compressions of the same model (a sweep).
    Shared(&'a LayerInputs),
}

/// Compresses `layers` of `model` in place (or removes them with [`Method::Remove`]).
/// `collected` may hold the layers' inputs from an earlier pass over the unmodified model (the
/// block-influence pass); without them, one pass collects them here.
pub fn compress_layers(
    model: &mut Llama,
    layers: &[usize],
    batches: &Batches,
    opts: &CompressOptions,
    collected: CollectedInputs,
) -> Result<Compression> {
    let n = model.num_layers();
    if let Some(bad) = layers.iter().find(|&&l| l >= n) {
        bail!(
            "layer {bad} is out of range: the model has {n} layers (0..{})",
            n - 1
        );
    }
    if opts.method == Method::Remove {
        model.remove_layers(layers);
        return Ok(Compression {
            layer_inputs: "none",
            ..Default::default()
        });
    }
    let mut order = layers.to_vec();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.dedup();
    let (layer_inputs, mut cache) = match collected {
        _ if !opts.method.uses_gradients() => ("none", CollectedInputs::None),
        CollectedInputs::Owned(inputs) => (inputs.placement(), CollectedInputs::Owned(inputs)),
        CollectedInputs::Shared(inputs) => (inputs.placement(), CollectedInputs::Shared(inputs)),
        CollectedInputs::None => {
            let total = order.len() * LayerInputs::bytes_per_layer(model, batches);
            // In memory (no directory) or in files under one; nothing to collect when recomputed.
            let keep_in = match opts.input_cache.place(total) {
                Placement::Memory => Some(None),
                Placement::Disk(dir) => Some(Some(dir)),
                Placement::Recompute => None,
            };
            match keep_in {
                Some(dir) => {
                    let inputs = LayerInputs::collect(model, batches, &order, dir)?;
                    (inputs.placement(), CollectedInputs::Owned(inputs))
                }
                None => ("recomputed", CollectedInputs::None),
            }
        }
    };
    let mut out = Compression {
        layer_inputs,
        ..Default::default()
    };
    for &layer in &order {
        // Layers below `layer` are untouched, so these are the original model's inputs.
        let cached = match &mut cache {
            CollectedInputs::Owned(inputs) => inputs.take(layer),
            CollectedInputs::Shared(inputs) => inputs.share(layer),
            CollectedInputs::None => None,
        };
        let inputs = match cached {
            Some(inputs) => inputs,
            None if opts.method.uses_gradients() => {
                LayerInputs::collect(model, batches, &[layer], None)?
                    .take(layer)
                    .unwrap_or(Inputs::Memory(Vec::new()))
            }
            None => Inputs::Memory(Vec::new()),
        };
        for (block, targets) in [
            (Block::Mlp, &opts.mlp_targets),
            (Block::Attention, &opts.attn_targets),
        ] {
            if targets.is_empty() {
                continue;
            }
            let (modules, report) =
                compress_block(model, layer, block, targets, batches, &inputs, opts)?;
            out.modules.extend(modules);
            out.blocks.push(report);
        }
        if opts.method == Method::Hybrid {
            let bar = progress::bar(
                batches.windows() as u64,
                &format!("layer {layer} guard"),
                "windows",
            );
            let decision = guard_layer(model, layer, batches, &inputs, &bar)?;
            bar.finish_and_clear();
            if decision.removed {
                // Only layers above `layer`, all processed, change their index.
                model.remove_layers(&[layer]);
            }
            out.guard.push(decision);
        }
        inputs.remove_files();
    }
    Ok(out)
}

fn compress_block(
    model: &mut Llama,
    layer: usize,
    block: Block,
    targets: &[Projection],
    batches: &Batches,
    inputs: &Inputs,
    opts: &CompressOptions,
) -> Result<(Vec<ModuleReport>, BlockReport)> {
    let block_name = match block {
        Block::Mlp => "mlp",
        Block::Attention => "attention",
    };
    let names: Vec<String> = targets.iter().map(|p| p.module_name(layer)).collect();

    let t = Instant::now();
    for &p in targets {
        let proj = model.layers[layer].projection_mut(p);
        let Linear::Dense { weight, bias } = proj else {
            bail!("{} is already compressed", p.module_name(layer));
        };
        let d = thin_svd(weight, opts.svd_dtype)?;
        *proj = Linear::Svd {
            u: d.u,
            s: Var::from_tensor(&d.s)?,
            vh: d.vh,
            bias: bias.clone(),
        };
    }
    let svd_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let (grads, calib_loss_mean) = if opts.method.uses_gradients() {
        let bar = progress::bar(
            batches.windows() as u64,
            &format!("layer {layer} {block_name}"),
            "windows",
        );
        let g = singular_value_gradients(model, layer, targets, batches, inputs, &bar)?;
        bar.finish_and_clear();
        (Some(g.grads), Some(g.loss_mean))
    } else {
        (None, None)
    };
    let gradient_seconds = t.elapsed().as_secs_f64();
    let gradient_gflop = match grads {
        Some(_) => {
            let tokens: usize = batches.ids.iter().map(|t| t.elem_count()).sum();
            let seq_len = batches.ids.first().map_or(0, |t| t.dims()[1]);
            2.0 * model.forward_flops(layer, tokens, seq_len) / 1e9
        }
        None => 0.0,
    };

    let t = Instant::now();
    let mut modules = Vec::with_capacity(targets.len());
    for (i, &p) in targets.iter().enumerate() {
        let proj = model.layers[layer].projection_mut(p);
        let Linear::Svd { u, s, vh, bias } = proj else {
            unreachable!("every target was put in SVD form above");
        };
        let sigma: Vec<f64> = s.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
        let grad = grads.as_ref().map(|g| g[i].clone()).unwrap_or_default();
        let imp = match &grads {
            Some(_) => importance(opts.metric, &sigma, &grad),
            None => sigma.clone(),
        };
        let (in_f, out_f) = (vh.dims()[1], u.dims()[0]);
        let sel = select(&imp, opts.rule, in_f, out_f);
        let kept = Tensor::new(
            sel.kept.iter().map(|&k| k as u32).collect::<Vec<_>>(),
            u.device(),
        )?;
        let truncated = Linear::Svd {
            u: u.index_select(&kept, 1)?,
            s: Var::from_tensor(&s.as_tensor().index_select(&kept, 0)?)?,
            vh: vh.index_select(&kept, 0)?,
            bias: bias.clone(),
        };
        *proj = truncated.to_factorized()?;
        let energy: f64 = sigma.iter().map(|x| x * x).sum();
        let kept_energy: f64 = sel.kept.iter().map(|&k| sigma[k] * sigma[k]).sum();
        modules.push(ModuleReport {
            name: p.module_name(layer),
            in_features: in_f,
            out_features: out_f,
            full_rank: sigma.len(),
            k: sel.kept.len(),
            kept_indices: sel.kept,
            kept_in_importance_order: sel.in_importance_order,
            singular_values: sigma,
            grad,
            importance: imp,
            retained_importance_fraction: sel.retained_importance_fraction,
            retained_sigma_energy_fraction: if energy > 0.0 {
                kept_energy / energy
            } else {
                0.0
            },
            boundary_rel_gap: sel.boundary_rel_gap,
        });
    }
    let report = BlockReport {
        layer,
        block: block_name,
        modules: names,
        calib_loss_mean,
        svd_seconds,
        gradient_seconds,
        gradient_gflop,
        select_seconds: t.elapsed().as_secs_f64(),
    };
    Ok((modules, report))
}

//! GRASP on one layer: the MLP block then the attention block: SVD the targets, attribute the
//! loss to each singular value, keep the important ones, truncate. The loop over the layers
//! (highest index first) and the hybrid guard are in `pipeline::compress`.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use super::attribution::{singular_value_gradients, Batches, Inputs};
use super::selection::{importance, select, Metric, RankRule};
use super::svd::{thin_svd, SvdDtype};
use crate::model::linear::Linear;
use crate::model::llama::{Block, Projection};
use crate::model::Llama;

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
    /// Calibration windows the hybrid guard measures its two losses on (0: all of them).
    pub guard_windows: usize,
}

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

/// Compresses both blocks of `layer` (the MLP, then attention; a block without targets is
/// skipped) given the layer's `inputs` from the unmodified model, which the gradient passes
/// start from.
pub fn compress_layer(
    model: &mut Llama,
    layer: usize,
    batches: &Batches,
    inputs: &Inputs,
    opts: &CompressOptions,
) -> Result<(Vec<ModuleReport>, Vec<BlockReport>)> {
    let (mut modules, mut blocks) = (Vec::new(), Vec::new());
    for (block, targets) in [
        (Block::Mlp, &opts.mlp_targets),
        (Block::Attention, &opts.attn_targets),
    ] {
        if targets.is_empty() {
            continue;
        }
        let (m, report) = compress_block(model, layer, block, targets, batches, inputs, opts)?;
        modules.extend(m);
        blocks.push(report);
    }
    Ok((modules, blocks))
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
        let bar = crate::progress::bar(
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

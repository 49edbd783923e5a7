//! A whole compression: Block Influence, the choice of layers, where their inputs live, the
//! layer-by-layer loop (highest index first, each layer's inputs being then the unmodified
//! model's) with the hybrid guard, and the report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::DType;

use super::inputs::{score_and_keep, InputCache};
use super::layers::{LayerChoice, ScoreOptions};
use super::report::{CalibrationSummary, CompressReport, ModelSummary, Timings};
use crate::data::calibration::Calibration;
use crate::grasp::attribution::{Batches, Inputs, LayerInputs};
use crate::grasp::compress::{compress_layer, BlockReport, CompressOptions, Method, ModuleReport};
use crate::grasp::guard::{guard_layer, GuardDecision};
use crate::grasp::influence::BlockInfluence;
use crate::io::save::OutputForm;
use crate::model::Llama;
use crate::runtime;

/// What a compression does and what its report records.
#[derive(Clone, Debug)]
pub struct CompressPlan {
    pub layers: LayerChoice,
    /// Choose by angular distance (a contiguous block) instead of per-layer Block Influence.
    pub angular: bool,
    pub options: CompressOptions,
    /// Windows per gradient pass.
    pub batch_size: usize,
    /// Position t is scored against token t + `label_shift` in the calibration loss.
    pub label_shift: usize,
    pub input_cache: InputCache,
    /// How the checkpoint will be written, for the parameter counts of the report.
    pub output: OutputForm,
    pub output_dtype: DType,
    /// The settings as given (the command line's flags), recorded in the report.
    pub args: serde_json::Value,
    /// The model's directory and the device as named, recorded in the report.
    pub model_path: PathBuf,
    pub device: String,
}

/// Compresses `model` in place as `plan` says on the calibration windows `calib`, calling
/// `chosen` once the layers are chosen. The report's save-time figures are left for
/// [`CompressReport::saved`].
pub fn compress(
    model: &mut Llama,
    calib: &Calibration,
    plan: &CompressPlan,
    chosen: impl FnOnce(&BlockInfluence, &[usize]),
) -> Result<CompressReport> {
    let num_layers = model.num_layers();
    let params_before = model.num_params();
    let t = Instant::now();
    let mut batches = Batches::new(calib, plan.batch_size, model.device())?;
    batches.label_shift = plan.label_shift;
    let candidates: Vec<usize> = match &plan.layers {
        LayerChoice::Given(layers) => layers.clone(),
        LayerChoice::Lowest(_) => (0..num_layers).collect(),
    };
    let score = ScoreOptions {
        batch_size: plan.batch_size,
        angular: plan.angular,
        span: plan.layers.span(),
    };
    let cache = plan
        .options
        .method
        .uses_gradients()
        .then_some(&plan.input_cache);
    let scored = score_and_keep(model, calib, &batches, &score, &candidates, cache, |bi| {
        plan.layers.choose(bi)
    })?;
    chosen(&scored.bi, &scored.chosen);
    let block_influence_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let inputs = Collected::Owned(scored.inputs.inputs);
    let compression = compress_layers(model, &scored.chosen, &batches, &plan.options, inputs)?;
    let compress_s = t.elapsed().as_secs_f64();
    let (params_after, params_after_merged) = (model.num_params(), model.num_params_merged());
    Ok(CompressReport {
        grasp_version: env!("CARGO_PKG_VERSION"),
        args: plan.args.clone(),
        model: ModelSummary {
            path: plan.model_path.clone(),
            num_layers,
            params: params_before,
        },
        device: plan.device.clone(),
        compute_dtype: runtime::dtype_name(model.dtype()),
        output_dtype: runtime::dtype_name(plan.output_dtype),
        threads: runtime::num_threads(),
        calibration: CalibrationSummary::new(calib, plan.batch_size),
        bi: scored.bi.scores,
        bi_angular: scored.bi.angular,
        removed_layers: compression.removed_layers(),
        chosen_layers: scored.chosen,
        layer_inputs: scored.inputs.placement,
        modules: compression.modules,
        blocks: compression.blocks,
        guard: compression.guard,
        params_before,
        params_after,
        params_after_factorized: params_after,
        params_after_merged,
        params_in_output: match plan.output {
            OutputForm::Merged => params_after_merged,
            OutputForm::Factorized => params_after,
        },
        output_form: plan.output,
        recovery: None,
        timings_s: Timings {
            block_influence_s,
            compress_s,
            ..Timings::default()
        },
        peak_rss_bytes: None,
        weights_bytes: 0,
    })
}

/// What [`compress_layers`] did.
#[derive(Clone, Debug, Default)]
pub struct Compression {
    pub modules: Vec<ModuleReport>,
    pub blocks: Vec<BlockReport>,
    /// `--method hybrid`: per layer, highest first, both losses and the choice.
    pub guard: Vec<GuardDecision>,
}

impl Compression {
    /// The layers the hybrid guard removed, highest first.
    pub fn removed_layers(&self) -> Vec<usize> {
        self.guard
            .iter()
            .filter(|d| d.removed)
            .map(|d| d.layer)
            .collect()
    }
}

/// The chosen layers' inputs, computed by an earlier pass over the unmodified model; a layer
/// without them has them recomputed just before its gradient passes.
pub enum Collected<'a> {
    /// Used up, and their files deleted, layer by layer.
    Owned(LayerInputs),
    /// Left as they are for further compressions of the same model (a sweep).
    Shared(&'a LayerInputs),
}

/// Compresses `layers` of `model` in place, highest first (or removes them with
/// [`Method::Remove`]), and with [`Method::Hybrid`] removes each layer whose removal gives the
/// lower calibration loss.
pub fn compress_layers(
    model: &mut Llama,
    layers: &[usize],
    batches: &Batches,
    opts: &CompressOptions,
    mut inputs: Collected,
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
        return Ok(Compression::default());
    }
    let mut order = layers.to_vec();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.dedup();
    let mut out = Compression::default();
    for &layer in &order {
        // Layers below `layer` are untouched, so these are the original model's inputs.
        let kept = match &mut inputs {
            Collected::Owned(inputs) => inputs.take(layer),
            Collected::Shared(inputs) => inputs.share(layer),
        };
        let layer_inputs = match kept {
            Some(kept) => kept,
            None if opts.method.uses_gradients() => {
                LayerInputs::collect(model, batches, &[layer], None)?
                    .take(layer)
                    .unwrap_or(Inputs::Memory(Vec::new()))
            }
            None => Inputs::Memory(Vec::new()),
        };
        let (modules, blocks) = compress_layer(model, layer, batches, &layer_inputs, opts)?;
        out.modules.extend(modules);
        out.blocks.extend(blocks);
        if opts.method == Method::Hybrid {
            let guarded = batches.first_windows(opts.guard_windows);
            let bar = crate::progress::bar(
                guarded.windows() as u64,
                &format!("layer {layer} guard"),
                "windows",
            );
            let decision = guard_layer(model, layer, &guarded, &layer_inputs, &bar)?;
            bar.finish_and_clear();
            if decision.removed {
                // Only layers above `layer`, all processed, change their index.
                model.remove_layers(&[layer]);
            }
            out.guard.push(decision);
        }
        layer_inputs.remove_files();
    }
    Ok(out)
}

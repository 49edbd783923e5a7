//! The size/quality frontier: which method and setting gives the best model for its size.
//!
//! One calibration set, one Block Influence pass and one set of cached layer inputs serve
//! every point of a sweep: layer removal for each layer count N, and plain SVD, GRASP and the
//! hybrid guard for each N × ratio. Every point starts from the same dense model (a clone
//! shares its weights; only the projections it compresses are new), is compressed, and is
//! scored by perplexity on one tokenized stream and, optionally, mean zero-shot accuracy.
//!
//! With recovery, each compressed point is followed by the same model after recovery training
//! (GRASP*; after removal, the layer below each removed run trains), scored the same way.
//!
//! A point is on the frontier when no other point has at most as many parameters and a lower
//! perplexity; `method_frontier` says the same among the points of its own method.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::compress::{compress_layers, Collected};
use super::recovery::{recovery_layers, removed_by};
use crate::data::tasks::Task;
use crate::eval::perplexity::{perplexity_of, PerplexitySpec, TokenStream};
use crate::eval::tasks::{averages, run_task, TaskOptions};
use crate::grasp::attribution::{Batches, LayerInputs};
use crate::grasp::compress::{CompressOptions, Method};
use crate::grasp::guard::GuardDecision;
use crate::grasp::influence::BlockInfluence;
use crate::grasp::selection::RankRule;
use crate::model::Llama;
use crate::recovery::plan::{recover, ReadyRecovery};
use crate::recovery::trainable::Target;

/// The points of a sweep.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// Layer counts N: the N layers of lowest Block Influence.
    pub layer_counts: Vec<usize>,
    /// Ratios for the methods that keep a rank (all but removal).
    pub ratios: Vec<f64>,
    pub methods: Vec<Method>,
    /// Metric, targets and SVD precision of every compression; the method and the rank rule
    /// are set per point.
    pub compress: CompressOptions,
}

impl SweepPlan {
    /// (method, N, ratio) of every point after the dense model, in the order they run.
    pub fn points(&self) -> Vec<(Method, usize, Option<f64>)> {
        let mut points = Vec::new();
        for &n in &self.layer_counts {
            for &method in &self.methods {
                if method == Method::Remove {
                    points.push((method, n, None));
                } else {
                    points.extend(self.ratios.iter().map(|&r| (method, n, Some(r))));
                }
            }
        }
        points
    }

    /// Every layer some point compresses or removes, ascending.
    pub fn layers_used(&self, bi: &BlockInfluence) -> Vec<usize> {
        let most = self.layer_counts.iter().copied().max().unwrap_or(0);
        bi.redundant_layers(most)
    }
}

/// How each point is scored.
pub struct Scoring<'a> {
    pub tokenizer: &'a Tokenizer,
    pub stream: &'a TokenStream,
    pub perplexity: PerplexitySpec,
    pub tasks: &'a [Task],
    pub task_options: TaskOptions,
    pub data_dir: Option<&'a Path>,
}

/// One model of the sweep and how it scored.
#[derive(Clone, Debug, Serialize)]
pub struct FrontierPoint {
    /// dense, remove, svd, grasp or hybrid.
    pub method: &'static str,
    /// Layers compressed or removed (0 for the dense model).
    pub layers: usize,
    pub ratio: Option<f64>,
    pub chosen_layers: Vec<usize>,
    /// Layers the hybrid guard removed (removal: every chosen layer).
    pub removed_layers: Vec<usize>,
    /// The hybrid guard's losses and choice per layer.
    pub guard: Vec<GuardDecision>,
    /// Parameters as a factorized checkpoint stores them.
    pub params: usize,
    /// Bytes of weights in the model's dtype, factorized.
    pub weights_bytes: usize,
    pub perplexity: f64,
    /// Mean accuracy over the tasks (acc_norm where a task has it), when tasks are scored.
    pub mean_accuracy: Option<f64>,
    pub compress_seconds: f64,
    /// Of `compress_seconds`: the gradient passes, and the hybrid guard's forward passes.
    pub gradient_seconds: f64,
    pub guard_seconds: f64,
    /// Recovery training, for the `+recovery` points (on top of `compress_seconds`).
    pub recovery_seconds: f64,
    pub eval_seconds: f64,
    pub on_frontier: bool,
    pub method_frontier: bool,
}

/// Runs the sweep on `dense`, whose layer inputs for [`SweepPlan::layers_used`] are in
/// `inputs`, calling `done` after each point; with `recovery`, every compressed point is
/// also trained and scored again.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    dense: &Llama,
    bi: &BlockInfluence,
    batches: &Batches,
    inputs: &LayerInputs,
    plan: &SweepPlan,
    scoring: &Scoring,
    recovery: Option<&ReadyRecovery>,
    mut done: impl FnMut(&FrontierPoint),
) -> Result<Vec<FrontierPoint>> {
    let mut points = Vec::new();
    let mut record = |point: FrontierPoint| {
        done(&point);
        points.push(point);
    };
    let setting = Setting {
        method: "dense",
        layers: 0,
        ratio: None,
        chosen_layers: Vec::new(),
        removed_layers: Vec::new(),
        guard: Vec::new(),
    };
    record(score(dense, setting, Times::default(), scoring)?);
    for (method, n, ratio) in plan.points() {
        let chosen = bi.redundant_layers(n);
        let opts = CompressOptions {
            method,
            rule: RankRule::Ratio(ratio.unwrap_or(0.0)),
            ..plan.compress.clone()
        };
        let started = Instant::now();
        let mut model = dense.clone();
        let c = compress_layers(
            &mut model,
            &chosen,
            batches,
            &opts,
            Collected::Shared(inputs),
        )?;
        let removed = removed_by(method, &chosen, &c.removed_layers());
        let times = Times {
            compress: started.elapsed().as_secs_f64(),
            gradient: c.blocks.iter().map(|b| b.gradient_seconds).sum(),
            guard: c.guard.iter().map(|d| d.seconds).sum(),
            recovery: 0.0,
        };
        let setting = Setting {
            method: method_name(method),
            layers: n,
            ratio,
            chosen_layers: chosen,
            removed_layers: removed,
            guard: c.guard,
        };
        record(score(&model, setting.clone(), times, scoring)?);
        let layers = recovery_layers(&model, &setting.removed_layers);
        if let Some(recovery) = recovery.filter(|_| !layers.is_empty()) {
            let started = Instant::now();
            let target = Target::Layers(layers);
            let spec = &recovery.plan.train;
            recover(&mut model, &target, &recovery.sets, spec, &mut |_, _, _| {})?;
            let times = Times {
                recovery: started.elapsed().as_secs_f64(),
                ..times
            };
            let setting = Setting {
                method: recovered_name(method),
                ..setting
            };
            record(score(&model, setting, times, scoring)?);
        }
    }
    mark_frontiers(&mut points);
    Ok(points)
}

/// What a point is, before it is scored.
#[derive(Clone)]
struct Setting {
    method: &'static str,
    layers: usize,
    ratio: Option<f64>,
    chosen_layers: Vec<usize>,
    removed_layers: Vec<usize>,
    guard: Vec<GuardDecision>,
}

#[derive(Clone, Copy, Default)]
struct Times {
    compress: f64,
    gradient: f64,
    guard: f64,
    recovery: f64,
}

fn score(
    model: &Llama,
    setting: Setting,
    times: Times,
    scoring: &Scoring,
) -> Result<FrontierPoint> {
    let started = Instant::now();
    let ppl = perplexity_of(model, scoring.stream, &scoring.perplexity)?;
    let results = scoring
        .tasks
        .iter()
        .map(|&task| {
            run_task(
                model,
                scoring.tokenizer,
                task,
                scoring.data_dir,
                &scoring.task_options,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FrontierPoint {
        method: setting.method,
        layers: setting.layers,
        ratio: setting.ratio,
        chosen_layers: setting.chosen_layers,
        removed_layers: setting.removed_layers,
        guard: setting.guard,
        params: model.num_params(),
        weights_bytes: model.num_params() * model.dtype().size_in_bytes(),
        perplexity: ppl.perplexity,
        mean_accuracy: averages(&results).map(|a| a.acc_norm_else_acc),
        compress_seconds: times.compress,
        gradient_seconds: times.gradient,
        guard_seconds: times.guard,
        recovery_seconds: times.recovery,
        eval_seconds: started.elapsed().as_secs_f64(),
        on_frontier: false,
        method_frontier: false,
    })
}

pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::Grasp => "grasp",
        Method::Svd => "svd",
        Method::Remove => "remove",
        Method::Hybrid => "hybrid",
    }
}

/// The name of a method's points after recovery training.
pub fn recovered_name(method: Method) -> &'static str {
    match method {
        Method::Grasp => "grasp+recovery",
        Method::Svd => "svd+recovery",
        Method::Remove => "remove+recovery",
        Method::Hybrid => "hybrid+recovery",
    }
}

/// Marks the points that no point (of any method, then of their own) beats: at most as many
/// parameters and a lower perplexity, or fewer parameters and the same perplexity.
pub fn mark_frontiers(points: &mut [FrontierPoint]) {
    let beats = |a: &FrontierPoint, b: &FrontierPoint| {
        (a.params <= b.params && a.perplexity < b.perplexity)
            || (a.params < b.params && a.perplexity <= b.perplexity)
    };
    let snapshot = points.to_vec();
    for p in points.iter_mut() {
        p.on_frontier = !snapshot.iter().any(|q| beats(q, p));
        p.method_frontier = !snapshot.iter().any(|q| q.method == p.method && beats(q, p));
    }
}

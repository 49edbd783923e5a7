//! Block Influence and full GRASP runs against the PyTorch reference (`../shared/golden`).

use std::path::Path;

use crate::common::*;
use candle_core::{DType, Device};
use grasp::data::calibration::Calibration;
use grasp::grasp::attribution::{Batches, LayerInputs};
use grasp::grasp::compress::{CompressOptions, Method};
use grasp::grasp::influence::block_influence;
use grasp::grasp::selection::{Metric, RankRule};
use grasp::grasp::svd::SvdDtype;
use grasp::io::save::OutputForm;
use grasp::model::linear::Linear;
use grasp::model::llama::{Block, Projection};
use grasp::pipeline::compress::{compress, compress_layers, Collected, CompressPlan};
use grasp::pipeline::inputs::{InputCache, Placement};
use grasp::pipeline::layers::LayerChoice;
use indicatif::ProgressBar;

fn golden_calibration(golden: &serde_json::Value) -> Calibration {
    let windows: Vec<Vec<u32>> = golden["bi_windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    Calibration {
        seq_len: windows[0].len(),
        total_tokens: windows.iter().map(Vec::len).sum(),
        available_windows: windows.len(),
        source: "golden bi_windows".into(),
        windows,
    }
}

fn check_block_influence(dir: &Path, golden_name: &str) {
    let Some(golden) = golden(golden_name) else {
        return;
    };
    let model = load(dir, DType::F32).model;
    let calib = golden_calibration(&golden);
    let n = calib.windows.len() as f64;
    for (angular, key) in [(false, "bi_cosine_sum"), (true, "bi_angular_sum")] {
        let bi =
            block_influence(&model, &calib, 1, angular, 1, &ProgressBar::hidden(), None).unwrap();
        let want: Vec<f64> = f64s(&golden[key]).iter().map(|s| s / n).collect();
        let err = rel_err(&bi.scores, &want);
        eprintln!("{golden_name} {key}: max relative error {err:.2e}");
        for (got, want) in bi.scores.iter().zip(&want) {
            assert!(
                (got - want).abs() <= 1e-3 * want.abs(),
                "{key}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn stories260k_block_influence_matches_the_reference() {
    if let Some(dir) = stories_dir() {
        check_block_influence(&dir, "stories260K.json");
    }
}

#[test]
fn smollm2_block_influence_matches_the_reference() {
    if let Some(dir) = smollm2_dir() {
        check_block_influence(&dir, "smollm2-135m.json");
    }
}

/// Where a golden run's layer inputs are kept: each must give the same result.
#[derive(Clone, Copy, Debug)]
enum Kept {
    /// In memory, by the block-influence pass.
    Memory,
    /// In files, by the block-influence pass (as the CLI does on the CPU); every file is gone
    /// at the end, the unchosen layers' once the layers are chosen.
    Disk,
    /// In memory, by a pass of their own once the layers are chosen (the memory holds the
    /// chosen layers' inputs, not every layer's).
    ChosenOnly,
    /// Recomputed layer by layer.
    Recomputed,
}

/// Runs GRASP through the pipeline as the golden run did, with the layer inputs kept as `kept`
/// says, and compares layers, ranks, kept indices and dL/dS.
fn check_grasp_run(dir: &Path, run_name: &str, windows_from: &str, kept: Kept) {
    let (Some(run), Some(base)) = (golden(run_name), golden(windows_from)) else {
        return;
    };
    let mut model = load(dir, DType::F32).model;
    let scratch = TempDir::new(&format!("inputs-{run_name}"));
    let calib = golden_calibration(&base);
    let n_prune = run["args"]["num_prune_layers"].as_u64().unwrap() as usize;
    let metric = if run_name.contains("gradient") {
        Metric::Gradient
    } else {
        Metric::Taylor
    };
    let rule = match run_name.split_once("-thr") {
        Some((_, t)) => RankRule::Threshold(t.trim_end_matches(".json").parse().unwrap()),
        None => RankRule::Ratio(
            run_name
                .rsplit_once("-r")
                .unwrap()
                .1
                .trim_end_matches(".json")
                .parse()
                .unwrap(),
        ),
    };
    let layer_bytes = calib.total_tokens * model.config.hidden_size * DType::F32.size_in_bytes();
    let (memory_budget, disk_dir) = match kept {
        Kept::Memory => (usize::MAX, None),
        Kept::Disk => (0, Some(scratch.path().to_path_buf())),
        Kept::ChosenOnly => (n_prune * layer_bytes, None),
        Kept::Recomputed => (0, None),
    };
    let mut plan = default_plan(Method::Grasp, rule, dir);
    plan.layers = LayerChoice::Lowest(n_prune);
    plan.options.metric = metric;
    plan.input_cache = InputCache {
        memory_budget,
        disk_dir,
    };
    let mut seen = Vec::new();
    let result = compress(&mut model, &calib, &plan, |_, chosen| {
        seen = chosen.to_vec()
    })
    .unwrap();
    assert_eq!(
        result.chosen_layers,
        usizes(&run["chosen_layers"]),
        "chosen layers"
    );
    assert_eq!(seen, result.chosen_layers);
    let want_placement = match kept {
        Kept::Memory | Kept::ChosenOnly => Placement::Memory,
        Kept::Disk => Placement::Disk,
        Kept::Recomputed => Placement::Recomputed,
    };
    assert_eq!(result.layer_inputs, want_placement);
    assert_eq!(
        scratch.entries(),
        Vec::<String>::new(),
        "layer-input files left"
    );

    let mut worst_grad = 0f64;
    let mut boundary_swaps = 0;
    for m in &result.modules {
        let want = &run["modules"][&m.name];
        assert!(!want.is_null(), "{} is not in the golden run", m.name);
        let grad_err = rel_err(&m.grad, &f64s(&want["grad"]));
        eprintln!("{}: k {}, dL/dS relative error {grad_err:.2e}", m.name, m.k);
        assert_eq!(m.k, want["k"].as_u64().unwrap() as usize, "{}: k", m.name);
        let s_err = rel_err(&m.singular_values, &f64s(&want["S"]));
        assert!(
            s_err < 1e-4,
            "{}: singular values differ by {s_err:.2e}",
            m.name
        );
        assert!(
            grad_err < 1e-3,
            "{}: dL/dS differs by {grad_err:.2e} relative",
            m.name
        );
        worst_grad = worst_grad.max(grad_err);
        let want_kept = usizes(&want["kept_indices"]);
        if m.kept_indices != want_kept {
            let gap = want["boundary_rel_gap"].as_f64().unwrap();
            let differ = m
                .kept_indices
                .iter()
                .filter(|i| !want_kept.contains(i))
                .count();
            assert!(
                gap < 1e-3 && differ <= 1,
                "{}: kept indices differ ({differ}) with boundary gap {gap:.2e}",
                m.name
            );
            boundary_swaps += 1;
        }
    }
    assert_eq!(
        result.modules.len(),
        run["modules"].as_object().unwrap().len()
    );
    for (block, want) in result.blocks.iter().zip(run["blocks"].as_array().unwrap()) {
        let want_loss = want["calib_loss_mean"].as_f64().unwrap();
        let got = block.calib_loss_mean.unwrap();
        assert!(
            (got - want_loss).abs() < 1e-3 * want_loss,
            "layer {} {}: calibration loss {got} vs {want_loss}",
            block.layer,
            block.block
        );
    }
    eprintln!("{run_name}: {} modules, worst dL/dS relative error {worst_grad:.2e}, boundary swaps {boundary_swaps}", result.modules.len());
}

#[test]
fn stories260k_grasp_taylor_ratio_matches_the_reference() {
    if let Some(dir) = stories_dir() {
        check_grasp_run(
            &dir,
            "stories260K-grasp-taylor-n2-r0.5.json",
            "stories260K.json",
            Kept::Memory,
        );
    }
}

#[test]
fn stories260k_grasp_gradient_ratio_matches_the_reference() {
    if let Some(dir) = stories_dir() {
        check_grasp_run(
            &dir,
            "stories260K-grasp-gradient-n2-r0.5.json",
            "stories260K.json",
            Kept::Recomputed,
        );
    }
}

#[test]
fn stories260k_grasp_taylor_threshold_matches_the_reference() {
    if let Some(dir) = stories_dir() {
        check_grasp_run(
            &dir,
            "stories260K-grasp-taylor-n2-thr0.8.json",
            "stories260K.json",
            Kept::Disk,
        );
    }
}

#[test]
fn smollm2_grasp_taylor_ratio_matches_the_reference() {
    if let Some(dir) = smollm2_dir() {
        check_grasp_run(
            &dir,
            "smollm2-135m-grasp-taylor-n4-r0.5.json",
            "smollm2-135m.json",
            Kept::ChosenOnly,
        );
    }
}

/// `method` over all seven projections with `rule`.
fn all_targets(method: Method, rule: RankRule) -> CompressOptions {
    let targets = |block| {
        Projection::ALL
            .into_iter()
            .filter(|p| p.block() == block)
            .collect()
    };
    CompressOptions {
        method,
        metric: Metric::Taylor,
        rule,
        mlp_targets: targets(Block::Mlp),
        attn_targets: targets(Block::Attention),
        svd_dtype: SvdDtype::F64,
        guard_windows: 0,
    }
}

/// A compression of the model in `dir` as the CLI plans one with its default flags, but for
/// the method and the rank rule, with every layer input in memory.
fn default_plan(method: Method, rule: RankRule, dir: &Path) -> CompressPlan {
    CompressPlan {
        layers: LayerChoice::Lowest(1),
        angular: false,
        options: all_targets(method, rule),
        batch_size: 1,
        label_shift: 1,
        input_cache: InputCache {
            memory_budget: usize::MAX,
            disk_dir: None,
        },
        output: OutputForm::Factorized,
        output_dtype: DType::F32,
        args: serde_json::Value::Null,
        model_path: dir.to_path_buf(),
        device: "cpu".into(),
    }
}

/// Mean over the batches of each batch's mean next-token loss, by full forward passes.
fn mean_loss(model: &grasp::model::Llama, batches: &Batches) -> f64 {
    let sum: f64 = batches
        .ids
        .iter()
        .map(|ids| {
            model
                .next_token_loss(ids)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        })
        .sum();
    sum / batches.ids.len() as f64
}

/// The hybrid guard removes a layer exactly where removal gives the lower calibration loss,
/// reports the losses of the two models it compared, and otherwise leaves GRASP's result.
#[test]
fn hybrid_guard_removes_a_harmful_layer_and_keeps_a_useful_one() {
    let (Some(dir), Some(golden)) = (stories_dir(), golden("stories260K.json")) else {
        return;
    };
    let mut dense = load(&dir, DType::F32).model;
    // Layer 3's MLP output blown up 30×: a layer that does more harm than its absence, below
    // one that GRASP compresses well.
    let Linear::Dense { weight, .. } = &mut dense.layers[3].mlp.down_proj else {
        panic!("the checkpoint's down_proj is not dense");
    };
    *weight = (&*weight * 30.0).unwrap();
    let calib = golden_calibration(&golden);
    let batches = Batches::new(&calib, 2, &Device::Cpu).unwrap();

    let mut hybrid = dense.clone();
    let opts = all_targets(Method::Hybrid, RankRule::Ratio(0.5));
    let recompute = || Collected::Owned(LayerInputs::default());
    let c = compress_layers(&mut hybrid, &[3, 4], &batches, &opts, recompute()).unwrap();
    let decisions: Vec<(usize, bool)> = c.guard.iter().map(|d| (d.layer, d.removed)).collect();
    assert_eq!(decisions, [(4, false), (3, true)]);
    assert_eq!(hybrid.num_layers(), 4);
    assert_eq!(hybrid.config.num_hidden_layers, 4);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-5 * b;

    // Layer 4 first: its losses are those of plain GRASP on it, and of deleting it.
    let mut grasp_4 = dense.clone();
    let g = compress_layers(
        &mut grasp_4,
        &[4],
        &batches,
        &all_targets(Method::Grasp, RankRule::Ratio(0.5)),
        recompute(),
    )
    .unwrap();
    assert!(g.guard.is_empty());
    assert_eq!(grasp_4.num_layers(), 5);
    let mut without_4 = dense.clone();
    without_4.remove_layers(&[4]);
    let (d4, d3) = (&c.guard[0], &c.guard[1]);
    assert!(
        close(d4.compressed_loss, mean_loss(&grasp_4, &batches)),
        "{d4:?}"
    );
    assert!(
        close(d4.removed_loss, mean_loss(&without_4, &batches)),
        "{d4:?}"
    );
    assert!(d4.compressed_loss < d4.removed_loss);
    // Then layer 3, with layer 4 compressed: removing it gives the final model.
    assert!(
        close(d3.removed_loss, mean_loss(&hybrid, &batches)),
        "{d3:?}"
    );
    assert!(d3.removed_loss < d3.compressed_loss);
    assert_eq!(
        (d4.windows, d3.windows),
        (batches.windows(), batches.windows())
    );

    // `--guard-windows 1` compares the two models on the first batch (2 windows) alone.
    let subset = batches.first_windows(1);
    assert!(batches.ids.len() > 1);
    assert_eq!((subset.ids.len(), subset.windows()), (1, 2));
    assert_eq!(batches.first_windows(0).windows(), batches.windows());
    assert_eq!(batches.first_windows(1000).windows(), batches.windows());
    let mut on_subset = dense.clone();
    let opts = CompressOptions {
        guard_windows: 1,
        ..opts
    };
    let s = compress_layers(&mut on_subset, &[4], &batches, &opts, recompute()).unwrap();
    let d = &s.guard[0];
    assert_eq!(d.windows, 2);
    assert!(
        close(d.compressed_loss, mean_loss(&grasp_4, &subset)),
        "{d:?}"
    );
    assert!(
        close(d.removed_loss, mean_loss(&without_4, &subset)),
        "{d:?}"
    );
    assert!((d.compressed_loss - d4.compressed_loss).abs() > 1e-6);
}

/// With a shift of N, the calibration loss scores position t against token t + N: checked
/// against the log-probabilities of a full forward pass.
#[test]
fn label_shift_scores_the_token_that_many_positions_ahead() {
    let Some(dir) = stories_dir() else {
        return;
    };
    let model = load(&dir, DType::F32).model;
    let ids =
        candle_core::Tensor::new(&[[1u32, 50, 60, 70, 80, 90, 100, 110]], &Device::Cpu).unwrap();
    let logits = model.forward(&ids).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, 2).unwrap();
    let lp: Vec<Vec<f32>> = log_probs.squeeze(0).unwrap().to_vec2().unwrap();
    let row: Vec<u32> = ids.squeeze(0).unwrap().to_vec1().unwrap();
    for shift in [1usize, 2, 3] {
        let want = -(0..row.len() - shift)
            .map(|t| lp[t][row[t + shift] as usize] as f64)
            .sum::<f64>()
            / (row.len() - shift) as f64;
        let got = model
            .next_token_loss_from(0, &model.embed(&ids).unwrap(), &ids, shift)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-5 * want,
            "shift {shift}: {got} vs {want}"
        );
    }
    assert!(model
        .next_token_loss_from(0, &model.embed(&ids).unwrap(), &ids, 8)
        .is_err());
}

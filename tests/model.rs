//! The Llama forward against the PyTorch reference, and dL/dS against finite differences.

use crate::common::*;
use candle_core::{DType, Device, Tensor, Var};
use grasp::eval::{CausalLm, PackedRow};
use grasp::grasp::attribution::{singular_value_gradients, Batches, LayerInputs};
use grasp::grasp::svd::{thin_svd, SvdDtype};
use grasp::model::linear::Linear;
use grasp::model::llama::Projection;
use grasp::model::Llama;
use grasp::runtime::passes_that_fit;
use indicatif::ProgressBar;

/// Logits of every golden text: last-position logits, per-position sums and argmaxes, loss.
fn check_golden_logits(dir: &std::path::Path, golden_name: &str) {
    let Some(golden) = golden(golden_name) else {
        return;
    };
    let model = load(dir, DType::F32).model;
    let mut worst_rel = 0f64;
    for text in golden["texts"].as_array().unwrap() {
        let ids = u32s(&text["ids"]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input).unwrap().squeeze(0).unwrap();
        let t = ids.len();
        let last: Vec<f64> = logits
            .get(t - 1)
            .unwrap()
            .narrow(0, 0, 16)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let sums: Vec<f64> = logits
            .sum(1)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        let loss = model
            .next_token_loss(&input)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let e_last = rel_err(&last, &f64s(&text["last_logits_first16"]));
        let e_sum = rel_err(&sums, &f64s(&text["logits_sum_per_pos"]));
        let want_loss = text["loss"].as_f64().unwrap();
        let e_loss = (loss - want_loss).abs() / want_loss;
        eprintln!("{golden_name}: {:?}: rel err last logits {e_last:.2e}, logit sums {e_sum:.2e}, loss {e_loss:.2e}", text["text"].as_str().unwrap().chars().take(30).collect::<String>());
        assert!(e_last < 1e-3 && e_sum < 1e-3 && e_loss < 1e-3);
        let want_argmax = u32s(&text["argmax_per_pos"]);
        let agree = argmax
            .iter()
            .zip(&want_argmax)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            agree + 1 >= t,
            "argmax differs at {} of {t} positions",
            t - agree
        );
        worst_rel = worst_rel.max(e_last).max(e_sum);
    }
    eprintln!("{golden_name}: worst relative logit error {worst_rel:.2e}");
}

#[test]
fn stories260k_logits_match_the_reference() {
    if let Some(dir) = stories_dir() {
        check_golden_logits(&dir, "stories260K.json");
    }
}

#[test]
fn smollm2_logits_match_the_reference() {
    if let Some(dir) = smollm2_dir() {
        check_golden_logits(&dir, "smollm2-135m.json");
    }
}

/// Puts the given projections of `layer` in SVD form and returns their S variables.
fn to_svd(model: &mut Llama, layer: usize, targets: &[Projection]) -> Vec<Var> {
    targets
        .iter()
        .map(|&p| {
            let proj = model.layers[layer].projection_mut(p);
            let d = thin_svd(&proj.dense_weight().unwrap(), SvdDtype::F64).unwrap();
            let s = Var::from_tensor(&d.s).unwrap();
            *proj = Linear::Svd {
                u: d.u,
                s: s.clone(),
                vh: d.vh,
                bias: None,
            };
            s
        })
        .collect()
}

fn calibration_ids(n: usize) -> Option<Tensor> {
    let golden = golden("stories260K.json")?;
    let ids = u32s(&golden["bi_windows"][0]);
    Some(
        Tensor::new(&ids[..n], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
    )
}

/// dL/dS from autograd equals central finite differences of the loss, in f64 (so the
/// difference quotient with h = 1e-6 is accurate to ~1e-9 and 1e-6 relative is a real bound).
#[test]
fn singular_value_gradients_match_finite_differences() {
    let (Some(dir), Some(ids)) = (stories_dir(), calibration_ids(48)) else {
        return;
    };
    let mut model = load(&dir, DType::F64).model;
    let targets = [
        Projection::Q,
        Projection::V,
        Projection::Gate,
        Projection::Down,
    ];
    let vars = to_svd(&mut model, 0, &targets);
    let loss_of = |m: &Llama| m.next_token_loss(&ids).unwrap();
    let grads = loss_of(&model).backward().unwrap();
    let h = 1e-6;
    let mut worst = 0f64;
    for (var, p) in vars.iter().zip(targets) {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {p:?}"))
            .to_vec1()
            .unwrap();
        let s0: Vec<f64> = var.as_tensor().to_vec1().unwrap();
        for i in [0, s0.len() / 2, s0.len() - 1] {
            let eval = |delta: f64| {
                let mut s = s0.clone();
                s[i] += delta;
                var.set(&Tensor::new(s.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&model).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            eval(0.0);
            let err = (fd - g[i]).abs() / (fd.abs().max(1e-3));
            eprintln!(
                "{p:?} S[{i}]: autograd {:.9e}, finite difference {fd:.9e}, rel err {err:.1e}",
                g[i]
            );
            worst = worst.max(err);
        }
    }
    eprintln!("worst relative gradient error {worst:.2e}");
    assert!(worst < 1e-6, "worst relative gradient error {worst:.2e}");
}

/// dL/dS summed over batches is the same, bit for bit, on a pool of one thread (one pass at a
/// time) as on a pool of two (two single-threaded passes side by side where memory allows).
#[test]
fn singular_value_gradients_do_not_depend_on_concurrent_passes() {
    let Some(dir) = stories_dir() else {
        return;
    };
    let Some(golden) = golden("stories260K.json") else {
        return;
    };
    let mut model = load(&dir, DType::F32).model;
    let targets = [Projection::Gate, Projection::Up, Projection::Down];
    to_svd(&mut model, 1, &targets);
    let ids: Vec<Tensor> = golden["bi_windows"]
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|w| {
            Tensor::new(u32s(w).as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
        })
        .collect();
    let batches = Batches {
        ids,
        label_shift: 1,
    };
    let inputs = LayerInputs::collect(&model, &batches, &[1], None)
        .unwrap()
        .take(1)
        .unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let g = singular_value_gradients(
                &model,
                1,
                &targets,
                &batches,
                &inputs,
                &ProgressBar::hidden(),
            )
            .unwrap();
            (g.grads, g.loss_mean)
        })
    };
    let (serial, serial_loss) = run(1);
    let (parallel, parallel_loss) = run(2);
    assert_eq!(serial, parallel);
    assert_eq!(serial_loss, parallel_loss);
}

/// Passes at once: one per thread, no more than there are batches, as many as fit in half the
/// available memory, and one when the memory is unknown or too small for even one.
#[test]
fn concurrent_passes_follow_threads_batches_and_memory() {
    const GIB: u64 = 1 << 30;
    let pass = GIB as usize;
    assert_eq!(passes_that_fit(2, 4, pass, Some(64 * GIB)), 2);
    assert_eq!(passes_that_fit(8, 3, pass, Some(64 * GIB)), 3);
    assert_eq!(passes_that_fit(8, 16, pass, Some(10 * GIB)), 5);
    assert_eq!(passes_that_fit(8, 16, pass, Some(GIB)), 1);
    assert_eq!(passes_that_fit(8, 16, pass, None), 1);
    assert_eq!(passes_that_fit(1, 16, pass, Some(64 * GIB)), 1);
    assert_eq!(passes_that_fit(4, 0, pass, Some(64 * GIB)), 1);
}

/// Every S in the first and last layer gets a gradient (the fused kernels would give None).
#[test]
fn every_singular_value_gets_a_gradient() {
    let (Some(dir), Some(ids)) = (stories_dir(), calibration_ids(32)) else {
        return;
    };
    let mut model = load(&dir, DType::F32).model;
    let last = model.num_layers() - 1;
    let mut vars = to_svd(&mut model, 0, &Projection::ALL);
    vars.extend(to_svd(&mut model, last, &Projection::ALL));
    let grads = model.next_token_loss(&ids).unwrap().backward().unwrap();
    for v in &vars {
        let g = grads.get(v.as_tensor()).expect("gradient is None");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite());
    }
}

/// Starting from a cached layer input gives the same logits as the full forward.
#[test]
fn forward_from_a_cached_layer_input_equals_the_full_forward() {
    let (Some(dir), Some(ids)) = (stories_dir(), calibration_ids(64)) else {
        return;
    };
    let model = load(&dir, DType::F32).model;
    let (logits, hidden) = model.forward_with_hidden(&ids).unwrap();
    assert_eq!(hidden.len(), model.num_layers() + 1);
    let from3 = model.forward_from(3, &hidden[3]).unwrap();
    let diff = (logits - from3)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// log softmax(logits)[target] of each (position, target), from (seq, vocab) logits.
fn log_probs_at(logits: &Tensor, at: &[(usize, u32)]) -> Vec<f32> {
    let log_p = candle_nn::ops::log_softmax(logits, 1).unwrap();
    at.iter()
        .map(|&(t, target)| {
            log_p
                .get(t)
                .unwrap()
                .get(target as usize)
                .unwrap()
                .to_scalar()
                .unwrap()
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{what}: log-probabilities differ by {diff}");
}

/// A packed row (one context, three continuations of different lengths, then padding) gives
/// every token the log-probabilities of its own sequence run alone through the causal path;
/// a row without branches gives the same in a batch on the masked path as alone on the causal.
#[test]
fn packed_rows_give_each_sequence_its_own_log_probs() {
    let Some(dir) = stories_dir() else {
        return;
    };
    let model = load(&dir, DType::F32).model;
    let alone = |seq: &[u32]| -> Tensor {
        let ids = Tensor::new(seq, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model.forward(&ids).unwrap().squeeze(0).unwrap()
    };
    let trunk: Vec<u32> = vec![1, 403, 79, 261, 30, 287, 11];
    let branches: [&[u32]; 3] = [&[266, 42, 399, 7], &[71], &[302, 5]];
    let mut row = PackedRow::new(&trunk, &branches);
    let plain: Vec<u32> = vec![1, 55, 91, 200, 13];
    let mut causal = PackedRow::new(&plain, &[]);
    let width = row.len() + 2;
    row.pad_to(width);
    causal.pad_to(width);

    let target = |i: usize| (i as u32 * 37 + 11) % 512;
    let (mut reads, mut targets, mut want) = (Vec::new(), Vec::new(), Vec::new());
    let trunk_at: Vec<(usize, u32)> = (0..trunk.len()).map(|t| (t, target(t))).collect();
    reads.extend(0..trunk.len() as u32);
    want.extend(log_probs_at(&alone(&trunk), &trunk_at));
    let mut col = trunk.len();
    for branch in branches {
        let at: Vec<(usize, u32)> = (0..branch.len())
            .map(|t| (trunk.len() + t, target(col + t)))
            .collect();
        reads.extend((col..col + branch.len()).map(|c| c as u32));
        want.extend(log_probs_at(&alone(&[&trunk[..], branch].concat()), &at));
        col += branch.len();
    }
    targets.extend(reads.iter().map(|&r| target(r as usize)));
    let plain_at: Vec<(usize, u32)> = (0..plain.len()).map(|t| (t, target(t))).collect();
    let plain_want = log_probs_at(&alone(&plain), &plain_at);
    let plain_reads: Vec<u32> = (0..plain.len() as u32).collect();
    let plain_targets: Vec<u32> = (0..plain.len()).map(target).collect();
    reads.extend(plain_reads.iter().map(|&r| r + width as u32));
    targets.extend(&plain_targets);
    want.extend(&plain_want);

    let masked = model
        .log_probs(&[row, causal.clone()], &reads, &targets)
        .unwrap();
    assert_close(&masked, &want, "packed rows");
    let causal_alone = model
        .log_probs(&[causal], &plain_reads, &plain_targets)
        .unwrap();
    assert_close(&causal_alone, &plain_want, "a row without branches");
}

/// Two shards, one bf16 and one f32, read into f32 on the CPU: every tensor with its name,
/// shape and values (bf16 values are exact in f32); a truncated file is an error that names it.
#[test]
fn weights_are_read_from_every_shard_in_the_asked_dtype() {
    use std::collections::HashMap;
    let dir = TempDir::new("weights-reader");
    let a = Tensor::new(&[[1.5f32, -2.0, 0.25], [3.0, 4.0, -0.5]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[7.0f32, 8.0], &Device::Cpu).unwrap();
    let shard1 = dir.join("model-00001-of-00002.safetensors");
    let shard2 = dir.join("model-00002-of-00002.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("a".to_string(), a.to_dtype(DType::BF16).unwrap())]),
        &shard1,
    )
    .unwrap();
    candle_core::safetensors::save(&HashMap::from([("b".to_string(), b.clone())]), &shard2)
        .unwrap();
    let read =
        grasp::io::weights::read_weights(&[shard1.clone(), shard2], DType::F32, &Device::Cpu)
            .unwrap();
    assert_eq!(read.len(), 2);
    for (name, want) in [("a", &a), ("b", &b)] {
        let got = &read[name];
        assert_eq!((got.dtype(), got.dims()), (DType::F32, want.dims()));
        assert_eq!(max_abs_diff(got, want), 0.0, "{name}");
    }
    assert_eq!(
        grasp::io::weights::checkpoint_dtype(&shard1).unwrap(),
        DType::BF16
    );

    let bytes = std::fs::read(&shard1).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 2]).unwrap();
    let err = grasp::io::weights::read_weights(&[cut], DType::F32, &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("cut.safetensors"), "{err:#}");
}

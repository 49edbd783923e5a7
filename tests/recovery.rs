//! Recovery training (`grasp finetune`): gradients of the trainable tensors against finite
//! differences, no gradient for a frozen weight, frozen tensors written back unchanged, the
//! loss falling on a short run, and one-line refusals of bad data.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::cli::{
    assert_success, compress_ok, grasp, read_json, refusal_problem, stories, Stories,
};
use crate::common::{load, smollm2_dir, stories_dir, TempDir};
use candle_core::{DType, Device, Tensor};
use grasp::data::alpaca::{tokenize_examples, Example, ExampleSpec, PromptTemplate, Record};
use grasp::model::linear::Linear;
use grasp::model::llama::Projection;
use grasp::recovery::train::weighted_loss;
use grasp::recovery::trainable::{Target, Trainable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn records() -> Vec<Record> {
    vec![
        Record {
            instruction: "Tell a story about a cat.".into(),
            input: String::new(),
            output: "Once upon a time there was a cat who liked the sun.".into(),
        },
        Record {
            instruction: "Say what the dog did.".into(),
            input: "The dog ran to the park.".into(),
            output: "The dog ran.".into(),
        },
    ]
}

/// `--add-eos-token` ends each example with the EOS token the checkpoint's
/// tokenizer_config.json names, as transformers' `tokenizer.eos_token` does: SmolLM2's
/// `<|im_end|>`, not `<|endoftext|>`, the first well-known name its vocabulary has, which is
/// the fallback when no token is configured.
#[test]
fn examples_end_with_the_configured_eos_token() {
    let Some(dir) = smollm2_dir() else {
        return;
    };
    let loaded = load(&dir, DType::F32);
    let id = |name: &str| loaded.tokenizer.token_to_id(name).unwrap();
    let (im_end, endoftext) = (id("<|im_end|>"), id("<|endoftext|>"));
    assert_ne!(im_end, endoftext);
    assert_eq!(loaded.eos_token, Some(im_end));
    let spec = ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 256,
        train_on_inputs: false,
        add_eos: true,
    };
    for (declared, expected) in [(loaded.eos_token, im_end), (None, endoftext)] {
        let examples = tokenize_examples(&records(), &loaded.tokenizer, declared, &spec).unwrap();
        assert_eq!(examples.len(), records().len());
        for e in &examples {
            assert_eq!(e.ids.last(), Some(&expected));
            assert_eq!(e.scored.last(), Some(&true), "the EOS target is scored");
        }
    }
}

fn seeded(rng: &mut StdRng, shape: (usize, usize)) -> Tensor {
    let values: Vec<f64> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-0.3..0.3))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn trainable_gradients_match_finite_differences() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let mut rng = StdRng::seed_from_u64(11);
    for p in [Projection::Q, Projection::Down] {
        let lin = model.layers[1].projection_mut(p);
        let (i, o) = (lin.in_features(), lin.out_features());
        *lin = Linear::Factorized {
            svd_in: seeded(&mut rng, (3, i)),
            svd_out: seeded(&mut rng, (o, 3)),
            bias: None,
        };
    }
    let spec = ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 160,
        train_on_inputs: false,
        add_eos: false,
    };
    let examples =
        tokenize_examples(&records(), &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let weight = 1.0 / examples.iter().map(Example::scored_targets).sum::<usize>() as f64;
    let frozen_weight = model.layers[2].mlp.down_proj.clone();

    let trainable = Trainable::new(&mut model, &Target::Layers(vec![1, 3]), 0).unwrap();
    trainable.apply(&mut model, true).unwrap();
    let grads = weighted_loss(&model, &refs, weight)
        .unwrap()
        .backward()
        .unwrap();
    if let Linear::Dense { weight, .. } = &frozen_weight {
        assert!(
            grads.get(weight).is_none(),
            "a frozen weight got a gradient"
        );
    }
    let checked =
        check_against_finite_differences(&mut model, &trainable, &grads, &refs, weight, 3);
    // Layer 1: two norms, five dense weights, two factorized projections of two factors each;
    // layer 3: two norms and seven dense weights.
    assert_eq!(checked, 3 * (11 + 9), "every tensor of both layers");
}

/// A micro-batch runs packed in one row: its loss and the gradient of every trainable tensor
/// are the sums of those of each example run alone (f64), frozen layers (the one-node blocks)
/// and trainable ones alike.
#[test]
fn packed_examples_train_as_if_each_ran_alone() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let spec = ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 160,
        train_on_inputs: false,
        add_eos: false,
    };
    let mut records = records();
    records.push(Record {
        instruction: "Name a colour.".into(),
        input: String::new(),
        output: "Red.".into(),
    });
    let examples = tokenize_examples(&records, &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    assert!(lens.windows(2).any(|w| w[0] != w[1]), "lengths {lens:?}");
    let trainable = Trainable::new(&mut model, &Target::Layers(vec![1, 3]), 0).unwrap();
    trainable.apply(&mut model, true).unwrap();
    let run = |examples: &[&Example]| {
        let loss = weighted_loss(&model, examples, 0.37).unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<Tensor> = trainable
            .vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (loss.to_scalar::<f64>().unwrap(), grads)
    };
    let (packed, packed_grads) = run(&examples.iter().collect::<Vec<_>>());
    let alone: Vec<(f64, Vec<Tensor>)> = examples.iter().map(|e| run(&[e])).collect();
    let loss: f64 = alone.iter().map(|(l, _)| l).sum();
    assert!(
        (packed - loss).abs() < 1e-10 * loss.abs(),
        "{packed} against {loss}"
    );
    for (i, g) in packed_grads.iter().enumerate() {
        let sum = alone
            .iter()
            .map(|(_, grads)| grads[i].clone())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let diff = (g - &sum).unwrap().abs().unwrap().max_all().unwrap();
        let scale = sum
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let diff = diff.to_scalar::<f64>().unwrap();
        assert!(
            diff <= 1e-10 * (1.0 + scale),
            "{}: {diff}",
            trainable.names()[i]
        );
    }
}

#[test]
fn lora_gradients_match_finite_differences_and_merge_exactly() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let spec = ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 160,
        train_on_inputs: true,
        add_eos: false,
    };
    let examples =
        tokenize_examples(&records(), &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let weight = 1.0 / examples.iter().map(Example::scored_targets).sum::<usize>() as f64;
    let target = Target::Lora {
        rank: 2,
        alpha: 4.0,
    };
    let trainable = Trainable::new(&mut model, &target, 3).unwrap();
    // B starts at zero, which would leave A without a gradient: give it seeded values.
    let mut rng = StdRng::seed_from_u64(9);
    for (name, var) in trainable.names().iter().zip(trainable.vars()) {
        if name.ends_with("lora_B.weight") {
            let (o, r) = var.as_tensor().dims2().unwrap();
            var.set(&seeded(&mut rng, (o, r))).unwrap();
        }
    }
    trainable.apply(&mut model, true).unwrap();
    let grads = weighted_loss(&model, &refs, weight)
        .unwrap()
        .backward()
        .unwrap();
    let layers = model.num_layers();
    let checked =
        check_against_finite_differences(&mut model, &trainable, &grads, &refs, weight, 1);
    assert_eq!(checked, 2 * 7 * layers, "both factors of every projection");

    let adapted = weighted_loss(&model, &refs, weight)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    trainable.finish(&mut model).unwrap();
    let merged = weighted_loss(&model, &refs, weight)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(
        (adapted - merged).abs() < 1e-10,
        "{adapted} adapted, {merged} merged"
    );
    assert!(model.layers.iter().all(|l| Projection::ALL
        .iter()
        .all(|&p| matches!(l.projection(p), Linear::Dense { .. }))));
}

/// Compares `per_tensor` seeded entries of each trainable tensor's gradient with central differences
/// of the loss; returns how many were checked.
fn check_against_finite_differences(
    model: &mut grasp::model::Llama,
    trainable: &Trainable,
    grads: &candle_core::backprop::GradStore,
    refs: &[&Example],
    weight: f64,
    per_tensor: usize,
) -> usize {
    let mut rng = StdRng::seed_from_u64(5);
    trainable.apply(model, false).unwrap();
    let loss_at = |model: &grasp::model::Llama| -> f64 {
        weighted_loss(model, refs, weight)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-5;
    let mut checked = 0;
    for (name, var) in trainable.names().iter().zip(trainable.vars()) {
        let grad: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..per_tensor {
            let i = rng.random_range(0..base.len());
            let mut at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                trainable.apply(model, false).unwrap();
                loss_at(model)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (fd - grad[i]).abs();
            assert!(
                err <= 1e-7 + 1e-5 * grad[i].abs(),
                "{name}[{i}]: backward {} against finite differences {fd}",
                grad[i]
            );
            checked += 1;
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    checked
}

/// Micro-batches side by side (two threads: two single-threaded passes at once) train exactly
/// what one pass at a time does: the same losses, gradient norms and written bytes.
#[test]
fn micro_batches_side_by_side_train_bit_for_bit_the_same() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("side-by-side");
    let compressed = tmp.join("compressed");
    compress_ok(
        &stories,
        &compressed,
        &["--layers", "2,3", "--ratio", "0.5"],
    );
    let run = |threads: &str| {
        let out = tmp.join(&format!("threads{threads}"));
        let env = [("RAYON_NUM_THREADS", threads)];
        let steps = ["--max-steps", "3"];
        let report = finetune_ok(
            &stories,
            &compressed,
            &out,
            &steps,
            &["--val-set-size", "8"],
            &env,
        );
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        (report["recovery"].clone(), bytes)
    };
    let ((one, one_bytes), (two, two_bytes)) = (run("1"), run("2"));
    assert_eq!(
        (
            one["passes_at_once"].as_u64(),
            two["passes_at_once"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let figures = |r: &serde_json::Value, key: &str| -> Vec<f64> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[key].as_f64().unwrap())
            .collect()
    };
    for key in ["loss", "grad_norm"] {
        assert_eq!(figures(&one, key), figures(&two, key), "{key}");
    }
    assert!(one_bytes == two_bytes, "the trained weights differ");
}

/// `grasp finetune` of `model` into `out` on stories260K's data, in steps of 8 examples
/// (micro-batches of 4, at most 128 tokens), with the schedule `steps` and then `extra`, under
/// the environment variables `env`; its report.
fn finetune_ok(
    stories: &Stories,
    model: &Path,
    out: &Path,
    steps: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let output = grasp()
        .envs(env.iter().copied())
        .arg("finetune")
        .arg("--model")
        .arg(model)
        .arg("--data-dir")
        .arg(&stories.data)
        .args(["--train-batch-size", "8", "--micro-batch-size", "4"])
        .args(["--max-length", "128"])
        .args(steps)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert_success(&output, &format!("grasp finetune {steps:?} {extra:?}"));
    read_json(&out.join("grasp_finetune.json"))
}

fn tensors(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn finetune_trains_only_the_compressed_layers_and_lowers_the_loss() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("finetune");
    let compressed = tmp.join("compressed");
    compress_ok(
        &stories,
        &compressed,
        &["--layers", "2,3", "--ratio", "0.5"],
    );
    let tuned = tmp.join("tuned");
    let steps = [
        "--max-steps",
        "6",
        "--warmup-steps",
        "1",
        "--learning-rate",
        "1e-2",
    ];
    let extra = ["--val-set-size", "32"];
    let report = finetune_ok(&stories, &compressed, &tuned, &steps, &extra, &[]);
    let r = &report["recovery"];
    assert_eq!(r["layers"], serde_json::json!([2, 3]));
    assert_eq!(r["steps"].as_array().unwrap().len(), 6);
    let (before, after) = (
        r["val_loss_before"].as_f64().unwrap(),
        r["val_loss_after"].as_f64().unwrap(),
    );
    assert!(after < before - 0.1, "validation loss {before} -> {after}");

    let (old, new) = (tensors(&compressed), tensors(&tuned));
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    let trained =
        |name: &str| name.starts_with("model.layers.2.") || name.starts_with("model.layers.3.");
    for (name, bytes) in &old {
        if trained(name) {
            assert_ne!(bytes, &new[name], "{name} did not train");
        } else {
            assert_eq!(bytes, &new[name], "{name} is frozen but changed");
        }
    }
    let config = read_json(&tuned.join("config.json"));
    assert_eq!(
        config["grasp"],
        read_json(&compressed.join("config.json"))["grasp"],
        "the factorized ranks are kept"
    );
    crate::common::cli::perplexity(&stories, &tuned, &tmp.join("eval.json"));
}

#[test]
fn bad_data_and_settings_are_refused_in_one_line() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("finetune-bad");
    let compressed = tmp.join("compressed");
    compress_ok(&stories, &compressed, &["--layers", "2", "--ratio", "0.5"]);
    let write = |name: &str, text: &str| {
        let path = tmp.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let good = "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi.\"}\n".repeat(4);
    let missing = write("missing.jsonl", "{\"instruction\": \"Say hi.\"}\n");
    let empty = write("empty.json", "[]");
    let good = write("good.jsonl", &good);
    let model = compressed.to_str().unwrap().to_string();
    let dense = stories.model.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data-path", &missing], "missing field `output`"),
        (vec!["--data-path", &empty], "no records"),
        (
            vec![
                "--data-path",
                &good,
                "--val-set-size",
                "1",
                "--max-length",
                "8",
            ],
            "fills --max-length 8",
        ),
        (
            vec!["--data-path", &good, "--val-set-size", "4"],
            "leaves no training example",
        ),
        (
            vec![
                "--data-path",
                &good,
                "--val-set-size",
                "1",
                "--train-batch-size",
                "6",
            ],
            "not a multiple",
        ),
        (
            vec![
                "--data-path",
                &good,
                "--val-set-size",
                "1",
                "--prompt-template-name",
                "vicuna",
            ],
            "unknown prompt template",
        ),
        (vec!["--data-path", "nowhere.jsonl"], "no such file"),
        (
            vec![
                "--data-path",
                &good,
                "--val-set-size",
                "1",
                "--max-grad-norm",
                "-1",
            ],
            "--max-grad-norm",
        ),
        (
            vec![
                "--data-path",
                &good,
                "--val-set-size",
                "1",
                "--lora",
                "2",
                "--lora-alpha",
                "0",
            ],
            "--lora-alpha",
        ),
        (
            vec![
                "--model",
                &dense,
                "--data-path",
                &good,
                "--val-set-size",
                "1",
            ],
            "--train-layers",
        ),
    ];
    for (i, (extra, problem)) in cases.iter().enumerate() {
        let out = tmp.join(&format!("out{i}"));
        let output = grasp()
            .arg("finetune")
            .args(if extra.contains(&"--model") {
                vec![]
            } else {
                vec!["--model", &model]
            })
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        if let Some(why) = refusal_problem(&output, problem) {
            panic!("{extra:?}: {why}");
        }
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    let out = tmp.join("compress-out");
    let output = crate::common::cli::compress(
        &stories,
        &out,
        &["--layers", "2", "--recovery", "--data-path", &missing],
    );
    if let Some(why) = refusal_problem(&output, "missing field `output`") {
        panic!("compress --recovery: {why}");
    }
    assert!(
        !crate::common::cli::stderr(&output).contains("block influence"),
        "refused late"
    );
    assert!(!out.exists());
    let output =
        crate::common::cli::compress(&stories, &out, &["--layers", "2", "--max-steps", "5"]);
    if let Some(why) = refusal_problem(&output, "need --recovery") {
        panic!("compress --max-steps without --recovery: {why}");
    }
}

#[test]
fn finetune_in_bf16_trains_the_weights_it_runs_with() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("finetune-bf16");
    let compressed = tmp.join("compressed");
    compress_ok(
        &stories,
        &compressed,
        &["--layers", "2,3", "--ratio", "0.5"],
    );
    // The same run in f32 and bf16: the loss of each step is the loss of the weights after the
    // steps before it, so bf16 follows f32 only if it runs with its updated weights.
    let losses = |dtype: &str| -> Vec<f64> {
        let steps = [
            "--max-steps",
            "8",
            "--warmup-steps",
            "0",
            "--learning-rate",
            "2e-2",
        ];
        let extra = ["--val-set-size", "8", "--lora", "4", "--dtype", dtype];
        let report = finetune_ok(&stories, &compressed, &tmp.join(dtype), &steps, &extra, &[]);
        let r = &report["recovery"];
        let steps = r["steps"].as_array().unwrap();
        assert!(steps.iter().all(|s| s["grad_norm"].as_f64().unwrap() > 0.0));
        steps.iter().map(|s| s["loss"].as_f64().unwrap()).collect()
    };
    let (full, half) = (losses("f32"), losses("bf16"));
    assert!(full[7] < full[0] - 0.3, "f32 losses {full:?}");
    for (f, h) in full.iter().zip(&half) {
        assert!((f - h).abs() < 0.08 * f, "f32 {full:?}, bf16 {half:?}");
    }
}

#[test]
fn compress_with_recovery_trains_what_it_compressed() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("compress-recovery");
    let training = [
        "--recovery",
        "--max-steps",
        "2",
        "--warmup-steps",
        "0",
        "--train-batch-size",
        "4",
        "--val-set-size",
        "8",
        "--max-length",
        "160",
    ];
    for (method, trained) in [("grasp", vec![2, 3]), ("remove", vec![1])] {
        let out = tmp.join(method);
        let mut flags = vec!["--layers", "2,3", "--ratio", "0.5", "--method", method];
        flags.extend(training);
        let report = compress_ok(&stories, &out, &flags);
        let r = &report["recovery"];
        assert_eq!(r["layers"], serde_json::json!(trained), "{method}");
        assert_eq!(r["steps"].as_array().unwrap().len(), 2, "{method}");
        assert!(r["val_loss_after"].as_f64().unwrap().is_finite());
        assert!(report["timings_s"]["recovery_s"].as_f64().unwrap() > 0.0);
    }
}

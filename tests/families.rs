//! The model families grasp runs (Llama-3.1, Qwen2, Mistral), on the tiny checkpoints
//! transformers wrote in `../shared/models/families`: grasp's logits against transformers',
//! and `grasp compress` then `grasp eval` end to end on each.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::cli::*;
use crate::common::*;
use candle_core::{DType, Device, Tensor};

const FAMILIES: [&str; 3] = ["llama3-tiny", "qwen2-tiny", "mistral-tiny"];

fn family_dir(name: &str) -> Option<PathBuf> {
    Some(shared_dir()?.join("models/families").join(name))
}

/// max |grasp − transformers| / max |transformers| over the golden batch's logits.
fn golden_logits_error(dir: &Path) -> f64 {
    let golden =
        candle_core::safetensors::load(dir.join("golden_logits.safetensors"), &Device::Cpu)
            .unwrap();
    let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &golden["logits"];
    let model = load(dir, DType::F32).model;
    let got = model.forward(&ids).unwrap();
    assert_eq!(got.dims(), want.dims());
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(&got, want) / f64::from(scale)
}

#[test]
fn logits_match_transformers_for_every_family() {
    let mut failures = Vec::new();
    for name in FAMILIES {
        let Some(dir) = family_dir(name) else { return };
        let err = golden_logits_error(&dir);
        eprintln!("{name}: max relative logit error {err:.2e}");
        if err > 1e-4 {
            failures.push(format!("{name}: {err:.2e}"));
        }
    }
    assert!(failures.is_empty(), "logits differ: {failures:?}");
}

/// Dropping Qwen2's q/k/v biases must show in the logits: the parity test would catch a loader
/// that ignores them.
#[test]
fn qwen2_biases_are_loaded_and_change_the_logits() {
    let Some(dir) = family_dir("qwen2-tiny") else {
        return;
    };
    let mut model = load(&dir, DType::F32).model;
    let ids = Tensor::new(&[[3u32, 17, 42, 99, 5]], &Device::Cpu).unwrap();
    let with = model.forward(&ids).unwrap();
    for layer in &mut model.layers {
        let attn = &mut layer.self_attn;
        assert!(attn.q_proj.bias().is_some() && attn.k_proj.bias().is_some());
        assert!(attn.v_proj.bias().is_some() && attn.o_proj.bias().is_none());
        for proj in [&mut attn.q_proj, &mut attn.k_proj, &mut attn.v_proj] {
            if let grasp::model::Linear::Dense { bias, .. } = proj {
                *bias = None;
            }
        }
    }
    let without = model.forward(&ids).unwrap();
    assert!(max_abs_diff(&with, &without) > 1e-3);
}

#[test]
fn sequences_beyond_mistrals_sliding_window_are_refused() {
    let Some(dir) = family_dir("mistral-tiny") else {
        return;
    };
    let model = load(&dir, DType::F32).model;
    assert_eq!(model.config.sliding_window, Some(256));
    let ok = Tensor::zeros((1, 256), DType::U32, &Device::Cpu).unwrap();
    model.forward(&ok).unwrap();
    let long = Tensor::zeros((1, 257), DType::U32, &Device::Cpu).unwrap();
    let err = model.next_token_loss(&long).unwrap_err().to_string();
    assert!(err.contains("sliding window of 256"), "{err}");
}

fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors.names().into_iter().map(str::to_string).collect()
}

/// Wikitext-2 perplexity from `grasp eval --json`.
fn perplexity(model: &Path, data: &Path, json: &Path) -> f64 {
    let output = grasp()
        .arg("eval")
        .arg("--model")
        .arg(model)
        .args(["--ppl", "wikitext2", "--limit", "2", "--ppl-seq-len", "32"])
        .arg("--data-dir")
        .arg(data)
        .arg("--json")
        .arg(json)
        .output()
        .expect("cannot run grasp");
    assert_success(&output, &format!("grasp eval --model {}", model.display()));
    let text = fs::read_to_string(json).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    report["perplexity"][0]["perplexity"].as_f64().unwrap()
}

/// `grasp compress` of one layer, factorized and merged, then `grasp eval --ppl` of both: the
/// two forms agree, a Qwen2 output keeps its biases in both, and the factorized one carries
/// transformers' remote code for its family.
#[test]
fn every_family_compresses_and_evaluates() {
    let Some(shared) = shared_dir() else { return };
    let data = shared.join("data");
    let tmp = TempDir::new("families-compress");
    for name in FAMILIES {
        let model = shared.join("models/families").join(name);
        let mut ppl = Vec::new();
        for (form, extra) in [("factorized", None), ("merged", Some("--merge"))] {
            let out = tmp.join(&format!("{name}-{form}"));
            let output = grasp()
                .arg("compress")
                .arg("--model")
                .arg(&model)
                .args(["--layers", "1", "--num-samples", "2", "--seq-len", "32"])
                .args(["--sampling", "sequential", "--data-dir"])
                .arg(&data)
                .arg("--out")
                .arg(&out)
                .args(extra)
                .output()
                .expect("cannot run grasp");
            assert_success(&output, &format!("grasp compress {name} ({form})"));
            let names = tensor_names(&out.join("model.safetensors"));
            let factorized = names.iter().any(|n| n.ends_with("svd_in.weight"));
            assert_eq!(factorized, form == "factorized", "{name} {form}: {names:?}");
            let biases: Vec<_> = names.iter().filter(|n| n.ends_with(".bias")).collect();
            let want = if name == "qwen2-tiny" { 3 * 3 } else { 0 };
            assert_eq!(biases.len(), want, "{name} {form}: {biases:?}");
            let config: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            let auto_map = config["auto_map"]["AutoModelForCausalLM"].as_str();
            let remote_code = out.join("modeling_grasp.py").is_file();
            if factorized {
                let class = match name {
                    "qwen2-tiny" => "modeling_grasp.GraspQwen2ForCausalLM",
                    "mistral-tiny" => "modeling_grasp.GraspMistralForCausalLM",
                    _ => "modeling_grasp.GraspLlamaForCausalLM",
                };
                assert_eq!((auto_map, remote_code), (Some(class), true), "{name}");
            } else {
                assert_eq!((auto_map, remote_code), (None, false), "{name} merged");
            }
            let reloaded = load(&out, DType::F32).model;
            if name == "qwen2-tiny" {
                let q = reloaded.layers[1].self_attn.q_proj.bias().unwrap();
                let source = load(&model, DType::F32).model;
                let q_source = source.layers[1].self_attn.q_proj.bias().unwrap();
                assert_eq!(
                    max_abs_diff(q, q_source),
                    0.0,
                    "{form}: q_proj bias changed"
                );
            }
            ppl.push(perplexity(
                &out,
                &data,
                &tmp.join(&format!("{name}-{form}.json")),
            ));
        }
        eprintln!(
            "{name}: perplexity factorized {:.4}, merged {:.4}",
            ppl[0], ppl[1]
        );
        assert!(
            ppl.iter().all(|p| p.is_finite() && *p > 1.0),
            "{name}: {ppl:?}"
        );
        assert!((ppl[0] - ppl[1]).abs() / ppl[0] < 1e-3, "{name}: {ppl:?}");
    }
}

//! End-to-end runs of the `grasp` binary on stories260K: what `compress` writes in each form,
//! that the outputs load (in `grasp eval` and in candle-transformers' own Llama), and how bad
//! input is refused.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Output;

use crate::common::cli::*;
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as reference;
use grasp::io::load::{load_files, resolve};
use serde_json::Value;

/// Tensor name to shape, read with the safetensors crate (not through grasp).
fn tensor_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

fn assert_refused(output: &Output, problem: &str) {
    if let Some(why) = refusal_problem(output, problem) {
        panic!("{why}");
    }
}

fn module_k(module: &Value) -> usize {
    module["k"].as_u64().expect("module without k") as usize
}

fn kept_indices(module: &Value) -> Vec<usize> {
    usizes(&module["kept_indices"])
}

#[test]
fn factorized_output_is_complete_smaller_and_evaluates() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-factorized");
    let out = tmp.join("factorized");
    let report = compress_ok(&stories, &out, &["--num-prune-layers", "2"]);

    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "grasp_report.json",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    let chosen = usizes(&report["chosen_layers"]);
    assert_eq!(chosen.len(), 2);
    assert!(chosen.iter().all(|&l| l < 5), "chosen layers {chosen:?}");

    let modules = report["modules"]
        .as_object()
        .expect("report has no modules");
    assert_eq!(modules.len(), 2 * 7, "7 projections in each of 2 layers");
    for (name, module) in modules {
        let (k, kept) = (module_k(module), kept_indices(module));
        let full_rank = module["full_rank"].as_u64().unwrap() as usize;
        assert!(k > 0 && k < full_rank, "{name}: k {k} of {full_rank}");
        assert_eq!(kept.len(), k, "{name}: kept_indices");
        assert!(kept.iter().all(|&i| i < full_rank), "{name}: {kept:?}");
    }
    let ranks = read_json(&out.join("config.json"))["grasp"]["ranks"].clone();
    let ranks = ranks.as_object().expect("config.json has no grasp.ranks");
    assert_eq!(ranks.len(), modules.len());
    for (name, module) in modules {
        assert_eq!(
            ranks[name].as_u64(),
            Some(module_k(module) as u64),
            "{name}"
        );
    }

    let before = report["params_before"].as_u64().unwrap();
    let after = report["params_after"].as_u64().unwrap();
    assert!(before > after, "params {before} -> {after}");
    assert!(report["timings_s"]["total_s"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);

    let dense = file_len(&stories.model.join("model.safetensors"));
    let factorized = file_len(&out.join("model.safetensors"));
    assert!(
        factorized < dense,
        "factorized {factorized} bytes, dense {dense}"
    );
    perplexity(&stories, &out, &tmp.join("eval.json"));
}

#[test]
fn merged_output_has_the_input_layout_and_the_factorized_perplexity() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-merged");
    let (factorized, merged) = (tmp.join("factorized"), tmp.join("merged"));
    compress_ok(&stories, &factorized, &["--num-prune-layers", "2"]);
    let report = compress_ok(&stories, &merged, &["--num-prune-layers", "2", "--merge"]);
    assert_eq!(report["output_form"], "merged");

    let input = tensor_shapes(&stories.model.join("model.safetensors"));
    assert_eq!(tensor_shapes(&merged.join("model.safetensors")), input);
    assert!(read_json(&merged.join("config.json"))
        .get("grasp")
        .is_none());

    let (ppl_factorized, ppl_merged) = (
        perplexity(&stories, &factorized, &tmp.join("factorized.json")),
        perplexity(&stories, &merged, &tmp.join("merged.json")),
    );
    let rel = (ppl_merged - ppl_factorized).abs() / ppl_factorized;
    eprintln!("perplexity factorized {ppl_factorized:.4}, merged {ppl_merged:.4} (rel {rel:.1e})");
    assert!(rel < 1e-3);
    let ppl_input = perplexity(&stories, &stories.model, &tmp.join("input.json"));
    assert!(
        (ppl_merged - ppl_input).abs() / ppl_input > 1e-3,
        "compression changed nothing"
    );
}

/// Last-position logits of `ids` from candle-transformers' Llama: a loader that knows nothing
/// of grasp.
fn reference_last_logits(dir: &Path, ids: &[u32]) -> Vec<f64> {
    let text = fs::read_to_string(dir.join("config.json")).unwrap();
    let config: reference::LlamaConfig = serde_json::from_str(&text).unwrap();
    let config = config.into_config(false);
    let weights = [dir.join("model.safetensors")];
    // SAFETY: the file is not modified while mapped.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }.unwrap();
    let model = reference::Llama::load(vb, &config).unwrap();
    let mut cache = reference::Cache::new(false, DType::F32, &config, &Device::Cpu).unwrap();
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, 0, &mut cache).unwrap();
    logits
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Token ids of `text` and grasp's last-position logits for them.
fn grasp_last_logits(dir: &Path, text: &str) -> (Vec<u32>, Vec<f64>) {
    let files = resolve(dir.to_str().unwrap(), "main").unwrap();
    let loaded = load_files(files, &Device::Cpu, Some(DType::F32)).unwrap();
    let ids = loaded
        .tokenizer
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = loaded.model.forward(&input).unwrap().squeeze(0).unwrap();
    let last = logits
        .get(ids.len() - 1)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    (ids, last.to_vec1().unwrap())
}

#[test]
fn merged_output_loads_in_candle_transformers_llama() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-candle");
    let merged = tmp.join("merged");
    compress_ok(&stories, &merged, &["--num-prune-layers", "2", "--merge"]);

    let text = "Once upon a time, there was a little girl named Lily. She loved to play";
    let (ids, ours) = grasp_last_logits(&merged, text);
    let theirs = reference_last_logits(&merged, &ids);
    let err = rel_err(&ours, &theirs);
    eprintln!(
        "{} tokens: grasp vs candle-transformers last logits rel err {err:.2e}",
        ids.len()
    );
    assert!(err < 1e-4);
    let (_, original) = grasp_last_logits(&stories.model, text);
    assert!(
        rel_err(&ours, &original) > 1e-3,
        "the merged weights are the input's"
    );
}

#[test]
fn remove_method_deletes_the_chosen_layers() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-remove");
    let out = tmp.join("removed");
    let report = compress_ok(
        &stories,
        &out,
        &["--method", "remove", "--num-prune-layers", "2"],
    );
    assert_eq!(usizes(&report["chosen_layers"]).len(), 2);
    assert_eq!(read_json(&out.join("config.json"))["num_hidden_layers"], 3);
    let layer_tensors = tensor_shapes(&out.join("model.safetensors"));
    for late in ["model.layers.3.", "model.layers.4."] {
        assert!(
            !layer_tensors.keys().any(|n| n.starts_with(late)),
            "{late}* still written"
        );
    }
    perplexity(&stories, &out, &tmp.join("eval.json"));
}

#[test]
fn svd_method_keeps_the_largest_singular_values() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-svd");
    let report = compress_ok(
        &stories,
        &tmp.join("svd"),
        &["--method", "svd", "--num-prune-layers", "2"],
    );
    let modules = report["modules"]
        .as_object()
        .expect("report has no modules");
    assert!(!modules.is_empty());
    for (name, module) in modules {
        let k = module_k(module);
        assert!(k > 0, "{name}: k 0");
        assert_eq!(kept_indices(module), (0..k).collect::<Vec<_>>(), "{name}");
    }
}

#[test]
fn existing_output_is_refused_without_force_and_replaced_with_force() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-force");
    let out = tmp.join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("mine.txt"), "keep me").unwrap();

    assert_refused(
        &compress(&stories, &out, &["--num-prune-layers", "1"]),
        "--force",
    );
    assert_eq!(fs::read_to_string(out.join("mine.txt")).unwrap(), "keep me");
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        1,
        "the refused run wrote into the directory"
    );

    compress_ok(&stories, &out, &["--num-prune-layers", "1", "--force"]);
    assert!(
        !out.join("mine.txt").exists(),
        "the old directory was not replaced"
    );
    assert!(out.join("model.safetensors").is_file());
    let leftovers: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// A copy of stories260K whose config.json claims another architecture.
fn gpt2_model(stories: &Stories, dir: &Path) {
    fs::create_dir(dir).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        fs::copy(stories.model.join(file), dir.join(file)).unwrap();
    }
    let mut config = read_json(&stories.model.join("config.json"));
    config["model_type"] = "gpt2".into();
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn bad_input_is_refused_with_one_line_naming_the_problem() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-bad-input");
    let gpt2 = tmp.join("gpt2");
    gpt2_model(&stories, &gpt2);
    let out = tmp.join("never-written");
    let prune2 = ["--num-prune-layers", "2"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&prune2[..], &["--ratio", "1.5"]].concat(), "--ratio"),
        ([&prune2[..], &["--ratio", "0"]].concat(), "--ratio"),
        (vec!["--num-prune-layers", "5"], "--num-prune-layers"),
        (vec!["--num-prune-layers", "0"], "--num-prune-layers"),
        (
            [&prune2[..], &["--mlp-targets", "foo_proj"]].concat(),
            "foo_proj",
        ),
        (vec!["--layers", "7"], "layer 7"),
        // Later flags override the base ones: 100000 windows of 512 tokens is more than there is.
        (
            [
                &prune2[..],
                &["--seq-len", "512", "--num-samples", "100000"],
            ]
            .concat(),
            "720655 tokens",
        ),
        (
            [&prune2[..], &["--seq-len", "100000"]].concat(),
            "--seq-len 100000 exceeds the model's max_position_embeddings 512",
        ),
    ];
    let mut failures = Vec::new();
    for (extra, problem) in &cases {
        let output = compress(&stories, &out, extra);
        if let Some(why) = refusal_problem(&output, problem) {
            failures.push(format!("compress {extra:?}: {why}"));
        }
    }
    let models: [(&Path, &str); 2] = [(&gpt2, "gpt2"), (Path::new("/nonexistent"), "/nonexistent")];
    for (model, problem) in models {
        let output = compress_model(&stories, model, &out, &prune2);
        if let Some(why) = refusal_problem(&output, problem) {
            failures.push(format!("compress --model {}: {why}", model.display()));
        }
    }
    let eval = grasp()
        .arg("eval")
        .arg("--model")
        .arg(&stories.model)
        .output()
        .unwrap();
    if let Some(why) = refusal_problem(&eval, "--tasks") {
        failures.push(format!("eval without --tasks or --ppl: {why}"));
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn layers_json_scores_every_layer_and_picks_the_lowest() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-layers");
    let json = tmp.join("layers.json");
    let preset = tmp.join("preset.toml");
    fs::write(&preset, "num_prune_layers = 2\n").unwrap();
    let output = run_with_config("layers", &stories, &preset, &json, &SMALL_CALIBRATION);
    assert_success(&output, "grasp layers");
    let scores = read_json(&json);
    assert_eq!(scores["config"], preset.to_str().unwrap());
    let bi = f64s(&scores["bi"]);
    assert_eq!(bi.len(), 5);
    assert!(bi.iter().all(|b| b.is_finite()), "bi {bi:?}");
    let mut chosen = usizes(&scores["chosen_layers"]);
    chosen.sort_unstable();
    let mut by_score: Vec<usize> = (0..bi.len()).collect();
    by_score.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
    let mut lowest = by_score[..2].to_vec();
    lowest.sort_unstable();
    assert_eq!(chosen, lowest, "bi {bi:?}");
}

#[test]
fn command_line_flags_win_over_the_config_file() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-config");
    let preset = tmp.join("preset.toml");
    fs::write(
        &preset,
        "ratio = 0.3\nnum_prune_layers = 1\nmethod = \"svd\"\n",
    )
    .unwrap();
    let preset = preset.to_str().unwrap();
    let report = compress_ok(
        &stories,
        &tmp.join("out"),
        &["--config", preset, "--ratio", "0.5"],
    );
    let args = &report["args"];
    assert_eq!(args["ratio"].as_f64(), Some(0.5));
    assert_eq!(args["num_prune_layers"], 1, "the file's other keys apply");
    assert_eq!(args["method"], "svd");
    assert_eq!(args["config"], preset, "the report names the config file");
    // The ratio used, not only the one recorded: k = ⌊in·out·(1−ratio)/(in+out)⌋.
    for (name, module) in report["modules"].as_object().unwrap() {
        let (i, o) = (
            module["in_features"].as_u64().unwrap(),
            module["out_features"].as_u64().unwrap(),
        );
        assert_eq!(module_k(module) as u64, i * o / 2 / (i + o), "{name}");
    }
}

/// `grasp eval --config` takes its flags from the file and names it in the JSON report.
#[test]
fn eval_reads_its_flags_from_the_config_file_and_records_it() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-eval-config");
    let (json, preset) = (tmp.join("eval.json"), tmp.join("preset.toml"));
    fs::write(
        &preset,
        "ppl = \"wikitext2\"\nlimit = 1\nppl_seq_len = 64\n",
    )
    .unwrap();
    let output = run_with_config("eval", &stories, &preset, &json, &[]);
    assert_success(&output, "grasp eval --config");
    let report = read_json(&json);
    assert_eq!(report["args"]["config"], preset.to_str().unwrap());
    assert_eq!(report["args"]["ppl_seq_len"], 64);
    assert_eq!(report["perplexity"][0]["windows"], 1);
}

/// A task file missing under --data-dir is read from the hub cache (HF_HOME), in the hub's
/// parquet layout; the two ARC-Easy records of the fixture score as their JSONL lines do.
#[test]
fn missing_task_files_come_from_the_hub_cache() {
    let Some(stories) = stories() else { return };
    let tmp = TempDir::new("cli-hub-tasks");
    let repo = tmp.join("hub/datasets--allenai--ai2_arc");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    fs::create_dir_all(repo.join("refs/refs/convert")).unwrap();
    fs::write(repo.join("refs/refs/convert/parquet"), commit).unwrap();
    let split = repo.join(format!("snapshots/{commit}/ARC-Easy/test"));
    fs::create_dir_all(&split).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arc-easy-test-2rows.parquet"),
        split.join("0000.parquet"),
    )
    .unwrap();
    let local = tmp.join("data/arc");
    fs::create_dir_all(&local).unwrap();
    fs::create_dir_all(tmp.join("empty")).unwrap();
    let jsonl = fs::read_to_string(stories.data.join("arc/ARC-Easy-test.jsonl")).unwrap();
    let first_two: String = jsonl.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(local.join("ARC-Easy-test.jsonl"), first_two).unwrap();

    let run = |data_dir: &Path, json: &Path| -> Value {
        let output = grasp()
            .env("HF_HOME", tmp.path())
            .arg("eval")
            .arg("--model")
            .arg(&stories.model)
            .args(["--tasks", "arc_easy", "--data-dir"])
            .arg(data_dir)
            .arg("--json")
            .arg(json)
            .output()
            .unwrap();
        assert_success(&output, "grasp eval");
        read_json(json)["tasks"][0].clone()
    };
    let from_hub = run(&tmp.join("empty"), &tmp.join("hub.json"));
    let from_jsonl = run(&tmp.join("data"), &tmp.join("jsonl.json"));
    assert_eq!(from_hub["n"], 2);
    assert_eq!(from_hub["metrics"], from_jsonl["metrics"]);
}

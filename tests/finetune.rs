//! `grasp finetune` and `compress --recovery` run as a user runs them: what trains and what
//! stays byte-identical, the loss falling, bf16, micro-batches side by side, and one-line
//! refusals of bad data.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::cli::{
    assert_success, compress_ok, grasp, read_json, refusal_problem, stories, Stories,
};
use crate::common::TempDir;

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

//! Flags out of range, flags that contradict each other, paths that cannot be used, presets
//! with keys no flag has.

use std::fs;

use super::harness::*;

#[test]
fn compress_flags_out_of_range_are_named() {
    let cases = [
        compress_case("ratio-negative", nothing, &["--ratio", "-0.1"], "--ratio"),
        compress_case("ratio-above-1", nothing, &["--ratio", "1.5"], "--ratio"),
        compress_case("ratio-zero", nothing, &["--ratio", "0"], "--ratio"),
        compress_case(
            "threshold-above-1",
            nothing,
            &["--threshold-ratio", "1.5"],
            "--threshold-ratio",
        ),
        compress_case(
            "threshold-negative",
            nothing,
            &["--threshold-ratio", "-0.5"],
            "--threshold-ratio",
        ),
        compress_case("seed-negative", nothing, &["--seed", "-1"], "--seed"),
        compress_case(
            "samples-negative",
            nothing,
            &["--num-samples", "-4"],
            "--num-samples",
        ),
        compress_case(
            "samples-zero",
            nothing,
            &["--num-samples", "0"],
            "--num-samples",
        ),
        compress_case("seq-len-zero", nothing, &["--seq-len", "0"], "--seq-len"),
        compress_case(
            "seq-len-too-long",
            nothing,
            &["--seq-len", "100000"],
            "--seq-len",
        ),
        compress_case(
            "samples-beyond-corpus",
            nothing,
            &["--seq-len", "512", "--num-samples", "100000"],
            "tokens",
        ),
        compress_case(
            "batch-size-zero",
            nothing,
            &["--batch-size", "0"],
            "--batch-size",
        ),
        compress_case(
            "prune-all-layers",
            nothing,
            &["--num-prune-layers", "5"],
            "--num-prune-layers",
        ),
        compress_case(
            "prune-zero",
            nothing,
            &["--num-prune-layers", "0"],
            "--num-prune-layers",
        ),
        compress_case(
            "prune-negative",
            nothing,
            &["--num-prune-layers", "-1"],
            "--num-prune-layers",
        ),
        compress_case(
            "mlp-target-unknown",
            nothing,
            &["--mlp-targets", "foo_proj"],
            "foo_proj",
        ),
        compress_case(
            "attn-target-of-mlp",
            nothing,
            &["--attn-targets", "gate_proj"],
            "gate_proj",
        ),
        compress_case(
            "targets-empty",
            nothing,
            &["--mlp-targets", "", "--attn-targets", ""],
            "--mlp-targets",
        ),
        compress_case(
            "method-unknown",
            nothing,
            &["--method", "prune"],
            "--method",
        ),
        compress_case(
            "svd-dtype-unknown",
            nothing,
            &["--svd-dtype", "f8"],
            "--svd-dtype",
        ),
        compress_case("device-unknown", nothing, &["--device", "tpu"], "tpu"),
        compress_case(
            "cuda-ordinal-bad",
            nothing,
            &["--device", "cuda:x"],
            "cuda:x",
        ),
        compress_case("dtype-unknown", nothing, &["--dtype", "f8"], "f8"),
        compress_case(
            "dataset-unknown",
            nothing,
            &["--dataset", "nope"],
            "--dataset",
        ),
        compress_case(
            "dataset-is-dir",
            nothing,
            &["--dataset", "model"],
            "--dataset",
        ),
        compress_case(
            "data-dir-missing",
            nothing,
            &["--data-dir", "nowhere"],
            "--data-dir",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

#[test]
fn layer_list_out_of_range_is_named() {
    let result = case(
        "layers-out-of-range",
        |s| s.calibrated("compress", &["--out", "out", "--layers", "7"]),
        "layer 7",
    );
    assert_all_refused(result.into_iter().collect());
}

#[test]
fn unusable_paths_are_refused_before_loading() {
    let cases = [
        compress_case(
            "out-under-a-file",
            |s| fs::write(s.join("file"), "x").unwrap(),
            &["--out", "file/out"],
            "not a directory",
        ),
        compress_case(
            "out-is-a-file",
            |s| fs::write(s.join("file"), "x").unwrap(),
            &["--out", "file", "--force"],
            "not a directory",
        ),
        compress_case(
            "out-exists",
            |s| fs::create_dir(s.join("out")).unwrap(),
            &[],
            "--force",
        ),
        compress_case(
            "log-file-is-dir",
            |s| fs::create_dir(s.join("logs")).unwrap(),
            &["--log-file", "logs"],
            "--log-file",
        ),
        compress_case(
            "log-file-parent-missing",
            nothing,
            &["--log-file", "nowhere/log.txt"],
            "--log-file",
        ),
        compress_case(
            "log-file-in-out",
            nothing,
            &["--log-file", "out/log.txt"],
            "--log-file",
        ),
        case(
            "model-typo-local",
            |s| model_cmd(s, "model/typo"),
            "no such directory",
        ),
        case(
            "model-dot-missing",
            |s| model_cmd(s, "./missing"),
            "no such directory",
        ),
        case(
            "model-is-a-file",
            |s| model_cmd(s, "model/config.json"),
            "found a file",
        ),
        case(
            "model-hub-offline",
            |s| model_cmd(s, "nobody/nothing"),
            "HF_HUB_OFFLINE",
        ),
        case(
            "eval-json-is-dir",
            |s| eval_cmd(s, &["--ppl", "wikitext2", "--json", "model"]),
            "--json",
        ),
        case(
            "eval-json-parent-missing",
            |s| eval_cmd(s, &["--ppl", "wikitext2", "--json", "nowhere/r.json"]),
            "--json",
        ),
        case(
            "layers-json-is-dir",
            |s| s.calibrated("layers", &["--json", "model"]),
            "--json",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

/// `grasp compress --model MODEL` of the sandbox, run from the sandbox.
fn model_cmd(s: &Sandbox, model: &str) -> std::process::Command {
    let mut cmd = grasp();
    cmd.arg("compress")
        .args(["--model", model, "--out", "out", "--num-prune-layers", "1"])
        .arg("--data-dir")
        .arg(&s.data);
    cmd
}

#[test]
fn eval_and_layers_flags_are_checked() {
    let cases = [
        case(
            "eval-limit-zero",
            |s| eval_cmd(s, &["--ppl", "wikitext2", "--limit", "0"]),
            "--limit",
        ),
        case(
            "eval-limit-negative",
            |s| eval_cmd(s, &["--ppl", "wikitext2", "--limit", "-1"]),
            "--limit",
        ),
        case("eval-nothing", |s| eval_cmd(s, &[]), "--tasks"),
        case(
            "eval-task-unknown",
            |s| eval_cmd(s, &["--tasks", "nope"]),
            "nope",
        ),
        case(
            "eval-corpus-unknown",
            |s| eval_cmd(s, &["--ppl", "nope"]),
            "nope",
        ),
        case(
            "eval-ppl-batch-zero",
            |s| {
                eval_cmd(
                    s,
                    &[
                        "--ppl",
                        "wikitext2",
                        "--limit",
                        "1",
                        "--ppl-batch-size",
                        "0",
                    ],
                )
            },
            "--ppl-batch-size",
        ),
        case(
            "eval-batch-zero",
            |s| {
                eval_cmd(
                    s,
                    &["--tasks", "arc_easy", "--limit", "1", "--batch-size", "0"],
                )
            },
            "--batch-size",
        ),
        case(
            "eval-data-dir-missing",
            |s| eval_cmd(s, &["--ppl", "wikitext2", "--data-dir", "nowhere"]),
            "--data-dir",
        ),
        case(
            "eval-task-data-missing",
            |s| {
                fs::create_dir(s.join("empty")).unwrap();
                eval_cmd(s, &["--tasks", "arc_easy", "--data-dir", "empty"])
            },
            "arc",
        ),
        case(
            "layers-prune-zero",
            |s| s.calibrated("layers", &["--num-prune-layers", "0"]),
            "--num-prune-layers",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

#[test]
fn config_files_are_named_in_their_errors() {
    let with_config =
        |text: &'static str| move |s: &Sandbox| fs::write(s.join("preset.toml"), text).unwrap();
    let cases = [
        compress_case(
            "config-missing",
            nothing,
            &["--config", "absent.toml"],
            "absent.toml",
        ),
        compress_case(
            "config-unknown-key",
            with_config("ratio = 0.5\nbogus_flag = 3\n"),
            &["--config", "preset.toml"],
            "preset.toml",
        ),
        compress_case(
            "config-not-toml",
            with_config("ratio = = 0.5\n"),
            &["--config", "preset.toml"],
            "preset.toml",
        ),
        compress_case(
            "config-table-value",
            with_config("[ratio]\nx = 1\n"),
            &["--config", "preset.toml"],
            "preset.toml",
        ),
        compress_case(
            "config-value-out-of-range",
            with_config("ratio = 2.0\n"),
            &["--config", "preset.toml"],
            "--ratio",
        ),
        case(
            "eval-config-missing",
            |s| eval_cmd(s, &["--config", "absent.toml"]),
            "absent.toml",
        ),
        case(
            "eval-config-unknown-key",
            |s| {
                with_config("ppl = \"wikitext2\"\nratio = 0.5\n")(s);
                eval_cmd(s, &["--config", "preset.toml"])
            },
            "preset.toml",
        ),
        case(
            "layers-config-unknown-key",
            |s| {
                with_config("num_prune_layers = 1\nmerge = true\n")(s);
                s.calibrated("layers", &["--config", "preset.toml"])
            },
            "preset.toml",
        ),
        case(
            "convert-config-missing",
            |_| {
                let mut cmd = grasp();
                cmd.args(["convert", "--config", "absent.toml"]);
                cmd
            },
            "absent.toml",
        ),
        case(
            "export-config-value-invalid",
            |s| {
                with_config("type = \"q2\"\n")(s);
                let mut cmd = grasp();
                cmd.args(["export", "--config", "preset.toml", "--model"])
                    .arg(&s.model)
                    .args(["--gguf", "out.gguf"]);
                cmd
            },
            "q2",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

/// `--input-cache-mb` and its environment variable take a count of MiB; anything else is an
/// error naming the flag, not a silent fallback to the default.
#[test]
fn input_cache_sizes_that_are_not_counts_are_refused() {
    let with_env = |value: &'static str| {
        move |s: &Sandbox| {
            let mut cmd = s.compress(&s.join("out"), &["--num-prune-layers", "1"]);
            cmd.env("GRASP_INPUT_CACHE_MB", value);
            cmd
        }
    };
    let cases = [
        compress_case(
            "input-cache-negative",
            nothing,
            &["--input-cache-mb", "-1"],
            "--input-cache-mb",
        ),
        compress_case(
            "input-cache-not-a-number",
            nothing,
            &["--input-cache-mb", "lots"],
            "--input-cache-mb",
        ),
        case("input-cache-env-typo", with_env("256M"), "--input-cache-mb"),
        case("input-cache-env-empty", with_env(""), "--input-cache-mb"),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

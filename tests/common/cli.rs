//! Running the `grasp` binary on stories260K, as the end-to-end tests do.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::shared_dir;

/// The shared stories260K checkpoint and data directory.
pub struct Stories {
    pub model: PathBuf,
    pub data: PathBuf,
}

pub fn stories() -> Option<Stories> {
    let shared = shared_dir()?;
    Some(Stories {
        model: shared.join("models/stories260K-hf"),
        data: shared.join("data"),
    })
}

/// Four 64-token windows from the start of wikitext-2: enough to exercise every stage quickly.
pub const SMALL_CALIBRATION: [&str; 6] = [
    "--num-samples",
    "4",
    "--seq-len",
    "64",
    "--sampling",
    "sequential",
];

/// The binary, offline and without backtraces, so an error is the one line a user sees.
pub fn grasp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grasp"));
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("GRASP_MODEL")
        .env("HF_HUB_OFFLINE", "1");
    cmd
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        stderr(output)
    );
}

/// `grasp compress` of `model` with a small sequential calibration, plus `extra` flags.
pub fn compress_model<S: AsRef<OsStr>>(
    stories: &Stories,
    model: &Path,
    out: &Path,
    extra: &[S],
) -> Output {
    grasp()
        .arg("compress")
        .arg("--model")
        .arg(model)
        .args(SMALL_CALIBRATION)
        .arg("--data-dir")
        .arg(&stories.data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("cannot run grasp")
}

pub fn compress<S: AsRef<OsStr>>(stories: &Stories, out: &Path, extra: &[S]) -> Output {
    compress_model(stories, &stories.model, out, extra)
}

/// Compresses and returns the report.
pub fn compress_ok(stories: &Stories, out: &Path, extra: &[&str]) -> Value {
    assert_success(&compress(stories, out, extra), "grasp compress");
    read_json(&out.join("grasp_report.json"))
}

/// Wikitext-2 perplexity of `model` from `grasp eval --json` (two 64-token windows); the JSON
/// goes to `json`, in the test's scratch directory (never beside a shared model).
pub fn perplexity(stories: &Stories, model: &Path, json: &Path) -> f64 {
    let output = grasp()
        .arg("eval")
        .arg("--model")
        .arg(model)
        .args(["--ppl", "wikitext2", "--limit", "2", "--ppl-seq-len", "64"])
        .arg("--data-dir")
        .arg(&stories.data)
        .arg("--json")
        .arg(json)
        .output()
        .expect("cannot run grasp");
    assert_success(&output, "grasp eval");
    let ppl = read_json(json)["perplexity"][0]["perplexity"]
        .as_f64()
        .expect("eval JSON has no perplexity[0].perplexity");
    assert!(
        ppl.is_finite() && ppl > 1.0,
        "perplexity of {} is {ppl}",
        model.display()
    );
    ppl
}

/// `grasp SUBCOMMAND` of stories260K with its flags from `config`, writing `--json json`, plus
/// `extra`.
pub fn run_with_config(
    subcommand: &str,
    stories: &Stories,
    config: &Path,
    json: &Path,
    extra: &[&str],
) -> Output {
    grasp()
        .arg(subcommand)
        .arg("--model")
        .arg(&stories.model)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(&stories.data)
        .arg("--json")
        .arg(json)
        .args(extra)
        .output()
        .expect("cannot run grasp")
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Why `output` is not a clean refusal naming `problem`: it must fail without panicking, with
/// one `error:` line on stderr that names the problem (the others are progress logs, or
/// clap's usage hint after its error).
pub fn refusal_problem(output: &Output, problem: &str) -> Option<String> {
    let err = stderr(output);
    let error = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    let error_lines = err.lines().filter(|l| l.starts_with("error:")).count();
    if output.status.success() {
        Some("exited 0".into())
    } else if err.contains("panicked") {
        Some(format!("panicked:\n{err}"))
    } else if error_lines != 1 {
        Some(format!("not one `error:` line:\n{err}"))
    } else if !error.contains(problem) {
        Some(format!("`{error}` does not mention `{problem}`"))
    } else {
        None
    }
}

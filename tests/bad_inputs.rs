//! Bad inputs and faults, each refused with one `error:` line that names the flag, file, field
//! or tensor at fault, with a non-zero exit, nothing left behind and the inputs unchanged.
//! The broken fixtures are made here from stories260K, in a fresh directory per case.

#[path = "bad_inputs/checkpoints.rs"]
mod checkpoints;
#[path = "bad_inputs/faults.rs"]
mod faults;
#[path = "bad_inputs/flags.rs"]
mod flags;
#[path = "bad_inputs/harness.rs"]
mod harness;

use std::fs;
use std::process::Stdio;

use harness::*;

/// Each case runs in its sandbox, where `model` is the input: `--out` (relative to the
/// sandbox) names it, its parent, a folder inside it, a link to it, a path through `..`.
#[test]
fn output_never_replaces_or_holds_the_input() {
    let link = |s: &Sandbox| std::os::unix::fs::symlink(&s.model, s.join("link")).unwrap();
    let cases = [
        compress_case(
            "out-is-model",
            nothing,
            &["--out", "model", "--force"],
            "--out",
        ),
        compress_case(
            "out-is-model-noforce",
            nothing,
            &["--out", "model"],
            "--out",
        ),
        compress_case(
            "out-holds-model",
            nothing,
            &["--out", ".", "--force"],
            "--out",
        ),
        compress_case(
            "out-in-model",
            nothing,
            &["--out", "model/sub", "--force"],
            "--out",
        ),
        compress_case(
            "out-links-to-model",
            link,
            &["--out", "link", "--force"],
            "--out",
        ),
        compress_case(
            "out-dotdot-to-model",
            nothing,
            &["--out", "missing/../model", "--force"],
            "--out",
        ),
        compress_case(
            "log-file-is-input",
            nothing,
            &["--log-file", "model/config.json"],
            "--log-file",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

#[test]
fn reports_and_logs_never_overwrite_the_input() {
    let cases = [
        case(
            "json-is-input",
            |s| {
                eval_cmd(
                    s,
                    &[
                        "--ppl",
                        "wikitext2",
                        "--limit",
                        "1",
                        "--json",
                        "model/config.json",
                    ],
                )
            },
            "--json",
        ),
        case(
            "layers-json-is-weights",
            |s| s.calibrated("layers", &["--json", "model/model.safetensors"]),
            "--json",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

/// `grasp eval ... | head -n 1`: the reader is gone before the first line is printed.
#[test]
fn closed_stdout_ends_quietly_without_a_panic() {
    let Some(sandbox) = Sandbox::new("closed-stdout") else {
        return;
    };
    let mut child = eval_cmd(&sandbox, &["--ppl", "wikitext2", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "exited 0 with stdout closed");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "not quiet:\n{err}"
    );
    assert!(fs::read_dir(sandbox.root()).unwrap().count() == 1);
}

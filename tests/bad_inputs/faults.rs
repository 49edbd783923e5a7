//! Faults from outside: SIGINT and SIGTERM in each phase of a run, a run killed outright and
//! the next one cleaning up after it, a full disk, a read-only output file system, a GGUF file
//! whose tensor does not fit its metadata.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::harness::*;

/// A calibration long enough (a few seconds on stories260K) for a signal to land in each phase.
const LONG_CALIBRATION: [&str; 8] = [
    "--num-samples",
    "48",
    "--seq-len",
    "256",
    "--sampling",
    "sequential",
    "--num-prune-layers",
    "2",
];

/// Whether process `pid` catches `signal` (its handler thread is up).
fn catches(pid: u32, signal: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Spawns `cmd` with stderr read line by line into the returned channel.
fn spawn(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run grasp");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `marker`; false when the run ended first.
fn wait_for(lines: &mpsc::Receiver<String>, marker: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let hit = line.contains(marker);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
    false
}

/// Interrupts a compression that replaces an old output, with `signal`, once `marker` was
/// logged and `delay_ms` more passed: the exit is 128 + signal, nothing is left beside the
/// output, and the old output is intact. Where `may_finish`, the signal may also come after
/// the new output was put in place (then it is complete, and the exit either 128 + signal or,
/// when the run ended first, 0).
fn interrupted(
    name: &str,
    signal: i32,
    marker: &str,
    delay_ms: u64,
    may_finish: bool,
) -> Option<(String, Option<String>)> {
    let sandbox = Sandbox::new(name)?;
    let out = sandbox.join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old.txt"), "the previous output").unwrap();
    let before = sandbox.snapshot();
    let mut cmd = sandbox.compress(&out, &[&LONG_CALIBRATION[..], &["--force"]].concat());
    let (mut child, lines) = spawn(&mut cmd);
    let pid = child.id();
    let ready = Instant::now() + Duration::from_secs(20);
    while !catches(pid, signal) && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !catches(pid, signal) {
        let _ = child.kill();
        let _ = child.wait();
        return Some((
            name.to_string(),
            Some(format!("signal {signal} is not caught")),
        ));
    }
    let mut seen = Vec::new();
    let reached = marker.is_empty() || wait_for(&lines, marker, &mut seen);
    std::thread::sleep(Duration::from_millis(delay_ms));
    // SAFETY: kill only sends a signal to the child we spawned.
    unsafe { libc::kill(pid as i32, signal) };
    let status = child.wait().unwrap();
    seen.extend(lines.iter());
    let after = sandbox.snapshot();
    let log = seen.join("\n");
    let replaced = !out.join("old.txt").exists();
    let why = if !reached {
        Some(format!("the run ended before `{marker}`:\n{log}"))
    } else if status.success() && !may_finish {
        Some(format!("the run finished before the signal:\n{log}"))
    } else if !status.success() && status.code() != Some(128 + signal) {
        Some(format!(
            "exit status {status:?}, not {}:\n{log}",
            128 + signal
        ))
    } else if log.contains("error:") || log.contains("panicked") {
        Some(format!("reported an error on the way out:\n{log}"))
    } else if replaced && may_finish {
        let complete =
            out.join("model.safetensors").is_file() && out.join("grasp_report.json").is_file();
        let hidden: Vec<&String> = after.keys().filter(|k| k.starts_with('.')).collect();
        (!complete || !hidden.is_empty())
            .then(|| format!("the new output is complete: {complete}; left: {hidden:?}"))
    } else {
        changes(&before, &after)
    };
    Some((name.to_string(), why))
}

fn signal_cases(signal: i32, tag: &str) -> Vec<(String, Option<String>)> {
    let phases = [
        ("start", "", 0, false),
        ("loaded", "model ", 0, false),
        ("calibrated", "calibration:", 0, false),
        ("scored", "block influence:", 0, false),
        ("compressing", "layers to compress", 0, false),
        ("saving", "layer ", 0, true),
        ("late", "layer ", 300, true),
    ];
    phases
        .into_iter()
        .filter_map(|(phase, marker, delay, may_finish)| {
            interrupted(&format!("{tag}-{phase}"), signal, marker, delay, may_finish)
        })
        .collect()
}

#[test]
fn sigint_in_any_phase_leaves_the_old_output_or_the_new() {
    assert_all_refused(signal_cases(libc::SIGINT, "sigint"));
}

#[test]
fn sigterm_in_any_phase_leaves_the_old_output_or_the_new() {
    assert_all_refused(signal_cases(libc::SIGTERM, "sigterm"));
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The id of a process that has ended.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn scratch_left_by_a_killed_run_is_removed_by_the_next() {
    let Some(sandbox) = Sandbox::new("stale-scratch") else {
        return;
    };
    let (pid, host) = (dead_pid(), hostname());
    let stale = sandbox.join(&format!(".out.inputs-{pid}@{host}"));
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("layer0-batch0.safetensors"), "partial").unwrap();
    let other_host = sandbox.join(&format!(".out.tmp-{pid}@another-machine"));
    fs::create_dir(&other_host).unwrap();
    let old = sandbox.join(&format!(".out.old-{pid}@{host}"));
    fs::create_dir(&old).unwrap();
    fs::write(old.join("old.txt"), "the previous output").unwrap();

    // The killed run had moved the old output aside: it is put back, and --force replaces it.
    let output = sandbox
        .compress(
            &sandbox.join("out"),
            &["--num-prune-layers", "1", "--force"],
        )
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        !stale.exists() && !old.exists(),
        "stale scratch left:\n{err}"
    );
    assert!(
        other_host.exists(),
        "removed the scratch of a run on another host"
    );
    assert!(
        err.contains(&format!("removed {}", stale.display())),
        "not logged:\n{err}"
    );
    assert!(err.contains("restored"), "restoring not logged:\n{err}");
    assert!(sandbox.join("out/model.safetensors").is_file());
}

#[test]
fn killed_run_leaves_scratch_that_the_next_run_removes() {
    let Some(sandbox) = Sandbox::new("sigkill") else {
        return;
    };
    let out = sandbox.join("out");
    let mut cmd = sandbox.compress(&out, &LONG_CALIBRATION);
    // A small in-memory budget puts the layer inputs on disk, in the scratch directory.
    cmd.env("GRASP_INPUT_CACHE_MB", "0");
    let (mut child, lines) = spawn(&mut cmd);
    let reached = wait_for(&lines, "calibration:", &mut Vec::new());
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<String> = sandbox
        .snapshot()
        .into_keys()
        .filter(|k| k.starts_with('.') && k.ends_with('/'))
        .collect();
    assert!(
        reached && !left.is_empty(),
        "nothing to clean up: the run ended before the kill"
    );

    let output = sandbox
        .compress(&out, &["--num-prune-layers", "1"])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    let still: Vec<String> = sandbox
        .snapshot()
        .into_keys()
        .filter(|k| k.starts_with('.'))
        .collect();
    assert!(still.is_empty(), "left after the rerun: {still:?}\n{err}");
    assert!(
        err.contains("removed"),
        "the cleanup was not logged:\n{err}"
    );
}

/// Mounts a tmpfs of `size` (with `options`) at `dir`; false (after a message) when not
/// permitted here.
fn mount_tmpfs(dir: &Path, options: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipping: cannot mount a tmpfs at {} (not permitted here)",
            dir.display()
        );
        let _ = fs::remove_dir(dir);
    }
    ok
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

#[test]
fn full_or_read_only_disks_leave_nothing_behind() {
    let mut results = Vec::new();
    if let Some(sandbox) = Sandbox::new("full-disk") {
        let disk = sandbox.join("disk");
        if mount_tmpfs(&disk, "size=256k") {
            let mut cmd =
                sandbox.compress(&disk.join("out"), &["--num-prune-layers", "1", "--merge"]);
            let why = sandbox.refusal(&mut cmd, "No space left on device");
            let left = fs::read_dir(&disk).unwrap().count();
            unmount(&disk);
            let why =
                why.or_else(|| (left > 0).then(|| format!("{left} entries left on the full disk")));
            results.push(("full-disk".to_string(), why));
        }
    }
    if let Some(sandbox) = Sandbox::new("read-only") {
        let disk = sandbox.join("ro");
        if mount_tmpfs(&disk, "ro,size=64k") {
            let mut cmd = sandbox.compress(&disk.join("out"), &["--num-prune-layers", "1"]);
            let why = sandbox.refusal(&mut cmd, "Read-only file system");
            unmount(&disk);
            results.push(("read-only-disk".to_string(), why));
        }
    }
    assert_all_refused(results);
}

#[test]
fn convert_refuses_bad_files_and_outputs() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let convert = |gguf: &str, out: &str, extra: &[&str]| {
        let mut cmd = grasp();
        cmd.arg("convert")
            .args(["--gguf", gguf, "--out", out])
            .args(extra);
        cmd
    };
    let source = "models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf";
    let cases = [
        case(
            "gguf-missing",
            |_| convert("absent.gguf", "hf", &[]),
            "--gguf",
        ),
        case(
            "gguf-not-gguf",
            |s| {
                fs::write(s.join("text.gguf"), "plain text").unwrap();
                convert("text.gguf", "hf", &[])
            },
            "text.gguf",
        ),
        case(
            "convert-out-holds-gguf",
            |s| {
                fs::create_dir(s.join("dir")).unwrap();
                fs::copy(s.shared(source), s.join("dir/m.gguf")).unwrap();
                convert("dir/m.gguf", "dir", &["--force"])
            },
            "--out",
        ),
        case(
            "convert-out-exists",
            |s| {
                fs::create_dir(s.join("hf")).unwrap();
                convert(s.shared(source).to_str().unwrap(), "hf", &[])
            },
            "--force",
        ),
        case(
            "convert-dtype-unknown",
            |s| convert(s.shared(source).to_str().unwrap(), "hf", &["--dtype", "f8"]),
            "--dtype",
        ),
        case(
            "gguf-tensor-misshapen",
            |s| {
                let mut file = fs::File::open(s.shared(source)).unwrap();
                let content = gguf_file::Content::read(&mut file).unwrap();
                let mut tensors = Vec::new();
                for name in content.tensor_infos.keys() {
                    let mut t = content
                        .tensor(&mut file, name, &candle_core::Device::Cpu)
                        .unwrap();
                    if name == "blk.0.ffn_up.weight" {
                        let columns = t.shape().dims()[1];
                        let shrunk = candle_core::Tensor::zeros(
                            (100, columns),
                            candle_core::DType::F32,
                            &candle_core::Device::Cpu,
                        )
                        .unwrap();
                        t = QTensor::quantize(&shrunk, GgmlDType::F32).unwrap();
                    }
                    tensors.push((name.clone(), t));
                }
                let metadata: Vec<(&str, &gguf_file::Value)> = content
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v))
                    .collect();
                let tensor_refs: Vec<(&str, &QTensor)> =
                    tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
                let mut out = fs::File::create(s.join("bad.gguf")).unwrap();
                gguf_file::write(&mut out, &metadata, &tensor_refs).unwrap();
                convert("bad.gguf", "hf", &[])
            },
            "model.layers.0.mlp.up_proj.weight",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

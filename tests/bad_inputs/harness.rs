//! A sandbox per case: a writable copy of stories260K in a fresh directory, the binary run
//! against it, and the checks every refusal must pass (non-zero exit, one closing `error:`
//! line naming the problem, nothing left behind, the inputs unchanged).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::common::cli::{grasp, refusal_problem, stderr, SMALL_CALIBRATION};
use crate::common::{shared_dir, TempDir};

pub struct Sandbox {
    tmp: TempDir,
    /// The writable copy of stories260K.
    pub model: PathBuf,
    /// The shared data directory (read-only).
    pub data: PathBuf,
    shared: PathBuf,
}

impl Sandbox {
    /// None (after a message) when ../shared is absent.
    pub fn new(tag: &str) -> Option<Self> {
        let shared = shared_dir()?;
        let tmp = TempDir::new(&format!("bad-{tag}"));
        let model = tmp.join("model");
        copy_dir(&shared.join("models/stories260K-hf"), &model);
        Some(Self {
            tmp,
            model,
            data: shared.join("data"),
            shared,
        })
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    pub fn shared(&self, rel: &str) -> PathBuf {
        self.shared.join(rel)
    }

    /// config.json of the copy, edited by `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.model.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut config);
        fs::write(&path, config.to_string()).unwrap();
    }

    /// The copy's weights, edited by `edit`.
    pub fn edit_weights(
        &self,
        edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
    ) {
        let path = self.model.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
        edit(&mut tensors);
        candle_core::safetensors::save(&tensors, &path).unwrap();
    }

    /// `grasp compress` of the copy with a small calibration into `out`, plus `extra` (which
    /// may name another `--out`: the last one wins).
    pub fn compress<S: AsRef<OsStr>>(&self, out: &Path, extra: &[S]) -> Command {
        let mut args = vec![OsStr::new("--out"), out.as_os_str()];
        args.extend(extra.iter().map(AsRef::as_ref));
        self.calibrated("compress", &args)
    }

    /// `grasp SUBCOMMAND` (compress or layers) of the copy with a small calibration, plus
    /// `extra`.
    pub fn calibrated<S: AsRef<OsStr>>(&self, subcommand: &str, extra: &[S]) -> Command {
        let mut cmd = grasp();
        cmd.arg(subcommand)
            .arg("--model")
            .arg(&self.model)
            .args(SMALL_CALIBRATION)
            .arg("--data-dir")
            .arg(&self.data)
            .args(extra);
        cmd
    }

    /// Every file and directory under the sandbox with a hash of its contents.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    /// Runs `cmd` and returns why it is not a clean refusal naming `problem` that left the
    /// sandbox as it found it.
    pub fn refusal(&self, cmd: &mut Command, problem: &str) -> Option<String> {
        let before = self.snapshot();
        let output = cmd.output().expect("cannot run grasp");
        let after = self.snapshot();
        if let Some(why) = refusal_problem(&output, problem) {
            return Some(why);
        }
        changes(&before, &after)
    }
}

/// What differs between two snapshots, if anything.
pub fn changes(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Option<String> {
    let mut diffs = Vec::new();
    for (path, hash) in after {
        match before.get(path) {
            None => diffs.push(format!("left behind: {path}")),
            Some(old) if old != hash => diffs.push(format!("changed: {path}")),
            _ => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        diffs.push(format!("removed: {path}"));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.insert(format!("{rel}/"), 0);
            walk(root, &path, out);
        } else {
            let mut h = std::hash::DefaultHasher::new();
            fs::read(&path).unwrap_or_default().hash(&mut h);
            out.insert(rel, h.finish());
        }
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        fs::copy(&path, &dest).unwrap();
        // The shared files are read-only; the copies are fixtures the test edits.
        let mut perms = fs::metadata(&dest).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&dest, perms).unwrap();
    }
}

/// Runs every case and fails with the list of those that were not clean refusals.
pub fn assert_all_refused(results: Vec<(String, Option<String>)>) {
    let total = results.len();
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, why)| why.map(|w| format!("{name}: {w}")))
        .collect();
    eprintln!(
        "{} of {total} cases refused cleanly",
        total - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One case: a fresh sandbox, the command `setup` makes in it, and whether that command was a
/// clean refusal naming `problem` (None after a message when ../shared is absent).
pub fn case(
    name: &str,
    setup: impl FnOnce(&Sandbox) -> Command,
    problem: &str,
) -> Option<(String, Option<String>)> {
    let sandbox = Sandbox::new(name)?;
    let mut cmd = setup(&sandbox);
    cmd.current_dir(sandbox.root());
    Some((name.to_string(), sandbox.refusal(&mut cmd, problem)))
}

/// Leaves the sandbox as it is.
pub fn nothing(_: &Sandbox) {}

/// A compress case with `--num-prune-layers 1` and `extra` (which may name another `--out`),
/// writing to `out` of the sandbox after `prepare`.
pub fn compress_case(
    name: &str,
    prepare: impl FnOnce(&Sandbox),
    extra: &[&str],
    problem: &str,
) -> Option<(String, Option<String>)> {
    case(
        name,
        |s| {
            prepare(s);
            s.compress(
                &s.join("out"),
                &[&["--num-prune-layers", "1"], extra].concat(),
            )
        },
        problem,
    )
}

/// `grasp eval` of the sandbox's model with one short wikitext-2 window, plus `extra`.
pub fn eval_cmd(s: &Sandbox, extra: &[&str]) -> Command {
    let mut cmd = grasp();
    cmd.arg("eval")
        .arg("--model")
        .arg(&s.model)
        .arg("--data-dir")
        .arg(&s.data)
        .args(["--ppl-seq-len", "64"])
        .args(extra);
    cmd
}

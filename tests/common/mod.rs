//! Helpers shared by the integration tests: where the shared data and models are, and loading
//! the golden reference files. Tests that need them skip with a message when they are absent.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use grasp::io::load::{load_files, resolve, Loaded};

/// `../shared` beside the checkout.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent", dir.display());
        None
    }
}

/// The converted SmolLM2-135M (scripts/fetch_test_model.sh), or GRASP_SMOLLM2_DIR.
pub fn smollm2_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GRASP_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m"));
    if dir.join("config.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} has no config.json (run scripts/fetch_test_model.sh)",
            dir.display()
        );
        None
    }
}

pub fn stories_dir() -> Option<PathBuf> {
    shared_dir().map(|s| s.join("models/stories260K-hf"))
}

pub fn golden(name: &str) -> Option<serde_json::Value> {
    let path = shared_dir()?.join("golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap())
}

pub fn load(dir: &Path, dtype: DType) -> Loaded {
    load_files(
        resolve(dir.to_str().unwrap(), "main").unwrap(),
        &Device::Cpu,
        Some(dtype),
    )
    .unwrap()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// max |a − b| / max |b|: relative error against the reference's scale.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A fresh empty directory under the system temp dir, removed with everything in it on drop.
/// `tag` must be unique among the tests of one test binary (they run in parallel).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("grasp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

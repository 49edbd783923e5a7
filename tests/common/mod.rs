//! Helpers shared by the integration tests: where the shared data and models are, loading the
//! golden reference files, scratch directories, seeded random tensors and a mock language model.
//! Tests that need the shared data or SmolLM2 skip with a message when it is absent, unless
//! GRASP_REQUIRE_SHARED=1 (scripts/test.sh sets it), which makes the absence a failure.
#![allow(dead_code)]

pub mod cli;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use anyhow::ensure;
use candle_core::{DType, Device, Tensor};
use grasp::eval::{CausalLm, PackedRow};
use grasp::io::hub::Hub;
use grasp::io::load::{load_files, resolve, Loaded};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// `../shared` beside the checkout, or GRASP_SHARED_DIR.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GRASP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.is_dir() {
        Some(dir)
    } else {
        absent(&format!("{} is absent", dir.display()))
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
        absent(&format!(
            "{} has no config.json (run scripts/fetch_test_model.sh)",
            dir.display()
        ))
    }
}

/// None after a "skipping" message, for a test whose data is `missing`; a failure instead
/// when GRASP_REQUIRE_SHARED=1, so that a run meant to test everything cannot pass by skipping.
fn absent<T>(missing: &str) -> Option<T> {
    if std::env::var_os("GRASP_REQUIRE_SHARED").is_some_and(|v| v == "1") {
        panic!("{missing}, and GRASP_REQUIRE_SHARED=1 forbids skipping");
    }
    eprintln!("skipping: {missing}");
    None
}

/// A hub that only has an empty cache: a test reads its data locally or gets the offline error,
/// and never uses the network.
pub fn offline_hub() -> Hub {
    Hub::offline(PathBuf::from("/nonexistent/grasp-test-hub-cache"))
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

/// max |a − b| over all elements, computed in f64 whatever the dtypes.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Standard normal tensors from a seeded generator, so that a test sees the same inputs on
/// every run and a failure can be reproduced.
pub struct Gaussian(RefCell<StdRng>);

impl Gaussian {
    pub fn seeded(seed: u64) -> Self {
        Self(RefCell::new(StdRng::seed_from_u64(seed)))
    }

    /// A tensor of `shape` with elements drawn from N(0, 1) in f64, converted to `dtype`.
    pub fn randn(&self, shape: &[usize], dtype: DType) -> Tensor {
        let mut rng = self.0.borrow_mut();
        let values: Vec<f64> = (0..shape.iter().product())
            .map(|_| StandardNormal.sample(&mut *rng))
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
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

    /// The sorted names in the directory, hidden ones (staging directories) included.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap_or_else(|e| panic!("{}: {e}", self.0.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A causal mock: the logits at a position are a function of the tokens it sees up to it (all
/// before it in a plain batch; in a packed row, the ones [`PackedRow::sees`] allows, which
/// must be as many as its rotary position + 1). Counts its forward passes and rejects inputs
/// longer than `max_positions`.
pub struct MockLm<F: Fn(&[u32]) -> Vec<f32>> {
    next_logits: F,
    vocab: usize,
    max_positions: usize,
    pub forwards: Cell<usize>,
    device: Device,
}

impl<F: Fn(&[u32]) -> Vec<f32>> MockLm<F> {
    pub fn new(vocab: usize, max_positions: usize, next_logits: F) -> Self {
        MockLm {
            next_logits,
            vocab,
            max_positions,
            forwards: Cell::new(0),
            device: Device::Cpu,
        }
    }
}

impl<F: Fn(&[u32]) -> Vec<f32>> CausalLm for MockLm<F> {
    fn log_probs(
        &self,
        rows: &[PackedRow],
        reads: &[u32],
        targets: &[u32],
    ) -> anyhow::Result<Vec<f32>> {
        let width = rows.first().map_or(0, PackedRow::len);
        ensure!(
            rows.iter().all(|r| r.len() == width),
            "packed rows of different lengths"
        );
        ensure!(
            reads.len() == targets.len(),
            "reads and targets differ in number"
        );
        self.forwards.set(self.forwards.get() + 1);
        let mut log_probs = Vec::with_capacity(reads.len());
        for (&read, &target) in reads.iter().zip(targets) {
            let (row, query) = (&rows[read as usize / width], read as usize % width);
            let seen: Vec<u32> = (0..=query)
                .filter(|&k| row.sees(query, k))
                .map(|k| row.ids[k])
                .collect();
            ensure!(
                row.positions[query] as usize + 1 == seen.len(),
                "token {query} at position {} sees {} tokens",
                row.positions[query],
                seen.len()
            );
            ensure!(
                seen.len() <= self.max_positions,
                "{} tokens exceed {}",
                seen.len(),
                self.max_positions
            );
            let logits: Vec<f64> = (self.next_logits)(&seen)
                .into_iter()
                .map(f64::from)
                .collect();
            ensure!(
                logits.len() == self.vocab,
                "next_logits gave {} logits",
                logits.len()
            );
            ensure!(
                (target as usize) < self.vocab,
                "token id {target} is outside the vocabulary"
            );
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
            log_probs.push((logits[target as usize] - log_sum) as f32);
        }
        Ok(log_probs)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }
}

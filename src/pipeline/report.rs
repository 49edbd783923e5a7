//! The report of a compression, written beside the checkpoint as grasp_report.json.

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use super::inputs::Placement;
use crate::data::calibration::Calibration;
use crate::grasp::compress::{BlockReport, ModuleReport};
use crate::grasp::guard::GuardDecision;
use crate::io::save::OutputForm;
use crate::recovery::train::TrainReport;
use crate::runtime;

/// Everything a compression did, from its settings to its timings.
#[derive(Clone, Debug, Serialize)]
pub struct CompressReport {
    pub grasp_version: &'static str,
    pub args: serde_json::Value,
    pub model: ModelSummary,
    pub device: String,
    pub compute_dtype: &'static str,
    pub output_dtype: &'static str,
    pub threads: usize,
    pub calibration: CalibrationSummary,
    pub bi: Vec<f64>,
    pub bi_angular: bool,
    pub chosen_layers: Vec<usize>,
    pub layer_inputs: Placement,
    /// By module name.
    #[serde(serialize_with = "by_name")]
    pub modules: Vec<ModuleReport>,
    pub blocks: Vec<BlockReport>,
    pub guard: Vec<GuardDecision>,
    /// Layers the hybrid guard removed, highest first.
    pub removed_layers: Vec<usize>,
    pub params_before: usize,
    /// Parameters as a factorized checkpoint stores them (`params_after_factorized` too).
    pub params_after: usize,
    pub params_after_factorized: usize,
    /// Parameters with every compressed projection multiplied out.
    pub params_after_merged: usize,
    /// Of the two counts above, the one of the checkpoint as written.
    pub params_in_output: usize,
    pub output_form: OutputForm,
    /// Recovery training after the compression (`--recovery`).
    pub recovery: Option<TrainReport>,
    pub timings_s: Timings,
    /// Set when the checkpoint is written ([`CompressReport::saved`]).
    pub peak_rss_bytes: Option<u64>,
    pub weights_bytes: u64,
}

/// The model as loaded, before compression.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub num_layers: usize,
    pub params: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct CalibrationSummary {
    pub source: String,
    pub windows: usize,
    pub seq_len: usize,
    pub batch_size: usize,
}

impl CalibrationSummary {
    pub fn new(calib: &Calibration, batch_size: usize) -> Self {
        Self {
            source: calib.source.clone(),
            windows: calib.windows.len(),
            seq_len: calib.seq_len,
            batch_size,
        }
    }
}

/// Seconds of each stage of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub calibration_s: f64,
    pub block_influence_s: f64,
    pub compress_s: f64,
    pub recovery_s: f64,
    pub save_s: f64,
    pub total_s: f64,
}

impl CompressReport {
    /// Records the written checkpoint: bytes of weights, seconds to save it and for the whole
    /// run, and the peak memory.
    pub fn saved(&mut self, weights_bytes: u64, save_s: f64, total_s: f64) {
        self.weights_bytes = weights_bytes;
        self.timings_s.save_s = save_s;
        self.timings_s.total_s = total_s;
        self.peak_rss_bytes = runtime::peak_rss_bytes();
    }

    /// The JSON of grasp_report.json. Through a `serde_json::Value`, whose maps sort their
    /// keys, so that the file lists them in the order it always has.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

fn by_name<S: Serializer>(modules: &[ModuleReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(modules.iter().map(|m| (&m.name, m)))
}

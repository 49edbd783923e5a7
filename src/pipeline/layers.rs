//! Block Influence as every run takes it: in batches large enough to be cheap, with a progress
//! bar, and the layers chosen from it.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::data::calibration::Calibration;
use crate::grasp::attribution::InputCollector;
use crate::grasp::influence::{block_influence, BlockInfluence};
use crate::model::Llama;

/// How Block Influence is scored.
#[derive(Clone, Copy, Debug)]
pub struct ScoreOptions {
    /// Windows per gradient-pass batch: the block-influence pass takes a whole number of them
    /// at a time, so that the layer inputs it keeps split into the gradient passes' batches.
    pub batch_size: usize,
    /// Angular distance on the last token between h_i and h_{i+span} instead of per-layer BI.
    pub angular: bool,
    /// Layers per angular block (1 in cosine mode).
    pub span: usize,
}

/// Windows the block-influence pass takes at a time, at least: it is a forward pass without a
/// graph, so a batch costs little memory, and on 2 CPU cores 4 windows of 512 tokens go 25%
/// faster than 1 (larger GEMMs, fewer synchronisations).
const BI_MIN_WINDOWS: usize = 4;

/// Block Influence with a progress bar; `inputs` keeps the layer inputs it collects.
pub fn score_layers(
    model: &Llama,
    calib: &Calibration,
    opts: &ScoreOptions,
    inputs: Option<&mut InputCollector>,
) -> Result<BlockInfluence> {
    let span = if opts.angular { opts.span } else { 1 };
    let bar = crate::progress::bar(calib.windows.len() as u64, "block influence", "windows");
    let batch = opts.batch_size * BI_MIN_WINDOWS.div_ceil(opts.batch_size.max(1));
    let bi = block_influence(model, calib, batch, opts.angular, span, &bar, inputs)?;
    bar.finish_and_clear();
    Ok(bi)
}

/// Which layers a compression takes.
#[derive(Clone, Debug)]
pub enum LayerChoice {
    /// The `n` layers of lowest Block Influence (in angular mode the best block of `n`).
    Lowest(usize),
    /// Exactly these layers.
    Given(Vec<usize>),
}

impl LayerChoice {
    /// The layers chosen from `bi`, ascending and distinct.
    pub fn choose(&self, bi: &BlockInfluence) -> Vec<usize> {
        match self {
            LayerChoice::Lowest(n) => bi.redundant_layers(*n),
            LayerChoice::Given(layers) => {
                let mut layers = layers.clone();
                layers.sort_unstable();
                layers.dedup();
                layers
            }
        }
    }

    /// The layers an angular block spans: the count, or 1 for given layers.
    pub fn span(&self) -> usize {
        match self {
            LayerChoice::Lowest(n) => *n,
            LayerChoice::Given(_) => 1,
        }
    }
}

/// What `grasp layers --json` writes: the scores and the layers chosen from them.
#[derive(Clone, Debug, Serialize)]
pub struct LayersReport {
    pub model: PathBuf,
    pub bi: Vec<f64>,
    pub angular: bool,
    pub span: usize,
    pub windows: usize,
    pub seq_len: usize,
    pub calibration_source: String,
    pub chosen_layers: Vec<usize>,
    /// The `--config` file the flags came from, if any.
    pub config: Option<PathBuf>,
}

impl LayersReport {
    pub fn new(model: PathBuf, bi: &BlockInfluence, calib: &Calibration, chosen: &[usize]) -> Self {
        Self {
            model,
            bi: bi.scores.clone(),
            angular: bi.angular,
            span: bi.span,
            windows: bi.windows,
            seq_len: calib.seq_len,
            calibration_source: calib.source.clone(),
            chosen_layers: chosen.to_vec(),
            config: None,
        }
    }

    /// The JSON written, through a `serde_json::Value` whose maps sort their keys, as the file
    /// has always listed them.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

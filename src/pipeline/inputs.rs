//! Where the chosen layers' inputs live between the pass that computes them and each layer's
//! gradient passes: the one decision, made for `grasp compress` and `grasp frontier` alike.
//!
//! The block-influence pass computes every layer's input. On the CPU, where a forward pass is
//! dear, it keeps the inputs of every candidate layer (in memory or on disk as the cache
//! allows) so that no second pass is needed once the layers are chosen. On a GPU that pass is
//! cheaper than moving every layer's inputs to the host, so there only the chosen layers'
//! inputs are collected, by a pass of their own; where they fit nowhere, each layer's inputs
//! are recomputed just before its gradient passes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::layers::{score_layers, ScoreOptions};
use crate::data::calibration::Calibration;
use crate::grasp::attribution::{Batches, InputCollector, LayerInputs};
use crate::grasp::influence::BlockInfluence;
use crate::model::Llama;
use crate::runtime;

/// Where layer inputs wait: in memory up to `memory_budget` bytes, else in files under
/// `disk_dir` when its file system has room, else nowhere (recomputed layer by layer).
#[derive(Clone, Debug)]
pub struct InputCache {
    pub memory_budget: usize,
    pub disk_dir: Option<PathBuf>,
}

/// Where the layer inputs of a run were kept, as its report says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// The method takes no gradient passes.
    None,
    /// All chosen layers' inputs in memory, from one pass.
    Memory,
    /// In files under the cache's directory, from one pass.
    Disk,
    /// One pass per layer, just before its gradient passes.
    Recomputed,
}

/// Room left on the disk beyond the layer inputs, so that the output still fits.
const DISK_MARGIN: u64 = 1 << 30;

impl InputCache {
    /// Where layer inputs of `bytes` in all go: memory, disk or recomputed.
    pub fn place(&self, bytes: usize) -> Placement {
        if bytes <= self.memory_budget {
            return Placement::Memory;
        }
        match self.disk_dir.as_deref() {
            Some(dir)
                if runtime::free_disk_bytes(dir)
                    .is_some_and(|free| free >= bytes as u64 + DISK_MARGIN) =>
            {
                Placement::Disk
            }
            _ => Placement::Recomputed,
        }
    }

    /// The directory for [`Placement::Disk`], none for memory.
    fn dir_for(&self, placement: Placement) -> Option<&Path> {
        match placement {
            Placement::Disk => self.disk_dir.as_deref(),
            _ => None,
        }
    }
}

/// The chosen layers' inputs and where they are; empty when they are recomputed.
pub struct KeptInputs {
    pub placement: Placement,
    pub inputs: LayerInputs,
}

/// Block Influence and the layers chosen from it, with the inputs their gradient passes need.
pub struct Scored {
    pub bi: BlockInfluence,
    pub chosen: Vec<usize>,
    pub inputs: KeptInputs,
}

/// Scores every layer's Block Influence, picks the layers with `choose`, and keeps the inputs
/// of the chosen ones under `cache` (none when `cache` is `None`: no gradient passes).
/// `candidates` are the layers `choose` may pick; the block-influence pass keeps theirs when
/// they all fit.
pub fn score_and_keep(
    model: &Llama,
    calib: &Calibration,
    batches: &Batches,
    score: &ScoreOptions,
    candidates: &[usize],
    cache: Option<&InputCache>,
    choose: impl FnOnce(&BlockInfluence) -> Vec<usize>,
) -> Result<Scored> {
    let per_layer = LayerInputs::bytes_per_layer(model, batches);
    let mut during_bi = cache.and_then(|cache| {
        let placement = match cache.place(candidates.len() * per_layer) {
            Placement::Disk if !model.device().is_cpu() => return None,
            Placement::Recomputed => return None,
            placement => placement,
        };
        let collector = InputCollector::new(candidates, cache.dir_for(placement), score.batch_size);
        Some((placement, collector))
    });
    let bi = score_layers(model, calib, score, during_bi.as_mut().map(|(_, c)| c))?;
    let chosen = choose(&bi);
    let inputs = match (cache, during_bi) {
        (None, _) => KeptInputs {
            placement: Placement::None,
            inputs: LayerInputs::default(),
        },
        (Some(_), Some((placement, collector))) => {
            let mut inputs = collector.finish(model.device());
            inputs.retain(&chosen);
            KeptInputs { placement, inputs }
        }
        (Some(cache), None) => {
            let placement = cache.place(chosen.len() * per_layer);
            let layers: &[usize] = match placement {
                Placement::Recomputed => &[],
                _ => &chosen,
            };
            let inputs = LayerInputs::collect(model, batches, layers, cache.dir_for(placement))?;
            KeptInputs { placement, inputs }
        }
    };
    Ok(Scored { bi, chosen, inputs })
}

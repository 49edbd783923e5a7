//! `grasp layers`: Block Influence of every layer and the redundant ones.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{CalibrationArgs, ModelArgs};
use crate::data::calibration::Calibration;
use crate::grasp::attribution::InputCollector;
use crate::grasp::influence::{block_influence, BlockInfluence};
use crate::io::load::resolve;
use crate::io::out_path::check_output_file;
use crate::io::save::write_json;
use crate::model::Llama;
use crate::progress;

#[derive(Args, Debug)]
pub struct LayersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// How many redundant layers to pick.
    #[arg(long, default_value_t = 1)]
    pub num_prune_layers: usize,
    /// Angular distance on the last token between h_i and h_{i+N}; picks a contiguous block.
    #[arg(long)]
    pub angular: bool,
    /// Also write the scores as JSON ({"bi": [...], "chosen_layers": [...], ...}).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

pub fn run(args: LayersArgs) -> Result<()> {
    args.calibration.check()?;
    let files = resolve(&args.model.model, &args.model.revision)?;
    if let Some(path) = &args.json {
        check_output_file("--json", path, &files.paths())?;
    }
    let loaded = args.model.load(files)?;
    let n_layers = loaded.model.num_layers();
    check_num_prune_layers(args.num_prune_layers, n_layers)?;
    let calib = args.calibration.load(
        &loaded.tokenizer,
        loaded.model.config.max_position_embeddings,
    )?;
    let bi = score_layers(
        &loaded.model,
        &calib,
        args.calibration.batch_size,
        args.angular,
        args.num_prune_layers,
        None,
    )?;
    let chosen = bi.redundant_layers(args.num_prune_layers);
    print_table(&bi, &chosen);
    println!("redundant layers: {chosen:?}");
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": loaded.files.dir,
            "bi": bi.scores,
            "angular": bi.angular,
            "span": bi.span,
            "windows": bi.windows,
            "seq_len": calib.seq_len,
            "calibration_source": calib.source,
            "chosen_layers": chosen,
            "config": args.config,
        });
        write_json(path, &json)?;
    }
    Ok(())
}

/// Windows the block-influence pass takes at a time, at least: it is a forward pass without a
/// graph, so a batch costs little memory, and on 2 CPU cores 4 windows of 512 tokens go 25%
/// faster than 1 (larger GEMMs, fewer synchronisations). A whole number of `batch_size`
/// batches, so that the layer inputs it keeps split into the gradient passes' batches.
const BI_MIN_WINDOWS: usize = 4;

/// Block Influence with a progress bar; in angular mode over blocks of `num_prune_layers`.
pub fn score_layers(
    model: &Llama,
    calib: &Calibration,
    batch_size: usize,
    angular: bool,
    num_prune_layers: usize,
    inputs: Option<&mut InputCollector>,
) -> Result<BlockInfluence> {
    let span = if angular { num_prune_layers } else { 1 };
    let bar = progress::bar(calib.windows.len() as u64, "block influence", "windows");
    let batch = batch_size * BI_MIN_WINDOWS.div_ceil(batch_size.max(1));
    let bi = block_influence(model, calib, batch, angular, span, &bar, inputs)?;
    bar.finish_and_clear();
    Ok(bi)
}

pub fn check_num_prune_layers(n: usize, n_layers: usize) -> Result<()> {
    if n < 1 || n >= n_layers {
        bail!(
            "--num-prune-layers must be between 1 and {} for a model of {n_layers} layers, got {n}",
            n_layers - 1
        );
    }
    Ok(())
}

/// One row per layer (or angular block) with a bar proportional to its score.
pub fn print_table(bi: &BlockInfluence, chosen: &[usize]) {
    let max = bi.scores.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
    let label = if bi.angular { "block" } else { "layer" };
    println!(
        "{label:>7}  {:>10}  ",
        if bi.angular { "angular" } else { "BI" }
    );
    for (i, s) in bi.scores.iter().enumerate() {
        let name = if bi.angular && bi.span > 1 {
            format!("{i}-{}", i + bi.span - 1)
        } else {
            i.to_string()
        };
        let bar = "#".repeat(((s / max) * 40.0).round() as usize);
        let redundant = if bi.angular {
            chosen.first() == Some(&i)
        } else {
            chosen.contains(&i)
        };
        let mark = if redundant { "  <- redundant" } else { "" };
        println!("{name:>7}  {s:>10.6}  {bar}{mark}");
    }
}

//! `grasp layers`: Block Influence of every layer and the redundant ones.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{CalibrationArgs, ModelArgs};
use crate::grasp::influence::BlockInfluence;
use crate::io::load::resolve;
use crate::io::out_path::check_output_file;
use crate::io::save::write_json;
use crate::pipeline::layers::{score_layers, LayerChoice, LayersReport, ScoreOptions};

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
    let score = ScoreOptions {
        batch_size: args.calibration.batch_size,
        angular: args.angular,
        span: args.num_prune_layers,
    };
    let bi = score_layers(&loaded.model, &calib, &score, None)?;
    let chosen = bi.redundant_layers(args.num_prune_layers);
    print_table(&bi, &chosen);
    println!("redundant layers: {chosen:?}");
    if let Some(path) = &args.json {
        let mut report = LayersReport::new(loaded.files.dir.clone(), &bi, &calib, &chosen);
        report.config = args.config.clone();
        write_json(path, &report.to_json()?)?;
    }
    Ok(())
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

/// The layers --num-prune-layers or --layers choose, checked against the model's `n_layers`.
pub fn layer_choice(
    num_prune_layers: Option<usize>,
    layers: Option<&[usize]>,
    n_layers: usize,
) -> Result<LayerChoice> {
    match (layers, num_prune_layers) {
        (Some(layers), _) => {
            if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
                bail!(
                    "--layers: layer {bad} is out of range (the model has {n_layers} layers: \
                     0..{})",
                    n_layers - 1
                );
            }
            Ok(LayerChoice::Given(layers.to_vec()))
        }
        (None, Some(n)) => {
            check_num_prune_layers(n, n_layers)?;
            Ok(LayerChoice::Lowest(n))
        }
        (None, None) => bail!("give --num-prune-layers or --layers"),
    }
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

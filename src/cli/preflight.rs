//! What a run needs, checked before the model is loaded: that its outputs can be written and
//! do not touch its inputs, that its flags make sense together, that its data is there. A
//! mistake costs a second, not the length of a run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::ValueEnum;

use super::common::{Log, RunArgs};
use super::compress::CompressArgs;
use crate::grasp::compress::Method;
use crate::io::load::{resolve, ModelFiles};
use crate::io::out_path::{check_output_dir, check_output_file, resolved};
use crate::io::staging::clean_stale;

/// A `grasp compress` run, checked: its model's files, its output directory and its log.
pub struct CheckedRun {
    pub files: ModelFiles,
    pub out: PathBuf,
    pub log: Log,
}

/// Checks a `grasp compress` run.
pub fn compress(args: &CompressArgs) -> Result<CheckedRun> {
    let empty = |list: &[String]| list.iter().all(|t| t.trim().is_empty());
    if args.method != Method::Remove
        && empty(&args.projections.mlp_targets)
        && empty(&args.projections.attn_targets)
    {
        bail!(
            "--mlp-targets and --attn-targets are both empty: nothing would be compressed \
             (--method remove deletes whole layers)"
        );
    }
    args.calibration.check()?;
    let files = resolve(&args.model.model, &args.model.revision)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(args, &files.name));
    let log = outputs(&out, &args.run, &files, &[])?;
    Ok(CheckedRun { files, out, log })
}

/// Checks the outputs of a run that writes `out` from `files`: the directory (see
/// [`output_dir`]), then `--log-file` and the `also` files (flag, path), none of which may be
/// an input or lie inside `out`; opens the log and reports the clean-up in it.
pub fn outputs(
    out: &Path,
    run: &RunArgs,
    files: &ModelFiles,
    also: &[(&str, Option<&Path>)],
) -> Result<Log> {
    let cleaned = output_dir(out, run.force, files)?;
    let inputs = files.paths();
    let named = also
        .iter()
        .copied()
        .chain([("--log-file", run.log_file.as_deref())]);
    for (flag, path) in named {
        let Some(path) = path else { continue };
        check_output_file(flag, path, &inputs)?;
        if resolved(path)?.starts_with(resolved(out)?) {
            bail!(
                "{flag} {} is inside --out {}, which is replaced when the run ends",
                path.display(),
                out.display()
            );
        }
    }
    let mut log = Log::new(run.log_file.as_deref(), run.verbose)?;
    for line in cleaned {
        log.info(line);
    }
    Ok(log)
}

/// out/<model>-<method>-<layers>-<rank rule>, when --out is not given.
fn default_out(args: &CompressArgs, model_name: &str) -> PathBuf {
    let rule = match args.threshold_ratio {
        Some(t) => format!("thr{t}"),
        None => format!("r{}", args.ratio),
    };
    let layers = match (&args.layers, args.num_prune_layers) {
        (Some(l), _) => format!(
            "l{}",
            l.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("-")
        ),
        (None, Some(n)) => format!("n{n}"),
        (None, None) => String::new(),
    };
    let name = match args.method {
        Method::Grasp => format!(
            "{model_name}-grasp-{}-{layers}-{rule}",
            args.projections
                .metric
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        ),
        Method::Svd => format!("{model_name}-svd-{layers}-{rule}"),
        Method::Remove => format!("{model_name}-remove-{layers}"),
        Method::Hybrid => format!("{model_name}-hybrid-{layers}-{rule}"),
    };
    Path::new("out").join(name)
}

/// Checks the output directory `out` of a run over `files`: first the scratch left by killed
/// runs is cleaned (so that an old output one had moved aside is back before it is checked;
/// the lines returned say what was done), then `out` is refused where it exists without
/// `force` or touches an input.
pub fn output_dir(out: &Path, force: bool, files: &ModelFiles) -> Result<Vec<String>> {
    let cleaned = clean_stale(out)?;
    check_output_dir("--out", out, force, &files.paths())?;
    Ok(cleaned)
}

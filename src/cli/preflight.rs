//! What a run needs, checked before the model is loaded: that its outputs can be written and
//! do not touch its inputs, that its flags make sense together, that its data is there. A
//! mistake costs a second, not the length of a run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::common::Log;
use super::compress::CompressArgs;
use crate::grasp::compress::Method;
use crate::io::load::{resolve, ModelFiles};
use crate::io::out_path::{check_output_dir, check_output_file, resolved};
use crate::io::staging::clean_stale;

/// A `grasp compress` run, checked: its model's files, its output directory and its log.
pub struct CompressPlan {
    pub files: ModelFiles,
    pub out: PathBuf,
    pub log: Log,
}

/// Checks a `grasp compress` run; `default_out` names the output from the model's name when
/// --out is not given.
pub fn compress(
    args: &CompressArgs,
    default_out: impl FnOnce(&str) -> PathBuf,
) -> Result<CompressPlan> {
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
    let out = args.out.clone().unwrap_or_else(|| default_out(&files.name));
    let cleaned = output_dir(&out, args.force, &files)?;
    let inputs = files.paths();
    if let Some(log_file) = &args.log_file {
        check_output_file("--log-file", log_file, &inputs)?;
        if resolved(log_file)?.starts_with(resolved(&out)?) {
            bail!(
                "--log-file {} is inside --out {}, which is replaced when the run ends",
                log_file.display(),
                out.display()
            );
        }
    }
    let mut log = Log::new(args.log_file.as_deref(), args.verbose)?;
    for line in cleaned {
        log.info(line);
    }
    Ok(CompressPlan { files, out, log })
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

//! Flags shared by several subcommands.

use clap::Args;

use crate::io::load::{load_files, Loaded, ModelFiles};
use crate::model::llama::{Block, Projection};
use crate::runtime;

/// Which model to load and where to run it.
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct ModelArgs {
    /// Local Hugging Face directory (config.json, model.safetensors or a sharded index,
    /// tokenizer.json) or a hub id such as `HuggingFaceTB/SmolLM2-135M` (uses HF_HOME and
    /// honours HF_HUB_OFFLINE=1).
    #[arg(long, env = "GRASP_MODEL")]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16 (default: f32 on the CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl ModelArgs {
    /// Loads the already-resolved `files` of `--model` on `--device` in `--dtype`.
    pub fn load(&self, files: ModelFiles) -> anyhow::Result<Loaded> {
        let device = runtime::parse_device(&self.device)?;
        let dtype = self
            .dtype
            .as_deref()
            .map(runtime::parse_dtype)
            .transpose()?;
        load_files(files, &device, dtype)
    }
}

/// Which calibration text to run through the model.
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct CalibrationArgs {
    /// Calibration corpus: wikitext2, ptb, c4, or a local .txt/.raw/.jsonl file.
    #[arg(long, default_value = "wikitext2")]
    pub dataset: String,
    /// Directory with the local datasets (default: ../shared/data when it exists).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Number of calibration windows.
    #[arg(long, default_value_t = 256, value_parser = unsigned::<usize>)]
    pub num_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512, value_parser = unsigned::<usize>)]
    pub seq_len: usize,
    /// Windows per forward/backward pass (the loss of each batch is its mean token loss).
    #[arg(long, default_value_t = 1, value_parser = unsigned::<usize>)]
    pub batch_size: usize,
    /// Seed for drawing windows with --sampling random.
    #[arg(long, default_value_t = 42, value_parser = unsigned::<u64>)]
    pub seed: u64,
    /// random: draw windows with --seed; sequential: the first windows in order.
    #[arg(long, value_enum, default_value = "random")]
    pub sampling: crate::data::calibration::Sampling,
    /// Score position t against token t+N in the calibration loss. 1 is the ordinary
    /// next-token loss; 2 reproduces the official GRASP loader, whose labels are shifted once
    /// by the data collator and again by the model (a paper-reproduction switch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub label_shift: u64,
}

impl CalibrationArgs {
    /// Checks what can be checked before the model is loaded: counts, corpus, data directory.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        for (flag, n) in [
            ("--batch-size", self.batch_size),
            ("--num-samples", self.num_samples),
            ("--seq-len", self.seq_len),
        ] {
            if n == 0 {
                anyhow::bail!("{flag} must be at least 1");
            }
        }
        crate::data::corpus::Corpus::parse(&self.dataset)
            .with_context(|| format!("--dataset {}", self.dataset))?;
        if let Some(dir) = self.data_dir.as_ref().filter(|d| !d.is_dir()) {
            anyhow::bail!("--data-dir {}: no such directory", dir.display());
        }
        Ok(())
    }

    /// Checks the flags against the model (`max_positions`) before tokenizing anything.
    pub fn load(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        max_positions: usize,
    ) -> anyhow::Result<crate::data::calibration::Calibration> {
        use crate::data::calibration::{load_calibration, CalibrationSpec};
        self.check()?;
        if self.seq_len > max_positions {
            anyhow::bail!(
                "--seq-len {} exceeds the model's max_position_embeddings {max_positions}",
                self.seq_len
            );
        }
        let spec = CalibrationSpec {
            corpus: crate::data::corpus::Corpus::parse(&self.dataset)?,
            data_dir: self.data_dir.clone(),
            num_samples: self.num_samples,
            seq_len: self.seq_len,
            seed: self.seed,
            sampling: self.sampling,
        };
        load_calibration(&spec, tokenizer)
    }

    /// `calib` as the gradient passes take it: batches on `device`, with --label-shift.
    pub fn batches(
        &self,
        calib: &crate::data::calibration::Calibration,
        device: &candle_core::Device,
    ) -> anyhow::Result<crate::grasp::attribution::Batches> {
        let mut batches = crate::grasp::attribution::Batches::new(calib, self.batch_size, device)?;
        batches.label_shift = self.label_shift as usize;
        Ok(batches)
    }
}

/// Flags of a run that writes an output directory and logs as it goes (compress, finetune).
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct RunArgs {
    /// Replace an existing output directory (never the input model).
    #[arg(long)]
    pub force: bool,
    /// Copy the log lines to this file.
    #[arg(long)]
    pub log_file: Option<std::path::PathBuf>,
    /// More log lines: every module's ranks (compress), every training step (finetune).
    #[arg(long)]
    pub verbose: bool,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<std::path::PathBuf>,
}

/// A count or a seed. Negative numbers reach the parser (`allow_negative_numbers`, so that
/// `--ratio -0.1` is refused by its range check rather than taken for a flag); for these
/// flags the message says what is allowed instead of "invalid digit found in string".
pub fn unsigned<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    if text.trim_start().starts_with('-') {
        return Err("must be 0 or more".into());
    }
    text.parse().map_err(|e: T::Err| e.to_string())
}

/// Lines for the user on stderr, copied to --log-file when given.
pub struct Log {
    file: Option<std::fs::File>,
    verbose: bool,
}

impl Log {
    pub fn new(path: Option<&std::path::Path>, verbose: bool) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = path
            .map(|p| {
                std::fs::File::create(p)
                    .with_context(|| format!("--log-file {}: cannot create it", p.display()))
            })
            .transpose()?;
        Ok(Self { file, verbose })
    }

    pub fn info(&mut self, line: impl AsRef<str>) {
        self.write(line.as_ref(), true);
    }

    /// Shown only with --verbose; always written to the log file.
    pub fn detail(&mut self, line: impl AsRef<str>) {
        self.write(line.as_ref(), self.verbose);
    }

    fn write(&mut self, line: &str, show: bool) {
        use std::io::Write;
        if show {
            eprintln!("{line}");
        }
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// How the chosen layers' projections are compressed (compress and frontier).
#[derive(Args, Clone, Debug, serde::Serialize)]
pub struct ProjectionArgs {
    /// Importance of a singular value: taylor |g·S| or gradient |g|.
    #[arg(long, value_enum, default_value = "taylor")]
    pub metric: crate::grasp::selection::Metric,
    /// MLP projections to compress (gate_proj, up_proj, down_proj); empty for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gate_proj,up_proj,down_proj"
    )]
    pub mlp_targets: Vec<String>,
    /// Attention projections to compress (q_proj, k_proj, v_proj, o_proj); empty for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj"
    )]
    pub attn_targets: Vec<String>,
    /// Precision of the SVD. f64 by default: in f32 the singular vectors of close singular
    /// values are only accurate to ~1e-4, which moves their gradients by as much.
    #[arg(long, value_enum, default_value = "f64")]
    pub svd_dtype: crate::grasp::svd::SvdDtype,
    /// Calibration windows the hybrid guard compares its two losses on, the first ones drawn
    /// (0: all). Both losses are taken on the same windows; a subset makes the guard's cost a
    /// small share of the gradient passes, and is most likely to flip a choice whose two losses
    /// are close, where either choice is about as good.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = unsigned::<usize>)]
    pub guard_windows: usize,
    /// Memory for the chosen layers' inputs between the passes, in MiB; beyond it they go to
    /// files beside the output while the run lasts.
    #[arg(
        long,
        value_name = "MB",
        env = "GRASP_INPUT_CACHE_MB",
        default_value_t = 256
    )]
    pub input_cache_mb: usize,
}

impl ProjectionArgs {
    /// The compression these flags describe, by `method` with `rule`.
    pub fn options(
        &self,
        method: crate::grasp::compress::Method,
        rule: crate::grasp::selection::RankRule,
    ) -> anyhow::Result<crate::grasp::compress::CompressOptions> {
        let (mlp_targets, attn_targets) = self.targets()?;
        Ok(crate::grasp::compress::CompressOptions {
            method,
            metric: self.metric,
            rule,
            mlp_targets,
            attn_targets,
            svd_dtype: self.svd_dtype,
            guard_windows: self.guard_windows,
        })
    }

    /// `--input-cache-mb` in bytes.
    pub fn input_cache_bytes(&self) -> usize {
        self.input_cache_mb.saturating_mul(1 << 20)
    }

    /// The MLP and attention targets, parsed.
    pub fn targets(&self) -> anyhow::Result<(Vec<Projection>, Vec<Projection>)> {
        Ok((
            parse_targets(&self.mlp_targets, Block::Mlp, "--mlp-targets")?,
            parse_targets(&self.attn_targets, Block::Attention, "--attn-targets")?,
        ))
    }
}

fn parse_targets(names: &[String], block: Block, flag: &str) -> anyhow::Result<Vec<Projection>> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| match Projection::parse(n) {
            Some(p) if p.block() == block => Ok(p),
            _ => anyhow::bail!("{flag}: unknown target type `{n}`"),
        })
        .collect()
}

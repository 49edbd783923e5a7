//! `grasp export`: a dense Hugging Face checkpoint to a llama.cpp GGUF file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};

use crate::io::gguf_export::{export_gguf, GgufType};
use crate::io::load::{load_files, resolve};

/// Flags of `grasp export`.
#[derive(Args, Debug)]
#[command(
    after_help = "Writes one GGUF file llama.cpp runs: its tensor names and hyperparameter \
    keys (architecture llama, or qwen2 for Qwen2 models), q/k in its rotary layout and the \
    tokenizer embedded. Dense checkpoints only: the input itself, a `grasp compress --merge` \
    output or a `--method remove` output; a factorized output is refused.\n\n\
    Example: grasp export --model out/smollm2-merged --gguf smollm2-merged.q8_0.gguf --type q8_0"
)]
pub struct ExportArgs {
    /// Local Hugging Face directory or hub id of a dense Llama, Mistral or Qwen2 checkpoint.
    #[arg(long)]
    pub model: String,
    /// Hub revision when --model is a hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// The GGUF file to write; it must not exist unless --force is given.
    #[arg(long, value_name = "FILE")]
    pub gguf: PathBuf,
    /// Storage of the weight matrices (norms and biases stay f32). q8_0: blocks of 32 int8
    /// with an f16 scale; a matrix whose rows do not split into blocks of 32 is stored f16.
    #[arg(long = "type", value_name = "TYPE", value_enum, default_value_t = ExportType::F16)]
    pub ty: ExportType,
    /// Replace an existing --gguf file (only after the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<ExportType> for GgufType {
    fn from(ty: ExportType) -> Self {
        match ty {
            ExportType::F32 => GgufType::F32,
            ExportType::F16 => GgufType::F16,
            ExportType::Bf16 => GgufType::Bf16,
            ExportType::Q8_0 => GgufType::Q8_0,
        }
    }
}

pub fn run(args: ExportArgs) -> Result<()> {
    let start = Instant::now();
    let loaded = load_files(
        resolve(&args.model, &args.revision)?,
        &Device::Cpu,
        Some(DType::F32),
    )?;
    let summary = export_gguf(&loaded, &args.gguf, args.ty.into(), args.force)?;
    println!(
        "exported {} -> {} ({}, {:?}): {} tensors, {:.2}M params, {:.1} MB, {:.1} s",
        loaded.files.dir.display(),
        summary.out.display(),
        summary.arch,
        args.ty,
        summary.tensors,
        summary.params as f64 / 1e6,
        summary.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64(),
    );
    if !summary.f16_fallbacks.is_empty() {
        println!(
            "stored in f16 (rows not a multiple of 32): {}",
            summary.f16_fallbacks.join(", ")
        );
    }
    Ok(())
}

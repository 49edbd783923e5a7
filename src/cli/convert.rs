//! `grasp convert`: a llama.cpp GGUF file to a Hugging Face checkpoint directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::DType;
use clap::{Args, ValueEnum};

use crate::io::convert::convert_gguf;

/// Flags of `grasp convert`.
#[derive(Args, Debug)]
#[command(
    after_help = "Writes model.safetensors (dequantized, with transformers' tensor names \
    and q/k layout), config.json, tokenizer.json and tokenizer_config.json: the directory \
    transformers would make from the same file, usable as --model DIR.\n\n\
    Example: grasp convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m"
)]
pub struct ConvertArgs {
    /// GGUF file of a Llama-architecture model (v1-v3; tensors in F32, F16, BF16, Q8_0,
    /// Q4_0, Q4_1, Q5_0, Q5_1 or K-quants are dequantized). Never modified.
    #[arg(long, value_name = "FILE")]
    pub gguf: PathBuf,
    /// Output directory; it must not exist unless --force is given.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Precision of the written weights.
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    pub dtype: WeightDtype,
    /// Replace an existing --out directory (only after the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

/// Floating-point types for the converted weights.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl From<WeightDtype> for DType {
    fn from(dtype: WeightDtype) -> Self {
        match dtype {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
        }
    }
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let start = Instant::now();
    let dtype = DType::from(args.dtype);
    for line in crate::io::staging::clean_stale(&args.out)? {
        eprintln!("{line}");
    }
    let summary = convert_gguf(&args.gguf, &args.out, dtype, args.force)?;
    let source_types: Vec<String> = summary
        .source_types
        .iter()
        .map(|(ggml_type, count)| format!("{count}×{ggml_type}"))
        .collect();
    println!(
        "converted {} ({}) -> {}: {} tensors, {:.2}M params in {}, vocab {}{}, {:.1} s",
        args.gguf.display(),
        source_types.join(", "),
        summary.out.display(),
        summary.tensors,
        summary.params as f64 / 1e6,
        crate::runtime::dtype_name(dtype),
        summary.vocab_size,
        if summary.tied_embeddings {
            ", tied embeddings"
        } else {
            ""
        },
        start.elapsed().as_secs_f64(),
    );
    Ok(())
}

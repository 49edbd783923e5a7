//! The `grasp` command line: one subcommand per stage of the pipeline.

pub mod common;
mod compress;
mod config_file;
mod convert;
mod eval;
mod export;
mod finetune;
mod frontier;
mod layers;
mod preflight;
mod summary;
mod value_enums;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "grasp",
    version,
    args_override_self = true,
    about = "Compress Llama-family models with GRASP: keep the singular values that matter",
    long_about = "Compress Llama-family models with GRASP (Gradient-based Retention of Adaptive \
                  Singular Parameters, arXiv 2501.00339).\n\n\
                  Pipeline: `grasp layers` scores each decoder layer's Block Influence, \
                  `grasp compress` replaces the least influential layers' projections by the \
                  singular values whose gradient attribution is largest, `grasp eval` measures \
                  perplexity and zero-shot accuracy, `grasp convert` turns a GGUF file into \
                  a Hugging Face checkpoint and `grasp export` a dense checkpoint into a GGUF \
                  file."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every decoder layer's Block Influence and pick the redundant ones.
    #[command(allow_negative_numbers = true)]
    Layers(layers::LayersArgs),
    /// Compress the redundant layers with GRASP (or a baseline) and write a checkpoint.
    #[command(allow_negative_numbers = true)]
    Compress(Box<compress::CompressArgs>),
    /// Perplexity and zero-shot accuracy of a (compressed) checkpoint.
    #[command(allow_negative_numbers = true)]
    Eval(Box<eval::EvalArgs>),
    /// Sweep removal, SVD, GRASP and hybrid over layer counts and ratios: the best model for
    /// its size, as a table and a plot.
    Frontier(Box<frontier::FrontierArgs>),
    /// Recovery training (GRASP*): train the compressed layers on instruction data.
    #[command(allow_negative_numbers = true)]
    Finetune(Box<finetune::FinetuneArgs>),
    /// Convert a GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1/...) into a Hugging Face directory.
    #[command(allow_negative_numbers = true)]
    Convert(convert::ConvertArgs),
    /// Export a dense checkpoint (input, merged or removed output) as a llama.cpp GGUF file.
    Export(export::ExportArgs),
}

pub fn main() -> anyhow::Result<()> {
    let args = config_file::expand(std::env::args_os().collect(), &Cli::command())?;
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Layers(args) => layers::run(args),
        Command::Compress(args) => compress::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Frontier(args) => frontier::run(*args),
        Command::Finetune(args) => finetune::run(*args),
        Command::Convert(args) => convert::run(args),
        Command::Export(args) => export::run(args),
    }
}

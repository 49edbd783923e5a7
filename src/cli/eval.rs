//! `grasp eval`: perplexity and lm-evaluation-harness-style zero-shot accuracy of a checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::common::{unsigned, ModelArgs};
use crate::data::corpus::{default_data_dir, Corpus};
use crate::data::tasks::{task_file, Task};
use crate::data::Split;
use crate::eval::perplexity::{perplexity, PerplexityResult, PerplexitySpec};
use crate::eval::tasks::{averages, markdown_table, run_task, Averages, TaskOptions, TaskResult};
use crate::io::hub::Hub;
use crate::io::load::{resolve, Loaded};
use crate::io::out_path::check_output_file;
use crate::io::staging::write_json;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Zero-shot tasks, comma-separated: arc_easy (arc_e), arc_challenge (arc_c), piqa,
    /// hellaswag, winogrande, openbookqa, boolq, mathqa, or `all`.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Perplexity corpora, comma-separated: wikitext2, ptb, c4 or a text/JSONL file.
    #[arg(long)]
    pub ppl: Option<String>,
    /// Perplexity window length in tokens (capped by the model's maximum positions).
    #[arg(long, default_value_t = 2048, value_parser = unsigned::<usize>)]
    pub ppl_seq_len: usize,
    /// Windows per forward pass for perplexity (each --ppl-seq-len tokens long).
    #[arg(long, default_value_t = 1, value_parser = unsigned::<usize>)]
    pub ppl_batch_size: usize,
    /// Only the first N docs of each task and the first N windows of each corpus.
    #[arg(long, value_parser = unsigned::<usize>)]
    pub limit: Option<usize>,
    /// Task contexts per forward pass, each packed in one row with all of its choices.
    #[arg(long, default_value_t = 16, value_parser = unsigned::<usize>)]
    pub batch_size: usize,
    /// Examples from the training split before each doc (lm-eval's sampler, seed 1234).
    #[arg(long, default_value_t = 0, value_parser = unsigned::<usize>)]
    pub num_fewshot: usize,
    /// Directory laid out like ../shared/data (default: ../shared/data when it exists).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

/// Everything one `grasp eval` run measured.
#[derive(Serialize)]
struct EvalReport<'a> {
    model: String,
    args: serde_json::Value,
    tasks: &'a [TaskResult],
    /// Accuracy averaged over the tasks (see [`Averages`] for which metric is averaged).
    task_average: Option<Averages>,
    perplexity: &'a [PerplexityResult],
    total_seconds: f64,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let tasks = Task::parse_list(args.tasks.as_deref().unwrap_or_default())?;
    let corpora = parse_corpora(args.ppl.as_deref().unwrap_or_default())?;
    if tasks.is_empty() && corpora.is_empty() {
        bail!("nothing to evaluate: pass --tasks (e.g. `all`) and/or --ppl (e.g. wikitext2,ptb)");
    }
    for (flag, n) in [
        ("--limit", args.limit.unwrap_or(1)),
        ("--ppl-seq-len", args.ppl_seq_len),
        ("--ppl-batch-size", args.ppl_batch_size),
        ("--batch-size", args.batch_size),
    ] {
        if n == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let data_dir = data_dir(args.data_dir.as_deref())?;
    check_task_files(&tasks, data_dir.as_deref(), args.num_fewshot)?;
    let files = resolve(&args.model.model, &args.model.revision)?;
    if let Some(path) = &args.json {
        check_output_file("--json", path, &files.paths())?;
    }
    let loaded = args.model.load(files)?;
    println!(
        "model: {} ({})",
        loaded.files.name,
        loaded.files.dir.display()
    );

    let ppl_results = run_perplexity(&loaded, &corpora, data_dir.as_deref(), &args)?;
    if !ppl_results.is_empty() {
        println!("\n{}", perplexity_table(&ppl_results));
    }
    let task_results = run_tasks(&loaded, &tasks, data_dir.as_deref(), &args)?;
    if !task_results.is_empty() {
        println!("\n{}", markdown_table(&task_results));
    }

    if let Some(path) = &args.json {
        let report = EvalReport {
            model: loaded.files.dir.display().to_string(),
            args: args_json(&args),
            tasks: &task_results,
            task_average: averages(&task_results),
            perplexity: &ppl_results,
            total_seconds: started.elapsed().as_secs_f64(),
        };
        write_json(path, &report).context("--json")?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_perplexity(
    loaded: &Loaded,
    corpora: &[Corpus],
    data_dir: Option<&Path>,
    args: &EvalArgs,
) -> Result<Vec<PerplexityResult>> {
    let spec = PerplexitySpec {
        seq_len: args.ppl_seq_len,
        limit: args.limit,
        batch_size: args.ppl_batch_size,
    };
    corpora
        .iter()
        .map(|corpus| perplexity(&loaded.model, &loaded.tokenizer, corpus, data_dir, &spec))
        .collect()
}

fn run_tasks(
    loaded: &Loaded,
    tasks: &[Task],
    data_dir: Option<&Path>,
    args: &EvalArgs,
) -> Result<Vec<TaskResult>> {
    let options = TaskOptions {
        limit: args.limit,
        num_fewshot: args.num_fewshot,
        batch_size: args.batch_size,
    };
    tasks
        .iter()
        .map(|&task| run_task(&loaded.model, &loaded.tokenizer, task, data_dir, &options))
        .collect()
}

fn parse_corpora(list: &str) -> Result<Vec<Corpus>> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| Corpus::parse(name).with_context(|| format!("--ppl {name}")))
        .collect()
}

/// `--data-dir` if given (it must exist), else `../shared/data` when it exists.
fn data_dir(given: Option<&Path>) -> Result<Option<PathBuf>> {
    match given {
        Some(dir) if dir.is_dir() => Ok(Some(dir.to_path_buf())),
        Some(dir) => bail!("--data-dir {}: no such directory", dir.display()),
        None => Ok(default_data_dir()),
    }
}

/// Fails before the model is loaded when a task file is missing (downloading those the hub
/// has).
fn check_task_files(tasks: &[Task], data_dir: Option<&Path>, num_fewshot: usize) -> Result<()> {
    let hub = Hub::from_env();
    for &task in tasks {
        task_file(task, Split::Eval, data_dir, &hub)?;
        if num_fewshot > 0 {
            task_file(task, Split::Train, data_dir, &hub)?;
        }
    }
    Ok(())
}

fn args_json(args: &EvalArgs) -> serde_json::Value {
    serde_json::json!({
        "model": args.model.model,
        "revision": args.model.revision,
        "device": args.model.device,
        "dtype": args.model.dtype,
        "tasks": args.tasks,
        "ppl": args.ppl,
        "ppl_seq_len": args.ppl_seq_len,
        "ppl_batch_size": args.ppl_batch_size,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "num_fewshot": args.num_fewshot,
        "data_dir": args.data_dir,
        "config": args.config,
    })
}

fn perplexity_table(results: &[PerplexityResult]) -> String {
    let mut out = String::from(
        "| Dataset | Seq len | Windows | Tokens | Perplexity |\n\
         |---------|--------:|--------:|-------:|-----------:|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} |\n",
            r.dataset, r.seq_len, r.windows, r.tokens_scored, r.perplexity
        ));
    }
    out
}

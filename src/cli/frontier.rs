//! `grasp frontier`: sweep removal, plain SVD, GRASP and the hybrid guard over layer counts and
//! ratios, score every model, and show which gives the best model for its size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::common::{CalibrationArgs, Log, ModelArgs, ProjectionArgs};
use super::finetune::CompressRecovery;
use super::layers::check_num_prune_layers;
use super::preflight::output_dir;
use crate::data::corpus::{default_data_dir, Corpus};
use crate::data::tasks::{task_file, Task};
use crate::data::Split;
use crate::eval::perplexity::{PerplexitySpec, TokenStream};
use crate::eval::tasks::TaskOptions;
use crate::grasp::compress::Method;
use crate::grasp::selection::RankRule;
use crate::io::hub::Hub;
use crate::io::load::resolve;
use crate::io::save::write_json;
use crate::io::staging::Staging;
use crate::pipeline::frontier::{sweep, FrontierPoint, Scoring, SweepPlan};
use crate::pipeline::inputs::{score_and_keep, InputCache};
use crate::pipeline::layers::ScoreOptions;
use crate::pipeline::plot::frontier_svg;
use crate::runtime;

#[derive(Args, Debug, Serialize)]
pub struct FrontierArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub calibration: CalibrationArgs,
    /// Layer counts to sweep, each the N layers of lowest Block Influence (e.g. 2,4,6).
    #[arg(long, value_delimiter = ',', required = true)]
    pub num_prune_layers: Vec<usize>,
    /// Ratios for svd, grasp and hybrid (removal has none).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,0.95")]
    pub ratios: Vec<f64>,
    /// Methods to sweep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "remove,svd,grasp,hybrid"
    )]
    pub methods: Vec<Method>,
    #[command(flatten)]
    #[serde(flatten)]
    pub projections: ProjectionArgs,
    /// Perplexity corpus: wikitext2, ptb, c4 or a text/JSONL file.
    #[arg(long, default_value = "wikitext2")]
    pub ppl: String,
    /// Perplexity window length in tokens.
    #[arg(long, default_value_t = 512)]
    pub ppl_seq_len: usize,
    /// Perplexity windows scored per model (the first N of the test split).
    #[arg(long, default_value_t = 40)]
    pub ppl_windows: usize,
    /// Zero-shot tasks scored per model (e.g. arc_easy,piqa); none by default.
    #[arg(long, default_value = "")]
    pub tasks: String,
    /// Documents per task.
    #[arg(long, default_value_t = 100)]
    pub task_limit: usize,
    /// Task contexts per forward pass.
    #[arg(long, default_value_t = 16)]
    pub eval_batch_size: usize,
    /// Output directory for frontier.json, frontier.md and frontier.svg
    /// (default: out/<model>-frontier).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// With --recovery, every compressed model is also trained (`grasp finetune --help`) and
    /// scored again, as `<method>+recovery`.
    #[command(flatten)]
    #[serde(flatten)]
    pub recovery: CompressRecovery,
    /// TOML file with the same keys as these flags (flags given on the command line win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
}

#[derive(Serialize)]
struct FrontierReport<'a> {
    grasp_version: &'static str,
    args: &'a FrontierArgs,
    model: String,
    bi: &'a [f64],
    calibration: serde_json::Value,
    perplexity: serde_json::Value,
    points: &'a [FrontierPoint],
    block_influence_seconds: f64,
    total_seconds: f64,
    peak_rss_bytes: Option<u64>,
}

pub fn run(args: FrontierArgs) -> Result<()> {
    let started = Instant::now();
    let mut log = Log::new(None, false)?;
    if let Some(r) = args.ratios.iter().find(|r| !(0.0..1.0).contains(*r)) {
        bail!("--ratios: {r} is not in [0, 1)");
    }
    let options = args
        .projections
        .options(Method::Grasp, RankRule::Ratio(0.0))?;
    let tasks = Task::parse_list(&args.tasks)?;
    let corpus = Corpus::parse(&args.ppl).context("--ppl")?;
    let data_dir = args.calibration.data_dir.clone().or_else(default_data_dir);
    for &task in &tasks {
        task_file(task, Split::Eval, data_dir.as_deref(), &Hub::from_env())?;
    }

    args.calibration.check()?;
    if args.recovery.training.lora.is_some() {
        bail!("--lora: the frontier's recovery trains the compressed layers, not adapters");
    }
    let recovery = args.recovery.plan(&args.calibration)?;
    let files = resolve(&args.model.model, &args.model.revision)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(format!("{}-frontier", files.name)));
    for line in output_dir(&out, args.force, &files)? {
        log.info(line);
    }
    let loaded = args.model.load(files)?;
    let model = loaded.model;
    let recovery = recovery
        .map(|p| p.ready(&loaded.tokenizer, loaded.eos_token, &model))
        .transpose()?;
    for &n in &args.num_prune_layers {
        check_num_prune_layers(n, model.num_layers())?;
    }
    let stream = TokenStream::load(&loaded.tokenizer, &corpus, data_dir.as_deref())?;
    let calib = args
        .calibration
        .load(&loaded.tokenizer, model.config.max_position_embeddings)?;
    let batches = args.calibration.batches(&calib, model.device())?;
    log.info(format!(
        "model {} ({} layers, {:.1}M parameters); calibration: {} windows of {} tokens from {}",
        loaded.files.dir.display(),
        model.num_layers(),
        model.num_params() as f64 / 1e6,
        calib.windows.len(),
        calib.seq_len,
        calib.source
    ));

    let t = Instant::now();
    let scratch = Staging::scratch(&out, "inputs")?;
    let input_cache = InputCache {
        memory_budget: args.projections.input_cache_bytes(),
        disk_dir: Some(scratch.dir().to_path_buf()),
    };
    let plan = SweepPlan {
        layer_counts: args.num_prune_layers.clone(),
        ratios: args.ratios.clone(),
        methods: args.methods.clone(),
        compress: options,
    };
    let score = ScoreOptions {
        batch_size: args.calibration.batch_size,
        angular: false,
        span: 1,
    };
    let all: Vec<usize> = (0..model.num_layers()).collect();
    let gradients = args.methods.iter().any(|m| m.uses_gradients());
    let scored = score_and_keep(
        &model,
        &calib,
        &batches,
        &score,
        &all,
        gradients.then_some(&input_cache),
        |bi| plan.layers_used(bi),
    )?;
    let (bi, used, inputs) = (scored.bi, scored.chosen, scored.inputs.inputs);
    let block_influence_seconds = t.elapsed().as_secs_f64();
    log.info(format!(
        "block influence: layers by redundancy {used:?} ({block_influence_seconds:.1}s); {} \
         models to build and score",
        plan.points().len() + 1
    ));

    let scoring = Scoring {
        tokenizer: &loaded.tokenizer,
        stream: &stream,
        perplexity: PerplexitySpec {
            seq_len: args.ppl_seq_len,
            limit: Some(args.ppl_windows),
            batch_size: 1,
        },
        tasks: &tasks,
        task_options: TaskOptions {
            limit: Some(args.task_limit),
            num_fewshot: 0,
            batch_size: args.eval_batch_size,
        },
        data_dir: data_dir.as_deref(),
    };
    let recovery = recovery.as_ref();
    let points = sweep(
        &model,
        &bi,
        &batches,
        &inputs,
        &plan,
        &scoring,
        recovery,
        |p| {
            log.info(format!(
            "{:<7} N={:<2} ratio {:<5} {:>8.2}M parameters  perplexity {:>9.3}{}  ({:.0}s + {:.0}s eval){}{}",
            p.method,
            p.layers,
            p.ratio.map_or("-".into(), |r| r.to_string()),
            p.params as f64 / 1e6,
            p.perplexity,
            p.mean_accuracy
                .map_or(String::new(), |a| format!("  accuracy {a:.4}")),
            p.compress_seconds,
            p.eval_seconds,
            if p.recovery_seconds > 0.0 {
                format!("  after {:.0}s of recovery", p.recovery_seconds)
            } else {
                String::new()
            },
            if p.removed_layers.is_empty() || p.method.starts_with("remove") {
                String::new()
            } else {
                format!("  guard removed {:?}", p.removed_layers)
            }
        ))
        },
    )?;
    drop(inputs);
    drop(scratch);

    let table = markdown_table(&points, tasks.len());
    println!("{table}");
    let staging = Staging::beside(&out)?;
    let title = format!(
        "{}: {} perplexity against parameters",
        loaded.files.name, stream.dataset
    );
    std::fs::write(
        staging.dir().join("frontier.svg"),
        frontier_svg(&points, &title)?,
    )
    .context("cannot write frontier.svg")?;
    std::fs::write(staging.dir().join("frontier.md"), &table)
        .context("cannot write frontier.md")?;
    let report = FrontierReport {
        grasp_version: env!("CARGO_PKG_VERSION"),
        args: &args,
        model: loaded.files.dir.display().to_string(),
        bi: &bi.scores,
        calibration: serde_json::json!({
            "source": calib.source, "windows": calib.windows.len(), "seq_len": calib.seq_len,
        }),
        perplexity: serde_json::json!({
            "dataset": stream.dataset, "source": stream.source, "seq_len": args.ppl_seq_len,
            "windows": args.ppl_windows, "bos": stream.bos,
        }),
        points: &points,
        block_influence_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: runtime::peak_rss_bytes(),
    };
    write_json(&staging.dir().join("frontier.json"), &report)?;
    staging.commit(&out, args.force)?;
    log.info(format!(
        "wrote {} (frontier.md, frontier.svg, frontier.json) in {:.0}s",
        out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One row per model, the frontier marked: `*` unbeaten by any model, `+` by any of its method.
fn markdown_table(points: &[FrontierPoint], tasks: usize) -> String {
    let mut out = String::from(
        "| method | layers | ratio | parameters | weights MB | perplexity | accuracy | frontier | guard removed | compress s |\n\
         |---|--:|--:|--:|--:|--:|--:|:-:|---|--:|\n",
    );
    for p in points {
        let mark = match (p.on_frontier, p.method_frontier) {
            (true, _) => "*",
            (false, true) => "+",
            _ => "",
        };
        let removed = if p.method.starts_with("hybrid") {
            format!("{:?}", p.removed_layers)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2}M | {:.1} | {:.3} | {} | {mark} | {removed} | {:.0} |\n",
            p.method,
            p.layers,
            p.ratio.map_or("".into(), |r| r.to_string()),
            p.params as f64 / 1e6,
            p.weights_bytes as f64 / 1e6,
            p.perplexity,
            match (tasks, p.mean_accuracy) {
                (0, _) | (_, None) => String::new(),
                (_, Some(a)) => format!("{a:.4}"),
            },
            p.compress_seconds
        ));
    }
    out
}

//! `grasp finetune`: recovery training of a compressed checkpoint (the paper's GRASP*), and the
//! flags `grasp compress --recovery` shares with it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::common::{unsigned, CalibrationArgs, Log, ModelArgs, RunArgs};
use crate::data::alpaca::{self, ExampleSpec, PromptTemplate};
use crate::io::save::{save_model, write_json, OutputForm};
use crate::pipeline::recovery::{recovery_layers, removed_by};
use crate::pipeline::report::CompressReport;
use crate::recovery::plan::{recover, ExampleSets, ReadyRecovery, RecoveryPlan};
use crate::recovery::train::{StepLog, TrainReport, TrainSpec};
use crate::recovery::trainable::{compressed_layers, Target};
use crate::runtime;

/// How recovery training runs; the names follow the original params_script.sh.
#[derive(Args, Clone, Debug, PartialEq, Serialize)]
pub struct RecoveryArgs {
    /// Alpaca-style records (instruction, input, output): a .json/.jsonl file, or a hub dataset
    /// id. The default is found under --data-dir (alpaca_cleaned/) before the hub is tried.
    #[arg(long, default_value = alpaca::DEFAULT_DATASET)]
    pub data_path: String,
    /// Examples per optimizer step (the effective batch).
    #[arg(long, default_value_t = 32, value_parser = unsigned::<usize>)]
    pub train_batch_size: usize,
    /// Examples per forward/backward pass; gradients accumulate up to --train-batch-size.
    #[arg(long, default_value_t = 4, value_parser = unsigned::<usize>)]
    pub micro_batch_size: usize,
    #[arg(long, default_value_t = 1, value_parser = unsigned::<usize>)]
    pub num_epochs: usize,
    /// Stop after this many optimizer steps (the learning-rate schedule spans them).
    #[arg(long, value_parser = unsigned::<usize>)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 3e-4)]
    pub learning_rate: f64,
    /// Steps of linear warm-up before the linear decay.
    #[arg(long, default_value_t = 100, value_parser = unsigned::<usize>)]
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay (0, as the Hugging Face Trainer's default).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the summed gradient to this global L2 norm, as the Hugging Face Trainer does
    /// (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Tokens per example; longer examples are cut.
    #[arg(long, default_value_t = 256, value_parser = unsigned::<usize>)]
    pub max_length: usize,
    /// Examples held out (seeded) to measure the loss before and after training.
    #[arg(long, default_value_t = 2000, value_parser = unsigned::<usize>)]
    pub val_set_size: usize,
    /// Train on the prompt's tokens too, not only on the response's.
    #[arg(long)]
    pub train_on_inputs: bool,
    /// End every example with the end-of-sequence token: the `eos_token` of the model's
    /// tokenizer_config.json (as transformers), else the first of </s>, <|endoftext|>,
    /// <|end_of_text|>, <|im_end|>, <|eot_id|> the vocabulary has.
    #[arg(long)]
    pub add_eos_token: bool,
    /// Prompt template: alpaca.
    #[arg(long, default_value = "alpaca")]
    pub prompt_template_name: String,
    /// Train rank-R LoRA adapters on every projection of every layer instead (merged into the
    /// weights at the end), as SVD-LLM and LLM-Pruner recover.
    #[arg(long, value_parser = unsigned::<usize>)]
    pub lora: Option<usize>,
    /// LoRA's alpha: the update is scaled by alpha / R.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
}

impl RecoveryArgs {
    /// LoRA adapters with --lora, else every tensor of `layers` (asked for only then).
    pub fn target(&self, layers: impl FnOnce() -> Result<Vec<usize>>) -> Result<Target> {
        match self.lora {
            Some(0) => bail!("--lora must be at least 1"),
            Some(rank) => Ok(Target::Lora {
                rank,
                alpha: self.lora_alpha,
            }),
            None => Ok(Target::Layers(layers()?)),
        }
    }

    /// Reads the data and checks the settings (before any model is loaded).
    pub fn plan(&self, data_dir: Option<&std::path::Path>, seed: u64) -> Result<RecoveryPlan> {
        if self.lora.is_some() && !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            bail!("--lora-alpha must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("--weight-decay must be 0 or more");
        }
        let examples = ExampleSpec {
            template: PromptTemplate::parse(&self.prompt_template_name)
                .context("--prompt-template-name")?,
            max_length: self.max_length,
            train_on_inputs: self.train_on_inputs,
            add_eos: self.add_eos_token,
        };
        if examples.max_length < 2 {
            bail!("--max-length must be at least 2");
        }
        let train = TrainSpec {
            batch_size: self.train_batch_size,
            micro_batch_size: self.micro_batch_size,
            num_epochs: self.num_epochs,
            max_steps: self.max_steps,
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            seed,
        };
        let path = alpaca::resolve_data_path(&self.data_path, data_dir)?;
        RecoveryPlan::new(path, examples, self.val_set_size, train)
    }
}

#[derive(Args, Debug, Serialize)]
pub struct FinetuneArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub recovery: RecoveryArgs,
    /// Layers to train (every tensor of each). Default: the layers a factorized checkpoint
    /// compressed (those with factorized projections).
    #[arg(long, value_delimiter = ',', conflicts_with = "lora")]
    pub train_layers: Option<Vec<usize>>,
    /// Directory with the local datasets (default: ../shared/data when it exists).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seeds the validation split and the order of the examples.
    #[arg(long, default_value_t = 42, value_parser = unsigned::<u64>)]
    pub seed: u64,
    /// Write dense weights instead of keeping factorized projections factorized.
    #[arg(long)]
    pub merge: bool,
    /// Output directory (written atomically; refused if it exists, without --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the report (grasp_finetune.json in --out) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let start = Instant::now();
    if let Some(dir) = args.data_dir.as_ref().filter(|d| !d.is_dir()) {
        bail!("--data-dir {}: no such directory", dir.display());
    }
    let files = crate::io::load::resolve(&args.model.model, &args.model.revision)?;
    let also = [("--json", args.json.as_deref())];
    let mut log = super::preflight::outputs(&args.out, &args.run, &files, &also)?;
    let plan = args.recovery.plan(args.data_dir.as_deref(), args.seed)?;
    log.info(format!(
        "{} records from {}",
        plan.records.len(),
        plan.data_path.display()
    ));

    let loaded = args.model.load(files)?;
    let mut model = loaded.model;
    let max_positions = model.config.max_position_embeddings;
    let sets = plan.examples(&loaded.tokenizer, loaded.eos_token, max_positions)?;
    let target = args.recovery.target(|| {
        let layers = match &args.train_layers {
            Some(l) => l.clone(),
            None => compressed_layers(&model),
        };
        if layers.is_empty() {
            bail!(
                "{} has no compressed (factorized) layer; name the layers to train with \
                 --train-layers, or train adapters with --lora",
                loaded.files.dir.display()
            );
        }
        Ok(layers)
    })?;
    let out_dtype = match &args.model.dtype {
        Some(d) => runtime::parse_dtype(d)?,
        None => loaded.checkpoint_dtype,
    };
    log.info(format!(
        "model {} ({} layers, {:.1}M parameters) on {} in {}; training {target}",
        loaded.files.dir.display(),
        model.num_layers(),
        model.num_params() as f64 / 1e6,
        args.model.device,
        runtime::dtype_name(model.dtype()),
    ));
    let report = train_with_progress(&mut model, &target, &sets, &plan, &mut log)?;

    let form = if args.merge {
        OutputForm::Merged
    } else {
        OutputForm::Factorized
    };
    let mut json = serde_json::json!({
        "grasp_version": env!("CARGO_PKG_VERSION"),
        "args": &args,
        "model": { "path": loaded.files.dir, "num_layers": model.num_layers() },
        "compute_dtype": runtime::dtype_name(model.dtype()),
        "output_dtype": runtime::dtype_name(out_dtype),
        "threads": runtime::num_threads(),
        "data": &plan,
        "recovery": &report,
        "params": model.num_params(),
        "output_form": if args.merge { "merged" } else { "factorized" },
    });
    save_model(
        &model,
        &loaded.files,
        &args.out,
        form,
        out_dtype,
        args.run.force,
        |dir, bytes| {
            json["weights_bytes"] = bytes.into();
            json["peak_rss_bytes"] = runtime::peak_rss_bytes().into();
            json["total_s"] = start.elapsed().as_secs_f64().into();
            write_json(&dir.join("grasp_finetune.json"), &json)
        },
    )?;
    if let Some(path) = &args.json {
        write_json(path, &json)?;
    }
    print_summary(&report);
    log.info(format!("wrote {}", args.out.display()));
    Ok(())
}

/// `compress --recovery` and its training flags.
#[derive(Args, Clone, Debug, Serialize)]
pub struct CompressRecovery {
    /// Recovery training (GRASP*) right after compression: the compressed layers (after
    /// --method remove, the layer below each removed run) train on --data-path; see
    /// `grasp finetune --help` for the training flags.
    #[arg(long)]
    pub recovery: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub training: RecoveryArgs,
}

impl CompressRecovery {
    /// With --recovery, the plan, its data read now (before the model loads).
    pub fn plan(&self, calibration: &CalibrationArgs) -> Result<Option<RecoveryPlan>> {
        if !self.recovery {
            use clap::{Args as _, FromArgMatches as _};
            let command = RecoveryArgs::augment_args(clap::Command::new("defaults"));
            let defaults = RecoveryArgs::from_arg_matches(&command.try_get_matches_from(["x"])?)?;
            if self.training != defaults {
                bail!("training flags (--data-path, --max-steps, --lora, …) need --recovery");
            }
            return Ok(None);
        }
        let data_dir = calibration.data_dir.as_deref();
        self.training.plan(data_dir, calibration.seed).map(Some)
    }

    /// Trains what [`recovery_layers`] names after a compression by `method` (or LoRA
    /// adapters) and records it in the report; nothing without a plan, or when the guard
    /// removed every layer and nothing was compressed.
    pub fn run(
        &self,
        recovery: Option<&ReadyRecovery>,
        method: crate::grasp::compress::Method,
        model: &mut crate::model::Llama,
        report: &mut CompressReport,
        log: &mut Log,
    ) -> Result<()> {
        let Some(recovery) = recovery else {
            return Ok(());
        };
        let t = Instant::now();
        let removed = removed_by(method, &report.chosen_layers, &report.removed_layers);
        let layers = recovery_layers(model, &removed);
        if layers.is_empty() && self.training.lora.is_none() {
            log.info("recovery: no layer to train (every chosen layer was removed)");
            return Ok(());
        }
        let target = self.training.target(|| Ok(layers))?;
        log.info(format!("recovery: training {target}"));
        let trained = train_with_progress(model, &target, &recovery.sets, &recovery.plan, log)?;
        report.recovered(model, trained, t.elapsed().as_secs_f64());
        Ok(())
    }
}

/// [`recover`] with a progress bar (loss and tokens/s) and a log line every tenth of the run.
pub fn train_with_progress(
    model: &mut crate::model::Llama,
    target: &Target,
    sets: &ExampleSets,
    plan: &RecoveryPlan,
    log: &mut Log,
) -> Result<TrainReport> {
    let bar = crate::progress::bar(0, "recovery", "steps");
    let (mut tokens, mut seconds) = (0usize, 0f64);
    let mut on_step = |done: usize, total: usize, step: &StepLog| {
        tokens += step.tokens;
        seconds += step.seconds;
        let rate = tokens as f64 / seconds.max(1e-9);
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("loss {:.4}, {rate:.0} tokens/s", step.loss));
        let line = format!(
            "step {done}/{total}: loss {:.4}, lr {:.2e}, {rate:.0} tokens/s",
            step.loss, step.learning_rate
        );
        if done.is_multiple_of((total / 10).max(1)) || done == total {
            bar.suspend(|| log.info(line));
        } else {
            bar.suspend(|| log.detail(line));
        }
    };
    let report = recover(model, target, sets, &plan.train, &mut on_step)?;
    bar.finish_and_clear();
    Ok(report)
}

fn print_summary(r: &TrainReport) {
    let fmt = |l: Option<f64>| l.map_or("-".into(), |l| format!("{l:.4}"));
    println!(
        "trained {}: {:.2}M parameters in {} tensors, {} examples ({} held out)",
        r.target,
        r.trainable_params as f64 / 1e6,
        r.trainable_tensors.len(),
        r.train_examples,
        r.val_examples
    );
    println!(
        "validation loss {} -> {}; {} steps, {} tokens in {:.1}s ({:.0} tokens/s)",
        fmt(r.val_loss_before),
        fmt(r.val_loss_after),
        r.steps.len(),
        r.tokens,
        r.seconds,
        r.tokens_per_s
    );
}

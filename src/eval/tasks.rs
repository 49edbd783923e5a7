//! Zero-shot (or few-shot) multiple-choice accuracy, scored like lm-evaluation-harness v0.4:
//! `acc` picks the choice with the largest log-likelihood, `acc_norm` the largest
//! log-likelihood per character of the choice; stderr is the sample standard deviation of the
//! per-doc correctness over sqrt(n).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::tasks::{fewshot_prefixes, load_docs, Doc, Task};
use crate::data::Split;
use crate::eval::harness::{encode_pair, loglikelihoods, Request};
use crate::eval::CausalLm;
use crate::io::hub::Hub;
use crate::progress;

/// How to run each task.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Score only the first N docs (lm-eval's `--limit`).
    pub limit: Option<usize>,
    pub num_fewshot: usize,
    /// Requests per forward pass.
    pub batch_size: usize,
}

/// One aggregated metric of a task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskMetric {
    pub name: String,
    pub value: f64,
    /// NaN (JSON null) when fewer than two docs were scored.
    pub stderr: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub num_fewshot: usize,
    pub metrics: Vec<TaskMetric>,
    /// Docs scored.
    pub n: usize,
    pub seconds: f64,
}

impl TaskResult {
    pub fn metric(&self, name: &str) -> Option<&TaskMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// Loads `task` from `data_dir`, scores every choice of every doc and aggregates the metrics
/// lm-eval reports for it, with a progress bar over the requests.
pub fn run_task(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    task: Task,
    data_dir: Option<&Path>,
    options: &TaskOptions,
) -> Result<TaskResult> {
    let start = Instant::now();
    let hub = Hub::from_env();
    let mut docs = load_docs(task, Split::Eval, data_dir, &hub)?;
    if let Some(limit) = options.limit {
        docs.truncate(limit);
    }
    let prefixes = if options.num_fewshot > 0 {
        let pool = load_docs(task, Split::Train, data_dir, &hub)?;
        fewshot_prefixes(&pool, options.num_fewshot, docs.len())
            .with_context(|| format!("{task}: cannot draw few-shot examples"))?
    } else {
        vec![String::new(); docs.len()]
    };
    let requests = encode_docs(tokenizer, &docs, &prefixes).with_context(|| task.to_string())?;
    let progress = progress::bar(requests.len() as u64, task.name(), "requests");
    let scores = loglikelihoods(model, &requests, options.batch_size, &progress)
        .with_context(|| format!("{task}: scoring failed"))?;
    progress.finish();
    let judgements = judge_all(&docs, &scores);
    Ok(TaskResult {
        task: task.name().to_string(),
        num_fewshot: options.num_fewshot,
        metrics: aggregate(task, &judgements),
        n: docs.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// All requests of all docs, doc after doc, choice after choice.
fn encode_docs(tokenizer: &Tokenizer, docs: &[Doc], prefixes: &[String]) -> Result<Vec<Request>> {
    let mut requests = Vec::new();
    for (i, (doc, prefix)) in docs.iter().zip(prefixes).enumerate() {
        for pair in doc.requests(prefix) {
            let request = encode_pair(tokenizer, &pair.context, &pair.continuation)
                .with_context(|| format!("doc {}", i + 1))?;
            requests.push(request);
        }
    }
    Ok(requests)
}

/// Whether a doc's log-likelihoods pick its gold choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The largest log-likelihood is the gold choice's.
    pub acc: bool,
    /// The largest log-likelihood per character of the choice is the gold choice's.
    pub acc_norm: bool,
}

/// Judges one doc from its choices' log-likelihoods (in choice order). Ties go to the first
/// choice, as with numpy's argmax. Lengths count characters of the choice without the leading
/// target delimiter, as lm-eval's `process_results` does.
pub fn judge(doc: &Doc, lls: &[f64]) -> Judgement {
    let normalized: Vec<f64> = doc
        .choices()
        .iter()
        .zip(lls)
        .map(|(choice, ll)| ll / choice.chars().count() as f64)
        .collect();
    Judgement {
        acc: argmax(lls) == Some(doc.gold()),
        acc_norm: argmax(&normalized) == Some(doc.gold()),
    }
}

fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|b| v > values[b]) {
            best = Some(i);
        }
    }
    best
}

/// Splits the flat scores (docs in order, choices in order) back into docs and judges each.
fn judge_all(docs: &[Doc], scores: &[f64]) -> Vec<Judgement> {
    let mut rest = scores;
    docs.iter()
        .map(|doc| {
            let (mine, others) = rest.split_at(doc.choices().len());
            rest = others;
            judge(doc, mine)
        })
        .collect()
}

fn aggregate(task: Task, judgements: &[Judgement]) -> Vec<TaskMetric> {
    let metric = |name: &str, correct: fn(&Judgement) -> bool| {
        let values: Vec<f64> = judgements
            .iter()
            .map(|j| f64::from(u8::from(correct(j))))
            .collect();
        let (value, stderr) = mean_and_stderr(&values);
        TaskMetric {
            name: name.to_string(),
            value,
            stderr,
        }
    };
    let mut metrics = vec![metric("acc", |j| j.acc)];
    if task.reports_acc_norm() {
        metrics.push(metric("acc_norm", |j| j.acc_norm));
    }
    metrics
}

/// The mean and lm-eval's `mean_stderr`: sample standard deviation / sqrt(n) (NaN for n < 2).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

/// Accuracy averaged over tasks, both ways papers report it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Averages {
    pub tasks: usize,
    /// Mean of every task's `acc`.
    pub acc: f64,
    /// Mean of `acc_norm` where the task reports it, `acc` otherwise (winogrande, boolq).
    pub acc_norm_else_acc: f64,
}

pub fn averages(results: &[TaskResult]) -> Option<Averages> {
    let accs: Vec<f64> = results
        .iter()
        .filter_map(|r| r.metric("acc").map(|m| m.value))
        .collect();
    let normed: Vec<f64> = results
        .iter()
        .filter_map(|r| r.metric("acc_norm").or(r.metric("acc")).map(|m| m.value))
        .collect();
    if accs.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Some(Averages {
        tasks: accs.len(),
        acc: mean(&accs),
        acc_norm_else_acc: mean(&normed),
    })
}

/// An lm-eval-style markdown table of the results, followed by the averages.
pub fn markdown_table(results: &[TaskResult]) -> String {
    let mut out = String::from(
        "| Task | n-shot | n | Metric | Value |   | Stderr |\n\
         |------|-------:|--:|--------|------:|---|-------:|\n",
    );
    for result in results {
        for (i, metric) in result.metrics.iter().enumerate() {
            let (task, shots, n) = if i == 0 {
                let shots = result.num_fewshot.to_string();
                (result.task.clone(), shots, result.n.to_string())
            } else {
                Default::default()
            };
            let stderr = if metric.stderr.is_nan() {
                "N/A".to_string()
            } else {
                format!("{:.4}", metric.stderr)
            };
            out.push_str(&format!(
                "| {task} | {shots} | {n} | {} | {:.4} | ± | {stderr} |\n",
                metric.name, metric.value
            ));
        }
    }
    if let Some(avg) = averages(results) {
        out.push_str(&format!(
            "\nAverage over {} tasks: acc {:.4}; acc_norm (acc where a task has no acc_norm) {:.4}\n",
            avg.tasks, avg.acc, avg.acc_norm_else_acc
        ));
    }
    out
}

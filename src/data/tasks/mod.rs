//! The eight zero-shot tasks of the GRASP paper, read from local JSONL files and rendered into
//! (context, continuation) text pairs exactly as lm-evaluation-harness v0.4 builds its
//! `multiple_choice` requests (task YAMLs and `utils.py` of arc, piqa, hellaswag, winogrande,
//! openbookqa, boolq and mathqa).

mod doc;
mod fewshot;
mod files;
mod parse;
mod py_random;

use std::fmt;

use anyhow::{Context, Result};

use super::Split;
pub use doc::{Doc, TextPair};
pub use fewshot::{fewshot_prefixes, FEWSHOT_SEED};
pub use files::{load_docs, task_file, TaskFile};
pub use parse::{mathqa_options, parse_doc};
pub use py_random::PyRandom;

/// A zero-shot task, named as in lm-evaluation-harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Piqa,
    Hellaswag,
    Winogrande,
    OpenBookQa,
    BoolQ,
    MathQa,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Hellaswag,
        Task::Winogrande,
        Task::OpenBookQa,
        Task::BoolQ,
        Task::MathQa,
    ];

    /// The lm-eval task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Piqa => "piqa",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::OpenBookQa => "openbookqa",
            Task::BoolQ => "boolq",
            Task::MathQa => "mathqa",
        }
    }

    /// Parses an lm-eval task name or its short form (`arc_e`, `arc_c`).
    pub fn parse(name: &str) -> Result<Task> {
        let name = name.trim();
        match name {
            "arc_e" => return Ok(Task::ArcEasy),
            "arc_c" => return Ok(Task::ArcChallenge),
            _ => {}
        }
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .with_context(|| {
                let known: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "--tasks: unknown task `{name}` (expected {}, arc_e, arc_c or all)",
                    known.join(", ")
                )
            })
    }

    /// Parses a comma-separated `--tasks` list; `all` stands for every task. Repeats are dropped.
    pub fn parse_list(list: &str) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let parsed = if name.trim() == "all" {
                Task::ALL.to_vec()
            } else {
                vec![Task::parse(name)?]
            };
            for task in parsed {
                if !tasks.contains(&task) {
                    tasks.push(task);
                }
            }
        }
        Ok(tasks)
    }

    /// Whether lm-eval reports `acc_norm` for this task (winogrande and boolq report `acc` only).
    pub fn reports_acc_norm(self) -> bool {
        !matches!(self, Task::Winogrande | Task::BoolQ)
    }

    /// The file of `split` relative to the data directory (the layout of `../shared/data`).
    pub fn relative_path(self, split: Split) -> &'static str {
        match (self, split) {
            (Task::ArcEasy, Split::Eval) => "arc/ARC-Easy-test.jsonl",
            (Task::ArcEasy, Split::Train) => "arc/ARC-Easy-train.jsonl",
            (Task::ArcChallenge, Split::Eval) => "arc/ARC-Challenge-test.jsonl",
            (Task::ArcChallenge, Split::Train) => "arc/ARC-Challenge-train.jsonl",
            (Task::Piqa, Split::Eval) => "piqa/piqa_validation.jsonl",
            (Task::Piqa, Split::Train) => "piqa/piqa_train.jsonl",
            (Task::Hellaswag, Split::Eval) => "hellaswag/hellaswag_validation.jsonl",
            (Task::Hellaswag, Split::Train) => "hellaswag/hellaswag_train.jsonl",
            (Task::Winogrande, Split::Eval) => "winogrande/winogrande_xl_validation.jsonl",
            (Task::Winogrande, Split::Train) => "winogrande/winogrande_xl_train.jsonl",
            (Task::OpenBookQa, Split::Eval) => "openbookqa/openbookqa_main_test_hf_schema.jsonl",
            (Task::OpenBookQa, Split::Train) => "openbookqa/train.jsonl",
            (Task::BoolQ, Split::Eval) => "boolq/boolq_validation.jsonl",
            (Task::BoolQ, Split::Train) => "boolq/boolq_train.jsonl",
            (Task::MathQa, Split::Eval) => "mathqa/test.jsonl",
            (Task::MathQa, Split::Train) => "mathqa/train.jsonl",
        }
    }
}

impl Task {
    /// The dataset repository lm-evaluation-harness reads and the split's file in the hub's
    /// parquet conversion ([`HUB_PARQUET_REVISION`]), in the schema of the JSONL files.
    pub fn hub_file(self, split: Split) -> (&'static str, String) {
        let (repo, config, eval) = match self {
            Task::ArcEasy => ("allenai/ai2_arc", "ARC-Easy", "test"),
            Task::ArcChallenge => ("allenai/ai2_arc", "ARC-Challenge", "test"),
            Task::Piqa => ("ybisk/piqa", "plain_text", "validation"),
            Task::Hellaswag => ("Rowan/hellaswag", "default", "validation"),
            Task::Winogrande => ("allenai/winogrande", "winogrande_xl", "validation"),
            Task::OpenBookQa => ("allenai/openbookqa", "main", "test"),
            Task::BoolQ => ("google/boolq", "default", "validation"),
            Task::MathQa => ("allenai/math_qa", "default", "test"),
        };
        let split = match split {
            Split::Eval => eval,
            Split::Train => "train",
        };
        (repo, format!("{config}/{split}/0000.parquet"))
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

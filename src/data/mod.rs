//! Data: text corpora (WikiText-2, PTB, C4, local files), calibration windows and zero-shot tasks.

pub mod alpaca;
pub mod calibration;
pub mod corpus;
pub mod rows;
pub mod tasks;

use std::fmt;

/// Which part of a dataset to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The text examples are drawn from: a corpus's calibration windows, a task's few-shot
    /// examples (a train split where there is one).
    Train,
    /// The held-out text a model is scored on: a corpus's test split, the split lm-eval scores
    /// for a task (test for arc, openbookqa and mathqa; validation otherwise).
    Eval,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Eval => "eval",
        })
    }
}

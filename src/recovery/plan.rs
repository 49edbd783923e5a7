//! A recovery run as the library takes it: the records (read before the model is loaded, so
//! that a bad file costs a second), how they become examples, and how to train.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::alpaca::Example;

use super::train::{train, OnStep, TrainReport, TrainSpec};
use super::trainable::{Target, Trainable};
use crate::data::alpaca::{self, ExampleSpec, Record};
use crate::model::Llama;

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryPlan {
    pub data_path: PathBuf,
    #[serde(skip)]
    pub records: Vec<Record>,
    pub examples: ExampleSpec,
    /// Examples held out (seeded shuffle) to measure the loss before and after training.
    pub val_set_size: usize,
    pub train: TrainSpec,
}

impl RecoveryPlan {
    /// Reads the records at `data_path` and checks the settings.
    pub fn new(
        data_path: PathBuf,
        examples: ExampleSpec,
        val_set_size: usize,
        train: TrainSpec,
    ) -> Result<Self> {
        train.check()?;
        let records = alpaca::read_records(&data_path)?;
        if val_set_size >= records.len() {
            anyhow::bail!(
                "--val-set-size {val_set_size} leaves no training example ({} records in {})",
                records.len(),
                data_path.display()
            );
        }
        Ok(Self {
            data_path,
            records,
            examples,
            val_set_size,
            train,
        })
    }
}

/// Training and validation examples, tokenized.
pub struct ExampleSets {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
}

impl RecoveryPlan {
    /// Tokenizes the records and holds out the validation set: done as soon as the model's
    /// tokenizer is at hand, so that unusable data is refused before any long work.
    pub fn examples(
        &self,
        tokenizer: &Tokenizer,
        eos: Option<u32>,
        max_positions: usize,
    ) -> Result<ExampleSets> {
        if max_positions < self.examples.max_length {
            anyhow::bail!(
                "--max-length {} exceeds the model's max_position_embeddings {max_positions}",
                self.examples.max_length
            );
        }
        let examples = alpaca::tokenize_examples(&self.records, tokenizer, eos, &self.examples)?;
        let (train, val) = alpaca::split_validation(examples, self.val_set_size, self.train.seed)?;
        Ok(ExampleSets { train, val })
    }
}

/// A plan with its examples tokenized.
pub struct ReadyRecovery {
    pub plan: RecoveryPlan,
    pub sets: ExampleSets,
}

impl RecoveryPlan {
    /// [`RecoveryPlan::examples`] for `model`, kept with the plan.
    pub fn ready(
        self,
        tokenizer: &Tokenizer,
        eos: Option<u32>,
        model: &Llama,
    ) -> Result<ReadyRecovery> {
        let sets = self.examples(tokenizer, eos, model.config.max_position_embeddings)?;
        Ok(ReadyRecovery { plan: self, sets })
    }
}

/// Trains `target` of `model` on `sets`; the trained values are left in `model`.
pub fn recover(
    model: &mut Llama,
    target: &Target,
    sets: &ExampleSets,
    spec: &TrainSpec,
    on_step: &mut OnStep,
) -> Result<TrainReport> {
    let trainable = Trainable::new(model, target, spec.seed)?;
    train(model, &trainable, &sets.train, &sets.val, spec, on_step)
}

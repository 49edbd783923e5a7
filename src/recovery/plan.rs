//! A recovery run as the library takes it: the records (read before the model is loaded, so
//! that a bad file costs a second), how they become examples, and how to train.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::train::{train, OnStep, TrainReport, TrainSpec};
use super::trainable::Trainable;
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

/// Trains every tensor of `layers` of `model` on the plan's data; the trained values are left
/// in `model`.
pub fn recover(
    model: &mut Llama,
    tokenizer: &Tokenizer,
    layers: &[usize],
    plan: &RecoveryPlan,
    on_step: &mut OnStep,
) -> Result<TrainReport> {
    if model.config.max_position_embeddings < plan.examples.max_length {
        anyhow::bail!(
            "--max-length {} exceeds the model's max_position_embeddings {}",
            plan.examples.max_length,
            model.config.max_position_embeddings
        );
    }
    let examples = alpaca::tokenize_examples(&plan.records, tokenizer, &plan.examples)?;
    let (train_set, val_set) =
        alpaca::split_validation(examples, plan.val_set_size, plan.train.seed)?;
    let trainable = Trainable::new(model, layers)?;
    train(
        model,
        &trainable,
        &train_set,
        &val_set,
        &plan.train,
        on_step,
    )
}

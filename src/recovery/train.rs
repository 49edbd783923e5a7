//! The training loop: micro-batches, gradient accumulation, AdamW and the learning-rate
//! schedule of the Hugging Face Trainer that the original recovery script runs.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::micro::{balanced_micro_batches, passes_at_once};
use super::trainable::{Target, Trainable};
use crate::data::alpaca::Example;
use crate::model::ops;
use crate::model::Llama;
use crate::runtime;

/// How to train.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSpec {
    /// Examples per optimizer step (the effective batch).
    pub batch_size: usize,
    /// Examples per forward/backward pass; `batch_size` must be a multiple of it.
    pub micro_batch_size: usize,
    pub num_epochs: usize,
    /// Stop after this many optimizer steps (the schedule is laid out over them).
    pub max_steps: Option<usize>,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Global L2 norm the summed gradient is clipped to (0: no clipping).
    pub max_grad_norm: f64,
    /// Seeds the order of the examples in each epoch.
    pub seed: u64,
}

impl TrainSpec {
    pub fn check(&self) -> Result<()> {
        if self.micro_batch_size == 0 || self.batch_size == 0 {
            bail!("--batch-size and --micro-batch-size must be at least 1");
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            bail!(
                "--batch-size {} is not a multiple of --micro-batch-size {}",
                self.batch_size,
                self.micro_batch_size
            );
        }
        if self.num_epochs == 0 && self.max_steps.is_none() {
            bail!("--num-epochs must be at least 1");
        }
        if self.max_steps == Some(0) {
            bail!("--max-steps must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("--learning-rate must be a positive number");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            bail!("--max-grad-norm must be 0 or more");
        }
        let per_epoch = usize::MAX / self.batch_size;
        if self.max_steps.is_none() && self.num_epochs > per_epoch {
            bail!("--num-epochs {} is too many", self.num_epochs);
        }
        Ok(())
    }

    /// Optimizer steps over `examples` training examples.
    pub fn total_steps(&self, examples: usize) -> usize {
        let per_epoch = examples.div_ceil(self.batch_size);
        self.max_steps
            .unwrap_or(per_epoch.saturating_mul(self.num_epochs))
    }

    /// The learning rate of optimizer step `step` (0-based) out of `total`: a linear warm-up
    /// from 0, then a linear decay to 0 at `total` (transformers'
    /// `get_linear_schedule_with_warmup`).
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            total.saturating_sub(step) as f64
                / total.saturating_sub(self.warmup_steps).max(1) as f64
        };
        self.learning_rate * factor
    }
}

/// One optimizer step, as the report records it.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: usize,
    /// Mean loss over the step's scored targets.
    pub loss: f64,
    /// Global L2 norm of the step's gradient, before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// Tokens run through the model.
    pub tokens: usize,
    pub seconds: f64,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub target: Target,
    pub layers: Vec<usize>,
    pub trainable_params: usize,
    pub trainable_tensors: Vec<String>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub total_steps: usize,
    pub val_loss_before: Option<f64>,
    pub val_loss_after: Option<f64>,
    pub steps: Vec<StepLog>,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The most micro-batches that ran side by side (one thread each) in a step.
    pub passes_at_once: usize,
}

/// What the caller hears after each step: (steps done, total steps, that step's log).
pub type OnStep<'a> = dyn FnMut(usize, usize, &StepLog) + 'a;

/// Trains `trainable` (already taken from `model`) on `train`, measuring the mean response
/// loss on `val` before and after; leaves the trained values in `model` as plain tensors
/// (adapters merged).
pub fn train(
    model: &mut Llama,
    trainable: &Trainable,
    train: &[Example],
    val: &[Example],
    spec: &TrainSpec,
    on_step: &mut OnStep,
) -> Result<TrainReport> {
    spec.check()?;
    if train.is_empty() {
        bail!("no training example");
    }
    let val_loss_before = validation_loss(model, val, spec.micro_batch_size)?;
    let total = spec.total_steps(train.len());
    let mut optimizer = AdamW::new(
        trainable.vars().to_vec(),
        ParamsAdamW {
            lr: spec.learning_rate,
            weight_decay: spec.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let start = Instant::now();
    let mut steps = Vec::new();
    let mut passes_at_once = 1;
    let mut order = Vec::new();
    let mut epoch = 0;
    for step in 0..total {
        if order.is_empty() {
            order = epoch_order(train.len(), spec.seed, epoch);
            epoch += 1;
        }
        let take = spec.batch_size.min(order.len());
        let batch: Vec<&Example> = order.drain(..take).map(|i| &train[i]).collect();
        let t = Instant::now();
        let lr = spec.learning_rate_at(step, total);
        optimizer.set_learning_rate(lr);
        // Every step: in half precision the model holds a cast copy of each variable, which
        // the optimizer's in-place update does not reach.
        trainable.apply(model, true)?;
        let stats = accumulate_and_step(model, trainable, &batch, spec, &mut optimizer)?;
        passes_at_once = passes_at_once.max(stats.passes);
        let log = StepLog {
            step,
            loss: stats.loss,
            grad_norm: stats.grad_norm,
            learning_rate: lr,
            tokens: stats.tokens,
            seconds: t.elapsed().as_secs_f64(),
        };
        on_step(step + 1, total, &log);
        steps.push(log);
    }
    let seconds = start.elapsed().as_secs_f64();
    trainable.finish(model)?;
    let val_loss_after = validation_loss(model, val, spec.micro_batch_size)?;
    let tokens = steps.iter().map(|s| s.tokens).sum();
    Ok(TrainReport {
        target: trainable.target.clone(),
        layers: trainable.layers.clone(),
        trainable_params: trainable.num_params(),
        trainable_tensors: trainable.names().to_vec(),
        train_examples: train.len(),
        val_examples: val.len(),
        total_steps: total,
        val_loss_before,
        val_loss_after,
        steps,
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        passes_at_once,
    })
}

/// The example indices of epoch `epoch`, shuffled with the seed.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order
}

/// What one optimizer step did.
struct StepStats {
    loss: f64,
    tokens: usize,
    grad_norm: f64,
    passes: usize,
}

/// What the backward pass of one micro-batch gave.
struct MicroBatch {
    loss: f64,
    /// The gradient of each trainable variable, in [`Trainable::vars`] order.
    grads: Vec<Tensor>,
}

/// One optimizer step over `batch`: a backward pass per micro-batch, each scaled so that the
/// gradients add up to those of the mean loss over all the batch's scored targets; the sum is
/// clipped to `max_grad_norm` in global L2 norm (as transformers' Trainer does) before AdamW.
fn accumulate_and_step(
    model: &Llama,
    trainable: &Trainable,
    batch: &[&Example],
    spec: &TrainSpec,
    optimizer: &mut AdamW,
) -> Result<StepStats> {
    let scored: usize = batch.iter().map(|e| e.scored_targets()).sum();
    let weight = 1.0 / scored as f64;
    let micros = balanced_micro_batches(batch, spec.micro_batch_size);
    let micro_tokens: Vec<usize> = micros
        .iter()
        .map(|m| m.iter().map(|e| e.ids.len()).sum())
        .collect();
    let pass = |n: usize| -> Result<MicroBatch> {
        let l = weighted_loss(model, &micros[n], weight)?;
        let loss = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut store = l.backward()?;
        let grads = trainable
            .vars()
            .iter()
            .map(|v| {
                store
                    .remove(v.as_tensor())
                    .map_or_else(|| v.zeros_like(), Ok)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(MicroBatch { loss, grads })
    };
    let passes = passes_at_once(model, trainable, &micro_tokens);
    let mut loss = 0.0;
    let mut sums: Option<Vec<Tensor>> = None;
    // In waves of `passes`, each wave summed in micro-batch order before the next starts, so
    // that no more than a wave's gradients wait.
    let jobs: Vec<usize> = (0..micros.len()).collect();
    for wave in jobs.chunks(passes) {
        let results = match wave {
            [n] => vec![pass(*n)?],
            _ => runtime::single_threaded_in_parallel(wave.len(), wave.len(), |i| pass(wave[i]))?,
        };
        for micro in results {
            loss += micro.loss;
            sums = Some(match sums {
                Some(s) => s
                    .iter()
                    .zip(micro.grads)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
                None => micro.grads,
            });
        }
    }
    let Some(sums) = sums else {
        bail!("an optimizer step without examples");
    };
    let mut grads = GradStore::default();
    let squares = sums
        .iter()
        .map(|g| {
            Ok(g.sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        })
        .collect::<Result<Vec<f64>>>()?;
    let grad_norm = squares.iter().sum::<f64>().sqrt();
    let clip = spec.max_grad_norm / (grad_norm + 1e-6);
    for (var, g) in trainable.vars().iter().zip(sums) {
        let g = if spec.max_grad_norm > 0.0 && clip < 1.0 {
            (g * clip)?
        } else {
            g
        };
        grads.insert(var.as_tensor(), g);
    }
    optimizer.step(&grads)?;
    Ok(StepStats {
        loss,
        tokens: micro_tokens.iter().sum(),
        grad_norm,
        passes,
    })
}

/// Σ over the micro-batch's scored targets of `weight`·(−log p(target)), each position scored
/// against the next id. The examples run packed in one row ([`Llama::run_packed`]): each as if
/// alone, with no padding to carry through the projections.
pub fn weighted_loss(model: &Llama, examples: &[&Example], weight: f64) -> Result<Tensor> {
    let device: &Device = model.device();
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let total: usize = lens.iter().sum();
    let ids: Vec<u32> = examples
        .iter()
        .flat_map(|e| e.ids.iter().copied())
        .collect();
    // Only the scored positions go through the LM head: prompt positions would add a
    // vocabulary-wide product each and a zero to the loss.
    let (mut scored, mut targets) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for e in examples {
        for (p, _) in e.scored.iter().enumerate().filter(|(_, &s)| s) {
            scored.push((offset + p) as u32);
            targets.push(e.ids[p + 1]);
        }
        offset += e.ids.len();
    }
    let ids = Tensor::from_vec(ids, (1, total), device)?;
    let hidden = model.run_packed(&model.embed(&ids)?, &lens)?;
    let n = scored.len();
    let hidden = hidden
        .reshape((total, model.config.hidden_size))?
        .index_select(&Tensor::from_vec(scored, n, device)?, 0)?;
    let normed = model.final_norm(&hidden)?;
    let head = model.lm_head.as_ref().unwrap_or(&model.embed_tokens);
    let targets = Tensor::from_vec(targets, n, device)?;
    let weights = Tensor::from_vec(vec![weight; n], n, device)?;
    Ok(ops::linear_cross_entropy(
        &normed, head, &targets, &weights,
    )?)
}

/// Mean loss over every scored target of `examples` (None when there are none), without a
/// gradient graph.
pub fn validation_loss(model: &Llama, examples: &[Example], micro: usize) -> Result<Option<f64>> {
    let scored: usize = examples.iter().map(|e| e.scored_targets()).sum();
    if scored == 0 {
        return Ok(None);
    }
    let refs: Vec<&Example> = examples.iter().collect();
    let mut total = 0.0;
    for chunk in refs.chunks(micro.max(1)) {
        let l = weighted_loss(model, chunk, 1.0 / scored as f64)?;
        total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(warmup: usize) -> TrainSpec {
        TrainSpec {
            batch_size: 4,
            micro_batch_size: 2,
            num_epochs: 1,
            max_steps: None,
            learning_rate: 1.0,
            warmup_steps: warmup,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = spec(2);
        let lrs: Vec<f64> = (0..6).map(|i| s.learning_rate_at(i, 6)).collect();
        assert_eq!(lrs, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(spec(0).learning_rate_at(0, 4), 1.0);
        assert_eq!(s.total_steps(9), 3);
    }

    #[test]
    fn batch_must_divide_into_micro_batches() {
        let mut s = spec(0);
        s.micro_batch_size = 3;
        assert!(s.check().is_err());
    }
}

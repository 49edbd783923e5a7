//! Batched log-likelihood scoring of (context, continuation) requests, as lm-evaluation-harness's
//! `HFLM.loglikelihood` does it: same tokenization of the pair, same left truncation, one forward
//! per right-padded batch of requests sorted longest first.

use std::cmp::Reverse;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use indicatif::ProgressBar;
use tokenizers::Tokenizer;

use crate::eval::CausalLm;

/// One log-likelihood query: log p(continuation | context), both already tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub context_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
}

impl Request {
    fn len(&self) -> usize {
        self.context_ids.len() + self.continuation_ids.len()
    }
}

/// Tokenizes a pair like lm-eval's `_encode_pair`: the context's trailing whitespace moves to
/// the continuation, context and continuation are encoded together, and the continuation is
/// what follows the context's own tokens. Special tokens are added as the tokenizer does by
/// default (a BOS for Llama-2-style tokenizers, nothing for SmolLM2's).
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<Request> {
    let kept = context.trim_end().len();
    let (context, moved_whitespace) = context.split_at(kept);
    let whole = encode(
        tokenizer,
        &format!("{context}{moved_whitespace}{continuation}"),
    )?;
    let context_ids = encode(tokenizer, context)?;
    ensure!(
        !context_ids.is_empty(),
        "empty context before {continuation:?}: nothing to condition the continuation on"
    );
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    ensure!(
        !continuation_ids.is_empty(),
        "continuation {continuation:?} adds no token to its context"
    );
    Ok(Request {
        context_ids,
        continuation_ids,
    })
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
    Ok(encoding.get_ids().to_vec())
}

/// The sum of log p(continuation token | prefix) of each request, in the order given.
///
/// Requests are sorted by total length, longest first (so a batch's padding is small and
/// memory peaks on the first batch), right-padded to the longest in each batch of
/// `batch_size` and scored with one forward per batch. A request longer than
/// [`CausalLm::max_positions`] + 1 tokens loses its oldest context tokens.
pub fn loglikelihoods(
    model: &dyn CausalLm,
    requests: &[Request],
    batch_size: usize,
    progress: &ProgressBar,
) -> Result<Vec<f64>> {
    ensure!(batch_size > 0, "--batch-size must be at least 1");
    let max_positions = model.max_positions();
    for request in requests {
        let n = request.continuation_ids.len();
        if request.context_ids.is_empty() || n == 0 || n > max_positions {
            bail!(
                "cannot score a request with {} context and {n} continuation tokens \
                 (the model takes {max_positions} positions)",
                request.context_ids.len()
            );
        }
    }
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| Reverse(requests[i].len()));
    let mut scores = vec![0.0; requests.len()];
    for chunk in order.chunks(batch_size) {
        let windows: Vec<Window> = chunk
            .iter()
            .map(|&i| Window::new(&requests[i], max_positions))
            .collect();
        let batch_scores = score_batch(model, &windows)?;
        for (&i, score) in chunk.iter().zip(batch_scores) {
            scores[i] = score;
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(scores)
}

/// What the model sees of one request: `(context ++ continuation)` keeping its last
/// `max_positions + 1` tokens, without the final token (nothing left to predict after it).
struct Window<'a> {
    input: Vec<u32>,
    continuation: &'a [u32],
}

impl<'a> Window<'a> {
    fn new(request: &'a Request, max_positions: usize) -> Self {
        let mut tokens = request.context_ids.clone();
        tokens.extend_from_slice(&request.continuation_ids);
        let start = tokens.len().saturating_sub(max_positions + 1);
        tokens.truncate(tokens.len() - 1);
        Window {
            input: tokens.split_off(start),
            continuation: &request.continuation_ids,
        }
    }

    /// The first position whose logits predict a continuation token.
    fn first_scored_position(&self) -> usize {
        self.input.len() - self.continuation.len()
    }
}

/// One forward over the right-padded windows; log-softmax only at the continuation positions.
fn score_batch(model: &dyn CausalLm, windows: &[Window]) -> Result<Vec<f64>> {
    let device = model.device();
    let width = windows.iter().map(|w| w.input.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(windows.len() * width);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, window) in windows.iter().enumerate() {
        ids.extend_from_slice(&window.input);
        // Padding only follows the real tokens and attention is causal: it changes no logit
        // that is read back.
        ids.resize((b + 1) * width, 0);
        let first = b * width + window.first_scored_position();
        rows.extend((first..first + window.continuation.len()).map(|r| r as u32));
        targets.extend_from_slice(window.continuation);
    }
    let ids = Tensor::from_vec(ids, (windows.len(), width), device)?;
    let logits = model.logits(&ids).context("forward pass failed")?;
    let (batch, seq, vocab) = logits
        .dims3()
        .context("the model returned logits that are not (batch, seq, vocab)")?;
    ensure!(
        batch == windows.len() && seq == width,
        "the model returned logits for ({batch}, {seq}) tokens, expected ({}, {width})",
        windows.len()
    );
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    let n_targets = targets.len();
    let rows = Tensor::from_vec(rows, n_targets, device)?;
    let targets = Tensor::from_vec(targets, (n_targets, 1), device)?;
    let scored = logits
        .reshape((batch * seq, vocab))?
        .index_select(&rows, 0)?
        .to_dtype(DType::F32)?;
    let token_logprobs = candle_nn::ops::log_softmax(&scored, D::Minus1)?
        .gather(&targets, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    let mut sums = Vec::with_capacity(windows.len());
    let mut rest = token_logprobs.as_slice();
    for window in windows {
        let (mine, others) = rest.split_at(window.continuation.len());
        sums.push(mine.iter().map(|&lp| f64::from(lp)).sum());
        rest = others;
    }
    Ok(sums)
}

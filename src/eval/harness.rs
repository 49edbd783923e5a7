//! Batched log-likelihood scoring of (context, continuation) requests, as lm-evaluation-harness's
//! `HFLM.loglikelihood` does it: same tokenization of the pair, same left truncation, one forward
//! per right-padded batch, the choices of a question packed in one row with their context once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context, Result};
use indicatif::ProgressBar;
use tokenizers::Tokenizer;

use crate::eval::{CausalLm, PackedRow};

/// One log-likelihood query: log p(continuation | context), both already tokenized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub context_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
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
/// Requests whose windows share a context (the choices of one question) go in one
/// [`PackedRow`]: the context once, then every continuation, each attending to the context
/// and to itself only, so the context is computed once for all choices. Rows are sorted by
/// length, longest first (so a batch's padding is small and memory peaks on the first
/// batch), right-padded to the longest in each batch of `batch_size` rows and scored with one
/// forward per batch, the LM head only at continuation positions. Identical requests are
/// scored once and get the same score. A request longer than
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
    let windows: Vec<Window> = requests
        .iter()
        .map(|r| Window::new(r, max_positions))
        .collect();
    // Identical requests (a question with two equal options) are scored once: scored as two
    // branches of one row they could differ in the last bits, and the tie lm-eval gives to
    // the first option could go to either.
    let mut first_of: HashMap<&Request, usize> = HashMap::new();
    let scored_as: Vec<usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| *first_of.entry(r).or_insert(i))
        .collect();
    let mut by_trunk: BTreeMap<&[u32], Vec<usize>> = BTreeMap::new();
    for (i, window) in windows.iter().enumerate() {
        if scored_as[i] == i {
            by_trunk.entry(window.trunk()).or_default().push(i);
        }
    }
    let mut groups: Vec<(Vec<usize>, PackedRow)> = by_trunk
        .into_values()
        .map(|group| {
            let branches: Vec<&[u32]> = group.iter().map(|&i| windows[i].branch()).collect();
            let row = PackedRow::new(windows[group[0]].trunk(), &branches);
            (group, row)
        })
        .collect();
    groups.sort_by_key(|(_, row)| Reverse(row.len()));
    let mut scores = vec![0.0; requests.len()];
    for chunk in groups.chunks(batch_size) {
        for (i, score) in score_batch(model, &windows, chunk)? {
            scores[i] = score;
        }
        progress.inc(chunk.iter().map(|(group, _)| group.len()).sum::<usize>() as u64);
    }
    for (i, &first) in scored_as.iter().enumerate().filter(|(i, &f)| *i != f) {
        scores[i] = scores[first];
        progress.inc(1);
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

    /// The input up to the token whose logits predict the first continuation token.
    fn trunk(&self) -> &[u32] {
        &self.input[..self.input.len() + 1 - self.continuation.len()]
    }

    /// The rest of the input: the continuation less its last token.
    fn branch(&self) -> &[u32] {
        &self.input[self.trunk().len()..]
    }
}

/// One forward over the packed rows of `groups` (each the windows sharing one trunk, with
/// their [`PackedRow`]), right-padded to the longest; the sum of log-probabilities of each
/// window's continuation, by window index. The LM head runs only where it is read.
fn score_batch(
    model: &dyn CausalLm,
    windows: &[Window],
    groups: &[(Vec<usize>, PackedRow)],
) -> Result<Vec<(usize, f64)>> {
    let width = groups.iter().map(|(_, row)| row.len()).max().unwrap_or(0);
    let rows: Vec<PackedRow> = groups
        .iter()
        .map(|(_, row)| {
            let mut row = row.clone();
            row.pad_to(width);
            row
        })
        .collect();
    let mut reads = Vec::new();
    let mut targets = Vec::new();
    for (r, (group, _)) in groups.iter().enumerate() {
        let start = r * width;
        let trunk = windows[group[0]].trunk().len();
        let mut next = start + trunk;
        for &i in group.iter() {
            let branch = windows[i].branch().len();
            reads.push((start + trunk - 1) as u32);
            reads.extend((next..next + branch).map(|p| p as u32));
            next += branch;
            targets.extend_from_slice(windows[i].continuation);
        }
    }
    let log_probs = model
        .log_probs(&rows, &reads, &targets)
        .context("forward pass failed")?;
    ensure!(
        log_probs.len() == reads.len(),
        "the model returned {} log-probabilities, expected {}",
        log_probs.len(),
        reads.len()
    );
    let mut sums = Vec::new();
    let mut rest = log_probs.as_slice();
    for &i in groups.iter().flat_map(|(group, _)| group) {
        let (mine, others) = rest.split_at(windows[i].continuation.len());
        sums.push((i, mine.iter().map(|&lp| f64::from(lp)).sum()));
        rest = others;
    }
    Ok(sums)
}

//! Perplexity on a text corpus, with the protocol of the layer-pruning papers: the test rows
//! joined with blank lines are tokenized as one stream (with the tokenizer's own special
//! tokens, so at most one BOS, at the very start), cut into non-overlapping windows of
//! `seq_len` tokens (tail dropped), and every window scores the next-token cross-entropy of
//! its `seq_len - 1` targets. Perplexity is exp of the mean NLL over all scored tokens.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::calibration::encode_stream;
use crate::data::corpus::{load_rows, Corpus};
use crate::data::Split;
use crate::eval::{CausalLm, PackedRow};
use crate::io::hub::Hub;
use crate::progress;

/// How a corpus is scored.
#[derive(Clone, Debug)]
pub struct PerplexitySpec {
    /// Window length; capped at the model's maximum positions.
    pub seq_len: usize,
    /// Score at most this many windows (None: all of them).
    pub limit: Option<usize>,
    /// Windows per forward pass.
    pub batch_size: usize,
}

/// The perplexity of one corpus, with what is needed to reproduce it.
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityResult {
    pub dataset: String,
    pub source: String,
    pub perplexity: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub seq_len: usize,
    /// Whether the stream starts with a BOS token added by the tokenizer.
    pub bos: bool,
    pub seconds: f64,
}

/// A corpus's test split tokenized as one stream, to be scored by one model or several.
pub struct TokenStream {
    pub dataset: String,
    pub source: String,
    pub ids: Vec<u32>,
    /// Whether the stream starts with a BOS token added by the tokenizer.
    pub bos: bool,
}

impl TokenStream {
    pub fn load(tokenizer: &Tokenizer, corpus: &Corpus, data_dir: Option<&Path>) -> Result<Self> {
        let rows = load_rows(corpus, Split::Eval, data_dir, &Hub::from_env())?;
        let encoding = encode_stream(tokenizer, &rows.rows.join("\n\n"), true)?;
        Ok(Self {
            dataset: corpus.name(),
            source: rows.source,
            bos: encoding.get_special_tokens_mask().first() == Some(&1),
            ids: encoding.get_ids().to_vec(),
        })
    }
}

/// Perplexity of `model` on the test split of `corpus`.
pub fn perplexity(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    corpus: &Corpus,
    data_dir: Option<&Path>,
    spec: &PerplexitySpec,
) -> Result<PerplexityResult> {
    let started = Instant::now();
    let stream = TokenStream::load(tokenizer, corpus, data_dir)?;
    let mut result = perplexity_of(model, &stream, spec)?;
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Perplexity of `model` on a tokenized stream.
pub fn perplexity_of(
    model: &dyn CausalLm,
    stream: &TokenStream,
    spec: &PerplexitySpec,
) -> Result<PerplexityResult> {
    let started = Instant::now();
    let (mean_nll, tokens_scored, windows) = perplexity_of_stream(model, &stream.ids, spec)
        .with_context(|| format!("perplexity on {} ({})", stream.dataset, stream.source))?;
    Ok(PerplexityResult {
        dataset: stream.dataset.clone(),
        source: stream.source.clone(),
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens_scored,
        windows,
        seq_len: window_len(model, spec),
        bos: stream.bos,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Mean next-token NLL of a token stream, with the number of scored tokens and windows.
pub fn perplexity_of_stream(
    model: &dyn CausalLm,
    ids: &[u32],
    spec: &PerplexitySpec,
) -> Result<(f64, usize, usize)> {
    let seq_len = window_len(model, spec);
    if seq_len < 2 {
        bail!("perplexity needs windows of at least 2 tokens, got a sequence length of {seq_len}");
    }
    if spec.batch_size == 0 {
        bail!("the perplexity batch size must be at least 1");
    }
    let available = ids.len() / seq_len;
    let windows = spec.limit.map_or(available, |limit| limit.min(available));
    if windows == 0 {
        bail!(
            "the text has {} tokens, not enough for one window of {seq_len} (or the window \
             limit is 0)",
            ids.len()
        );
    }
    let progress = progress::bar(windows as u64, "perplexity", "windows");
    let mut total_nll = 0.0;
    for batch in ids[..windows * seq_len].chunks(spec.batch_size * seq_len) {
        let windows: Vec<&[u32]> = batch.chunks(seq_len).collect();
        let rows: Vec<PackedRow> = windows.iter().map(|w| PackedRow::new(w, &[])).collect();
        // Position t of each window scores token t + 1.
        let reads: Vec<u32> = (0..rows.len())
            .flat_map(|r| (r * seq_len..(r + 1) * seq_len - 1).map(|p| p as u32))
            .collect();
        let targets: Vec<u32> = windows
            .iter()
            .flat_map(|w| w[1..].iter().copied())
            .collect();
        let log_probs = model.log_probs(&rows, &reads, &targets)?;
        total_nll -= log_probs.iter().map(|&lp| f64::from(lp)).sum::<f64>();
        progress.inc(rows.len() as u64);
    }
    progress.finish_and_clear();
    let tokens = windows * (seq_len - 1);
    Ok((total_nll / tokens as f64, tokens, windows))
}

fn window_len(model: &dyn CausalLm, spec: &PerplexitySpec) -> usize {
    spec.seq_len.min(model.max_positions())
}

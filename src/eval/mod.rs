//! Evaluation: perplexity on text corpora and lm-evaluation-harness-compatible zero-shot tasks.

pub mod harness;
pub mod perplexity;
pub mod tasks;

use candle_core::{Device, Tensor};

/// What evaluation needs from a model: next-token logits for a batch of token ids.
///
/// Kept as a trait so the scoring code can be tested against small hand-made models.
pub trait CausalLm {
    /// `ids` is a (batch, seq) u32 tensor on [`CausalLm::device`]; returns (batch, seq, vocab)
    /// f32 logits where position t predicts token t+1. Right padding is allowed: attention is
    /// causal, so padding never changes the logits of earlier positions.
    fn logits(&self, ids: &Tensor) -> anyhow::Result<Tensor>;
    fn device(&self) -> &Device;
    /// Longest sequence the model accepts (max_position_embeddings).
    fn max_positions(&self) -> usize;
}

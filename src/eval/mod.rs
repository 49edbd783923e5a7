//! Evaluation: perplexity on text corpora and lm-evaluation-harness-compatible zero-shot tasks.

pub mod harness;
pub mod perplexity;
pub mod tasks;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};

pub use crate::model::packed::PackedRow;
use crate::model::{ops, Llama};

/// What evaluation needs from a model: the log-likelihood of given next tokens.
///
/// Kept as a trait so the scoring code can be tested against small hand-made models.
pub trait CausalLm {
    /// log p(`targets[i]` | the tokens that token `reads[i]` sees, itself included), for
    /// packed `rows` of one length on [`CausalLm::device`], with `reads` numbered row-major
    /// over (rows, row length). Each token attends to the tokens [`PackedRow::sees`] lets it
    /// see, at its own rotary position.
    fn log_probs(
        &self,
        rows: &[PackedRow],
        reads: &[u32],
        targets: &[u32],
    ) -> anyhow::Result<Vec<f32>>;
    fn device(&self) -> &Device;
    /// Longest sequence the model accepts (max_position_embeddings).
    fn max_positions(&self) -> usize;
}

impl CausalLm for Llama {
    /// The head (a fifth of SmolLM2's forward) only at the tokens read, a block of rows at a
    /// time.
    fn log_probs(
        &self,
        rows: &[PackedRow],
        reads: &[u32],
        targets: &[u32],
    ) -> anyhow::Result<Vec<f32>> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        let h = self.packed_hidden(rows)?;
        let reads = Tensor::new(reads, self.device())?;
        let normed = self.final_norm(&h.index_select(&reads, 0)?)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let targets = Tensor::new(targets, self.device())?;
        Ok(ops::target_log_probs(&normed, w, &targets)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    fn device(&self) -> &Device {
        Llama::device(self)
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}

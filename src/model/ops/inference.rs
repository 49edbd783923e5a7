//! Inference-only ops, without a backward: attention under an arbitrary mask (packed rows
//! that share a prefix) and the log-likelihoods of given tokens under the LM head.

use candle_core::{Result, Tensor};

use crate::model::logits::logit_blocks;
use crate::model::numeric::at_least_f32;

/// Scaled dot-product attention under an additive `mask` (batch, 1, 1, seq, seq) of 0 and −inf,
/// with q (batch, heads, seq, d) and grouped k, v (batch, kv_heads, seq, d); softmax in at
/// least f32. As many batch rows at a time as keep the f32 scores (heads × seq² per row) within
/// `score_bytes` (at least one row), so that long few-shot rows do not take gigabytes. For inference only: it has no backward, so it refuses inputs in a
/// gradient graph rather than drop their gradients.
pub fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
    score_bytes: usize,
) -> Result<Tensor> {
    if q.track_op() || k.track_op() || v.track_op() {
        candle_core::bail!("masked attention has no backward pass");
    }
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let groups = heads / kv_heads;
    let per_chunk = (score_bytes / (heads * t * t * 4).max(1)).clamp(1, b.max(1));
    let chunks = (0..b)
        .step_by(per_chunk)
        .map(|i| {
            let n = per_chunk.min(b - i);
            let (q, k, v) = (q.narrow(0, i, n)?, k.narrow(0, i, n)?, v.narrow(0, i, n)?);
            let scores = (q.reshape((n, kv_heads, groups * t, d))?.matmul(&k.t()?)? * scale)?
                .reshape((n, kv_heads, groups, t, t))?
                .broadcast_add(&mask.narrow(0, i, n)?)?;
            let p = candle_nn::ops::softmax_last_dim(&at_least_f32(&scores)?)?
                .to_dtype(q.dtype())?
                .reshape((n, kv_heads, groups * t, t))?;
            p.matmul(&v.contiguous()?)?.reshape((n, heads, t, d))
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&chunks, 0)
}

/// The scores [`masked_attention`] holds at once in a model's forward pass.
pub const MASKED_SCORES_BYTES: usize = 64 << 20;

/// log softmax(x·wᵀ)[target] per row, (rows,) in at least f32, for x (rows, hidden), a frozen
/// head w (vocab, hidden) and u32 `targets` (rows): the head's log-likelihoods without a
/// (rows, vocab) tensor. Inference only: no backward.
pub fn target_log_probs(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.reshape((x.dim(0)?, 1))?;
    let blocks = logit_blocks(x, w, &targets, None)?
        .map(|b| b?.nll.neg())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&blocks, 0)?.squeeze(1)
}

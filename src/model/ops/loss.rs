//! The LM head's cross-entropy, fused with the head so that no (rows, vocab) logits are kept.

use candle_core::{Result, Tensor, D};

use crate::model::autograd::with_input_grad;
use crate::model::logits::logit_blocks;
use crate::model::matmul::matmul;
use crate::model::numeric::at_least_f32;

/// Σ over rows of weight·(logsumexp(ℓ) − ℓ[target]) with logits ℓ = x·wᵀ, for x (rows, hidden),
/// a frozen head w (vocab, hidden), u32 `targets` (rows) and `weights` (rows): the weighted
/// cross-entropy of the LM head, [`LOGIT_ROWS`](crate::model::logits::LOGIT_ROWS) rows of logits at a time, so that no
/// (rows, vocab) tensor ever exists. When x is in a graph, each block's gradient
/// ((softmax(ℓ) − onehot)·weight)·w is computed while its logits are at hand ([`logit_blocks`]) and the backward
/// only scales it: the same two head products as a forward and a backward, without keeping
/// the logits.
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let targets = targets.reshape((rows, 1))?;
    if w.track_op() || weights.track_op() {
        let logits = at_least_f32(&x.matmul(&w.t()?)?)?;
        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let weights = weights.reshape((rows, 1))?.to_dtype(log_p.dtype())?;
        return (log_p.gather(&targets, 1)? * weights)?.sum_all()?.neg();
    }
    let track = x.track_op();
    let weights = weights.reshape((rows, 1))?;
    let mut losses = Vec::new();
    let mut grads = Vec::new();
    for block in logit_blocks(x, w, &targets, track.then_some(&weights))? {
        let block = block?;
        let wb = weights
            .narrow(0, block.start, block.rows)?
            .to_dtype(block.nll.dtype())?;
        losses.push((&block.nll * &wb)?.sum_all()?);
        if let Some(dlogits) = block.dlogits {
            grads.push(matmul(&dlogits.to_dtype(x.dtype())?, w)?);
        }
    }
    let value = Tensor::stack(&losses, 0)?.sum_all()?;
    if !track {
        return Ok(value);
    }
    let dx = Tensor::cat(&grads, 0)?;
    with_input_grad("linear-cross-entropy", x, value, move |_, _, g| {
        dx.broadcast_mul(&g.to_dtype(dx.dtype())?)
    })
}

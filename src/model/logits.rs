//! The LM head's cross-entropy, a block of rows at a time: logits ℓ = x·wᵀ, each row's
//! negative log-likelihood logsumexp(ℓ) − ℓ[target] and, for a backward, its weighted
//! gradient (softmax(ℓ) − onehot)·weight with respect to ℓ.
//!
//! On the CPU in f32 all of that is one pass per row over the GEMM's own output, overwritten
//! in place while the row is in cache. candle's ops would take eight passes over the block
//! (max, subtract, exp, sum, gather, divide, scatter, scale), four fresh 48 MB buffers and
//! their page faults, and one scalar libm `expf` call per logit: together more than a tenth of
//! a gradient pass. Other devices and dtypes take those ops.

use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::kernels::{exp_nonpositive, max, LANES};
use super::matmul::matmul;

/// Rows of logits computed at a time: 128 × a 49k vocabulary is 24 MB, large enough for an
/// efficient head GEMM and under glibc's 32 MiB mmap threshold, so the block reuses heap
/// memory. At 256 rows (48 MB) each block was a fresh mapping: 19 million page faults in a
/// 6-layer SmolLM2 compression.
pub const LOGIT_ROWS: usize = 128;

/// One block of rows of the head's cross-entropy.
pub struct LogitBlock {
    pub start: usize,
    pub rows: usize,
    /// logsumexp(ℓ) − ℓ[target] per row, (rows, 1), in at least f32.
    pub nll: Tensor,
    /// (softmax(ℓ) − onehot(target))·weight, (rows, vocab), when weights were given.
    pub dlogits: Option<Tensor>,
}

/// The head's cross-entropy over x (rows, hidden) for a frozen head w (vocab, hidden) and
/// (rows, 1) u32 `targets`, [`LOGIT_ROWS`] rows at a time so that no (rows, vocab) tensor
/// ever exists. With (rows, 1) `weights`, each block also carries its logits' gradient.
pub fn logit_blocks<'a>(
    x: &'a Tensor,
    w: &'a Tensor,
    targets: &'a Tensor,
    weights: Option<&'a Tensor>,
) -> Result<impl Iterator<Item = Result<LogitBlock>> + 'a> {
    let rows = x.dim(0)?;
    let xd = x.detach();
    Ok((0..rows).step_by(LOGIT_ROWS).map(move |start| {
        let n = LOGIT_ROWS.min(rows - start);
        let logits = super::numeric::at_least_f32(&matmul(&xd.narrow(0, start, n)?, &w.t()?)?)?;
        let targets = targets.narrow(0, start, n)?;
        let weights = weights.map(|w| w.narrow(0, start, n)).transpose()?;
        let (nll, dlogits) = if logits.device().is_cpu() && logits.dtype() == DType::F32 {
            fused_cpu(logits, &targets, weights.as_ref())?
        } else {
            composed(&logits, &targets, weights.as_ref())?
        };
        Ok(LogitBlock {
            start,
            rows: n,
            nll,
            dlogits,
        })
    }))
}

/// The same with candle's ops, for f64 and for GPUs.
fn composed(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let max = logits.max_keepdim(1)?;
    let exp = logits.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(1)?;
    let nll = ((sum.log()? + &max)? - logits.gather(targets, 1)?)?;
    let dlogits = match weights {
        None => None,
        Some(weights) => {
            let weights = weights.to_dtype(logits.dtype())?;
            let p = exp.broadcast_div(&sum)?;
            p.scatter_add_set(targets, &weights.ones_like()?.neg()?, 1)?;
            Some(p.broadcast_mul(&weights)?)
        }
    };
    Ok((nll, dlogits))
}

/// One pass per row over the f32 logits, in place: they become the weighted gradient (or are
/// just read, without weights).
fn fused_cpu(
    logits: Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let logits = logits.contiguous()?;
    let rows = logits.dim(0)?;
    let op = RowCrossEntropy {
        targets: targets.flatten_all()?.to_vec1()?,
        weights: weights
            .map(|w| w.flatten_all()?.to_dtype(DType::F32)?.to_vec1())
            .transpose()?,
        nll: Mutex::new(Vec::new()),
    };
    logits.inplace_op1(&op)?;
    let nll = op.nll.into_inner().unwrap_or_else(PoisonError::into_inner);
    let nll = Tensor::from_vec(nll, (rows, 1), logits.device())?;
    Ok((nll, op.weights.is_some().then_some(logits)))
}

struct RowCrossEntropy {
    targets: Vec<u32>,
    weights: Option<Vec<f32>>,
    nll: Mutex<Vec<f32>>,
}

impl InplaceOp1 for RowCrossEntropy {
    fn name(&self) -> &'static str {
        "row-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("row-cross-entropy: the logits are not f32");
        };
        let (rows, vocab) = layout.shape().dims2()?;
        let start = layout.start_offset();
        let data = &mut data[start..start + rows * vocab];
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("target {bad} is outside the vocabulary of {vocab}");
        }
        let mut nll = vec![0f32; rows];
        data.par_chunks_mut(vocab)
            .zip(nll.par_iter_mut())
            .enumerate()
            .for_each(|(r, (row, out))| {
                let weight = self.weights.as_ref().map(|w| w[r]);
                *out = row_cross_entropy(row, self.targets[r] as usize, weight);
            });
        *self.nll.lock().unwrap_or_else(PoisonError::into_inner) = nll;
        Ok(())
    }
}

/// logsumexp(row) − row[target]; with a weight, the row becomes (softmax(row) − onehot)·weight.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn row_cross_entropy(row: &mut [f32], target: usize, weight: Option<f32>) -> f32 {
    let picked = row[target];
    let max = max(row);
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    if let Some(weight) = weight {
        let scale = weight / sum;
        row.iter_mut().for_each(|x| *x *= scale);
        row[target] -= weight;
    }
    sum.ln() + max - picked
}

//! The causal softmax of a block of attention scores and its backward.
//!
//! On the CPU in f32 each is one parallel pass per row, in place over the GEMM's own output.
//! candle's ops would take five serial passes for the forward (scale, mask, then the softmax's
//! own) and five more for the backward, each with a fresh buffer the size of the scores: a
//! sixth of a gradient pass at 512 tokens. Other devices and dtypes take those ops.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Result, Tensor, D};
use multiversion::multiversion;
use rayon::prelude::*;

use super::kernels::{dot, exp_nonpositive, max, sum};
use super::numeric::at_least_f32;

/// A block of query rows `start..start + rows` of causal attention: in scores (…, rows,
/// start + rows), row i of the flattened leading dimensions is the query at position
/// start + i % rows, which sees keys 0..=its position.
#[derive(Clone, Copy, Debug)]
pub struct CausalBlock {
    pub start: usize,
    pub rows: usize,
    pub scale: f64,
}

impl CausalBlock {
    fn cols(&self) -> usize {
        self.start + self.rows
    }

    /// Keys the query of flattened row `row` sees.
    fn visible(&self, row: usize) -> usize {
        self.start + row % self.rows + 1
    }

    /// softmax(scale·scores) over the visible keys, 0 for the others, in the scores' dtype
    /// (computed in at least f32, as transformers does).
    pub fn softmax(&self, scores: Tensor) -> Result<Tensor> {
        if is_cpu_f32(&scores) {
            let scores = scores.contiguous()?;
            scores.inplace_op1(&Forward(*self))?;
            return Ok(scores);
        }
        let (shape, cols) = (scores.shape().clone(), self.cols());
        let mask = self.mask(scores.dtype(), scores.device())?;
        let masked = (scores.reshape(((), self.rows, cols))? * self.scale)?.broadcast_add(&mask)?;
        candle_nn::ops::softmax_last_dim(&at_least_f32(&masked)?)?
            .to_dtype(scores.dtype())?
            .reshape(shape)
    }

    /// dL/dscores from p = [`Self::softmax`] and dp = dL/dp: scale·p·(dp − Σ dp·p) per row.
    pub fn softmax_backward(&self, p: &Tensor, dp: Tensor) -> Result<Tensor> {
        if is_cpu_f32(p) && is_cpu_f32(&dp) {
            let (p, dp) = (p.contiguous()?, dp.contiguous()?);
            dp.inplace_op2(&p, &Backward(*self))?;
            return Ok(dp);
        }
        let (pf, dpf) = (at_least_f32(p)?, at_least_f32(&dp)?);
        let dot = (&dpf * &pf)?.sum_keepdim(D::Minus1)?;
        ((pf * dpf.broadcast_sub(&dot)?)? * self.scale)?.to_dtype(dp.dtype())
    }

    /// 0 where the key is visible, −inf past the query's own position: (rows, cols).
    fn mask(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let cols = self.cols();
        let mask: Vec<f32> = (0..self.rows)
            .flat_map(|i| {
                (0..cols).map(move |j| {
                    if j < self.visible(i) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Tensor::from_vec(mask, (self.rows, cols), device)?.to_dtype(dtype)
    }
}

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The elements `layout` views, which must be contiguous rows of `cols`.
fn row_range(layout: &Layout, cols: usize) -> Result<Range<usize>> {
    if !layout.is_contiguous() || layout.dims().last() != Some(&cols) {
        candle_core::bail!(
            "causal softmax: a tensor of shape {:?}, not contiguous rows of {cols}",
            layout.dims()
        );
    }
    let start = layout.start_offset();
    Ok(start..start + layout.shape().elem_count())
}

struct Forward(CausalBlock);

impl InplaceOp1 for Forward {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let block = self.0;
        let scale = block.scale as f32;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("causal softmax: the scores are not f32");
        };
        data[row_range(layout, block.cols())?]
            .par_chunks_mut(block.cols())
            .enumerate()
            .for_each(|(i, row)| softmax_row(row, block.visible(i), scale));
        Ok(())
    }
}

struct Backward(CausalBlock);

impl InplaceOp2 for Backward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        dp: &mut CpuStorage,
        dp_layout: &Layout,
        p: &CpuStorage,
        p_layout: &Layout,
    ) -> Result<()> {
        let block = self.0;
        let cols = block.cols();
        let (CpuStorage::F32(dp), CpuStorage::F32(p)) = (dp, p) else {
            candle_core::bail!("causal softmax backward: the operands are not f32");
        };
        let (dp, p) = (
            &mut dp[row_range(dp_layout, cols)?],
            &p[row_range(p_layout, cols)?],
        );
        if p.len() != dp.len() {
            candle_core::bail!(
                "causal softmax backward: {} probabilities for {} gradients",
                p.len(),
                dp.len()
            );
        }
        let scale = block.scale as f32;
        dp.par_chunks_mut(cols)
            .zip(p.par_chunks(cols))
            .enumerate()
            .for_each(|(i, (dp, p))| softmax_backward_row(dp, p, block.visible(i), scale));
        Ok(())
    }
}

/// softmax(row[..visible]·scale), and zeros after it.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn softmax_row(row: &mut [f32], visible: usize, scale: f32) {
    let (seen, unseen) = row.split_at_mut(visible);
    let max = max(seen) * scale;
    // The sum apart from the exponentials, so that both loops vectorise.
    seen.iter_mut()
        .for_each(|x| *x = exp_nonpositive(*x * scale - max));
    let inv = 1.0 / sum(seen);
    seen.iter_mut().for_each(|x| *x *= inv);
    unseen.fill(0.0);
}

/// The gradient of the scaled scores from that of the probabilities `dp`, in place.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn softmax_backward_row(dp: &mut [f32], p: &[f32], visible: usize, scale: f32) {
    let (dp_seen, dp_unseen) = dp.split_at_mut(visible);
    let dot = dot(dp_seen, &p[..visible]);
    for (d, &p) in dp_seen.iter_mut().zip(&p[..visible]) {
        *d = p * (*d - dot) * scale;
    }
    dp_unseen.fill(0.0);
}

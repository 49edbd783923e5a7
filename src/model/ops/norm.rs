//! Llama's RMSNorm with an input-only backward.

use candle_core::{DType, Result, Tensor, D};

use crate::model::autograd::with_input_grad;
use crate::model::kernels;
use crate::model::numeric::at_least_f32;

/// Llama's RMSNorm: normalise in f32, cast back, then scale (transformers' order of casts).
/// Composed from candle ops: the form for f64, which the fused kernel lacks, and for a
/// trainable weight.
fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = at_least_f32(x)?;
    xf.broadcast_mul(&inv_rms(&xf, eps)?)?
        .to_dtype(x.dtype())?
        .broadcast_mul(weight)
}

/// 1 / √(mean(x²) + eps) over the last dimension, kept as a size-1 dimension.
fn inv_rms(x: &Tensor, eps: f64) -> Result<Tensor> {
    (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()
}

/// Llama's RMSNorm x·r·w, r = 1/√(mean(x²) + eps) per row. The weight must be frozen to take
/// the fused kernel; the backward is g·w·r − x·r³·mean(g·w·x), in at least f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if weight.track_op() {
        return rms_norm_composed(x, weight, eps);
    }
    let value = match x.dtype() {
        DType::F64 => rms_norm_composed(&x.detach(), weight, eps)?,
        _ => candle_nn::ops::rms_norm(&x.detach().contiguous()?, weight, eps as f32)?,
    };
    let weight = weight.clone();
    with_input_grad("rms-norm", x, value, move |x, _, g| {
        rms_norm_input_grad(x, g, &weight, eps)
    })
}

/// The backward of [`rms_norm`]: g·w·r − x·r³·mean(g·w·x), in at least f32.
pub(super) fn rms_norm_input_grad(
    x: &Tensor,
    g: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if let Some(dx) = kernels::rms_norm_backward(x, g, weight, eps)? {
        return Ok(dx);
    }
    let xf = at_least_f32(x)?;
    let gw = at_least_f32(g)?.broadcast_mul(&at_least_f32(weight)?)?;
    let r = inv_rms(&xf, eps)?;
    let gwx = (&gw * &xf)?.mean_keepdim(D::Minus1)?;
    let dx = (gw.broadcast_mul(&r)? - xf.broadcast_mul(&(r.powf(3.0)? * gwx)?)?)?;
    dx.to_dtype(x.dtype())
}

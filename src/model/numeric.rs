//! Numeric helpers every layer of the model shares: the upcast of half precision for
//! reductions, and products with a frozen weight.

use candle_core::{DType, Result, Tensor};

use super::autograd::with_input_grad;
use super::matmul::matmul;

/// Half-precision tensors are upcast to f32 for reductions, logits and losses; f32 and f64
/// stay as they are.
pub fn at_least_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// x (…, k) · m (k, n), flattening the leading dimensions so that candle runs one GEMM.
pub(crate) fn matmul_rows(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (lead, inner) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let y = matmul(&x.reshape((rows, inner[0]))?, m)?;
    let mut out_shape = lead.to_vec();
    out_shape.push(m.dim(1)?);
    y.reshape(out_shape)
}

/// x (…, in) · wᵀ for a 2-D (out, in) weight. The backward is g · w alone: no weight gradient.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        return matmul_rows(x, &w.t()?);
    }
    let value = matmul_rows(&x.detach(), &w.t()?)?;
    let w = w.clone();
    with_input_grad("frozen-matmul-t", x, value, move |_, _, g| {
        matmul_rows(g, &w)
    })
}

//! The three ops where candle's fast kernels carry no gradient (RMSNorm, softmax, RoPE).
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and `rope` are built without a backward pass:
//! in a graph they act as constants, so dL/dS comes out None or silently wrong. Each op here
//! takes the fused kernel when its inputs are not part of a gradient graph (evaluation, block
//! influence) and the composed, differentiable form otherwise.

use candle_core::{DType, Result, Tensor, D};

/// The composed form is needed in a gradient graph, and for f64 (which the fused kernels lack).
fn needs_grad(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op() || x.dtype() == DType::F64)
}

/// Half-precision tensors are upcast to f32 for reductions, logits and losses; f32 and f64
/// stay as they are.
pub fn at_least_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// Llama's RMSNorm: normalise in f32, cast back, then scale (transformers' order of casts).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !needs_grad(&[x, weight]) {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let dtype = x.dtype();
    let xf = at_least_f32(x)?;
    let inv_rms = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    xf.broadcast_mul(&inv_rms)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

/// Softmax over the last dimension, at least in f32 (as transformers does for attention weights).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = at_least_f32(x)?;
    let p = if needs_grad(&[x]) {
        candle_nn::ops::softmax(&xf, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&xf)?
    };
    p.to_dtype(dtype)
}

/// Rotary position embedding in the non-interleaved (rotate-half) layout of HF checkpoints.
/// `x` is (batch, heads, seq, head_dim); `cos`/`sin` are (seq, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if needs_grad(&[x]) {
        candle_nn::rotary_emb::rope_slow(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn assert_close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max abs diff {d} >= {tol}");
    }

    /// The fast and the differentiable forms must compute the same function.
    #[test]
    fn fast_and_differentiable_paths_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let xt = xv.as_tensor();
        assert_close(&rms_norm(&x, &w, 1e-5).unwrap(), &rms_norm(xt, &w, 1e-5).unwrap(), 1e-5);
        assert_close(&softmax_last_dim(&x).unwrap(), &softmax_last_dim(xt).unwrap(), 1e-6);
        assert_close(&rope(&x, &cos, &sin).unwrap(), &rope(xt, &cos, &sin).unwrap(), 1e-5);
    }

    /// Central finite differences of sum(op(x) * probe) against the autograd gradient, in f64
    /// so that the difference quotient is accurate to ~1e-8.
    fn check_grad(op: impl Fn(&Tensor) -> Result<Tensor>) {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f64, 1., (1, 2, 3, 4), &dev).unwrap();
        let probe = Tensor::randn(0f64, 1., (1, 2, 3, 4), &dev).unwrap();
        let f = |x: &Tensor| -> f64 {
            (op(x).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let xv = Var::from_tensor(&x0).unwrap();
        let loss = (op(xv.as_tensor()).unwrap() * &probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(xv.as_tensor()).expect("gradient is None");
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-5;
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let fp = f(&Tensor::from_vec(plus, x0.shape(), &dev).unwrap());
            let fm = f(&Tensor::from_vec(minus, x0.shape(), &dev).unwrap());
            let fd = (fp - fm) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "i={i}: fd {fd} vs autograd {}", g[i]);
        }
    }

    #[test]
    fn rms_norm_gradient_matches_finite_differences() {
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 1.5], &Device::Cpu).unwrap();
        check_grad(|x| rms_norm(x, &w, 1e-5));
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        check_grad(softmax_last_dim);
    }

    #[test]
    fn rope_gradient_matches_finite_differences() {
        let cos = Tensor::new(&[[0.3f64, 0.9], [0.1, -0.4], [0.7, 0.2]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[0.5f64, -0.2], [0.8, 0.6], [-0.3, 0.9]], &Device::Cpu).unwrap();
        check_grad(|x| rope(x, &cos, &sin));
    }
}

//! Fast kernels with hand-written, input-only backward passes.
//!
//! In a GRASP gradient pass the only trainable tensors are the singular values: every weight is
//! frozen. candle's fused `rms_norm`, `softmax_last_dim` and `rope` carry no backward at all (in
//! a graph they act as constants, so dL/dS comes out None or silently wrong), its matmul backward
//! also computes the gradient of every frozen weight, and the composed forms build slow backward
//! graphs over large tensors. Each op here runs the fast kernel on the detached input and, when
//! that input is in a gradient graph, attaches the gradient with respect to the input alone.
//! When an operand that should be frozen is in a graph after all, the op falls back to candle's
//! composed, differentiable form so that no gradient is silently dropped.

use std::sync::{Mutex, PoisonError};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D,
};

/// Half-precision tensors are upcast to f32 for reductions, logits and losses; f32 and f64
/// stay as they are.
pub fn at_least_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// The gradient with respect to an op's input, given that input, the op's output and the
/// output's gradient (all detached).
type InputGrad = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// The graph node of a value computed outside the graph: its forward hands that value over,
/// its backward is a hand-written input gradient.
struct InputOnly {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    input_grad: InputGrad,
}

impl InputOnly {
    /// Taken rather than cloned so that the op does not keep a second copy of the output alive.
    fn take_value(&self) -> Result<Tensor> {
        self.value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }
}

/// A fresh copy of exactly the elements `layout` views: candle's `try_clone` copies the whole
/// storage whatever the layout.
fn copy_viewed<S>(storage: &S, layout: &Layout) -> Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: `copy_strided_src` writes every element of `layout`'s shape, so nothing
    // uninitialised is ever read (candle's own `contiguous` does the same).
    let mut copy = unsafe {
        storage
            .device()
            .alloc_uninit(layout.shape(), storage.dtype())?
    };
    storage.copy_strided_src(&mut copy, 0, layout)?;
    Ok(copy)
}

impl CustomOp1 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn bwd(&self, input: &Tensor, output: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Detached so that the gradient does not drag the forward graph along with it.
        (self.input_grad)(&input.detach(), &output.detach(), grad).map(Some)
    }
}

/// `value`, computed by a fast kernel from `input.detach()`, as a node of `input`'s graph whose
/// backward is `input_grad`; just `value` when `input` is not in a graph.
fn with_input_grad(
    name: &'static str,
    input: &Tensor,
    value: Tensor,
    input_grad: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    input.apply_op1(InputOnly {
        name,
        value: Mutex::new(Some(value)),
        input_grad: Box::new(input_grad),
    })
}

/// x (…, k) · m (k, n), flattening the leading dimensions so that candle runs one GEMM.
fn matmul_rows(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (lead, inner) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, inner[0]))?.matmul(m)?;
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
        let xf = at_least_f32(x)?;
        let gw = at_least_f32(g)?.broadcast_mul(&at_least_f32(&weight)?)?;
        let r = inv_rms(&xf, eps)?;
        let gwx = (&gw * &xf)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - xf.broadcast_mul(&(r.powf(3.0)? * gwx)?)?)?;
        dx.to_dtype(x.dtype())
    })
}

/// Softmax over the last dimension, at least in f32 (as transformers does for attention
/// weights). The backward is s·(g − Σ g·s).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let xf = at_least_f32(x)?;
    let value = candle_nn::ops::softmax_last_dim(&xf.detach().contiguous()?)?;
    let s = with_input_grad("softmax-last-dim", &xf, value, |_, s, g| {
        s * g.broadcast_sub(&(g * s)?.sum_keepdim(D::Minus1)?)?
    })?;
    s.to_dtype(x.dtype())
}

/// Rotary position embedding in the non-interleaved (rotate-half) layout of HF checkpoints.
/// `x` is (batch, heads, seq, head_dim); `cos`/`sin` are (seq, head_dim / 2). Each pair is
/// rotated by θ, so the backward rotates the gradient by −θ: rope(g, cos, −sin).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.track_op() || sin.track_op() {
        return candle_nn::rotary_emb::rope_slow(x, cos, sin);
    }
    let value = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    with_input_grad("rope", x, value, move |_, _, g| {
        candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &sin.neg()?)
    })
}

/// Σ over rows of weight · (logsumexp(logits) − logits[target]): the weighted cross-entropy of
/// `logits` (…, vocab) against u32 `targets` (…), with `weights` (…) in the logits' dtype.
/// The backward (softmax(logits) − onehot(target))·weight is computed from the logits in the
/// backward pass itself, so that no (rows, vocab) tensor is kept alive for it.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let vocab = logits.dim(D::Minus1)?;
    let rows = logits.elem_count() / vocab;
    let targets = targets.reshape((rows, 1))?;
    let weights = weights.reshape((rows, 1))?;
    if weights.track_op() {
        let log_p = candle_nn::ops::log_softmax(&logits.reshape((rows, vocab))?, D::Minus1)?;
        return (log_p.gather(&targets, 1)? * weights)?.sum_all()?.neg();
    }
    let l = logits.detach().reshape((rows, vocab))?;
    let max = l.max_keepdim(1)?;
    let log_sum_exp = (l.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
    let value = ((log_sum_exp - l.gather(&targets, 1)?)? * &weights)?.sum_all()?;
    with_input_grad(
        "weighted-cross-entropy",
        logits,
        value,
        move |logits, _, g| {
            let p = candle_nn::ops::softmax_last_dim(&logits.reshape((rows, vocab))?)?;
            let minus_one = Tensor::ones((rows, 1), p.dtype(), p.device())?.neg()?;
            p.scatter_add_set(&targets, &minus_one, 1)?;
            p.broadcast_mul(&weights.broadcast_mul(g)?)?
                .reshape(logits.shape())
        },
    )
}

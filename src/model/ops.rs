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
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape,
    Storage, Tensor, D,
};

use super::kernels;
use super::linear::Linear;
use super::logits::logit_blocks;
use super::matmul::matmul;
use super::softmax::CausalBlock;

/// Half-precision tensors are upcast to f32 for reductions, logits and losses; f32 and f64
/// stay as they are.
pub fn at_least_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// The gradients with respect to an op's inputs, given those inputs, the op's output and the
/// output's gradient (all detached); None for an input that needs none.
type InputGrads =
    Box<dyn Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// The graph node of a value computed outside the graph: its forward hands that value over,
/// its backward is a hand-written input gradient.
struct InputOnly {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    input_grads: InputGrads,
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

    fn cpu_value(&self) -> Result<(CpuStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn cuda_value(&self) -> Result<(CudaStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn grads(
        &self,
        inputs: &[&Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        // Detached so that the gradient does not drag the forward graph along with it.
        let inputs: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        (self.input_grads)(&inputs, &output.detach(), grad)
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
        self.cpu_value()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    fn bwd(&self, input: &Tensor, output: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[input], output, grad)?.pop().flatten())
    }
}

impl CustomOp2 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_value()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], output, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_value()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], output, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// `value`, computed by a fast kernel from `input.detach()`, as a node of `input`'s graph whose
/// backward is `input_grad(input, output, output_grad)`; just `value` when `input` is not in a
/// graph.
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
        input_grads: Box::new(move |x, y, g| Ok(vec![Some(input_grad(&x[0], y, g)?)])),
    })
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
fn rms_norm_input_grad(x: &Tensor, g: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
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

/// The gated activation of Llama's MLP, silu(gate)·up. As candle's ops, the graph would keep
/// silu(gate) and the product beside gate and up: four (tokens, intermediate) tensors per
/// layer, the largest a gradient pass holds. This op keeps gate and up alone and computes
/// d gate = g·up·σ(1 + gate(1 − σ)) and d up = g·silu(gate) from them in the backward.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let value = silu_mul_value(&gate.detach(), &up.detach())?;
    if !gate.track_op() && !up.track_op() {
        return Ok(value);
    }
    gate.apply_op2(
        up,
        InputOnly {
            name: "silu-mul",
            value: Mutex::new(Some(value)),
            input_grads: Box::new(|x, _, g| {
                let (d_gate, d_up) = silu_mul_input_grads(g, &x[0], &x[1])?;
                Ok(vec![Some(d_gate), Some(d_up)])
            }),
        },
    )
}

fn silu_mul_value(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match kernels::silu_mul(gate, up)? {
        Some(value) => Ok(value),
        None => candle_nn::ops::silu(gate)? * up,
    }
}

/// d gate = g·up·σ(1 + gate(1 − σ)) and d up = g·silu(gate).
fn silu_mul_input_grads(g: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some(grads) = kernels::silu_mul_backward(g, gate, up)? {
        return Ok(grads);
    }
    let sigmoid = candle_nn::ops::sigmoid(gate)?;
    let d_up = (g * (gate * &sigmoid)?)?;
    let slope = ((gate * (1.0 - &sigmoid)?)? + 1.0)?;
    let d_gate = ((g * up)? * (sigmoid * slope)?)?;
    Ok((d_gate, d_up))
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

/// Query rows per block of [`causal_attention`]: at 512 tokens, 4 blocks compute 62.5% of the
/// full score matrix, and one block's scores stay small enough for the cache-sized GEMMs.
pub const ATTENTION_BLOCK: usize = 128;

/// Causal scaled dot-product attention with grouped key/value heads: q (batch, heads, seq, d),
/// k and v (batch, kv_heads, seq, d) → (batch, heads, seq, d), softmax in at least f32 (as
/// transformers does).
///
/// Queries go in blocks of `block` rows, each against the keys up to its own last row only, so
/// most of the masked upper triangle is never computed; the query heads that share a key/value
/// head are multiplied as one matrix, so keys and values are never repeated. The backward
/// keeps nothing but q, k and v: it recomputes each block's probabilities from them (one more
/// q·kᵀ per block, as flash attention does), where keeping them would be the largest tensor
/// of a layer's graph (heads × seq² × 5/8 at 4 blocks).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block: usize,
) -> Result<Tensor> {
    let attention = CausalAttention::new(q, k, scale, block)?;
    let value = attention.value(&q.detach(), &k.detach(), &v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(value);
    }
    q.apply_op3(
        k,
        v,
        InputOnly {
            name: "causal-attention",
            value: Mutex::new(Some(value)),
            input_grads: Box::new(move |x, _, g| {
                let [dq, dk, dv] = attention.input_grads(&x[0], &x[1], &x[2], g)?;
                Ok(vec![Some(dq), Some(dk), Some(dv)])
            }),
        },
    )
}

/// The backward of a residual branch, saved by its forward: maps the gradient of the branch's
/// output to that of its (normed) input.
pub type BranchBackward = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// x + branch(rms_norm(x)), one of a decoder layer's two residual blocks, for a branch whose
/// weights and `norm` are all frozen, as one node of the graph: it keeps x and what the
/// branch's backward saved. As separate ops the graph would also keep the normed input and the
/// branch's output, two hidden-size tensors that only weight gradients need.
pub fn frozen_residual(
    x: &Tensor,
    norm: &Tensor,
    eps: f64,
    branch: impl FnOnce(&Tensor) -> Result<(Tensor, BranchBackward)>,
) -> Result<Tensor> {
    if norm.track_op() {
        candle_core::bail!("frozen-residual: the norm's weight is trainable");
    }
    let x_value = x.detach();
    let (y, backward) = branch(&rms_norm(&x_value, norm, eps)?)?;
    let value = (&x_value + y)?;
    let norm = norm.clone();
    with_input_grad("frozen-residual", x, value, move |x, _, g| {
        g + rms_norm_input_grad(x, &backward(g)?, &norm, eps)?
    })
}

/// Llama's self-attention on normed input h (batch, seq, hidden) with frozen projections
/// `[q, k, v, o]`, for [`frozen_residual`]: o applied to the causal attention of rope(q),
/// rope(k) and v over `heads` query and `kv_heads` key/value heads. The backward keeps q, k
/// and v alone, before rope, and redoes rope and each block's probabilities.
#[allow(clippy::too_many_arguments)]
pub fn frozen_attention(
    h: &Tensor,
    [q_proj, k_proj, v_proj, o_proj]: [&Linear; 4],
    heads: usize,
    kv_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    block: usize,
) -> Result<(Tensor, BranchBackward)> {
    let q = split_heads(&q_proj.forward(h)?, heads)?;
    let k = split_heads(&k_proj.forward(h)?, kv_heads)?;
    let v = split_heads(&v_proj.forward(h)?, kv_heads)?;
    let (b, _, t, d) = q.dims4()?;
    let attention = CausalAttention::new(&q, &k, 1.0 / (d as f64).sqrt(), block)?;
    let y = attention.value(&rope(&q, cos, sin)?, &rope(&k, cos, sin)?, &v)?;
    let value = o_proj.forward(&merge_heads(&y)?)?;
    let [q_proj, k_proj, v_proj, o_proj] = [q_proj, k_proj, v_proj, o_proj].map(Linear::clone);
    let (cos, sin) = (cos.clone(), sin.clone());
    let backward = move |g: &Tensor| -> Result<Tensor> {
        let dy = o_proj
            .input_grad(g)?
            .reshape((b, t, heads, d))?
            .transpose(1, 2)?;
        let (q_roped, k_roped) = (rope(&q, &cos, &sin)?, rope(&k, &cos, &sin)?);
        let [dq, dk, dv] = attention.input_grads(&q_roped, &k_roped, &v, &dy)?;
        let back = sin.neg()?;
        let unrope = |g: Tensor| -> Result<Tensor> {
            merge_heads(&candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &back)?)
        };
        let dh = (q_proj.input_grad(&unrope(dq)?)? + k_proj.input_grad(&unrope(dk)?)?)?;
        dh + v_proj.input_grad(&merge_heads(&dv)?)?
    };
    Ok((value, Box::new(backward)))
}

/// Llama's MLP down(silu(gate(h))·up(h)) with frozen projections, for [`frozen_residual`]:
/// the backward keeps gate(h) and up(h) alone.
pub fn frozen_mlp(
    h: &Tensor,
    gate_proj: &Linear,
    up_proj: &Linear,
    down_proj: &Linear,
) -> Result<(Tensor, BranchBackward)> {
    let (gate, up) = (gate_proj.forward(h)?, up_proj.forward(h)?);
    let value = down_proj.forward(&silu_mul_value(&gate, &up)?)?;
    let [gate_proj, up_proj, down_proj] = [gate_proj, up_proj, down_proj].map(Linear::clone);
    let backward = move |g: &Tensor| -> Result<Tensor> {
        let (d_gate, d_up) = silu_mul_input_grads(&down_proj.input_grad(g)?, &gate, &up)?;
        gate_proj.input_grad(&d_gate)? + up_proj.input_grad(&d_up)?
    };
    Ok((value, Box::new(backward)))
}

/// (batch, seq, heads·d) → (batch, heads, seq, d).
pub fn split_heads(y: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, features) = y.dims3()?;
    y.reshape((b, t, heads, features / heads))?.transpose(1, 2)
}

/// (batch, heads, seq, d) → (batch, seq, heads·d).
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, heads, t, d) = y.dims4()?;
    y.transpose(1, 2)?.reshape((b, t, heads * d))
}

/// The blocked causal attention of [`causal_attention`], apart from the graph: its value and
/// its input gradients, given q, k, v (and the output's gradient) outside any graph.
struct CausalAttention {
    blocks: Vec<CausalBlock>,
    batch: usize,
    kv_heads: usize,
    groups: usize,
    seq: usize,
    head_dim: usize,
}

impl CausalAttention {
    fn new(q: &Tensor, k: &Tensor, scale: f64, block: usize) -> Result<Self> {
        let (batch, heads, seq, head_dim) = q.dims4()?;
        let kv_heads = k.dim(1)?;
        let blocks = (0..seq)
            .step_by(block.max(1))
            .map(|start| CausalBlock {
                start,
                rows: block.max(1).min(seq - start),
                scale,
            })
            .collect();
        Ok(Self {
            blocks,
            batch,
            kv_heads,
            groups: heads / kv_heads,
            seq,
            head_dim,
        })
    }

    /// Rows `start..start + rows` of x, grouped under their key/value head:
    /// (batch, kv_heads, groups·rows, d).
    fn rows_of(&self, x: &Tensor, start: usize, rows: usize) -> Result<Tensor> {
        let (b, kv, d) = (self.batch, self.kv_heads, self.head_dim);
        x.reshape((b, kv, self.groups, self.seq, d))?
            .narrow(3, start, rows)?
            .contiguous()?
            .reshape((b, kv, self.groups * rows, d))
    }

    /// softmax(q·kᵀ·scale + mask) of one block, (batch, kv_heads, groups·rows, start + rows).
    fn probs(&self, q: &Tensor, k: &Tensor, block: &CausalBlock) -> Result<Tensor> {
        let end = block.start + block.rows;
        let scores = matmul(
            &self.rows_of(q, block.start, block.rows)?,
            &k.narrow(2, 0, end)?.t()?,
        )?;
        block.softmax(scores)
    }

    /// (batch, heads, seq, d).
    fn value(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let outputs = self
            .blocks
            .iter()
            .map(|block| {
                matmul(
                    &self.probs(&q, &k, block)?,
                    &v.narrow(2, 0, block.start + block.rows)?,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.join_blocks(&outputs)
    }

    /// The inverse of [`Self::rows_of`] over all blocks: each block's (batch, kv_heads,
    /// groups·rows, d) rows back into one (batch, heads, seq, d) tensor.
    fn join_blocks(&self, rows: &[Tensor]) -> Result<Tensor> {
        let (b, kv, d) = (self.batch, self.kv_heads, self.head_dim);
        let grouped = rows
            .iter()
            .zip(&self.blocks)
            .map(|(x, block)| x.reshape((b, kv, self.groups, block.rows, d)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&grouped, 3)?.reshape((b, kv * self.groups, self.seq, d))
    }

    /// dq, dk, dv from the output's gradient g, each block's probabilities recomputed.
    fn input_grads(&self, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor) -> Result<[Tensor; 3]> {
        let (q, k, v, g) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            g.contiguous()?,
        );
        let t = self.seq;
        let (mut dk, mut dv) = (k.zeros_like()?, v.zeros_like()?);
        let mut dq = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (start, rows) = (block.start, block.rows);
            let end = start + rows;
            let p = self.probs(&q, &k, block)?;
            let (gb, qb) = (
                self.rows_of(&g, start, rows)?,
                self.rows_of(&q, start, rows)?,
            );
            let ds = block.softmax_backward(&p, matmul(&gb, &v.narrow(2, 0, end)?.t()?)?)?;
            dq.push(matmul(&ds, &k.narrow(2, 0, end)?)?);
            dk = (dk + matmul(&ds.t()?, &qb)?.pad_with_zeros(2, 0, t - end)?)?;
            dv = (dv + matmul(&p.t()?, &gb)?.pad_with_zeros(2, 0, t - end)?)?;
        }
        Ok([self.join_blocks(&dq)?, dk, dv])
    }
}

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

/// Σ over rows of weight·(logsumexp(ℓ) − ℓ[target]) with logits ℓ = x·wᵀ, for x (rows, hidden),
/// a frozen head w (vocab, hidden), u32 `targets` (rows) and `weights` (rows): the weighted
/// cross-entropy of the LM head, [`LOGIT_ROWS`](super::logits::LOGIT_ROWS) rows of logits at a time, so that no
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

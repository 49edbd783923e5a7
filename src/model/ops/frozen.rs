//! A decoder layer's residual blocks as single graph nodes when all their weights are frozen:
//! the graph keeps only what the input gradient needs.

use candle_core::{Result, Tensor};

use super::activation::{silu_mul_input_grads, silu_mul_value};
use super::attention::{merge_heads, rope, split_heads, PackedAttention};
use super::norm::{rms_norm, rms_norm_input_grad};
use crate::model::autograd::with_input_grad;
use crate::model::linear::Linear;

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
/// and v alone, before rope, and redoes rope and each block's probabilities. `packed`: as
/// for [`super::causal_attention`].
#[allow(clippy::too_many_arguments)]
pub fn frozen_attention(
    h: &Tensor,
    [q_proj, k_proj, v_proj, o_proj]: [&Linear; 4],
    heads: usize,
    kv_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    block: usize,
    packed: Option<&[usize]>,
) -> Result<(Tensor, BranchBackward)> {
    let q = split_heads(&q_proj.forward(h)?, heads)?;
    let k = split_heads(&k_proj.forward(h)?, kv_heads)?;
    let v = split_heads(&v_proj.forward(h)?, kv_heads)?;
    let (b, _, t, d) = q.dims4()?;
    let attention = PackedAttention::new(&q, &k, 1.0 / (d as f64).sqrt(), block, packed)?;
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

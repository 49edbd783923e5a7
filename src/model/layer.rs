//! A decoder layer: pre-norm GQA attention with RoPE and a SwiGLU MLP, each a residual block
//! that takes the one-node frozen form when nothing in it is trainable.

use candle_core::{Result, Tensor};

use super::linear::Linear;
use super::ops;
use super::projection::Projection;

/// Which positions each query attends to.
#[derive(Clone, Copy, Debug)]
pub enum Attend<'a> {
    /// Every batch row one causal sequence.
    Causal,
    /// Batch 1 holding sequences of these lengths one after the other, each causal within
    /// itself (see [`ops::causal_attention`]).
    Packed(&'a [usize]),
    /// Under an additive mask (see [`ops::masked_attention`]); inference only.
    Masked(&'a Tensor),
}

impl<'a> Attend<'a> {
    /// The lengths of [`Attend::Packed`].
    fn packed_lengths(self) -> Option<&'a [usize]> {
        match self {
            Attend::Packed(lens) => Some(lens),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
}

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
    pub(crate) rms_norm_eps: f64,
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, attend: Attend) -> Result<Tensor> {
        let q = ops::split_heads(&self.q_proj.forward(x)?, self.num_heads)?;
        let k = ops::split_heads(&self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = ops::split_heads(&self.v_proj.forward(x)?, self.num_kv_heads)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (q, k) = (ops::rope(&q, cos, sin)?, ops::rope(&k, cos, sin)?);
        let y = match attend {
            Attend::Masked(mask) => {
                ops::masked_attention(&q, &k, &v, scale, mask, ops::MASKED_SCORES_BYTES)?
            }
            _ => {
                let packed = attend.packed_lengths();
                ops::causal_attention(&q, &k, &v, scale, ops::ATTENTION_BLOCK, packed)?
            }
        };
        self.o_proj.forward(&ops::merge_heads(&y)?)
    }

    fn projections(&self) -> [&Linear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        self.down_proj.forward(&ops::silu_mul(&gate, &up)?)
    }

    fn projections(&self) -> [&Linear; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

/// Whether a residual block can take the one-node form of [`ops::frozen_residual`]: nothing
/// in it is trainable.
fn frozen(norm: &Tensor, projections: &[&Linear]) -> bool {
    !norm.track_op() && projections.iter().all(|p| p.is_frozen())
}

impl DecoderLayer {
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attend: Attend,
    ) -> Result<Tensor> {
        let eps = self.rms_norm_eps;
        let attn = &self.self_attn;
        // The one-node form has a backward, so it takes causal attention alone, packed or not.
        let one_node = !matches!(attend, Attend::Masked(_))
            && frozen(&self.input_layernorm, &attn.projections());
        let x = if one_node {
            ops::frozen_residual(x, &self.input_layernorm, eps, |h| {
                let (heads, kv_heads) = (attn.num_heads, attn.num_kv_heads);
                let (block, packed) = (ops::ATTENTION_BLOCK, attend.packed_lengths());
                ops::frozen_attention(
                    h,
                    attn.projections(),
                    heads,
                    kv_heads,
                    cos,
                    sin,
                    block,
                    packed,
                )
            })?
        } else {
            let h = ops::rms_norm(x, &self.input_layernorm, eps)?;
            (x + attn.forward(&h, cos, sin, attend)?)?
        };
        let norm = &self.post_attention_layernorm;
        if frozen(norm, &self.mlp.projections()) {
            let [gate, up, down] = self.mlp.projections();
            ops::frozen_residual(&x, norm, eps, |h| ops::frozen_mlp(h, gate, up, down))
        } else {
            &x + self.mlp.forward(&ops::rms_norm(&x, norm, eps)?)?
        }
    }

    pub fn projection(&self, p: Projection) -> &Linear {
        match p {
            Projection::Q => &self.self_attn.q_proj,
            Projection::K => &self.self_attn.k_proj,
            Projection::V => &self.self_attn.v_proj,
            Projection::O => &self.self_attn.o_proj,
            Projection::Gate => &self.mlp.gate_proj,
            Projection::Up => &self.mlp.up_proj,
            Projection::Down => &self.mlp.down_proj,
        }
    }

    pub fn projection_mut(&mut self, p: Projection) -> &mut Linear {
        match p {
            Projection::Q => &mut self.self_attn.q_proj,
            Projection::K => &mut self.self_attn.k_proj,
            Projection::V => &mut self.self_attn.v_proj,
            Projection::O => &mut self.self_attn.o_proj,
            Projection::Gate => &mut self.mlp.gate_proj,
            Projection::Up => &mut self.mlp.up_proj,
            Projection::Down => &mut self.mlp.down_proj,
        }
    }

    pub fn num_params(&self) -> usize {
        self.params_with(Linear::num_params)
    }

    pub fn num_params_merged(&self) -> usize {
        self.params_with(Linear::num_params_merged)
    }

    fn params_with(&self, projection_params: fn(&Linear) -> usize) -> usize {
        Projection::ALL
            .iter()
            .map(|p| projection_params(self.projection(*p)))
            .sum::<usize>()
            + self.input_layernorm.elem_count()
            + self.post_attention_layernorm.elem_count()
    }
}

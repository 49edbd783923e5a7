//! Attention with input-only backward passes: the rotary embedding, and causal attention in
//! blocks of query rows that recomputes its probabilities in the backward.

use candle_core::{Result, Tensor};

use crate::model::autograd::{with_input_grad, InputOnly};
use crate::model::matmul::matmul;
use crate::model::softmax::CausalBlock;

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
///
/// With `packed` lengths, batch 1 holds that many sequences one after the other along the
/// sequence axis, each attending (causally) only within itself: examples of unequal length
/// without padding.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    block: usize,
    packed: Option<&[usize]>,
) -> Result<Tensor> {
    let attention = PackedAttention::new(q, k, scale, block, packed)?;
    let value = attention.value(&q.detach(), &k.detach(), &v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(value);
    }
    q.apply_op3(
        k,
        v,
        InputOnly::new("causal-attention", value, move |x, _, g| {
            let [dq, dk, dv] = attention.input_grads(&x[0], &x[1], &x[2], g)?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }),
    )
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

/// [`CausalAttention`] over each of the sequences packed along the sequence axis (see
/// [`causal_attention`]), or over the whole axis.
pub(super) struct PackedAttention {
    /// Where each sequence starts, and its attention.
    parts: Vec<(usize, CausalAttention)>,
}

impl PackedAttention {
    pub(super) fn new(
        q: &Tensor,
        k: &Tensor,
        scale: f64,
        block: usize,
        packed: Option<&[usize]>,
    ) -> Result<Self> {
        let seq = q.dim(2)?;
        let whole = [seq];
        let lens = packed.unwrap_or(&whole);
        if lens.iter().sum::<usize>() != seq || (lens.len() > 1 && q.dim(0)? != 1) {
            candle_core::bail!(
                "packed attention: lengths {lens:?} do not tile one row of {seq} positions"
            );
        }
        let mut start = 0;
        let mut parts = Vec::with_capacity(lens.len());
        for &len in lens {
            let (q, k) = (q.narrow(2, start, len)?, k.narrow(2, start, len)?);
            parts.push((start, CausalAttention::new(&q, &k, scale, block)?));
            start += len;
        }
        Ok(Self { parts })
    }

    /// Each sequence's slice of x, (batch, heads, len, d).
    fn slices<'a>(&'a self, x: &'a Tensor) -> impl Iterator<Item = Result<Tensor>> + 'a {
        self.parts
            .iter()
            .map(move |(start, a)| x.narrow(2, *start, a.seq))
    }

    /// (batch, heads, seq, d).
    pub(super) fn value(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        if let [(_, whole)] = self.parts.as_slice() {
            return whole.value(q, k, v);
        }
        let values = self
            .parts
            .iter()
            .zip(self.slices(q).zip(self.slices(k)).zip(self.slices(v)))
            .map(|((_, a), ((q, k), v))| a.value(&q?, &k?, &v?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&values, 2)
    }

    /// dq, dk, dv from the output's gradient g.
    pub(super) fn input_grads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
    ) -> Result<[Tensor; 3]> {
        if let [(_, whole)] = self.parts.as_slice() {
            return whole.input_grads(q, k, v, g);
        }
        let mut grads: [Vec<Tensor>; 3] = Default::default();
        let slices = self.slices(q).zip(self.slices(k)).zip(self.slices(v));
        for ((_, a), (((q, k), v), g)) in self.parts.iter().zip(slices.zip(self.slices(g))) {
            for (all, part) in grads.iter_mut().zip(a.input_grads(&q?, &k?, &v?, &g?)?) {
                all.push(part);
            }
        }
        let [dq, dk, dv] = grads.map(|parts| Tensor::cat(&parts, 2));
        Ok([dq?, dk?, dv?])
    }
}

/// The blocked causal attention of [`causal_attention`], apart from the graph: its value and
/// its input gradients, given q, k, v (and the output's gradient) outside any graph.
pub(super) struct CausalAttention {
    blocks: Vec<CausalBlock>,
    batch: usize,
    kv_heads: usize,
    groups: usize,
    seq: usize,
    head_dim: usize,
}

impl CausalAttention {
    pub(super) fn new(q: &Tensor, k: &Tensor, scale: f64, block: usize) -> Result<Self> {
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
    pub(super) fn value(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
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
    pub(super) fn input_grads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
    ) -> Result<[Tensor; 3]> {
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

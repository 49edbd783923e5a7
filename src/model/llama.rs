//! The Llama decoder: embeddings, pre-norm decoder layers (GQA attention with RoPE, SwiGLU MLP),
//! final RMSNorm and the (possibly tied) LM head.
//!
//! Unlike candle-transformers' llama this returns logits for every position, exposes each
//! layer, can start from any layer's cached input, and every op on the path from a
//! projection to the loss carries a gradient.

use candle_core::{DType, Device, Result, Tensor};

use super::config::LlamaConfig;
use super::layer::Attend;
pub use super::layer::{Attention, DecoderLayer, Mlp};
use super::ops;
use super::packed::PackedRow;
pub use super::projection::{Block, Projection};
use super::rotary::Rotary;

#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// None when the head is tied to the embeddings.
    pub lm_head: Option<Tensor>,
    pub(crate) rotary: Rotary,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl Llama {
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings: (batch, seq) u32 ids → (batch, seq, hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))
    }

    /// Runs layers `start..end` on `hidden` (the input of layer `start`), calling `visit` with
    /// each layer's output; returns layer `end - 1`'s output (before the final norm).
    pub fn run_layers(
        &self,
        hidden: &Tensor,
        start: usize,
        end: usize,
        mut visit: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        self.check_sequence(t)?;
        let (cos, sin) = self.rotary.tables(t)?;
        let mut x = hidden.clone();
        for (i, layer) in self.layers.iter().enumerate().take(end).skip(start) {
            x = layer.forward(&x, &cos, &sin, Attend::Causal)?;
            visit(i, &x)?;
        }
        Ok(x)
    }

    /// [`LlamaConfig::check_sequence`] as a candle error.
    fn check_sequence(&self, len: usize) -> Result<()> {
        self.config
            .check_sequence(len)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::rms_norm(hidden, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits (batch, seq, vocab) from the last layer's output, in f32 (f64 for an f64 model).
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.final_norm(hidden)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        ops::at_least_f32(&ops::matmul_t(&normed, w)?)
    }

    /// Logits for every position of a (batch, seq) batch of ids.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.run_layers(&self.embed(ids)?, 0, self.layers.len(), |_, _| Ok(()))?;
        self.head(&h)
    }

    /// Logits from layer `start` on, given that layer's input.
    pub fn forward_from(&self, start: usize, hidden: &Tensor) -> Result<Tensor> {
        let h = self.run_layers(hidden, start, self.layers.len(), |_, _| Ok(()))?;
        self.head(&h)
    }

    /// Mean cross-entropy of (batch, seq) `ids` from layer `start` on, given that layer's
    /// input, each position scored against the token `shift` ahead (1: the next-token loss):
    /// the loss of a GRASP gradient pass. The head and the loss run fused
    /// ([`ops::linear_cross_entropy`]), so no (seq, vocab) logits are kept for the backward.
    pub fn next_token_loss_from(
        &self,
        start: usize,
        hidden: &Tensor,
        ids: &Tensor,
        shift: usize,
    ) -> Result<Tensor> {
        let (targets, weights) = shifted_targets(ids, shift)?;
        let h = self.run_layers(hidden, start, self.layers.len(), |_, _| Ok(()))?;
        let normed = self.final_norm(&h)?;
        let normed = normed.reshape((targets.elem_count(), self.config.hidden_size))?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        ops::linear_cross_entropy(&normed, w, &targets, &weights)
    }

    /// Mean next-token cross-entropy of a (batch, seq) batch of ids.
    pub fn next_token_loss(&self, ids: &Tensor) -> Result<Tensor> {
        self.next_token_loss_from(0, &self.embed(ids)?, ids, 1)
    }

    /// Logits and every layer's hidden state: entry 0 is the embedding output (the input of
    /// layer 0) and entry i+1 the output of layer i (before the final norm).
    pub fn forward_with_hidden(&self, ids: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let embedded = self.embed(ids)?;
        let mut hidden = vec![embedded.clone()];
        let last = self.run_layers(&embedded, 0, self.layers.len(), |_, h| {
            hidden.push(h.clone());
            Ok(())
        })?;
        Ok((self.head(&last)?, hidden))
    }

    /// Every layer on packed rows of one length (see [`PackedRow`]): each token at its own
    /// rotary position, attending only to the tokens it sees. Returns the last layer's output
    /// as (rows · length, hidden). Rows without branches take the causal path; the others a
    /// masked attention, which is for inference only (it has no backward).
    pub fn packed_hidden(&self, rows: &[PackedRow]) -> Result<Tensor> {
        let (b, t) = (rows.len(), rows.first().map_or(0, PackedRow::len));
        let last = rows.iter().flat_map(|r| &r.positions).max();
        if let Some(&p) = last {
            self.check_sequence(p as usize + 1)?;
        }
        let flat = |f: fn(&PackedRow) -> &[u32]| -> Vec<u32> {
            rows.iter().flat_map(|r| f(r).iter().copied()).collect()
        };
        let ids = Tensor::from_vec(flat(|r| &r.ids), (b, t), &self.device)?;
        if rows.iter().all(PackedRow::is_causal) {
            let h = self.run_layers(&self.embed(&ids)?, 0, self.layers.len(), |_, _| Ok(()))?;
            return h.reshape((b * t, self.config.hidden_size));
        }
        let positions = Tensor::from_vec(flat(|r| &r.positions), (b, t), &self.device)?;
        let (cos, sin) = self.rotary.at(&positions)?;
        let mask: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                (0..t).flat_map(move |q| {
                    (0..t).map(move |k| if r.sees(q, k) { 0.0 } else { f32::NEG_INFINITY })
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, t, t), &self.device)?.to_dtype(self.dtype)?;
        let mut x = self.embed(&ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, Attend::Masked(&mask))?;
        }
        x.reshape((b * t, self.config.hidden_size))
    }

    /// Every layer over sequences of lengths `lens` packed one after the other in one row,
    /// `hidden` (1, Σ lens, hidden) their embeddings: each at rotary positions from 0 and
    /// attending only within itself, as if each ran alone, without the padding a batch of
    /// unequal lengths would run through every projection. Returns the last layer's output.
    pub fn run_packed(&self, hidden: &Tensor, lens: &[usize]) -> Result<Tensor> {
        self.check_sequence(lens.iter().copied().max().unwrap_or(0))?;
        let positions: Vec<u32> = lens.iter().flat_map(|&len| 0..len as u32).collect();
        let n = positions.len();
        let (cos, sin) = self
            .rotary
            .at(&Tensor::from_vec(positions, (1, n), &self.device)?)?;
        let mut x = hidden.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, Attend::Packed(lens))?;
        }
        Ok(x)
    }

    /// Deletes decoder layers (ShortGPT-style removal) and updates the config.
    pub fn remove_layers(&mut self, layers: &[usize]) {
        let mut index = 0;
        self.layers.retain(|_| {
            let keep = !layers.contains(&index);
            index += 1;
            keep
        });
        self.config.num_hidden_layers = self.layers.len();
    }

    /// Parameters as the model stores them (compressed projections as their factors).
    pub fn num_params(&self) -> usize {
        self.params_with(DecoderLayer::num_params)
    }

    /// Parameters of the dense checkpoint `--merge` writes: every projection at its full size.
    pub fn num_params_merged(&self) -> usize {
        self.params_with(DecoderLayer::num_params_merged)
    }

    fn params_with(&self, layer_params: fn(&DecoderLayer) -> usize) -> usize {
        self.embed_tokens.elem_count()
            + self.layers.iter().map(layer_params).sum::<usize>()
            + self.norm.elem_count()
            + self.lm_head.as_ref().map_or(0, Tensor::elem_count)
    }
}

/// Targets and weights of the mean cross-entropy over (batch, seq) ids, flattened: position t
/// is scored against id t + `shift` with weight 1/(batch·(seq−shift)), and the last `shift`
/// positions, which have no such token, against the first ids with weight 0 (so that every
/// position's hidden state goes to the head as it is, with no narrowed copy).
fn shifted_targets(ids: &Tensor, shift: usize) -> Result<(Tensor, Tensor)> {
    let (b, t) = ids.dims2()?;
    if shift == 0 || t <= shift {
        candle_core::bail!(
            "a loss that scores each position against the token {shift} ahead needs more than \
             {shift} positions and a shift of at least 1, got {t} positions"
        );
    }
    let targets = Tensor::cat(
        &[ids.narrow(1, shift, t - shift)?, ids.narrow(1, 0, shift)?],
        1,
    )?;
    let scored = 1.0 / (b * (t - shift)) as f64;
    let weights: Vec<f64> = (0..b * t)
        .map(|i| if i % t >= t - shift { 0.0 } else { scored })
        .collect();
    Ok((
        targets.flatten_all()?,
        Tensor::from_vec(weights, b * t, ids.device())?,
    ))
}

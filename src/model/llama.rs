//! The Llama decoder: embeddings, pre-norm decoder layers (GQA attention with RoPE, SwiGLU MLP),
//! final RMSNorm and the (possibly tied) LM head.
//!
//! Unlike candle-transformers' llama this returns logits for every position, exposes each
//! layer, can start from any layer's cached input, and every op on the path from a
//! projection to the loss carries a gradient.

use anyhow::bail;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::LlamaConfig;
use super::linear::Linear;
use super::logits::LOGIT_ROWS;
use super::ops;
use crate::eval::PackedRow;

/// One of a decoder layer's seven projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The two blocks of a decoder layer GRASP processes in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Attention,
    Mlp,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The HF module's own name: `q_proj`, …, `down_proj`.
    pub fn short_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.short_name() == name || p.short_name().trim_end_matches("_proj") == name)
    }

    pub fn block(self) -> Block {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => Block::Attention,
            Projection::Gate | Projection::Up | Projection::Down => Block::Mlp,
        }
    }

    /// Full HF module name, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_name(self, layer: usize) -> String {
        let parent = match self.block() {
            Block::Attention => "self_attn",
            Block::Mlp => "mlp",
        };
        format!("model.layers.{layer}.{parent}.{}", self.short_name())
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
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
    rms_norm_eps: f64,
}

/// cos/sin tables of the rotary embedding, (max_positions, head_dim / 2).
#[derive(Clone, Debug)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// None when the head is tied to the embeddings.
    pub lm_head: Option<Tensor>,
    rotary: Rotary,
    dtype: DType,
    device: Device,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
                llama3_scaled(f, cfg) as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    fn tables(&self, seq_len: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, 0, seq_len)?,
            self.sin.narrow(0, 0, seq_len)?,
        ))
    }

    /// Tables (batch, seq, head_dim / 2) for the u32 (batch, seq) `positions`.
    fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let pick = |table: &Tensor| -> Result<Tensor> {
            let half = table.dim(1)?;
            table.index_select(&flat, 0)?.reshape((b, t, half))
        };
        Ok((pick(&self.cos)?, pick(&self.sin)?))
    }
}

/// Llama 3's frequency-dependent scaling of one inverse frequency (identity without it).
pub(crate) fn llama3_scaled(inv_freq: f64, cfg: &LlamaConfig) -> f64 {
    let Some(s) = &cfg.rope_scaling else {
        return inv_freq;
    };
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen < high_wavelen {
        inv_freq
    } else if wavelen > low_wavelen {
        inv_freq / s.factor
    } else {
        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

impl Attention {
    /// Causal attention, or attention under `mask` (see [`ops::masked_attention`]).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = ops::split_heads(&self.q_proj.forward(x)?, self.num_heads)?;
        let k = ops::split_heads(&self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = ops::split_heads(&self.v_proj.forward(x)?, self.num_kv_heads)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (q, k) = (ops::rope(&q, cos, sin)?, ops::rope(&k, cos, sin)?);
        let y = match mask {
            None => ops::causal_attention(&q, &k, &v, scale, ops::ATTENTION_BLOCK)?,
            Some(mask) => ops::masked_attention(&q, &k, &v, scale, mask, ops::MASKED_SCORES_BYTES)?,
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
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let eps = self.rms_norm_eps;
        let attn = &self.self_attn;
        let x = if mask.is_none() && frozen(&self.input_layernorm, &attn.projections()) {
            ops::frozen_residual(x, &self.input_layernorm, eps, |h| {
                let (heads, kv_heads) = (attn.num_heads, attn.num_kv_heads);
                let block = ops::ATTENTION_BLOCK;
                ops::frozen_attention(h, attn.projections(), heads, kv_heads, cos, sin, block)
            })?
        } else {
            let h = ops::rms_norm(x, &self.input_layernorm, eps)?;
            (x + attn.forward(&h, cos, sin, mask)?)?
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

/// Loads a projection in whichever form the checkpoint stores it.
fn load_linear(
    vb: &VarBuilder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    rank: Option<usize>,
) -> Result<Linear> {
    let vb = vb.pp(name);
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    match rank {
        Some(r) => Ok(Linear::Factorized {
            svd_in: vb.pp("svd_in").get((r, in_dim), "weight")?,
            svd_out: vb.pp("svd_out").get((out_dim, r), "weight")?,
            bias,
        }),
        None => Ok(Linear::Dense {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias,
        }),
    }
}

impl Llama {
    pub fn from_var_builder(cfg: &LlamaConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (q_dim, kv_dim) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let rank_of = |name: &str| cfg.grasp.as_ref().and_then(|g| g.ranks.get(name).copied());
        let embed_tokens = vb.get((cfg.vocab_size, h), "model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lvb = vb.pp(format!("model.layers.{i}"));
            let lin = |p: Projection, in_dim, out_dim, bias| {
                let parent = match p.block() {
                    Block::Attention => lvb.pp("self_attn"),
                    Block::Mlp => lvb.pp("mlp"),
                };
                load_linear(
                    &parent,
                    p.short_name(),
                    in_dim,
                    out_dim,
                    bias,
                    rank_of(&p.module_name(i)),
                )
            };
            layers.push(DecoderLayer {
                input_layernorm: lvb.get(h, "input_layernorm.weight")?,
                post_attention_layernorm: lvb.get(h, "post_attention_layernorm.weight")?,
                self_attn: Attention {
                    q_proj: lin(Projection::Q, h, q_dim, cfg.qkv_bias)?,
                    k_proj: lin(Projection::K, h, kv_dim, cfg.qkv_bias)?,
                    v_proj: lin(Projection::V, h, kv_dim, cfg.qkv_bias)?,
                    o_proj: lin(Projection::O, q_dim, h, cfg.o_bias)?,
                    num_heads: cfg.num_attention_heads,
                    num_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                },
                mlp: Mlp {
                    gate_proj: lin(Projection::Gate, h, inter, cfg.mlp_bias)?,
                    up_proj: lin(Projection::Up, h, inter, cfg.mlp_bias)?,
                    down_proj: lin(Projection::Down, inter, h, cfg.mlp_bias)?,
                },
                rms_norm_eps: cfg.rms_norm_eps,
            });
        }
        let norm = vb.get(h, "model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else if vb.contains_tensor("lm_head.weight") {
            Some(vb.get((cfg.vocab_size, h), "lm_head.weight")?)
        } else {
            bail!("lm_head.weight is missing and tie_word_embeddings is false");
        };
        let device = vb.device().clone();
        let dtype = vb.dtype();
        Ok(Self {
            rotary: Rotary::new(cfg, dtype, &device)?,
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype,
            device,
        })
    }

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
            x = layer.forward(&x, &cos, &sin, None)?;
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
            x = layer.forward(&x, &cos, &sin, Some(&mask))?;
        }
        x.reshape((b * t, self.config.hidden_size))
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

    /// Matrix-multiply FLOPs of a forward pass over `tokens` tokens in windows of `seq_len`,
    /// from layer `start` through the LM head: projections, the causal attention scores and
    /// values (a query at position p sees p + 1 keys), and the head.
    pub fn forward_flops(&self, start: usize, tokens: usize, seq_len: usize) -> f64 {
        let q_dim = (self.config.num_attention_heads * self.config.head_dim) as f64;
        let per_token: f64 = self.layers[start..]
            .iter()
            .map(|l| {
                let weights: usize = Projection::ALL
                    .iter()
                    .map(|p| l.projection(*p).num_params())
                    .sum();
                2.0 * weights as f64 + 2.0 * (seq_len + 1) as f64 * q_dim
            })
            .sum::<f64>()
            + 2.0 * (self.config.vocab_size * self.config.hidden_size) as f64;
        per_token * tokens as f64
    }

    /// Bytes a gradient pass from layer `start` over `tokens` tokens holds at its largest, its
    /// graph's saved activations plus the head's block of logits: an estimate, for deciding
    /// how many passes may run at once. Per token and frozen layer the graph keeps the inputs
    /// of both residual blocks, q, k and v, and gate and up. (SmolLM2 at 512 tokens: 10.6 MB a
    /// layer; peak RSS measured 8.4 MB a layer, from layer 0 against from layer 29.)
    pub fn gradient_pass_bytes(&self, start: usize, tokens: usize) -> usize {
        let c = &self.config;
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let per_token_layer = 2 * c.hidden_size + q_dim + 2 * kv_dim + 2 * c.intermediate_size;
        let layers = self.layers.len().saturating_sub(start);
        let dtype = self.dtype.size_in_bytes().max(4);
        (tokens * (layers * per_token_layer + c.hidden_size) + LOGIT_ROWS * c.vocab_size) * dtype
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

impl crate::eval::CausalLm for Llama {
    /// The head (a fifth of SmolLM2's forward) only at the tokens read, a block of rows at a
    /// time.
    fn log_probs(
        &self,
        rows: &[PackedRow],
        reads: &[u32],
        targets: &[u32],
    ) -> anyhow::Result<Vec<f32>> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        let h = self.packed_hidden(rows)?;
        let reads = Tensor::new(reads, &self.device)?;
        let normed = self.final_norm(&h.index_select(&reads, 0)?)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let targets = Tensor::new(targets, &self.device)?;
        Ok(ops::target_log_probs(&normed, w, &targets)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}

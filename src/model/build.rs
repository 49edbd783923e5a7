//! A [`Llama`] from a checkpoint's tensors, each projection in the form the checkpoint stores.

use anyhow::bail;
use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::LlamaConfig;
use super::layer::{Attention, DecoderLayer, Mlp};
use super::linear::Linear;
use super::projection::{Block, Projection};
use super::rotary::Rotary;
use super::Llama;

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
}

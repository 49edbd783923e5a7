//! What the GGUF reader and writer share: typed access to a file's metadata, llama.cpp's
//! architectures and tensor names, and the rotary layout of q and k.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;

use crate::model::config::Family;

/// The llama.cpp architectures grasp reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => bail!("architecture `{other}` is not supported (supported: llama, qwen2)"),
        }
    }

    /// The architecture llama.cpp runs a model family as: Mistral is a Llama to it.
    pub fn of(family: Family) -> Self {
        match family {
            Family::Llama | Family::Mistral => Arch::Llama,
            Family::Qwen2 => Arch::Qwen2,
        }
    }

    /// `general.architecture`, also the prefix of the hyperparameter keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Arch::Llama => Family::Llama,
            Arch::Qwen2 => Family::Qwen2,
        }
    }

    /// Whether llama.cpp stores q and k with each head's rotary halves interleaved (its
    /// `LLAMA_ROPE_TYPE_NORM`); Qwen2 runs rotate-halves rope (NEOX) on transformers' layout.
    pub fn interleaves_rotary(self) -> bool {
        self == Arch::Llama
    }

    /// `{arch}.{key}`.
    pub fn key(self, key: &str) -> String {
        format!("{}.{key}", self.name())
    }
}

/// llama.cpp's names of the model-wide tensors, with transformers' module names.
const GLOBAL_TENSORS: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// llama.cpp's names of a decoder layer's tensors (under `blk.N.`), with transformers' ones
/// (under `model.layers.N.`).
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// `stem.weight` or `stem.bias` split into the stem and the suffix.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    ["weight", "bias"]
        .into_iter()
        .find_map(|suffix| Some((name.strip_suffix(suffix)?.strip_suffix('.')?, suffix)))
}

/// The transformers name of a llama.cpp tensor, or None when it is not part of the model.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(gguf_name)?;
    if let Some((_, hf)) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The llama.cpp name of a transformers tensor, or None when llama.cpp has no such tensor.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(hf_name)?;
    if let Some((gguf, _)) = GLOBAL_TENSORS.iter().find(|(_, h)| *h == stem) {
        return Some(format!("{gguf}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, _) = LAYER_TENSORS.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// The rows (out features) of a q or k weight or bias as (heads, 2, d/2, cols): the two
/// rotary halves of each head, as transformers keeps them.
fn rotary_rows(t: &Tensor, heads: usize) -> Result<(usize, usize)> {
    let rows = t.dim(0)?;
    let cols = t.elem_count() / rows.max(1);
    if rows % (2 * heads) != 0 {
        bail!("{rows} rows cannot be split into {heads} heads of rotary pairs");
    }
    Ok((rows, cols))
}

/// llama.cpp stores q and k rows with each head's two rotary halves interleaved
/// (`reshape(heads, 2, d/2, in).swapaxes(1, 2)`): transformers' rotate-halves layout to that.
pub fn interleave_rotary(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = rotary_rows(t, heads)?;
    Ok(t.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape(t.shape())?)
}

/// The inverse of [`interleave_rotary`].
pub fn deinterleave_rotary(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = rotary_rows(t, heads)?;
    Ok(t.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape(t.shape())?)
}

/// Typed access to a GGUF file's metadata; errors name the key.
pub struct GgufMetadata<'a>(&'a HashMap<String, Value>);

impl<'a> GgufMetadata<'a> {
    pub fn new(metadata: &'a HashMap<String, Value>) -> Self {
        Self(metadata)
    }

    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(value) => read(value).map(Some).with_context(|| {
                format!(
                    "GGUF metadata {key}: expected {what}, found {:?}",
                    value.value_type()
                )
            }),
        }
    }

    fn array<T>(
        &self,
        key: &str,
        what: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        self.typed(key, what, |value| match value {
            Value::Array(items) => items.iter().map(&read).collect(),
            _ => None,
        })
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, "a non-negative integer", integer)
    }

    pub fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .with_context(|| format!("GGUF metadata has no {key}"))
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", float)
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a boolean", |value| match value {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", string)
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.array(key, "an array of strings", string)
    }

    pub fn usizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.array(key, "an array of non-negative integers", integer)
    }

    pub fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.array(key, "an array of numbers", |value| match value {
            Value::F32(x) => Some(*x),
            _ => None,
        })
    }
}

fn integer(value: &Value) -> Option<usize> {
    match *value {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => usize::try_from(x).ok(),
        Value::U64(x) => usize::try_from(x).ok(),
        Value::I8(x) => usize::try_from(x).ok(),
        Value::I16(x) => usize::try_from(x).ok(),
        Value::I32(x) => usize::try_from(x).ok(),
        Value::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

/// GGUF keeps hyperparameters in f32; going through the shortest decimal that round-trips
/// gives back the value the model's authors wrote (1e-5, not 9.999999747378752e-6).
fn float(value: &Value) -> Option<f64> {
    match *value {
        Value::F32(x) => x.to_string().parse().ok(),
        Value::F64(x) => Some(x),
        _ => None,
    }
}

fn string(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

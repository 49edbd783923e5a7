//! GGUF (llama.cpp) to Hugging Face conversion for Llama-architecture models: dequantized
//! `model.safetensors` with transformers' tensor names and layout, `config.json`,
//! `tokenizer.json` and `tokenizer_config.json`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use crate::io::gguf_tokenizer::GgufVocab;
use crate::io::out_path::check_output_dir;
use crate::io::staging::{write_json, write_safetensors, Staging};
use crate::io::validate::{build_model, layer_index};
use crate::model::LlamaConfig;
use crate::runtime;

/// What [`convert_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub out: PathBuf,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    pub params: usize,
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix (and is therefore not written).
    pub tied_embeddings: bool,
    /// How many GGUF tensors were stored in each ggml type, e.g. `Q4_1` → 210.
    pub source_types: BTreeMap<String, usize>,
}

/// Converts the Llama GGUF file `gguf` into the Hugging Face directory `out`, with weights in
/// `dtype`. An existing `out` is refused unless `force`, and then replaced only once the new
/// directory is complete; nothing is left behind on failure.
pub fn convert_gguf(gguf: &Path, out: &Path, dtype: DType, force: bool) -> Result<ConvertSummary> {
    check_output(gguf, out, force)?;
    let file = File::open(gguf).with_context(|| format!("cannot open {}", gguf.display()))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader)
        .with_context(|| format!("{} is not a readable GGUF file", gguf.display()))?;
    let meta = GgufMetadata::new(&content.metadata);
    let hparams = LlamaHparams::from_metadata(&meta)
        .with_context(|| format!("{}: unsupported model", gguf.display()))?;
    let vocab = GgufVocab::from_metadata(&meta)
        .with_context(|| format!("{}: unsupported tokenizer", gguf.display()))?;
    let tokenizer = vocab.tokenizer()?;
    let weights = read_weights(&content, &mut reader, &hparams, dtype)
        .with_context(|| format!("cannot read the tensors of {}", gguf.display()))?;
    if weights.vocab_size != vocab.vocab_size() {
        bail!(
            "{}: the embedding has {} rows but the tokenizer {} tokens",
            gguf.display(),
            weights.vocab_size,
            vocab.vocab_size()
        );
    }

    let config = config_json(&hparams, &vocab, &weights, dtype);
    check_model(&config, &weights.tensors, dtype).with_context(|| {
        format!(
            "{}: the tensors do not fit the model its metadata describes",
            gguf.display()
        )
    })?;

    let staging = Staging::beside(out)?;
    write_checkpoint(
        staging.dir(),
        &config,
        &vocab.tokenizer_config(hparams.context_length),
        &tokenizer,
        &weights.tensors,
    )?;
    staging.commit(out, force)?;

    Ok(ConvertSummary {
        out: out.to_path_buf(),
        tensors: weights.tensors.len(),
        params: weights.tensors.iter().map(|(_, t)| t.elem_count()).sum(),
        vocab_size: vocab.vocab_size(),
        tied_embeddings: weights.tied,
        source_types: weights.source_types,
    })
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

/// The `llama.*` hyperparameters of a GGUF file.
struct LlamaHparams {
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    context_length: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    /// transformers' `rope_scaling`, when the file asks for one.
    rope_scaling: Option<Json>,
}

impl LlamaHparams {
    fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        match meta.str("general.architecture")? {
            Some("llama") => {}
            Some(other) => {
                bail!("architecture `{other}`: only `llama` GGUF files can be converted")
            }
            None => bail!("GGUF metadata has no general.architecture"),
        }
        let hidden_size = meta.required_usize("llama.embedding_length")?;
        let num_heads = meta.required_usize("llama.attention.head_count")?;
        if num_heads == 0 {
            bail!("llama.attention.head_count is 0");
        }
        let num_kv_heads = meta
            .usize("llama.attention.head_count_kv")?
            .unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!("llama.attention.head_count_kv {num_kv_heads} does not divide the {num_heads} heads");
        }
        let head_dim = match meta.usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => bail!(
                "llama.embedding_length {hidden_size} is not a multiple of the {num_heads} heads"
            ),
        };
        if let Some(rotary) = meta.usize("llama.rope.dimension_count")? {
            if rotary != head_dim {
                bail!("llama.rope.dimension_count {rotary} differs from the head size {head_dim}: partial rotary embeddings are not supported");
            }
        }
        Ok(Self {
            hidden_size,
            intermediate_size: meta.required_usize("llama.feed_forward_length")?,
            num_layers: meta.required_usize("llama.block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            context_length: meta.required_usize("llama.context_length")?,
            rms_norm_eps: meta
                .f64("llama.attention.layer_norm_rms_epsilon")?
                .context("GGUF metadata has no llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: meta.f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling: rope_scaling(meta)?,
        })
    }
}

/// `llama.rope.scaling.*` (or the older `llama.rope.scale_linear`) as transformers'
/// `rope_scaling`.
fn rope_scaling(meta: &GgufMetadata) -> Result<Option<Json>> {
    let kind = meta.str("llama.rope.scaling.type")?;
    let factor = match meta.f64("llama.rope.scaling.factor")? {
        Some(f) => Some(f),
        None => meta.f64("llama.rope.scale_linear")?,
    };
    let kind = match (kind, factor) {
        (Some("none"), _) | (None, None) => return Ok(None),
        (Some(kind), _) => kind,
        (None, Some(_)) => "linear",
    };
    let factor = factor
        .with_context(|| format!("llama.rope.scaling.type is `{kind}` but no factor is given"))?;
    let mut scaling = json!({"rope_type": kind, "factor": factor});
    if let Some(n) = meta.usize("llama.rope.scaling.original_context_length")? {
        scaling["original_max_position_embeddings"] = json!(n);
    }
    Ok(Some(scaling))
}

/// The transformers name of a llama.cpp tensor, or None when it is not part of a Llama.
fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let stem = gguf_name.strip_suffix(".weight")?;
    let hf_stem = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf_part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_part}")
        }
    };
    Some(format!("{hf_stem}.weight"))
}

/// llama.cpp stores q and k rows with each head's two rotary halves interleaved
/// (`reshape(heads, 2, d/2, in).swapaxes(1, 2)`); transformers rotates halves, so swap back.
fn unpermute_rotary(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    if rows % (2 * heads) != 0 {
        bail!("{rows} rows cannot be split into {heads} heads of rotary pairs");
    }
    Ok(weight
        .reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?)
}

/// Dequantized tensors under their transformers names.
struct HfWeights {
    tensors: Vec<(String, Tensor)>,
    vocab_size: usize,
    tied: bool,
    source_types: BTreeMap<String, usize>,
}

const EMBEDDING: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

fn read_weights(
    content: &Content,
    reader: &mut BufReader<File>,
    hparams: &LlamaHparams,
    dtype: DType,
) -> Result<HfWeights> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut source_types = BTreeMap::new();
    let mut f32_tensors = BTreeMap::new();
    for gguf_name in names {
        let hf_name = hf_tensor_name(gguf_name)
            .filter(|name| layer_index(name).is_none_or(|l| l < hparams.num_layers))
            .with_context(|| {
                format!(
                    "tensor {gguf_name} is not part of a Llama model with {} layers",
                    hparams.num_layers
                )
            })?;
        let qtensor = content.tensor(reader, gguf_name, &Device::Cpu)?;
        *source_types
            .entry(format!("{:?}", qtensor.dtype()))
            .or_insert(0) += 1;
        let mut tensor = qtensor
            .dequantize(&Device::Cpu)
            .with_context(|| format!("cannot dequantize {gguf_name}"))?;
        if tensor
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .any(|v| !v.is_finite())
        {
            bail!("tensor {gguf_name} holds NaN or infinite values");
        }
        if hf_name.ends_with("q_proj.weight") {
            tensor = unpermute_rotary(&tensor, hparams.num_heads)?;
        } else if hf_name.ends_with("k_proj.weight") {
            tensor = unpermute_rotary(&tensor, hparams.num_kv_heads)?;
        }
        f32_tensors.insert(hf_name, tensor);
    }
    let embedding = f32_tensors
        .get(EMBEDDING)
        .context("no token_embd.weight tensor")?;
    let vocab_size = embedding.dim(0)?;
    let tied = match f32_tensors.get(LM_HEAD) {
        None => true,
        Some(lm_head) => same_values(lm_head, embedding)?,
    };
    if tied {
        // llama2.c exports write the shared matrix twice; transformers keeps one copy.
        f32_tensors.remove(LM_HEAD);
    }
    let tensors = f32_tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(HfWeights {
        tensors,
        vocab_size,
        tied,
        source_types,
    })
}

/// Builds the model the written config.json describes from the tensors, as loading the
/// output will: a tensor of the wrong shape is refused now rather than at the next load.
fn check_model(config: &Json, tensors: &[(String, Tensor)], dtype: DType) -> Result<()> {
    let config = LlamaConfig::from_json(&config.to_string())?;
    let tensors = tensors.iter().cloned().collect();
    build_model(&config, tensors, dtype, &Device::Cpu)?;
    Ok(())
}

fn same_values(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.shape() == b.shape()
        && a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
}

/// `config.json` as transformers writes it for `LlamaForCausalLM`.
fn config_json(h: &LlamaHparams, vocab: &GgufVocab, weights: &HfWeights, dtype: DType) -> Json {
    let dtype = runtime::dtype_name(dtype);
    let mut rope_parameters = json!({"rope_theta": h.rope_theta, "rope_type": "default"});
    if let Some(Json::Object(scaling)) = &h.rope_scaling {
        for (key, value) in scaling {
            rope_parameters[key] = value.clone();
        }
    }
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
        "pad_token_id": vocab.pad_id,
        "unk_token_id": vocab.unk_id,
        "head_dim": h.head_dim,
        "hidden_act": "silu",
        "hidden_size": h.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": h.intermediate_size,
        "max_position_embeddings": h.context_length,
        "mlp_bias": false,
        "num_attention_heads": h.num_heads,
        "num_hidden_layers": h.num_layers,
        "num_key_value_heads": h.num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": h.rms_norm_eps,
        "rope_parameters": rope_parameters,
        "rope_scaling": h.rope_scaling,
        "rope_theta": h.rope_theta,
        "tie_word_embeddings": weights.tied,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": true,
        "vocab_size": weights.vocab_size,
    })
}

/// The four files of a Hugging Face checkpoint, in `dir`.
fn write_checkpoint(
    dir: &Path,
    config: &Json,
    tokenizer_config: &Json,
    tokenizer: &Tokenizer,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    write_json(&dir.join("config.json"), config)?;
    write_json(&dir.join("tokenizer_config.json"), tokenizer_config)?;
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, true)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tokenizer_path.display()))?;
    // With transformers' metadata the file is byte-identical to transformers' own conversion.
    write_safetensors(
        &dir.join("model.safetensors"),
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
    )
}

/// Fails early when `out` may not be (re)written.
fn check_output(gguf: &Path, out: &Path, force: bool) -> Result<()> {
    if !gguf.is_file() {
        bail!("--gguf {}: no such file", gguf.display());
    }
    check_output_dir("--out", out, force, &[gguf.to_path_buf()])
}

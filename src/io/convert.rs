//! GGUF (llama.cpp) to Hugging Face conversion for Llama- and Qwen2-architecture models:
//! dequantized `model.safetensors` with transformers' tensor names and layout, `config.json`,
//! `tokenizer.json` and `tokenizer_config.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use crate::io::gguf_meta::{deinterleave_rotary, hf_tensor_name, Arch, GgufMetadata};
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

/// Converts the Llama or Qwen2 GGUF file `gguf` into the Hugging Face directory `out`, with weights in
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

/// The `{arch}.*` hyperparameters of a GGUF file.
struct LlamaHparams {
    arch: Arch,
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
        let arch = Arch::parse(
            meta.str("general.architecture")?
                .context("GGUF metadata has no general.architecture")?,
        )?;
        let key = |k: &str| arch.key(k);
        let hidden_size = meta.required_usize(&key("embedding_length"))?;
        let num_heads = meta.required_usize(&key("attention.head_count"))?;
        if num_heads == 0 {
            bail!("{} is 0", key("attention.head_count"));
        }
        let num_kv_heads = meta
            .usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!(
                "{} {num_kv_heads} does not divide the {num_heads} heads",
                key("attention.head_count_kv")
            );
        }
        let head_dim = match meta.usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => bail!(
                "{} {hidden_size} is not a multiple of the {num_heads} heads",
                key("embedding_length")
            ),
        };
        if let Some(rotary) = meta.usize(&key("rope.dimension_count"))? {
            if rotary != head_dim {
                bail!("{} {rotary} differs from the head size {head_dim}: partial rotary embeddings are not supported", key("rope.dimension_count"));
            }
        }
        let eps_key = key("attention.layer_norm_rms_epsilon");
        Ok(Self {
            arch,
            hidden_size,
            intermediate_size: meta.required_usize(&key("feed_forward_length"))?,
            num_layers: meta.required_usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            context_length: meta.required_usize(&key("context_length"))?,
            rms_norm_eps: meta
                .f64(&eps_key)?
                .with_context(|| format!("GGUF metadata has no {eps_key}"))?,
            rope_theta: meta.f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: rope_scaling(meta, arch)?,
        })
    }
}

/// `{arch}.rope.scaling.*` (or the older `{arch}.rope.scale_linear`) as transformers'
/// `rope_scaling`.
fn rope_scaling(meta: &GgufMetadata, arch: Arch) -> Result<Option<Json>> {
    let key = |k: &str| arch.key(k);
    let kind = meta.str(&key("rope.scaling.type"))?;
    let factor = match meta.f64(&key("rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => meta.f64(&key("rope.scale_linear"))?,
    };
    let kind = match (kind, factor) {
        (Some("none"), _) | (None, None) => return Ok(None),
        (Some(kind), _) => kind,
        (None, Some(_)) => "linear",
    };
    let factor = factor.with_context(|| {
        format!(
            "{} is `{kind}` but no factor is given",
            key("rope.scaling.type")
        )
    })?;
    let mut scaling = json!({"rope_type": kind, "factor": factor});
    if let Some(n) = meta.usize(&key("rope.scaling.original_context_length"))? {
        scaling["original_max_position_embeddings"] = json!(n);
    }
    Ok(Some(scaling))
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
        if gguf_name == "rope_freqs.weight" {
            bail!(
                "rope_freqs.weight (Llama 3 rope scaling as per-frequency factors) cannot be \
                 turned back into transformers' rope_scaling parameters"
            );
        }
        let hf_name = hf_tensor_name(gguf_name)
            .filter(|name| layer_index(name).is_none_or(|l| l < hparams.num_layers))
            .with_context(|| {
                format!(
                    "tensor {gguf_name} is not part of a {} model with {} layers",
                    hparams.arch.name(),
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
        if hparams.arch.interleaves_rotary() {
            if hf_name.contains("q_proj.") {
                tensor = deinterleave_rotary(&tensor, hparams.num_heads)?;
            } else if hf_name.contains("k_proj.") {
                tensor = deinterleave_rotary(&tensor, hparams.num_kv_heads)?;
            }
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

/// `config.json` as transformers writes it for `LlamaForCausalLM` or `Qwen2ForCausalLM`.
fn config_json(h: &LlamaHparams, vocab: &GgufVocab, weights: &HfWeights, dtype: DType) -> Json {
    let dtype = runtime::dtype_name(dtype);
    let mut rope_parameters = json!({"rope_theta": h.rope_theta, "rope_type": "default"});
    if let Some(Json::Object(scaling)) = &h.rope_scaling {
        for (key, value) in scaling {
            rope_parameters[key] = value.clone();
        }
    }
    let (architecture, model_type) = match h.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    json!({
        "architectures": [architecture],
        "model_type": model_type,
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

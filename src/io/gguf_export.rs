//! A dense Hugging Face checkpoint as a llama.cpp GGUF file: llama.cpp's tensor names and
//! hyperparameter keys, q and k in its rotary layout, the tokenizer embedded, weights in F32,
//! F16, BF16 or Q8_0. The inverse of [`crate::io::convert`].

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::io::gguf_meta::{gguf_tensor_name, interleave_rotary, Arch};
use crate::io::gguf_vocab_out::{tokenizer_metadata, SpecialIds};
use crate::io::load::Loaded;
use crate::io::save::{checkpoint_tensors, OutputForm, Tensors};
use crate::io::staging::Staging;
use crate::model::config::LlamaConfig;
use crate::model::Llama;

/// Storage of the exported weight matrices (norms, biases and rope factors stay F32, as
/// llama.cpp keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    /// Blocks of 32 int8 with an f16 scale amax/127 (llama.cpp's `quantize_row_q8_0_ref`).
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Bf16 => GgmlDType::BF16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::Bf16 => 32,
        }
    }
}

/// What [`export_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub arch: &'static str,
    pub tensors: usize,
    pub params: usize,
    pub bytes: u64,
    /// Matrices whose rows do not split into Q8_0 blocks, stored in F16 instead.
    pub f16_fallbacks: Vec<String>,
}

/// Writes the loaded dense model as the GGUF file `out` (replaced only with `force`, and
/// only once the new file is complete).
pub fn export_gguf(
    loaded: &Loaded,
    out: &Path,
    ty: GgufType,
    force: bool,
) -> Result<ExportSummary> {
    let model = &loaded.model;
    if model.config.grasp.is_some() {
        bail!(
            "{} is a factorized grasp checkpoint (svd_in/svd_out pairs), which llama.cpp cannot \
             run: compress with --merge to get a dense checkpoint to export",
            loaded.files.dir.display()
        );
    }
    check_output(loaded, out, force)?;
    let arch = Arch::of(model.config.family);
    let mut meta = hparams(&model.config, arch, &loaded.files.name, ty);
    let config_json = &model.config.raw;
    meta.extend(tokenizer_metadata(
        &loaded.files.dir,
        &loaded.tokenizer,
        SpecialIds::from_config(config_json),
        model.config.vocab_size,
    )?);
    let mut f16_fallbacks = Vec::new();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut params = 0;
    for (name, t) in gguf_tensors(model, arch)? {
        params += t.elem_count();
        let stored = if t.rank() == 1 {
            GgmlDType::F32
        } else if ty == GgufType::Q8_0 && t.dim(1)? % GgmlDType::Q8_0.block_size() != 0 {
            f16_fallbacks.push(name.clone());
            GgmlDType::F16
        } else {
            ty.ggml()
        };
        let q = QTensor::quantize(&t, stored).with_context(|| format!("cannot store {name}"))?;
        tensors.push((name, q));
    }
    let staging = Staging::scratch(out, "tmp")?;
    let scratch = staging.dir().join("model.gguf");
    {
        let mut w = BufWriter::new(
            File::create(&scratch)
                .with_context(|| format!("cannot create {}", scratch.display()))?,
        );
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)
            .with_context(|| format!("cannot write {}", scratch.display()))?;
        std::io::Write::flush(&mut w)?;
    }
    let bytes = std::fs::metadata(&scratch)?.len();
    std::fs::rename(&scratch, out)
        .with_context(|| format!("cannot move the result to {}", out.display()))?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        arch: arch.name(),
        tensors: tensors.len(),
        params,
        bytes,
        f16_fallbacks,
    })
}

/// `general.*` and `{arch}.*`. The context length is the one the model attends over exactly
/// (a Mistral's sliding window when shorter than its positions: llama.cpp has no window).
fn hparams(c: &LlamaConfig, arch: Arch, name: &str, ty: GgufType) -> Vec<(String, Value)> {
    let u32_of = |n: usize| Value::U32(n as u32);
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.name().into()),
        ),
        ("general.name".to_string(), Value::String(name.into())),
        ("general.file_type".to_string(), Value::U32(ty.file_type())),
    ];
    let keyed = [
        ("vocab_size", u32_of(c.vocab_size)),
        ("context_length", u32_of(c.max_sequence())),
        ("embedding_length", u32_of(c.hidden_size)),
        ("block_count", u32_of(c.num_hidden_layers)),
        ("feed_forward_length", u32_of(c.intermediate_size)),
        ("attention.head_count", u32_of(c.num_attention_heads)),
        ("attention.head_count_kv", u32_of(c.num_key_value_heads)),
        ("attention.key_length", u32_of(c.head_dim)),
        ("attention.value_length", u32_of(c.head_dim)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("rope.dimension_count", u32_of(c.head_dim)),
        ("rope.freq_base", Value::F32(c.rope_theta as f32)),
    ];
    meta.extend(keyed.into_iter().map(|(k, v)| (arch.key(k), v)));
    meta
}

/// Every tensor under its llama.cpp name, f32 on the CPU, q and k (weights and biases) in
/// llama.cpp's rotary layout where the architecture wants it, and Llama 3's rope scaling as
/// llama.cpp's `rope_freqs.weight` (the factor dividing each rotary frequency).
fn gguf_tensors(model: &Llama, arch: Arch) -> Result<Tensors> {
    let c = &model.config;
    let (hf, _) = checkpoint_tensors(model, OutputForm::Merged, DType::F32)?;
    let mut out = hf
        .into_iter()
        .map(|(name, t)| {
            let gguf =
                gguf_tensor_name(&name).with_context(|| format!("no GGUF name for {name}"))?;
            let heads = if name.contains(".q_proj.") {
                Some(c.num_attention_heads)
            } else if name.contains(".k_proj.") {
                Some(c.num_key_value_heads)
            } else {
                None
            };
            let t = match heads.filter(|_| arch.interleaves_rotary()) {
                Some(h) => interleave_rotary(&t, h)?,
                None => t,
            };
            Ok((gguf, t))
        })
        .collect::<Result<Tensors>>()?;
    if c.rope_scaling.is_some() {
        out.push(("rope_freqs.weight".into(), rope_factors(c)?));
    }
    Ok(out)
}

/// Llama 3's rope scaling as the factor each rotary frequency is divided by.
fn rope_factors(c: &LlamaConfig) -> Result<Tensor> {
    let half = c.head_dim / 2;
    let factors: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f64 / c.head_dim as f64);
            (f / crate::model::rotary::llama3_scaled(f, c)) as f32
        })
        .collect();
    Ok(Tensor::from_vec(factors, half, &Device::Cpu)?)
}

/// Fails early when `out` may not be (re)written: an existing file needs `force`, and no file
/// of the input may be replaced.
fn check_output(loaded: &Loaded, out: &Path, force: bool) -> Result<()> {
    if out.is_dir() {
        bail!("--gguf {} is a directory", out.display());
    }
    if !out.exists() {
        return Ok(());
    }
    if !force {
        bail!(
            "--gguf {} already exists (pass --force to replace it)",
            out.display()
        );
    }
    let target = out.canonicalize()?;
    let files = &loaded.files;
    let inputs = files
        .weights
        .iter()
        .chain([&files.config, &files.tokenizer]);
    for input in inputs.chain(&files.extras) {
        if input.canonicalize().ok().as_ref() == Some(&target) {
            bail!(
                "--gguf {} is a file of the input model: refusing to replace it",
                out.display()
            );
        }
    }
    Ok(())
}

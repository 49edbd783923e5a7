//! Writing a (compressed) model as a Hugging Face directory (atomically, through [`Staging`]).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::load::ModelFiles;
pub use super::staging::{check_output, write_json};
use super::staging::{write_safetensors, Staging};
use crate::model::config::{Family, GraspSection};
use crate::model::linear::Linear;
use crate::model::llama::Projection;
use crate::model::Llama;
use crate::runtime;

/// How compressed projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputForm {
    /// Dense (out, in) weights: a standard Llama checkpoint any loader reads.
    Merged,
    /// `…svd_in.weight` (r, in) and `…svd_out.weight` (out, r) per compressed projection.
    Factorized,
}

/// Shards are cut above this many bytes, as transformers does by default.
const SHARD_BYTES: usize = 5_000_000_000;

/// Writes `model` to `out` in `dtype` with the tokenizer files of `source`. `finish` is called
/// with the scratch directory and the bytes of weights written, before the directory is moved
/// into place, to add files of its own (a report) that must not be missing from the output.
pub fn save_model(
    model: &Llama,
    source: &ModelFiles,
    out: &Path,
    form: OutputForm,
    dtype: DType,
    force: bool,
    finish: impl FnOnce(&Path, u64) -> Result<()>,
) -> Result<()> {
    check_output(out, force)?;
    let staging = Staging::beside(out)?;
    let (tensors, ranks) = checkpoint_tensors(model, form, dtype)?;
    let bytes = write_weights(&tensors, staging.dir())?;
    let mut config = model.config.clone();
    config.grasp = (!ranks.is_empty()).then_some(GraspSection { ranks });
    let mut json = config.to_json();
    let remote_code = config.grasp.is_some();
    if let Some(map) = json.as_object_mut() {
        map.insert("torch_dtype".into(), runtime::dtype_name(dtype).into());
        map.remove("dtype");
        if remote_code {
            let class = format!("modeling_grasp.Grasp{}ForCausalLM", family_class(&config));
            map.insert(
                "auto_map".into(),
                serde_json::json!({ "AutoModelForCausalLM": class }),
            );
        } else {
            map.remove("auto_map");
        }
    }
    write_json(&staging.dir().join("config.json"), &json)?;
    if remote_code {
        std::fs::write(staging.dir().join("modeling_grasp.py"), MODELING_GRASP)
            .context("cannot write modeling_grasp.py")?;
    }
    for file in std::iter::once(&source.tokenizer).chain(&source.extras) {
        let dest = staging
            .dir()
            .join(file.file_name().context("tokenizer file without a name")?);
        std::fs::copy(file, &dest).with_context(|| format!("cannot copy {}", file.display()))?;
    }
    finish(staging.dir(), bytes)?;
    staging.commit(out, force)
}

/// transformers' remote code for factorized checkpoints (`trust_remote_code=True`).
const MODELING_GRASP: &str = include_str!("modeling_grasp.py");

/// The stem of the family's transformers class: `Llama` for `LlamaForCausalLM`.
fn family_class(config: &crate::model::LlamaConfig) -> &'static str {
    match config.family {
        Family::Llama => "Llama",
        Family::Mistral => "Mistral",
        Family::Qwen2 => "Qwen2",
    }
}

pub(crate) type Tensors = Vec<(String, Tensor)>;

/// Every tensor of the checkpoint in HF naming, on the CPU in `dtype`, plus the ranks of the
/// projections stored factorized.
pub(crate) fn checkpoint_tensors(
    model: &Llama,
    form: OutputForm,
    dtype: DType,
) -> Result<(Tensors, std::collections::BTreeMap<String, usize>)> {
    let host = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(&Device::Cpu)?) };
    let mut out: Tensors = vec![(
        "model.embed_tokens.weight".into(),
        host(&model.embed_tokens)?,
    )];
    let mut ranks = std::collections::BTreeMap::new();
    for (i, layer) in model.layers.iter().enumerate() {
        let prefix = format!("model.layers.{i}");
        out.push((
            format!("{prefix}.input_layernorm.weight"),
            host(&layer.input_layernorm)?,
        ));
        out.push((
            format!("{prefix}.post_attention_layernorm.weight"),
            host(&layer.post_attention_layernorm)?,
        ));
        for p in Projection::ALL {
            let name = p.module_name(i);
            let lin = &layer.projection(p).merge_adapter()?;
            let lin = match (form, lin) {
                (OutputForm::Factorized, Linear::Svd { .. }) => lin.to_factorized()?,
                (OutputForm::Merged, Linear::Svd { .. } | Linear::Factorized { .. }) => {
                    Linear::Dense {
                        weight: lin.dense_weight()?,
                        bias: lin.bias().cloned(),
                    }
                }
                _ => lin.clone(),
            };
            match &lin {
                Linear::Dense { weight, .. } => out.push((format!("{name}.weight"), host(weight)?)),
                Linear::Factorized {
                    svd_in, svd_out, ..
                } => {
                    ranks.insert(name.clone(), svd_in.dims()[0]);
                    out.push((format!("{name}.svd_in.weight"), host(svd_in)?));
                    out.push((format!("{name}.svd_out.weight"), host(svd_out)?));
                }
                Linear::Svd { .. } | Linear::Lora { .. } => {
                    unreachable!("SVD and LoRA forms were converted above")
                }
            }
            if let Some(b) = lin.bias() {
                out.push((format!("{name}.bias"), host(b)?));
            }
        }
    }
    out.push(("model.norm.weight".into(), host(&model.norm)?));
    if let Some(head) = &model.lm_head {
        out.push(("lm_head.weight".into(), host(head)?));
    }
    Ok((out, ranks))
}

/// model.safetensors, or numbered shards with model.safetensors.index.json above 5 GB.
fn write_weights(tensors: &Tensors, dir: &Path) -> Result<u64> {
    let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let total: usize = tensors.iter().map(|(_, t)| size(t)).sum();
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0;
    for entry in tensors {
        if current > 0 && current + size(&entry.1) > SHARD_BYTES {
            shards.push(Vec::new());
            current = 0;
        }
        current += size(&entry.1);
        shards.last_mut().expect("at least one shard").push(entry);
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (n, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", n + 1)
        };
        for (k, _) in shard {
            weight_map.insert(k.clone(), file.clone().into());
        }
        write_safetensors(&dir.join(&file), shard.iter().map(|(k, t)| (k.as_str(), t)))?;
    }
    if count > 1 {
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(total as u64)
}

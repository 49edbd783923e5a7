//! Writing a (compressed) model as a Hugging Face directory, atomically: everything goes into
//! a temporary directory beside the target, which is renamed into place only when complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::load::ModelFiles;
use crate::model::config::GraspSection;
use crate::model::linear::Linear;
use crate::model::llama::Projection;
use crate::model::Llama;
use crate::runtime;

/// How compressed projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputForm {
    /// Dense (out, in) weights: a standard Llama checkpoint any loader reads.
    Merged,
    /// `…svd_in.weight` (r, in) and `…svd_out.weight` (out, r) per compressed projection.
    Factorized,
}

/// Shards are cut above this many bytes, as transformers does by default.
const SHARD_BYTES: usize = 5_000_000_000;

/// Refuses to overwrite an existing output unless `force` (call before long work, too).
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    Ok(())
}

/// Removes the temporary directory unless the save completed.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `model` to `out` in `dtype` with the tokenizer files of `source`.
/// Returns the bytes of weights written.
pub fn save_model(
    model: &Llama,
    source: &ModelFiles,
    out: &Path,
    form: OutputForm,
    dtype: DType,
    force: bool,
) -> Result<u64> {
    check_output(out, force)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = TempDir {
        path: parent.join(format!(".{name}.tmp-{}", std::process::id())),
        keep: false,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path)?;
    }
    std::fs::create_dir(&tmp.path)
        .with_context(|| format!("cannot create {}", tmp.path.display()))?;

    let (tensors, ranks) = checkpoint_tensors(model, form, dtype)?;
    let bytes = write_weights(&tensors, &tmp.path)?;
    let mut config = model.config.clone();
    config.grasp = (!ranks.is_empty()).then(|| GraspSection { ranks });
    let mut json = config.to_json();
    if let Some(map) = json.as_object_mut() {
        map.insert("torch_dtype".into(), runtime::dtype_name(dtype).into());
        map.remove("dtype");
    }
    write_json(&tmp.path.join("config.json"), &json)?;
    for file in std::iter::once(&source.tokenizer).chain(&source.extras) {
        let dest = tmp
            .path
            .join(file.file_name().context("tokenizer file without a name")?);
        std::fs::copy(file, &dest).with_context(|| format!("cannot copy {}", file.display()))?;
    }
    replace_dir(&tmp.path, out)?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(bytes)
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Moves the finished directory into place; an existing target (only reached with --force) is
/// removed after the new one has been renamed beside it.
fn replace_dir(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = tmp.with_extension("old");
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move {} aside", out.display()))?;
        std::fs::rename(tmp, out)
            .with_context(|| format!("cannot rename into {}", out.display()))?;
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove {}", old.display()))?;
    } else {
        std::fs::rename(tmp, out)
            .with_context(|| format!("cannot rename into {}", out.display()))?;
    }
    Ok(())
}

type Tensors = Vec<(String, Tensor)>;

/// Every tensor of the checkpoint in HF naming, on the CPU in `dtype`, plus the ranks of the
/// projections stored factorized.
fn checkpoint_tensors(
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
            let lin = layer.projection(p);
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
                Linear::Svd { .. } => unreachable!("SVD forms were converted above"),
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
        // transformers refuses safetensors files whose metadata lacks format=pt.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(
            shard.iter().map(|(k, t)| (k.as_str(), t)),
            Some(metadata),
            &dir.join(&file),
        )
        .with_context(|| format!("cannot write {file}"))?;
    }
    if count > 1 {
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(total as u64)
}

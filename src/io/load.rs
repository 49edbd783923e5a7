//! Finding a model's files (local directory or the Hugging Face hub) and loading it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::hub::{Hub, HubError};
use super::validate::{build_model, check_vocab};
use super::weights::{checkpoint_dtype, read_weights};
use crate::model::{Llama, LlamaConfig};
use crate::runtime;

/// The files of one checkpoint, all local.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// Directory holding config.json (for a hub model: the snapshot directory in the cache).
    pub dir: PathBuf,
    /// Short name for reports and default output paths (last path component or repo name).
    pub name: String,
    pub config: PathBuf,
    /// One file, or the shards listed by model.safetensors.index.json.
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
    /// Other small files copied verbatim into compressed outputs (tokenizer_config.json, ...).
    pub extras: Vec<PathBuf>,
}

impl ModelFiles {
    /// Everything a run reads from the checkpoint: its directory and each of its files.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![
            self.dir.clone(),
            self.config.clone(),
            self.tokenizer.clone(),
        ];
        paths.extend(self.weights.iter().cloned());
        paths.extend(self.extras.iter().cloned());
        paths
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
    /// dtype of the weights on disk (the first floating tensor's).
    pub checkpoint_dtype: DType,
    /// The end-of-sequence token transformers' tokenizer of this checkpoint uses, when
    /// tokenizer_config.json beside tokenizer.json names one the vocabulary has.
    pub eos_token: Option<u32>,
}

const EXTRA_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Resolves `--model`: a local directory if one exists at that path, otherwise a hub id
/// (through the hub [`Hub::from_env`] describes).
pub fn resolve(model: &str, revision: &str) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return resolve_local(path);
    }
    if path.exists() {
        bail!("--model {model}: expected a directory holding config.json, found a file");
    }
    if looks_local(model) {
        bail!("--model {model}: no such directory");
    }
    resolve_hub(&Hub::from_env(), model, revision)
}

/// Whether `--model` can only mean a path: it starts with `.` or `/`, has more than one
/// separator, or its first component exists here (`models/stories` with `models/` present).
fn looks_local(model: &str) -> bool {
    let sep = std::path::MAIN_SEPARATOR;
    let first = model.split(['/', sep]).next().unwrap_or("");
    model.starts_with('.')
        || model.starts_with('/')
        || model.starts_with(sep)
        || model.matches(['/', sep]).count() > 1
        || (model.contains(['/', sep]) && !first.is_empty() && Path::new(first).exists())
}

fn resolve_local(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        bail!(
            "{}: no config.json (is this a Hugging Face model directory?)",
            dir.display()
        );
    }
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        bail!("{}: no tokenizer.json", dir.display());
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_names(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        bail!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        );
    };
    if let Some(missing) = weights.iter().find(|w| !w.is_file()) {
        bail!(
            "{}: shard listed in the index is missing",
            missing.display()
        );
    }
    let extras = EXTRA_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        name,
        config,
        weights,
        tokenizer,
        extras,
    })
}

/// The shard file names of a sharded checkpoint, in a stable order, without repeats.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn resolve_hub(hub: &Hub, repo_id: &str, revision: &str) -> Result<ModelFiles> {
    let get = |file: &str| -> Result<PathBuf> {
        hub.model_file(repo_id, revision, file).map_err(|err| {
            match err.downcast_ref::<HubError>() {
                Some(HubError::Download { .. }) => anyhow::anyhow!(
                    "--model {repo_id}: no local directory of that name, and {err} (give a \
                     local path, or set HF_HUB_OFFLINE=1 to use the hub cache only)"
                ),
                _ => err.context(format!("--model {repo_id}")),
            }
        })
    };
    let config = get("config.json")?;
    let tokenizer = get("tokenizer.json")?;
    let weights = match get("model.safetensors") {
        Ok(p) => vec![p],
        Err(single_err) => {
            let index = get("model.safetensors.index.json").map_err(|_| single_err)?;
            shard_names(&index)?
                .iter()
                .map(|f| get(f))
                .collect::<Result<Vec<_>>>()?
        }
    };
    let extras = EXTRA_FILES.iter().filter_map(|f| get(f).ok()).collect();
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = repo_id.rsplit('/').next().unwrap_or(repo_id).to_string();
    Ok(ModelFiles {
        dir,
        name,
        config,
        weights,
        tokenizer,
        extras,
    })
}

/// tokenizer_config.json's `eos_token` (a string, or an added-token object with `content`),
/// the token transformers appends as `tokenizer.eos_token`; None when the file is absent or
/// unreadable, or the token unknown to `tokenizer`: callers fall back on well-known names.
fn declared_eos(tokenizer_path: &Path, tokenizer: &Tokenizer) -> Option<u32> {
    let text = std::fs::read_to_string(tokenizer_path.with_file_name("tokenizer_config.json"));
    let config: serde_json::Value = serde_json::from_str(&text.ok()?).ok()?;
    let eos = config.get("eos_token")?;
    let name = eos.as_str().or_else(|| eos.get("content")?.as_str())?;
    tokenizer.token_to_id(name)
}

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

/// Loads already-resolved files; `dtype` None picks [`runtime::default_compute_dtype`].
pub fn load_files(files: ModelFiles, device: &Device, dtype: Option<DType>) -> Result<Loaded> {
    let config = LlamaConfig::from_file(&files.config)?;
    let tokenizer = load_tokenizer(&files.tokenizer)?;
    let eos_token = declared_eos(&files.tokenizer, &tokenizer);
    let checkpoint_dtype = checkpoint_dtype(&files.weights[0])?;
    let dtype = dtype.unwrap_or_else(|| runtime::default_compute_dtype(device, checkpoint_dtype));
    check_vocab(&tokenizer, &config).with_context(|| format!("{}", files.tokenizer.display()))?;
    let tensors = read_weights(&files.weights, dtype, device)
        .with_context(|| format!("cannot load the weights of {}", files.dir.display()))?;
    let model = build_model(&config, tensors, dtype, device).with_context(|| {
        format!(
            "cannot load the weights of {}: the checkpoint does not match config.json",
            files.dir.display()
        )
    })?;
    Ok(Loaded {
        model,
        tokenizer,
        files,
        checkpoint_dtype,
        eos_token,
    })
}

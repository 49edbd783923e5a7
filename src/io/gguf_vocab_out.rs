//! A Hugging Face tokenizer as llama.cpp's `tokenizer.ggml.*` metadata: the inverse of
//! [`crate::io::gguf_tokenizer`]. Byte-level BPE becomes `gpt2` (merges and the pre-tokenizer's
//! `tokenizer.ggml.pre`), SentencePiece-style BPE with byte fallback becomes `llama` (pieces
//! and scores).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::io::gguf_pretok::PreTokenizer;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The special token ids of config.json.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

impl SpecialIds {
    /// `bos_token_id`, `eos_token_id` (the first when it is a list) and `pad_token_id`.
    pub fn from_config(config: &Json) -> Self {
        let id = |key: &str| {
            let v = config.get(key)?;
            let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            v.as_u64().and_then(|id| u32::try_from(id).ok())
        };
        Self {
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            pad: id("pad_token_id"),
        }
    }
}

/// The `tokenizer.*` metadata of the tokenizer in `dir` (tokenizer.json, and
/// tokenizer_config.json's chat template when there is one), for a model of `vocab_size`
/// embedding rows.
pub fn tokenizer_metadata(
    dir: &Path,
    tokenizer: &Tokenizer,
    ids: SpecialIds,
    vocab_size: usize,
) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let json: Json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!(
            "tokenizer model {} cannot be exported: only BPE tokenizers have a GGUF form here",
            model["type"]
        );
    }
    let (tokens, types) = vocabulary(&json, vocab_size)?;
    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let mut meta: Vec<(String, Value)> = Vec::new();
    let mut put = |key: &str, value: Value| meta.push((key.to_string(), value));
    if byte_fallback {
        put("tokenizer.ggml.model", Value::String("llama".into()));
        let scores = sentencepiece_scores(&tokens, &merges(model)?);
        put("tokenizer.ggml.scores", array(scores, Value::F32));
        put(
            "tokenizer.ggml.add_space_prefix",
            Value::Bool(prepends_space(&json["normalizer"])),
        );
    } else {
        let pre = PreTokenizer::from_json(&json["pre_tokenizer"])?;
        put("tokenizer.ggml.model", Value::String("gpt2".into()));
        put("tokenizer.ggml.pre", Value::String(pre.name().into()));
        let merges: Vec<String> = merges(model)?
            .into_iter()
            .map(|(l, r)| format!("{l} {r}"))
            .collect();
        put("tokenizer.ggml.merges", array(merges, Value::String));
    }
    let unk = model["unk_token"]
        .as_str()
        .and_then(|t| tokens.iter().position(|x| x == t));
    let mut types = types;
    if let Some(unk) = unk {
        types[unk] = UNKNOWN;
    }
    put("tokenizer.ggml.tokens", array(tokens, Value::String));
    put("tokenizer.ggml.token_type", array(types, Value::I32));
    let (add_bos, add_eos) = added_specials(tokenizer, ids)?;
    let named = [
        ("bos_token_id", ids.bos),
        ("eos_token_id", ids.eos),
        ("padding_token_id", ids.pad),
        ("unknown_token_id", unk.map(|u| u as u32)),
    ];
    for (key, id) in named {
        if let Some(id) = id {
            put(&format!("tokenizer.ggml.{key}"), Value::U32(id));
        }
    }
    put("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    put("tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    if let Some(template) = chat_template(dir)? {
        put("tokenizer.chat_template", Value::String(template));
    }
    Ok(meta)
}

fn array<T>(items: Vec<T>, wrap: impl Fn(T) -> Value) -> Value {
    Value::Array(items.into_iter().map(wrap).collect())
}

/// Every id's token and llama.cpp type: the BPE vocabulary, then the added tokens (special
/// ones as control tokens); ids the tokenizer leaves unnamed up to the embedding's rows are
/// unused padding tokens.
fn vocabulary(json: &Json, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>)> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut set = |id: u64, token: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).with_context(|| {
            format!("token {token:?} has id {id}, beyond the model's {vocab_size} embedding rows")
        })?;
        *slot = Some((token.to_string(), kind));
        Ok(())
    };
    let vocab = json["model"]["vocab"]
        .as_object()
        .context("tokenizer.json has no model.vocab")?;
    for (token, id) in vocab {
        let id = id.as_u64().context("a vocabulary id is not a number")?;
        let kind = if is_byte_token(token) { BYTE } else { NORMAL };
        set(id, token, kind)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(token)) = (added["id"].as_u64(), added["content"].as_str()) else {
            bail!("an added token of tokenizer.json has no id or content");
        };
        let special = added["special"].as_bool().unwrap_or(false);
        set(id, token, if special { CONTROL } else { USER_DEFINED })?;
    }
    Ok(tokens
        .into_iter()
        .enumerate()
        .map(|(id, entry)| entry.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED)))
        .unzip())
}

/// SentencePiece's byte pieces `<0x00>` … `<0xFF>`.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && u8::from_str_radix(&token[3..5], 16).is_ok()
}

/// The merges of a BPE model, written either as `"a b"` or as `["a", "b"]`.
fn merges(model: &Json) -> Result<Vec<(String, String)>> {
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json has no merges")?;
    merges
        .iter()
        .map(|m| {
            let pair = match m {
                Json::String(s) => s.split_once(' ').map(|(l, r)| (l.into(), r.into())),
                Json::Array(pair) => match pair.as_slice() {
                    [Json::String(l), Json::String(r)] => Some((l.clone(), r.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.with_context(|| format!("merge {m} is not a pair of tokens"))
        })
        .collect()
}

/// SentencePiece ranks a merge by the merged piece's score, higher first. A piece's score is
/// minus the rank of the first merge that makes it, so llama.cpp (and grasp's reader, which
/// rebuilds merges from scores) merge in the order of the tokenizer's merge list. Pieces no
/// merge makes score below every merge.
fn sentencepiece_scores(tokens: &[String], merges: &[(String, String)]) -> Vec<f32> {
    let mut first_rank: HashMap<String, usize> = HashMap::new();
    for (rank, (l, r)) in merges.iter().enumerate() {
        first_rank.entry(format!("{l}{r}")).or_insert(rank);
    }
    let unmerged = merges.len() as f32 + 1.0;
    tokens
        .iter()
        .map(|t| first_rank.get(t).map_or(-unmerged, |&rank| -(rank as f32)))
        .collect()
}

/// Whether the normalizer puts `▁` before the text (SentencePiece's `add_dummy_prefix`).
fn prepends_space(normalizer: &Json) -> bool {
    let steps = match normalizer.get("normalizers").and_then(Json::as_array) {
        Some(steps) => steps.clone(),
        None => vec![normalizer.clone()],
    };
    steps.iter().any(|s| s["type"] == "Prepend")
}

/// Whether the tokenizer puts BOS before and EOS after a text, seen by encoding one.
fn added_specials(tokenizer: &Tokenizer, ids: SpecialIds) -> Result<(bool, bool)> {
    let encode = |special: bool| -> Result<Vec<u32>> {
        Ok(tokenizer
            .encode("a", special)
            .map_err(|e| anyhow::anyhow!("cannot run the tokenizer: {e}"))?
            .get_ids()
            .to_vec())
    };
    let (with, without) = (encode(true)?, encode(false)?);
    let extra = with.len() > without.len();
    let add_bos = extra && ids.bos.is_some() && with.first() == ids.bos.as_ref();
    let add_eos = extra && ids.eos.is_some() && with.last() == ids.eos.as_ref();
    Ok((add_bos, add_eos))
}

fn chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(config["chat_template"].as_str().map(str::to_string))
}

//! Hugging Face `tokenizer.json` and `tokenizer_config.json` rebuilt from the vocabulary that
//! llama.cpp embeds in a GGUF file (`tokenizer.ggml.*`).
//!
//! Two GGUF tokenizer models are supported, the ones Llama-family checkpoints use:
//! - `gpt2`: byte-level BPE whose merges are stored in the file (SmolLM2, Llama 3, ...), split
//!   into words as `tokenizer.ggml.pre` names ([`PreTokenizer`]);
//! - `llama`: SentencePiece BPE with byte fallback, stored as pieces and scores only.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

use crate::io::gguf_meta::GgufMetadata;
use crate::io::gguf_pretok::PreTokenizer;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: usize = 1;
const UNKNOWN: usize = 2;
const CONTROL: usize = 3;
const USER_DEFINED: usize = 4;

/// SentencePiece's word-boundary marker, which stands for a space.
const SPACE_MARKER: &str = "\u{2581}";

/// How the pieces are merged, by tokenizer model.
enum Merging {
    /// `gpt2`: explicit merges, ranked by their order in the file, and the word split.
    ByteLevel(Merges, PreTokenizer),
    /// `llama`: one score per piece; a higher score merges earlier.
    SentencePiece(Vec<f32>),
}

/// The tokenizer stored in a GGUF file's metadata.
pub struct GgufVocab {
    tokens: Vec<String>,
    token_types: Vec<usize>,
    merging: Merging,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece only: whether a space is put before the text (llama.cpp's
    /// `add_space_prefix`, on unless the file says otherwise).
    add_space_prefix: bool,
    chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads `tokenizer.ggml.*` (and `tokenizer.chat_template`).
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        let model = meta
            .str("tokenizer.ggml.model")?
            .context("GGUF metadata has no tokenizer.ggml.model: the file carries no tokenizer")?;
        let tokens: Vec<String> = required(meta.strings("tokenizer.ggml.tokens")?, "tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let token_types = match meta.usizes("tokenizer.ggml.token_type")? {
            Some(types) => same_length(types, tokens.len(), "token_type")?,
            None => vec![NORMAL; tokens.len()],
        };
        let merging = match model {
            "gpt2" => Merging::ByteLevel(
                parse_merges(&required(meta.strings("tokenizer.ggml.merges")?, "merges")?)?,
                PreTokenizer::from_gguf(meta.str("tokenizer.ggml.pre")?)?,
            ),
            "llama" => Merging::SentencePiece(same_length(
                required(meta.f32s("tokenizer.ggml.scores")?, "scores")?,
                tokens.len(),
                "scores",
            )?),
            other => bail!(
                "tokenizer.ggml.model is `{other}`: only `gpt2` (byte-level BPE) and `llama` \
                 (SentencePiece) tokenizers can be converted"
            ),
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{key}");
            match meta.usize(&key)? {
                Some(id) if id < tokens.len() => Ok(Some(id as u32)),
                Some(id) => bail!("{key} is {id}, beyond the {} tokens", tokens.len()),
                None => Ok(None),
            }
        };
        let bos_id = token_id("bos_token_id")?;
        let eos_id = token_id("eos_token_id")?;
        let pad_id = token_id("padding_token_id")?;
        let unk_id = match token_id("unknown_token_id")? {
            Some(id) => Some(id),
            None => token_types
                .iter()
                .position(|&t| t == UNKNOWN)
                .map(|id| id as u32),
        };
        // llama.cpp's defaults: SentencePiece vocabularies start with BOS, byte-level ones don't.
        let sentencepiece = matches!(merging, Merging::SentencePiece(_));
        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(sentencepiece)
            && bos_id.is_some();
        let add_eos =
            meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos_id.is_some();
        let add_space_prefix = meta
            .bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let chat_template = meta.str("tokenizer.chat_template")?.map(str::to_string);
        Ok(Self {
            tokens,
            token_types,
            merging,
            bos_id,
            eos_id,
            unk_id,
            pad_id,
            add_bos,
            add_eos,
            add_space_prefix,
            chat_template,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.map(|id| self.tokens[id as usize].as_str())
    }

    /// The tokenizer `tokenizers` (and transformers) load from `tokenizer.json`, tokenizing as
    /// transformers' own GGUF conversion does.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let mut tokenizer = match &self.merging {
            Merging::ByteLevel(merges, pre) => self.byte_level_tokenizer(merges.clone(), *pre)?,
            Merging::SentencePiece(scores) => self.sentencepiece_tokenizer(scores)?,
        };
        tokenizer.with_post_processor(Some(self.post_processor()?));
        tokenizer
            .add_special_tokens(self.added_tokens(|t| t == CONTROL || t == UNKNOWN, true))
            .map_err(|e| anyhow::anyhow!("cannot register the special tokens: {e}"))?;
        tokenizer
            .add_tokens(self.added_tokens(|t| t == USER_DEFINED, false))
            .map_err(|e| anyhow::anyhow!("cannot register the user-defined tokens: {e}"))?;
        Ok(tokenizer)
    }

    fn vocab(&self) -> Vocab {
        self.tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect()
    }

    fn byte_level_tokenizer(&self, merges: Merges, pre: PreTokenizer) -> Result<Tokenizer> {
        let bpe = BPE::builder()
            .vocab_and_merges(self.vocab(), merges)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid byte-level BPE vocabulary: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre: PreTokenizerWrapper = serde_json::from_value(pre.to_json())
            .context("cannot build the byte-level pre-tokenizer")?;
        tokenizer.with_pre_tokenizer(Some(pre));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        Ok(tokenizer)
    }

    fn sentencepiece_tokenizer(&self, scores: &[f32]) -> Result<Tokenizer> {
        let mut builder = BPE::builder()
            .vocab_and_merges(self.vocab(), self.sentencepiece_merges(scores))
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(unk) = self.token(self.unk_id) {
            builder = builder.unk_token(unk.to_string());
        }
        let bpe = builder
            .build()
            .map_err(|e| anyhow::anyhow!("invalid SentencePiece vocabulary: {e}"))?;
        let space_to_marker = Replace::new(" ", SPACE_MARKER)
            .map_err(|e| anyhow::anyhow!("cannot build the space normalizer: {e}"))?;
        let marker_to_space = DecoderWrapper::Replace(
            Replace::new(SPACE_MARKER, " ")
                .map_err(|e| anyhow::anyhow!("cannot build the space decoder: {e}"))?,
        );
        let mut normalizers = vec![NormalizerWrapper::Replace(space_to_marker)];
        let mut decoders = vec![
            marker_to_space,
            DecoderWrapper::ByteFallback(ByteFallback::default()),
            DecoderWrapper::Fuse(Fuse::default()),
        ];
        if self.add_space_prefix {
            normalizers.insert(
                0,
                NormalizerWrapper::Prepend(Prepend::new(SPACE_MARKER.to_string())),
            );
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(normalizers)))
            .map_err(|e| anyhow::anyhow!("cannot set the normalizer: {e}"))?;
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
        Ok(tokenizer)
    }

    /// SentencePiece BPE keeps no merge list: every split of a piece into two pieces is a merge,
    /// ranked by the merged piece's score (ties by the pieces' ids), which reproduces
    /// SentencePiece's segmentation with an ordinary BPE model.
    fn sentencepiece_merges(&self, scores: &[f32]) -> Merges {
        let normal: Vec<(usize, &str)> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|&(id, _)| self.token_types[id] == NORMAL)
            .map(|(id, token)| (id, token.as_str()))
            .collect();
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(normal.len());
        for &(id, token) in &normal {
            ids.entry(token).or_insert(id);
        }
        let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
        for &(id, token) in &normal {
            for (split, _) in token.char_indices().skip(1) {
                let (left, right) = token.split_at(split);
                if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                    ranked.push((scores[id], l, r));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        ranked
            .into_iter()
            .map(|(_, l, r)| (self.tokens[l].clone(), self.tokens[r].clone()))
            .collect()
    }

    /// BOS/EOS around each sequence as the GGUF asks (`add_bos_token`, `add_eos_token`).
    fn post_processor(&self) -> Result<TemplateProcessing> {
        let bos = self.bos_id.filter(|_| self.add_bos);
        let eos = self.eos_id.filter(|_| self.add_eos);
        let special = |id: Option<u32>, type_id: u32| {
            self.token(id)
                .map(|token| json!({"SpecialToken": {"id": token, "type_id": type_id}}))
        };
        let sequence =
            |name: &str, type_id: u32| Some(json!({"Sequence": {"id": name, "type_id": type_id}}));
        let single: Vec<Json> = [special(bos, 0), sequence("A", 0), special(eos, 0)]
            .into_iter()
            .flatten()
            .collect();
        let pair: Vec<Json> = [
            special(bos, 0),
            sequence("A", 0),
            special(eos, 0),
            special(bos, 1),
            sequence("B", 1),
            special(eos, 1),
        ]
        .into_iter()
        .flatten()
        .collect();
        let special_tokens: serde_json::Map<String, Json> = [bos, eos]
            .into_iter()
            .flatten()
            .map(|id| {
                let token = &self.tokens[id as usize];
                let entry = json!({"id": token, "ids": [id], "tokens": [token]});
                (token.clone(), entry)
            })
            .collect();
        // Built through serde so that any token text (spaces, colons) is a valid template piece.
        serde_json::from_value(json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_tokens,
        }))
        .context("cannot build the BOS/EOS post-processor")
    }

    fn added_tokens(&self, of_type: impl Fn(usize) -> bool, special: bool) -> Vec<AddedToken> {
        self.tokens
            .iter()
            .zip(&self.token_types)
            .filter(|&(_, &t)| of_type(t))
            .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
            .collect()
    }

    /// transformers' `tokenizer_config.json` for these tokens.
    pub fn tokenizer_config(&self, model_max_length: usize) -> Json {
        let mut config = json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "model_max_length": model_max_length,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let named = [
            ("bos_token", self.bos_id),
            ("eos_token", self.eos_id),
            ("unk_token", self.unk_id),
            ("pad_token", self.pad_id),
        ];
        for (key, id) in named {
            if let Some(token) = self.token(id) {
                config[key] = json!(token);
            }
        }
        if let Some(template) = &self.chat_template {
            config["chat_template"] = json!(template);
        }
        config
    }
}

fn required<T>(value: Option<T>, what: &str) -> Result<T> {
    value.with_context(|| format!("GGUF metadata has no tokenizer.ggml.{what}"))
}

fn same_length<T>(values: Vec<T>, tokens: usize, what: &str) -> Result<Vec<T>> {
    if values.len() != tokens {
        bail!(
            "tokenizer.ggml.{what} has {} entries for {tokens} tokens",
            values.len()
        );
    }
    Ok(values)
}

/// GGUF stores each merge as `"left right"`; byte-level tokens never contain a literal space.
fn parse_merges(merges: &[&str]) -> Result<Merges> {
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| match merge.split_once(' ') {
            Some((left, right)) => Ok((left.to_string(), right.to_string())),
            None => bail!(
                "tokenizer.ggml.merges[{rank}] `{merge}` is not two tokens separated by a space"
            ),
        })
        .collect()
}

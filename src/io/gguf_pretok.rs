//! The byte-level BPE pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`, with the
//! `tokenizer.json` pre-tokenizer that splits text the same way. Read both ways: a GGUF's name
//! gives the pre-tokenizer of the converted tokenizer.json, and an exported tokenizer.json's
//! pre-tokenizer gives the name. Anything else is refused: a wrong split tokenizes numbers and
//! punctuation differently without any error.

use anyhow::{bail, Result};
use serde_json::{json, Value as Json};

/// Llama 3's split: digits in groups of up to three.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with every digit on its own.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's regex (also llama.cpp's reading of files without `tokenizer.ggml.pre`).
    Gpt2,
    /// SmolLM's: every digit alone, then GPT-2's regex.
    Smollm,
    LlamaBpe,
    Qwen2,
}

impl PreTokenizer {
    const ALL: [PreTokenizer; 4] = [
        PreTokenizer::Gpt2,
        PreTokenizer::Smollm,
        PreTokenizer::LlamaBpe,
        PreTokenizer::Qwen2,
    ];

    /// The `tokenizer.ggml.pre` value.
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => "gpt2",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::LlamaBpe => "llama-bpe",
            PreTokenizer::Qwen2 => "qwen2",
        }
    }

    /// `tokenizer.ggml.pre` of a byte-level BPE GGUF; an absent key (files from before
    /// llama.cpp wrote it) or `default` reads as GPT-2's split, as the converter always did.
    pub fn from_gguf(name: Option<&str>) -> Result<Self> {
        let name = match name {
            None | Some("default") => return Ok(PreTokenizer::Gpt2),
            Some(name) => name,
        };
        match Self::ALL.into_iter().find(|p| p.name() == name) {
            Some(p) => Ok(p),
            None => bail!(
                "tokenizer.ggml.pre `{name}` is not a pre-tokenizer grasp knows (known: {}); \
                 guessing would tokenize some text differently from llama.cpp",
                Self::names()
            ),
        }
    }

    fn names() -> String {
        let names: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
        names.join(", ")
    }

    /// The `pre_tokenizer` of tokenizer.json.
    pub fn to_json(self) -> Json {
        let byte_level = |use_regex: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": use_regex})
        };
        let split = |regex: &str| {
            json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                   "invert": false})
        };
        match self {
            PreTokenizer::Gpt2 => byte_level(true),
            PreTokenizer::Smollm => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            PreTokenizer::LlamaBpe => json!({"type": "Sequence", "pretokenizers": [
                split(LLAMA3_REGEX), byte_level(false)]}),
            PreTokenizer::Qwen2 => json!({"type": "Sequence", "pretokenizers": [
                split(QWEN2_REGEX), byte_level(false)]}),
        }
    }

    /// The llama.cpp name of a tokenizer.json `pre_tokenizer` (byte-level BPE).
    pub fn from_json(pre_tokenizer: &Json) -> Result<Self> {
        let found = Self::ALL
            .into_iter()
            .find(|p| same_split(&p.to_json(), pre_tokenizer));
        match found {
            Some(p) => Ok(p),
            None => bail!(
                "the tokenizer's pre_tokenizer {pre_tokenizer} splits text in a way llama.cpp \
                 has no name grasp knows for (known: {})",
                Self::names()
            ),
        }
    }
}

/// Whether two pre-tokenizers split text alike: the same steps with the same patterns, digit
/// and regex switches (offset trimming and prefix spaces of the ids' text aside).
fn same_split(a: &Json, b: &Json) -> bool {
    let steps = |p: &Json| -> Vec<Json> {
        match p.get("pretokenizers").and_then(Json::as_array) {
            Some(steps) => steps.clone(),
            None => vec![p.clone()],
        }
    };
    let key = |step: &Json| -> Json {
        json!([
            step.get("type"),
            step.get("pattern"),
            step.get("individual_digits"),
            step.get("use_regex").cloned().unwrap_or(Json::Bool(true)),
            step.get("add_prefix_space")
                .cloned()
                .unwrap_or(Json::Bool(false)),
        ])
    };
    let (a, b) = (steps(a), steps(b));
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| key(x) == key(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pre_tokenizers_map_both_ways() {
        for p in PreTokenizer::ALL {
            assert_eq!(PreTokenizer::from_gguf(Some(p.name())).unwrap(), p);
            assert_eq!(PreTokenizer::from_json(&p.to_json()).unwrap(), p);
        }
        assert_eq!(PreTokenizer::from_gguf(None).unwrap(), PreTokenizer::Gpt2);
        let err = PreTokenizer::from_gguf(Some("deepseek-llm")).unwrap_err();
        assert!(err.to_string().contains("`deepseek-llm`"), "{err}");
        let mut odd = PreTokenizer::Qwen2.to_json();
        odd["pretokenizers"][0]["pattern"]["Regex"] = json!(r"\p{N}+");
        assert!(PreTokenizer::from_json(&odd).is_err());
    }
}

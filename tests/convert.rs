//! `grasp convert` against transformers' own conversions of the same GGUF files
//! (../shared/models/*-hf, *-ref and the golden token ids).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::common::{max_abs_diff, shared_dir, smollm2_dir, u32s, TempDir};
use candle_core::{DType, Device, Tensor};
use grasp::io::convert::{convert_gguf, ConvertSummary};
use grasp::io::gguf_pretok::PreTokenizer;
use serde_json::Value;
use tokenizers::Tokenizer;

fn stories_gguf(shared: &Path) -> PathBuf {
    shared.join("models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf")
}

fn convert_stories(shared: &Path, scratch: &TempDir, dtype: DType) -> (PathBuf, ConvertSummary) {
    let out = scratch.join("stories260K");
    let summary = convert_gguf(&stories_gguf(shared), &out, dtype, false).unwrap();
    (out, summary)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn sorted_names(tensors: &HashMap<String, Tensor>) -> Vec<&String> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    names
}

/// The fields of `reference` (but `ignored`) must have the same value in `converted`.
fn assert_same_fields(converted: &Value, reference: &Value, ignored: &[&str]) {
    let reference = reference.as_object().unwrap();
    for (key, expected) in reference {
        if ignored.contains(&key.as_str()) {
            continue;
        }
        assert_eq!(converted.get(key), Some(expected), "field {key}");
    }
}

fn load_tokenizer(path: &Path) -> Tokenizer {
    Tokenizer::from_file(path).unwrap()
}

fn ids(tokenizer: &Tokenizer, text: &str, add_special_tokens: bool) -> Vec<u32> {
    tokenizer
        .encode(text, add_special_tokens)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// `(text, ids)` of a golden file's texts.
fn golden_texts(shared: &Path, model: &str) -> Vec<(String, Vec<u32>)> {
    let golden = read_json(&shared.join(format!("golden/{model}.json")));
    golden["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["text"].as_str().unwrap().to_string(), u32s(&t["ids"])))
        .collect()
}

/// The first `lines` lines of WikiText-2 valid joined as the calibration windows are.
fn wiki_chunk(shared: &Path, lines: usize) -> String {
    let text = fs::read_to_string(shared.join("data/wikitext2_raw/wiki.valid.raw")).unwrap();
    text.lines().take(lines).collect::<Vec<_>>().join("\n\n")
}

fn assert_tokenizes_like(converted: &Tokenizer, reference: &Tokenizer, text: &str) {
    for add_special_tokens in [false, true] {
        let got = ids(converted, text, add_special_tokens);
        let expected = ids(reference, text, add_special_tokens);
        let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            (got.len(), first_difference),
            (expected.len(), None),
            "token ids differ (add_special_tokens {add_special_tokens})"
        );
    }
}

#[test]
fn stories_weights_equal_the_reference_checkpoint() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-weights");
    let (out, summary) = convert_stories(&shared, &scratch, DType::F32);
    let converted = load_tensors(&out.join("model.safetensors"));
    let reference = load_tensors(&shared.join("models/stories260K-hf/model.safetensors"));

    assert_eq!(sorted_names(&converted), sorted_names(&reference));
    for (name, expected) in &reference {
        let got = &converted[name];
        assert_eq!(got.dtype(), DType::F32, "{name}");
        assert_eq!(got.dims(), expected.dims(), "{name}");
        assert_eq!(max_abs_diff(got, expected), 0.0, "{name}");
    }
    assert_eq!(summary.tensors, reference.len());
    assert_eq!(
        summary.params,
        reference.values().map(Tensor::elem_count).sum::<usize>()
    );
    assert_eq!(summary.vocab_size, 512);
    assert!(summary.tied_embeddings, "output.weight repeats token_embd");
    assert_eq!(summary.source_types.get("F32"), Some(&48));
}

#[test]
fn stories_converts_to_half_precision() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-bf16");
    let (out, _) = convert_stories(&shared, &scratch, DType::BF16);
    let converted = load_tensors(&out.join("model.safetensors"));
    let reference = load_tensors(&shared.join("models/stories260K-hf/model.safetensors"));
    for (name, expected) in &reference {
        let got = &converted[name];
        assert_eq!(got.dtype(), DType::BF16, "{name}");
        let expected = expected.to_dtype(DType::BF16).unwrap();
        assert_eq!(max_abs_diff(got, &expected), 0.0, "{name}");
    }
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["torch_dtype"], "bfloat16");
}

#[test]
fn stories_config_matches_the_reference() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-config");
    let (out, _) = convert_stories(&shared, &scratch, DType::F32);
    let config = read_json(&out.join("config.json"));
    let reference = read_json(&shared.join("models/stories260K-hf/config.json"));
    assert_same_fields(&config, &reference, &["_name_or_path"]);

    let tokenizer_config = read_json(&out.join("tokenizer_config.json"));
    let reference = read_json(&shared.join("models/stories260K-hf/tokenizer_config.json"));
    assert_same_fields(&tokenizer_config, &reference, &[]);
}

#[test]
fn stories_tokenizer_matches_the_reference() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-tokenizer");
    let (out, _) = convert_stories(&shared, &scratch, DType::F32);
    let converted_path = out.join("tokenizer.json");
    let reference_path = shared.join("models/stories260K-hf/tokenizer.json");
    let converted = load_tokenizer(&converted_path);
    let reference = load_tokenizer(&reference_path);

    // The merges rebuilt from SentencePiece scores are transformers' list, in its order.
    let merges = |path: &Path| read_json(path)["model"]["merges"].clone();
    assert_eq!(merges(&converted_path), merges(&reference_path));

    for (text, golden_ids) in golden_texts(&shared, "stories260K") {
        assert_eq!(ids(&converted, &text, false), golden_ids, "{text:?}");
        assert_eq!(ids(&converted, &text, true)[0], 1, "BOS first: {text:?}");
        assert_eq!(converted.decode(&golden_ids, false).unwrap(), text);
    }
    let wiki = wiki_chunk(&shared, 200);
    assert_tokenizes_like(&converted, &reference, &wiki);
    let wiki_ids = ids(&converted, &wiki, false);
    assert_eq!(converted.decode(&wiki_ids, false).unwrap(), wiki);
}

#[test]
fn existing_output_is_refused_without_force_and_replaced_with_force() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-force");
    let out = scratch.join("model");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("mine.txt"), "keep me").unwrap();

    let refused = convert_gguf(&stories_gguf(&shared), &out, DType::F32, false).unwrap_err();
    assert!(refused.to_string().contains("--force"), "{refused:#}");
    assert_eq!(fs::read_to_string(out.join("mine.txt")).unwrap(), "keep me");
    assert_eq!(scratch.entries(), ["model"]);

    convert_gguf(&stories_gguf(&shared), &out, DType::F32, true).unwrap();
    assert!(!out.join("mine.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(scratch.entries(), ["model"], "no staging directory left");
}

#[test]
fn output_holding_the_input_is_never_replaced() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("convert-input-inside");
    let gguf = scratch.join("stories.gguf");
    fs::copy(stories_gguf(&shared), &gguf).unwrap();

    let err = convert_gguf(&gguf, scratch.path(), DType::F32, true).unwrap_err();
    assert!(err.to_string().contains("holds the input"), "{err:#}");
    assert!(gguf.is_file());
}

#[test]
fn unreadable_input_leaves_nothing_behind() {
    let scratch = TempDir::new("convert-bad-input");
    let gguf = scratch.join("broken.gguf");
    fs::write(&gguf, b"GGUF but not really").unwrap();
    let out = scratch.join("model");

    let err = convert_gguf(&gguf, &out, DType::F32, false).unwrap_err();
    assert!(err.to_string().contains("broken.gguf"), "{err:#}");
    assert_eq!(scratch.entries(), ["broken.gguf"]);
    assert_eq!(fs::read(&gguf).unwrap(), b"GGUF but not really");
}

#[test]
fn smollm2_tokenizer_matches_the_reference() {
    let Some(shared) = shared_dir() else { return };
    let Some(model) = smollm2_dir() else { return };
    let converted = load_tokenizer(&model.join("tokenizer.json"));
    // transformers' GGUF conversion ignores `tokenizer.ggml.pre`; grasp honours the file's
    // `smollm` (every digit alone, as SmolLM2's own tokenizer and llama.cpp split), so the
    // reference is transformers' vocabulary and merges with that split.
    let mut reference: Value = read_json(&shared.join("models/smollm2-135m-ref/tokenizer.json"));
    reference["pre_tokenizer"] = PreTokenizer::Smollm.to_json();
    let reference = Tokenizer::from_str(&reference.to_string()).unwrap();

    for (text, golden_ids) in golden_texts(&shared, "smollm2-135m") {
        assert_eq!(ids(&converted, &text, false), golden_ids, "{text:?}");
        assert_eq!(converted.decode(&golden_ids, false).unwrap(), text);
    }
    assert_tokenizes_like(&converted, &reference, &wiki_chunk(&shared, 1500));
    let chat = "<|im_start|>user\nHi there<|im_end|>\n";
    assert_tokenizes_like(&converted, &reference, chat);
    assert_eq!(
        ids(&converted, chat, false)[0],
        1,
        "<|im_start|> is one token"
    );
}

#[test]
fn smollm2_config_matches_the_reference() {
    let Some(shared) = shared_dir() else { return };
    let Some(model) = smollm2_dir() else { return };
    let reference_dir = shared.join("models/smollm2-135m-ref");
    let config = read_json(&model.join("config.json"));
    let reference = read_json(&reference_dir.join("config.json"));
    assert_same_fields(&config, &reference, &["transformers_version"]);

    let tokenizer_config = read_json(&model.join("tokenizer_config.json"));
    let reference = read_json(&reference_dir.join("tokenizer_config.json"));
    assert_same_fields(
        &tokenizer_config,
        &reference,
        &["add_prefix_space", "backend", "tokenizer_class"],
    );
}

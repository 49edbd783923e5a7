//! `grasp export` (a checkpoint to GGUF) checked by converting its file back with
//! `grasp convert`: the same tensors (exactly in f32, within the format's rounding otherwise)
//! and the same tokenization. Also the GGUF reader's `tokenizer.ggml.pre`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::cli::{grasp, stderr};
use crate::common::{max_abs_diff, shared_dir, TempDir};
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::{Device, Tensor};
use grasp::io::gguf_meta::GgufMetadata;
use grasp::io::gguf_tokenizer::GgufVocab;
use grasp::io::load::load_tokenizer;

fn run(args: &[&std::ffi::OsStr]) -> Output {
    grasp().args(args).output().expect("cannot run grasp")
}

fn export(model: &Path, gguf: &Path, ty: &str) -> Output {
    run(&[
        "export".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--gguf".as_ref(),
        gguf.as_os_str(),
        "--type".as_ref(),
        ty.as_ref(),
    ])
}

/// Exports `model` as `ty` and converts the file back; returns the converted directory.
fn round_trip(model: &Path, scratch: &TempDir, ty: &str) -> PathBuf {
    let name = model.file_name().unwrap().to_string_lossy();
    let gguf = scratch.join(&format!("{name}.{ty}.gguf"));
    let output = export(model, &gguf, ty);
    assert!(output.status.success(), "export: {}", stderr(&output));
    let back = scratch.join(&format!("{name}-{ty}"));
    let output = run(&[
        "convert".as_ref(),
        "--gguf".as_ref(),
        gguf.as_os_str(),
        "--out".as_ref(),
        back.as_os_str(),
    ]);
    assert!(output.status.success(), "convert: {}", stderr(&output));
    back
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The largest error each stored form may add to a weight of magnitude up to `amax`: none for
/// f32, half an f16 ulp, and for Q8_0 half a quantization step amax/127 plus the f16 scale's
/// rounding of it.
fn tolerance(ty: &str, amax: f64) -> f64 {
    match ty {
        "f32" => 0.0,
        "f16" => amax * 2f64.powi(-11),
        "q8_0" => amax / 127.0 * 0.5 + amax * 2f64.powi(-10),
        _ => unreachable!(),
    }
}

fn assert_same_tensors(model: &Path, back: &Path, ty: &str) {
    let (want, got) = (tensors(model), tensors(back));
    let mut names: Vec<_> = want.keys().collect();
    names.sort();
    let mut got_names: Vec<_> = got.keys().collect();
    got_names.sort();
    assert_eq!(got_names, names, "{ty}: tensor names");
    for name in names {
        let (w, g) = (&want[name], &got[name]);
        assert_eq!(w.dims(), g.dims(), "{name}");
        let amax = w
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        // Vectors (norms, biases) stay f32 in every form.
        let allowed = if w.rank() == 1 {
            0.0
        } else {
            tolerance(ty, amax)
        };
        let diff = max_abs_diff(w, g);
        assert!(diff <= allowed, "{ty} {name}: {diff:e} > {allowed:e}");
    }
}

fn assert_same_tokenization(model: &Path, back: &Path) {
    let (want, got) = (
        load_tokenizer(&model.join("tokenizer.json")).unwrap(),
        load_tokenizer(&back.join("tokenizer.json")).unwrap(),
    );
    let shared = shared_dir().unwrap();
    let wiki = fs::read_to_string(shared.join("data/wikitext2_raw/wiki.valid.raw")).unwrap();
    let texts = [
        wiki.chars().take(4000).collect::<String>(),
        "Once upon a time, there was a little girl named Lily. In 1998 she wrote 42 lines.".into(),
        "  leading spaces, tabs\tand émojis 🚀".into(),
    ];
    for text in &texts {
        for special in [false, true] {
            let ids = |t: &tokenizers::Tokenizer| {
                t.encode(text.as_str(), special).unwrap().get_ids().to_vec()
            };
            assert_eq!(
                ids(&got),
                ids(&want),
                "special tokens {special}: {text:.60}"
            );
        }
    }
}

#[test]
fn stories260k_round_trips_in_every_type() {
    let Some(shared) = shared_dir() else { return };
    let model = shared.join("models/stories260K-hf");
    let scratch = TempDir::new("export-stories");
    for ty in ["f32", "f16", "q8_0"] {
        let back = round_trip(&model, &scratch, ty);
        assert_same_tensors(&model, &back, ty);
        assert_same_tokenization(&model, &back);
    }
}

#[test]
fn qwen2_and_mistral_round_trip() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("export-families");
    for name in ["qwen2-tiny", "mistral-tiny"] {
        let model = shared.join("models/families").join(name);
        let back = round_trip(&model, &scratch, "f32");
        assert_same_tensors(&model, &back, "f32");
        assert_same_tokenization(&model, &back);
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(back.join("config.json")).unwrap()).unwrap();
        let (model_type, context) = match name {
            "qwen2-tiny" => ("qwen2", 512),
            // llama.cpp has no sliding window: the context is the window.
            _ => ("llama", 256),
        };
        assert_eq!(config["model_type"], model_type);
        assert_eq!(config["max_position_embeddings"], context);
    }
}

fn read_gguf(path: &Path) -> Content {
    let mut file = fs::File::open(path).unwrap();
    Content::read(&mut file).unwrap()
}

#[test]
fn llama3_rope_scaling_is_written_as_llama_cpps_frequency_factors() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("export-llama3");
    let gguf = scratch.join("llama3.gguf");
    let output = export(&shared.join("models/families/llama3-tiny"), &gguf, "f32");
    assert!(output.status.success(), "{}", stderr(&output));
    let content = read_gguf(&gguf);
    let mut file = fs::File::open(&gguf).unwrap();
    let factors = content
        .tensor(&mut file, "rope_freqs.weight", &Device::Cpu)
        .unwrap();
    let factors: Vec<f32> = factors.dequantize(&Device::Cpu).unwrap().to_vec1().unwrap();
    // head_dim 8, theta 5e5, factor 8, low/high 1/4, original 64 positions: the wavelengths
    // 2π·θ^(i/4) are 6.3, 169, 4443, 117000; below 16 unscaled, above 64 divided by 8.
    assert_eq!(factors, [1.0, 8.0, 8.0, 8.0]);
    assert_eq!(
        content.metadata["llama.rope.freq_base"].to_f32().unwrap(),
        500000.0
    );
}

#[test]
fn factorized_and_existing_outputs_are_refused() {
    let Some(shared) = shared_dir() else { return };
    let scratch = TempDir::new("export-refusals");
    let factorized = scratch.join("factorized");
    let output = grasp()
        .args(["compress", "--model"])
        .arg(shared.join("models/stories260K-hf"))
        .args([
            "--layers",
            "1",
            "--num-samples",
            "2",
            "--seq-len",
            "32",
            "--data-dir",
        ])
        .arg(shared.join("data"))
        .arg("--out")
        .arg(&factorized)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let gguf = scratch.join("out.gguf");
    let err = stderr(&export(&factorized, &gguf, "f16"));
    assert!(
        err.contains("factorized") && err.contains("--merge"),
        "{err}"
    );
    assert!(!gguf.exists());

    fs::write(&gguf, b"keep me").unwrap();
    let err = stderr(&export(&shared.join("models/stories260K-hf"), &gguf, "f16"));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&gguf).unwrap(), b"keep me");
}

/// A GGUF holding only a byte-level BPE vocabulary: the bytes as GPT-2 writes them, merges
/// that join digits and the space before a word, and `tokenizer.ggml.pre` = `pre`.
fn byte_level_vocab(dir: &TempDir, pre: Option<&str>) -> GgufVocab {
    let bytes: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    let mut tokens = bytes.clone();
    tokens.sort();
    let merges = ["Ġ 1", "1 9", "19 9", "199 8", "Ġ a"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let merges: Vec<String> = merges.iter().map(|m| m.to_string()).collect();
    let mut meta = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&merges)),
    ];
    if let Some(pre) = pre {
        meta.push(("tokenizer.ggml.pre", Value::String(pre.into())));
    }
    let path = dir.join(&format!("vocab-{}.gguf", pre.unwrap_or("none")));
    let mut file = fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut file, &refs, &[]).unwrap();
    let content = read_gguf(&path);
    GgufVocab::from_metadata(&GgufMetadata::new(&content.metadata))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn gguf_pre_tokenizer_decides_how_numbers_split() {
    let scratch = TempDir::new("export-pre");
    let pieces = |pre: Option<&str>| -> Vec<String> {
        let tokenizer = byte_level_vocab(&scratch, pre).tokenizer().unwrap();
        tokenizer
            .encode("a 1998", false)
            .unwrap()
            .get_tokens()
            .to_vec()
    };
    // GPT-2's regex keeps " 1998" whole, so the space joins the 1 first; SmolLM's and Qwen2's
    // split every digit; Llama 3's groups digits by three and keeps the space apart.
    assert_eq!(pieces(None), ["a", "Ġ1", "9", "9", "8"].map(String::from));
    assert_eq!(pieces(Some("gpt2")), pieces(None));
    assert_eq!(
        pieces(Some("smollm")),
        ["a", "Ġ", "1", "9", "9", "8"].map(String::from)
    );
    assert_eq!(
        pieces(Some("qwen2")),
        ["a", "Ġ", "1", "9", "9", "8"].map(String::from)
    );
    assert_eq!(
        pieces(Some("llama-bpe")),
        ["a", "Ġ", "199", "8"].map(String::from)
    );
    let path = scratch.join("unknown.gguf");
    let meta = [
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into())]),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.pre", Value::String("falcon".into())),
    ];
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut fs::File::create(&path).unwrap(), &refs, &[]).unwrap();
    let content = read_gguf(&path);
    let err = GgufVocab::from_metadata(&GgufMetadata::new(&content.metadata))
        .err()
        .expect("an unknown pre-tokenizer was accepted");
    assert!(format!("{err:#}").contains("`falcon`"), "{err:#}");
}

//! Checkpoints that do not add up: config.json fields, tensors missing, extra, misshapen, of an
//! integer dtype or holding NaN, tokenizers larger than the embedding.

use std::collections::HashMap;
use std::fs;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::harness::*;

type Tensors = HashMap<String, Tensor>;

fn config(edit: impl FnOnce(&mut Value) + 'static) -> impl FnOnce(&Sandbox) {
    move |s: &Sandbox| s.edit_config(edit)
}

fn weights(edit: impl FnOnce(&mut Tensors) + 'static) -> impl FnOnce(&Sandbox) {
    move |s: &Sandbox| s.edit_weights(edit)
}

/// `name` with its first value replaced by `value`, in `dtype`.
fn poison(t: &mut Tensors, name: &str, value: f32, dtype: DType) {
    let old = &t[name];
    let mut values = old.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[0] = value;
    let new = Tensor::from_vec(values, old.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    t.insert(name.to_string(), new);
}

fn retype(t: &mut Tensors, name: &str, dtype: DType) {
    let new = t[name].to_dtype(dtype).unwrap();
    t.insert(name.to_string(), new);
}

const NORM: &str = "model.norm.weight";
const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn config_fields_that_do_not_fit_are_named() {
    let cases = [
        compress_case(
            "fewer-layers-than-weights",
            config(|c| c["num_hidden_layers"] = json!(3)),
            &[],
            "num_hidden_layers",
        ),
        compress_case(
            "zero-layers",
            config(|c| c["num_hidden_layers"] = json!(0)),
            &[],
            "num_hidden_layers",
        ),
        compress_case(
            "more-layers-than-weights",
            config(|c| c["num_hidden_layers"] = json!(6)),
            &[],
            "model.layers.5.",
        ),
        compress_case(
            "hidden-size-a-string",
            config(|c| c["hidden_size"] = json!("64")),
            &[],
            "hidden_size",
        ),
        compress_case(
            "vocab-size-missing",
            config(|c| {
                c.as_object_mut().unwrap().remove("vocab_size");
            }),
            &[],
            "vocab_size",
        ),
        compress_case(
            "model-type-gpt2",
            config(|c| c["model_type"] = json!("gpt2")),
            &[],
            "gpt2",
        ),
        compress_case(
            "activation-gelu",
            config(|c| c["hidden_act"] = json!("gelu")),
            &[],
            "gelu",
        ),
        compress_case(
            "kv-heads-not-dividing",
            config(|c| c["num_key_value_heads"] = json!(3)),
            &[],
            "num_key_value_heads",
        ),
        compress_case(
            "rope-yarn",
            config(|c| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0})),
            &[],
            "yarn",
        ),
        compress_case(
            "head-dim-odd",
            config(|c| c["head_dim"] = json!(7)),
            &[],
            "head_dim",
        ),
        compress_case(
            "vocab-larger-than-embedding",
            config(|c| c["vocab_size"] = json!(600)),
            &[],
            "model.embed_tokens.weight",
        ),
        compress_case(
            "intermediate-size-wrong",
            config(|c| c["intermediate_size"] = json!(100)),
            &[],
            "mlp.gate_proj.weight",
        ),
        compress_case(
            "untied-without-head",
            config(|c| c["tie_word_embeddings"] = json!(false)),
            &[],
            "lm_head.weight",
        ),
        compress_case(
            "config-not-json",
            |s| fs::write(s.model.join("config.json"), "{ not json").unwrap(),
            &[],
            "config.json",
        ),
        compress_case(
            "config-absent",
            |s| fs::remove_file(s.model.join("config.json")).unwrap(),
            &[],
            "config.json",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

#[test]
fn tensors_that_do_not_fit_are_named() {
    let cases = [
        compress_case(
            "norm-u8",
            weights(|t| retype(t, NORM, DType::U8)),
            &[],
            NORM,
        ),
        compress_case("q-i64", weights(|t| retype(t, Q0, DType::I64)), &[], Q0),
        compress_case(
            "q-nan",
            weights(|t| poison(t, Q0, f32::NAN, DType::F32)),
            &[],
            Q0,
        ),
        compress_case(
            "norm-inf",
            weights(|t| poison(t, NORM, f32::INFINITY, DType::F32)),
            &[],
            NORM,
        ),
        compress_case(
            "embedding-nan-f16",
            weights(|t| poison(t, "model.embed_tokens.weight", f32::NAN, DType::F16)),
            &[],
            "model.embed_tokens.weight",
        ),
        compress_case(
            "extra-tensor",
            weights(|t| {
                t.insert(
                    "model.extra.weight".into(),
                    Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
                );
            }),
            &[],
            "model.extra.weight",
        ),
        compress_case(
            "qwen2-style-bias",
            weights(|t| {
                let bias = Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap();
                t.insert("model.layers.0.self_attn.q_proj.bias".into(), bias);
            }),
            &[],
            "q_proj.bias",
        ),
        compress_case(
            "tied-with-head",
            weights(|t| {
                let head = t["model.embed_tokens.weight"].clone();
                t.insert("lm_head.weight".into(), head);
            }),
            &[],
            "lm_head.weight",
        ),
        compress_case(
            "norm-missing",
            weights(|t| {
                t.remove(NORM);
            }),
            &[],
            NORM,
        ),
        compress_case(
            "q-transposed",
            weights(|t| {
                let q = t[Q0]
                    .t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .narrow(0, 0, 32)
                    .unwrap();
                t.insert(Q0.into(), q);
            }),
            &[],
            Q0,
        ),
        compress_case(
            "weights-truncated",
            |s| {
                let path = s.model.join("model.safetensors");
                let bytes = fs::read(&path).unwrap();
                fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            },
            &[],
            "model.safetensors",
        ),
        compress_case(
            "weights-not-safetensors",
            |s| fs::write(s.model.join("model.safetensors"), "not a safetensors file").unwrap(),
            &[],
            "model.safetensors",
        ),
        compress_case(
            "weights-absent",
            |s| fs::remove_file(s.model.join("model.safetensors")).unwrap(),
            &[],
            "model.safetensors",
        ),
        compress_case(
            "shard-missing",
            |s| {
                fs::rename(
                    s.model.join("model.safetensors"),
                    s.model.join("part-1.safetensors"),
                )
                .unwrap();
                let index =
                    json!({"weight_map": {NORM: "part-1.safetensors", Q0: "part-2.safetensors"}});
                fs::write(
                    s.model.join("model.safetensors.index.json"),
                    index.to_string(),
                )
                .unwrap();
            },
            &[],
            "part-2.safetensors",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

#[test]
fn tokenizers_and_data_that_do_not_fit_are_named() {
    let cases = [
        compress_case(
            "tokenizer-not-json",
            |s| fs::write(s.model.join("tokenizer.json"), "{").unwrap(),
            &[],
            "tokenizer.json",
        ),
        compress_case(
            "tokenizer-absent",
            |s| fs::remove_file(s.model.join("tokenizer.json")).unwrap(),
            &[],
            "tokenizer.json",
        ),
        compress_case(
            "tokenizer-beyond-embedding",
            |s| {
                let path = s.model.join("tokenizer.json");
                let mut tok: Value =
                    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
                tok["added_tokens"].as_array_mut().unwrap().push(json!({
                    "id": 600, "content": "<extra>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                }));
                fs::write(&path, tok.to_string()).unwrap();
            },
            &[],
            "tokenizer",
        ),
        compress_case(
            "dataset-empty-file",
            |s| fs::write(s.join("empty.txt"), "").unwrap(),
            &["--dataset", "empty.txt"],
            "empty.txt",
        ),
        compress_case(
            "dataset-jsonl-without-text",
            |s| fs::write(s.join("rows.jsonl"), "{\"body\": \"hello\"}\n").unwrap(),
            &["--dataset", "rows.jsonl"],
            "text",
        ),
        case(
            "eval-corpus-empty",
            |s| {
                fs::write(s.join("empty.txt"), "").unwrap();
                eval_cmd(s, &["--ppl", "empty.txt"])
            },
            "empty.txt",
        ),
    ];
    assert_all_refused(cases.into_iter().flatten().collect());
}

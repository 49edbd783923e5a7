//! Building a model from a checkpoint's tensors with every mismatch named: each tensor the
//! config implies must be there with its shape, and each tensor there must be one the model
//! reads. A tensor nobody reads (a bias of a family whose biases grasp ignores, a layer past
//! `num_hidden_layers`) would otherwise be dropped without a word, and the output be wrong.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::model::{Llama, LlamaConfig};

/// Tensors that describe no weight (rotary tables some exports include).
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// The checkpoint's tensors, recording which ones the model loader asks for.
struct Tracked {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl Tracked {
    fn mark(&self, name: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
    }

    fn find(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.mark(name);
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("tensor {name} is missing from the checkpoint"))
        })
    }
}

impl SimpleBackend for Tracked {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.find(name)?;
        if t.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name} has shape {:?} where config.json implies {:?}",
                t.dims(),
                shape.dims()
            )));
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The model `config` describes, from `tensors` (already in `dtype` on `device`); fails
/// naming the first tensor that is missing, misshapen or left unread.
pub fn build_model(
    config: &LlamaConfig,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Llama> {
    let names: BTreeSet<String> = tensors.keys().cloned().collect();
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    let backend = Tracked {
        tensors,
        used: used.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    let model = Llama::from_var_builder(config, vb)?;
    let used = used.lock().map(|u| u.clone()).unwrap_or_default();
    let unused: Vec<&String> = names
        .iter()
        .filter(|n| !used.contains(*n) && !is_buffer(n))
        .collect();
    if let Some(first) = unused.first() {
        let more = match unused.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        if let Some(layer) = unused.iter().filter_map(|n| layer_index(n)).max() {
            if layer >= config.num_hidden_layers {
                bail!(
                    "config.json has num_hidden_layers {} but the checkpoint holds layer {layer} \
                     (tensor {first}{more})",
                    config.num_hidden_layers
                );
            }
        }
        let why = if first.ends_with(".bias") {
            format!(
                "config.json (model_type {}) declares no such bias, and grasp would drop it",
                config.family.model_type()
            )
        } else if first.as_str() == "lm_head.weight" {
            "config.json ties the head to the embeddings (tie_word_embeddings)".to_string()
        } else {
            "grasp does not read it, so the model would not be the one saved".to_string()
        };
        bail!("tensor {first}{more} in the checkpoint would not be used: {why}");
    }
    Ok(model)
}

/// The layer a tensor name such as `model.layers.3.mlp.up_proj.weight` belongs to.
pub fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Every token id of `tokenizer` must have a row in the embedding.
pub fn check_vocab(tokenizer: &Tokenizer, config: &LlamaConfig) -> Result<()> {
    let largest = tokenizer.get_vocab(true).into_values().max();
    if let Some(id) = largest.filter(|&id| id as usize >= config.vocab_size) {
        bail!(
            "the tokenizer has token id {id} but the embedding has {} rows (vocab_size in config.json)",
            config.vocab_size
        );
    }
    Ok(())
}

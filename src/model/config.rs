//! `config.json` of a Llama-family checkpoint, as transformers writes it. The families grasp
//! runs share one decoder; what differs between them (biases, head size, rotary scaling,
//! sliding window) is read here into [`LlamaConfig`] and nowhere else.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Llama-3 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Ranks of the projections a factorized grasp checkpoint stores as two thin matrices.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct GraspSection {
    /// HF module name (`model.layers.3.mlp.down_proj`) → rank kept.
    pub ranks: BTreeMap<String, usize>,
}

/// The `model_type`s grasp runs: decoders that differ from Llama's only in their config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Llama, Family::Mistral, Family::Qwen2];

    /// The `model_type` of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }

    fn parse(model_type: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
            .with_context(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.model_type()).collect();
                format!(
                    "model_type `{model_type}` is not supported (supported: {})",
                    names.join(", ")
                )
            })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Whether q_proj, k_proj and v_proj carry a bias (Llama's `attention_bias`; always in Qwen2).
    pub qkv_bias: bool,
    /// Whether o_proj carries a bias (Llama's `attention_bias`; never in Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Keys further back than this many positions are hidden from a query (Mistral's
    /// `sliding_window`). grasp's attention does not implement the window, so sequences longer
    /// than it are refused.
    pub sliding_window: Option<usize>,
    pub grasp: Option<GraspSection>,
    /// The file as read, so that saving keeps every field we do not interpret.
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    hidden_act: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    /// Qwen2's switch for its `sliding_window`.
    #[serde(default)]
    use_sliding_window: bool,
    grasp: Option<GraspSection>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    2048
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(value.clone()).map_err(|e| {
                match e.path().to_string().as_str() {
                    "." => anyhow::anyhow!("not a Llama config.json: {}", e.inner()),
                    field => anyhow::anyhow!("field `{field}`: {}", e.inner()),
                }
            })?;
        for (field, n) in [
            ("num_hidden_layers", raw.num_hidden_layers),
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
        ] {
            if n == 0 {
                bail!("field `{field}` is 0: the model would have nothing to compute with");
            }
        }
        let family = Family::parse(&raw.model_type)?;
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                bail!("hidden_act `{act}` is not supported (Llama uses silu)");
            }
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            bail!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            );
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("head_dim {head_dim} is not a positive even number (rotary embeddings pair its values)");
        }
        let rope_params = raw.rope_parameters.as_ref();
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let scaling = raw.rope_scaling.as_ref().or(rope_params);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Mistral => (raw.attention_bias, raw.attention_bias),
        };
        let sliding_window = match family {
            Family::Llama => None,
            Family::Mistral => raw.sliding_window,
            Family::Qwen2 => raw.sliding_window.filter(|_| raw.use_sliding_window),
        };
        Ok(Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling: parse_rope_scaling(scaling)?,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias,
            sliding_window,
            grasp: raw.grasp,
            raw: value,
        })
    }

    /// The longest sequence the model attends over exactly: max_position_embeddings, or the
    /// sliding window when that is shorter.
    pub fn max_sequence(&self) -> usize {
        self.sliding_window
            .map_or(self.max_position_embeddings, |w| {
                w.min(self.max_position_embeddings)
            })
    }

    /// Refuses a sequence of `len` tokens the model cannot run exactly.
    pub fn check_sequence(&self, len: usize) -> Result<()> {
        if len > self.max_position_embeddings {
            bail!(
                "sequence of {len} tokens exceeds max_position_embeddings {}",
                self.max_position_embeddings
            );
        }
        if let Some(w) = self.sliding_window.filter(|&w| len > w) {
            bail!(
                "sequence of {len} tokens exceeds the {} model's sliding window of {w} tokens, \
                 which grasp does not implement: use sequences of at most {w}",
                self.family.model_type()
            );
        }
        Ok(())
    }

    /// The config.json to write for a model derived from this one: the original fields with
    /// the layer count and the grasp section replaced.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = self.raw.clone();
        if let Some(map) = out.as_object_mut() {
            map.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
            match &self.grasp {
                Some(g) => {
                    map.insert("grasp".into(), serde_json::to_value(g).unwrap_or_default());
                }
                None => {
                    map.remove("grasp");
                }
            }
        }
        out
    }
}

/// Only the `llama3` scaling changes the rotary frequencies we compute; `default` (or none) is
/// plain RoPE, and other kinds would silently give wrong logits, so they are refused.
fn parse_rope_scaling(value: Option<&serde_json::Value>) -> Result<Option<Llama3RopeScaling>> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(
            serde_json::from_value(v.clone()).context("incomplete llama3 rope_scaling")?,
        )),
        other => bail!("rope_scaling type `{other}` is not supported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rope_theta_from_rope_parameters_and_defaults_kv_heads() {
        let c = LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2,
                "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.head_dim, 4);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn refuses_non_llama_models() {
        let err = LlamaConfig::from_json(
            r#"{"model_type":"gpt2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2}"#,
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("`gpt2` is not supported"), "{err}");
        assert!(err.contains("llama, mistral, qwen2"), "{err}");
    }

    fn family(extra: &str) -> LlamaConfig {
        LlamaConfig::from_json(&format!(
            r#"{{"vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":64,
                {extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn biases_and_windows_follow_the_family() {
        let qwen = family(r#""model_type":"qwen2","sliding_window":16,"use_sliding_window":false"#);
        assert!(qwen.qkv_bias && !qwen.o_bias && !qwen.mlp_bias);
        assert_eq!(qwen.sliding_window, None);
        let qwen = family(r#""model_type":"qwen2","sliding_window":16,"use_sliding_window":true"#);
        assert_eq!(qwen.sliding_window, Some(16));
        let llama = family(r#""model_type":"llama","attention_bias":true"#);
        assert!(llama.qkv_bias && llama.o_bias);
        let mistral = family(r#""model_type":"mistral","sliding_window":16,"head_dim":8"#);
        assert!(!mistral.qkv_bias && !mistral.o_bias);
        assert_eq!((mistral.head_dim, mistral.max_sequence()), (8, 16));
        assert!(mistral.check_sequence(16).is_ok());
        let err = format!("{:#}", mistral.check_sequence(17).unwrap_err());
        assert!(err.contains("sliding window of 16"), "{err}");
        let err = LlamaConfig::from_json(r#"{"vocab_size":10}"#).unwrap_err();
        assert!(format!("{err:#}").contains("model_type"), "{err:#}");
    }

    #[test]
    fn parses_llama3_scaling() {
        let c = LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2,"rope_theta":500000.0,
                "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
    }
}

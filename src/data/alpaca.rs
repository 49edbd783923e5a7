//! Instruction data for recovery training: Alpaca-style records (`instruction`, `input`,
//! `output`), the Alpaca prompt template and tokenized training examples.
//!
//! An example is the prompt followed by the response, tokenized with the tokenizer's own
//! special tokens, cut at `max_length` tokens and, with `add_eos`, ended by the EOS token when
//! there is room for it. Its loss scores every position t against token t+1; unless
//! `train_on_inputs`, only targets inside the response count (the prompt's tokens, counted by
//! tokenizing the prompt alone, are masked), as in alpaca-lora and LLM-Pruner, whose training
//! script the original GRASP recovery runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::io::hub::Hub;

/// The hub dataset `--data-path` names by default, and its file.
pub const DEFAULT_DATASET: &str = "yahma/alpaca-cleaned";
const HUB_FILE: &str = "alpaca_data_cleaned.json";
/// Where the default dataset lives under `--data-dir`.
const LOCAL_DIR: &str = "alpaca_cleaned";

/// One instruction, its optional input and the response to learn.
#[derive(Clone, Debug, Deserialize)]
pub struct Record {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
}

/// The prompt templates `--prompt-template-name` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptTemplate {
    /// Stanford Alpaca's template, with and without an input section.
    Alpaca,
}

impl PromptTemplate {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "alpaca" => Ok(Self::Alpaca),
            other => bail!("unknown prompt template {other:?} (known: alpaca)"),
        }
    }

    /// The text before the response.
    pub fn prompt(self, record: &Record) -> String {
        match self {
            Self::Alpaca if record.input.is_empty() => format!(
                "Below is an instruction that describes a task. Write a response that \
                 appropriately completes the request.\n\n### Instruction:\n{}\n\n### Response:\n",
                record.instruction
            ),
            Self::Alpaca => format!(
                "Below is an instruction that describes a task, paired with an input that \
                 provides further context. Write a response that appropriately completes the \
                 request.\n\n### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
                record.instruction, record.input
            ),
        }
    }
}

/// Where the records come from: a file, or the default dataset found locally or on the hub.
pub fn resolve_data_path(data_path: &str, data_dir: Option<&Path>) -> Result<PathBuf> {
    let path = Path::new(data_path);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if data_path != DEFAULT_DATASET {
        if path.extension().is_some() || path.is_dir() {
            bail!("--data-path {data_path}: no such file (a .json or .jsonl file of records)");
        }
        return Hub::from_env()
            .dataset_file(data_path, None, HUB_FILE)
            .with_context(|| format!("--data-path {data_path}: the hub file {HUB_FILE}"));
    }
    let dir = data_dir
        .map(Path::to_path_buf)
        .or_else(crate::data::corpus::default_data_dir);
    if let Some(local) = dir.as_deref().and_then(local_copy) {
        return Ok(local);
    }
    Hub::from_env()
        .dataset_file(DEFAULT_DATASET, None, HUB_FILE)
        .with_context(|| {
            format!(
                "{DEFAULT_DATASET} not found: no .json/.jsonl file under {} (pass --data-dir, or \
             --data-path FILE); the hub copy could not be used either",
                dir.map(|d| d.join(LOCAL_DIR).display().to_string())
                    .unwrap_or_else(|| format!("<data dir>/{LOCAL_DIR}"))
            )
        })
}

/// The JSONL (else JSON) file of `data_dir/alpaca_cleaned`, first by name.
fn local_copy(data_dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join(LOCAL_DIR))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    ["jsonl", "json"].iter().find_map(|ext| {
        files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == *ext))
            .cloned()
    })
}

/// Reads the records of a `.json` file (an array of objects) or a `.jsonl` file (one object
/// per line). A record without `instruction` or `output` is an error naming it.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records: Vec<Record> = if text.trim_start().starts_with('[') {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            anyhow::anyhow!("{}: record {}: {}", path.display(), e.path(), e.inner())
        })?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{}: line {}", path.display(), i + 1))
            })
            .collect::<Result<_>>()?
    };
    if records.is_empty() {
        bail!("{}: no records", path.display());
    }
    Ok(records)
}

/// How records become training examples.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExampleSpec {
    pub template: PromptTemplate,
    pub max_length: usize,
    pub train_on_inputs: bool,
    pub add_eos: bool,
}

/// A tokenized example: its ids and, per position t < len − 1, whether the target ids[t + 1]
/// counts in the loss.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub scored: Vec<bool>,
}

impl Example {
    pub fn scored_targets(&self) -> usize {
        self.scored.iter().filter(|&&s| s).count()
    }
}

/// Tokenizes `records`; examples with no scored target (a prompt that fills `max_length`) are
/// dropped, and an error says so when none is left. `declared_eos` is the EOS token the
/// checkpoint's tokenizer configuration names (see `io::load::Loaded::eos_token`).
pub fn tokenize_examples(
    records: &[Record],
    tokenizer: &Tokenizer,
    declared_eos: Option<u32>,
    spec: &ExampleSpec,
) -> Result<Vec<Example>> {
    if spec.max_length < 2 {
        bail!("--max-length must be at least 2 (a token and the one it predicts)");
    }
    let eos = spec
        .add_eos
        .then(|| declared_eos.map_or_else(|| eos_id(tokenizer), Ok))
        .transpose()?;
    let encode = |text: String| -> Result<Vec<u32>> {
        let enc = tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    };
    let mut examples = Vec::with_capacity(records.len());
    for record in records {
        let prompt = spec.template.prompt(record);
        let prompt_len = if spec.train_on_inputs {
            0
        } else {
            encode(prompt.clone())?.len()
        };
        let mut ids = encode(prompt + &record.output)?;
        ids.truncate(spec.max_length);
        if let Some(eos) = eos {
            if ids.len() < spec.max_length && ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        let scored: Vec<bool> = (1..ids.len()).map(|t| t >= prompt_len).collect();
        if scored.iter().any(|&s| s) {
            examples.push(Example { ids, scored });
        }
    }
    if examples.is_empty() {
        bail!(
            "every example's prompt fills --max-length {} tokens, so no response token is left \
             to train on (raise --max-length or pass --train-on-inputs)",
            spec.max_length
        );
    }
    Ok(examples)
}

/// The EOS token of a tokenizer whose configuration names none: the first well-known name the
/// vocabulary has.
fn eos_id(tokenizer: &Tokenizer) -> Result<u32> {
    [
        "</s>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|im_end|>",
        "<|eot_id|>",
    ]
    .iter()
    .find_map(|t| tokenizer.token_to_id(t))
    .context("--add-eos-token: the tokenizer has no known end-of-sequence token")
}

/// Splits `examples` into (train, validation) after a shuffle with `seed`; `val_size` examples
/// are held out (an error when that leaves nothing to train on).
pub fn split_validation(
    mut examples: Vec<Example>,
    val_size: usize,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if val_size >= examples.len() {
        bail!(
            "--val-set-size {val_size} leaves no training example ({} in all)",
            examples.len()
        );
    }
    examples.shuffle(&mut StdRng::seed_from_u64(seed));
    let train = examples.split_off(val_size);
    Ok((train, examples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(input: &str) -> Record {
        Record {
            instruction: "Add the numbers.".into(),
            input: input.into(),
            output: "5".into(),
        }
    }

    #[test]
    fn template_has_input_section_only_with_input() {
        let with = PromptTemplate::Alpaca.prompt(&record("2 and 3"));
        let without = PromptTemplate::Alpaca.prompt(&record(""));
        assert!(with.contains("### Input:\n2 and 3\n\n### Response:\n"));
        assert!(!without.contains("### Input:"));
        assert!(without.ends_with("### Instruction:\nAdd the numbers.\n\n### Response:\n"));
    }

    #[test]
    fn missing_fields_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("grasp-alpaca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"instruction\": \"x\", \"output\": \"y\"}\n{\"input\": \"x\"}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_records(&bad).unwrap_err());
        assert!(
            err.contains("line 2") && err.contains("instruction"),
            "{err}"
        );
        let arr = dir.join("bad.json");
        std::fs::write(
            &arr,
            "[{\"instruction\": \"x\", \"output\": \"y\"}, {\"output\": 1}]",
        )
        .unwrap();
        let err = format!("{:#}", read_records(&arr).unwrap_err());
        assert!(err.contains("record [1]"), "{err}");
        let empty = dir.join("empty.json");
        std::fs::write(&empty, "[]").unwrap();
        assert!(format!("{:#}", read_records(&empty).unwrap_err()).contains("no records"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_split_is_seeded_and_disjoint() {
        let examples: Vec<Example> = (0..10)
            .map(|i| Example {
                ids: vec![i, i + 1],
                scored: vec![true],
            })
            .collect();
        let (a_train, a_val) = split_validation(examples.clone(), 3, 7).unwrap();
        let (b_train, b_val) = split_validation(examples.clone(), 3, 7).unwrap();
        assert_eq!(a_val.len(), 3);
        assert_eq!(a_train.len(), 7);
        let ids = |v: &[Example]| v.iter().map(|e| e.ids[0]).collect::<Vec<_>>();
        assert_eq!(ids(&a_val), ids(&b_val));
        assert_eq!(ids(&a_train), ids(&b_train));
        let mut all = [ids(&a_val), ids(&a_train)].concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(split_validation(examples, 10, 7).is_err());
    }
}

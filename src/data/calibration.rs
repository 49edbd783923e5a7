//! Calibration windows: the token sequences GRASP scores layers and singular values on.
//!
//! As in the original GRASP, the rows are joined with blank lines, tokenized once without
//! special tokens and cut into non-overlapping windows of `seq_len` tokens (the tail that does
//! not fill a window is dropped). `Sequential` takes the first `num_samples` windows in order;
//! `Random` draws `num_samples` distinct window indices with
//! `rand::seq::index::sample(StdRng::seed_from_u64(seed), available, num_samples)` and keeps
//! them in drawn order, so a seed always gives the same windows in the same order.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokenizers::{Encoding, Tokenizer};

use crate::data::corpus::{load_rows, Corpus};
use crate::data::Split;
use crate::io::hub::Hub;

/// How calibration windows are picked among all the windows of the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Distinct windows drawn at random with the seed.
    Random,
    /// The first windows of the text, in order.
    Sequential,
}

/// What calibration data to build.
#[derive(Clone, Debug)]
pub struct CalibrationSpec {
    pub corpus: Corpus,
    /// Directory holding the corpora (None: `../shared/data` when it exists).
    pub data_dir: Option<PathBuf>,
    pub num_samples: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub sampling: Sampling,
}

/// Calibration windows, each exactly `seq_len` token ids.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub windows: Vec<Vec<u32>>,
    pub seq_len: usize,
    /// Where the text came from (file path or hub file).
    pub source: String,
    /// Tokens in the whole calibration text.
    pub total_tokens: usize,
    /// Non-overlapping windows the text holds, of which `windows` were taken.
    pub available_windows: usize,
}

/// Loads the corpus's calibration split and cuts it into windows.
pub fn load_calibration(spec: &CalibrationSpec, tokenizer: &Tokenizer) -> Result<Calibration> {
    let rows = load_rows(
        &spec.corpus,
        Split::Train,
        spec.data_dir.as_deref(),
        &Hub::from_env(),
    )?;
    let calibration = windows_from_rows(&rows.rows, tokenizer, spec)?;
    Ok(Calibration {
        source: rows.source,
        ..calibration
    })
}

/// Cuts already loaded rows into calibration windows (`source` is the corpus name).
pub fn windows_from_rows(
    rows: &[String],
    tokenizer: &Tokenizer,
    spec: &CalibrationSpec,
) -> Result<Calibration> {
    if spec.num_samples == 0 {
        bail!("the number of calibration samples must be at least 1");
    }
    if spec.seq_len == 0 {
        bail!("the calibration sequence length must be at least 1");
    }
    let encoding = encode_stream(tokenizer, &rows.join("\n\n"), false)?;
    let ids = encoding.get_ids();
    let available_windows = ids.len() / spec.seq_len;
    if available_windows < spec.num_samples {
        bail!(
            "{} calibration text has {} tokens, i.e. {available_windows} windows of {} tokens, \
             but {} samples were asked for",
            spec.corpus,
            ids.len(),
            spec.seq_len,
            spec.num_samples
        );
    }
    let windows = chosen_windows(spec, available_windows)
        .into_iter()
        .map(|w| ids[w * spec.seq_len..(w + 1) * spec.seq_len].to_vec())
        .collect();
    Ok(Calibration {
        windows,
        seq_len: spec.seq_len,
        source: spec.corpus.name(),
        total_tokens: ids.len(),
        available_windows,
    })
}

/// Indices of the windows to take, in the order they are used.
fn chosen_windows(spec: &CalibrationSpec, available_windows: usize) -> Vec<usize> {
    match spec.sampling {
        Sampling::Sequential => (0..spec.num_samples).collect(),
        Sampling::Random => {
            let mut rng = StdRng::seed_from_u64(spec.seed);
            rand::seq::index::sample(&mut rng, available_windows, spec.num_samples).into_vec()
        }
    }
}

/// Tokenizes a whole text as one sequence, ignoring any truncation or padding configured in
/// tokenizer.json (they would silently cut or pad the stream).
pub fn encode_stream(
    tokenizer: &Tokenizer,
    text: &str,
    add_special_tokens: bool,
) -> Result<Encoding> {
    let encode = |t: &Tokenizer| {
        t.encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot tokenize the corpus text: {e}"))
    };
    if tokenizer.get_truncation().is_none() && tokenizer.get_padding().is_none() {
        return encode(tokenizer);
    }
    let mut unbounded = tokenizer.clone();
    unbounded
        .with_truncation(None)
        .map_err(|e| anyhow!("cannot disable the tokenizer's truncation: {e}"))?
        .with_padding(None);
    encode(&unbounded)
}

impl Calibration {
    /// The windows in groups of `batch_size` (the last group may be smaller; 0 counts as 1).
    pub fn batches(&self, batch_size: usize) -> impl Iterator<Item = &[Vec<u32>]> {
        self.windows.chunks(batch_size.max(1))
    }

    /// A (batch, seq_len) u32 tensor of equally long windows.
    pub fn batch_tensor(batch: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
        let seq_len = batch.first().map_or(0, Vec::len);
        if batch.iter().any(|w| w.len() != seq_len) {
            candle_core::bail!("calibration windows in one batch must have the same length");
        }
        let flat: Vec<u32> = batch.concat();
        Tensor::from_vec(flat, (batch.len(), seq_len), device)
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

    use super::*;

    /// A tokenizer where the word `w{i}` is token i, so windows can be checked by eye.
    fn word_tokenizer(words: u32) -> Tokenizer {
        let model = WordLevel::builder()
            .vocab((0..words).map(|i| (format!("w{i}"), i)).collect())
            .unk_token("w0".to_string())
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
        tokenizer
    }

    fn rows(words: u32) -> Vec<String> {
        (0..words).map(|i| format!("w{i}")).collect()
    }

    fn spec(num_samples: usize, seq_len: usize, seed: u64, sampling: Sampling) -> CalibrationSpec {
        CalibrationSpec {
            corpus: Corpus::Wikitext2,
            data_dir: None,
            num_samples,
            seq_len,
            seed,
            sampling,
        }
    }

    #[test]
    fn sequential_windows_are_the_first_ones_and_drop_the_tail() {
        let calibration = windows_from_rows(
            &rows(11),
            &word_tokenizer(11),
            &spec(2, 4, 0, Sampling::Sequential),
        )
        .unwrap();
        assert_eq!(
            calibration.windows,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        assert_eq!(calibration.total_tokens, 11);
        assert_eq!(calibration.available_windows, 2);
    }

    #[test]
    fn random_windows_are_whole_distinct_windows() {
        let calibration = windows_from_rows(
            &rows(40),
            &word_tokenizer(40),
            &spec(5, 4, 7, Sampling::Random),
        )
        .unwrap();
        let mut starts: Vec<u32> = calibration.windows.iter().map(|w| w[0]).collect();
        for window in &calibration.windows {
            assert_eq!(window[0] % 4, 0, "window not aligned: {window:?}");
            assert_eq!(window, &(window[0]..window[0] + 4).collect::<Vec<_>>());
        }
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), 5);
    }

    #[test]
    fn batches_and_tensor_shape() {
        let calibration = windows_from_rows(
            &rows(12),
            &word_tokenizer(12),
            &spec(3, 4, 0, Sampling::Sequential),
        )
        .unwrap();
        let sizes: Vec<usize> = calibration.batches(2).map(<[_]>::len).collect();
        assert_eq!(sizes, [2, 1]);
        let first = calibration.batches(2).next().unwrap();
        let tensor = Calibration::batch_tensor(first, &Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), [2, 4]);
        assert_eq!(tensor.to_vec2::<u32>().unwrap()[1], [4, 5, 6, 7]);
        let ragged = [vec![1, 2], vec![3]];
        assert!(Calibration::batch_tensor(&ragged, &Device::Cpu).is_err());
    }

    #[test]
    fn zero_sizes_are_rejected() {
        let tokenizer = word_tokenizer(8);
        let no_samples = windows_from_rows(&rows(8), &tokenizer, &spec(0, 4, 0, Sampling::Random));
        assert!(no_samples.unwrap_err().to_string().contains("samples"));
        let no_len = windows_from_rows(&rows(8), &tokenizer, &spec(1, 0, 0, Sampling::Random));
        assert!(no_len.unwrap_err().to_string().contains("sequence length"));
    }
}

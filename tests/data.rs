//! Corpora, calibration windows and perplexity: golden windows from the reference
//! implementation, sampling, file formats, error messages, and perplexity against mock models.

use std::path::Path;

use crate::common::{offline_hub, shared_dir, MockLm, TempDir};
use candle_core::Device;
use grasp::data::calibration::{
    load_calibration, windows_from_rows, Calibration, CalibrationSpec, Sampling,
};
use grasp::data::corpus::{load_rows, Corpus};
use grasp::data::rows::read_rows;
use grasp::data::Split;
use grasp::eval::perplexity::{perplexity, perplexity_of_stream, PerplexitySpec};
use grasp::io::hub::Hub;
use tokenizers::Tokenizer;

fn tokenizer(shared: &Path, model: &str) -> Tokenizer {
    Tokenizer::from_file(shared.join("models").join(model).join("tokenizer.json")).unwrap()
}

fn golden_windows(shared: &Path, golden: &str) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(shared.join("golden").join(golden)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["bi_windows"].clone()).unwrap()
}

fn wiki_spec(shared: &Path, num_samples: usize, seed: u64, sampling: Sampling) -> CalibrationSpec {
    CalibrationSpec {
        corpus: Corpus::Wikitext2,
        data_dir: Some(shared.join("data")),
        num_samples,
        seq_len: 128,
        seed,
        sampling,
    }
}

#[test]
fn sequential_windows_match_golden() {
    let Some(shared) = shared_dir() else { return };
    for (model, golden) in [
        ("stories260K-hf", "stories260K.json"),
        ("smollm2-135m-ref", "smollm2-135m.json"),
    ] {
        let expected = golden_windows(&shared, golden);
        let spec = wiki_spec(&shared, expected.len(), 0, Sampling::Sequential);
        let calibration = load_calibration(&spec, &tokenizer(&shared, model)).unwrap();
        assert!(
            calibration.source.ends_with("wiki.valid.raw"),
            "{}",
            calibration.source
        );
        assert_eq!(calibration.windows, expected, "{model}");
        assert_eq!(
            calibration.available_windows,
            calibration.total_tokens / 128
        );
    }
}

#[test]
fn random_windows_depend_only_on_the_seed() {
    let Some(shared) = shared_dir() else { return };
    let tokenizer = tokenizer(&shared, "stories260K-hf");
    let rows = load_rows(
        &Corpus::Wikitext2,
        Split::Train,
        Some(&shared.join("data")),
        &offline_hub(),
    )
    .unwrap()
    .rows;
    let draw = |seed| {
        windows_from_rows(
            &rows,
            &tokenizer,
            &wiki_spec(&shared, 16, seed, Sampling::Random),
        )
        .unwrap()
    };
    let (first, again, other) = (draw(3), draw(3), draw(4));
    assert_eq!(first.windows, again.windows);
    assert_ne!(first.windows, other.windows);
    let mut distinct = first.windows.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 16);
    let sequential = windows_from_rows(
        &rows,
        &tokenizer,
        &wiki_spec(&shared, first.available_windows, 0, Sampling::Sequential),
    )
    .unwrap();
    for window in &first.windows {
        assert!(sequential.windows.contains(window), "not a whole window");
    }
    assert_ne!(
        first.windows,
        sequential.windows[..16],
        "random picked the first windows"
    );
}

#[test]
fn too_little_text_says_how_much_there_is() {
    let Some(shared) = shared_dir() else { return };
    let rows = vec!["Once upon a time there was a cat.".to_string()];
    let spec = CalibrationSpec {
        seq_len: 8,
        ..wiki_spec(&shared, 5, 0, Sampling::Sequential)
    };
    let err = windows_from_rows(&rows, &tokenizer(&shared, "stories260K-hf"), &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokens"), "{err}");
    assert!(err.contains(" windows of 8 tokens"), "{err}");
    assert!(err.contains("5 samples were asked for"), "{err}");
}

#[test]
fn corpus_parse_accepts_names_and_files_only() {
    assert_eq!(Corpus::parse("PTB").unwrap(), Corpus::Ptb);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert_eq!(
        Corpus::parse(manifest.to_str().unwrap()).unwrap(),
        Corpus::File(manifest.clone())
    );
    let unknown = Corpus::parse("wikitext-103").unwrap_err().to_string();
    assert!(
        unknown.contains("unknown corpus `wikitext-103`"),
        "{unknown}"
    );
    let dir = Corpus::parse(env!("CARGO_MANIFEST_DIR"))
        .unwrap_err()
        .to_string();
    assert!(dir.contains("directory"), "{dir}");
}

#[test]
fn local_files_become_rows() {
    let dir = TempDir::new("data-rows");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "first line\n\n third \n").unwrap();
    assert_eq!(read_rows(&text).unwrap(), ["first line", "", " third "]);

    let jsonl = dir.join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"a\\nb\", \"url\": \"u\"}\n{\"text\": \"c\"}\n",
    )
    .unwrap();
    let rows = load_rows(
        &Corpus::File(jsonl.clone()),
        Split::Eval,
        None,
        &offline_hub(),
    )
    .unwrap();
    assert_eq!(rows.rows, ["a\nb", "c"]);
    assert_eq!(rows.source, jsonl.display().to_string());

    std::fs::write(&jsonl, "{\"text\": \"a\"}\n{\"text\": \"b\"\n").unwrap();
    let err = read_rows(&jsonl).unwrap_err().to_string();
    assert!(err.contains("docs.jsonl:2"), "{err}");
}

#[test]
fn named_corpora_read_the_shared_layout() {
    let Some(shared) = shared_dir() else { return };
    let data = shared.join("data");
    let ptb = load_rows(&Corpus::Ptb, Split::Eval, Some(&data), &offline_hub()).unwrap();
    assert_eq!(ptb.rows.len(), 3761);
    assert!(ptb.source.ends_with("ptb/ptb.test.txt"), "{}", ptb.source);
    let ptb_calibration =
        load_rows(&Corpus::Ptb, Split::Train, Some(&data), &offline_hub()).unwrap();
    assert!(ptb_calibration.source.ends_with("ptb/ptb.valid.txt"));
    let c4 = load_rows(&Corpus::C4, Split::Eval, Some(&data), &offline_hub()).unwrap();
    assert_eq!(c4.rows.len(), 1000);
    assert!(c4.source.ends_with("c4_en_train_first1000.jsonl"));
    let wiki = load_rows(&Corpus::Wikitext2, Split::Eval, Some(&data), &offline_hub()).unwrap();
    assert_eq!(wiki.rows.len(), 4358);
}

#[test]
fn missing_local_file_offline_names_file_and_flag() {
    let empty = TempDir::new("data-offline");
    let hub = Hub::offline(empty.join("hf-home/hub"));
    let err = load_rows(&Corpus::Wikitext2, Split::Eval, Some(empty.path()), &hub)
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\n'), "not one line: {err}");
    let expected = format!("{}/wikitext2_raw/wiki.test.raw", empty.path().display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}

/// Longer than any window here: perplexity windows are cut by `seq_len` alone.
const UNLIMITED: usize = 1 << 20;

fn uniform(vocab: usize) -> impl Fn(&[u32]) -> Vec<f32> {
    move |_| vec![0.0; vocab]
}

/// Puts probability 0.9 on the token after the last one (cyclically), the rest spread
/// evenly: on a counting stream every target gets 0.9.
fn next_token_oracle(vocab: usize) -> impl Fn(&[u32]) -> Vec<f32> {
    move |prefix| {
        let last = *prefix.last().unwrap() as usize;
        let rest = (0.1 / (vocab - 1) as f32).ln();
        let mut logits = vec![rest; vocab];
        logits[(last + 1) % vocab] = 0.9f32.ln();
        logits
    }
}

fn counting(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| (i % vocab) as u32).collect()
}

fn ppl_spec(seq_len: usize, limit: Option<usize>, batch_size: usize) -> PerplexitySpec {
    PerplexitySpec {
        seq_len,
        limit,
        batch_size,
    }
}

#[test]
fn uniform_model_has_the_vocabulary_as_perplexity() {
    let model = MockLm::new(50, UNLIMITED, uniform(50));
    let (nll, tokens, windows) =
        perplexity_of_stream(&model, &counting(100, 50), &ppl_spec(16, None, 4)).unwrap();
    assert!((nll.exp() - 50.0).abs() < 1e-3, "{}", nll.exp());
    assert_eq!((tokens, windows), (6 * 15, 6));
    assert_eq!(model.forwards.get(), 2);
}

#[test]
fn scoring_is_shifted_by_one_token() {
    let model = MockLm::new(7, UNLIMITED, next_token_oracle(7));
    let (nll, _, _) =
        perplexity_of_stream(&model, &counting(40, 7), &ppl_spec(8, None, 2)).unwrap();
    assert!((nll - -(0.9f64.ln())).abs() < 1e-5, "{nll}");
    // On a descending stream no target is the predicted one: each gets 0.1/6.
    let reversed: Vec<u32> = counting(40, 7).into_iter().rev().collect();
    let (nll, _, _) = perplexity_of_stream(&model, &reversed, &ppl_spec(8, None, 2)).unwrap();
    assert!((nll - -((0.1f64 / 6.0).ln())).abs() < 1e-4, "{nll}");
}

#[test]
fn windows_respect_limit_tail_batch_and_max_positions() {
    let model = MockLm::new(5, UNLIMITED, next_token_oracle(5));
    let ids = counting(10, 5);
    let run = |spec| perplexity_of_stream(&model, &ids, &spec).unwrap();
    let (all, tokens, windows) = run(ppl_spec(4, None, 1));
    assert_eq!((tokens, windows), (6, 2));
    assert_eq!(run(ppl_spec(4, Some(1), 1)).1, 3);
    assert_eq!(run(ppl_spec(4, Some(9), 1)).2, 2);
    assert!((run(ppl_spec(4, None, 3)).0 - all).abs() < 1e-9);
    let short = MockLm::new(5, 3, next_token_oracle(5));
    let (_, tokens, windows) = perplexity_of_stream(&short, &ids, &ppl_spec(100, None, 2)).unwrap();
    assert_eq!((tokens, windows), (6, 3));
    assert_eq!(short.forwards.get(), 2);
}

#[test]
fn too_short_streams_and_bad_specs_are_errors() {
    let model = MockLm::new(5, UNLIMITED, uniform(5));
    let err = perplexity_of_stream(&model, &counting(3, 5), &ppl_spec(4, None, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 tokens"), "{err}");
    assert!(perplexity_of_stream(&model, &counting(9, 5), &ppl_spec(1, None, 1)).is_err());
    assert!(perplexity_of_stream(&model, &counting(9, 5), &ppl_spec(4, None, 0)).is_err());
}

#[test]
fn perplexity_reports_stream_and_bos() {
    let Some(shared) = shared_dir() else { return };
    let data = shared.join("data");
    let spec = ppl_spec(256, Some(3), 2);
    let stories = MockLm::new(512, UNLIMITED, uniform(512));
    let result = perplexity(
        &stories,
        &tokenizer(&shared, "stories260K-hf"),
        &Corpus::Ptb,
        Some(&data),
        &spec,
    )
    .unwrap();
    assert!((result.perplexity - 512.0).abs() < 1e-2, "{result:?}");
    assert!(result.bos, "the Llama tokenizer adds <s>");
    assert_eq!((result.windows, result.tokens_scored), (3, 3 * 255));
    assert!(result.source.ends_with("ptb.test.txt"));
    assert_eq!(result.dataset, "ptb");

    let smol = MockLm::new(49152, UNLIMITED, uniform(49152));
    let result = perplexity(
        &smol,
        &tokenizer(&shared, "smollm2-135m-ref"),
        &Corpus::Ptb,
        Some(&data),
        &ppl_spec(64, Some(1), 1),
    )
    .unwrap();
    assert!(!result.bos, "SmolLM2 adds no BOS");
    assert_eq!(result.seq_len, 64);
}

#[test]
fn calibration_batches_cover_all_windows() {
    let Some(shared) = shared_dir() else { return };
    let calibration: Calibration = load_calibration(
        &wiki_spec(&shared, 5, 1, Sampling::Random),
        &tokenizer(&shared, "stories260K-hf"),
    )
    .unwrap();
    let mut seen = Vec::new();
    for batch in calibration.batches(2) {
        let tensor = Calibration::batch_tensor(batch, &Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), [batch.len(), 128]);
        seen.extend(tensor.to_vec2::<u32>().unwrap());
    }
    assert_eq!(seen, calibration.windows);
}

//! Questions with identical options (49 MathQA test documents): lm-eval scores each option
//! alone, so equal options tie exactly and the first one wins. grasp packs a question's
//! options in one row, where a branch's place in the row can change the last bits of its
//! score; identical options must still come out identical.

use crate::common::MockLm;
use candle_core::Device;
use grasp::data::tasks::{parse_doc, Task};
use grasp::eval::harness::{loglikelihoods, Request};
use grasp::eval::tasks::judge;
use grasp::eval::{CausalLm, PackedRow};
use indicatif::ProgressBar;

const VOCAB: usize = 7;

fn prefix_logits(prefix: &[u32]) -> Vec<f32> {
    let sum: u32 = prefix.iter().sum();
    (0..VOCAB)
        .map(|v| ((v as f32 + 1.0) * 0.41 + 0.13 * sum as f32).sin())
        .collect()
}

/// The mock's exact log-probabilities, shifted by a hair per index in the row: like a real
/// model, whose packed matmuls round differently at different offsets.
struct Jittery(MockLm<Logits>);

type Logits = fn(&[u32]) -> Vec<f32>;

impl CausalLm for Jittery {
    fn log_probs(
        &self,
        rows: &[PackedRow],
        reads: &[u32],
        targets: &[u32],
    ) -> anyhow::Result<Vec<f32>> {
        let width = rows.first().map_or(1, PackedRow::len) as u32;
        let exact = self.0.log_probs(rows, reads, targets)?;
        Ok(exact
            .iter()
            .zip(reads)
            .map(|(lp, read)| lp + 1e-6 * (read % width) as f32)
            .collect())
    }

    fn device(&self) -> &Device {
        self.0.device()
    }

    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
}

fn request(continuation: &[u32]) -> Request {
    Request {
        context_ids: vec![1, 2, 3],
        continuation_ids: continuation.to_vec(),
    }
}

fn scores(requests: &[Request]) -> Vec<f64> {
    let model = Jittery(MockLm::new(VOCAB, 64, prefix_logits));
    loglikelihoods(&model, requests, 4, &ProgressBar::hidden()).unwrap()
}

#[test]
fn identical_options_get_bit_identical_scores() {
    let (x, y) = ([4u32, 5], [6u32, 0]);
    // The mock does tell a branch's place in the row: x scores differently first and second.
    let x_first = scores(&[request(&x), request(&y)])[0];
    let x_second = scores(&[request(&y), request(&x)])[1];
    assert_ne!(x_first.to_bits(), x_second.to_bits());

    let lls = scores(&[request(&x), request(&y), request(&x), request(&x)]);
    assert_eq!(lls[0].to_bits(), lls[2].to_bits(), "{lls:?}");
    assert_eq!(lls[0].to_bits(), lls[3].to_bits(), "{lls:?}");
    assert_eq!(lls[0].to_bits(), x_first.to_bits());
    assert_eq!(lls[1], scores(&[request(&x), request(&y)])[1]);
}

/// A MathQA record whose options b and c are the same text, with gold `correct`.
fn duplicate_options_doc(correct: &str) -> grasp::data::tasks::Doc {
    let record = format!(
        r#"{{"Problem": "what is 2 + 3 ?", "Rationale": "", "options": "a ) 6 , b ) 5 , c ) 5 , d ) 4 , e ) 7", "correct": "{correct}", "annotated_formula": "", "linear_formula": "", "category": "general"}}"#
    );
    parse_doc(Task::MathQa, &record).unwrap()
}

#[test]
fn a_tie_goes_to_the_first_option() {
    let lls = [-3.0, -1.0, -1.0, -4.0, -5.0];
    for (correct, wins) in [("b", true), ("c", false)] {
        let doc = duplicate_options_doc(correct);
        assert_eq!(doc.choices()[1], doc.choices()[2]);
        let judgement = judge(&doc, &lls);
        assert_eq!(
            (judgement.acc, judgement.acc_norm),
            (wins, wins),
            "{correct}"
        );
    }
}

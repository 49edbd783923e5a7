//! Log-likelihood scoring against mock models, metrics and reports.

use super::*;

const VOCAB: usize = 11;

/// Depends on the whole prefix (its sum) and on its last token.
fn prefix_logits(prefix: &[u32]) -> Vec<f32> {
    let sum: u32 = prefix.iter().sum();
    let last = *prefix.last().unwrap() as f32;
    (0..VOCAB)
        .map(|v| ((v as f32 + 1.0) * (0.37 + 0.05 * last) + 0.11 * sum as f32).sin() * 3.0)
        .collect()
}

/// log p(continuation | context) computed token by token in f64, keeping the last
/// `max_positions + 1` tokens as lm-eval does.
fn reference_ll(request: &Request, max_positions: usize) -> f64 {
    let tokens: Vec<u32> = [&request.context_ids[..], &request.continuation_ids[..]].concat();
    let start = tokens.len().saturating_sub(max_positions + 1);
    let first_target = tokens.len() - request.continuation_ids.len();
    (first_target..tokens.len())
        .map(|i| {
            let logits: Vec<f64> = prefix_logits(&tokens[start..i])
                .iter()
                .map(|&l| f64::from(l))
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
            logits[tokens[i] as usize] - log_sum
        })
        .sum()
}

fn request(context: &[u32], continuation: &[u32]) -> Request {
    Request {
        context_ids: context.to_vec(),
        continuation_ids: continuation.to_vec(),
    }
}

fn varied_requests() -> Vec<Request> {
    (0..10u32)
        .map(|i| {
            let context: Vec<u32> = (0..1 + (i * 7) % 6)
                .map(|t| (t * 3 + i) % VOCAB as u32)
                .collect();
            let continuation: Vec<u32> =
                (0..1 + i % 3).map(|t| (t + 2 * i) % VOCAB as u32).collect();
            request(&context, &continuation)
        })
        .collect()
}

#[test]
fn batching_and_padding_match_scoring_each_request_alone() {
    let requests = varied_requests();
    let expected: Vec<f64> = requests.iter().map(|r| reference_ll(r, 100)).collect();
    for batch_size in [1, 3, 4, 64] {
        let model = MockLm::new(VOCAB, 100, prefix_logits);
        let got = loglikelihoods(&model, &requests, batch_size, &ProgressBar::hidden()).unwrap();
        assert_eq!(
            model.forwards.get(),
            distinct_contexts(&requests).div_ceil(batch_size)
        );
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-4, "batch size {batch_size}: {g} vs {e}");
        }
    }
}

/// The packed rows scoring needs: one per distinct context (no request here is truncated).
fn distinct_contexts(requests: &[Request]) -> usize {
    let mut contexts: Vec<&[u32]> = requests.iter().map(|r| r.context_ids.as_slice()).collect();
    contexts.sort();
    contexts.dedup();
    contexts.len()
}

/// The continuations of one context, of one token or more, are read from one packed row in
/// which each sees the context and itself only; another context gets a row of its own.
#[test]
fn requests_sharing_a_context_share_a_row() {
    let requests = vec![
        request(&[4, 1, 7], &[3]),
        request(&[4, 1, 7], &[5]),
        request(&[4, 1, 7], &[3, 2, 8]),
        request(&[4, 1], &[9, 6]),
        request(&[4, 1, 7], &[6, 2]),
    ];
    assert_eq!(distinct_contexts(&requests), 2);
    let model = MockLm::new(VOCAB, 100, prefix_logits);
    let got = loglikelihoods(&model, &requests, 1, &ProgressBar::hidden()).unwrap();
    assert_eq!(model.forwards.get(), 2);
    for (g, r) in got.iter().zip(&requests) {
        let want = reference_ll(r, 100);
        assert!((g - want).abs() < 1e-4, "{r:?}: {g} vs {want}");
    }
}

#[test]
fn long_requests_lose_their_oldest_context_tokens() {
    let long = request(&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 10]);
    let model = MockLm::new(VOCAB, 6, prefix_logits);
    let got = loglikelihoods(
        &model,
        std::slice::from_ref(&long),
        2,
        &ProgressBar::hidden(),
    )
    .unwrap()[0];
    // 10 tokens, 7 kept: the model sees [4..=9] and the first target 9 is predicted from [4..=8].
    let kept = request(&[4, 5, 6, 7, 8], &[9, 10]);
    assert!((got - reference_ll(&kept, 100)).abs() < 1e-4);
    assert!(
        (got - reference_ll(&long, 100)).abs() > 1e-3,
        "truncation should change the score"
    );

    let too_long = request(&[1], &[1; 7]);
    assert!(loglikelihoods(&model, &[too_long], 2, &ProgressBar::hidden()).is_err());
}

/// The log-probabilities of a bigram table given as probabilities.
fn bigram(probs: &'static [[f32; 3]; 3]) -> impl Fn(&[u32]) -> Vec<f32> {
    move |prefix| {
        probs[*prefix.last().unwrap() as usize]
            .iter()
            .map(|p| p.ln())
            .collect()
    }
}

#[test]
fn winogrande_partial_scoring_picks_the_likelier_filled_context() {
    static PROBS: [[f32; 3]; 3] = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]];
    let model = MockLm::new(3, 16, bigram(&PROBS));
    // Contexts end with option 1 (token 1) or option 2 (token 2); the rest [0, 0] is shared:
    // ll1 = ln p(0|1) + ln p(0|0) = ln 0.1, ll2 = ln p(0|2) + ln p(0|0) = ln 0.3.
    let requests = [request(&[0, 1], &[0, 0]), request(&[0, 2], &[0, 0])];
    let lls = loglikelihoods(&model, &requests, 2, &ProgressBar::hidden()).unwrap();
    assert!(
        (lls[0] - 0.1f64.ln()).abs() < 1e-5 && (lls[1] - 0.3f64.ln()).abs() < 1e-5,
        "{lls:?}"
    );

    let option2_is_gold = r#"{"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.", "option1": "Sarah", "option2": "Maria", "answer": "2"}"#;
    let option1_is_gold = option2_is_gold.replace(r#""answer": "2""#, r#""answer": "1""#);
    assert!(judge(&parse_doc(Task::Winogrande, option2_is_gold).unwrap(), &lls).acc);
    assert!(
        !judge(
            &parse_doc(Task::Winogrande, &option1_is_gold).unwrap(),
            &lls
        )
        .acc
    );
}

#[test]
fn acc_norm_divides_by_the_choice_length_in_characters() {
    // choices "air" (3 chars) and "elements" (8); gold is "elements".
    let record = r#"{"question": "All matter is composed of", "choices": {"text": ["air", "elements"], "label": ["1", "2"]}, "answerKey": "2"}"#;
    let doc = parse_doc(Task::ArcEasy, record).unwrap();
    // acc: -3.3 > -8.5 picks "air". acc_norm: -3.3/3 = -1.1 < -8.5/8 = -1.0625 picks "elements"
    // (lm-eval does not count the leading space: -3.3/4 = -0.825 would pick "air").
    let judgement = judge(&doc, &[-3.3, -8.5]);
    assert!(!judgement.acc);
    assert!(judgement.acc_norm);
    // Ties go to the first choice, like numpy's argmax.
    assert!(!judge(&doc, &[-1.0, -1.0]).acc);
}

#[test]
fn stderr_is_the_sample_std_over_sqrt_n() {
    let (mean, stderr) = mean_and_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert!((mean - 0.75).abs() < 1e-12);
    assert!((stderr - 0.25).abs() < 1e-12);
    assert!(mean_and_stderr(&[1.0]).1.is_nan());
}

fn result(task: &str, metrics: &[(&str, f64)]) -> TaskResult {
    TaskResult {
        task: task.to_string(),
        num_fewshot: 0,
        metrics: metrics
            .iter()
            .map(|&(name, value)| TaskMetric {
                name: name.to_string(),
                value,
                stderr: 0.01,
            })
            .collect(),
        n: 100,
        seconds: 1.0,
    }
}

#[test]
fn averages_and_table_cover_every_task() {
    let results = [
        result("arc_easy", &[("acc", 0.5), ("acc_norm", 0.7)]),
        result("winogrande", &[("acc", 0.6)]),
    ];
    let avg = averages(&results).unwrap();
    assert_eq!(avg.tasks, 2);
    assert!((avg.acc - 0.55).abs() < 1e-12);
    assert!((avg.acc_norm_else_acc - 0.65).abs() < 1e-12);
    let table = markdown_table(&results);
    assert!(
        table.contains("| arc_easy | 0 | 100 | acc | 0.5000 | ± | 0.0100 |"),
        "{table}"
    );
    assert!(
        table.contains("|  |  |  | acc_norm | 0.7000 | ± | 0.0100 |"),
        "{table}"
    );
    assert!(
        table.contains("acc 0.5500; acc_norm (acc where a task has no acc_norm) 0.6500"),
        "{table}"
    );
    assert!(averages(&[]).is_none());
}

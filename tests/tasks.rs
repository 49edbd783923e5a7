//! Zero-shot tasks: request texts from real records, few-shot sampling, batched log-likelihood
//! scoring against mock models, metrics and reports.

use std::path::Path;

use crate::common::{offline_hub, shared_dir, MockLm, TempDir};
use indicatif::ProgressBar;

use grasp::data::tasks::{
    fewshot_prefixes, load_docs, mathqa_options, parse_doc, Doc, Task, TextPair,
};
use grasp::data::Split;
use grasp::eval::harness::{encode_pair, loglikelihoods, Request};
use grasp::eval::tasks::{
    averages, judge, markdown_table, mean_and_stderr, run_task, TaskMetric, TaskOptions, TaskResult,
};
use grasp::io::load::load_tokenizer;

// ---------------------------------------------------------------------------------------------
// Request texts of real records, checked against lm-eval's task definitions.

fn one_context(context: &str, continuations: &[&str]) -> Vec<TextPair> {
    continuations
        .iter()
        .map(|c| TextPair {
            context: context.to_string(),
            continuation: c.to_string(),
        })
        .collect()
}

fn shared_continuation(contexts: &[&str], continuation: &str) -> Vec<TextPair> {
    contexts
        .iter()
        .map(|c| TextPair {
            context: c.to_string(),
            continuation: continuation.to_string(),
        })
        .collect()
}

fn assert_requests(task: Task, record: &str, expected: &[TextPair], gold: usize) {
    let doc = parse_doc(task, record).unwrap();
    assert_eq!(doc.requests(""), expected);
    assert_eq!(doc.gold(), gold);
}

#[test]
fn arc_easy_requests() {
    // arc/ARC-Easy-test.jsonl line 1
    let record = r#"{"id":"Mercury_417466","question":"Which statement best explains why photosynthesis is the foundation of most food webs?","choices":{"text":["Sunlight is the source of energy for nearly all ecosystems.","Most ecosystems are found on land instead of in water.","Carbon dioxide is more available than other gases.","The producers in all ecosystems are plants."],"label":["A","B","C","D"]},"answerKey":"A"}"#;
    let expected = one_context(
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        &[" Sunlight is the source of energy for nearly all ecosystems.", " Most ecosystems are found on land instead of in water.", " Carbon dioxide is more available than other gases.", " The producers in all ecosystems are plants."],
    );
    assert_requests(Task::ArcEasy, record, &expected, 0);
    // arc/ARC-Easy-test.jsonl line 15
    let record = r#"{"id":"NYSEDREGENTS_2015_8_28","question":"All living and nonliving material is composed of","choices":{"text":["air","elements","water","soil"],"label":["1","2","3","4"]},"answerKey":"2"}"#;
    let expected = one_context(
        "Question: All living and nonliving material is composed of\nAnswer:",
        &[" air", " elements", " water", " soil"],
    );
    assert_requests(Task::ArcEasy, record, &expected, 1);
}

#[test]
fn arc_challenge_requests() {
    // arc/ARC-Challenge-test.jsonl line 1
    let record = r#"{"id":"Mercury_7175875","question":"An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?","choices":{"text":["Planetary density will decrease.","Planetary years will become longer.","Planetary days will become shorter.","Planetary gravity will become stronger."],"label":["A","B","C","D"]},"answerKey":"C"}"#;
    let expected = one_context(
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
        &[" Planetary density will decrease.", " Planetary years will become longer.", " Planetary days will become shorter.", " Planetary gravity will become stronger."],
    );
    assert_requests(Task::ArcChallenge, record, &expected, 2);
    // arc/ARC-Challenge-test.jsonl line 2
    let record = r#"{"id":"Mercury_SC_409171","question":"A group of engineers wanted to know how different building designs would respond during an earthquake. They made several models of buildings and tested each for its ability to withstand earthquake conditions. Which will most likely result from testing different building designs?","choices":{"text":["buildings will be built faster","buildings will be made safer","building designs will look nicer","building materials will be cheaper"],"label":["A","B","C","D"]},"answerKey":"B"}"#;
    let expected = one_context(
        "Question: A group of engineers wanted to know how different building designs would respond during an earthquake. They made several models of buildings and tested each for its ability to withstand earthquake conditions. Which will most likely result from testing different building designs?\nAnswer:",
        &[" buildings will be built faster", " buildings will be made safer", " building designs will look nicer", " building materials will be cheaper"],
    );
    assert_requests(Task::ArcChallenge, record, &expected, 1);
}

#[test]
fn piqa_requests() {
    // piqa/piqa_validation.jsonl line 1
    let record = r#"{"goal": "How do I ready a guinea pig cage for it's new occupants?", "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.", "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.", "label": 0}"#;
    let expected = one_context(
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
        &[" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.", " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish."],
    );
    assert_requests(Task::Piqa, record, &expected, 0);
    // piqa/piqa_validation.jsonl line 2
    let record = r#"{"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin ", "label": 1}"#;
    let expected = one_context(
        "Question: dresser\nAnswer:",
        &[
            " replace drawer with bobby pin ",
            " finish, woodgrain with  bobby pin ",
        ],
    );
    assert_requests(Task::Piqa, record, &expected, 1);
}

#[test]
fn hellaswag_requests() {
    // hellaswag/hellaswag_validation.jsonl line 1
    let record = r#"{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"}"#;
    let expected = one_context(
        "Roof shingle removal: A man is sitting on a roof. He",
        &[
            " is using wrap to wrap a pair of skis.",
            " is ripping level tiles off.",
            " is holding a rubik's cube.",
            " starts pulling up roofing on a roof.",
        ],
    );
    assert_requests(Task::Hellaswag, record, &expected, 3);
    // hellaswag/hellaswag_validation.jsonl line 9253
    let record = r#"{"ind": 44428, "activity_label": "Relationships", "ctx_a": "[header] How to make rasgullas [title] Heat the milk and bring to boil. [title] Cool the milk for a couple of hours. [step] Remove the cream layer.", "ctx_b": "", "ctx": "[header] How to make rasgullas [title] Heat the milk and bring to boil. [title] Cool the milk for a couple of hours. [step] Remove the cream layer.", "endings": ["Drain the milk and return to a pan the size of a hockey ball. Turn the heat on low and bring the milk to a boil.", "[title] Reheat the milk and bring to a boil. [title] Add the citric acid dissolved in some water.", "Turn off the stove and allow the mixture to cool to room temperature. It's now ready to be used for the rasgullas.", "Whisk in the cream of your choice and heat a little on both sides until it thickens. [title] Combine the sugar and water in a small saucepan."], "source_id": "wikihow~73155", "split": "val", "split_type": "indomain", "label": "1"}"#;
    let expected = one_context(
        "Relationships: How to make rasgullas. Heat the milk and bring to boil.. Cool the milk for a couple of hours. Remove the cream layer.",
        &[" Drain the milk and return to a pan the size of a hockey ball. Turn the heat on low and bring the milk to a boil.", "  Reheat the milk and bring to a boil.. Add the citric acid dissolved in some water.", " Turn off the stove and allow the mixture to cool to room temperature. It's now ready to be used for the rasgullas.", " Whisk in the cream of your choice and heat a little on both sides until it thickens.. Combine the sugar and water in a small saucepan."],
    );
    assert_requests(Task::Hellaswag, record, &expected, 1);
}

#[test]
fn winogrande_requests() {
    // winogrande/winogrande_xl_validation.jsonl line 1
    let record = r#"{"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.", "option1": "Sarah", "option2": "Maria", "answer": "2"}"#;
    let expected = shared_continuation(
        &[
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria",
        ],
        " always got the easier cases.",
    );
    assert_requests(Task::Winogrande, record, &expected, 1);
    // winogrande/winogrande_xl_validation.jsonl line 2
    let record = r#"{"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.", "option1": "Sarah", "option2": "Maria", "answer": "1"}"#;
    let expected = shared_continuation(
        &[
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria",
        ],
        " always got the harder cases.",
    );
    assert_requests(Task::Winogrande, record, &expected, 0);
}

#[test]
fn openbookqa_requests() {
    // openbookqa/openbookqa_main_test_hf_schema.jsonl line 2
    let record = r#"{"id": "1129", "question_stem": "There is most likely going to be fog around:", "choices": {"text": ["a marsh", "a tundra", "the plains", "a desert"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"}"#;
    let expected = one_context(
        "There is most likely going to be fog around:",
        &[" a marsh", " a tundra", " the plains", " a desert"],
    );
    assert_requests(Task::OpenBookQa, record, &expected, 0);
}

#[test]
fn openbookqa_train_requests() {
    // openbookqa/train.jsonl line 1
    let record = r#"{"id": "7-980", "question": {"stem": "The sun is responsible for", "choices": [{"text": "puppies learning new tricks", "label": "A"}, {"text": "children growing up and getting old", "label": "B"}, {"text": "flowers wilting in a vase", "label": "C"}, {"text": "plants sprouting, blooming and wilting", "label": "D"}]}, "answerKey": "D"}"#;
    let expected = one_context(
        "The sun is responsible for",
        &[
            " puppies learning new tricks",
            " children growing up and getting old",
            " flowers wilting in a vase",
            " plants sprouting, blooming and wilting",
        ],
    );
    assert_requests(Task::OpenBookQa, record, &expected, 3);
}

#[test]
fn mathqa_requests() {
    // mathqa/test.jsonl line 1
    let record = r#"{"Problem": "a shopkeeper sold an article offering a discount of 5 % and earned a profit of 31.1 % . what would have been the percentage of profit earned if no discount had been offered ?", "Rationale": "\"giving no discount to customer implies selling the product on printed price . suppose the cost price of the article is 100 . then printed price = 100 ã — ( 100 + 31.1 ) / ( 100 â ˆ ’ 5 ) = 138 hence , required % profit = 138 â € “ 100 = 38 % answer a\"", "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these", "correct": "a", "annotated_formula": "subtract(divide(multiply(add(const_100, 31.1), const_100), subtract(const_100, 5)), const_100)", "linear_formula": "add(n1,const_100)|subtract(const_100,n0)|multiply(#0,const_100)|divide(#2,#1)|subtract(#3,const_100)|", "category": "gain"}"#;
    let expected = one_context(
        "Question: a shopkeeper sold an article offering a discount of 5 % and earned a profit of 31.1 % . what would have been the percentage of profit earned if no discount had been offered ?\nAnswer:",
        &[" 38", " 27.675", " 30", " data inadequate", " none of these"],
    );
    assert_requests(Task::MathQa, record, &expected, 0);
    // mathqa/test.jsonl line 2
    let record = r#"{"Problem": "what will be the difference between simple and compound interest at 14 % per annum on a sum of rs . 1000 after 4 years ?", "Rationale": "\"s . i . = ( 1000 * 14 * 4 ) / 100 = rs . 560 c . i . = [ 1000 * ( 1 + 14 / 100 ) 4 - 1000 ] = rs . 689 difference = ( 689 - 560 ) = rs . 129 answer : a\"", "options": "a ) 129 , b ) 130 , c ) 124 , d ) 133 , e ) 145", "correct": "a", "annotated_formula": "subtract(subtract(multiply(1000, power(add(divide(14, const_100), const_1), 4)), 1000), multiply(multiply(1000, divide(14, const_100)), 4))", "linear_formula": "divide(n0,const_100)|add(#0,const_1)|multiply(n1,#0)|multiply(n2,#2)|power(#1,n2)|multiply(n1,#4)|subtract(#5,n1)|subtract(#6,#3)|", "category": "gain"}"#;
    let expected = one_context(
        "Question: what will be the difference between simple and compound interest at 14 % per annum on a sum of rs . 1000 after 4 years ?\nAnswer:",
        &[" 129", " 130", " 124", " 133", " 145"],
    );
    assert_requests(Task::MathQa, record, &expected, 0);
}

#[test]
fn boolq_requests() {
    // boolq/boolq_validation.jsonl line 2645
    let record = r#"{"question": "are they going to make a punisher season 2", "answer": true, "passage": "The season is set for release in 2019."}"#;
    let expected = one_context(
        "The season is set for release in 2019.\nQuestion: are they going to make a punisher season 2?\nAnswer:",
        &[" no", " yes"],
    );
    assert_requests(Task::BoolQ, record, &expected, 1);
    // boolq/boolq_validation.jsonl line 3128
    let record = r#"{"question": "is there going to be another insurgent movie", "answer": true, "passage": "A sequel, Allegiant, was released on March 18, 2016."}"#;
    let expected = one_context(
        "A sequel, Allegiant, was released on March 18, 2016.\nQuestion: is there going to be another insurgent movie?\nAnswer:",
        &[" no", " yes"],
    );
    assert_requests(Task::BoolQ, record, &expected, 1);
}

#[test]
fn mathqa_options_follow_lm_eval_regex() {
    // Expected lists printed by Python's re.findall with lm-eval's pattern.
    let cases: &[(&str, &[&str])] = &[
        (
            "a ) 1,200 , b ) rs . 1 , 2 , c ) 3 , d ) 4 , e ) none of these",
            &["1,200", "rs . 1", "3", "4", "none of these"],
        ),
        (
            "a ) 5 , b ) 6 , c ) 7 , d ) 8 , e ) 9\n",
            &["5", "6", "7", "8", "9"],
        ),
        (
            "a ) 5 , b ) 6\n , c ) 7 , d ) 8 , e ) 9 , f ) 10",
            &["5", "7", "8", "9 , f ) 10"],
        ),
        (
            "a ) x,y , b ) π , c ) 1 , d ) 2 , e ) 3",
            &["x,y", "π", "1", "2", "3"],
        ),
    ];
    for (options, expected) in cases {
        assert_eq!(mathqa_options(options), *expected, "options {options:?}");
    }
}

#[test]
fn bad_records_are_errors() {
    assert!(parse_doc(
        Task::Winogrande,
        r#"{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}"#
    )
    .is_err());
    assert!(parse_doc(
        Task::ArcEasy,
        r#"{"question": "q", "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "B"}"#
    )
    .is_err());
    assert!(parse_doc(
        Task::Piqa,
        r#"{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}"#
    )
    .is_err());
    assert!(parse_doc(Task::BoolQ, "not json").is_err());
}

#[test]
fn missing_files_name_the_file_and_the_flag() {
    // Never the network: a user's online test run would otherwise download the files.
    let dir = Path::new("/nonexistent/grasp-task-data");
    let err = load_docs(Task::Piqa, Split::Eval, Some(dir), &offline_hub())
        .unwrap_err()
        .to_string();
    assert!(err.contains("piqa/piqa_validation.jsonl"), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    let err = load_docs(Task::Hellaswag, Split::Train, Some(dir), &offline_hub())
        .unwrap_err()
        .to_string();
    assert!(err.contains("hellaswag/hellaswag_train.jsonl"), "{err}");
    assert!(err.contains("--num-fewshot"), "{err}");
    assert!(
        err.contains("hf://datasets/Rowan/hellaswag/default/train/0000.parquet"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn malformed_lines_are_reported_with_their_line_number() {
    let dir = TempDir::new("tasks-malformed-lines");
    std::fs::create_dir(dir.join("boolq")).unwrap();
    let good = r#"{"question": "is it", "answer": true, "passage": "It is."}"#;
    std::fs::write(
        dir.join("boolq/boolq_validation.jsonl"),
        format!("{good}\n\n{{\"question\": 1}}\n"),
    )
    .unwrap();
    let err = load_docs(Task::BoolQ, Split::Eval, Some(dir.path()), &offline_hub()).unwrap_err();
    assert!(
        format!("{err:#}").contains("boolq_validation.jsonl:3"),
        "{err:#}"
    );
}

#[test]
fn task_names_parse_with_short_forms_and_all() {
    assert_eq!(
        Task::parse_list("arc_e, arc_c,arc_easy").unwrap(),
        [Task::ArcEasy, Task::ArcChallenge]
    );
    assert_eq!(Task::parse_list("all").unwrap(), Task::ALL);
    assert!(Task::parse_list("").unwrap().is_empty());
    assert!(Task::parse_list("piqa,lambada").is_err());
}

fn arc_record(question: &str, answer: &str) -> String {
    format!(
        r#"{{"question": "{question}", "choices": {{"text": ["{answer}", "wrong"], "label": ["A", "B"]}}, "answerKey": "A"}}"#
    )
}

#[test]
fn fewshot_prefixes_use_lm_eval_sampling() {
    let pool: Vec<Doc> = (0..4)
        .map(|i| {
            parse_doc(
                Task::ArcEasy,
                &arc_record(&format!("q{i}"), &format!("a{i}")),
            )
            .unwrap()
        })
        .collect();
    // random.Random(1234): [r.sample(range(4), 2) for _ in range(3)] == [[3, 0], [0, 3], [0, 2]]
    let example = |i: usize| format!("Question: q{i}\nAnswer: a{i}");
    let expected: Vec<String> = [[3, 0], [0, 3], [0, 2]]
        .iter()
        .map(|[a, b]| format!("{}\n\n{}\n\n", example(*a), example(*b)))
        .collect();
    assert_eq!(fewshot_prefixes(&pool, 2, 3).unwrap(), expected);
    assert_eq!(fewshot_prefixes(&pool, 0, 2).unwrap(), ["", ""]);
    assert!(fewshot_prefixes(&pool, 5, 1).is_err());

    let doc = parse_doc(Task::ArcEasy, &arc_record("q", "a")).unwrap();
    let pairs = doc.requests(&expected[0]);
    assert_eq!(
        pairs[0].context,
        format!("{}Question: q\nAnswer:", expected[0])
    );
    assert_eq!(pairs[0].continuation, " a");
}

#[test]
fn winogrande_fewshot_examples_fill_the_blank_with_the_answer() {
    let record = r#"{"sentence": "Tom gave Ann _ book.", "option1": "his", "option2": "her", "answer": "1"}"#;
    let pool = vec![parse_doc(Task::Winogrande, record).unwrap()];
    assert_eq!(
        fewshot_prefixes(&pool, 1, 1).unwrap(),
        ["Tom gave Ann his book.\n\n"]
    );
}

// ---------------------------------------------------------------------------------------------
// Log-likelihood scoring against mock models.

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

// ---------------------------------------------------------------------------------------------
// Tokenization and whole tasks on the shared data.

#[test]
fn pairs_are_encoded_together_and_split_after_the_context() {
    let Some(shared) = shared_dir() else { return };
    let smollm = load_tokenizer(&shared.join("models/smollm2-135m-ref/tokenizer.json")).unwrap();
    let encode = |text: &str| smollm.encode(text, true).unwrap().get_ids().to_vec();
    // The context's trailing space moves into the continuation.
    let r = encode_pair(&smollm, "Question: Why?\nAnswer: ", "Because").unwrap();
    assert_eq!(r.context_ids, encode("Question: Why?\nAnswer:"));
    let whole = encode("Question: Why?\nAnswer: Because");
    assert_eq!(
        [&r.context_ids[..], &r.continuation_ids[..]].concat(),
        whole
    );
    assert!(encode_pair(&smollm, "", " x").is_err());

    // A tokenizer that adds BOS by default keeps it at the start of the context.
    let stories = load_tokenizer(&shared.join("models/stories260K-hf/tokenizer.json")).unwrap();
    let r = encode_pair(&stories, "Once upon a time", " there was").unwrap();
    assert_eq!(r.context_ids[0], 1);
    assert!(!r.continuation_ids.contains(&1));
}

#[test]
fn every_task_loads_from_the_shared_data() {
    let Some(shared) = shared_dir() else { return };
    let data = shared.join("data");
    let expected = [
        (Task::ArcEasy, 2376),
        (Task::ArcChallenge, 1172),
        (Task::Piqa, 1838),
        (Task::Hellaswag, 10042),
        (Task::Winogrande, 1267),
        (Task::OpenBookQa, 500),
        (Task::BoolQ, 3270),
        (Task::MathQa, 2985),
    ];
    for (task, n) in expected {
        let docs = load_docs(task, Split::Eval, Some(&data), &offline_hub()).unwrap();
        assert_eq!(docs.len(), n, "{task}");
    }
    let mathqa = load_docs(Task::MathQa, Split::Eval, Some(&data), &offline_hub()).unwrap();
    assert!(mathqa.iter().all(|d| d.choices().len() == 5));
    assert_eq!(
        load_docs(Task::OpenBookQa, Split::Train, Some(&data), &offline_hub())
            .unwrap()
            .len(),
        4957
    );
    assert_eq!(
        load_docs(
            Task::ArcChallenge,
            Split::Train,
            Some(&data),
            &offline_hub()
        )
        .unwrap()
        .len(),
        1119
    );
}

#[test]
fn run_task_scores_the_first_docs() {
    let Some(shared) = shared_dir() else { return };
    let tokenizer = load_tokenizer(&shared.join("models/stories260K-hf/tokenizer.json")).unwrap();
    let vocab = tokenizer.get_vocab_size(true);
    let model = MockLm::new(vocab, 512, move |prefix: &[u32]| {
        let sum: u32 = prefix.iter().sum();
        (0..vocab)
            .map(|v| ((v as u32 * 31 + sum) % 97) as f32 / 20.0)
            .collect()
    });
    let data = shared.join("data");
    let options = TaskOptions {
        limit: Some(6),
        num_fewshot: 0,
        batch_size: 4,
    };
    let r = run_task(&model, &tokenizer, Task::ArcEasy, Some(&data), &options).unwrap();
    assert_eq!((r.task.as_str(), r.n), ("arc_easy", 6));
    let names: Vec<&str> = r.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["acc", "acc_norm"]);
    assert!(r.metrics.iter().all(|m| (0.0..=1.0).contains(&m.value)));
    // 6 docs, each one row holding its context and its 4 choices, in batches of 4 rows.
    assert_eq!(model.forwards.get(), 2);

    let boolq = run_task(&model, &tokenizer, Task::BoolQ, Some(&data), &options).unwrap();
    assert_eq!(boolq.metrics.len(), 1);

    let fewshot = TaskOptions {
        num_fewshot: 2,
        ..options
    };
    assert_eq!(
        run_task(&model, &tokenizer, Task::ArcEasy, Some(&data), &fewshot)
            .unwrap()
            .num_fewshot,
        2
    );
    let err = run_task(&model, &tokenizer, Task::Piqa, Some(&data), &fewshot).unwrap_err();
    assert!(format!("{err:#}").contains("piqa_train.jsonl"), "{err:#}");
}

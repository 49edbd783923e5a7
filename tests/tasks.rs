//! Zero-shot tasks: request texts from real records and few-shot sampling here; batched
//! log-likelihood scoring, metrics and reports in `scoring`; whole tasks on the shared data in
//! `shared_data`.

mod scoring;
mod shared_data;

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

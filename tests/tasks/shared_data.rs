//! Tokenization and whole tasks on the shared data.

use super::*;

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

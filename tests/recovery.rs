//! Recovery training in the library: gradients of the trainable tensors and LoRA factors
//! against finite differences, no gradient for a frozen weight, packed micro-batches against
//! each example alone, and the examples' EOS token. (`grasp finetune` itself: `finetune`.)

use crate::common::{load, smollm2_dir, stories_dir};
use candle_core::{DType, Device, Tensor};
use grasp::data::alpaca::{tokenize_examples, Example, ExampleSpec, PromptTemplate, Record};
use grasp::model::linear::Linear;
use grasp::model::llama::Projection;
use grasp::recovery::train::weighted_loss;
use grasp::recovery::trainable::{Target, Trainable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn records() -> Vec<Record> {
    vec![
        Record {
            instruction: "Tell a story about a cat.".into(),
            input: String::new(),
            output: "Once upon a time there was a cat who liked the sun.".into(),
        },
        Record {
            instruction: "Say what the dog did.".into(),
            input: "The dog ran to the park.".into(),
            output: "The dog ran.".into(),
        },
    ]
}

/// `--add-eos-token` ends each example with the EOS token the checkpoint's
/// tokenizer_config.json names, as transformers' `tokenizer.eos_token` does: SmolLM2's
/// `<|im_end|>`, not `<|endoftext|>`, the first well-known name its vocabulary has, which is
/// the fallback when no token is configured.
#[test]
fn examples_end_with_the_configured_eos_token() {
    let Some(dir) = smollm2_dir() else {
        return;
    };
    let loaded = load(&dir, DType::F32);
    let id = |name: &str| loaded.tokenizer.token_to_id(name).unwrap();
    let (im_end, endoftext) = (id("<|im_end|>"), id("<|endoftext|>"));
    assert_ne!(im_end, endoftext);
    assert_eq!(loaded.eos_token, Some(im_end));
    let spec = ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 256,
        train_on_inputs: false,
        add_eos: true,
    };
    for (declared, expected) in [(loaded.eos_token, im_end), (None, endoftext)] {
        let examples = tokenize_examples(&records(), &loaded.tokenizer, declared, &spec).unwrap();
        assert_eq!(examples.len(), records().len());
        for e in &examples {
            assert_eq!(e.ids.last(), Some(&expected));
            assert_eq!(e.scored.last(), Some(&true), "the EOS target is scored");
        }
    }
}

/// The Alpaca template at up to 160 tokens, without EOS; the loss on the response alone unless
/// `train_on_inputs`.
fn alpaca(train_on_inputs: bool) -> ExampleSpec {
    ExampleSpec {
        template: PromptTemplate::Alpaca,
        max_length: 160,
        train_on_inputs,
        add_eos: false,
    }
}

fn seeded(rng: &mut StdRng, shape: (usize, usize)) -> Tensor {
    let values: Vec<f64> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-0.3..0.3))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn trainable_gradients_match_finite_differences() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let mut rng = StdRng::seed_from_u64(11);
    for p in [Projection::Q, Projection::Down] {
        let lin = model.layers[1].projection_mut(p);
        let (i, o) = (lin.in_features(), lin.out_features());
        *lin = Linear::Factorized {
            svd_in: seeded(&mut rng, (3, i)),
            svd_out: seeded(&mut rng, (o, 3)),
            bias: None,
        };
    }
    let spec = alpaca(false);
    let examples =
        tokenize_examples(&records(), &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let weight = 1.0 / examples.iter().map(Example::scored_targets).sum::<usize>() as f64;
    let frozen_weight = model.layers[2].mlp.down_proj.clone();

    let trainable = Trainable::new(&mut model, &Target::Layers(vec![1, 3]), 0).unwrap();
    trainable.apply(&mut model, true).unwrap();
    let grads = weighted_loss(&model, &refs, weight)
        .unwrap()
        .backward()
        .unwrap();
    if let Linear::Dense { weight, .. } = &frozen_weight {
        assert!(
            grads.get(weight).is_none(),
            "a frozen weight got a gradient"
        );
    }
    let checked =
        check_against_finite_differences(&mut model, &trainable, &grads, &refs, weight, 3);
    // Layer 1: two norms, five dense weights, two factorized projections of two factors each;
    // layer 3: two norms and seven dense weights.
    assert_eq!(checked, 3 * (11 + 9), "every tensor of both layers");
}

/// A micro-batch runs packed in one row: its loss and the gradient of every trainable tensor
/// are the sums of those of each example run alone (f64), frozen layers (the one-node blocks)
/// and trainable ones alike.
#[test]
fn packed_examples_train_as_if_each_ran_alone() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let spec = alpaca(false);
    let mut records = records();
    records.push(Record {
        instruction: "Name a colour.".into(),
        input: String::new(),
        output: "Red.".into(),
    });
    let examples = tokenize_examples(&records, &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    assert!(lens.windows(2).any(|w| w[0] != w[1]), "lengths {lens:?}");
    let trainable = Trainable::new(&mut model, &Target::Layers(vec![1, 3]), 0).unwrap();
    trainable.apply(&mut model, true).unwrap();
    let run = |examples: &[&Example]| {
        let loss = weighted_loss(&model, examples, 0.37).unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<Tensor> = trainable
            .vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect();
        (loss.to_scalar::<f64>().unwrap(), grads)
    };
    let (packed, packed_grads) = run(&examples.iter().collect::<Vec<_>>());
    let alone: Vec<(f64, Vec<Tensor>)> = examples.iter().map(|e| run(&[e])).collect();
    // One example alone, against the model's ordinary forward pass and log-softmax.
    let e = &examples[0];
    let ids = Tensor::from_vec(e.ids.clone(), (1, e.ids.len()), &Device::Cpu).unwrap();
    let logits = model.forward(&ids).unwrap().squeeze(0).unwrap();
    let log_p: Vec<Vec<f64>> = candle_nn::ops::log_softmax(&logits, 1)
        .unwrap()
        .to_vec2()
        .unwrap();
    let reference: f64 = (0..e.scored.len())
        .filter(|&p| e.scored[p])
        .map(|p| -0.37 * log_p[p][e.ids[p + 1] as usize])
        .sum();
    assert!(
        (alone[0].0 - reference).abs() < 1e-10 * reference,
        "{} against {reference}",
        alone[0].0
    );
    let loss: f64 = alone.iter().map(|(l, _)| l).sum();
    assert!(
        (packed - loss).abs() < 1e-10 * loss.abs(),
        "{packed} against {loss}"
    );
    for (i, g) in packed_grads.iter().enumerate() {
        let sum = alone
            .iter()
            .map(|(_, grads)| grads[i].clone())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let diff = (g - &sum).unwrap().abs().unwrap().max_all().unwrap();
        let scale = sum
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let diff = diff.to_scalar::<f64>().unwrap();
        assert!(
            diff <= 1e-10 * (1.0 + scale),
            "{}: {diff}",
            trainable.names()[i]
        );
    }
}

#[test]
fn lora_gradients_match_finite_differences_and_merge_exactly() {
    let Some(dir) = stories_dir() else { return };
    let loaded = load(&dir, DType::F64);
    let mut model = loaded.model;
    let spec = alpaca(true);
    let examples =
        tokenize_examples(&records(), &loaded.tokenizer, loaded.eos_token, &spec).unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let weight = 1.0 / examples.iter().map(Example::scored_targets).sum::<usize>() as f64;
    let target = Target::Lora {
        rank: 2,
        alpha: 4.0,
    };
    let trainable = Trainable::new(&mut model, &target, 3).unwrap();
    // B starts at zero, which would leave A without a gradient: give it seeded values.
    let mut rng = StdRng::seed_from_u64(9);
    for (name, var) in trainable.names().iter().zip(trainable.vars()) {
        if name.ends_with("lora_B.weight") {
            let (o, r) = var.as_tensor().dims2().unwrap();
            var.set(&seeded(&mut rng, (o, r))).unwrap();
        }
    }
    trainable.apply(&mut model, true).unwrap();
    let grads = weighted_loss(&model, &refs, weight)
        .unwrap()
        .backward()
        .unwrap();
    let layers = model.num_layers();
    let checked =
        check_against_finite_differences(&mut model, &trainable, &grads, &refs, weight, 1);
    assert_eq!(checked, 2 * 7 * layers, "both factors of every projection");

    let adapted = weighted_loss(&model, &refs, weight)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    trainable.finish(&mut model).unwrap();
    let merged = weighted_loss(&model, &refs, weight)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(
        (adapted - merged).abs() < 1e-10,
        "{adapted} adapted, {merged} merged"
    );
    assert!(model.layers.iter().all(|l| Projection::ALL
        .iter()
        .all(|&p| matches!(l.projection(p), Linear::Dense { .. }))));
}

/// Compares `per_tensor` seeded entries of each trainable tensor's gradient with central differences
/// of the loss; returns how many were checked.
fn check_against_finite_differences(
    model: &mut grasp::model::Llama,
    trainable: &Trainable,
    grads: &candle_core::backprop::GradStore,
    refs: &[&Example],
    weight: f64,
    per_tensor: usize,
) -> usize {
    let mut rng = StdRng::seed_from_u64(5);
    trainable.apply(model, false).unwrap();
    let loss_at = |model: &grasp::model::Llama| -> f64 {
        weighted_loss(model, refs, weight)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-5;
    let mut checked = 0;
    for (name, var) in trainable.names().iter().zip(trainable.vars()) {
        let grad: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..per_tensor {
            let i = rng.random_range(0..base.len());
            let mut at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                trainable.apply(model, false).unwrap();
                loss_at(model)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (fd - grad[i]).abs();
            assert!(
                err <= 1e-7 + 1e-5 * grad[i].abs(),
                "{name}[{i}]: backward {} against finite differences {fd}",
                grad[i]
            );
            checked += 1;
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    checked
}

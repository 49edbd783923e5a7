//! `grasp frontier` on stories260K: every point of the sweep is built and scored, each scores
//! as the same model built by `grasp compress` and scored by `grasp eval`, and the frontier is
//! marked as defined.

use std::fs;

use crate::common::cli::*;
use crate::common::TempDir;
use serde_json::Value;

fn points(report: &Value) -> &Vec<Value> {
    report["points"]
        .as_array()
        .expect("frontier.json has no points")
}

fn find<'a>(points: &'a [Value], method: &str, layers: u64, ratio: Option<f64>) -> &'a Value {
    points
        .iter()
        .find(|p| p["method"] == method && p["layers"] == layers && p["ratio"].as_f64() == ratio)
        .unwrap_or_else(|| panic!("no {method} point with {layers} layers at {ratio:?}"))
}

/// `grasp frontier` on stories260K with the small calibration, writing to `out`.
fn frontier(stories: &Stories, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    grasp()
        .arg("frontier")
        .arg("--model")
        .arg(&stories.model)
        .args(SMALL_CALIBRATION)
        .arg("--data-dir")
        .arg(&stories.data)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("cannot run grasp")
}

#[test]
fn frontier_sweeps_every_point_and_matches_compress_then_eval() {
    let Some(stories) = stories() else {
        return;
    };
    let scratch = TempDir::new("frontier");
    let out = scratch.join("frontier");
    let output = frontier(
        &stories,
        &out,
        &[
            "--num-prune-layers",
            "1,2",
            "--ratios",
            "0.5,0.9",
            "--ppl-windows",
            "2",
            "--ppl-seq-len",
            "64",
            "--tasks",
            "arc_easy",
            "--task-limit",
            "6",
        ],
    );
    assert_success(&output, "grasp frontier");
    let report = read_json(&out.join("frontier.json"));
    let points = points(&report);
    // Dense, then per layer count: removal, and svd, grasp, hybrid at two ratios each.
    assert_eq!(points.len(), 1 + 2 * (1 + 3 * 2));
    assert_eq!(points[0]["method"], "dense");
    let dense_params = points[0]["params"].as_u64().unwrap();
    for p in &points[1..] {
        assert!(p["params"].as_u64().unwrap() < dense_params, "{p}");
        let accuracy = p["mean_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{p}");
    }

    // Each point is the model `compress` writes, scored as `eval` scores it.
    for (method, layers, ratio) in [
        ("remove", 2, None),
        ("hybrid", 2, Some(0.9)),
        ("grasp", 1, Some(0.5)),
    ] {
        let mut flags = vec![
            "--method".to_string(),
            method.to_string(),
            "--num-prune-layers".into(),
            layers.to_string(),
        ];
        if let Some(r) = ratio {
            flags.extend(["--ratio".to_string(), r.to_string()]);
        }
        let model = scratch.join(&format!("{method}-{layers}"));
        let compressed = compress_ok(
            &stories,
            &model,
            &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let want = perplexity(&stories, &model, &scratch.join(&format!("{method}.json")));
        let point = find(points, method, layers, ratio);
        let got = point["perplexity"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-4 * want,
            "{method} {layers} {ratio:?}: frontier {got} against compress + eval {want}"
        );
        assert_eq!(point["chosen_layers"], compressed["chosen_layers"]);
        if method == "hybrid" {
            assert_eq!(point["removed_layers"], compressed["removed_layers"]);
        }
    }

    // A point is on the frontier exactly when no point has at most its parameters and a
    // lower perplexity (or fewer parameters and the same).
    let key = |p: &Value| {
        (
            p["params"].as_u64().unwrap(),
            p["perplexity"].as_f64().unwrap(),
        )
    };
    for p in points {
        let (n, ppl) = key(p);
        let beaten = points.iter().any(|q| {
            let (m, q_ppl) = key(q);
            (m <= n && q_ppl < ppl) || (m < n && q_ppl <= ppl)
        });
        assert_eq!(p["on_frontier"].as_bool(), Some(!beaten), "{p}");
    }
    assert!(points
        .iter()
        .any(|p| p["on_frontier"] == true && p["method"] != "dense"));

    let table = fs::read_to_string(out.join("frontier.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + points.len());
    let svg = fs::read_to_string(out.join("frontier.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
        .collect();
    for method in ["dense", "remove", "svd", "grasp", "hybrid"] {
        assert!(
            texts.contains(&method),
            "the plot has no {method} legend: {texts:?}"
        );
    }
}

#[test]
fn frontier_refuses_a_ratio_outside_its_range_before_loading() {
    let Some(stories) = stories() else {
        return;
    };
    let scratch = TempDir::new("frontier-bad");
    let output = grasp()
        .arg("frontier")
        .arg("--model")
        .arg(&stories.model)
        .args(["--num-prune-layers", "1", "--ratios", "0.5,1.5"])
        .arg("--out")
        .arg(scratch.join("out"))
        .output()
        .expect("cannot run grasp");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("--ratios") && err.contains("1.5"), "{err}");
    assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
}

#[test]
fn frontier_with_recovery_scores_each_model_again_after_training() {
    let Some(stories) = stories() else {
        return;
    };
    let scratch = TempDir::new("frontier-recovery");
    let out = scratch.join("frontier");
    let output = frontier(
        &stories,
        &out,
        &[
            "--num-prune-layers",
            "1",
            "--ratios",
            "0.5",
            "--methods",
            "remove,grasp",
            "--ppl-windows",
            "2",
            "--ppl-seq-len",
            "64",
            "--tasks",
            "",
            "--recovery",
            "--max-steps",
            "2",
            "--warmup-steps",
            "0",
            "--learning-rate",
            "1e-2",
            "--train-batch-size",
            "4",
            "--val-set-size",
            "4",
            "--max-length",
            "160",
        ],
    );
    assert_success(&output, "grasp frontier --recovery");
    let report = read_json(&out.join("frontier.json"));
    let points = points(&report);
    let methods: Vec<&str> = points
        .iter()
        .map(|p| p["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "dense",
            "remove",
            "remove+recovery",
            "grasp",
            "grasp+recovery"
        ]
    );
    for (base, tuned) in [(&points[1], &points[2]), (&points[3], &points[4])] {
        assert_eq!(base["params"], tuned["params"], "{tuned}");
        assert_eq!(base["recovery_seconds"].as_f64(), Some(0.0));
        assert!(tuned["recovery_seconds"].as_f64().unwrap() > 0.0, "{tuned}");
        assert_ne!(base["perplexity"], tuned["perplexity"], "{tuned}");
    }
}

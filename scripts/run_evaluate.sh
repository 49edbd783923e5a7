#!/usr/bin/env bash
# Perplexity and zero-shot accuracy of the model in SAVE_PATH (see scripts/params_script.sh for
# the variables; any of them can be overridden from the environment). Extra arguments are passed
# on to `grasp eval`, e.g. `scripts/run_evaluate.sh --num-fewshot 5`. EVAL_PPL= (empty) skips
# perplexity and EVAL_TASKS= the zero-shot tasks.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/params_script.sh

GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
if [[ ! -x "$GRASP" ]]; then
    echo "error: $GRASP not found; build it first with: cargo build --release" >&2
    exit 1
fi

args=(eval --model "$SAVE_PATH" --device "$DEVICE")
[[ -n "$DTYPE" ]] && args+=(--dtype "$DTYPE")
if [[ -n "$DATA_DIR" ]]; then
    if [[ -d "$DATA_DIR" ]]; then
        args+=(--data-dir "$DATA_DIR")
    else
        echo "warning: DATA_DIR=$DATA_DIR is not a directory; not passing --data-dir" >&2
    fi
fi
[[ -n "$EVAL_TASKS" ]] && args+=(--tasks "$EVAL_TASKS")
[[ -n "$EVAL_PPL" ]] && args+=(--ppl "$EVAL_PPL")
[[ -n "$EVAL_LIMIT" ]] && args+=(--limit "$EVAL_LIMIT")
[[ -n "$EVAL_BATCH_SIZE" ]] && args+=(--batch-size "$EVAL_BATCH_SIZE")
[[ -n "$EVAL_JSON" ]] && args+=(--json "$EVAL_JSON")

set -x
"$GRASP" "${args[@]}" "$@"

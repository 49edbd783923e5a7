#!/usr/bin/env bash
# Compresses MODEL_NAME_OR_PATH with GRASP into SAVE_PATH (see scripts/params_script.sh for the
# variables; any of them can be overridden from the environment). Extra arguments are passed on
# to `grasp compress`, e.g. `scripts/run_grasp.sh --svd-dtype f32`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/params_script.sh

GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
if [[ ! -x "$GRASP" ]]; then
    echo "error: $GRASP not found; build it first with: cargo build --release" >&2
    exit 1
fi

args=(compress --model "$MODEL_NAME_OR_PATH" --dataset "$DATASET_NAME"
    --num-samples "$NUM_SAMPLES" --seq-len "$SEQ_LEN" --batch-size "$BATCH_SIZE" --seed "$SEED"
    --label-shift "$LABEL_SHIFT"
    --method "$METHOD" --metric "$METRIC" --ratio "$COMPRESSION_RATIO"
    --mlp-targets "$MLP_TARGET_LAYER_TYPES" --attn-targets "$ATTN_TARGET_LAYER_TYPES"
    --device "$DEVICE" --out "$SAVE_PATH")
if [[ -n "$LAYERS_ID" ]]; then
    args+=(--layers "$LAYERS_ID")
else
    args+=(--num-prune-layers "$NUM_PRUNE_LAYERS")
fi
[[ -d "$DATA_DIR" ]] && args+=(--data-dir "$DATA_DIR")
[[ -n "$THRESHOLD_RATIO" ]] && args+=(--threshold-ratio "$THRESHOLD_RATIO")
[[ -n "$DTYPE" ]] && args+=(--dtype "$DTYPE")
[[ -n "$LOG_FILE" ]] && args+=(--log-file "$LOG_FILE")
[[ "$ANGULAR" == true ]] && args+=(--angular)
[[ "$MERGE" == true ]] && args+=(--merge)
[[ "$FORCE" == true ]] && args+=(--force)
[[ "$VERBOSE" == true ]] && args+=(--verbose)
if [[ "$RECOVERY" == true ]]; then
    args+=(--recovery --data-path "$DATA_PATH" --train-batch-size "$TRAIN_BATCH_SIZE"
        --micro-batch-size "$MICRO_BATCH_SIZE" --num-epochs "$NUM_EPOCHS"
        --learning-rate "$LEARNING_RATE" --warmup-steps "$WARMUP_STEPS" --max-length "$MAX_LENGTH"
        --val-set-size "$VAL_SET_SIZE" --prompt-template-name "$PROMPT_TEMPLATE_NAME")
    [[ -n "$MAX_STEPS" ]] && args+=(--max-steps "$MAX_STEPS")
    [[ "$TRAIN_ON_INPUTS" == true ]] && args+=(--train-on-inputs)
    [[ "$ADD_EOS_TOKEN" == true ]] && args+=(--add-eos-token)
fi

set -x
"$GRASP" "${args[@]}" "$@"

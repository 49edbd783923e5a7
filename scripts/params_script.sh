#!/usr/bin/env bash
# Parameters shared by scripts/run_grasp.sh and scripts/run_evaluate.sh (the original GRASP
# project's variable names). Edit, or override any of them from the environment. Variables
# read with ${VAR-default} may be set empty to mean "none" (EVAL_PPL= evaluates no perplexity,
# DATA_DIR= passes no --data-dir); the others fall back to their default when empty.

# --- model and data ---
MODEL_NAME_OR_PATH=${MODEL_NAME_OR_PATH:-models/smollm2-135m}
DATASET_NAME=${DATASET_NAME:-wikitext2}
DATA_DIR=${DATA_DIR-../shared/data}
NUM_SAMPLES=${NUM_SAMPLES:-8}
SEQ_LEN=${SEQ_LEN:-128}
BATCH_SIZE=${BATCH_SIZE:-1}
SEED=${SEED:-42}
LABEL_SHIFT=${LABEL_SHIFT:-1}         # 2: the official loader's double label shift (reproduction)

# --- which layers and modules ---
LAYERS_ID=${LAYERS_ID-}               # e.g. "12,13,25"; empty: choose by Block Influence
NUM_PRUNE_LAYERS=${NUM_PRUNE_LAYERS:-4}
ANGULAR=${ANGULAR:-false}
MLP_TARGET_LAYER_TYPES=${MLP_TARGET_LAYER_TYPES:-gate_proj,up_proj,down_proj}
ATTN_TARGET_LAYER_TYPES=${ATTN_TARGET_LAYER_TYPES:-q_proj,k_proj,v_proj,o_proj}

# --- GRASP ---
METHOD=${METHOD:-grasp}               # grasp | svd | remove | hybrid (grasp, removal where better)
METRIC=${METRIC:-taylor}              # taylor | gradient
COMPRESSION_RATIO=${COMPRESSION_RATIO:-0.95}
THRESHOLD_RATIO=${THRESHOLD_RATIO-}   # e.g. 0.8; empty: use COMPRESSION_RATIO

# --- recovery training (GRASP*: `grasp compress --recovery`, `grasp finetune`) ---
RECOVERY=${RECOVERY:-false}
DATA_PATH=${DATA_PATH:-yahma/alpaca-cleaned}   # found under DATA_DIR/alpaca_cleaned offline
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-32}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
NUM_EPOCHS=${NUM_EPOCHS:-1}
MAX_STEPS=${MAX_STEPS-}               # e.g. 50 for a short run; empty: NUM_EPOCHS epochs
LEARNING_RATE=${LEARNING_RATE:-3e-4}
WARMUP_STEPS=${WARMUP_STEPS:-100}
MAX_LENGTH=${MAX_LENGTH:-256}
VAL_SET_SIZE=${VAL_SET_SIZE:-2000}
TRAIN_ON_INPUTS=${TRAIN_ON_INPUTS:-false}
ADD_EOS_TOKEN=${ADD_EOS_TOKEN:-false}
PROMPT_TEMPLATE_NAME=${PROMPT_TEMPLATE_NAME:-alpaca}

# --- run and output ---
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE-}
SAVE_PATH=${SAVE_PATH:-out/smollm2-135m-grasp}
MERGE=${MERGE:-false}
FORCE=${FORCE:-false}
VERBOSE=${VERBOSE:-false}
LOG_FILE=${LOG_FILE-}

# --- evaluation (scripts/run_evaluate.sh) ---
EVAL_TASKS=${EVAL_TASKS-arc_easy,arc_challenge,piqa,hellaswag,winogrande,openbookqa,boolq,mathqa}
EVAL_PPL=${EVAL_PPL-wikitext2,ptb}
EVAL_LIMIT=${EVAL_LIMIT-}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
EVAL_JSON=${EVAL_JSON-}

#!/usr/bin/env bash
# Recovery-training speed, grasp against the same training in PyTorch (scripts/finetune_torch.py),
# one after the other in the same run: tokens/s (padding excluded) and peak RSS on the same
# compressed checkpoint, trainable layers, set of examples (each side shuffles it with its own
# generator, so the batches and the losses per step differ), batch and sequence length.
#   scripts/bench_finetune.sh [COMPRESSED_DIR]
# Without a directory, SmolLM2-135M is compressed first (6 layers, ratio 0.95, 8x256
# calibration). STEPS (4), BATCH (16), MICRO (4), MAX_LEN (256), THREADS (all cores) from the
# environment. PyTorch and transformers go into .venv-transformers on first use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=${STEPS:-4} BATCH=${BATCH:-16} MICRO=${MICRO:-4} MAX_LEN=${MAX_LEN:-256}
THREADS=${THREADS:-$(nproc)}
DATA=${DATA:-../shared/data/alpaca_cleaned/alpaca_data_cleaned_first5000.jsonl}
VENV=.venv-transformers
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch transformers safetensors
fi
cargo build --release --quiet
GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

model=${1:-}
if [[ -z "$model" ]]; then
    scripts/fetch_test_model.sh >/dev/null
    model=$work/compressed
    "$GRASP" compress --model models/smollm2-135m --num-prune-layers 6 --ratio 0.95 \
        --num-samples 8 --seq-len 256 --out "$model" >/dev/null 2>&1
fi
layers=$(python3 -c "
import json, sys
ranks = json.load(open(sys.argv[1] + '/config.json'))['grasp']['ranks']
print(','.join(sorted({k.split('.')[2] for k in ranks}, key=int)))" "$model")
head -n $((STEPS * BATCH)) "$DATA" >"$work/data.jsonl"
warmup=$((STEPS / 10))

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg); $THREADS threads" >&2
echo "training layers $layers of $model: $STEPS steps of $BATCH examples ($MICRO per pass), max length $MAX_LEN" >&2
RAYON_NUM_THREADS=$THREADS "$GRASP" finetune --model "$model" --data-path "$work/data.jsonl" \
    --val-set-size 0 --max-steps "$STEPS" --train-batch-size "$BATCH" --micro-batch-size "$MICRO" \
    --max-length "$MAX_LEN" --warmup-steps "$warmup" --out "$work/tuned" >/dev/null 2>"$work/grasp.log" \
    || { cat "$work/grasp.log" >&2; exit 1; }
THREADS=$THREADS "$VENV/bin/python" scripts/finetune_torch.py "$model" "$work/data.jsonl" "$layers" \
    "$STEPS" "$BATCH" "$MICRO" "$MAX_LEN" >"$work/torch.json"

python3 - "$work/tuned/grasp_finetune.json" "$work/torch.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
t = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
r = g["recovery"]
rows = [
    ("grasp", r["tokens_per_s"], g["peak_rss_bytes"], r["tokens"], r["trainable_params"], [s["loss"] for s in r["steps"]]),
    ("pytorch", t["tokens_per_s"], t["peak_rss_bytes"], t["tokens"], t["trainable_params"], t["losses"]),
]
print("| | tokens/s | peak RSS | tokens | trainable params | loss per step |")
print("|---|--:|--:|--:|--:|---|")
for name, tps, rss, tok, params, losses in rows:
    print(f"| {name} | {tps:.0f} | {rss / 2**20:.0f} MiB | {tok} | {params / 1e6:.2f}M | {' '.join(f'{l:.3f}' for l in losses)} |")
print(f"grasp/pytorch: {rows[0][1] / rows[1][1]:.2f}x tokens/s, {rows[0][2] / rows[1][2]:.2f}x peak RSS")
PY

#!/usr/bin/env bash
# Loads grasp's factorized output in transformers (trust_remote_code, modeling_grasp.py) and
# compares its logits with the merged output's, which transformers runs with no remote code
# (and which tests/cli.rs checks against grasp's own logits). For each model: compress one
# layer factorized and merged, then report the largest logit difference relative to the
# logits' scale, the parameter counts and the file sizes. Not part of `cargo test`: it needs
# torch and transformers, installed into .venv-transformers on first use (a few minutes).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv-transformers
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch transformers safetensors
fi
GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
if [[ ! -x "$GRASP" ]]; then
    echo "error: $GRASP not found; build it first with: cargo build --release" >&2
    exit 1
fi
SHARED=${SHARED:-../shared}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for model in models/stories260K-hf models/families/qwen2-tiny models/families/mistral-tiny models/families/llama3-tiny; do
    name=$(basename "$model")
    for form in factorized merged; do
        extra=()
        [[ "$form" == merged ]] && extra=(--merge)
        "$GRASP" compress --model "$SHARED/$model" --layers 1,2 --ratio 0.5 --num-samples 2 \
            --seq-len 32 --sampling sequential --data-dir "$SHARED/data" \
            --out "$WORK/$name-$form" "${extra[@]}" > /dev/null 2>&1
    done
    "$VENV/bin/python" - "$WORK/$name-factorized" "$WORK/$name-merged" "$name" <<'PY'
import os, sys, time
import torch
from transformers import AutoModelForCausalLM

factorized_dir, merged_dir, name = sys.argv[1:]
torch.manual_seed(0)
ids = torch.randint(3, 500, (2, 40))

def load(path, remote):
    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=remote, dtype=torch.float32)
    return model.eval(), time.time() - start

factorized, t_f = load(factorized_dir, True)
merged, t_m = load(merged_dir, False)
thin = sum(type(m).__name__ == "GraspLinear" for m in factorized.modules())
with torch.no_grad():
    a = factorized(ids).logits
    b = merged(ids).logits
rel = ((a - b).abs().max() / b.abs().max()).item()
params = lambda m: sum(p.numel() for p in m.parameters())
size = lambda d: os.path.getsize(os.path.join(d, "model.safetensors"))
print(f"{name}: {type(factorized).__name__} with {thin} GraspLinear; max |logit diff| / max |logit| "
      f"factorized vs merged {rel:.2e}; params {params(factorized)} vs {params(merged)}; "
      f"model.safetensors {size(factorized_dir)} vs {size(merged_dir)} bytes; "
      f"load {t_f:.2f} s vs {t_m:.2f} s")
assert thin > 0, "no projection was factorized"
assert rel <= 1e-5, f"logits differ by {rel:.2e}"
PY
done

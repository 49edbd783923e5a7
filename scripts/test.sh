#!/usr/bin/env bash
# The project's test run: fetch and convert the SmolLM2 test model (idempotent), then every
# test in release mode (candle is many times slower in debug builds). GRASP_REQUIRE_SHARED=1 makes
# a test whose data (../shared, SmolLM2) is missing fail instead of skipping.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_test_model.sh
GRASP_REQUIRE_SHARED=1 cargo test --release "$@"

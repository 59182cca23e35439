#!/usr/bin/env bash
# Runs the whole test suite as CI does: fetches the models, then cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo test --locked "$@"

#!/usr/bin/env bash
# Runs the whole test suite as CI does: fetches the models, starts PostgreSQL for the
# PostgreSQL tests (when EXEMPLAR_TEST_POSTGRES_URL is not already set), installs
# headless Chromium for the browser test, runs cargo test including those tests and the
# Docker deployment test, type-checks the CUDA build (nvcc from PyPI), then fuzzes a
# live server against openapi.yaml with schemathesis, and runs the Python tests (the
# `openai` SDK and clients/python) against another.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/install-browser.sh
if [ -z "${EXEMPLAR_TEST_POSTGRES_URL:-}" ]; then
  EXEMPLAR_TEST_POSTGRES_URL=$(scripts/start-postgres.sh)
  export EXEMPLAR_TEST_POSTGRES_URL
fi
cargo test --locked --no-fail-fast "$@" -- --include-ignored
status=0
scripts/cuda-check.sh || status=$?
scripts/schemathesis.sh target/debug/exemplar || status=$?
scripts/python-tests.sh target/debug/exemplar || status=$?
exit $status

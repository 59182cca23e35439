#!/usr/bin/env bash
# For a machine with an NVIDIA GPU and the CUDA toolkit: builds with `--features cuda`,
# runs the reference tests (every architecture and weight format against llama.cpp's
# fixtures, the real models against theirs, the embedder against
# sentence-transformers) on the GPU, then the models bench on it.
#   GPU_CHECK_BENCH_ARGS  extra arguments for `exemplar bench --suite models`
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null 2>&1 || { echo "gpu-check: nvcc is not on PATH" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader
scripts/fetch-models.sh all
cargo build --release --locked --features cuda
status=0
EXEMPLAR_TEST_DEVICE=cuda cargo test --release --locked --features cuda --test it -- \
  --include-ignored --test-threads 1 architectures:: llm_reference:: embedder_reference:: \
  || status=$?
# shellcheck disable=SC2086 # the extra arguments are words on purpose
target/release/exemplar bench --suite models --device cuda --all-weights \
  ${GPU_CHECK_BENCH_ARGS:-} || status=$?
exit $status

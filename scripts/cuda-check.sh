#!/usr/bin/env bash
# Type-checks the CUDA build (`cargo check --features cuda`) on a machine without a GPU,
# so that the CUDA code cannot rot unseen: candle's kernels are compiled to PTX by nvcc
# and every `cfg(feature = "cuda")` path of ours is checked.
#
# nvcc and the CUDA headers come from PyPI: the CUDA 12 wheels there
# (`nvidia-cuda-nvcc-cu12`) ship only ptxas, so the CUDA 13 ones are used, unpacked into
# one tree (nvcc, nvvm, crt and cccl headers, the runtime's headers); 13.4 is the newest
# CUDA the locked cudarc (0.19) knows. cudarc loads the driver's libraries at run time,
# so nothing is linked here.
#   CUDA_TOOLKIT_DIR   where to unpack (default target/cuda-toolkit)
#   CUDA_COMPUTE_CAP   the GPU generation to compile for (default 80, an A100; nvcc 13
#                      supports 75 and newer)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="${CUDA_TOOLKIT_DIR:-$root/target/cuda-toolkit}"
version="${CUDA_WHEELS_VERSION:-13.4.92}"
toolkit="$dest/nvidia/cu13"
fail() { echo "cuda-check: $*" >&2; exit 1; }

if [ ! -x "$toolkit/bin/nvcc" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "cuda-check: downloading nvcc $version and the CUDA headers from PyPI" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
    "nvidia-cuda-nvcc==$version" "nvidia-nvvm==$version" "nvidia-cuda-crt==$version" \
    "nvidia-cuda-runtime==$version" "nvidia-cuda-cccl==13.3.5.0.6" >&2 || fail "pip download failed"
  mkdir -p "$dest"
  for wheel in "$tmp"/*.whl; do
    python3 -m zipfile -e "$wheel" "$dest" || fail "cannot unpack $wheel"
  done
  chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/*
fi
export PATH="$toolkit/bin:$PATH"
export CUDA_ROOT="$toolkit" CUDA_PATH="$toolkit"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
nvcc --version | tail -1 >&2
cd "$root"
cargo check --locked --features cuda --lib --bins

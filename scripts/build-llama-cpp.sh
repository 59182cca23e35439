#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` and `llama-server` from the llama-cpp-python source
# package on PyPI (the registry this project may use), for `exemplar bench --suite models
# --llama-bench PATH` and `exemplar bench --suite predict --llama-server PATH` (the
# server sits beside the bench binary). Prints llama-bench's path on its last line; a
# second run only prints it.
#   LLAMA_CPP_PYTHON_VERSION  the package version (default below)
#   LLAMA_CPP_ISA             native (default: every x86 extension this CPU lists) or
#                             avx2 (AVX-512 off: the yardstick of `--cpu-features avx2`)
#   LLAMA_CPP_DIR             where to build (default target/llama.cpp, or
#                             target/llama.cpp-avx2 for the avx2 build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
isa="${LLAMA_CPP_ISA:-native}"
case "$isa" in
  native) dest="${LLAMA_CPP_DIR:-$root/target/llama.cpp}" ;;
  avx2) dest="${LLAMA_CPP_DIR:-$root/target/llama.cpp-avx2}" ;;
  *) echo "build-llama-cpp: LLAMA_CPP_ISA is native or avx2, not $isa" >&2; exit 1 ;;
esac
bin="$dest/build/bin/llama-bench"
server="$dest/build/bin/llama-server"
fail() { echo "build-llama-cpp: $*" >&2; exit 1; }

if [ -x "$bin" ] && [ -x "$server" ]; then
  echo "$bin"
  exit 0
fi
command -v c++ >/dev/null 2>&1 || fail "a C++ compiler is required (apt-get install g++)"
if ! command -v cmake >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check cmake >&2 || fail "pip install cmake failed"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "build-llama-cpp: downloading llama-cpp-python==$version (source)" >&2
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
  -d "$tmp" "llama-cpp-python==$version" >&2 || fail "pip download llama-cpp-python failed"
tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$dest"
# The x86 instruction sets named rather than GGML_NATIVE (on a Xeon that lists AMX, a
# VM whose hypervisor does not enable it, -march=native makes a binary that dies with
# an invalid opcode), each only where this CPU lists it: on an AMD EPYC without
# avx_vnni, naming them all made llama-bench die the same way.
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
# The avx2 build names no extension past AVX2 (AVX-512, AVX-VNNI), whatever the CPU
# has: what a CPU of that tier (Zen 3, say) runs.
wide() { [ "$isa" = native ] && has "$1" || echo OFF; }
cmake -S "$dest" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" \
  -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX512="$(wide avx512f)" \
  -DGGML_AVX512_VBMI="$(wide avx512vbmi)" -DGGML_AVX512_VNNI="$(wide avx512_vnni)" \
  -DGGML_AVX_VNNI="$(wide avx_vnni)" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$dest/build" --target llama-bench llama-server -j "$(nproc)" >&2
[ -x "$bin" ] || fail "no llama-bench after the build"
[ -x "$server" ] || fail "no llama-server after the build"
echo "$bin"

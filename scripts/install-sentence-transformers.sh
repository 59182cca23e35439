#!/usr/bin/env bash
# Makes a Python virtual environment with sentence-transformers and torch from PyPI, the
# yardstick of `exemplar bench --suite models --sentence-transformers PYTHON`. Prints the
# environment's interpreter on its last line; a second run only prints it. PyPI's torch
# wheel brings CUDA libraries (about 3 GB) even though the bench runs it on the CPU.
#   ST_VENV  where to make it (default target/sentence-transformers)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${ST_VENV:-$root/target/sentence-transformers}"
python="$venv/bin/python"
if ! "$python" -c "import sentence_transformers" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$python" -m pip install --quiet --disable-pip-version-check sentence-transformers >&2
fi
echo "$python"

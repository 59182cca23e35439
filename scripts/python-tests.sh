#!/usr/bin/env bash
# Tests the Python side against a live server: the official `openai` SDK
# (tests/openai/) and Exemplar's own client (clients/python/, installed with pip as a
# user would), in a venv under target/ with pinned versions. Starts `exemplar serve`
# (the binary given, else target/debug/exemplar) with auth required and an admin key.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/exemplar}"
fail() { echo "python-tests: $*" >&2; exit 1; }

venv=target/python-tests
pins=(openai==3.63.0 httpx==0.29.0 pytest==9.2.0 pandas==3.1.1 pyyaml==6.0.4 tqdm==4.70.1)
if ! "$venv/bin/python" -c 'import openai, pandas, pytest, yaml' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q "${pins[@]}" || fail "installing ${pins[*]} failed"
fi
"$venv/bin/pip" install -q --no-deps --force-reinstall ./clients/python || fail "installing clients/python failed"

. scripts/lib/live-server.sh
start_live_server "$binary"
status=0
EXEMPLAR_URL="$base" EXEMPLAR_API_KEY="$key" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/openai clients/python/tests || status=$?
check_key_not_logged || status=1
exit $status

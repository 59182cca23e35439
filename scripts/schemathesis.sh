#!/usr/bin/env bash
# Fuzzes a live server against openapi.yaml with schemathesis (from PyPI, in a venv under
# target/): no answer may be a server error, break its schema or use an undocumented
# status. Starts `exemplar serve` (the binary given, else target/debug/exemplar) on a
# temporary SQLite database with one task, so that task routes are reached too, with auth
# required and every request sent with an admin key.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/exemplar}"
version=4.32.5
fail() { echo "schemathesis: $*" >&2; exit 1; }

venv=target/schemathesis
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q "schemathesis==$version" \
    || fail "installing schemathesis $version failed"
fi

. scripts/lib/live-server.sh
start_live_server "$binary" --queue-capacity 256
json=(-fsS -H 'content-type: application/json' -H "$auth")
curl "${json[@]}" -X PUT "$base/v1/tasks/films" -d '{"labels":["negative","positive"],
  "template":{"input":"Review: {text}","output":"Sentiment: {label}"}}' >/dev/null
curl "${json[@]}" -X POST "$base/v1/tasks/films/examples" -d '{"examples":[
  {"id":"good","text":"a warm and funny film","label":"positive"},
  {"id":"bad","text":"a dull mess","label":"negative"}]}' >/dev/null

# Path parameters name the task made above, so that task routes get past the 404.
cat >"$work/schemathesis.toml" <<'TOML'
[parameters]
"path.task" = "films"
TOML
status=0
"$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run openapi.yaml --url "$base" --workers 1 --header "$auth" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,fuzzing,stateful --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
  --request-timeout 300 --no-color || status=$?
check_key_not_logged || status=1
if grep -q '"level":"ERROR"\|ERROR' "$work/server.log"; then
  grep 'ERROR' "$work/server.log" | tail -n 20 >&2
fi
exit $status

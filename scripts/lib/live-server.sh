# Sourced by the scripts that test a live server (schemathesis, the Python clients):
# `start_live_server BINARY [ARGS...]` starts `exemplar serve` on a free port with a
# temporary SQLite database, auth required and an admin key, waits until it is ready,
# and stops it on exit. It sets `base` (the URL), `key` (the admin key), `auth` (its
# header) and `work` (the temporary folder, holding server.log).

start_live_server() {
  local binary=$1
  shift
  [ -x "$binary" ] || { echo "no binary at $binary: build it first" >&2; exit 1; }
  work=$(mktemp -d)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  key="exm_$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
  auth="authorization: Bearer $key"
  EXEMPLAR_BOOTSTRAP_KEY="$key" EXEMPLAR_MODELS_DIR="${EXEMPLAR_MODELS_DIR:-$PWD/models}" \
    "$binary" serve --addr "127.0.0.1:$port" --require-auth \
    --database-url "sqlite://$work/exemplar.db" "$@" >"$work/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 120); do
    curl -fsS "$base/ready" >/dev/null 2>&1 && return 0
    kill -0 $server 2>/dev/null || { cat "$work/server.log" >&2; echo "the server exited" >&2; exit 1; }
    sleep 1
  done
  echo "the server was not ready within 120 s" >&2
  exit 1
}

# Fails if the admin key was written to the server's log.
check_key_not_logged() {
  if grep -q "${key#exm_}" "$work/server.log"; then
    echo "the key is in the server log" >&2
    return 1
  fi
}

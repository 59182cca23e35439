#!/usr/bin/env bash
# Starts the machine's PostgreSQL server (installing it with apt when missing), makes
# a role that may create databases, and prints the URL to give the tests as
# EXEMPLAR_TEST_POSTGRES_URL. Needs root. Running it again does no harm.
set -euo pipefail

# Only the URL goes to standard output; everything the tools print goes to stderr.
exec 3>&1 1>&2
fail() { echo "start-postgres: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (it starts a system service)"

if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "start-postgres: installing postgresql" >&2
  # Installing may start the server too: same rule as below, nothing of ours inherited.
  log=$(mktemp)
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
    </dev/null >"$log" 2>&1 3>&- || { cat "$log" >&2; fail "apt-get install postgresql failed"; }
  rm -f "$log"
fi
version=$(ls /etc/postgresql | sort -n | tail -n 1)
# The server daemon must inherit none of our descriptors: holding the caller's pipe
# open (fd 3 here, or a CI log's stderr) would keep `$(start-postgres.sh)` waiting.
pg_ctlcluster "$version" main start </dev/null >/dev/null 2>&1 3>&- \
  || pg_ctlcluster "$version" main status </dev/null >/dev/null 2>&1 3>&- \
  || fail "PostgreSQL $version did not start"
for _ in $(seq 1 30); do
  su postgres -c "psql -qAtc 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_roles WHERE rolname = 'exemplar'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE exemplar LOGIN CREATEDB PASSWORD 'exemplar'\"" >/dev/null \
  || fail "could not create the exemplar role"
port=$(su postgres -c "psql -qAtc 'SHOW port'" 2>/dev/null)
echo "postgres://exemplar:exemplar@127.0.0.1:${port}/postgres" >&3

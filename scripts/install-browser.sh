#!/usr/bin/env bash
# Installs Debian's headless Chromium and its chromedriver for the browser test
# (tests/it/ui.rs) when either is missing. Needs root the first time. Running it again
# does no harm.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install-browser: run as root to install chromium" >&2; exit 1; }
echo "install-browser: installing chromium and chromium-driver" >&2
log=$(mktemp)
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
  </dev/null >"$log" 2>&1 || { cat "$log" >&2; echo "install-browser: apt-get failed" >&2; exit 1; }
rm -f "$log"

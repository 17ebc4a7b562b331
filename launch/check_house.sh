#!/usr/bin/env bash
# The house rules a script can check (issue 24), run by ctest as the `house` test (label unit):
#   1. every C++ file is as .clang-format (Debian's clang-format) formats it;
#   2. no function over 80 lines in core/, adapters/, training/, runtimes/, stages/ or pipeline/, and each stage's
#      run() at most 60: a stage body reads as its phases (lizard's line count, signature to brace).
# Fix 1 with: clang-format -i $(git ls-files '*.cpp' '*.h').
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
lizard=${HAWADA_LIZARD:-$repo/.venv/bin/lizard}
command -v clang-format >/dev/null || { echo "check_house: clang-format missing: run launch/setup.sh" >&2; exit 1; }
[ -x "$lizard" ] || { echo "check_house: $lizard missing: run launch/setup.sh" >&2; exit 1; }
mapfile -t sources < <(find core adapters training runtimes stages pipeline bench tests examples \
  \( -name '*.cpp' -o -name '*.h' \) -not -path 'tests/fuzz/corpus/*' | sort)
failed=0
if ! clang-format --dry-run -Werror "${sources[@]}" 2>/tmp/check_house.$$; then
  grep -o '^[^:]*\.\(cpp\|h\):' /tmp/check_house.$$ | sort -u | sed 's/:$//;s/^/not formatted: /'
  failed=1
fi
rm -f /tmp/check_house.$$
long=$("$lizard" -L 80 -C 100000 -a 1000 -w core adapters training runtimes stages pipeline 2>/dev/null)
stage_runs=$("$lizard" -L 60 -C 100000 -a 1000 -w stages 2>/dev/null | grep 'Stage::run ' || true)
for what in "$long" "$stage_runs"; do
  [ -n "$what" ] || continue
  echo "$what" | sed 's/ has .* \([0-9]*\) length.*/: \1 lines/;s/^/too long: /'
  failed=1
done
[ "$failed" = 0 ] && echo "check_house: formatted; no function over 80 lines, no stage run() over 60"
exit "$failed"

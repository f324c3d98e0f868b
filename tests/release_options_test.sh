#!/usr/bin/env bash
# The release build's options refuse what they do not know, before building anything:
# scripts/release.sh's arguments and CMake's AICLOUD_PGO (docs/PERFORMANCE.md §5, make release).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_refusal WHAT MESSAGE COMMAND...: the command fails and says MESSAGE
expect_refusal() {
  local what=$1 msg=$2 out
  shift 2
  if out=$("$@" 2>&1); then fail "$what was accepted"; fi
  grep -qF -- "$msg" <<<"$out" || fail "$what: no '$msg' in: $out"
  echo "ok: $what refused"
}

expect_refusal "release.sh --jobs 0" "--jobs needs a positive number, not '0'" \
  bash "$ROOT/scripts/release.sh" --jobs 0 --build-dir "$TMP/release"
expect_refusal "release.sh --build-dir ''" "--build-dir needs a directory" bash "$ROOT/scripts/release.sh" --build-dir ""
expect_refusal "release.sh --fast" "unknown argument '--fast'" bash "$ROOT/scripts/release.sh" --fast
[ ! -e "$TMP/release" ] || fail "a refused release.sh made its build directory"
expect_refusal "AICLOUD_PGO=sometimes" "AICLOUD_PGO is 'sometimes': it is empty (off), generate or use" \
  cmake -S "$ROOT" -B "$TMP/build" -G Ninja -DAICLOUD_TESTS=OFF -DAICLOUD_BENCH=OFF -DAICLOUD_PGO=sometimes
bash "$ROOT/scripts/release.sh" --help | grep -q "profile-guided" || fail "release.sh --help says nothing of what it does"
echo "ok: release.sh --help"

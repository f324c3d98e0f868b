#!/usr/bin/env bash
# Installs the Debian packages aicloud builds, tests and benchmarks with, only where missing.
# Idempotent: a machine that has everything runs no apt-get at all.
set -euo pipefail
PKGS=(
  cmake ninja-build g++ make pkg-config git
  libboost-dev libboost-system-dev     # Asio + Beast (HTTP server and client)
  nlohmann-json3-dev libsqlite3-dev libssl-dev
  libspdlog-dev libfmt-dev libcli11-dev
  libjemalloc-dev                      # the server's allocator (docs/PERFORMANCE.md §5)
  libgtest-dev libgmock-dev libbenchmark-dev
  ccache sqlite3 curl
  clang libfuzzer-14-dev libclang-rt-14-dev   # the fuzz target (libFuzzer)
  wrk nginx-light                      # bench/: load generator and the peer we compare with
  linux-perf                           # bench/gateway/syscalls.sh: system calls per request
  valgrind                             # bench/gateway/instructions.sh: instructions per request
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm for tests/node (the official openai package): Debian's, unless some Node with its
# npm is already on the PATH (NodeSource's nodejs bundles npm and conflicts with Debian's npm).
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

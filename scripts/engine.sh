#!/usr/bin/env bash
# The model engine: llama.cpp's llama-server (and llama-finetune) at a pinned release, built once
# into a cache outside the source tree, so that rebuilds of aicloud never recompile it and a second
# run is a no-op. aicloud never links it: the agent runs it as a replica's process. docs/ENGINE.md.
#
#   scripts/engine.sh [--flavor cpu|cuda] [--source-dir DIR] [--jobs N]   build (or find) the engine
#   scripts/engine.sh --print-dir [--flavor F] [--source-dir DIR]         where it is (or would be)
#   scripts/engine.sh --fetch-only                                        fetch and verify the source only
#
# The source, the first available:
#   1. --source-dir DIR or $LLAMA_CPP_SOURCE_DIR: a llama.cpp checkout of yours, used as it is
#   2. the release tag from GitHub, if reachable within $AICLOUD_ENGINE_GITHUB_TIMEOUT seconds (10)
#      and its tree is the pinned one
#   3. the git bundle of the release inside the npm package node-llama-cpp@3.22.1 (`npm pack`, or
#      the tarball at $AICLOUD_ENGINE_TARBALL), its sha256 checked before anything is read from it
#
# The result: ${AICLOUD_ENGINE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/aicloud/engine}/
#   llama.cpp-v0.5.0-cpu/{bin/llama-server,bin/llama-finetune,bin/lib*.so,share/vocab/*.gguf,ENGINE_INFO}
# Other knobs: AICLOUD_ENGINE_FLAVOR, AICLOUD_ENGINE_JOBS, AICLOUD_ENGINE_NICE (10),
# AICLOUD_ENGINE_KEEP_BUILD=1 (keep the object files), CMAKE_CUDA_ARCHITECTURES (cuda flavor).
set -euo pipefail

# ---- the pin -----------------------------------------------------------------------------------
LLAMA_VERSION=v0.5.0
# node-llama-cpp's bundle holds the release as one squashed commit; the tree hash pins the content
# whatever the history (a clone of the GitHub tag must have this same tree).
LLAMA_COMMIT=de3ff815ea7d559ee917f063901b8986f038abc6
LLAMA_TREE=fd570ef54b10ec5fecb739e7e04c8ce44a6f415a
GITHUB_URL=https://github.com/ggml-org/llama.cpp.git
NPM_PACKAGE=node-llama-cpp@3.22.1
NPM_TARBALL=node-llama-cpp-3.22.1.tgz
NPM_SHA256=a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f
# Tokenizers kept next to the binaries, for `aicloud models create-tiny`.
VOCABS="llama-spm llama-bpe phi-3"

say() { echo "engine: $*" >&2; }
die() { echo "engine: error: $*" >&2; exit 1; }

# ---- arguments ---------------------------------------------------------------------------------
MODE=build
FLAVOR=${AICLOUD_ENGINE_FLAVOR:-cpu}
SOURCE_DIR=${LLAMA_CPP_SOURCE_DIR:-}
JOBS=${AICLOUD_ENGINE_JOBS:-$(nproc 2>/dev/null || echo 2)}
while [ $# -gt 0 ]; do
  case "$1" in
    --print-dir) MODE=print ;;
    --fetch-only) MODE=fetch ;;
    --flavor) FLAVOR=${2:?--flavor needs cpu or cuda}; shift ;;
    --source-dir) SOURCE_DIR=${2:?--source-dir needs a directory}; shift ;;
    --jobs|-j) JOBS=${2:?--jobs needs a number}; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
case "$FLAVOR" in cpu|cuda) ;; *) die "unknown flavor '$FLAVOR' (cpu or cuda)" ;; esac

CACHE=${AICLOUD_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aicloud/engine}
if [ -n "$SOURCE_DIR" ]; then
  [ -d "$SOURCE_DIR" ] || die "LLAMA_CPP_SOURCE_DIR / --source-dir: $SOURCE_DIR is not a directory"
  SOURCE_DIR=$(cd "$SOURCE_DIR" && pwd -P)
  LABEL=custom-$(printf '%s' "$SOURCE_DIR" | sha256sum | cut -c1-12)
else
  LABEL=llama.cpp-$LLAMA_VERSION
fi
DEST=$CACHE/$LABEL-$FLAVOR
if [ "$MODE" = print ]; then
  echo "$DEST"
  exit 0
fi

# What the build is configured with; a change of any of it rebuilds. GGML_NATIVE=OFF with all CPU
# variants as loadable backends: ggml picks the best one for the CPU it runs on, so the same
# build runs on any x86-64 (no -march=native). No curl/OpenSSL (models come from aicloud), no web UI.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON
  -DGGML_NATIVE=OFF
  -DGGML_BACKEND_DL=ON
  -DGGML_CPU_ALL_VARIANTS=ON
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
)
if [ "$FLAVOR" = cuda ]; then
  CMAKE_FLAGS+=(-DGGML_CUDA=ON)
  if [ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]; then
    CMAKE_FLAGS+=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES")
  fi
fi
CONFIG="$LABEL $FLAVOR ${CMAKE_FLAGS[*]}"

is_ready() {
  [ -x "$DEST/bin/llama-server" ] && [ -f "$DEST/ENGINE_INFO" ] &&
    grep -qxF "config=$CONFIG" "$DEST/ENGINE_INFO"
}
if [ "$MODE" = build ] && is_ready; then
  say "ready: $(sed -n 's/^summary=//p' "$DEST/ENGINE_INFO") at $DEST"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$LABEL-$FLAVOR"
if ! flock -n 9; then
  say "another build of $LABEL-$FLAVOR is running; waiting for it"
  flock 9
  if is_ready; then
    say "ready: $DEST"
    exit 0
  fi
fi
START=$(date +%s)

# ---- the source --------------------------------------------------------------------------------
tree_of() { git -C "$1" rev-parse 'HEAD^{tree}' 2>/dev/null || true; }

fetch_github() {  # $1: where to clone
  local t=${AICLOUD_ENGINE_GITHUB_TIMEOUT:-10}
  say "trying GitHub: $GITHUB_URL tag $LLAMA_VERSION (${t}s limit)"
  if ! timeout "$t" git ls-remote --exit-code --tags "$GITHUB_URL" "refs/tags/$LLAMA_VERSION" >/dev/null 2>&1; then
    say "GitHub is not reachable (or has no tag $LLAMA_VERSION); next source"
    return 1
  fi
  rm -rf "$1"
  if ! GIT_TERMINAL_PROMPT=0 git -c advice.detachedHead=false clone -q --depth 1 --branch "$LLAMA_VERSION" \
      "$GITHUB_URL" "$1"; then
    say "the clone from GitHub failed; next source"
    return 1
  fi
  if [ "$(tree_of "$1")" != "$LLAMA_TREE" ]; then
    say "GitHub's $LLAMA_VERSION has tree $(tree_of "$1"), not the pinned $LLAMA_TREE; not used"
    rm -rf "$1"
    return 1
  fi
  SOURCE_FROM="GitHub $GITHUB_URL tag $LLAMA_VERSION"
}

fetch_npm() {  # $1: where to clone
  local downloads=$CACHE/downloads tarball sum
  mkdir -p "$downloads"
  if [ -n "${AICLOUD_ENGINE_TARBALL:-}" ]; then
    tarball=$AICLOUD_ENGINE_TARBALL
    [ -f "$tarball" ] || die "AICLOUD_ENGINE_TARBALL=$tarball: no such file"
  else
    tarball=$downloads/$NPM_TARBALL
    if [ ! -f "$tarball" ]; then
      command -v npm >/dev/null || die "no source: GitHub unreachable and npm is not installed (install Node.js/npm, or set LLAMA_CPP_SOURCE_DIR)"
      say "fetching $NPM_PACKAGE from the npm registry (35 MB)"
      rm -f "$downloads"/node-llama-cpp-*.tgz.part
      (cd "$downloads" && timeout 600 npm pack "$NPM_PACKAGE" --silent >/dev/null) ||
        die "npm pack $NPM_PACKAGE failed (no network? set AICLOUD_ENGINE_TARBALL or LLAMA_CPP_SOURCE_DIR)"
    fi
  fi
  sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  if [ "$sum" != "$NPM_SHA256" ]; then
    local where="it is left at $tarball"
    if [ -z "${AICLOUD_ENGINE_TARBALL:-}" ]; then
      mv -f "$tarball" "$tarball.rejected"
      where="moved aside to $tarball.rejected"
    fi
    die "REFUSED $tarball: its sha256 is $sum, but $NPM_PACKAGE must have $NPM_SHA256.
  This is not the package the release pins (corrupt, tampered with, or republished): nothing was built from it ($where).
  To build from a llama.cpp checkout of yours instead: LLAMA_CPP_SOURCE_DIR=DIR make engine"
  fi
  say "$NPM_TARBALL sha256 $sum: verified"
  local unpack=$1.unpack
  rm -rf "$unpack" "$1"
  mkdir -p "$unpack"
  tar -xzf "$tarball" -C "$unpack" package/llama/gitRelease.bundle ||
    die "$tarball has no package/llama/gitRelease.bundle"
  git -c advice.detachedHead=false clone -q "$unpack/package/llama/gitRelease.bundle" "$1" ||
    die "git could not clone the bundle in $tarball"
  rm -rf "$unpack"
  local head
  head=$(git -C "$1" rev-parse HEAD)
  [ "$head" = "$LLAMA_COMMIT" ] || die "the bundle's commit is $head, not the pinned $LLAMA_COMMIT"
  [ "$(tree_of "$1")" = "$LLAMA_TREE" ] || die "the bundle's tree is $(tree_of "$1"), not the pinned $LLAMA_TREE"
  SOURCE_FROM="npm $NPM_PACKAGE (sha256 $NPM_SHA256) package/llama/gitRelease.bundle"
}

if [ -n "$SOURCE_DIR" ]; then
  SRC=$SOURCE_DIR
  SOURCE_FROM="LLAMA_CPP_SOURCE_DIR $SOURCE_DIR"
  say "source: $SRC (yours, used as it is)"
else
  SRC=$CACHE/src/$LABEL
  if [ -d "$SRC/.git" ] && [ "$(tree_of "$SRC")" = "$LLAMA_TREE" ]; then
    SOURCE_FROM=$(cat "$SRC/.aicloud-source" 2>/dev/null || echo "the cache")
  else
    mkdir -p "$CACHE/src"
    rm -rf "$SRC.tmp"
    fetch_github "$SRC.tmp" || fetch_npm "$SRC.tmp"
    echo "$SOURCE_FROM" >"$SRC.tmp/.aicloud-source"
    rm -rf "$SRC"
    mv "$SRC.tmp" "$SRC"
  fi
  say "source: llama.cpp $LLAMA_VERSION commit $LLAMA_COMMIT tree $LLAMA_TREE, from $SOURCE_FROM"
fi
COMMIT=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$MODE" = fetch ]; then exit 0; fi

# ---- configure and build -----------------------------------------------------------------------
command -v cmake >/dev/null || die "cmake is not installed (scripts/setup.sh installs it)"
BUILD=$CACHE/build/$LABEL-$FLAVOR
GENERATOR=()
if command -v ninja >/dev/null; then GENERATOR=(-G Ninja); fi
mkdir -p "$BUILD"
say "configuring ($FLAVOR): ${CMAKE_FLAGS[*]}"
cmake -S "$SRC" -B "$BUILD" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}" >"$BUILD/configure.log" 2>&1 ||
  { tail -40 "$BUILD/configure.log" >&2; die "configure failed (log: $BUILD/configure.log)"; }

TARGETS=(llama-server)
if grep -q 'llama-finetune' "$BUILD"/build.ninja "$BUILD"/Makefile 2>/dev/null; then TARGETS+=(llama-finetune); fi
say "building ${TARGETS[*]} with $JOBS jobs (about 15-30 minutes on 2 cores, once; log: $BUILD/build.log)"
set +e
nice -n "${AICLOUD_ENGINE_NICE:-10}" cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" 2>&1 |
  tee "$BUILD/build.log" |
  awk '/^\[[0-9]+\/[0-9]+\]/ { split(substr($1, 2), p, "/"); n = p[1] + 0; t = p[2] + 0;
         if (n == t || n % 25 == 0) { printf "engine: [%d/%d] %d%%\n", n, t, 100 * n / t; fflush() } next }
       /error:|FAILED:/ { print; fflush() }' >&2
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || { tail -40 "$BUILD/build.log" >&2; die "the build failed (log: $BUILD/build.log)"; }

# ---- install into the cache --------------------------------------------------------------------
STAGE=$DEST.tmp
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/share/vocab"
for t in "${TARGETS[@]}"; do cp -a "$BUILD/bin/$t" "$STAGE/bin/"; done
cp -a "$BUILD"/bin/*.so* "$STAGE/bin/"  # libllama, libggml*, the backends ggml loads at run time
for v in $VOCABS; do
  if [ -f "$SRC/models/ggml-vocab-$v.gguf" ]; then cp "$SRC/models/ggml-vocab-$v.gguf" "$STAGE/share/vocab/"; fi
done
cp "$SRC/LICENSE" "$STAGE/LICENSE.llama.cpp" 2>/dev/null || true
VERSION_OUT=$("$STAGE/bin/llama-server" --version 2>&1) ||
  { echo "$VERSION_OUT" >&2; die "the built llama-server does not run"; }
SECS=$(( $(date +%s) - START ))
{
  echo "summary=llama.cpp $LLAMA_VERSION ($(echo "$COMMIT" | cut -c1-7)) $FLAVOR"
  echo "version=$LLAMA_VERSION"
  echo "commit=$COMMIT"
  echo "flavor=$FLAVOR"
  echo "source=$SOURCE_FROM"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$SECS"
  echo "compiler=$(${CXX:-c++} --version 2>/dev/null | head -1)"
  echo "engine_version=$(echo "$VERSION_OUT" | grep -m1 '^version' || true)"
  echo "config=$CONFIG"
} >"$STAGE/ENGINE_INFO"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
if [ "${AICLOUD_ENGINE_KEEP_BUILD:-0}" != 1 ]; then rm -rf "$BUILD"; fi
say "built llama.cpp $LLAMA_VERSION ($COMMIT) $FLAVOR in ${SECS}s: $DEST/bin/llama-server"

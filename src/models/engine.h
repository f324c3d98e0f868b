// The model engine: llama.cpp's `llama-server` (and `llama-finetune`) at a pinned release, built by
// scripts/engine.sh into a cache outside the source tree (`make engine`; docs/ENGINE.md). aicloud
// never links it: a model replica is a workload whose process is this binary.
//
// An engine dir holds bin/llama-server, bin/llama-finetune, the ggml backends (bin/*.so, chosen at
// run time by the CPU's features), share/vocab/ggml-vocab-*.gguf (tokenizers for create-tiny) and
// ENGINE_INFO (version, commit, source, flags).
#pragma once
#include <string>
#include <vector>

namespace aicloud::engine {

// The pinned release, as scripts/engine.sh builds it.
inline constexpr const char* kLlamaCppVersion = "v0.5.0";
inline constexpr const char* kLlamaCppCommit = "de3ff815ea7d559ee917f063901b8986f038abc6";

// The places an engine dir is looked for, in order, each tried only if set:
//   1. flag_dir (a command's --engine-dir)
//   2. $AICLOUD_ENGINE_DIR
//   3. the dir this build of aicloud was configured with (CMake's AICLOUD_ENGINE_DIR)
//   4. the cache: ${AICLOUD_ENGINE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/aicloud/engine}/
//      llama.cpp-<version>-cuda, then -cpu
// A flag or variable that names a dir without bin/llama-server is an error, not skipped: a typo
// must not silently pick another engine.
std::vector<std::string> candidate_dirs(const std::string& flag_dir = "");

// The first candidate dir that holds bin/llama-server. Throws std::runtime_error naming every
// place it looked and how to build the engine (`make engine`).
std::string engine_dir(const std::string& flag_dir = "");

std::string find_llama_server(const std::string& flag_dir = "");
std::string find_llama_finetune(const std::string& flag_dir = "");  // throws if this engine lacks it

// A tokenizer GGUF of the engine, by short name ("llama-spm", "phi-3", ...: the file
// share/vocab/ggml-vocab-<name>.gguf), or a path to any GGUF file.
std::string find_vocab(const std::string& name_or_path, const std::string& flag_dir = "");

}  // namespace aicloud::engine

#include "models/engine.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace aicloud::engine {
namespace fs = std::filesystem;
namespace {

// Set by cmake/engine.cmake to the dir `make engine` builds into for this build's settings.
#ifdef AICLOUD_ENGINE_DIR
constexpr const char* kBuildEngineDir = AICLOUD_ENGINE_DIR;
#else
constexpr const char* kBuildEngineDir = "";
#endif

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool has_server(const std::string& dir) {
  std::error_code ec;
  fs::path p = fs::path(dir) / "bin" / "llama-server";
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

std::string cache_root() {
  if (auto c = env("AICLOUD_ENGINE_CACHE"); !c.empty()) return c;
  if (auto x = env("XDG_CACHE_HOME"); !x.empty()) return x + "/aicloud/engine";
  if (auto h = env("HOME"); !h.empty()) return h + "/.cache/aicloud/engine";
  return "";
}

}  // namespace

std::vector<std::string> candidate_dirs(const std::string& flag_dir) {
  std::vector<std::string> dirs;
  if (!flag_dir.empty()) dirs.push_back(flag_dir);
  if (auto e = env("AICLOUD_ENGINE_DIR"); !e.empty()) dirs.push_back(e);
  if (*kBuildEngineDir) dirs.push_back(kBuildEngineDir);
  if (auto root = cache_root(); !root.empty()) {
    std::string base = root + "/llama.cpp-" + kLlamaCppVersion;
    dirs.push_back(base + "-cuda");
    dirs.push_back(base + "-cpu");
  }
  std::vector<std::string> unique;
  for (auto& d : dirs) {
    if (std::find(unique.begin(), unique.end(), d) == unique.end()) unique.push_back(std::move(d));
  }
  return unique;
}

std::string engine_dir(const std::string& flag_dir) {
  // An explicit choice that is wrong is an error, never a reason to fall back to another engine.
  if (!flag_dir.empty()) {
    if (has_server(flag_dir)) return flag_dir;
    throw std::runtime_error("--engine-dir " + flag_dir + " holds no bin/llama-server (build one with `make engine`)");
  }
  if (auto e = env("AICLOUD_ENGINE_DIR"); !e.empty()) {
    if (has_server(e)) return e;
    throw std::runtime_error("AICLOUD_ENGINE_DIR=" + e + " holds no bin/llama-server (build one with `make engine`)");
  }
  std::string looked;
  for (const auto& d : candidate_dirs()) {
    if (has_server(d)) return d;
    looked += "\n  " + d;
  }
  throw std::runtime_error(
      "no llama.cpp engine found (llama-server " + std::string(kLlamaCppVersion) + "); looked in:" + looked +
      "\nBuild it with `make engine` (about 15-30 minutes once; cached after), or point --engine-dir or "
      "AICLOUD_ENGINE_DIR at an engine dir (docs/ENGINE.md)");
}

std::string find_llama_server(const std::string& flag_dir) { return engine_dir(flag_dir) + "/bin/llama-server"; }

std::string find_llama_finetune(const std::string& flag_dir) {
  std::string dir = engine_dir(flag_dir);
  std::string p = dir + "/bin/llama-finetune";
  if (::access(p.c_str(), X_OK) != 0) throw std::runtime_error("the engine at " + dir + " has no bin/llama-finetune");
  return p;
}

std::string find_vocab(const std::string& name_or_path, const std::string& flag_dir) {
  std::error_code ec;
  if (name_or_path.find('/') != std::string::npos || name_or_path.ends_with(".gguf")) {
    if (!fs::is_regular_file(name_or_path, ec)) throw std::runtime_error("vocab file " + name_or_path + " not found");
    return name_or_path;
  }
  std::string dir = engine_dir(flag_dir);
  std::string p = dir + "/share/vocab/ggml-vocab-" + name_or_path + ".gguf";
  if (!fs::is_regular_file(p, ec)) {
    std::string have;
    for (const auto& e : fs::directory_iterator(dir + "/share/vocab", ec)) {
      std::string f = e.path().filename().string();
      if (f.starts_with("ggml-vocab-") && f.ends_with(".gguf")) have += " " + f.substr(11, f.size() - 16);
    }
    throw std::runtime_error("the engine at " + dir + " has no vocab '" + name_or_path + "' (it has:" +
                             (have.empty() ? std::string(" none") : have) + ")");
  }
  return p;
}

}  // namespace aicloud::engine

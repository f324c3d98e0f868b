// create-tiny: a small Llama-architecture GGUF with random weights and a real tokenizer (taken
// from one of llama.cpp's vocab GGUFs, which the engine build keeps in its share/vocab), so that
// tests and a first run serve a model without any download. It answers nonsense, quickly.
#pragma once
#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace aicloud::models {

struct TinySpec {
  std::string name = "tiny";   // general.name
  uint32_t n_embd = 64;
  uint32_t n_layer = 2;
  uint32_t n_head = 4;
  uint32_t n_head_kv = 4;
  uint32_t n_ff = 128;
  uint32_t n_ctx = 512;        // llama.context_length
  uint64_t seed = 42;          // the same seed, spec and vocab give a byte-identical file
  bool f16 = true;             // matrices in F16 (norms are always F32); false: all F32
};

struct TinyModel {
  std::string path;
  uint64_t bytes = 0;
  std::string sha256;          // of the file, hex
  uint64_t parameters = 0;
  uint32_t vocab_size = 0;
  uint32_t context_length = 0;
};

// Writes the model to out_path (atomically: a temporary file renamed into place), taking the
// tokenizer.* metadata of the GGUF at vocab_path. Throws std::invalid_argument for a bad spec,
// gguf::GgufError for a bad vocab file, std::runtime_error for I/O.
TinyModel write_tiny_model(const TinySpec& spec, const std::string& vocab_path, const std::string& out_path);

// The SHA-256 of a file, hex (streamed).
std::string sha256_file(const std::string& path);

// Adds `create-tiny` under the CLI's `models` command (creating `models` if no one has yet):
//   aicloud models create-tiny --name NAME [--out FILE] [--seed N] [--vocab NAME|FILE]
//                              [--engine-dir DIR] [--f32] [--context N]
void add_create_tiny_command(CLI::App& app);

}  // namespace aicloud::models

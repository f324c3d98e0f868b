#include "models/tiny.h"

#include <openssl/evp.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <stdexcept>

#include "cli/errors.h"
#include "models/engine.h"
#include "models/gguf.h"

namespace aicloud::models {
namespace {

using gguf::Value;

// IEEE half from float, round to nearest even, with subnormals, infinities and NaN.
uint16_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (man ? 0x200u : 0));
  int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = man >> shift;
    uint32_t rest = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) ++half;  // may carry into the exponent: right
  return static_cast<uint16_t>(half);
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Each tensor draws from its own stream (seed and name), so its values do not depend on the order
// in which tensors are written. Uniform in [-scale, scale]: std::uniform_real_distribution is not
// the same on every standard library, these bits are.
std::vector<float> random_values(uint64_t seed, const std::string& name, uint64_t n, float scale) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  uint64_t s = seed ^ h;
  std::vector<float> v(n);
  for (auto& x : v) {
    double u = static_cast<double>(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
    x = static_cast<float>((2.0 * u - 1.0) * scale);
  }
  return v;
}

std::string encode(const std::vector<float>& v, bool f16) {
  std::string out;
  if (f16) {
    out.resize(v.size() * 2);
    for (size_t k = 0; k < v.size(); ++k) {
      uint16_t h = to_half(v[k]);
      std::memcpy(out.data() + 2 * k, &h, 2);
    }
  } else {
    out.resize(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
  }
  return out;
}

void check_spec(const TinySpec& s) {
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
  if (s.name.empty() || s.name.size() > 64) bad("name: 1 to 64 characters");
  for (char c : s.name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      bad("name: letters, digits, '-', '_' and '.' only");
    }
  }
  if (s.n_layer < 1 || s.n_layer > 64) bad("layers: 1 to 64");
  if (s.n_head < 1 || s.n_embd % s.n_head != 0) bad("n_embd must be a multiple of n_head");
  if ((s.n_embd / s.n_head) % 2 != 0) bad("the head size (n_embd / n_head) must be even (RoPE)");
  if (s.n_head_kv < 1 || s.n_head % s.n_head_kv != 0) bad("n_head must be a multiple of n_head_kv");
  if (s.n_embd < 8 || s.n_embd > 4096 || s.n_ff < 8 || s.n_ff > 16384) bad("n_embd 8-4096, n_ff 8-16384");
  if (s.n_ctx < 16 || s.n_ctx > 131072) bad("context: 16 to 131072");
}

}  // namespace

std::string sha256_file(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("sha256: init failed");
  std::vector<char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) EVP_DigestUpdate(ctx.get(), buf.data(), n);
  if (std::ferror(f.get())) throw std::runtime_error(path + ": read failed");
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned k = 0; k < len; ++k) {
    hex += kHex[md[k] >> 4];
    hex += kHex[md[k] & 15];
  }
  return hex;
}

TinyModel write_tiny_model(const TinySpec& spec, const std::string& vocab_path, const std::string& out_path) {
  check_spec(spec);
  gguf::File vocab = gguf::read(vocab_path);
  const Value* tokens = vocab.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != gguf::Type::ARRAY || tokens->elem != gguf::Type::STRING || tokens->items.empty()) {
    throw gguf::GgufError(vocab_path + ": has no tokenizer.ggml.tokens (not a vocab GGUF)");
  }
  const auto n_vocab = static_cast<uint32_t>(tokens->items.size());

  const std::string a = "llama.";
  gguf::File meta;
  meta.set("general.architecture", Value::str("llama"));
  meta.set("general.type", Value::str("model"));
  meta.set("general.name", Value::str(spec.name));
  meta.set("general.description",
           Value::str("aicloud create-tiny: random weights (seed " + std::to_string(spec.seed) +
                      ") with the tokenizer of " + std::filesystem::path(vocab_path).filename().string() +
                      "; for tests and first runs, it answers nonsense"));
  meta.set("general.file_type", Value::u32(spec.f16 ? 1 : 0));  // LLAMA_FTYPE_MOSTLY_F16 / ALL_F32
  meta.set(a + "vocab_size", Value::u32(n_vocab));
  meta.set(a + "context_length", Value::u32(spec.n_ctx));
  meta.set(a + "embedding_length", Value::u32(spec.n_embd));
  meta.set(a + "block_count", Value::u32(spec.n_layer));
  meta.set(a + "feed_forward_length", Value::u32(spec.n_ff));
  meta.set(a + "attention.head_count", Value::u32(spec.n_head));
  meta.set(a + "attention.head_count_kv", Value::u32(spec.n_head_kv));
  meta.set(a + "attention.layer_norm_rms_epsilon", Value::f32(1e-5f));
  meta.set(a + "rope.dimension_count", Value::u32(spec.n_embd / spec.n_head));
  meta.set(a + "rope.freq_base", Value::f32(10000.0f));
  // The tokenizer, as it is: tokens, scores, types, merges, special ids, chat template.
  for (const auto& [k, v] : vocab.kv) {
    if (k.rfind("tokenizer.", 0) == 0) meta.set(k, v);
  }

  gguf::Writer w(std::move(meta));
  const uint32_t ggml_type = spec.f16 ? gguf::kGgmlF16 : gguf::kGgmlF32;
  auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, float scale) {
    w.add_tensor(name, {cols, rows}, ggml_type, encode(random_values(spec.seed, name, cols * rows, scale), spec.f16));
  };
  auto norm = [&](const std::string& name) {
    w.add_tensor(name, {spec.n_embd}, gguf::kGgmlF32, encode(std::vector<float>(spec.n_embd, 1.0f), false));
  };
  const uint64_t n_embd = spec.n_embd, n_ff = spec.n_ff;
  const uint64_t n_embd_kv = n_embd / spec.n_head * spec.n_head_kv;
  auto fan_in = [](uint64_t n) { return static_cast<float>(std::sqrt(3.0 / static_cast<double>(n))); };
  matrix("token_embd.weight", n_embd, n_vocab, 1.0f);
  norm("output_norm.weight");
  matrix("output.weight", n_embd, n_vocab, fan_in(n_embd));
  for (uint32_t l = 0; l < spec.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    matrix(b + "attn_q.weight", n_embd, n_embd, fan_in(n_embd));
    matrix(b + "attn_k.weight", n_embd, n_embd_kv, fan_in(n_embd));
    matrix(b + "attn_v.weight", n_embd, n_embd_kv, fan_in(n_embd));
    matrix(b + "attn_output.weight", n_embd, n_embd, fan_in(n_embd));
    norm(b + "ffn_norm.weight");
    matrix(b + "ffn_gate.weight", n_embd, n_ff, fan_in(n_embd));
    matrix(b + "ffn_up.weight", n_embd, n_ff, fan_in(n_embd));
    matrix(b + "ffn_down.weight", n_ff, n_embd, fan_in(n_ff));
  }
  w.write(out_path);

  TinyModel m;
  m.path = out_path;
  m.bytes = std::filesystem::file_size(out_path);
  m.sha256 = sha256_file(out_path);
  m.parameters = gguf::read(out_path).parameter_count();
  m.vocab_size = n_vocab;
  m.context_length = spec.n_ctx;
  return m;
}

void add_create_tiny_command(CLI::App& app) {
  CLI::App* models = nullptr;
  try {
    models = app.get_subcommand("models");
  } catch (const CLI::OptionNotFound&) {
    models = app.add_subcommand("models", "Models: GGUF files and the registry");
    models->require_subcommand(1);
  }
  struct Opts {
    TinySpec spec;
    std::string out, vocab = "llama-spm", engine_dir;
    bool f32 = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* v = models->add_subcommand(
      "create-tiny", "Write a small Llama GGUF with random weights and a real tokenizer (tests, first runs)");
  v->add_option("--name", o->spec.name, "Model name (general.name); the file is NAME.gguf unless --out")->required();
  v->add_option("--out", o->out, "Output file (default: NAME.gguf in the current directory)");
  v->add_option("--seed", o->spec.seed, "Random seed: the same seed gives the same file (default 42)");
  v->add_option("--vocab", o->vocab,
                "Tokenizer: a vocab name of the engine (llama-spm, llama-bpe, phi-3) or a GGUF file (default llama-spm)");
  v->add_option("--context", o->spec.n_ctx, "Context length (default 512)");
  v->add_option("--engine-dir", o->engine_dir, "The llama.cpp engine dir to take the vocab from (docs/ENGINE.md)");
  v->add_flag("--f32", o->f32, "All weights in F32 (default: matrices in F16)");
  v->callback([o, &app] {
    TinySpec spec = o->spec;
    spec.f16 = !o->f32;
    std::string out = o->out.empty() ? spec.name + ".gguf" : o->out;
    std::string vocab;
    try {
      vocab = engine::find_vocab(o->vocab, o->engine_dir);
    } catch (const std::exception& e) {
      throw cli::CliError(e.what());
    }
    TinyModel m;
    try {
      m = write_tiny_model(spec, vocab, out);
    } catch (const std::invalid_argument& e) {
      throw cli::CliError(e.what(), cli::kExitUsage);
    }
    const CLI::Option* fmt = app.get_option_no_throw("--output");
    if (fmt && fmt->count() > 0 && fmt->as<std::string>() == "json") {
      nlohmann::json j = {{"name", spec.name}, {"path", std::filesystem::absolute(m.path).string()},
                          {"bytes", m.bytes}, {"sha256", m.sha256}, {"architecture", "llama"},
                          {"parameters", m.parameters}, {"context_length", m.context_length},
                          {"vocab_size", m.vocab_size}, {"vocab", vocab}, {"seed", spec.seed}};
      std::cout << j.dump(2) << "\n";
    } else {
      std::cout << "Wrote " << m.path << ": llama, " << m.parameters << " parameters, context " << m.context_length
                << ", vocab " << m.vocab_size << ", " << m.bytes << " bytes\nsha256 " << m.sha256 << "\n";
    }
  });
}

}  // namespace aicloud::models

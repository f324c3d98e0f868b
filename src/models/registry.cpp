#include "models/registry.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>

#include "models/gguf.h"
#include "util/error.h"

namespace aicloud::models {

namespace fs = std::filesystem;

bool ModelInfo::has_capability(std::string_view c) const {
  return std::find(capabilities.begin(), capabilities.end(), c) != capabilities.end();
}

ModelInfo model_from_object(const Object& o) {
  const json& d = o.data;
  ModelInfo m;
  m.registry_id = o.id;
  m.name = d.value("name", "");
  m.owner = o.org_id.empty() ? kSystemOwner : o.org_id;
  m.file = d.value("file", "");
  m.sha256 = d.value("sha256", "");
  m.size_bytes = d.value("size_bytes", uint64_t(0));
  m.architecture = d.value("architecture", "");
  m.parameter_count = d.value("parameter_count", uint64_t(0));
  m.context_length = d.value("context_length", uint64_t(0));
  m.license = d.value("license", "");
  if (d.contains("capabilities") && d["capabilities"].is_array()) {
    for (const auto& c : d["capabilities"]) {
      if (c.is_string()) m.capabilities.push_back(c.get<std::string>());
    }
  }
  m.created_at = o.created_at;
  m.created_by = d.value("created_by", "");
  return m;
}

static std::string lookup_key(const std::string& owner, const std::string& name) { return owner + "|" + name; }

std::optional<ModelInfo> find_model_of_owner(Tx& tx, const std::string& owner, const std::string& name) {
  if (owner.empty() || name.empty()) return std::nullopt;
  auto o = tx.find("model", lookup_key(owner, name));
  if (!o) return std::nullopt;
  return model_from_object(*o);
}

std::optional<ModelInfo> find_model(Tx& tx, const std::string& org_id, const std::string& name) {
  if (!org_id.empty()) {
    if (auto m = find_model_of_owner(tx, org_id, name)) return m;
  }
  return find_model_of_owner(tx, kSystemOwner, name);
}

std::optional<ModelInfo> get_model(Tx& tx, std::string_view registry_id) {
  auto o = tx.get("model", registry_id);
  if (!o) return std::nullopt;
  return model_from_object(*o);
}

std::vector<ModelInfo> all_models(Tx& tx) {
  ListQuery q;
  q.kind = "model";
  std::vector<ModelInfo> out;
  for (const auto& o : tx.all(q)) out.push_back(model_from_object(o));
  return out;
}

std::vector<ModelInfo> models_visible_to(Tx& tx, const std::string& org_id) {
  std::map<std::string, ModelInfo> by_name;
  ListQuery q;
  q.kind = "model";
  // The catalog: objects without an organization. The store's "" filter means "any", so the
  // catalog is what has no org_id among all models; org-owned ones are read by their index.
  for (const auto& o : tx.all(q)) {
    if (o.org_id.empty()) by_name.emplace(o.data.value("name", ""), model_from_object(o));
  }
  if (!org_id.empty()) {
    q.org_id = org_id;
    for (const auto& o : tx.all(q)) by_name.insert_or_assign(o.data.value("name", ""), model_from_object(o));
  }
  std::vector<ModelInfo> out;
  out.reserve(by_name.size());
  for (auto& [_, m] : by_name) out.push_back(std::move(m));
  return out;
}

json model_json(const ModelInfo& m) {
  return {{"id", m.name}, {"object", "model"}, {"created", m.created_at}, {"owned_by", m.owner}};
}

json model_admin_json(const ModelInfo& m, bool with_file) {
  json j = model_json(m);
  j["registry_id"] = m.registry_id;
  j["owner"] = m.owner;
  j["sha256"] = m.sha256;
  j["size_bytes"] = m.size_bytes;
  j["architecture"] = m.architecture;
  j["parameter_count"] = m.parameter_count;
  j["context_length"] = m.context_length ? json(m.context_length) : json(nullptr);
  j["license"] = m.license.empty() ? json(nullptr) : json(m.license);
  j["capabilities"] = m.capabilities;
  j["created_by"] = m.created_by.empty() ? json(nullptr) : json(m.created_by);
  if (with_file) j["file"] = m.file;
  return j;
}

void throw_model_not_found(const std::string& name) {
  throw ApiError(404, "invalid_request_error",
                 "The model '" + name + "' does not exist or you do not have access to it.", "model_not_found",
                 "model");
}

std::string model_in_use(Tx& tx, const ModelInfo& m) {
  ListQuery q;
  q.kind = "deployment";
  if (!m.is_system()) q.org_id = m.owner;
  std::string users;
  for (const auto& d : tx.all(q)) {
    const json& spec = d.data.contains("spec") && d.data["spec"].is_object() ? d.data["spec"] : json::object();
    if (spec.value("model_id", "") != m.registry_id) continue;
    const json& st = d.data.contains("status") ? d.data["status"] : json();
    std::string phase = st.is_object() ? st.value("phase", "") : "";
    if (phase == "deleted") continue;  // a deployment being deleted still runs its replicas until then
    users += (users.empty() ? "" : ", ") + d.id;
  }
  return users.empty() ? "" : "deployments " + users;
}

// ---- validation -------------------------------------------------------------------------------

std::string model_name_problem(std::string_view name) {
  if (name.empty()) return "The model name must not be empty.";
  if (name.size() > 128) return "The model name must be at most 128 characters.";
  int slashes = 0;
  bool part_start = true;
  for (char ch : name) {
    bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
    if (ch == '/') {
      if (part_start) return "Each '/'-separated part of a model name must start with a letter or digit.";
      if (++slashes > 1) return "A model name may contain at most one '/' (namespace/name).";
      part_start = true;
      continue;
    }
    if (!alnum && ch != '.' && ch != '_' && ch != ':' && ch != '-') {
      return "A model name may contain only letters, digits and . _ : / -";
    }
    if (part_start && !alnum) return "Each '/'-separated part of a model name must start with a letter or digit.";
    part_start = false;
  }
  if (part_start) return "A model name must not end with '/'.";
  return "";
}

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char ch : s) {
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
  }
  return true;
}

// llama.cpp's encoder-only architectures: they embed, they do not generate.
static const std::set<std::string, std::less<>> kEmbeddingArchs = {
    "bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3", "modern-bert", "t5encoder"};

GgufSummary inspect_gguf(const std::string& path) {
  gguf::File f = gguf::read(path);
  GgufSummary s;
  s.file_size = f.file_size;
  const gguf::Value* arch = f.find("general.architecture");
  if (!arch || arch->type != gguf::Type::STRING || arch->s.empty()) {
    throw gguf::GgufError(path + ": the GGUF has no general.architecture, so no engine can load it");
  }
  s.architecture = arch->s;
  if (f.tensors.empty()) {
    throw gguf::GgufError(path + ": the GGUF has no tensors (a vocabulary-only file?), so there is no model to serve");
  }
  s.parameter_count = f.parameter_count();
  if (const gguf::Value* ctx = f.find(s.architecture + ".context_length")) {
    s.context_length = ctx->as_uint();
  }
  if (const gguf::Value* lic = f.find("general.license"); lic && lic->type == gguf::Type::STRING) s.license = lic->s;
  if (const gguf::Value* n = f.find("general.name"); n && n->type == gguf::Type::STRING) s.general_name = n->s;
  s.embedding_model = kEmbeddingArchs.count(s.architecture) > 0 || f.find(s.architecture + ".pooling_type") != nullptr;
  return s;
}

std::vector<std::string> default_capabilities(const GgufSummary& s, bool embeddings_requested) {
  if (s.embedding_model) return {"embeddings"};
  std::vector<std::string> caps = {"chat", "completion"};
  if (embeddings_requested) caps.push_back("embeddings");
  return caps;
}

// ---- hashing ------------------------------------------------------------------------------------

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("sha256: cannot initialise OpenSSL's digest");
  }
}
Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t n) {
  if (n) EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n);
}

std::string Sha256::hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned k = 0; k < len; ++k) {
    out += kHex[md[k] >> 4];
    out += kHex[md[k] & 15];
  }
  return out;
}

std::string sha256_file_hex(const std::string& path, const std::function<void(uint64_t)>& on_bytes) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    h.update(buf.data(), n);
    total += n;
    if (on_bytes) on_bytes(total);
  }
  if (std::ferror(f.get())) throw std::runtime_error(path + ": read failed: " + std::strerror(errno));
  return h.hex();
}

std::string models_dir(const std::string& data_dir) { return (fs::path(data_dir) / "models").string(); }

}  // namespace aicloud::models

// The model registry: the GGUF models this cloud can serve, each a store object of kind "model".
//
// A model is known by its name (the `model` of API requests: "tiny-llama", "acme/llama-3-8b") and
// its owner: the platform's catalog ("system", visible to every organization) or one organization
// (visible only to it). A name is unique per owner; an organization's own model shadows a catalog
// model of the same name in that organization's view. The file lives once per content under
// DATA_DIR/models/<sha256>.gguf, shared by every registration of the same bytes.
//
// Store layout: kind "model", id "model_<random>" (the registry id), org_id "" for the catalog or
// the owning organization, lookup "<owner>|<name>" (unique: the per-owner name rule), parent_id
// the sha256 (so that a file is deleted only when its last registration goes).
//
// API routes: src/api/model_routes.cpp. Agents fetch files with src/agent/model_cache.h.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/store.h"
#include "util/json_util.h"

namespace aicloud::models {

inline constexpr const char* kSystemOwner = "system";

struct ModelInfo {
  std::string registry_id;      // "model_..." (the store id)
  std::string name;             // the API id
  std::string owner;            // "system" or an organization id
  std::string file;             // absolute path on the server (DATA_DIR/models/<sha256>.gguf)
  std::string sha256;           // hex, lowercase
  uint64_t size_bytes = 0;
  std::string architecture;     // general.architecture ("llama", "bert", ...)
  uint64_t parameter_count = 0; // elements of every tensor
  uint64_t context_length = 0;  // <arch>.context_length; 0 if the file does not say
  std::string license;          // "" if unknown
  std::vector<std::string> capabilities;  // of "chat", "completion", "embeddings"
  int64_t created_at = 0;
  std::string created_by;       // actor id

  bool is_system() const { return owner == kSystemOwner; }
  bool has_capability(std::string_view c) const;
};

// ---- lookups (for the gateway and deployments) -------------------------------------------------

// The models an organization may use: its own and the catalog's, sorted by name; where a name is
// both, the organization's own. org_id "" = the catalog only.
std::vector<ModelInfo> models_visible_to(Tx& tx, const std::string& org_id);
// The model `name` resolves to for org_id: its own, else the catalog's; nullopt if neither.
std::optional<ModelInfo> find_model(Tx& tx, const std::string& org_id, const std::string& name);
// Exactly the model of this owner ("system" or an org id) and name.
std::optional<ModelInfo> find_model_of_owner(Tx& tx, const std::string& owner, const std::string& name);
// By registry id ("model_...").
std::optional<ModelInfo> get_model(Tx& tx, std::string_view registry_id);
// Every registered model (the operator's list and internal scans).
std::vector<ModelInfo> all_models(Tx& tx);

ModelInfo model_from_object(const Object& o);

// OpenAI's shape: {"id": name, "object": "model", "created", "owned_by": "system" | org id}.
json model_json(const ModelInfo& m);
// OpenAI's shape plus the registry's fields: registry_id, owner, sha256, size_bytes,
// architecture, parameter_count, context_length, license, capabilities, created_by; with_file
// adds the server-side path (operator only).
json model_admin_json(const ModelInfo& m, bool with_file = false);

// The 404 for a model name, in OpenAI's words and code ("model_not_found", param "model").
[[noreturn]] void throw_model_not_found(const std::string& name);

// Why a deployment still needs this model ("deployments dep_..., dep_..."), or "" if nothing
// does: the registry refuses to delete it then (409). A "deployment" object uses the model whose
// registry id is its data["spec"]["model_id"] until its data["status"]["phase"] is "deleted".
std::string model_in_use(Tx& tx, const ModelInfo& m);

// ---- validation and inspection -----------------------------------------------------------------

// A name is 1-128 characters of [A-Za-z0-9._:/-], each '/'-separated part (at most two) starting
// with a letter or digit, so that it fits in a URL path: "" if valid, else why not.
std::string model_name_problem(std::string_view name);
bool is_sha256_hex(std::string_view s);  // 64 lowercase hex digits

inline const std::vector<std::string>& known_capabilities() {
  static const std::vector<std::string> k = {"chat", "completion", "embeddings"};
  return k;
}

// What a GGUF says about the model. Throws gguf::GgufError when the file is not a GGUF we read.
struct GgufSummary {
  std::string architecture;
  uint64_t parameter_count = 0;
  uint64_t context_length = 0;
  std::string license;
  std::string general_name;
  bool embedding_model = false;  // an encoder architecture (bert, ...) or one that declares pooling
  uint64_t file_size = 0;
};
GgufSummary inspect_gguf(const std::string& path);
// The capabilities a model gets when the request names none.
std::vector<std::string> default_capabilities(const GgufSummary& s, bool embeddings_requested);

// ---- hashing ------------------------------------------------------------------------------------

// SHA-256, fed in pieces (files of gigabytes are hashed while they stream).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex();  // finishes; call once

 private:
  void* ctx_;
};

// The SHA-256 of a file's bytes, hex; on_bytes (if set) is told the bytes read so far.
// Throws std::runtime_error naming the file.
std::string sha256_file_hex(const std::string& path, const std::function<void(uint64_t)>& on_bytes = nullptr);

// DATA_DIR/models
std::string models_dir(const std::string& data_dir);

}  // namespace aicloud::models

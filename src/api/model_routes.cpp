// The model registry's API (the registry itself: src/models/registry.h).
//
//   POST   /v1/models/import                      the operator imports a GGUF from the server's disk
//   POST   /v1/models/uploads                     start an upload (an org owner/admin, or the operator)
//   PUT    /v1/models/uploads/{id}/parts/{n}      one part: raw bytes, 8 MiB each but the last
//   POST   /v1/models/uploads/{id}/complete       size and sha256 checked, the GGUF read, registered
//   POST   /v1/models/uploads/{id}/cancel
//   GET    /v1/organization/models                what an organization may use, with the registry's fields
//   DELETE /v1/models/{id}, /v1/models/{ns}/{name}  an org owner/admin (its own), the operator (catalog)
//   GET    /admin/v1/models                       every model (the operator)
//   DELETE /admin/v1/models/{registry_id}
//   GET    /agent/v1/models/{id}                  (nodes) where to get the file: id = registry id or sha256
//   GET    /agent/v1/models/{id}/file             (nodes) the file, with Range resume
// GET /v1/models and /v1/models/{id} (OpenAI's shape) belong to the gateway, which calls
// models_visible_to() and find_model().
//
// Files are hashed, copied and checked outside any transaction (they are gigabytes: the store's
// single writer must not wait on them), so the routes that handle files are `raw` routes that
// commit their own short write transaction, with its audit record, at the end. The file is staged
// under a temporary name and renamed to DATA_DIR/models/<sha256>.gguf inside that transaction,
// and a delete unlinks an unreferenced file inside its own: the two never race.
//
// Importing a path is the operator's alone: a tenant naming files on the server's disk could read
// what is not theirs (another organization's model by its sha256) or probe which files exist.
#include <fcntl.h>
#include <sys/stat.h>
#include <strings.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "api/app.h"
#include "http/stream.h"
#include "audit/audit.h"
#include "models/gguf.h"
#include "models/registry.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/thread_name.h"
#include "util/time.h"

namespace aicloud {

namespace fs = std::filesystem;
using models::ModelInfo;

namespace {

constexpr uint64_t kPartSize = 8ull << 20;           // upload part size (the body limit is 16 MiB)
constexpr int64_t kMaxModelBytes = int64_t(1) << 42;  // 4 TiB
constexpr int64_t kUploadTtl = 24 * 3600;             // an unfinished upload is dropped after a day

struct Dirs {
  std::string models;      // DATA_DIR/models
  std::string uploads;     // DATA_DIR/models/uploads
  std::string shared_dir;  // $AICLOUD_MODELS_SHARED_DIR: where nodes see DATA_DIR/models ("" = none)
};

// ---- helpers ------------------------------------------------------------------------------------

std::string errno_text() { return std::strerror(errno); }

bool is_json_type(std::string_view v) {
  std::string_view t = v.substr(0, v.find(';'));
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
  return t.size() == 16 && strncasecmp(t.data(), "application/json", 16) == 0;
}

std::string content_type(const Context& c) {
  return std::string(c.req.field("content-type").value_or(std::string_view()));
}

// A raw route's JSON body, with the checks the App makes for ordinary routes.
json read_json(Context& c) {
  if (!c.req.body().empty() && !is_json_type(content_type(c))) {
    throw ApiError(415, "invalid_request_error",
                   "Unsupported Content-Type '" + content_type(c) + "': send the body as application/json.",
                   "unsupported_media_type");
  }
  return parse_json_body(c.req.body());
}

http::Response json_response(unsigned status, const json& body) {
  http::Response r;
  r.status = status;
  r.body = dump_json(body);
  return r;
}

// Who asked: kept for work that finishes after the request's Context is gone.
struct Caller {
  Principal who;
  std::string request_id;
};

// The audit record of a raw route's mutation, appended inside tx (as the App does for others).
void audit(const Caller& c, Tx& tx, const std::string& action, const std::string& resource, const std::string& org,
           json details) {
  AuditRecord a;
  a.ts_ms = now_ms();
  a.org_id = org;
  a.actor_type = std::string(principal_type_name(c.who.type));
  a.actor_id = c.who.actor_id;
  a.action = action;
  a.resource_id = resource;
  a.request_id = c.request_id;
  a.outcome = "success";
  a.details = std::move(details);
  audit_append(tx, a);
}

void refuse_nodes(const Context& c) {
  if (c.who().type == PrincipalType::kNode) {
    throw forbidden("Node credentials can only use the agent API (/agent/v1).", "agent_only");
  }
}

// An owner or admin of the principal's organization (the operator naming one is its owner).
void require_manager(const Principal& p) {
  if (p.type == PrincipalType::kProjectKey) {
    throw forbidden("Project API keys cannot manage models; use an admin key (sk-admin-...) or log in.",
                    "insufficient_scope");
  }
  if (!role_allows(p.role, Perm::kProjectsWrite)) {
    throw forbidden("Your role in this organization (" + std::string(role_name(p.role)) +
                    ") does not allow managing models.");
  }
}

// Heavy file work (hashing, copying: minutes for a large model) runs here, never on the server's
// io threads; the request's answer follows through an http::ResponseStream. Two at a time; the
// rest wait their turn. Destroyed with the App: work in progress stops at its next piece (503).
class FileWorkers {
 public:
  explicit FileWorkers(int n) {
    for (int k = 0; k < n; ++k) {
      threads_.emplace_back([this] {
        name_this_thread("model-files");
        loop();
      });
    }
  }
  ~FileWorkers() {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // job(stopping): stopping = the server is shutting down (answer 503 at once).
  void post(std::function<void(bool)> job) {
    {
      std::lock_guard lk(mu_);
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  bool stopping() const { return stopping_.load(); }
  void check() const {
    if (stopping_) throw ApiError(503, "server_error", "The server is shutting down; retry.", "server_shutting_down");
  }

 private:
  void loop() {
    while (true) {
      std::function<void(bool)> job;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job(stopping_);
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void(bool)>> queue_;
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> threads_;
};

// Runs work on the file workers and answers with what it returns (or the error it throws).
http::Response later(Context& c, const std::shared_ptr<FileWorkers>& workers, std::function<http::Response()> work) {
  auto stream = std::make_shared<http::ResponseStream>();
  std::string request_id = c.request_id;
  workers->post([stream, request_id, work = std::move(work), workers_raw = workers.get()](bool stopping) {
    http::Response r;
    try {
      if (stopping) workers_raw->check();
      r = work();
    } catch (const ApiError& e) {
      r = json_response(unsigned(e.status), e.to_json());
    } catch (const StoreConflict&) {
      r = json_response(409, conflict("The object was changed by another request at the same time; retry.").to_json());
    } catch (const std::exception& e) {
      spdlog::error("request {} failed: {}", request_id, e.what());
      r = json_response(500, internal_error("The server had an error while processing your request (request id " +
                                            request_id + ").")
                                 .to_json());
    }
    r.headers.emplace_back("x-request-id", request_id);
    stream->reply(std::move(r));
  });
  http::Response res;
  res.stream = stream;
  return res;
}

// Who owns what the caller registers: "system" (the operator's catalog) or the caller's
// organization (its owner or admin). `owner` is the request's field, if any.
std::string resolve_owner(Context& c, const std::optional<std::string>& owner) {
  refuse_nodes(c);
  const Principal& p = c.who();
  bool system = owner ? *owner == "system" : (p.is_operator() && p.org_id.empty());
  if (system) {
    if (!p.is_operator()) {
      throw forbidden("Only the cloud operator can add models to the platform's catalog (owner 'system'); use "
                      "owner 'organization' for your organization's own.",
                      "operator_only");
    }
    return models::kSystemOwner;
  }
  const std::string& org = c.org_id();
  require_manager(p);
  return org;
}

std::vector<std::string> read_capabilities(const json* arr, const models::GgufSummary& s) {
  if (!arr) return models::default_capabilities(s, false);
  std::vector<std::string> caps;
  for (const auto& v : *arr) {
    if (!v.is_string()) throw invalid_field("capabilities", "'capabilities' must be an array of strings.");
    std::string c = v.get<std::string>();
    const auto& known = models::known_capabilities();
    if (std::find(known.begin(), known.end(), c) == known.end()) {
      throw invalid_field("capabilities", "Unknown capability '" + c + "': use chat, completion or embeddings.");
    }
    if (std::find(caps.begin(), caps.end(), c) == caps.end()) caps.push_back(c);
  }
  if (caps.empty()) throw invalid_field("capabilities", "'capabilities' must name at least one capability.");
  return caps;
}

void check_capabilities_field(const json* arr) {
  models::GgufSummary none;
  if (arr) read_capabilities(arr, none);
}

std::string check_name(const std::string& name) {
  std::string why = models::model_name_problem(name);
  if (!why.empty()) throw invalid_field("name", why);
  return name;
}

void refuse_taken(Tx& tx, const std::string& owner, const std::string& name) {
  if (auto m = models::find_model_of_owner(tx, owner, name)) {
    throw conflict("A model named '" + name + "' already exists" +
                       (owner == models::kSystemOwner ? std::string(" in the catalog") : " in this organization") +
                       " (" + m->registry_id + "); delete it first or choose another name.",
                   "model_exists");
  }
}

uint64_t free_bytes(const std::string& dir) {
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0) return UINT64_MAX;
  return uint64_t(s.f_bavail) * s.f_frsize;
}

[[noreturn]] void insufficient_storage(uint64_t need, uint64_t have) {
  throw ApiError(507, "server_error",
                 "The server has " + std::to_string(have) + " bytes free for models, and this one needs " +
                     std::to_string(need) + ".",
                 "insufficient_storage");
}

// A file under `dir` with a fresh name, removed at destruction unless release()d.
struct StagedFile {
  std::string path;
  explicit StagedFile(const std::string& dir) : path((fs::path(dir) / (".staging-" + random_base62(16))).string()) {}
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;
  ~StagedFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
  void release() { path.clear(); }
};

// Copies src to dst, hashing as it goes; returns the sha256.
std::string copy_and_hash(const std::string& src, const std::string& dst, const FileWorkers& workers) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw invalid_field("path", "Cannot read '" + src + "' on the server: " + errno_text() + ".");
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (out < 0) {
    ::close(in);
    throw std::runtime_error("cannot create " + dst + ": " + errno_text());
  }
  models::Sha256 h;
  std::vector<char> buf(4 << 20);
  std::string err;
  while (err.empty()) {
    if (workers.stopping()) err = "the server is shutting down";
    if (!err.empty()) break;
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = "read " + src + ": " + errno_text();
    if (n <= 0) break;
    h.update(buf.data(), size_t(n));
    for (ssize_t off = 0; off < n && err.empty();) {
      ssize_t w = ::write(out, buf.data() + off, size_t(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) err = "write " + dst + ": " + errno_text();
      else off += w;
    }
  }
  if (err.empty() && ::fsync(out) != 0) err = "fsync " + dst + ": " + errno_text();
  ::close(in);
  ::close(out);
  if (!err.empty()) {
    workers.check();
    throw std::runtime_error(err);
  }
  return h.hex();
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Registers a model whose bytes are staged at `staged` (or already at the content path), inside
// the caller's write transaction: the name checked again, the file renamed into place, the object
// inserted and audited.
ModelInfo register_model(const Caller& c, Tx& tx, const Dirs& dirs, const std::string& owner, const std::string& name,
                         const std::string& sha256, uint64_t size, const models::GgufSummary& s,
                         const std::string& license, const std::vector<std::string>& caps, StagedFile* staged,
                         const std::string& source) {
  refuse_taken(tx, owner, name);
  std::string final_path = (fs::path(dirs.models) / (sha256 + ".gguf")).string();
  struct stat st {};
  bool have = ::stat(final_path.c_str(), &st) == 0 && uint64_t(st.st_size) == size;
  if (!have) {
    if (!staged || staged->path.empty()) {
      throw conflict("The model file was removed while it was being registered; retry.", "conflict");
    }
    if (::rename(staged->path.c_str(), final_path.c_str()) != 0) {
      throw std::runtime_error("cannot move the model into " + final_path + ": " + errno_text());
    }
    staged->release();
    fsync_path(dirs.models);
  }
  Object o;
  o.kind = "model";
  o.id = new_id("model_");
  o.org_id = owner == models::kSystemOwner ? "" : owner;
  o.parent_id = sha256;
  o.lookup = owner + "|" + name;
  o.data = {{"name", name},
            {"file", final_path},
            {"sha256", sha256},
            {"size_bytes", size},
            {"architecture", s.architecture},
            {"parameter_count", s.parameter_count},
            {"context_length", s.context_length},
            {"license", license.empty() ? s.license : license},
            {"capabilities", caps},
            {"created_by", c.who.actor_id},
            {"source", source}};
  tx.insert(o);
  audit(c, tx, "model.imported", o.id, o.org_id,
        {{"name", name}, {"owner", owner}, {"sha256", sha256}, {"size_bytes", size}, {"source", source}});
  return models::model_from_object(o);
}

// Removes a model object, and its file when no other registration uses it (inside tx, so that an
// import of the same bytes cannot slip between the check and the unlink).
void remove_model(Context& c, Tx& tx, const ModelInfo& m) {
  std::string users = models::model_in_use(tx, m);
  if (!users.empty()) {
    throw conflict("The model '" + m.name + "' is used by " + users + "; delete them first.", "model_in_use");
  }
  tx.remove("model", m.registry_id);
  ListQuery q;
  q.kind = "model";
  q.parent_id = m.sha256;
  if (tx.all(q).empty() && !m.file.empty()) ::unlink(m.file.c_str());
  c.audit_resource = m.registry_id;
  c.audit_org = m.is_system() ? "" : m.owner;
  c.audit_details = {{"name", m.name}, {"owner", m.owner}, {"sha256", m.sha256}};
}

json deleted_json(const ModelInfo& m) { return {{"id", m.name}, {"object", "model"}, {"deleted", true}}; }

// DELETE /v1/models/...: the caller's own scope (the operator without an organization: the catalog).
json delete_by_name(Context& c, const std::string& name) {
  refuse_nodes(c);
  const Principal& p = c.who();
  std::string owner;
  if (p.is_operator() && p.org_id.empty()) {
    owner = models::kSystemOwner;
  } else {
    owner = c.org_id();
    require_manager(p);
  }
  auto m = models::find_model_of_owner(*c.tx, owner, name);
  if (!m) {
    if (owner != models::kSystemOwner && models::find_model_of_owner(*c.tx, models::kSystemOwner, name)) {
      throw forbidden("The model '" + name + "' is in the platform's catalog; only the operator can delete it.",
                      "catalog_model");
    }
    models::throw_model_not_found(name);
  }
  remove_model(c, *c.tx, *m);
  return deleted_json(*m);
}

// ---- uploads ------------------------------------------------------------------------------------

uint64_t part_count(uint64_t bytes) { return (bytes + kPartSize - 1) / kPartSize; }

std::string part_file(const Dirs& dirs, const std::string& upload_id) {
  return (fs::path(dirs.uploads) / (upload_id + ".part")).string();
}
// One byte per part, set once the part's bytes are written: which parts arrived (a part file of
// the right size may still have holes where parts never came).
std::string parts_file(const Dirs& dirs, const std::string& upload_id) {
  return (fs::path(dirs.uploads) / (upload_id + ".parts")).string();
}

void remove_upload_files(const Dirs& dirs, const std::string& upload_id) {
  ::unlink(part_file(dirs, upload_id).c_str());
  ::unlink(parts_file(dirs, upload_id).c_str());
}

// The parts not received yet, at most `max` of them, and how many in all.
std::vector<uint64_t> missing_parts(const Dirs& dirs, const std::string& upload_id, uint64_t parts, size_t max,
                                    uint64_t* count) {
  std::string have(parts, '\0');
  int fd = ::open(parts_file(dirs, upload_id).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = ::pread(fd, have.data(), have.size(), 0);
    (void)n;
    ::close(fd);
  }
  std::vector<uint64_t> out;
  *count = 0;
  for (uint64_t k = 0; k < parts; ++k) {
    if (have[k] != 1) {
      ++*count;
      if (out.size() < max) out.push_back(k);
    }
  }
  return out;
}

json upload_json(const Object& u) {
  const json& d = u.data;
  uint64_t bytes = d.value("bytes", uint64_t(0));
  return {{"id", u.id},
          {"object", "model.upload"},
          {"name", d.value("name", "")},
          {"owner", u.org_id.empty() ? std::string(models::kSystemOwner) : u.org_id},
          {"bytes", bytes},
          {"sha256", d.value("sha256", "")},
          {"part_size", kPartSize},
          {"parts", part_count(bytes)},
          {"status", d.value("status", "pending")},
          {"model", d.value("model_registry_id", json(nullptr))},
          {"created_at", u.created_at},
          {"expires_at", d.value("expires_at", int64_t(0))}};
}

// The upload, if the caller may use it: the operator any; others their organization's (404 else).
Object visible_upload(const Principal& p, Tx& tx, std::string_view id) {
  if (p.type == PrincipalType::kNode) {
    throw forbidden("Node credentials can only use the agent API (/agent/v1).", "agent_only");
  }
  auto u = tx.get("model_upload", id);
  if (!u) throw not_found("upload", std::string(id));
  if (!p.is_operator()) {
    if (p.org_id.empty() || u->org_id != p.org_id) throw not_found("upload", std::string(id));
    require_manager(p);
  }
  return *u;
}

Object pending_upload(const Principal& p, Tx& tx, std::string_view id) {
  Object u = visible_upload(p, tx, id);
  std::string st = u.data.value("status", "pending");
  if (st != "pending") throw conflict("Upload '" + u.id + "' is " + st + ".", "upload_not_pending");
  if (u.data.value("expires_at", int64_t(0)) <= now_unix()) {
    throw conflict("Upload '" + u.id + "' has expired; start a new one.", "upload_expired");
  }
  return u;
}

// Drops uploads past their expiry and their part files (inside a write transaction).
void drop_expired_uploads(Tx& tx, const Dirs& dirs) {
  ListQuery q;
  q.kind = "model_upload";
  int64_t now = now_unix();
  for (const auto& u : tx.all(q)) {
    if (u.data.value("expires_at", int64_t(0)) > now) continue;  // finished ones too are kept a while
    remove_upload_files(dirs, u.id);
    tx.remove("model_upload", u.id);
  }
}

// "bytes=N-" or "bytes=N-M" against a file of `size` bytes: [first, last], or false when the
// header is absent. Throws 416 when it cannot be satisfied, 400 when it does not parse.
bool parse_range(std::string_view h, uint64_t size, uint64_t& first, uint64_t& last) {
  if (h.empty()) return false;
  auto bad = [&] { return bad_request("Unsupported Range header '" + std::string(h) + "': use bytes=N- or bytes=N-M.",
                                      "invalid_range"); };
  if (h.substr(0, 6) != "bytes=") throw bad();
  std::string_view spec = h.substr(6);
  auto dash = spec.find('-');
  if (dash == std::string_view::npos || dash == 0 || spec.find(',') != std::string_view::npos) throw bad();
  auto num = [&](std::string_view s, uint64_t& out) {
    if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
    out = std::stoull(std::string(s));
    return true;
  };
  if (!num(spec.substr(0, dash), first)) throw bad();
  last = size ? size - 1 : 0;
  if (dash + 1 < spec.size()) {
    uint64_t l = 0;
    if (!num(spec.substr(dash + 1), l) || l < first) throw bad();
    last = std::min(last, l);
  }
  if (first >= size) {
    ApiError e(416, "invalid_request_error",
               "The range starts at byte " + std::to_string(first) + " but the file has " + std::to_string(size) + ".",
               "range_not_satisfiable");
    throw e;
  }
  return true;
}

std::optional<ModelInfo> model_for_agent(Tx& tx, std::string_view id) {
  if (models::is_sha256_hex(id)) {
    ListQuery q;
    q.kind = "model";
    q.parent_id = std::string(id);
    auto all = tx.all(q);
    if (all.empty()) return std::nullopt;
    return models::model_from_object(all.front());
  }
  return models::get_model(tx, id);
}

// A page of models (the operator's list), filtered by ?owner= and ?name=, pages kept exact.
json admin_list(Context& c) {
  ListQuery q = list_query(c, "model");
  std::string owner(c.target.get("owner")), name(c.target.get("name"));
  if (!owner.empty() && owner != models::kSystemOwner) q.org_id = owner;
  Page out;
  while (true) {
    Page p = c.tx->list(q);
    for (auto& o : p.items) {
      if (owner == models::kSystemOwner && !o.org_id.empty()) continue;
      if (!name.empty() && o.data.value("name", "") != name) continue;
      if (out.items.size() == size_t(q.limit)) {
        out.has_more = true;
        return list_json(out, [](const Object& x) { return models::model_admin_json(models::model_from_object(x), true); });
      }
      out.items.push_back(std::move(o));
    }
    if (!p.has_more || p.items.empty()) break;
    q.after = p.items.back().id;
  }
  return list_json(out, [](const Object& x) { return models::model_admin_json(models::model_from_object(x), true); });
}

}  // namespace

void add_model_routes(App& app, const std::string& data_dir) {
  auto dirs = std::make_shared<Dirs>();
  dirs->models = fs::absolute(models::models_dir(data_dir)).lexically_normal().string();
  dirs->uploads = (fs::path(dirs->models) / "uploads").string();
  if (const char* s = std::getenv("AICLOUD_MODELS_SHARED_DIR"); s && *s) dirs->shared_dir = s;
  fs::create_directories(dirs->uploads);
  // Staging files left by a server that stopped mid-import.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dirs->models, ec)) {
    if (e.path().filename().string().rfind(".staging-", 0) == 0) fs::remove(e.path(), ec);
  }
  auto workers = std::make_shared<FileWorkers>(2);
  Store* store = &app.store();

  // ---- import a file on the server's disk (the operator).
  RouteSpec imp{"POST", "/v1/models/import", Access::kAny, false, "model.imported", nullptr};
  imp.raw = [dirs, workers, store](Context& c) {
    BodyReader b(read_json(c));
    std::string name = check_name(b.str("name", 1, 128));
    std::string path = b.str("path", 1, 4096);
    auto owner_field = b.opt_enum("owner", {"system", "organization"});
    std::string license = b.opt_str("license", 1, 256).value_or("");
    const json* caps_field = b.opt_array("capabilities");
    b.done();
    refuse_nodes(c);
    if (!c.who().is_operator()) {
      throw forbidden("Importing a file from the server's disk is for the cloud operator; upload the file instead "
                      "(POST /v1/models/uploads; `aicloud models import` does it for you).",
                      "path_import_operator_only");
    }
    std::string owner = resolve_owner(c, owner_field);
    check_capabilities_field(caps_field);
    store->read([&](Tx& tx) {
      refuse_taken(tx, owner, name);
      return 0;
    });
    if (path.front() != '/') throw invalid_field("path", "'path' must be an absolute path on the server.");
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      throw ApiError(400, "invalid_request_error", "Cannot read '" + path + "' on the server: " + errno_text() + ".",
                     "path_not_readable", "path");
    }
    if (!S_ISREG(st.st_mode)) throw invalid_field("path", "'" + path + "' is not a regular file.");
    if (::access(path.c_str(), R_OK) != 0) {
      throw ApiError(400, "invalid_request_error", "Cannot read '" + path + "' on the server: " + errno_text() + ".",
                     "path_not_readable", "path");
    }
    try {
      models::inspect_gguf(path);  // a clear 400 before any copying
    } catch (const gguf::GgufError& e) {
      throw ApiError(400, "invalid_request_error", std::string("The file is not a usable GGUF model: ") + e.what(),
                     "invalid_gguf", "path");
    }

    std::optional<json> caps_in = caps_field ? std::optional<json>(*caps_field) : std::nullopt;
    Caller who{c.who(), c.request_id};
    uint64_t size = uint64_t(st.st_size);
    FileWorkers* w = workers.get();  // jobs never own the workers (they run on them)
    return later(c, workers, [=]() {
      // Stage: a hard link when the data dir is on the same file system, else a copy (hashed as it goes).
      StagedFile staged(dirs->models);
      std::string sha;
      auto stop = [&](uint64_t) { w->check(); };
      if (::link(path.c_str(), staged.path.c_str()) == 0) {
        sha = models::sha256_file_hex(staged.path, stop);
      } else {
        uint64_t avail = free_bytes(dirs->models);
        if (avail < size) insufficient_storage(size, avail);
        sha = copy_and_hash(path, staged.path, *w);
      }
      models::GgufSummary s;
      try {
        s = models::inspect_gguf(staged.path);  // what was hashed is what is described
      } catch (const gguf::GgufError& e) {
        throw ApiError(400, "invalid_request_error", std::string("The file is not a usable GGUF model: ") + e.what(),
                       "invalid_gguf", "path");
      }
      std::vector<std::string> caps = read_capabilities(caps_in ? &*caps_in : nullptr, s);
      ModelInfo m = store->write([&](Tx& tx) {
        return register_model(who, tx, *dirs, owner, name, sha, s.file_size, s, license, caps, &staged, "import");
      });
      return json_response(201, models::model_admin_json(m, true));
    });
  };
  app.add(std::move(imp));

  // ---- uploads (an organization's owner or admin, or the operator).
  app.add({"POST", "/v1/models/uploads", Access::kAny, true, "model.upload_started", [dirs](Context& c) {
             BodyReader b(c.body);
             std::string name = check_name(b.str("name", 1, 128));
             auto bytes = b.opt_int("bytes", 1, kMaxModelBytes);
             if (!bytes) {
               throw ApiError(400, "invalid_request_error", "Missing required parameter: 'bytes'.",
                              "missing_required_parameter", "bytes");
             }
             std::string sha = b.str("sha256", 64, 64);
             std::transform(sha.begin(), sha.end(), sha.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
             auto owner_field = b.opt_enum("owner", {"system", "organization"});
             auto license = b.opt_str("license", 1, 256);
             const json* caps = b.opt_array("capabilities");
             b.done();
             if (!models::is_sha256_hex(sha)) throw invalid_field("sha256", "'sha256' must be 64 hexadecimal digits.");
             std::string owner = resolve_owner(c, owner_field);
             check_capabilities_field(caps);
             refuse_taken(*c.tx, owner, name);
             drop_expired_uploads(*c.tx, *dirs);
             uint64_t avail = free_bytes(dirs->uploads);
             if (avail < uint64_t(*bytes)) insufficient_storage(uint64_t(*bytes), avail);
             Object u;
             u.kind = "model_upload";
             u.id = new_id("upload_");
             u.org_id = owner == models::kSystemOwner ? "" : owner;
             u.data = {{"name", name}, {"bytes", *bytes}, {"sha256", sha}, {"status", "pending"},
                       {"expires_at", now_unix() + kUploadTtl}, {"created_by", c.who().actor_id}};
             if (license) u.data["license"] = *license;
             if (caps) u.data["capabilities"] = *caps;
             c.tx->insert(u);
             c.audit_resource = u.id;
             c.audit_org = u.org_id;
             c.audit_details = {{"name", name}, {"bytes", *bytes}, {"sha256", sha}};
             c.status = 201;
             return upload_json(u);
           }});

  RouteSpec part{"PUT", "/v1/models/uploads/{id}/parts/{n}", Access::kAny, false, "", nullptr};
  part.raw = [dirs, store](Context& c) {
    Object u = store->read([&](Tx& tx) { return pending_upload(c.who(), tx, c.param("id")); });
    std::string ct = content_type(c);
    std::string_view type = std::string_view(ct).substr(0, ct.find(';'));
    while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
    if (type.size() != 24 || strncasecmp(type.data(), "application/octet-stream", 24) != 0) {
      throw ApiError(415, "invalid_request_error",
                     "Unsupported Content-Type '" + ct + "': send a part as application/octet-stream.",
                     "unsupported_media_type");
    }
    uint64_t bytes = u.data.value("bytes", uint64_t(0));
    uint64_t parts = part_count(bytes);
    std::string_view ns = c.param("n");
    uint64_t n = 0;
    if (ns.empty() || ns.size() > 9 || ns.find_first_not_of("0123456789") != std::string_view::npos ||
        (n = std::stoull(std::string(ns))) >= parts) {
      throw invalid_field("n", "The part number must be an integer from 0 to " + std::to_string(parts - 1) +
                                   " (this upload has " + std::to_string(parts) + " parts of " +
                                   std::to_string(kPartSize) + " bytes, the last one shorter).");
    }
    uint64_t offset = n * kPartSize;
    uint64_t want = std::min(kPartSize, bytes - offset);
    const std::string& body = c.req.body();
    if (body.size() != want) {
      throw invalid_field("body", "Part " + std::to_string(n) + " must be " + std::to_string(want) + " bytes; got " +
                                      std::to_string(body.size()) + ".");
    }
    std::string file = part_file(*dirs, u.id);
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) throw std::runtime_error("cannot open " + file + ": " + errno_text());
    size_t done = 0;
    while (done < body.size()) {
      ssize_t w = ::pwrite(fd, body.data() + done, body.size() - done, off_t(offset + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        std::string e = errno_text();
        ::close(fd);
        if (errno == ENOSPC) insufficient_storage(want, free_bytes(dirs->uploads));
        throw std::runtime_error("cannot write " + file + ": " + e);
      }
      done += size_t(w);
    }
    ::close(fd);
    int pf = ::open(parts_file(*dirs, u.id).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    char one = 1;
    if (pf < 0 || ::pwrite(pf, &one, 1, off_t(n)) != 1) {
      if (pf >= 0) ::close(pf);
      throw std::runtime_error("cannot record part " + std::to_string(n) + " of " + u.id + ": " + errno_text());
    }
    ::close(pf);
    return json_response(200, {{"object", "model.upload.part"}, {"upload_id", u.id}, {"part", n}, {"bytes", want}});
  };
  app.add(std::move(part));

  RouteSpec complete{"POST", "/v1/models/uploads/{id}/complete", Access::kAny, false, "model.imported", nullptr};
  complete.raw = [dirs, workers, store](Context& c) {
    BodyReader(read_json(c)).done();
    Object u = store->read([&](Tx& tx) { return pending_upload(c.who(), tx, c.param("id")); });
    std::string file = part_file(*dirs, u.id);
    uint64_t bytes = u.data.value("bytes", uint64_t(0));
    uint64_t missing = 0;
    std::vector<uint64_t> first = missing_parts(*dirs, u.id, part_count(bytes), 10, &missing);
    struct stat st {};
    uint64_t have = ::stat(file.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
    if (missing > 0 || have != bytes) {
      std::string list;
      for (uint64_t k : first) list += (list.empty() ? "" : ", ") + std::to_string(k);
      throw ApiError(400, "invalid_request_error",
                     "The upload is incomplete: " + std::to_string(missing) + " of its " +
                         std::to_string(part_count(bytes)) + " parts have not arrived (" + list +
                         (missing > first.size() ? ", ..." : "") + "); send them, then complete it again.",
                     "upload_incomplete");
    }
    models::GgufSummary s;
    try {
      s = models::inspect_gguf(file);
    } catch (const gguf::GgufError& e) {
      std::string what = e.what();
      if (what.rfind(file, 0) == 0) what = "the upload" + what.substr(file.size());  // not the server's path
      throw ApiError(400, "invalid_request_error", "The uploaded file is not a usable GGUF model: " + what,
                     "invalid_gguf");
    }
    Caller who{c.who(), c.request_id};
    FileWorkers* w = workers.get();
    return later(c, workers, [=]() {
      std::string sha = models::sha256_file_hex(file, [&](uint64_t) { w->check(); });
      if (sha != u.data.value("sha256", "")) {
        throw ApiError(400, "invalid_request_error",
                       "The uploaded bytes have sha256 " + sha + ", not the " + u.data.value("sha256", "") +
                           " the upload declared; resend the parts (or start again).",
                       "sha256_mismatch", "sha256");
      }
      fsync_path(file);
      std::vector<std::string> caps =
          read_capabilities(u.data.contains("capabilities") ? &u.data["capabilities"] : nullptr, s);
      std::string owner = u.org_id.empty() ? std::string(models::kSystemOwner) : u.org_id;
      StagedFile staged(dirs->uploads);
      staged.path = file;  // renamed into place on success; dropped when the bytes were there already
      ModelInfo m;
      try {
        m = store->write([&](Tx& tx) {
          Object cur = pending_upload(who.who, tx, u.id);
          ModelInfo r = register_model(who, tx, *dirs, owner, u.data.value("name", ""), sha, bytes, s,
                                       u.data.value("license", ""), caps, &staged, "upload");
          cur.data["status"] = "completed";
          cur.data["model_registry_id"] = r.registry_id;
          tx.update(cur);
          return r;
        });
      } catch (...) {
        staged.release();  // the upload is still pending: keep its bytes
        throw;
      }
      ::unlink(parts_file(*dirs, u.id).c_str());
      return json_response(201, models::model_admin_json(m, who.who.is_operator()));
    });
  };
  app.add(std::move(complete));

  app.add({"POST", "/v1/models/uploads/{id}/cancel", Access::kAny, true, "model.upload_cancelled",
           [dirs](Context& c) {
             BodyReader(c.body).done();
             Object u = visible_upload(c.who(), *c.tx, c.param("id"));
             c.audit_resource = u.id;
             c.audit_org = u.org_id;
             if (u.data.value("status", "pending") == "pending") {
               u.data["status"] = "cancelled";
               c.tx->update(u);
               remove_upload_files(*dirs, u.id);
             }
             return upload_json(u);
           }});

  // ---- listing and deleting.
  app.add({"GET", "/v1/organization/models", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             std::string name(c.target.get("name"));
             json data = json::array();
             for (const auto& m : models::models_visible_to(*c.tx, c.org_id())) {
               if (name.empty() || m.name == name) data.push_back(models::model_admin_json(m));
             }
             return json{{"object", "list"}, {"data", data}, {"has_more", false}};
           }});
  app.add({"DELETE", "/v1/models/{id}", Access::kAny, true, "model.deleted",
           [](Context& c) { return delete_by_name(c, std::string(c.param("id"))); }});
  app.add({"DELETE", "/v1/models/{ns}/{name}", Access::kAny, true, "model.deleted", [](Context& c) {
             return delete_by_name(c, std::string(c.param("ns")) + "/" + std::string(c.param("name")));
           }});
  app.add({"GET", "/admin/v1/models", Access::kOperator, false, "", [](Context& c) { return admin_list(c); }});
  app.add({"DELETE", "/admin/v1/models/{registry_id}", Access::kOperator, true, "model.deleted", [](Context& c) {
             auto m = models::get_model(*c.tx, c.param("registry_id"));
             if (!m) throw not_found("model", std::string(c.param("registry_id")));
             remove_model(c, *c.tx, *m);
             return deleted_json(*m);
           }});

  // ---- agents: where a model's file is, and the file itself.
  // TODO(deployments): let a node read only the models of the replicas assigned to it.
  app.add({"GET", "/agent/v1/models/{id}", Access::kNode, false, "", [dirs](Context& c) {
             auto m = model_for_agent(*c.tx, c.param("id"));
             if (!m) throw not_found("model", std::string(c.param("id")));
             std::string shared =
                 dirs->shared_dir.empty() ? "" : (fs::path(dirs->shared_dir) / (m->sha256 + ".gguf")).string();
             return json{{"object", "agent.model"},
                         {"id", m->registry_id},
                         {"name", m->name},
                         {"sha256", m->sha256},
                         {"size_bytes", m->size_bytes},
                         {"shared_path", shared.empty() ? json(nullptr) : json(shared)},
                         {"download_path", "/agent/v1/models/" + m->registry_id + "/file"}};
           }});
  RouteSpec file{"GET", "/agent/v1/models/{id}/file", Access::kNode, false, "", nullptr};
  file.raw = [store](Context& c) {
    auto m = store->read([&](Tx& tx) { return model_for_agent(tx, c.param("id")); });
    if (!m) throw not_found("model", std::string(c.param("id")));
    struct stat st {};
    if (::stat(m->file.c_str(), &st) != 0) {
      throw internal_error("The file of model '" + m->name + "' is missing on the server.");
    }
    uint64_t size = uint64_t(st.st_size);
    http::Response r;
    r.content_type = "application/octet-stream";
    r.file_path = m->file;
    r.headers.emplace_back("accept-ranges", "bytes");
    r.headers.emplace_back("etag", "\"" + m->sha256 + "\"");
    r.headers.emplace_back("x-model-sha256", m->sha256);
    auto rh = c.req.field("range");
    uint64_t first = 0, last = size ? size - 1 : 0;
    bool ranged = false;
    try {
      ranged = rh && parse_range(*rh, size, first, last);
    } catch (const ApiError& e) {
      if (e.status != 416) throw;
      http::Response bad = json_response(416, e.to_json());
      bad.headers.emplace_back("content-range", "bytes */" + std::to_string(size));
      return bad;
    }
    if (ranged) {
      r.status = 206;
      r.headers.emplace_back("content-range",
                             "bytes " + std::to_string(first) + "-" + std::to_string(last) + "/" + std::to_string(size));
      r.file_offset = first;
      r.file_length = last - first + 1;
    } else {
      r.file_offset = 0;
      r.file_length = size;
    }
    return r;
  };
  app.add(std::move(file));
}

}  // namespace aicloud

// The model registry end to end: a real server process, GGUF files written with the project's
// writer, the real CLI binary, a real HTTP server with Range support (a small one in this file,
// able to cut a response short), and the agent-side cache talking to the server's agent route.
//
//   import (hard link and copy), metadata, dedupe, 409; visibility across organizations; bad input;
//   uploads (API and CLI); delete and file clean-up; the agent file route with Range; ensure_model
//   (download, no-op second call, resume, shared path, wrong sha); fetch_file resume across calls;
//   `aicloud models pull` with a dropped connection resumed, and a sha256 mismatch refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "agent/model_cache.h"
#include "identity/crypto.h"
#include "models/gguf.h"
#include "models/registry.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
namespace fs = std::filesystem;

extern char** environ;

namespace {

// A GGUF with real structure: general.* metadata, <arch>.context_length and tensors whose element
// counts add up to a known parameter count. extra_floats pads one tensor to make big files.
struct GgufSpec {
  std::string arch = "llama";
  uint32_t context = 2048;
  std::string license;  // "" = none
  uint64_t extra_floats = 0;
  uint32_t seed = 1;
};
GgufSpec spec(std::string arch, uint32_t context, std::string license, uint64_t extra_floats) {
  GgufSpec s;
  s.arch = std::move(arch);
  s.context = context;
  s.license = std::move(license);
  s.extra_floats = extra_floats;
  return s;
}
uint64_t write_gguf(const std::string& path, const GgufSpec& s) {
  gguf::File meta;
  meta.set("general.architecture", gguf::Value::str(s.arch));
  meta.set("general.name", gguf::Value::str("test model"));
  if (!s.license.empty()) meta.set("general.license", gguf::Value::str(s.license));
  meta.set(s.arch + ".context_length", gguf::Value::u32(s.context));
  gguf::Writer w(meta);
  std::mt19937 rng(s.seed);
  auto floats = [&](uint64_t n) {
    std::string b(n * 4, '\0');
    for (auto& ch : b) ch = char(rng());
    return b;
  };
  uint64_t params = 0;
  w.add_tensor("token_embd.weight", {64, 100}, gguf::kGgmlF32, floats(6400));
  params += 6400;
  w.add_tensor("output_norm.weight", {64}, gguf::kGgmlF32, floats(64));
  params += 64;
  if (s.extra_floats) {
    w.add_tensor("blk.0.ffn_up.weight", {s.extra_floats}, gguf::kGgmlF32, floats(s.extra_floats));
    params += s.extra_floats;
  }
  w.write(path);
  return params;
}

// ---- the CLI as a subprocess ----------------------------------------------------------------------

struct Result {
  int code = -1;
  std::string out, err;
};

Result run_aicloud(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
  TempDir io;
  std::string out = io.path() + "/out", err = io.path() + "/err";
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    if (kv.rfind("AICLOUD_", 0) != 0 && kv.rfind("HOME=", 0) != 0 && kv.rfind("XDG_", 0) != 0) envs.push_back(kv);
  }
  envs.push_back("HOME=" + io.path());
  envs.push_back("AICLOUD_CONFIG=" + io.path() + "/config.toml");
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<std::string> argv_s = {aicloud_binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  pid_t pid = fork();
  if (pid == 0) {
    int i = ::open("/dev/null", O_RDONLY);
    int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(i, 0);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> a, ev;
    for (auto& s : argv_s) a.push_back(s.data());
    a.push_back(nullptr);
    for (auto& s : envs) ev.push_back(s.data());
    ev.push_back(nullptr);
    execve(a[0], a.data(), ev.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  Result r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// ---- a small HTTP/1.1 file server with Range, able to cut a response short -------------------

class RangeServer {
 public:
  explicit RangeServer(std::string body) : body_(std::move(body)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 16) != 0) {
      throw std::runtime_error("RangeServer: bind/listen failed");
    }
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~RangeServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url(const std::string& path = "/model.gguf") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  // The next `n` connections (after any cuts) are closed as soon as their request has arrived.
  void drop_next(int n) {
    std::lock_guard<std::mutex> l(mu_);
    drops_ = n;
  }
  // The next `n` responses with a body stop after `at` bytes of it and close the connection.
  void cut_next(int n, size_t at) {
    std::lock_guard<std::mutex> l(mu_);
    cuts_ = n;
    cut_at_ = at;
  }
  std::vector<std::string> ranges() {
    std::lock_guard<std::mutex> l(mu_);
    return ranges_;
  }
  int requests() const { return requests_.load(); }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      handle(c);
      ::close(c);
    }
  }
  void send_all(int c, const char* d, size_t n) {
    while (n > 0) {
      ssize_t w = ::send(c, d, n, MSG_NOSIGNAL);
      if (w <= 0) return;
      d += w;
      n -= size_t(w);
    }
  }
  void handle(int c) {
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 5000) <= 0) return;
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      req.append(buf, size_t(n));
    }
    ++requests_;
    std::string first = req.substr(0, req.find("\r\n"));
    std::string range;
    std::istringstream hs(req);
    std::string line;
    while (std::getline(hs, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (strncasecmp(line.c_str(), "range:", 6) == 0) range = line.substr(line.find_first_not_of(' ', 6));
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      ranges_.push_back(range);
      if (cuts_ == 0 && drops_ > 0) {
        --drops_;
        return;
      }
    }
    if (first.find(" /model.gguf ") == std::string::npos) {
      std::string r = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found";
      send_all(c, r.data(), r.size());
      return;
    }
    size_t start = 0;
    std::string head;
    if (!range.empty()) {
      start = std::stoull(range.substr(6, range.find('-') - 6));
      if (start >= body_.size()) {
        head = "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */" + std::to_string(body_.size()) +
               "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        send_all(c, head.data(), head.size());
        return;
      }
      head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes " + std::to_string(start) + "-" +
             std::to_string(body_.size() - 1) + "/" + std::to_string(body_.size()) + "\r\n";
    } else {
      head = "HTTP/1.1 200 OK\r\n";
    }
    head += "Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nContent-Length: " +
            std::to_string(body_.size() - start) + "\r\nConnection: close\r\n\r\n";
    send_all(c, head.data(), head.size());
    size_t end = body_.size();
    {
      std::lock_guard<std::mutex> l(mu_);
      if (cuts_ > 0) {
        --cuts_;
        end = std::min(end, start + cut_at_);
      }
    }
    send_all(c, body_.data() + start, end - start);
  }

  std::string body_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::mutex mu_;
  int cuts_ = 0, drops_ = 0;
  size_t cut_at_ = 0;
  std::vector<std::string> ranges_;
};

// ---- the fixture ----------------------------------------------------------------------------------

class Models : public ::testing::Test {
 protected:
  Models() : c(srv.client()), op{*c, srv.admin_key(), ""} {
    acme = make_tenant(*c, srv.admin_key(), "acme");
    globex = make_tenant(*c, srv.admin_key(), "globex");
  }

  std::string file(const std::string& name) { return files.path() + "/" + name; }

  json import(const std::string& name, const std::string& path, unsigned want = 201, const std::string& org = "",
              json extra = json::object()) {
    Api a{*c, srv.admin_key(), org};
    json body = {{"name", name}, {"path", path}};
    body.update(extra);
    return a.post("/v1/models/import", body, want);
  }

  // A node credential, as an agent gets one when it joins.
  std::string node_key() {
    if (!node_key_.empty()) return node_key_;
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    std::string jt = op.post("/admin/v1/join_tokens", {{"region", "eu-west-1"}, {"max_uses", 0}}, 201)["token"];
    Api anon{*c, "", ""};
    node_key_ = anon.post("/agent/v1/join", {{"join_token", jt}, {"name", "node-1"}}, 201)["node_key"];
    return node_key_;
  }

  std::map<std::string, std::string> cli_env(const std::string& key, const std::string& org = "") {
    std::map<std::string, std::string> e = {{"AICLOUD_URL", srv.url()}, {"AICLOUD_API_KEY", key},
                                            {"AICLOUD_CACHE_DIR", cache.path()}};
    if (!org.empty()) e["AICLOUD_ORG"] = org;
    return e;
  }

  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  Api op;
  Tenant acme, globex;
  TempDir files, cache;
  std::string node_key_;
};

// ---- import and metadata ----------------------------------------------------------------------

TEST_F(Models, ImportRecordsTheFilesMetadataAndStoresItByContent) {
  std::string path = file("tiny.gguf");
  uint64_t params = write_gguf(path, spec("llama", 4096, "apache-2.0", 0));
  std::string sha = models::sha256_file_hex(path);

  json m = import("tiny-llama", path);
  EXPECT_EQ(m["id"], "tiny-llama");
  EXPECT_EQ(m["object"], "model");
  EXPECT_EQ(m["owned_by"], "system");
  EXPECT_EQ(m["owner"], "system");
  EXPECT_EQ(m["architecture"], "llama");
  EXPECT_EQ(m["context_length"], 4096);
  EXPECT_EQ(m["parameter_count"], params);
  EXPECT_EQ(m["sha256"], sha);
  EXPECT_EQ(m["size_bytes"], fs::file_size(path));
  EXPECT_EQ(m["license"], "apache-2.0");
  EXPECT_EQ(m["capabilities"], json({"chat", "completion"}));
  EXPECT_TRUE(m["registry_id"].get<std::string>().rfind("model_", 0) == 0);
  std::string stored = srv.data_dir() + "/models/" + sha + ".gguf";
  EXPECT_EQ(fs::canonical(m["file"].get<std::string>()), fs::canonical(stored));
  EXPECT_EQ(models::sha256_file_hex(stored), sha);

  // The same name again: 409.
  auto raw = c->request("POST", "/v1/models/import", json{{"name", "tiny-llama"}, {"path", path}}.dump(),
                        {{"Authorization", "Bearer " + srv.admin_key()}, {"x-request-id", "req-import-1"}});
  EXPECT_EQ(raw.status, 409u);
  EXPECT_EQ(raw.header("x-request-id"), "req-import-1");
  json dup = import("tiny-llama", path, 409);
  EXPECT_EQ(dup["error"]["code"], "model_exists");
  json again = import("tiny-llama-2", path, 201, "", {{"license", "mit"}, {"capabilities", {"completion"}}});
  EXPECT_EQ(again["file"], m["file"]);
  EXPECT_EQ(again["license"], "mit");
  EXPECT_EQ(again["capabilities"], json({"completion"}));

  // The operator's list has both, with filters and paging.
  json all = op.get("/admin/v1/models");
  EXPECT_EQ(all["data"].size(), 2u);
  json one = op.get("/admin/v1/models?name=tiny-llama-2");
  ASSERT_EQ(one["data"].size(), 1u);
  EXPECT_EQ(one["data"][0]["registry_id"], again["registry_id"]);
  json page = op.get("/admin/v1/models?limit=1");
  EXPECT_EQ(page["data"].size(), 1u);
  EXPECT_TRUE(page["has_more"]);

  // Deleting one keeps the shared file; deleting the last removes it.
  op.del("/v1/models/tiny-llama");
  EXPECT_TRUE(fs::exists(stored));
  json d = op.del("/admin/v1/models/" + again["registry_id"].get<std::string>());
  EXPECT_EQ(d["deleted"], true);
  EXPECT_FALSE(fs::exists(stored));
  EXPECT_TRUE(fs::exists(path));  // the user's file is theirs
  EXPECT_EQ(op.del("/v1/models/tiny-llama", 404)["error"]["code"], "model_not_found");

  // Audited, and the chain holds.
  int imported = 0, deleted = 0;
  json logs = op.get("/admin/v1/audit_logs?limit=100");
  for (const auto& r : logs["data"]) {
    imported += r["type"] == "model.imported" && r["outcome"] == "success";
    deleted += r["type"] == "model.deleted" && r["outcome"] == "success";
  }
  EXPECT_EQ(imported, 2);
  EXPECT_EQ(deleted, 2);
  EXPECT_EQ(op.get("/admin/v1/audit_logs/verify")["ok"], true);
}

TEST_F(Models, ImportCopiesAcrossFileSystemsAndKnowsEmbeddingModels) {
  std::error_code ec;
  std::string dir = "/dev/shm/aicloud-models-test-" + std::to_string(getpid());
  bool shm = fs::create_directories(dir, ec) && !ec;
  std::string path = shm ? dir + "/bert.gguf" : file("bert.gguf");
  write_gguf(path, spec("bert", 512, "", 0));
  json m = import("acme/embedder", path);
  EXPECT_EQ(m["id"], "acme/embedder");
  EXPECT_EQ(m["architecture"], "bert");
  EXPECT_EQ(m["capabilities"], json({"embeddings"}));
  std::string stored = m["file"];
  EXPECT_EQ(models::sha256_file_hex(stored), models::sha256_file_hex(path));
  struct stat a {}, b {};
  stat(path.c_str(), &a);
  stat(stored.c_str(), &b);
  if (shm) {
    EXPECT_NE(a.st_ino, b.st_ino);  // a copy, not a link
  }
  if (shm) fs::remove_all(dir, ec);
  // A name with a namespace is deleted through /v1/models/{ns}/{name}.
  EXPECT_EQ(op.del("/v1/models/acme/embedder")["id"], "acme/embedder");
  // Percent-encoded too.
  write_gguf(file("b2.gguf"), spec("bert", 2048, "", 0));
  // (The answer comes from the file workers, off the io threads: it keeps the request id.)
  auto raw = c->request("POST", "/v1/models/import", json{{"name", "acme/embedder"}, {"path", file("b2.gguf")}}.dump(),
                        {{"Authorization", "Bearer " + srv.admin_key()}, {"x-request-id", "req-import-1"}});
  EXPECT_EQ(raw.status, 201u) << raw.body;
  EXPECT_EQ(raw.header("x-request-id"), "req-import-1");
  EXPECT_EQ(op.del("/v1/models/acme%2Fembedder")["id"], "acme/embedder");
}

TEST_F(Models, OrganizationModelsAreInvisibleToOtherOrganizations) {
  std::string path = file("m.gguf");
  write_gguf(path, {});
  import("catalog-model", path);
  json own = import("private-model", path, 201, acme.org_id, {{"owner", "organization"}});
  EXPECT_EQ(own["owner"], acme.org_id);
  EXPECT_EQ(own["owned_by"], acme.org_id);

  Api acme_admin{*c, acme.admin_key, ""}, globex_admin{*c, globex.admin_key, ""};
  auto names = [](const json& list) {
    std::set<std::string> s;
    for (const auto& m : list["data"]) s.insert(m["id"]);
    return s;
  };
  EXPECT_EQ(names(acme_admin.get("/v1/organization/models")), (std::set<std::string>{"catalog-model", "private-model"}));
  EXPECT_EQ(names(globex_admin.get("/v1/organization/models")), (std::set<std::string>{"catalog-model"}));
  EXPECT_EQ(globex_admin.get("/v1/organization/models?name=private-model")["data"].size(), 0u);

  // Another organization's model is a 404, never a 403; the catalog is the operator's to delete.
  EXPECT_EQ(globex_admin.del("/v1/models/private-model", 404)["error"]["code"], "model_not_found");
  EXPECT_EQ(globex_admin.del("/v1/models/catalog-model", 403)["error"]["code"], "catalog_model");
  // The same name in an organization shadows the catalog's in its view.
  json shadow = import("catalog-model", path, 201, globex.org_id, {{"owner", "organization"}});
  json gl = globex_admin.get("/v1/organization/models?name=catalog-model");
  ASSERT_EQ(gl["data"].size(), 1u);
  EXPECT_EQ(gl["data"][0]["owner"], globex.org_id);
  EXPECT_EQ(globex_admin.del("/v1/models/catalog-model")["deleted"], true);
  // A project key cannot delete; the owning org's admin can.
  Api acme_proj{*c, acme.project_key, ""};
  EXPECT_EQ(acme_proj.del("/v1/models/private-model", 403)["error"]["type"], "permission_error");
  EXPECT_EQ(acme_admin.del("/v1/models/private-model")["deleted"], true);
  EXPECT_EQ(names(acme_admin.get("/v1/organization/models")), (std::set<std::string>{"catalog-model"}));
}

TEST_F(Models, BadImportsAreRefusedWithTheReason) {
  std::string junk = file("junk.gguf");
  std::ofstream(junk) << "this is not a model, just some text that is long enough to have a header";
  json e = import("junk", junk, 400);
  EXPECT_EQ(e["error"]["code"], "invalid_gguf");
  EXPECT_EQ(e["error"]["param"], "path");
  EXPECT_NE(e["error"]["message"].get<std::string>().find("GGUF"), std::string::npos) << e.dump();

  std::string truncated = file("trunc.gguf");
  write_gguf(truncated, {});
  fs::resize_file(truncated, 100);
  e = import("trunc", truncated, 400);
  EXPECT_EQ(e["error"]["code"], "invalid_gguf");

  std::string good = file("good.gguf");
  write_gguf(good, {});
  for (std::string bad : std::vector<std::string>{"", "has space", "/leading", "trailing/", "a/b/c", "-dash", "x?y", std::string(129, 'a')}) {
    e = import(bad, good, 400);
    EXPECT_EQ(e["error"]["param"], "name") << bad << " " << e.dump();
  }
  EXPECT_EQ(import("ok", "relative/path.gguf", 400)["error"]["param"], "path");
  EXPECT_EQ(import("ok", file("missing.gguf"), 400)["error"]["code"], "path_not_readable");
  EXPECT_EQ(import("ok", files.path(), 400)["error"]["param"], "path");
  EXPECT_EQ(import("ok", good, 400, "", {{"capabilities", {"dance"}}})["error"]["param"], "capabilities");
  EXPECT_EQ(import("ok", good, 400, "", {{"colour", "red"}})["error"]["code"], "unknown_parameter");
  // Path imports are the operator's; an org admin is pointed at uploads.
  Api acme_admin{*c, acme.admin_key, ""};
  EXPECT_EQ(acme_admin.post("/v1/models/import", {{"name", "x"}, {"path", good}}, 403)["error"]["code"],
            "path_import_operator_only");
  EXPECT_EQ(acme_admin.post("/v1/models/uploads", {{"name", "x"}, {"bytes", 10}, {"sha256", std::string(64, 'a')},
                                                   {"owner", "system"}},
                            403)["error"]["code"],
            "operator_only");
  // A form body is refused.
  auto r = c->request("POST", "/v1/models/import", "name=x", {{"Authorization", "Bearer " + srv.admin_key()},
                                                                {"Content-Type", "text/plain"}});
  EXPECT_EQ(r.status, 415u);
  EXPECT_EQ(op.get("/admin/v1/models")["data"].size(), 0u);
}

// ---- uploads ----------------------------------------------------------------------------------------

TEST_F(Models, UploadsInPartsAreCheckedAndRegistered) {
  std::string path = file("big.gguf");
  uint64_t params = write_gguf(path, spec("llama", 2048, "", 2'300'000));  // ~9.2 MB: two parts
  std::string bytes = slurp(path), sha = models::sha256_file_hex(path);
  Api admin{*c, acme.admin_key, ""};
  auto hdr = [&](const std::string& ct) {
    return std::vector<std::pair<std::string, std::string>>{{"Authorization", "Bearer " + acme.admin_key},
                                                            {"Content-Type", ct}};
  };
  json up = admin.post("/v1/models/uploads", {{"name", "uploaded"}, {"bytes", bytes.size()}, {"sha256", sha}}, 201);
  std::string base = "/v1/models/uploads/" + up["id"].get<std::string>();
  ASSERT_EQ(up["parts"], 2);
  size_t part = up["part_size"];
  // Wrong type, wrong size, out of range; another organization cannot see it.
  EXPECT_EQ(c->request("PUT", base + "/parts/0", bytes.substr(0, part), hdr("application/json")).status, 415u);
  EXPECT_EQ(c->request("PUT", base + "/parts/0", bytes.substr(0, 10), hdr("application/octet-stream")).status, 400u);
  EXPECT_EQ(c->request("PUT", base + "/parts/2", bytes.substr(part), hdr("application/octet-stream")).status, 400u);
  auto other = c->request("PUT", base + "/parts/0", bytes.substr(0, part),
                          {{"Authorization", "Bearer " + globex.admin_key}, {"Content-Type", "application/octet-stream"}});
  EXPECT_EQ(other.status, 404u);
  // Complete before every byte is there: 400, nothing registered.
  ASSERT_EQ(c->request("PUT", base + "/parts/1", bytes.substr(part), hdr("application/octet-stream")).status, 200u);
  EXPECT_EQ(admin.post(base + "/complete", json::object(), 400)["error"]["code"], "upload_incomplete");
  // A corrupted part: the sha256 check refuses it; resending the part fixes it.
  std::string bad = bytes.substr(0, part);
  bad[part / 2] ^= 1;
  ASSERT_EQ(c->request("PUT", base + "/parts/0", bad, hdr("application/octet-stream")).status, 200u);
  EXPECT_EQ(admin.post(base + "/complete", json::object(), 400)["error"]["code"], "sha256_mismatch");
  ASSERT_EQ(c->request("PUT", base + "/parts/0", bytes.substr(0, part), hdr("application/octet-stream")).status, 200u);
  json m = admin.post(base + "/complete", json::object(), 201);
  EXPECT_EQ(m["id"], "uploaded");
  EXPECT_EQ(m["owner"], acme.org_id);
  EXPECT_EQ(m["sha256"], sha);
  EXPECT_EQ(m["parameter_count"], params);
  EXPECT_FALSE(m.contains("file"));  // the server's paths are the operator's business
  EXPECT_EQ(admin.post(base + "/complete", json::object(), 409)["error"]["code"], "upload_not_pending");
  EXPECT_EQ(models::sha256_file_hex(srv.data_dir() + "/models/" + sha + ".gguf"), sha);
  // An upload of something that is not a GGUF is refused at completion.
  std::string junk(1000, 'x');
  json up2 = admin.post("/v1/models/uploads",
                        {{"name", "junk"}, {"bytes", junk.size()}, {"sha256", sha256_hex(junk)}}, 201);
  std::string base2 = "/v1/models/uploads/" + up2["id"].get<std::string>();
  ASSERT_EQ(c->request("PUT", base2 + "/parts/0", junk, hdr("application/octet-stream")).status, 200u);
  json e = admin.post(base2 + "/complete", json::object(), 400);
  EXPECT_EQ(e["error"]["code"], "invalid_gguf");
  EXPECT_EQ(e["error"]["message"].get<std::string>().find(srv.data_dir()), std::string::npos);
  EXPECT_EQ(admin.post(base2 + "/cancel", json::object())["status"], "cancelled");
}

// ---- agents ----------------------------------------------------------------------------------------

TEST_F(Models, AgentsDownloadTheFileWithRanges) {
  std::string path = file("m.gguf");
  write_gguf(path, spec("llama", 2048, "", 50'000));
  std::string bytes = slurp(path);
  json m = import("m", path);
  std::string key = node_key();
  std::string id = m["registry_id"], sha = m["sha256"];
  auto get = [&](const std::string& p, std::vector<std::pair<std::string, std::string>> h = {}) {
    h.emplace_back("Authorization", "Bearer " + key);
    return c->request("GET", p, "", h);
  };
  json meta = json::parse(get("/agent/v1/models/" + id).body);
  EXPECT_EQ(meta["sha256"], sha);
  EXPECT_EQ(meta["size_bytes"], bytes.size());
  EXPECT_TRUE(meta["shared_path"].is_null());
  EXPECT_EQ(json::parse(get("/agent/v1/models/" + sha).body)["id"], id);  // by content too

  auto whole = get("/agent/v1/models/" + id + "/file");
  ASSERT_EQ(whole.status, 200u);
  EXPECT_EQ(whole.body, bytes);
  EXPECT_EQ(whole.header("accept-ranges"), "bytes");
  EXPECT_EQ(whole.header("content-type"), "application/octet-stream");

  auto tail = get("/agent/v1/models/" + id + "/file", {{"Range", "bytes=1000-"}});
  ASSERT_EQ(tail.status, 206u);
  EXPECT_EQ(tail.body, bytes.substr(1000));
  EXPECT_EQ(tail.header("content-range"), "bytes 1000-" + std::to_string(bytes.size() - 1) + "/" + std::to_string(bytes.size()));
  auto mid = get("/agent/v1/models/" + id + "/file", {{"Range", "bytes=10-19"}});
  ASSERT_EQ(mid.status, 206u);
  EXPECT_EQ(mid.body, bytes.substr(10, 10));
  auto past = get("/agent/v1/models/" + id + "/file", {{"Range", "bytes=" + std::to_string(bytes.size()) + "-"}});
  EXPECT_EQ(past.status, 416u);
  EXPECT_EQ(past.header("content-range"), "bytes */" + std::to_string(bytes.size()));
  EXPECT_EQ(get("/agent/v1/models/" + id + "/file", {{"Range", "lines=1-"}}).status, 400u);
  EXPECT_EQ(get("/agent/v1/models/model_nope/file").status, 404u);
  // Only nodes.
  auto tenant = c->request("GET", "/agent/v1/models/" + id + "/file", "", {{"Authorization", "Bearer " + acme.admin_key}});
  EXPECT_EQ(tenant.status, 403u);
  EXPECT_EQ(c->request("GET", "/agent/v1/models/" + id + "/file").status, 401u);
}

TEST_F(Models, EnsureModelCachesVerifiesAndResumes) {
  std::string path = file("m.gguf");
  write_gguf(path, spec("llama", 2048, "", 400'000));  // 1.6 MB
  std::string bytes = slurp(path);
  json m = import("m", path);
  std::string id = m["registry_id"], sha = m["sha256"], key = node_key();
  TempDir work;
  std::string cache_dir = work.path() + "/models";

  // A partial download from before (half the file) is resumed, not fetched again.
  fs::create_directories(cache_dir);
  std::string final_path = cache_dir + "/" + sha + ".gguf";
  std::ofstream(final_path + ".partial", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  std::ofstream(final_path + ".partial.json")
      << json{{"url", srv.url() + "/agent/v1/models/" + id + "/file"}, {"etag", "\"" + sha + "\""}}.dump();
  uint64_t resumed = 0, last = 0;
  std::string got = ensure_model(srv.url(), key, id, sha, cache_dir, [&](const FetchProgress& p) {
    resumed = p.resumed_from;
    last = p.done;
  });
  EXPECT_EQ(got, final_path);
  EXPECT_EQ(resumed, bytes.size() / 2);
  EXPECT_EQ(last, bytes.size());
  EXPECT_EQ(slurp(got), bytes);
  EXPECT_FALSE(fs::exists(final_path + ".partial"));
  EXPECT_FALSE(fs::exists(final_path + ".partial.json"));

  // A second call does not ask the server (it is down).
  EXPECT_EQ(srv.stop_graceful(), 0);
  EXPECT_EQ(ensure_model(srv.url(), key, id, sha, cache_dir), final_path);
  EXPECT_THROW(ensure_model(srv.url(), key, id, std::string(64, 'b'), cache_dir), std::runtime_error);
  EXPECT_THROW(ensure_model(srv.url(), key, id, "not-a-sha", cache_dir), std::invalid_argument);
}

TEST_F(Models, EnsureModelFromSeveralThreadsDownloadsOnce) {
  std::string path = file("m.gguf");
  write_gguf(path, spec("llama", 2048, "", 300'000));
  json m = import("m", path);
  std::string id = m["registry_id"], sha = m["sha256"], key = node_key();
  TempDir work;
  std::atomic<int> downloads_started{0};
  std::vector<std::string> got(4);
  std::vector<std::thread> ts;
  for (size_t k = 0; k < got.size(); ++k) {
    ts.emplace_back([&, k] {
      bool counted = false;
      got[k] = ensure_model(srv.url(), key, id, sha, work.path(), [&](const FetchProgress&) {
        if (!counted) ++downloads_started;
        counted = true;
      });
    });
  }
  for (auto& t : ts) t.join();
  for (const auto& g : got) EXPECT_EQ(g, work.path() + "/" + sha + ".gguf");
  EXPECT_EQ(downloads_started.load(), 1);
  EXPECT_EQ(models::sha256_file_hex(got[0]), sha);
}

TEST_F(Models, EnsureModelRefusesAWrongFile) {
  std::string path = file("m.gguf");
  write_gguf(path, spec("llama", 2048, "", 1000));
  json m = import("m", path);
  std::string id = m["registry_id"], sha = m["sha256"], key = node_key();
  TempDir work;
  // The server's record and the sha asked for disagree: refused, nothing cached.
  std::string other(64, 'c');
  try {
    ensure_model(srv.url(), key, id, other, work.path());
    ADD_FAILURE() << "expected a failure";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("sha256"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(work.path() + "/" + other + ".gguf"));
  // The bytes differ from the sha256 (a file corrupted on the server): the download is refused and deleted.
  {
    std::fstream f(m["file"].get<std::string>(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  try {
    ensure_model(srv.url(), key, id, sha, work.path());
    ADD_FAILURE() << "expected a sha256 mismatch";
  } catch (const FetchError& e) {
    EXPECT_NE(std::string(e.what()).find("sha256 mismatch"), std::string::npos) << e.what();
    EXPECT_FALSE(e.partial_kept);
  }
  EXPECT_FALSE(fs::exists(work.path() + "/" + sha + ".gguf"));
  EXPECT_FALSE(fs::exists(work.path() + "/" + sha + ".gguf.partial"));
}

TEST(ModelsShared, EnsureModelUsesTheSharedPathWhenTheNodeCanReadIt) {
  // The shared dir is where nodes mount the server's DATA_DIR/models (NFS, say); here the test
  // puts the file there itself.
  TempDir files, shared_dir;
  ServerProcess srv({}, {{"AICLOUD_MODELS_SHARED_DIR", shared_dir.path()}});
  auto c = srv.client();
  Api op{*c, srv.admin_key(), ""};
  std::string path = files.path() + "/m.gguf";
  write_gguf(path, {});
  json m = op.post("/v1/models/import", {{"name", "m"}, {"path", path}}, 201);
  std::string id = m["registry_id"], sha = m["sha256"];
  op.post("/admin/v1/regions", {{"id", "r1"}, {"jurisdiction", "EU"}}, 201);
  std::string jt = op.post("/admin/v1/join_tokens", {{"region", "r1"}}, 201)["token"];
  Api anon{*c, "", ""};
  std::string key = anon.post("/agent/v1/join", {{"join_token", jt}, {"name", "n"}}, 201)["node_key"];
  auto meta = json::parse(c->request("GET", "/agent/v1/models/" + id, "", {{"Authorization", "Bearer " + key}}).body);
  std::string shared = shared_dir.path() + "/" + sha + ".gguf";
  EXPECT_EQ(meta["shared_path"], shared);

  // Not there (the mount is missing): the node downloads into its cache.
  TempDir work1;
  EXPECT_EQ(ensure_model(srv.url(), key, id, sha, work1.path()), work1.path() + "/" + sha + ".gguf");
  // There: used in place, nothing downloaded.
  fs::copy_file(path, shared);
  TempDir work2;
  EXPECT_EQ(ensure_model(srv.url(), key, id, sha, work2.path()), shared);
  EXPECT_FALSE(fs::exists(work2.path() + "/" + sha + ".gguf"));
  // By sha256 alone (no registry id).
  EXPECT_EQ(ensure_model(srv.url(), key, "", sha, work2.path()), shared);
}

TEST(ModelsFetch, FetchFileResumesAcrossCallsAndFollowsTheServer) {
  std::string body(3'000'000, '\0');
  std::mt19937 rng(7);
  for (auto& ch : body) ch = char(rng());
  RangeServer web(body);
  TempDir dir;
  std::string dest = dir.path() + "/out.bin";
  FetchOptions o;
  o.expected_sha256 = sha256_hex(body);
  o.max_attempts = 1;
  o.retry_backoff = std::chrono::milliseconds(10);
  // The first call's connection breaks after 1 MB and the server is then unreachable: with one
  // fruitless attempt allowed, the call gives up and keeps the bytes.
  web.cut_next(1, 1'000'000);
  web.drop_next(1);
  try {
    fetch_file(web.url(), dest, o);
    ADD_FAILURE() << "expected the cut to fail the fetch";
  } catch (const FetchError& e) {
    EXPECT_TRUE(e.partial_kept) << e.what();
  }
  EXPECT_EQ(fs::file_size(dest + ".partial"), 1'000'000u);
  // The next call continues from there.
  FetchResult r = fetch_file(web.url(), dest, o);
  EXPECT_EQ(r.resumed_from, 1'000'000u);
  EXPECT_EQ(r.sha256, o.expected_sha256);
  EXPECT_EQ(slurp(dest), body);
  EXPECT_EQ(web.ranges().back(), "bytes=1000000-");
  // 404 is final and clear.
  try {
    fetch_file(web.url("/missing"), dir.path() + "/x", o);
    ADD_FAILURE();
  } catch (const FetchError& e) {
    EXPECT_EQ(e.http_status, 404u);
  }
  // Within one call, a dropped connection is resumed at once.
  o.max_attempts = 3;
  web.cut_next(2, 700'000);
  std::string dest2 = dir.path() + "/out2.bin";
  r = fetch_file(web.url(), dest2, o);
  EXPECT_EQ(slurp(dest2), body);
  auto ranges = web.ranges();
  ASSERT_GE(ranges.size(), 3u);
  EXPECT_EQ(ranges[ranges.size() - 3], "");
  EXPECT_EQ(ranges[ranges.size() - 2], "bytes=700000-");
  EXPECT_EQ(ranges[ranges.size() - 1], "bytes=1400000-");
}

// ---- the CLI --------------------------------------------------------------------------------------

TEST_F(Models, CliImportsListsGetsAndDeletes) {
  std::string path = file("cli.gguf");
  write_gguf(path, spec("llama", 1024, "", 0));
  // The operator on this machine: sent by path.
  Result r = run_aicloud({"models", "import", path, "--name", "cli-model", "-o", "json"}, cli_env(srv.admin_key()));
  ASSERT_EQ(r.code, 0) << r.err;
  json m = json::parse(r.out);
  EXPECT_EQ(m["context_length"], 1024);
  EXPECT_NE(r.err.find("on the server"), std::string::npos) << r.err;

  // An organization's admin: uploaded (the server never reads its paths).
  r = run_aicloud({"models", "import", path, "--name", "acme/mine"}, cli_env(acme.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("uploading"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find(acme.org_id), std::string::npos) << r.out;

  r = run_aicloud({"models", "list"}, cli_env(acme.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("cli-model"), std::string::npos);
  EXPECT_NE(r.out.find("acme/mine"), std::string::npos);
  r = run_aicloud({"models", "list"}, cli_env(globex.admin_key));
  EXPECT_EQ(r.out.find("acme/mine"), std::string::npos);
  r = run_aicloud({"models", "list", "-o", "json"}, cli_env(srv.admin_key()));
  EXPECT_EQ(json::parse(r.out)["data"].size(), 2u);

  r = run_aicloud({"models", "get", "acme/mine", "-o", "json"}, cli_env(acme.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["sha256"], m["sha256"]);
  r = run_aicloud({"models", "get", "acme/mine"}, cli_env(globex.admin_key));
  EXPECT_EQ(r.code, 1);

  r = run_aicloud({"models", "delete", "acme/mine"}, cli_env(acme.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_aicloud({"models", "delete", "cli-model"}, cli_env(acme.admin_key));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("catalog"), std::string::npos) << r.err;

  // Not a GGUF: refused before anything is sent.
  std::ofstream(file("junk.gguf")) << "junk";
  r = run_aicloud({"models", "import", file("junk.gguf"), "--name", "junk"}, cli_env(srv.admin_key()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not a GGUF"), std::string::npos) << r.err;
}

TEST_F(Models, CliPullResumesADroppedDownloadAndRefusesAWrongSha) {
  std::string path = file("remote.gguf");
  write_gguf(path, spec("llama", 2048, "", 600'000));  // 2.4 MB
  std::string bytes = slurp(path), sha = models::sha256_file_hex(path);
  RangeServer web(bytes);

  // The connection drops after 1 MB; the pull continues where it stopped and imports.
  web.cut_next(1, 1'000'000);
  Result r = run_aicloud({"models", "pull", web.url(), "--name", "pulled", "--sha256", sha, "-o", "json"},
                         cli_env(srv.admin_key()));
  ASSERT_EQ(r.code, 0) << r.err;
  json m = json::parse(r.out);
  EXPECT_EQ(m["sha256"], sha);
  EXPECT_EQ(m["id"], "pulled");
  auto ranges = web.ranges();
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[1], "bytes=1000000-");
  EXPECT_NE(r.err.find("downloading"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(100%)"), std::string::npos) << r.err;  // plain progress lines off a terminal
  EXPECT_NE(r.err.find("verified"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(cache.path() + "/downloads"));  // the download is the server's now

  // A wrong sha256: refused with a clear message, nothing kept, nothing registered.
  std::string wrong = std::string(63, '0') + "1";
  r = run_aicloud({"models", "pull", web.url(), "--name", "pulled-2", "--sha256", wrong}, cli_env(srv.admin_key()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("sha256 mismatch"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(cache.path() + "/downloads"));
  EXPECT_EQ(op.get("/admin/v1/models?name=pulled-2")["data"].size(), 0u);

  // Unreachable, and a bad URL.
  r = run_aicloud({"models", "pull", web.url("/missing"), "--name", "x"}, cli_env(srv.admin_key()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("404"), std::string::npos) << r.err;
  r = run_aicloud({"models", "pull", "ftp://example/x.gguf", "--name", "x"}, cli_env(srv.admin_key()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("http://"), std::string::npos) << r.err;
}

}  // namespace

namespace {

// HTTPS: a real TLS server (Python's, with a certificate made by openssl for this test) whose
// certificate is refused until SSL_CERT_FILE names it. Skipped where either tool is missing.
TEST(ModelsFetch, HttpsIsVerifiedAgainstTrustedCertificates) {
  if (std::system("command -v openssl >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "openssl or python3 is missing";
  }
  TempDir d;
  std::string dir = d.path();
  ASSERT_EQ(std::system(("cd " + dir + " && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem "
                         "-days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
                         ">/dev/null 2>&1").c_str()),
            0);
  std::string body(500'000, '\0');
  std::mt19937 rng(3);
  for (auto& ch : body) ch = char(rng());
  std::ofstream(dir + "/f.bin", std::ios::binary) << body;
  std::ofstream(dir + "/srv.py") << "import http.server, ssl\n"
                                    "h = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n"
                                    "c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
                                    "c.load_cert_chain('cert.pem', 'key.pem')\n"
                                    "h.socket = c.wrap_socket(h.socket, server_side=True)\n"
                                    "print(h.server_address[1], flush=True)\n"
                                    "h.serve_forever()\n";
  pid_t pid = fork();
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(127);
    int o = ::open("port", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = ::open("/dev/null", O_WRONLY);
    dup2(o, 1);
    dup2(e, 2);
    execlp("python3", "python3", "srv.py", nullptr);
    _exit(127);
  }
  std::string port;
  for (int i = 0; i < 100 && port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    port = slurp(dir + "/port");
    while (!port.empty() && port.back() == '\n') port.pop_back();
  }
  ASSERT_FALSE(port.empty());
  std::string url = "https://localhost:" + port + "/f.bin";
  FetchOptions o;
  o.expected_sha256 = sha256_hex(body);
  o.max_attempts = 2;
  o.retry_backoff = std::chrono::milliseconds(10);
  unsetenv("SSL_CERT_FILE");
  try {
    fetch_file(url, dir + "/out1", o);
    ADD_FAILURE() << "an untrusted certificate was accepted";
  } catch (const FetchError& e) {
    EXPECT_NE(std::string(e.what()).find("certificate verify failed"), std::string::npos) << e.what();
  }
  setenv("SSL_CERT_FILE", (dir + "/cert.pem").c_str(), 1);
  FetchResult r = fetch_file(url, dir + "/out2", o);
  unsetenv("SSL_CERT_FILE");
  EXPECT_EQ(r.bytes, body.size());
  EXPECT_EQ(slurp(dir + "/out2"), body);
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
}

}  // namespace

// `aicloud models ...`: the model registry from the command line.
//
//   models import FILE --name NAME [--owner system|organization] [--license L] [--capability C]... [--upload]
//   models pull URL --name NAME [--sha256 HEX] [--out FILE] [--download-only] (+ import's flags)
//   models list [--owner system|ORG_ID] | get NAME | delete NAME
// (`models create-tiny` is src/models/tiny.cpp's, under the same noun.)
//
// import sends the file's path when the server runs on this machine and the key is the operator's
// (the server links or copies it into its data dir); otherwise, or when the server cannot read
// the path, it uploads the file in 8 MiB parts. pull downloads over HTTP(S) with resume (a
// partial download is kept under ~/.cache/aicloud/downloads and continued by the next pull of the
// same URL), checks the sha256 and imports.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "agent/model_cache.h"
#include "cli/command_kit.h"
#include "cli/commands.h"
#include "cli/errors.h"
#include "http/client.h"
#include "identity/crypto.h"
#include "models/gguf.h"
#include "models/registry.h"

namespace aicloud::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct ModelFlags {
  std::string file, url, name, owner, license, sha256, out, filter_owner;
  std::vector<std::string> capabilities;
  bool upload = false, download_only = false;
};

// ---- showing ------------------------------------------------------------------------------------

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string human_count(uint64_t n) {
  char buf[32];
  if (n >= 1'000'000'000) std::snprintf(buf, sizeof buf, "%.2fB", double(n) / 1e9);
  else if (n >= 1'000'000) std::snprintf(buf, sizeof buf, "%.2fM", double(n) / 1e6);
  else if (n >= 1'000) std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  return buf;
}

Column bytes_col(std::string header, std::string key) {
  return {std::move(header), [key](const json& o) {
            auto it = o.find(key);
            return it != o.end() && it->is_number() ? human_bytes(double(it->get<uint64_t>())) : std::string("-");
          }};
}

const std::vector<Column> kModelColumns = {
    field("NAME", "id"),
    field("OWNER", "owner"),
    field("ARCH", "architecture"),
    {"PARAMS", [](const json& o) { return o.value("parameter_count", json()).is_number()
                                              ? human_count(o["parameter_count"].get<uint64_t>()) : std::string("-"); }},
    field("CONTEXT", "context_length"),
    bytes_col("SIZE", "size_bytes"),
    {"CAPABILITIES", [](const json& o) {
       std::string s;
       for (const auto& c : o.value("capabilities", json::array())) s += (s.empty() ? "" : ",") + cell_text(c);
       return s.empty() ? std::string("-") : s;
     }},
    time_field("CREATED", "created")};

std::vector<Column> model_detail_columns() {
  return kModelColumns + std::vector<Column>{field("LICENSE", "license"), field("SHA256", "sha256"),
                                             field("REGISTRY ID", "registry_id"), field("CREATED BY", "created_by"),
                                             field("FILE", "file")};
}

// ---- progress -----------------------------------------------------------------------------------

// Progress of a long transfer on stderr: a bar redrawn in place on a terminal, else a plain
// line every 10% or 5 seconds (logs, CI).
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2) == 1), start_(Clock::now()) {}

  void update(uint64_t done, uint64_t total, uint64_t resumed_from = 0) {
    auto now = Clock::now();
    if (first_) {
      first_ = false;
      base_ = resumed_from;
      if (resumed_from > 0) std::cerr << label_ << ": resuming at " << human_bytes(double(resumed_from)) << "\n";
    }
    done_ = done;
    total_ = total;
    if (tty_) {
      if (now - last_ < std::chrono::milliseconds(100) && done != total) return;
      last_ = now;
      std::cerr << "\r" << line(now, true) << "\033[K" << std::flush;
      drawn_ = true;
      return;
    }
    int decile = total ? int(done * 10 / total) : -1;
    if (decile != last_decile_ || now - last_ >= std::chrono::seconds(5)) {
      last_decile_ = decile;
      last_ = now;
      std::cerr << line(now, false) << "\n" << std::flush;
    }
  }

  void finish() {
    auto now = Clock::now();
    if (tty_ && drawn_) std::cerr << "\r" << line(now, true) << "\033[K\n";
    else if (!tty_ && last_decile_ != 10) std::cerr << line(now, false) << "\n";
    std::cerr << std::flush;
  }

 private:
  std::string line(Clock::time_point now, bool bar) const {
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? double(done_ - std::min(done_, base_)) / secs : 0;
    std::ostringstream s;
    s << label_ << ": ";
    if (bar && total_) {
      int width = 30, fill = int(double(done_) / double(total_) * width);
      s << "[" << std::string(size_t(std::min(fill, width)), '#') << std::string(size_t(width - std::min(fill, width)), ' ')
        << "] ";
    }
    s << human_bytes(double(done_));
    if (total_) s << " of " << human_bytes(double(total_)) << " (" << (done_ * 100 / total_) << "%)";
    s << ", " << human_bytes(rate) << "/s";
    if (total_ && rate > 0 && done_ < total_) {
      int64_t eta = int64_t(double(total_ - done_) / rate);
      s << ", " << eta / 60 << "m" << (eta % 60 < 10 ? "0" : "") << eta % 60 << "s left";
    }
    return s.str();
  }

  std::string label_;
  bool tty_;
  Clock::time_point start_, last_{};
  bool first_ = true, drawn_ = false;
  int last_decile_ = -1;
  uint64_t done_ = 0, total_ = 0, base_ = 0;
};

// ---- talking to the server outside Api (bytes, and errors whose code matters) ----------------

struct RawAnswer {
  unsigned status = 0;
  json body;
  std::string code, message, param;
};

std::vector<std::pair<std::string, std::string>> auth_headers(const Settings& s) {
  std::vector<std::pair<std::string, std::string>> h;
  if (!s.api_key.empty()) h.emplace_back("Authorization", "Bearer " + s.api_key);
  if (!s.org.empty()) h.emplace_back("OpenAI-Organization", s.org);
  if (!s.project.empty()) h.emplace_back("OpenAI-Project", s.project);
  return h;
}

RawAnswer send(http::Client& c, const Settings& s, const std::string& method, const std::string& path,
               const std::string& body, const std::string& content_type) {
  auto headers = auth_headers(s);
  headers.emplace_back("Content-Type", content_type);
  http::ClientResponse r;
  try {
    r = c.request(method, path, body, headers);
  } catch (const http::ConnectionError& e) {
    throw CliError(std::string("cannot reach the aicloud server at ") + s.url + ": " + e.what());
  }
  RawAnswer a;
  a.status = r.status;
  try {
    a.body = r.body.empty() ? json::object() : json::parse(r.body);
  } catch (const json::exception&) {
    a.body = json::object();
    a.message = r.body.substr(0, 200);
  }
  if (a.body.contains("error") && a.body["error"].is_object()) {
    const json& e = a.body["error"];
    a.message = e.value("message", "");
    if (e.contains("code") && e["code"].is_string()) a.code = e["code"];
    if (e.contains("param") && e["param"].is_string()) a.param = e["param"];
  }
  return a;
}

[[noreturn]] void fail(const RawAnswer& a) {
  std::string line = a.message.empty() ? "the server answered HTTP " + std::to_string(a.status) : a.message;
  if (!a.param.empty()) line += " (param: " + a.param + ")";
  throw CliError(line + " [HTTP " + std::to_string(a.status) + "]");
}

bool is_loopback(const std::string& url) {
  try {
    auto [host, port] = http::parse_base_url(url);
    return host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
  } catch (const std::exception&) {
    return false;
  }
}

json import_fields(const ModelFlags& m) {
  json body = fields({{"name", m.name}, {"owner", m.owner}, {"license", m.license}});
  if (!m.capabilities.empty()) body["capabilities"] = m.capabilities;
  return body;
}

// Sends the file in parts; returns the registered model.
json upload(const Settings& s, const ModelFlags& m, const std::string& path, uint64_t size) {
  Progress hashing("hashing " + fs::path(path).filename().string());
  std::string sha = models::sha256_file_hex(path, [&](uint64_t done) { hashing.update(done, size); });
  hashing.finish();

  auto client = std::make_unique<http::Client>(s.url, std::chrono::seconds(120));
  json body = import_fields(m);
  body["bytes"] = size;
  body["sha256"] = sha;
  RawAnswer a = send(*client, s, "POST", "/v1/models/uploads", body.dump(), "application/json");
  if (a.status != 201) fail(a);
  std::string id = a.body.value("id", "");
  uint64_t part_size = a.body.value("part_size", uint64_t(8) << 20);
  std::string base = "/v1/models/uploads/" + url_encode(id);
  auto cancel = [&] {
    try {
      http::Client c(s.url);
      send(c, s, "POST", base + "/cancel", "{}", "application/json");
    } catch (const std::exception&) {
    }
  };

  std::ifstream in(path, std::ios::binary);
  if (!in) throw CliError("cannot read " + path);
  Progress up("uploading " + fs::path(path).filename().string());
  std::string buf;
  uint64_t sent = 0;
  for (uint64_t n = 0; sent < size; ++n) {
    buf.resize(size_t(std::min(part_size, size - sent)));
    in.read(buf.data(), std::streamsize(buf.size()));
    if (uint64_t(in.gcount()) != buf.size()) {
      cancel();
      throw CliError(path + " changed while it was being uploaded");
    }
    for (int attempt = 1;; ++attempt) {
      try {
        RawAnswer pa = send(*client, s, "PUT", base + "/parts/" + std::to_string(n), buf, "application/octet-stream");
        if (pa.status == 200) break;
        if (pa.status < 500 || attempt >= 3) {
          cancel();
          fail(pa);
        }
      } catch (const CliError&) {
        if (attempt >= 3) {
          cancel();
          throw;
        }
        client = std::make_unique<http::Client>(s.url, std::chrono::seconds(120));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500 * attempt));
    }
    sent += buf.size();
    up.update(sent, size);
  }
  up.finish();
  std::cerr << "the server is checking the upload...\n";
  client = std::make_unique<http::Client>(s.url, std::chrono::seconds(3600));  // it hashes the whole file first
  RawAnswer done = send(*client, s, "POST", base + "/complete", "{}", "application/json");
  if (done.status != 201) {
    cancel();
    fail(done);
  }
  return done.body;
}

// Registers the local file `path` under m.name: by path when the server is here, else uploaded.
json import_file(const Settings& s, const ModelFlags& m, const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw CliError(path + ": no such file", kExitUsage);
  try {
    gguf::read(path);
  } catch (const gguf::GgufError& e) {
    throw CliError(std::string("not a GGUF model: ") + e.what());
  }
  uint64_t size = fs::file_size(path);
  if (!m.upload && is_loopback(s.url) && is_operator_key(s.api_key)) {
    http::Client c(s.url, std::chrono::seconds(3600));  // the server hashes the file before it answers
    json body = import_fields(m);
    body["path"] = fs::absolute(path).lexically_normal().string();
    std::cerr << "importing " << path << " (" << human_bytes(double(size)) << ") on the server...\n";
    RawAnswer a = send(c, s, "POST", "/v1/models/import", body.dump(), "application/json");
    if (a.status == 201) return a.body;
    if (a.code != "path_not_readable") fail(a);
    std::cerr << "the server cannot read " << path << " (" << a.message << "); uploading it instead\n";
  }
  return upload(s, m, path, size);
}

void show_model(const Flags& f, const json& model) {
  if (json_output(f)) {
    std::cout << model.dump(2) << "\n";
  } else {
    print_object(std::cout, model_detail_columns(), model);
  }
}

std::string downloads_dir() {
  if (const char* d = std::getenv("AICLOUD_CACHE_DIR"); d && *d) return (fs::path(d) / "downloads").string();
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return (fs::path(x) / "aicloud" / "downloads").string();
  const char* home = std::getenv("HOME");
  return (fs::path(home && *home ? home : ".") / ".cache" / "aicloud" / "downloads").string();
}

void pull(const Flags& f, const ModelFlags& m) {
  Settings s = resolve_settings(f.global);
  std::string sha = m.sha256;
  std::transform(sha.begin(), sha.end(), sha.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  if (!sha.empty() && !models::is_sha256_hex(sha)) {
    throw CliError("--sha256: '" + m.sha256 + "' is not a sha256 (64 hexadecimal digits)", kExitUsage);
  }
  bool keep = !m.out.empty();
  std::string dest = keep ? m.out : (fs::path(downloads_dir()) / (sha256_hex(m.url).substr(0, 24) + ".gguf")).string();

  FetchOptions o;
  o.expected_sha256 = sha;
  std::string shown = m.url.substr(0, m.url.find('?'));
  shown = shown.substr(shown.rfind('/') + 1);
  Progress bar("downloading " + (shown.empty() ? m.url : shown));
  std::cerr << "downloading " << m.url << " to " << dest << "\n";
  o.progress = [&](const FetchProgress& p) { bar.update(p.done, p.total, p.resumed_from); };
  FetchResult r;
  try {
    r = fetch_file(m.url, dest, o);
  } catch (const FetchError& e) {
    std::cerr << "\n";
    throw CliError(std::string(e.what()) +
                   (e.partial_kept && e.http_status == 0 ? "; run the same command again to resume" : ""));
  }
  bar.finish();
  std::cerr << "sha256 " << r.sha256 << (sha.empty() ? " (not checked: no --sha256 given)" : " (verified)") << "\n";
  if (m.download_only) {
    std::cout << r.path << "\n";
    return;
  }
  json model;
  try {
    model = import_file(s, m, r.path);
  } catch (...) {
    if (!keep) std::cerr << "the download is kept in " << r.path << "\n";
    throw;
  }
  if (!keep) fs::remove(r.path);
  show_model(f, model);
}

std::string model_path(const std::string& name) {
  // Each part percent-encoded; the server decodes the path and matches /v1/models/{ns}/{name}.
  std::string out;
  size_t slash = name.find('/');
  if (slash == std::string::npos) return "/v1/models/" + url_encode(name);
  return "/v1/models/" + url_encode(name.substr(0, slash)) + "/" + url_encode(name.substr(slash + 1));
}

bool operator_scope(const Settings& s) { return is_operator_key(s.api_key) && s.org.empty(); }

}  // namespace

void add_model_commands(CLI::App& app, Flags& f) {
  auto m = std::make_shared<ModelFlags>();
  CLI::App* models = noun(app, "models", "Models: GGUF files and the registry");

  auto owner_flags = [m](CLI::App* v) {
    v->add_option("--name", m->name, "The model's name in API requests (e.g. my-llama, acme/llama-3-8b)")->required();
    v->add_option("--owner", m->owner,
                  "system (the platform's catalog, operator only) or organization (default: system for the operator "
                  "key without --org, else your organization)")
        ->check(CLI::IsMember({"system", "organization"}));
    v->add_option("--license", m->license, "The license, when the file does not say (general.license)");
    v->add_option("--capability", m->capabilities, "chat, completion or embeddings (repeat; default from the file)")
        ->check(CLI::IsMember({"chat", "completion", "embeddings"}));
    v->add_flag("--upload", m->upload, "Upload the file even when the server runs on this machine");
  };

  auto* imp = verb(models, "import", "Register a local GGUF file (sent by path to a local server, else uploaded)",
                   [&f, m] {
                     Settings s = resolve_settings(f.global);
                     show_model(f, import_file(s, *m, m->file));
                   });
  imp->add_option("file", m->file, "The GGUF file")->required();
  owner_flags(imp);

  auto* pl = verb(models, "pull", "Download a GGUF over HTTP(S) (resumable, sha256-checked) and register it",
                  [&f, m] { pull(f, *m); });
  pl->add_option("url", m->url, "http:// or https:// URL of the GGUF file")->required();
  pl->add_option("--sha256", m->sha256, "The file's expected sha256: a mismatch is refused and nothing kept");
  pl->add_option("--out", m->out, "Keep the file here (default: a cache file, removed after the import)");
  pl->add_flag("--download-only", m->download_only, "Only download (and check) the file; print its path");
  owner_flags(pl);

  auto* list = verb(models, "list", "List the models you can use (the operator: every model)", [&f, m] {
    Settings s = resolve_settings(f.global);
    if (operator_scope(s)) {
      auto q = paging(f);
      q.emplace_back("owner", m->filter_owner);
      server(f).show({"GET", "/admin/v1/models", q}, list_of(kModelColumns));
    } else {
      server(f).show({"GET", "/v1/organization/models"}, list_of(kModelColumns));
    }
  });
  paging_flags(list, f);
  list->add_option("--owner", m->filter_owner, "The operator: only this owner's (system, or an organization id)");

  auto* get = verb(models, "get", "Show a model", [&f] {
    Settings s = resolve_settings(f.global);
    Api api = server(f);
    json r = operator_scope(s) ? api.call({"GET", "/admin/v1/models", {{"name", f.id}, {"limit", "100"}}})
                               : api.call({"GET", "/v1/organization/models", {{"name", f.id}}});
    const json& data = r.value("data", json::array());
    if (data.empty()) throw CliError("no model named '" + f.id + "'");
    if (json_output(f)) {
      std::cout << (data.size() == 1 ? data[0] : data).dump(2) << "\n";
      return;
    }
    bool first = true;
    for (const auto& x : data) {
      if (!first) std::cout << "\n";
      first = false;
      print_object(std::cout, model_detail_columns(), x);
    }
  });
  id_arg(get, f, "Model name");

  auto* del = verb(models, "delete", "Delete a model (and its file, when nothing else uses it)", [&f] {
    server(f).show({"DELETE", model_path(f.id)}, deleted());
  });
  id_arg(del, f, "Model name");
}

}  // namespace aicloud::cli

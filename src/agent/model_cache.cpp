#include "agent/model_cache.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
// Asio's TLS in separate compilation mode is compiled here: this is the one part that speaks TLS.
// (If another part needs it, move this include to src/http/asio_impl.cpp.)
#include <boost/asio/ssl/impl/src.hpp>

#include <fcntl.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <thread>

#include "http/client.h"
#include "models/registry.h"
#include "util/json_util.h"

namespace aicloud {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace ssl = asio::ssl;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;

namespace {

std::string errno_text() { return std::strerror(errno); }

struct Url {
  bool tls = false;
  std::string host, port, target;
  std::string text() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    bool dflt = (tls && port == "443") || (!tls && port == "80");
    return std::string(tls ? "https://" : "http://") + h + (dflt ? "" : ":" + port) + target;
  }
  std::string host_header() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    bool dflt = (tls && port == "443") || (!tls && port == "80");
    return dflt ? h : h + ":" + port;
  }
};

// http(s)://host[:port][/target]; throws FetchError for anything else.
Url parse_url(const std::string& text) {
  Url u;
  std::string rest;
  if (text.rfind("http://", 0) == 0) {
    rest = text.substr(7);
  } else if (text.rfind("https://", 0) == 0) {
    u.tls = true;
    rest = text.substr(8);
  } else {
    throw FetchError("unsupported URL '" + text + "': use http:// or https://", 0, false);
  }
  size_t end = rest.find_first_of("/?#");
  std::string authority = rest.substr(0, end);
  u.target = end == std::string::npos ? "/" : rest.substr(end);
  if (auto hash = u.target.find('#'); hash != std::string::npos) u.target.resize(hash);
  if (u.target.empty() || u.target[0] == '?') u.target = "/" + u.target;
  if (authority.find('@') != std::string::npos) {
    throw FetchError("URLs with a user name or password are not supported: '" + text + "'", 0, false);
  }
  std::string port;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) throw FetchError("malformed URL '" + text + "'", 0, false);
    u.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') throw FetchError("malformed URL '" + text + "'", 0, false);
      port = authority.substr(close + 2);
    }
  } else {
    size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw FetchError("URL '" + text + "' has no host", 0, false);
  if (port.empty()) port = u.tls ? "443" : "80";
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5) {
    throw FetchError("URL '" + text + "' has a bad port", 0, false);
  }
  u.port = port;
  return u;
}

// Where a redirect's Location points, from the URL that answered it.
Url resolve_location(const Url& base, const std::string& loc) {
  if (loc.rfind("http://", 0) == 0 || loc.rfind("https://", 0) == 0) return parse_url(loc);
  if (loc.rfind("//", 0) == 0) return parse_url((base.tls ? "https:" : "http:") + loc);
  Url u = base;
  if (!loc.empty() && loc[0] == '/') {
    u.target = loc;
  } else {
    std::string dir = base.target.substr(0, base.target.find('?'));
    dir = dir.substr(0, dir.rfind('/') + 1);
    u.target = dir + loc;
  }
  return u;
}

// Runs one asynchronous operation to completion on ioc (so that the stream's timer applies).
template <class Start>
beast::error_code run_op(asio::io_context& ioc, Start&& start) {
  beast::error_code result = asio::error::would_block;
  start([&result](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

// The file being written: DEST.partial, its hash so far, what the server said about it.
struct Partial {
  std::string path, meta_path;
  int fd = -1;
  uint64_t size = 0;
  std::unique_ptr<models::Sha256> hash = std::make_unique<models::Sha256>();
  std::string etag, last_modified;  // the validators of what is on disk (for If-Range)
  uint64_t total = 0;

  ~Partial() {
    if (fd >= 0) ::close(fd);
  }
  void reset() {
    if (::ftruncate(fd, 0) != 0) throw FetchError("cannot truncate " + path + ": " + errno_text(), 0, false);
    size = 0;
    total = 0;
    hash = std::make_unique<models::Sha256>();
    etag.clear();
    last_modified.clear();
  }
  void write(const char* data, size_t n) {
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::pwrite(fd, data + done, n - done, off_t(size + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw FetchError("cannot write " + path + ": " + errno_text(), 0, true);
      done += size_t(w);
    }
    hash->update(data, n);
    size += n;
  }
  void save_meta(const std::string& url) const {
    std::ofstream f(meta_path, std::ios::trunc);
    f << json{{"url", url}, {"etag", etag}, {"last_modified", last_modified}, {"total", total}}.dump() << "\n";
  }
};

enum class Outcome { kDone, kAgain, kRedirect };

struct Head {
  unsigned status = 0;
  std::optional<uint64_t> content_length;
  std::string content_range, location, etag, last_modified, content_type;
};

// A short error body as one line: an aicloud (or OpenAI-shaped) error's message, else the text.
std::string error_text(const std::string& body, const std::string& content_type) {
  if (content_type.find("json") != std::string::npos) {
    try {
      json j = json::parse(body);
      if (j.contains("error") && j["error"].is_object()) return j["error"].value("message", "");
    } catch (const json::exception&) {
    }
  }
  std::string s = body.substr(0, 200);
  for (char& ch : s) {
    if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
  }
  return s;
}

// bytes START-END/TOTAL (or bytes */TOTAL): false if it does not parse.
bool parse_content_range(const std::string& h, uint64_t& start, uint64_t& total, bool& star) {
  if (h.rfind("bytes ", 0) != 0) return false;
  std::string s = h.substr(6);
  size_t slash = s.find('/');
  if (slash == std::string::npos) return false;
  try {
    std::string tot = s.substr(slash + 1);
    total = tot == "*" ? 0 : std::stoull(tot);
    std::string range = s.substr(0, slash);
    star = range == "*";
    start = star ? 0 : std::stoull(range.substr(0, range.find('-')));
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

class Fetcher {
 public:
  Fetcher(const FetchOptions& o, Partial& p, std::string original)
      : o_(o), p_(p), original_url_(std::move(original)), tls_(ssl::context::tls_client) {
    tls_.set_default_verify_paths();  // honours $SSL_CERT_FILE and $SSL_CERT_DIR
    tls_.set_verify_mode(ssl::verify_peer);
  }

  // One request: Outcome, or throws FetchError (permanent) / std::runtime_error (network: retry).
  Outcome attempt(Url& url, bool send_auth, bool& progressed) {
    asio::io_context ioc;
    beast::error_code ec;
    tcp::resolver resolver(ioc);
    auto eps = resolver.resolve(url.host, url.port, ec);
    if (ec) throw std::runtime_error("cannot resolve " + url.host + ": " + ec.message());
    if (url.tls) {
      beast::ssl_stream<beast::tcp_stream> s(ioc, tls_);
      if (!SSL_set_tlsext_host_name(s.native_handle(), url.host.c_str())) {
        throw std::runtime_error("TLS: cannot set the server name " + url.host);
      }
      s.set_verify_callback(ssl::host_name_verification(url.host));
      connect(ioc, beast::get_lowest_layer(s), eps, url);
      beast::get_lowest_layer(s).expires_after(o_.connect_timeout);
      ec = run_op(ioc, [&](auto h) { s.async_handshake(ssl::stream_base::client, h); });
      if (ec) {
        std::string why = ec.message();
        if (ec.category() == asio::error::get_ssl_category()) {
          // A verification failure is permanent: retrying will not make the certificate valid.
          throw FetchError("TLS handshake with " + url.host + " failed: " + why +
                               " (to trust a private CA, set SSL_CERT_FILE to its certificate)",
                           0, false);
        }
        throw std::runtime_error("TLS handshake with " + url.host + " failed: " + why);
      }
      return exchange(ioc, s, url, send_auth, progressed);
    }
    beast::tcp_stream s(ioc);
    connect(ioc, s, eps, url);
    return exchange(ioc, s, url, send_auth, progressed);
  }

 private:
  void connect(asio::io_context& ioc, beast::tcp_stream& s, const tcp::resolver::results_type& eps, const Url& url) {
    s.expires_after(o_.connect_timeout);
    beast::error_code ec = run_op(ioc, [&](auto h) { s.async_connect(eps, h); });
    if (ec) throw std::runtime_error("cannot connect to " + url.host_header() + ": " + ec.message());
  }

  template <class Stream>
  Outcome exchange(asio::io_context& ioc, Stream& s, Url& url, bool send_auth, bool& progressed) {
    auto& low = beast::get_lowest_layer(s);
    bhttp::request<bhttp::empty_body> req{bhttp::verb::get, url.target, 11};
    req.set(bhttp::field::host, url.host_header());
    req.set(bhttp::field::user_agent, "aicloud");
    req.set(bhttp::field::accept_encoding, "identity");
    if (send_auth) {
      for (const auto& [k, v] : o_.headers) req.set(k, v);
    }
    if (p_.size > 0) {
      req.set(bhttp::field::range, "bytes=" + std::to_string(p_.size) + "-");
      // Only the same file may continue the partial one: a strong ETag, else its Last-Modified.
      if (!p_.etag.empty() && p_.etag.rfind("W/", 0) != 0) {
        req.set(bhttp::field::if_range, p_.etag);
      } else if (!p_.last_modified.empty()) {
        req.set(bhttp::field::if_range, p_.last_modified);
      }
    }
    low.expires_after(o_.idle_timeout);
    beast::error_code ec = run_op(ioc, [&](auto h) { bhttp::async_write(s, req, h); });
    if (ec) throw std::runtime_error("sending the request to " + url.host_header() + " failed: " + ec.message());

    beast::flat_buffer buf;
    bhttp::response_parser<bhttp::buffer_body> parser;
    // Not boost::none: Boost 1.74 compares a Content-Length against an unset limit as exceeding it.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.header_limit(64 * 1024);
    low.expires_after(o_.idle_timeout);
    ec = run_op(ioc, [&](auto h) { bhttp::async_read_header(s, buf, parser, h); });
    if (ec) throw std::runtime_error("reading the answer of " + url.host_header() + " failed: " + ec.message());
    const auto& res = parser.get();
    Head head;
    head.status = res.result_int();
    if (auto cl = parser.content_length()) head.content_length = *cl;
    auto hdr = [&](bhttp::field f) {
      auto it = res.find(f);
      return it == res.end() ? std::string() : std::string(it->value());
    };
    head.content_range = hdr(bhttp::field::content_range);
    head.location = hdr(bhttp::field::location);
    head.etag = hdr(bhttp::field::etag);
    head.last_modified = hdr(bhttp::field::last_modified);
    head.content_type = hdr(bhttp::field::content_type);

    if (head.status >= 300 && head.status < 400 && !head.location.empty()) {
      Url next = resolve_location(url, head.location);
      url = next;
      return Outcome::kRedirect;
    }
    if (head.status == 416) {
      uint64_t start = 0, total = 0;
      bool star = false;
      if (parse_content_range(head.content_range, start, total, star) && total == p_.size && p_.size > 0) {
        p_.total = total;
        return Outcome::kDone;  // what is on disk is already the whole file
      }
      p_.reset();
      return Outcome::kAgain;
    }
    if (head.status != 200 && head.status != 206) {
      std::string body = read_small_body(ioc, s, buf, parser);
      std::string msg = error_text(body, head.content_type);
      std::string what = url.text() + " answered HTTP " + std::to_string(head.status) + (msg.empty() ? "" : ": " + msg);
      if (head.status >= 500) throw std::runtime_error(what);  // the server's trouble: try again
      throw FetchError(what, head.status, p_.size > 0);
    }
    if (head.status == 206) {
      uint64_t start = 0, total = 0;
      bool star = false;
      if (!parse_content_range(head.content_range, start, total, star) || star || start != p_.size) {
        p_.reset();  // not the continuation asked for: start over
        return Outcome::kAgain;
      }
      p_.total = total;
    } else {
      if (p_.size > 0) p_.reset();  // the server sent the whole file (no ranges, or it changed)
      p_.total = head.content_length.value_or(0);
    }
    p_.etag = head.etag;
    p_.last_modified = head.last_modified;
    p_.save_meta(original_url_);
    report();

    std::vector<char> chunk(1 << 20);
    while (!parser.is_done()) {
      parser.get().body().data = chunk.data();
      parser.get().body().size = chunk.size();
      low.expires_after(o_.idle_timeout);
      ec = run_op(ioc, [&](auto h) { bhttp::async_read(s, buf, parser, h); });
      if (ec == bhttp::error::need_buffer) ec = {};
      size_t n = chunk.size() - parser.get().body().size;
      if (n > 0) {
        p_.write(chunk.data(), n);
        progressed = true;
        report();
      }
      if (ec) {
        throw std::runtime_error("the download from " + url.host_header() + " broke off after " +
                                 std::to_string(p_.size) + " bytes: " + ec.message());
      }
    }
    return Outcome::kDone;
  }

  template <class Stream, class Parser>
  std::string read_small_body(asio::io_context& ioc, Stream& s, beast::flat_buffer& buf, Parser& parser) {
    std::string out;
    std::vector<char> chunk(16 * 1024);
    while (!parser.is_done() && out.size() < 64 * 1024) {
      parser.get().body().data = chunk.data();
      parser.get().body().size = chunk.size();
      beast::get_lowest_layer(s).expires_after(o_.idle_timeout);
      beast::error_code ec = run_op(ioc, [&](auto h) { bhttp::async_read(s, buf, parser, h); });
      if (ec == bhttp::error::need_buffer) ec = {};
      out.append(chunk.data(), chunk.size() - parser.get().body().size);
      if (ec) break;
    }
    return out;
  }

  void report() {
    if (o_.progress) o_.progress({p_.size, p_.total, resumed_from});
  }

 public:
  uint64_t resumed_from = 0;

 private:
  const FetchOptions& o_;
  Partial& p_;
  std::string original_url_;
  ssl::context tls_;
};

void fsync_dir(const std::string& file) {
  std::string dir = fs::path(file).parent_path().string();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

FetchResult fetch_file(const std::string& url_text, const std::string& dest, const FetchOptions& o) {
  Url start_url = parse_url(url_text);
  if (!o.expected_sha256.empty() && !models::is_sha256_hex(o.expected_sha256)) {
    throw FetchError("the expected sha256 must be 64 lowercase hexadecimal digits (got '" + o.expected_sha256 + "')", 0,
                     false);
  }
  std::error_code fec;
  fs::path parent = fs::path(dest).parent_path();
  if (!parent.empty()) fs::create_directories(parent, fec);

  Partial p;
  p.path = dest + ".partial";
  p.meta_path = dest + ".partial.json";
  p.fd = ::open(p.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (p.fd < 0) throw FetchError("cannot create " + p.path + ": " + errno_text(), 0, false);
  if (::flock(p.fd, LOCK_EX | LOCK_NB) != 0) {
    throw FetchError("another download to " + dest + " is in progress", 0, true);
  }
  // Resume only what was fetched from the same URL; hash what is there already.
  struct stat st {};
  ::fstat(p.fd, &st);
  uint64_t have = uint64_t(st.st_size);
  bool same = false;
  try {
    std::ifstream mf(p.meta_path);
    if (mf) {
      json m = json::parse(mf);
      same = m.value("url", "") == url_text;
      p.etag = m.value("etag", "");
      p.last_modified = m.value("last_modified", "");
      p.total = m.value("total", uint64_t(0));
    }
  } catch (const std::exception&) {
    same = false;
  }
  if (!same || have == 0 || (o.expected_size && have > o.expected_size)) {
    p.reset();
  } else {
    std::vector<char> buf(1 << 20);
    uint64_t off = 0;
    while (off < have) {
      ssize_t n = ::pread(p.fd, buf.data(), std::min<uint64_t>(buf.size(), have - off), off_t(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      p.hash->update(buf.data(), size_t(n));
      off += uint64_t(n);
    }
    p.size = off;
    if (::ftruncate(p.fd, off_t(off)) != 0) p.reset();
  }

  Fetcher f(o, p, url_text);
  f.resumed_from = p.size;
  uint64_t resumed_from = p.size;
  int fruitless = 0, redirects = 0;
  auto backoff = o.retry_backoff;
  Url url = start_url;
  while (true) {
    bool progressed = false;
    std::string failure;
    try {
      bool same_origin = url.host == start_url.host && url.port == start_url.port && url.tls == start_url.tls;
      Outcome out = f.attempt(url, same_origin, progressed);
      if (out == Outcome::kDone) break;
      if (out == Outcome::kRedirect) {
        if (++redirects > o.max_redirects) {
          throw FetchError(url_text + ": more than " + std::to_string(o.max_redirects) + " redirects", 0, p.size > 0);
        }
        continue;
      }
      failure = "the server did not continue the partial download; starting over";
    } catch (const FetchError&) {
      throw;
    } catch (const std::exception& e) {
      failure = e.what();
    }
    url = start_url;  // a retry asks the original URL again (redirect targets may be short-lived)
    redirects = 0;
    if (progressed) {
      fruitless = 0;
      backoff = o.retry_backoff;
    } else if (++fruitless >= o.max_attempts) {
      throw FetchError(failure + " (gave up after " + std::to_string(o.max_attempts) + " attempts; " +
                           std::to_string(p.size) + " bytes are kept in " + p.path + " and the next try resumes)",
                       0, true);
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::milliseconds(8000));
  }

  auto discard = [&](const std::string& why) {
    ::unlink(p.path.c_str());
    ::unlink(p.meta_path.c_str());
    throw FetchError(why, 0, false);
  };
  if (p.total && p.size != p.total) {
    discard("the download of " + url_text + " ended at " + std::to_string(p.size) + " of " + std::to_string(p.total) +
            " bytes");
  }
  if (o.expected_size && p.size != o.expected_size) {
    discard(url_text + " has " + std::to_string(p.size) + " bytes, not the " + std::to_string(o.expected_size) +
            " expected; nothing was kept");
  }
  std::string sha = p.hash->hex();
  if (!o.expected_sha256.empty() && sha != o.expected_sha256) {
    discard("sha256 mismatch for " + url_text + ": expected " + o.expected_sha256 + ", got " + sha +
            "; the download was deleted");
  }
  if (::fsync(p.fd) != 0) throw FetchError("cannot sync " + p.path + ": " + errno_text(), 0, true);
  if (::rename(p.path.c_str(), dest.c_str()) != 0) {
    throw FetchError("cannot move " + p.path + " to " + dest + ": " + errno_text(), 0, true);
  }
  ::unlink(p.meta_path.c_str());
  fsync_dir(dest);
  return {dest, sha, p.size, resumed_from};
}

std::string ensure_model(const std::string& server_url, const std::string& node_key, const std::string& model_id,
                         const std::string& sha256, const std::string& cache_dir,
                         const std::function<void(const FetchProgress&)>& progress) {
  if (!models::is_sha256_hex(sha256)) {
    throw std::invalid_argument("ensure_model: '" + sha256 + "' is not a sha256 (64 lowercase hex digits)");
  }
  fs::create_directories(cache_dir);
  std::string final_path = (fs::path(cache_dir) / (sha256 + ".gguf")).string();
  struct stat st {};
  if (::stat(final_path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return final_path;

  // One download per model at a time on this node, across threads and processes.
  std::string lock_path = (fs::path(cache_dir) / (sha256 + ".lock")).string();
  int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (lock < 0) throw std::runtime_error("cannot open " + lock_path + ": " + errno_text());
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{lock};
  while (::flock(lock, LOCK_EX) != 0) {
    if (errno != EINTR) throw std::runtime_error("cannot lock " + lock_path + ": " + errno_text());
  }
  if (::stat(final_path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return final_path;

  std::string id = model_id.empty() ? sha256 : model_id;
  std::vector<std::pair<std::string, std::string>> auth = {{"Authorization", "Bearer " + node_key}};
  json meta;
  try {
    http::Client c(server_url, std::chrono::seconds(30));
    auto r = c.request("GET", "/agent/v1/models/" + id, "", auth);
    if (r.status != 200) {
      throw std::runtime_error("the server answered HTTP " + std::to_string(r.status) + " for model " + id + ": " +
                               error_text(r.body, "json"));
    }
    meta = json::parse(r.body);
  } catch (const http::ConnectionError& e) {
    throw std::runtime_error(std::string("cannot ask the server about model ") + id + ": " + e.what());
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("the server's answer about model ") + id + " is not JSON: " + e.what());
  }
  std::string server_sha = meta.value("sha256", "");
  if (server_sha != sha256) {
    throw std::runtime_error("model " + id + " has sha256 " + server_sha + " on the server, not the " + sha256 +
                             " asked for");
  }
  uint64_t size = meta.value("size_bytes", uint64_t(0));
  if (meta.contains("shared_path") && meta["shared_path"].is_string()) {
    std::string shared = meta["shared_path"];
    struct stat sst {};
    if (::stat(shared.c_str(), &sst) == 0 && S_ISREG(sst.st_mode) && uint64_t(sst.st_size) == size &&
        ::access(shared.c_str(), R_OK) == 0) {
      return shared;  // the operator's shared file system: trusted, not hashed again
    }
  }
  FetchOptions o;
  o.headers = auth;
  o.expected_sha256 = sha256;
  o.expected_size = size;
  o.progress = progress;
  std::string path = meta.value("download_path", "/agent/v1/models/" + id + "/file");
  fetch_file(server_url + path, final_path, o);
  return final_path;
}

}  // namespace aicloud

// libFuzzer target: the bytes a client sends, through everything aicloud does with them before
// a handler runs. The input is what arrives on one keep-alive connection: up to 8 pipelined
// requests, each parsed the way src/http/server.cpp parses it (a Beast request_parser with the
// server's header and body limits, fed from a growing buffer), then
//
//   parse_target -> Router::match (the real route table) -> parse_json_body -> BodyReader
//
// as src/api/app.cpp and the route handlers use them. Sanitizers (address, undefined, leak)
// catch memory errors; the checks below catch broken contracts:
//   - parse_json_body and BodyReader fail only with ApiError (anything else is a 500);
//   - an accepted target has a path that starts with '/' and holds no NUL;
//   - a matched route has the request's method and one non-empty, slash-free value per {param};
//   - feeding the same bytes in small pieces reads the same request as feeding them at once.
//
// Built by fuzz/CMakeLists.txt with clang++ -fsanitize=fuzzer,address,undefined; see fuzz/README.md.
#include <boost/beast/http.hpp>

#include <strings.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "http/request_parser.h"
#include "http/router.h"
#include "http/server.h"  // ServerOptions: the server's default limits
#include "util/error.h"
#include "util/json_util.h"

// Boost's assertions stay on, through the handler in fuzz/boost_assert.cpp.

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using aicloud::ApiError;
using aicloud::json;

#define FUZZ_CHECK(cond)                                                             \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

struct RouteDef {
  const char* method;
  const char* pattern;
};
// The route table of src/api/*_routes.cpp, extracted by fuzz/CMakeLists.txt at configure time.
constexpr RouteDef kRoutes[] = {
#include "routes.inc"
};

const aicloud::http::Router& router() {
  static const aicloud::http::Router r = [] {
    aicloud::http::Router x;
    for (const auto& d : kRoutes) x.add(d.method, d.pattern);
    return x;
  }();
  return r;
}

const aicloud::http::ServerOptions& limits() {
  static const aicloud::http::ServerOptions o;
  return o;
}

using aicloud::http::Request;
using aicloud::http::RequestParser;

// What a parse produced, for comparing two ways of feeding the same bytes, and the server's
// parser with Beast's.
struct Outcome {
  bool ok = false;         // a request was read
  beast::error_code ec;    // why not
  size_t consumed = 0;     // bytes of the input the request took
  std::string method, target, body;
  unsigned version = 0;
  bool keep_alive = false;
  bool same_request(const Outcome& b) const {
    return consumed == b.consumed && method == b.method && target == b.target && body == b.body &&
           version == b.version && keep_alive == b.keep_alive;
  }
};

// Parses one request from data[0, n) the way the server does (http/server.cpp): put() on
// everything buffered and not yet used; when it needs more, `step` more bytes arrive (all of
// them when step is 0); at the end of the input the peer closes.
Outcome parse_one(RequestParser& p, Request& req, const char* data, size_t n, size_t step) {
  Outcome o;
  p.start(req);
  size_t avail = step == 0 ? n : std::min(n, step);
  size_t used = 0;
  for (;;) {
    RequestParser::Result r = RequestParser::Result::kNeedMore;
    size_t k = p.put(std::string_view(data + used, avail - used), r);
    FUZZ_CHECK(k <= avail - used);
    used += k;
    if (r == RequestParser::Result::kDone) {
      o.ok = true;
      break;
    }
    if (r == RequestParser::Result::kError) {
      o.ec = p.error();
      FUZZ_CHECK(o.ec);
      break;
    }
    if (avail == n) {
      o.ec = p.got_some() ? bhttp::error::partial_message : bhttp::error::end_of_stream;
      break;
    }
    avail = step == 0 ? n : std::min(n, avail + step);
  }
  o.consumed = used;
  if (o.ok) {
    o.method = std::string(req.method());
    o.target = std::string(req.target());
    o.body = req.body();
    o.version = req.version();
    o.keep_alive = req.keep_alive();
    FUZZ_CHECK(o.version == 10 || o.version == 11);
    FUZZ_CHECK(o.body.size() <= limits().body_limit);
    for (size_t i = 0; i < req.field_count(); ++i) {
      auto f = req.field_at(i);
      FUZZ_CHECK(!f.name.empty() && f.name.find_first_of(" :\r\n") == std::string_view::npos);
      FUZZ_CHECK(f.value.find_first_of("\r\n") == std::string_view::npos);
      FUZZ_CHECK(req.field(f.name).has_value());
    }
  }
  return o;
}

// Beast's request parser, the one the server's replaced, on the same bytes at once.
Outcome beast_parse(const char* data, size_t n) {
  bhttp::request_parser<bhttp::string_body> p;
  p.header_limit(static_cast<std::uint32_t>(limits().header_limit));
  p.body_limit(limits().body_limit);
  p.eager(true);
  Outcome o;
  size_t used = 0;
  beast::error_code ec;
  while (!p.is_done()) {
    size_t k = p.put(boost::asio::buffer(data + used, n - used), ec);
    used += k;
    if (ec || k == 0) break;
  }
  if (!p.is_done()) return o;
  const auto& m = p.get();
  o.ok = true;
  o.consumed = used;
  o.method = std::string(m.method_string());
  o.target = std::string(m.target());
  o.body = m.body();
  o.version = m.version();
  o.keep_alive = m.keep_alive();
  return o;
}

// The number of Connection fields in a head (Beast's keep_alive() reads only the first; the
// server's parser all of them, as RFC 9110 asks).
size_t connection_fields(const Request& req) {
  size_t n = 0;
  for (size_t i = 0; i < req.field_count(); ++i) n += strncasecmp(req.field_at(i).name.data(), "connection", 10) == 0 && req.field_at(i).name.size() == 10;
  return n;
}

void check_route(std::string_view method, const aicloud::http::Target& t) {
  const auto& r = router();
  aicloud::http::RouteMatch m = r.match(method, t.path);
  if (m.route >= 0) {
    FUZZ_CHECK(m.path_known);
    FUZZ_CHECK(r.method(m.route) == method);
    size_t placeholders = 0;
    for (char c : r.pattern(m.route)) placeholders += c == '{';
    FUZZ_CHECK(m.params.size() == placeholders);
    for (const auto& [k, v] : m.params) {
      FUZZ_CHECK(!k.empty() && !v.empty());
      FUZZ_CHECK(v.find('/') == std::string::npos);
      FUZZ_CHECK(m.param(k).data() != nullptr);
    }
  } else {
    FUZZ_CHECK(m.params.empty());
    FUZZ_CHECK(m.path_known == !m.allow.empty());
  }
  // The paging and filter parameters that list handlers read.
  (void)t.get("after");
  (void)t.get("limit");
  (void)t.has("include_archived");
}

// Each accessor as a handler would call it; a failure must be an ApiError that renders.
template <class F>
void expect_api_error_only(F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    FUZZ_CHECK(e.status >= 400 && e.status < 600);
    (void)aicloud::dump_json(e.to_json());
  }
}

void check_body(std::string_view body) {
  json j;
  try {
    j = aicloud::parse_json_body(body);
  } catch (const ApiError& e) {
    FUZZ_CHECK(e.status == 400);
    (void)aicloud::dump_json(e.to_json());
    return;
  }
  // What the server would send back if a handler echoed the body.
  std::string out = aicloud::dump_json(j);
  FUZZ_CHECK(!out.empty());

  std::optional<aicloud::BodyReader> b;
  expect_api_error_only([&] { b.emplace(j); });
  if (!b) return;
  static const std::set<std::string> kRoles = {"owner", "admin", "member", "billing", "viewer"};
  expect_api_error_only([&] { (void)b->str("name", 1, 128); });
  expect_api_error_only([&] { (void)b->opt_str("description", 0, 1024); });
  expect_api_error_only([&] { (void)b->opt_bool("enabled"); });
  expect_api_error_only([&] { (void)b->opt_int("limit", 1, 100); });
  expect_api_error_only([&] { (void)b->opt_int("gpus", INT64_MIN, INT64_MAX); });
  expect_api_error_only([&] { (void)b->opt_enum("role", kRoles); });
  expect_api_error_only([&] {
    if (const json* o = b->opt_object("metadata")) (void)aicloud::dump_json(*o);
  });
  expect_api_error_only([&] { b->done(); });
}

void check_request(const Request& req) {
  std::string_view method = req.method();
  // Headers the pipeline reads.
  for (auto f : {"authorization", "openai-organization", "idempotency-key", "x-request-id", "content-type"}) {
    if (auto v = req.field(f)) (void)v->size();
  }
  // Router::match must cope with any string, parsed or not.
  (void)router().match(method, req.target());

  aicloud::http::Target t;
  if (aicloud::http::parse_target(req.target(), t)) {
    FUZZ_CHECK(!t.path.empty() && t.path.front() == '/');
    FUZZ_CHECK(t.path.find('\0') == std::string::npos);
    check_route(method, t);
  }
  check_body(req.body());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  size_t off = 0;
  RequestParser whole(limits().header_limit, limits().body_limit);
  Request req;
  for (int i = 0; i < 8 && off < size; ++i) {
    Outcome a = parse_one(whole, req, p + off, size - off, 0);

    // The same bytes arriving a few at a time (the step comes from the input, so it is
    // reproducible); capped so that large inputs stay fast. Both read the same request, or both
    // fail with the same error.
    if (size - off <= 8192) {
      RequestParser pieces(limits().header_limit, limits().body_limit);
      Request other;
      size_t step = 1 + (size - off) % 17;
      Outcome b = parse_one(pieces, other, p + off, size - off, step);
      if (a.ok != b.ok || (a.ok && !a.same_request(b)) || (!a.ok && a.ec != b.ec)) {
        std::fprintf(stderr, "one-shot: %s consumed %zu; in %zu-byte pieces: %s consumed %zu\n",
                     a.ec.message().c_str(), a.consumed, step, b.ec.message().c_str(), b.consumed);
        std::abort();
      }
    }
    // A request both read, they read alike (Beast is laxer: it takes some requests the server's
    // parser refuses, and they are not compared).
    if (a.ok) {
      Outcome b = beast_parse(p + off, size - off);
      if (b.ok) {
        if (connection_fields(req) > 1) b.keep_alive = a.keep_alive;
        FUZZ_CHECK(a.same_request(b));
      }
    }
    if (!a.ok) break;  // the server answers 400/413/431 and closes
    check_request(req);
    if (!req.keep_alive() || a.consumed == 0) break;
    off += a.consumed;
  }
  return 0;
}

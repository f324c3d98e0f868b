// The server's request parser (http/request_parser.h): request lines, fields, both body framings,
// keep-alive, every way a request can be split across reads, the limits, malformed requests, and
// agreement with Beast's request parser (the one it replaced) on a few thousand generated requests.
#include <gtest/gtest.h>

#include <boost/beast/http.hpp>

#include <strings.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "http/fields.h"
#include "http/request_parser.h"

using aicloud::http::Request;
using aicloud::http::RequestParser;
using R = RequestParser::Result;
namespace bhttp = boost::beast::http;

namespace {

constexpr size_t kHeadLimit = 16 * 1024;
constexpr uint64_t kBodyLimit = 1 << 20;

// What a request came to, as the server sees it.
struct Parsed {
  R result = R::kNeedMore;
  boost::system::error_code error;
  std::string method, target;
  unsigned version = 0;
  bool keep_alive = false;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string body;
  size_t left = 0;  // bytes after the request, not used
};

// Feeds text in pieces of the given sizes (cycled), as the server does: what a put() leaves
// unused is given again with the next piece.
Parsed feed(const std::string& text, const std::vector<size_t>& sizes, size_t head_limit = kHeadLimit,
            uint64_t body_limit = kBodyLimit) {
  RequestParser p(head_limit, body_limit);
  Request req;
  p.start(req);
  Parsed out;
  std::string buf;
  size_t at = 0, k = 0;
  while (at < text.size() && out.result == R::kNeedMore) {
    size_t n = std::min(sizes[k++ % sizes.size()], text.size() - at);
    buf.append(text, at, n);
    at += n;
    buf.erase(0, p.put(buf, out.result));
  }
  out.error = p.error();
  if (out.result == R::kDone) {
    out.method = req.method();
    out.target = req.target();
    out.version = req.version();
    out.keep_alive = req.keep_alive();
    for (size_t i = 0; i < req.field_count(); ++i) {
      out.fields.emplace_back(req.field_at(i).name, req.field_at(i).value);
    }
    out.body = req.body();
  }
  out.left = buf.size() + (text.size() - at);
  return out;
}

Parsed whole(const std::string& text) { return feed(text, {text.size() + 1}); }

// Each request read whole and in pieces of 1, 2/3 and 7 bytes must read the same.
void expect_same_in_pieces(const std::string& text, const Parsed& w) {
  for (const auto& sizes : std::vector<std::vector<size_t>>{{1}, {2, 3}, {7}}) {
    Parsed p = feed(text, sizes);
    EXPECT_EQ(p.result, w.result) << "pieces of " << sizes[0];
    EXPECT_EQ(p.error, w.error);
    EXPECT_EQ(p.method, w.method);
    EXPECT_EQ(p.target, w.target);
    EXPECT_EQ(p.fields, w.fields);
    EXPECT_EQ(p.body, w.body);
    EXPECT_EQ(p.keep_alive, w.keep_alive);
  }
}

TEST(RequestParser, RequestLinesFieldsBodiesAndKeepAlive) {
  using Fields = std::vector<std::pair<std::string, std::string>>;
  struct Case {
    const char* name;
    std::string text;
    std::string method, target;
    unsigned version;
    bool keep_alive;
    Fields fields;
    std::string body;
  };
  const std::vector<Case> cases = {
      {"a GET, no body", "GET /v1/models?limit=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-1\r\n\r\n", "GET",
       "/v1/models?limit=2", 11, true, {{"Host", "x"}, {"Authorization", "Bearer sk-1"}}, ""},
      {"a POST by length, the value's spaces trimmed",
       "POST /v1/chat/completions HTTP/1.1\r\nContent-Type:  application/json \t\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
       "POST", "/v1/chat/completions", 11, true, {{"Content-Type", "application/json"}, {"Content-Length", "7"}},
       "{\"a\":1}"},
      {"chunked, with an extension and a trailer",
       "POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n3;name=v\r\nabc\r\n2 \r\nde\r\n0\r\nX-Sum: 1\r\n\r\n",
       "POST", "/x", 11, true, {{"Transfer-Encoding", "Chunked"}}, "abcde"},
      {"HTTP/1.1 with Connection: close", "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", "GET", "/", 11,
       false, {{"Connection", "keep-alive, Close"}}, ""},
      {"two Connection fields: close wins", "GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
       "GET", "/", 11, false, {{"Connection", "keep-alive"}, {"Connection", "close"}}, ""},
      {"HTTP/1.0 closes by default", "GET / HTTP/1.0\r\n\r\n", "GET", "/", 10, false, {}, ""},
      {"HTTP/1.0 with keep-alive", "GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", "GET", "/", 10, true,
       {{"connection", "Keep-Alive"}}, ""},
      {"an empty value and an unknown method", "PURGE /a%20b HTTP/1.1\r\nX-Empty:\r\n\r\n", "PURGE", "/a%20b", 11,
       true, {{"X-Empty", ""}}, ""},
      {"a zero length", "DELETE /k HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "DELETE", "/k", 11, true,
       {{"Content-Length", "0"}}, ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Parsed w = whole(c.text);
    ASSERT_EQ(w.result, R::kDone) << w.error.message();
    EXPECT_EQ(w.method, c.method);
    EXPECT_EQ(w.target, c.target);
    EXPECT_EQ(w.version, c.version);
    EXPECT_EQ(w.keep_alive, c.keep_alive);
    EXPECT_EQ(w.fields, c.fields);
    EXPECT_EQ(w.body, c.body);
    EXPECT_EQ(w.left, 0u);
    expect_same_in_pieces(c.text, w);
  }
}

TEST(RequestParser, FieldsAreFoundByNameInAnyCaseAndPipelinedBytesAreLeft) {
  const std::string first = "POST /a HTTP/1.1\r\nX-Request-Id: abc\r\nx-request-id: second\r\nContent-Length: 2\r\n\r\n{}";
  const std::string second = "GET /b HTTP/1.1\r\n\r\n";
  RequestParser p(kHeadLimit, kBodyLimit);
  Request req;
  p.start(req);
  std::string buf = first + second;
  R r = R::kNeedMore;
  size_t used = p.put(buf, r);
  ASSERT_EQ(r, R::kDone);
  EXPECT_EQ(used, first.size());
  EXPECT_EQ(req.field("x-request-id").value_or("none"), "abc");  // the first of the name
  EXPECT_EQ(req.field("X-REQUEST-ID").value_or("none"), "abc");
  EXPECT_FALSE(req.field("x-request").has_value());
  EXPECT_EQ(req.body(), "{}");
  // The same parser and request, for the next request on the connection.
  buf.erase(0, used);
  p.start(req);
  used = p.put(buf, r);
  ASSERT_EQ(r, R::kDone);
  EXPECT_EQ(used, second.size());
  EXPECT_EQ(req.method(), "GET");
  EXPECT_EQ(req.target(), "/b");
  EXPECT_EQ(req.field_count(), 0u);
  EXPECT_EQ(req.body(), "");
  // A large body's buffer is not kept for the next request (an idle connection would hold it);
  // a small one is.
  std::string big = "POST /c HTTP/1.1\r\nContent-Length: 200000\r\n\r\n" + std::string(200000, 'b');
  p.start(req);
  ASSERT_EQ(p.put(big, r), big.size());
  ASSERT_EQ(r, R::kDone);
  EXPECT_GE(req.body().capacity(), 200000u);
  p.start(req);
  EXPECT_LT(req.body().capacity(), 200000u);
  buf = "POST /d HTTP/1.1\r\nContent-Length: 3000\r\n\r\n" + std::string(3000, 's') + second;
  used = p.put(buf, r);
  ASSERT_EQ(r, R::kDone);
  p.start(req);
  EXPECT_GE(req.body().capacity(), 3000u);
  used = p.put(std::string_view(buf).substr(used), r);
  ASSERT_EQ(r, R::kDone);
  EXPECT_EQ(req.target(), "/b");
  // A request moved elsewhere keeps its views (they are offsets into its own head).
  Request moved = std::move(req);
  EXPECT_EQ(moved.target(), "/b");
}

TEST(RequestParser, MalformedRequestsAreRefusedWithBeastsErrors) {
  using E = bhttp::error;
  struct Case {
    std::string text;
    E error;
  };
  const std::vector<Case> cases = {
      {"GARBAGE\r\n\r\n", E::bad_method},
      {"GET\r\n\r\n", E::bad_method},
      {" GET / HTTP/1.1\r\n\r\n", E::bad_method},
      {"G(T / HTTP/1.1\r\n\r\n", E::bad_method},
      {"GET /healthz\r\n\r\n", E::bad_target},
      {"GET  / HTTP/1.1\r\n\r\n", E::bad_target},
      {std::string("GET /a\0b HTTP/1.1\r\n\r\n", 21), E::bad_target},
      {"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", E::bad_target},
      {"GET / HTTP/1.1 extra\r\n\r\n", E::bad_version},
      {"GET / HTTP/x.y\r\n\r\n", E::bad_version},
      {"GET / HTTP/2.0\r\n\r\n", E::bad_version},
      {"GET / FTP/1.1\r\n\r\n", E::bad_version},
      {"GET / HTTP/1.1\n\n", E::bad_line_ending},
      {"GET / HTTP/1.1\r\nHost: x\n\r\n", E::bad_line_ending},
      {"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n", E::bad_field},
      {"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", E::bad_field},
      {"GET / HTTP/1.1\r\nName : x\r\n\r\n", E::bad_field},
      {"GET / HTTP/1.1\r\n: x\r\n\r\n", E::bad_field},
      {"GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n", E::bad_value},
      {"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", E::bad_value},
      {"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", E::bad_content_length},
      {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", E::bad_content_length},
      {"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", E::bad_content_length},
      {"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", E::bad_content_length},
      {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", E::bad_content_length},
      {"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", E::bad_content_length},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", E::bad_transfer_encoding},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", E::bad_transfer_encoding},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", E::bad_transfer_encoding},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
       E::bad_transfer_encoding},
      {"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
       E::bad_transfer_encoding},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", E::bad_chunk},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", E::bad_chunk},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\n{}\r\n0\r\n\r\n", E::bad_chunk},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nBad Trailer: 1\r\n\r\n", E::bad_field},
      {std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 15), E::bad_method},  // TLS
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.text));
    Parsed w = whole(c.text);
    EXPECT_EQ(w.result, R::kError);
    EXPECT_EQ(w.error, bhttp::make_error_code(c.error)) << w.error.message();
    expect_same_in_pieces(c.text, w);
  }
}

TEST(RequestParser, LimitsOnTheHeadAndTheBody) {
  // A head over the limit, whether its lines end or not.
  std::string many = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 2000; ++i) many += "X-Filler-" + std::to_string(i) + ": abcdefgh\r\n";
  EXPECT_EQ(whole(many + "\r\n").error, bhttp::error::header_limit);
  EXPECT_EQ(whole("GET /" + std::string(kHeadLimit, 'p') + " HTTP/1.1\r\n\r\n").error, bhttp::error::header_limit);
  EXPECT_EQ(feed("GET / HTTP/1.1\r\nX: " + std::string(kHeadLimit, 'b'), {4096}).error, bhttp::error::header_limit);
  // Just under it is read.
  EXPECT_EQ(whole("GET / HTTP/1.1\r\nX: " + std::string(kHeadLimit - 40, 'b') + "\r\n\r\n").result, R::kDone);
  // A declared body over the limit is refused at once, before any of it came.
  Parsed declared = whole("POST / HTTP/1.1\r\nContent-Length: " + std::to_string(kBodyLimit + 1) + "\r\n\r\n");
  EXPECT_EQ(declared.result, R::kError);
  EXPECT_EQ(declared.error, bhttp::error::body_limit);
  // A chunked one when a chunk would take it over.
  std::string chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string half(kBodyLimit / 2, 'a');
  char line[32];
  snprintf(line, sizeof line, "%zx\r\n", half.size());
  Parsed over = feed(chunked + line + half + "\r\n" + line + half + "\r\n1\r\na\r\n0\r\n\r\n", {65536});
  EXPECT_EQ(over.error, bhttp::error::body_limit);
  Parsed at_limit = feed(chunked + line + half + "\r\n" + line + half + "\r\n0\r\n\r\n", {65536});
  ASSERT_EQ(at_limit.result, R::kDone) << at_limit.error.message();
  EXPECT_EQ(at_limit.body.size(), kBodyLimit);
  // A chunk-size line that never ends.
  EXPECT_EQ(feed(chunked + "1;" + std::string(8192, 'e'), {1024}).error, bhttp::error::bad_chunk);
  // Trailers count against the head limit.
  EXPECT_EQ(whole(chunked + "0\r\nX: " + std::string(kHeadLimit, 't') + "\r\n\r\n").error, bhttp::error::header_limit);
}

// The word-at-a-time check of a field value's bytes against the table it stands for: every byte
// value at every place of values of several lengths, alone and beside a tab.
TEST(RequestParser, FieldValueBytesAreCheckedAsTheTableSays) {
  using aicloud::http::kValueChar;
  using aicloud::http::value_chars_ok;
  for (size_t len : {1, 7, 8, 9, 16, 23}) {
    for (size_t at = 0; at < len; ++at) {
      for (int c = 0; c < 256; ++c) {
        std::string v(len, 'a');
        v[at] = char(c);
        ASSERT_EQ(value_chars_ok(v), kValueChar[size_t(c)]) << "byte " << c << " at " << at << " of " << len;
        if (len > 1) {
          v[(at + 1) % len] = '\t';
          ASSERT_EQ(value_chars_ok(v), kValueChar[size_t(c)]) << "byte " << c << " at " << at << " beside a tab";
        }
      }
    }
  }
}

// ---- agreement with Beast ----

std::string pick(std::mt19937& rng, const std::vector<std::string>& v) { return v[rng() % v.size()]; }

// A request of the kinds clients send: methods, targets, the fields the API reads in varied
// case and spacing, bodies by length and chunked (with extensions and trailers), both versions.
std::string generate(std::mt19937& rng) {
  std::string method = pick(rng, {"GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"});
  std::string target = pick(rng, {"/", "/v1/models", "/v1/chat/completions", "/v1/organization/projects?limit=2&after=p_1",
                                  "/a%20b/c?x=%2F", "/healthz"});
  std::string version = rng() % 5 == 0 ? "HTTP/1.0" : "HTTP/1.1";
  std::string text = method + " " + target + " " + version + "\r\n";
  int nfields = int(rng() % 6);
  bool connection = false;  // (one at most: Beast's keep_alive() reads only the first, the parser all)
  for (int i = 0; i < nfields; ++i) {
    std::string name = pick(rng, {"Host", "authorization", "Content-Type", "X-Request-Id", "OpenAI-Organization",
                                  "Accept", "User-Agent", "Connection", "x-stainless-os"});
    if (name == "Connection" && std::exchange(connection, true)) continue;
    std::string value = name == "Connection" ? pick(rng, {"keep-alive", "close", "Keep-Alive, Upgrade", "Close"})
                                             : pick(rng, {"x", "Bearer sk-proj-abc", "application/json", "", "a b  c",
                                                          "OpenAI/NodeJS 4.0", "\xc3\xa9t\xc3\xa9"});
    std::string pad = pick(rng, {"", " ", "  ", "\t", " \t"});
    text += name + ":" + pad + value + pick(rng, {"", " ", "\t"}) + "\r\n";
  }
  std::string body;
  size_t n = rng() % 4 == 0 ? 0 : rng() % 300;
  for (size_t i = 0; i < n; ++i) body += char(rng() % 256);
  if (rng() % 3 == 0) {
    text += pick(rng, {"Transfer-Encoding: chunked", "transfer-encoding:  CHUNKED "}) + "\r\n\r\n";
    size_t at = 0;
    while (at < body.size()) {
      size_t c = std::min<size_t>(body.size() - at, 1 + rng() % 100);
      char size[32];
      snprintf(size, sizeof size, rng() % 2 ? "%zx" : "%zX", c);
      text += std::string(size) + (rng() % 4 == 0 ? ";ext=1" : "") + "\r\n" + body.substr(at, c) + "\r\n";
      at += c;
    }
    text += "0\r\n" + std::string(rng() % 3 == 0 ? "X-Trailer: t\r\n" : "") + "\r\n";
  } else {
    if (!body.empty() || rng() % 2) text += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    text += "\r\n" + body;
  }
  return text;
}

void by_name(std::vector<std::pair<std::string, std::string>>& fields) {
  std::stable_sort(fields.begin(), fields.end(), [](const auto& a, const auto& b) {
    return strcasecmp(a.first.c_str(), b.first.c_str()) < 0;
  });
}

struct BeastParsed {
  bool ok = false;
  std::string method, target, body;
  unsigned version = 0;
  bool keep_alive = false;
  std::vector<std::pair<std::string, std::string>> fields;
};

BeastParsed beast_parse(const std::string& text) {
  bhttp::request_parser<bhttp::string_body> p;
  p.eager(true);
  p.header_limit(kHeadLimit);
  p.body_limit(kBodyLimit);
  boost::system::error_code ec;
  size_t used = 0;
  while (used < text.size() && !p.is_done()) {
    size_t n = p.put(boost::asio::buffer(text.data() + used, text.size() - used), ec);
    if (ec || n == 0) break;
    used += n;
  }
  BeastParsed out;
  if (ec || !p.is_done()) return out;
  auto& m = p.get();
  out.ok = true;
  out.method = std::string(m.method_string());
  out.target = std::string(m.target());
  out.version = m.version();
  out.keep_alive = m.keep_alive();
  // (Beast keeps trailers among the fields, where the server's parser drops them; and it walks
  // fields of one name together: compared by name, in arrival order within a name.)
  for (const auto& f : m) {
    if (f.name_string() != "X-Trailer") out.fields.emplace_back(std::string(f.name_string()), std::string(f.value()));
  }
  by_name(out.fields);
  out.body = m.body();
  return out;
}

TEST(RequestParser, AgreesWithBeastOnGeneratedRequests) {
  std::mt19937 rng(20261206);
  int accepted = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string text = generate(rng);
    SCOPED_TRACE(::testing::PrintToString(text));
    BeastParsed b = beast_parse(text);
    std::vector<size_t> sizes{1 + rng() % 40, 1 + rng() % 300};
    Parsed p = feed(text, sizes);
    ASSERT_TRUE(b.ok) << "the generator made a request Beast refuses";
    ASSERT_EQ(p.result, R::kDone) << p.error.message();
    ++accepted;
    EXPECT_EQ(p.method, b.method);
    EXPECT_EQ(p.target, b.target);
    EXPECT_EQ(p.version, b.version);
    EXPECT_EQ(p.keep_alive, b.keep_alive);
    by_name(p.fields);
    EXPECT_EQ(p.fields, b.fields);
    EXPECT_EQ(p.body, b.body);
    EXPECT_EQ(p.left, 0u);
  }
  EXPECT_EQ(accepted, 3000);
}

}  // namespace

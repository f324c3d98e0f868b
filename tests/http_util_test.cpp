// HTTP helpers as a library: routing, request targets, strict JSON bodies, list shape, metrics.
#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "api/context.h"
#include "http/fields.h"
#include "http/metrics.h"
#include "http/router.h"
#include "util/error.h"
#include "util/json_util.h"
#include "util/text_writer.h"

using namespace aicloud;
using aicloud::http::Router;
using aicloud::http::Target;

namespace {

template <class F>
ApiError catch_api_error(F&& fn) {
  try {
    fn();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no ApiError thrown";
  return ApiError(0, "", "");
}

// The first top-level member named key, as the gateway's usage read finds it.
std::optional<std::string_view> top_level_member(std::string_view doc, std::string_view key) {
  std::optional<std::string_view> found;
  aicloud::for_each_top_level_member(doc, [&](std::string_view k, std::string_view v) {
    if (k != key) return true;
    found = v;
    return false;
  });
  return found;
}

}  // namespace

// ---- Router ----

TEST(Router, LiteralsPlaceholdersAndParams) {
  Router r;
  int list = r.add("GET", "/v1/items");
  int create = r.add("POST", "/v1/items");
  int get = r.add("GET", "/v1/items/{item_id}");
  int del = r.add("DELETE", "/v1/items/{item_id}");
  int part = r.add("GET", "/v1/items/{item_id}/parts/{part_id}");
  EXPECT_EQ(r.size(), 5u);
  EXPECT_EQ(r.pattern(part), "/v1/items/{item_id}/parts/{part_id}");
  EXPECT_EQ(r.method(del), "DELETE");

  auto m = r.match("GET", "/v1/items");
  EXPECT_EQ(m.route, list);
  EXPECT_TRUE(m.params.empty());
  EXPECT_EQ(r.match("POST", "/v1/items").route, create);

  m = r.match("GET", "/v1/items/it_42");
  EXPECT_EQ(m.route, get);
  EXPECT_EQ(m.param("item_id"), "it_42");
  EXPECT_EQ(m.param("nope"), "");
  EXPECT_EQ(r.match("DELETE", "/v1/items/it_42").route, del);

  m = r.match("GET", "/v1/items/a/parts/b");
  EXPECT_EQ(m.route, part);
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.param("item_id"), "a");
  EXPECT_EQ(m.param("part_id"), "b");

  // Literal segments must match exactly.
  EXPECT_EQ(r.match("GET", "/v1/item").route, -1);
  EXPECT_EQ(r.match("GET", "/v1/items/a/part/b").route, -1);
  EXPECT_EQ(r.match("GET", "/v2/items").route, -1);
  EXPECT_EQ(r.match("GET", "/v1/Items").route, -1);
  EXPECT_EQ(r.match("GET", "/v1/items/a/parts").route, -1);  // too short
  EXPECT_EQ(r.match("GET", "/v1/items/a/parts/b/c").route, -1);  // too long
  EXPECT_FALSE(r.match("GET", "/v1/items/a/parts/b/c").path_known);
  EXPECT_EQ(r.match("get", "/v1/items").route, -1);  // methods are case-sensitive
}

TEST(Router, LongPathsMatchWhatTheyShouldAndNothingElse) {
  // Paths are split without allocating, into at most 16 segments: a route may have 16, and a
  // request path with more matches nothing (it cannot be any route's).
  Router r;
  std::string sixteen, longer;
  for (int i = 0; i < 16; ++i) sixteen += "/s" + std::to_string(i);
  int deep = r.add("GET", sixteen.substr(0, sixteen.rfind('/')) + "/{last}");
  auto m = r.match("GET", sixteen);
  EXPECT_EQ(m.route, deep);
  EXPECT_EQ(m.param("last"), "s15");
  EXPECT_EQ(r.match("GET", sixteen + "/x").route, -1);
  for (int i = 0; i < 200; ++i) longer += "/a";
  EXPECT_EQ(r.match("GET", longer).route, -1);
  EXPECT_FALSE(r.match("GET", longer).path_known);
  EXPECT_THROW(r.add("GET", sixteen + "/x"), std::invalid_argument);
}

TEST(Router, WrongMethodIs405WithAllow) {
  Router r;
  r.add("GET", "/v1/items");
  r.add("POST", "/v1/items");
  r.add("GET", "/v1/items/{id}");
  r.add("DELETE", "/v1/items/{id}");
  r.add("POST", "/v1/items/{id}/archive");

  auto m = r.match("PUT", "/v1/items");
  EXPECT_EQ(m.route, -1);
  EXPECT_TRUE(m.path_known);
  EXPECT_EQ(m.allow, "GET, POST");
  EXPECT_TRUE(m.params.empty());

  m = r.match("POST", "/v1/items/x");
  EXPECT_EQ(m.route, -1);
  EXPECT_TRUE(m.path_known);
  EXPECT_EQ(m.allow, "GET, DELETE");

  m = r.match("GET", "/v1/items/x/archive");
  EXPECT_TRUE(m.path_known);
  EXPECT_EQ(m.allow, "POST");

  m = r.match("GET", "/v1/nothing");
  EXPECT_EQ(m.route, -1);
  EXPECT_FALSE(m.path_known);
  EXPECT_EQ(m.allow, "");

  // A matched request lists every method of its path too.
  m = r.match("GET", "/v1/items");
  EXPECT_EQ(m.allow, "GET, POST");
}

TEST(Router, LiteralSegmentWinsOverPlaceholderInAnyOrder) {
  // OpenAI's API has such pairs (POST /v1/threads/runs next to POST /v1/threads/{thread_id}):
  // the literal must win whichever was added first.
  for (bool literal_first : {true, false}) {
    SCOPED_TRACE(literal_first ? "literal first" : "placeholder first");
    Router r;
    int lit = -1, ph = -1;
    if (literal_first) {
      lit = r.add("POST", "/v1/threads/runs");
      ph = r.add("POST", "/v1/threads/{thread_id}");
    } else {
      ph = r.add("POST", "/v1/threads/{thread_id}");
      lit = r.add("POST", "/v1/threads/runs");
    }
    r.add("GET", "/v1/threads/{thread_id}");
    auto m = r.match("POST", "/v1/threads/runs");
    EXPECT_EQ(m.route, lit);
    EXPECT_TRUE(m.params.empty());
    m = r.match("POST", "/v1/threads/thread_1");
    EXPECT_EQ(m.route, ph);
    EXPECT_EQ(m.param("thread_id"), "thread_1");
    // The GET on the literal path is the placeholder route; Allow names each method once.
    m = r.match("GET", "/v1/threads/runs");
    EXPECT_NE(m.route, -1);
    EXPECT_EQ(m.param("thread_id"), "runs");
    m = r.match("DELETE", "/v1/threads/runs");
    EXPECT_EQ(m.route, -1);
    EXPECT_TRUE(m.path_known);
    EXPECT_EQ(m.allow, "POST, GET");
  }
  // The earliest segment decides: /a/{x}/c against /a/b/{y} for /a/b/c.
  Router r;
  int axc = r.add("GET", "/a/{x}/c");
  int aby = r.add("GET", "/a/b/{y}");
  EXPECT_EQ(r.match("GET", "/a/b/c").route, aby);
  EXPECT_EQ(r.match("GET", "/a/z/c").route, axc);
}

// A literal path asked with its route's method is answered from a table filled by the walk; the
// same path spelled with a doubled slash (the same segments, not in the table) is walked. Both
// must answer alike for every route and method, and a route added later must be seen.
TEST(Router, TheLiteralTableAnswersAsTheWalkDoes) {
  Router r;
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"POST", "/v1/chat/completions"}, {"GET", "/v1/chat/completions"},   {"GET", "/v1/chat/{completion_id}"},
      {"DELETE", "/v1/chat/{id}"},      {"POST", "/v1/threads/runs"},      {"POST", "/v1/threads/{thread_id}"},
      {"GET", "/v1/models"},            {"GET", "/v1/models/{model}"},     {"GET", "/{any}/models"},
      {"POST", "/v1/embeddings"},       {"POST", "/v1/embeddings"},       {"GET", "/"}};
  for (const auto& [m, p] : routes) r.add(m, p);
  auto same = [&](const std::string& method, const std::string& path) {
    SCOPED_TRACE(method + " " + path);
    http::RouteMatch a = r.match(method, path), b = r.match(method, "/" + path);
    EXPECT_EQ(a.route, b.route);
    EXPECT_EQ(a.path_known, b.path_known);
    EXPECT_EQ(a.allow, b.allow);
    EXPECT_EQ(a.params, b.params);
  };
  for (const auto& [m, p] : routes) {
    for (const char* method : {"GET", "POST", "DELETE", "PUT"}) same(method, p);
  }
  EXPECT_EQ(r.match("POST", "/v1/embeddings").route, 9) << "the first of two equal routes";
  EXPECT_EQ(r.match("GET", "/v1/chat/completions").route, 1) << "the literal route, not {completion_id}";
  EXPECT_EQ(r.match("POST", "/v1/chat/completions").allow, "POST, GET, DELETE");
  // Added after matching: the table is filled again.
  int put = r.add("PUT", "/v1/chat/completions");
  EXPECT_EQ(r.match("PUT", "/v1/chat/completions").route, put);
  EXPECT_EQ(r.match("POST", "/v1/chat/completions").allow, "POST, GET, DELETE, PUT");
  same("PUT", "/v1/chat/completions");
}

// Field names are compared a word at a time: against a byte at a time, for every length up to
// 24, a difference at every position (in case only, or not), and bytes that fold onto letters.
TEST(Fields, TokenIsComparesInAnyCaseAtEveryLength) {
  auto bytewise = [](std::string_view t, std::string_view l) {
    if (t.size() != l.size()) return false;
    for (size_t i = 0; i < t.size(); ++i) {
      if ((t[i] | 0x20) != l[i]) return false;
    }
    return true;
  };
  const std::string lower = "content-length-x-19ab2cd";
  for (size_t n = 0; n <= lower.size(); ++n) {
    std::string l = lower.substr(0, n);
    std::string upper = l;
    for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_TRUE(http::token_is(l, l)) << l;
    EXPECT_TRUE(http::token_is(upper, l)) << upper;
    for (size_t at = 0; at < n; ++at) {
      for (char c : {'q', 'Q', '^', '~', '\x7f', '\x0d', '-'}) {
        std::string t = upper;
        t[at] = c;
        ASSERT_EQ(http::token_is(t, l), bytewise(t, l)) << t << " " << l;
      }
    }
    EXPECT_FALSE(http::token_is(l + "a", l));
  }
  bool close = false, keep = false;
  http::connection_options("Keep-Alive", close, keep);
  EXPECT_TRUE(keep && !close);
  close = keep = false;
  http::connection_options("CLOSE", close, keep);
  EXPECT_TRUE(close && !keep);
  close = keep = false;
  http::connection_options("upgrade, keep-alive ,Close", close, keep);
  EXPECT_TRUE(close && keep);
  close = keep = false;
  http::connection_options("keep-alives", close, keep);
  EXPECT_FALSE(close || keep);
}

// ---- request targets ----

TEST(Target, PathAndQuery) {
  Target t;
  ASSERT_TRUE(http::parse_target("/v1/items?limit=10&after=it_5&flag&empty=&sp=a%20b&plus=a+b", t));
  EXPECT_EQ(t.path, "/v1/items");
  EXPECT_EQ(t.get("limit"), "10");
  EXPECT_EQ(t.get("after"), "it_5");
  EXPECT_TRUE(t.has("flag"));
  EXPECT_EQ(t.get("flag"), "");
  EXPECT_TRUE(t.has("empty"));
  EXPECT_EQ(t.get("sp"), "a b");
  EXPECT_EQ(t.get("plus"), "a b");  // + is a space in a query
  EXPECT_FALSE(t.has("missing"));
  EXPECT_EQ(t.get("missing"), "");

  Target p;
  ASSERT_TRUE(http::parse_target("/v1/a+b/%7Eme", p));
  EXPECT_EQ(p.path, "/v1/a+b/~me");  // but not in a path
  EXPECT_TRUE(p.query.empty());

  Target q;
  ASSERT_TRUE(http::parse_target("/x?a=1&&b=%3D%26&c=x=y", q));
  EXPECT_EQ(q.get("a"), "1");
  EXPECT_EQ(q.get("b"), "=&");
  EXPECT_EQ(q.get("c"), "x=y");  // only the first '=' splits
  EXPECT_EQ(q.query.size(), 3u);

  Target e;
  ASSERT_TRUE(http::parse_target("/?", e));
  EXPECT_EQ(e.path, "/");
  EXPECT_TRUE(e.query.empty());
  // The first of a repeated key.
  Target r;
  ASSERT_TRUE(http::parse_target("/x?k=1&k=2", r));
  EXPECT_EQ(r.get("k"), "1");
}

TEST(Target, BadTargetsAreRejected) {
  for (std::string bad : {"", "v1/items", "*", "http://example.com/v1", "/a%", "/a%2", "/a%zz", "/a%g0", "/a%0g",
                          "/a?x=%", "/a?x=%4", "/a?x=%zz", "/a?%zz=1", "/a%00b", "/a?x=1%"}) {
    Target t;
    EXPECT_FALSE(http::parse_target(bad, t)) << bad;
  }
  Target t;
  EXPECT_FALSE(http::parse_target(std::string("/a\0b", 4), t));  // a raw NUL in the path
}

TEST(Target, PercentDecode) {
  std::string out;
  EXPECT_TRUE(http::percent_decode("%41%42c%6a%6A", out, false));
  EXPECT_EQ(out, "ABcjj");
  EXPECT_TRUE(http::percent_decode("a+b", out, false));
  EXPECT_EQ(out, "a+b");
  EXPECT_TRUE(http::percent_decode("a+b", out, true));
  EXPECT_EQ(out, "a b");
  EXPECT_TRUE(http::percent_decode("%2B", out, true));
  EXPECT_EQ(out, "+");
  EXPECT_TRUE(http::percent_decode("", out, true));
  EXPECT_EQ(out, "");
  EXPECT_TRUE(http::percent_decode("%ff", out, false));
  EXPECT_EQ(out, "\xff");
  for (std::string bad : {"%", "%4", "a%", "%%", "%-1", "% 1", "%1 ", "%x1"}) {
    EXPECT_FALSE(http::percent_decode(bad, out, true)) << bad;
  }
}

// ---- strict JSON bodies ----

TEST(JsonBody, ParseErrorsAre400) {
  EXPECT_EQ(parse_json_body(""), json::object());
  EXPECT_EQ(parse_json_body(" \r\n\t"), json::object());
  EXPECT_EQ(parse_json_body("{\"a\":1}")["a"], 1);
  for (std::string bad : {"{", "{\"a\":}", "{a:1}", "[1,]", "{} x", "nul", "{\"a\":1}}", "'x'", "{\"a\":01}",
                          "{\"a\":\"\x01\"}",                  // raw control character
                          "{\"a\":\"\xff\"}",                  // invalid UTF-8
                          "{\"a\":\"\xc0\xaf\"}",              // overlong encoding
                          "{\"a\":\"\xed\xa0\x80\"}",          // encoded surrogate
                          "{\"a\":\"\xe2\x82\"}",              // truncated sequence
                          "{\"a\":\"\\ud800\"}",               // lone surrogate escape
                          "{\"a\":\"\\x41\"}",                 // bad escape
                          "\xef\xbb\xbf{}x",
                          "/* c */ {}",
                          "{\"a\":1e400}"}) {                  // out of a double's range
    SCOPED_TRACE(bad);
    ApiError e = catch_api_error([&] { parse_json_body(bad); });
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "invalid_json");
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.to_json()["error"]["code"], "invalid_json");
    // What the server sends (dump_json) is valid JSON even when the input was not UTF-8.
    EXPECT_NO_THROW(json::parse(dump_json(e.to_json())));
  }
  // Valid UTF-8 passes through.
  EXPECT_EQ(parse_json_body("{\"a\":\"h\xc3\xa9\\u2603\"}")["a"], "h\xc3\xa9\xe2\x98\x83");
}

TEST(JsonBody, DeepNestingIs400NotACrash) {
  // A 16 MiB body may nest millions deep; copying or dumping such a value recurses once per
  // level and overflows the stack. The parser refuses it up front.
  for (size_t depth : {size_t(100000), size_t(2000000)}) {
    std::string arrays = std::string(depth, '[') + std::string(depth, ']');
    ApiError e = catch_api_error([&] { parse_json_body(arrays); });
    EXPECT_EQ(e.status, 400);
    std::string objects = "{\"a\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
    e = catch_api_error([&] {
      json body = parse_json_body(objects);
      BodyReader r(body);
      r.opt_array("a");
      r.done();
    });
    EXPECT_EQ(e.status, 400);
    // Unterminated too.
    e = catch_api_error([&] { parse_json_body(std::string(depth, '[')); });
    EXPECT_EQ(e.status, 400);
  }
  // Brackets inside strings are not nesting.
  std::string s = "{\"a\":\"" + std::string(10000, '[') + "\",\"b\":\"\\\"[[[\"}";
  json j = parse_json_body(s);
  EXPECT_EQ(j["a"].get<std::string>().size(), 10000u);
  // Reasonable nesting is fine.
  std::string ok = std::string(32, '[') + "1" + std::string(32, ']');
  EXPECT_NO_THROW(parse_json_body(ok));
  json nested = parse_json_body("{\"a\":{\"b\":{\"c\":[{\"d\":[1,2,{\"e\":null}]}]}}}");
  EXPECT_EQ(nested["a"]["b"]["c"][0]["d"][1], 2);
}

TEST(BodyReader, TypesRangesAndUnknownFields) {
  json body = {{"name", "acme"}, {"n", 5},         {"neg", -3},        {"flag", true},
               {"mode", "fast"}, {"obj", {{"k", 1}}}, {"arr", {1, 2}}, {"nil", nullptr}};
  BodyReader r(body);
  EXPECT_EQ(r.str("name"), "acme");
  EXPECT_EQ(r.opt_int("n", 1, 10), 5);
  EXPECT_EQ(r.opt_int("neg", -10, 0), -3);
  EXPECT_EQ(r.opt_bool("flag"), true);
  EXPECT_EQ(r.opt_enum("mode", {"fast", "slow"}), "fast");
  ASSERT_NE(r.opt_object("obj"), nullptr);
  EXPECT_EQ((*r.opt_object("obj"))["k"], 1);
  ASSERT_NE(r.opt_array("arr"), nullptr);
  EXPECT_EQ(r.opt_array("arr")->size(), 2u);
  // Absent and null are both "not given".
  EXPECT_FALSE(r.opt_str("nil"));
  EXPECT_FALSE(r.opt_str("absent"));
  EXPECT_FALSE(r.opt_int("absent", 0, 1));
  EXPECT_FALSE(r.opt_bool("absent"));
  EXPECT_FALSE(r.opt_enum("absent", {"x"}));
  EXPECT_EQ(r.opt_object("absent"), nullptr);
  EXPECT_EQ(r.opt_array("absent"), nullptr);
  EXPECT_NO_THROW(r.done());

  // Missing required.
  ApiError e = catch_api_error([&] { BodyReader(json::object()).str("name"); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "missing_required_parameter");
  EXPECT_EQ(e.param, "name");
  e = catch_api_error([&] { BodyReader(json{{"name", nullptr}}).str("name"); });
  EXPECT_EQ(e.code, "missing_required_parameter");

  // Wrong types name the field.
  struct Case {
    json body;
    std::function<void(BodyReader&)> read;
  };
  std::vector<Case> wrong = {
      {{{"f", 5}}, [](BodyReader& b) { b.str("f"); }},
      {{{"f", {1}}}, [](BodyReader& b) { b.opt_str("f"); }},
      {{{"f", "5"}}, [](BodyReader& b) { b.opt_int("f", 0, 10); }},
      {{{"f", 1.5}}, [](BodyReader& b) { b.opt_int("f", 0, 10); }},
      {{{"f", 2.0}}, [](BodyReader& b) { b.opt_int("f", 0, 10); }},
      {{{"f", true}}, [](BodyReader& b) { b.opt_int("f", 0, 10); }},
      {{{"f", 1}}, [](BodyReader& b) { b.opt_bool("f"); }},
      {{{"f", "true"}}, [](BodyReader& b) { b.opt_bool("f"); }},
      {{{"f", 1}}, [](BodyReader& b) { b.opt_enum("f", {"1"}); }},
      {{{"f", "x"}}, [](BodyReader& b) { b.opt_object("f"); }},
      {{{"f", json::array()}}, [](BodyReader& b) { b.opt_object("f"); }},
      {{{"f", json::object()}}, [](BodyReader& b) { b.opt_array("f"); }},
  };
  for (auto& c : wrong) {
    SCOPED_TRACE(c.body.dump());
    BodyReader b(c.body);
    e = catch_api_error([&] { c.read(b); });
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "f");
    EXPECT_EQ(e.code, "invalid_value");
    EXPECT_NE(std::string(e.what()).find("'f'"), std::string::npos);
  }

  // Integer ranges, including values beyond int64.
  auto int_err = [&](json v, int64_t lo, int64_t hi) {
    BodyReader b(json{{"n", v}});
    return catch_api_error([&] { b.opt_int("n", lo, hi); });
  };
  EXPECT_EQ(int_err(11, 1, 10).param, "n");
  EXPECT_EQ(int_err(0, 1, 10).status, 400);
  EXPECT_EQ(int_err(-1, 0, 10).status, 400);
  EXPECT_EQ(int_err(json(uint64_t(18446744073709551615ull)), 0, INT64_MAX - 1).status, 400);
  EXPECT_EQ(int_err(json(INT64_MIN), INT64_MIN + 1, 0).status, 400);
  EXPECT_EQ(BodyReader(json{{"n", INT64_MAX}}).opt_int("n", 0, INT64_MAX), INT64_MAX);
  EXPECT_EQ(BodyReader(json{{"n", uint64_t(18446744073709551615ull)}}).opt_int("n", 0, INT64_MAX), INT64_MAX);
  EXPECT_EQ(BodyReader(json{{"n", 1}}).opt_int("n", 1, 1), 1);
  // From text: a number too big for any integer type is a float, so "an integer" is refused.
  {
    json big = parse_json_body("{\"n\": 100000000000000000000000}");
    BodyReader b(big);
    EXPECT_EQ(catch_api_error([&] { b.opt_int("n", 0, 10); }).param, "n");
  }

  // Enum: a value outside the set lists the allowed ones.
  {
    BodyReader b(json{{"mode", "turbo"}});
    e = catch_api_error([&] { b.opt_enum("mode", {"fast", "slow"}); });
    EXPECT_EQ(e.param, "mode");
    EXPECT_NE(std::string(e.what()).find("'fast'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'slow'"), std::string::npos);
    BodyReader c(json{{"mode", "FAST"}});
    EXPECT_EQ(catch_api_error([&] { c.opt_enum("mode", {"fast", "slow"}); }).status, 400);
  }

  // String lengths (bytes), inclusive bounds.
  {
    BodyReader b(json{{"s", "abc"}});
    EXPECT_EQ(b.opt_str("s", 3, 3), "abc");
    EXPECT_EQ(catch_api_error([&] { b.opt_str("s", 4, 10); }).param, "s");
    EXPECT_EQ(catch_api_error([&] { b.opt_str("s", 0, 2); }).param, "s");
    EXPECT_EQ(catch_api_error([&] { BodyReader(json{{"s", ""}}).str("s"); }).param, "s");  // min 1 by default
    EXPECT_EQ(catch_api_error([&] { BodyReader(json{{"s", std::string(257, 'x')}}).str("s"); }).param, "s");
    EXPECT_EQ(BodyReader(json{{"s", std::string(256, 'x')}}).str("s").size(), 256u);
  }

  // Unknown fields are named by done(); fields that were read are fine even if absent.
  {
    BodyReader b(json{{"name", "x"}, {"nmae", "typo"}});
    b.str("name");
    e = catch_api_error([&] { b.done(); });
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "unknown_parameter");
    EXPECT_EQ(e.param, "nmae");
    EXPECT_NE(std::string(e.what()).find("'nmae'"), std::string::npos);
  }
  {
    BodyReader b(json{{"x", nullptr}});  // even a null unknown field is named
    EXPECT_EQ(catch_api_error([&] { b.done(); }).param, "x");
  }

  // The body must be an object.
  for (json notobj : {json::array(), json(1), json("s"), json(nullptr), json(true)}) {
    ApiError err = catch_api_error([&] { BodyReader b(notobj); });
    EXPECT_EQ(err.status, 400);
    EXPECT_EQ(err.code, "invalid_json");
  }
  // BodyReader keeps its own copy: a temporary body is safe.
  BodyReader t(json{{"name", "tmp"}});
  EXPECT_EQ(t.str("name"), "tmp");
}

TEST(JsonUtil, DumpReplacesInvalidUtf8) {
  json j = {{"a", std::string("ok\xff")}};
  std::string s;
  EXPECT_NO_THROW(s = dump_json(j));
  EXPECT_NE(s.find("ok"), std::string::npos);
  EXPECT_NO_THROW(json::parse(s));
}

TEST(ApiErrorShape, ToJson) {
  json j = invalid_field("name", "'name' must be a string.").to_json();
  EXPECT_EQ(j["error"]["message"], "'name' must be a string.");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "name");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  json k = ApiError(500, "server_error", "x").to_json();
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_TRUE(k["error"]["code"].is_null());
  EXPECT_EQ(not_found("project", "proj_1").status, 404);
  EXPECT_EQ(unauthorized("x").status, 401);
  EXPECT_EQ(forbidden("x").status, 403);
  EXPECT_EQ(conflict("x").status, 409);
}

// ---- list shape ----

TEST(ListJson, Shape) {
  Page p;
  for (int i = 0; i < 3; ++i) {
    Object o;
    o.kind = "widget";
    o.id = "w_" + std::to_string(i);
    o.created_at = 100 + i;
    p.items.push_back(o);
  }
  p.has_more = true;
  json j = list_json(p, [](const Object& o) { return json{{"id", o.id}, {"created_at", o.created_at}}; });
  EXPECT_EQ(j["object"], "list");
  ASSERT_TRUE(j["data"].is_array());
  ASSERT_EQ(j["data"].size(), 3u);
  EXPECT_EQ(j["data"][0]["id"], "w_0");
  EXPECT_EQ(j["data"][2]["created_at"], 102);
  EXPECT_EQ(j["first_id"], "w_0");
  EXPECT_EQ(j["last_id"], "w_2");
  EXPECT_EQ(j["has_more"], true);
  EXPECT_EQ(j.size(), 5u);

  json e = list_json(Page{}, [](const Object&) { return json::object(); });
  EXPECT_EQ(e["object"], "list");
  EXPECT_TRUE(e["data"].is_array());
  EXPECT_TRUE(e["data"].empty());
  EXPECT_TRUE(e["first_id"].is_null());
  EXPECT_TRUE(e["last_id"].is_null());
  EXPECT_EQ(e["has_more"], false);
}

// ---- metrics ----

// Threads count into shards of their own; what is rendered is every thread's count.
TEST(Metrics, CountsFromManyThreadsAddUp) {
  http::Metrics m({"/v1/chat/completions"}, {"POST"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 9; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < 1000; ++i) m.record(0, t % 2 ? 200 : 429, 300);
    });
  }
  for (auto& t : threads) t.join();
  std::string out = m.render(0);
  const std::string l = "route=\"/v1/chat/completions\",method=\"POST\"";
  EXPECT_NE(out.find("aicloud_http_requests_total{" + l + ",status=\"200\"} 4000\n"), std::string::npos) << out;
  EXPECT_NE(out.find("aicloud_http_requests_total{" + l + ",status=\"429\"} 5000\n"), std::string::npos) << out;
  EXPECT_NE(out.find("aicloud_http_request_duration_seconds_bucket{" + l + ",le=\"0.0005\"} 9000\n"), std::string::npos);
  EXPECT_NE(out.find("aicloud_http_request_duration_seconds_count{" + l + "} 9000\n"), std::string::npos);
  EXPECT_NE(out.find("aicloud_http_request_duration_seconds_sum{" + l + "} 2.7\n"), std::string::npos) << out;
}

TEST(Metrics, RenderCountersAndHistograms) {
  http::Metrics m({"/v1/items", "/v1/items/{id}"}, {"GET", "POST"});
  m.record(0, 200, 50);       // 50 us: first bucket (le 0.0001)
  m.record(0, 200, 100);      // exactly 100 us: still le 0.0001
  m.record(0, 404, 3000);     // 3 ms: le 0.005
  m.record(1, 201, 2000000);  // 2 s: le 5
  m.record(1, 500, 10000000); // 10 s: +Inf only
  m.record(-1, 404, 10);      // unmatched
  m.record(99, 405, 10);      // out of range -> unmatched
  std::string out = m.render(7);
  auto has = [&](const std::string& line) {
    EXPECT_NE(out.find(line), std::string::npos) << "missing: " << line << "\n" << out;
  };
  has("# TYPE aicloud_http_requests_total counter\n");
  has("aicloud_http_requests_total{route=\"/v1/items\",method=\"GET\",status=\"200\"} 2\n");
  has("aicloud_http_requests_total{route=\"/v1/items\",method=\"GET\",status=\"404\"} 1\n");
  has("aicloud_http_requests_total{route=\"/v1/items/{id}\",method=\"POST\",status=\"201\"} 1\n");
  has("aicloud_http_requests_total{route=\"unmatched\",method=\"\",status=\"404\"} 1\n");
  has("aicloud_http_requests_total{route=\"unmatched\",method=\"\",status=\"405\"} 1\n");
  has("# TYPE aicloud_http_request_duration_seconds histogram\n");
  const std::string l0 = "route=\"/v1/items\",method=\"GET\"";
  has("aicloud_http_request_duration_seconds_bucket{" + l0 + ",le=\"0.0001\"} 2\n");
  has("aicloud_http_request_duration_seconds_bucket{" + l0 + ",le=\"0.0025\"} 2\n");
  has("aicloud_http_request_duration_seconds_bucket{" + l0 + ",le=\"0.005\"} 3\n");
  has("aicloud_http_request_duration_seconds_bucket{" + l0 + ",le=\"+Inf\"} 3\n");
  has("aicloud_http_request_duration_seconds_count{" + l0 + "} 3\n");
  has("aicloud_http_request_duration_seconds_sum{" + l0 + "} 0.00315\n");
  const std::string l1 = "route=\"/v1/items/{id}\",method=\"POST\"";
  has("aicloud_http_request_duration_seconds_bucket{" + l1 + ",le=\"1\"} 0\n");
  has("aicloud_http_request_duration_seconds_bucket{" + l1 + ",le=\"5\"} 1\n");
  has("aicloud_http_request_duration_seconds_bucket{" + l1 + ",le=\"+Inf\"} 2\n");
  has("aicloud_http_request_duration_seconds_count{" + l1 + "} 2\n");
  has("# TYPE aicloud_http_open_connections gauge\naicloud_http_open_connections 7\n");

  // Buckets are cumulative: never decreasing within a series.
  size_t pos = 0;
  uint64_t prev = 0;
  const std::string series = "aicloud_http_request_duration_seconds_bucket{" + l0;
  while ((pos = out.find(series, pos)) != std::string::npos) {
    size_t eol = out.find('\n', pos);
    size_t sp = out.rfind(' ', eol);
    uint64_t v = std::stoull(out.substr(sp + 1, eol - sp - 1));
    EXPECT_GE(v, prev);
    prev = v;
    pos = eol;
  }
  EXPECT_EQ(prev, 3u);

  // Every non-comment line is "name{labels} value" or "name value".
  size_t start = 0;
  while (start < out.size()) {
    size_t eol = out.find('\n', start);
    ASSERT_NE(eol, std::string::npos) << "output must end with a newline";
    std::string line = out.substr(start, eol - start);
    start = eol + 1;
    if (line.starts_with("#")) continue;
    size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_NO_THROW((void)std::stod(line.substr(sp + 1))) << line;
  }

  // A route with no requests has no histogram series.
  http::Metrics empty({"/a"}, {"GET"});
  std::string e = empty.render(0);
  EXPECT_EQ(e.find("_bucket{"), std::string::npos);
  EXPECT_NE(e.find("aicloud_http_open_connections 0\n"), std::string::npos);
}

TEST(Json, TopLevelMemberFindsOnlyTopLevelKeys) {
  std::string doc =
      R"({"id":"c1","choices":[{"message":{"content":"the \"usage\": {} trap","usage":{"x":1}}}],)"
      R"( "usage" : {"prompt_tokens":9,"completion_tokens":3,"nested":[1,{"a":"}"}]}, "n": 12 })";
  auto u = top_level_member(doc, "usage");
  ASSERT_TRUE(u);
  EXPECT_EQ(json::parse(*u)["prompt_tokens"], 9);
  EXPECT_EQ(json::parse(*u)["nested"][1]["a"], "}");
  EXPECT_EQ(top_level_member(doc, "n"), std::optional<std::string_view>("12"));
  EXPECT_EQ(top_level_member(doc, "id"), std::optional<std::string_view>("\"c1\""));
  EXPECT_FALSE(top_level_member(doc, "content"));
  EXPECT_FALSE(top_level_member(doc, "x"));
  EXPECT_FALSE(top_level_member("[1,2]", "usage"));
  EXPECT_FALSE(top_level_member(R"({"usage":{"a":1)", "usage"));  // cut short
  EXPECT_FALSE(top_level_member(R"({"a":"\)", "usage"));
  EXPECT_FALSE(top_level_member("", "usage"));
  // Escapes: a string that ends in a backslash, escaped quotes and brackets inside strings.
  std::string esc = R"({"a":"x\\","b":"\"}\"]\\\"","c":["\\",{"d":"\""}],"usage":5})";
  EXPECT_EQ(top_level_member(esc, "usage"), std::optional<std::string_view>("5"));
  EXPECT_EQ(top_level_member(esc, "b"), std::optional<std::string_view>(R"("\"}\"]\\\"")"));
  std::vector<std::string> keys;
  EXPECT_TRUE(aicloud::for_each_top_level_member(esc, [&](std::string_view k, std::string_view) {
    keys.emplace_back(k);
    return true;
  }));
  EXPECT_EQ(keys, (std::vector<std::string>{"a", "b", "c", "usage"}));
  // A nested value is skipped 16 bytes at a time: every escape, quote and bracket at every
  // offset of those pieces, the last byte of one escaping the first of the next included.
  for (size_t pad = 0; pad < 40; ++pad) {
    for (const char* tricky : {R"(\"]})", R"(\\)", R"(\\\"[)", R"(\\\\)", R"(x\\\\\")"}) {
      std::string nested = R"([{"k":")" + std::string(pad, 'a') + tricky + R"("},"]",[)" + std::string(pad % 7, ' ') + "]]";
      std::string d = R"({"a":)" + nested + R"(,"usage":{"x":")" + tricky + R"("}})";
      ASSERT_TRUE(json::accept(d)) << d;
      EXPECT_EQ(top_level_member(d, "a"), std::optional<std::string_view>(nested)) << d;
      EXPECT_EQ(top_level_member(d, "usage"), std::optional<std::string_view>(R"({"x":")" + std::string(tricky) + R"("})"))
          << d;
    }
  }
  EXPECT_TRUE(aicloud::for_each_top_level_member(" { } ", [](std::string_view, std::string_view) { return true; }));
  EXPECT_FALSE(aicloud::for_each_top_level_member(R"({"a":1,})", [](std::string_view, std::string_view) { return true; }));
}

// Generated documents, with strings long and short, escapes at every offset of the eight-byte
// steps the walk takes through strings, and nesting: the members it finds are the parser's.
TEST(Json, TopLevelMembersAgreeWithTheParserOnGeneratedDocuments) {
  std::mt19937 rng(6122026);
  auto pick = [&](int n) { return int(rng() % unsigned(n)); };
  std::function<json(int)> value = [&](int depth) -> json {
    int kind = pick(depth > 3 ? 3 : 5);
    if (kind == 0) return pick(1000) - 500;
    if (kind == 1) return pick(2) == 0;
    if (kind == 2) {
      std::string str;
      for (int i = pick(3) == 0 ? pick(60) : pick(8); i > 0; --i) {
        const char* parts[] = {"a", "\\", "\"", "}", "]", "{", "[", ",", ":", " ", "\u00e9", "\n", "xyzw"};
        str += parts[pick(13)];
      }
      return str;
    }
    json v = kind == 3 ? json::array() : json::object();
    for (int i = pick(4); i > 0; --i) {
      if (kind == 3) v.push_back(value(depth + 1));
      else v["k" + std::to_string(pick(5)) + (pick(2) ? "\"\\" : "")] = value(depth + 1);
    }
    return v;
  };
  for (int round = 0; round < 2000; ++round) {
    json doc = json::object();
    for (int i = pick(6); i > 0; --i) doc["m" + std::to_string(i) + std::string(size_t(pick(9)), '\\')] = value(0);
    std::string text = doc.dump(pick(2) ? -1 : 1);
    std::vector<std::pair<std::string, json>> seen;
    ASSERT_TRUE(aicloud::for_each_top_level_member(text, [&](std::string_view k, std::string_view v) {
      seen.emplace_back(json::parse("\"" + std::string(k) + "\"").get<std::string>(), json::parse(v));
      return true;
    })) << text;
    ASSERT_EQ(seen.size(), doc.size()) << text;
    for (const auto& [k, v] : seen) EXPECT_EQ(doc.at(k), v) << text;
    // Cut short anywhere inside, the walk says so (or stops at a member it had whole).
    std::string cut = text.substr(0, size_t(pick(int(text.size()))));
    aicloud::for_each_top_level_member(cut, [&](std::string_view, std::string_view v) {
      EXPECT_LE(v.data() + v.size(), cut.data() + cut.size());
      return true;
    });
  }
}

// The writer behind every relayed head: pieces and numbers at the end of what the string holds,
// and the string left exactly as long as what was written, whatever room was asked for.
TEST(TextWriter, AppendsExactlyWhatItWrites) {
  std::string s = "HTTP/1.1 ";
  append_within(s, 64, [](TextWriter& w) { w.num(200u).put(' ').put("OK").put("\r\n"); });
  EXPECT_EQ(s, "HTTP/1.1 200 OK\r\n");
  append_within(s, 2 * TextWriter::kMaxNumber + 1, [](TextWriter& w) {
    w.num(INT64_MIN).put(',').num(UINT64_MAX);  // the longest numbers fill the room they are given
  });
  EXPECT_EQ(s, "HTTP/1.1 200 OK\r\n-9223372036854775808,18446744073709551615");
  append_within(s, 16, [](TextWriter&) {});  // nothing written: nothing added
  EXPECT_EQ(s.size(), 58u);
  std::string empty;
  append_within(empty, 4, [](TextWriter& w) { w.num(0).put('\0').num(-1); });  // (bytes as they are)
  EXPECT_EQ(empty, std::string("0\0-1", 4));
}

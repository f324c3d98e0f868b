// The allocation-free JSON reader (util/json_scan.h) against nlohmann's parser, the project's
// reference: the same documents accepted and refused, and the same values read from the accepted
// ones, on hand-picked edge cases and on a few hundred thousand random mutations of them.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "util/json_scan.h"

namespace {

using aicloud::json;
namespace js = aicloud::json_scan;

// Rebuilds the document from the reader's events, for comparison with nlohmann's tree.
class Tree {
 public:
  json root;

  bool null() { return put(nullptr); }
  bool boolean(bool v) { return put(v); }
  bool number(const js::Number& n) {
    switch (n.kind) {
      case js::Number::Kind::kInteger: return put(n.integer);
      case js::Number::Kind::kUnsigned: return put(n.unsigned_);
      case js::Number::Kind::kFloat: return put(n.floating);
    }
    return false;
  }
  bool string(std::string_view raw, bool escaped) { return put(escaped ? js::unescape(raw) : std::string(raw)); }
  bool key(std::string_view raw, bool escaped) {
    key_ = escaped ? js::unescape(raw) : std::string(raw);
    return true;
  }
  bool start_object() { return open(json::object()); }
  bool start_array() { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

 private:
  bool put(json v) {
    if (stack_.empty()) {
      root = std::move(v);
    } else if (stack_.back()->is_object()) {
      (*stack_.back())[key_] = std::move(v);  // a repeated key: the last one, as nlohmann keeps it
    } else {
      stack_.back()->push_back(std::move(v));
    }
    return true;
  }
  bool open(json v) {
    put(std::move(v));
    json* c = stack_.empty() ? &root : stack_.back()->is_object() ? &(*stack_.back())[key_] : &stack_.back()->back();
    stack_.push_back(c);
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }
  std::vector<json*> stack_;
  std::string key_;
};

// Compares the reader with nlohmann on one document; a failure names it.
void same_as_nlohmann(std::string doc) {
  bool theirs = json::accept(doc);
  if (size_t nul = doc.find('\0'); theirs && nul != std::string::npos) {
    // nlohmann reads a NUL outside a string as the end of the input; the reader, as RFC 8259,
    // refuses it, and reads what comes before it as nlohmann does.
    Tree strict;
    ASSERT_FALSE(js::scan(doc, strict));
    doc.resize(nul);
  }
  Tree t;
  bool ours = js::scan(doc, t);
  ASSERT_EQ(ours, theirs) << "document: " << json(doc).dump(-1, ' ', true, json::error_handler_t::replace);
  if (ours) {
    json parsed = json::parse(doc);
    ASSERT_EQ(t.root, parsed) << "document: " << json(doc).dump(-1, ' ', true, json::error_handler_t::replace);
    // Same kinds of number too (json's == compares 1 and 1.0 as equal).
    ASSERT_EQ(t.root.dump(), parsed.dump());
  }
}

const std::vector<std::string>& seeds() {
  static const std::vector<std::string> s = {
      R"({"model":"tiny","messages":[{"role":"user","content":"Say hi"}],"max_tokens":16,"stream":true})",
      R"({"model":"m","stream_options":{"include_usage":true},"temperature":0.7,"n":-1,"x":null,"y":false})",
      R"({"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":3}}})",
      R"({"timings":{"prompt_n":1,"cache_n":4,"predicted_per_second":12.5,"t":1e-3,"u":-2.5E+2}})",
      R"(["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u4e2d\ud83d\ude00", "é中😀", 0, -0, 1.5e10, 18446744073709551615, -9223372036854775808])",
      " \t\r\n{ \"a\" : [ 1 , { } , [ ] , \"\" ] } \n",
      "\xEF\xBB\xBF{\"bom\":1}",
      R"(123)", R"("text")", R"(true)", R"(null)", R"([])", R"({})",
  };
  return s;
}

TEST(JsonScan, EdgeCasesAsNlohmann) {
  std::vector<std::string> docs = seeds();
  for (const char* d : {
           "", " ", "{", "}", "[", "]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "[1,]", "[,1]", "{,}", "{\"a\" 1}", "[1 2]",
           "01", "-", "-01", "1.", ".5", "1e", "1e+", "1E-5", "-0.0", "0e0", "1ee5", "+1", "0x10", "1.5.5", "Infinity",
           "NaN", "1e400", "-1e400", "1e-400", "18446744073709551616", "-9223372036854775809",
           "123456789012345678901234567890", "tru", "truee", "nul", "fals", "True", "[true false]", "\"\\x\"", "\"\\u12\"",
           "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud83d\\ude00\"", "\"\\u0000\"",
           "\"a\tb\"", "\"a\nb\"", "\"\x7f\"", "\"\xc0\x80\"", "\"\xc2\x80\"", "\"\xe0\x80\x80\"", "\"\xe0\xa0\x80\"",
           "\"\xed\xa0\x80\"", "\"\xed\x9f\xbf\"", "\"\xf0\x8f\xbf\xbf\"", "\"\xf0\x90\x80\x80\"", "\"\xf4\x8f\xbf\xbf\"",
           "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xff\"", "\"\xc2\"", "\"\xe2\x82\"", "\xEF\xBB", "\xEF\xBB\xBF",
           "\xEF\xBB\xBF\xEF\xBB\xBF{}", "{}\x00", "{} {}", "{}x", "\"unterminated", "\"0123456789abcdef0123456789\\",
           "{\"k\\u00e9y\":1,\"k\\u00e9y\":2}", "{\"a\":1,\"a\":{\"b\":[]}}", "[[[[[[[[[[]]]]]]]]]]",
       }) {
    docs.emplace_back(d);
  }
  docs.emplace_back(std::string("{\"a\":\"x\0y\"}", 11));  // a NUL inside a string
  docs.emplace_back(std::string("{\"a\":1}\0x", 9));      // and after the document
  for (const auto& d : docs) same_as_nlohmann(d);
}

TEST(JsonScan, RandomMutationsAsNlohmann) {
  // Bytes that matter to a JSON reader, and some that do not.
  const std::string alphabet = std::string("{}[]:,\" \\/\t\n-+.0123456789eEtrufalsn") + "\xC2\xA0\xE2\x82\xAC\xED\xF0\x9F\x80\xBF\xFF" +
                               std::string(1, '\0') + "\x01";
  std::mt19937 rng(20261205);
  auto pick = [&](size_t n) { return size_t(rng() % n); };
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    std::string d = seeds()[pick(seeds().size())];
    for (int m = 0, ms = 1 + int(pick(3)); m < ms; ++m) {
      size_t at = d.empty() ? 0 : pick(d.size());
      switch (pick(4)) {
        case 0: d.insert(at, 1, alphabet[pick(alphabet.size())]); break;
        case 1: if (!d.empty()) d.erase(at, 1); break;
        case 2: if (!d.empty()) d[at] = alphabet[pick(alphabet.size())]; break;
        default: d.insert(at, d.substr(pick(d.size() + 1) % (d.size() + 1), pick(8))); break;  // a repeated slice
      }
    }
    same_as_nlohmann(d);
    if (HasFatalFailure()) return;
    accepted += json::accept(d);
  }
  // Enough of the mutants stay valid for the comparison of values to mean something.
  EXPECT_GT(accepted, 10000);
}

TEST(JsonScan, NestingDeeperThanTheLimitIsRefused) {
  Tree t;
  std::string ok = std::string(aicloud::kMaxJsonDepth, '[') + std::string(aicloud::kMaxJsonDepth, ']');
  EXPECT_TRUE(js::scan(ok, t));
  std::string deep = "[" + ok + "]";
  EXPECT_FALSE(js::scan(deep, t));
}

// The handler stops the scan by returning false.
TEST(JsonScan, AHandlerCanStopTheScan) {
  struct StopAtKey : Tree {
    int keys = 0;
    bool key(std::string_view, bool) { return ++keys < 2; }
  } h;
  EXPECT_FALSE(js::scan(R"({"a":1,"b":2,"c":3})", h));
  EXPECT_EQ(h.keys, 2);
}

}  // namespace

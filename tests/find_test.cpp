// util/find.h's find() and contains() against string_view::find, on every length and alignment
// around the blocks it tests (each path: 32 starts at a time with AVX2, 16 with SSE2, one), on
// random text over a small alphabet (so that partial matches are frequent) and on the case it is
// for: a quoted key in JSON.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "util/find.h"

namespace {

using aicloud::contains;
using aicloud::FindWidth;

TEST(Find, QuotedKeyInJson) {
  std::string chunk = R"({"id":"x","choices":[],"usage":{"prompt_tokens":9}})";
  EXPECT_TRUE(contains(chunk, "\"usage\""));
  EXPECT_FALSE(contains(R"({"id":"x","choices":[{"delta":{"content":"usage"}}]})", "\"usage\"x"));
  EXPECT_TRUE(contains(R"({"x":{"usage":1}})", "\"usage\""));  // a prefilter: nested keys count too
  EXPECT_FALSE(contains(R"({"content":"the \"usage\" word"})", "\"usage\""));  // escaped: \" is not "
  EXPECT_FALSE(contains(R"({"usag":1,"usages":2,"Usage":3})", "\"usage\""));
  EXPECT_TRUE(contains("\"usage\"", "\"usage\""));            // the whole haystack
  EXPECT_FALSE(contains("\"usage", "\"usage\""));             // shorter than the needle
  EXPECT_TRUE(contains("abc", ""));
  EXPECT_TRUE(contains("xxab", "ab"));                        // short needles
  EXPECT_FALSE(contains("", "a"));
}

TEST(Find, MatchesStringFindEverywhere) {
  std::mt19937 rng(7);
  auto text = [&](size_t n) {
    std::string s(n, 'a');
    for (char& c : s) c = "ab\""[rng() % 3];
    return s;
  };
  int found = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string hay = text(rng() % 140);  // up to four 32-byte blocks
    std::string needle = text(1 + rng() % 9);
    // Also a needle planted at every offset near a block edge, in a haystack with no other copy.
    if (round % 4 == 0 && !hay.empty()) {
      size_t at = rng() % hay.size();
      hay.replace(at, std::min(needle.size(), hay.size() - at), needle);
    }
    bool want = std::string_view(hay).find(needle) != std::string_view::npos;
    ASSERT_EQ(contains(hay, needle), want) << "hay '" << hay << "' needle '" << needle << "'";
    size_t from = rng() % (hay.size() + 2);  // (past the end too)
    for (auto width : {FindWidth::kWidest, FindWidth::kSse2, FindWidth::kBytes}) {
      ASSERT_EQ(aicloud::find(hay, needle, from, width), std::string_view(hay).find(needle, from))
          << "hay '" << hay << "' needle '" << needle << "' from " << from << " width " << int(width);
    }
    found += want;
  }
  EXPECT_GT(found, 2000);  // both outcomes were exercised
  EXPECT_LT(found, 18000);
  // Every start position of a needle, for haystacks that span several blocks.
  for (size_t len = 7; len < 100; ++len) {
    for (size_t at = 0; at + 7 <= len; ++at) {
      std::string hay(len, 'x');
      hay.replace(at, 7, "\"usage\"");
      for (auto width : {FindWidth::kWidest, FindWidth::kSse2, FindWidth::kBytes}) {
        ASSERT_EQ(aicloud::find(hay, "\"usage\"", 0, width), at) << len << " " << at << " width " << int(width);
      }
      hay[at + 6] = 'y';
      ASSERT_FALSE(contains(hay, "\"usage\"")) << len << " " << at;
    }
  }
}

}  // namespace

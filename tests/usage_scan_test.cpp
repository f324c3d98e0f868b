// The gateway's reading of token counts from answers and streamed chunks (gateway/usage_scan.h):
// only the usage it should read, wherever the names also appear elsewhere in the document.
#include <gtest/gtest.h>

#include "gateway/usage_scan.h"

using aicloud::gateway::scan_answer_usage;
using aicloud::gateway::scan_usage;
using aicloud::gateway::UsageSeen;

TEST(UsageScan, AStreamsUsageChunkGivesItsCountsAndEmptyChoices) {
  UsageSeen u;
  ASSERT_TRUE(scan_usage(R"({"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,)"
                         R"("total_tokens":12,"prompt_tokens_details":{"cached_tokens":3}}})",
                         u));
  EXPECT_TRUE(u.usage);
  EXPECT_EQ(u.prompt, 5);
  EXPECT_EQ(u.completion, 7);
  EXPECT_EQ(u.cached, 3);
  EXPECT_TRUE(u.choices_empty);
}

TEST(UsageScan, ChunksWithoutUsageOrWithChoicesSayNoMore) {
  UsageSeen u;
  ASSERT_TRUE(scan_usage(R"({"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null})", u));
  EXPECT_FALSE(u.usage);
  EXPECT_FALSE(u.choices_empty);

  // A usage in the last content chunk (llama-server with include_usage) keeps that chunk.
  UsageSeen v;
  ASSERT_TRUE(scan_usage(R"({"choices":[{"delta":{}}],"usage":{"prompt_tokens":2,"completion_tokens":1}})", v));
  EXPECT_TRUE(v.usage);
  EXPECT_FALSE(v.choices_empty);
  for (const char* empty : {R"({"choices":null,"usage":{}})", R"({"choices":{},"usage":{}})"}) {
    UsageSeen w;
    ASSERT_TRUE(scan_usage(empty, w)) << empty;
    EXPECT_TRUE(w.choices_empty) << empty;
    EXPECT_TRUE(w.usage) << empty;
  }
}

TEST(UsageScan, OnlyTheTopLevelUsageCounts) {
  UsageSeen u;
  ASSERT_TRUE(scan_usage(R"({"prompt_tokens":50,"choices":[{"usage":{"prompt_tokens":99,"completion_tokens":99}}],)"
                         R"("x":{"usage":{"prompt_tokens":98}},"usage":{"completion_tokens":2,)"
                         R"("nested":{"prompt_tokens":97},"prompt_tokens_details":{"x":{"cached_tokens":96}}}})",
                         u));
  EXPECT_TRUE(u.usage);
  EXPECT_EQ(u.prompt, 0);
  EXPECT_EQ(u.completion, 2);
  EXPECT_EQ(u.cached, 0);
  EXPECT_FALSE(u.choices_empty);
}

TEST(UsageScan, CachedTokensFallBackToLlamaServersTimings) {
  UsageSeen u;
  ASSERT_TRUE(scan_usage(R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1},)"
                         R"("timings":{"prompt_n":1,"cache_n":4,"predicted_per_second":12.5}})",
                         u));
  EXPECT_EQ(u.cached, 4);
  UsageSeen v;  // the usage's own figure wins
  ASSERT_TRUE(scan_usage(R"({"usage":{"prompt_tokens_details":{"cached_tokens":2}},"timings":{"cache_n":4}})", v));
  EXPECT_EQ(v.cached, 2);
}

TEST(UsageScan, NumbersOfOtherShapesAndRepeatedNames) {
  UsageSeen u;
  ASSERT_TRUE(scan_usage(R"({"usage":{"prompt_tokens":5.0,"completion_tokens":"7","prompt_tokens":6}})", u));
  EXPECT_EQ(u.prompt, 6);  // the last of a repeated name, as a parsed tree keeps it
  EXPECT_EQ(u.completion, 0);
  UsageSeen v;
  ASSERT_TRUE(scan_usage(R"({"usage":{"prompt_tokens":1e300,"completion_tokens":18446744073709551615}})", v));
  EXPECT_EQ(v.prompt, 0);
  EXPECT_EQ(v.completion, INT64_MAX);
}

TEST(UsageScan, InvalidJsonIsNotRead) {
  for (const char* bad : {R"({"usage":{"prompt_tokens":5})", R"({"usage":{"prompt_tokens":5,}})", "", "[", "{\"usage\":1e400}"}) {
    UsageSeen u;
    u.prompt = -1;
    EXPECT_FALSE(scan_usage(bad, u)) << bad;
    EXPECT_EQ(u.prompt, -1) << bad;  // untouched
  }
  UsageSeen scalar;
  EXPECT_TRUE(scan_usage("5", scalar));
  EXPECT_FALSE(scalar.usage);
}

TEST(UsageScan, WhatIsReadIsCheckedAndWhatIsSkippedIsWalkedPast) {
  // White space anywhere JSON allows it.
  UsageSeen u;
  ASSERT_TRUE(scan_usage(" {\n \"choices\" : [ \t] ,\"usage\" : { \"prompt_tokens\" : 5 ,\r\n \"completion_tokens\":7 ,"
                         "\"prompt_tokens_details\" : { \"cached_tokens\" : 2 } } } ",
                         u));
  EXPECT_TRUE(u.usage);
  EXPECT_EQ(u.prompt, 5);
  EXPECT_EQ(u.completion, 7);
  EXPECT_EQ(u.cached, 2);
  EXPECT_TRUE(u.choices_empty);
  // A count, or the details' cached count, that is not JSON makes the chunk unread.
  for (const char* bad : {R"({"usage":{"prompt_tokens":-}})", R"({"usage":{"completion_tokens":tru}})",
                          R"({"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":01}}})",
                          R"({"usage":{"prompt_tokens":"\x"}})", R"({"usage":{"prompt_tokens":1 2}})"}) {
    UsageSeen v;
    v.prompt = -1;
    EXPECT_FALSE(scan_usage(bad, v)) << bad;
    EXPECT_EQ(v.prompt, -1) << bad;
  }
  // A timings member that is not JSON is left unread; the usage still counts.
  UsageSeen w;
  ASSERT_TRUE(scan_usage(R"({"usage":{"prompt_tokens":3},"timings":{"cache_n":x}})", w));
  EXPECT_EQ(w.prompt, 3);
  EXPECT_EQ(w.cached, 0);
  // The relayed members around the usage are walked past: brackets and quotes in their strings do
  // not end them.
  UsageSeen x;
  ASSERT_TRUE(scan_usage(R"({"choices":[{"delta":{"content":"]}\"usage\":{\"prompt_tokens\":8}"}}],"usage":{"prompt_tokens":4}})", x));
  EXPECT_EQ(x.prompt, 4);
  EXPECT_FALSE(x.choices_empty);
}

TEST(UsageScan, AWholeAnswerIsReadFromItsUsageAndTimingsOnly) {
  UsageSeen u;
  ASSERT_TRUE(scan_answer_usage(
      R"({"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":9} and \"timings\""}}],)"
      R"("usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5},"timings":{"cache_n":1}})",
      u));
  EXPECT_TRUE(u.usage);
  EXPECT_EQ(u.prompt, 2);
  EXPECT_EQ(u.completion, 3);
  EXPECT_EQ(u.cached, 1);

  UsageSeen none;
  EXPECT_FALSE(scan_answer_usage(R"({"choices":[]})", none));
  EXPECT_FALSE(scan_answer_usage(R"({"usage":null})", none));
  EXPECT_FALSE(scan_answer_usage(R"({"usage":{"prompt_tokens":})", none));
  EXPECT_FALSE(none.usage);
}

// ---- the request side (gateway/request_scan.h): the scan must read what a parsed tree reads ----

#include "gateway/request_scan.h"
#include "util/json_util.h"

using aicloud::gateway::request_seen;
using aicloud::gateway::RequestSeen;
using aicloud::gateway::scan_request;

namespace {

std::string describe(const RequestSeen& r) {
  auto t = [](RequestSeen::Type x) { return std::to_string(int(x)); };
  return "object=" + std::to_string(r.object) + " model=" + t(r.model) + ":" + r.model_name + " input=" + t(r.input) +
         ":" + std::to_string(r.input_size) + " stream=" + t(r.stream) + ":" + std::to_string(r.stream_value) +
         " stream_options=" + t(r.stream_options) + ":" + std::to_string(r.include_usage) +
         " max_completion_tokens=" + t(r.max_completion_tokens) + ":" + std::to_string(r.max_completion_tokens_value) +
         " max_tokens=" + t(r.max_tokens) + ":" + std::to_string(r.max_tokens_value);
}

}  // namespace

TEST(RequestScan, ReadsWhatTheParsedTreeReads) {
  const char* bodies[] = {
      R"({"model":"m","messages":[{"role":"user","content":"hi"}]})",
      R"({"model":"m","messages":[],"stream":true})",
      R"({"model":"","messages":[1,2,[3],{"a":[4]}],"stream":false,"max_tokens":16})",
      R"({"model":5,"messages":{}, "stream":"yes","stream_options":[]})",
      R"({"model":"a","model":"b","messages":[1],"messages":[]})",
      R"({"model":"a","stream":null,"stream_options":null,"max_tokens":-3,"max_completion_tokens":7})",
      R"({"stream_options":{"include_usage":true}})",
      R"({"stream_options":{"include_usage":true,"include_usage":1}})",
      R"({"stream_options":{"include_usage":1,"include_usage":true}})",
      R"({"stream_options":{"include_usage":false}})",
      R"({"stream_options":{"x":{"include_usage":true}}})",
      R"({"stream_options":{"include_usage":true},"stream_options":{}})",
      R"({"stream_options":{"include_usage":{"include_usage":true}}})",
      R"({"max_tokens":18446744073709551615,"max_completion_tokens":1.5})",
      R"({"max_tokens":9223372036854775807,"max_completion_tokens":-9223372036854775808})",
      R"({"prompt":"héllo \u00e9 \ud83d\ude00","model":"\u006d"})",
      R"({"nested":{"model":"x","messages":[1],"stream":true},"model":"y"})",
      R"([{"model":"m","messages":[1]}])",
      R"("model")",
      "\xEF\xBB\xBF  {\"model\":\"m\"}",
      "{}",
  };
  for (const char* b : bodies) {
    for (const char* input : {"messages", "prompt", "input"}) {
      RequestSeen scanned;
      ASSERT_TRUE(scan_request(b, input, scanned)) << b;
      RequestSeen tree = request_seen(aicloud::parse_json_body(b), input);
      EXPECT_EQ(describe(scanned), describe(tree)) << b << " (input member " << input << ")";
    }
  }
}

TEST(RequestScan, LeavesInvalidEmptyAndTooDeepBodiesToTheParser) {
  std::string deep(aicloud::kMaxJsonDepth + 1, '[');
  deep += std::string(aicloud::kMaxJsonDepth + 1, ']');
  std::string ok_depth(aicloud::kMaxJsonDepth, '[');
  ok_depth += std::string(aicloud::kMaxJsonDepth, ']');
  for (const std::string& b : {std::string(), std::string("  "), std::string("{\"model\":"), std::string("{\"a\":1}x"),
                               std::string("{\"a\":\"\xff\"}"), std::string("{\"a\":1e400}"), deep}) {
    RequestSeen r;
    EXPECT_FALSE(scan_request(b, "messages", r)) << b.substr(0, 40);
  }
  RequestSeen r;
  EXPECT_TRUE(scan_request(ok_depth, "messages", r));
  EXPECT_FALSE(r.object);
}

// gateway/sse_relay.h: a stream's events as the client gets them, against a reference that
// splits the whole stream into events one by one, on streams cut into reads at random.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "gateway/sse_relay.h"

namespace {

using aicloud::gateway::scan_usage;
using aicloud::gateway::SseRelay;
using aicloud::gateway::UsageSeen;

struct Relayed {
  std::string out, held;
  std::optional<UsageSeen> usage;
  size_t pending = 0;
};

Relayed relay(const std::vector<std::string>& reads, bool client_wants_usage) {
  SseRelay r(client_wants_usage);
  Relayed got;
  for (const auto& d : reads) r.put(d, got.out);
  got.held = r.held();
  got.usage = r.usage();
  got.pending = r.pending();
  return got;
}

// The reference: the whole stream split at every boundary (a position just past "\n\n"), each
// event looked at in turn.
Relayed reference(const std::string& t, bool client_wants_usage) {
  std::vector<size_t> bounds{0};
  for (size_t p = 2; p <= t.size(); ++p) {
    if (t[p - 2] == '\n' && t[p - 1] == '\n') bounds.push_back(p);
  }
  Relayed want;
  want.pending = t.size() - bounds.back();
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    std::string ev = t.substr(bounds[i], bounds[i + 1] - bounds[i]);
    if (ev == "data: [DONE]\n\n") {
      want.held += ev;
      continue;
    }
    if (ev.starts_with("data: ") && ev.find("\"usage\"") != std::string::npos) {
      UsageSeen u;
      if (scan_usage(std::string_view(ev).substr(6, ev.size() - 8), u) && u.usage) {
        want.usage = u;
        if (!client_wants_usage && u.choices_empty) continue;
      }
    }
    want.out += ev;
  }
  return want;
}

void expect_same(const Relayed& got, const Relayed& want, const std::string& what) {
  EXPECT_EQ(got.out, want.out) << what;
  EXPECT_EQ(got.held, want.held) << what;
  EXPECT_EQ(got.pending, want.pending) << what;
  ASSERT_EQ(got.usage.has_value(), want.usage.has_value()) << what;
  if (got.usage) {
    EXPECT_EQ(got.usage->prompt, want.usage->prompt) << what;
    EXPECT_EQ(got.usage->completion, want.usage->completion) << what;
    EXPECT_EQ(got.usage->cached, want.usage->cached) << what;
    EXPECT_EQ(got.usage->choices_empty, want.usage->choices_empty) << what;
  }
}

const std::string kChunk = R"(data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]})"
                           "\n\n";
const std::string kUsage = R"(data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}})"
                           "\n\n";
const std::string kDone = "data: [DONE]\n\n";

TEST(SseRelay, HoldsDoneAndDropsTheUsageChunkAskedForOnTheClientsBehalf) {
  const std::string stream = kChunk + kChunk + kUsage + kDone;
  Relayed hidden = relay({stream}, false);
  EXPECT_EQ(hidden.out, kChunk + kChunk);
  EXPECT_EQ(hidden.held, kDone);
  ASSERT_TRUE(hidden.usage);
  EXPECT_EQ(hidden.usage->prompt, 9);
  EXPECT_EQ(hidden.usage->completion, 4);
  Relayed asked = relay({stream}, true);
  EXPECT_EQ(asked.out, kChunk + kChunk + kUsage);
  EXPECT_EQ(asked.held, kDone);
  EXPECT_TRUE(asked.usage);
}

TEST(SseRelay, EventsCutAcrossReadsWaitForTheirEnd) {
  const std::string stream = kChunk + kUsage + kDone;
  std::vector<std::string> reads{stream.substr(0, 10), stream.substr(10, kChunk.size() - 11), stream.substr(kChunk.size() - 1, 1),
                                 stream.substr(kChunk.size(), 40), stream.substr(kChunk.size() + 40)};
  SseRelay r(false);
  std::string out;
  r.put(reads[0], out);
  r.put(reads[1], out);
  EXPECT_EQ(out, "");
  EXPECT_EQ(r.pending(), kChunk.size() - 1);  // all but the blank line's last newline
  r.put(reads[2], out);
  EXPECT_EQ(out, kChunk);
  EXPECT_EQ(r.pending(), 0u);
  r.put(reads[3], out);
  EXPECT_FALSE(r.usage());
  r.put(reads[4], out);
  EXPECT_EQ(out, kChunk);
  EXPECT_TRUE(r.usage());
  EXPECT_EQ(r.held(), kDone);
}

TEST(SseRelay, OnlyWholeEventsAreDoneOrUsage) {
  // [DONE] and a usage key inside another event's text, a usage that is not an object, a
  // comment and a named event: all forwarded as they are.
  const std::string text = R"(data: {"choices":[{"delta":{"content":"data: [DONE]"}}]})"
                           "\n\n"
                           R"(data: {"choices":[{"delta":{"content":"\"usage\""}}],"usage":null})"
                           "\n\n"
                           ": keep-alive\n\nevent: note\ndata: {\"usage\":{\"prompt_tokens\":1},\"choices\":[]}\n\n"
                           "data: x data: [DONE]\n\n";
  for (bool asked : {false, true}) {
    Relayed got = relay({text}, asked);
    EXPECT_EQ(got.out, text);
    EXPECT_EQ(got.held, "");
    EXPECT_FALSE(got.usage);
    expect_same(got, reference(text, asked), text);
  }
  // A run of three newlines leaves a lone one between two events, forwarded; the next event is
  // read as an event all the same.
  const std::string spaced = kChunk + "\n" + kUsage + "\n" + kDone;
  Relayed got = relay({spaced}, false);
  EXPECT_EQ(got.out, kChunk + "\n\n");
  EXPECT_EQ(got.held, kDone);
  EXPECT_TRUE(got.usage);
}

TEST(SseRelay, AgreesWithSplittingEveryEventOnRandomStreams) {
  std::mt19937 rng(11);
  const std::vector<std::string> pieces = {
      kChunk,
      kUsage,
      kDone,
      R"(data: {"choices":[{"index":0,"delta":{"content":"usage"},"finish_reason":null}],"usage":null})"
      "\n\n",
      R"(data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,)"
      R"("prompt_tokens_details":{"cached_tokens":2}}})"
      "\n\n",
      R"(data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7},"timings":{"cache_n":4}})"
      "\n\n",
      R"(data: {"choices":[],"usage":{"prompt_tokens":)"  // broken: not read
      "\n\n",
      R"(data: {"choices":[{"delta":{"content":"data: [DONE]\n\n"}}]})"
      "\n\n",
      ": ping\n\n",
      "event: error\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
      "\n",
      "data: [DONE]",
      "\"usage\"",
  };
  int with_usage = 0, with_done = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string t;
    for (size_t n = rng() % 12; n > 0; --n) t += pieces[rng() % pieces.size()];
    std::vector<std::string> reads;
    for (size_t at = 0; at < t.size();) {
      size_t len = 1 + rng() % (rng() % 4 == 0 ? 8 : 300);
      reads.push_back(t.substr(at, len));
      at += len;
    }
    for (bool asked : {false, true}) {
      Relayed want = reference(t, asked);
      with_usage += want.usage.has_value();
      with_done += !want.held.empty();
      expect_same(relay(reads, asked), want, t);
      expect_same(relay({t}, asked), want, t);
      if (HasFailure()) return;
    }
  }
  EXPECT_GT(with_usage, 1000);  // the cases the relay acts on came up often
  EXPECT_GT(with_done, 1000);
}

}  // namespace

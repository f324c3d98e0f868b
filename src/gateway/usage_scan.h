// The token counts an answer reports, read without building a JSON tree: a tree costs an
// allocation per member (a llama-server answer's `usage` and `timings` were about twenty per
// request), where these read the few members they want in one pass of util/json_scan.h.
#pragma once
#include <cstdint>
#include <string_view>

namespace aicloud::gateway {

// What an OpenAI-shaped answer, or one chunk of a stream, says it used.
struct UsageSeen {
  bool usage = false;  // it has a `usage` object
  int64_t prompt = 0, completion = 0;  // usage.prompt_tokens, usage.completion_tokens
  // usage.prompt_tokens_details.cached_tokens, or else llama-server's timings.cache_n
  int64_t cached = 0;
  bool choices_empty = false;  // `choices` is [] (or {} or null): a stream's usage-only chunk
};

// One JSON document (a streamed chunk): false when it is not valid JSON (out then says nothing).
bool scan_usage(std::string_view doc, UsageSeen& out);

// A whole answer: only its top-level `usage` and `timings` members are parsed, not the relayed
// text or vectors around them. False when the answer has no usage or it is not valid JSON.
bool scan_answer_usage(std::string_view body, UsageSeen& out);

}  // namespace aicloud::gateway

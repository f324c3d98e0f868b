// The token counts an answer reports, read without building a JSON tree: a tree costs an
// allocation per member (a llama-server answer's `usage` and `timings` were about twenty per
// request). Only the few members wanted are read, and checked as JSON; the document's other
// members (the relayed text, vectors) are walked past, their nesting followed but not checked.
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

// One streamed chunk: its top-level `usage`, `timings` and `choices`. False when the chunk's
// outline is broken (it ends inside a value) or what is read is not valid JSON; then out says
// nothing. (A valid document that is not an object says nothing and is true.)
bool scan_usage(std::string_view doc, UsageSeen& out);

// A whole answer, read as a chunk is. False when the answer has no usage object, or as above.
bool scan_answer_usage(std::string_view body, UsageSeen& out);

}  // namespace aicloud::gateway

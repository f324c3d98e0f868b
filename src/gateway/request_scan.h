// What the gateway reads from a chat, completion or embeddings request body: the few top-level
// members it checks and routes by, found in one pass of util/json_scan.h that validates the whole
// body without building a JSON tree (a tree costs an allocation per member: a chat request's
// messages made about two dozen per request). The body itself is forwarded as the client sent it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace aicloud::gateway {

struct RequestSeen {
  // A member's JSON type; kAbsent when the body does not have it. A repeated member counts as its
  // last occurrence, as in a parsed tree.
  enum class Type : uint8_t { kAbsent, kNull, kBoolean, kInteger, kFloat, kString, kArray, kObject };

  bool object = false;           // the body is a JSON object
  Type model = Type::kAbsent;
  std::string model_name;        // when model is a string
  Type input = Type::kAbsent;    // the endpoint's required member: messages, prompt or input
  size_t input_size = 0;         // its length (a string, in bytes) or element count (an array)
  Type stream = Type::kAbsent;
  bool stream_value = false;     // when stream is a boolean
  Type stream_options = Type::kAbsent;
  bool include_usage = false;    // stream_options is an object whose include_usage is true
  // max_completion_tokens and max_tokens when integers (an unsigned one above INT64_MAX is -1).
  Type max_completion_tokens = Type::kAbsent, max_tokens = Type::kAbsent;
  int64_t max_completion_tokens_value = 0, max_tokens_value = 0;
};

// Scans body; false when it is not valid JSON, is empty, or nests deeper than kMaxJsonDepth: the
// caller then parses it with parse_json_body(), whose 400 says what is wrong (an empty body is {}).
bool scan_request(std::string_view body, std::string_view input_member, RequestSeen& out);

// The same from a parsed body (that fallback's result).
RequestSeen request_seen(const nlohmann::json& body, std::string_view input_member);

}  // namespace aicloud::gateway

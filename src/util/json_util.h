// Strict JSON request bodies: every accepted field is named and typed by the handler, and
// anything else (a wrong type, a missing field, an unknown field) is a 400 naming the field.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <memory>

namespace aicloud {

using json = nlohmann::json;

// Parses a body; malformed JSON, invalid UTF-8, a number out of range or nesting deeper than
// kMaxJsonDepth is a 400. An empty body is {}.
inline constexpr size_t kMaxJsonDepth = 128;
json parse_json_body(std::string_view body);

// Serialises for the wire; invalid UTF-8 in stored data is replaced, never thrown.
std::string dump_json(const json& j);

// Walks a JSON object document's top-level members without parsing the rest: f(key as written,
// the member's raw value text) in document order until it returns false (a relayed completion's
// "usage", found past its text). Strings and nesting are skipped, not checked: a value is parsed by
// the caller, which is where malformed text is caught. False when doc is not an object or ends
// inside one (members before that were seen).
// f is passed by reference and called through a plain function pointer (a function_ref): a
// std::function here was made and destroyed (a manager call) for every walk, several per relayed
// answer (~100-170 instructions per request).
namespace json_walk_detail {
using MemberFn = bool (*)(void* f, std::string_view key, std::string_view value);
bool for_each_top_level_member(std::string_view doc, MemberFn call, void* f);
}  // namespace json_walk_detail
template <class F>
bool for_each_top_level_member(std::string_view doc, F&& f) {
  using Fn = std::remove_reference_t<F>;
  return json_walk_detail::for_each_top_level_member(
      doc, [](void* g, std::string_view k, std::string_view v) -> bool { return (*static_cast<Fn*>(g))(k, v); },
      const_cast<void*>(static_cast<const void*>(std::addressof(f))));
}

class BodyReader {
 public:
  // 400 unless body is an object. prefix names a nested object in errors ("engine_args.").
  explicit BodyReader(const json& body, std::string prefix = "");

  std::string str(std::string_view field, size_t min_len = 1, size_t max_len = 256);
  std::optional<std::string> opt_str(std::string_view field, size_t min_len = 0, size_t max_len = 256);
  std::optional<bool> opt_bool(std::string_view field);
  std::optional<int64_t> opt_int(std::string_view field, int64_t min, int64_t max);
  // A string that must be one of `allowed`.
  std::optional<std::string> opt_enum(std::string_view field, const std::set<std::string>& allowed);
  const json* opt_object(std::string_view field);
  const json* opt_array(std::string_view field);

  // Throws 400 naming the first field that no accessor asked for.
  void done() const;

 private:
  const json* field(std::string_view name, const char* type_name, bool (json::*is)() const noexcept);
  json body_;  // a copy: callers often pass a temporary
  std::string prefix_;
  std::string named(std::string_view field) const { return prefix_ + std::string(field); }
  std::set<std::string, std::less<>> seen_;
};

}  // namespace aicloud

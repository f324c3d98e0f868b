// Checks for header fields that the server and the upstream pool write by hand (no Beast
// serializer): a field that could split the message it is written into is dropped, never sent.
#pragma once
#include <strings.h>

#include <array>
#include <string_view>

namespace aicloud::http {

// Case-insensitive equality of field names.
inline bool same_field(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// A field name must be an RFC 9110 token. (Every field of every response passes here: a table,
// not a strchr per byte.)
inline bool field_name_ok(std::string_view n) {
  static constexpr auto token = [] {
    std::array<bool, 256> t{};
    for (int c = 33; c < 127; ++c) t[c] = true;
    for (char c : std::string_view("()<>@,;:\\\"/[]?={}")) t[static_cast<unsigned char>(c)] = false;
    return t;
  }();
  if (n.empty()) return false;
  for (unsigned char ch : n) {
    if (!token[ch]) return false;
  }
  return true;
}

// The fields that frame a message (its length and the connection's fate): the writer's own,
// never copied from what a caller passes.
inline bool framing_field(std::string_view n) {
  return same_field(n, "content-length") || same_field(n, "transfer-encoding") || same_field(n, "connection");
}

// A field value must not hold CR or LF (which would end the field, or the head, early).
inline bool field_value_ok(std::string_view v) {
  for (char ch : v) {
    if (ch == '\r' || ch == '\n') return false;
  }
  return true;
}

}  // namespace aicloud::http

// An HTTP request as the server received it: the request line, the fields in the order they
// came, and the body with any chunking removed. Made by RequestParser (http/request_parser.h),
// which checked every part of it; handlers only read it (and may take its body).
//
// The head is kept as the bytes that came, one string; the method, target and fields are spans
// of it. (Beast's request kept each field in a node of its own: an allocation and a tree
// insertion per field, and a lookup of every name in its table of known fields.)
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http/fields.h"

namespace aicloud::http {

class Request {
 public:
  struct Field {
    std::string_view name, value;
  };

  std::string_view method() const { return view(method_); }  // "GET", "POST", ... (a token, as sent)
  std::string_view target() const { return view(target_); }  // origin form, as sent: "/v1/models?x=1"
  unsigned version() const { return version_; }              // 10 or 11
  // Whether the connection stays open after the response: HTTP/1.1 unless "Connection: close",
  // HTTP/1.0 only with "Connection: keep-alive".
  bool keep_alive() const { return keep_alive_; }
  std::string& body() { return body_; }
  const std::string& body() const { return body_; }

  // The value of the first field of this name (any case), or none. A walk over the fields in
  // the order they came: a request has a handful.
  std::optional<std::string_view> field(std::string_view name) const {
    for (const FieldSpan& f : fields_) {
      if (same_field(view(f.name), name)) return view(f.value);
    }
    return std::nullopt;
  }
  size_t field_count() const { return fields_.size(); }
  Field field_at(size_t i) const { return {view(fields_[i].name), view(fields_[i].value)}; }

 private:
  friend class RequestParser;
  struct Span {
    uint32_t at = 0, len = 0;
  };
  struct FieldSpan {
    Span name, value;
  };
  std::string_view view(Span s) const { return std::string_view(head_).substr(s.at, s.len); }

  std::string head_;  // the request line and the fields, as they came
  Span method_, target_;
  std::vector<FieldSpan> fields_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  std::string body_;
};

}  // namespace aicloud::http

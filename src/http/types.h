// HTTP request and response as the API layer sees them.
#pragma once
#include <boost/beast/http.hpp>

#include <memory>
#include <optional>
#include <string_view>
#include <string>
#include <utility>
#include <vector>

#include "http/request.h"

namespace aicloud::http {

namespace bhttp = boost::beast::http;
class ResponseStream;  // http/stream.h

struct Response {
  unsigned status = 200;
  std::string body;
  // Empty: application/json, the default. (Kept empty rather than spelled out: "application/json"
  // is one byte over std::string's inline capacity, so the default cost an allocation for every
  // Response made, several per request.)
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  // Header lines written out as they are, after `headers`: "Name: value\r\n" each. Unchecked,
  // and not replaced by a later field of the same name: only for fields that aicloud's own code
  // formats from values it made (the gateway's x-ratelimit-*), where building a checked pair of
  // heap strings per field cost more than the rest of the head.
  std::string fields;
  bool close = false;  // close the connection after this response
  // Set: the response comes later from this stream (http/stream.h); the fields above are unused.
  std::shared_ptr<ResponseStream> stream;
  // Set: the body is bytes [file_offset, file_offset + file_length) of this file, read from disk
  // as the socket takes them (model weights: gigabytes, never held in memory). `body` unused.
  std::string file_path;
  uint64_t file_offset = 0, file_length = 0;
};

}  // namespace aicloud::http

// HTTP request and response as the API layer sees them.
#pragma once
#include <boost/beast/http.hpp>

#include <string>
#include <utility>
#include <vector>

namespace aicloud::http {

namespace bhttp = boost::beast::http;
using Request = bhttp::request<bhttp::string_body>;

struct Response {
  unsigned status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  bool close = false;  // close the connection after this response
};

}  // namespace aicloud::http

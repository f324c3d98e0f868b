// A small synchronous HTTP/1.1 client (keep-alive, one connection), used by the CLI and tests.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace aicloud::http {

struct ClientResponse {
  unsigned status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string header(std::string_view name) const;  // case-insensitive; "" if absent
};

// Thrown when the server cannot be reached or the connection fails (not for HTTP errors).
struct ConnectionError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Client {
 public:
  // base_url: "http://host:port" (a trailing path is not allowed).
  explicit Client(const std::string& base_url, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~Client();

  ClientResponse request(const std::string& method, const std::string& target, const std::string& body = "",
                         const std::vector<std::pair<std::string, std::string>>& headers = {});

  const std::string& host() const { return host_; }
  const std::string& port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string host_, port_;
};

// Splits "http://host:port" into host and port. Throws std::invalid_argument with a message.
std::pair<std::string, std::string> parse_base_url(const std::string& url);

}  // namespace aicloud::http

// An asynchronous HTTP/1.1 server on Boost.Beast: keep-alive, one io_context run by every
// core, limits and timeouts so that slow, idle or oversized clients cannot hold it, and a
// graceful stop (in-flight requests finish, idle connections close, then run() returns).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "http/types.h"

namespace boost::asio {
class io_context;
}

namespace aicloud::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0 = pick a free port (see Server::port())
  int threads = 0;       // 0 = one per core
  size_t body_limit = 16 * 1024 * 1024;
  size_t header_limit = 16 * 1024;
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive connection with no request
  std::chrono::milliseconds header_timeout{10'000};  // from a request's first byte to its last header
  std::chrono::milliseconds body_timeout{60'000};    // to receive the body
  std::chrono::milliseconds shutdown_grace{30'000};  // in-flight requests get this long on stop
};

// What the server calls. handle() runs on an io thread for each complete request;
// protocol_error() builds the response for a request that could not be read (413, 431, 400).
class Handler {
 public:
  virtual ~Handler() = default;
  virtual Response handle(Request& req, const std::string& remote_addr) = 0;
  virtual Response protocol_error(unsigned status, const std::string& message) = 0;
};

class Server {
 public:
  // Binds at construction (throws std::runtime_error naming the address when it cannot).
  Server(ServerOptions opts, Handler& handler);
  ~Server();

  uint16_t port() const { return port_; }
  boost::asio::io_context& io();
  // Every io_context, one per thread ([0] is io()), so that a part can keep per-thread state
  // (the gateway's upstream connection pools) and work where the request arrived.
  std::vector<boost::asio::io_context*> io_contexts();
  // The io_context the calling thread runs for a Server, or nullptr off the io threads.
  static boost::asio::io_context* current_io();
  // Serves until stop() or SIGTERM/SIGINT; returns when drained.
  void run();
  // Thread-safe; begins a graceful stop.
  void stop();
  int64_t open_connections() const { return open_.load(); }

  // Internal: sessions register here so that stop() can close idle ones.
  struct Impl;
  std::atomic<int64_t> open_{0};  // maintained by sessions

 private:
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace aicloud::http

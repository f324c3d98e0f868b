// An asynchronous HTTP/1.1 client for the gateway's upstreams (model replicas): keep-alive
// connections pooled per host:port, the response delivered as it arrives (head, then body pieces,
// then done), cancellable at any point. It runs on an io_context that one thread runs (each of the
// server's io threads has its own: the pool relies on that instead of strands) and never blocks a
// thread, so thousands of streams in flight cost sockets and buffers, not threads.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/types.h"

namespace boost::asio {
class io_context;
}

namespace aicloud::http {

// What is sent upstream. The pool writes its request line and fields by hand, with the body, in
// one gather write (Beast's field container and serializer were ~3% of the gateway's CPU); it adds
// Host and Content-Length itself (keep-alive is HTTP/1.1's default). A field whose name is not a
// token or whose value has CR or LF is dropped rather than allowed to split the request.
struct UpstreamRequest {
  std::string method = "POST";
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  // Header lines written as they are, after `headers`: "Name: value\r\n" each. Unchecked: only
  // for fields that aicloud's own code formats from values it has checked (the gateway's),
  // where a checked pair of heap strings per field cost more than the rest of the head.
  std::string fields;
  std::string body;
  // Instead of body: bytes that the handler owns and keeps until on_done (the call holds the
  // handler until then), so that a request tried on several replicas is not copied for each.
  std::string_view handler_body;
};

struct UpstreamHead {
  unsigned status = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;  // all but hop-by-hop ones
};

// What a caller of send() hears about its request, in order: on_head once, on_data for each
// piece of the body, on_read_end between reads, then on_done exactly once. The call holds its
// handler until on_done has run. (An interface rather than four std::functions: each of those
// held its own reference to the caller's state, an allocation and a reference count apiece.)
class UpstreamHandler {
 public:
  virtual ~UpstreamHandler() = default;
  virtual void on_head(UpstreamHead& head) = 0;  // the head is the handler's to keep (move from it)
  virtual void on_data(std::string_view piece) = 0;  // body bytes, as they arrive (chunking removed)
  // When what one read brought has been handed to on_head and on_data and the response goes on
  // (more is to be read), so that a relay can pass a read's pieces on together, with no turn of
  // the event loop in between (on_done comes instead when the read ended it).
  virtual void on_read_end() {}
  // error empty = the response completed. got_response = some byte of the response arrived:
  // false means the request may be retried on another upstream (refused, reset or timed out
  // before answering).
  virtual void on_done(const std::string& error, bool got_response) = 0;
};

// The same as functions (UpstreamHandler's, which say when each is called), for callers that
// keep little state: tests, tools. Any may be empty.
struct UpstreamCallbacks {
  std::function<void(UpstreamHead&)> on_head;
  std::function<void(std::string_view)> on_data;
  std::function<void()> on_read_end;
  std::function<void(const std::string& error, bool got_response)> on_done;
};

struct UpstreamTimeouts {
  std::chrono::milliseconds connect{2'000};
  std::chrono::milliseconds first_byte{600'000};  // a long prompt can take a while to start
  std::chrono::milliseconds idle{120'000};        // between two pieces of the body
};

// One request in flight. cancel() is thread-safe; after it, on_done is called with "cancelled"
// (unless it had already been called) and the connection is closed, which is how llama-server
// learns to stop generating.
class UpstreamCall {
 public:
  virtual ~UpstreamCall() = default;
  virtual void cancel() = 0;
};

class UpstreamPool {
 public:
  explicit UpstreamPool(boost::asio::io_context& ioc, size_t max_idle_per_target = 256);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // Sends req to host:port. Throws std::invalid_argument for a method that is not a token or
  // a target with a space or control byte, or no handler.
  std::shared_ptr<UpstreamCall> send(const std::string& host, uint16_t port, UpstreamRequest req,
                                     std::shared_ptr<UpstreamHandler> handler, UpstreamTimeouts timeouts = {});
  std::shared_ptr<UpstreamCall> send(const std::string& host, uint16_t port, UpstreamRequest req, UpstreamCallbacks cb,
                                     UpstreamTimeouts timeouts = {});

  size_t idle_connections() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace aicloud::http

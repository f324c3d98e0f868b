// The OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/embeddings.
//
// A request passes, in order: authentication (App's filter chain: the in-memory key cache) ->
// body checks (JSON, model, the endpoint's required field) -> model resolution (the replica
// directory, in memory) -> rate limits (ratelimit.h: in-memory token buckets; 429 when short,
// x-ratelimit-* headers on every answer) -> a replica: least outstanding requests, waking a deployment scaled to
// zero and waiting for it up to a limit -> the proxy (asynchronous, streamed chunk by chunk for
// SSE; retried on another replica when the connection fails before any byte came back; a client
// that goes away cancels the upstream request) -> one usage record, group-committed before the
// client sees the end of the response.
//
// The hot path reads no database and holds no thread while the engine works.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "api/app.h"
#include "gateway/ratelimit.h"
#include "gateway/replicas.h"
#include "http/upstream.h"
#include "metering/meter.h"

namespace boost::asio {
class io_context;
}

namespace aicloud::gateway {

struct GatewayOptions {
  std::chrono::milliseconds wake_timeout{60'000};  // scale from zero: how long a request waits
  int max_attempts = 3;                            // replicas tried when connecting fails
  http::UpstreamTimeouts upstream;
};

class Gateway {
 public:
  // ios: the server's io_contexts (http::Server::io_contexts()). A request's upstream call, its
  // timers and its callbacks run on the io_context of the thread that received it, with that
  // thread's own connection pool: no other thread is woken to proxy it.
  Gateway(std::vector<boost::asio::io_context*> ios, Meter& meter, ReplicaDirectory& dir, GatewayOptions opts = {});
  ~Gateway();
  void add_routes(App& app);

  struct Exchange;  // one request in flight (gateway.cpp)

 private:
  http::Response handle(Context& c, const char* endpoint, const char* path);

  struct Lane {  // one per io thread
    boost::asio::io_context* io;
    std::unique_ptr<http::UpstreamPool> pool;
  };
  Lane& this_lane();  // the calling thread's, else the first

  std::vector<Lane> lanes_;
  Meter& meter_;
  ReplicaDirectory& dir_;
  GatewayOptions opts_;
  std::unique_ptr<RateLimiter> limiter_;  // made by add_routes from the App's store
};

}  // namespace aicloud::gateway

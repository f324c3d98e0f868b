// A response that is produced later, from any thread: what the gateway returns while it waits
// for a model replica. The handler returns a Response whose `stream` is set; the session then
// waits, without holding an io thread, for the producer to either
//   - reply(): the whole response at once (status, headers, body; Content-Length), or
//   - head() + write()* + end(): a streamed response (chunked encoding; SSE), each write sent to
//     the client as soon as the socket takes it.
// If the client goes away first, the session calls cancel(): the producer learns it through
// on_cancel() (to abort the upstream request) and its later writes are dropped.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "http/types.h"

namespace aicloud::http {

class ResponseStream {
 public:
  // ---- producer side (any thread) ----
  void reply(Response&& r) {
    Notify n;
    {
      std::lock_guard lk(mu_);
      if (headed_ || cancelled_) return;
      head_ = std::move(r);
      headed_ = true;
      streaming_ = false;
      ended_ = true;
      n = notify_;
    }
    if (n) (*n)(true);
  }
  // A stream's head (h's status, content type and fields; its body unused), optionally with its
  // first data and its end (a producer that has it all at once then costs the session one
  // notification).
  void head(Response h, std::string first = {}, bool last = false) {
    Notify n;
    {
      std::lock_guard lk(mu_);
      if (headed_ || cancelled_) return;
      headed_ = true;
      head_ = std::move(h);
      streaming_ = true;
      if (!first.empty()) queued_.push_back(std::move(first));
      ended_ = last;
      n = take_notify(last);
    }
    if (n) (*n)(last);
  }
  // A piece of the stream (an empty one adds nothing: it would end the chunked body), and its
  // end if `last`.
  void write(std::string chunk, bool last = false) {
    Notify n;
    {
      std::lock_guard lk(mu_);
      if (!headed_ || ended_) return;
      ended_ = last;
      if (cancelled_) return;
      if (!chunk.empty()) queued_.push_back(std::move(chunk));
      n = take_notify(last);
    }
    if (n) (*n)(last);
  }
  void end() { write({}, true); }
  // Called at most once, when the client goes away before end(). Runs on the caller of
  // cancel() (an io thread): keep it short.
  void on_cancel(std::function<void()> f) {
    bool now = false;
    {
      std::lock_guard lk(mu_);
      if (cancelled_) now = true;
      else on_cancel_ = std::move(f);
    }
    if (now && f) f();
  }
  bool cancelled() const {
    std::lock_guard lk(mu_);
    return cancelled_;
  }
  // A response that only waits for an event (an agent's long-poll) should not hold up a
  // graceful stop: when the server begins one before this response has begun, it calls stop(),
  // which runs f (at most once; at once if it already happened). Runs on an io thread: keep it
  // short (answer now). stopped() tells a producer that looks later.
  void on_stop(std::function<void()> f) {
    bool now = false;
    {
      std::lock_guard lk(mu_);
      if (stopped_) now = true;
      else on_stop_ = std::move(f);
    }
    if (now && f) f();
  }
  bool stopped() const {
    std::lock_guard lk(mu_);
    return stopped_;
  }

  // ---- consumer side (the session) ----
  struct Pulled {
    std::optional<Response> head;  // set once: the first pull after head()/reply()
    bool streaming = false;
    std::string data;  // everything written since the last pull
    bool end = false;  // nothing more will come
  };
  // notify(complete) runs after a change; complete: nothing more will come (a reply(), or a
  // stream's end), so the session may send it at once, where pieces of a stream are better
  // gathered into one write. Pieces that follow a notification the session has not yet answered
  // with pull() do not notify again.
  // A producer that has given something before attach() is notified of at once (as not complete:
  // the session pulls on a later turn rather than inside attach()); one that has not notifies
  // when it gives it. (Notifying every attach cost a posted turn of the session per response.)
  void attach(std::function<void(bool complete)> notify) {
    Notify n = std::make_shared<const std::function<void(bool)>>(std::move(notify));
    bool given;
    {
      std::lock_guard lk(mu_);
      notify_ = n;
      given = headed_;
      notified_ = given;
    }
    if (given) (*n)(false);
  }
  Pulled pull() {
    std::lock_guard lk(mu_);
    notified_ = false;
    Pulled p;
    if (head_) {  // moved out: the session takes it once (a whole reply's body too)
      p.head = std::move(head_);
      head_.reset();
    }
    p.streaming = streaming_;
    if (queued_.size() == 1) {
      p.data = std::move(queued_.front());  // (the common case: one piece, moved, not copied)
    } else {
      for (auto& c : queued_) p.data += c;
    }
    queued_.clear();
    p.end = ended_;
    return p;
  }
  void stop() {
    std::function<void()> f;
    {
      std::lock_guard lk(mu_);
      if (stopped_ || headed_ || cancelled_) return;
      stopped_ = true;
      f = std::move(on_stop_);
    }
    if (f) f();
  }
  void cancel() {
    std::function<void()> f;
    {
      std::lock_guard lk(mu_);
      if (cancelled_ || (ended_ && queued_.empty())) return;
      cancelled_ = true;
      f = std::move(on_cancel_);
      notify_ = nullptr;
    }
    if (f) f();
  }

 private:
  mutable std::mutex mu_;
  std::optional<Response> head_;  // given, not yet pulled
  bool headed_ = false;           // a head (or a whole reply) has been given
  bool streaming_ = false;
  bool ended_ = false;
  bool cancelled_ = false;
  bool stopped_ = false;
  // (A vector: a deque allocates its map and a first node when made, two allocations for every
  // response, most of which never queue a piece.)
  std::vector<std::string> queued_;
  // Shared rather than copied out of the lock for each call: a std::function holding the
  // session's callback is a heap copy each time.
  using Notify = std::shared_ptr<const std::function<void(bool complete)>>;
  Notify notify_;
  bool notified_ = false;  // a notify has gone out that no pull() has answered yet

  // Pieces of a stream notify once until the consumer pulls; its end always does, as complete
  // (the session may then send it at once, with nothing more to gather).
  Notify take_notify(bool complete) {
    if ((notified_ && !complete) || !notify_) return nullptr;
    notified_ = true;
    return notify_;
  }
  std::function<void()> on_cancel_;
  std::function<void()> on_stop_;
};

}  // namespace aicloud::http

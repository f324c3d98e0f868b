// A socket read that, like nginx, does not try a read it knows would find nothing.
//
// asio (1.74) tries every read the moment it is queued. A proxy reads just after it writes (the
// next request once an answer went out; the answer once the request went upstream), so that try
// nearly always fails: an empty recvmsg, ~1.3 µs on this VM, where nginx makes none
// (docs/PERFORMANCE.md §5). asio's reactor has the flag this needs: an operation that reports
// "done and exhausted" turns the socket's next at-once attempt off until epoll reports the socket
// again (no epoll_ctl, unlike async_wait). Its own receive reports that only at end of stream.
//
// This one reports it when the socket was empty right after its bytes were taken, and knows that
// in the same system call: recvmmsg with two entries and MSG_WAITFORONE receives the bytes, then
// tries once more without waiting. One entry back: nothing followed, so any later byte or FIN
// brings a new edge from epoll. A second entry of 0 bytes: the peer's FIN came with the bytes (no
// edge will follow it): the next read tries at once and finds the end. A second entry with a byte:
// more is there, likewise. (nginx tells the FIN apart with EPOLLRDHUP, which asio does not
// register.) What one entry cannot tell apart is "empty" from "reset after the bytes": the
// kernel keeps that error for the next call. (A reset there before the call fails the call
// itself, bytes or not; one that lands during it also raises an epoll event of its own, which
// turns at-once reads back on: StreamProxy.AClientThatResetsRightAfterItsRequestLeavesNothingRunning.)
// Still, a caller uses this read only where a hidden reset would come out at once anyway: for the
// first read of a message (the next thing it does is answer, or send the next request, and that
// write fails), never to continue one that is incomplete.
//
// Built on asio's reactor interface (boost/asio/detail), which is internal: the project builds
// against Debian 12's Boost 1.74, whose epoll reactor this was written for. Against another
// Boost, async_read_ready is asio's own async_read_some (correct, with the empty reads).
#pragma once
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/version.hpp>

#include <cassert>
#include <chrono>
#include <memory>
#include <utility>

#include "http/io_types.h"

namespace aicloud::http {

#if BOOST_VERSION / 100 == 1074
#define AICLOUD_READY_READ 1

namespace ready_read_detail {

namespace ad = boost::asio::detail;

// basic_socket's implementation (protected): a pointer to member formed in a derived class is a
// pointer to the base's member, usable on any socket of that type.
struct SocketAccess : TcpSocket {
  static auto& impl(TcpSocket& s) { return (s.*(&SocketAccess::impl_)).get_implementation(); }
};

// The io_context's reactor, looked up once per thread (each io thread runs one io_context).
inline ad::reactor& reactor_of(TcpSocket& s) {
  thread_local boost::asio::execution_context* cached_ctx = nullptr;
  thread_local ad::reactor* cached = nullptr;
  boost::asio::execution_context& ctx = s.get_executor().context();
  if (cached_ctx != &ctx) {
    cached = &boost::asio::use_service<ad::reactor>(ctx);
    cached_ctx = &ctx;
  }
  return *cached;
}

template <class Handler>
class RecvOp : public ad::reactor_op {
 public:
  RecvOp(int fd, boost::asio::mutable_buffer b, Handler&& h)
      : ad::reactor_op(boost::system::error_code(), &RecvOp::perform_recv, &RecvOp::complete),
        fd_(fd),
        buf_(b),
        handler_(std::move(h)) {}

 private:
  static status perform_recv(ad::reactor_op* base) {
    auto* o = static_cast<RecvOp*>(base);
    char* p = static_cast<char*>(o->buf_.data());
    const size_t size = o->buf_.size();
    // The bytes waiting, into all but the buffer's last byte; then, without waiting, what follows
    // them, into that last byte.
    iovec iov[2] = {{p, size - 1}, {p + size - 1, 1}};
    mmsghdr m[2] = {};
    m[0].msg_hdr.msg_iov = &iov[0];
    m[0].msg_hdr.msg_iovlen = 1;
    m[1].msg_hdr.msg_iov = &iov[1];
    m[1].msg_hdr.msg_iovlen = 1;
    int r;
    do {
      r = ::recvmmsg(o->fd_, m, 2, MSG_WAITFORONE, nullptr);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return not_done;  // stays queued for epoll
      o->ec_ = boost::system::error_code(errno, boost::asio::error::get_system_category());
      return done;
    }
    const size_t n1 = m[0].msg_len;
    if (n1 == 0) {
      o->ec_ = boost::asio::error::eof;
      return done_and_exhausted;
    }
    if (r == 1) {  // nothing followed: the next read waits for epoll
      o->bytes_transferred_ = n1;
      return done_and_exhausted;
    }
    const size_t n2 = m[1].msg_len;  // 0: the end of the stream follows; 1: more bytes
    if (n2 > 0 && n1 < size - 1) p[n1] = p[size - 1];  // (kept next to the others)
    o->bytes_transferred_ = n1 + n2;
    return done;
  }

  // owner is null when the io_context is being destroyed with the operation still queued: the
  // operation is freed and its handler not run.
  static void complete(void* owner, ad::operation* base, const boost::system::error_code&, std::size_t) {
    auto* o = static_cast<RecvOp*>(base);
    Handler h(std::move(o->handler_));
    boost::system::error_code ec = o->ec_;
    size_t n = o->bytes_transferred_;
    delete o;
    if (owner) h(ec, n);
  }

  int fd_;
  boost::asio::mutable_buffer buf_;
  Handler handler_;
};

}  // namespace ready_read_detail
#endif  // BOOST_VERSION 1.74

// Reads some bytes into b (at least 2 bytes of room) on the socket's io thread; handler(ec, n)
// runs later from the io_context, as for async_read_some: eof at end of stream, operation_aborted
// if the socket's operations are cancelled or it is closed first. The socket must be non-blocking
// (socket.non_blocking(true)).
template <class Handler>
void async_read_ready(TcpSocket& s, boost::asio::mutable_buffer b, Handler&& handler) {
#ifdef AICLOUD_READY_READ
  namespace rd = ready_read_detail;
  assert(b.size() >= 2);
  auto& impl = rd::SocketAccess::impl(s);
  auto* op = new rd::RecvOp<std::decay_t<Handler>>(impl.socket_, b, std::forward<Handler>(handler));
  rd::reactor_of(s).start_op(rd::ad::reactor::read_op, impl.socket_, impl.reactor_data_, op,
                             /*is_continuation=*/false, /*allow_speculative=*/true);
#else
  s.async_read_some(b, std::forward<Handler>(handler));
#endif
}


// The deadline of one read made with async_read_ready, which has none of its own (unlike Beast's
// timed stream): past it, the socket's operations are cancelled, and done() reports the read's
// operation_aborted as beast::error::timeout, as Beast's timed reads do.
//
// The timer is lazy: a read that ends before its deadline does not cancel the timer, and the next
// read's arm() only moves the deadline, so a keep-alive connection's timer is set about once per
// timeout (60 s idle) rather than set and cancelled for every request (each a lock of the reactor
// and a handler run for the cancellation: ~1,500 instructions per request for two such timers).
// When the timer fires it checks the deadline then in force, and waits on if it has moved.
class ReadDeadline {
 public:
  explicit ReadDeadline(const IoExecutor& ex) : timer_(ex) {}

  // Before the read. The timer holds `owner` (which owns this and `socket`) weakly: it keeps
  // nothing alive, and its handler touches nothing once the owner is gone.
  void arm(std::chrono::steady_clock::duration d, std::weak_ptr<const void> owner, TcpSocket& socket) {
    deadline_ = std::chrono::steady_clock::now() + d;
    socket_ = &socket;
    waiting_ = true;
    // A wait already pending covers this deadline unless it ends after it (a shorter timeout
    // than the last one's): then it is replaced.
    if (!pending_ || timer_.expiry() > deadline_) start(std::move(owner));
  }
  // When the read completes, with its error: beast::error::timeout if the deadline ended it.
  boost::system::error_code done(boost::system::error_code ec) {
    waiting_ = false;
    bool timed_out = std::exchange(timed_out_, false);
    return timed_out && ec == boost::asio::error::operation_aborted ? boost::beast::error::timeout : ec;
  }
  // No more reads: the timer stops.
  void cancel() {
    ++gen_;
    pending_ = waiting_ = false;
    timer_.cancel();
  }

 private:
  void start(std::weak_ptr<const void> owner) {
    pending_ = true;
    timer_.expires_at(deadline_);  // (cancels a wait it replaces: that one's gen is stale)
    timer_.async_wait([this, owner, gen = ++gen_](boost::system::error_code ec) {
      auto alive = owner.lock();
      if (!alive || gen != gen_) return;  // the owner (and this) is gone, or a later wait replaced this one
      pending_ = false;
      if (ec || !waiting_) return;  // cancelled, or no read waits: the next arm() starts a wait
      if (std::chrono::steady_clock::now() < deadline_) return start(owner);  // moved on by later reads
      timed_out_ = true;
      boost::system::error_code ignored;
      socket_->cancel(ignored);
    });
  }

  boost::asio::steady_timer timer_;
  std::chrono::steady_clock::time_point deadline_;  // of the read waiting (or the last one)
  TcpSocket* socket_ = nullptr;                      // the read's
  uint64_t gen_ = 0;  // numbers the waits started, so that a replaced one knows it is stale
  bool pending_ = false, waiting_ = false, timed_out_ = false;
};

}  // namespace aicloud::http

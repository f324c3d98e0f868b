// A write that goes out now when the socket takes it, without a turn of the event loop.
//
// asio completes even a write that succeeded at once by posting its handler to the end of the
// loop's queue, and the loop polls epoll (an epoll_wait) every time it passes that point: a proxied
// request made about one epoll_wait for its few such hops (docs/PERFORMANCE.md §5). A response or
// an upstream request is small and a socket's send buffer is almost never full, so the write is
// tried directly on the non-blocking socket and `done` runs inline; what the socket did not take
// goes through an ordinary async write under the stream's timeout.
#pragma once
#include <boost/asio/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>

#include <chrono>
#include <utility>

#include "http/io_types.h"

namespace aicloud::http {

// The stream's socket must be in non-blocking mode (socket().non_blocking(true)). `bufs` and the
// memory they point to must stay valid until done(ec) has run.
template <class Buffers, class Done>
void write_now(TcpStream& stream, const Buffers& bufs, std::chrono::steady_clock::duration timeout, Done done) {
  boost::system::error_code ec;
  size_t n = stream.socket().write_some(bufs, ec);
  if (ec == boost::asio::error::would_block || ec == boost::asio::error::try_again) {
    ec = {};
    n = 0;
  }
  if (ec || n == boost::asio::buffer_size(bufs)) return done(ec);
  boost::beast::buffers_suffix<Buffers> rest(bufs);
  rest.consume(n);
  stream.expires_after(timeout);
  boost::asio::async_write(stream, rest, [done = std::move(done)](boost::system::error_code ec2, size_t) mutable {
    done(ec2);
  });
}

}  // namespace aicloud::http

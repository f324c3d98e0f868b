#include "http/server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <thread>
#include <vector>

#include "util/log.h"

namespace aicloud::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

class Session;

struct Server::Impl {
  ServerOptions opts;
  Handler& handler;
  Server& owner;
  asio::io_context ioc;
  tcp::acceptor acceptor;
  asio::signal_set signals;
  asio::steady_timer drain_timer;
  std::atomic<bool> stopping{false};
  std::chrono::steady_clock::time_point stop_deadline;

  std::mutex sessions_mu;
  std::set<Session*> sessions;

  Impl(ServerOptions o, Handler& h, Server& s)
      : opts(std::move(o)), handler(h), owner(s), ioc(opts.threads), acceptor(ioc), signals(ioc, SIGTERM, SIGINT),
        drain_timer(ioc) {}

  void accept();
  void begin_stop();
  void drain();
};

// The read buffer holds what the parser has not consumed yet: a header (at most header_limit),
// a chunk-size line or the trailer of a chunked body, and what one read brought beyond them
// (pipelined requests). Body bytes go to the request as they are parsed, never accumulate here.
// Bounded, so that an endless chunk extension or trailer (which neither the header nor the body
// limit counts) is a 400 rather than memory growing as fast as a client can send.
constexpr size_t kReadAhead = 64 * 1024;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket sock, Server::Impl& srv)
      : stream_(std::move(sock)), srv_(srv), buffer_(srv.opts.header_limit + kReadAhead) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    stream_.socket().set_option(tcp::no_delay(true), ec);
    srv_.owner.open_.fetch_add(1);
    std::lock_guard lk(srv_.sessions_mu);
    srv_.sessions.insert(this);
  }
  ~Session() {
    {
      std::lock_guard lk(srv_.sessions_mu);
      srv_.sessions.erase(this);
    }
    srv_.owner.open_.fetch_sub(1);
  }

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }

  // Called by stop(): an idle connection closes now, a busy one after its response. Idle means
  // waiting for a request's first byte with none arrived: a request that is partly received, or
  // whose bytes wait in the socket unread, is in flight and is served.
  void shutdown_if_idle() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      if (!self->busy_ && self->buffer_.size() == 0 && self->stream_.socket().available(ec) == 0) self->close();
    });
  }

 private:
  void read_request() {
    if (srv_.stopping) return close();
    parser_.emplace();
    parser_->body_limit(srv_.opts.body_limit);
    parser_->header_limit(static_cast<std::uint32_t>(srv_.opts.header_limit));
    if (buffer_.size() > 0) {
      busy_ = true;  // a pipelined request has begun
      return read_header();
    }
    // Wait for the first byte under the (long) idle timeout; the header then has a short one.
    stream_.expires_after(srv_.opts.idle_timeout);
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return self->close();
      self->buffer_.commit(n);
      self->busy_ = true;  // from a request's first byte to its response, stop() waits for it
      self->read_header();
    });
  }

  void read_header() {
    stream_.expires_after(srv_.opts.header_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->on_read_error(ec);
      self->stream_.expires_after(self->srv_.opts.body_timeout);
      bhttp::async_read(self->stream_, self->buffer_, *self->parser_,
                        [self](beast::error_code ec2, size_t) {
                          if (ec2) return self->on_read_error(ec2);
                          self->on_request();
                        });
    });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) {
      return reply_error(413, "Request body too large: the limit is " + std::to_string(srv_.opts.body_limit) + " bytes.");
    }
    if (ec == bhttp::error::header_limit) {
      return reply_error(431, "Request header fields too large: the limit is " +
                                  std::to_string(srv_.opts.header_limit) + " bytes.");
    }
    if (ec == bhttp::error::buffer_overflow) {
      return reply_error(400, "Malformed HTTP request: a chunk header or trailer is longer than " +
                                  std::to_string(srv_.opts.header_limit + kReadAhead) + " bytes.");
    }
    if (ec == beast::error::timeout || ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset) {
      return close();
    }
    if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
        ec != bhttp::error::partial_message) {
      return reply_error(400, "Malformed HTTP request: " + ec.message() + ".");
    }
    close();
  }

  void reply_error(unsigned status, const std::string& message) {
    Response r = srv_.handler.protocol_error(status, message);
    r.close = true;
    write(std::move(r), 11);
  }

  void on_request() {
    Request req = parser_->release();
    Response r;
    try {
      r = srv_.handler.handle(req, remote_);
    } catch (const std::exception& e) {
      spdlog::error("unhandled exception in request handler: {}", e.what());
      r = srv_.handler.protocol_error(500, "The server had an error while processing your request.");
    }
    if (!req.keep_alive() || srv_.stopping) r.close = true;
    write(std::move(r), req.version());
  }

  void write(Response r, unsigned version) {
    res_.emplace();
    res_->version(version);
    res_->result(r.status);
    res_->set(bhttp::field::server, "aicloud");
    res_->set(bhttp::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res_->set(k, v);
    res_->body() = std::move(r.body);
    res_->keep_alive(!r.close);
    res_->prepare_payload();
    bool close_after = r.close;
    stream_.expires_after(std::chrono::seconds(30));
    bhttp::async_write(stream_, *res_, [self = shared_from_this(), close_after](beast::error_code ec, size_t) {
      self->busy_ = false;
      self->res_.reset();
      if (ec || close_after) return self->close();
      self->read_request();
    });
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.cancel();
    stream_.close();
  }

  beast::tcp_stream stream_;
  Server::Impl& srv_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::string_body>> res_;
  std::string remote_;
  bool busy_ = false;
};

void Server::Impl::accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket sock) {
    if (stopping) return;
    if (!ec) {
      std::make_shared<Session>(std::move(sock), *this)->start();
    } else if (ec == asio::error::no_descriptors) {
      spdlog::warn("accept: out of file descriptors");
    }
    accept();
  });
}

void Server::Impl::begin_stop() {
  if (stopping.exchange(true)) return;
  spdlog::info("shutting down: finishing in-flight requests");
  beast::error_code ec;
  acceptor.close(ec);
  signals.cancel(ec);
  stop_deadline = std::chrono::steady_clock::now() + opts.shutdown_grace;
  {
    std::lock_guard lk(sessions_mu);
    for (Session* s : sessions) s->shutdown_if_idle();
  }
  drain();
}

void Server::Impl::drain() {
  if (owner.open_.load() == 0 || std::chrono::steady_clock::now() >= stop_deadline) {
    ioc.stop();
    return;
  }
  drain_timer.expires_after(std::chrono::milliseconds(20));
  drain_timer.async_wait([this](beast::error_code) { drain(); });
}

Server::Server(ServerOptions opts, Handler& handler) : impl_(std::make_unique<Impl>(std::move(opts), handler, *this)) {
  auto& a = impl_->acceptor;
  beast::error_code ec;
  auto addr = asio::ip::make_address(impl_->opts.host, ec);
  if (ec) throw std::runtime_error("invalid listen address '" + impl_->opts.host + "': " + ec.message());
  tcp::endpoint ep(addr, impl_->opts.port);
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error("cannot listen on " + impl_->opts.host + ":" + std::to_string(impl_->opts.port) + ": " +
                             ec.message());
  }
  port_ = a.local_endpoint().port();
}

Server::~Server() = default;

asio::io_context& Server::io() { return impl_->ioc; }

void Server::run() {
  impl_->signals.async_wait([this](beast::error_code ec, int) {
    if (!ec) impl_->begin_stop();
  });
  impl_->accept();
  int n = impl_->opts.threads > 0 ? impl_->opts.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) threads.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : threads) t.join();
}

void Server::stop() {
  asio::post(impl_->ioc, [this] { impl_->begin_stop(); });
}

}  // namespace aicloud::http

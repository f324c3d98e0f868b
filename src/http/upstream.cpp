#include "http/upstream.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <optional>
#include <stdexcept>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "http/answer_parser.h"
#include "http/fields.h"
#include "http/io_types.h"
#include "http/ready_read.h"
#include "http/write_now.h"
#include "util/text_writer.h"

namespace aicloud::http {

using namespace std::string_view_literals;

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

// The pool's io_context is run by one thread (each of the server's io threads has its own, see
// http/server.h), so a call's handlers, its stream's timer and a cancel() posted from elsewhere
// never run concurrently without a strand: a strand would cost a lock and a queue per handler.

// (This file's own types: an unnamed namespace, so that none can clash with another of the same
// name elsewhere in aicloud::http, such as router.h's Target.)
namespace {

// A connection, and what stays with it from one call to the next when it is kept alive: the
// buffer answers are read into (its room kept: a new one per call was an allocation each), and the
// first-byte deadline's timer, which is lazy (http/ready_read.h), so that a call that is answered
// in time neither sets nor cancels a timer (a new timer per call was set and cancelled, a reactor
// lock and a queued cancellation each). Shared: the deadline holds its connection weakly.
struct Conn {
  explicit Conn(const IoExecutor& ex) : stream(ex), deadline(ex) {}
  TcpStream stream;
  beast::flat_buffer buf;
  ReadDeadline deadline;
};
using Pooled = std::shared_ptr<Conn>;

// Where pooled connections go: a host and port, looked up by view, with no key string built per
// call.
struct PoolKey {
  std::string host;
  uint16_t port;
};
struct PoolKeyView {
  std::string_view host;
  uint16_t port;
};
struct PoolKeyHash {
  using is_transparent = void;
  size_t operator()(const PoolKeyView& k) const { return std::hash<std::string_view>{}(k.host) * 31 + k.port; }
  size_t operator()(const PoolKey& k) const { return (*this)(PoolKeyView{k.host, k.port}); }
};
struct PoolKeyEq {
  using is_transparent = void;
  static PoolKeyView view(const PoolKey& k) { return {k.host, k.port}; }
  static PoolKeyView view(const PoolKeyView& k) { return k; }
  template <class A, class B>
  bool operator()(const A& a, const B& b) const {
    return view(a).host == view(b).host && view(a).port == view(b).port;
  }
};

}  // namespace

struct UpstreamPool::Impl {
  using Idle = std::unordered_map<PoolKey, std::vector<Pooled>, PoolKeyHash, PoolKeyEq>;
  asio::io_context& ioc;
  size_t max_idle;
  mutable std::mutex mu;
  Idle idle;

  Impl(asio::io_context& i, size_t m) : ioc(i), max_idle(m) {}

  Pooled take(PoolKeyView t) {  // nullptr: none idle
    std::lock_guard lk(mu);
    auto it = idle.find(t);
    if (it == idle.end() || it->second.empty()) return nullptr;
    Pooled p = std::move(it->second.back());
    it->second.pop_back();
    return p;
  }
  void put(PoolKeyView t, Pooled p) {
    std::lock_guard lk(mu);
    if (closed) return;
    auto it = idle.find(t);
    if (it == idle.end()) it = idle.emplace(PoolKey{std::string(t.host), t.port}, std::vector<Pooled>{}).first;
    if (it->second.size() < max_idle) it->second.push_back(std::move(p));
  }
  // Closes every idle connection; later puts close theirs at once.
  void close_idle() {
    Idle gone;
    {
      std::lock_guard lk(mu);
      closed = true;
      gone.swap(idle);
    }
  }
  bool closed = false;  // guarded by mu
};

namespace {

// An idle connection's socket belongs to its io_context's socket service, so it must close
// before that service is destroyed, whichever of the pool and the io_context goes first. asio
// shuts every service of an io_context down before destroying any: this one's shutdown closes the
// idle connections of every pool made on the io_context while their sockets can still close.
class PoolCloser : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;
  explicit PoolCloser(asio::execution_context& ctx) : asio::execution_context::service(ctx) {}

  void add(const std::shared_ptr<UpstreamPool::Impl>& pool) {
    std::lock_guard lk(mu_);
    std::erase_if(pools_, [](const auto& w) { return w.expired(); });
    pools_.push_back(pool);
  }

 private:
  void shutdown() override {
    std::vector<std::weak_ptr<UpstreamPool::Impl>> pools;
    {
      std::lock_guard lk(mu_);
      pools.swap(pools_);
    }
    for (auto& w : pools) {
      if (auto p = w.lock()) p->close_idle();
    }
  }

  std::mutex mu_;
  std::vector<std::weak_ptr<UpstreamPool::Impl>> pools_;
};

}  // namespace

namespace {

constexpr size_t kReadRoom = 16 * 1024;

class Call : public UpstreamCall, public std::enable_shared_from_this<Call> {
 public:
  Call(std::shared_ptr<UpstreamPool::Impl> pool, std::string host, uint16_t port, UpstreamRequest req,
       std::shared_ptr<UpstreamHandler> handler, UpstreamTimeouts t)
      : pool_(std::move(pool)),
        host_(std::move(host)),
        port_(port),
        body_(std::move(req.body)),
        body_view_(req.handler_body.data() ? req.handler_body : std::string_view(body_)),
        head_(request_head(req, host_, port_, body_view_.size())),
        h_(std::move(handler)),
        t_(t),
        ex_(pool_->ioc.get_executor()) {}

  // The request line and fields: the caller's, then Host and Content-Length (HTTP/1.1 keeps the
  // connection alive by default). The framing fields are the pool's own.
  static std::string request_head(const UpstreamRequest& req, std::string_view host, uint16_t port, size_t body_size) {
    // Room for every piece at its longest: ~50 bytes of fixed text and two numbers.
    size_t most = 64 + 2 * TextWriter::kMaxNumber + req.method.size() + req.target.size() + req.fields.size() + host.size();
    for (const auto& [name, value] : req.headers) most += name.size() + value.size() + 4;
    std::string h;
    append_within(h, most, [&](TextWriter& w) {
      w.put(req.method).put(' ').put(req.target).put(" HTTP/1.1\r\n"sv);
      for (const auto& [name, value] : req.headers) {
        if (!field_name_ok(name) || !field_value_ok(value) || framing_field(name) || same_field(name, "host")) {
          continue;
        }
        w.put(name).put(": "sv).put(value).put("\r\n"sv);
      }
      w.put(req.fields);
      w.put("Host: "sv).put(host).put(':').num(port);
      w.put("\r\nContent-Length: "sv).num(body_size).put("\r\n\r\n"sv);
    });
    return h;
  }

  // Runs in send(), before anyone else holds the call.
  void start() {
    if (auto p = pool_->take({host_, port_})) {
      conn_ = std::move(p);
      reused_ = true;
    } else {
      conn_ = std::make_shared<Conn>(ex_);
    }
    asio::dispatch(ex_, [self = shared_from_this()] {
      if (self->reused_) return self->write();
      self->connect();
    });
  }

  void cancel() override {
    auto self = shared_from_this();
    asio::post(ex_, [self] {
      if (self->done_) return;
      self->finish("cancelled", self->got_response_, false);
    });
  }

 private:
  // "host:port", for errors.
  std::string where() const { return host_ + ":" + std::to_string(port_); }

  void connect() {
    beast::error_code ec;
    auto addr = asio::ip::make_address(host_ == "localhost" ? "127.0.0.1" : host_, ec);
    if (ec) {  // a name: resolve it (replica addresses are normally IPs)
      resolver_ = std::make_unique<tcp::resolver>(ex_);
      resolver_->async_resolve(host_, std::to_string(port_),
                               [self = shared_from_this()](beast::error_code ec2, tcp::resolver::results_type r) {
                                 if (self->done_) return;
                                 if (ec2) return self->finish("cannot resolve " + self->host_ + ": " + ec2.message(), false, false);
                                 self->conn_->stream.expires_after(self->t_.connect);
                                 self->conn_->stream.async_connect(r, [self](beast::error_code ec3, const tcp::endpoint&) {
                                   self->on_connect(ec3);
                                 });
                               });
      return;
    }
    conn_->stream.expires_after(t_.connect);
    conn_->stream.async_connect(tcp::endpoint(addr, port_), [self = shared_from_this()](beast::error_code ec2) {
      self->on_connect(ec2);
    });
  }

  void on_connect(beast::error_code ec) {
    if (done_) return;
    if (ec) return finish("cannot connect to " + where() + ": " + ec.message(), false, false);
    beast::error_code ignored;
    conn_->stream.socket().set_option(tcp::no_delay(true), ignored);
    conn_->stream.socket().non_blocking(true, ignored);  // for write_now
    write();
  }

  void write() {
    bufs_ = {asio::buffer(head_), asio::buffer(body_view_.data(), body_view_.size())};
    write_now(conn_->stream, bufs_, t_.connect + std::chrono::seconds(30), [self = shared_from_this()](beast::error_code ec) {
      if (self->done_) return;
      if (ec) return self->retry_or_fail("sending to " + self->where() + ": " + ec.message());
      self->read_response();
    });
  }

  // The response is read and parsed by hand rather than with Beast's composed reads: those
  // complete through a posted handler even when the bytes are already in the buffer, so the head
  // and the body of an answer that came in one read took two turns of the event loop. Here one
  // read delivers the head, the body and the end in the same turn.
  void read_response() {
    // Room for a typical answer (a completion, a short stream) in one read: Beast's buffer
    // started at 512 bytes, which took 3-4.
    conn_->buf.reserve(kReadRoom);
    parser_.emplace();
    read_more();
  }

  // The first read, right after the request went out, is one that is not tried first when the
  // last read emptied the socket (the answer is seldom there yet; http/ready_read.h), under the
  // first-byte timeout. The rest of the answer is read through the stream, under the idle one.
  void read_more() {
    if (!got_response_) return first_read();
    conn_->stream.expires_after(t_.idle);
    conn_->stream.async_read_some(conn_->buf.prepare(kReadRoom), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (self->done_) return;
      self->on_read(ec, n);
    });
  }

  void first_read() {
    conn_->deadline.arm(t_.first_byte, std::weak_ptr<const Conn>(conn_), conn_->stream.socket());
    async_read_ready(conn_->stream.socket(), conn_->buf.prepare(kReadRoom), [self = shared_from_this()](beast::error_code ec, size_t n) {
      ec = self->conn_->deadline.done(ec);
      if (self->done_) return;
      self->on_read(ec, n);
    });
  }

  void on_read(beast::error_code ec, size_t n) {
    conn_->buf.commit(n);
    if (n > 0) got_response_ = true;
    if (ec == asio::error::eof && parser_->got_some()) {  // a body that ends with the connection, or a cut-off one
      if (parser_->put_eof() == AnswerParser::Result::kDone) return parse();
      return finish("reading from " + where() + ": " + parser_->error(), got_response_, false);
    }
    if (ec && !got_response_) return retry_or_fail("reading from " + where() + ": " + ec.message());
    if (ec) return finish("reading from " + where() + ": " + ec.message(), true, false);
    parse();
  }

  // Feeds what the buffer holds to the parser: the head once, body bytes as they come (chunking
  // removed), then the end; reads more when the parser needs it. The body's pieces are views into
  // the connection's buffer, handed to on_data before it is consumed.
  void parse() {
    using R = AnswerParser::Result;
    bool had_head = parser_->head_done();
    parser_->pieces.clear();
    R r = R::kNeedMore;
    auto data = conn_->buf.data();
    size_t used = data.size() > 0 ? parser_->put({static_cast<const char*>(data.data()), data.size()}, r) : 0;
    if (parser_->done()) r = R::kDone;  // (an answer that ended at its end of file)
    if (!had_head && parser_->head_done()) h_->on_head(parser_->head);
    for (std::string_view piece : parser_->pieces) {
      if (done_) break;  // on_head and on_data may cancel
      h_->on_data(piece);
    }
    conn_->buf.consume(used);
    if (done_) return;
    if (r == R::kDone) return finish("", true, parser_->keep_alive());
    if (r == R::kError) return finish("reading from " + where() + ": " + parser_->error(), got_response_, false);
    h_->on_read_end();  // (it may cancel)
    if (done_) return;
    read_more();
  }

  // A stale pooled connection (the upstream closed it while idle) fails before any byte of the
  // response: try once more on a new connection before giving up.
  void retry_or_fail(const std::string& err) {
    if (reused_ && !got_response_) {
      reused_ = false;
      beast::error_code ec;
      conn_->stream.socket().close(ec);
      conn_ = std::make_shared<Conn>(ex_);
      connect();
      return;
    }
    finish(err, got_response_, false);
  }

  void finish(const std::string& err, bool got_response, bool reusable) {
    if (done_) return;
    done_ = true;
    if (reusable && conn_->buf.size() == 0) {
      conn_->stream.expires_never();
      pool_->put({host_, port_}, std::move(conn_));
    } else {
      beast::error_code ec;
      conn_->stream.socket().shutdown(tcp::socket::shutdown_both, ec);
      conn_->stream.close();
    }
    // Let go of the handler once it has heard: it may hold this call (as the gateway does).
    std::shared_ptr<UpstreamHandler> h = std::move(h_);
    h->on_done(err, got_response);
  }

  std::shared_ptr<UpstreamPool::Impl> pool_;
  std::string host_;
  uint16_t port_;
  // The request, written as it is to every connection tried: the body (body_, or the handler's
  // own: UpstreamRequest::handler_body) and the head that gives its length.
  std::string body_;
  std::string_view body_view_;
  std::string head_;
  std::array<asio::const_buffer, 2> bufs_;  // head_ and the body, for write_now (valid until it is done)
  std::shared_ptr<UpstreamHandler> h_;  // until on_done
  UpstreamTimeouts t_;
  IoExecutor ex_;  // the pool's single-threaded io_context: every handler of this call runs there
  Pooled conn_;  // (the first-byte timeout of first_read is its deadline)
  std::unique_ptr<tcp::resolver> resolver_;
  std::optional<AnswerParser> parser_;
  bool reused_ = false, got_response_ = false, done_ = false;
};

}  // namespace

UpstreamPool::UpstreamPool(asio::io_context& ioc, size_t max_idle_per_target)
    : impl_(std::make_shared<Impl>(ioc, max_idle_per_target)) {
  asio::use_service<PoolCloser>(ioc).add(impl_);
}

UpstreamPool::~UpstreamPool() = default;

namespace {

// UpstreamCallbacks as a handler.
class FunctionHandler : public UpstreamHandler {
 public:
  explicit FunctionHandler(UpstreamCallbacks cb) : cb_(std::move(cb)) {}
  void on_head(UpstreamHead& h) override {
    if (cb_.on_head) cb_.on_head(h);
  }
  void on_data(std::string_view d) override {
    if (cb_.on_data) cb_.on_data(d);
  }
  void on_read_end() override {
    if (cb_.on_read_end) cb_.on_read_end();
  }
  void on_done(const std::string& err, bool got) override {
    auto done = std::move(cb_.on_done);
    cb_ = {};  // (what the functions hold goes now, as the handler would)
    if (done) done(err, got);
  }

 private:
  UpstreamCallbacks cb_;
};

}  // namespace

std::shared_ptr<UpstreamCall> UpstreamPool::send(const std::string& host, uint16_t port, UpstreamRequest req,
                                                 UpstreamCallbacks cb, UpstreamTimeouts timeouts) {
  return send(host, port, std::move(req), std::make_shared<FunctionHandler>(std::move(cb)), timeouts);
}

std::shared_ptr<UpstreamCall> UpstreamPool::send(const std::string& host, uint16_t port, UpstreamRequest req,
                                                 std::shared_ptr<UpstreamHandler> handler, UpstreamTimeouts timeouts) {
  // The request line is written as given: a method that is not a token or a target with a
  // space or a control byte would split it (callers pass fixed paths; this is the backstop).
  bool target_ok = !req.target.empty() && std::none_of(req.target.begin(), req.target.end(), [](unsigned char c) {
    return c <= 32 || c == 127;
  });
  if (!field_name_ok(req.method) || !target_ok) {
    throw std::invalid_argument("upstream request: invalid method or target '" + req.method + " " + req.target + "'");
  }
  if (!handler) throw std::invalid_argument("upstream request: no handler");
  auto call = std::make_shared<Call>(impl_, host, port, std::move(req), std::move(handler), timeouts);
  call->start();
  return call;
}

size_t UpstreamPool::idle_connections() const {
  std::lock_guard lk(impl_->mu);
  size_t n = 0;
  for (const auto& [k, v] : impl_->idle) n += v.size();
  return n;
}

}  // namespace aicloud::http

#include "http/server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "http/fields.h"
#include "http/io_types.h"
#include "http/request_parser.h"
#include "http/ready_read.h"
#include "http/write_now.h"
#include "http/stream.h"
#include "util/log.h"
#include "util/text_writer.h"
#include "util/thread_name.h"

namespace aicloud::http {

using namespace std::string_view_literals;

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;

class Session;

// One io_context per thread, each run by its own thread (as nginx runs its workers): a
// connection lives on one thread from accept to close, so its handlers need no strand and no
// other thread is woken to run them. One io_context shared by N threads cost about a third more
// CPU per request on 2 cores (cross-thread wake-ups: futex calls and context switches; see
// docs/PERFORMANCE.md). Accepted connections go to the threads in turn.
static int thread_count(const ServerOptions& o) {
  return o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
}

struct Server::Impl {
  ServerOptions opts;
  Handler& handler;
  Server& owner;
  // Before the io_contexts: sessions still queued in them at shutdown are destroyed with them
  // and unregister here.
  std::mutex sessions_mu;
  std::set<Session*> sessions;

  std::vector<std::unique_ptr<asio::io_context>> contexts;  // [0] also runs the acceptor, signals, timers
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> keep_running;

  // Client-disconnect watches, armed late (Session::watch_peer): a response still being produced
  // kPeerWatchDelay after it began gets one; the many that end sooner never do. An armed watch
  // costs a read that finds nothing (a recv returning EAGAIN) per request, one of the ~8 system
  // calls of a proxied request (docs/PERFORMANCE.md §5). One list and one timer per io thread;
  // the timer runs only while the list has entries.
  static constexpr auto kPeerWatchDelay = std::chrono::milliseconds(10);
  struct PeerWatches {
    explicit PeerWatches(asio::io_context& io) : timer(io) {}
    asio::steady_timer timer;
    // A session, and the number of its response: the entry holds the session until the sweep,
    // when the watch's read takes over (a session waiting for its producer has no other owner).
    std::vector<std::pair<std::shared_ptr<Session>, uint64_t>> due, sweeping;  // (two: no allocation per tick)
    bool ticking = false;
  };
  std::vector<std::unique_ptr<PeerWatches>> watches;  // [i] for contexts[i]; destroyed before them
  size_t next_context = 0;
  asio::io_context& ioc;
  tcp::acceptor acceptor;
  asio::signal_set signals;
  asio::steady_timer drain_timer;
  std::atomic<bool> stopping{false};
  std::chrono::steady_clock::time_point stop_deadline;

  // Each io_context is run by one thread, and every operation on its sockets is started on that
  // thread: a session's (after the accepting thread has made it, before its first operation), an
  // upstream call's (gateway lanes: http/upstream.h), and work from elsewhere is posted (a
  // stream's notify, a cancel, a stop). So its reactor need not lock each socket's operation
  // queues: UNSAFE_IO leaves that lock out (four lock and unlock pairs per proxied request), and
  // keeps the locks of the scheduler (posts come from other threads) and of registration and
  // timers.
  static std::vector<std::unique_ptr<asio::io_context>> make_contexts(int n) {
    std::vector<std::unique_ptr<asio::io_context>> v;
    for (int i = 0; i < n; ++i) v.push_back(std::make_unique<asio::io_context>(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO));
    return v;
  }

  Impl(ServerOptions o, Handler& h, Server& s)
      : opts(std::move(o)), handler(h), owner(s), contexts(make_contexts(thread_count(opts))), ioc(*contexts[0]),
        acceptor(ioc), signals(ioc, SIGTERM, SIGINT), drain_timer(ioc) {
    for (auto& c : contexts) {
      keep_running.push_back(asio::make_work_guard(*c));
      watches.push_back(std::make_unique<PeerWatches>(*c));
    }
  }

  void accept();
  // On the io thread of contexts[ctx]: watch the session's response number `gen` for a client
  // that goes away, if it is still being produced after kPeerWatchDelay.
  void watch_later(size_t ctx, std::shared_ptr<Session> s, uint64_t gen);
  void sweep_watches(size_t ctx);
  void begin_stop();
  void drain();
};

// The read buffer holds what the parser has not consumed yet: a header (at most header_limit),
// a chunk-size line or the trailer of a chunked body, and what one read brought beyond them
// (pipelined requests). Body bytes go to the request as they are parsed, never accumulate here.
// Bounded, so that an endless chunk extension or trailer (which neither the header nor the body
// limit counts) is a 400 rather than memory growing as fast as a client can send.
constexpr size_t kReadAhead = 64 * 1024;

// A response the client does not take within this long ends its connection.
constexpr auto kWriteTimeout = std::chrono::seconds(30);

// A response's status line and header fields, serialized by hand into one string (Beast's
// serializer walks a chain of buffer views per field: ~3% of the gateway's CPU). The fields
// behave as Beast's set() did: a later field replaces an earlier one of the same name, and the
// framing fields (Content-Length, Transfer-Encoding, Connection, Server) are the server's own.
// A field whose name or value could split the response (CR, LF, or a name that is not a token)
// is dropped.
enum class Framing { kLength, kChunked };
// Statuses whose responses carry no body (RFC 9110 §6.4.1).
static bool bodiless(unsigned status) { return status < 200 || status == 204 || status == 304; }
// Written into h (a session's reused buffer: its capacity stays from one response to the next).
// r's status, content type and fields; its body is not looked at.
static void response_head(std::string& h, unsigned version, const Response& r, bool close, Framing framing,
                          uint64_t content_length) {
  const unsigned status = r.status;
  const auto& fields = r.headers;
  std::string_view content_type = r.content_type;
  if (content_type.empty()) content_type = "application/json";  // (http::Response's default)
  std::string_view reason = bhttp::obsolete_reason(bhttp::int_to_status(status));
  // Room for every piece at its longest: ~100 bytes of fixed text and two numbers, the reason,
  // the fields (one of which may become the content type) and the content type.
  size_t most = 128 + reason.size() + r.fields.size() + content_type.size() + 2 * TextWriter::kMaxNumber;
  for (const auto& [name, value] : fields) most += name.size() + value.size() + 4;
  h.clear();
  append_within(h, most, [&](TextWriter& w) {
    w.put(version == 10 ? "HTTP/1.0 "sv : "HTTP/1.1 "sv).num(status).put(' ').put(reason);
    w.put("\r\nServer: aicloud\r\n"sv);
    for (size_t i = 0; i < fields.size(); ++i) {
      const auto& [name, value] = fields[i];
      if (!field_name_ok(name) || !field_value_ok(value) || framing_field(name) || same_field(name, "server")) {
        continue;
      }
      bool replaced = false;
      for (size_t j = i + 1; j < fields.size() && !replaced; ++j) replaced = same_field(fields[j].first, name);
      if (replaced) continue;
      if (same_field(name, "content-type")) {
        content_type = value;
        continue;
      }
      w.put(name).put(": "sv).put(value).put("\r\n"sv);
    }
    w.put(r.fields);
    if (!content_type.empty() && field_value_ok(content_type)) w.put("Content-Type: "sv).put(content_type).put("\r\n"sv);
    if (framing == Framing::kChunked) {
      w.put("Transfer-Encoding: chunked\r\n"sv);
    } else if (!bodiless(status)) {
      w.put("Content-Length: "sv).num(content_length).put("\r\n"sv);
    }
    if (version == 10 && !close) w.put("Connection: keep-alive\r\n"sv);
    if (version != 10 && close) w.put("Connection: close\r\n"sv);
    w.put("\r\n"sv);
  });
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(TcpSocket sock, Server::Impl& srv, size_t ctx)
      : stream_(std::move(sock)), srv_(srv), ctx_(ctx), buffer_(srv.opts.header_limit + kReadAhead),
        parser_(srv.opts.header_limit, srv.opts.body_limit) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    stream_.socket().set_option(tcp::no_delay(true), ec);
    stream_.socket().non_blocking(true, ec);  // for write_now
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
    // Called from another thread, under sessions_mu: this session's last owner may have let go of
    // it already, its destructor waiting for that lock. Then there is nothing left to close (and
    // shared_from_this() would throw).
    auto self = weak_from_this().lock();
    if (!self) return;
    asio::post(stream_.get_executor(), [self = std::move(self)] {
      // Idle: its wait for a request is cancelled, and the read's handler closes it. A request
      // whose bytes that read has already taken (its handler queued, not run yet), or that wait
      // in the socket, is served.
      beast::error_code ec;
      if (!self->busy_ && self->buffer_.size() == 0 && self->stream_.socket().available(ec) == 0) {
        self->stream_.socket().cancel(ec);
      }
      if (self->out_) self->out_->stop();  // a response that only waits (a long-poll) answers now
    });
  }

 private:
  void read_request() {
    if (srv_.stopping) return close();
    parser_.start(req_);
    continue_told_ = false;
    if (buffer_.size() > 0) {
      busy_ = true;  // a pipelined request has begun
      return read_header();
    }
    // Wait for the first byte under the (long) idle timeout; the header then has a short one.
    // The wait is a read that is not tried first when the last one emptied the socket (an
    // answer just went out: the next request is seldom there yet); see http/ready_read.h.
    idle_wait(4096, [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return self->close();
      self->buffer_.commit(n);
      self->busy_ = true;  // from a request's first byte to its response, stop() waits for it
      self->read_header();
    });
  }

  // The request is parsed by hand from the session's buffer rather than with Beast's composed
  // reads (async_read_header, then async_read): those complete through a posted handler even
  // when the bytes are in the buffer already, so a request that came in one read took two more
  // turns of the event loop (the upstream pool reads its answers the same way, upstream.cpp).
  // The header is read under header_timeout, the body under body_timeout.
  void read_header() {
    stream_.expires_after(srv_.opts.header_timeout);
    header_timed_ = true;
    parse_request();
  }

  void parse_request() {
    RequestParser::Result res = RequestParser::Result::kNeedMore;
    if (buffer_.size() > 0) {
      auto in = buffer_.data();
      buffer_.consume(parser_.put(std::string_view(static_cast<const char*>(in.data()), in.size()), res));
    }
    if (header_timed_ && parser_.head_done()) {
      header_timed_ = false;
      stream_.expires_after(srv_.opts.body_timeout);
    }
    if (res == RequestParser::Result::kDone) return on_request();
    if (res == RequestParser::Result::kError) return on_read_error(parser_.error());
    if (parser_.head_done() && !continue_told_) {
      continue_told_ = true;
      if (!tell_continue()) return close();
    }
    if (buffer_.size() >= buffer_.max_size()) return on_read_error(bhttp::error::buffer_overflow);
    size_t room = std::min<size_t>(buffer_.max_size() - buffer_.size(), kReadAhead);
    stream_.async_read_some(buffer_.prepare(room), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->buffer_.commit(n);
      if (ec == asio::error::eof) {
        // The end before any byte is end_of_stream (the client is done), a cut-off request a
        // partial_message: either way the connection closes without an answer.
        return self->on_read_error(self->parser_.got_some() ? bhttp::error::partial_message : bhttp::error::end_of_stream);
      }
      if (ec) return self->on_read_error(ec);
      self->parse_request();
    });
  }

  // A client that asked to be told before it sends its body ("Expect: 100-continue": curl, for
  // large uploads) is told once the head has been read and accepted (a body over the limit is
  // refused instead, at once), rather than left to wait out its own timer (curl's: 1 s). The 25
  // bytes go out at once on the non-blocking socket, which has nothing else to send while a
  // request is read. If the socket takes none of them, the client is not told (it goes on after
  // its timer); false if it took only a part (the connection cannot go on).
  bool tell_continue() {
    if (req_.version() != 11) return true;
    auto expect = req_.field("expect");
    if (!expect || !token_is(trim_ows(*expect), "100-continue")) return true;
    static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
    beast::error_code ec;
    size_t n = stream_.socket().write_some(asio::buffer(k100.data(), k100.size()), ec);
    return n == 0 || n == k100.size();
  }

  // The read of a request's first bytes (http/ready_read.h) under the idle timeout: past it the
  // socket's operations are cancelled and f gets beast::error::timeout, as from Beast's timed
  // reads. (The rest of a request is read through stream_, under its header and body timeouts.)
  template <class F>
  void idle_wait(size_t room, F f) {
    idle_deadline_.arm(srv_.opts.idle_timeout, weak_from_this(), stream_.socket());
    async_read_ready(stream_.socket(), buffer_.prepare(room),
                     [self = shared_from_this(), f = std::move(f)](beast::error_code ec, size_t n) mutable {
                       f(self->idle_deadline_.done(ec), n);
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
    Request& req = req_;  // (kept by the session: its buffers' capacity serves the next request)
    Response r;
    try {
      r = srv_.handler.handle(req, remote_);
    } catch (const std::exception& e) {
      spdlog::error("unhandled exception in request handler: {}", e.what());
      r = srv_.handler.protocol_error(500, "The server had an error while processing your request.");
    }
    if (!req.keep_alive() || srv_.stopping) r.close = true;
    if (r.stream) return await_stream(std::move(r), req.version());
    write(std::move(r), req.version());
  }

  // ---- file bodies: the header, then the file in pieces, one write at a time ----
  void write_file(Response&& r, unsigned version) {
    file_fd_ = ::open(r.file_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (file_fd_ < 0) {
      Response e = srv_.handler.protocol_error(500, "The server could not read a file it was to send.");
      return write(std::move(e), version);
    }
    file_pos_ = r.file_offset;
    file_left_ = r.file_length;
    response_head(writing_, version, r, r.close, Framing::kLength, r.file_length);
    out_close_ = r.close;
    stream_.expires_after(kWriteTimeout);
    asio::async_write(stream_, asio::buffer(writing_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->end_file(true);
      self->write_file_piece();
    });
  }

  void write_file_piece() {
    if (file_left_ == 0) return end_file(false);
    writing_.resize(size_t(std::min<uint64_t>(file_left_, 256 * 1024)));
    ssize_t n = ::pread(file_fd_, writing_.data(), writing_.size(), off_t(file_pos_));
    if (n <= 0) return end_file(true);  // the file shrank under us: the client sees a short body
    writing_.resize(size_t(n));
    file_pos_ += uint64_t(n);
    file_left_ -= uint64_t(n);
    stream_.expires_after(kWriteTimeout);
    asio::async_write(stream_, asio::buffer(writing_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->end_file(true);
      self->write_file_piece();
    });
  }

  void end_file(bool failed) {
    ::close(file_fd_);
    file_fd_ = -1;
    writing_.clear();
    writing_.shrink_to_fit();  // (a file's pieces are large; the buffer is reused for heads)
    busy_ = false;
    if (failed || out_close_) return close();
    next_request();
  }

  // ---- responses produced later (http/stream.h) ----
  // The session holds no io thread while it waits: the producer's notify posts pump() to this
  // session's own io thread; pump() writes what has arrived, one write at a time.
  void await_stream(Response&& r, unsigned version) {
    out_ = std::move(r.stream);
    out_close_ = r.close;
    out_version_ = version;
    out_head_sent_ = false;
    stream_.expires_never();  // the producer bounds its own wait (the gateway's timeouts)
    srv_.watch_later(ctx_, shared_from_this(), ++out_gen_);
    std::weak_ptr<Session> weak = weak_from_this();
    auto ex = stream_.get_executor();
    out_->attach([weak, ex](bool complete) {
      // A complete response (a whole reply, or a stream's end) made on this session's own thread
      // (the gateway's, once its usage record is written) goes out now; anything else is pumped
      // on a later turn, which also gathers a stream's pieces into one write.
      if (complete && ex.running_in_this_thread()) {
        if (auto self = weak.lock()) self->pump();
        return;
      }
      asio::post(ex, [weak] {
        if (auto self = weak.lock()) self->pump();
      });
    });
    if (srv_.stopping && out_) out_->stop();  // began after shutdown_if_idle() went round
  }

 public:
  // Called by the server's sweep (watch_later) for response number `gen`. Returns false when
  // it should be asked again (and the session held until then): an earlier watch has been
  // cancelled but has not ended yet, or the client has already sent its next request.
  bool watch_due(uint64_t gen) {
    if (gen != out_gen_ || !out_) return true;  // that response has ended
    if (watching_ || buffer_.size() > 0) return false;
    watch_peer();
    return true;
  }

 private:
  // A client that closes its connection while it waits cancels the producer (the gateway
  // cancels the upstream request). The watch is a read into the session's buffer rather than a
  // wait for readability: asio arms a wait with an epoll_ctl each time, while a read queued
  // right after one that emptied the socket costs no system call. What it reads is a pipelined
  // request, kept in the buffer for read_request() (the watch then ends: the client is there).
  // While a watch is queued, nothing else reads: a response that ends first cancels it, and its
  // completion (cancelled, or with the next request's first bytes) starts the next read.
  void watch_peer() {
    watching_ = true;
    stream_.socket().async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->watching_ = false;
      self->buffer_.commit(n);
      if (self->resume_after_watch_) {  // the response has ended: on to the next request
        self->resume_after_watch_ = false;
        bool gone = ec && ec != asio::error::operation_aborted && self->buffer_.size() == 0;
        return gone ? self->close() : self->read_request();
      }
      if (ec == asio::error::operation_aborted || !self->out_) return;
      if (n > 0) return self->srv_.watch_later(self->ctx_, self, self->out_gen_);  // pipelined: hold on
      self->out_->cancel();  // end of stream or an error: the client is gone
      self->close();
    });
  }

  void unwatch() {
    beast::error_code ec;  // (the socket may be closed already: then there is nothing to cancel)
    if (watching_) stream_.socket().cancel(ec);
  }

  // After a response: read the next request, once a cancelled watch's read has completed.
  void next_request() {
    if (watching_) {
      resume_after_watch_ = true;
      return;
    }
    read_request();
  }

  void pump() {
    if (!out_ || out_writing_) return;
    if (pumping_) {
      // Called back by a piece that write_now sent inline: the next piece goes on a later turn,
      // so that a producer on another thread that keeps writing cannot deepen this stack.
      asio::post(stream_.get_executor(), [self = shared_from_this()] { self->pump(); });
      return;
    }
    struct Pumping {
      bool& b;
      explicit Pumping(bool& f) : b(f) { b = true; }
      ~Pumping() { b = false; }
    } pumping(pumping_);
    auto p = out_->pull();
    if (pending_.empty()) {
      pending_.swap(p.data);
    } else {
      pending_ += p.data;
    }
    if (p.head) {
      // The whole response at once: a reply, or a stream that had ended by the time its head
      // went out (a short answer, or one the producer held until its end). The latter is sent
      // with a Content-Length, as nginx relays an upstream's framing: the client gets the same
      // bytes without chunk framing to take apart.
      if (!p.streaming || p.end) {
        auto s = std::move(out_);
        Response& whole = *p.head;  // (written from where it lies: a Response is ~200 bytes to move)
        if (p.streaming) whole.body = std::move(pending_);
        pending_.clear();
        whole.close = whole.close || out_close_;
        return write_owned(std::move(whole), out_version_, std::move(s));
      }
      out_head_ = std::move(*p.head);
    }
    if (!out_head_sent_ && !out_head_) return;  // nothing yet
    // Whatever has arrived goes out in one write: the head (first time), the data as one chunk,
    // and the last chunk if the producer has ended. A short stream (or the end of one: the held
    // [DONE] and the terminator) then costs one send, not one per piece.
    std::string& buf = writing_;  // free: no write is in flight (out_writing_)
    buf.clear();
    if (!out_head_sent_) {
      response_head(buf, out_version_, *out_head_, out_close_, Framing::kChunked, 0);
      out_head_sent_ = true;
    }
    if (!pending_.empty()) {
      char size[24];
      char* end = std::to_chars(size, size + sizeof size, pending_.size(), 16).ptr;  // (snprintf: ~500 instructions)
      buf.append(size, end).append("\r\n").append(pending_).append("\r\n");
      pending_.clear();
    }
    bool last = p.end;
    if (last) buf += "0\r\n\r\n";
    if (buf.empty()) return;
    out_writing_ = true;
    write_now(stream_, asio::buffer(writing_), kWriteTimeout, [self = shared_from_this(), last](beast::error_code ec) {
      self->out_writing_ = false;
      self->stream_.expires_never();
      if (ec) return self->abort_stream();
      if (!last) return self->pump();
      self->finish_stream();
      if (self->out_close_) return self->close();
      self->next_request();
    });
  }

  void abort_stream() {
    if (out_) out_->cancel();
    finish_stream();
    close();
  }

  void finish_stream() {
    unwatch();
    out_.reset();
    out_head_.reset();
    out_writing_ = false;
    pending_.clear();
    writing_.clear();
    busy_ = false;
  }

  // write() for a stream's whole reply: keeps the stream alive until written.
  void write_owned(Response&& r, unsigned version, std::shared_ptr<ResponseStream> s) {
    unwatch();
    (void)s;
    write(std::move(r), version);
  }

  // r is read, and its body taken, before this returns: the caller may let it go after.
  void write(Response&& r, unsigned version) {
    if (!r.file_path.empty()) return write_file(std::move(r), version);
    bool close_after = r.close;
    response_head(writing_, version, r, close_after, Framing::kLength, r.body.size());
    body_ = bodiless(r.status) ? std::string() : std::move(r.body);
    bufs_ = {asio::buffer(writing_), asio::buffer(body_)};
    write_now(stream_, bufs_, kWriteTimeout, [self = shared_from_this(), close_after](beast::error_code ec) {
      self->busy_ = false;
      self->writing_.clear();
      self->body_.clear();
      if (ec || close_after) return self->close();
      self->next_request();
    });
  }

  void close() {
    if (out_) {
      out_->cancel();
      out_.reset();
    }
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.cancel();
    stream_.close();
    idle_deadline_.cancel();
  }

  TcpStream stream_;
  Server::Impl& srv_;
  size_t ctx_;  // the index of the io_context (and thread) this session lives on
  beast::flat_buffer buffer_;
  RequestParser parser_;
  Request req_;
  std::string body_;  // a whole response's body while it is written (the head is in writing_)
  std::array<asio::const_buffer, 2> bufs_;  // the two, for write_now (valid until it is done)
  std::string remote_;
  bool busy_ = false;
  bool header_timed_ = false;  // the read is under header_timeout (until the header is parsed)
  bool continue_told_ = false;  // this request's Expect: 100-continue has been looked at
  ReadDeadline idle_deadline_{stream_.get_executor()};  // the idle timeout of idle_wait

  // A response being produced by a ResponseStream.
  std::shared_ptr<ResponseStream> out_;
  std::optional<Response> out_head_;
  std::string pending_, writing_;
  unsigned out_version_ = 11;
  bool out_close_ = false, out_head_sent_ = false, out_writing_ = false;
  bool pumping_ = false;  // pump() is on the stack
  uint64_t out_gen_ = 0;   // numbers the session's produced responses, for watch_due()
  bool watching_ = false;  // a peer watch (a read) is queued
  bool resume_after_watch_ = false;  // the response ended while it was: its completion reads on
  // A file body being sent.
  int file_fd_ = -1;
  uint64_t file_pos_ = 0, file_left_ = 0;
};

void Server::Impl::accept() {
  size_t ctx = next_context++ % contexts.size();
  acceptor.async_accept(*contexts[ctx], [this, ctx](beast::error_code ec, TcpSocket sock) {
    if (stopping) return;
    if (!ec) {
      std::make_shared<Session>(std::move(sock), *this, ctx)->start();
    } else if (ec == asio::error::no_descriptors) {
      spdlog::warn("accept: out of file descriptors");
    }
    accept();
  });
}

void Server::Impl::watch_later(size_t ctx, std::shared_ptr<Session> s, uint64_t gen) {
  PeerWatches& w = *watches[ctx];
  w.due.emplace_back(std::move(s), gen);
  if (w.ticking) return;
  w.ticking = true;
  w.timer.expires_after(kPeerWatchDelay);
  w.timer.async_wait([this, ctx](beast::error_code) { sweep_watches(ctx); });
}

void Server::Impl::sweep_watches(size_t ctx) {
  PeerWatches& w = *watches[ctx];
  w.ticking = false;
  std::swap(w.due, w.sweeping);  // watch_due() may add to w.due again
  for (auto& [session, gen] : w.sweeping) {
    if (!session->watch_due(gen)) watch_later(ctx, std::move(session), gen);
  }
  w.sweeping.clear();
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
    keep_running.clear();
    for (auto& c : contexts) c->stop();
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

std::vector<asio::io_context*> Server::io_contexts() {
  std::vector<asio::io_context*> v;
  for (auto& c : impl_->contexts) v.push_back(c.get());
  return v;
}

namespace {
thread_local asio::io_context* tl_current_io = nullptr;
}  // namespace

asio::io_context* Server::current_io() { return tl_current_io; }

void Server::run() {
  impl_->signals.async_wait([this](beast::error_code ec, int) {
    if (!ec) impl_->begin_stop();
  });
  impl_->accept();
  std::vector<std::thread> threads;
  for (size_t i = 1; i < impl_->contexts.size(); ++i) {
    threads.emplace_back([this, i] {
      name_this_thread("aicloud-io-" + std::to_string(i));  // (io 0 is the caller's thread)
      tl_current_io = impl_->contexts[i].get();
      impl_->contexts[i]->run();
    });
  }
  tl_current_io = &impl_->ioc;
  impl_->ioc.run();
  tl_current_io = nullptr;
  for (auto& t : threads) t.join();
}

void Server::stop() {
  asio::post(impl_->ioc, [this] { impl_->begin_stop(); });
}

}  // namespace aicloud::http

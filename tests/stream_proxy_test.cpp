// The gateway's plumbing, on real sockets: the server answering later through a ResponseStream
// (whole replies and chunked streams), the pooled upstream client, and cancellation both ways:
// a client that disconnects cancels the upstream call, and a cancelled call closes its upstream
// connection.
#include <gtest/gtest.h>

#include <boost/asio.hpp>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "http/client.h"
#include "http/server.h"
#include "http/stream.h"
#include "http/upstream.h"
#include "support/raw_http.h"

namespace aicloud::http {
namespace {

using namespace std::chrono_literals;
using test::RawConn;
using test::RawResponse;
namespace asio = boost::asio;

// A stream's head (ResponseStream::head takes a Response; its body is unused).
Response stream_head(unsigned status, std::string content_type, std::vector<std::pair<std::string, std::string>> headers = {}) {
  Response h;
  h.status = status;
  h.content_type = std::move(content_type);
  h.headers = std::move(headers);
  return h;
}

// An upstream: /whole answers at once; /stream sends 5 pieces 50 ms apart from a thread;
// /slow never answers until cancelled (it counts the cancellations it sees).
class Upstream : public Handler {
 public:
  std::atomic<int> cancelled{0};
  std::string file_path;
  Response handle(Request& req, const std::string&) override {
    Response r;
    if (req.target() == "/file") {  // bytes 10..(10+3 MiB) of file_path
      r.file_path = file_path;
      r.file_offset = 10;
      r.file_length = 3 << 20;
      r.content_type = "application/octet-stream";
      return r;
    }
    if (req.target().starts_with("/head")) {  // what arrived: the request line, fields and body
      r.body = std::string(req.method()) + " " + std::string(req.target()) + "\n";
      for (size_t i = 0; i < req.field_count(); ++i) {
        r.body += std::string(req.field_at(i).name) + ": " + std::string(req.field_at(i).value) + "\n";
      }
      r.body += "\n" + req.body();
      r.content_type = "text/plain";
      return r;
    }
    if (req.target() == "/whole") {
      r.body = R"({"ok":true,"echo":)" + std::string(req.body().empty() ? "null" : req.body()) + "}";
      return r;
    }
    auto s = std::make_shared<ResponseStream>();
    r.stream = s;
    if (req.target() == "/quick") {  // a short stream that ends within 2 ms
      std::thread([s, delay = std::chrono::microseconds(std::hash<std::string>{}(req.body()) % 2000)] {
        std::this_thread::sleep_for(delay);
        s->head(stream_head(200, "text/event-stream"));
        s->write("data: 1\n\n");
        s->end();
      }).detach();
    } else if (req.target() == "/ended") {  // a stream whose end is given with its head
      s->head(stream_head(200, "text/event-stream"), "data: 1\n\ndata: [DONE]\n\n", true);
    } else if (req.target() == "/stream") {
      std::thread([s] {
        s->head(stream_head(200, "text/event-stream", {{"x-upstream", "yes"}}));
        for (int i = 0; i < 5; ++i) {
          s->write("data: " + std::to_string(i) + "\n\n");
          std::this_thread::sleep_for(50ms);
        }
        s->write("data: [DONE]\n\n");
        s->end();
      }).detach();
    } else {
      s->on_cancel([this] { ++cancelled; });
    }
    return r;
  }
  Response protocol_error(unsigned status, const std::string& m) override {
    Response r;
    r.status = status;
    r.body = m;
    return r;
  }
};

// A proxy: every request goes to the upstream through the pool; streams are relayed as they come.
class Proxy : public Handler {
 public:
  UpstreamPool* pool = nullptr;
  uint16_t upstream_port = 0;
  std::atomic<int> client_gone{0}, handled{0};
  Response handle(Request& req, const std::string&) override {
    ++handled;
    auto s = std::make_shared<ResponseStream>();
    UpstreamRequest up;
    up.method = std::string(req.method());
    up.target = std::string(req.target());
    up.body = req.body();
    auto whole = std::make_shared<Response>();
    bool stream = req.target() != "/whole";
    UpstreamCallbacks cb;
    cb.on_head = [s, whole, stream](const UpstreamHead& h) {
      whole->status = h.status;
      whole->content_type = h.content_type;
      whole->headers = h.headers;
      if (stream) s->head(stream_head(h.status, h.content_type, h.headers));
    };
    cb.on_data = [s, whole, stream](std::string_view d) {
      if (stream) s->write(std::string(d));
      else whole->body += d;
    };
    cb.on_done = [s, whole, stream](const std::string& err, bool got_response) {
      if (!err.empty() && !got_response) {
        Response e;
        e.status = 502;
        e.body = err;
        s->reply(std::move(e));
        return;
      }
      if (stream) s->end();
      else s->reply(std::move(*whole));
    };
    auto call = pool->send("127.0.0.1", upstream_port, std::move(up), std::move(cb));
    s->on_cancel([this, call] {
      ++client_gone;
      call->cancel();
    });
    Response r;
    r.stream = s;
    return r;
  }
  Response protocol_error(unsigned status, const std::string& m) override {
    Response r;
    r.status = status;
    r.body = m;
    return r;
  }
};

struct Running {
  std::unique_ptr<Server> server;
  std::thread thread;
  explicit Running(Handler& h) {
    ServerOptions o;
    o.port = 0;
    o.threads = 2;
    server = std::make_unique<Server>(o, h);
    thread = std::thread([this] { server->run(); });
  }
  ~Running() {
    server->stop();
    thread.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server->port()); }
};

// What one pool call delivered, gathered from its callbacks (they run on the pool's io thread).
struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, got_response = false;
  int heads = 0;
  UpstreamHead head;
  std::string body, error;
  UpstreamCallbacks callbacks() {
    UpstreamCallbacks cb;
    cb.on_head = [this](const UpstreamHead& h) {
      std::lock_guard lk(mu);
      ++heads;
      head = h;
    };
    cb.on_data = [this](std::string_view d) {
      std::lock_guard lk(mu);
      body += d;
    };
    cb.on_done = [this](const std::string& err, bool got) {
      std::lock_guard lk(mu);
      error = err;
      got_response = got;
      done = true;
      cv.notify_all();
    };
    return cb;
  }
  // Whether on_done ran within the limit.
  bool wait(std::chrono::seconds limit = std::chrono::seconds(10)) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, limit, [&] { return done; });
  }
  std::string field(const std::string& name) {
    for (const auto& [k, v] : head.headers) {
      if (k == name) return v;
    }
    return "";
  }
};

class StreamProxy : public ::testing::Test {
 protected:
  void SetUp() override {
    up_srv = std::make_unique<Running>(upstream);
    proxy.upstream_port = up_srv->server->port();
    proxy_srv = std::make_unique<Running>(proxy);
    pool = std::make_unique<UpstreamPool>(proxy_srv->server->io());
    proxy.pool = pool.get();
  }
  void TearDown() override {
    proxy_srv.reset();  // the io_context goes before the pool holding its idle sockets (ASAN checks)
    pool.reset();
    up_srv.reset();
  }
  Upstream upstream;
  Proxy proxy;
  std::unique_ptr<Running> up_srv, proxy_srv;
  std::unique_ptr<UpstreamPool> pool;

  // Asks the upstream on 127.0.0.1:port for /x through the pool; got collects the answer.
  void send_x(uint16_t port, Collected& got, UpstreamTimeouts t = {}, std::string body = {}) {
    UpstreamRequest req;
    req.target = "/x";
    req.body = std::move(body);
    pool->send("127.0.0.1", port, std::move(req), got.callbacks(), t);
  }
};

TEST_F(StreamProxy, WholeRepliesAreRelayedAndConnectionsReused) {
  Client c(proxy_srv->url());
  for (int i = 0; i < 50; ++i) {
    auto r = c.request("POST", "/whole", std::to_string(i), {{"Content-Type", "application/json"}});
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.body, R"({"ok":true,"echo":)" + std::to_string(i) + "}");
  }
  // Sequential calls reuse one pooled upstream connection.
  EXPECT_EQ(pool->idle_connections(), 1u);
}

// The pool writes the request by hand: the caller's method, target, fields and body, its own Host
// and Content-Length; a field that could split the request is dropped, as is a caller's Host.
TEST_F(StreamProxy, ThePoolSendsTheRequestAsGivenAndDropsUnsafeFields) {
  UpstreamRequest req;
  req.method = "PUT";
  req.target = "/head?q=1";
  req.headers = {{"x-ok", "1"},  {"x-bad", "a\r\nInjected: yes"}, {"Bad Name", "v"},
                 {"Host", "evil"}, {"Content-Length", "999"},       {"Authorization", "Bearer k"}};
  req.fields = "x-made: 2\r\nx-also: 3\r\n";  // the caller's own lines, written as they are
  req.body = "hello";
  Collected got;
  pool->send("127.0.0.1", up_srv->server->port(), std::move(req), got.callbacks());
  ASSERT_TRUE(got.wait());
  ASSERT_EQ(got.error, "");
  const std::string& body = got.body;
  std::string host = "Host: 127.0.0.1:" + std::to_string(up_srv->server->port()) + "\n";
  EXPECT_EQ(body.rfind("PUT /head?q=1\n", 0), 0u) << body;
  EXPECT_NE(body.find("x-ok: 1\n"), std::string::npos) << body;
  EXPECT_NE(body.find("Authorization: Bearer k\n"), std::string::npos) << body;
  EXPECT_NE(body.find("x-made: 2\nx-also: 3\n"), std::string::npos) << body;
  EXPECT_NE(body.find(host), std::string::npos) << body;
  EXPECT_NE(body.find("Content-Length: 5\n"), std::string::npos) << body;
  EXPECT_EQ(body.find("Injected"), std::string::npos) << body;
  EXPECT_EQ(body.find("x-bad"), std::string::npos) << body;
  EXPECT_EQ(body.find("Bad Name"), std::string::npos) << body;
  EXPECT_EQ(body.find("evil"), std::string::npos) << body;
  EXPECT_EQ(body.find("999"), std::string::npos) << body;
  EXPECT_EQ(body.substr(body.size() - 7), "\n\nhello") << body;
}

TEST_F(StreamProxy, ARequestLineThatWouldSplitIsRefused) {
  for (auto [method, target] : {std::pair<std::string, std::string>{"GET", "/a b"}, {"GET", "/a\r\nX: y"},
                                {"G T", "/a"}, {"GET", ""}}) {
    UpstreamRequest req;
    req.method = method;
    req.target = target;
    EXPECT_THROW(pool->send("127.0.0.1", up_srv->server->port(), std::move(req), UpstreamCallbacks{}), std::invalid_argument) << target;
  }
}

// A client that asks to be told before it sends its body (curl, for large uploads) is told once
// the head is read, then answered; one that does not ask, or speaks HTTP/1.0, is not told.
TEST_F(StreamProxy, ExpectContinueIsAnsweredBeforeTheBody) {
  RawConn conn(up_srv->url());
  ASSERT_TRUE(conn.send("POST /head HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n"));
  RawResponse interim = conn.read_response(2s);
  ASSERT_TRUE(interim.got_response) << "the client was left to wait out its own timer";
  EXPECT_EQ(interim.status, 100u);
  ASSERT_TRUE(conn.send("hello"));
  RawResponse r = conn.read_response(5s);
  ASSERT_TRUE(r.got_response);
  EXPECT_EQ(r.status, 200u);
  EXPECT_NE(r.body.find("\nhello"), std::string::npos) << r.body;
  // The next request on the connection, without the expectation: no interim response.
  ASSERT_TRUE(conn.send("POST /head HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"));
  EXPECT_FALSE(conn.read_response(300ms).got_response);
  ASSERT_TRUE(conn.send("ok"));
  RawResponse r2 = conn.read_response(5s);
  EXPECT_EQ(r2.status, 200u);
  RawConn old(up_srv->url());
  ASSERT_TRUE(old.send("POST /head HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"));
  EXPECT_FALSE(old.read_response(300ms).got_response);
  ASSERT_TRUE(old.send("ok"));
  EXPECT_EQ(old.read_response(5s).status, 200u);
}

TEST_F(StreamProxy, StreamsArriveInPiecesAndEnd) {
  RawConn conn(proxy_srv->url());
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(conn.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  RawResponse r = conn.read_response(10s);
  ASSERT_TRUE(r.got_response);
  EXPECT_EQ(r.status, 200u);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(elapsed, 200ms);  // the pieces were 50 ms apart: not buffered into one
  for (int i = 0; i < 5; ++i) EXPECT_NE(r.body.find("data: " + std::to_string(i) + "\n\n"), std::string::npos);
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);
  // The connection stays usable after a chunked stream.
  ASSERT_TRUE(conn.send("POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n7"));
  RawResponse r2 = conn.read_response(10s);
  ASSERT_TRUE(r2.got_response);
  EXPECT_EQ(r2.body, R"({"ok":true,"echo":7})");
}

TEST_F(StreamProxy, ClientDisconnectCancelsTheUpstreamCall) {
  {
    RawConn conn(proxy_srv->url());
    ASSERT_TRUE(conn.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::this_thread::sleep_for(200ms);
  }  // the client goes away
  for (int i = 0; i < 100 && (proxy.client_gone == 0 || upstream.cancelled == 0); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(proxy.client_gone.load(), 1);
  EXPECT_EQ(upstream.cancelled.load(), 1);  // the proxy closed its upstream connection
  // Both servers keep serving.
  Client c(proxy_srv->url());
  EXPECT_EQ(c.request("POST", "/whole", "1", {{"Content-Type", "application/json"}}).status, 200u);
}

// A client that resets its connection right after its request. If the reset is there before the
// request is read, the request is dropped with the connection (recvmmsg reports a pending error
// before any bytes); if it comes with or after the bytes, it brings a readiness event of its own,
// and the watch's read then finds it (http/ready_read.h). Either way no response goes on being
// produced for nobody: every request that reached the handler is cancelled, upstream too.
TEST_F(StreamProxy, AClientThatResetsRightAfterItsRequestLeavesNothingRunning) {
  for (int round = 0; round < 12; ++round) {
    SCOPED_TRACE(round);
    {
      RawConn conn(proxy_srv->url());
      ASSERT_TRUE(conn.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
      if (round % 3) std::this_thread::sleep_for(std::chrono::milliseconds(round % 3 == 1 ? 1 : 20));
      conn.reset();
    }
    auto settled = [&] { return proxy.handled == proxy.client_gone && upstream.cancelled == proxy.client_gone; };
    for (int i = 0; i < 100 && !settled(); ++i) std::this_thread::sleep_for(20ms);
    EXPECT_EQ(proxy.client_gone.load(), proxy.handled.load()) << "a handled request was not cancelled";
    EXPECT_EQ(upstream.cancelled.load(), proxy.client_gone.load()) << "an upstream call goes on";
  }
  std::printf("[ measured ] %d of 12 reset requests reached the handler (all cancelled)\n", proxy.handled.load());
}

// The server watches a connection for a client that goes away only once a response has been in
// the making for a while (http/server.cpp). A request that arrives during a streamed response,
// before the watch or while it reads, is kept and answered after it, in order.
TEST_F(StreamProxy, RequestsPipelinedDuringAStreamAreAnsweredInOrder) {
  RawConn conn(proxy_srv->url());
  // The stream's whole answer, then the echo of `n`.
  auto expect_stream_then_whole = [&](int n) {
    RawResponse stream = conn.read_response(10s);
    ASSERT_TRUE(stream.got_response);
    EXPECT_NE(stream.body.find("data: [DONE]"), std::string::npos);
    RawResponse whole = conn.read_response(10s);
    ASSERT_TRUE(whole.got_response);
    EXPECT_EQ(whole.body, R"({"ok":true,"echo":)" + std::to_string(n) + "}");
  };
  const std::string whole = "POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n";
  // Both at once: the second is in the session's buffer before the stream begins.
  ASSERT_TRUE(conn.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n" + whole + "1"));
  expect_stream_then_whole(1);
  // The second arrives mid-stream, after the watch has begun reading.
  ASSERT_TRUE(conn.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(conn.send(whole + "2"));
  expect_stream_then_whole(2);
  EXPECT_EQ(proxy.client_gone.load(), 0);
}

// Short streams back to back on kept-alive connections, ending around the moment the watch is
// armed: each next request is read (a response that ends while the watch reads must not leave
// two reads on one connection, or none).
// A stream that has ended by the time its head goes out is sent whole, with its length (as
// nginx relays an upstream's Content-Length); one still being produced is chunked.
TEST_F(StreamProxy, AStreamIsChunkedOnlyWhileItsEndIsNotKnown) {
  RawConn conn(up_srv->url());
  ASSERT_TRUE(conn.send("GET /ended HTTP/1.1\r\nHost: x\r\n\r\n"));
  RawResponse ended = conn.read_response(10s);
  ASSERT_TRUE(ended.got_response);
  EXPECT_EQ(ended.status, 200u);
  EXPECT_EQ(ended.header("content-type"), "text/event-stream");
  EXPECT_EQ(ended.header("content-length"), "23");
  EXPECT_EQ(ended.header("transfer-encoding"), "");
  EXPECT_EQ(ended.body, "data: 1\n\ndata: [DONE]\n\n");
  ASSERT_TRUE(conn.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));  // the same connection goes on
  RawResponse paced = conn.read_response(10s);
  ASSERT_TRUE(paced.got_response);
  EXPECT_EQ(paced.header("transfer-encoding"), "chunked");
  EXPECT_EQ(paced.header("content-length"), "");
  EXPECT_NE(paced.body.find("data: 4\n\ndata: [DONE]\n\n"), std::string::npos);
}

TEST_F(StreamProxy, ShortStreamsBackToBackAllComplete) {
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      RawConn conn(proxy_srv->url());
      for (int i = 0; i < 250; ++i) {
        std::string body = std::to_string(t * 1000 + i);
        if (!conn.send("POST /quick HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\n\r\n" + body)) {
          return;
        }
        RawResponse r = conn.read_response(5s);
        if (!r.got_response || r.body != "data: 1\n\n") return;
        ++ok;
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok.load(), 8 * 250);
}

TEST_F(StreamProxy, FileBodiesAreSentFromDiskWithTheirRangeAndKeepAlive) {
  std::string path = ::testing::TempDir() + "/stream_proxy_file.bin";
  std::string content;
  for (int i = 0; i < (4 << 20); ++i) content.push_back(char('a' + (i * 7) % 26));
  {
    FILE* f = fopen(path.c_str(), "wb");
    ASSERT_TRUE(f);
    fwrite(content.data(), 1, content.size(), f);
    fclose(f);
  }
  upstream.file_path = path;
  Client c(up_srv->url());
  auto r = c.request("GET", "/file");
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.header("content-length"), std::to_string(3 << 20));
  EXPECT_TRUE(r.body == content.substr(10, 3 << 20));
  EXPECT_EQ(c.request("POST", "/whole", "2", {{"Content-Type", "application/json"}}).status, 200u);  // same connection
  ::unlink(path.c_str());
}

// The pool parses responses itself (http/upstream.cpp): whatever the framing, and however the
// bytes are split across reads, the head comes once, the body whole and in order, then the end;
// a connection is pooled again only when its response ended cleanly with keep-alive.
TEST_F(StreamProxy, ResponsesAreReadWhateverTheirFramingAndPacing) {
  std::string big(40000, 'x');  // more than the pool's 16 KB body piece
  for (size_t i = 0; i < big.size(); i += 97) big[i] = char('a' + i % 26);
  std::string chunked_body = "hello, chunked world";
  struct Case {
    const char* name;
    std::string response;
    size_t piece;  // bytes per write (1: a byte at a time)
    std::string body;
    bool pooled;  // the connection may be reused afterwards
  };
  std::vector<Case> cases = {
      {"content-length in one write, hop-by-hop fields",
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nServer: up/1\r\n"
       "Date: Sat, 05 Dec 2026 00:00:00 GMT\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Authenticate: Basic\r\nX-Up: 1\r\n\r\nabcde",
       1 << 20, "abcde", true},
      {"content-length a byte at a time", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nabcde", 1, "abcde", true},
      {"chunked a byte at a time",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n7\r\nhello, \r\nd\r\nchunked world\r\n0\r\n\r\n", 1,
       chunked_body, true},
      {"large body", "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(big.size()) + "\r\nX-Up: 1\r\n\r\n" + big, 7000,
       big, true},
      {"body until close", "HTTP/1.1 200 OK\r\nConnection: close\r\nX-Up: 1\r\n\r\nuntil the end", 3, "until the end", false},
      {"empty body", "HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n", 4, "", true},
  };
  for (const auto& c : cases) {
    asio::io_context io;
    asio::ip::tcp::acceptor acc(io, {asio::ip::make_address("127.0.0.1"), 0});
    uint16_t port = acc.local_endpoint().port();
    std::string request;
    std::thread up([&] {
      asio::ip::tcp::socket s(io);
      acc.accept(s);
      char buf[4096];
      boost::system::error_code ec;
      while (request.find("\r\n\r\nping") == std::string::npos && !ec) {
        size_t n = s.read_some(asio::buffer(buf), ec);
        request.append(buf, n);
      }
      for (size_t i = 0; i < c.response.size(); i += c.piece) {
        asio::write(s, asio::buffer(c.response.data() + i, std::min(c.piece, c.response.size() - i)), ec);
        if (c.piece < 10) std::this_thread::sleep_for(1ms);
      }
      if (!c.pooled) s.close();
      else s.read_some(asio::buffer(buf), ec);  // held open until the pool lets go of it
    });
    Collected got;
    size_t idle_before = pool->idle_connections();
    send_x(port, got, {}, "ping");
    ASSERT_TRUE(got.wait()) << c.name;
    EXPECT_EQ(got.error, "") << c.name;
    EXPECT_EQ(got.heads, 1) << c.name;
    EXPECT_EQ(got.field("X-Up"), "1") << c.name;
    // Hop-by-hop and framing fields, and the upstream's Server and Date, are not relayed.
    std::string relayed;
    for (const auto& f : got.head.headers) relayed += f.first + " ";
    EXPECT_EQ(got.head.headers.size(), 1u) << c.name << ": " << relayed;
    EXPECT_EQ(got.head.status, c.body.empty() ? 204u : 200u) << c.name;
    EXPECT_TRUE(got.body == c.body) << c.name << ": " << got.body.size() << " bytes";
    EXPECT_EQ(pool->idle_connections(), idle_before + (c.pooled ? 1 : 0)) << c.name;
    pool.reset();  // closes the pooled connection: the upstream's thread sees it and ends
    up.join();
    pool = std::make_unique<UpstreamPool>(proxy_srv->server->io());
    proxy.pool = pool.get();
  }
}

// An upstream that takes the request and never answers: the call ends when the first byte is
// due, as one that got no response (so the gateway may try another replica).
TEST_F(StreamProxy, AnUpstreamThatNeverAnswersTimesOutAtTheFirstByte) {
  asio::io_context io;
  asio::ip::tcp::acceptor acc(io, {asio::ip::make_address("127.0.0.1"), 0});
  uint16_t port = acc.local_endpoint().port();
  std::thread up([&] {
    asio::ip::tcp::socket s(io);
    acc.accept(s);
    char buf[4096];
    boost::system::error_code ec;
    while (!ec) s.read_some(asio::buffer(buf), ec);  // reads until the pool closes the connection
  });
  Collected got;
  UpstreamTimeouts t;
  t.first_byte = std::chrono::milliseconds(300);
  auto t0 = std::chrono::steady_clock::now();
  send_x(port, got, t);
  ASSERT_TRUE(got.wait());
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_NE(got.error.find("timeout"), std::string::npos) << got.error;
  EXPECT_FALSE(got.got_response);
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 5s);
  up.join();
  EXPECT_EQ(pool->idle_connections(), 0u);
}

// The first-byte deadline stays with a pooled connection from one call to the next (a lazy timer:
// http/ready_read.h). A call on a reused connection still ends when its own first byte is due:
// after an answered call with a longer deadline (whose wait is still pending: it is replaced), and
// after one with the same (its wait ends first and moves on to the new deadline).
TEST_F(StreamProxy, ACallOnAReusedConnectionTimesOutAtItsOwnFirstByte) {
  for (auto before : {std::chrono::milliseconds(20'000), std::chrono::milliseconds(300)}) {
    asio::io_context io;
    asio::ip::tcp::acceptor acc(io, {asio::ip::make_address("127.0.0.1"), 0});
    uint16_t port = acc.local_endpoint().port();
    std::atomic<int> accepted{0};
    // Answers the first request on the first connection, then answers nothing more on any.
    std::thread up([&] {
      std::vector<std::unique_ptr<asio::ip::tcp::socket>> open;
      for (int i = 0; i < 2; ++i) {
        auto s = std::make_unique<asio::ip::tcp::socket>(io);
        boost::system::error_code ec;
        acc.accept(*s, ec);
        if (ec) break;
        ++accepted;
        if (i == 0) {
          std::string req;
          char buf[4096];
          while (req.find("\r\n\r\n") == std::string::npos && !ec) req.append(buf, s->read_some(asio::buffer(buf), ec));
          asio::write(*s, asio::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")), ec);
        }
        open.push_back(std::move(s));
      }
      // Holds both open (reading nothing more) until the pool gives up on the second.
      for (auto& s : open) {
        char buf[4096];
        boost::system::error_code ec;
        while (!ec) s->read_some(asio::buffer(buf), ec);
      }
    });
    Collected first;
    UpstreamTimeouts t1;
    t1.first_byte = before;
    send_x(port, first, t1);
    ASSERT_TRUE(first.wait());
    ASSERT_EQ(first.error, "");
    ASSERT_EQ(first.body, "ok");
    ASSERT_EQ(pool->idle_connections(), 1u);

    Collected second;
    UpstreamTimeouts t2;
    t2.first_byte = std::chrono::milliseconds(300);
    auto t0 = std::chrono::steady_clock::now();
    send_x(port, second, t2);
    ASSERT_TRUE(second.wait(std::chrono::seconds(15))) << "the reused connection's call never timed out (before "
                                                        << before.count() << " ms)";
    auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_NE(second.error.find("timeout"), std::string::npos) << second.error;
    EXPECT_FALSE(second.got_response);
    // On the reused connection, then once more on a new one (a stale pooled connection is retried).
    EXPECT_GE(took, 500ms) << "before " << before.count() << " ms";
    EXPECT_LT(took, 5s) << "before " << before.count() << " ms";
    EXPECT_EQ(accepted.load(), 2);
    acc.close();
    up.join();
  }
}

// An upstream that says keep-alive but ends its side of the connection right after its answer
// (a FIN that arrives with the answer's bytes) and keeps the socket open, so that nothing more,
// not even a reset, comes on it: the pool must not send the next request on that connection and
// wait for an answer that will not come, but see the end and connect again (http/ready_read.h
// tells a FIN that came with the bytes apart from an empty socket).
TEST_F(StreamProxy, AnUpstreamThatEndsItsSideAfterItsAnswerIsNotWaitedOn) {
  asio::io_context io;
  asio::ip::tcp::acceptor acc(io, {asio::ip::make_address("127.0.0.1"), 0});
  uint16_t port = acc.local_endpoint().port();
  std::atomic<int> accepted{0};
  std::atomic<bool> stop{false};
  std::thread up([&] {
    std::vector<std::unique_ptr<asio::ip::tcp::socket>> open;  // half-closed, held open till the end
    for (int i = 0; i < 2; ++i) {
      auto s = std::make_unique<asio::ip::tcp::socket>(io);
      boost::system::error_code ec;
      acc.accept(*s, ec);
      if (ec) return;
      ++accepted;
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos && !ec) req.append(buf, s->read_some(asio::buffer(buf), ec));
      asio::write(*s, asio::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")), ec);
      s->shutdown(asio::ip::tcp::socket::shutdown_send, ec);
      open.push_back(std::move(s));
    }
    while (!stop) std::this_thread::sleep_for(10ms);
  });
  for (int round = 0; round < 2; ++round) {
    Collected got;
    UpstreamTimeouts t;
    t.first_byte = std::chrono::seconds(20);
    auto t0 = std::chrono::steady_clock::now();
    send_x(port, got, t);
    bool finished = got.wait(std::chrono::seconds(15));
    EXPECT_TRUE(finished) << "request " << round << " waited on a connection its upstream had ended";
    if (!finished) break;
    EXPECT_EQ(got.error, "") << "request " << round;
    EXPECT_EQ(got.body, "ok");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "request " << round;
  }
  stop = true;
  up.join();
  EXPECT_EQ(accepted.load(), 2) << "the second request went on a new connection";
}

TEST_F(StreamProxy, UnreachableUpstreamIsA502BeforeAnyByte) {
  proxy.upstream_port = 1;  // nothing listens there
  Client c(proxy_srv->url());
  auto r = c.request("POST", "/whole", "1", {{"Content-Type", "application/json"}});
  EXPECT_EQ(r.status, 502u);
  EXPECT_NE(r.body.find("cannot connect"), std::string::npos) << r.body;
}

}  // namespace
}  // namespace aicloud::http

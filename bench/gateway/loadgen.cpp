// An HTTP load generator for the gateway benchmark (bench/gateway/run.sh): POSTs one body over
// keep-alive connections and reports throughput, latency percentiles and, for OpenAI-shaped
// answers, the completion tokens they carried (usage.completion_tokens, whole or in the last
// SSE chunk). One thread on one io_context, so that it takes one core at most.
//
//   loadgen --url http://HOST:PORT/PATH --body-file F [--key K] [--connections 32]
//           [--rate R (requests/s; 0 = closed loop, as fast as answers come)] [--seconds 10]
//           [--warmup 2] [--tokens] [--trace FILE (each measured request: due ms, latency µs)]
//
// Open loop (--rate): request i is due at start + i/R; its latency counts from when it was due,
// not from when a connection was free to send it, so a server that falls behind shows it (no
// coordinated omission). Closed loop: each connection sends its next request when the previous
// answer is in: the saturation throughput.
// Output: one line "RESULT key=value ..." (requests, errors, rps, p50_us, p90_us, p99_us,
// max_us, tokens, tokens_per_s).
#include <utility>  // before asio: its awaitable.hpp uses std::exchange
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string host = "127.0.0.1", port = "80", target = "/", key, body;
  int connections = 32;
  double rate = 0;
  double seconds = 10, warmup = 2;
  bool tokens = false;
  std::string trace;  // --trace FILE: one line per measured request, "due_ms latency_us"
};

struct Stats {
  std::vector<int64_t> lat_us;
  std::vector<std::pair<double, int64_t>> trace;  // (due, ms after start; latency), for --trace
  int64_t errors = 0, tokens = 0;
};

struct Run {
  Options o;
  Clock::time_point start, measure_from, end;
  std::deque<Clock::time_point> due;  // open loop: requests due and not yet sent
  asio::steady_timer* wake = nullptr; // idle connections wait on it; cancel_one() hands one a request
  bool stopping = false;
  Stats stats;
  std::string first_error;
};

// completion_tokens in the body: the last "completion_tokens": N (a stream's usage chunk comes last).
int64_t completion_tokens(const std::string& body) {
  static const std::string k = "\"completion_tokens\":";
  size_t at = body.rfind(k);
  if (at == std::string::npos) return 0;
  at += k.size();
  while (at < body.size() && body[at] == ' ') ++at;
  return std::strtoll(body.c_str() + at, nullptr, 10);
}

// An answer's parser that keeps its status, and its body only where it is read (--tokens, or an
// error's text): a load generator that took each field apart into a container of its own (Beast's
// response<>, an allocation per field) spent more per answer with more fields, and it shares the
// machine's cores with what it measures.
class Answer : public bhttp::basic_parser<false> {
 public:
  explicit Answer(bool keep_body) : keep_body_(keep_body) {}
  unsigned status = 0;
  std::string body;

 private:
  void on_request_impl(bhttp::verb, beast::string_view, beast::string_view, int, beast::error_code&) override {}
  void on_response_impl(int code, beast::string_view, int, beast::error_code&) override { status = unsigned(code); }
  void on_field_impl(bhttp::field, beast::string_view, beast::string_view, beast::error_code&) override {}
  void on_header_impl(beast::error_code&) override { keep_body_ = keep_body_ || status != 200; }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, beast::error_code&) override {}
  std::size_t on_body_impl(beast::string_view b, beast::error_code&) override {
    if (keep_body_) body.append(b.data(), b.size());
    return b.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, beast::error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view b, beast::error_code& ec) override {
    return on_body_impl(b, ec);
  }
  void on_finish_impl(beast::error_code&) override {}
  bool keep_body_;
};

// The request, as it goes on the wire: written once, sent as it is every time.
std::string request_bytes(const Options& o) {
  std::string r = "POST " + o.target + " HTTP/1.1\r\nHost: " + o.host + "\r\nContent-Type: application/json\r\n";
  if (!o.key.empty()) r += "Authorization: Bearer " + o.key + "\r\n";
  r += "Content-Length: " + std::to_string(o.body.size()) + "\r\n\r\n" + o.body;
  return r;
}

// Reads one answer into a; ec is set if it could not be read whole.
awaitable<void> read_answer(tcp::socket& sock, beast::flat_buffer& buf, Answer& a, boost::system::error_code& ec) {
  a.eager(true);
  for (;;) {
    if (buf.size() > 0) {
      beast::error_code pe;
      size_t used = a.put(buf.data(), pe);
      buf.consume(used);
      if (a.is_done()) co_return;
      if (pe && pe != bhttp::error::need_more) {
        ec = pe;
        co_return;
      }
      if (!pe && used > 0 && buf.size() > 0) continue;  // the parser takes a message in steps
    }
    size_t n = co_await sock.async_read_some(buf.prepare(16 * 1024), asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::eof && a.got_some()) {
      ec = {};
      a.put_eof(ec);  // an answer that ends with the connection, or a cut-off one
      if (!ec && !a.is_done()) ec = bhttp::error::partial_message;
      co_return;
    }
    if (ec) co_return;
    buf.commit(n);
  }
}

awaitable<void> connection(Run& run) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto endpoints = co_await resolver.async_resolve(run.o.host, run.o.port, use_awaitable);
  tcp::socket sock(ex);
  bool connected = false;
  beast::flat_buffer buf;
  const std::string wire = request_bytes(run.o);
  for (;;) {
    Clock::time_point due;
    if (run.o.rate > 0) {
      while (run.due.empty() && !run.stopping) {
        boost::system::error_code ec;
        co_await run.wake->async_wait(asio::redirect_error(use_awaitable, ec));
      }
      if (run.due.empty()) break;
      due = run.due.front();
      run.due.pop_front();
    } else {
      if (Clock::now() >= run.end) break;
      due = Clock::now();
    }
    boost::system::error_code ec;
    if (!connected) {
      co_await asio::async_connect(sock, endpoints, asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (run.first_error.empty()) run.first_error = "connect: " + ec.message();
        if (due >= run.measure_from) ++run.stats.errors;
        co_await asio::steady_timer(ex, std::chrono::milliseconds(10)).async_wait(use_awaitable);
        continue;
      }
      sock.set_option(tcp::no_delay(true));
      connected = true;
    }
    co_await asio::async_write(sock, asio::buffer(wire), asio::redirect_error(use_awaitable, ec));
    Answer res(run.o.tokens);
    if (!ec) co_await read_answer(sock, buf, res, ec);
    auto done = Clock::now();
    // Open loop: every request due in the window (latency includes any wait for a connection).
    // Closed loop: every answer that came in the window (a throughput, whatever their length).
    bool measured = run.o.rate > 0 ? due >= run.measure_from : done >= run.measure_from && done <= run.end;
    if (ec || res.status != 200) {
      if (run.first_error.empty()) {
        run.first_error = ec ? ec.message() : std::to_string(res.status) + " " + res.body.substr(0, 300);
      }
      if (measured) ++run.stats.errors;
      if (ec || !res.keep_alive()) {
        beast::error_code ignore;
        sock.close(ignore);
        connected = false;
        buf.clear();
      }
      continue;
    }
    if (measured) {
      run.stats.lat_us.push_back(std::chrono::duration_cast<std::chrono::microseconds>(done - due).count());
      if (!run.o.trace.empty()) {
        run.stats.trace.emplace_back(std::chrono::duration<double, std::milli>(due - run.start).count(),
                                     run.stats.lat_us.back());
      }
      if (run.o.tokens) run.stats.tokens += completion_tokens(res.body);
    }
    if (!res.keep_alive()) {
      beast::error_code ignore;
      sock.close(ignore);
      connected = false;
      buf.clear();
    }
  }
}

// Open loop: makes request i due at start + i/rate and hands it to an idle connection.
awaitable<void> pacer(Run& run) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer t(ex);
  auto interval = std::chrono::duration<double>(1.0 / run.o.rate);
  for (int64_t i = 0;; ++i) {
    auto at = run.start + std::chrono::duration_cast<Clock::duration>(interval * double(i));
    if (at >= run.end) break;
    if (at > Clock::now()) {
      t.expires_at(at);
      co_await t.async_wait(use_awaitable);
    }
    run.due.push_back(at);
    run.wake->cancel_one();
  }
  run.stopping = true;
  run.wake->cancel();
}

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "loadgen: " << why
            << "\nusage: loadgen --url http://HOST:PORT/PATH --body-file F [--key K] [--connections N] [--rate R]"
               " [--seconds S] [--warmup S] [--tokens] [--trace FILE]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--url") {
      std::string u = next();
      if (u.rfind("http://", 0) != 0) usage("--url must start with http://");
      u = u.substr(7);
      size_t slash = u.find('/');
      o.target = slash == std::string::npos ? "/" : u.substr(slash);
      std::string hp = u.substr(0, slash);
      size_t colon = hp.rfind(':');
      o.host = hp.substr(0, colon);
      if (colon != std::string::npos) o.port = hp.substr(colon + 1);
    } else if (a == "--body-file") {
      std::ifstream f(next());
      if (!f) usage("cannot read the body file");
      std::stringstream ss;
      ss << f.rdbuf();
      o.body = ss.str();
    } else if (a == "--key") {
      o.key = next();
    } else if (a == "--connections") {
      o.connections = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--rate") {
      o.rate = std::atof(next().c_str());
    } else if (a == "--seconds") {
      o.seconds = std::atof(next().c_str());
    } else if (a == "--warmup") {
      o.warmup = std::atof(next().c_str());
    } else if (a == "--trace") {
      o.trace = next();
    } else if (a == "--tokens") {
      o.tokens = true;
    } else {
      usage("unknown argument " + a);
    }
  }
  if (o.body.empty()) usage("--body-file is required");
  return o;
}

int64_t pct(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = size_t(p * double(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  Run run;
  run.o = parse(argc, argv);
  std::ofstream trace;  // opened before the run: a path it cannot write is an error now, not after it
  if (!run.o.trace.empty()) {
    trace.open(run.o.trace);
    if (!trace) usage("cannot write the --trace file " + run.o.trace);
  }
  asio::io_context io(1);
  asio::steady_timer wake(io, Clock::time_point::max());
  run.wake = &wake;
  run.start = Clock::now();
  run.measure_from = run.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(run.o.warmup));
  run.end = run.measure_from + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(run.o.seconds));
  for (int i = 0; i < run.o.connections; ++i) {
    asio::co_spawn(io, connection(run), [&](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        if (run.first_error.empty()) run.first_error = x.what();
      }
    });
  }
  if (run.o.rate > 0) asio::co_spawn(io, pacer(run), asio::detached);
  io.run();

  if (trace.is_open()) {
    for (auto [due_ms, us] : run.stats.trace) trace << due_ms << ' ' << us << '\n';
    if (!trace.flush()) std::cerr << "loadgen: could not write the --trace file " << run.o.trace << "\n";
  }
  auto& lat = run.stats.lat_us;
  std::sort(lat.begin(), lat.end());
  double secs = run.o.seconds;
  if (!run.first_error.empty()) std::cerr << "loadgen: first error: " << run.first_error << "\n";
  std::printf("RESULT requests=%zu errors=%lld rps=%.1f p50_us=%lld p90_us=%lld p99_us=%lld max_us=%lld tokens=%lld tokens_per_s=%.1f\n",
              lat.size(), (long long)run.stats.errors, double(lat.size()) / secs, (long long)pct(lat, 0.50),
              (long long)pct(lat, 0.90), (long long)pct(lat, 0.99), (long long)(lat.empty() ? 0 : lat.back()),
              (long long)run.stats.tokens, double(run.stats.tokens) / secs);
  return run.stats.errors > 0 && lat.empty() ? 1 : 0;
}

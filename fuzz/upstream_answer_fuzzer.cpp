// libFuzzer target: the bytes an upstream (a model replica, an operator's endpoint) sends back,
// through the upstream pool's answer parser (src/http/answer_parser.h), fed in pieces as reads
// bring them. The first input byte chooses the piece sizes; the rest is the answer. Sanitizers
// catch memory errors; the checks below catch broken contracts:
//   - put() never uses more than it is given, and what it reports as body lies inside it;
//   - after an error or the end, nothing changes;
//   - fed in pieces, the answer reads the same as fed whole (result, status, body, keep-alive);
//   - where Beast's response parser (what the pool used before) also reads the answer whole and
//     accepts it, both read the same status and body.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http/answer_parser.h"

namespace {

using aicloud::http::AnswerParser;
using R = AnswerParser::Result;

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "contract broken: %s\n", what);
  std::abort();
}

struct Read {
  R result = R::kNeedMore;
  unsigned status = 0;
  std::string body;
  bool keep_alive = false;
};

// Feeds text as the pool does: pieces of the given size, what put() leaves unused given again with
// the next piece, the connection's end after the last one.
Read feed(std::string_view text, size_t piece) {
  AnswerParser p;
  Read out;
  std::string buf;
  size_t at = 0;
  bool head_seen = false;
  auto step = [&] {
    p.pieces.clear();
    size_t used = p.put(buf, out.result);
    if (used > buf.size()) broken("put() used more than it was given");
    for (auto piece : p.pieces) {
      if (piece.data() < buf.data() || piece.data() + piece.size() > buf.data() + used) broken("a body piece outside what was used");
      out.body.append(piece);
    }
    if (!head_seen && p.head_done()) {
      head_seen = true;
      out.status = p.head.status;
    }
    buf.erase(0, used);
  };
  while (at < text.size() && out.result == R::kNeedMore) {
    size_t n = std::min(piece, text.size() - at);
    buf.append(text.substr(at, n));
    at += n;
    step();
  }
  if (out.result == R::kNeedMore) {
    out.result = p.put_eof();
    if (out.result == R::kDone) step();
  }
  if (out.result != R::kNeedMore) {  // done or failed: more input changes nothing
    R again = R::kNeedMore;
    p.pieces.clear();
    if (p.put("HTTP/1.1 200 OK\r\n\r\n", again) != 0 || again != out.result || !p.pieces.empty()) broken("an ended parser moved");
  }
  out.keep_alive = p.keep_alive();
  return out;
}

// Beast's parser, keeping the status and body (a string_body would reserve a Content-Length's
// worth before reading a byte of it).
class BeastAnswer : public boost::beast::http::basic_parser<false> {
 public:
  unsigned status = 0;
  std::string body;

 private:
  using sv = boost::beast::string_view;
  using ec = boost::beast::error_code;
  void on_request_impl(boost::beast::http::verb, sv, sv, int, ec&) override {}
  void on_response_impl(int code, sv, int, ec&) override { status = unsigned(code); }
  void on_field_impl(boost::beast::http::field, sv, sv, ec&) override {}
  void on_header_impl(ec&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>&, ec&) override {}
  std::size_t on_body_impl(sv b, ec&) override {
    body.append(b.data(), b.size());
    return b.size();
  }
  void on_chunk_header_impl(std::uint64_t, sv, ec&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, sv b, ec& e) override { return on_body_impl(b, e); }
  void on_finish_impl(ec&) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t piece = 1 + data[0] % 16;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  Read whole = feed(text, text.size() + 1);
  Read pieces = feed(text, piece);
  if (whole.result != pieces.result || whole.status != pieces.status || whole.body != pieces.body ||
      whole.keep_alive != pieces.keep_alive) {
    broken("read in pieces, the answer reads differently");
  }

  namespace bhttp = boost::beast::http;
  BeastAnswer beast;
  beast.eager(true);
  beast.header_limit(AnswerParser::kHeadLimit);
  beast.body_limit(std::uint64_t(1) << 40);
  boost::beast::flat_buffer b;
  b.commit(boost::asio::buffer_copy(b.prepare(text.size()), boost::asio::buffer(text.data(), text.size())));
  boost::system::error_code ec;
  while (!beast.is_done() && b.size() > 0) {
    size_t used = beast.put(b.data(), ec);
    b.consume(used);
    if (ec == bhttp::error::need_more) ec = {};
    if (ec || used == 0) break;
  }
  if (!ec && !beast.is_done() && beast.got_some()) beast.put_eof(ec);
  // 1xx answers: Beast stops at the interim one; the pool skips it. Compared only on final ones.
  if (!ec && beast.is_done() && whole.result == R::kDone && beast.status >= 200) {
    if (beast.status != whole.status) broken("a status other than Beast's");
    if (beast.body != whole.body) broken("a body other than Beast's");
  }
  return 0;
}

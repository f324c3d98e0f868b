// The upstream pool's answer parser (http/answer_parser.h): framings, fields relayed and not,
// every way an answer can be split across reads, malformed answers, and agreement with Beast's
// response parser (the one it replaced) on a few thousand generated answers.
#include <gtest/gtest.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <strings.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "http/answer_parser.h"
#include "http/fields.h"

using aicloud::http::AnswerParser;
using R = AnswerParser::Result;

namespace {

// What an answer came to: as the pool sees it.
struct Parsed {
  R result = R::kNeedMore;
  std::string error;
  unsigned status = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = false;
  size_t left = 0;  // bytes after the answer, not used
};

// Feeds text in pieces of the given sizes (cycled), as the pool does: what a put() leaves unused
// is given again with the next piece; the connection ends after the last one when `eof`.
Parsed feed(const std::string& text, const std::vector<size_t>& sizes, bool eof = false) {
  AnswerParser p;
  Parsed out;
  std::string buf;
  size_t at = 0, k = 0;
  bool head_seen = false;
  auto step = [&] {
    p.pieces.clear();
    size_t used = p.put(buf, out.result);
    for (auto piece : p.pieces) out.body.append(piece);
    if (!head_seen && p.head_done()) {
      head_seen = true;
      out.status = p.head.status;
      out.content_type = p.head.content_type;
      out.headers = p.head.headers;
    }
    buf.erase(0, used);
  };
  while (at < text.size() && out.result == R::kNeedMore) {
    size_t n = std::min(sizes[k++ % sizes.size()], text.size() - at);
    buf.append(text, at, n);
    at += n;
    step();
  }
  if (out.result == R::kNeedMore && eof) {
    out.result = p.put_eof();
    if (out.result == R::kDone) step();
  }
  out.error = p.error();
  out.keep_alive = p.keep_alive();
  out.left = buf.size() + (text.size() - at);
  return out;
}

Parsed whole(const std::string& text, bool eof = false) { return feed(text, {text.size() + 1}, eof); }

TEST(AnswerParser, FramingsFieldsAndKeepAlive) {
  struct Case {
    const char* name;
    std::string text;
    bool eof;
    unsigned status;
    std::string body;
    bool keep_alive;
    std::vector<std::pair<std::string, std::string>> relayed;
  };
  std::vector<Case> cases = {
      {"content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-A:  b \r\n\r\n{}", false,
       200, "{}", true, {{"X-A", "b"}}},
      {"hop-by-hop and the server's own fields are not relayed",
       "HTTP/1.1 200 OK\r\nServer: up\r\nDate: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
       "Trailer: X-T\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nProxy-Authorization: x\r\nTransfer-Encoding: chunked\r\n"
       "X-Request-Id: r1\r\n\r\n0\r\n\r\n",
       false, 200, "", true, {{"X-Request-Id", "r1"}}},
      {"chunked with extensions and trailers",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5;a=b\r\nhello\r\n1 ; x\r\n!\r\nA\r\n0123456789\r\n0\r\n"
       "X-T: 1\r\nX-U: 2\r\n\r\n",
       false, 200, "hello!0123456789", true, {}},
      {"a coding other than chunked last: to the end", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw", true,
       200, "raw", false, {}},
      {"no length: to the end", "HTTP/1.1 200 OK\r\n\r\nall of it", true, 200, "all of it", false, {}},
      {"Transfer-Encoding wins over Content-Length, and the connection is not kept",
       "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 200, "ok",
       false, {}},
      {"the same Content-Length twice", "HTTP/1.1 201 Created\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc", false,
       201, "abc", true, {}},
      {"204 has no body", "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", false, 204, "", true, {}},
      {"304 has no body", "HTTP/1.1 304 Not Modified\r\n\r\n", false, 304, "", true, {}},
      {"zero length", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", false, 500, "", true, {}},
      {"HTTP/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false, 200, "x", false, {}},
      {"HTTP/1.0 with keep-alive keeps", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", false,
       200, "x", true, {}},
      {"close wins", "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nx", false, 200, "x", false,
       {}},
      {"interim answers are skipped",
       "HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"
       "Content-Length: 2\r\nX-Late: 1\r\n\r\nok",
       false, 200, "ok", true, {{"X-Late", "1"}}},
      {"no reason phrase", "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false, 404, "", true, {}},
      {"empty value, obs-text", "HTTP/1.1 200 OK\r\nX-E:\r\nX-O: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n", false, 200, "",
       true, {{"X-E", ""}, {"X-O", "caf\xc3\xa9"}}},
  };
  for (const auto& c : cases) {
    // Whole, a byte at a time, and in pieces of 2, 3 and 7 bytes: the same answer each way.
    for (std::vector<size_t> sizes : {std::vector<size_t>{c.text.size() + 1}, {1}, {2, 3}, {7}}) {
      Parsed got = feed(c.text, sizes, c.eof);
      std::string how = std::string(c.name) + " (pieces of " + std::to_string(sizes[0]) + ")";
      ASSERT_EQ(got.result, R::kDone) << how << ": " << got.error;
      EXPECT_EQ(got.status, c.status) << how;
      EXPECT_EQ(got.body, c.body) << how;
      EXPECT_EQ(got.keep_alive, c.keep_alive) << how;
      EXPECT_EQ(got.headers, c.relayed) << how;
      EXPECT_EQ(got.left, 0u) << how;
    }
  }
  EXPECT_EQ(whole("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 0\r\n\r\n").content_type,
            "text/event-stream");
}

TEST(AnswerParser, WhatFollowsTheAnswerIsLeftUnused) {
  Parsed got = whole("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n");
  EXPECT_EQ(got.result, R::kDone);
  EXPECT_EQ(got.body, "ok");
  EXPECT_EQ(got.left, 17u);
}

TEST(AnswerParser, MalformedAnswersAreErrorsThatSayWhy) {
  struct Case {
    std::string text;
    std::string says;
  };
  std::vector<Case> cases = {
      {"HTTP/2 200 OK\r\n\r\n", "status line"},
      {"HTTP/1.1 20 OK\r\n\r\n", "status line"},
      {"HTTP/1.1 2000 OK\r\n\r\n", "status line"},
      {"HTTP/1.1 abc OK\r\n\r\n", "status line"},
      {"ICY 200 OK\r\n\r\n", "status line"},
      {"HTTP/1.1 099 Low\r\n\r\n", "status 99"},
      {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101"},
      {"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "folded"},
      {"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "without ':'"},
      {"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", "field name"},
      {"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "field name"},
      {"HTTP/1.1 200 OK\r\nX-A: a\nb\r\n\r\n", "CRLF"},
      {"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", "control byte"},
      {std::string("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n", 29), "control byte"},
      {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", "Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", "two different"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunkedTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "Transfer-Encoding"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n", "Transfer-Encoding"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", "and a Content-Length"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size line"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "chunk-size line"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n", "chunk-size line"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", "not followed by CRLF"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n", "chunk-size line '1000000000000000'"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\x01\r\n\r\n", "control byte in field X-T"},
      {"HTTP/1.1 200 OK\r\nX-Big: " + std::string(70000, 'a') + "\r\n\r\n", "head over"},
      {"HTTP/1.1 200 OK\r\nX-Big: " + std::string(70000, 'a'), "head over"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + std::string(5000, 'e'), "over 4096"},
  };
  for (const auto& c : cases) {
    for (std::vector<size_t> sizes : {std::vector<size_t>{c.text.size() + 1}, {1}, {5}}) {
      Parsed got = feed(c.text, sizes);
      EXPECT_EQ(got.result, R::kError) << c.text.substr(0, 80);
      EXPECT_NE(got.error.find(c.says), std::string::npos) << c.text.substr(0, 80) << " -> " << got.error;
      EXPECT_EQ(got.error.rfind("malformed answer: ", 0), 0u) << got.error;
    }
  }
}

TEST(AnswerParser, AnAnswerCutOffByTheConnectionsEndIsAnError) {
  for (std::string text : {"HTTP/1.1 200 OK\r\nContent-Le", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
                           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"}) {
    Parsed got = whole(text, true);
    EXPECT_EQ(got.result, R::kError) << text;
    EXPECT_NE(got.error.find("ended before the answer did"), std::string::npos) << got.error;
  }
  AnswerParser fresh;
  EXPECT_FALSE(fresh.got_some());
}

// Generated answers, valid ones, parsed by both parsers in random pieces: the same status,
// relayed fields, body and keep-alive.
TEST(AnswerParser, AgreesWithBeastOnGeneratedAnswers) {
  namespace bhttp = boost::beast::http;
  std::mt19937 rng(20261206);
  auto pick = [&](int n) { return int(rng() % unsigned(n)); };
  const std::vector<std::string> names = {"X-A", "x-b", "Content-Type", "Server", "Date", "Keep-Alive", "Vary", "X-Request-Id"};
  for (int round = 0; round < 3000; ++round) {
    std::string body;
    for (int i = pick(300); i > 0; --i) body += char(' ' + pick(95));
    int framing = pick(4);  // 0 length, 1 chunked, 2 to the end, 3 204
    bool http10 = pick(8) == 0;
    unsigned status = framing == 3 ? 204 : unsigned(200 + pick(400));
    std::string text = std::string(http10 ? "HTTP/1.0 " : "HTTP/1.1 ") + std::to_string(status) + " Whatever\r\n";
    for (int i = pick(6); i > 0; --i) {
      std::string v;
      for (int j = pick(20); j > 0; --j) v += char('!' + pick(94));
      text += names[size_t(pick(int(names.size())))] + ":" + (pick(2) ? " " : "") + v + "\r\n";
    }
    int conn = pick(4);  // 0 none, 1 close, 2 keep-alive
    if (conn == 1) text += "Connection: close\r\n";
    if (conn == 2) text += "Connection: keep-alive\r\n";
    if (framing == 0) text += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (framing == 1) {
      text += "Transfer-Encoding: chunked\r\n\r\n";
      for (size_t at = 0; at < body.size();) {
        size_t n = std::min(body.size() - at, size_t(1 + pick(40)));
        char hex[32];
        std::snprintf(hex, sizeof hex, pick(2) ? "%zx" : "%zX", n);
        text += std::string(hex) + (pick(4) ? "" : ";ext=1") + "\r\n" + body.substr(at, n) + "\r\n";
        at += n;
      }
      text += "0\r\n\r\n";
    }
    if (framing == 2) text += "\r\n" + body;
    if (framing == 3) text += "\r\n", body.clear();
    bool eof = framing == 2;

    std::vector<size_t> sizes;
    for (int i = 0; i < 5; ++i) sizes.push_back(size_t(1 + pick(pick(2) ? 8 : 200)));
    Parsed mine = feed(text, sizes, eof);

    bhttp::response_parser<bhttp::string_body> theirs;
    theirs.eager(true);
    boost::system::error_code ec;
    boost::beast::flat_buffer b;
    auto copy = boost::asio::buffer_copy(b.prepare(text.size()), boost::asio::buffer(text));
    b.commit(copy);
    while (!theirs.is_done() && b.size() > 0) {
      size_t used = theirs.put(b.data(), ec);
      b.consume(used);
      if (ec == bhttp::error::need_more) ec = {};
      if (ec || used == 0) break;
    }
    if (!theirs.is_done() && eof && !ec) theirs.put_eof(ec);
    ASSERT_FALSE(ec) << text << ": " << ec.message();
    ASSERT_TRUE(theirs.is_done()) << text;
    ASSERT_EQ(mine.result, R::kDone) << text << ": " << mine.error;
    const auto& m = theirs.get();
    EXPECT_EQ(mine.status, m.result_int()) << text;
    EXPECT_EQ(mine.body, m.body()) << text;
    EXPECT_EQ(mine.keep_alive, theirs.keep_alive()) << text;
    std::vector<std::pair<std::string, std::string>> relayed;
    std::string content_type;
    for (const auto& f : m) {
      std::string n(f.name_string()), v(f.value());
      if (aicloud::http::same_field(n, "content-type")) content_type = v;  // the last one, as mine keeps it
      else if (!aicloud::http::same_field(n, "server") && !aicloud::http::same_field(n, "date") &&
               !aicloud::http::same_field(n, "keep-alive") && !aicloud::http::framing_field(n)) {
        relayed.emplace_back(n, v);
      }
    }
    // Beast lists a repeated name's fields together; the relay keeps the answer's order. Compared
    // by name, each name's values in order:
    auto by_name = [](std::vector<std::pair<std::string, std::string>> v) {
      std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
        return strcasecmp(a.first.c_str(), b.first.c_str()) < 0;
      });
      return v;
    };
    EXPECT_EQ(by_name(mine.headers), by_name(relayed)) << text;
    EXPECT_EQ(mine.content_type, content_type) << text;
  }
}

}  // namespace

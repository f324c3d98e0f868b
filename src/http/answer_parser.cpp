#include "http/answer_parser.h"

#include <algorithm>
#include <utility>

#include "http/fields.h"
#include "http/message_lines.h"

namespace aicloud::http {

namespace {

// The fields a relay does not pass on: hop-by-hop ones, framing (the server frames the client's
// answer itself), and Server and Date (the server's own). Told apart by length first: most
// fields are compared with nothing.
bool not_relayed(std::string_view n) {
  switch (n.size()) {
    case 2: return token_is(n, "te");
    case 4: return token_is(n, "date");
    case 6: return token_is(n, "server");
    case 7: return token_is(n, "trailer") || token_is(n, "upgrade");
    case 10: return token_is(n, "keep-alive");
    case 18: return token_is(n, "proxy-authenticate");
    case 19: return token_is(n, "proxy-authorization");
    default: return false;
  }
}

}  // namespace

AnswerParser::Result AnswerParser::fail(std::string why) {
  state_ = State::kError;
  error_ = "malformed answer: " + std::move(why);
  return Result::kError;
}

bool AnswerParser::bad(std::string why) {
  fail(std::move(why));
  return false;
}

// The head's lines (the status line first) or the trailers' (checked, then dropped), from
// line_at_ to the blank line that ends them: kDone when line_at_ is past it.
AnswerParser::Result AnswerParser::section(std::string_view rest, bool head_section) {
  using namespace message_lines;
  Status s = message_lines::section(rest, line_at_, kHeadLimit, [&](std::string_view line) {
    if (head_section && head.status == 0) return parse_status(line) ? Next::kMore : Next::kRefused;
    if (line.empty()) return Next::kEnd;
    return parse_field_line(line, head_section) ? Next::kMore : Next::kRefused;
  });
  switch (s) {
    case Status::kWhole: return Result::kDone;
    case Status::kNeedMore: return Result::kNeedMore;
    case Status::kBadEnding: return fail("a line not ended by CRLF");
    case Status::kOverLimit:
      return fail(std::string(head_section ? "a head" : "trailers") + " over " + std::to_string(kHeadLimit) + " bytes");
    case Status::kRefused: break;  // (the line's parser said why)
  }
  return Result::kError;
}

bool AnswerParser::parse_status(std::string_view line) {
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || line[7] < '0' || line[7] > '9' || line[8] != ' ' ||
      (line.size() > 12 && line[12] != ' ')) {
    return bad("status line '" + std::string(line.substr(0, 64)) + "'");
  }
  unsigned status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return bad("status line '" + std::string(line.substr(0, 64)) + "'");
    status = status * 10 + unsigned(line[i] - '0');
  }
  if (status < 100) return bad("status " + std::to_string(status));
  head.status = status;
  http11_ = line[7] >= '1';
  return true;
}

bool AnswerParser::parse_field_line(std::string_view line, bool keep) {
  size_t i = 0;
  while (i < line.size() && kTokenChar[static_cast<unsigned char>(line[i])]) ++i;
  if (i == line.size() || line[i] != ':' || i == 0) {
    if (!line.empty() && is_ows(line[0])) return bad("a field folded onto the next line");
    if (line.find(':') == std::string_view::npos) return bad("a field line without ':'");
    return bad("field name '" + std::string(line.substr(0, std::min<size_t>(line.find(':'), 64))) + "'");
  }
  std::string_view name = line.substr(0, i), value = trim_ows(line.substr(i + 1));
  if (!value_chars_ok(value)) return bad("a control byte in field " + std::string(name));
  return !keep || parse_field(name, value);
}

bool AnswerParser::parse_field(std::string_view name, std::string_view value) {
  switch (name.size()) {
    case 10:
      if (token_is(name, "connection")) {
        connection_options(value, conn_close_, conn_keep_alive_);
        return true;
      }
      break;
    case 12:
      if (token_is(name, "content-type")) {
        head.content_type.assign(value);
        return true;
      }
      break;
    case 14:
      if (token_is(name, "content-length")) {
        if (value.empty() || value.size() > 18) return bad("Content-Length '" + std::string(value) + "'");
        uint64_t n = 0;
        for (char c : value) {
          if (c < '0' || c > '9') return bad("Content-Length '" + std::string(value) + "'");
          n = n * 10 + uint64_t(c - '0');
        }
        if (has_length_ && n != remaining_) return bad("two different Content-Lengths");
        has_length_ = true;
        remaining_ = n;
        return true;
      }
      break;
    case 17:
      if (token_is(name, "transfer-encoding")) {
        // The body is chunked when chunked is the last coding of the last such field; any other
        // coding last means the body runs to the connection's end (RFC 9112 §6.3).
        has_te_ = true;
        std::string_view last;
        bool tokens = true;
        each_element(value, [&](std::string_view e) {
          last = trim_ows(e.substr(0, e.find(';')));
          for (char c : last) tokens = tokens && kTokenChar[static_cast<unsigned char>(c)];
          tokens = tokens && !last.empty();
        });
        // A list that is not of codings frames nothing: the answer's length cannot be known.
        if (!tokens || last.empty()) return bad("Transfer-Encoding '" + std::string(value.substr(0, 64)) + "'");
        chunked_ = token_is(last, "chunked");
        return true;
      }
      break;
    default:
      break;
  }
  if (!not_relayed(name)) head.headers.emplace_back(std::string(name), std::string(value));
  return true;
}

// The head is whole: how the body is framed (RFC 9112 §6.3), and whether the connection stays.
bool AnswerParser::end_head() {
  keep_alive_ = !conn_close_ && (http11_ || conn_keep_alive_);
  const unsigned status = head.status;
  if (status == 204 || status == 304) {  // never a body, whatever the fields say
    state_ = State::kDone;
  } else if (has_te_) {
    // Both framings: chunked wins, and the connection is not trusted after. Without chunked the
    // answer would run to the connection's end or stop at the length, depending on whom one asks
    // (the way answers are smuggled): refused.
    if (has_length_ && !chunked_) return bad("Transfer-Encoding without chunked, and a Content-Length");
    if (has_length_) keep_alive_ = false;
    state_ = chunked_ ? State::kChunkSize : State::kToEof;
  } else if (has_length_) {
    state_ = remaining_ > 0 ? State::kBody : State::kDone;
  } else {
    state_ = State::kToEof;
  }
  to_eof_ = state_ == State::kToEof;
  return true;
}

size_t AnswerParser::put(std::string_view data, Result& r) {
  if (!data.empty()) got_some_ = true;
  size_t at = 0;
  auto error = [&](std::string why) {
    r = fail(std::move(why));
    return at;
  };
  auto need_more = [&] {
    r = Result::kNeedMore;
    return at;
  };
  for (;;) {
    std::string_view rest = data.substr(at);
    switch (state_) {
      case State::kHead: {
        // Line by line, each parsed once, as it becomes whole: nothing is used until the head
        // is, so line_at_ (how far it has been parsed) stays valid across calls.
        if (Result h = section(rest, true); h != Result::kDone) {
          r = h;
          return at;
        }
        at += std::exchange(line_at_, 0);
        if (head.status < 200) {  // an interim answer (1xx): skipped, the real one follows
          if (head.status == 101) return error("101 Switching Protocols, which was not asked for");
          head = {};
          conn_close_ = conn_keep_alive_ = has_te_ = chunked_ = has_length_ = false;
          remaining_ = 0;
          continue;
        }
        if (!end_head()) return error_result(r, at);
        continue;
      }
      case State::kBody:
      case State::kChunkData: {
        size_t n = size_t(std::min<uint64_t>(remaining_, rest.size()));
        if (n > 0) pieces.push_back(rest.substr(0, n));
        at += n;
        remaining_ -= n;
        if (remaining_ > 0) return need_more();
        state_ = state_ == State::kBody ? State::kDone : State::kChunkDataEnd;
        continue;
      }
      case State::kToEof:
        if (!rest.empty()) pieces.push_back(rest);
        at = data.size();
        return need_more();
      case State::kChunkSize: {
        // chunk-size [BWS ; extensions] CRLF
        using message_lines::Status;
        std::string_view line;
        Status l = message_lines::line(rest, line_at_, message_lines::kChunkLineLimit, line);
        if (l == Status::kNeedMore) return need_more();
        if (l == Status::kOverLimit) return error("a chunk-size line over 4096 bytes");
        if (l == Status::kBadEnding) return error("a line not ended by CRLF");
        uint64_t size = 0;
        if (!message_lines::chunk_size(line, size)) {
          return error("chunk-size line '" + std::string(line.substr(0, 64)) + "'");
        }
        at += std::exchange(line_at_, 0);
        remaining_ = size;
        state_ = size > 0 ? State::kChunkData : State::kTrailers;
        continue;
      }
      case State::kChunkDataEnd:
        if (rest.size() < 2) return need_more();
        if (rest[0] != '\r' || rest[1] != '\n') return error("a chunk not followed by CRLF");
        at += 2;
        state_ = State::kChunkSize;
        continue;
      case State::kTrailers: {
        // Trailer fields, looked at and dropped, then the blank line that ends the answer.
        if (Result t = section(rest, false); t != Result::kDone) {
          r = t;
          return at;
        }
        at += std::exchange(line_at_, 0);
        state_ = State::kDone;
        continue;
      }
      case State::kDone:
        r = Result::kDone;
        return at;
      case State::kError:
        return error_result(r, at);
    }
  }
}

size_t AnswerParser::error_result(Result& r, size_t at) {
  r = Result::kError;
  return at;
}

AnswerParser::Result AnswerParser::put_eof() {
  if (state_ == State::kToEof) state_ = State::kDone;
  if (state_ == State::kDone) return Result::kDone;
  if (state_ == State::kError) return Result::kError;
  return fail("the connection ended before the answer did");
}

}  // namespace aicloud::http

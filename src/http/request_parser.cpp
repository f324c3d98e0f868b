#include "http/request_parser.h"

#include <algorithm>
#include <utility>

#include "http/fields.h"
#include "http/message_lines.h"

namespace aicloud::http {

namespace {

// A declared body is reserved for up to this much at once; a larger one grows as it comes, so
// that a client cannot make the server reserve its whole limit by declaring a length and
// sending nothing.
constexpr size_t kReserveLimit = 1 << 20;

// A body buffer up to this size is kept by the session for its next request.
constexpr size_t kKeepBodyCapacity = 64 * 1024;

bool is_target_char(char c) { return c > 0x20 && c < 0x7f; }  // visible ASCII

}  // namespace

void RequestParser::start(Request& req) {
  req.head_.clear();
  req.fields_.clear();
  // A large body's buffer is let go rather than kept for the next request: an idle keep-alive
  // connection would otherwise hold up to the body limit.
  if (req.body_.capacity() > kKeepBodyCapacity) {
    std::string().swap(req.body_);
  } else {
    req.body_.clear();
  }
  req.method_ = req.target_ = {};
  req.version_ = 11;
  req.keep_alive_ = true;
  req_ = &req;
  state_ = State::kHead;
  got_some_ = request_line_ = conn_close_ = conn_keep_alive_ = chunked_ = has_length_ = false;
  remaining_ = 0;
  line_at_ = 0;
  error_ = {};
}

bool RequestParser::fail(Error e) {
  state_ = State::kError;
  error_ = e;
  return false;
}

// The head's lines (the request line first) or the trailers' (checked, then dropped), from
// line_at_ to the blank line that ends them; the error when one is refused or the bytes break
// a limit. Field spans are taken from where the section starts.
RequestParser::Result RequestParser::section(std::string_view rest, bool head) {
  using namespace message_lines;
  head_base_ = rest.data();
  Status s = message_lines::section(rest, line_at_, head_limit_, [&](std::string_view line) {
    if (head && !request_line_) return parse_request_line(line) ? Next::kMore : Next::kRefused;
    if (line.empty()) return Next::kEnd;
    return parse_field_line(line, head) ? Next::kMore : Next::kRefused;
  });
  switch (s) {
    case Status::kWhole: return Result::kDone;
    case Status::kNeedMore: return Result::kNeedMore;
    case Status::kBadEnding: fail(Error::bad_line_ending); break;
    case Status::kOverLimit: fail(Error::header_limit); break;
    case Status::kRefused: break;  // (the line's parser set the error)
  }
  return Result::kError;
}

// METHOD SP request-target SP HTTP/1.x. The spans are offsets into the head, whose bytes start
// at the first line (nothing of the head is used until it is whole).
bool RequestParser::parse_request_line(std::string_view line) {
  size_t i = 0;
  while (i < line.size() && kTokenChar[static_cast<unsigned char>(line[i])]) ++i;
  if (i == 0 || i == line.size() || line[i] != ' ') return fail(Error::bad_method);
  req_->method_ = {0, uint32_t(i)};
  size_t t = ++i;
  while (i < line.size() && is_target_char(line[i])) ++i;
  if (i == t || i == line.size() || line[i] != ' ') return fail(Error::bad_target);
  req_->target_ = {uint32_t(t), uint32_t(i - t)};
  std::string_view version = line.substr(i + 1);
  if (version == "HTTP/1.1") {
    req_->version_ = 11;
  } else if (version == "HTTP/1.0") {
    req_->version_ = 10;
  } else {
    return fail(Error::bad_version);
  }
  request_line_ = true;
  return true;
}

bool RequestParser::parse_field_line(std::string_view line, bool keep) {
  size_t i = 0;
  while (i < line.size() && kTokenChar[static_cast<unsigned char>(line[i])]) ++i;
  if (i == 0 || i == line.size() || line[i] != ':') {
    // (A line that starts with a space or tab continues the field before it, an obsolete
    // folding that two readers could take apart differently: refused.)
    return fail(!line.empty() && is_ows(line[0]) ? Error::bad_value : Error::bad_field);
  }
  std::string_view name = line.substr(0, i), value = trim_ows(line.substr(i + 1));
  if (!value_chars_ok(value)) return fail(Error::bad_value);
  if (!keep) return true;  // a trailer: checked, then dropped

  switch (name.size()) {
    case 10:
      if (token_is(name, "connection")) {
        connection_options(value, conn_close_, conn_keep_alive_);
      }
      break;
    case 14:
      if (token_is(name, "content-length")) {
        // Digits only, and only one: a list, a sign or a second value could be read two ways.
        if (has_length_ || value.empty() || value.size() > 18) return fail(Error::bad_content_length);
        uint64_t n = 0;
        for (char c : value) {
          if (c < '0' || c > '9') return fail(Error::bad_content_length);
          n = n * 10 + uint64_t(c - '0');
        }
        has_length_ = true;
        remaining_ = n;
      }
      break;
    case 17:
      if (token_is(name, "transfer-encoding")) {
        // chunked is the one coding a request may come in here; anything else (or a second such
        // field) is refused rather than read one way while another reader reads it another.
        if (chunked_ || !token_is(value, "chunked")) return fail(Error::bad_transfer_encoding);
        chunked_ = true;
      }
      break;
    default:
      break;
  }
  req_->fields_.push_back({{uint32_t(name.data() - head_base_), uint32_t(name.size())},
                           {uint32_t(value.data() - head_base_), uint32_t(value.size())}});
  return true;
}

// The head is whole: the request's framing and the connection's fate, and the head's bytes kept.
bool RequestParser::end_head(std::string_view head) {
  Request& req = *req_;
  req.head_.assign(head);
  req.keep_alive_ = !conn_close_ && (req.version_ == 11 || conn_keep_alive_);
  if (chunked_) {
    if (has_length_) return fail(Error::bad_transfer_encoding);  // two framings: refused
    state_ = State::kChunkSize;
  } else if (has_length_) {
    if (remaining_ > body_limit_) return fail(Error::body_limit);  // at once, before the body is sent
    req.body_.reserve(size_t(std::min<uint64_t>(remaining_, kReserveLimit)));
    state_ = remaining_ > 0 ? State::kBody : State::kDone;
  } else {
    state_ = State::kDone;  // a request without framing has no body
  }
  return true;
}

size_t RequestParser::put(std::string_view data, Result& r) {
  if (!data.empty()) got_some_ = true;
  size_t at = 0;
  auto result = [&](Result x) {
    r = x;
    return at;
  };
  for (;;) {
    std::string_view rest = data.substr(at);
    switch (state_) {
      case State::kHead: {
        // Line by line, each parsed once, as it becomes whole: nothing is used until the head
        // is, so line_at_ (how far it has been parsed) stays valid across calls.
        if (Result h = section(rest, true); h != Result::kDone) return result(h);
        size_t head = std::exchange(line_at_, 0);
        if (!end_head(rest.substr(0, head))) return result(Result::kError);
        at += head;
        continue;
      }
      case State::kBody:
      case State::kChunkData: {
        size_t n = size_t(std::min<uint64_t>(remaining_, rest.size()));
        req_->body_.append(rest.data(), n);
        at += n;
        remaining_ -= n;
        if (remaining_ > 0) return result(Result::kNeedMore);
        state_ = state_ == State::kBody ? State::kDone : State::kChunkDataEnd;
        continue;
      }
      case State::kChunkSize: {
        // chunk-size [BWS ; extensions] CRLF
        using message_lines::Status;
        std::string_view line;
        Status l = message_lines::line(rest, line_at_, message_lines::kChunkLineLimit, line);
        if (l == Status::kNeedMore) return result(Result::kNeedMore);
        uint64_t size = 0;
        if (l != Status::kWhole || !message_lines::chunk_size(line, size)) {
          fail(l == Status::kBadEnding ? Error::bad_line_ending : Error::bad_chunk);
          return result(Result::kError);
        }
        if (size > body_limit_ - std::min<uint64_t>(body_limit_, req_->body_.size())) {
          fail(Error::body_limit);
          return result(Result::kError);
        }
        at += std::exchange(line_at_, 0);
        remaining_ = size;
        state_ = size > 0 ? State::kChunkData : State::kTrailers;
        continue;
      }
      case State::kChunkDataEnd:
        if (rest.size() < 2) return result(Result::kNeedMore);
        if (rest[0] != '\r' || rest[1] != '\n') {
          fail(Error::bad_chunk);
          return result(Result::kError);
        }
        at += 2;
        state_ = State::kChunkSize;
        continue;
      case State::kTrailers: {
        // Trailer fields, checked and dropped, then the blank line that ends the request.
        if (Result t = section(rest, false); t != Result::kDone) return result(t);
        at += std::exchange(line_at_, 0);
        state_ = State::kDone;
        continue;
      }
      case State::kDone:
        return result(Result::kDone);
      case State::kError:
        return result(Result::kError);
    }
  }
}

}  // namespace aicloud::http

// An incremental parser for a client's HTTP/1.x request (the server's, http/server.cpp), into a
// Request (http/request.h). It replaced Beast's request_parser, whose field container and table
// lookups were the largest user-space cost of reading a request (~4,800 instructions a request).
//
// What it accepts (RFC 9112), stricter than Beast where a request could be read two ways:
//   - a request line "METHOD SP origin-form-target SP HTTP/1.0|HTTP/1.1": the method a token,
//     the target visible ASCII bytes;
//   - fields "name: value" ended by CRLF: the name a token, the value without control bytes;
//     a field folded onto the next line is refused;
//   - the body framed by "Transfer-Encoding: chunked" (the only coding taken) or by one
//     Content-Length (digits only), never both; without either, no body. Chunks may carry
//     extensions (ignored) and trailers (checked and dropped).
// Errors are Beast's error codes (boost::beast::http::error), so that the server answers them as
// before: header_limit (431) for a head or trailers over the head limit, body_limit (413) for a
// body over its limit (a declared Content-Length at once), the others 400.
#pragma once
#include <boost/beast/http/error.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "http/request.h"

namespace aicloud::http {

class RequestParser {
 public:
  enum class Result { kNeedMore, kDone, kError };

  RequestParser(size_t head_limit, uint64_t body_limit) : head_limit_(head_limit), body_limit_(body_limit) {}

  // Begins a request, read into req (emptied; its buffers' capacity kept for the next request).
  // req must outlive the parse.
  void start(Request& req);

  // Parses data, which starts where the last call's used bytes ended, as far as it can: the
  // head once it is whole, then the body as it comes (copied into the request). Returns how many
  // bytes it used; what it did not use (a line not yet whole) must be given again with what
  // follows. r: done, need more, or error (error()). Bytes after a done request are not used.
  size_t put(std::string_view data, Result& r);

  bool got_some() const { return got_some_; }  // put() has been given a byte of this request
  bool head_done() const { return state_ > State::kHead; }
  bool done() const { return state_ == State::kDone; }
  boost::system::error_code error() const { return error_; }

 private:
  enum class State { kHead, kBody, kChunkSize, kChunkData, kChunkDataEnd, kTrailers, kDone, kError };
  using Error = boost::beast::http::error;

  bool fail(Error e);  // sets error_ and the error state; returns false
  // The lines of the head (the request line first) or of trailers, from line_at_ to the blank
  // line that ends them: kDone when line_at_ is past it.
  Result section(std::string_view rest, bool head);
  bool parse_request_line(std::string_view line);
  bool parse_field_line(std::string_view line, bool keep);
  bool end_head(std::string_view head);

  const size_t head_limit_;
  const uint64_t body_limit_;
  Request* req_ = nullptr;
  State state_ = State::kHead;
  bool got_some_ = false;
  bool request_line_ = false;  // the request line has been read
  bool conn_close_ = false, conn_keep_alive_ = false;  // Connection's tokens
  bool chunked_ = false, has_length_ = false;          // the body's framing
  uint64_t remaining_ = 0;  // body bytes (or the current chunk's) still to come
  size_t line_at_ = 0;      // how far the unused bytes' lines (the head's, trailers') were parsed
  const char* head_base_ = nullptr;  // where the section being parsed starts (field spans are from it)
  boost::system::error_code error_;
};

}  // namespace aicloud::http

// An incremental parser for an upstream's HTTP/1.1 answer (the upstream pool's, http/upstream.h).
//
// It keeps nothing a general message parser keeps: the fields a relay passes on go straight into
// an UpstreamHead (copied once), the rest are looked at and dropped, and the body's bytes are
// views into the caller's buffer (chunking removed), handed on before that buffer is consumed.
// Beast's basic_parser did the same job for ~4,000 instructions per answer, most of it a lookup
// of every field's name in its table of known fields and a token-list parse of Connection.
//
// What it accepts (RFC 9112), and what it refuses with an error:
//   - a status line "HTTP/1.x NNN [reason]"; 1xx answers other than 101 are skipped, as the
//     interim answers they are; 101 (an upgrade nobody asked for) is an error;
//   - fields "name: value" ended by CRLF; a name that is not a token, a field folded onto the
//     next line, a NUL/CR/LF in a value, or a head over kHeadLimit bytes is an error;
//   - the body framed by Transfer-Encoding (chunked last: chunks; else until the connection
//     ends, and an error with a Content-Length too), else by Content-Length (one value, or the
//     same value repeated), else, for 204, 304 and the body-less, none, else until the
//     connection ends;
//   - chunks with extensions (ignored) and trailers (looked at and dropped).
// Keep-alive follows the version (1.1 keeps, 1.0 does not) and Connection's close/keep-alive; a
// body that runs to the end of the connection leaves nothing to keep.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "http/upstream.h"

namespace aicloud::http {

class AnswerParser {
 public:
  enum class Result { kNeedMore, kDone, kError };
  static constexpr size_t kHeadLimit = 64 * 1024;  // the status line and fields (and trailers)

  // Parses data, which starts where the last call's used bytes ended, as far as it can: the head
  // once it is whole, then the body's bytes as they come (appended to `pieces`, views into data).
  // Returns how many bytes it used; what it did not use (an incomplete line) must be given again
  // with what follows. r says whether the answer is done, needs more, or is malformed (error()).
  size_t put(std::string_view data, Result& r);
  // The connection ended: completes an answer whose body runs to the end; anything else that is
  // not done yet is cut off (an error).
  Result put_eof();

  bool got_some() const { return got_some_; }  // put() has been given a byte
  bool head_done() const { return state_ > State::kHead; }
  bool done() const { return state_ == State::kDone; }
  bool keep_alive() const { return keep_alive_ && !to_eof_; }
  const std::string& error() const { return error_; }

  UpstreamHead head;                      // filled when the head is done (the callee may move from it)
  std::vector<std::string_view> pieces;   // body bytes found by put(): valid while its data is

 private:
  enum class State { kHead, kBody, kToEof, kChunkSize, kChunkData, kChunkDataEnd, kTrailers, kDone, kError };

  Result fail(std::string why);  // sets error_ and the error state
  bool bad(std::string why);     // fail(), for the parts that answer true or false
  static size_t error_result(Result& r, size_t at);
  // The lines of a head (the status line first) or of trailers, from line_at_ up to the blank
  // line that ends them: kDone when line_at_ is past it. Head fields are taken in; trailers
  // are only checked.
  Result section(std::string_view rest, bool head_section);
  bool parse_status(std::string_view line);
  // A field line: checked, then (keep) taken in; trailers are only checked.
  bool parse_field_line(std::string_view line, bool keep);
  bool parse_field(std::string_view name, std::string_view value);
  bool end_head();

  State state_ = State::kHead;
  bool got_some_ = false;
  bool keep_alive_ = true;
  bool to_eof_ = false;       // the body runs to the connection's end
  bool conn_close_ = false, conn_keep_alive_ = false;  // Connection's tokens
  bool has_te_ = false, chunked_ = false;             // Transfer-Encoding, and chunked last
  bool has_length_ = false;                           // Content-Length (in remaining_)
  uint64_t remaining_ = 0;    // body bytes (or the current chunk's) still to come
  size_t line_at_ = 0;        // how far the unused bytes' lines (a head's, trailers') were parsed
  bool http11_ = true;
  std::string error_;
};

}  // namespace aicloud::http

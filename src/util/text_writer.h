// Text written into room sized beforehand: the header lines of every request and answer the
// gateway relays. A std::string append checks the capacity (and a literal's length) for every
// piece; these were a tenth of a relayed request's instructions.
#pragma once
#include <cassert>
#include <charconv>
#include <concepts>
#include <cstring>
#include <string>
#include <string_view>

namespace aicloud {

class TextWriter {
 public:
  explicit TextWriter(char* at) : p_(at) {}

  // The room must be there: the caller sized it (append_within).
  TextWriter& put(std::string_view s) {
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
    return *this;
  }
  TextWriter& put(char c) {
    *p_++ = c;
    return *this;
  }
  // An integer in decimal: at most kMaxNumber bytes.
  template <std::integral T>
  TextWriter& num(T v) {
    p_ = std::to_chars(p_, p_ + kMaxNumber, v).ptr;
    return *this;
  }
  static constexpr size_t kMaxNumber = 20;  // 18446744073709551615, -9223372036854775808

  char* at() const { return p_; }

 private:
  char* p_;
};

// Appends to s what write(TextWriter&) writes, which must be at most `most` bytes.
template <class F>
void append_within(std::string& s, size_t most, F&& write) {
  const size_t from = s.size();
  s.resize(from + most);
  TextWriter w(s.data() + from);
  write(w);
  assert(w.at() <= s.data() + from + most);  // (a sanitizer build reports the overrun itself first)
  s.resize(size_t(w.at() - s.data()));
}

}  // namespace aicloud

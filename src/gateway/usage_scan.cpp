#include "gateway/usage_scan.h"

#include <array>
#include <cmath>
#include <optional>

#include "util/json_scan.h"
#include "util/json_util.h"

namespace aicloud::gateway {

namespace {

// The member names the scan follows; everything else is kOther.
enum class Key : uint8_t { kOther, kUsage, kTimings, kChoices, kPromptTokens, kCompletionTokens, kDetails, kCachedTokens, kCacheN };

Key key_of(std::string_view k) {
  if (k == "usage") return Key::kUsage;
  if (k == "timings") return Key::kTimings;
  if (k == "choices") return Key::kChoices;
  if (k == "prompt_tokens") return Key::kPromptTokens;
  if (k == "completion_tokens") return Key::kCompletionTokens;
  if (k == "prompt_tokens_details") return Key::kDetails;
  if (k == "cached_tokens") return Key::kCachedTokens;
  if (k == "cache_n") return Key::kCacheN;
  return Key::kOther;
}

// A json_scan handler that keeps the names of the containers it is inside, down to kDepth, and
// takes the numbers found at the places it wants. The document's root is `root`: a whole chunk
// (kOther), or a `usage` or `timings` member's own text (then that member is the root).
class Scan {
 public:
  Scan(Key root, UsageSeen& out)
      : root_(root), usage_at_(root == Key::kUsage ? 1 : 2), timings_at_(root == Key::kTimings ? 1 : 2), out_(out) {}

  // Numbers keep the last value of a name, as a tree does for a repeated one. A number of
  // another JSON type than an integer is read as one (cut to an integer); any other value is 0.
  bool number(const json_scan::Number& n) {
    switch (n.kind) {
      case json_scan::Number::Kind::kInteger: return value(n.integer);
      case json_scan::Number::Kind::kUnsigned: return value(n.unsigned_ > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(n.unsigned_));
      case json_scan::Number::Kind::kFloat: break;
    }
    return value(std::isfinite(n.floating) && std::fabs(n.floating) < 9e18 ? int64_t(n.floating) : 0);
  }
  bool null() {
    if (depth_ == 1 && root_ == Key::kOther && in_object(1) && key_ == Key::kChoices) out_.choices_empty = true;
    return value(0);
  }
  bool boolean(bool) { return value(0); }
  bool string(std::string_view, bool) { return value(0); }

  bool key(std::string_view raw, bool escaped) {
    item();
    key_ = key_of(escaped ? std::string_view(json_scan::unescape(raw)) : raw);
    return true;
  }
  bool start_object() { return open(true); }
  bool start_array() { return open(false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

 private:
  static constexpr int kDepth = 4;  // the deepest place read: usage.prompt_tokens_details.cached_tokens in a chunk

  bool in_object(int d) const { return d >= 1 && d <= kDepth && object_[d]; }
  Key name(int d) const { return d >= 1 && d <= kDepth ? names_[d] : Key::kOther; }
  // The name a value at the current depth has: its key inside an object, none inside an array.
  Key here() const { return in_object(depth_) ? key_ : Key::kOther; }

  // Something (a member or an element) appears in the container at the current depth.
  void item() {
    if (depth_ == 2 && choices_open_ && name(2) == Key::kChoices) ++choices_items_;
  }

  bool value(int64_t v) {
    if (depth_ == 0) return true;  // a bare scalar document: nothing to read
    if (in_object(depth_)) {       // (item() was counted at the key)
      if (depth_ == usage_at_ && name(depth_) == Key::kUsage) {
        if (key_ == Key::kPromptTokens) out_.prompt = v;
        if (key_ == Key::kCompletionTokens) out_.completion = v;
      } else if (depth_ == usage_at_ + 1 && name(depth_ - 1) == Key::kUsage && name(depth_) == Key::kDetails) {
        if (key_ == Key::kCachedTokens) details_cached_ = v;
      } else if (depth_ == timings_at_ && name(depth_) == Key::kTimings) {
        if (key_ == Key::kCacheN) cache_n_ = v;
      }
    } else {
      item();
    }
    return true;
  }

  bool open(bool object) {
    Key n = depth_ == 0 ? root_ : here();
    if (!in_object(depth_)) item();
    ++depth_;
    if (depth_ <= kDepth) {
      names_[depth_] = n;
      object_[depth_] = object;
    }
    if (depth_ == usage_at_ && n == Key::kUsage && object) out_.usage = true;
    if (depth_ == 2 && root_ == Key::kOther && n == Key::kChoices) {
      choices_open_ = true;
      choices_items_ = 0;
    }
    return true;
  }

  bool close() {
    if (depth_ == 2 && choices_open_ && name(2) == Key::kChoices) {
      out_.choices_empty = choices_items_ == 0;
      choices_open_ = false;
    }
    --depth_;
    return true;
  }

 public:
  // After a whole document: the cached count, as the usage reports it or llama-server's timings.
  void settle() { out_.cached = details_cached_ > 0 ? details_cached_ : cache_n_; }

 private:
  const Key root_;
  const int usage_at_, timings_at_;  // the depths of the usage and timings objects
  UsageSeen& out_;
  int depth_ = 0;
  Key key_ = Key::kOther;
  std::array<Key, kDepth + 1> names_{};  // [d]: the name the container at depth d was found under
  std::array<bool, kDepth + 1> object_{};
  bool choices_open_ = false;
  int64_t choices_items_ = 0;
  int64_t details_cached_ = 0, cache_n_ = 0;
};

bool scan(std::string_view text, Key root, UsageSeen& out) {
  Scan s(root, out);
  if (!json_scan::scan(text, s)) return false;
  s.settle();
  return true;
}

}  // namespace

bool scan_usage(std::string_view doc, UsageSeen& out) {
  UsageSeen seen;
  if (!scan(doc, Key::kOther, seen)) return false;
  out = seen;
  return true;
}

bool scan_answer_usage(std::string_view body, UsageSeen& out) {
  std::optional<std::string_view> u, t;  // the last of each, as a parsed tree keeps it
  for_each_top_level_member(body, [&](std::string_view k, std::string_view v) {
    if (k == "usage") u = v;
    else if (k == "timings") t = v;
    return true;
  });
  if (!u) return false;
  UsageSeen seen;
  if (!scan(*u, Key::kUsage, seen) || !seen.usage) return false;
  if (UsageSeen timings; t && seen.cached == 0 && scan(*t, Key::kTimings, timings)) seen.cached = timings.cached;
  out = seen;
  return true;
}

}  // namespace aicloud::gateway

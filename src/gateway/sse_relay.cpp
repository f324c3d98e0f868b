#include "gateway/sse_relay.h"

#include "util/find.h"

namespace aicloud::gateway {

namespace {

constexpr std::string_view kBlank = "\n\n", kData = "data: ", kDone = "data: [DONE]\n\n", kUsageKey = "\"usage\"";
constexpr size_t npos = std::string_view::npos;

}  // namespace

bool SseRelay::read_usage(std::string_view event) {
  if (!event.starts_with(kData)) return false;
  UsageSeen u;
  if (!scan_usage(event.substr(kData.size(), event.size() - kData.size() - kBlank.size()), u) || !u.usage) return false;
  usage_ = u;
  // The usage-only chunk asked for on the client's behalf is not theirs to see.
  return !client_wants_usage_ && u.choices_empty;
}

void SseRelay::put(std::string_view data, std::string& out) {
  // A newline right after a boundary makes another one with the newline before it (a run of
  // three or more): a lone "\n" between two events, forwarded. Taken here, where the read's
  // text alone would not show the pair that straddles the reads.
  while (tail_.empty() && after_boundary_ && !data.empty() && data.front() == '\n') {
    out.push_back('\n');
    data.remove_prefix(1);
  }
  std::string_view s = data;
  if (!tail_.empty()) s = tail_.append(data);
  // The events are read where they lie (in the upstream's read buffer, or in tail_ after an
  // incomplete one): only what is forwarded is copied, in runs. The usage key is searched for
  // once over the read, not once per event: its next position, moved on past each event that
  // holds it.
  size_t usage = find(s, kUsageKey);
  size_t run = 0;    // s[run, ...) is not appended yet
  size_t begin = 0;  // the current event's first byte
  for (size_t pos; (pos = s.find(kBlank, begin)) != npos;) {
    const size_t after = pos + 2;  // a boundary: the event [begin, after) is whole
    const std::string_view ev = s.substr(begin, after - begin);
    bool drop = false;
    if (ev == kDone) {
      held_.append(ev);
      drop = true;
    } else if (usage < after) {  // (usage >= begin: earlier events moved it on)
      usage = find(s, kUsageKey, after);
      drop = read_usage(ev);
    }
    if (drop) {
      out.append(s.substr(run, begin - run));
      run = after;
    }
    // Newlines right after a boundary: each makes another with the newline before it, a lone
    // "\n" between two events, forwarded as it is.
    for (begin = after; begin < s.size() && s[begin] == '\n';) ++begin;
  }
  const size_t end = begin;  // past the last whole event; the rest waits in tail_
  out.append(s.substr(run, end - run));
  if (end > 0) after_boundary_ = true;
  if (s.data() == tail_.data()) {
    tail_.erase(0, end);
  } else {
    tail_.assign(s.substr(end));
  }
}

}  // namespace aicloud::gateway

// A streamed answer's events on their way from a replica to the client. The gateway forwards
// them as they come, reads the usage from them, holds `data: [DONE]` back until the usage
// record is durable, and drops the usage-only chunk it asked for on the client's behalf.
//
// Events end at a blank line ("\n\n"). A position just past a "\n\n" is a boundary; an event is
// the text between one boundary and the next (a run of three newlines leaves a lone "\n"
// between two, which is forwarded as it is). What follows a read's last boundary is kept until
// the next read completes it.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "gateway/usage_scan.h"

namespace aicloud::gateway {

class SseRelay {
 public:
  explicit SseRelay(bool client_wants_usage) : client_wants_usage_(client_wants_usage) {}

  // Takes what one upstream read brought and appends the events it completes to `out`, less
  // those held or dropped.
  void put(std::string_view data, std::string& out);

  // The last usage a `data:` event reported (its chunk is valid and has a usage object).
  const std::optional<UsageSeen>& usage() const { return usage_; }
  // The [DONE] events held back, for the end.
  std::string& held() { return held_; }
  // The incomplete event's bytes, waiting for the next read.
  size_t pending() const { return tail_.size(); }
  // Forgets the incomplete event (the stream was refused).
  void drop_pending() { tail_ = {}; }

 private:
  // Reads the usage of one whole event; true when the event is not to be forwarded.
  bool read_usage(std::string_view event);

  bool client_wants_usage_;
  std::string tail_, held_;
  bool after_boundary_ = false;  // tail_ starts at a boundary past the stream's start
  std::optional<UsageSeen> usage_;
};

}  // namespace aicloud::gateway

// Substring search for short needles in text where the needle's first byte is common: a quoted
// JSON key ("usage") in a JSON document, where string_view::find stops at every quote.
#pragma once
#include <string_view>

namespace aicloud {

// Whether `needle` occurs in `hay`. Candidates are the positions where the needle's second and
// second-to-last bytes both match, tested 16 at a time (SSE2), then compared whole.
bool contains(std::string_view hay, std::string_view needle);

}  // namespace aicloud

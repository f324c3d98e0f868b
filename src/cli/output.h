// How the CLI shows API objects to a person: aligned tables with headers, one object as
// "FIELD  value" lines, times as UTC ISO-8601. (-o json bypasses all of this.)
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "util/json_util.h"

namespace aicloud::cli {

// A column: its header and how to make its cell from an object.
struct Column {
  std::string header;
  std::function<std::string(const json& obj)> cell;
};

// The value at `path` ("name", or "actor.id" for a nested field); null or missing is "-".
Column field(std::string header, std::string path);
// The unix time (seconds) at `path`, shown as 2024-05-01T12:00:00Z.
Column time_field(std::string header, std::string path);

std::string format_time(int64_t unix_seconds);
// A JSON value as a cell: strings as they are, null as "-", anything else as compact JSON.
std::string cell_text(const json& v);

// One row per element of `rows` (an array), with a header line.
void print_table(std::ostream& out, const std::vector<Column>& columns, const json& rows);
// One object, one "HEADER  value" line per column.
void print_object(std::ostream& out, const std::vector<Column>& columns, const json& obj);
// A response body as indented JSON, keeping the server's key order.
void print_json(std::ostream& out, const std::string& body);

}  // namespace aicloud::cli

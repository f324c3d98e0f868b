#include "cli/output.h"

#include <ctime>

namespace aicloud::cli {

static const json* at_path(const json& obj, const std::string& path) {
  const json* cur = &obj;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(key);
    if (it == cur->end()) return nullptr;
    cur = &*it;
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

std::string cell_text(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

Column field(std::string header, std::string path) {
  return {std::move(header), [path = std::move(path)](const json& o) {
            const json* v = at_path(o, path);
            return v ? cell_text(*v) : "-";
          }};
}

Column time_field(std::string header, std::string path) {
  return {std::move(header), [path = std::move(path)](const json& o) {
            const json* v = at_path(o, path);
            if (v && v->is_number_integer()) return format_time(v->get<int64_t>());
            return v ? cell_text(*v) : "-";
          }};
}

std::string format_time(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  if (!gmtime_r(&t, &tm)) return std::to_string(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Cells come from tenants (names, emails): control characters would break the layout or
// drive the terminal, so they are shown as '?'. An empty cell is "-", so that columns stay readable.
static std::string printable(std::string s) {
  if (s.empty()) return "-";
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return s;
}

// Display width in characters (UTF-8 continuation bytes do not count).
static size_t width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

static void print_row(std::ostream& out, const std::vector<std::string>& cells, const std::vector<size_t>& widths) {
  for (size_t i = 0; i < cells.size(); ++i) {
    out << cells[i];
    if (i + 1 < cells.size()) out << std::string(widths[i] - width(cells[i]) + 2, ' ');
  }
  out << '\n';
}

void print_table(std::ostream& out, const std::vector<Column>& columns, const json& rows) {
  std::vector<std::vector<std::string>> lines(1);
  for (const auto& c : columns) lines[0].push_back(c.header);
  if (rows.is_array()) {
    for (const auto& r : rows) {
      auto& line = lines.emplace_back();
      for (const auto& c : columns) line.push_back(printable(c.cell(r)));
    }
  }
  std::vector<size_t> widths(columns.size(), 0);
  for (const auto& line : lines) {
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], width(line[i]));
  }
  for (const auto& line : lines) print_row(out, line, widths);
}

void print_object(std::ostream& out, const std::vector<Column>& columns, const json& obj) {
  size_t w = 0;
  for (const auto& c : columns) w = std::max(w, width(c.header));
  for (const auto& c : columns) print_row(out, {c.header, printable(c.cell(obj))}, {w, 0});
}

void print_json(std::ostream& out, const std::string& body) {
  out << nlohmann::ordered_json::parse(body).dump(2, ' ', false, json::error_handler_t::replace) << '\n';
}

}  // namespace aicloud::cli

#include "cli/command_kit.h"

#include <CLI/CLI.hpp>

#include <cctype>
#include <cstring>
#include <algorithm>
#include <ctime>
#include <iostream>

#include "cli/errors.h"

namespace aicloud::cli {

Api server(const Flags& f) { return Api(resolve_settings(f.global), json_output(f)); }

CLI::App* noun(CLI::App& app, const std::string& name, const std::string& help) {
  CLI::App* n = app.add_subcommand(name, help);
  n->require_subcommand(1);
  return n;
}

CLI::App* verb(CLI::App* parent, const std::string& name, const std::string& help, std::function<void()> run) {
  CLI::App* v = parent->add_subcommand(name, help);
  v->callback(std::move(run));
  return v;
}

void id_arg(CLI::App* v, Flags& f, const std::string& what) { v->add_option("id", f.id, what)->required(); }

void paging_flags(CLI::App* v, Flags& f) {
  v->add_option("--limit", f.limit, "At most this many (1-100, default 20)");
  v->add_option("--after", f.after, "Start after this id (the last id of the previous page)");
}

std::vector<Column> operator+(std::vector<Column> a, const std::vector<Column>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Api::Printer list_of(std::vector<Column> columns) {
  return [columns = std::move(columns)](const json& r) {
    print_table(std::cout, columns, r.value("data", json::array()));
    if (r.value("has_more", false)) std::cerr << "(more: --after " << cell_text(r.value("last_id", json())) << ")\n";
  };
}
Api::Printer one(std::vector<Column> columns) {
  return [columns = std::move(columns)](const json& r) { print_object(std::cout, columns, r); };
}
Api::Printer deleted() {
  return [](const json& r) { std::cout << "Deleted " << cell_text(r.value("id", json())) << "\n"; };
}

json fields(std::initializer_list<std::pair<const char*, std::string>> kv) {
  json b = json::object();
  for (const auto& [k, v] : kv) {
    if (!v.empty()) b[k] = v;
  }
  return b;
}

void put_int(json& body, const char* key, int64_t v) {
  if (v != kUnset) body[key] = v;
}

std::string seg(const std::string& id) { return "/" + url_encode(id); }

bool is_operator_key(const std::string& key) { return key.rfind("sk-root-", 0) == 0; }

// ---- what people type ----------------------------------------------------------------------------

namespace {

CliError usage(const std::string& flag, const std::string& text, const std::string& want) {
  return CliError(flag + ": '" + text + "' is not " + want, kExitUsage);
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() <= 15 && s.find_first_not_of("0123456789") == std::string::npos;
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

bool leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// The date of a day number (the inverse of days_from_civil).
void civil_from_days(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

unsigned month_days(int64_t y, unsigned m) {
  static const unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return kDays[m - 1] + (m == 2 && leap(y));
}

}  // namespace

int64_t parse_time(const std::string& flag, const std::string& text) {
  const std::string want = "a time: a date (2027-01-01), a date and time (2027-01-01T12:00:00Z), unix seconds or 'now'";
  if (text == "now") return static_cast<int64_t>(std::time(nullptr));
  if (all_digits(text)) return std::stoll(text);
  // YYYY-MM-DD[(T| )HH:MM[:SS]][Z], digits where digits belong.
  auto num = [&](size_t at, size_t n, unsigned& out) {
    if (at + n > text.size()) return false;
    out = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(text[i]))) return false;
      out = out * 10 + unsigned(text[i] - '0');
    }
    return true;
  };
  auto is = [&](size_t at, const char* chars) { return at < text.size() && std::strchr(chars, text[at]); };
  unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  if (!num(0, 4, y) || !is(4, "-") || !num(5, 2, mo) || !is(7, "-") || !num(8, 2, d)) throw usage(flag, text, want);
  size_t at = 10;
  if (at < text.size()) {
    if (!is(10, "T ") || !num(11, 2, h) || !is(13, ":") || !num(14, 2, mi)) throw usage(flag, text, want);
    at = 16;
    if (is(at, ":")) {
      if (!num(17, 2, s)) throw usage(flag, text, want);
      at = 19;
    }
    if (is(at, "Z")) ++at;
    if (at != text.size()) throw usage(flag, text, want);
  }
  if (mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo) || h > 23 || mi > 59 || s > 59) {
    throw usage(flag, text, "a valid date and time");
  }
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

int64_t parse_duration(const std::string& flag, const std::string& text) {
  const std::string want = "a duration such as 3600, 90m, 12h, 30d, 6mo or 1y";
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  std::string num = text.substr(0, i), unit = text.substr(i);
  if (!all_digits(num) || num.size() > 9) throw usage(flag, text, want);
  int64_t n = std::stoll(num);
  int64_t mult = unit.empty() || unit == "s" ? 1
                 : unit == "m"                ? 60
                 : unit == "h"                ? 3600
                 : unit == "d"                ? 86400
                 : unit == "w"                ? 7 * 86400
                 : unit == "mo"               ? 30 * 86400
                 : unit == "y"                ? 365 * 86400
                                              : 0;
  if (mult == 0) throw usage(flag, text, want);
  return n * mult;
}

int64_t add_duration(const std::string& flag, int64_t start, const std::string& text) {
  int64_t seconds = parse_duration(flag, text);  // validates the text
  bool years = text.size() > 1 && text.back() == 'y';
  bool months = text.size() > 2 && text.compare(text.size() - 2, 2, "mo") == 0;
  if (!years && !months) return start + seconds;
  int64_t n = std::stoll(text.substr(0, text.size() - (years ? 1 : 2))) * (years ? 12 : 1);
  int64_t day = start >= 0 ? start / 86400 : (start - 86399) / 86400, tod = start - day * 86400;
  int64_t y = 0;
  unsigned m = 0, d = 0;
  civil_from_days(day, y, m, d);
  int64_t total = y * 12 + (m - 1) + n;
  y = total / 12;
  m = unsigned(total % 12) + 1;
  d = std::min(d, month_days(y, m));  // Jan 31 + 1mo is Feb 28 (or 29)
  return days_from_civil(y, m, d) * 86400 + tod;
}

int64_t parse_micros(const std::string& flag, const std::string& text) {
  const std::string want = "an amount in dollars such as 2.35";
  std::string t = !text.empty() && text[0] == '$' ? text.substr(1) : text;
  if (t.empty()) throw usage(flag, text, want);
  size_t dot = t.find('.');
  std::string whole = t.substr(0, dot), frac = dot == std::string::npos ? "" : t.substr(dot + 1);
  if (whole.empty()) whole = "0";
  if (!all_digits(whole) || whole.size() > 9 || frac.size() > 6 ||
      (!frac.empty() && frac.find_first_not_of("0123456789") != std::string::npos) || (dot != std::string::npos && frac.empty())) {
    throw usage(flag, text, want);
  }
  frac.resize(6, '0');
  return std::stoll(whole) * 1'000'000 + std::stoll(frac);
}

json parse_pairs(const std::string& flag, const std::vector<std::string>& pairs) {
  json out = json::object();
  for (const auto& p : pairs) {
    auto eq = p.find('=');
    if (eq == std::string::npos || eq == 0) throw usage(flag, p, "KEY=VALUE");
    out[p.substr(0, eq)] = p.substr(eq + 1);
  }
  return out;
}

std::string format_micros(int64_t micros) {
  std::string sign = micros < 0 ? "-" : "";
  uint64_t m = micros < 0 ? uint64_t(0) - uint64_t(micros) : uint64_t(micros);
  std::string frac = std::to_string(m % 1'000'000);
  frac.insert(0, 6 - frac.size(), '0');
  while (frac.size() > 2 && frac.back() == '0') frac.pop_back();
  return sign + "$" + std::to_string(m / 1'000'000) + "." + frac;
}

std::string format_command(const json& argv) {
  if (!argv.is_array()) return cell_text(argv);
  // One argument is a shell command line (the agent runs it with sh -c): shown as it is.
  if (argv.size() == 1 && argv[0].is_string()) return argv[0].get<std::string>();
  std::string out;
  for (const auto& a : argv) {
    std::string s = a.is_string() ? a.get<std::string>() : a.dump();
    bool plain = !s.empty() && s.find_first_of(" \t\n'\"\\$`;&|<>()*?!#~") == std::string::npos;
    if (!out.empty()) out += ' ';
    if (plain) {
      out += s;
    } else {
      out += '\'';
      for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

}  // namespace aicloud::cli

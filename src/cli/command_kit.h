// The building blocks that every group of CLI commands shares: nouns and verbs on CLI11, the
// usual printers (a list, one object, a deletion), request bodies from flags, and the parsing of
// what people type for times, durations, amounts and KEY=VALUE pairs.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "cli/api.h"
#include "cli/commands.h"
#include "cli/output.h"

namespace CLI {
class App;
}

namespace aicloud::cli {

// The server, as the resolved settings name it.
Api server(const Flags& f);
inline bool json_output(const Flags& f) { return f.output == "json"; }
inline Request::Query paging(const Flags& f) { return {{"limit", f.limit}, {"after", f.after}}; }

// `aicloud NOUN`: needs one verb.
CLI::App* noun(CLI::App& app, const std::string& name, const std::string& help);
// `aicloud NOUN VERB`, running `run`.
CLI::App* verb(CLI::App* parent, const std::string& name, const std::string& help, std::function<void()> run);
// The verb's required positional id.
void id_arg(CLI::App* v, Flags& f, const std::string& what);
// --limit and --after.
void paging_flags(CLI::App* v, Flags& f);

std::vector<Column> operator+(std::vector<Column> a, const std::vector<Column>& b);

// Printers for the usual answers: a list, one object, a deletion.
Api::Printer list_of(std::vector<Column> columns);
Api::Printer one(std::vector<Column> columns);
Api::Printer deleted();

// A JSON body of the given string fields, leaving out the empty ones (flags that were not given).
json fields(std::initializer_list<std::pair<const char*, std::string>> kv);
// Adds an integer flag's value to body unless the flag was not given (kUnset).
void put_int(json& body, const char* key, int64_t v);

// "/" + the id, percent-encoded: one path segment whatever the user typed.
std::string seg(const std::string& id);

bool is_operator_key(const std::string& key);

// ---- what people type (each throws CliError with kExitUsage, naming the flag) -----------------

// A point in time: unix seconds ("1767225600"), a date ("2027-01-01", midnight UTC), a date and
// time ("2027-01-01T12:30", "2027-01-01T12:30:00Z", "2027-01-01 12:30:00"), or "now".
int64_t parse_time(const std::string& flag, const std::string& text);
// A duration: seconds ("3600"), or a number with a unit: s, m (minutes), h, d, w, mo (30 days),
// y (365 days), e.g. "90m", "30d", "1y".
int64_t parse_duration(const std::string& flag, const std::string& text);
// start + a duration, where years and months are calendar ones: 2027-01-01 + 3y is 2030-01-01,
// 2027-01-31 + 1mo is 2027-02-28.
int64_t add_duration(const std::string& flag, int64_t start, const std::string& text);
// An amount of money in dollars ("2.35", "$2.35") as millionths of a dollar.
int64_t parse_micros(const std::string& flag, const std::string& text);
// KEY=VALUE pairs into a JSON object of strings.
json parse_pairs(const std::string& flag, const std::vector<std::string>& pairs);

// Money in millionths of a dollar as "$2.35" (more digits when needed).
std::string format_micros(int64_t micros);
// A command line for a person to read: arguments with spaces or quotes are single-quoted.
std::string format_command(const json& argv);

}  // namespace aicloud::cli

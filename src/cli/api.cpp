#include "cli/api.h"

#include <cctype>
#include <iostream>

#include "cli/errors.h"
#include "cli/output.h"

namespace aicloud::cli {

std::string url_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

Api::Api(Settings settings, bool json_output) : settings_(std::move(settings)), json_output_(json_output) {}
Api::~Api() = default;

static std::string target(const Request& r) {
  std::string t = r.path;
  char sep = '?';
  for (const auto& [k, v] : r.query) {
    if (v.empty()) continue;
    t += sep + url_encode(k) + "=" + url_encode(v);
    sep = '&';
  }
  return t;
}

// "Connection refused" out of the client's "cannot connect to ... at URL: Connection refused (is it
// running? ...)": the CLI words the rest itself.
static std::string connection_reason(std::string what) {
  if (auto hint = what.find(" (is it running"); hint != std::string::npos) what.resize(hint);
  if (auto colon = what.rfind(": "); colon != std::string::npos) what = what.substr(colon + 2);
  return what;
}

// The server's {"error": {...}} as one line, with a hint where the CLI knows the way out.
static std::string error_line(const http::ClientResponse& res, const Settings& s) {
  std::string message, param, code;
  try {
    json e = json::parse(res.body).at("error");
    message = e.value("message", "");
    if (e.contains("param") && e["param"].is_string()) param = e["param"];
    if (e.contains("code") && e["code"].is_string()) code = e["code"];
  } catch (const json::exception&) {
    message = res.body.substr(0, 200);
  }
  if (message.empty()) message = "the server answered HTTP " + std::to_string(res.status);
  std::string line = message;
  if (!param.empty()) line += " (param: " + param + ")";
  line += " [HTTP " + std::to_string(res.status) + "]";
  if (res.status == 401 && s.api_key.empty()) {
    line += "; log in with `aicloud login`, or pass --api-key / set AICLOUD_API_KEY";
  } else if (param == "OpenAI-Organization") {
    line += "; choose one with --org ORG_ID or AICLOUD_ORG";
  } else if (code == "project_required" || param == "OpenAI-Project") {
    line += "; choose one with --project PROJECT_ID or AICLOUD_PROJECT, or use a project key";
  }
  return line;
}

json Api::call(const Request& r, bool with_credential) {
  std::vector<std::pair<std::string, std::string>> headers;
  if (with_credential && !settings_.api_key.empty()) headers.emplace_back("Authorization", "Bearer " + settings_.api_key);
  if (!settings_.org.empty()) headers.emplace_back("OpenAI-Organization", settings_.org);
  if (!settings_.project.empty()) headers.emplace_back("OpenAI-Project", settings_.project);

  http::ClientResponse res;
  try {
    if (!client_) client_ = std::make_unique<http::Client>(settings_.url);
    res = client_->request(r.method, target(r), r.body.is_null() ? "" : r.body.dump(), headers);
  } catch (const std::invalid_argument& e) {
    throw CliError(std::string("invalid server URL: ") + e.what());
  } catch (const http::ConnectionError& e) {
    throw CliError("cannot reach the aicloud server at " + settings_.url + " (" + connection_reason(e.what()) +
                   "); start it with `aicloud server`, or set its URL with --url, AICLOUD_URL or url in " +
                   config_path());
  }
  if (res.status >= 400) throw CliError(error_line(res, settings_));
  try {
    last_body_ = std::move(res.body);
    return last_body_.empty() ? json::object() : json::parse(last_body_);
  } catch (const json::exception&) {
    throw CliError("the server at " + settings_.url + " answered HTTP " + std::to_string(res.status) +
                   " with a body that is not JSON; is that an aicloud server?");
  }
}

json Api::show(const Request& r, const Printer& table) {
  json res = call(r);
  if (json_output_) {
    print_json(std::cout, last_body_.empty() ? "{}" : last_body_);
  } else {
    table(res);
  }
  return res;
}

}  // namespace aicloud::cli

#include "cli/config.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "cli/errors.h"

namespace aicloud::cli {
namespace fs = std::filesystem;

static std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string config_path() {
  if (auto p = env("AICLOUD_CONFIG"); !p.empty()) return p;
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = getpwuid(getuid())) home = pw->pw_dir;
  }
  if (home.empty()) throw CliError("cannot find the home directory for the config file; set AICLOUD_CONFIG");
  return (fs::path(home) / ".config" / "aicloud" / "config.toml").string();
}

static std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// A TOML basic string's body: "..." with \" and \\ escapes.
static bool unquote(const std::string& v, std::string& out) {
  if (v.size() < 2 || v.front() != '"' || v.back() != '"') return false;
  out.clear();
  for (size_t i = 1; i + 1 < v.size(); ++i) {
    char c = v[i];
    if (c == '\\') {
      if (i + 2 >= v.size()) return false;
      c = v[++i];
      if (c != '"' && c != '\\') return false;
    } else if (c == '"') {
      return false;
    }
    out += c;
  }
  return true;
}

static std::string quote(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

Settings read_config(const std::string& path) {
  Settings s;
  std::error_code ec;
  if (!fs::exists(path, ec)) return s;
  std::ifstream f(path);
  if (!f) throw CliError("cannot read the config file " + path);
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    auto eq = t.find('=');
    std::string key = eq == std::string::npos ? "" : trim(t.substr(0, eq)), value;
    if (key.empty() || !unquote(trim(t.substr(eq + 1)), value)) {
      throw CliError(path + ":" + std::to_string(n) + ": expected a line like url = \"http://127.0.0.1:8080\"");
    }
    if (key == "url") s.url = value;
    if (key == "api_key") s.api_key = value;
    if (key == "org") s.org = value;
    if (key == "project") s.project = value;
  }
  return s;
}

void write_config(const std::string& path, const Settings& s) {
  std::string text = "# aicloud CLI settings, written by `aicloud login`.\n";
  if (!s.url.empty()) text += "url = " + quote(s.url) + "\n";
  if (!s.api_key.empty()) text += "api_key = " + quote(s.api_key) + "\n";
  if (!s.org.empty()) text += "org = " + quote(s.org) + "\n";
  if (!s.project.empty()) text += "project = " + quote(s.project) + "\n";

  auto fail = [&](const std::string& what) {
    return CliError("cannot write the config file " + path + ": " + what + ": " + std::strerror(errno));
  };
  fs::path dir = fs::path(path).parent_path();
  if (!dir.empty() && !fs::exists(dir)) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw CliError("cannot create " + dir.string() + ": " + ec.message());
    ::chmod(dir.c_str(), 0700);
  }
  // Written to a private temporary file, then renamed over the old one: never world-readable,
  // never half-written.
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw fail("open");
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, text.data(), text.size()) == ssize_t(text.size()) &&
            ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    CliError e = fail("write");
    ::unlink(tmp.c_str());
    throw e;
  }
}

Settings resolve_settings(const Settings& flags) {
  Settings file = read_config(config_path());
  auto pick = [](const std::string& flag, const char* env_name, const std::string& from_file) {
    if (!flag.empty()) return flag;
    if (auto e = env(env_name); !e.empty()) return e;
    return from_file;
  };
  Settings s;
  s.url = pick(flags.url, "AICLOUD_URL", file.url);
  if (s.url.empty()) s.url = kDefaultUrl;
  s.api_key = pick(flags.api_key, "AICLOUD_API_KEY", file.api_key);
  s.org = pick(flags.org, "AICLOUD_ORG", file.org);
  s.project = pick(flags.project, "AICLOUD_PROJECT", file.project);
  return s;
}

}  // namespace aicloud::cli

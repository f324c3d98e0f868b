// Where the CLI finds its server, credential, organization and project. Each setting comes from
// its flag (--url, --api-key, --org, --project), else the environment (AICLOUD_URL,
// AICLOUD_API_KEY, AICLOUD_ORG, AICLOUD_PROJECT), else the config file, else a default (only the
// URL has one).
#pragma once
#include <string>

namespace aicloud::cli {

inline constexpr const char* kDefaultUrl = "http://127.0.0.1:8080";

struct Settings {
  std::string url;
  std::string api_key;  // a key (sk-...) or a session token from `aicloud login` (sess-...)
  std::string org;      // sent as OpenAI-Organization when not empty
  std::string project;  // sent as OpenAI-Project when not empty (project keys need none)
};

// $AICLOUD_CONFIG, else ~/.config/aicloud/config.toml.
std::string config_path();

// The config file holds `key = "value"` lines (url, api_key, org, project); `#` starts a comment and
// other keys are ignored. A missing file is empty settings; a malformed line throws CliError.
Settings read_config(const std::string& path);

// Writes the non-empty settings, creating the directory; the file is private (mode 0600)
// because it holds a credential, and is replaced atomically.
void write_config(const std::string& path, const Settings& s);

// flags > environment > config file > default.
Settings resolve_settings(const Settings& flags);

}  // namespace aicloud::cli

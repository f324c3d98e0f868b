// Model files on a node: a cache of GGUFs fetched from the server, and the resumable HTTP(S)
// download under it (which `aicloud models pull` uses too).
//
// A file is fetched into DEST.partial (with DEST.partial.json saying from where), resumed with a
// Range request after a dropped connection or a restart, hashed as it arrives, checked against
// the expected sha256 and size, and only then renamed to DEST: a DEST that exists is whole and
// verified. A mismatch deletes the partial file: nothing unverified is kept.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace aicloud {

struct FetchProgress {
  uint64_t done = 0;          // bytes of the file on disk so far
  uint64_t total = 0;         // 0 while unknown
  uint64_t resumed_from = 0;  // bytes that were already there when this fetch started
};

struct FetchOptions {
  std::vector<std::pair<std::string, std::string>> headers;  // e.g. Authorization (not sent on to other hosts)
  std::string expected_sha256;  // hex; "" = not checked (FetchResult says what it was)
  uint64_t expected_size = 0;   // 0 = not checked
  // Connections in a row that bring no new byte before giving up (the partial file is kept, so a
  // later call resumes); a connection that made progress resets the count.
  int max_attempts = 5;
  std::chrono::milliseconds connect_timeout{15'000};
  std::chrono::milliseconds idle_timeout{60'000};  // no byte for this long: reconnect
  std::chrono::milliseconds retry_backoff{500};    // doubled after each fruitless attempt, at most 8 s
  int max_redirects = 5;
  std::function<void(const FetchProgress&)> progress;  // after each piece written
};

struct FetchResult {
  std::string path;
  std::string sha256;
  uint64_t bytes = 0;
  uint64_t resumed_from = 0;
};

// Why a fetch failed. http_status is the server's answer when it refused (404, 401, ...), 0 for
// a network failure; partial_kept says whether a later call can resume.
struct FetchError : std::runtime_error {
  FetchError(const std::string& what, unsigned status, bool kept)
      : std::runtime_error(what), http_status(status), partial_kept(kept) {}
  unsigned http_status;
  bool partial_kept;
};

// Downloads url (http:// or https://, following redirects; TLS verified against the system's
// CAs, or $SSL_CERT_FILE) to dest as described above. Throws FetchError; another fetch of the same
// dest in progress (in any process) is an error too.
FetchResult fetch_file(const std::string& url, const std::string& dest, const FetchOptions& opts);

// The local path of a model's file on this node, fetching it if needed: cache_dir/<sha256>.gguf
// (downloaded from the server's GET /agent/v1/models/{model_id}/file with the node's key, checked
// against sha256), or the server's shared_path for it when this node can read that file with
// the right size. Calls for a model already cached return at once without asking the server.
// Safe to call from several threads and processes at once: one downloads, the others wait.
// model_id: the registry id ("model_..."), or "" to look the model up by its sha256.
// Throws std::runtime_error (FetchError for download failures) with a message for the operator.
std::string ensure_model(const std::string& server_url, const std::string& node_key, const std::string& model_id,
                         const std::string& sha256, const std::string& cache_dir,
                         const std::function<void(const FetchProgress&)>& progress = nullptr);

}  // namespace aicloud

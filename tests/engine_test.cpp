// The engine end to end: `aicloud models create-tiny` writes a model, the real llama-server that
// `make engine` built serves it (found as aicloud finds it: engine::find_llama_server), and it
// answers /health, /completion, /v1/chat/completions, /v1/completions and, with --embeddings,
// /v1/embeddings.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "http/client.h"
#include "models/engine.h"
#include "models/gguf.h"
#include "support/server_process.h"
#include "util/json_util.h"

namespace aicloud {
namespace {
using test::slurp;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Runs argv to completion; its exit status and what it wrote to stdout and stderr.
std::pair<int, std::string> run(const std::vector<std::string>& args, const std::string& out_path) {
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), slurp(out_path)};
}

// `aicloud models create-tiny` through the CLI; the JSON it prints.
json create_tiny(const std::string& dir, const std::string& name, const std::string& seed) {
  std::string out = dir + "/" + name + ".gguf";
  auto [rc, text] = run({test::aicloud_binary(), "models", "create-tiny", "--name", name, "--out", out, "--seed",
                         seed, "-o", "json"},
                        dir + "/create-" + name + ".log");
  if (rc != 0) throw std::runtime_error("create-tiny exited " + std::to_string(rc) + ": " + text);
  return json::parse(text);
}

// A llama-server process on a port of its choosing, killed (with its whole group) at the end.
class Engine {
 public:
  Engine(const std::string& model, std::vector<std::string> extra, const std::string& dir) {
    log_ = dir + "/llama-server-" + std::to_string(counter_++) + ".log";
    std::vector<std::string> args = {engine::find_llama_server(), "-m", model, "--host", "127.0.0.1", "--port", "0",
                                     "-c", "512", "-np", "2", "-t", "2", "--no-ui"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      setpgid(0, 0);
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    wait_ready();
  }
  ~Engine() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  const std::string& url() const { return url_; }
  std::string log() const { return slurp(log_); }

 private:
  // The port from its "listening on http://127.0.0.1:PORT" line, then /health until 200 (503 while
  // the model loads).
  void wait_ready() {
    auto deadline = std::chrono::steady_clock::now() + 90s;
    const std::regex listening("listening on (http://127\\.0\\.0\\.1:[0-9]+)");
    while (std::chrono::steady_clock::now() < deadline) {
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("llama-server exited before it was ready:\n" + log());
      }
      if (url_.empty()) {
        std::smatch m;
        std::string text = log();
        if (std::regex_search(text, m, listening)) url_ = m[1];
      }
      if (!url_.empty()) {
        try {
          http::Client c(url_, 5s);
          if (c.request("GET", "/health").status == 200) return;
        } catch (const std::exception&) {
        }
      }
      std::this_thread::sleep_for(100ms);
    }
    throw std::runtime_error("llama-server was not ready within 90 s:\n" + log());
  }

  static inline int counter_ = 0;
  pid_t pid_ = -1;
  std::string log_, url_;
};

json post(const std::string& url, const std::string& path, const json& body) {
  http::Client c(url, 60s);
  auto r = c.request("POST", path, body.dump(), {{"Content-Type", "application/json"}});
  if (r.status != 200) throw std::runtime_error(path + " answered " + std::to_string(r.status) + ": " + r.body);
  return json::parse(r.body);
}

TEST(Engine, IsFoundWhereTheBuildPutIt) {
  std::string server = engine::find_llama_server();
  EXPECT_TRUE(fs::exists(server)) << server;
  std::string dir = engine::engine_dir();
  std::string info = slurp(dir + "/ENGINE_INFO");
  if (!std::getenv("LLAMA_CPP_SOURCE_DIR")) {  // else it is a checkout of the developer's own
    EXPECT_NE(info.find(std::string("commit=") + engine::kLlamaCppCommit), std::string::npos) << info;
  }
  EXPECT_TRUE(fs::exists(dir + "/bin/llama-finetune"));
  EXPECT_NO_THROW(engine::find_vocab("llama-spm"));
  EXPECT_THROW(engine::find_vocab("no-such-vocab"), std::runtime_error);
  EXPECT_THROW(engine::find_llama_server("/nonexistent/engine"), std::runtime_error);
}

TEST(Engine, CreateTinyIsDeterministicWithTheRealTokenizer) {
  test::TempDir dir;
  json a = create_tiny(dir.path(), "tiny-a", "7");
  json b = create_tiny(dir.path(), "tiny-b", "7");
  json c = create_tiny(dir.path(), "tiny-c", "8");
  EXPECT_NE(a["sha256"], c["sha256"]);
  // Same seed, same weights: the files differ only in general.name.
  gguf::File fa = gguf::read(a["path"]), fb = gguf::read(b["path"]);
  EXPECT_EQ(slurp(a["path"]).substr(fa.data_offset), slurp(b["path"]).substr(fb.data_offset));
  EXPECT_NE(slurp(a["path"]).substr(fa.data_offset), slurp(c["path"]).substr(fa.data_offset));
  EXPECT_EQ(a["vocab_size"], 32000);
  EXPECT_EQ(a["architecture"], "llama");
  EXPECT_EQ(fa.at("tokenizer.ggml.model").as_string(), "llama");
  EXPECT_EQ(a["parameters"].get<uint64_t>(), fa.parameter_count());
  json again = create_tiny(dir.path(), "tiny-a", "7");  // overwrites the same path
  EXPECT_EQ(again["sha256"], a["sha256"]);

  // Usage errors: a clear message and exit code 2.
  auto [rc, text] = run({test::aicloud_binary(), "models", "create-tiny", "--name", "bad/name"}, dir.path() + "/e.log");
  EXPECT_EQ(rc, 2) << text;
  EXPECT_NE(text.find("name"), std::string::npos) << text;
  std::tie(rc, text) = run({test::aicloud_binary(), "models", "create-tiny", "--name", "x", "--vocab", "nope"},
                           dir.path() + "/e2.log");
  EXPECT_EQ(rc, 1) << text;
  EXPECT_NE(text.find("no vocab 'nope'"), std::string::npos) << text;
}

TEST(Engine, ServesCompletionsAndChat) {
  test::TempDir dir;
  json m = create_tiny(dir.path(), "tiny", "1");
  Engine e(m["path"], {"--alias", "tiny"}, dir.path());

  json r = post(e.url(), "/completion", {{"prompt", "Hello, my name is"}, {"n_predict", 8}, {"temperature", 0},
                                         {"seed", 1}});
  EXPECT_EQ(r.value("tokens_predicted", 0), 8) << r.dump();
  EXPECT_FALSE(r.value("content", "").empty()) << r.dump();
  EXPECT_GT(r.value("tokens_evaluated", 0), 1);

  json chat = post(e.url(), "/v1/chat/completions",
                   {{"model", "tiny"},
                    {"messages", json::array({{{"role", "user"}, {"content", "Say something."}}})},
                    {"max_tokens", 6},
                    {"temperature", 0}});
  ASSERT_EQ(chat["choices"].size(), 1u) << chat.dump();
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(chat["choices"][0]["message"]["content"].is_string()) << chat.dump();
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "length") << chat.dump();
  EXPECT_EQ(chat["usage"]["completion_tokens"], 6) << chat.dump();
  EXPECT_GT(chat["usage"]["prompt_tokens"].get<int>(), 0);

  json comp = post(e.url(), "/v1/completions", {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 5}});
  EXPECT_EQ(comp["object"], "text_completion");
  EXPECT_EQ(comp["usage"]["completion_tokens"], 5) << comp.dump();

  http::Client c(e.url(), 10s);
  auto models = json::parse(c.request("GET", "/v1/models").body);
  EXPECT_EQ(models["data"][0]["id"], "tiny") << models.dump();
}

TEST(Engine, ServesEmbeddings) {
  test::TempDir dir;
  json m = create_tiny(dir.path(), "tiny-embed", "2");
  Engine e(m["path"], {"--embeddings", "--pooling", "mean"}, dir.path());
  json r = post(e.url(), "/v1/embeddings", {{"model", "tiny-embed"}, {"input", json::array({"hello world", "bye"})}});
  ASSERT_EQ(r["data"].size(), 2u) << r.dump();
  const auto& v = r["data"][0]["embedding"];
  ASSERT_EQ(v.size(), 64u);  // n_embd
  double norm = 0;
  for (const auto& x : v) norm += x.get<double>() * x.get<double>();
  EXPECT_TRUE(std::isfinite(norm) && norm > 0) << r.dump();
  EXPECT_NE(r["data"][0]["embedding"], r["data"][1]["embedding"]);
  EXPECT_GT(r["usage"]["prompt_tokens"].get<int>(), 0);
}

}  // namespace
}  // namespace aicloud

// The CLI end to end: the real binary as a subprocess against a real server, with its config
// file in a temporary directory so that the real home is never touched.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "cli/config.h"
#include "cli/errors.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
namespace fs = std::filesystem;

extern char** environ;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs `aicloud args...` with stdin from `input`, the parent's environment minus AICLOUD_* and
// HOME, plus `env`.
Result run_aicloud(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                   const std::string& input = "") {
  TempDir io;
  std::string in = io.path() + "/in", out = io.path() + "/out", err = io.path() + "/err";
  std::ofstream(in) << input;

  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    if (kv.rfind("AICLOUD_", 0) != 0 && kv.rfind("HOME=", 0) != 0) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<std::string> argv_s = {aicloud_binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());

  pid_t pid = fork();
  if (pid == 0) {
    int fi = ::open(in.c_str(), O_RDONLY), fo = ::open(out.c_str(), O_WRONLY | O_CREAT, 0600),
        fe = ::open(err.c_str(), O_WRONLY | O_CREAT, 0600);
    dup2(fi, 0);
    dup2(fo, 1);
    dup2(fe, 2);
    std::vector<char*> argv, envp;
    for (auto& a : argv_s) argv.push_back(a.data());
    for (auto& e : envs) envp.push_back(e.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  Result r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

int lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

std::string line_with(const std::string& text, const std::string& part) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (has(line, part)) return line;
  }
  return "";
}

// A port on which nothing listens.
int closed_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

class CliTest : public ::testing::Test {
 protected:
  ServerProcess srv;
  TempDir home;
  std::string config = home.path() + "/aicloud/config.toml";

  // The CLI with this test's config file and any extra environment.
  Result cli(const std::vector<std::string>& args, std::map<std::string, std::string> env = {},
             const std::string& input = "") {
    env.emplace("AICLOUD_CONFIG", config);
    env.emplace("HOME", home.path());
    return run_aicloud(args, env, input);
  }
  // As the operator.
  Result op(std::vector<std::string> args) {
    args.insert(args.end(), {"--url", srv.url(), "--api-key", srv.admin_key()});
    return cli(args);
  }
  // With an organization's credential from the environment.
  std::map<std::string, std::string> as(const std::string& key) { return {{"AICLOUD_URL", srv.url()}, {"AICLOUD_API_KEY", key}}; }
};

}  // namespace

TEST_F(CliTest, OrgsCreateAndListAsOperatorInTableAndJson) {
  Result r = op({"orgs", "create", "--name", "acme"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "acme")) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("org-[A-Za-z0-9]+"))) << r.out;
  std::string org_id = m.str();

  r = op({"orgs", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string header = r.out.substr(0, r.out.find('\n'));
  for (const char* h : {"ID", "NAME", "STATUS", "CREATED"}) EXPECT_TRUE(has(header, h)) << header;
  std::string row = line_with(r.out, org_id);
  EXPECT_EQ(row.find("acme"), header.find("NAME")) << r.out;  // aligned columns
  EXPECT_EQ(row.find("active"), header.find("STATUS")) << r.out;
  EXPECT_TRUE(std::regex_search(row, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"))) << row;

  // -o json is the server's JSON, wherever the flag is.
  auto c = srv.client();
  Api api{*c, srv.admin_key(), ""};
  r = op({"orgs", "list", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), api.get("/admin/v1/organizations"));
  r = op({"-o", "json", "orgs", "get", org_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["name"], "acme");

  r = op({"orgs", "suspend", org_id, "--reason", "unpaid"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "suspended") && has(r.out, "unpaid")) << r.out;
}

TEST_F(CliTest, LoginThenProjectsUseTheSavedConfig) {
  auto c = srv.client();
  Tenant t = make_tenant(*c, srv.admin_key(), "globex");

  Result r = cli({"login", "--url", srv.url(), "--email", t.owner_email, "--password", t.owner_password});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, t.owner_email)) << r.out;
  struct stat st {};
  ASSERT_EQ(stat(config.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string saved = slurp(config);
  EXPECT_TRUE(has(saved, "url = \"" + srv.url() + "\"")) << saved;
  EXPECT_TRUE(has(saved, "api_key = \"sess-")) << saved;

  r = cli({"projects", "create", "--name", "from-cli"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "from-cli")) << r.out;
  r = cli({"projects", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "from-cli") && has(r.out, "STATUS")) << r.out;
  r = cli({"projects", "list", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  bool found = false;
  json projects = json::parse(r.out);
  for (const auto& p : projects["data"]) found = found || p["name"] == "from-cli";
  EXPECT_TRUE(found) << r.out;

  r = cli({"whoami"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, t.owner_email) && has(r.out, t.org_id)) << r.out;

  r = cli({"logout"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(has(slurp(config), "sess-"));
  r = cli({"projects", "list"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "401") && has(r.err, "aicloud login")) << r.err;

  // Without --password and without a terminal, the password is read from stdin.
  r = cli({"login", "--email", t.owner_email}, {}, t.owner_password + "\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(cli({"projects", "list"}).code, 0);
  r = cli({"login", "--email", t.owner_email}, {}, "wrong password\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "Incorrect email or password")) << r.err;
}

TEST_F(CliTest, KeysCreatePrintsAWorkingSecretOnceAndListRedactsIt) {
  auto c = srv.client();
  Tenant t = make_tenant(*c, srv.admin_key(), "initech");
  Result r = cli({"keys", "create", "--project", t.project_id, "--name", "ci"}, as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("SECRET +(sk-proj-[A-Za-z0-9_-]+)"))) << r.out;
  std::string secret = m.str(1);
  EXPECT_TRUE(has(r.err, "will not be shown again")) << r.err;

  Api key{*c, secret, ""};
  json me = key.get("/v1/me");
  EXPECT_EQ(me["project_id"], t.project_id);

  r = cli({"keys", "list", "--project", t.project_id}, as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  std::string row = line_with(r.out, " ci ");
  ASSERT_FALSE(row.empty()) << r.out;
  EXPECT_FALSE(has(r.out, secret));
  EXPECT_TRUE(has(row, "sk-proj-")) << row;  // the redacted value
  ASSERT_TRUE(std::regex_search(row, m, std::regex("key_[A-Za-z0-9]+")));

  r = cli({"keys", "delete", m.str(), "--project", t.project_id}, as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "Deleted " + m.str())) << r.out;
  key.get("/v1/me", 401);
}

TEST_F(CliTest, UsersAddAndSetRole) {
  auto c = srv.client();
  Tenant t = make_tenant(*c, srv.admin_key(), "umbrella");
  Result r = cli({"users", "add", "--email", "dev@example.com", "--password", "a long enough password", "-o", "json"},
                 as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  json user = json::parse(r.out);
  EXPECT_EQ(user["role"], "member");

  r = cli({"users", "set-role", user["id"].get<std::string>(), "--role", "admin"}, as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "admin")) << r.out;
  r = cli({"users", "list"}, as(t.admin_key));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, "dev@example.com"), "admin")) << r.out;

  r = cli({"users", "set-role", user["id"].get<std::string>(), "--role", "emperor"}, as(t.admin_key));
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "(param: role)")) << r.err;
}

TEST_F(CliTest, AuditListAndVerifyViaApiAndOffline) {
  auto c = srv.client();
  Tenant t = make_tenant(*c, srv.admin_key(), "hooli");

  Result r = op({"audit", "list", "--org", t.org_id, "--action", "project.created"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "project.created") && !has(r.out, "api_key.created")) << r.out;

  std::regex ok(R"(OK: the audit chain is intact \((\d+) records\))");
  std::smatch online, offline;
  r = op({"audit", "verify"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(std::regex_search(r.out, online, ok)) << r.out;
  const std::string online_count = online[1];  // r.out, which online points into, is reused below
  EXPECT_GT(std::stoi(online_count), 3);
  r = cli({"audit", "verify", "--data-dir", srv.data_dir()});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(std::regex_search(r.out, offline, ok)) << r.out;
  EXPECT_EQ(online_count, offline[1].str());

  // A record edited behind the server's back is named.
  ASSERT_EQ(srv.stop_graceful(), 0);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((srv.data_dir() + "/aicloud.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE audit_log SET action='nothing.happened' WHERE seq=2", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  r = cli({"audit", "verify", "--data-dir", srv.data_dir()});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "audit_2")) << r.err;
  EXPECT_EQ(lines(r.err), 1) << r.err;
}

TEST_F(CliTest, SettingsGetAndSet) {
  Result r = op({"settings", "set", "--signup-enabled", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, "signup_enabled"), "true")) << r.out;
  r = op({"settings", "get", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["signup_enabled"], true);
  EXPECT_EQ(op({"settings", "set"}).code, 2);
}

TEST_F(CliTest, ValidationErrorNamesTheFieldAndExitsOne) {
  Result r = op({"orgs", "create", "--name", ""});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "error: ") && has(r.err, "(param: name)") && has(r.err, "HTTP 400")) << r.err;
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_EQ(r.out, "");

  r = op({"orgs", "list", "--limit", "1000"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "(param: limit)")) << r.err;

  r = op({"orgs", "get", "org-doesnotexist"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 404")) << r.err;
}

TEST_F(CliTest, FlagBeatsEnvironmentBeatsConfigFile) {
  fs::create_directories(fs::path(config).parent_path());
  int dead = closed_port();
  aicloud::cli::write_config(config, {"http://127.0.0.1:" + std::to_string(dead), srv.admin_key(), "", ""});

  Result r = cli({"orgs", "list"});  // the file's URL: nothing there
  EXPECT_EQ(r.code, 1);
  r = cli({"orgs", "list"}, {{"AICLOUD_URL", srv.url()}});  // env URL, the file's key
  EXPECT_EQ(r.code, 0) << r.err;
  r = cli({"orgs", "list", "--url", "http://127.0.0.1:" + std::to_string(dead)}, {{"AICLOUD_URL", srv.url()}});
  EXPECT_EQ(r.code, 1);
  r = cli({"orgs", "list", "--api-key", "sk-root-wrong"}, {{"AICLOUD_URL", srv.url()}});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 401")) << r.err;
}

TEST(CliNoServer, ServerDownExitsOneAndSaysHowToSetTheUrl) {
  TempDir home;
  std::string url = "http://127.0.0.1:" + std::to_string(closed_port());
  Result r = run_aicloud({"orgs", "list", "--url", url}, {{"AICLOUD_CONFIG", home.path() + "/c.toml"}});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "cannot reach the aicloud server at " + url)) << r.err;
  EXPECT_TRUE(has(r.err, "--url") && has(r.err, "AICLOUD_URL")) << r.err;
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(CliNoServer, BadUsageExitsTwo) {
  TempDir home;
  std::map<std::string, std::string> env = {{"AICLOUD_CONFIG", home.path() + "/c.toml"}};
  for (std::vector<std::string> args : {std::vector<std::string>{"frobnicate"},
                                        {"orgs"},
                                        {"orgs", "create"},
                                        {"orgs", "list", "-o", "yaml"},
                                        {"keys", "list"},
                                        {}}) {
    Result r = run_aicloud(args, env);
    EXPECT_EQ(r.code, 2) << testing::PrintToString(args) << r.err;
    EXPECT_FALSE(r.err.empty());
  }
  Result r = run_aicloud({"frobnicate"}, env);
  EXPECT_TRUE(has(r.err, "unknown command: frobnicate")) << r.err;
  r = run_aicloud({"--help"}, env);
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "orgs") && has(r.out, "projects")) << r.out;
}

TEST(CliConfig, RoundTripsQuotedValuesPrivatelyAndRejectsMalformedLines) {
  TempDir dir;
  std::string path = dir.path() + "/sub/config.toml";
  aicloud::cli::Settings s{"http://127.0.0.1:9", "sk-\"odd\\key", "org-1", "proj_1"};
  aicloud::cli::write_config(path, s);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = aicloud::cli::read_config(path);
  EXPECT_EQ(back.url, s.url);
  EXPECT_EQ(back.api_key, s.api_key);
  EXPECT_EQ(back.org, s.org);
  EXPECT_EQ(back.project, s.project);
  EXPECT_EQ(aicloud::cli::read_config(dir.path() + "/missing.toml").url, "");

  std::ofstream(path) << "# comment\n\nurl = \"http://x:1\"\nother = \"ignored\"\napi_key = unquoted\n";
  EXPECT_THROW(aicloud::cli::read_config(path), aicloud::cli::CliError);
}

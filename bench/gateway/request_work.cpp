// What the gateway must do for each request besides relaying HTTP, measured alone: the parts
// that nginx as a proxy never does. Their sum is a floor under the gateway's CPU per request
// above nginx's (docs/PERFORMANCE.md §5, why parity at saturation is out of reach here).
//
//   build/bench/gateway_request_work [ITERATIONS]
//
// Each step runs ITERATIONS times (default 200,000) in 5 rounds; the median round's time per
// iteration is printed. The inputs are those of bench/gateway/run.sh's whole case.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "gateway/replicas.h"
#include "gateway/request_scan.h"
#include "gateway/usage_scan.h"
#include "identity/crypto.h"
#include "metering/journal.h"

using namespace aicloud;

namespace {

const std::string kRequest =
    R"({"model":"canned","messages":[{"role":"user","content":"Write a short greeting for a new user of this cloud."}],"max_tokens":16})";
const std::string kAnswer =
    R"({"id":"chatcmpl-canned","object":"chat.completion","created":1700000000,"model":"canned","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}})";
const std::string kKey = "sk-proj-xyibuPkN2jLnm3jsHUuVNYByi1IqiNBW1HktL4oFGtzPAzVp";

volatile size_t sink;  // keeps the work from being optimised away

double median_ns(long iterations, const std::function<void()>& step) {
  std::vector<double> rounds;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iterations; ++i) step();
    auto t1 = std::chrono::steady_clock::now();
    rounds.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / double(iterations));
  }
  std::sort(rounds.begin(), rounds.end());
  return rounds[2];
}

}  // namespace

int main(int argc, char** argv) {
  long n = argc > 1 ? std::stol(argv[1]) : 200000;

  gateway::ReplicaDirectory dir;
  gateway::Deployment d;
  d.id = "dep_bench";
  d.model = "canned";
  d.owner_org = "org_bench";
  d.replicas.push_back({"ep_1", "127.0.0.1", 8080, "", "bench-1"});
  dir.set(d);

  UsageRecord rec;
  rec.org_id = "org_01HZX3K9Q2W8E7R6T5Y4U3I2O1";
  rec.project_id = "proj_01HZX3K9Q2W8E7R6T5Y4U3I2O1";
  rec.api_key_id = "key_01HZX3K9Q2W8E7R6T5Y4U3I2O1";
  rec.model = "canned";
  rec.deployment_id = "dep_bench";
  rec.region = "bench-1";
  rec.endpoint = "completions";
  rec.request_id = "req_9mZ6mgIl4PboK3Ic4b54";
  std::string frame;

  struct Step {
    const char* what;
    std::function<void()> run;
  };
  std::vector<Step> steps = {
      {"check the request body (request_scan.h)",
       [] {
         gateway::RequestSeen q;
         gateway::scan_request(kRequest, "messages", q);
         sink = q.model_name.size() + q.input_size + size_t(q.max_tokens_value);
       }},
      {"hash the API key (the key cache's lookup)", [] { sink = sha256_hex(kKey).size(); }},
      {"pick a replica, release it", [&] {
         auto p = dir.pick("canned", "org_bench");
         sink = p->replica().port;
         gateway::ReplicaDirectory::release(*p);
       }},
      {"read the answer's usage (usage_scan.h)", [] {
         gateway::UsageSeen u;
         gateway::scan_answer_usage(kAnswer, u);
         sink = size_t(u.prompt + u.completion);
       }},
      {"encode the usage record's journal frame", [&] {
         frame.clear();
         journal::encode(rec, 7, frame);
         sink = frame.size();
       }},
  };
  double total = 0;
  std::printf("%-46s %10s\n", "per request, measured alone", "ns");
  for (const auto& s : steps) {
    double ns = median_ns(n, s.run);
    total += ns;
    std::printf("%-46s %10.0f\n", s.what, ns);
  }
  std::printf("%-46s %10.0f\n", "sum", total);
  return 0;
}

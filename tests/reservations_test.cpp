// Reservations and quotas end to end: a real server, real agents with declared GPUs, real
// processes. A reservation is requested, approved by the operator and honoured (the
// organization's reserved work is admitted up to its GPUs, preempting spot work that filled the
// idle reserved part meanwhile, never taking another reservation's part); a quota keeps work
// pending with a reason that names it until the quota is raised; bad input and tenancy.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "support/server_process.h"
#include "util/time.h"

using namespace aicloud;
using namespace aicloud::test;

namespace {

class Agent {
 public:
  Agent(const std::string& server, const std::string& dir, std::vector<std::string> args) {
    std::vector<std::string> argv = {aicloud_binary(), "agent", "--server", server, "--work-dir", dir, "--log-level", "warn"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string log = dir + ".log";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~Agent() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
  }

 private:
  pid_t pid_ = -1;
};

// A spot workload that says when it gets its notice, and (first) that it is listening for it:
// a notice sent before the trap is set would end it silently.
const char* kTrapTerm = "trap 'echo notice received; exit 0' TERM; echo ready; while true; do sleep 0.1; done";

class Reservations : public ::testing::Test {
 protected:
  Reservations()
      : srv({"--heartbeat-interval-ms", "200", "--preemption-notice-ms", "1000"}),
        c(srv.client()),
        op{*c, srv.admin_key(), ""} {
    chmod(work.path().c_str(), 0711);  // agents run workloads as nobody
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    join_token = op.post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
    acme = make_tenant(*c, srv.admin_key(), "acme");
  }

  std::unique_ptr<Agent> agent(const std::string& name, const std::string& domain) {
    return std::make_unique<Agent>(srv.url(), work.path() + "/" + name,
                                   std::vector<std::string>{"--join-token", join_token, "--name", name, "--gpus",
                                                            "8xH100-80GB", "--nvlink-domain", domain, "--address",
                                                            "127.0.0.1"});
  }
  void wait_nodes_ready(size_t n) {
    for (int i = 0; i < 200; ++i) {
      json nodes = op.get("/admin/v1/nodes");
      size_t ready = 0;
      for (const auto& x : nodes["data"]) ready += x["state"] == "ready";
      if (ready == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "nodes not ready: " << op.get("/admin/v1/nodes").dump();
  }
  // Polls path until pred(object) holds.
  template <class Pred>
  json wait_for(Api& api, const std::string& path, Pred pred, const std::string& what, int ms = 20000) {
    json w;
    for (int t = 0; t < ms; t += 50) {
      w = api.get(path);
      if (pred(w)) return w;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting for " << what << " on " << path << ": " << w.dump();
    return w;
  }
  json wait_phase(Api& api, const std::string& path, const std::string& phase) {
    return wait_for(api, path, [&](const json& w) { return w["status"]["phase"] == phase; }, phase);
  }
  // A pending workload, once the scheduler has said why (reason_code set).
  json wait_pending_code(Api& api, const std::string& path, const std::string& code) {
    json w = wait_for(api, path, [&](const json& w) { return w["status"].value("reason_code", "") == code; },
                      "pending code " + code);
    EXPECT_EQ(w["status"]["phase"], "pending") << w.dump();
    return w;
  }
  std::string instance(Api& api, const json& body) {
    json base = {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}};
    base.update(body);
    return "/v1/compute/instances/" + api.post("/v1/compute/instances", base, 201)["id"].get<std::string>();
  }
  json reservation(Api& api, int gpus, int64_t start, int64_t end, unsigned want = 201) {
    return api.post("/v1/compute/reservations",
                    {{"gpu_type", "H100-80GB"}, {"region", "eu-west-1"}, {"gpus", gpus}, {"start_time", start},
                     {"end_time", end}},
                    want);
  }

  TempDir work;
  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  Api op;
  std::string join_token;
  Tenant acme;
};

bool contains(const json& s, const std::string& part) {
  return s.is_string() && s.get<std::string>().find(part) != std::string::npos;
}

// (a) Two organizations reserve 8 GPUs each of a 16-GPU fleet. A third's spot work fills the idle
// reserved GPUs; each organization's reserved work preempts it (with notice) up to its own
// reservation and no further, and on-demand work waits behind the reservations.
TEST_F(Reservations, HonouredWhileSpotFillsTheIdlePart) {
  auto a = agent("node-a", "rack-1");
  auto b = agent("node-b", "rack-2");
  wait_nodes_ready(2);
  Tenant globex = make_tenant(*c, srv.admin_key(), "globex");
  Tenant initech = make_tenant(*c, srv.admin_key(), "initech");
  Api pa{*c, acme.project_key, ""}, pb{*c, globex.project_key, ""}, pc{*c, initech.project_key, ""};
  int64_t now = now_unix();

  json ra = reservation(pa, 8, now - 60, now + 3600);
  EXPECT_EQ(ra["object"], "compute.reservation");
  EXPECT_EQ(ra["status"], "pending_approval");
  EXPECT_EQ(ra["active"], false);
  EXPECT_EQ(ra["organization_id"], acme.org_id);
  EXPECT_EQ(ra["project_id"], acme.project_id);
  std::string ra_id = ra["id"];
  EXPECT_EQ(ra_id.rfind("resv_", 0), 0u);
  json rb = reservation(pb, 8, now - 60, now + 3600);

  // Before approval, reserved work waits, and says for what.
  std::string a1 = instance(pa, {{"gpus", 8}, {"class", "reserved"}, {"command", "sleep 300"}});
  json w = wait_pending_code(pa, a1, "no_reservation");
  EXPECT_TRUE(contains(w["status"]["reason"], "awaits the operator's approval")) << w.dump();
  pa.post(a1 + "/stop", json::object());

  json pending = op.get("/admin/v1/reservations?status=pending_approval");
  EXPECT_EQ(pending["data"].size(), 2u) << pending.dump();
  json approved = op.post("/admin/v1/reservations/" + ra_id + "/approve", json::object());
  EXPECT_EQ(approved["status"], "approved");
  EXPECT_EQ(approved["active"], true);
  op.post("/admin/v1/reservations/" + rb["id"].get<std::string>() + "/approve", json::object());
  EXPECT_EQ(op.get("/admin/v1/reservations?status=active")["data"].size(), 2u);
  // Each organization sees its own reservation only.
  json mine = pa.get("/v1/compute/reservations");
  ASSERT_EQ(mine["data"].size(), 1u);
  EXPECT_EQ(mine["data"][0]["id"], ra_id);

  // Spot work of a third organization fills the idle reserved GPUs.
  std::string s1 = instance(pc, {{"gpus", 8}, {"class", "spot"}, {"command", kTrapTerm}});
  std::string s2 = instance(pc, {{"gpus", 8}, {"class", "spot"}, {"command", kTrapTerm}});
  wait_phase(pc, s1, "running");
  wait_phase(pc, s2, "running");
  for (const auto& s : {s1, s2}) {
    wait_for(pc, s + "/logs", [](const json& l) { return contains(l["text"], "ready"); }, "ready in " + s + "'s log");
  }

  // acme's reserved work takes its 8 GPUs back from one of them, which gets its notice.
  std::string a2 = instance(pa, {{"gpus", 8}, {"class", "reserved"}, {"command", "sleep 300"}});
  json started = wait_phase(pa, a2, "running");
  json v1 = pc.get(s1), v2 = pc.get(s2);
  bool first = v1["status"]["phase"] == "preempted" || v1["status"]["phase"] == "preempting";
  std::string victim = first ? s1 : s2, survivor = first ? s2 : s1;
  json pre = wait_phase(pc, victim, "preempted");
  std::string a2_id = a2.substr(a2.rfind('/') + 1);
  EXPECT_TRUE(contains(pre["status"]["reason"], "preempted by " + a2_id)) << pre.dump();
  EXPECT_EQ(pc.get(survivor)["status"]["phase"], "running");
  json log;
  for (int i = 0; i < 100; ++i) {
    log = pc.get(victim + "/logs");
    if (contains(log["text"], "notice received")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(contains(log["text"], "notice received")) << log.dump();

  // Beyond its reservation acme waits, though spot work holds globex's part: never another
  // reservation's capacity.
  std::string a3 = instance(pa, {{"gpus", 1}, {"class", "reserved"}, {"command", "sleep 300"}});
  w = wait_pending_code(pa, a3, "reservation_full");
  EXPECT_TRUE(contains(w["status"]["reason"], "reservation full")) << w.dump();
  // On-demand work of anyone waits behind globex's idle reservation rather than preempting into it.
  std::string od = instance(pc, {{"gpus", 1}, {"command", "sleep 300"}});
  w = wait_pending_code(pc, od, "reserved_capacity");
  EXPECT_TRUE(contains(w["status"]["reason"], "reserv")) << w.dump();
  EXPECT_EQ(pc.get(survivor)["status"]["phase"], "running");

  // globex's reserved gang takes its part back from the other spot instance.
  json gj = pb.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 8},
                                         {"class", "reserved"}, {"command", "sleep 300"}}, 201);
  std::string g1 = "/v1/compute/jobs/" + gj["id"].get<std::string>();
  wait_phase(pb, g1, "running");
  wait_phase(pc, survivor, "preempted");
  EXPECT_EQ(pa.get(a2)["status"]["phase"], "running");
  EXPECT_EQ(pa.get(a3)["status"]["phase"], "pending");
  EXPECT_EQ(pc.get(od)["status"]["phase"], "pending");

  // When acme's instance stops, its GPUs go to its waiting reserved work, not to on-demand.
  pa.post(a2 + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(pa, a3, "running");
  // The rest of acme's part is idle again, and still not on-demand's: 7 GPUs are reserved.
  w = pc.get(od);
  EXPECT_EQ(w["status"]["phase"], "pending") << w.dump();
}

// Offers, by class, for the caller's organization: its active reservation's unused GPUs as
// `reserved`; on_demand never counts GPUs kept for reservations (another organization's, nor its
// own: its reserved work takes those); spot may use whatever is free.
TEST_F(Reservations, OffersShowReservedGpusToTheirOwnerOnly) {
  auto a = agent("node-a", "rack-1");
  auto b = agent("node-b", "rack-2");
  wait_nodes_ready(2);
  Tenant initech = make_tenant(*c, srv.admin_key(), "initech");
  Api pa{*c, acme.project_key, ""}, pc{*c, initech.project_key, ""};
  int64_t now = now_unix();
  json ra = reservation(pa, 8, now - 60, now + 3600);
  // Not approved yet: nothing is kept back.
  auto row = [](const json& offers, const std::string& cls) {
    for (const auto& o : offers["data"]) {
      if (o["class"] == cls && o["gpu_type"] == "H100-80GB" && o["region"] == "eu-west-1") return o;
    }
    return json();
  };
  json offers = pa.get("/v1/compute/offers");
  EXPECT_TRUE(row(offers, "reserved").is_null()) << offers.dump();
  EXPECT_EQ(row(offers, "on_demand")["gpus_available"], 16) << offers.dump();
  op.post("/admin/v1/reservations/" + ra["id"].get<std::string>() + "/approve", json::object());

  offers = pa.get("/v1/compute/offers");
  EXPECT_EQ(row(offers, "reserved")["gpus_total"], 8) << offers.dump();
  EXPECT_EQ(row(offers, "reserved")["gpus_available"], 8) << offers.dump();
  EXPECT_EQ(row(offers, "on_demand")["gpus_total"], 16) << offers.dump();
  EXPECT_EQ(row(offers, "on_demand")["gpus_available"], 8) << offers.dump();
  EXPECT_EQ(row(offers, "spot")["gpus_available"], 16) << offers.dump();
  EXPECT_EQ(row(offers, "on_demand")["nodes"], 2) << offers.dump();
  json theirs = pc.get("/v1/compute/offers");
  EXPECT_TRUE(row(theirs, "reserved").is_null()) << theirs.dump();
  EXPECT_EQ(row(theirs, "on_demand")["gpus_available"], 8) << theirs.dump();
  EXPECT_EQ(row(theirs, "spot")["gpus_available"], 16) << theirs.dump();

  // acme's reserved work uses 2 of its 8: 6 left to it, and still 8 for anyone's on-demand work.
  std::string a1 = instance(pa, {{"gpus", 2}, {"class", "reserved"}, {"command", "sleep 300"}});
  wait_phase(pa, a1, "running");
  offers = pa.get("/v1/compute/offers");
  EXPECT_EQ(row(offers, "reserved")["gpus_available"], 6) << offers.dump();
  EXPECT_EQ(row(offers, "on_demand")["gpus_available"], 8) << offers.dump();
  theirs = pc.get("/v1/compute/offers");
  EXPECT_EQ(row(theirs, "on_demand")["gpus_available"], 8) << theirs.dump();
  EXPECT_EQ(row(theirs, "spot")["gpus_available"], 14) << theirs.dump();
  // What on_demand says is what the scheduler admits: 8 GPUs, and the next one waits.
  std::string od = instance(pc, {{"gpus", 8}, {"command", "sleep 300"}});
  wait_phase(pc, od, "running");
  std::string more = instance(pc, {{"gpus", 1}, {"command", "sleep 300"}});
  wait_pending_code(pc, more, "reserved_capacity");
  theirs = pc.get("/v1/compute/offers");
  EXPECT_EQ(row(theirs, "on_demand")["gpus_available"], 0) << theirs.dump();
  EXPECT_EQ(row(pa.get("/v1/compute/offers"), "reserved")["gpus_available"], 6);
}

// (b) A quota keeps a workload pending, with a reason naming it, until the quota is raised.
TEST_F(Reservations, QuotaKeepsWorkPendingUntilRaised) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, acme.project_key, ""};
  std::string base = "/admin/v1/organizations/" + acme.org_id + "/quotas";
  json q = op.post(base, {{"max_gpus", 4}, {"gpu_type", "H100-80GB"}, {"region", "eu-west-1"}}, 201);
  EXPECT_EQ(q["object"], "compute.quota");
  EXPECT_EQ(q["organization_id"], acme.org_id);
  EXPECT_TRUE(q["project_id"].is_null());
  EXPECT_EQ(q["max_gpus"], 4);
  std::string qid = q["id"];
  EXPECT_EQ(qid.rfind("quota_", 0), 0u);

  std::string i1 = instance(p, {{"gpus", 4}, {"command", "sleep 300"}});
  wait_phase(p, i1, "running");
  std::string i2 = instance(p, {{"gpus", 2}, {"command", "sleep 300"}});
  json w = wait_pending_code(p, i2, "quota");
  EXPECT_TRUE(contains(w["status"]["reason"], qid)) << w.dump();
  EXPECT_TRUE(contains(w["status"]["reason"], "over quota")) << w.dump();

  json mine = p.get("/v1/compute/quotas");
  ASSERT_EQ(mine["data"].size(), 1u) << mine.dump();
  EXPECT_EQ(mine["data"][0]["id"], qid);
  EXPECT_EQ(mine["data"][0]["used_gpus"], 4);

  // The same scope, type and region again: that quota changes.
  json raised = op.post(base, {{"max_gpus", 6}, {"gpu_type", "H100-80GB"}, {"region", "eu-west-1"}}, 200);
  EXPECT_EQ(raised["id"], qid);
  EXPECT_EQ(raised["max_gpus"], 6);
  w = wait_phase(p, i2, "running");
  EXPECT_FALSE(w["status"].contains("reason_code")) << w.dump();

  // A project's own quota, under the organization's, holds its project back too.
  json pq = op.post(base, {{"max_gpus", 6}, {"project_id", acme.project_id}}, 201);
  EXPECT_EQ(pq["project_id"], acme.project_id);
  EXPECT_TRUE(pq["gpu_type"].is_null());
  op.post(base, {{"max_gpus", 8}, {"gpu_type", "H100-80GB"}, {"region", "eu-west-1"}}, 200);
  std::string i3 = instance(p, {{"gpus", 1}, {"command", "sleep 300"}});
  w = wait_pending_code(p, i3, "quota");
  EXPECT_TRUE(contains(w["status"]["reason"], pq["id"].get<std::string>())) << w.dump();
  mine = p.get("/v1/compute/quotas");
  ASSERT_EQ(mine["data"].size(), 2u) << mine.dump();
  for (const auto& x : mine["data"]) EXPECT_EQ(x["used_gpus"], 6) << x.dump();
  // Another project of the organization sees only the organization's quota.
  Api admin{*c, acme.admin_key, ""};
  std::string p2 = admin.post("/v1/organization/projects", {{"name", "second"}}, 201)["id"];
  std::string k2 = admin.post("/v1/organization/projects/" + p2 + "/api_keys", json::object(), 201)["value"];
  Api other_project{*c, k2, ""};
  json theirs = other_project.get("/v1/compute/quotas");
  ASSERT_EQ(theirs["data"].size(), 1u) << theirs.dump();
  EXPECT_EQ(theirs["data"][0]["id"], qid);
  EXPECT_EQ(op.get(base)["data"].size(), 2u);

  json del = op.del(base + "/" + pq["id"].get<std::string>());
  EXPECT_EQ(del["deleted"], true);
  wait_phase(p, i3, "running");
}

// (c) Bad input (400 naming the field), other organizations' reservations (404), who may approve
// (the operator only), and approvals that would promise more GPUs than the fleet has (409).
TEST_F(Reservations, BadInputTenancyAndApproval) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, acme.project_key, ""};
  int64_t now = now_unix();
  json ok = {{"gpu_type", "H100-80GB"}, {"region", "eu-west-1"}, {"gpus", 8}, {"start_time", now},
             {"end_time", now + 3600}, {"name", "training"}};
  auto param = [&](const json& body) {
    auto r = p.call("POST", "/v1/compute/reservations", body);
    EXPECT_EQ(r.status, 400u) << body.dump() << " -> " << r.body;
    return json::parse(r.body)["error"]["param"];
  };
  json b = ok; b["gpus"] = 0;
  EXPECT_EQ(param(b), "gpus");
  b = ok; b["gpus"] = 9;  // the region has 8
  EXPECT_EQ(param(b), "gpus");
  b = ok; b.erase("gpus");
  EXPECT_EQ(param(b), "gpus");
  b = ok; b["gpus"] = "8";
  EXPECT_EQ(param(b), "gpus");
  b = ok; b["end_time"] = now;
  EXPECT_EQ(param(b), "end_time");
  b = ok; b["start_time"] = now - 7200; b["end_time"] = now - 3600;
  EXPECT_EQ(param(b), "end_time");
  b = ok; b.erase("start_time");
  EXPECT_EQ(param(b), "start_time");
  b = ok; b["region"] = "mars-1";
  EXPECT_EQ(param(b), "region");
  b = ok; b["gpu_type"] = "Z9000";
  EXPECT_EQ(param(b), "gpu_type");
  b = ok; b["colour"] = "blue";
  EXPECT_EQ(param(b), "colour");
  EXPECT_EQ(p.call("POST", "/v1/compute/reservations", "{not json").status, 400u);

  json r1 = p.post("/v1/compute/reservations", ok, 201);
  EXPECT_EQ(r1["name"], "training");
  EXPECT_EQ(r1["gpus"], 8);
  std::string path = "/v1/compute/reservations/" + r1["id"].get<std::string>();
  EXPECT_EQ(p.get(path)["id"], r1["id"]);

  // Another organization: 404 on the id, nothing in its list.
  Tenant globex = make_tenant(*c, srv.admin_key(), "globex");
  Api o{*c, globex.project_key, ""};
  EXPECT_EQ(o.call("GET", path).status, 404u);
  EXPECT_EQ(o.call("POST", path + "/cancel", json::object()).status, 404u);
  EXPECT_EQ(o.get("/v1/compute/reservations")["data"].size(), 0u);
  EXPECT_EQ(p.get(path)["status"], "pending_approval");
  // Tenants cannot approve; the operator can.
  std::string approve = "/admin/v1/reservations/" + r1["id"].get<std::string>() + "/approve";
  unsigned s = p.call("POST", approve, json::object()).status;
  EXPECT_TRUE(s == 401u || s == 403u) << s;
  s = Api{*c, acme.admin_key, ""}.call("POST", approve, json::object()).status;
  EXPECT_TRUE(s == 401u || s == 403u) << s;
  EXPECT_EQ(op.call("POST", "/admin/v1/reservations/resv_nosuchthing/approve", json::object()).status, 404u);
  EXPECT_EQ(op.post(approve, json::object())["status"], "approved");

  // Another 1 GPU over an overlapping time would promise 9 of 8: 409. Later, it fits.
  json r2 = reservation(o, 1, now + 1800, now + 7200);
  auto over = op.call("POST", "/admin/v1/reservations/" + r2["id"].get<std::string>() + "/approve", json::object());
  EXPECT_EQ(over.status, 409u) << over.body;
  EXPECT_NE(over.body.find(r1["id"].get<std::string>()), std::string::npos) << over.body;
  json r3 = reservation(o, 8, now + 3600, now + 7200);
  json a3 = op.post("/admin/v1/reservations/" + r3["id"].get<std::string>() + "/approve", json::object());
  EXPECT_EQ(a3["status"], "approved");
  EXPECT_EQ(a3["active"], false);  // not started yet
  // Rejected with a reason; a rejected one cannot be approved.
  json rej = op.post("/admin/v1/reservations/" + r2["id"].get<std::string>() + "/reject", {{"reason", "sold out"}});
  EXPECT_EQ(rej["status"], "rejected");
  EXPECT_EQ(rej["rejection_reason"], "sold out");
  EXPECT_EQ(op.call("POST", "/admin/v1/reservations/" + r2["id"].get<std::string>() + "/approve", json::object()).status,
            409u);
  EXPECT_EQ(op.get("/admin/v1/reservations?status=rejected")["data"].size(), 1u);
  EXPECT_EQ(op.call("GET", "/admin/v1/reservations?status=maybe").status, 400u);
  EXPECT_EQ(op.get("/admin/v1/reservations?organization_id=" + globex.org_id)["data"].size(), 2u);
  // Cancelled by its organization: its capacity is free to promise again.
  EXPECT_EQ(p.post(path + "/cancel", json::object())["status"], "cancelled");
  json r4 = reservation(o, 8, now, now + 3600);
  EXPECT_EQ(op.post("/admin/v1/reservations/" + r4["id"].get<std::string>() + "/approve", json::object())["status"],
            "approved");

  // Reserved work without an active reservation of its organization waits, and says so.
  std::string w = instance(p, {{"gpus", 1}, {"class", "reserved"}, {"command", "sleep 300"}});
  json pend = wait_pending_code(p, w, "no_reservation");
  EXPECT_TRUE(contains(pend["status"]["reason"], "no active reservation")) << pend.dump();

  // Quotas: bad input, another organization's, operator only.
  std::string base = "/admin/v1/organizations/" + acme.org_id + "/quotas";
  auto qparam = [&](const json& body) {
    auto r = op.call("POST", base, body);
    EXPECT_EQ(r.status, 400u) << body.dump() << " -> " << r.body;
    return json::parse(r.body)["error"]["param"];
  };
  EXPECT_EQ(qparam({{"max_gpus", -1}}), "max_gpus");
  EXPECT_EQ(qparam(json::object()), "max_gpus");
  EXPECT_EQ(qparam({{"max_gpus", 1}, {"region", "mars-1"}}), "region");
  EXPECT_EQ(qparam({{"max_gpus", 1}, {"gpu_type", "no spaces"}}), "gpu_type");
  EXPECT_EQ(qparam({{"max_gpus", 1}, {"project_id", globex.project_id}}), "project_id");
  EXPECT_EQ(op.call("POST", "/admin/v1/organizations/org-nosuchthing/quotas", {{"max_gpus", 1}}).status, 404u);
  json q = op.post(base, {{"max_gpus", 1}}, 201);
  s = p.call("POST", base, {{"max_gpus", 100}}).status;
  EXPECT_TRUE(s == 401u || s == 403u) << s;
  EXPECT_EQ(op.call("DELETE", "/admin/v1/organizations/" + globex.org_id + "/quotas/" + q["id"].get<std::string>()).status,
            404u);
  EXPECT_EQ(o.get("/v1/compute/quotas")["data"].size(), 0u);

  // Every change is in the audit log, under the reservation's organization.
  json log = Api{*c, srv.admin_key(), acme.org_id}.get("/v1/organization/audit_logs?limit=100");
  bool seen = false;
  for (const auto& e : log["data"]) seen = seen || e.dump().find("reservation.approved") != std::string::npos;
  EXPECT_TRUE(seen) << log.dump();
}

}  // namespace

// The gateway's replica directory (gateway/replicas.h): picking, tenancy, the model index.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "gateway/replicas.h"

namespace aicloud::gateway {
namespace {

Replica replica(const std::string& id, uint16_t port) {
  Replica r;
  r.id = id;
  r.host = "127.0.0.1";
  r.port = port;
  r.region = "eu-1";
  return r;
}

Deployment deployment(const std::string& id, const std::string& model, const std::string& org,
                      std::vector<Replica> replicas) {
  Deployment d;
  d.id = id;
  d.model = model;
  d.owner_org = org;
  d.replicas = std::move(replicas);
  return d;
}

TEST(Replicas, PicksTheLeastLoadedReadyReplicaAndSkipsExcludedOnes) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002)}));
  auto p1 = dir.pick("tiny", "org_1");
  auto p2 = dir.pick("tiny", "org_1");
  ASSERT_TRUE(p1 && p2);
  EXPECT_NE(p1->replica().id, p2->replica().id) << "the second request goes to the idle replica";
  ReplicaDirectory::release(*p1);
  auto p3 = dir.pick("tiny", "org_1");
  ASSERT_TRUE(p3);
  EXPECT_EQ(p3->replica().id, p1->replica().id) << "the replica whose request ended is the least loaded";
  auto p4 = dir.pick("tiny", "org_1", {"r1", "r2"});
  EXPECT_FALSE(p4) << "every replica excluded (both just failed)";
  ReplicaDirectory::release(*p2);
  ReplicaDirectory::release(*p3);
  auto peaks = dir.outstanding_by_deployment();
  EXPECT_EQ(peaks["dep_a"], 2) << "the most in flight at once since the last look";
}

// Each thread picks from its own copy of the directory; the loads they see are everyone's, a
// change reaches every thread's next pick, and a peak survives the change until it is looked at.
TEST(Replicas, PicksOnEveryThreadShareTheLoadsAndSeeChanges) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002)}));
  std::optional<Pick> other;
  std::thread([&] { other = dir.pick("tiny", "org_1"); }).join();
  ASSERT_TRUE(other);
  auto mine = dir.pick("tiny", "org_1");
  ASSERT_TRUE(mine);
  EXPECT_NE(mine->replica().id, other->replica().id) << "the other thread's request counts here";
  ReplicaDirectory::release(*other);
  ReplicaDirectory::release(*mine);
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002), replica("r3", 1003)}));
  std::vector<std::string> seen;
  std::thread([&] {
    for (int i = 0; i < 3; ++i) seen.push_back(dir.pick("tiny", "org_1")->replica().id);
  }).join();
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<std::string>{"r1", "r2", "r3"})) << "the new replica is picked on that thread too";
  auto peaks = dir.outstanding_by_deployment();
  EXPECT_EQ(peaks["dep_a"], 3) << "three in flight (none released), after a peak of 2 before the change";
  dir.remove("dep_a");
  EXPECT_FALSE(dir.pick("tiny", "org_1")) << "a removal reaches this thread's next pick";
  EXPECT_FALSE(dir.serves("tiny", "org_1"));
}

TEST(Replicas, APeakIsKeptAcrossAChangeUntilLookedAt) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001)}));
  auto a = dir.pick("tiny", "org_1"), b = dir.pick("tiny", "org_1");
  ReplicaDirectory::release(*a);
  ReplicaDirectory::release(*b);
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002)}));
  EXPECT_EQ(dir.outstanding_by_deployment()["dep_a"], 2);
  EXPECT_EQ(dir.outstanding_by_deployment()["dep_a"], 0) << "a look resets the peak";
}

TEST(Replicas, AnotherOrganizationsDeploymentIsInvisibleAndTheCatalogIsShared) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_private", "mine", "org_1", {replica("r1", 1001)}));
  dir.set(deployment("dep_catalog", "shared", "", {replica("r2", 1002)}));
  EXPECT_TRUE(dir.serves("mine", "org_1"));
  EXPECT_FALSE(dir.serves("mine", "org_2"));
  EXPECT_FALSE(dir.pick("mine", "org_2"));
  EXPECT_TRUE(dir.serves("shared", "org_2"));
  auto p = dir.pick("shared", "org_2");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->deployment_id(), "dep_catalog");
  ReplicaDirectory::release(*p);
}

TEST(Replicas, TheModelIndexFollowsChangesAndRemovals) {
  ReplicaDirectory dir;
  // Many deployments of other models: a pick looks only at its own model's.
  for (int i = 0; i < 500; ++i) {
    dir.set(deployment("dep_" + std::to_string(i), "model-" + std::to_string(i), "org_1",
                       {replica("r" + std::to_string(i), uint16_t(2000 + i))}));
  }
  auto p = dir.pick("model-321", "org_1");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->deployment_id(), "dep_321");
  EXPECT_EQ(p->replica().port, 2321);
  ReplicaDirectory::release(*p);

  // A deployment whose model changes leaves the old name's index.
  dir.set(deployment("dep_321", "renamed", "org_1", {replica("r321", 2321)}));
  EXPECT_FALSE(dir.serves("model-321", "org_1"));
  EXPECT_TRUE(dir.serves("renamed", "org_1"));

  // Two deployments of one model: both are candidates; removing one keeps the other.
  dir.set(deployment("dep_x", "renamed", "org_1", {replica("rx", 3000)}));
  auto a = dir.pick("renamed", "org_1");
  auto b = dir.pick("renamed", "org_1");
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->deployment_id(), b->deployment_id());
  ReplicaDirectory::release(*a);
  ReplicaDirectory::release(*b);
  dir.remove("dep_321");
  auto c = dir.pick("renamed", "org_1");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->deployment_id(), "dep_x");
  ReplicaDirectory::release(*c);
  dir.remove("dep_x");
  EXPECT_FALSE(dir.serves("renamed", "org_1"));
  dir.remove("dep_x");  // twice: nothing happens
}

// A pick holds the deployment as it was when picked: a change (a replica gone, a deployment
// removed) while its request is in flight leaves what it points at intact, and a replica that
// stays keeps counting that request until it is released.
TEST(Replicas, APickOutlivesAChangeOfItsDeployment) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002)}));
  auto p = dir.pick("tiny", "org_1");
  ASSERT_TRUE(p);
  std::string picked = p->replica().id;
  std::string other = picked == "r1" ? "r2" : "r1";
  // The picked replica stays, under a new snapshot: its count of this request carries over, so
  // the next pick goes to the other one.
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("r1", 1001), replica("r2", 1002)}));
  auto q = dir.pick("tiny", "org_1");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->replica().id, other);
  ReplicaDirectory::release(*q);
  // The deployment goes away: the pick still reads its replica as it was.
  dir.remove("dep_a");
  EXPECT_FALSE(dir.pick("tiny", "org_1"));
  EXPECT_EQ(p->replica().id, picked);
  EXPECT_EQ(p->replica().host, "127.0.0.1");
  EXPECT_EQ(p->deployment_id(), "dep_a");
  ReplicaDirectory::release(*p);
}

TEST(Replicas, AWaiterIsWokenOnlyByADeploymentItMayUse) {
  ReplicaDirectory dir;
  dir.set(deployment("dep_a", "tiny", "org_1", {}));  // scaled to zero
  EXPECT_TRUE(dir.serves("tiny", "org_1"));
  EXPECT_FALSE(dir.pick("tiny", "org_1"));
  std::vector<std::string> woken;
  dir.on_wake([&](const std::string& id) { woken.push_back(id); });
  dir.wake("tiny", "org_1");
  EXPECT_EQ(woken, std::vector<std::string>{"dep_a"});
  int ready = 0;
  dir.wait_ready("tiny", "org_1", [&] { ++ready; });
  dir.set(deployment("dep_b", "tiny", "org_2", {replica("rb", 1002)}));  // another organization's
  EXPECT_EQ(ready, 0);
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("ra", 1001)}));
  EXPECT_EQ(ready, 1);
  dir.set(deployment("dep_a", "tiny", "org_1", {replica("ra", 1001)}));
  EXPECT_EQ(ready, 1) << "a waiter is called once";
}

}  // namespace
}  // namespace aicloud::gateway

// The server starts, answers health checks, and a tenant can be made end to end.
#include <gtest/gtest.h>

#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;

TEST(Smoke, HealthAndTenant) {
  ServerProcess srv;
  auto c = srv.client();
  EXPECT_EQ(c->request("GET", "/healthz").status, 200u);
  EXPECT_EQ(c->request("GET", "/readyz").status, 200u);
  Tenant t = make_tenant(*c, srv.admin_key(), "acme");
  Api admin{*c, t.admin_key, ""};
  json list = admin.get("/v1/organization/projects");
  ASSERT_EQ(list["data"].size(), 2u);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(srv.stop_graceful(), 0);
}

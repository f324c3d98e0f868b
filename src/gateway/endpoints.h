// External endpoints: OpenAI-compatible servers the operator runs outside aicloud's scheduler (a
// partner's model API, an engine on a machine without an agent, the canned upstream of the
// gateway's benchmark), served through the gateway exactly like a deployment: the same keys,
// rate limits and usage records. Operator only: a URL chosen by a tenant would let any tenant
// make the server connect anywhere.
//
//   POST   /admin/v1/endpoints        {model, url, region, api_key?, organization_id?}
//   GET    /admin/v1/endpoints        GET/DELETE /admin/v1/endpoints/{id}
//
// Store: kind "endpoint", id "ep_...", org_id the organization that may use it ("" = every
// organization, like the model catalog). The upstream's api_key is kept (the gateway sends it)
// and never shown again. The deployment controller publishes endpoints to the gateway's
// ReplicaDirectory each round, as a deployment with one replica whose id is the endpoint's.
#pragma once
#include <string>
#include <vector>

#include "gateway/replicas.h"
#include "store/store.h"
#include "util/json_util.h"

namespace aicloud {
class App;
}

namespace aicloud::gateway {

void add_endpoint_routes(App& app);

// Every endpoint, as the directory's deployments.
std::vector<Deployment> endpoint_deployments(Tx& tx);

// The model names served by endpoints that `org_id` may use, with the creating time and owner
// ("system" or the organization), for GET /v1/models.
struct EndpointModel {
  std::string name, owner;
  int64_t created_at = 0;
};
std::vector<EndpointModel> endpoint_models_visible_to(Tx& tx, const std::string& org_id);

}  // namespace aicloud::gateway

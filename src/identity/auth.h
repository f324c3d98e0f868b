// Authentication: bearer token -> Principal, through an in-memory cache so that the hot path
// never reads the database. The cache is dropped whole after any committed change to identity
// objects (keys, sessions, users, memberships, organizations, projects): invalidation is
// immediate in this process, and a revoked key fails on its very next request.
#pragma once
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "identity/crypto.h"
#include "identity/roles.h"
#include "store/store.h"
#include "util/per_thread.h"

namespace aicloud {

enum class PrincipalType { kOperator, kUser, kAdminKey, kProjectKey, kNode };
std::string_view principal_type_name(PrincipalType t);  // operator|user|admin_key|project_key|node

struct Principal {
  PrincipalType type = PrincipalType::kOperator;
  std::string actor_id;    // "operator", a user id, a key id or a node id
  std::string user_id;     // users
  std::string email;       // users
  std::string org_id;      // the organization this request acts in ("" if none chosen)
  std::string project_id;  // project keys
  Role role = Role::kNone; // role in org_id
  std::string session_id;  // sessions (logout)
  std::string node_id;     // node agents

  bool is_operator() const { return type == PrincipalType::kOperator; }
};

// Token kinds, told apart by prefix. The store kind holds the credential; lookup = sha256.
struct TokenKind {
  std::string_view prefix;
  std::string_view store_kind;
};
inline constexpr TokenKind kOperatorToken{"sk-root-", "operator_key"};
inline constexpr TokenKind kAdminToken{"sk-admin-", "admin_key"};
inline constexpr TokenKind kProjectToken{"sk-proj-", "api_key"};
inline constexpr TokenKind kSessionToken{"sess-", "session"};
inline constexpr TokenKind kNodeToken{"sk-node-", "node_key"};  // an agent's credential

// A new secret of that kind (prefix + 48 base62) and how it is listed afterwards.
std::string make_secret(const TokenKind& k);
std::string redact_secret(std::string_view secret);  // "sk-proj-abc...wxyz"

class AuthService {
 public:
  explicit AuthService(Store& store);

  // token: the bearer token; org_hint: the OpenAI-Organization header ("" if absent).
  // Throws ApiError: 401 for a missing/unknown/expired credential, 403 for a suspended
  // organization or archived project, 404 for an organization the caller does not belong to.
  Principal authenticate(std::string_view token, std::string_view org_hint);

  // Drops every cached credential; call after committing a change to identity objects.
  void invalidate();

  // Persists last_used_at of credentials used since the previous flush (a background task
  // calls it every few seconds, so a request never writes for it).
  void flush_last_used();

  size_t cache_size() const;
  // Requests answered from the cache, and those that had to read the store (a first use, or
  // the first use after invalidate()); /metrics exports both, bench/http/run.sh checks them.
  uint64_t cache_hits() const { return hits_.load(); }
  uint64_t cache_misses() const { return misses_.load(); }

 private:
  struct Membership {
    std::string org_id;
    Role role;
    bool org_active;
  };
  struct Entry {
    PrincipalType type;
    std::string store_kind, id, user_id, email, org_id, project_id, node_id;
    Role role = Role::kNone;
    bool org_active = true;
    bool project_active = true;
    int64_t expires_at = 0;  // 0 = never
    std::vector<Membership> memberships;
    std::atomic<int64_t> last_used{0};
  };

  std::shared_ptr<Entry> load(std::string_view token, const std::string& hash);
  void note_use(Entry& e);

  Store& store_;
  mutable std::shared_mutex mu_;
  // sha256(token) -> entry, keyed by the digest's bytes: no allocation per lookup, and no hex
  // (that is only for the store's lookup on a miss).
  struct DigestHash {
    size_t operator()(const Sha256& d) const {
      size_t h;
      std::memcpy(&h, d.data(), sizeof h);  // (a digest's bytes are already uniform)
      return h;
    }
  };
  std::unordered_map<Sha256, std::shared_ptr<Entry>, DigestHash> cache_;
  std::atomic<uint64_t> epoch_{0};  // bumped by invalidate(); a load that raced it is not cached
  ShardedCounter hits_, misses_;
  const uint64_t id_;  // this service among those made (each thread's front cache names its service)

  std::mutex dirty_mu_;
  std::unordered_map<std::string, std::pair<std::string, int64_t>> dirty_;  // id -> (kind, ts)
};

}  // namespace aicloud

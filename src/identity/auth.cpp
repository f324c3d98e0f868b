#include "identity/auth.h"

#include <functional>
#include <string_view>

#include "identity/crypto.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

namespace aicloud {

std::string_view principal_type_name(PrincipalType t) {
  switch (t) {
    case PrincipalType::kOperator: return "operator";
    case PrincipalType::kUser: return "user";
    case PrincipalType::kAdminKey: return "admin_key";
    case PrincipalType::kProjectKey: return "project_key";
    case PrincipalType::kNode: return "node";
  }
  return "unknown";
}

std::string make_secret(const TokenKind& k) { return std::string(k.prefix) + random_base62(48); }

std::string redact_secret(std::string_view s) {
  // Only a known prefix is shown whole: what a client sent as a token (echoed in a 401) may
  // have a dash anywhere, and everything before it is not necessarily public. Of the rest,
  // 3 leading and 4 trailing characters, and only when it is as long as a real token's random
  // part, so that those 7 never give most of a short secret away.
  size_t head = 0;
  for (std::string_view prefix : {kOperatorToken.prefix, kAdminToken.prefix, kProjectToken.prefix,
                                  kSessionToken.prefix, kNodeToken.prefix, std::string_view("ajt-") /* join */}) {
    if (s.starts_with(prefix)) head = prefix.size();
  }
  if (s.size() < head + 24) return std::string(s.substr(0, head)) + "***";
  return std::string(s.substr(0, head + 3)) + "..." + std::string(s.substr(s.size() - 4));
}

AuthService::AuthService(Store& store) : store_(store), id_(new_instance_id()) {}

size_t AuthService::cache_size() const {
  std::shared_lock lk(mu_);
  return cache_.size();
}

void AuthService::invalidate() {
  std::unique_lock lk(mu_);
  epoch_.fetch_add(1);
  cache_.clear();
}

static const TokenKind* kind_of(std::string_view token) {
  for (const TokenKind* k : {&kOperatorToken, &kAdminToken, &kProjectToken, &kSessionToken, &kNodeToken}) {
    if (token.starts_with(k->prefix) && token.size() >= k->prefix.size() + 24 && token.size() <= k->prefix.size() + 128) return k;
  }
  return nullptr;
}

std::shared_ptr<AuthService::Entry> AuthService::load(std::string_view token, const std::string& hash) {
  const TokenKind* k = kind_of(token);
  if (!k) return nullptr;
  return store_.read([&](Tx& tx) -> std::shared_ptr<Entry> {
    auto cred = tx.find(k->store_kind, hash);
    if (!cred || !constant_time_equal(cred->lookup, hash)) return nullptr;
    auto e = std::make_shared<Entry>();
    e->store_kind = std::string(k->store_kind);
    e->id = cred->id;
    e->org_id = cred->org_id;
    e->project_id = cred->project_id;
    auto org_active = [&](const std::string& org_id) {
      auto org = tx.get("organization", org_id);
      return org && org->data.value("status", "active") == "active";
    };
    if (k == &kOperatorToken) {
      e->type = PrincipalType::kOperator;
      e->role = Role::kOwner;
    } else if (k == &kAdminToken) {
      e->type = PrincipalType::kAdminKey;
      e->role = Role::kAdmin;
      e->org_active = org_active(e->org_id);
    } else if (k == &kProjectToken) {
      e->type = PrincipalType::kProjectKey;
      e->org_active = org_active(e->org_id);
      auto proj = tx.get("project", e->project_id);
      e->project_active = proj && proj->data.value("status", "active") == "active";
    } else if (k == &kNodeToken) {
      e->type = PrincipalType::kNode;
      e->node_id = cred->parent_id;
    } else {
      e->type = PrincipalType::kUser;
      e->user_id = cred->parent_id;
      e->expires_at = cred->data.value("expires_at", int64_t(0));
      auto user = tx.get("user", e->user_id);
      if (!user) return nullptr;
      e->email = user->data.value("email", "");
      ListQuery q;
      q.kind = "membership";
      q.parent_id = e->user_id;
      for (const auto& m : tx.all(q)) {
        e->memberships.push_back({m.org_id, parse_role(m.data.value("role", "")).value_or(Role::kNone),
                                  org_active(m.org_id)});
      }
    }
    return e;
  });
}

void AuthService::note_use(Entry& e) {
  // A node's credential is used by every heartbeat and poll; its liveness is the in-memory
  // lease (capacity/leases.h) and no API shows the credential's last use. Recording it would
  // write one row per beat (10,000 agents: 2,000 rows a second, a write transaction of ~4,000
  // rows every flush): exactly what the leases exist to avoid.
  if (e.type == PrincipalType::kNode) return;
  int64_t now = now_unix();
  // At most one dirty mark per credential per second: the hot path stays lock-free otherwise,
  // and only reads (a write per request would move the line between the io threads' caches).
  if (e.last_used.load(std::memory_order_relaxed) == now) return;
  if (e.last_used.exchange(now, std::memory_order_relaxed) == now) return;
  std::lock_guard lk(dirty_mu_);
  dirty_[e.id] = {e.store_kind, now};
}

void AuthService::flush_last_used() {
  std::unordered_map<std::string, std::pair<std::string, int64_t>> batch;
  {
    std::lock_guard lk(dirty_mu_);
    batch.swap(dirty_);
  }
  if (batch.empty()) return;
  store_.write([&](Tx& tx) {
    for (auto& [id, v] : batch) {
      auto o = tx.get(v.first, id);
      if (!o) continue;
      o->data["last_used_at"] = v.second;
      tx.update(*o);
    }
  });
}

Principal AuthService::authenticate(std::string_view token, std::string_view org_hint) {
  if (token.empty()) {
    throw unauthorized(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
        "auth (i.e. Authorization: Bearer YOUR_KEY).",
        "missing_api_key");
  }
  // Each thread keeps the entries it has used, in front of cache_, keyed by the token as
  // presented: a hit there takes no lock, no reference and no digest (SHA-256 was ~150 ns of every
  // request), where cache_'s took all three, on cache lines that every request of every io thread
  // wrote. The raw tokens live only in this process's memory, as each request's header does;
  // the store keeps digests alone. The front is emptied when invalidate() moves the epoch (a key
  // revoked, an organization suspended), as cache_ is.
  struct TokenHash {
    using is_transparent = void;
    size_t operator()(std::string_view t) const { return std::hash<std::string_view>{}(t); }
  };
  struct Front {
    uint64_t service = 0, epoch = 0;
    std::unordered_map<std::string, std::shared_ptr<Entry>, TokenHash, std::equal_to<>> entries;
  };
  static constexpr size_t kFrontLimit = 10'000;
  thread_local Front front;
  const uint64_t epoch = epoch_.load();
  if (front.service != id_ || front.epoch != epoch) {
    front.entries.clear();
    front.service = id_;
    front.epoch = epoch;
  }
  Entry* e = nullptr;
  if (auto it = front.entries.find(token); it != front.entries.end()) {
    e = it->second.get();
    hits_.add();
  } else {
    const Sha256 digest = sha256(token);
    std::shared_ptr<Entry> shared;
    {
      std::shared_lock lk(mu_);
      auto found = cache_.find(digest);
      if (found != cache_.end()) shared = found->second;
    }
    if (shared) {
      hits_.add();
    } else {
      misses_.add();
      shared = load(token, hex(digest));
      if (!shared) throw unauthorized("Incorrect API key provided: " + redact_secret(token) + ".");
      std::unique_lock lk(mu_);
      if (epoch_.load() == epoch) cache_.emplace(digest, shared);
    }
    if (front.entries.size() >= kFrontLimit) front.entries.clear();
    e = shared.get();
    front.entries.emplace(std::string(token), std::move(shared));
  }
  if (e->expires_at && e->expires_at <= now_unix()) {
    throw unauthorized("Your session has expired; log in again.", "session_expired");
  }
  note_use(*e);

  Principal p;
  p.type = e->type;
  p.actor_id = e->type == PrincipalType::kOperator ? "operator"
               : e->type == PrincipalType::kUser   ? e->user_id
               : e->type == PrincipalType::kNode   ? e->node_id
                                                   : e->id;
  p.user_id = e->user_id;
  p.email = e->email;
  p.org_id = e->org_id;
  p.project_id = e->project_id;
  p.role = e->role;
  if (e->type == PrincipalType::kUser) p.session_id = e->id;

  switch (e->type) {
    case PrincipalType::kOperator:
      p.org_id = std::string(org_hint);  // the operator may act in any organization it names
      break;
    case PrincipalType::kNode:
      p.node_id = e->node_id;
      break;
    case PrincipalType::kAdminKey:
    case PrincipalType::kProjectKey:
      if (!org_hint.empty() && org_hint != e->org_id) {
        throw ApiError(404, "invalid_request_error", "No such organization: '" + std::string(org_hint) + "'",
                       "not_found", "OpenAI-Organization");
      }
      if (!e->org_active) {
        throw forbidden("This organization is suspended; contact the cloud operator.", "organization_suspended");
      }
      if (!e->project_active) {
        throw forbidden("This API key's project is archived; it can no longer be used.", "project_archived");
      }
      break;
    case PrincipalType::kUser: {
      const Membership* m = nullptr;
      if (!org_hint.empty()) {
        for (const auto& x : e->memberships) if (x.org_id == org_hint) m = &x;
        if (!m) {
          throw ApiError(404, "invalid_request_error", "No such organization: '" + std::string(org_hint) + "'",
                         "not_found", "OpenAI-Organization");
        }
      } else if (e->memberships.size() == 1) {
        m = &e->memberships.front();
      }
      if (m) {
        if (!m->org_active) {
          throw forbidden("This organization is suspended; contact the cloud operator.", "organization_suspended");
        }
        p.org_id = m->org_id;
        p.role = m->role;
      }
      break;
    }
  }
  return p;
}

}  // namespace aicloud

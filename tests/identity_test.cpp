// Identity as a library: ids and secrets, hashes, passwords, redaction, roles, and the
// AuthService against a real store (cache, invalidation, suspension, sessions, last_used_at).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/objects.h"
#include "identity/auth.h"
#include "identity/crypto.h"
#include "identity/roles.h"
#include "store/store.h"
#include "support/server_process.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

using namespace aicloud;
using aicloud::test::TempDir;

namespace {

const std::string kBase62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool all_base62(std::string_view s) { return s.find_first_not_of(kBase62) == std::string_view::npos; }

// Passes everything through to a real store, counting transactions: a cache hit begins none.
class CountingStore final : public Store {
 public:
  explicit CountingStore(Store& inner) : inner_(inner) {}
  std::unique_ptr<Tx> begin(bool write) override {
    ++begins;
    return inner_.begin(write);
  }
  uint64_t write_generation() const override { return inner_.write_generation(); }
  std::atomic<int> begins{0};

 private:
  Store& inner_;
};

// Expects fn to throw ApiError with that status (and code, when given).
template <class F>
void expect_api_error(F&& fn, int status, const std::string& code = {}) {
  try {
    fn();
    ADD_FAILURE() << "no ApiError thrown; wanted " << status;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << e.what();
    if (!code.empty()) {
      EXPECT_EQ(e.code, code) << e.what();
    }
  }
}

}  // namespace

// ---- ids and randomness ----

TEST(Ids, PrefixLengthAlphabetUniqueness) {
  for (std::string_view prefix : {"org-", "proj_", "key_", ""}) {
    std::string id = new_id(prefix);
    EXPECT_TRUE(id.starts_with(prefix));
    EXPECT_EQ(id.size(), prefix.size() + 24);
    EXPECT_TRUE(all_base62(std::string_view(id).substr(prefix.size()))) << id;
  }
  std::set<std::string> seen;
  for (int i = 0; i < 20000; ++i) seen.insert(new_id("x_"));
  EXPECT_EQ(seen.size(), 20000u);
}

TEST(Ids, RequestIdsAreReqAnd32HexDigitsEachEquallyLikely) {
  std::set<std::string> seen;
  std::map<char, int> count;
  for (int i = 0; i < 4000; ++i) {
    std::string id = new_request_id();
    ASSERT_EQ(id.size(), 36u) << id;
    ASSERT_TRUE(id.starts_with("req_")) << id;
    for (char ch : std::string_view(id).substr(4)) {
      ASSERT_TRUE((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')) << id;
      ++count[ch];
    }
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 4000u);
  // 128,000 digits: each of the 16 near 8,000 (sd ~87; the bounds are >10 sd).
  EXPECT_EQ(count.size(), 16u);
  for (auto [ch, n] : count) {
    EXPECT_GT(n, 7000) << ch;
    EXPECT_LT(n, 9000) << ch;
  }
}

TEST(Ids, RandomBase62LengthAndDistribution) {
  EXPECT_EQ(random_base62(0), "");
  for (size_t n : {1u, 7u, 63u, 64u, 65u, 200u}) {
    auto s = random_base62(n);
    EXPECT_EQ(s.size(), n);
    EXPECT_TRUE(all_base62(s));
  }
  // 62 * 2000 characters: every symbol appears, each near 2000 (sd ~44; the bounds are >10 sd).
  std::string s = random_base62(62 * 2000);
  std::map<char, int> count;
  for (char ch : s) ++count[ch];
  EXPECT_EQ(count.size(), 62u);
  for (auto [ch, n] : count) {
    EXPECT_GT(n, 1500) << ch;
    EXPECT_LT(n, 2500) << ch;
  }
  // The last symbols (rejection sampling boundary) are not under-represented as a group.
  int tail = count['w'] + count['x'] + count['y'] + count['z'];
  EXPECT_GT(tail, 4 * 1700);
}

TEST(Secrets, MakeSecretShape) {
  for (const TokenKind* k : {&kOperatorToken, &kAdminToken, &kProjectToken, &kSessionToken, &kNodeToken}) {
    auto s = make_secret(*k);
    EXPECT_TRUE(s.starts_with(k->prefix));
    EXPECT_EQ(s.size(), k->prefix.size() + 48);
    EXPECT_TRUE(all_base62(std::string_view(s).substr(k->prefix.size())));
  }
  EXPECT_NE(make_secret(kProjectToken), make_secret(kProjectToken));
}

// ---- hashes ----

TEST(Crypto, Sha256KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string("a\0b", 3)).size(), 64u);
  EXPECT_NE(sha256_hex(std::string("a\0b", 3)), sha256_hex("a"));
}

TEST(Crypto, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "ab"));
  EXPECT_FALSE(constant_time_equal("ab", "abc"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  EXPECT_TRUE(constant_time_equal(std::string("a\0b", 3), std::string("a\0b", 3)));
  EXPECT_FALSE(constant_time_equal(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(Crypto, PasswordHashAndVerify) {
  // Two hashes (~0.1 s each) and a handful of verifications.
  std::string h = hash_password("correct horse battery staple");
  EXPECT_TRUE(h.starts_with("scrypt$"));
  EXPECT_TRUE(verify_password("correct horse battery staple", h));
  EXPECT_FALSE(verify_password("correct horse battery stapl", h));
  EXPECT_FALSE(verify_password("", h));
  // Salted: the same password hashes differently.
  std::string h2 = hash_password("correct horse battery staple");
  EXPECT_NE(h, h2);

  // Tampering with the stored hash or salt fails verification.
  std::string tampered = h;
  char& last = tampered.back();
  last = last == '0' ? '1' : '0';
  EXPECT_FALSE(verify_password("correct horse battery staple", tampered));
  std::string salt_tampered = h;
  size_t salt_at = 0;
  for (int i = 0; i < 4; ++i) salt_at = salt_tampered.find('$', salt_at) + 1;
  salt_tampered[salt_at] = salt_tampered[salt_at] == 'a' ? 'b' : 'a';
  EXPECT_FALSE(verify_password("correct horse battery staple", salt_tampered));
}

TEST(Crypto, MalformedPasswordHashesAreFalseNeverThrow) {
  const std::vector<std::string> bad = {
      "",
      "scrypt",
      "scrypt$",
      "scrypt$$$$$",
      "bcrypt$32768$8$1$00$00",
      "scrypt$32768$8$1$00",                               // too few parts
      "scrypt$32768$8$1$00$00$00",                         // too many
      "scrypt$abc$8$1$00$00",                              // N not a number
      "scrypt$99999999999999999999999$8$1$00$00",          // N overflows
      "scrypt$-1$8$1$00$00",                               // negative
      "scrypt$3$8$1$00$00",                                // N not a power of two
      "scrypt$0$8$1$00$00",
      "scrypt$32768$0$1$00$00",                            // r = 0
      "scrypt$32768$8$0$00$00",                            // p = 0
      "scrypt$1099511627776$8$1$00$00",                    // N = 2^40: over the memory limit
      "scrypt$32768$8$1$zz$00",                            // salt not hex
      "scrypt$32768$8$1$0$00",                             // odd-length hex
      "scrypt$32768$8$1$00$",                              // empty hash
      "scrypt$32768$8$1$00$ABCD",                          // upper-case hex is not ours
      std::string("scrypt$32768$8$1$00\0$00", 24),         // NUL inside
  };
  for (const auto& s : bad) {
    SCOPED_TRACE(s);
    bool r = true;
    EXPECT_NO_THROW(r = verify_password("password", s));
    EXPECT_FALSE(r);
  }
}

// ---- redaction ----

TEST(Secrets, RedactNeverRevealsMoreThanAFewCharacters) {
  // How many characters of the secret part (after a known token prefix) are in the output.
  auto revealed = [](const std::string& secret, const std::string& red, size_t prefix_len) {
    size_t n = 0;
    std::string body = secret.substr(prefix_len);
    // Characters of red (beyond the prefix) that are not redaction marks.
    for (size_t i = prefix_len; i < red.size(); ++i) n += red[i] != '.' && red[i] != '*';
    return std::min(n, body.size());
  };
  for (const TokenKind* k : {&kOperatorToken, &kAdminToken, &kProjectToken, &kSessionToken, &kNodeToken}) {
    std::string s = make_secret(*k);
    std::string r = redact_secret(s);
    SCOPED_TRACE(r);
    EXPECT_TRUE(r.starts_with(k->prefix));
    EXPECT_LE(revealed(s, r, k->prefix.size()), 7u);
    EXPECT_EQ(r.find(s.substr(k->prefix.size(), 8)), std::string::npos);
    // The shape the API lists: prefix + 3 ... last 4.
    EXPECT_EQ(r, std::string(k->prefix) + s.substr(k->prefix.size(), 3) + "..." + s.substr(s.size() - 4));
  }
  // Join tokens keep their prefix too.
  std::string join = "ajt-" + random_base62(40);
  EXPECT_EQ(redact_secret(join), "ajt-" + join.substr(4, 3) + "..." + join.substr(join.size() - 4));
  // Arbitrary tokens (what a client sent that did not authenticate) are echoed in error
  // messages: a dash late in the string, or a short string, must not make them show whole.
  const std::vector<std::string> inputs = {
      "",
      "x",
      "abcdefgh",
      "abcdefghijk",
      "hunter2hunter2hunter2",
      "mysecretpassword-x",
      "correct-horse-battery-staple-1",
      "sk-proj-short",
      "sk-proj-",
      "sess-abcdefghij",
      "-----",
      "my-very-long-password-that-is-secret-but-ends-in-a-dash-",
      std::string(200, 'z'),
  };
  for (const auto& s : inputs) {
    std::string r = redact_secret(s);
    SCOPED_TRACE(s + " -> " + r);
    size_t prefix = 0;
    for (const TokenKind* k : {&kOperatorToken, &kAdminToken, &kProjectToken, &kSessionToken, &kNodeToken}) {
      if (s.starts_with(k->prefix)) prefix = k->prefix.size();
    }
    size_t shown = 0;
    for (size_t i = prefix; i < r.size(); ++i) shown += r[i] != '.' && r[i] != '*';
    EXPECT_LE(shown, 7u);
    // Never more than a third of the secret part.
    EXPECT_LE(shown * 3, s.size() - prefix + 0) << "reveals " << shown << " of " << s.size() - prefix;
    if (s.size() > prefix + 4) {
      EXPECT_NE(r, s);
    }
  }
}

// ---- roles ----

TEST(Roles, TableForEveryRoleAndPermission) {
  const std::vector<Role> roles = {Role::kNone, Role::kViewer, Role::kBilling, Role::kMember, Role::kAdmin,
                                   Role::kOwner};
  const std::vector<Perm> perms = {Perm::kOrgRead,   Perm::kProjectsWrite, Perm::kKeysWrite, Perm::kUsersWrite,
                                   Perm::kAdminKeysWrite, Perm::kAuditRead, Perm::kBillingRead};
  // rows: none, viewer, billing, member, admin, owner; columns in the order of perms.
  const bool want[6][7] = {
      {0, 0, 0, 0, 0, 0, 0},  // none
      {1, 0, 0, 0, 0, 0, 0},  // viewer
      {1, 0, 0, 0, 0, 0, 1},  // billing
      {1, 0, 1, 0, 0, 0, 0},  // member
      {1, 1, 1, 1, 0, 1, 1},  // admin
      {1, 1, 1, 1, 1, 1, 1},  // owner
  };
  for (size_t r = 0; r < roles.size(); ++r) {
    for (size_t p = 0; p < perms.size(); ++p) {
      EXPECT_EQ(role_allows(roles[r], perms[p]), want[r][p]) << role_name(roles[r]) << " perm " << p;
    }
  }
}

TEST(Roles, ParseAndName) {
  for (Role r : {Role::kViewer, Role::kBilling, Role::kMember, Role::kAdmin, Role::kOwner}) {
    auto parsed = parse_role(role_name(r));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(*parsed, r);
  }
  EXPECT_EQ(role_name(Role::kNone), "none");
  for (std::string_view bad : {"", "none", "Owner", "OWNER", "owner ", " admin", "root", "superuser"}) {
    EXPECT_FALSE(parse_role(bad)) << bad;
  }
}

// ---- AuthService ----

class AuthTest : public ::testing::Test {
 protected:
  TempDir dir;
  std::unique_ptr<Store> real = open_sqlite_store(StoreOptions{(std::filesystem::path(dir.path()) / "a.db").string(), false});
  CountingStore store{*real};
  AuthService auth{store};

  Object org, project;
  std::string project_key, admin_key;
  Object project_key_obj, admin_key_obj;

  void SetUp() override {
    real->write([&](Tx& tx) {
      org = create_org(tx, "acme");
      project = create_project(tx, org.id, "default");
      auto [pk, ps] = create_key(tx, kProjectToken, org.id, project.id, "pk", "user-x");
      project_key_obj = pk;
      project_key = ps;
      auto [ak, as] = create_key(tx, kAdminToken, org.id, "", "ak", "user-x");
      admin_key_obj = ak;
      admin_key = as;
    });
  }

  // A user without a password (no scrypt: these tests do not log in), with memberships.
  Object make_user(const std::string& email) {
    return real->write([&](Tx& tx) {
      Object u;
      u.kind = "user";
      u.id = new_id("user-");
      u.lookup = email;
      u.data = {{"email", email}, {"name", "u"}};
      tx.insert(u);
      return u;
    });
  }
  void set_status(const std::string& kind, const std::string& id, const std::string& status) {
    real->write([&](Tx& tx) {
      auto o = tx.get(kind, id);
      o->data["status"] = status;
      tx.update(*o);
    });
  }
};

TEST_F(AuthTest, KeysAuthenticateWithTheirPrincipal) {
  Principal p = auth.authenticate(project_key, "");
  EXPECT_EQ(p.type, PrincipalType::kProjectKey);
  EXPECT_EQ(p.actor_id, project_key_obj.id);
  EXPECT_EQ(p.org_id, org.id);
  EXPECT_EQ(p.project_id, project.id);
  EXPECT_FALSE(p.is_operator());

  Principal a = auth.authenticate(admin_key, org.id);  // naming its own org is fine
  EXPECT_EQ(a.type, PrincipalType::kAdminKey);
  EXPECT_EQ(a.actor_id, admin_key_obj.id);
  EXPECT_EQ(a.org_id, org.id);
  EXPECT_EQ(a.role, Role::kAdmin);
  EXPECT_EQ(principal_type_name(a.type), "admin_key");

  // A key naming another organization: 404, existence does not leak.
  expect_api_error([&] { auth.authenticate(project_key, "org-someoneelse"); }, 404);
  expect_api_error([&] { auth.authenticate(admin_key, "org-someoneelse"); }, 404);
}

TEST_F(AuthTest, OperatorAndNodeKeys) {
  std::string op, node;
  real->write([&](Tx& tx) {
    op = create_key(tx, kOperatorToken, "", "", "root", "").second;
    auto [n, ns] = create_key(tx, kNodeToken, "", "", "node", "");
    n.parent_id = "node_1";
    tx.update(n);
    node = ns;
  });
  Principal p = auth.authenticate(op, "");
  EXPECT_TRUE(p.is_operator());
  EXPECT_EQ(p.actor_id, "operator");
  EXPECT_EQ(p.org_id, "");
  EXPECT_EQ(auth.authenticate(op, org.id).org_id, org.id);

  Principal n = auth.authenticate(node, "");
  EXPECT_EQ(n.type, PrincipalType::kNode);
  EXPECT_EQ(n.node_id, "node_1");
  EXPECT_EQ(n.actor_id, "node_1");
}

TEST_F(AuthTest, UnknownOrMalformedKeysAre401) {
  expect_api_error([&] { auth.authenticate("", ""); }, 401, "missing_api_key");
  expect_api_error([&] { auth.authenticate(make_secret(kProjectToken), ""); }, 401, "invalid_api_key");
  expect_api_error([&] { auth.authenticate(make_secret(kAdminToken), ""); }, 401);
  expect_api_error([&] { auth.authenticate(make_secret(kOperatorToken), ""); }, 401);
  expect_api_error([&] { auth.authenticate(make_secret(kSessionToken), ""); }, 401);
  expect_api_error([&] { auth.authenticate("hello", ""); }, 401);
  expect_api_error([&] { auth.authenticate("sk-proj-", ""); }, 401);
  expect_api_error([&] { auth.authenticate("sk-proj-" + std::string(1000, 'a'), ""); }, 401);
  expect_api_error([&] { auth.authenticate(std::string("sk-proj-\0", 9) + std::string(40, 'a'), ""); }, 401);
  // A project key's secret presented with the wrong prefix is not that key.
  std::string body = project_key.substr(kProjectToken.prefix.size());
  expect_api_error([&] { auth.authenticate(std::string(kAdminToken.prefix) + body, ""); }, 401);
  // The error message never echoes the whole token.
  std::string bogus = make_secret(kProjectToken);
  try {
    auth.authenticate(bogus, "");
  } catch (const ApiError& e) {
    EXPECT_EQ(std::string(e.what()).find(bogus.substr(8, 10)), std::string::npos) << e.what();
  }
  EXPECT_EQ(auth.cache_size(), 0u);  // failures are not cached
}

TEST_F(AuthTest, SecondAuthenticateIsServedFromTheCache) {
  int b0 = store.begins.load();
  auth.authenticate(project_key, "");
  int b1 = store.begins.load();
  EXPECT_GE(b1, b0 + 1);
  uint64_t hits = auth.cache_hits();
  for (int i = 0; i < 100; ++i) auth.authenticate(project_key, "");
  EXPECT_EQ(store.begins.load(), b1);
  EXPECT_EQ(auth.cache_hits(), hits + 100);
  EXPECT_EQ(auth.cache_size(), 1u);
  auth.authenticate(admin_key, "");
  EXPECT_EQ(auth.cache_size(), 2u);
}

TEST_F(AuthTest, InvalidateMakesADeletedKeyFailImmediately) {
  auth.authenticate(project_key, "");
  real->write([&](Tx& tx) { EXPECT_TRUE(tx.remove("api_key", project_key_obj.id)); });
  auth.invalidate();
  EXPECT_EQ(auth.cache_size(), 0u);
  expect_api_error([&] { auth.authenticate(project_key, ""); }, 401);
  // Other credentials still work (reloaded from the store).
  EXPECT_EQ(auth.authenticate(admin_key, "").type, PrincipalType::kAdminKey);
}

TEST_F(AuthTest, SuspendedOrganizationIs403) {
  auth.authenticate(project_key, "");
  set_status("organization", org.id, "suspended");
  auth.invalidate();
  expect_api_error([&] { auth.authenticate(project_key, ""); }, 403, "organization_suspended");
  expect_api_error([&] { auth.authenticate(admin_key, ""); }, 403, "organization_suspended");
  set_status("organization", org.id, "active");
  auth.invalidate();
  EXPECT_NO_THROW(auth.authenticate(project_key, ""));
}

TEST_F(AuthTest, ArchivedProjectKeyIs403) {
  set_status("project", project.id, "archived");
  auth.invalidate();
  expect_api_error([&] { auth.authenticate(project_key, ""); }, 403, "project_archived");
  EXPECT_NO_THROW(auth.authenticate(admin_key, ""));
}

TEST_F(AuthTest, UserSessionPicksTheOrganization) {
  Object u = make_user("ada@example.com");
  Object org_b, org_c;
  std::string token;
  real->write([&](Tx& tx) {
    org_b = create_org(tx, "beta");
    org_c = create_org(tx, "gamma");  // not a member
    add_membership(tx, org.id, u.id, Role::kOwner);
    add_membership(tx, org_b.id, u.id, Role::kViewer);
    token = create_session(tx, u.id, 3600).second;
  });
  Principal none = auth.authenticate(token, "");
  EXPECT_EQ(none.type, PrincipalType::kUser);
  EXPECT_EQ(none.user_id, u.id);
  EXPECT_EQ(none.actor_id, u.id);
  EXPECT_EQ(none.email, "ada@example.com");
  EXPECT_FALSE(none.session_id.empty());
  EXPECT_EQ(none.org_id, "");  // several memberships and no hint: none chosen
  EXPECT_EQ(none.role, Role::kNone);

  Principal a = auth.authenticate(token, org.id);
  EXPECT_EQ(a.org_id, org.id);
  EXPECT_EQ(a.role, Role::kOwner);
  Principal b = auth.authenticate(token, org_b.id);
  EXPECT_EQ(b.org_id, org_b.id);
  EXPECT_EQ(b.role, Role::kViewer);
  expect_api_error([&] { auth.authenticate(token, org_c.id); }, 404);
  expect_api_error([&] { auth.authenticate(token, "org-doesnotexist"); }, 404);

  // A suspended organization is refused only where the user acts in it.
  set_status("organization", org_b.id, "suspended");
  auth.invalidate();
  expect_api_error([&] { auth.authenticate(token, org_b.id); }, 403, "organization_suspended");
  EXPECT_EQ(auth.authenticate(token, org.id).role, Role::kOwner);
}

TEST_F(AuthTest, UserWithOneMembershipGetsItWithoutAHint) {
  Object u = make_user("bob@example.com");
  std::string token;
  real->write([&](Tx& tx) {
    add_membership(tx, org.id, u.id, Role::kMember);
    token = create_session(tx, u.id, 3600).second;
  });
  Principal p = auth.authenticate(token, "");
  EXPECT_EQ(p.org_id, org.id);
  EXPECT_EQ(p.role, Role::kMember);

  // Removing the membership takes effect on invalidate.
  real->write([&](Tx& tx) { tx.remove("membership", find_membership(tx, org.id, u.id)->id); });
  auth.invalidate();
  Principal q = auth.authenticate(token, "");
  EXPECT_EQ(q.org_id, "");
  EXPECT_EQ(q.role, Role::kNone);
  expect_api_error([&] { auth.authenticate(token, org.id); }, 404);
}

TEST_F(AuthTest, ExpiredSessionIs401) {
  Object u = make_user("carol@example.com");
  std::string token;
  real->write([&](Tx& tx) {
    add_membership(tx, org.id, u.id, Role::kMember);
    token = create_session(tx, u.id, -1).second;
  });
  expect_api_error([&] { auth.authenticate(token, ""); }, 401, "session_expired");
  expect_api_error([&] { auth.authenticate(token, ""); }, 401, "session_expired");  // cached, still expired
  // A session of a deleted user is unknown.
  std::string live;
  real->write([&](Tx& tx) { live = create_session(tx, u.id, 3600).second; });
  EXPECT_NO_THROW(auth.authenticate(live, ""));
  real->write([&](Tx& tx) { tx.remove("user", u.id); });
  auth.invalidate();
  expect_api_error([&] { auth.authenticate(live, ""); }, 401);
}

TEST_F(AuthTest, FlushLastUsedWritesLastUsedAt) {
  auth.flush_last_used();  // nothing to do
  EXPECT_TRUE(real->read([&](Tx& tx) { return tx.get("api_key", project_key_obj.id); })->data["last_used_at"].is_null());
  int64_t before = now_unix();
  auth.authenticate(project_key, "");
  auth.authenticate(admin_key, "");
  auth.flush_last_used();
  int64_t after = now_unix();
  for (auto [kind, id] : {std::pair{"api_key", project_key_obj.id}, std::pair{"admin_key", admin_key_obj.id}}) {
    auto o = real->read([&](Tx& tx) { return tx.get(kind, id); });
    ASSERT_TRUE(o);
    ASSERT_TRUE(o->data["last_used_at"].is_number_integer()) << o->data.dump();
    EXPECT_GE(o->data["last_used_at"].get<int64_t>(), before);
    EXPECT_LE(o->data["last_used_at"].get<int64_t>(), after);
    EXPECT_EQ(o->version, 2);
  }
  // A second flush with nothing new writes nothing.
  uint64_t gen = real->write_generation();
  auth.flush_last_used();
  EXPECT_EQ(real->write_generation(), gen);
  // A key deleted before the flush is skipped, not an error.
  real->write([&](Tx& tx) { tx.remove("api_key", project_key_obj.id); });
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // one mark per key per second
  auth.authenticate(project_key, "");  // still cached: not invalidated
  EXPECT_NO_THROW(auth.flush_last_used());
}

TEST_F(AuthTest, ConcurrentAuthenticateAndInvalidate) {
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, ok{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      while (!stop) {
        try {
          auto p = auth.authenticate(project_key, "");
          if (p.actor_id != project_key_obj.id) ++failures;
          ++ok;
        } catch (...) {
          ++failures;
        }
      }
    });
  }
  for (int i = 0; i < 50; ++i) {
    auth.invalidate();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop = true;
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(ok.load(), 0);
}

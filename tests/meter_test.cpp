// The meter and its usage journal: acknowledged records reach the store exactly once, across
// kill -9 and restarts, in both durability modes; torn and stale frames are not read.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>


#include "metering/journal.h"
#include "metering/meter.h"
#include "store/store.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace std::chrono_literals;
using aicloud::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<Store> open_store(const TempDir& d, bool sync_full) {
  return open_sqlite_store(StoreOptions{(fs::path(d.path()) / "aicloud.db").string(), sync_full});
}
MeterOptions options(const TempDir& d, bool fsync, std::chrono::milliseconds fold_every = 200ms) {
  return {(fs::path(d.path()) / "usage-journal").string(), fsync, fold_every};
}

UsageRecord record(int i) {
  UsageRecord r;
  r.ts_ms = 1'700'000'000'000 + i;
  r.org_id = "org_a";
  r.project_id = "proj_" + std::to_string(i % 3);
  r.api_key_id = "key_1";
  r.model = "tiny";
  r.deployment_id = "dep_1";
  r.region = "local";
  r.endpoint = "chat.completions";
  r.input_tokens = 10 + i;
  r.output_tokens = i;
  r.cached_tokens = i % 2;
  r.latency_ms = 3;
  r.status = 200;
  r.request_id = "req_" + std::to_string(i);
  return r;
}

struct Totals {
  int64_t requests = 0, input = 0, output = 0, cached = 0;
};
Totals totals(Store& s) {
  UsageQuery q;
  q.org_id = "org_a";
  q.start_ms = 0;
  q.end_ms = INT64_MAX / 2;
  q.bucket_ms = INT64_MAX / 4;
  Totals t;
  for (const auto& row : s.read([&](Tx& tx) { return tx.usage_sum(q); })) {
    t.requests += row.requests, t.input += row.input_tokens, t.output += row.output_tokens, t.cached += row.cached_tokens;
  }
  return t;
}
size_t files_in(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

// A writer in a child process: a Meter on the test's journal that never folds (an hour between
// folds), with the mapped part of each segment map_bytes long, handed to write(meter, fd) with
// the write end of a pipe whose read end is returned in read_fd. The child ends when write
// returns (or is killed by the test); it never folds, so what the journal holds is for the
// parent's restart to fold.
template <class F>
pid_t fork_writer(const TempDir& d, bool fsync, size_t map_bytes, int& read_fd, F write) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return -1;
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pipefd[0]);
    auto store = open_store(d, fsync);
    MeterOptions o = options(d, fsync, 3600s);
    o.map_bytes = map_bytes;
    Meter m(*store, o);
    write(m, pipefd[1]);
    _exit(0);  // (no destructors: the Meter would fold)
  }
  ::close(pipefd[1]);
  read_fd = pipefd[0];
  return child;
}

// What a writer's acknowledgement callback does: 'y' or 'n' on the pipe.
std::function<void(bool)> ack_on(int fd) {
  return [fd](bool ok) {
    char c = ok ? 'y' : 'n';
    if (::write(fd, &c, 1) != 1) _exit(3);
  };
}

class MeterModes : public ::testing::TestWithParam<bool> {};

TEST_P(MeterModes, EveryRecordIsAcknowledgedFoldedOnceAndSegmentFilesAreReused) {
  TempDir d;
  auto store = open_store(d, GetParam());
  std::atomic<int> acked{0}, refused{0};
  const int kThreads = 4, kEach = 300;
  {
    Meter m(*store, options(d, GetParam(), 5ms));  // many rotations while the load runs
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < kEach; ++i) {
          m.record(record(t * kEach + i), [&](bool ok) { ++(ok ? acked : refused); });
          if (i % 50 == 0) std::this_thread::sleep_for(2ms);
        }
      });
    }
    for (auto& t : ts) t.join();
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (acked + refused < kThreads * kEach && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    EXPECT_EQ(acked, kThreads * kEach);
    EXPECT_EQ(refused, 0);
    m.flush();  // what the usage API does before it reads
    Totals t = totals(*store);
    EXPECT_EQ(t.requests, kThreads * kEach);
    int64_t n = kThreads * kEach;
    EXPECT_EQ(t.output, n * (n - 1) / 2);
    EXPECT_EQ(t.input, 10 * n + n * (n - 1) / 2);
    EXPECT_EQ(t.cached, n / 2);
    {  // the records' text arrives whole (the fold reads this process's records from memory)
      UsageQuery q;
      q.org_id = "org_a", q.start_ms = 0, q.end_ms = INT64_MAX / 2, q.bucket_ms = INT64_MAX / 4;
      q.by_project = q.by_model = true;
      q.endpoint = "chat.completions";
      auto rows = store->read([&](Tx& tx) { return tx.usage_sum(q); });
      ASSERT_EQ(rows.size(), 3u);
      for (const auto& row : rows) {
        EXPECT_TRUE(row.project_id == "proj_0" || row.project_id == "proj_1" || row.project_id == "proj_2") << row.project_id;
        EXPECT_EQ(row.model, "tiny");
        EXPECT_EQ(row.requests, n / 3);
      }
    }
    EXPECT_EQ(m.records_committed(), n);
    EXPECT_EQ(m.records_folded(), n);
    EXPECT_GT(m.commits(), 0);
    if (GetParam()) {
      EXPECT_LE(m.commits(), n);  // groups: one fdatasync may cover several records
    } else {
      EXPECT_EQ(m.commits(), n);  // one write per record
    }
    // The active segment and at most two spares: folded files are overwritten, not piled up.
    EXPECT_LE(files_in(options(d, true).dir), 3u);
  }
  // A restart finds everything folded: nothing is added twice.
  Meter again(*store, options(d, GetParam()));
  again.flush();
  EXPECT_EQ(totals(*store).requests, kThreads * kEach);
}

TEST_P(MeterModes, AcknowledgedRecordsSurviveKill9AndAreFoldedOnceOnRestart) {
  TempDir d;
  // The writer acknowledges each durable record on the pipe and is killed by the parent in the
  // middle of its stream of records. A small mapping: the records go first into the mapped part
  // of the segment, then (about 400 records in) with pwrite past it; recovery reads both.
  int rd = -1;
  pid_t child = fork_writer(d, GetParam(), 64 << 10, rd, [](Meter& m, int fd) {
    for (int i = 0;; ++i) m.record(record(i), ack_on(fd));
  });
  ASSERT_GE(child, 0);
  int64_t acked = 0;
  char c;
  while (acked < 2000 && ::read(rd, &c, 1) == 1) acked += c == 'y';
  ::kill(child, SIGKILL);
  while (::read(rd, &c, 1) == 1) acked += c == 'y';  // what it acknowledged before it died
  ::close(rd);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the writer ended on its own: " << status;
  ASSERT_GE(acked, 2000);

  auto store = open_store(d, GetParam());
  EXPECT_EQ(totals(*store).requests, 0) << "the writer folded, so the test did not test recovery";
  int64_t recovered;
  {
    Meter m(*store, options(d, GetParam()));
    recovered = totals(*store).requests;  // the constructor folded the journal
  }
  std::printf("[ measured ] kill -9 (%s): %lld records acknowledged, %lld recovered from the journal\n",
              GetParam() ? "fsync" : "write", (long long)acked, (long long)recovered);
  EXPECT_GE(recovered, acked);
  // Written and not yet acknowledged: under write-only at most the one being written; under
  // fdatasync the group the last sync had not reached.
  if (!GetParam()) {
    EXPECT_LE(recovered, acked + 1);
  }
  Meter again(*store, options(d, GetParam()));
  EXPECT_EQ(totals(*store).requests, recovered) << "a second restart folded a segment again";
}

// A record is acknowledged where the durability asks: under write-only mode once its frame
// is in the journal, on the calling thread before record() returns (the gateway then ends the
// answer in the same turn of its loop); under fdatasync later, by the syncer, once a sync covered
// it. Each is in the journal, and folded, exactly once.
TEST_P(MeterModes, ARecordIsAcknowledgedWhereItsModeSays) {
  TempDir d;
  auto store = open_store(d, GetParam());
  Meter m(*store, options(d, GetParam(), 3600s));
  std::atomic<int> acked{0};
  std::atomic<bool> on_caller{true}, returned{false};  // (read by callbacks that may outlive an iteration)
  const auto caller = std::this_thread::get_id();
  for (int i = 0; i < 10; ++i) {
    returned = false;
    m.record(record(i), [&](bool ok) {
      acked += ok;
      if (std::this_thread::get_id() != caller) on_caller = false;
      if (!GetParam()) {
        EXPECT_FALSE(returned) << "acknowledged after record() returned";
      }
    });
    returned = true;
    if (!GetParam()) {
      EXPECT_EQ(acked.load(), i + 1) << "write-only: acknowledged before record() returns";
      EXPECT_EQ(m.commits(), i + 1);
    }
  }
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (acked < 10 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(acked.load(), 10);
  if (GetParam()) {
    EXPECT_FALSE(on_caller.load()) << "fdatasync: the syncer acknowledges";
  } else {
    EXPECT_TRUE(on_caller.load());
  }
  m.flush();
  EXPECT_EQ(totals(*store).requests, 10);
}

// A journal that cannot take a record (here a file-size limit, as a full disk would be) refuses
// it: on_durable(false), so the gateway answers 503 and bills nothing. No record is acknowledged
// that a restart does not find, and none that was refused is folded. (pwrite past the limit
// fails with EFBIG once SIGXFSZ is ignored, as the server does.)
TEST_P(MeterModes, ARecordTheJournalCannotTakeIsRefusedAndNotFolded) {
  TempDir d;
  int rd = -1;
  // Every record with pwrite (no mapping), which the limit stops.
  pid_t child = fork_writer(d, GetParam(), 0, rd, [](Meter& m, int fd) {
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{32 << 10, 32 << 10};  // about 200 records
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(2);
    std::atomic<int> answered{0};
    auto ack = ack_on(fd);
    std::vector<char> refused(1000, 0);  // (outlives the syncer's later acknowledgements)
    for (int i = 0; i < 1000; ++i) {
      UsageRecord r = record(i);
      m.record(std::move(r), [&ack, &answered, &refused, i](bool ok) {
        ack(ok);
        if (!ok) refused[size_t(i)] = 1;  // (reported before record() returns)
        ++answered;
      });
      if (refused[size_t(i)] && r.request_id != "req_" + std::to_string(i)) _exit(5);  // a refused record is left whole
    }
    for (int i = 0; answered < 1000 && i < 10000; ++i) std::this_thread::sleep_for(1ms);
    if (answered < 1000) _exit(4);
  });
  ASSERT_GE(child, 0);
  int64_t yes = 0, no = 0;
  bool refused_then_taken = false;
  char c;
  while (::read(rd, &c, 1) == 1) {
    if (c == 'y' && no > 0) refused_then_taken = true;
    (c == 'y' ? yes : no) += 1;
  }
  ::close(rd);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(yes + no, 1000);
  EXPECT_GT(yes, 50) << "records under the limit are taken";
  EXPECT_GT(no, 500) << "records past the limit are refused";
  if (!GetParam()) {  // (under fdatasync the syncer acknowledges later, interleaved with refusals)
    EXPECT_FALSE(refused_then_taken) << "the limit does not go away";
  }
  auto store = open_store(d, GetParam());
  Meter m(*store, options(d, GetParam()));  // folds the journal
  EXPECT_EQ(totals(*store).requests, yes) << "folded exactly what was acknowledged";
}

INSTANTIATE_TEST_SUITE_P(Sync, MeterModes, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Fdatasync" : "WriteOnly"; });

// A reflected CRC a bit at a time, and a checksum function against it for every length and
// alignment up to 64 bytes, whole and chained (its second half continuing from its first).
uint32_t crc_bitwise(std::string_view d, uint32_t poly) {
  uint32_t c = ~0u;
  for (unsigned char b : d) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? poly ^ (c >> 1) : c >> 1;
  }
  return ~c;
}
void expect_bitwise(uint32_t (*f)(std::string_view, uint32_t), uint32_t poly) {
  std::string data;
  for (int i = 0; i < 200; ++i) data.push_back(char(i * 37 + 11));
  for (size_t off = 0; off < 8; ++off) {
    for (size_t len = 0; len <= 64; ++len) {
      std::string_view d = std::string_view(data).substr(off, len);
      ASSERT_EQ(f(d, 0), crc_bitwise(d, poly)) << off << " " << len;
      ASSERT_EQ(f(d.substr(len / 2), f(d.substr(0, len / 2), 0)), crc_bitwise(d, poly)) << off << " " << len;
    }
  }
}

// The older frames' checksum is part of the on-disk format: the standard CRC-32, whatever the
// way it is computed (a journal left by an older build must still fold).
TEST(UsageJournal, TheChecksumIsTheStandardCrc32) {
  EXPECT_EQ(journal::crc32(""), 0u);
  EXPECT_EQ(journal::crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(journal::crc32("The quick brown fox jumps over the lazy dog"), 0x414FA339u);
  expect_bitwise(journal::crc32, 0xEDB88320u);
}

// Frames written now carry CRC-32C. The CPU's instruction and the tables must agree byte for
// byte: a journal written on one machine is folded on whichever the server restarts on.
TEST(UsageJournal, TheNewChecksumIsCrc32cByTheCpuAndByTables) {
  for (auto f : {journal::crc32c, journal::crc32c_portable}) {
    EXPECT_EQ(f("", 0), 0u);
    EXPECT_EQ(f("123456789", 0), 0xE3069283u);
    EXPECT_EQ(f(std::string(32, '\0'), 0), 0x8A9136AAu);
    expect_bitwise(f, 0x82F63B78u);
  }
}

// An upgrade finds the frames an older build wrote ("USG1", CRC-32) and folds them; a frame of
// either version with the other's checksum is refused.
TEST(UsageJournal, FramesOfTheOlderVersionAreStillRead) {
  std::string now;
  journal::encode(record(5), 9, now);
  auto as_v1 = [](std::string f, uint32_t (*sum)(std::string_view, uint32_t)) {
    f[3] = '1';  // "USG2" -> "USG1" (little-endian: the version is the last byte)
    uint32_t c = sum(std::string_view(f).substr(20), sum(std::string_view(f).substr(4, 12), 0));
    for (int i = 0; i < 4; ++i) f[16 + i] = char(uint8_t(c >> (8 * i)));
    return f;
  };
  ASSERT_EQ(now.substr(0, 4), "USG2");
  std::string old = as_v1(now, journal::crc32);
  auto got = journal::decode(old + now, 9);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].request_id, "req_5");
  EXPECT_EQ(got[1].request_id, "req_5");
  EXPECT_EQ(got[0].input_tokens, got[1].input_tokens);
  EXPECT_TRUE(journal::decode(as_v1(now, journal::crc32c), 9).empty()) << "a USG1 frame is CRC-32";
  std::string wrong = now;
  uint32_t c = journal::crc32(std::string_view(now).substr(20), journal::crc32(std::string_view(now).substr(4, 12)));
  for (int i = 0; i < 4; ++i) wrong[16 + i] = char(uint8_t(c >> (8 * i)));
  EXPECT_TRUE(journal::decode(wrong, 9).empty()) << "a USG2 frame is CRC-32C";
}

TEST(UsageJournal, DecodeStopsAtATornFrameAndAtFramesOfAnOlderSegment) {
  std::string seg7, seg3;
  for (int i = 0; i < 3; ++i) journal::encode(record(i), 7, seg7);
  for (int i = 0; i < 4; ++i) journal::encode(record(100 + i), 3, seg3);
  // A reused file: segment 7's frames over the start of segment 3's.
  std::string reused = seg7 + seg3.substr(seg7.size() < seg3.size() ? seg7.size() : 0);
  auto got = journal::decode(reused, 7);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].request_id, "req_2");
  EXPECT_EQ(got[1].input_tokens, 11);
  EXPECT_EQ(got[0].project_id, "proj_0");
  EXPECT_EQ(got[0].status, 200);
  // Torn: every cut inside the last frame leaves the two before it.
  std::string one;
  journal::encode(record(2), 7, one);
  for (size_t cut = 1; cut < one.size(); ++cut) {
    ASSERT_EQ(journal::decode(std::string_view(seg7).substr(0, seg7.size() - cut), 7).size(), 2u) << cut;
  }
  // A flipped byte anywhere in a frame ends the read there.
  for (size_t at = 0; at < one.size(); ++at) {
    std::string bad = seg7;
    bad[one.size() + at] ^= 0x20;  // inside the second frame
    ASSERT_EQ(journal::decode(bad, 7).size(), 1u) << at;
  }
}

TEST(UsageJournal, ASegmentLeftWithATornTailIsFoldedUpToIt) {
  TempDir d;
  auto opts = options(d, true);
  fs::create_directories(opts.dir);
  std::string data;
  for (int i = 0; i < 5; ++i) journal::encode(record(i), 4, data);
  {
    std::ofstream f(fs::path(opts.dir) / "00000000000000000004.usage", std::ios::binary);
    f << data.substr(0, data.size() - 7);
  }
  auto store = open_store(d, true);
  {
    Meter m(*store, opts);
    EXPECT_EQ(totals(*store).requests, 4);
    m.record(record(9));
  }  // a clean stop folds the rest
  EXPECT_EQ(totals(*store).requests, 5);
  Meter again(*store, opts);
  EXPECT_EQ(totals(*store).requests, 5);
}

}  // namespace

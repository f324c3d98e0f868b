// Metering: every finished model request leaves one usage record, durable before the client sees
// the response complete, so a response that completed never loses its record, even on kill -9.
//
// The path a record takes:
//   record()  -> the frame (metering/journal.h) is copied into the journal's active segment, a
//                shared mapping of its file (pwrite past the mapped part), on the calling io
//                thread. Under fsync=false that is the acknowledgement: the bytes are in the
//                kernel's page cache and survive the process being killed, so on_durable runs at
//                once, with no hand-off to another thread.
//   syncer    -> only under fsync=true (--sync full, survives power loss): fdatasyncs the active
//                segment and runs on_durable for every record the sync covered: a group commit
//                whose group is whatever was written while the previous sync ran.
//   folder    -> every fold_every, the active segment is swapped for a spare and its records are
//                folded into the store's usage_records in one transaction that also raises the
//                folded-segment watermark; the file is then kept as a spare (overwritten in place
//                next time, so an fdatasync does not also write the inode).
//   restart   -> the constructor folds every segment above the watermark: exactly once.
// The usage API calls flush() before it reads, so it sees every completed request.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "store/store.h"
#include "util/per_thread.h"

namespace aicloud {

struct MeterOptions {
  std::string dir;     // the journal's segment files
  bool fsync = true;   // acknowledge after fdatasync (power loss) rather than after write (kill -9)
  std::chrono::milliseconds fold_every{200};
  // The first map_bytes of each segment file are a shared mapping that frames are copied into
  // (meter.cpp says why); frames past it are written with pwrite. Tests make it small.
  size_t map_bytes = 8u << 20;
};

class Meter {
 public:
  // Folds what a previous process journaled; throws if the directory or the store cannot be used.
  Meter(Store& store, MeterOptions opts);
  ~Meter();  // folds what is journaled, then stops
  Meter(const Meter&) = delete;
  Meter& operator=(const Meter&) = delete;

  // Journals r; on_durable(true) runs once it is durable (under fsync=false before record
  // returns, on the calling thread; else on the syncer thread), on_durable(false) if it could not
  // be written (logged): the request must not be reported as completed and billed. r is moved
  // from only once it is journaled: a refused record is left as it was, for the caller's answer.
  void record(UsageRecord&& r, std::function<void(bool durable)> on_durable = nullptr);

  // Folds every record journaled so far into the store; returns when they are readable there.
  void flush();

  // Counters for /metrics and the benchmark. A commit is one fdatasync under fsync=true (its group
  // is records/commits), one write otherwise.
  int64_t records_committed() const { return int64_t(committed_.load()); }
  int64_t commits() const { return int64_t(commits_.load()); }
  int64_t commit_micros() const { return int64_t(commit_us_.load()); }
  int64_t records_folded() const { return folded_.load(); }
  std::string prometheus() const;  // the counters above in Prometheus text format

 private:
  struct Waiter {
    uint64_t end;  // the segment offset the record's frame ends at
    std::function<void(bool)> done;
  };
  // An open journal file and a shared mapping of its first map_len bytes (none: pwrite only).
  // Owned: closed and unmapped when destroyed; handed on by moving.
  struct File {
    int fd = -1;
    char* map = nullptr;
    size_t map_len = 0;
    File() = default;
    File(File&& o) noexcept { *this = std::move(o); }
    File& operator=(File&& o) noexcept {
      std::swap(fd, o.fd);
      std::swap(map, o.map);
      std::swap(map_len, o.map_len);
      return *this;
    }
    ~File();
  };
  struct Segment {
    uint64_t number = 0;
    std::string path;
    File file;
    uint64_t size = 0;             // bytes of frames written (guarded by mu_)
    std::deque<Waiter> waiters;    // unsynced records, by end (guarded by mu_)
    // in_memory: records holds the records of those frames (appended under mu_ while the
    // segment is active), and the fold takes them from here rather than reading and decoding the
    // file back. False for a segment left by an earlier process, and after a failed fold (whose
    // records are dropped, so that a store that stays unwritable does not fill memory).
    std::vector<UsageRecord> records;
    bool in_memory = true;
  };

  std::string path_of(uint64_t number) const;
  std::shared_ptr<Segment> open_segment(uint64_t number);  // a spare file renamed, or a new one
  void fsync_dir();
  void complete(Segment& s, uint64_t upto, bool ok);  // runs the waiters that end at or before upto
  void sync_loop();
  void fold_loop();
  // Rotates the active segment if it holds anything (last: always, with no new one: shutdown),
  // then folds what is unfolded, in order.
  void fold_now(bool last = false);
  void fold(Segment& s);

  Store& store_;
  MeterOptions opts_;
  int dir_fd_ = -1;

  std::mutex mu_;  // the active segment: appends, the swap, waiters
  std::condition_variable sync_cv_;
  std::shared_ptr<Segment> active_;
  // active_'s number, readable without mu_: record() encodes its frame for it before taking the
  // lock, so that the two io threads do not wait on each other's checksums.
  std::atomic<uint64_t> active_number_{0};
  bool stopping_ = false;  // guarded by mu_ and fold_mu_ both (written holding both)

  std::mutex fold_mu_;  // one fold at a time (the folder thread, flush(), the destructor); fold_cv_'s
  uint64_t next_number_ = 1;
  std::deque<std::shared_ptr<Segment>> unfolded_;  // retired, in order
  // A folded segment's file, kept for reuse. One this process wrote keeps its descriptor, its
  // mapping and its records' vector (emptied), so that the next segment on it starts with the
  // mapping's page-table entries in place and the vector's capacity: a fresh mapping took a
  // page fault for each 4 KiB the records were copied into, and a fresh vector its reallocations'
  // faults, the largest kernel cost the gateway had beyond nginx's (docs/PERFORMANCE.md §5).
  struct Spare {
    std::string path;
    File file;  // not open: only the file (one of an earlier process, opened read-only)
    std::vector<UsageRecord> records;
  };
  std::deque<Spare> spares_;                       // folded files to reuse
  std::condition_variable fold_cv_;

  // Every record adds to the first three, from whichever io thread finished it: sharded, so that
  // the threads do not write the same cache line per request (util/per_thread.h).
  ShardedCounter committed_, commits_, commit_us_;
  std::atomic<int64_t> folded_{0}, folds_{0}, fold_us_{0};
  std::thread syncer_, folder_;
};

}  // namespace aicloud

#include "metering/meter.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include "metering/journal.h"
#include "util/log.h"
#include "util/thread_name.h"

namespace fs = std::filesystem;

namespace aicloud {

namespace {

constexpr size_t kSpares = 2;  // folded segment files kept for reuse
constexpr const char* kSuffix = ".usage";

int64_t micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
}

bool pwrite_all(int fd, const std::string& b, uint64_t off) {
  for (size_t done = 0; done < b.size();) {
    ssize_t n = ::pwrite(fd, b.data() + done, b.size() - done, off_t(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += size_t(n);
  }
  return true;
}

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

Meter::File::~File() {
  if (map) ::munmap(map, map_len);
  if (fd >= 0) ::close(fd);
}

Meter::Meter(Store& store, MeterOptions opts) : store_(store), opts_(std::move(opts)) {
  fs::create_directories(opts_.dir);
  dir_fd_ = ::open(opts_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) throw std::runtime_error(sys_error("cannot open the usage journal " + opts_.dir));

  // What a previous process left: segments above the watermark hold records to fold (in order);
  // the others were folded already and become spares.
  uint64_t folded = store_.read([](Tx& tx) { return tx.usage_folded_segment(); });
  std::map<uint64_t, std::string> found;
  for (const auto& e : fs::directory_iterator(opts_.dir)) {
    std::string name = e.path().filename().string();
    if (name.size() != 20 + std::strlen(kSuffix) || !name.ends_with(kSuffix) ||
        name.find_first_not_of("0123456789") != 20) {
      continue;
    }
    found[std::stoull(name.substr(0, 20))] = e.path().string();
  }
  next_number_ = folded + 1;
  for (const auto& [number, path] : found) {
    next_number_ = std::max(next_number_, number + 1);
    if (number <= folded) {
      spares_.emplace_back().path = path;
      continue;
    }
    auto s = std::make_shared<Segment>();
    s->number = number;
    s->path = path;
    s->in_memory = false;
    s->file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (s->file.fd < 0 || ::fstat(s->file.fd, &st) != 0) throw std::runtime_error(sys_error("cannot read " + path));
    s->size = uint64_t(st.st_size);
    unfolded_.push_back(std::move(s));
  }
  if (!unfolded_.empty()) spdlog::info("metering: folding {} usage journal segment(s) left by the last run", unfolded_.size());
  active_ = open_segment(next_number_++);
  active_number_ = active_->number;
  fold_now();
  if (!unfolded_.empty()) throw std::runtime_error("the usage journal could not be folded into the store (see the log)");

  if (opts_.fsync) {
    syncer_ = std::thread([this] {
      name_this_thread("meter-sync");
      sync_loop();
    });
  }
  folder_ = std::thread([this] {
    name_this_thread("meter-fold");
    fold_loop();
  });
}

Meter::~Meter() {
  {
    std::lock_guard fl(fold_mu_);  // (the order fold_now() takes them in)
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  sync_cv_.notify_all();
  fold_cv_.notify_all();
  if (folder_.joinable()) folder_.join();
  if (syncer_.joinable()) syncer_.join();  // after it synced what was waiting
  try {
    fold_now(true);
  } catch (const std::exception& e) {
    spdlog::error("metering: the usage journal was not folded at shutdown (the next start folds it): {}", e.what());
  }
  active_.reset();
  unfolded_.clear();
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

std::string Meter::path_of(uint64_t number) const {
  char name[32];
  std::snprintf(name, sizeof name, "%020llu%s", static_cast<unsigned long long>(number), kSuffix);
  return (fs::path(opts_.dir) / name).string();
}

void Meter::fsync_dir() {
  if (opts_.fsync && ::fsync(dir_fd_) != 0) throw std::runtime_error(sys_error("cannot sync " + opts_.dir));
}

std::shared_ptr<Meter::Segment> Meter::open_segment(uint64_t number) {
  auto s = std::make_shared<Segment>();
  s->number = number;
  s->path = path_of(number);
  int flags = O_RDWR | O_CLOEXEC;
  if (!spares_.empty()) {
    // Reuse: the old frames carry the old segment number, so a reader stops where ours end.
    Spare& sp = spares_.back();
    if (::rename(sp.path.c_str(), s->path.c_str()) != 0) throw std::runtime_error(sys_error("cannot reuse " + sp.path));
    // Still open, and mapped if it was: a rename leaves both as they are.
    s->file = std::move(sp.file);
    s->records = std::move(sp.records);
    spares_.pop_back();
  } else {
    flags |= O_CREAT | O_TRUNC;
  }
  File& f = s->file;
  if (f.fd < 0) f.fd = ::open(s->path.c_str(), flags, 0600);
  if (f.fd < 0) throw std::runtime_error(sys_error("cannot open " + s->path));
  // Frames are copied into a shared mapping of the file's first map_bytes rather than written
  // with pwrite, which was a system call per batch (about a third of one per proxied request
  // under load) made by the io threads while they held mu_. That part is allocated first (a
  // no-op for a reused file), so that a copy never needs a block the disk no longer has: a write
  // to a shared mapping that cannot get one is a SIGBUS, not an error. Where it cannot be
  // allocated (a full disk), or past it, frames are written with pwrite.
  if (!f.map && opts_.map_bytes > 0 && ::posix_fallocate(f.fd, 0, off_t(opts_.map_bytes)) == 0) {
    void* m = ::mmap(nullptr, opts_.map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, f.fd, 0);
    if (m != MAP_FAILED) {
      f.map = static_cast<char*>(m);
      f.map_len = opts_.map_bytes;
    }
  }
  fsync_dir();  // the name must be durable before a record under it is acknowledged
  return s;
}

void Meter::record(UsageRecord&& r, std::function<void(bool)> on_durable) {
  thread_local std::string frame;
  auto t0 = std::chrono::steady_clock::now();
  // The frame is encoded (its checksum is most of a record's journaling) before the lock, for the
  // segment active now; one rotated in between (every fold_every) is encoded for again under it.
  uint64_t number = active_number_.load();
  frame.clear();
  journal::encode(r, number, frame);
  std::unique_lock lk(mu_);
  Segment& s = *active_;
  if (s.number != number) {
    frame.clear();
    journal::encode(r, s.number, frame);
  }
  // A frame copied into the mapping is in the kernel's page cache, as a pwrite's would be: it
  // survives the process's kill -9, and fdatasync (the syncer) writes it out like any other.
  // (So a record costs no system call, and io threads journal each as it finishes rather than
  // gathering a loop turn's records into one write, as they did when each write was a pwrite.)
  bool written = s.size + frame.size() <= s.file.map_len;
  if (written) {
    std::memcpy(s.file.map + s.size, frame.data(), frame.size());
  } else {
    written = pwrite_all(s.file.fd, frame, s.size);
  }
  if (!written) {
    // The size is not advanced: the next write overwrites whatever part of it got out.
    std::string err = sys_error("write " + s.path);
    lk.unlock();
    spdlog::error("metering: could not journal the usage record of {}: {}", r.request_id, err);
    if (on_durable) on_durable(false);
    return;
  }
  s.size += frame.size();
  s.records.push_back(std::move(r));  // for the fold (not read again here)
  if (opts_.fsync) {
    s.waiters.push_back({s.size, std::move(on_durable)});
    lk.unlock();
    sync_cv_.notify_one();
    return;
  }
  lk.unlock();
  committed_.add();
  commits_.add();
  commit_us_.add(uint64_t(micros_since(t0)));
  if (on_durable) on_durable(true);
}

void Meter::complete(Segment& s, uint64_t upto, bool ok) {
  std::vector<Waiter> done;
  {
    std::lock_guard lk(mu_);
    while (!s.waiters.empty() && s.waiters.front().end <= upto) {
      done.push_back(std::move(s.waiters.front()));
      s.waiters.pop_front();
    }
  }
  if (ok) committed_.add(done.size());
  for (auto& w : done) {
    if (w.done) w.done(ok);
  }
}

void Meter::sync_loop() {
  std::unique_lock lk(mu_);
  while (true) {
    // No artificial delay: while one fdatasync runs, the next group is written behind it, so the
    // group size adapts to the load (one record when idle, dozens under load).
    sync_cv_.wait(lk, [this] { return stopping_ || !active_->waiters.empty(); });
    if (active_->waiters.empty()) return;  // stopping, and nothing waits
    std::shared_ptr<Segment> seg = active_;
    uint64_t upto = seg->size;
    lk.unlock();
    auto t0 = std::chrono::steady_clock::now();
    bool ok = ::fdatasync(seg->file.fd) == 0;
    commit_us_.add(uint64_t(micros_since(t0)));
    if (ok) complete(*seg, upto, true);
    commits_.add();  // after its records are counted: a reader never sees more commits than records
    if (!ok) {
      // Retrying an fdatasync that failed proves nothing (the kernel may have dropped the dirty
      // pages); the fold into the store, which syncs on its own, settles these records.
      spdlog::error("metering: {}", sys_error("fdatasync " + seg->path));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      lk.lock();
      std::shared_ptr<Segment> keep = std::move(seg);
      sync_cv_.wait(lk, [&] { return stopping_ || active_ != keep; });
      if (stopping_ && active_ == keep) return;
      continue;
    }
    lk.lock();
  }
}

// The folder sleeps on fold_mu_, not on mu_: the io threads take mu_ for every batch they
// journal, and a condition variable's waiter takes its mutex back when it wakes, so a folder
// that slept on mu_ contended with them every fold_every, and a folder preempted right after
// waking would hold up both io threads' answers.
void Meter::fold_loop() {
  std::unique_lock lk(fold_mu_);
  while (!stopping_) {
    fold_cv_.wait_for(lk, opts_.fold_every, [this] { return stopping_; });
    if (stopping_) return;
    lk.unlock();
    try {
      fold_now();
    } catch (const std::exception& e) {
      spdlog::error("metering: usage journal rotation failed: {}", e.what());
    }
    lk.lock();
  }
}

void Meter::flush() { fold_now(); }

void Meter::fold_now(bool last) {
  std::lock_guard fl(fold_mu_);
  bool rotate;
  {
    std::lock_guard lk(mu_);
    rotate = active_ && (active_->size > 0 || last);
  }
  if (rotate) {
    // The last fold (shutdown) retires the active segment even if empty, so that the watermark
    // covers every file and the next start finds nothing to fold.
    auto next = last ? nullptr : open_segment(next_number_++);
    std::shared_ptr<Segment> retired;
    {
      std::lock_guard lk(mu_);
      retired = std::exchange(active_, std::move(next));
      if (active_) active_number_ = active_->number;
    }
    sync_cv_.notify_one();  // a syncer waiting out a failure moves on to the new segment
    if (opts_.fsync && ::fdatasync(retired->file.fd) == 0) complete(*retired, UINT64_MAX, true);
    unfolded_.push_back(std::move(retired));
  }
  while (!unfolded_.empty()) {
    auto s = unfolded_.front();
    try {
      fold(*s);
    } catch (const std::exception& e) {
      // Left in place (journaled, unfolded): the next round, or the next start, tries again,
      // from the file, so that a store that stays unwritable does not also fill memory.
      spdlog::error("metering: could not fold usage journal segment {} into the store: {}", s->number, e.what());
      s->in_memory = false;
      std::vector<UsageRecord>().swap(s->records);
      return;
    }
    complete(*s, UINT64_MAX, true);  // whatever the syncer had not reached is durable in the store now
    unfolded_.pop_front();
    Spare& sp = spares_.emplace_back();
    sp.path = s->path;
    // Kept open and mapped if nothing else holds the segment (the syncer may, for a moment, to
    // sync it) and it is this process's own (opened for writing).
    if (s.use_count() == 1 && s->in_memory && s->file.fd >= 0) {
      sp.file = std::move(s->file);
      size_t used = s->records.size();
      sp.records = std::move(s->records);
      sp.records.clear();
      // The capacity follows the load: kept, unless it is far above what this segment needed.
      if (sp.records.capacity() > 4096 && sp.records.capacity() > 4 * used) std::vector<UsageRecord>().swap(sp.records);
    }
  }
  while (spares_.size() > kSpares) {
    ::unlink(spares_.front().path.c_str());
    spares_.pop_front();
  }
}

void Meter::fold(Segment& s) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<UsageRecord> read;  // a segment of an earlier process: its records from the file
  if (!s.in_memory) {
    std::string data(s.size, '\0');
    for (size_t got = 0; got < data.size();) {
      ssize_t n = ::pread(s.file.fd, data.data() + got, data.size() - got, off_t(got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(sys_error("read " + s.path));
      if (n == 0) {
        data.resize(got);
        break;
      }
      got += size_t(n);
    }
    read = journal::decode(data, s.number);
  }
  std::vector<UsageRecord>& records = s.in_memory ? s.records : read;
  store_.write([&](Tx& tx) {
    tx.usage_append(records);
    tx.set_usage_folded_segment(s.number);
  });
  folded_ += int64_t(records.size());
  ++folds_;
  fold_us_ += micros_since(t0);
}

std::string Meter::prometheus() const {
  // Commits read before records (each commit adds its records first): one scrape never shows
  // more commits than records.
  const int64_t commits_now = commits(), records_now = records_committed();
  auto counter = [](const char* name, const char* help, const std::string& v) {
    return std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " + v + "\n";
  };
  return counter("aicloud_usage_records_committed_total", "Usage records made durable (journaled).",
                 std::to_string(records_now)) +
         counter("aicloud_usage_commits_total",
                 "Usage journal commits: one fdatasync each under --sync full (a group), one write each otherwise.",
                 std::to_string(commits_now)) +
         counter("aicloud_usage_commit_seconds_total", "Time spent in usage journal commits.",
                 std::to_string(double(commit_micros()) / 1e6)) +
         counter("aicloud_usage_records_folded_total", "Usage records folded from the journal into the store.",
                 std::to_string(records_folded())) +
         counter("aicloud_usage_folds_total", "Usage journal segments folded into the store.", std::to_string(folds_.load())) +
         counter("aicloud_usage_fold_seconds_total", "Time spent folding the usage journal into the store.",
                 std::to_string(double(fold_us_.load()) / 1e6));
}

}  // namespace aicloud

// A load generator that plays many node agents against `aicloud server`: one keep-alive TCP
// connection per agent, as the real agent holds (src/http/client.cpp), driven by one thread on
// epoll so that it costs the machine as little as it can. bench/heartbeat/run.sh drives it.
//
//   agent_load join     --url URL --token JOIN_TOKEN --nodes N [--concurrency 32] [--region R]
//                       [--gpus 8] --out KEYS_FILE
//   agent_load beat     --url URL --keys KEYS_FILE [--agents N] [--interval-ms 5000 (0: none)] [--poll-ms 0]
//                       [--long-poll-s 0] [--seconds 30] [--warmup 5] [--pid SERVER_PID] [--background-tid TID]
//                       [--trace FILE]
//   agent_load saturate --url URL --keys KEYS_FILE [--connections 64] [--seconds 10] [--pid PID]
//                       [--background-tid TID]
//
// join:     N nodes join with the token, `concurrency` at a time; writes "node_id node_key" lines.
// beat:     open loop, as the agents do: each agent sends POST /agent/v1/heartbeat every
//           interval, the agents' phases spread evenly over it; with --poll-ms it also polls
//           GET /agent/v1/assignments that often (the real agent's loop polls every 500 ms). A
//           request's latency is measured from when it was due, not from when it could be sent,
//           so a server that falls behind shows it (no coordinated omission). With --long-poll-s W
//           each agent also keeps, on a second connection as the real agent does, one long-poll
//           outstanding: GET /agent/v1/assignments?wait=W&after=VERSION, sent again with the
//           answer's version as soon as it comes (at each wait's end, nothing changing). Reports
//           the rate achieved, latency percentiles, and the CPU the server process (utime + stime
//           from /proc/PID/stat) and this generator took over the measured window.
// saturate: closed loop over `connections` agents, each sending its next heartbeat as soon as
//           the previous answer arrives: the most heartbeats per second the server answers.
//
// --pid: report the CPU of that process (the server) over the measured window, and of each of
// its threads; --background-tid: split it into that thread (the server's scheduler loop, found
// as the busiest thread while no requests are sent) and the rest (the HTTP threads).
// Output ends with one machine-readable line, "RESULT key=value ...", that run.sh parses.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <filesystem>
#include <functional>
#include <map>
#include <queue>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "agent_load: %s\n", msg.c_str());
  std::exit(1);
}

// utime + stime of a process in seconds (all its threads), from /proc/PID/stat.
double proc_cpu_seconds(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto rp = s.rfind(')');  // the command name may hold spaces; fields resume after ')'
  if (rp == std::string::npos) return -1;
  std::vector<std::string> fields;
  size_t i = rp + 2;
  while (i < s.size()) {
    size_t j = s.find(' ', i);
    if (j == std::string::npos) j = s.size();
    fields.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  // After ')': field 3 (state) is fields[0], so utime (14) is fields[11] and stime (15) fields[12].
  if (fields.size() < 13) return -1;
  double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (std::stod(fields[11]) + std::stod(fields[12])) / ticks;
}

// The same for each of its threads: tid -> seconds.
std::map<int, double> thread_cpu_seconds(int pid) {
  std::map<int, double> out;
  std::error_code ec;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    int tid = std::atoi(e.path().filename().c_str());
    std::ifstream f(e.path() / "stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto rp = s.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream in(s.substr(rp + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int k = 3; k <= 15 && in >> field; ++k) {
      if (k == 14) utime = std::stod(field);
      if (k == 15) stime = std::stod(field);
    }
    out[tid] = (utime + stime) / double(sysconf(_SC_CLK_TCK));
  }
  return out;
}

double self_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) / 1e6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

// All CPUs' busy and total jiffies from /proc/stat, to tell what else ran during the window.
std::pair<double, double> machine_jiffies() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  double v[10] = {};
  f >> cpu;
  for (double& x : v) f >> x;
  double idle = v[3] + v[4];
  double total = 0;
  for (int k = 0; k < 8; ++k) total += v[k];  // guest time is already counted in user
  return {total - idle, total};
}

double percentile(std::vector<uint32_t> v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + long(k), v.end());
  return v[k];
}

struct Url {
  std::string host;
  int port = 0;
};

Url parse_url(const std::string& u) {
  const std::string p = "http://";
  if (u.rfind(p, 0) != 0) die("the URL must be http://HOST:PORT: " + u);
  std::string rest = u.substr(p.size());
  rest = rest.substr(0, rest.find('/'));
  auto colon = rest.rfind(':');
  if (colon == std::string::npos) die("the URL must name a port: " + u);
  Url r{rest.substr(0, colon), std::atoi(rest.substr(colon + 1).c_str())};
  if (r.port <= 0 || r.port > 65535) die("bad port in " + u);
  return r;
}

// ---- one connection per agent ----------------------------------------------------------------

struct Conn {
  int fd = -1;
  bool connected = false;
  bool busy = false;         // a request is on the wire, its answer not yet read
  std::string out;           // bytes still to send
  std::string in;            // bytes received, not yet consumed
  int64_t due_us = 0;        // when the request on the wire was due (latency is measured from it)
  int kind = 0;              // which request is on the wire (the caller's tag)
  std::deque<std::pair<int, int64_t>> backlog;  // requests due while busy: kind, due time
};

// The event loop: connections to one server, requests written whole, answers parsed as
// HTTP/1.1 with Content-Length (what the server always sends). The caller supplies what to
// send for a (connection, kind) and gets each answer back.
class Loop {
 public:
  using OnAnswer = std::function<void(size_t conn, int kind, int status, const std::string& body, int64_t due_us)>;
  using MakeRequest = std::function<std::string(size_t conn, int kind)>;

  Loop(Url url, size_t n) : url_(std::move(url)), conns_(n) {
    ep_ = epoll_create1(0);
    if (ep_ < 0) die("epoll_create1: " + std::string(std::strerror(errno)));
  }
  ~Loop() {
    for (Conn& c : conns_) if (c.fd >= 0) close(c.fd);
    close(ep_);
  }

  MakeRequest make_request;
  OnAnswer on_answer;
  long errors = 0;

  size_t size() const { return conns_.size(); }
  Conn& conn(size_t i) { return conns_[i]; }

  // Opens every connection, at most `parallel` connects in flight (the listen backlog is finite).
  void connect_all(size_t parallel = 256) {
    size_t next = 0, open = 0, pending = 0;
    while (open < conns_.size()) {
      while (next < conns_.size() && pending < parallel) {
        start_connect(next++);
        ++pending;
      }
      epoll_event evs[256];
      int n = epoll_wait(ep_, evs, 256, 5000);
      if (n == 0) die("connecting timed out (" + std::to_string(open) + " of " + std::to_string(conns_.size()) + " open)");
      for (int k = 0; k < n; ++k) {
        size_t i = evs[k].data.u64;
        Conn& c = conns_[i];
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) die("connect: " + std::string(std::strerror(err)));
        c.connected = true;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
        ++open;
        --pending;
      }
    }
  }

  // Sends now if the connection is free, else queues behind what is on the wire.
  void request(size_t i, int kind, int64_t due_us) {
    Conn& c = conns_[i];
    if (c.busy) {
      c.backlog.emplace_back(kind, due_us);
      return;
    }
    send(i, kind, due_us);
  }

  size_t in_flight() const { return in_flight_; }

  // Waits up to timeout_us for socket events and handles them. Microseconds (epoll_pwait2), so
  // that waiting for the next due request never spins: at 2,000 requests a second the next one
  // is usually less than a millisecond away.
  void poll_us(int64_t timeout_us) {
    epoll_event evs[512];
    timespec ts{static_cast<time_t>(timeout_us / 1'000'000), static_cast<long>(timeout_us % 1'000'000) * 1000};
    int n = epoll_pwait2(ep_, evs, 512, &ts, nullptr);
    if (n < 0 && errno != EINTR) die("epoll_wait: " + std::string(std::strerror(errno)));
    for (int k = 0; k < n; ++k) {
      size_t i = evs[k].data.u64;
      if (evs[k].events & (EPOLLERR | EPOLLHUP)) die("connection " + std::to_string(i) + " failed or was closed by the server");
      if (evs[k].events & EPOLLOUT) flush(i);
      if (evs[k].events & EPOLLIN) readable(i);
    }
  }

 private:
  void start_connect(size_t i) {
    Conn& c = conns_[i];
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) die("socket: " + std::string(std::strerror(errno)) + " (raise ulimit -n)");
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(url_.port));
    if (inet_pton(AF_INET, url_.host.c_str(), &sa.sin_addr) != 1) die("the host must be an IPv4 address: " + url_.host);
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0 && errno != EINPROGRESS) {
      die("connect: " + std::string(std::strerror(errno)));
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
  }

  void send(size_t i, int kind, int64_t due_us) {
    Conn& c = conns_[i];
    c.busy = true;
    c.kind = kind;
    c.due_us = due_us;
    c.out = make_request(i, kind);
    ++in_flight_;
    flush(i);
  }

  void flush(size_t i) {
    Conn& c = conns_[i];
    while (!c.out.empty()) {
      ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        die("send: " + std::string(std::strerror(errno)));
      }
      c.out.erase(0, size_t(n));
    }
    epoll_event ev{};
    ev.events = EPOLLIN | (c.out.empty() ? 0u : uint32_t(EPOLLOUT));
    ev.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void readable(size_t i) {
    Conn& c = conns_[i];
    char buf[16384];
    for (;;) {
      ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        c.in.append(buf, size_t(n));
        if (size_t(n) < sizeof(buf)) break;
        continue;
      }
      if (n == 0) die("connection " + std::to_string(i) + " closed by the server");
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      die("recv: " + std::string(std::strerror(errno)));
    }
    for (;;) {
      size_t hend = c.in.find("\r\n\r\n");
      if (hend == std::string::npos) return;
      if (c.in.size() < 12 || c.in.compare(0, 5, "HTTP/") != 0) die("not an HTTP response: " + c.in.substr(0, 64));
      int status = std::atoi(c.in.c_str() + 9);
      size_t clen = 0;
      bool have_len = false;
      for (size_t p = c.in.find("\r\n"); p < hend; p = c.in.find("\r\n", p + 2)) {
        static const char kName[] = "content-length:";
        if (strncasecmp(c.in.c_str() + p + 2, kName, sizeof(kName) - 1) == 0) {
          clen = size_t(std::strtoull(c.in.c_str() + p + 2 + sizeof(kName) - 1, nullptr, 10));
          have_len = true;
        }
        if (strncasecmp(c.in.c_str() + p + 2, "transfer-encoding:", 18) == 0) die("chunked answers are not handled");
      }
      if (!have_len) die("an answer without Content-Length");
      if (c.in.size() < hend + 4 + clen) return;
      std::string body = c.in.substr(hend + 4, clen);
      c.in.erase(0, hend + 4 + clen);
      if (!c.busy) die("an answer nobody asked for");
      c.busy = false;
      --in_flight_;
      if (status < 200 || status > 299) ++errors;
      on_answer(i, c.kind, status, body, c.due_us);
      if (!c.busy && !c.backlog.empty()) {
        auto [kind, due] = c.backlog.front();
        c.backlog.pop_front();
        send(i, kind, due);
      }
    }
  }

  Url url_;
  std::vector<Conn> conns_;
  int ep_ = -1;
  size_t in_flight_ = 0;
};

// ---- arguments -------------------------------------------------------------------------------

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  std::string need(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) die("missing --" + k);
    return it->second;
  }
  long num(const std::string& k, long def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : std::stol(it->second);
  }
};

std::string host_header(const Url& u) { return u.host + ":" + std::to_string(u.port); }

std::string heartbeat_request(const Url& u, const std::string& key) {
  return "POST /agent/v1/heartbeat HTTP/1.1\r\nHost: " + host_header(u) + "\r\nAuthorization: Bearer " + key +
         "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
}

std::string poll_request(const Url& u, const std::string& key, const std::string& query = "") {
  return "GET /agent/v1/assignments" + query + " HTTP/1.1\r\nHost: " + host_header(u) + "\r\nAuthorization: Bearer " + key +
         "\r\n\r\n";
}

std::vector<std::pair<std::string, std::string>> read_keys(const std::string& path, size_t want) {
  std::ifstream f(path);
  if (!f) die("cannot read " + path);
  std::vector<std::pair<std::string, std::string>> keys;
  std::string id, key;
  while (keys.size() < want && f >> id >> key) keys.emplace_back(id, key);
  if (keys.size() < want) die(path + " holds " + std::to_string(keys.size()) + " keys; " + std::to_string(want) + " wanted");
  return keys;
}

// A field's string value from a flat JSON answer ("node_key":"..."), enough for join's answer.
std::string json_string(const std::string& body, const std::string& field) {
  std::string pat = "\"" + field + "\":\"";
  auto p = body.find(pat);
  if (p == std::string::npos) return "";
  p += pat.size();
  return body.substr(p, body.find('"', p) - p);
}

// ---- join ------------------------------------------------------------------------------------

int cmd_join(const Args& a) {
  Url url = parse_url(a.need("url"));
  std::string token = a.need("token"), region = a.get("region", "bench-1"), out_path = a.need("out");
  long nodes = a.num("nodes", 10000), conc = std::min(a.num("concurrency", 32), nodes), gpus = a.num("gpus", 8);
  std::string gpu_json = "[";
  for (long g = 0; g < gpus; ++g) {
    gpu_json += std::string(g ? "," : "") + "{\"index\":" + std::to_string(g) + ",\"model\":\"H100-80GB\",\"memory_mb\":81559}";
  }
  gpu_json += "]";
  std::vector<std::string> ids(static_cast<size_t>(nodes)), keys(static_cast<size_t>(nodes));
  std::vector<long> assigned(size_t(conc), -1);  // which node each connection is joining
  long next = 0, done = 0;
  std::vector<uint32_t> lat;
  Loop loop(url, size_t(conc));
  loop.make_request = [&](size_t c, int) {
    long n = assigned[c];
    std::string body = "{\"join_token\":\"" + token + "\",\"name\":\"bench-node-" + std::to_string(n) + "\",\"region\":\"" +
                       region + "\",\"cpu_cores\":64,\"memory_bytes\":1099511627776,\"agent_version\":\"bench\"," +
                       "\"gpus\":" + gpu_json + "}";
    return "POST /agent/v1/join HTTP/1.1\r\nHost: " + host_header(url) +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  loop.on_answer = [&](size_t c, int, int status, const std::string& body, int64_t due) {
    long n = assigned[c];
    if (status != 201) die("join of bench-node-" + std::to_string(n) + ": HTTP " + std::to_string(status) + ": " + body);
    ids[size_t(n)] = json_string(body, "id");
    keys[size_t(n)] = json_string(body, "node_key");
    if (keys[size_t(n)].empty()) die("no node_key in the join answer: " + body);
    lat.push_back(uint32_t(now_us() - due));
    ++done;
    if (next < nodes) {
      assigned[c] = next++;
      loop.request(c, 0, now_us());
    }
  };
  loop.connect_all();
  int64_t t0 = now_us();
  for (size_t c = 0; c < loop.size(); ++c) {
    assigned[c] = next++;
    loop.request(c, 0, now_us());
  }
  while (done < nodes) loop.poll_us(10'000'000);
  double secs = double(now_us() - t0) / 1e6;
  std::ofstream out(out_path);
  for (long n = 0; n < nodes; ++n) out << ids[size_t(n)] << ' ' << keys[size_t(n)] << '\n';
  out.close();
  if (!out) die("cannot write " + out_path);
  std::printf("joined %ld nodes in %.2f s (%.0f joins/s, %ld at a time); join latency p50 %.2f ms, p99 %.2f ms\n", nodes,
              secs, double(nodes) / secs, conc, percentile(lat, 0.5) / 1000, percentile(lat, 0.99) / 1000);
  std::printf("RESULT joins=%ld seconds=%.3f rate=%.1f p50_us=%.0f p99_us=%.0f\n", nodes, secs, double(nodes) / secs,
              percentile(lat, 0.5), percentile(lat, 0.99));
  return 0;
}

// ---- beat ------------------------------------------------------------------------------------

struct Window {
  int pid = 0;
  double server_cpu0 = 0, self_cpu0 = 0;
  std::pair<double, double> machine0;
  std::map<int, double> threads0;
  int bg_tid = 0;
  int64_t t0 = 0;
  void start(int server_pid) {
    pid = server_pid;
    server_cpu0 = pid ? proc_cpu_seconds(pid) : 0;
    if (pid) threads0 = thread_cpu_seconds(pid);
    self_cpu0 = self_cpu_seconds();
    machine0 = machine_jiffies();
    t0 = now_us();
  }
  // Prints the window's CPU figures (as shares of one core) and returns the "key=value" part.
  std::string finish() const {
    double secs = double(now_us() - t0) / 1e6;
    double server = pid ? (proc_cpu_seconds(pid) - server_cpu0) / secs : -1;
    double self = (self_cpu_seconds() - self_cpu0) / secs;
    auto m1 = machine_jiffies();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double busy = (m1.first - machine0.first) / std::max(1.0, m1.second - machine0.second) * double(ncpu);
    double others = busy - self - std::max(0.0, server);
    std::printf("  CPU over %.1f s, in cores (1.00 = one core busy): server %.3f, this generator %.3f, "
                "everything else on the machine %.3f (of %ld)\n",
                secs, server, self, std::max(0.0, others), ncpu);
    // Which of the server's threads: the HTTP workers, or a background loop (bg_tid, when
    // known: the busiest thread of a run in which no requests were sent).
    int busiest = 0;
    double bg = 0;
    if (pid) {
      std::vector<std::pair<double, int>> busy_threads;
      for (const auto& [tid, cpu] : thread_cpu_seconds(pid)) {
        auto it = threads0.find(tid);
        double d = (cpu - (it == threads0.end() ? 0 : it->second)) / secs;
        if (tid == bg_tid) bg = d;
        if (d >= 0.005) busy_threads.emplace_back(d, tid);
      }
      std::sort(busy_threads.rbegin(), busy_threads.rend());
      if (!busy_threads.empty()) busiest = busy_threads.front().second;
      std::printf("  server threads above 0.005 cores:");
      for (const auto& [d, tid] : busy_threads) std::printf(" %d: %.3f", tid, d);
      if (bg_tid) std::printf(" (background thread %d: %.3f; the rest: %.3f)", bg_tid, bg, server - bg);
      std::printf("\n");
    }
    char buf[320];
    std::snprintf(buf, sizeof(buf),
                  "window_s=%.2f server_cpu=%.4f generator_cpu=%.4f other_cpu=%.4f busiest_tid=%d background_cpu=%.4f "
                  "http_cpu=%.4f",
                  secs, server, self, std::max(0.0, others), busiest, bg, server - bg);
    return buf;
  }
};

int cmd_beat(const Args& a) {
  Url url = parse_url(a.need("url"));
  long agents = a.num("agents", 10000), interval_ms = a.num("interval-ms", 5000), poll_ms = a.num("poll-ms", 0);
  long long_poll_s = a.num("long-poll-s", 0);
  long seconds = a.num("seconds", 30), warmup = a.num("warmup", 5), pid = a.num("pid", 0);
  auto keys = read_keys(a.need("keys"), size_t(agents));
  int bg_tid = int(a.num("background-tid", 0));
  std::string trace_path = a.get("trace");  // optional: "seconds_since_start kind latency_us" per answer
  std::vector<std::tuple<int64_t, int, uint32_t>> trace;
  enum { kBeat = 0, kPoll = 1, kLongPoll = 2 };
  std::vector<uint32_t> lat[2];
  long answered[2] = {0, 0}, late = 0;
  long long_answers = 0, long_changed = 0;  // long-polls answered in the window; of them, with a new version
  bool measuring = false;
  // Connections [0, agents): heartbeats and short polls; [agents, 2 agents): the long-polls.
  Loop loop(url, size_t(long_poll_s > 0 ? 2 * agents : agents));
  std::vector<std::string> versions(long_poll_s > 0 ? size_t(agents) : 0);
  loop.make_request = [&](size_t c, int kind) {
    if (kind == kLongPoll) {
      const std::string& v = versions[c - size_t(agents)];
      return poll_request(url, keys[c - size_t(agents)].second,
                          v.empty() ? "" : "?wait=" + std::to_string(long_poll_s) + "&after=" + v);
    }
    return kind == kBeat ? heartbeat_request(url, keys[c].second) : poll_request(url, keys[c].second);
  };
  loop.on_answer = [&](size_t c, int kind, int status, const std::string& body, int64_t due) {
    if (status != 200) die("HTTP " + std::to_string(status) + ": " + body);
    if (kind == kLongPoll) {  // ask again at once, from the version it got
      std::string v = json_string(body, "version");
      if (v.empty()) die("no version in the assignments answer (a server without long-polls?): " + body.substr(0, 200));
      std::string& have = versions[c - size_t(agents)];
      if (measuring) {
        ++long_answers;
        long_changed += v != have;
      }
      have = v;
      loop.request(c, kLongPoll, now_us());
      return;
    }
    if (!measuring) return;
    int64_t l = now_us() - due;
    lat[kind].push_back(uint32_t(std::min<int64_t>(l, UINT32_MAX)));
    ++answered[kind];
    if (!trace_path.empty()) trace.emplace_back(due, kind, lat[kind].back());
  };
  std::printf("opening %zu connections...\n", loop.size());
  std::fflush(stdout);
  loop.connect_all();

  // Each agent's beats (and polls) are due at its own phase: agent i at i/agents of the period.
  using Due = std::tuple<int64_t, int, size_t>;  // when, kind, agent
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due;
  int64_t start = now_us() + 100'000;
  for (size_t i = 0; i < size_t(agents); ++i) {
    if (interval_ms > 0) due.emplace(start + int64_t(i) * interval_ms * 1000 / agents, kBeat, i);
    if (poll_ms > 0) due.emplace(start + int64_t(i) * poll_ms * 1000 / agents, kPoll, i);
    // Each agent's first long-poll (answered at once; the next is held), spread over one wait as
    // real agents' are: else all the waits would end together.
    if (long_poll_s > 0) due.emplace(start + int64_t(i) * long_poll_s * 1'000'000 / agents, kLongPoll, size_t(agents) + i);
  }
  int64_t measure_at = start + warmup * 1'000'000, end = measure_at + seconds * 1'000'000;
  Window w;
  w.bg_tid = bg_tid;
  std::printf("%ld agents: a heartbeat every %ld ms each (%.0f/s; 0 = none)%s%s; %ld s warm-up, then %ld s measured\n",
              agents, interval_ms, interval_ms > 0 ? double(agents) * 1000.0 / double(interval_ms) : 0.0,
              poll_ms > 0 ? (", and GET /agent/v1/assignments every " + std::to_string(poll_ms) + " ms each (" +
                             std::to_string(agents * 1000 / poll_ms) + "/s)").c_str()
                          : "",
              long_poll_s > 0 ? (", and one long-poll each held up to " + std::to_string(long_poll_s) + " s").c_str() : "",
              warmup, seconds);
  std::fflush(stdout);
  for (;;) {
    int64_t now = now_us();
    if (!measuring && now >= measure_at) {
      measuring = true;
      w.start(int(pid));
    }
    if (now >= end) break;
    while (!due.empty() && std::get<0>(due.top()) <= now) {
      auto [when, kind, i] = due.top();
      due.pop();
      if (kind == kLongPoll) {  // once: its answers send the next
        loop.request(i, kind, when);
        continue;
      }
      if (loop.conn(i).busy) ++late;
      loop.request(i, kind, when);
      due.emplace(when + (kind == kBeat ? interval_ms : poll_ms) * 1000, kind, i);
    }
    int64_t next = due.empty() ? end : std::min(end, std::get<0>(due.top()));
    if (!measuring) next = std::min(next, measure_at);
    loop.poll_us(std::max<int64_t>(0, next - now_us()));
  }
  std::string cpu = w.finish();
  double secs = double(now_us() - w.t0) / 1e6;
  if (!trace_path.empty()) {
    std::ofstream t(trace_path);
    for (const auto& [due, kind, l] : trace) t << double(due - w.t0) / 1e6 << ' ' << kind << ' ' << l << '\n';
  }
  // Requests still unanswered at the end: count their age so far (a stalled server shows). The
  // long-polls are held by design: one per agent is always outstanding.
  long unanswered = long(loop.in_flight()) - (long_poll_s > 0 ? agents : 0);
  std::printf("  heartbeats: %ld answered in %.1f s = %.0f/s; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
              answered[kBeat], secs, double(answered[kBeat]) / secs, percentile(lat[kBeat], 0.5) / 1000,
              percentile(lat[kBeat], 0.99) / 1000,
              lat[kBeat].empty() ? 0.0 : *std::max_element(lat[kBeat].begin(), lat[kBeat].end()) / 1000.0);
  if (poll_ms > 0) {
    std::printf("  assignment polls: %ld answered = %.0f/s; latency p50 %.2f ms, p99 %.2f ms\n", answered[kPoll],
                double(answered[kPoll]) / secs, percentile(lat[kPoll], 0.5) / 1000, percentile(lat[kPoll], 0.99) / 1000);
  }
  if (long_poll_s > 0) {
    std::printf("  long-polls: %ld held open; %ld answered in the window = %.0f/s (%ld with a new version)\n", agents,
                long_answers, double(long_answers) / secs, long_changed);
  }
  std::printf("  requests due while the agent's previous one was unanswered: %ld; unanswered at the end: %ld\n", late,
              unanswered);
  std::printf("RESULT agents=%ld beats=%ld beat_rate=%.1f beat_p50_us=%.0f beat_p99_us=%.0f polls=%ld poll_rate=%.1f "
              "poll_p50_us=%.0f poll_p99_us=%.0f long_polls=%ld long_poll_rate=%.1f late=%ld unanswered=%ld %s\n",
              agents, answered[kBeat], double(answered[kBeat]) / secs, percentile(lat[kBeat], 0.5),
              percentile(lat[kBeat], 0.99), answered[kPoll], double(answered[kPoll]) / secs, percentile(lat[kPoll], 0.5),
              percentile(lat[kPoll], 0.99), long_answers, double(long_answers) / secs, late, unanswered, cpu.c_str());
  return 0;
}

// ---- saturate --------------------------------------------------------------------------------

int cmd_saturate(const Args& a) {
  Url url = parse_url(a.need("url"));
  long conns = a.num("connections", 64), seconds = a.num("seconds", 10), pid = a.num("pid", 0);
  int bg_tid = int(a.num("background-tid", 0));
  auto keys = read_keys(a.need("keys"), size_t(conns));
  std::vector<uint32_t> lat;
  long answered = 0;
  bool measuring = false, stopping = false;
  Loop loop(url, size_t(conns));
  loop.make_request = [&](size_t c, int) { return heartbeat_request(url, keys[c].second); };
  loop.on_answer = [&](size_t c, int, int status, const std::string& body, int64_t due) {
    if (status != 200) die("HTTP " + std::to_string(status) + ": " + body);
    int64_t now = now_us();
    if (measuring) {
      lat.push_back(uint32_t(now - due));
      ++answered;
    }
    if (!stopping) loop.request(c, 0, now);
  };
  loop.connect_all();
  int64_t t0 = now_us(), measure_at = t0 + 2'000'000, end = measure_at + seconds * 1'000'000;
  for (size_t c = 0; c < loop.size(); ++c) loop.request(c, 0, now_us());
  Window w;
  w.bg_tid = bg_tid;
  while (now_us() < end) {
    if (!measuring && now_us() >= measure_at) {
      measuring = true;
      w.start(int(pid));
    }
    loop.poll_us(50'000);
  }
  std::string cpu = w.finish();
  double secs = double(now_us() - w.t0) / 1e6;
  stopping = true;
  measuring = false;
  while (loop.in_flight() > 0) loop.poll_us(1'000'000);
  std::printf("  saturation: %ld heartbeats in %.1f s = %.0f/s over %ld connections; latency p50 %.2f ms, p99 %.2f ms\n",
              answered, secs, double(answered) / secs, conns, percentile(lat, 0.5) / 1000, percentile(lat, 0.99) / 1000);
  std::printf("RESULT connections=%ld beats=%ld beat_rate=%.1f beat_p50_us=%.0f beat_p99_us=%.0f %s\n", conns, answered,
              double(answered) / secs, percentile(lat, 0.5), percentile(lat, 0.99), cpu.c_str());
  return 0;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: agent_load join --url URL --token T --nodes N [--concurrency C] [--region R] [--gpus G] --out FILE\n"
               "       agent_load beat --url URL --keys FILE [--agents N] [--interval-ms MS] [--poll-ms MS]\n"
               "                       [--long-poll-s S] [--seconds S] [--warmup S] [--pid SERVER_PID]\n"
               "                       [--background-tid TID] [--trace FILE]\n"
               "       agent_load saturate --url URL --keys FILE [--connections C] [--seconds S] [--pid SERVER_PID]\n"
               "                       [--background-tid TID]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage();
  std::string cmd = argv[1];
  Args a;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) usage();
    a.kv[k.substr(2)] = argv[++i];
  }
  try {
    if (cmd == "join") return cmd_join(a);
    if (cmd == "beat") return cmd_beat(a);
    if (cmd == "saturate") return cmd_saturate(a);
  } catch (const std::exception& e) {
    die(e.what());
  }
  usage();
}

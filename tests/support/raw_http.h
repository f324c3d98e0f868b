// A raw TCP connection for protocol-level tests: send arbitrary bytes (malformed request lines,
// oversized headers, a byte at a time) and read back whatever the server answers, or see that it
// closed the connection. Header-only; POSIX sockets; every wait is bounded by a timeout.
#pragma once
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "http/client.h"

namespace aicloud::test {

// What came back on a raw connection.
struct RawResponse {
  bool got_response = false;  // a complete status line, headers and body arrived
  bool closed = false;        // the server closed (or reset) the connection
  bool timed_out = false;     // neither a response nor a close within the timeout
  unsigned status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string header(const std::string& name) const {
    for (const auto& [k, v] : headers) {
      if (strcasecmp(k.c_str(), name.c_str()) == 0) return v;
    }
    return "";
  }
};

class RawConn {
 public:
  // url: "http://host:port", as ServerProcess::url().
  explicit RawConn(const std::string& url) {
    auto [host, port] = http::parse_base_url(url);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error("socket failed");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(std::stoi(port)));
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) throw std::runtime_error("bad host " + host);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      int e = errno;
      ::close(fd_);
      fd_ = -1;
      throw std::runtime_error(std::string("connect failed: ") + std::strerror(e));
    }
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  // Whether a new TCP connection to url is accepted now (false once the server stopped listening).
  static bool can_connect(const std::string& url) {
    try {
      RawConn c(url);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  // Ends the connection with a reset (RST) rather than a FIN: SO_LINGER with a zero timeout.
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }

  // Sends all of data; false if the server closed or reset the connection first (not an error
  // for these tests: closing on bad input is allowed).
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      data.remove_prefix(size_t(n));
    }
    return true;
  }

  // Reads until what has arrived (and is not yet taken by read_response) holds `needle`; false
  // if it did not within timeout. For a stream's pieces, seen as they come.
  bool read_until(std::string_view needle, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (buf_.find(needle) == std::string::npos) {
      if (!fill(deadline)) return false;
    }
    return true;
  }

  // Reads one response (Content-Length or chunked body, or until close) within timeout.
  RawResponse read_response(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    RawResponse r;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) {
        r.timed_out = timed_out_;
        r.closed = !timed_out_;
        return r;
      }
    }
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    size_t eol = head.find("\r\n");
    std::string status_line = head.substr(0, eol);
    if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) throw std::runtime_error("bad status line: " + status_line);
    r.status = unsigned(std::stoi(status_line.substr(9, 3)));
    size_t pos = eol == std::string::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string v = line.substr(colon + 1);
        while (!v.empty() && v.front() == ' ') v.erase(0, 1);
        r.headers.emplace_back(line.substr(0, colon), v);
      }
      pos = e + 2;
    }
    if (r.status < 200) {  // an interim response (100 Continue): a head alone, the final one follows
      r.got_response = true;
      return r;
    }
    std::string cl = r.header("content-length");
    if (r.header("transfer-encoding").find("chunked") != std::string::npos) {
      while (true) {  // size line, data, CRLF; a zero size, then the (empty) trailer
        size_t eol2;
        while ((eol2 = buf_.find("\r\n")) == std::string::npos) {
          if (!fill(deadline)) return timed_out_or_closed(r);
        }
        size_t n = std::stoul(buf_.substr(0, eol2), nullptr, 16);
        buf_.erase(0, eol2 + 2);
        if (n == 0) {
          while (buf_.find("\r\n") == std::string::npos) {
            if (!fill(deadline)) return timed_out_or_closed(r);
          }
          buf_.erase(0, buf_.find("\r\n") + 2);
          break;
        }
        while (buf_.size() < n + 2) {
          if (!fill(deadline)) return timed_out_or_closed(r);
        }
        r.body += buf_.substr(0, n);
        buf_.erase(0, n + 2);
      }
    } else if (!cl.empty()) {
      size_t n = std::stoul(cl);
      while (buf_.size() < n) {
        if (!fill(deadline)) {
          r.timed_out = timed_out_;
          r.closed = !timed_out_;
          return r;
        }
      }
      r.body = buf_.substr(0, n);
      buf_.erase(0, n);
    } else {
      while (fill(deadline)) {
      }
      r.body = std::move(buf_);
      buf_.clear();
      r.closed = true;
    }
    r.got_response = true;
    return r;
  }

  // True if the server closes the connection (EOF or reset) within timeout; data it sends
  // before closing is kept for read_response().
  bool wait_closed(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!fill(deadline)) return !timed_out_;
    }
    return false;
  }

  int fd() const { return fd_; }

 private:
  RawResponse timed_out_or_closed(RawResponse r) {
    r.timed_out = timed_out_;
    r.closed = !timed_out_;
    return r;
  }

  // Reads more into buf_; false on EOF, reset or timeout (timed_out_ tells which).
  bool fill(std::chrono::steady_clock::time_point deadline) {
    timed_out_ = false;
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        timed_out_ = true;
        return false;
      }
      pollfd p{fd_, POLLIN, 0};
      int pr = ::poll(&p, 1, int(left.count()));
      if (pr < 0 && errno == EINTR) continue;
      if (pr == 0) {
        timed_out_ = true;
        return false;
      }
      char tmp[65536];
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;  // EOF or ECONNRESET
      buf_.append(tmp, size_t(n));
      return true;
    }
  }

  int fd_ = -1;
  std::string buf_;
  bool timed_out_ = false;
};

// A minimal HTTP/1.1 request, for raw connections.
inline std::string raw_request(const std::string& method, const std::string& target, const std::string& body = "",
                               const std::vector<std::pair<std::string, std::string>>& headers = {},
                               bool keep_alive = true) {
  std::string s = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n";
  for (const auto& [k, v] : headers) s += k + ": " + v + "\r\n";
  if (!body.empty() || method == "POST") s += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  if (!keep_alive) s += "Connection: close\r\n";
  s += "\r\n";
  return s + body;
}

}  // namespace aicloud::test

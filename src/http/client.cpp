#include "http/client.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <strings.h>

namespace aicloud::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

std::string ClientResponse::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  }
  return "";
}

std::pair<std::string, std::string> parse_base_url(const std::string& url) {
  std::string rest = url;
  if (rest.rfind("http://", 0) == 0) {
    rest = rest.substr(7);
  } else if (rest.rfind("https://", 0) == 0) {
    throw std::invalid_argument("https:// URLs are not supported by this client yet; use http:// (got '" + url + "')");
  } else {
    throw std::invalid_argument("the server URL must start with http:// (got '" + url + "')");
  }
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find('/') != std::string::npos) throw std::invalid_argument("the server URL must not have a path (got '" + url + "')");
  auto colon = rest.rfind(':');
  if (colon == std::string::npos) return {rest, "80"};
  std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.empty() || port.empty() || port.find_first_not_of("0123456789") != std::string::npos) {
    throw std::invalid_argument("the server URL must look like http://HOST:PORT (got '" + url + "')");
  }
  return {host, port};
}

struct Client::Impl {
  asio::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;
  std::chrono::milliseconds timeout;
};

Client::Client(const std::string& base_url, std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>()) {
  std::tie(host_, port_) = parse_base_url(base_url);
  impl_->timeout = timeout;
}

Client::~Client() {
  if (impl_->stream) {
    beast::error_code ec;
    impl_->stream->socket().shutdown(tcp::socket::shutdown_both, ec);
  }
}

ClientResponse Client::request(const std::string& method, const std::string& target, const std::string& body,
                               const std::vector<std::pair<std::string, std::string>>& headers) {
  bhttp::request<bhttp::string_body> req;
  req.method_string(method);
  req.target(target);
  req.version(11);
  req.set(bhttp::field::host, host_ + ":" + port_);
  req.set(bhttp::field::user_agent, "aicloud-cli");
  bool has_ct = false;
  for (const auto& [k, v] : headers) {
    req.set(k, v);
    if (strcasecmp(k.c_str(), "content-type") == 0) has_ct = true;
  }
  if (!body.empty() && !has_ct) req.set(bhttp::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();

  // One retry on a stale keep-alive connection; a fresh connection's failure is final.
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool fresh = !impl_->stream;
    beast::error_code ec;
    if (fresh) {
      tcp::resolver resolver(impl_->ioc);
      auto results = resolver.resolve(host_, port_, ec);
      if (ec) throw ConnectionError("cannot resolve " + host_ + ": " + ec.message());
      impl_->stream.emplace(impl_->ioc);
      impl_->stream->expires_after(impl_->timeout);
      impl_->stream->connect(results, ec);
      if (ec) {
        impl_->stream.reset();
        throw ConnectionError("cannot connect to the aicloud server at http://" + host_ + ":" + port_ + ": " +
                              ec.message() + " (is it running? check --url or AICLOUD_URL)");
      }
    }
    impl_->stream->expires_after(impl_->timeout);
    bhttp::write(*impl_->stream, req, ec);
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(256ull * 1024 * 1024);
    if (!ec) bhttp::read(*impl_->stream, impl_->buffer, parser, ec);
    if (ec) {
      impl_->stream.reset();
      impl_->buffer.clear();
      if (!fresh) continue;
      throw ConnectionError("request to http://" + host_ + ":" + port_ + " failed: " + ec.message());
    }
    auto res = parser.release();
    ClientResponse out;
    out.status = res.result_int();
    out.body = std::move(res.body());
    for (const auto& f : res) out.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    if (!res.keep_alive()) impl_->stream.reset();
    return out;
  }
  throw ConnectionError("request to http://" + host_ + ":" + port_ + " failed");
}

}  // namespace aicloud::http

#include "gateway/gateway.h"

#include <boost/asio.hpp>

#include <mutex>
#include <set>
#include <utility>

#include "gateway/endpoints.h"
#include "gateway/request_scan.h"
#include "gateway/sse_relay.h"
#include "gateway/usage_scan.h"
#include "http/fields.h"
#include "http/server.h"
#include "http/stream.h"
#include "models/registry.h"
#include "util/error.h"
#include "util/json_util.h"
#include "util/log.h"
#include "util/time.h"

namespace aicloud::gateway {

namespace asio = boost::asio;
using namespace std::string_view_literals;

namespace {

// An error's answer. Its x-request-id is the caller's to add: a streamed exchange's answers carry
// it in their raw field lines (Exchange::rl_fields), a direct answer gets it from the App.
http::Response error_reply(const ApiError& e) {
  http::Response r;
  r.status = unsigned(e.status);
  r.body = dump_json(e.to_json());
  return r;
}

// The record's token counts from what the answer reported (gateway/usage_scan.h).
void take_usage(const UsageSeen& u, UsageRecord& rec) {
  rec.input_tokens = u.prompt;
  rec.output_tokens = u.completion;
  rec.cached_tokens = u.cached;
}

json endpoint_model_json(const EndpointModel& e) {
  return {{"id", e.name}, {"object", "model"}, {"created", e.created_at}, {"owned_by", e.owner}};
}

bool is_json_type(std::string_view v) {
  std::string_view t = v.substr(0, v.find(';'));
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return t.size() == 16 && strncasecmp(t.data(), "application/json", 16) == 0;
}

}  // namespace

// One request in flight. Owned by the callbacks that refer to it (upstream call, stream cancel,
// wake wait, meter); it goes away when the last of them has run.
struct Gateway::Exchange : http::UpstreamHandler, std::enable_shared_from_this<Exchange> {
  Gateway& gw;
  Lane& lane;  // the io thread (and its upstream pool) this request runs on
  std::shared_ptr<http::ResponseStream> out = std::make_shared<http::ResponseStream>();
  // (The request's model, organization and id are rec's: rec.model, rec.org_id, rec.request_id.)
  const char* path = nullptr;  // upstream (a literal: the route's)
  std::string body;  // sent upstream
  bool stream = false;
  int64_t t0_ms = now_ms();
  UsageRecord rec;
  std::string rl_fields;  // the x-ratelimit-* and x-request-id header lines, on every answer
  RateLimiter::Reservation rl_reserved;  // tokens taken from the buckets; settled by the real usage

  std::mutex mu;  // guards the fields below: the upstream strand, the io thread of a wake, the cancel
  std::optional<Pick> pick;
  std::vector<std::string> tried;  // replicas that failed before answering
  int attempts = 0;
  std::shared_ptr<http::UpstreamCall> call;
  uint64_t waiter = 0;
  std::unique_ptr<asio::steady_timer> wake_timer;
  std::optional<std::chrono::steady_clock::time_point> wake_deadline;  // set by the first wait
  bool waiting = false, cancelled = false, done = false;

  // The upstream's response: touched only by the upstream callbacks, which run one at a time.
  unsigned status = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string whole;  // non-streamed body (or an error body)
  // A streamed body's events: [DONE] held back until the usage record is durable, the usage
  // read, the chunk asked for on the client's behalf dropped (set by handle()).
  SseRelay sse{false};
  bool head_sent = false;  // the answer is a stream (a 200 with its events forwarded)
  // What one upstream read brought is handed to the client once that read is through (the
  // pool's on_read_end), so the head and the events of a read go out in one write. When the same
  // read also ended the response, they wait for the end, which goes out once the usage record is
  // durable: a short stream is then one write to the client, not three.
  std::string to_client;
  bool flush_due = false, head_given = false;
  // An answer larger than the gateway holds whole, or a stream event that does not end within
  // kMaxEvent: the exchange fails (a 502, or an error event) rather than memory growing as fast
  // as a replica sends or a cut answer passing as complete. Set by refuse().
  static constexpr size_t kMaxWhole = 64u << 20, kMaxEvent = 8u << 20;
  std::string too_large;

  Exchange(Gateway& g, Lane& l) : gw(g), lane(l) {}

  void start() {
    std::weak_ptr<Exchange> weak = shared_from_this();
    out->on_cancel([weak] {
      if (auto self = weak.lock()) self->on_client_gone();
    });
    attempt();
  }

  void attempt() {
    std::unique_lock lk(mu);
    if (cancelled || done) return;
    pick = gw.dir_.pick(rec.model, rec.org_id, tried);
    if (!pick) {
      if (attempts > 0) {
        lk.unlock();
        return fail(ApiError(502, "server_error", "No replica of model '" + rec.model + "' could be reached; try again.",
                             "upstream_unavailable"));
      }
      if (waiting) return;
      return wait_for_replica(lk);
    }
    ++attempts;
    const Replica& replica = pick->replica();
    rec.deployment_id = pick->deployment_id();
    rec.region = replica.region;

    http::UpstreamRequest req;
    req.target = path;
    // One string of lines rather than a pair of strings per field. The request id is the App's
    // (checked: request_id_for); a replica's key is checked here, and one that could split the
    // request is not sent (the replica then refuses the request, as for a wrong key).
    std::string& f = req.fields;
    f.reserve(96 + replica.api_key.size() + rec.request_id.size());
    f += "Content-Type: application/json\r\n"sv;
    if (!replica.api_key.empty() && http::field_value_ok(replica.api_key)) {
      f.append("Authorization: Bearer "sv).append(replica.api_key).append("\r\n"sv);
    }
    f.append("x-request-id: "sv).append(rec.request_id).append("\r\n"sv);
    req.handler_body = body;  // (this exchange is the call's handler: the body outlives the call)
    auto snapshot = pick->deployment;  // (pick may change once mu is let go; replica stays valid with this)
    lk.unlock();
    auto c = lane.pool->send(replica.host, replica.port, std::move(req), shared_from_this(), gw.opts_.upstream);
    lk.lock();
    call = c;
    if (cancelled) c->cancel();
  }

  // Scale from zero: ask the controller for a replica, and wait for one up to the limit.
  void wait_for_replica(std::unique_lock<std::mutex>& lk) {
    waiting = true;
    std::weak_ptr<Exchange> weak = shared_from_this();
    waiter = gw.dir_.wait_ready(rec.model, rec.org_id, [weak, &io = *lane.io] {
      asio::post(io, [weak] {
        auto self = weak.lock();
        if (!self) return;
        {
          std::lock_guard lk2(self->mu);
          if (!self->waiting) return;
          self->waiting = false;
          self->wake_timer->cancel();
        }
        self->attempt();
      });
    });
    // One limit for the whole request, however often it goes back to waiting.
    if (!wake_deadline) wake_deadline = std::chrono::steady_clock::now() + gw.opts_.wake_timeout;
    wake_timer = std::make_unique<asio::steady_timer>(*lane.io, *wake_deadline);
    auto self = shared_from_this();
    wake_timer->async_wait([self](const boost::system::error_code& ec) {
      if (ec) return;
      {
        std::lock_guard lk2(self->mu);
        if (!self->waiting) return;
        self->waiting = false;
      }
      self->gw.dir_.cancel_waiter(self->waiter);
      ApiError e(503, "server_error",
                 "Model '" + self->rec.model + "' is starting (scaled to zero) and no replica was ready in time; retry shortly.",
                 "model_starting");
      self->fail(e, {{"retry-after", "10"}});
    });
    std::string m = rec.model, o = rec.org_id;
    lk.unlock();
    gw.dir_.wake(m, o);
    lk.lock();
    // A replica may have become ready between pick() and wait_ready(): try once more.
    if (auto p = gw.dir_.pick(rec.model, rec.org_id, tried)) {
      ReplicaDirectory::release(*p);
      waiting = false;
      gw.dir_.cancel_waiter(waiter);
      wake_timer->cancel();
      lk.unlock();
      asio::post(*lane.io, [self] { self->attempt(); });
    }
  }

  void on_client_gone() {
    std::shared_ptr<http::UpstreamCall> c;
    {
      std::lock_guard lk(mu);
      cancelled = true;
      c = call;
      if (waiting) {
        waiting = false;
        gw.dir_.cancel_waiter(waiter);
        if (wake_timer) wake_timer->cancel();
      }
    }
    if (c) c->cancel();
    else finish_record(499);  // never reached a replica
  }

  // ---- the upstream call's handler (http::UpstreamHandler) ----
  void on_head(http::UpstreamHead& h) override {
    status = h.status;
    content_type = std::move(h.content_type);
    headers = std::move(h.headers);
    // The client's rate limits are the gateway's (rl_fields): an upstream's own (a hosted API
    // behind an endpoint) are not passed on.
    // Nor its x-request-id: the request's own is in rl_fields.
    std::erase_if(headers, [](const auto& f) {
      return (f.first.size() > 12 && strncasecmp(f.first.data(), "x-ratelimit-", 12) == 0) ||
             http::same_field(f.first, "x-request-id");
    });
    if (stream && status == 200) {
      head_sent = true;
      flush_due = true;
    }
  }

  // The answer's head: the upstream's status and fields, the request id and the rate limits.
  // (Taken once, when the answer goes out: until then a failure's own answer, fail(), may still
  // need rl_fields.)
  http::Response take_head() {
    http::Response r;
    r.status = status;
    r.content_type = std::move(content_type);  // (none: application/json, Response's default)
    r.headers = std::move(headers);
    r.fields = std::move(rl_fields);
    return r;
  }

  // The pool's on_read_end: the stream goes on, and what this read brought goes out now.
  void on_read_end() override {
    if (!flush_due) return;
    flush_due = false;
    emit({}, false, true);
  }

  // Gives the client's stream its head (the first time), what waits in to_client and `more`,
  // and the end if asked. A flush (`flushing`) leaves all of it to the end once the response is
  // done (finish_record has begun, or the client has gone).
  void emit(std::string more, bool end, bool flushing = false) {
    std::lock_guard lk(mu);
    if (flushing && done) return;
    to_client += more;
    if (!head_given) {
      head_given = true;
      if (content_type.empty()) content_type = "text/event-stream";
      out->head(take_head(), std::move(to_client), end);
    } else if (!to_client.empty() || end) {
      out->write(std::move(to_client), end);
    }
    to_client.clear();
  }

  void on_data(std::string_view d) override {
    if (!too_large.empty()) return;
    if (!head_sent) {
      if (whole.size() + d.size() > kMaxWhole) return refuse("an answer larger than 64 MiB");
      whole.append(d);
      return;
    }
    // Room for what this read brings and the held [DONE] after it: a short stream's events and
    // its end then go out from one allocation.
    const size_t before = to_client.size();
    to_client.reserve(before + sse.pending() + d.size() + 16);
    sse.put(d, to_client);
    if (const auto& u = sse.usage()) take_usage(*u, rec);
    if (to_client.size() > before) flush_due = true;
    if (sse.pending() > kMaxEvent) refuse("an event larger than 8 MiB");
  }

  // Ends the upstream call; on_done reports `why` as the replica's failure.
  void refuse(std::string why) {
    too_large = std::move(why);
    whole = {};
    sse.drop_pending();
    std::shared_ptr<http::UpstreamCall> c;
    {
      std::lock_guard lk(mu);
      c = call;
    }
    if (c) c->cancel();
  }

  void on_done(const std::string& error, bool got_response) override {
    std::string err = error;
    {
      std::lock_guard lk(mu);
      if (pick) {
        // A replica that failed before answering is not tried again for this request.
        if (!err.empty() && !got_response) tried.push_back(pick->replica().id);
        ReplicaDirectory::release(*pick);
      }
      pick.reset();
      call.reset();
      if (cancelled) {
        done = true;
      }
    }
    if (cancelled) return finish_record(499);
    if (!too_large.empty()) {  // refused by on_data: a failure mid-response, however the call ended
      err = "it sent " + too_large;
      got_response = true;
    }
    if (!err.empty() && !got_response) {
      spdlog::warn(R"({{"request_id":"{}","gateway":"replica failed before answering","error":"{}"}})", rec.request_id, err);
      return attempt();  // another replica, or 502 when none is left
    }
    if (!err.empty()) {  // the replica failed mid-response
      if (head_sent) {
        json e = {{"error", {{"message", "The model replica failed while streaming: " + err}, {"type", "server_error"},
                             {"param", nullptr}, {"code", "upstream_error"}}}};
        sse.held().clear();
        return finish_record(502, [self = shared_from_this(), ev = "data: " + dump_json(e) + "\n\n"]() mutable {
          self->emit(std::move(ev), true);
        });
      }
      return fail(ApiError(502, "server_error", "The model replica failed while answering: " + err, "upstream_error"));
    }
    if (head_sent) {
      return finish_record(200, [self = shared_from_this()] { self->emit(std::move(self->sse.held()), true); });
    }
    // A whole (non-streamed, or error) response.
    if (UsageSeen u; status == 200 && is_json_type(content_type) && scan_answer_usage(whole, u)) take_usage(u, rec);
    finish_record(int(status), [self = shared_from_this()] {
      http::Response r = self->take_head();
      r.body = std::move(self->whole);
      self->out->reply(std::move(r));
    });
  }

  void fail(const ApiError& e, std::vector<std::pair<std::string, std::string>> extra = {}) {
    http::Response r = error_reply(e);
    r.fields = rl_fields;
    for (auto& h : extra) r.headers.push_back(h);
    finish_record(e.status, [self = shared_from_this(), r = std::move(r)]() mutable { self->out->reply(std::move(r)); });
  }

  // The usage record, then (once it is durable) what the client sees last.
  void finish_record(int http_status, std::function<void()> deliver = nullptr) {
    {
      std::lock_guard lk(mu);
      if (rec.status != 0) return;  // recorded already
      done = true;
      rec.status = http_status;
    }
    // The tokens reserved up front, corrected by what the engine reported (none: all back).
    if (gw.limiter_) gw.limiter_->settle(rl_reserved, rec.project_id, rec.api_key_id, rec.model, rec.input_tokens + rec.output_tokens);
    rec.ts_ms = now_ms();
    rec.latency_ms = rec.ts_ms - t0_ms;
    auto self = shared_from_this();
    // Journaled on this io thread (metering/meter.h), which moves rec only once it is journaled:
    // a refused record keeps its request id for the answer below. Its status (an int) stays
    // set either way, so a second finish_record still returns.
    gw.meter_.record(std::move(rec), [self, deliver = std::move(deliver)](bool durable) {
      if (!deliver) return;
      if (durable) return deliver();
      http::Response r = error_reply(
          ApiError(503, "server_error", "The request could not be metered; it was not billed. Retry shortly.", "metering_unavailable"));
      r.fields = std::move(self->rl_fields);  // (a streamed head took them already: its error is an event)
      if (self->head_sent) {
        self->emit("data: " + r.body + "\n\n", true);
      } else {
        self->out->reply(std::move(r));
      }
    });
  }
};

Gateway::Gateway(std::vector<asio::io_context*> ios, Meter& meter, ReplicaDirectory& dir, GatewayOptions opts)
    : meter_(meter), dir_(dir), opts_(opts) {
  if (ios.empty()) throw std::invalid_argument("Gateway: no io_context");
  for (auto* io : ios) lanes_.push_back(Lane{io, std::make_unique<http::UpstreamPool>(*io)});
}

Gateway::Lane& Gateway::this_lane() {
  asio::io_context* cur = http::Server::current_io();
  for (auto& l : lanes_) {
    if (l.io == cur) return l;
  }
  return lanes_.front();
}

Gateway::~Gateway() = default;

http::Response Gateway::handle(Context& c, const char* endpoint, const char* path) {
  auto ct = c.req.field("content-type");
  if (!ct || !is_json_type(*ct)) {
    throw ApiError(415, "invalid_request_error", "Send the request body as application/json.", "unsupported_media_type");
  }
  const std::string_view ep = endpoint;
  const char* required = ep == "chat.completions" ? "messages" : ep == "completions" ? "prompt" : "input";
  using T = RequestSeen::Type;
  RequestSeen q;
  if (!scan_request(c.req.body(), required, q)) {
    // Not valid JSON, empty or too deep: the parser's 400 says which (an empty body is {}).
    q = request_seen(parse_json_body(c.req.body()), required);
  }
  if (!q.object) throw bad_request("The request body must be a JSON object.", "invalid_body");
  if (q.model != T::kString || q.model_name.empty()) {
    throw ApiError(400, "invalid_request_error", "You must provide a model parameter.", "missing_required_parameter", "model");
  }
  if (q.input == T::kAbsent || q.input == T::kNull) {
    throw ApiError(400, "invalid_request_error", std::string("Missing required parameter: '") + required + "'.",
                   "missing_required_parameter", required);
  }
  if (ep == "chat.completions" && (q.input != T::kArray || q.input_size == 0)) {
    throw ApiError(400, "invalid_request_error", "'messages' must be a non-empty array of messages.", "invalid_type",
                   "messages");
  }
  bool stream = false;
  if (q.stream != T::kAbsent && q.stream != T::kNull) {
    if (q.stream != T::kBoolean) throw ApiError(400, "invalid_request_error", "'stream' must be a boolean.", "invalid_type", "stream");
    stream = q.stream_value;
  }
  if (q.stream_options != T::kAbsent && q.stream_options != T::kNull && q.stream_options != T::kObject) {
    throw ApiError(400, "invalid_request_error", "'stream_options' must be an object.", "invalid_type", "stream_options");
  }
  if (stream && ep == "embeddings") {
    throw ApiError(400, "invalid_request_error", "Embeddings cannot be streamed.", "invalid_value", "stream");
  }
  std::string model = std::move(q.model_name);
  const Principal& who = c.who();
  if (!dir_.serves(model, who.org_id)) {
    throw ApiError(404, "invalid_request_error",
                   "The model '" + model + "' does not exist or you do not have access to it.", "model_not_found",
                   "model");
  }

  // Rate limits: one request and the tokens it may use (max_tokens + the prompt's bytes / 4).
  std::string rl_fields;
  RateLimiter::Reservation reserved;
  if (limiter_) {
    int64_t max_out = ep == "embeddings" ? 0 : kDefaultMaxTokens;
    if (q.max_completion_tokens == T::kInteger && q.max_completion_tokens_value >= 0) {
      max_out = std::min<int64_t>(q.max_completion_tokens_value, kMaxLimit);
    } else if (q.max_tokens == T::kInteger && q.max_tokens_value >= 0) {
      max_out = std::min<int64_t>(q.max_tokens_value, kMaxLimit);
    }
    // A structured prompt (messages, token arrays) is estimated from the whole body's size:
    // slightly high, and settled by the real usage when the request ends.
    int64_t prompt = int64_t(q.input == T::kString ? q.input_size : c.req.body().size()) / 4 + 1;
    auto d = limiter_->acquire(who.project_id, who.actor_id, model, max_out + prompt);
    // The six lines and the request id's, in one allocation.
    rl_fields.reserve(RateLimiter::kHeaderLinesRoom + 16 + c.request_id.size());
    RateLimiter::append_header_lines(rl_fields, d.report);
    if (!d.allowed) {
      bool req = d.exceeded == "requests";
      int64_t limit = req ? d.report.limit_requests : d.report.limit_tokens;
      int64_t used = limit - (req ? d.report.remaining_requests : d.report.remaining_tokens);
      int64_t wanted = req ? 1 : max_out + prompt;
      ApiError e(429, d.exceeded,
                 "Rate limit reached for " + model + " in project " + who.project_id + " on " +
                     (req ? "requests per min (RPM)" : "tokens per min (TPM)") + ": Limit " + std::to_string(limit) +
                     ", Used " + std::to_string(used) + ", Requested " + std::to_string(wanted) +
                     ". Please try again in " + RateLimiter::format_duration(d.retry_after_ms) + ".",
                 "rate_limit_exceeded");
      http::Response res = error_reply(e);  // (a direct answer: the App adds the x-request-id)
      res.fields = std::move(rl_fields);
      res.headers.emplace_back("retry-after", std::to_string(std::max<int64_t>(1, (d.retry_after_ms + 999) / 1000)));
      return res;
    }
    reserved = d.reserved;
  }

  auto ex = std::make_shared<Exchange>(*this, this_lane());
  // (The request id is checked, request_id_for in api/app.cpp: letters, digits, - _ .)
  rl_fields.append("x-request-id: "sv).append(c.request_id).append("\r\n"sv);
  ex->rl_fields = std::move(rl_fields);
  ex->rl_reserved = reserved;
  ex->path = path;
  ex->stream = stream;
  if (stream) {
    ex->sse = SseRelay(q.include_usage);
    if (q.include_usage) {
      ex->body = std::move(c.req.body());  // it asks for usage already: forwarded unchanged
    } else if (q.stream_options == T::kAbsent) {
      // The gateway meters every stream: the engine is asked for usage by a member put first in
      // the body, which is otherwise forwarded as sent (and has no member of that name).
      std::string& b = c.req.body();
      size_t open = b.find('{');  // the body's own: only white space (or a BOM) comes before it
      b.insert(open + 1, R"("stream_options":{"include_usage":true},)");
      ex->body = std::move(b);
    } else {  // a stream_options without include_usage: true (rare): set it in the parsed body
      json body = parse_json_body(c.req.body());
      body["stream_options"]["include_usage"] = true;
      ex->body = dump_json(body);
    }
  } else {
    ex->body = std::move(c.req.body());  // unchanged: forwarded as the client sent it (nothing reads it after)
  }
  ex->rec.org_id = who.org_id;
  ex->rec.project_id = who.project_id;
  ex->rec.api_key_id = who.actor_id;
  ex->rec.model = std::move(model);
  ex->rec.endpoint = ep == "embeddings" ? "embeddings" : "completions";  // the usage API's families
  ex->rec.request_id = c.request_id;
  ex->start();
  http::Response res;
  res.stream = ex->out;
  return res;
}

void Gateway::add_routes(App& app) {
  if (!limiter_) limiter_ = std::make_unique<RateLimiter>(app.store());
  // What this key may use: its organization's models and the platform's catalog.
  app.add({"GET", "/v1/models", Access::kProject, false, "", [](Context& c) {
             json data = json::array();
             std::set<std::string> names;
             for (const auto& m : models::models_visible_to(*c.tx, c.who().org_id)) {
               names.insert(m.name);
               data.push_back(models::model_json(m));
             }
             for (const auto& e : endpoint_models_visible_to(*c.tx, c.who().org_id)) {
               if (names.insert(e.name).second) data.push_back(endpoint_model_json(e));
             }
             return json{{"object", "list"}, {"data", data}};
           }});
  auto one = [](Context& c) {
    std::string name(c.param("id"));
    if (name.empty()) name = std::string(c.param("ns")) + "/" + std::string(c.param("name"));
    if (auto m = models::find_model(*c.tx, c.who().org_id, name)) return models::model_json(*m);
    for (const auto& e : endpoint_models_visible_to(*c.tx, c.who().org_id)) {
      if (e.name == name) return endpoint_model_json(e);
    }
    models::throw_model_not_found(name);
  };
  app.add({"GET", "/v1/models/{id}", Access::kProject, false, "", one});
  app.add({"GET", "/v1/models/{ns}/{name}", Access::kProject, false, "", one});

  struct Ep {
    const char* route;
    const char* endpoint;
  };
  for (Ep e : {Ep{"/v1/chat/completions", "chat.completions"}, Ep{"/v1/completions", "completions"},
               Ep{"/v1/embeddings", "embeddings"}}) {
    RouteSpec spec{"POST", e.route, Access::kProject, false, "", nullptr};
    spec.raw = [this, e](Context& c) { return handle(c, e.endpoint, e.route); };
    app.add(std::move(spec));
  }
}

}  // namespace aicloud::gateway

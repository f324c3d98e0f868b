// GET /v1/organization/usage/completions (and /embeddings): the metered usage in OpenAI's
// bucketed shape. Buckets cover [start_time, end_time) at bucket_width (1m, 1h, 1d), empty ones
// included, paged by `limit` and `page` (the start of the next bucket).
#include "api/app.h"
#include "metering/meter.h"
#include "util/error.h"

namespace aicloud {

namespace {

int64_t unix_param(const Context& c, const char* name, bool required) {
  if (!c.target.has(name)) {
    if (required) {
      throw ApiError(400, "invalid_request_error", std::string("Missing required parameter: '") + name + "'.",
                     "missing_required_parameter", name);
    }
    return -1;
  }
  auto s = c.target.get(name);
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    throw invalid_field(name, std::string("'") + name + "' must be a unix time in seconds.");
  }
  return std::stoll(std::string(s));
}

// Every value of a repeated parameter, written `k=a&k=b` or `k[]=a&k[]=b`.
std::vector<std::string> multi(const Context& c, const std::string& k) {
  std::vector<std::string> out;
  for (const auto& [key, v] : c.target.query) {
    if (key == k || key == k + "[]") out.push_back(v);
  }
  return out;
}

json usage_page(Context& c, const std::string& endpoint) {
  c.require(Perm::kBillingRead);
  int64_t start = unix_param(c, "start_time", true);
  std::string width = c.target.has("bucket_width") ? std::string(c.target.get("bucket_width")) : "1d";
  int64_t w = width == "1m" ? 60 : width == "1h" ? 3600 : width == "1d" ? 86400 : 0;
  if (!w) throw invalid_field("bucket_width", "'bucket_width' must be one of 1m, 1h, 1d.");
  int64_t max_limit = width == "1m" ? 1440 : width == "1h" ? 168 : 31;
  int64_t limit = width == "1m" ? 60 : width == "1h" ? 24 : 7;
  if (c.target.has("limit")) {
    auto s = c.target.get("limit");
    if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string_view::npos || std::stoll(std::string(s)) < 1 ||
        std::stoll(std::string(s)) > max_limit) {
      throw invalid_field("limit", "'limit' must be between 1 and " + std::to_string(max_limit) + " for bucket_width " + width + ".");
    }
    limit = std::stoll(std::string(s));
  }
  int64_t end = unix_param(c, "end_time", false);
  if (c.target.has("page")) start = unix_param(c, "page", true);
  if (end >= 0 && end <= start) throw invalid_field("end_time", "'end_time' must be after 'start_time'.");
  int64_t stop = start + limit * w;
  bool has_more = false;
  if (end < 0 || end > stop) {
    has_more = end >= 0 || stop < int64_t(time(nullptr));
    end = stop;
  }

  UsageQuery q;
  q.org_id = c.org_id();
  q.start_ms = start * 1000;
  q.end_ms = end * 1000;
  q.bucket_ms = w * 1000;
  q.endpoint = endpoint;
  for (const auto& g : multi(c, "group_by")) {
    if (g == "project_id") q.by_project = true;
    else if (g == "api_key_id") q.by_key = true;
    else if (g == "model") q.by_model = true;
    else if (g != "user_id" && g != "batch") {
      throw invalid_field("group_by", "'group_by' takes project_id, user_id, api_key_id, model and batch; not '" + g + "'.");
    }
  }
  auto one_filter = [&](const char* name, std::string& into) {
    auto v = multi(c, name);
    if (v.size() > 1) throw invalid_field(name, std::string("Give at most one value of '") + name + "'.");
    if (!v.empty()) into = v.front();
  };
  one_filter("project_ids", q.project_id);
  one_filter("api_key_ids", q.api_key_id);
  one_filter("models", q.model);
  auto rows = c.tx->usage_sum(q);

  json data = json::array();
  size_t i = 0;
  for (int64_t b = start; b < end; b += w) {
    json results = json::array();
    for (; i < rows.size() && rows[i].bucket_start_ms / 1000 == b; ++i) {
      const auto& r = rows[i];
      results.push_back({{"object", "organization.usage." + endpoint + ".result"},
                         {"input_tokens", r.input_tokens},
                         {"output_tokens", r.output_tokens},
                         {"input_cached_tokens", r.cached_tokens},
                         {"input_audio_tokens", 0},
                         {"output_audio_tokens", 0},
                         {"num_model_requests", r.requests},
                         {"project_id", q.by_project ? json(r.project_id) : json(nullptr)},
                         {"user_id", nullptr},
                         {"api_key_id", q.by_key ? json(r.api_key_id) : json(nullptr)},
                         {"model", q.by_model ? json(r.model) : json(nullptr)},
                         {"batch", nullptr}});
    }
    data.push_back({{"object", "bucket"}, {"start_time", b}, {"end_time", std::min(b + w, end)}, {"results", results}});
  }
  return {{"object", "page"}, {"data", data}, {"has_more", has_more}, {"next_page", has_more ? json(std::to_string(end)) : json(nullptr)}};
}

}  // namespace

void add_usage_routes(App& app, Meter& meter) {
  auto fold = [&meter] { meter.flush(); };
  app.add({"GET", "/v1/organization/usage/completions", Access::kOrg, false, "",
           [](Context& c) { return usage_page(c, "completions"); }, nullptr, fold});
  app.add({"GET", "/v1/organization/usage/embeddings", Access::kOrg, false, "",
           [](Context& c) { return usage_page(c, "embeddings"); }, nullptr, fold});
}

}  // namespace aicloud

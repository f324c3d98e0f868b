#include "gateway/request_scan.h"

#include "util/json_scan.h"
#include "util/json_util.h"

namespace aicloud::gateway {

namespace {

using json = nlohmann::json;
using Type = RequestSeen::Type;

// The top-level members the scan reads.
enum class Field : uint8_t { kOther, kModel, kInput, kStream, kStreamOptions, kMaxCompletionTokens, kMaxTokens };

// A json_scan handler. depth_ counts the containers open around the current event: members of
// the body are at depth 1, their elements or members at depth 2.
class Scanner {
 public:
  Scanner(std::string_view input_member, RequestSeen& out) : input_(input_member), out_(out) {}

  bool null() { return value(Type::kNull); }
  bool boolean(bool v) {
    if (depth_ == 1 && field_ == Field::kStream) out_.stream_value = v;
    if (depth_ == 2 && field_ == Field::kStreamOptions && options_object_ && include_usage_key_) out_.include_usage = v;
    return value(Type::kBoolean);
  }
  bool number(const json_scan::Number& n) {
    using Kind = json_scan::Number::Kind;
    if (n.kind == Kind::kFloat) return value(Type::kFloat);
    integer(n.kind == Kind::kInteger ? n.integer : n.unsigned_ > uint64_t(INT64_MAX) ? -1 : int64_t(n.unsigned_));
    return value(Type::kInteger);
  }
  bool string(std::string_view raw, bool escaped) {
    if (depth_ == 1 && field_ == Field::kModel) {
      out_.model_name = escaped ? json_scan::unescape(raw) : std::string(raw);
    } else if (depth_ == 1 && field_ == Field::kInput) {
      out_.input_size = escaped ? json_scan::unescape(raw).size() : raw.size();
    }
    return value(Type::kString);
  }

  bool key(std::string_view raw, bool escaped) {
    if (depth_ != 1 && depth_ != 2) return true;
    std::string decoded;
    std::string_view k = escaped ? std::string_view(decoded = json_scan::unescape(raw)) : raw;
    if (depth_ == 1) field_ = field_of(k);
    if (depth_ == 2) include_usage_key_ = k == "include_usage";
    return true;
  }
  bool start_object() { return open(Type::kObject); }
  bool start_array() { return open(Type::kArray); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

 private:
  Field field_of(std::string_view k) const {
    if (k == "model") return Field::kModel;
    if (k == input_) return Field::kInput;
    if (k == "stream") return Field::kStream;
    if (k == "stream_options") return Field::kStreamOptions;
    if (k == "max_completion_tokens") return Field::kMaxCompletionTokens;
    if (k == "max_tokens") return Field::kMaxTokens;
    return Field::kOther;
  }

  void integer(int64_t v) {
    if (depth_ != 1) return;
    if (field_ == Field::kMaxCompletionTokens) out_.max_completion_tokens_value = v;
    if (field_ == Field::kMaxTokens) out_.max_tokens_value = v;
  }

  // Any value (a container when it opens), at the current depth.
  bool value(Type t) {
    if (depth_ == 0) {
      out_.object = t == Type::kObject;
    } else if (depth_ == 1 && out_.object) {  // a member of the body (an array body has no keys)
      switch (field_) {
        case Field::kModel: out_.model = t; break;
        case Field::kInput:
          out_.input = t;
          if (t != Type::kString) out_.input_size = 0;  // (elements are counted as they come)
          break;
        case Field::kStream: out_.stream = t; break;
        case Field::kStreamOptions:
          out_.stream_options = t;
          out_.include_usage = false;  // this occurrence's own, if it has one
          options_object_ = t == Type::kObject;
          break;
        case Field::kMaxCompletionTokens: out_.max_completion_tokens = t; break;
        case Field::kMaxTokens: out_.max_tokens = t; break;
        case Field::kOther: break;
      }
    } else if (depth_ == 2 && out_.object && field_ == Field::kInput && out_.input == Type::kArray) {
      ++out_.input_size;
    } else if (depth_ == 2 && field_ == Field::kStreamOptions && options_object_ && include_usage_key_ &&
               t != Type::kBoolean) {
      out_.include_usage = false;  // only `true` itself asks for usage (boolean() sets it)
    }
    return true;
  }

  bool open(Type t) {
    value(t);
    if (depth_ == 2) include_usage_key_ = false;  // a nested container is not include_usage's value
    ++depth_;  // (json_scan refuses nesting deeper than kMaxJsonDepth: parse_json_body says so)
    return true;
  }

  bool close() {
    --depth_;
    return true;
  }

  std::string_view input_;
  RequestSeen& out_;
  int depth_ = 0;
  Field field_ = Field::kOther;     // the current member of the body
  bool options_object_ = false;     // that member is stream_options, an object
  bool include_usage_key_ = false;  // the current member of stream_options is include_usage
};

Type type_of(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return Type::kNull;
    case json::value_t::boolean: return Type::kBoolean;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return Type::kInteger;
    case json::value_t::number_float: return Type::kFloat;
    case json::value_t::string:
    case json::value_t::binary: return Type::kString;
    case json::value_t::array: return Type::kArray;
    case json::value_t::object: return Type::kObject;
    case json::value_t::discarded: break;
  }
  return Type::kNull;
}

}  // namespace

bool scan_request(std::string_view body, std::string_view input_member, RequestSeen& out) {
  RequestSeen seen;
  Scanner s(input_member, seen);
  if (!json_scan::scan(body, s)) return false;
  out = std::move(seen);
  return true;
}

RequestSeen request_seen(const json& body, std::string_view input_member) {
  RequestSeen r;
  r.object = body.is_object();
  if (!r.object) return r;
  auto member = [&](std::string_view name) -> const json* {
    auto it = body.find(name);
    return it == body.end() ? nullptr : &*it;
  };
  if (const json* m = member("model")) {
    r.model = type_of(*m);
    if (m->is_string()) r.model_name = m->get<std::string>();
  }
  if (const json* i = member(input_member)) {
    r.input = type_of(*i);
    if (i->is_string()) r.input_size = i->get_ref<const std::string&>().size();
    if (i->is_array()) r.input_size = i->size();
  }
  if (const json* s = member("stream")) {
    r.stream = type_of(*s);
    if (s->is_boolean()) r.stream_value = s->get<bool>();
  }
  if (const json* o = member("stream_options")) {
    r.stream_options = type_of(*o);
    r.include_usage = o->is_object() && o->value("include_usage", json()) == true;
  }
  auto integer = [](const json& j) {
    return j.is_number_unsigned() && j.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : j.get<int64_t>();
  };
  if (const json* t = member("max_completion_tokens")) {
    r.max_completion_tokens = type_of(*t);
    if (t->is_number_integer()) r.max_completion_tokens_value = integer(*t);
  }
  if (const json* t = member("max_tokens")) {
    r.max_tokens = type_of(*t);
    if (t->is_number_integer()) r.max_tokens_value = integer(*t);
  }
  return r;
}

}  // namespace aicloud::gateway

#include "models/gguf.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

namespace aicloud::gguf {
namespace {

constexpr uint64_t kMaxKeyBytes = 65535;  // the spec's limit on a key's length
constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;

// The bytes of one element of a KV type when it has a fixed size, else 0.
uint64_t fixed_size(Type t) {
  switch (t) {
    case Type::U8: case Type::I8: case Type::BOOL: return 1;
    case Type::U16: case Type::I16: return 2;
    case Type::U32: case Type::I32: case Type::F32: return 4;
    case Type::U64: case Type::I64: case Type::F64: return 8;
    default: return 0;
  }
}
bool known_type(uint32_t t) { return t <= static_cast<uint32_t>(Type::F64); }

// The least bytes one element of a type takes in a file (to bound counts before allocating).
uint64_t min_size(Type t) {
  if (t == Type::STRING) return 8;
  if (t == Type::ARRAY) return 12;
  return fixed_size(t);
}

// Sequential reads of a file or of bytes in memory, bounded by their size; every failure names
// the source, the offset and what was being read.
class Reader {
 public:
  Reader(std::string name, std::string_view mem) : name_(std::move(name)), mem_(mem), size_(mem.size()) {}
  Reader(std::string name, int fd, uint64_t size) : name_(std::move(name)), fd_(fd), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw GgufError(name_ + ": not a valid GGUF file: " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  // A count or length larger than what is left of the file: cut short, or a corrupt count.
  [[noreturn]] void fail_size(const std::string& what) const {
    throw GgufError(name_ + ": truncated or corrupt GGUF file: " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  void need(uint64_t n, const char* what) const {
    if (n > remaining()) {
      throw GgufError(name_ + ": truncated GGUF file: " + what + " needs " + std::to_string(n) + " bytes at byte " +
                      std::to_string(pos_) + ", the file has " + std::to_string(size_) + " bytes");
    }
  }

  void get(void* dst, uint64_t n, const char* what) {
    need(n, what);
    if (fd_ < 0) {
      std::memcpy(dst, mem_.data() + pos_, n);
    } else {
      auto* out = static_cast<char*>(dst);
      uint64_t left = n;
      while (left > 0) {
        if (pos_ < buf_start_ || pos_ >= buf_start_ + buf_.size()) fill();
        uint64_t take = std::min<uint64_t>(left, buf_start_ + buf_.size() - pos_);
        std::memcpy(out, buf_.data() + (pos_ - buf_start_), take);
        out += take;
        pos_ += take;
        left -= take;
      }
      return;
    }
    pos_ += n;
  }
  template <typename T>
  T get(const char* what) {
    T v;
    get(&v, sizeof v, what);
    return v;
  }
  std::string string(const char* what) {
    uint64_t n = get<uint64_t>(what);
    need(n, what);
    std::string s(n, '\0');
    get(s.data(), n, what);
    return s;
  }

 private:
  void fill() {
    constexpr uint64_t kChunk = 1 << 20;
    buf_.resize(std::min<uint64_t>(kChunk, size_ - pos_));
    buf_start_ = pos_;
    uint64_t got = 0;
    while (got < buf_.size()) {
      ssize_t r = ::pread(fd_, buf_.data() + got, buf_.size() - got, static_cast<off_t>(pos_ + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) throw GgufError(name_ + ": read failed at byte " + std::to_string(pos_ + got) + ": " +
                                  (r < 0 ? std::strerror(errno) : "unexpected end of file"));
      got += static_cast<uint64_t>(r);
    }
  }

  std::string name_;
  std::string_view mem_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t pos_ = 0;
  std::string buf_;
  uint64_t buf_start_ = 0;
};

Value read_value(Reader& r, Type t, int depth) {
  Value v;
  v.type = t;
  switch (t) {
    case Type::U8: v.u = r.get<uint8_t>("a u8 value"); break;
    case Type::I8: v.i = r.get<int8_t>("an i8 value"); break;
    case Type::U16: v.u = r.get<uint16_t>("a u16 value"); break;
    case Type::I16: v.i = r.get<int16_t>("an i16 value"); break;
    case Type::U32: v.u = r.get<uint32_t>("a u32 value"); break;
    case Type::I32: v.i = r.get<int32_t>("an i32 value"); break;
    case Type::U64: v.u = r.get<uint64_t>("a u64 value"); break;
    case Type::I64: v.i = r.get<int64_t>("an i64 value"); break;
    case Type::F32: v.f = r.get<float>("an f32 value"); break;
    case Type::F64: v.f = r.get<double>("an f64 value"); break;
    case Type::BOOL: {
      uint8_t b = r.get<uint8_t>("a bool value");
      if (b > 1) r.fail("a bool value of " + std::to_string(b));
      v.u = b;
      break;
    }
    case Type::STRING: v.s = r.string("a string value"); break;
    case Type::ARRAY: {
      if (depth >= kMaxArrayDepth) r.fail("arrays nested too deeply");
      uint32_t et = r.get<uint32_t>("an array's element type");
      if (!known_type(et)) r.fail("unknown array element type " + std::to_string(et));
      v.elem = static_cast<Type>(et);
      uint64_t n = r.get<uint64_t>("an array's length");
      if (n > r.remaining() / min_size(v.elem)) {
        r.fail_size("an array of " + std::to_string(n) + " " + type_name(v.elem) + " elements cannot fit in the " +
               std::to_string(r.remaining()) + " bytes left");
      }
      v.items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(r, v.elem, depth + 1));
      break;
    }
  }
  return v;
}

File parse_from(Reader& r) {
  File f;
  f.file_size = r.size();
  char magic[4];
  r.get(magic, 4, "the magic \"GGUF\"");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    throw GgufError(std::string("not a GGUF file: the first 4 bytes are not \"GGUF\""));
  }
  f.version = r.get<uint32_t>("the version");
  if (f.version == 0x03000000u || f.version == 0x02000000u) r.fail("a big-endian GGUF (not supported)");
  if (f.version != 2 && f.version != 3) {
    r.fail("version " + std::to_string(f.version) + " (this reader knows versions 2 and 3)");
  }
  uint64_t n_tensors = r.get<uint64_t>("the tensor count");
  uint64_t n_kv = r.get<uint64_t>("the metadata count");
  if (n_kv > r.remaining() / (8 + 4 + 1)) {
    r.fail_size(std::to_string(n_kv) + " metadata pairs cannot fit in the " + std::to_string(r.remaining()) +
                " bytes left");
  }
  if (n_tensors > r.remaining() / (8 + 4 + 8 + 4 + 8)) {
    r.fail_size(std::to_string(n_tensors) + " tensor infos cannot fit in the " + std::to_string(r.remaining()) +
                " bytes left");
  }

  std::set<std::string, std::less<>> keys;
  f.kv.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = r.string("a metadata key");
    if (key.empty() || key.size() > kMaxKeyBytes) r.fail("a metadata key of " + std::to_string(key.size()) + " bytes");
    if (!keys.insert(key).second) r.fail("the metadata key '" + key + "' appears twice");
    uint32_t t = r.get<uint32_t>("a metadata value type");
    if (!known_type(t)) r.fail("unknown value type " + std::to_string(t) + " for key '" + key + "'");
    Value v = read_value(r, static_cast<Type>(t), 0);
    f.kv.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = f.find("general.alignment")) {
    if (a->type != Type::U32 || a->u == 0 || (a->u & (a->u - 1)) != 0) {
      r.fail("general.alignment must be a u32 power of two");
    }
    f.alignment = a->u;
  }

  std::set<std::string, std::less<>> names;
  f.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = r.string("a tensor name");
    if (t.name.empty() || t.name.size() > 64) r.fail("a tensor name of " + std::to_string(t.name.size()) + " bytes");
    if (!names.insert(t.name).second) r.fail("the tensor '" + t.name + "' appears twice");
    uint32_t n_dims = r.get<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) r.fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
    uint64_t elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = r.get<uint64_t>("a tensor dimension");
      if (ne > uint64_t(std::numeric_limits<int64_t>::max()) ||
          (ne != 0 && elems > uint64_t(std::numeric_limits<int64_t>::max()) / ne)) {
        r.fail("tensor '" + t.name + "' has too many elements");
      }
      elems *= ne;
      t.dims.push_back(ne);
    }
    t.type = r.get<uint32_t>("a tensor type");
    TypeSize ts = ggml_type_size(t.type);
    if (ts.block_bytes == 0) r.fail("tensor '" + t.name + "' has unknown type " + std::to_string(t.type));
    if (t.dims[0] % ts.block_elems != 0) {
      r.fail("tensor '" + t.name + "' has rows of " + std::to_string(t.dims[0]) + " elements, not whole " +
             ggml_type_name(t.type) + " blocks of " + std::to_string(ts.block_elems));
    }
    t.offset = r.get<uint64_t>("a tensor offset");
    if (t.offset % f.alignment != 0) r.fail("tensor '" + t.name + "' is not aligned to " + std::to_string(f.alignment));
    f.tensors.push_back(std::move(t));
  }

  uint64_t end_of_infos = r.pos();
  f.data_offset = f.tensors.empty() ? end_of_infos : (end_of_infos + f.alignment - 1) / f.alignment * f.alignment;
  // Every tensor's bytes lie inside the file and no two overlap.
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // [begin, end) relative to data_offset
  for (const auto& t : f.tensors) {
    uint64_t bytes = t.bytes();
    uint64_t data_size = f.file_size >= f.data_offset ? f.file_size - f.data_offset : 0;
    if (t.offset > data_size || bytes > data_size - t.offset) {
      throw GgufError("truncated GGUF file: tensor '" + t.name + "' (" + std::to_string(bytes) +
                      " bytes at data offset " + std::to_string(t.offset) + ") ends past the file's " +
                      std::to_string(f.file_size) + " bytes");
    }
    spans.emplace_back(t.offset, t.offset + bytes);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) {
    if (spans[k].first < spans[k - 1].second) r.fail("two tensors' data overlap");
  }
  return f;
}

void put_raw(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <typename T>
void put(std::string& out, T v) {
  put_raw(out, &v, sizeof v);
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const Value& v) {
  switch (v.type) {
    case Type::U8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case Type::I8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case Type::U16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case Type::I16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case Type::U32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case Type::I32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case Type::U64: put<uint64_t>(out, v.u); break;
    case Type::I64: put<int64_t>(out, v.i); break;
    case Type::F32: put<float>(out, static_cast<float>(v.f)); break;
    case Type::F64: put<double>(out, v.f); break;
    case Type::BOOL: put<uint8_t>(out, v.u ? 1 : 0); break;
    case Type::STRING: put_string(out, v.s); break;
    case Type::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem));
      put<uint64_t>(out, v.items.size());
      for (const auto& item : v.items) {
        if (item.type != v.elem) throw std::invalid_argument("gguf: an array mixes element types");
        put_value(out, item);
      }
      break;
  }
}

uint64_t pad_to(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::U8: return "u8";
    case Type::I8: return "i8";
    case Type::U16: return "u16";
    case Type::I16: return "i16";
    case Type::U32: return "u32";
    case Type::I32: return "i32";
    case Type::F32: return "f32";
    case Type::BOOL: return "bool";
    case Type::STRING: return "string";
    case Type::ARRAY: return "array";
    case Type::U64: return "u64";
    case Type::I64: return "i64";
    case Type::F64: return "f64";
  }
  return "unknown";
}

uint64_t Value::as_uint() const {
  switch (type) {
    case Type::U8: case Type::U16: case Type::U32: case Type::U64: return u;
    case Type::I8: case Type::I16: case Type::I32: case Type::I64:
      if (i >= 0) return static_cast<uint64_t>(i);
      throw GgufError("gguf: a negative value where a count was expected");
    default: throw GgufError(std::string("gguf: expected an integer, found a ") + type_name(type));
  }
}

int64_t Value::as_int() const {
  switch (type) {
    case Type::I8: case Type::I16: case Type::I32: case Type::I64: return i;
    case Type::U8: case Type::U16: case Type::U32: case Type::U64:
      if (u <= uint64_t(std::numeric_limits<int64_t>::max())) return static_cast<int64_t>(u);
      throw GgufError("gguf: an integer out of range");
    default: throw GgufError(std::string("gguf: expected an integer, found a ") + type_name(type));
  }
}

double Value::as_float() const {
  if (type == Type::F32 || type == Type::F64) return f;
  return static_cast<double>(as_int());
}

const std::string& Value::as_string() const {
  if (type != Type::STRING) throw GgufError(std::string("gguf: expected a string, found a ") + type_name(type));
  return s;
}

TypeSize ggml_type_size(uint32_t t) {
  // ggml's block sizes (ggml.h's enum ggml_type; the gaps are types ggml removed).
  switch (t) {
    case 0: return {4, 1};      // f32
    case 1: return {2, 1};      // f16
    case 2: return {18, 32};    // q4_0
    case 3: return {20, 32};    // q4_1
    case 6: return {22, 32};    // q5_0
    case 7: return {24, 32};    // q5_1
    case 8: return {34, 32};    // q8_0
    case 9: return {36, 32};    // q8_1
    case 10: return {84, 256};  // q2_K
    case 11: return {110, 256}; // q3_K
    case 12: return {144, 256}; // q4_K
    case 13: return {176, 256}; // q5_K
    case 14: return {210, 256}; // q6_K
    case 15: return {292, 256}; // q8_K
    case 16: return {66, 256};  // iq2_xxs
    case 17: return {74, 256};  // iq2_xs
    case 18: return {98, 256};  // iq3_xxs
    case 19: return {50, 256};  // iq1_s
    case 20: return {18, 32};   // iq4_nl
    case 21: return {110, 256}; // iq3_s
    case 22: return {82, 256};  // iq2_s
    case 23: return {136, 256}; // iq4_xs
    case 24: return {1, 1};     // i8
    case 25: return {2, 1};     // i16
    case 26: return {4, 1};     // i32
    case 27: return {8, 1};     // i64
    case 28: return {8, 1};     // f64
    case 29: return {56, 256};  // iq1_m
    case 30: return {2, 1};     // bf16
    case 34: return {54, 256};  // tq1_0
    case 35: return {66, 256};  // tq2_0
    case 39: return {17, 32};   // mxfp4
    case 40: return {36, 64};   // nvfp4
    case 41: return {18, 128};  // q1_0
    case 42: return {18, 64};   // q2_0
    default: return {0, 1};
  }
}

const char* ggml_type_name(uint32_t t) {
  static const char* const kNames[] = {
      "f32", "f16", "q4_0", "q4_1", nullptr, nullptr, "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K", "q4_K",
      "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8",
      "i16", "i32", "i64", "f64", "iq1_m", "bf16", nullptr, nullptr, nullptr, "tq1_0", "tq2_0", nullptr, nullptr,
      nullptr, "mxfp4", "nvfp4", "q1_0", "q2_0"};
  if (t < sizeof kNames / sizeof kNames[0] && kNames[t]) return kNames[t];
  return "unknown";
}

uint64_t TensorInfo::elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

uint64_t TensorInfo::bytes() const {
  TypeSize ts = ggml_type_size(type);
  if (ts.block_bytes == 0) throw GgufError("gguf: tensor '" + name + "' has unknown type " + std::to_string(type));
  if (dims.empty() || dims[0] % ts.block_elems != 0) {
    throw GgufError("gguf: tensor '" + name + "' does not hold whole " + ggml_type_name(type) + " blocks");
  }
  uint64_t blocks = elements() / ts.block_elems;
  if (blocks != 0 && ts.block_bytes > std::numeric_limits<uint64_t>::max() / blocks) {
    throw GgufError("gguf: tensor '" + name + "' is too large");
  }
  return blocks * ts.block_bytes;
}

const Value* File::find(std::string_view key) const {
  for (const auto& [k, v] : kv) {
    if (k == key) return &v;
  }
  return nullptr;
}

const Value& File::at(std::string_view key) const {
  const Value* v = find(key);
  if (!v) throw GgufError("gguf: the metadata key '" + std::string(key) + "' is missing");
  return *v;
}

void File::set(std::string key, Value v) {
  for (auto& [k, old] : kv) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  kv.emplace_back(std::move(key), std::move(v));
}

void File::erase(std::string_view key) {
  kv.erase(std::remove_if(kv.begin(), kv.end(), [&](const auto& p) { return p.first == key; }), kv.end());
}

uint64_t File::parameter_count() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.elements();
  return n;
}

File read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw GgufError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw GgufError(path + ": not a regular file");
  }
  try {
    Reader r(path, fd, static_cast<uint64_t>(st.st_size));
    File f = parse_from(r);
    ::close(fd);
    return f;
  } catch (const GgufError& e) {
    ::close(fd);
    std::string msg = e.what();
    if (msg.rfind(path, 0) != 0) msg = path + ": " + msg;
    throw GgufError(msg);
  }
}

File parse(std::string_view bytes, const std::string& name) {
  Reader r(name, bytes);
  try {
    return parse_from(r);
  } catch (const GgufError& e) {
    std::string msg = e.what();
    if (msg.rfind(name, 0) != 0) msg = name + ": " + msg;
    throw GgufError(msg);
  }
}

Writer::Writer(File meta) : meta_(std::move(meta)) {
  meta_.tensors.clear();
  meta_.alignment = 32;
  if (const Value* a = meta_.find("general.alignment")) {
    if (a->type != Type::U32 || a->u == 0 || (a->u & (a->u - 1)) != 0) {
      throw std::invalid_argument("gguf: general.alignment must be a u32 power of two");
    }
    meta_.alignment = a->u;
  }
}

void Writer::add_tensor(std::string name, std::vector<uint64_t> dims, uint32_t type, std::string data) {
  TensorInfo t;
  t.name = std::move(name);
  t.dims = std::move(dims);
  t.type = type;
  if (t.name.empty() || t.name.size() > 64) throw std::invalid_argument("gguf: bad tensor name '" + t.name + "'");
  if (t.dims.empty() || t.dims.size() > kMaxDims) throw std::invalid_argument("gguf: tensor '" + t.name + "' dims");
  for (const auto& other : meta_.tensors) {
    if (other.name == t.name) throw std::invalid_argument("gguf: tensor '" + t.name + "' added twice");
  }
  uint64_t expected = 0;
  try {
    expected = t.bytes();
  } catch (const GgufError& e) {
    throw std::invalid_argument(e.what());
  }
  if (data.size() != expected) {
    throw std::invalid_argument("gguf: tensor '" + t.name + "' has " + std::to_string(data.size()) +
                                " bytes of data, its shape needs " + std::to_string(expected));
  }
  uint64_t offset = 0;
  if (!meta_.tensors.empty()) {
    const auto& last = meta_.tensors.back();
    offset = pad_to(last.offset + last.bytes(), meta_.alignment);
  }
  t.offset = offset;
  meta_.tensors.push_back(std::move(t));
  data_.push_back(std::move(data));
}

std::string Writer::header() const {
  std::string out;
  out += "GGUF";
  put<uint32_t>(out, 3);
  put<uint64_t>(out, meta_.tensors.size());
  put<uint64_t>(out, meta_.kv.size());
  for (const auto& [k, v] : meta_.kv) {
    put_string(out, k);
    put<uint32_t>(out, static_cast<uint32_t>(v.type));
    put_value(out, v);
  }
  for (const auto& t : meta_.tensors) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out, d);
    put<uint32_t>(out, t.type);
    put<uint64_t>(out, t.offset);
  }
  if (!meta_.tensors.empty()) out.resize(pad_to(out.size(), meta_.alignment), '\0');
  return out;
}

std::string Writer::bytes() const {
  std::string out = header();
  uint64_t data_start = out.size();
  for (size_t k = 0; k < data_.size(); ++k) {
    out.resize(data_start + meta_.tensors[k].offset, '\0');
    out += data_[k];
  }
  return out;
}

void Writer::write(const std::string& path) const {
  std::string tmp = path + ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) throw std::runtime_error(tmp + ": cannot create: " + std::strerror(errno));
  bool ok = true;
  auto emit = [&](const char* p, size_t n) { ok = ok && std::fwrite(p, 1, n, out) == n; };
  std::string head = header();
  emit(head.data(), head.size());
  uint64_t at = 0;  // bytes of the data section written so far
  static const char kZeros[64] = {};
  for (size_t k = 0; k < data_.size(); ++k) {
    for (uint64_t gap = meta_.tensors[k].offset - at; gap > 0;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(gap, sizeof kZeros));
      emit(kZeros, n);
      gap -= n;
    }
    emit(data_[k].data(), data_[k].size());
    at = meta_.tensors[k].offset + data_[k].size();
  }
  ok = (std::fflush(out) == 0) && ok;
  int err = errno;
  ok = (std::fclose(out) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error(tmp + ": write failed: " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename into place: " + std::strerror(err));
  }
}

}  // namespace aicloud::gguf

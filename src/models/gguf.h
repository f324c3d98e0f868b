// GGUF: the file format of llama.cpp's models (version 3). A small reader and writer of our own,
// enough to inspect a model (architecture, context length, parameter count, tokenizer) and to
// write new ones (create-tiny); tensor data is never loaded by the reader, only located.
//
// Layout (little-endian):
//   "GGUF" | u32 version | u64 tensor count | u64 KV count
//   KV pairs:     string key | u32 value type | value (an array: u32 element type | u64 n | n values)
//   tensor infos: string name | u32 n_dims | n_dims x u64 (ne[0] first: the fastest dimension)
//                 | u32 ggml type | u64 offset (relative to the data section, aligned)
//   padding to `general.alignment` (u32, default 32) | the data section
// A string is a u64 byte length and the bytes, with no terminator.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace aicloud::gguf {

// A file that is not a GGUF we can read: truncated, corrupt, or of another version. The message
// names the file, the byte offset and what was being read.
struct GgufError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Type : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* type_name(Type t);

// One metadata value. Scalars keep their declared type so that a file read and written again is
// byte-identical; arrays hold elements of one type (nested arrays are allowed by the format).
struct Value {
  Type type = Type::U32;
  uint64_t u = 0;        // U8, U16, U32, U64, BOOL (0/1)
  int64_t i = 0;         // I8, I16, I32, I64
  double f = 0;          // F32, F64
  std::string s;         // STRING
  Type elem = Type::U8;  // ARRAY: the element type
  std::vector<Value> items;

  static Value u32(uint32_t v) { Value x; x.type = Type::U32; x.u = v; return x; }
  static Value u64(uint64_t v) { Value x; x.type = Type::U64; x.u = v; return x; }
  static Value i32(int32_t v) { Value x; x.type = Type::I32; x.i = v; return x; }
  static Value f32(float v) { Value x; x.type = Type::F32; x.f = v; return x; }
  static Value boolean(bool v) { Value x; x.type = Type::BOOL; x.u = v ? 1 : 0; return x; }
  static Value str(std::string v) { Value x; x.type = Type::STRING; x.s = std::move(v); return x; }
  static Value array(Type elem, std::vector<Value> items) {
    Value x; x.type = Type::ARRAY; x.elem = elem; x.items = std::move(items); return x;
  }

  // Typed reads that throw GgufError when the value is of another kind (or out of range).
  uint64_t as_uint() const;  // any integer type, if non-negative
  int64_t as_int() const;    // any integer type, if it fits
  double as_float() const;   // F32, F64 or any integer type
  const std::string& as_string() const;
};

// ggml's tensor element types, as far as sizes go: the bytes of one block and its elements.
struct TypeSize {
  uint32_t block_bytes = 0;   // 0: a type this reader does not know
  uint32_t block_elems = 1;
};
TypeSize ggml_type_size(uint32_t ggml_type);
const char* ggml_type_name(uint32_t ggml_type);  // "f32", "q4_K", ..., "unknown"
inline constexpr uint32_t kGgmlF32 = 0;
inline constexpr uint32_t kGgmlF16 = 1;

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ne[0] first
  uint32_t type = kGgmlF32;
  uint64_t offset = 0;  // from the start of the data section

  uint64_t elements() const;
  uint64_t bytes() const;  // throws GgufError for an unknown type or a row not a whole block
};

// What a GGUF says about itself: the metadata in file order and where each tensor lies.
struct File {
  uint32_t version = 3;
  std::vector<std::pair<std::string, Value>> kv;
  std::vector<TensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute offset of the data section (filled in by read)
  uint64_t file_size = 0;    // (filled in by read)

  const Value* find(std::string_view key) const;  // nullptr if absent
  // Throws GgufError naming the key when absent.
  const Value& at(std::string_view key) const;
  void set(std::string key, Value v);  // replaces a key in place, or appends it
  void erase(std::string_view key);
  uint64_t parameter_count() const;  // the elements of every tensor
};

// Reads and checks the header, the metadata and the tensor infos of the file at path: every
// length against the file's size, the tensors' offsets (aligned, inside the file, not
// overlapping), the element types and counts. Throws GgufError with a clear message.
File read(const std::string& path);
// The same, from bytes in memory (name is used in error messages).
File parse(std::string_view bytes, const std::string& name = "<memory>");

// Writes a GGUF: the metadata of `meta` (its tensors are ignored) and the tensors given, each a
// name, dims and type with its bytes. Offsets and padding are computed here; `general.alignment`
// in meta, if any, sets the alignment. The file is written to path + ".tmp" and renamed into place.
class Writer {
 public:
  explicit Writer(File meta);
  // data.size() must equal the size the type and dims imply; throws std::invalid_argument.
  void add_tensor(std::string name, std::vector<uint64_t> dims, uint32_t type, std::string data);
  void write(const std::string& path) const;
  std::string bytes() const;  // the whole file in memory (tests)

 private:
  std::string header() const;  // everything before the data section, padded

  File meta_;
  std::vector<std::string> data_;
};

}  // namespace aicloud::gguf

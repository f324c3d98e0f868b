// The GGUF reader and writer (src/models/gguf.h) and the tiny model's file (src/models/tiny.h),
// without the engine: a write -> read round trip, and every truncated or corrupt file refused with
// a clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "models/gguf.h"
#include "models/tiny.h"
#include "support/server_process.h"

namespace aicloud {
namespace {
using gguf::File;
using gguf::GgufError;
using gguf::Type;
using gguf::Value;

// A file with every value type, nested arrays, and tensors of three element types.
File sample_meta() {
  File f;
  f.set("general.architecture", Value::str("llama"));
  f.set("general.name", Value::str("sample \xc3\xa9"));
  Value v;
  v.type = Type::U8; v.u = 200; f.set("t.u8", v);
  v = {}; v.type = Type::I8; v.i = -5; f.set("t.i8", v);
  v = {}; v.type = Type::U16; v.u = 65535; f.set("t.u16", v);
  v = {}; v.type = Type::I16; v.i = -300; f.set("t.i16", v);
  f.set("t.u32", Value::u32(4000000000u));
  f.set("t.i32", Value::i32(-7));
  f.set("t.u64", Value::u64(1ull << 40));
  v = {}; v.type = Type::I64; v.i = -(1ll << 40); f.set("t.i64", v);
  f.set("t.f32", Value::f32(0.5f));
  v = {}; v.type = Type::F64; v.f = 3.25; f.set("t.f64", v);
  f.set("t.bool", Value::boolean(true));
  f.set("t.empty", Value::str(""));
  f.set("t.strings", Value::array(Type::STRING, {Value::str("<s>"), Value::str(""), Value::str("hello")}));
  f.set("t.ints", Value::array(Type::I32, {Value::i32(1), Value::i32(-2), Value::i32(3)}));
  f.set("t.nested", Value::array(Type::ARRAY, {Value::array(Type::F32, {Value::f32(1.5f)}),
                                              Value::array(Type::F32, {})}));
  return f;
}

std::string bytes_of(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t k = 0; k < n; ++k) s[k] = static_cast<char>(seed + k * 7);
  return s;
}

std::string sample_bytes() {
  gguf::Writer w(sample_meta());
  w.add_tensor("a.weight", {8, 3}, gguf::kGgmlF32, bytes_of(8 * 3 * 4, 1));
  w.add_tensor("b.weight", {5}, gguf::kGgmlF16, bytes_of(10, 2));  // 10 bytes: the next needs padding
  w.add_tensor("c.weight", {64, 2}, 8 /* q8_0: 34 bytes per 32 */, bytes_of(2 * 2 * 34, 3));
  return w.bytes();
}

void expect_same(const Value& a, const Value& b) {
  ASSERT_EQ(a.type, b.type);
  EXPECT_EQ(a.u, b.u);
  EXPECT_EQ(a.i, b.i);
  EXPECT_EQ(a.f, b.f);
  EXPECT_EQ(a.s, b.s);
  if (a.type == Type::ARRAY) {
    EXPECT_EQ(a.elem, b.elem);
    ASSERT_EQ(a.items.size(), b.items.size());
    for (size_t k = 0; k < a.items.size(); ++k) expect_same(a.items[k], b.items[k]);
  }
}

// The message of the GgufError that parsing bytes throws ("" if none is thrown).
std::string parse_error(const std::string& bytes) {
  try {
    gguf::parse(bytes, "f.gguf");
  } catch (const GgufError& e) {
    return e.what();
  }
  return "";
}

TEST(Gguf, RoundTripInMemory) {
  std::string bytes = sample_bytes();
  File back = gguf::parse(bytes);
  File want = sample_meta();
  EXPECT_EQ(back.version, 3u);
  ASSERT_EQ(back.kv.size(), want.kv.size());
  for (size_t k = 0; k < want.kv.size(); ++k) {
    EXPECT_EQ(back.kv[k].first, want.kv[k].first);  // in file order
    expect_same(back.kv[k].second, want.kv[k].second);
  }
  EXPECT_EQ(back.at("t.u32").as_uint(), 4000000000u);
  EXPECT_EQ(back.at("t.i8").as_int(), -5);
  EXPECT_EQ(back.at("t.f64").as_float(), 3.25);
  EXPECT_EQ(back.at("general.name").as_string(), "sample \xc3\xa9");
  EXPECT_THROW(back.at("general.name").as_uint(), GgufError);
  EXPECT_THROW(back.at("t.i8").as_uint(), GgufError);
  EXPECT_THROW(back.at("no.such.key"), GgufError);
  EXPECT_EQ(back.find("no.such.key"), nullptr);

  ASSERT_EQ(back.tensors.size(), 3u);
  EXPECT_EQ(back.tensors[0].name, "a.weight");
  EXPECT_EQ(back.tensors[0].dims, (std::vector<uint64_t>{8, 3}));
  EXPECT_EQ(back.tensors[1].type, gguf::kGgmlF16);
  EXPECT_EQ(back.tensors[2].bytes(), 2u * 2 * 34);
  EXPECT_EQ(back.parameter_count(), 24u + 5 + 128);
  EXPECT_EQ(back.alignment, 32u);
  EXPECT_EQ(back.data_offset % 32, 0u);
  const std::string expected[] = {bytes_of(96, 1), bytes_of(10, 2), bytes_of(136, 3)};
  for (size_t k = 0; k < 3; ++k) {
    const auto& t = back.tensors[k];
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ(bytes.substr(back.data_offset + t.offset, t.bytes()), expected[k]) << t.name;
  }
  // Read and written again: the same bytes.
  gguf::Writer again(back);
  for (size_t k = 0; k < 3; ++k) {
    const auto& t = back.tensors[k];
    again.add_tensor(t.name, t.dims, t.type, expected[k]);
  }
  EXPECT_EQ(again.bytes(), bytes);
}

TEST(Gguf, RoundTripThroughAFileWithCustomAlignment) {
  test::TempDir dir;
  File meta;
  meta.set("general.alignment", Value::u32(64));
  meta.set("k", Value::str("v"));
  gguf::Writer w(meta);
  w.add_tensor("x", {3}, gguf::kGgmlF32, bytes_of(12, 9));
  w.add_tensor("y", {2, 2}, gguf::kGgmlF32, bytes_of(16, 4));
  std::string path = dir.path() + "/m.gguf";
  w.write(path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  File back = gguf::read(path);
  EXPECT_EQ(back.alignment, 64u);
  EXPECT_EQ(back.data_offset % 64, 0u);
  EXPECT_EQ(back.tensors[1].offset, 64u);
  EXPECT_EQ(back.file_size, std::filesystem::file_size(path));
  EXPECT_EQ(back.at("k").as_string(), "v");
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(all, w.bytes());
}

TEST(Gguf, MetadataOnlyFile) {
  gguf::Writer w(sample_meta());
  std::string bytes = w.bytes();
  File back = gguf::parse(bytes);
  EXPECT_TRUE(back.tensors.empty());
  EXPECT_EQ(back.data_offset, bytes.size());  // no padding without tensors
}

TEST(Gguf, EveryTruncationIsRefusedClearly) {
  std::string bytes = sample_bytes();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string msg = parse_error(bytes.substr(0, n));
    ASSERT_FALSE(msg.empty()) << "a file cut to " << n << " of " << bytes.size() << " bytes was accepted";
    EXPECT_NE(msg.find("f.gguf"), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << "cut to " << n << ": " << msg;
  }
  EXPECT_EQ(parse_error(bytes), "");
}

TEST(Gguf, TruncatedFileOnDisk) {
  test::TempDir dir;
  std::string bytes = sample_bytes();
  std::string path = dir.path() + "/cut.gguf";
  std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  try {
    gguf::read(path);
    FAIL() << "accepted";
  } catch (const GgufError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated GGUF file: tensor 'c.weight'"), std::string::npos) << msg;
  }
  EXPECT_THROW(gguf::read(dir.path() + "/missing.gguf"), GgufError);
  EXPECT_THROW(gguf::read(dir.path()), GgufError);  // a directory
}

// Corruptions at known places, each refused with a message that says what is wrong.
TEST(Gguf, CorruptFilesAreRefused) {
  auto patch32 = [](std::string b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); return b; };
  auto patch64 = [](std::string b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); return b; };
  auto header = [](uint64_t n_tensors, uint64_t n_kv) {
    std::string b = "GGUF";
    uint32_t version = 3;
    b.append(reinterpret_cast<const char*>(&version), 4);
    b.append(reinterpret_cast<const char*>(&n_tensors), 8);
    b.append(reinterpret_cast<const char*>(&n_kv), 8);
    return b;
  };
  auto str = [](const std::string& s) {
    uint64_t n = s.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + s;
  };
  auto u32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [](uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); };

  std::string good = sample_bytes();
  EXPECT_NE(parse_error("GGML" + good.substr(4)).find("not a GGUF file"), std::string::npos);
  EXPECT_NE(parse_error(patch32(good, 4, 1)).find("version 1"), std::string::npos);
  EXPECT_NE(parse_error(patch32(good, 4, 0x03000000)).find("big-endian"), std::string::npos);
  EXPECT_NE(parse_error(patch64(good, 16, 1ull << 60)).find("cannot fit"), std::string::npos);  // KV count
  EXPECT_NE(parse_error(patch64(good, 8, 1ull << 60)).find("cannot fit"), std::string::npos);   // tensor count

  // One KV pair at a time.
  std::string kv_head = header(0, 1) + str("k");
  EXPECT_NE(parse_error(kv_head + u32(99)).find("unknown value type 99"), std::string::npos);
  EXPECT_NE(parse_error(kv_head + u32(7) + std::string(1, '\x05')).find("bool value of 5"), std::string::npos);
  EXPECT_NE(parse_error(kv_head + u32(9) + u32(4) + u64(1ull << 61)).find("cannot fit"), std::string::npos);
  EXPECT_NE(parse_error(kv_head + u32(8) + u64(1ull << 40)).find("truncated"), std::string::npos);
  EXPECT_NE(parse_error(header(0, 1) + str("") + u32(4) + u32(1)).find("key of 0 bytes"), std::string::npos);
  std::string twice = header(0, 2) + str("k") + u32(4) + u32(1) + str("k") + u32(4) + u32(2);
  EXPECT_NE(parse_error(twice).find("'k' appears twice"), std::string::npos);
  std::string align = header(0, 1) + str("general.alignment") + u32(4) + u32(48);
  EXPECT_NE(parse_error(align).find("power of two"), std::string::npos);

  // One tensor info at a time (and 32 bytes of data after the padding).
  auto tensor = [&](const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    std::string b = header(1, 0) + str(name) + u32(static_cast<uint32_t>(dims.size()));
    for (auto d : dims) b += u64(d);
    b += u32(type) + u64(offset);
    b.resize((b.size() + 31) / 32 * 32, '\0');
    return b + std::string(32, '\0');
  };
  EXPECT_EQ(parse_error(tensor("t", {8}, 0, 0)), "");
  EXPECT_NE(parse_error(tensor("t", {8}, 77, 0)).find("unknown type 77"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {8}, 0, 3)).find("not aligned"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {1, 1, 1, 1, 1}, 0, 0)).find("5 dimensions"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {16}, 8, 0)).find("not whole q8_0 blocks"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {1ull << 62, 1ull << 62}, 0, 0)).find("too many elements"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {9}, 0, 0)).find("ends past"), std::string::npos);
  EXPECT_NE(parse_error(tensor("t", {8}, 0, 1ull << 40)).find("ends past"), std::string::npos);
  std::string two = header(2, 0) + str("a") + u32(1) + u64(8) + u32(0) + u64(0) + str("b") + u32(1) + u64(8) +
                    u32(0) + u64(0);
  two.resize((two.size() + 31) / 32 * 32, '\0');
  EXPECT_NE(parse_error(two + std::string(64, '\0')).find("overlap"), std::string::npos);
}

TEST(Gguf, WriterRefusesBadTensors) {
  gguf::Writer w(File{});
  EXPECT_THROW(w.add_tensor("x", {4}, gguf::kGgmlF32, std::string(15, '\0')), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("x", {4}, 77, std::string(16, '\0')), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("x", {}, gguf::kGgmlF32, ""), std::invalid_argument);
  w.add_tensor("x", {4}, gguf::kGgmlF32, std::string(16, '\0'));
  EXPECT_THROW(w.add_tensor("x", {4}, gguf::kGgmlF32, std::string(16, '\0')), std::invalid_argument);
}

// create-tiny's file, with a made-up vocab: every tensor llama needs, in the right shapes, and the
// same bytes for the same seed.
TEST(TinyModel, HasEveryLlamaTensorAndIsDeterministic) {
  test::TempDir dir;
  File vocab;
  vocab.set("general.architecture", Value::str("llama"));
  std::vector<Value> toks;
  for (int k = 0; k < 100; ++k) toks.push_back(Value::str("tok" + std::to_string(k)));
  vocab.set("tokenizer.ggml.model", Value::str("llama"));
  vocab.set("tokenizer.ggml.tokens", Value::array(Type::STRING, toks));
  vocab.set("tokenizer.ggml.bos_token_id", Value::u32(1));
  std::string vocab_path = dir.path() + "/vocab.gguf";
  gguf::Writer(vocab).write(vocab_path);

  models::TinySpec spec;
  spec.name = "t1";
  auto a = models::write_tiny_model(spec, vocab_path, dir.path() + "/a.gguf");
  auto b = models::write_tiny_model(spec, vocab_path, dir.path() + "/b.gguf");
  EXPECT_EQ(a.sha256, b.sha256);
  EXPECT_EQ(a.sha256, models::sha256_file(dir.path() + "/a.gguf"));
  spec.seed = 43;
  auto c = models::write_tiny_model(spec, vocab_path, dir.path() + "/c.gguf");
  EXPECT_NE(a.sha256, c.sha256);

  File m = gguf::read(a.path);
  EXPECT_EQ(m.at("general.architecture").as_string(), "llama");
  EXPECT_EQ(m.at("general.name").as_string(), "t1");
  EXPECT_EQ(m.at("llama.context_length").as_uint(), 512u);
  EXPECT_EQ(m.at("llama.embedding_length").as_uint(), 64u);
  EXPECT_EQ(m.at("llama.block_count").as_uint(), 2u);
  EXPECT_EQ(m.at("llama.vocab_size").as_uint(), 100u);
  EXPECT_EQ(m.at("tokenizer.ggml.tokens").items.size(), 100u);
  EXPECT_EQ(m.at("tokenizer.ggml.bos_token_id").as_uint(), 1u);
  EXPECT_EQ(m.tensors.size(), 3u + 9 * 2);
  auto dims = [&](const std::string& name) {
    for (const auto& t : m.tensors) {
      if (t.name == name) return t.dims;
    }
    ADD_FAILURE() << "no tensor " << name;
    return std::vector<uint64_t>{};
  };
  EXPECT_EQ(dims("token_embd.weight"), (std::vector<uint64_t>{64, 100}));
  EXPECT_EQ(dims("output.weight"), (std::vector<uint64_t>{64, 100}));
  EXPECT_EQ(dims("output_norm.weight"), (std::vector<uint64_t>{64}));
  for (std::string l : {"blk.0.", "blk.1."}) {
    EXPECT_EQ(dims(l + "attn_norm.weight"), (std::vector<uint64_t>{64}));
    EXPECT_EQ(dims(l + "attn_q.weight"), (std::vector<uint64_t>{64, 64}));
    EXPECT_EQ(dims(l + "attn_k.weight"), (std::vector<uint64_t>{64, 64}));
    EXPECT_EQ(dims(l + "attn_v.weight"), (std::vector<uint64_t>{64, 64}));
    EXPECT_EQ(dims(l + "attn_output.weight"), (std::vector<uint64_t>{64, 64}));
    EXPECT_EQ(dims(l + "ffn_norm.weight"), (std::vector<uint64_t>{64}));
    EXPECT_EQ(dims(l + "ffn_gate.weight"), (std::vector<uint64_t>{64, 128}));
    EXPECT_EQ(dims(l + "ffn_up.weight"), (std::vector<uint64_t>{64, 128}));
    EXPECT_EQ(dims(l + "ffn_down.weight"), (std::vector<uint64_t>{128, 64}));
  }
  EXPECT_EQ(a.parameters, m.parameter_count());

  models::TinySpec bad;
  bad.n_head = 3;
  EXPECT_THROW(models::write_tiny_model(bad, vocab_path, dir.path() + "/x.gguf"), std::invalid_argument);
  bad = {};
  bad.name = "../x";
  EXPECT_THROW(models::write_tiny_model(bad, vocab_path, dir.path() + "/x.gguf"), std::invalid_argument);
  File plain;
  plain.set("general.architecture", Value::str("llama"));
  gguf::Writer(plain).write(dir.path() + "/plain.gguf");
  EXPECT_THROW(models::write_tiny_model({}, dir.path() + "/plain.gguf", dir.path() + "/x.gguf"), GgufError);
}

}  // namespace
}  // namespace aicloud

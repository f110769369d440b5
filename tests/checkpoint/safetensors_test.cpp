// Unit tests of the safetensors reader/writer: round trips of every dtype and shape kind,
// byte-exact output against hand-built bytes, interchange with an independent Python
// reader/writer (json + struct only), every header check with a corrupted file, slices, and
// atomic saves that leave nothing behind on failure.
#include "smp/checkpoint/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include <gtest/gtest.h>

#include "smp/core/error.h"
#include "testing/temp_dir.h"

namespace smp::checkpoint {
namespace {

using smp::testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out;
}

// A safetensors file from header text (padded to 8 with spaces) and the data buffer.
std::string make_file(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.scalar_type() == cb.scalar_type() && ca.sizes() == cb.sizes() &&
         (ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0);
}

// Runs `fn`, expecting smp::Error whose message names `path` and contains `what`.
void expect_error(const std::function<void()>& fn, const std::string& path,
                  const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << what;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected \"" << what << "\" in: " << msg;
  }
}

using Named = std::vector<std::pair<std::string, at::Tensor>>;

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir("smp_safetensors");
  const std::vector<std::pair<at::ScalarType, std::string>> dtypes = {
      {at::kDouble, "F64"},
      {at::kFloat, "F32"},
      {at::kHalf, "F16"},
      {at::kBFloat16, "BF16"},
      {at::kLong, "I64"},
      {at::kInt, "I32"},
      {at::kShort, "I16"},
      {at::kChar, "I8"},
      {at::kByte, "U8"},
      {at::kBool, "BOOL"},
      {at::ScalarType::UInt16, "U16"},
      {at::ScalarType::UInt32, "U32"},
      {at::ScalarType::UInt64, "U64"},
      {at::kFloat8_e4m3fn, "F8_E4M3"},
      {at::kFloat8_e5m2, "F8_E5M2"}};
  Named tensors;
  for (const auto& [dtype, name] : dtypes) {
    at::Tensor values = at::arange(-5, 7, at::kFloat).reshape({3, 4}).mul(0.75);
    if (!at::isSignedType(dtype) && !at::isFloatingType(dtype)) values = values.abs().round();
    tensors.emplace_back(name, dtype == at::kBool ? values.gt(0) : values.to(dtype));
    EXPECT_EQ(safetensors_dtype_name(dtype), name);
  }
  save_safetensors(dir.file("all.safetensors"), tensors);
  auto loaded = load_safetensors(dir.file("all.safetensors"));
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(loaded.at(name), t)) << name;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"});
}

TEST(Safetensors, RoundTripsScalarsEmptyAndNonContiguous) {
  TempDir dir("smp_safetensors");
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  Named tensors = {{"scalar", at::scalar_tensor(3.5, at::kDouble)},
                   {"empty", at::empty({0}, at::kFloat)},
                   {"empty_2d", at::empty({2, 0, 3}, at::kBFloat16)},
                   {"transposed", base.t()},
                   {"strided", base.slice(1, 0, 6, 2)},
                   {"offset", base.narrow(0, 1, 2)},
                   {"expanded", at::arange(3, at::kInt).unsqueeze(0).expand({4, 3})}};
  save_safetensors(dir.file("m.safetensors"), tensors);
  auto loaded = load_safetensors(dir.file("m.safetensors"));
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(same_bytes(loaded.at(name), t)) << name;
    EXPECT_TRUE(loaded.at(name).is_contiguous());
  }
  EXPECT_EQ(loaded.at("scalar").dim(), 0);

  save_safetensors(dir.file("none.safetensors"), {});  // no tensors at all: "{}" + padding
  EXPECT_TRUE(load_safetensors(dir.file("none.safetensors")).empty());
  EXPECT_EQ(read_bytes(dir.file("none.safetensors")), le64(8) + "{}      ");
}

TEST(Safetensors, HeaderListsTensorsInFileOrderWithMetadata) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("h.safetensors");
  save_safetensors(path, {{"z", at::ones({2, 3}, at::kHalf)}, {"a", at::ones({5}, at::kLong)}},
                   {{"format", "pt"}, {"note", "héllo \"quoted\""}});
  SafetensorsHeader h = read_safetensors_header(path);
  EXPECT_EQ(h.path, path);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "z");
  EXPECT_EQ(h.tensors[0].dtype, at::kHalf);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[0].begin, 0u);
  EXPECT_EQ(h.tensors[0].end, 12u);
  EXPECT_EQ(h.tensors[1].begin, 12u);
  EXPECT_EQ(h.tensors[1].end, 52u);
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(h.file_size, h.data_start + 52);
  EXPECT_EQ(h.metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "héllo \"quoted\""}}));
  EXPECT_TRUE(h.contains("a"));
  EXPECT_FALSE(h.contains("b"));
  expect_error([&] { h.at("b"); }, path, "no tensor named 'b'");
}

TEST(Safetensors, WritesExactlyTheSpecifiedBytes) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("exact.safetensors");
  save_safetensors(path, {{"a", at::tensor({1.0f, -2.0f})}, {"b", at::tensor({3.0f, 4.0f, 5.0f})}},
                   {{"format", "pt"}});
  // Built by hand: compact JSON, metadata first, tensors in the given order, spaces to a
  // multiple of 8. (These are also, byte for byte, what Python's safetensors 0.8.0
  // `save_file` writes for the same input; checked by hand, as that package is not a
  // dependency.)
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}})";
  ASSERT_EQ(header.size(), 139u);  // padded to 144 = 0x90
  const std::string data(
      "\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x40\x40\x00\x00\x80\x40\x00\x00\xa0\x40", 20);
  EXPECT_EQ(read_bytes(path), std::string("\x90\0\0\0\0\0\0\0", 8) + header + "     " + data);
}

#ifdef SMP_TEST_PYTHON
// An independent implementation in Python (json + struct only): it writes a file the way the
// reference `safetensors` library lays one out (data sorted by alignment then name, header keys
// in another order, {"format": "pt"}), and checks the file smp wrote.
const char* kPythonScript = R"PY(
import json, struct, sys
out, ours = sys.argv[1], sys.argv[2]
tensors = {
    "w": ("F32", [2, 2], struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)),
    "b16": ("BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x4040)),  # 1, -2, 3
    "ids": ("I64", [2], struct.pack("<2q", -1, 1 << 40)),
    "mask": ("BOOL", [3], bytes([1, 0, 1])),
    "h": ("F16", [1], struct.pack("<e", 0.5)),
    "none": ("F32", [0, 4], b""),
}
align = {"F64": 8, "I64": 8, "F32": 4, "F16": 2, "BF16": 2, "BOOL": 1}
order = sorted(tensors, key=lambda k: (-align[tensors[k][0]], k))
entries, data = {}, b""
for k in order:
    dtype, shape, raw = tensors[k]
    entries[k] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
header = {"__metadata__": {"format": "pt"}}
header.update({k: entries[k] for k in sorted(entries)})
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
open(out, "wb").write(struct.pack("<Q", len(text)) + text + data)

raw = open(ours, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
assert n % 8 == 0, n
hdr = json.loads(raw[8:8 + n].decode("utf-8"))
buf = raw[8 + n:]
assert hdr.pop("__metadata__") == {"format": "pt"}
assert sum(e["data_offsets"][1] - e["data_offsets"][0] for e in hdr.values()) == len(buf)
x = hdr["x"]; b, e = x["data_offsets"]
assert x["dtype"] == "F32" and x["shape"] == [2, 3], x
assert struct.unpack("<6f", buf[b:e]) == tuple(i * 0.5 for i in range(6))
y = hdr["y"]; b, e = y["data_offsets"]
assert y["dtype"] == "BF16" and y["shape"] == [2], y
assert struct.unpack("<2H", buf[b:e]) == (0x3F80, 0xC000)
z = hdr["z"]; b, e = z["data_offsets"]
assert z["dtype"] == "I32" and z["shape"] == [] and struct.unpack("<i", buf[b:e]) == (-7,)
print("python checks passed")
)PY";

TEST(Safetensors, InterchangesWithAnIndependentPythonImplementation) {
  TempDir dir("smp_safetensors");
  write_bytes(dir.file("check.py"), kPythonScript);
  save_safetensors(dir.file("ours.safetensors"),
                   {{"x", at::arange(6, at::kFloat).mul(0.5).reshape({2, 3})},
                    {"y", at::tensor({1.0f, -2.0f}).to(at::kBFloat16)},
                    {"z", at::scalar_tensor(-7, at::kInt)}},
                   {{"format", "pt"}});
  const std::string cmd = std::string(SMP_TEST_PYTHON) + " " + dir.file("check.py") + " " +
                          dir.file("theirs.safetensors") + " " + dir.file("ours.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  const std::string theirs = dir.file("theirs.safetensors");
  auto t = load_safetensors(theirs);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_TRUE(same_bytes(t.at("w"), at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2})));
  EXPECT_TRUE(same_bytes(t.at("b16"), at::tensor({1.0f, -2.0f, 3.0f}).to(at::kBFloat16)));
  EXPECT_TRUE(same_bytes(t.at("ids"), at::tensor({int64_t(-1), int64_t(1) << 40})));
  EXPECT_TRUE(same_bytes(t.at("mask"), at::tensor({1, 0, 1}, at::kByte).to(at::kBool)));
  EXPECT_TRUE(same_bytes(t.at("h"), at::tensor({0.5f}).to(at::kHalf)));
  EXPECT_EQ(t.at("none").sizes(), (at::IntArrayRef{0, 4}));
  EXPECT_EQ(read_safetensors_header(theirs).metadata.at("format"), "pt");
  EXPECT_TRUE(same_bytes(load_safetensors_slice(theirs, "w", 0, 1, 1),
                         at::tensor({3.0f, 4.0f}).reshape({1, 2})));
}
#endif

TEST(Safetensors, ReadsOneTensorOrASlice) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("s.safetensors");
  at::Tensor w = at::arange(60, at::kFloat).reshape({5, 4, 3});
  save_safetensors(path,
                   {{"pad", at::ones({3}, at::kByte)}, {"w", w}, {"s", at::scalar_tensor(1.0)}});
  EXPECT_TRUE(same_bytes(load_safetensors_tensor(path, "w"), w));
  EXPECT_TRUE(same_bytes(load_safetensors_slice(path, "w", 0, 1, 3), w.narrow(0, 1, 3)));
  EXPECT_TRUE(same_bytes(load_safetensors_slice(path, "w", 0, 5, 0), w.narrow(0, 5, 0)));
  EXPECT_TRUE(same_bytes(load_safetensors_slice(path, "w", 1, 2, 2), w.narrow(1, 2, 2)));
  EXPECT_TRUE(same_bytes(load_safetensors_slice(path, "w", 2, 0, 1), w.narrow(2, 0, 1)));
  expect_error([&] { load_safetensors_tensor(path, "missing"); }, path,
               "no tensor named 'missing'");
  expect_error([&] { load_safetensors_slice(path, "w", 3, 0, 1); }, path,
               "slice dim 3 is not in [0, 3)");
  expect_error([&] { load_safetensors_slice(path, "w", -1, 0, 1); }, path, "slice dim -1");
  expect_error([&] { load_safetensors_slice(path, "w", 0, 4, 2); }, path,
               "slice [4, 6) along dim 0 is not within [0, 5]");
  expect_error([&] { load_safetensors_slice(path, "w", 1, -1, 1); }, path, "slice [-1, 0)");
  expect_error([&] { load_safetensors_slice(path, "s", 0, 0, 1); }, path,
               "slice dim 0 is not in [0, 0)");
}

// ---- every header check, with a hand-built bad file ----

struct BadFile {
  const char* case_name;
  std::string bytes;
  const char* expected;
};

TEST(Safetensors, RejectsEveryMalformedFile) {
  const std::string f32x2 = R"("dtype":"F32","shape":[2],"data_offsets")";
  const std::string eight(8, '\0');
  const std::vector<BadFile> cases = {
      {"short", std::string("\x01\x02\x03\x04\x05", 5),
       "file is 5 bytes, shorter than the 8-byte header length"},
      {"header_past_end", le64(64) + "{}      ",
       "header length 64 exceeds the 8 bytes after the length field"},
      {"header_over_limit", le64(200'000'000) + "{}      ",
       "header length 200000000 exceeds the limit of 100000000 bytes"},
      {"bad_json", make_file(R"({"a":)", ""), "header is not valid UTF-8 JSON"},
      {"bad_utf8", make_file("{\"a\xff\":1}", ""), "header is not valid UTF-8 JSON"},
      {"not_object", make_file("[1,2]", ""), "header must be a JSON object, got array"},
      {"entry_not_object", make_file(R"({"a":3})", ""), "tensor 'a': entry must be an object"},
      {"unknown_dtype",
       make_file(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", eight),
       "tensor 'a': unknown dtype \"C64\" (allowed: F64, F32, F16, BF16"},
      {"dtype_not_string",
       make_file(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "1234"),
       "unknown dtype 4"},
      {"shape_negative",
       make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "tensor 'a': shape [-2]: each dim must be a non-negative integer, got -2"},
      {"shape_float",
       make_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight),
       "must be a non-negative integer, got 2.0"},
      {"shape_not_list",
       make_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight),
       "shape must be a list of non-negative integers, got 2"},
      {"shape_overflow",
       make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                 eight),
       "more bytes than fit in 64 bits"},
      {"offsets_one", make_file("{\"a\":{" + f32x2 + ":[8]}}", eight),
       "data_offsets must be [begin, end], got [8]"},
      {"offsets_negative", make_file("{\"a\":{" + f32x2 + ":[-8,0]}}", eight),
       "data_offsets begin must be a non-negative integer, got -8"},
      {"offsets_reversed", make_file("{\"a\":{" + f32x2 + ":[8,0]}}", eight),
       "data_offsets [8,0] has begin > end"},
      {"size_mismatch", make_file("{\"a\":{" + f32x2 + ":[0,12]}}", std::string(12, '\0')),
       "data_offsets [0,12] span 12 bytes but dtype F32 and shape [2] need 8"},
      {"overlap",
       make_file("{\"a\":{" + f32x2 + ":[0,8]},\"b\":{" + f32x2 + ":[4,12]}}",
                 std::string(12, '\0')),
       "tensor 'b' data_offsets [4, 12] overlap tensor 'a' (which ends at 8)"},
      {"hole",
       make_file("{\"a\":{" + f32x2 + ":[0,8]},\"b\":{" + f32x2 + ":[12,20]}}",
                 std::string(20, '\0')),
       "tensor 'b' data_offsets [12, 20] leave a hole after tensor 'a' (which ends at 8)"},
      {"hole_at_start", make_file("{\"a\":{" + f32x2 + ":[4,12]}}", std::string(12, '\0')),
       "leave a hole after the start of the data buffer"},
      {"buffer_longer", make_file("{\"a\":{" + f32x2 + ":[0,8]}}", std::string(9, '\0')),
       "tensors cover 8 bytes but the data buffer is 9 bytes (file size 73 - 8 - header length "
       "56): the file has 1 trailing bytes"},
      {"buffer_truncated", make_file("{\"a\":{" + f32x2 + ":[0,8]}}", std::string(5, '\0')),
       "tensors cover 8 bytes but the data buffer is 5 bytes (file size 69 - 8 - header length "
       "56): the file is truncated"},
      {"duplicate_name",
       make_file("{\"a\":{" + f32x2 + ":[0,8]},\"a\":{" + f32x2 + ":[0,8]}}", eight),
       "tensor name 'a' appears more than once in the header"},
      {"metadata_not_string", make_file(R"({"__metadata__":{"format":1}})", ""),
       "__metadata__ value for \"format\" must be a string, got 1"},
      {"metadata_not_object", make_file(R"({"__metadata__":[]})", ""),
       "__metadata__ must be an object of strings"},
      {"missing_key", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", eight),
       "tensor 'a': missing \"data_offsets\""},
      {"unexpected_key", make_file("{\"a\":{" + f32x2 + ":[0,8],\"x\":1}}", eight),
       "tensor 'a': unexpected key \"x\" (allowed: dtype, shape, data_offsets)"},
  };
  TempDir dir("smp_safetensors");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.case_name);
    const std::string path = dir.file(std::string(c.case_name) + ".safetensors");
    write_bytes(path, c.bytes);
    expect_error([&] { read_safetensors_header(path); }, path, c.expected);
    expect_error([&] { load_safetensors(path); }, path, c.expected);
  }
  expect_error([&] { load_safetensors(dir.file("absent.safetensors")); },
               dir.file("absent.safetensors"),
               "cannot open for reading: No such file or directory");
}

// ---- saving: bad input and atomicity ----

TEST(Safetensors, RejectsBadInputBeforeCreatingAnything) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("bad.safetensors");
  const at::Tensor ok = at::ones({2});
  expect_error(
      [&] {
        save_safetensors(path, {{"w", ok}, {"w", ok}});
      },
      path, "tensor 'w': the name appears more than once");
  expect_error(
      [&] {
        save_safetensors(path, {{"__metadata__", ok}});
      },
      path, "the name is reserved");
  expect_error(
      [&] {
        save_safetensors(path, {{"u", at::Tensor()}});
      },
      path, "tensor 'u': tensor is undefined");
  expect_error(
      [&] {
        save_safetensors(path, {{"m", at::empty({2}, at::device(at::kMeta))}});
      },
      path, "only dense tensors");
  expect_error(
      [&] {
        save_safetensors(path, {{"w", ok}, {"c", at::ones({2}, at::kComplexFloat)}});
      },
      path, "tensor 'c': dtype ComplexFloat has no safetensors name (allowed: F64");
  EXPECT_THROW(safetensors_dtype_name(at::kComplexHalf), Error);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Safetensors, FailedSaveLeavesThePreviousFileAndNoTemporary) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("w.safetensors");
  const at::Tensor old = at::arange(4, at::kFloat);
  save_safetensors(path, {{"w", old}});
  expect_error(
      [&] {
        save_safetensors(path, {{"w", at::ones({3}, at::kComplexDouble)}});
      },
      path, "ComplexDouble");
  EXPECT_TRUE(same_bytes(load_safetensors(path).at("w"), old));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"w.safetensors"});

  // The directory does not exist: the temporary file cannot be created.
  const std::string nowhere = dir.file("no_such_dir/w.safetensors");
  expect_error(
      [&] {
        save_safetensors(nowhere, {{"w", old}});
      },
      nowhere, "cannot create the temporary file");

  // `path` is a non-empty directory: everything is written, then the rename fails and the
  // temporary file must be removed.
  const std::string blocked = dir.file("blocked");
  ASSERT_EQ(::mkdir(blocked.c_str(), 0755), 0);
  write_bytes(blocked + "/keep", "x");
  expect_error(
      [&] {
        save_safetensors(blocked, {{"w", old}});
      },
      blocked, "cannot rename the temporary file");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"blocked", "w.safetensors"}));
}

TEST(Safetensors, OverwritesAtomicallyAndAcceptsARelativePath) {
  TempDir dir("smp_safetensors");
  const std::string path = dir.file("w.safetensors");
  save_safetensors(path, {{"w", at::zeros({2})}});
  save_safetensors(path, {{"v", at::ones({3}, at::kBFloat16)}});
  auto loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_TRUE(same_bytes(loaded.at("v"), at::ones({3}, at::kBFloat16)));

  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir.file("").c_str()), 0);
  save_safetensors("rel.safetensors", {{"w", at::ones({1})}});  // parent directory is "."
  EXPECT_EQ(load_safetensors("rel.safetensors").size(), 1u);
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"rel.safetensors", "w.safetensors"}));
}

}  // namespace
}  // namespace smp::checkpoint

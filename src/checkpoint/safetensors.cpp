// Safetensors reader and writer (see include/smp/checkpoint/safetensors.h and
// docs/checkpoint_format.md).
//
// Writing: validate every name and dtype first (so a bad input creates no file), build the
// header, then stream each tensor (copied to CPU contiguous one at a time) into a temporary
// file that is fsynced and renamed into place. Reading: fstat, read and validate the header
// completely (types, sizes, offsets covering the buffer exactly, file size), then pread each
// tensor's bytes straight into a fresh CPU tensor. POSIX only (no std::filesystem: libtorch
// exports its own copies of those symbols).
#include "smp/checkpoint/safetensors.h"

#include <fcntl.h>
#include <zlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/core/files.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; smp writes host memory as is");

namespace smp::checkpoint {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the limit the reference reader enforces

const std::vector<std::pair<std::string, at::ScalarType>>& dtype_table() {
  static const std::vector<std::pair<std::string, at::ScalarType>> table = {
      {"F64", at::kDouble},
      {"F32", at::kFloat},
      {"F16", at::kHalf},
      {"BF16", at::kBFloat16},
      {"I64", at::kLong},
      {"I32", at::kInt},
      {"I16", at::kShort},
      {"I8", at::kChar},
      {"U8", at::kByte},
      {"BOOL", at::kBool},
      {"U16", at::ScalarType::UInt16},
      {"U32", at::ScalarType::UInt32},
      {"U64", at::ScalarType::UInt64},
      {"F8_E4M3", at::kFloat8_e4m3fn},
      {"F8_E5M2", at::kFloat8_e5m2}};
  return table;
}

std::string allowed_dtypes() {
  std::string out;
  for (const auto& [name, type] : dtype_table()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

const std::string* find_dtype_name(at::ScalarType dtype) {
  for (const auto& row : dtype_table())
    if (row.second == dtype) return &row.first;
  return nullptr;
}

std::string no_dtype_name_message(at::ScalarType dtype) {
  return std::string("dtype ") + c10::toString(dtype) +
         " has no safetensors name (allowed: " + allowed_dtypes() + ")";
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw CheckpointError("safetensors file '" + path + "': " + what);
}

[[noreturn]] void fail_errno(const std::string& path, const std::string& what) {
  fail(path, what + ": " + std::strerror(errno));
}

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports close's error (a write error may surface only here).
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// The temporary file a save writes; unlinked on scope exit unless committed by rename.
struct TempFile {
  std::string path;
  Fd fd;
  bool committed = false;
  explicit TempFile(std::string p)
      : path(std::move(p)),
        fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) {}
  ~TempFile() {
    if (!committed) ::unlink(path.c_str());
  }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail_errno(path, "write failed");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void pread_all(int fd, void* data, uint64_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail_errno(path, "read at byte " + std::to_string(offset) + " failed");
    if (r == 0) fail(path, "file ended at byte " + std::to_string(offset) + " while reading");
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

Fd open_for_reading(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail_errno(path, "cannot open for reading");
  return fd;
}

// A JSON value that is a non-negative integer fitting int64, else fail with `what`.
uint64_t as_index(const json& v, const std::string& path, const std::string& what) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(path, what + " must be a non-negative integer, got " + v.dump());
  return v.get<uint64_t>();
}

SafetensorsTensorInfo parse_entry(const std::string& name, const json& entry,
                                  const std::string& path) {
  const std::string where = "tensor '" + name + "': ";
  if (!entry.is_object()) fail(path, where + "entry must be an object, got " + entry.dump());
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(path, where + "unexpected key \"" + key + "\" (allowed: dtype, shape, data_offsets)");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail(path, where + "missing \"" + key + "\"");

  SafetensorsTensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  auto it = std::find_if(dtype_table().begin(), dtype_table().end(),
                         [&](const auto& row) { return dtype.is_string() && row.first == dtype; });
  if (it == dtype_table().end())
    fail(path, where + "unknown dtype " + dtype.dump() + " (allowed: " + allowed_dtypes() + ")");
  info.dtype = it->second;

  const json& shape = entry["shape"];
  if (!shape.is_array())
    fail(path, where + "shape must be a list of non-negative integers, got " + shape.dump());
  uint64_t nbytes = at::elementSize(info.dtype);
  for (const json& d : shape) {
    uint64_t size = as_index(d, path, where + "shape " + shape.dump() + ": each dim");
    info.shape.push_back(static_cast<int64_t>(size));
    if (__builtin_mul_overflow(nbytes, size, &nbytes))
      fail(path, where + "shape " + shape.dump() + " has more bytes than fit in 64 bits");
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail(path, where + "data_offsets must be [begin, end], got " + offsets.dump());
  info.begin = as_index(offsets[0], path, where + "data_offsets begin");
  info.end = as_index(offsets[1], path, where + "data_offsets end");
  if (info.begin > info.end)
    fail(path, where + "data_offsets " + offsets.dump() + " has begin > end");
  if (info.end - info.begin != nbytes)
    fail(path, where + "data_offsets " + offsets.dump() + " span " +
                   std::to_string(info.end - info.begin) + " bytes but dtype " +
                   dtype.get<std::string>() + " and shape " + shape.dump() + " need " +
                   std::to_string(nbytes));
  return info;
}

// The header's JSON text: the 8-byte little-endian length, checked against the limit and the
// file, then the text. Sets header.file_size and header.data_start.
std::string read_header_text(int fd, const std::string& path, SafetensorsHeader& header) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_errno(path, "cannot stat");
  header.file_size = static_cast<uint64_t>(st.st_size);
  if (header.file_size < 8)
    fail(path, "file is " + std::to_string(header.file_size) +
                   " bytes, shorter than the 8-byte header length");
  unsigned char len_bytes[8];
  pread_all(fd, len_bytes, 8, 0, path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(n) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  if (n > header.file_size - 8)
    fail(path, "header length " + std::to_string(n) + " exceeds the " +
                   std::to_string(header.file_size - 8) + " bytes after the length field");
  std::string text(n, '\0');
  pread_all(fd, text.data(), n, 8, path);
  header.data_start = 8 + n;
  return text;
}

// Parses the header's JSON into header.tensors and header.metadata, refusing a repeated
// top-level key (nlohmann would keep the last silently).
void parse_header(const std::string& text, const std::string& path, SafetensorsHeader& header) {
  std::set<std::string> seen;
  json root;
  try {
    root = json::parse(text, [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key &&
          !seen.insert(parsed.get<std::string>()).second)
        fail(path, "tensor name '" + parsed.get<std::string>() +
                       "' appears more than once in the header");
      return true;
    });
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid UTF-8 JSON: ") + e.what());
  }
  if (!root.is_object())
    fail(path, std::string("header must be a JSON object, got ") + root.type_name());

  for (const auto& [key, value] : root.items()) {
    if (key != "__metadata__") {
      header.tensors.push_back(parse_entry(key, value, path));
      continue;
    }
    if (!value.is_object())
      fail(path, "__metadata__ must be an object of strings, got " + value.dump());
    for (const auto& [mkey, mvalue] : value.items()) {
      if (!mvalue.is_string())
        fail(path,
             "__metadata__ value for \"" + mkey + "\" must be a string, got " + mvalue.dump());
      header.metadata[mkey] = mvalue.get<std::string>();
    }
  }
}

// The tensors must tile the data buffer exactly: sorted by offset, each begins where the
// previous ended, and the last ends at the file's end. Sorts header.tensors by offset.
void check_tiling(SafetensorsHeader& header, const std::string& path) {
  auto& ts = header.tensors;
  std::sort(ts.begin(), ts.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t covered = 0;
  std::string previous = "the start of the data buffer";
  for (const auto& t : ts) {
    const std::string span = "tensor '" + t.name + "' data_offsets [" + std::to_string(t.begin) +
                             ", " + std::to_string(t.end) + "]";
    if (t.begin < covered)
      fail(path,
           span + " overlap " + previous + " (which ends at " + std::to_string(covered) + ")");
    if (t.begin > covered)
      fail(path, span + " leave a hole after " + previous + " (which ends at " +
                     std::to_string(covered) + ")");
    covered = t.end;
    previous = "tensor '" + t.name + "'";
  }
  const uint64_t buffer = header.file_size - header.data_start;
  if (covered != buffer)
    fail(path,
         "tensors cover " + std::to_string(covered) + " bytes but the data buffer is " +
             std::to_string(buffer) + " bytes (file size " + std::to_string(header.file_size) +
             " - 8 - header length " + std::to_string(header.data_start - 8) + "): the file " +
             (covered > buffer ? "is truncated"
                               : "has " + std::to_string(buffer - covered) + " trailing bytes"));
}

SafetensorsHeader read_header(int fd, const std::string& path) {
  SafetensorsHeader header;
  header.path = path;
  parse_header(read_header_text(fd, path, header), path, header);
  check_tiling(header, path);
  return header;
}

// Reads `nbytes` at buffer offset `begin` into a fresh CPU tensor of `shape`.
at::Tensor read_tensor(int fd, const SafetensorsHeader& header, at::ScalarType dtype,
                       at::IntArrayRef shape, uint64_t begin, uint64_t nbytes) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype).device(at::kCPU));
  SMP_CHECK_EQ(static_cast<uint64_t>(t.nbytes()), nbytes);
  pread_all(fd, t.data_ptr(), nbytes, header.data_start + begin, header.path);
  return t;
}


}  // namespace

const SafetensorsTensorInfo& SafetensorsHeader::at(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t;
  fail(path, "no tensor named '" + name + "' (the file has " + std::to_string(tensors.size()) +
                 " tensors)");
}

bool SafetensorsHeader::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& t) { return t.name == name; });
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  const std::string* name = find_dtype_name(dtype);
  if (name == nullptr)
    throw CheckpointError("safetensors: " + no_dtype_name_message(dtype));
  return *name;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata,
                      std::vector<uint32_t>* crc32s) {
  for (const auto& [name, t] : tensors) {
    if (t.defined() && (t.layout() != at::kStrided || t.is_meta()))
      fail(path, "tensor '" + name + "': only dense tensors with data can be saved (layout/device: " +
                     c10::str(t.layout()) + "/" + t.device().str() + ")");
  }
  save_safetensors_streamed(path, tensors, [&tensors](size_t i) { return tensors[i].second; },
                            metadata, crc32s);
}

void save_safetensors_streamed(const std::string& path,
                               const std::vector<std::pair<std::string, at::Tensor>>& specs,
                               const std::function<at::Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata,
                               std::vector<uint32_t>* crc32s) {
  // 1. Validate everything and build the header before creating any file.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : specs) {
    const std::string where = "tensor '" + name + "': ";
    if (name == "__metadata__") fail(path, where + "the name is reserved for the metadata");
    if (!names.insert(name).second) fail(path, where + "the name appears more than once");
    if (!t.defined()) fail(path, where + "tensor is undefined");
    const std::string* dtype = find_dtype_name(t.scalar_type());
    if (dtype == nullptr) fail(path, where + no_dtype_name_message(t.scalar_type()));
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {
        {"dtype", *dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    fail(path, std::string("a tensor name or metadata string is not valid UTF-8: ") + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  // 2. Write the temporary file: length, header, each tensor's bytes.
  TempFile tmp(path + ".tmp." + std::to_string(::getpid()));
  if (tmp.fd.get() < 0) {
    tmp.committed = true;  // nothing was created
    fail_errno(tmp.path, "cannot create the temporary file for '" + path + "'");
  }
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i)
    len_bytes[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));
  write_all(tmp.fd.get(), len_bytes, 8, tmp.path);
  write_all(tmp.fd.get(), text.data(), text.size(), tmp.path);
  if (crc32s != nullptr) crc32s->clear();
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor t = produce(i);
    if (!t.defined() || t.scalar_type() != specs[i].second.scalar_type() ||
        t.sizes() != specs[i].second.sizes() || t.layout() != at::kStrided || t.is_meta()) {
      fail(tmp.path, "tensor '" + specs[i].first + "': produced " +
                         (t.defined() ? c10::str(t.scalar_type(), " ", t.sizes(), " on ", t.device())
                                      : std::string("nothing")) +
                         "; its header entry says " +
                         c10::str(specs[i].second.scalar_type(), " ", specs[i].second.sizes()));
    }
    at::Tensor host = t.detach().to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    // In chunks, each checksummed just before it is written, while it is still in cache.
    constexpr size_t kChunk = 4 << 20;
    const auto* data = static_cast<const unsigned char*>(host.data_ptr());
    uLong crc = ::crc32_z(0, nullptr, 0);
    for (size_t done = 0, n = host.nbytes(); done < n; done += kChunk) {
      const size_t len = std::min(kChunk, n - done);
      if (crc32s != nullptr) crc = ::crc32_z(crc, data + done, len);
      write_all(tmp.fd.get(), data + done, len, tmp.path);
    }
    if (crc32s != nullptr) crc32s->push_back(static_cast<uint32_t>(crc));
  }

  // 3. Commit: fsync, close, rename, fsync the directory so the rename itself is durable.
  if (::fsync(tmp.fd.get()) != 0) fail_errno(tmp.path, "fsync failed");
  if (tmp.fd.close() != 0) fail_errno(tmp.path, "close failed");
  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    fail_errno(path, "cannot rename the temporary file '" + tmp.path + "' onto it");
  tmp.committed = true;
  Fd dir(::open(files::parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0 || ::fsync(dir.get()) != 0) fail_errno(path, "cannot fsync its directory");
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  Fd fd = open_for_reading(path);
  return read_header(fd.get(), path);
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  Fd fd = open_for_reading(path);
  const SafetensorsHeader header = read_header(fd.get(), path);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : header.tensors)
    out[t.name] = read_tensor(fd.get(), header, t.dtype, t.shape, t.begin, t.end - t.begin);
  return out;
}

at::Tensor load_safetensors_tensor(const std::string& path, const std::string& name) {
  Fd fd = open_for_reading(path);
  const SafetensorsHeader header = read_header(fd.get(), path);
  const auto& t = header.at(name);
  return read_tensor(fd.get(), header, t.dtype, t.shape, t.begin, t.end - t.begin);
}

at::Tensor load_safetensors_slice(const std::string& path, const std::string& name, int64_t dim,
                                  int64_t start, int64_t length) {
  Fd fd = open_for_reading(path);
  const SafetensorsHeader header = read_header(fd.get(), path);
  const auto& t = header.at(name);
  const int64_t ndim = static_cast<int64_t>(t.shape.size());
  const std::string where =
      "tensor '" + name + "' of shape " + c10::str(at::IntArrayRef(t.shape)) + ": ";
  if (dim < 0 || dim >= ndim)
    fail(path, where + "slice dim " + std::to_string(dim) + " is not in [0, " +
                   std::to_string(ndim) + ")");
  if (start < 0 || length < 0 || start > t.shape[dim] || length > t.shape[dim] - start)
    fail(path, where + "slice [" + std::to_string(start) + ", " + std::to_string(start + length) +
                   ") along dim " + std::to_string(dim) + " is not within [0, " +
                   std::to_string(t.shape[dim]) + "]");
  if (dim != 0) {
    at::Tensor whole = read_tensor(fd.get(), header, t.dtype, t.shape, t.begin, t.end - t.begin);
    return whole.narrow(dim, start, length).contiguous();
  }
  // Rows along dim 0 are contiguous: read only [start, start + length) rows.
  const uint64_t row_bytes =
      t.shape[0] == 0 ? 0 : (t.end - t.begin) / static_cast<uint64_t>(t.shape[0]);
  std::vector<int64_t> shape = t.shape;
  shape[0] = length;
  return read_tensor(fd.get(), header, t.dtype, shape, t.begin + start * row_bytes,
                     length * row_bytes);
}

SafetensorsReader::SafetensorsReader(const std::string& path) {
  Fd fd = open_for_reading(path);
  header_ = read_header(fd.get(), path);
  fd_ = ::dup(fd.get());
  if (fd_ < 0) fail_errno(path, "cannot duplicate its descriptor");
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

at::Tensor SafetensorsReader::read(const std::string& name) const {
  const auto& t = header_.at(name);
  return read_tensor(fd_, header_, t.dtype, t.shape, t.begin, t.end - t.begin);
}

void SafetensorsReader::read_into(const std::string& name, const at::Tensor& out) const {
  const auto& t = header_.at(name);
  if (!out.is_contiguous() || !out.device().is_cpu() || out.scalar_type() != t.dtype ||
      static_cast<uint64_t>(out.nbytes()) != t.end - t.begin) {
    fail(header_.path, "tensor '" + name + "' (" + safetensors_dtype_name(t.dtype) + ", " +
                           std::to_string(t.end - t.begin) + " bytes) cannot be read into a " +
                           c10::toString(out.scalar_type()) + " tensor of " +
                           std::to_string(out.nbytes()) + " bytes");
  }
  pread_all(fd_, out.data_ptr(), out.nbytes(), header_.data_start + t.begin, header_.path);
}

}  // namespace smp::checkpoint

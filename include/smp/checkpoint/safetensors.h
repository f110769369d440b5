// Safetensors: reading and writing the Hugging Face weight format, strictly.
//
// The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length
// N, then N bytes of UTF-8 JSON, padded with spaces to a multiple of 8,
//   {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}}
// then the data buffer: every tensor's bytes, contiguous and little-endian, with offsets
// relative to the buffer's start; the tensors cover the buffer exactly (no holes, no overlap).
// docs/checkpoint_format.md describes the checks and the conventions below.
//
// All calls block, touch only the local file system and are called by whichever rank wants the
// file; none needs other ranks. Every problem throws smp::Error naming the file and what is
// wrong (the field, the value, what is allowed).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace smp::checkpoint {

// One tensor's entry in the header. begin/end are byte offsets relative to the data buffer,
// which starts at SafetensorsHeader::data_start in the file.
struct SafetensorsTensorInfo {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A validated header: tensors in file order (by offset), the free-form metadata and the
// file's layout.
struct SafetensorsHeader {
  std::string path;  // the file this header was read from (named in messages)
  std::vector<SafetensorsTensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + N: where the data buffer begins in the file
  uint64_t file_size = 0;

  // The entry named `name`; throws smp::Error naming the file and the name when absent.
  const SafetensorsTensorInfo& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// Writes `tensors` to `path`, in the given order, with `metadata` under "__metadata__" (omitted
// when empty; Hugging Face transformers expects {"format": "pt"}). Each tensor is copied to CPU
// and made contiguous one at a time (a device model needs no second full copy in host memory).
// Atomic: writes `path.tmp.<pid>`, fsyncs, renames onto `path`, fsyncs the directory; on any
// failure neither `path` (if it did not exist) nor the temporary file is left behind.
// Throws smp::Error for a duplicate or reserved name, an undefined/sparse/meta tensor, a dtype
// safetensors cannot represent (e.g. complex), or an I/O failure.
// `crc32s`, when given, receives each tensor's CRC-32 (zlib's), computed as it is written.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      std::vector<uint32_t>* crc32s = nullptr);

// The same, one tensor at a time, so that only one is in memory: `specs` gives each tensor's
// name, dtype and shape in file order (their data is not read: meta tensors do), and
// produce(i) returns tensor i when its bytes are written (it must match specs[i]).
void save_safetensors_streamed(const std::string& path,
                               const std::vector<std::pair<std::string, at::Tensor>>& specs,
                               const std::function<at::Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata = {},
                               std::vector<uint32_t>* crc32s = nullptr);

// Reads and validates only the header (and the file's size); no tensor data is read.
SafetensorsHeader read_safetensors_header(const std::string& path);

// Reads every tensor. The returned CPU tensors own their memory (each is read with pread into
// a fresh allocation; nothing refers to the file afterwards). Metadata: read_safetensors_header.
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);

// Reads one tensor, and only its bytes.
at::Tensor load_safetensors_tensor(const std::string& path, const std::string& name);

// Reads tensor `name` narrowed to [start, start + length) along `dim` (tensor-parallel
// resharding). dim 0 reads only the needed rows' bytes (they are contiguous); any other dim
// reads the whole tensor, then copies out the slice. Returns a contiguous CPU tensor.
at::Tensor load_safetensors_slice(const std::string& path, const std::string& name, int64_t dim,
                                  int64_t start, int64_t length);

// An open file for many reads: the header is read and validated once.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;
  const SafetensorsHeader& header() const { return header_; }
  at::Tensor read(const std::string& name) const;
  // Reads tensor `name`'s bytes straight into `out`, a contiguous CPU tensor of the same dtype
  // and element count (any shape); throws naming the file and both when they differ.
  void read_into(const std::string& name, const at::Tensor& out) const;

 private:
  int fd_ = -1;
  SafetensorsHeader header_;
};

// The safetensors dtype name of a torch dtype ("F32", "BF16", ...); throws smp::Error listing
// the allowed dtypes when safetensors has none.
std::string safetensors_dtype_name(at::ScalarType dtype);

}  // namespace smp::checkpoint

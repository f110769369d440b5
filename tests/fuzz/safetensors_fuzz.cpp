// Fuzz target: the safetensors reader (src/checkpoint/safetensors.cpp) and smp::load, which
// reads SMP's JSON back from the metadata (src/checkpoint/save_load.cpp).
//
// The readers take a path, so each input is written to one file of the process's own (in
// memory, /dev/shm) and read from there. Entry points: read_safetensors_header (the header:
// length, JSON, entries, tiling), then on the same file load_safetensors (every tensor),
// load_safetensors_slice (along dim 0 and the last dim of the first tensor that has dims), and
// smp::load(path, /*partial=*/false, &extra). A header that parses must describe the file
// exactly: tensors in file order tiling the data buffer, each one's bytes = numel x element
// size, and load_safetensors must then give those tensors.
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "fuzz_common.h"
#include "smp/checkpoint/checkpoint.h"
#include "smp/checkpoint/safetensors.h"

namespace {

using smp::checkpoint::SafetensorsHeader;
using smp::fuzz::expect_smp_errors;

const std::string& input_path() {
  static const std::string path = smp::fuzz::temp_dir() + "/input.safetensors";
  return path;
}

void check_header(const SafetensorsHeader& header, size_t size) {
  SMP_FUZZ_CHECK(header.file_size == size, "SafetensorsHeader", "file_size differs from the file");
  SMP_FUZZ_CHECK(header.data_start >= 8 && header.data_start <= size, "SafetensorsHeader", "data_start out of the file");
  uint64_t covered = 0;
  for (const auto& t : header.tensors) {
    SMP_FUZZ_CHECK(t.begin == covered && t.end >= t.begin, "SafetensorsHeader",
          "tensor '" + t.name + "' does not start where the previous one ended");
    uint64_t bytes = at::elementSize(t.dtype);
    for (const int64_t d : t.shape) {
      SMP_FUZZ_CHECK(d >= 0, "SafetensorsHeader", "negative dim in '" + t.name + "'");
      bytes *= static_cast<uint64_t>(d);
    }
    SMP_FUZZ_CHECK(bytes == t.end - t.begin, "SafetensorsHeader", "'" + t.name + "' bytes differ from its shape");
    covered = t.end;
  }
  SMP_FUZZ_CHECK(header.data_start + covered == header.file_size, "SafetensorsHeader", "tensors do not tile the buffer");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = input_path();
  smp::fuzz::write_bytes(path, data, size);

  std::optional<SafetensorsHeader> header;
  if (!expect_smp_errors("read_safetensors_header", [&] { header = smp::checkpoint::read_safetensors_header(path); })) {
    return 0;
  }
  check_header(*header, size);

  expect_smp_errors("load_safetensors", [&] {
    const std::map<std::string, at::Tensor> tensors = smp::checkpoint::load_safetensors(path);
    SMP_FUZZ_CHECK(tensors.size() == header->tensors.size(), "load_safetensors", "tensor count differs from the header");
    for (const auto& info : header->tensors) {
      const auto it = tensors.find(info.name);
      SMP_FUZZ_CHECK(it != tensors.end(), "load_safetensors", "no tensor '" + info.name + "'");
      SMP_FUZZ_CHECK(it->second.scalar_type() == info.dtype && it->second.sizes().vec() == info.shape &&
                static_cast<uint64_t>(it->second.nbytes()) == info.end - info.begin,
            "load_safetensors", "tensor '" + info.name + "' differs from its header entry");
    }
  });
  for (const auto& info : header->tensors) {
    if (info.shape.empty()) continue;
    const int64_t last = static_cast<int64_t>(info.shape.size()) - 1;
    for (const int64_t dim : {int64_t{0}, last}) {
      const int64_t length = info.shape[dim] > 0 ? 1 : 0;
      expect_smp_errors("load_safetensors_slice", [&] {
        const at::Tensor slice = smp::checkpoint::load_safetensors_slice(path, info.name, dim, 0, length);
        SMP_FUZZ_CHECK(slice.size(dim) == length, "load_safetensors_slice", "wrong length along the slice dim");
      });
    }
    break;
  }
  expect_smp_errors("smp::load", [&] {
    nlohmann::json extra;
    smp::load(path, /*partial=*/false, &extra);
  });
  return 0;
}

// Fuzz target: the checkpoint manifest reader (src/checkpoint/checkpoint.cpp, read_manifest_at
// behind smp::read_checkpoint_manifest) and the part of resume that interprets the manifest's
// "tensors" (src/checkpoint/shard_index.cpp: ShardIndex, piece_from_json, read_region,
// read_flat: which pieces of which files make up each tensor, the resharding geometry).
//
// The reader takes a folder, so each input is written as <tmp>/ckpt/t/manifest.json (one folder
// of the process's own, in memory under /dev/shm); the same folder holds the safetensors files
// of a real 2-rank checkpoint (tests/fuzz/fixtures/manifest/, made by make_seeds.cpp with the
// same save_checkpoint that made the seeds), so pieces that name them reach the reads.
// Entry points: smp::read_checkpoint_manifest(root, "t", /*partial=*/false), then
// checkpoint::ShardIndex(dir, manifest["tensors"]) as resume_from_checkpoint builds it, then,
// as load_parameters and load_optimizer_state do for a model whose tensor has the stored shape,
// read_region and read_flat of every tensor of at most 64 Ki elements.
#include <dirent.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "fuzz_common.h"
#include "shard_index.h"
#include "smp/checkpoint/checkpoint.h"

#ifndef SMP_FUZZ_FIXTURES
#error "SMP_FUZZ_FIXTURES (tests/fuzz/fixtures) must be defined by the build"
#endif

namespace {

using nlohmann::json;
using smp::fuzz::expect_smp_errors;

// <tmp>/ckpt, whose checkpoint "t" holds the fixture files; made once.
const std::string& root() {
  static const std::string path = [] {
    const std::string r = smp::fuzz::temp_dir() + "/ckpt";
    const std::string dir = r + "/t";
    smp::files::make_dirs(dir);
    const std::string fixtures = std::string(SMP_FUZZ_FIXTURES) + "/manifest";
    DIR* d = ::opendir(fixtures.c_str());
    if (d == nullptr) smp::fuzz::finding("manifest fixtures", "cannot open " + fixtures);
    int copied = 0;
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      smp::files::write_file_atomic(dir + "/" + name, smp::files::read_file(fixtures + "/" + name));
      ++copied;
    }
    ::closedir(d);
    if (copied == 0) smp::fuzz::finding("manifest fixtures", "no files in " + fixtures);
    return r;
  }();
  return path;
}

// The tensor a model of the stored shape would hand in, or nothing when that shape could not
// be a parameter's (negative dims) or is too large for a fuzz input to be worth reading.
std::optional<std::vector<int64_t>> readable_shape(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (const int64_t d : shape) {
    if (d < 0 || d > (int64_t{1} << 16)) return std::nullopt;
    numel *= d;
    if (numel > (int64_t{1} << 16)) return std::nullopt;
  }
  return shape;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  root();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = root() + "/t";
  smp::fuzz::write_bytes(dir + "/manifest.json", data, size);

  json manifest;
  if (!expect_smp_errors("read_checkpoint_manifest",
                         [&] { manifest = smp::read_checkpoint_manifest(root(), "t", /*partial=*/false); })) {
    return 0;
  }
  SMP_FUZZ_CHECK(manifest.is_object(), "read_checkpoint_manifest", "returned " + manifest.dump());

  std::optional<smp::checkpoint::ShardIndex> index;
  if (!expect_smp_errors("ShardIndex", [&] { index.emplace(dir, manifest["tensors"]); })) return 0;
  for (const std::string& key : index->keys()) {
    const auto shape = readable_shape(index->entry(key).shape);
    if (!shape) continue;
    expect_smp_errors("ShardIndex::read_region", [&] {
      at::Tensor out = at::zeros(*shape, at::kFloat);
      index->read_region(key, std::vector<int64_t>(shape->size(), 0), out);
    });
    expect_smp_errors("ShardIndex::read_flat", [&] {
      at::Tensor out = at::zeros(*shape, at::kFloat).view(-1);
      index->read_flat(key, std::vector<int64_t>(shape->size(), 0), *shape, 0, out);
    });
  }
  return 0;
}

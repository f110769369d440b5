// Fuzz target: the token-shard reader (src/train/token_shards.cpp) and the data loader over it
// (src/train/data_loader.cpp).
//
// The reader maps a path, so each input is written to one file of the process's own (in memory,
// /dev/shm). Entry points: smp::train::TokenShard(path) (header: magic, version, token count
// against the file's size), then unigram_entropy over its tokens and a DataLoader over the one
// shard (seq_len 8, batch 1), two batches. A shard that opens must hold exactly the tokens its
// header counts, and each batch must be (1, 8) tokens of the shard.
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "fuzz_common.h"
#include "smp/train/data_loader.h"
#include "smp/train/token_shards.h"

namespace {

using smp::fuzz::expect_smp_errors;

const std::string& input_path() {
  static const std::string path = smp::fuzz::temp_dir() + "/train_000.bin";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = input_path();
  smp::fuzz::write_bytes(path, data, size);

  std::unique_ptr<smp::train::TokenShard> shard;
  if (!expect_smp_errors("TokenShard", [&] { shard = std::make_unique<smp::train::TokenShard>(path); })) {
    return 0;
  }
  SMP_FUZZ_CHECK(shard->size() >= 0 &&
            static_cast<uint64_t>(shard->size()) * 2 + 4 * smp::train::kShardHeaderInts == size,
        "TokenShard", "size() " + std::to_string(shard->size()) + " does not match a file of " +
                          std::to_string(size) + " bytes");
  uint64_t sum = 0;
  for (int64_t i = 0; i < shard->size(); ++i) sum += shard->tokens()[i];
  (void)sum;
  const double entropy = smp::train::unigram_entropy({shard.get()}, 50257);
  SMP_FUZZ_CHECK(std::isfinite(entropy) && entropy >= 0, "unigram_entropy", std::to_string(entropy));

  expect_smp_errors("DataLoader", [&] {
    smp::train::DataLoader loader({path}, /*seq_len=*/8, /*batch_size=*/1, /*seed=*/1, /*replica=*/0,
                                  /*num_replicas=*/1);
    for (int i = 0; i < 2; ++i) {
      const auto [inputs, targets] = loader.next();
      SMP_FUZZ_CHECK(inputs.sizes() == at::IntArrayRef({1, 8}) && targets.sizes() == at::IntArrayRef({1, 8}),
            "DataLoader::next", "batch of the wrong shape");
      SMP_FUZZ_CHECK(inputs.min().item<int64_t>() >= 0 && inputs.max().item<int64_t>() <= 65535,
            "DataLoader::next", "a token outside uint16");
    }
  });
  return 0;
}

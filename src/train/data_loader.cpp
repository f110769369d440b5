// The DP-aware, seed-deterministic data loader (see data_loader.h).
#include "smp/train/data_loader.h"

#include <algorithm>
#include <random>

#include <ATen/ATen.h>

#include "smp/core/error.h"

namespace smp::train {

DataLoader::DataLoader(std::vector<std::string> shard_paths, int64_t seq_len, int64_t batch_size,
                       uint64_t seed, int replica, int num_replicas)
    : seq_len_(seq_len), batch_size_(batch_size), seed_(seed), replica_(replica),
      num_replicas_(num_replicas) {
  if (seq_len < 1 || batch_size < 1) {
    throw ConfigError("data loader: seq_len (" + std::to_string(seq_len) + ") and batch size (" +
                      std::to_string(batch_size) + ") must be >= 1");
  }
  if (num_replicas < 1 || replica < 0 || replica >= num_replicas) {
    throw ConfigError("data loader: replica " + std::to_string(replica) + " of " +
                      std::to_string(num_replicas) + " is out of range");
  }
  if (shard_paths.empty()) throw ConfigError("data loader: no token shards given");
  for (const std::string& path : shard_paths) {
    shards_.push_back(std::make_unique<TokenShard>(path));
    shard_starts_.push_back(total_tokens_);
    total_tokens_ += shards_.back()->size();
  }
  num_samples_ = total_tokens_ > seq_len ? (total_tokens_ - 1) / seq_len : 0;
  if (num_samples_ < batch_size * num_replicas) {
    throw ConfigError("data loader: " + std::to_string(total_tokens_) + " tokens make " +
                      std::to_string(num_samples_) + " samples of seq_len " +
                      std::to_string(seq_len) + "; one global batch needs " +
                      std::to_string(batch_size * num_replicas) + " (batch " +
                      std::to_string(batch_size) + " x " + std::to_string(num_replicas) +
                      " replicas)");
  }
  shuffle();
}

void DataLoader::shuffle() {
  order_.resize(num_samples_);
  for (int64_t i = 0; i < num_samples_; ++i) order_[i] = i;
  std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<uint64_t>(position_.epoch));
  // Fisher-Yates with our own index draw: std::shuffle's use of the engine is unspecified, and
  // the order must be the same whatever the standard library.
  for (int64_t i = num_samples_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order_[i], order_[j]);
  }
}

void DataLoader::set_position(const LoaderPosition& position) {
  position_ = position;
  shuffle();
}

void DataLoader::copy_window(int64_t sample, int64_t* out) const {
  // Tokens [sample * seq_len, sample * seq_len + seq_len + 1) of the concatenated shards.
  int64_t token = sample * seq_len_;
  auto shard = std::upper_bound(shard_starts_.begin(), shard_starts_.end(), token) - 1;
  for (int64_t k = 0; k <= seq_len_; ++k, ++token) {
    while (token - *shard >= shards_[shard - shard_starts_.begin()]->size()) ++shard;
    out[k] = shards_[shard - shard_starts_.begin()]->tokens()[token - *shard];
  }
}

std::pair<at::Tensor, at::Tensor> DataLoader::next() {
  const int64_t global = batch_size_ * num_replicas_;
  if (position_.cursor + global > num_samples_) {  // not enough left: a new epoch
    position_.epoch += 1;
    position_.cursor = 0;
    shuffle();
  }
  at::Tensor windows = at::empty({batch_size_, seq_len_ + 1}, at::kLong);
  auto* data = windows.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t slot = position_.cursor + b * num_replicas_ + replica_;
    copy_window(order_[slot], data + b * (seq_len_ + 1));
  }
  position_.cursor += global;
  return {windows.narrow(1, 0, seq_len_).contiguous(), windows.narrow(1, 1, seq_len_).contiguous()};
}

}  // namespace smp::train

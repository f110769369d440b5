// The training data loader: fixed-length samples from token shards, in an order that depends
// only on the seed, split across data-parallel replicas.
//
// Sample i is the window of seq_len + 1 tokens starting at token i * seq_len of the
// concatenated shards (inputs are its first seq_len tokens, targets its last seq_len). Each
// epoch visits every sample once in a permutation drawn from (seed, epoch). Replica r of R
// takes the samples at positions r, r + R, r + 2R, ... of that order, so replicas never share a
// sample; every pipeline and tensor-parallel rank of one replica builds the same loader and
// sees the same batches. The position is two integers (epoch, cursor) that checkpoints save.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "smp/train/token_shards.h"

namespace smp::train {

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t cursor = 0;  // samples of this epoch already handed out, across all replicas
};

class DataLoader {
 public:
  // Throws smp::ConfigError naming the values when the shards hold fewer than
  // batch_size * num_replicas samples, or seq_len, batch_size or the replica numbers are bad.
  DataLoader(std::vector<std::string> shard_paths, int64_t seq_len, int64_t batch_size,
             uint64_t seed, int replica, int num_replicas);

  // (inputs, targets), each (batch_size, seq_len) int64: this replica's next batch.
  std::pair<at::Tensor, at::Tensor> next();

  int64_t num_samples() const { return num_samples_; }
  const std::vector<std::unique_ptr<TokenShard>>& shards() const { return shards_; }
  LoaderPosition position() const { return position_; }
  void set_position(const LoaderPosition& position);

 private:
  void shuffle();
  void copy_window(int64_t sample, int64_t* out) const;

  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> shard_starts_;  // first global token index of each shard
  int64_t total_tokens_ = 0;
  int64_t seq_len_;
  int64_t batch_size_;
  uint64_t seed_;
  int replica_;
  int num_replicas_;
  int64_t num_samples_ = 0;
  std::vector<int64_t> order_;  // this epoch's permutation of sample indices
  LoaderPosition position_;
};

}  // namespace smp::train

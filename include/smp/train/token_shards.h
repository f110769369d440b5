// Token shards: the files training reads, in llm.c's format.
//
// A shard is a 256 x int32 header (magic 20240520, version 1, number of tokens, the rest 0)
// followed by the tokens as little-endian uint16. Shards are written atomically (temporary
// file, fsync, rename) and read through a read-only memory map whose header and size are
// checked before use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smp::train {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int kShardHeaderInts = 256;

// Throws smp::Error naming the path when a token does not fit uint16 or the file cannot be
// written; nothing is left at `path` then.
void write_token_shard(const std::string& path, const std::vector<int>& tokens);

// A shard mapped read-only. Throws smp::Error naming the file and what is wrong: missing,
// shorter than the header, wrong magic or version, a token count that disagrees with the size.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  TokenShard& operator=(TokenShard&&) = delete;

  int64_t size() const { return num_tokens_; }
  const uint16_t* tokens() const { return tokens_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t num_tokens_ = 0;
};

// Text file -> tokens -> train and validation shards in `out_dir` (train_000.bin, ...,
// val_000.bin): the last `val_fraction` of the tokens is the validation split. At most
// `shard_tokens` tokens per shard. Returns the shard paths. Throws smp::Error naming the text
// file when it cannot be read or is empty.
struct PreparedData {
  std::vector<std::string> train_shards;
  std::vector<std::string> val_shards;
  int64_t num_train_tokens = 0;
  int64_t num_val_tokens = 0;
};
class Tokenizer;
PreparedData prepare_text(const std::string& text_path, const std::string& out_dir,
                          const Tokenizer& tokenizer, double val_fraction = 0.05,
                          int64_t shard_tokens = 100'000'000);

// Entropy, in nats, of the unigram distribution of the tokens: the loss of a model that knows
// only token frequencies. A trained language model must end well below it.
double unigram_entropy(const std::vector<const TokenShard*>& shards, int vocab_size);

}  // namespace smp::train

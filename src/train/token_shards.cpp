// Token shards in llm.c's format: writing (atomic), mapping (validated), preparing a text.
#include "smp/train/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/train/tokenizer.h"

namespace smp::train {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error("token shard " + path + ": " + what);
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<int>& tokens) {
  std::vector<uint16_t> data(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > 65535) {
      fail(path, "token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                     " does not fit uint16 (0..65535)");
    }
    data[i] = static_cast<uint16_t>(tokens[i]);
  }
  int32_t header[kShardHeaderInts] = {kShardMagic, kShardVersion, static_cast<int32_t>(tokens.size())};
  std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
  bytes.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(uint16_t));
  files::write_file_atomic(path, bytes, /*durable=*/true);
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  const auto file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < sizeof(int32_t) * kShardHeaderInts) {
    ::close(fd);
    fail(path, "is " + std::to_string(file_bytes) + " bytes, shorter than the " +
                   std::to_string(sizeof(int32_t) * kShardHeaderInts) + "-byte header");
  }
  map_ = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(path, std::string("mmap failed: ") + std::strerror(errno));
  }
  map_bytes_ = file_bytes;
  const auto* header = static_cast<const int32_t*>(map_);
  std::string problem;
  if (header[0] != kShardMagic) {
    problem = "magic is " + std::to_string(header[0]) + ", expected " + std::to_string(kShardMagic);
  } else if (header[1] != kShardVersion) {
    problem = "version is " + std::to_string(header[1]) + ", expected " + std::to_string(kShardVersion);
  } else if (header[2] < 0 ||
             file_bytes != sizeof(int32_t) * kShardHeaderInts + 2 * static_cast<size_t>(header[2])) {
    problem = "header says " + std::to_string(header[2]) + " tokens but the file holds " +
              std::to_string(file_bytes) + " bytes (expected " +
              std::to_string(sizeof(int32_t) * kShardHeaderInts + 2 * static_cast<int64_t>(header[2])) + ")";
  }
  if (!problem.empty()) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    fail(path, problem);
  }
  num_tokens_ = header[2];
  tokens_ = reinterpret_cast<const uint16_t*>(header + kShardHeaderInts);
}

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)), map_(other.map_), map_bytes_(other.map_bytes_),
      tokens_(other.tokens_), num_tokens_(other.num_tokens_) {
  other.map_ = nullptr;
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

PreparedData prepare_text(const std::string& text_path, const std::string& out_dir,
                          const Tokenizer& tokenizer, double val_fraction, int64_t shard_tokens) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw Error("data: cannot read the text file " + text_path);
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<int> tokens = tokenizer.encode(text.str());
  if (tokens.empty()) throw Error("data: the text file " + text_path + " is empty");
  if (!(val_fraction >= 0 && val_fraction < 1)) {
    throw ConfigError("data: val_fraction is " + std::to_string(val_fraction) +
                      "; allowed: 0 <= val_fraction < 1");
  }
  files::make_dirs(out_dir);
  const auto num_val = static_cast<int64_t>(std::llround(tokens.size() * val_fraction));
  const auto num_train = static_cast<int64_t>(tokens.size()) - num_val;
  PreparedData out;
  auto write_split = [&](const std::string& name, int64_t begin, int64_t end,
                         std::vector<std::string>* paths) {
    for (int64_t start = begin, i = 0; start < end; start += shard_tokens, ++i) {
      char file[64];
      std::snprintf(file, sizeof(file), "/%s_%03lld.bin", name.c_str(), static_cast<long long>(i));
      const int64_t stop = std::min(end, start + shard_tokens);
      write_token_shard(out_dir + file, std::vector<int>(tokens.begin() + start, tokens.begin() + stop));
      paths->push_back(out_dir + file);
    }
  };
  write_split("train", 0, num_train, &out.train_shards);
  write_split("val", num_train, num_train + num_val, &out.val_shards);
  out.num_train_tokens = num_train;
  out.num_val_tokens = num_val;
  return out;
}

double unigram_entropy(const std::vector<const TokenShard*>& shards, int vocab_size) {
  std::vector<int64_t> counts(vocab_size, 0);
  int64_t total = 0;
  for (const TokenShard* shard : shards) {
    for (int64_t i = 0; i < shard->size(); ++i) {
      const int t = shard->tokens()[i];
      if (t < vocab_size) ++counts[t];
      ++total;
    }
  }
  double entropy = 0;
  for (int64_t c : counts) {
    if (c > 0) entropy -= static_cast<double>(c) / total * std::log(static_cast<double>(c) / total);
  }
  return entropy;
}

}  // namespace smp::train

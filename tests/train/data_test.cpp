// Tokenizers, token shards and the data loader (unit tests, no processes).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/train/data_loader.h"
#include "smp/train/tokenizer.h"
#include "testing/temp_dir.h"

namespace smp::train {
namespace {

using smp::testing::TempDir;

template <typename F>
void expect_error(F f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected smp::Error";
  } catch (const Error& e) {
    for (const auto& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "\"" << needle << "\" not in: " << e.what();
    }
  }
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  ByteTokenizer tok;
  std::string text;
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  const auto ids = tok.encode(text);
  ASSERT_EQ(ids.size(), 256u);
  EXPECT_EQ(ids[200], 200);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.vocab_size(), 257);
  EXPECT_EQ(tok.decode({tok.eot()}), "");
}

// A tiny GPT-2 style vocabulary: every byte symbol, "Ġ" is the space byte's symbol (U+0120).
void write_tiny_gpt2(const TempDir& dir) {
  nlohmann::json vocab;
  int next = 0;
  for (int b = 33; b <= 126; ++b) vocab[std::string(1, static_cast<char>(b))] = next++;
  vocab["\xC4\xA0"] = next++;  // space -> U+0120
  vocab["\xC4\x8A"] = next++;  // newline -> U+010A
  for (const char* merged : {"he", "hel", "hell", "hello", "\xC4\xA0w", "\xC4\xA0wo"}) {
    vocab[merged] = next++;
  }
  vocab["<|endoftext|>"] = next++;
  std::ofstream(dir.file("vocab.json")) << vocab.dump();
  std::ofstream(dir.file("merges.txt"))
      << "#version: 0.2\nh e\nhe l\nhel l\nhell o\n\xC4\xA0 w\n\xC4\xA0w o\n";
}

// What smp-train prints of a byte-level sample: valid text unchanged; a character cut by the
// sample's end, stray continuation bytes, overlong and surrogate encodings each become U+FFFD.
TEST(ValidUtf8, KeepsValidTextAndReplacesEachBadByte) {
  const std::string fffd = "\xEF\xBF\xBD";
  const std::string good = "In the beginning \xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80";
  EXPECT_EQ(train::valid_utf8(good), good);
  EXPECT_EQ(train::valid_utf8("ab\xE2\x82"), "ab" + fffd + fffd);                    // cut at the end
  EXPECT_EQ(train::valid_utf8("\x80x"), fffd + "x");                                   // stray continuation
  EXPECT_EQ(train::valid_utf8("\xC0\xAF"), fffd + fffd);                               // overlong '/'
  EXPECT_EQ(train::valid_utf8("\xED\xA0\x80"), fffd + fffd + fffd);                    // a surrogate
  EXPECT_EQ(train::valid_utf8("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);          // above U+10FFFF
  EXPECT_EQ(train::valid_utf8(""), "");
}

TEST(Gpt2Tokenizer, MergesByRankAndSplitsLikeGpt2) {
  TempDir dir("smp_data_test");
  write_tiny_gpt2(dir);
  Gpt2Tokenizer tok(dir.file("vocab.json"), dir.file("merges.txt"));
  nlohmann::json vocab = nlohmann::json::parse(std::ifstream(dir.file("vocab.json")));
  auto id = [&](const std::string& s) { return vocab.at(s).get<int>(); };
  // "hello world": "hello" merges fully; " world" is one pre-token starting with Ġ.
  EXPECT_EQ(tok.encode("hello world"), (std::vector<int>{id("hello"), id("\xC4\xA0wo"), id("r"),
                                                         id("l"), id("d")}));
  // Two spaces before a word: the first stands alone, the second leads the word.
  EXPECT_EQ(tok.encode("hi  wo"), (std::vector<int>{id("h"), id("i"), id("\xC4\xA0"),
                                                    id("\xC4\xA0wo")}));
  // Contractions split off; digits and punctuation form their own runs.
  EXPECT_EQ(tok.encode("he's 42!"), (std::vector<int>{id("he"), id("'"), id("s"), id("\xC4\xA0"),
                                                      id("4"), id("2"), id("!")}));
  for (const std::string text : {"hello world", "a\nb  c ", "he's 42!"}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
  EXPECT_EQ(tok.eot(), id("<|endoftext|>"));
}

TEST(Gpt2Tokenizer, MalformedFilesNameTheFileAndLine) {
  TempDir dir("smp_data_test");
  write_tiny_gpt2(dir);
  std::ofstream(dir.file("bad_merges.txt")) << "#version: 0.2\nh e\nnospace\n";
  expect_error([&] { Gpt2Tokenizer(dir.file("vocab.json"), dir.file("bad_merges.txt")); },
               {"bad_merges.txt", "line 3", "nospace"});
  std::ofstream(dir.file("bad_vocab.json")) << "{\"a\": 1,";
  expect_error([&] { Gpt2Tokenizer(dir.file("bad_vocab.json"), dir.file("merges.txt")); },
               {"bad_vocab.json", "not valid JSON"});
  expect_error([&] { make_tokenizer(dir.file("vocab.json"), ""); }, {"merges_txt"});
}

TEST(TokenShard, RoundTripAndStrictHeader) {
  TempDir dir("smp_data_test");
  std::vector<int> tokens = {0, 1, 65535, 300, 7};
  write_token_shard(dir.file("a.bin"), tokens);
  TokenShard shard(dir.file("a.bin"));
  ASSERT_EQ(shard.size(), 5);
  EXPECT_EQ(shard.tokens()[2], 65535);
  // The header is llm.c's.
  std::ifstream raw(dir.file("a.bin"), std::ios::binary);
  int32_t header[3];
  raw.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 5);

  expect_error([&] { write_token_shard(dir.file("b.bin"), {1, 70000}); }, {"b.bin", "70000"});
  EXPECT_NE(::access(dir.file("b.bin").c_str(), F_OK), 0) << "nothing half-written";
  expect_error([&] { TokenShard(dir.file("missing.bin")); }, {"missing.bin", "cannot open"});

  auto corrupt = [&](const std::string& name, int index, int32_t value, int64_t truncate_to) {
    std::ifstream in(dir.file("a.bin"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (index >= 0) std::memcpy(bytes.data() + 4 * index, &value, 4);
    if (truncate_to >= 0) bytes.resize(truncate_to);
    std::ofstream(dir.file(name), std::ios::binary) << bytes;
  };
  corrupt("magic.bin", 0, 12345, -1);
  expect_error([&] { TokenShard(dir.file("magic.bin")); }, {"magic.bin", "magic is 12345"});
  corrupt("version.bin", 1, 2, -1);
  expect_error([&] { TokenShard(dir.file("version.bin")); }, {"version.bin", "version is 2"});
  corrupt("short.bin", -1, 0, 1024 + 6);
  expect_error([&] { TokenShard(dir.file("short.bin")); }, {"short.bin", "header says 5 tokens"});
  corrupt("tiny.bin", -1, 0, 100);
  expect_error([&] { TokenShard(dir.file("tiny.bin")); }, {"tiny.bin", "shorter than"});
}

TEST(PrepareText, SplitsTrainAndValidationAndShards) {
  TempDir dir("smp_data_test");
  std::ofstream(dir.file("text.txt")) << std::string(1000, 'a');
  ByteTokenizer tok;
  const PreparedData data = prepare_text(dir.file("text.txt"), dir.file("out"), tok, 0.1, 400);
  EXPECT_EQ(data.num_train_tokens, 900);
  EXPECT_EQ(data.num_val_tokens, 100);
  EXPECT_EQ(data.train_shards.size(), 3u);  // 400 + 400 + 100
  EXPECT_EQ(data.val_shards.size(), 1u);
  expect_error([&] { prepare_text(dir.file("nope.txt"), dir.file("out"), tok); }, {"nope.txt"});
}

TEST(UnigramEntropy, MatchesTheClosedForm) {
  TempDir dir("smp_data_test");
  write_token_shard(dir.file("u.bin"), {0, 0, 1, 2});  // p = 1/2, 1/4, 1/4
  TokenShard shard(dir.file("u.bin"));
  EXPECT_NEAR(unigram_entropy({&shard}, 3), 1.5 * std::log(2.0), 1e-12);
}

std::vector<std::string> counting_shards(const TempDir& dir) {
  // Token i is i % 1000, over two shards, so a window's first token names its sample.
  std::vector<int> a, b;
  for (int i = 0; i < 600; ++i) a.push_back(i);
  for (int i = 600; i < 1000; ++i) b.push_back(i);
  write_token_shard(dir.file("s0.bin"), a);
  write_token_shard(dir.file("s1.bin"), b);
  return {dir.file("s0.bin"), dir.file("s1.bin")};
}

TEST(DataLoader, WindowsSpanShardsAndTargetsAreShifted) {
  TempDir dir("smp_data_test");
  DataLoader loader(counting_shards(dir), 10, 4, 1, 0, 1);
  EXPECT_EQ(loader.num_samples(), 99);  // (1000 - 1) / 10
  for (int step = 0; step < 30; ++step) {
    auto [x, y] = loader.next();
    ASSERT_EQ(x.sizes(), at::IntArrayRef({4, 10}));
    EXPECT_TRUE(at::equal(y.narrow(1, 0, 9), x.narrow(1, 1, 9)));
    EXPECT_TRUE(at::equal(x.select(1, 9) + 1, y.select(1, 9)));  // consecutive tokens
    EXPECT_TRUE(at::equal(x.select(1, 0).remainder(10), at::zeros({4}, at::kLong)));
  }
}

TEST(DataLoader, ReplicasSplitEachEpochAndOrderDependsOnlyOnTheSeed) {
  TempDir dir("smp_data_test");
  const auto shards = counting_shards(dir);
  std::set<int64_t> seen;
  for (int replica = 0; replica < 3; ++replica) {
    DataLoader loader(shards, 10, 2, 42, replica, 3);
    DataLoader twin(shards, 10, 2, 42, replica, 3);
    for (int step = 0; step < 16; ++step) {  // 16 * 6 = 96 of 99 samples: one epoch
      auto [x, y] = loader.next();
      EXPECT_TRUE(at::equal(x, twin.next().first));
      for (int b = 0; b < 2; ++b) {
        EXPECT_TRUE(seen.insert(x[b][0].item<int64_t>()).second) << "a sample seen twice";
      }
    }
  }
  EXPECT_EQ(seen.size(), 96u);
  DataLoader other_seed(shards, 10, 2, 43, 0, 3);
  DataLoader same_seed(shards, 10, 2, 42, 0, 3);
  EXPECT_FALSE(at::equal(other_seed.next().first, same_seed.next().first));
}

TEST(DataLoader, PositionRestoresTheNextBatchAndEpochsReshuffle) {
  TempDir dir("smp_data_test");
  const auto shards = counting_shards(dir);
  DataLoader loader(shards, 10, 8, 5, 0, 1);
  for (int i = 0; i < 15; ++i) loader.next();  // crosses into epoch 1 (12 batches per epoch)
  EXPECT_EQ(loader.position().epoch, 1);
  const LoaderPosition saved = loader.position();
  const at::Tensor expected = loader.next().first;
  DataLoader resumed(shards, 10, 8, 5, 0, 1);
  resumed.set_position(saved);
  EXPECT_TRUE(at::equal(resumed.next().first, expected));
}

TEST(DataLoader, TooLittleDataIsAClearError) {
  TempDir dir("smp_data_test");
  expect_error([&] { DataLoader(counting_shards(dir), 100, 4, 0, 0, 3); },
               {"1000 tokens", "9 samples", "needs 12"});
  expect_error([&] { DataLoader(counting_shards(dir), 10, 4, 0, 3, 3); }, {"replica 3 of 3"});
}

}  // namespace
}  // namespace smp::train

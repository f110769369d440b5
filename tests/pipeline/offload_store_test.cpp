// FileStore (activation offloading's host store): tensors come back bit for bit whatever their
// dtype, shape or layout; many keys in and out in any order reuse the file's freed extents;
// the file never shows in its directory and goes with the store; failures (a directory that
// does not exist, a write the file-size limit refuses) throw smp::Error naming the file.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>

#include <filesystem>
#include <map>
#include <string>

#include <ATen/ATen.h>

#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/pipeline/offload.h"

namespace smp::pipeline {
namespace {

// A fresh empty directory under $TMPDIR (or /tmp) for one test.
std::string fresh_directory(const std::string& name) {
  const std::string dir = files::temp_dir() + "/smp_offload_store_test_" + name + "_" +
                          std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

bool same(const Values& a, const Values& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].defined() != b[i].defined()) return false;
    if (!a[i].defined()) continue;
    if (a[i].scalar_type() != b[i].scalar_type() || !at::equal(a[i], b[i])) return false;
  }
  return true;
}

TEST(FileStore, RoundTripsEveryKindOfTensor) {
  const std::string dir = fresh_directory("round_trip");
  FileStore store(dir);
  at::manual_seed(3);
  const Values values = {at::randn({4, 5, 6}), at::Tensor(), at::randint(0, 1000, {7}, at::kLong),
                         at::randn({3, 8}).to(at::kBFloat16), at::randn({6, 4}).t(),  // a view
                         at::ones({0, 3}), at::scalar_tensor(2.5, at::kDouble)};
  store.put(1, values);
  store.prefetch(1);
  store.prefetch(1);  // twice: nothing more
  const Values back = store.take(1);
  EXPECT_TRUE(same(back, values));
  EXPECT_FALSE(back[4].is_same(values[4]));
  EXPECT_GT(store.file_bytes(), 0);
  std::filesystem::remove_all(dir);
}

TEST(FileStore, ManyKeysInAnyOrderReuseTheFile) {
  const std::string dir = fresh_directory("many_keys");
  FileStore store(dir);
  std::map<ActivationStore::Key, Values> kept;
  at::manual_seed(4);
  // A pipeline's pattern: put 8, take them back in reverse, twice; takes without prefetch too.
  for (int round = 0; round < 2; ++round) {
    for (int k = 0; k < 8; ++k) {
      kept[k] = {at::randn({16, 32}), at::randn({16})};
      store.put(k, kept[k]);
    }
    for (int k = 7; k >= 0; --k) {
      if (k % 2 == 0) store.prefetch(k);
      EXPECT_TRUE(same(store.take(k), kept.at(k))) << "key " << k << " round " << round;
    }
  }
  // 8 entries of (16*32 + 16) floats at once at most: the second round fits the first's space.
  EXPECT_EQ(store.file_bytes(), 8 * (16 * 32 + 16) * 4);
  std::filesystem::remove_all(dir);
}

TEST(FileStore, LeavesNoFileBehind) {
  const std::string dir = fresh_directory("no_file");
  {
    FileStore store(dir);
    store.put(0, {at::randn({100})});
    EXPECT_TRUE(std::filesystem::is_empty(dir)) << store.path() << " shows in its directory";
    EXPECT_EQ(store.path().rfind(dir + "/smp-offload-", 0), 0u) << store.path();
  }  // dies with an entry still in it
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

TEST(FileStore, MissingDirectoryNamesThePath) {
  try {
    FileStore store("/nonexistent/smp_offload");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/smp_offload/smp-offload-"), std::string::npos)
        << e.what();
  }
}

// A write past RLIMIT_FSIZE fails with EFBIG (SIGXFSZ ignored), as a full disk fails with
// ENOSPC: take reports it with the file's path.
TEST(FileStore, WriteErrorSurfacesAtTakeWithThePath) {
  const std::string dir = fresh_directory("write_error");
  FileStore store(dir);
  struct sigaction ignore {}, old {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGXFSZ, &ignore, &old);
  rlimit saved{};
  ::getrlimit(RLIMIT_FSIZE, &saved);
  rlimit small = saved;
  small.rlim_cur = 4096;
  ::setrlimit(RLIMIT_FSIZE, &small);
  store.put(5, {at::randn({1 << 16})});
  std::string message;
  try {
    store.take(5);
  } catch (const Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::sigaction(SIGXFSZ, &old, nullptr);
  EXPECT_NE(message.find(store.path()), std::string::npos) << message;
  EXPECT_NE(message.find("write"), std::string::npos) << message;
  // The store goes on working for the keys after it.
  const Values small_values = {at::randn({8})};
  store.put(6, small_values);
  EXPECT_TRUE(same(store.take(6), small_values));
  std::filesystem::remove_all(dir);
}

TEST(ActivationStore, HostTensorsGoToAFile) {
  const std::string dir = fresh_directory("factory");
  const auto store = make_activation_store(at::kCPU, dir);
  EXPECT_NE(dynamic_cast<FileStore*>(store.get()), nullptr);
  std::filesystem::remove_all(dir);
}

// The GPU's store (pinned host buffers, a side stream): device tensors come back equal, on
// their device, after the compute stream has moved on. Runs only where there is a GPU.
TEST(ActivationStore, DeviceTensorsRoundTripThroughPinnedMemory) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const auto store = make_activation_store(at::Device(at::kCUDA, 0), "");
  EXPECT_EQ(dynamic_cast<FileStore*>(store.get()), nullptr);
  at::manual_seed(6);
  std::map<ActivationStore::Key, Values> kept;
  for (int k = 0; k < 4; ++k) {
    Values values = {at::randn({256, 256}, at::kCUDA), at::Tensor()};
    kept[k] = {values[0].clone(), at::Tensor()};
    store->put(k, std::move(values));  // the store's copy is all that is left of them
  }
  store->prefetch(3);
  for (int k = 3; k >= 0; --k) {
    const Values back = store->take(k);
    ASSERT_TRUE(back[0].is_cuda());
    EXPECT_TRUE(same(back, kept.at(k))) << "key " << k;
  }
}

}  // namespace
}  // namespace smp::pipeline

// main() of a fuzz target in the normal build: runs LLVMFuzzerTestOneInput once over every file
// of the corpus folders given (seeds and crash regressions), so ctest replays them in the unit
// suite. A finding aborts (fuzz_common.h), which fails the test. A folder that is missing,
// unreadable or empty fails too: a replay that runs nothing would pass without testing anything.
//   <target>_fuzz <corpus folder>...
// (POSIX, not std::filesystem: libtorch.so exports its own copies of those symbols.)
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

// The regular files of `dir`, sorted; false when it cannot be read.
bool list_files(const std::string& dir, std::vector<std::string>* out) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  while (const dirent* e = ::readdir(d)) {
    const std::string path = dir + "/" + e->d_name;
    struct stat st {};
    if (e->d_name[0] != '.' && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) out->push_back(path);
  }
  ::closedir(d);
  std::sort(out->begin(), out->end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <corpus folder>...\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  size_t total = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<std::string> files;
    if (!list_files(argv[i], &files)) {
      std::fprintf(stderr, "replay: cannot read the corpus folder %s\n", argv[i]);
      return 1;
    }
    if (files.empty()) {
      std::fprintf(stderr, "replay: the corpus folder %s holds no inputs\n", argv[i]);
      return 1;
    }
    for (const std::string& file : files) {
      std::ifstream in(file, std::ios::binary);
      std::ostringstream bytes;
      bytes << in.rdbuf();
      if (!in) {
        std::fprintf(stderr, "replay: cannot read %s\n", file.c_str());
        return 1;
      }
      const std::string data = bytes.str();
      std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.c_str(), data.size());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    }
    std::printf("replay: %zu inputs from %s passed\n", files.size(), argv[i]);
    total += files.size();
  }
  std::printf("replay: %zu inputs in all\n", total);
  return 0;
}

// What every fuzz target shares (see docs/fuzzing.md): a scratch directory of the process's own
// for parsers that read from a path, and the rule for what an exception means.
//
// Expected: smp::Error and the kinds derived from it (ConfigError, CheckpointError; the token
// shard reader and the file helpers throw smp::Error itself), which name the field, the value
// and what is allowed. A finding (the target prints it and aborts, so libFuzzer keeps the input
// and the replay test fails): smp::InternalError (a broken invariant), smp::CommError (no parser
// talks to other ranks), any other exception escaping (std::out_of_range, bad_alloc,
// nlohmann::json's, c10::Error, ...), and a property a target checks that does not hold. Crashes,
// undefined behaviour and hangs are caught by the sanitizers and libFuzzer themselves.
#pragma once

#include <cxxabi.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <typeinfo>

#include "smp/core/error.h"
#include "smp/core/files.h"

namespace smp::fuzz {

// The dynamic type of `e`, demangled ("nlohmann::json_abi_v3_11_2::detail::type_error").
inline std::string type_name(const std::exception& e) {
  int status = 0;
  char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name != nullptr ? name : typeid(e).name();
  std::free(name);
  return out;
}

// The scratch directory temp_dir() made ("" until then).
inline std::string& made_dir() {
  static std::string dir;
  return dir;
}

// Removes the scratch directory (at exit, and before a finding aborts).
inline void remove_temp_dir() noexcept {
  if (made_dir().empty()) return;
  try {
    files::remove_tree(made_dir());
  } catch (...) {
  }
  made_dir().clear();
}

[[noreturn]] inline void finding(const std::string& where, const std::string& what) {
  std::fprintf(stderr, "\nFUZZ FINDING in %s: %s\n", where.c_str(), what.c_str());
  std::fflush(stderr);
  remove_temp_dir();
  std::abort();
}

// Runs `fn`; returns true when it returned, false when it threw an expected smp::Error; aborts
// with a finding on anything else.
template <typename Fn>
bool expect_smp_errors(const char* where, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const InternalError& e) {
    finding(where, "smp::InternalError (a broken invariant): " + std::string(e.what()));
  } catch (const CommError& e) {
    finding(where, "smp::CommError from a parser: " + std::string(e.what()));
  } catch (const Error& e) {
    if (std::strlen(e.what()) == 0) finding(where, type_name(e) + " with an empty message");
    return false;
  } catch (const std::exception& e) {
    finding(where, type_name(e) + " escaped: " + e.what());
  } catch (...) {
    finding(where, "an exception not derived from std::exception escaped");
  }
}

// Runs `fn`, which must not throw at all (a property of a value that parsed).
template <typename Fn>
void expect_no_throw(const char* where, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    finding(where, type_name(e) + " thrown on a value that parsed: " + e.what());
  } catch (...) {
    finding(where, "an exception not derived from std::exception");
  }
}

}  // namespace smp::fuzz

// A property that must hold; `what` (a std::string expression) is built only when it does not.
#define SMP_FUZZ_CHECK(cond, where, what)                 \
  do {                                                    \
    if (!(cond)) ::smp::fuzz::finding((where), (what));   \
  } while (0)

namespace smp::fuzz {

// A directory of this process's own, made on first use under $SMP_FUZZ_TMPDIR, else /dev/shm
// (memory: no disk I/O per input), else $TMPDIR or /tmp; removed when the process exits or a
// finding aborts it (a sanitizer's abort leaves it: a few KB named smp_fuzz_*).
inline const std::string& temp_dir() {
  static const std::string dir = [] {
    std::string base;
    if (const char* env = std::getenv("SMP_FUZZ_TMPDIR")) base = env;
    struct stat st {};
    if (base.empty() && ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
        ::access("/dev/shm", W_OK) == 0) {
      base = "/dev/shm";
    }
    if (base.empty()) base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
    std::string pattern = base + "/smp_fuzz_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::fprintf(stderr, "fuzz: cannot create a directory under %s: %s\n", base.c_str(),
                   std::strerror(errno));
      std::abort();
    }
    made_dir() = pattern;
    std::atexit(remove_temp_dir);
    return pattern;
  }();
  return dir;
}

// Writes `size` bytes to `path`, replacing what it held (the per-process input file).
inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) finding("write_bytes", "cannot open " + path + ": " + std::strerror(errno));
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) finding("write_bytes", "cannot write " + path + ": " + std::strerror(errno));
    data += n;
    size -= static_cast<size_t>(n);
  }
  ::close(fd);
}

}  // namespace smp::fuzz

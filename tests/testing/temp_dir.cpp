// TempDir: see temp_dir.h.
#include "testing/temp_dir.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <exception>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "smp/comm/agree.h"
#include "smp/core/files.h"

namespace smp::testing {
namespace {

// No std::filesystem here: libtorch.so exports its own copies of some of its symbols, and
// remove_all resolved there crashes. smp::files does the same work with POSIX calls.

// mkdtemp under $TMPDIR (else /tmp); throws naming the template on failure.
std::string make_dir(const std::string& prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string templ = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/" + prefix + "_XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) {
    throw std::runtime_error("mkdtemp(" + templ + ") failed: " + std::strerror(errno));
  }
  return templ;
}

// rm -rf that never throws (it runs in a destructor); a failure is printed.
void remove_quietly(const std::string& path) {
  try {
    files::remove_tree(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "TempDir: cannot remove %s: %s\n", path.c_str(), e.what());
  }
}

}  // namespace

TempDir::TempDir(const std::string& prefix) : path_(make_dir(prefix)) {}

TempDir::TempDir(const std::string& prefix, comm::Communicator& group)
    : path_(comm::on_rank0("making a shared temp dir", [&] { return make_dir(prefix); }, group)),
      group_(&group) {}

TempDir::~TempDir() {
  if (group_ == nullptr) {
    remove_quietly(path_);
    return;
  }
  // A rank whose test failed, or that is unwinding from an exception (gtest records that as a
  // failure only afterwards), skips the barrier: dist_main ends the job when the test ends,
  // and the other ranks may be stuck elsewhere, never reaching it.
  if (!::testing::Test::HasFailure() && std::uncaught_exceptions() == 0) {
    try {
      group_->barrier().wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "TempDir %s: barrier failed: %s\n", path_.c_str(), e.what());
    }
  }
  if (group_->rank() == 0) remove_quietly(path_);
}

std::string TempDir::file(const std::string& name) const { return path_ + "/" + name; }

std::string TempDir::write(const std::string& name, const std::string& text) const {
  const std::string target = file(name);
  std::ofstream out(target, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + target);
  return target;
}

std::vector<std::string> TempDir::entries() const { return files::list_dir(path_); }

}  // namespace smp::testing

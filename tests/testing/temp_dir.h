// TempDir: a fresh temporary directory removed with everything in it when it goes out of
// scope, of one process or shared by the ranks of a multi-rank test.
#pragma once

#include <string>
#include <vector>

#include "smp/comm/communicator.h"
#include "testing/multi_rank.h"

namespace smp::testing {

class TempDir {
 public:
  // A fresh directory $TMPDIR/<prefix>_XXXXXX (/tmp without TMPDIR) of this process alone. Throws
  // std::runtime_error when it cannot be made.
  explicit TempDir(const std::string& prefix = "smp_test");
  // Shared by the members of `group` (collective: each calls it, in the same order): rank 0
  // of the group makes the directory and every member gets its path; if making it fails,
  // every member throws. On destruction the members meet at a barrier (so no rank still uses
  // the files) and rank 0 removes the directory. `group` must outlive this object: use
  // smp::testing::world() (multi_rank.h) when the test re-initialises smp in between.
  TempDir(const std::string& prefix, comm::Communicator& group);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name (name may be empty or a relative path with folders).
  std::string file(const std::string& name) const;
  // Writes `text` to file(name), replacing it, and returns file(name).
  std::string write(const std::string& name, const std::string& text) const;
  // The directory's entries (not recursive), sorted, without "." and "..".
  std::vector<std::string> entries() const;

 private:
  std::string path_;
  comm::Communicator* group_ = nullptr;  // null: this process's own directory
};

}  // namespace smp::testing

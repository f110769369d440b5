// Small POSIX file-system helpers every part of smp shares: directories, atomic writes, listing
// and removal. (Not std::filesystem: libtorch.so exports its own copies of those symbols, and
// calls can bind to them and crash.) Every failure throws smp::Error naming the path and the
// system's reason.
#pragma once

#include <string>
#include <vector>

namespace smp::files {

// mkdir -p: creates `dir` and any missing parents (0755). An existing directory is fine.
void make_dirs(const std::string& dir);

// Writes `data` to `path` atomically: a temporary file next to it (`path.tmp.<pid>`), then a
// rename onto `path`, so a reader sees the old file or the new one, never a part. `durable`
// also fsyncs the file before the rename and the directory after it (survives a power cut).
// On failure the temporary file is removed and `path` is untouched.
void write_file_atomic(const std::string& path, const std::string& data, bool durable = false);

// The whole file; throws naming the path when it cannot be read.
std::string read_file(const std::string& path);

bool exists(const std::string& path);
bool is_dir(const std::string& path);

// Entry names of a directory (no "." or ".."), sorted.
std::vector<std::string> list_dir(const std::string& dir);

// rm -rf: removes a file or a directory tree; a missing path is fine.
void remove_tree(const std::string& path);

// rename(2), then fsync of the destination's directory so the rename itself is durable.
void rename_durable(const std::string& from, const std::string& to);

// Swaps `a` and `b` (both must exist) in one atomic step (renameat2's RENAME_EXCHANGE), then
// fsyncs their directory. Returns false, changing nothing, where the filesystem cannot do it.
bool exchange_durable(const std::string& a, const std::string& b);

// fsync of a file or directory.
void fsync_path(const std::string& path);

// Where smp puts scratch files on local disk (offloaded activations and optimizer state):
// $TMPDIR, else /tmp.
std::string temp_dir();

// The directory part of `path` ("." when there is none).
std::string parent_dir(const std::string& path);

}  // namespace smp::files

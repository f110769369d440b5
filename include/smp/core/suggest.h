// "Did you mean": the nearest valid name for a misspelt key, for error messages.
#pragma once

#include <string>
#include <vector>

namespace smp {

// Optimal-string-alignment distance (edits, adjacent swaps count one), case-insensitive.
std::size_t edit_distance(const std::string& a, const std::string& b);

// The name within max(1, len/3) edits of `key`, else the shortest name that `key` (5+
// characters) begins; empty when nothing is close.
std::string nearest_name(const std::string& key, const std::vector<std::string>& names);

// "; did you mean \"x\"?" or, when nothing is close, "; allowed: a, b, c".
std::string suggestion(const std::string& key, const std::vector<std::string>& names);

}  // namespace smp

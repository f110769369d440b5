// "Did you mean" suggestions for misspelt keys (see suggest.h).
#include "smp/core/suggest.h"

#include <algorithm>
#include <cctype>

namespace smp {

std::size_t edit_distance(const std::string& a_in, const std::string& b_in) {
  auto lower = [](std::string s) {
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  const std::string a = lower(a_in), b = lower(b_in);
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string nearest_name(const std::string& key, const std::vector<std::string>& names) {
  const std::size_t limit = std::max<std::size_t>(1, key.size() / 3);
  std::string best;
  std::size_t best_distance = limit + 1;
  for (const std::string& name : names) {
    // The distance is at least the difference in length: a long key (a megabyte of garbage in
    // a config) then costs nothing instead of a key-sized table per name.
    const std::size_t gap = key.size() > name.size() ? key.size() - name.size() : name.size() - key.size();
    if (gap >= best_distance) continue;
    const std::size_t distance = edit_distance(key, name);
    if (distance < best_distance) {
      best = name;
      best_distance = distance;
    }
  }
  if (!best.empty() || key.size() < 5) return best;
  for (const std::string& name : names) {
    if (name.compare(0, key.size(), key) == 0 && (best.empty() || name.size() < best.size())) best = name;
  }
  return best;
}

std::string suggestion(const std::string& key, const std::vector<std::string>& names) {
  const std::string nearest = nearest_name(key, names);
  if (!nearest.empty()) return "; did you mean \"" + nearest + "\"?";
  std::string all;
  for (const std::string& name : names) all += (all.empty() ? "" : ", ") + name;
  return "; allowed: " + all;
}

}  // namespace smp

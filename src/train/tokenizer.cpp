// Byte-level and GPT-2 BPE tokenizers (see tokenizer.h).
#include "smp/train/tokenizer.h"

#include <climits>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"

namespace smp::train {

std::vector<int> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

namespace {

// The length of the well-formed UTF-8 sequence at s[i] (RFC 3629, Table 3-7), or 0.
size_t sequence_length(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (c == 0xE0) lo = 0xA0;
  if (c == 0xED) hi = 0x9F;  // no surrogates
  if (c == 0xF0) lo = 0x90;
  if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return n;
}

}  // namespace

std::string valid_utf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t n = sequence_length(bytes, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(bytes, i, n);
      i += n;
    }
  }
  return out;
}

std::string ByteTokenizer::decode(const std::vector<int>& tokens) const {
  std::string out;
  for (int t : tokens) {
    if (t >= 0 && t < 256) out.push_back(static_cast<char>(t));
  }
  return out;
}

namespace {

std::string utf8(int code_point) {
  std::string out;
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else {  // GPT-2's byte map stays below 0x800: two bytes
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
  return out;
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256, 257, ...
const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> symbols = [] {
    std::vector<std::string> out(256);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      out[b] = utf8(printable ? b : next++);
    }
    return out;
  }();
  return symbols;
}

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_letter(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
bool is_other(unsigned char c) { return !is_space(c) && !is_digit(c) && !is_letter(c); }

// GPT-2's pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::vector<std::string> pre_tokenize(const std::string& text) {
  std::vector<std::string> words;
  const size_t n = text.size();
  auto at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    if (at(i) == '\'') {
      for (const char* suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
        if (text.compare(i + 1, std::char_traits<char>::length(suffix), suffix) == 0) {
          j = i + 1 + std::char_traits<char>::length(suffix);
          break;
        }
      }
    }
    if (j == i) {
      const size_t k = (at(i) == ' ' && i + 1 < n && !is_space(at(i + 1))) ? i + 1 : i;
      if (!is_space(at(k))) {
        auto same = is_letter(at(k)) ? is_letter : is_digit(at(k)) ? is_digit : is_other;
        j = k;
        while (j < n && same(at(j))) ++j;
      } else {
        while (j < n && is_space(at(j))) ++j;
        if (j < n && j - i > 1) --j;  // leave one space to lead the next word
      }
    }
    words.push_back(text.substr(i, j - i));
    i = j;
  }
  return words;
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw Error("tokenizer: " + path + ": " + what);
}

}  // namespace

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& vocab_json_path,
                             const std::string& merges_txt_path) {
  std::ifstream vocab_file(vocab_json_path);
  if (!vocab_file) bad_file(vocab_json_path, "cannot be read");
  nlohmann::json vocab;
  try {
    vocab_file >> vocab;
  } catch (const nlohmann::json::exception& e) {
    bad_file(vocab_json_path, std::string("is not valid JSON: ") + e.what());
  }
  if (!vocab.is_object()) bad_file(vocab_json_path, "must be a JSON object {token: id}");
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > 65535) {
      bad_file(vocab_json_path, "token \"" + token + "\" has id " + id.dump() +
                                    "; ids must be integers in 0..65535");
    }
    token_to_id_[token] = id.get<int>();
    if (id.get<int>() >= static_cast<int>(id_to_token_.size())) id_to_token_.resize(id.get<int>() + 1);
    id_to_token_[id.get<int>()] = token;
  }
  const auto eot = token_to_id_.find("<|endoftext|>");
  if (eot == token_to_id_.end()) bad_file(vocab_json_path, "has no \"<|endoftext|>\" token");
  eot_ = eot->second;

  std::ifstream merges(merges_txt_path);
  if (!merges) bad_file(merges_txt_path, "cannot be read");
  std::string line;
  int line_number = 0;
  while (std::getline(merges, line)) {
    ++line_number;
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size()) {
      bad_file(merges_txt_path, "line " + std::to_string(line_number) + " is \"" + line +
                                    "\"; each merge is two symbols separated by one space");
    }
    merge_rank_.emplace(std::make_pair(line.substr(0, space), line.substr(space + 1)),
                        static_cast<int>(merge_rank_.size()));
  }
}

std::vector<int> Gpt2Tokenizer::encode_word(const std::string& word) const {
  std::vector<std::string> symbols;
  for (unsigned char b : word) symbols.push_back(byte_symbols()[b]);
  // Merge the lowest-ranked adjacent pair until none is in the merge table.
  while (symbols.size() > 1) {
    int best_rank = INT_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto it = merge_rank_.find({symbols[i], symbols[i + 1]});
      if (it != merge_rank_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT_MAX) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<long>(best) + 1);
  }
  std::vector<int> ids;
  for (const std::string& s : symbols) {
    const auto it = token_to_id_.find(s);
    if (it == token_to_id_.end()) {
      throw Error("tokenizer: the symbol \"" + s + "\" is not in the vocabulary");
    }
    ids.push_back(it->second);
  }
  return ids;
}

std::vector<int> Gpt2Tokenizer::encode(const std::string& text) const {
  std::vector<int> out;
  for (const std::string& word : pre_tokenize(text)) {
    const std::vector<int> ids = encode_word(word);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

std::string Gpt2Tokenizer::decode(const std::vector<int>& tokens) const {
  static const std::map<std::string, char> to_byte = [] {
    std::map<std::string, char> out;
    for (int b = 0; b < 256; ++b) out[byte_symbols()[b]] = static_cast<char>(b);
    return out;
  }();
  std::string out;
  for (int t : tokens) {
    if (t < 0 || t >= static_cast<int>(id_to_token_.size()) || t == eot_) continue;
    const std::string& s = id_to_token_[t];
    for (size_t i = 0; i < s.size();) {
      const size_t len = (static_cast<unsigned char>(s[i]) < 0x80) ? 1 : 2;
      const auto it = to_byte.find(s.substr(i, len));
      if (it != to_byte.end()) out.push_back(it->second);
      i += len;
    }
  }
  return out;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& vocab_json_path,
                                          const std::string& merges_txt_path) {
  if (vocab_json_path.empty() && merges_txt_path.empty()) return std::make_unique<ByteTokenizer>();
  if (vocab_json_path.empty() || merges_txt_path.empty()) {
    throw ConfigError("data: GPT-2 BPE needs both \"vocab_json\" and \"merges_txt\"; got only " +
                      std::string(vocab_json_path.empty() ? "merges_txt" : "vocab_json"));
  }
  return std::make_unique<Gpt2Tokenizer>(vocab_json_path, merges_txt_path);
}

}  // namespace smp::train

// Tokenizers: text <-> token ids. Byte-level by default (every byte a token, plus an
// end-of-text token); GPT-2's byte-level BPE when its vocab.json and merges.txt are given.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace smp::train {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int>& tokens) const = 0;
  virtual int vocab_size() const = 0;
  virtual int eot() const = 0;  // the end-of-text token, between documents
};

// `bytes` as valid UTF-8 for printing: each byte that does not start or continue a well-formed
// sequence (a character cut by byte-level tokens, a stray continuation byte, an overlong or
// surrogate encoding) becomes U+FFFD; valid text comes back unchanged.
std::string valid_utf8(const std::string& bytes);

// Token b < 256 is byte b; 256 is end-of-text.
class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int> encode(const std::string& text) const override;
  std::string decode(const std::vector<int>& tokens) const override;
  int vocab_size() const override { return 257; }
  int eot() const override { return 256; }
};

// GPT-2's tokenizer: the pre-tokenising pattern ('s 't 're 've 'm 'll 'd, letter runs, digit
// runs, other runs, spaces; each optionally led by one space), bytes mapped to printable
// characters, then BPE merges by rank. Bytes >= 0x80 count as letters (GPT-2's \p{L} without a
// Unicode table; exact for ASCII text). Throws smp::Error naming the file and line on a
// malformed vocab.json or merges.txt.
class Gpt2Tokenizer : public Tokenizer {
 public:
  Gpt2Tokenizer(const std::string& vocab_json_path, const std::string& merges_txt_path);
  std::vector<int> encode(const std::string& text) const override;
  std::string decode(const std::vector<int>& tokens) const override;
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  int eot() const override { return eot_; }

 private:
  std::vector<int> encode_word(const std::string& word) const;

  std::map<std::string, int> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::map<std::pair<std::string, std::string>, int> merge_rank_;
  int eot_ = -1;
};

// The tokenizer a data config names: byte-level when both paths are empty, else GPT-2 BPE.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& vocab_json_path = "",
                                          const std::string& merges_txt_path = "");

}  // namespace smp::train

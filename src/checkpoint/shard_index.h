// Where the pieces of each checkpoint tensor lie, and reading any region of a whole tensor back
// from them: the resharding half of checkpoint.cpp (internal to smp_checkpoint).
//
// A piece is a rectangle of the whole tensor (offsets, shape; it may run past the whole tensor
// along a padded dim) stored in one safetensors file, either whole or as a flat range
// [start, start + numel) of the rectangle's row-major elements (a ZeRO shard of optimizer
// state). A rectangle cut into flat ranges is assembled from all of them before use.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "smp/checkpoint/safetensors.h"

namespace smp::checkpoint {

struct Piece {
  std::string file;  // relative to the checkpoint folder; empty: held in memory
  std::string name;  // the tensor's name in that file
  std::vector<int64_t> offsets, shape;
  int64_t flat_start = 0;
  int64_t flat_numel = -1;  // -1: the whole rectangle
  uint32_t crc32 = 0;
  bool whole_rectangle() const { return flat_numel < 0; }
};

struct TensorEntry {
  std::vector<int64_t> shape;  // of the whole tensor
  std::vector<Piece> pieces;
};

nlohmann::json to_json(const Piece& piece);
Piece piece_from_json(const nlohmann::json& j);

// CRC-32 (zlib's) of a contiguous CPU tensor's bytes.
uint32_t crc32_of(const at::Tensor& t);

class ShardIndex {
 public:
  // `tensors`: the manifest's "tensors" object; files are opened lazily, once each.
  ShardIndex(std::string dir, const nlohmann::json& tensors);

  bool contains(const std::string& key) const { return entries_.count(key) > 0; }
  const TensorEntry& entry(const std::string& key) const;
  std::vector<std::string> keys() const;
  // The dtype tensor `key` is stored in (its first piece's).
  at::ScalarType dtype(const std::string& key);

  // Fills `out` (shape `out.sizes()`, any dtype: values are converted) with rectangle
  // [offsets, offsets + out.sizes()) of whole tensor `key`. Parts of the rectangle outside the
  // whole tensor (padding) are left untouched. Throws naming the tensor when its pieces do not
  // cover the rectangle, and naming the file when a piece's checksum does not match.
  void read_region(const std::string& key, const std::vector<int64_t>& offsets, at::Tensor out);
  // Fills the 1-D `out` with flat elements [flat_start, flat_start + out.numel()) of rectangle
  // (offsets, rect_shape) of tensor `key` (whose elements outside the whole tensor read as 0).
  // Where that rectangle is stored as flat ranges (ZeRO or sharded data parallel slices), only
  // the ranges overlapping `out` are read; else the rectangle is assembled once (and kept for
  // the next call, a parameter's slices coming one after another).
  void read_flat(const std::string& key, const std::vector<int64_t>& offsets,
                 const std::vector<int64_t>& rect_shape, int64_t flat_start, at::Tensor out);
  // The whole tensor.
  at::Tensor read_whole(const std::string& key);
  // Adds a whole tensor held in memory (weights a full checkpoint stores under other names).
  void add_memory(const std::string& key, const at::Tensor& whole);

 private:
  // The piece's values, checksum verified; `into`, when given, must match its dtype and size.
  at::Tensor read_piece(const Piece& piece, const at::Tensor& into = {});
  const SafetensorsReader& reader(const std::string& file);
  at::ScalarType dtype_of(const Piece& piece);
  // read_flat from `pieces`, flat ranges of the rectangle asked for.
  void read_overlapping(const std::string& key, const std::vector<const Piece*>& pieces,
                        int64_t flat_start, at::Tensor out);

  std::string dir_;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, at::Tensor> memory_;  // pieces with no file, by name
  // read_flat's last assembled rectangle (a parameter's slices come one after another).
  std::string cached_key_;
  at::Tensor cached_;
};

}  // namespace smp::checkpoint

// Reading regions of whole tensors from checkpoint pieces (see shard_index.h).
#include "shard_index.h"

#include <zlib.h>

#include <algorithm>

#include "smp/core/error.h"

namespace smp::checkpoint {
namespace {

using nlohmann::json;
using Shape = std::vector<int64_t>;

// An axis-aligned box of a whole tensor.
struct Box {
  Shape lo, len;
  int64_t volume() const {
    int64_t v = 1;
    for (int64_t n : len) v *= n;
    return v;
  }
};

bool intersect(const Box& a, const Box& b, Box* out) {
  out->lo.resize(a.lo.size());
  out->len.resize(a.lo.size());
  for (size_t d = 0; d < a.lo.size(); ++d) {
    const int64_t lo = std::max(a.lo[d], b.lo[d]);
    const int64_t hi = std::min(a.lo[d] + a.len[d], b.lo[d] + b.len[d]);
    if (hi <= lo) return false;
    out->lo[d] = lo;
    out->len[d] = hi - lo;
  }
  return true;
}

// The part of `t` (which covers the box starting at `base`) that `box` covers.
at::Tensor sub(at::Tensor t, const Shape& base, const Box& box) {
  for (size_t d = 0; d < box.lo.size(); ++d) {
    t = t.narrow(static_cast<int64_t>(d), box.lo[d] - base[d], box.len[d]);
  }
  return t;
}

std::string describe(const Shape& offsets, const Shape& shape) {
  return "offsets " + c10::str(at::IntArrayRef(offsets)) + ", shape " +
         c10::str(at::IntArrayRef(shape));
}

}  // namespace

json to_json(const Piece& p) {
  json j = {{"file", p.file}, {"name", p.name}, {"offsets", p.offsets}, {"shape", p.shape},
            {"crc32", p.crc32}};
  if (!p.whole_rectangle()) j["flat"] = {p.flat_start, p.flat_numel};
  return j;
}

Piece piece_from_json(const json& j) {
  Piece p;
  p.file = j.at("file").get<std::string>();
  p.name = j.at("name").get<std::string>();
  p.offsets = j.at("offsets").get<Shape>();
  p.shape = j.at("shape").get<Shape>();
  p.crc32 = j.at("crc32").get<uint32_t>();
  if (j.contains("flat")) {
    p.flat_start = j["flat"].at(0).get<int64_t>();
    p.flat_numel = j["flat"].at(1).get<int64_t>();
  }
  if (p.offsets.size() != p.shape.size()) throw CheckpointError("piece " + p.name + ": offsets and shape differ in rank");
  return p;
}

uint32_t crc32_of(const at::Tensor& t) {
  SMP_CHECK(t.is_contiguous() && t.device().is_cpu());
  return static_cast<uint32_t>(
      ::crc32_z(0, static_cast<const Bytef*>(t.data_ptr()), static_cast<size_t>(t.nbytes())));
}

ShardIndex::ShardIndex(std::string dir, const json& tensors) : dir_(std::move(dir)) {
  for (const auto& [key, value] : tensors.items()) {
    TensorEntry entry;
    entry.shape = value.at("shape").get<Shape>();
    for (const json& p : value.at("pieces")) entry.pieces.push_back(piece_from_json(p));
    entries_[key] = std::move(entry);
  }
}

const TensorEntry& ShardIndex::entry(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw CheckpointError("checkpoint " + dir_ + " has no tensor '" + key + "'");
  return it->second;
}

std::vector<std::string> ShardIndex::keys() const {
  std::vector<std::string> out;
  for (const auto& [key, entry] : entries_) out.push_back(key);
  return out;
}

const SafetensorsReader& ShardIndex::reader(const std::string& file) {
  auto& slot = readers_[file];
  if (!slot) slot = std::make_unique<SafetensorsReader>(dir_ + "/" + file);
  return *slot;
}

at::ScalarType ShardIndex::dtype_of(const Piece& piece) {
  if (piece.file.empty()) return memory_.at(piece.name).scalar_type();
  return reader(piece.file).header().at(piece.name).dtype;
}

void ShardIndex::add_memory(const std::string& key, const at::Tensor& whole) {
  Piece piece;
  piece.name = key;
  piece.shape = whole.sizes().vec();
  piece.offsets.assign(piece.shape.size(), 0);
  entries_[key] = {piece.shape, {piece}};
  memory_[key] = whole.contiguous();
}

at::Tensor ShardIndex::read_piece(const Piece& piece, const at::Tensor& into) {
  if (piece.file.empty()) {
    const at::Tensor& t = memory_.at(piece.name);
    if (!into.defined()) return t;
    into.view(-1).copy_(t.reshape(-1));
    return into;
  }
  const SafetensorsReader& file = reader(piece.file);
  at::Tensor t = into;
  if (t.defined()) {
    file.read_into(piece.name, t);
  } else {
    t = file.read(piece.name);
  }
  const uint32_t crc = crc32_of(t);
  if (crc != piece.crc32) {
    throw CheckpointError("checkpoint file " + dir_ + "/" + piece.file + ": tensor '" + piece.name +
                "' fails its checksum (manifest CRC-32 " + std::to_string(piece.crc32) +
                ", file " + std::to_string(crc) + "): the file is corrupted");
  }
  return t;
}

void ShardIndex::read_region(const std::string& key, const Shape& offsets, at::Tensor out) {
  const TensorEntry& e = entry(key);
  if (offsets.size() != e.shape.size() || out.dim() != static_cast<int64_t>(e.shape.size())) {
    throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "' has shape " +
                c10::str(at::IntArrayRef(e.shape)) + "; asked for a region with " +
                describe(offsets, out.sizes().vec()));
  }
  const Box target{offsets, out.sizes().vec()};
  Box valid;
  if (!intersect(target, Box{Shape(offsets.size(), 0), e.shape}, &valid)) return;

  // Pieces by rectangle: a rectangle is stored whole or as flat ranges that together cover it.
  std::map<std::pair<Shape, Shape>, std::vector<const Piece*>> rectangles;
  for (const Piece& p : e.pieces) rectangles[{p.offsets, p.shape}].push_back(&p);
  int64_t covered = 0;
  for (const auto& [rect, pieces] : rectangles) {
    const Box r{rect.first, rect.second};
    Box overlap;
    if (!intersect(r, valid, &overlap)) continue;
    const at::ScalarType dtype = dtype_of(*pieces[0]);
    at::Tensor data;
    if (pieces.size() == 1 && pieces[0]->whole_rectangle()) {
      if (r.lo == target.lo && r.len == target.len && out.is_contiguous() &&
          out.device().is_cpu() && out.scalar_type() == dtype) {
        read_piece(*pieces[0], out);  // the common case: the same layout, straight into place
        covered += overlap.volume();
        continue;
      }
      data = read_piece(*pieces[0]).view(r.len);
    } else {
      at::Tensor flat = at::empty({r.volume()}, at::TensorOptions().dtype(dtype));
      int64_t filled = 0;
      for (const Piece* p : pieces) {
        if (p->whole_rectangle() || p->flat_start < 0 || p->flat_start + p->flat_numel > r.volume()) {
          throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "': piece '" + p->name +
                      "' in " + p->file + " does not fit its rectangle (" + describe(r.lo, r.len) + ")");
        }
        read_piece(*p, flat.narrow(0, p->flat_start, p->flat_numel));
        filled += p->flat_numel;
      }
      if (filled != r.volume()) {
        throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "': the flat pieces of the " +
                    "rectangle with " + describe(r.lo, r.len) + " hold " + std::to_string(filled) +
                    " of its " + std::to_string(r.volume()) + " elements (a rank's shard is missing)");
      }
      data = flat.view(r.len);
    }
    sub(out, target.lo, overlap).copy_(sub(data, r.lo, overlap));
    covered += overlap.volume();
  }
  if (covered != valid.volume()) {
    throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "' (shape " +
                c10::str(at::IntArrayRef(e.shape)) + "): its pieces cover " +
                std::to_string(covered) + " of the " + std::to_string(valid.volume()) +
                " elements of the region with " + describe(valid.lo, valid.len) +
                " (a rank's shard is missing)");
  }
}

void ShardIndex::read_flat(const std::string& key, const Shape& offsets, const Shape& rect_shape,
                           int64_t flat_start, at::Tensor out) {
  const TensorEntry& e = entry(key);
  for (const Piece& p : e.pieces) {  // the same layout: this very slice was saved
    if (p.offsets == offsets && p.shape == rect_shape && !p.whole_rectangle() &&
        p.flat_start == flat_start && p.flat_numel == out.numel() && out.is_contiguous() &&
        out.device().is_cpu() && dtype_of(p) == out.scalar_type()) {
      read_piece(p, out);
      return;
    }
  }
  const std::string cache_key = key + "|" + describe(offsets, rect_shape);
  if (cache_key != cached_key_ || cached_.scalar_type() != out.scalar_type()) {
    cached_ = at::zeros(rect_shape, at::TensorOptions().dtype(out.scalar_type()));  // host
    read_region(key, offsets, cached_);
    cached_key_ = cache_key;
  }
  out.copy_(cached_.view(-1).narrow(0, flat_start, out.numel()));
}

at::Tensor ShardIndex::read_whole(const std::string& key) {
  const TensorEntry& e = entry(key);
  SMP_CHECK(!e.pieces.empty());
  const Piece& first = e.pieces[0];
  at::Tensor t = at::zeros(e.shape, at::TensorOptions().dtype(dtype_of(first)));
  read_region(key, Shape(e.shape.size(), 0), t);
  return t;
}

}  // namespace smp::checkpoint

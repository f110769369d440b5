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

namespace {

// A JSON integer that fits int64, else a CheckpointError naming the field and the value.
int64_t integer(const json& v, const char* field) {
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))) {
    throw CheckpointError(std::string("\"") + field + "\" holds " + v.dump() + "; allowed: integers");
  }
  return v.get<int64_t>();
}

// A shape or offsets: a list of integers >= 0.
Shape dims(const json& v, const char* field) {
  if (!v.is_array()) {
    throw CheckpointError(std::string("\"") + field + "\" is " + v.dump() + "; allowed: a list of integers >= 0");
  }
  Shape out;
  for (const json& d : v) {
    out.push_back(integer(d, field));
    if (out.back() < 0) {
      throw CheckpointError(std::string("\"") + field + "\" is " + v.dump() + "; allowed: a list of integers >= 0");
    }
  }
  return out;
}

}  // namespace

Piece piece_from_json(const json& j) {
  Piece p;
  p.file = j.at("file").get<std::string>();
  p.name = j.at("name").get<std::string>();
  p.offsets = dims(j.at("offsets"), "offsets");
  p.shape = dims(j.at("shape"), "shape");
  const int64_t crc = integer(j.at("crc32"), "crc32");
  if (crc < 0 || crc > int64_t{UINT32_MAX}) {
    throw CheckpointError("piece " + p.name + ": \"crc32\" is " + std::to_string(crc) + "; allowed: 0 to 4294967295");
  }
  p.crc32 = static_cast<uint32_t>(crc);
  // A file of the checkpoint's own folder (a file-less piece is only ever one held in memory).
  if (p.file.empty() || p.file == "." || p.file == ".." || p.file.find('/') != std::string::npos) {
    throw CheckpointError("piece " + p.name + ": \"file\" is \"" + p.file +
                          "\"; allowed: the name of a file in the checkpoint folder");
  }
  if (j.contains("flat")) {
    const json& flat = j["flat"];
    if (!flat.is_array() || flat.size() != 2 || integer(flat[0], "flat") < 0 || integer(flat[1], "flat") < 0) {
      throw CheckpointError("piece " + p.name + ": \"flat\" is " + flat.dump() + "; allowed: [start >= 0, numel >= 0]");
    }
    p.flat_start = flat[0].get<int64_t>();
    p.flat_numel = flat[1].get<int64_t>();
  }
  if (p.offsets.size() != p.shape.size()) throw CheckpointError("piece " + p.name + ": offsets and shape differ in rank");
  int64_t volume = 1;
  for (size_t d = 0; d < p.shape.size(); ++d) {
    int64_t end = 0;
    if (__builtin_add_overflow(p.offsets[d], p.shape[d], &end) || __builtin_mul_overflow(volume, p.shape[d], &volume)) {
      throw CheckpointError("piece " + p.name + ": " + describe(p.offsets, p.shape) +
                            " reach past 2^63 elements; allowed: a rectangle of a tensor");
    }
  }
  if (!p.whole_rectangle() && (p.flat_numel > volume || p.flat_start > volume - p.flat_numel)) {
    throw CheckpointError("piece " + p.name + ": \"flat\" [" + std::to_string(p.flat_start) + ", " +
                          std::to_string(p.flat_numel) + "] is not within its " + std::to_string(volume) +
                          " elements (" + describe(p.offsets, p.shape) + ")");
  }
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
    std::string problem;
    try {
      entry.shape = dims(value.at("shape"), "shape");
      for (const json& p : value.at("pieces")) {
        entry.pieces.push_back(piece_from_json(p));
        if (entry.pieces.back().shape.size() != entry.shape.size()) problem = "a piece's rank is not the tensor's";
      }
    } catch (const json::exception& e) {
      problem = e.what();
    } catch (const CheckpointError& e) {
      problem = e.what();
    }
    if (!problem.empty()) {  // names the tensor, shows its entry and what an entry is
      std::string got = value.dump(-1, ' ', false, json::error_handler_t::replace);
      if (got.size() > 200) got = got.substr(0, 197) + "...";
      throw CheckpointError("checkpoint " + dir_ + ": manifest entry of tensor '" + key + "': " + problem +
                            "; got " + got + "; allowed: {\"shape\": [dims], \"pieces\": [{\"file\", \"name\", " +
                            "\"offsets\", \"shape\", \"crc32\"[, \"flat\": [start, numel]]}, ...]}");
    }
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

at::ScalarType ShardIndex::dtype(const std::string& key) {
  const TensorEntry& e = entry(key);
  SMP_CHECK(!e.pieces.empty());
  return dtype_of(e.pieces[0]);
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
      data = read_piece(*pieces[0]);
      if (data.numel() != r.volume()) {
        throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "': piece '" + pieces[0]->name + "' in " +
                              pieces[0]->file + " holds " + std::to_string(data.numel()) +
                              " elements; its rectangle (" + describe(r.lo, r.len) + ") has " +
                              std::to_string(r.volume()));
      }
      data = data.view(r.len);
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
  std::vector<const Piece*> ranges;  // the rectangle's flat ranges, when it is stored so
  for (const Piece& p : e.pieces) {
    if (p.offsets == offsets && p.shape == rect_shape && !p.whole_rectangle()) ranges.push_back(&p);
  }
  if (!ranges.empty()) return read_overlapping(key, ranges, flat_start, out);
  const std::string cache_key = key + "|" + describe(offsets, rect_shape);
  if (cache_key != cached_key_ || cached_.scalar_type() != out.scalar_type()) {
    cached_ = at::Tensor();  // freed before the next one is assembled
    cached_ = at::zeros(rect_shape, at::TensorOptions().dtype(out.scalar_type()));  // host
    read_region(key, offsets, cached_);
    cached_key_ = cache_key;
  }
  out.copy_(cached_.view(-1).narrow(0, flat_start, out.numel()));
}

void ShardIndex::read_overlapping(const std::string& key, const std::vector<const Piece*>& pieces,
                                  int64_t flat_start, at::Tensor out) {
  const int64_t end = flat_start + out.numel();
  int64_t covered = 0;
  for (const Piece* p : pieces) {
    const int64_t lo = std::max(flat_start, p->flat_start);
    const int64_t hi = std::min(end, p->flat_start + p->flat_numel);
    if (lo >= hi) continue;
    covered += hi - lo;
    if (p->flat_start == flat_start && p->flat_numel == out.numel() && out.is_contiguous() &&
        out.device().is_cpu() && dtype_of(*p) == out.scalar_type()) {
      read_piece(*p, out);  // the same layout: this very slice was saved
      continue;
    }
    const at::Tensor data = read_piece(*p).reshape(-1);
    out.narrow(0, lo - flat_start, hi - lo).copy_(data.narrow(0, lo - p->flat_start, hi - lo));
  }
  if (covered != out.numel()) {
    throw CheckpointError("checkpoint " + dir_ + ": tensor '" + key + "': its flat pieces cover " +
                          std::to_string(covered) + " of the elements [" + std::to_string(flat_start) +
                          ", " + std::to_string(end) + ") asked for (a rank's shard is missing)");
  }
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

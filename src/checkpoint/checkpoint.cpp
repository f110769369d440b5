// save_checkpoint and resume_from_checkpoint (see include/smp/checkpoint/checkpoint.h and
// docs/checkpoint_format.md).
#include "smp/checkpoint/checkpoint.h"

#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <set>

#include "shard_index.h"
#include "smp/checkpoint/safetensors.h"
#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/comm/agree.h"
#include "smp/data_parallel/parameter_shards.h"

namespace smp {
namespace {

using checkpoint::Piece;
using checkpoint::ShardIndex;
using nlohmann::json;
using Shape = std::vector<int64_t>;

constexpr const char* kFormat = "smp-checkpoint";
constexpr int kVersion = 1;

void check_tag(const std::string& tag) {
  const bool ok = !tag.empty() && tag != "." && tag != ".." &&
                  std::all_of(tag.begin(), tag.end(), [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                           c == '-';
                  });
  if (!ok) {
    throw ConfigError("checkpoint tag \"" + tag +
                      "\" is not allowed; use letters, digits, '.', '_' and '-'");
  }
}

std::string folder(const std::string& path, const std::string& tag, bool partial) {
  return path + "/" + tag + (partial ? "_partial" : "");
}

std::string rank_file(int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.safetensors", rank);
  return name;
}

// A parameter of this rank where it sits in its whole tensor, under the name a checkpoint
// stores it by (a tied copy goes by its original's name).
struct Placed {
  std::string name;
  at::Tensor tensor;
  Shape whole, offsets;
  bool tied_copy = false;
  bool writer = false;  // this rank writes it (replicas leave it to their group's first rank)
  bool sliced = false;  // held as ParamSlices (sharded data parallelism), not whole
};

// Sharded data parallelism: a run of this rank's slice of a parameter, in
// ParameterShards::shard(). Checkpoints write and read these in place, no bucket made whole.
struct ParamSlice {
  std::string param;  // the local parameter's name
  int64_t param_offset = 0;  // elements [param_offset, + values.numel()) of it, flattened
  at::Tensor values;  // a 1-D view into shard()
  bool writer = false;  // the first sharding group's; replicated parameters' on tp rank 0 only
};

dp::ParameterShards* parameter_shards(DistributedModel& model) {
  return model.gradient_reducer().parameter_shards();
}

std::vector<ParamSlice> parameter_slices(DistributedModel& model) {
  std::vector<ParamSlice> out;
  const dp::ParameterShards* shards = parameter_shards(model);
  if (shards == nullptr) return out;
  const dp::GradientReducer& reducer = model.gradient_reducer();
  for (const dp::Segment& s : shards->owned_segments()) {
    const std::string& name = reducer.params()[s.param].name;
    const bool tied_copy = model.options().tied_copies.count(name) > 0;
    out.push_back({name, s.param_offset, shards->shard().narrow(0, s.local_offset, s.numel),
                   !tied_copy && reducer.writes_state(s.bucket)});
  }
  return out;
}

std::vector<Placed> placed_parameters(DistributedModel& model) {
  const ParallelContext& context = model.context();
  std::vector<Placed> out;
  const auto& copies = model.options().tied_copies;
  std::set<std::string> sliced;
  if (parameter_shards(model) != nullptr) {
    for (const auto& p : model.gradient_reducer().params()) sliced.insert(p.name);
  }
  for (const auto& p : model.local_parameter_info()) {
    Placed x;
    x.sliced = sliced.count(p.name) > 0;
    auto copy = copies.find(p.name);
    x.tied_copy = copy != copies.end();
    x.name = x.tied_copy ? copy->second : p.name;
    x.tensor = p.tensor.detach();
    x.whole = p.tensor.sizes().vec();
    x.offsets.assign(x.whole.size(), 0);
    if (p.tp_shard.sharded()) {
      const auto dim = static_cast<size_t>(p.tp_shard.dim);
      x.offsets[dim] = context.tp_rank() * x.whole[dim];
      x.whole[dim] = p.tp_shard.size;
    }
    x.writer = !x.tied_copy && (p.tp_sharded ? context.rdp_rank() == 0 : context.dp_rank() == 0);
    out.push_back(std::move(x));
  }
  return out;
}

const Placed& find_placed(const std::vector<Placed>& placed, const std::string& local_name,
                          const DistributedModel& model) {
  const auto& copies = model.options().tied_copies;
  auto copy = copies.find(local_name);
  const std::string& name = copy == copies.end() ? local_name : copy->second;
  for (const Placed& p : placed) {
    if (p.name == name) return p;
  }
  throw CheckpointError("checkpoint: optimizer state for '" + local_name + "', a parameter this rank does not hold");
}

json layout_json(const DistributedModel& model) {
  const ParallelContext& context = model.context();
  return {{"world", context.size()}, {"pp", context.pp_size()}, {"tp", context.tp_size()}, {"rdp", context.rdp_size()},
          {"chunks_per_rank", model.options().chunks_per_rank},
          {"shard_optimizer_state", context.config().shard_optimizer_state}};
}

// Writes this rank's file into `dir`; returns {"file", "tensors": {key: {"shape", "pieces"}}}.
json write_shard(const std::string& dir, DistributedModel& model,
                 DistributedOptimizer* optimizer) {
  const ParallelContext& context = model.context();
  const std::string file = rank_file(context.rank());
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json entries = json::object();
  std::vector<std::pair<std::string, Piece>> pieces;  // (key, piece), checksums filled below
  auto add = [&](const std::string& key, const Placed& p, const at::Tensor& values,
                 int64_t flat_start, int64_t flat_numel) {
    Piece piece;
    piece.file = file;
    piece.name = flat_numel < 0 ? key : key + "@" + std::to_string(flat_start);
    piece.offsets = p.offsets;
    piece.shape = p.tensor.sizes().vec();
    piece.flat_start = flat_start;
    piece.flat_numel = flat_numel;
    if (!entries.contains(key)) entries[key] = {{"shape", p.whole}, {"pieces", json::array()}};
    pieces.emplace_back(key, piece);
    tensors.emplace_back(piece.name, values);
  };
  const std::vector<Placed> placed = placed_parameters(model);
  for (const Placed& p : placed) {
    if (p.writer && !p.sliced) add("model/" + p.name, p, p.tensor, 0, -1);
  }
  for (const ParamSlice& s : parameter_slices(model)) {
    const Placed& p = find_placed(placed, s.param, model);
    if (s.writer) add("model/" + p.name, p, s.values, s.param_offset, s.values.numel());
  }
  if (optimizer != nullptr) {
    for (const auto& s : optimizer->state_slices()) {
      // A tied copy's state equals its original's (same gradients, same updates): stored once,
      // under the original, wherever the copy sits.
      if (!s.owner || model.options().tied_copies.count(s.param) > 0) continue;
      const Placed& p = find_placed(placed, s.param, model);
      add("optim/" + p.name + "/" + s.state, p, s.values, s.param_offset, s.values.numel());
    }
  }
  // Per-rank state, restored only under the same layout: the layers' (dropout RNG streams)
  // and the default CPU generator.
  const std::map<std::string, at::Tensor> layer_state = model.local_layer_state();
  for (const auto& [key, t] : layer_state) tensors.emplace_back("state/" + key, t);
  tensors.emplace_back("rng/cpu", at::detail::getDefaultCPUGenerator().get_state());
  std::vector<uint32_t> crcs;
  checkpoint::save_safetensors(dir + "/" + file, tensors, {}, &crcs);
  for (size_t i = 0; i < pieces.size(); ++i) {
    pieces[i].second.crc32 = crcs[i];
    entries[pieces[i].first]["pieces"].push_back(checkpoint::to_json(pieces[i].second));
  }
  json states = json::object();
  size_t i = pieces.size();
  for (const auto& [key, t] : layer_state) states[key] = crcs[i++];
  return {{"file", file}, {"rank", context.rank()}, {"pp", context.pp_rank()}, {"tp", context.tp_rank()},
          {"rdp", context.rdp_rank()}, {"rng_crc32", crcs.back()}, {"layer_state", states},
          {"tensors", entries}};
}

// A tensor of a full checkpoint's model.safetensors: a view (`spec`, on the meta device) of the
// whole smp tensor `source`.
struct FileTensor {
  std::string name;
  at::Tensor spec;
  std::string source;
};

// model.safetensors' tensors, found by running format.to_file on meta tensors shaped like the
// whole weights: each output must be a view of one input (renamed, reshaped, transposed or
// split), which lets consolidate() make it from that input alone. Empty when one is not.
std::vector<FileTensor> file_tensors(ShardIndex& index, const FullCheckpointFormat& format) {
  std::map<std::string, at::Tensor> specs;
  std::map<const void*, std::string> source_of;
  for (const std::string& key : index.keys()) {
    if (key.rfind("model/", 0) != 0) continue;
    const at::Tensor t = at::empty(index.entry(key).shape, at::device(at::kMeta).dtype(index.dtype(key)));
    specs[key.substr(6)] = t;
    source_of[t.storage().unsafeGetStorageImpl()] = key.substr(6);
  }
  std::vector<std::pair<std::string, at::Tensor>> outputs(specs.begin(), specs.end());
  if (format.to_file) outputs = format.to_file(specs);
  std::vector<FileTensor> out;
  for (auto& [name, t] : outputs) {
    const auto it = source_of.find(t.defined() ? t.storage().unsafeGetStorageImpl() : nullptr);
    if (it == source_of.end() || !t.is_meta()) return {};
    out.push_back({name, t, it->second});
  }
  return out;
}

// Writes model.safetensors one weight at a time: each read whole from the shards, then the file
// tensors made from it, so rank 0 holds one weight, not the model. Returns the tensors written
// with their checksums.
std::vector<std::pair<FileTensor, uint32_t>> write_weights(const std::string& file, ShardIndex& index,
                                                           const std::vector<FileTensor>& tensors) {
  std::vector<std::pair<std::string, at::Tensor>> specs;
  for (const FileTensor& t : tensors) specs.emplace_back(t.name, t.spec);
  std::string held_name;
  at::Tensor held;
  std::vector<uint32_t> crcs;
  checkpoint::save_safetensors_streamed(file, specs, [&](size_t i) {
    const FileTensor& t = tensors[i];
    if (t.source != held_name) {
      held = at::Tensor();  // freed before the next one is read
      held = index.read_whole("model/" + t.source);
      held_name = t.source;
    }
    return held.as_strided(t.spec.sizes(), t.spec.strides(), t.spec.storage_offset());
  }, {{"format", "pt"}}, &crcs);
  std::vector<std::pair<FileTensor, uint32_t>> out;
  for (size_t i = 0; i < tensors.size(); ++i) out.emplace_back(tensors[i], crcs[i]);
  return out;
}

// model.safetensors when format.to_file makes new tensors (file_tensors() found none): from
// every weight at once.
void write_weights_at_once(const std::string& file, ShardIndex& index, const FullCheckpointFormat& format) {
  std::map<std::string, at::Tensor> weights;
  for (const std::string& key : index.keys()) {
    if (key.rfind("model/", 0) == 0) weights[key.substr(6)] = index.read_whole(key);
  }
  checkpoint::save_safetensors(file, format.to_file(weights), {{"format", "pt"}});
}

// A whole tensor stored as `name` in `file` of a full checkpoint, as a manifest entry.
json whole_entry(const std::string& file, const std::string& name, const at::Tensor& spec, uint32_t crc) {
  Piece piece;
  piece.file = file;
  piece.name = name;
  piece.shape = spec.sizes().vec();
  piece.offsets.assign(piece.shape.size(), 0);
  piece.crc32 = crc;
  return {{"shape", piece.shape}, {"pieces", {checkpoint::to_json(piece)}}};
}

// optimizer.safetensors ("<parameter>/<state>", whole shapes), one state tensor at a time;
// returns their manifest entries.
json write_optimizer_state(const std::string& file, ShardIndex& index) {
  std::vector<std::pair<std::string, at::Tensor>> specs;
  for (const std::string& key : index.keys()) {
    if (key.rfind("optim/", 0) != 0) continue;
    specs.emplace_back(key.substr(6), at::empty(index.entry(key).shape, at::device(at::kMeta).dtype(index.dtype(key))));
  }
  if (specs.empty()) return json::object();
  std::vector<uint32_t> crcs;
  checkpoint::save_safetensors_streamed(file, specs, [&](size_t i) {
    return index.read_whole("optim/" + specs[i].first);
  }, {}, &crcs);
  json tensors = json::object();
  for (size_t i = 0; i < specs.size(); ++i) {
    tensors["optim/" + specs[i].first] = whole_entry("optimizer.safetensors", specs[i].first, specs[i].second, crcs[i]);
  }
  return tensors;
}

// Rank 0: the full checkpoint's files from the partial shards in `dir`, which it then removes.
// One tensor at a time: rank 0 never holds the model or its optimizer state whole (unless
// format.to_file computes new tensors: write_weights_at_once).
void consolidate(const std::string& dir, json& manifest, const FullCheckpointFormat& format) {
  ShardIndex index(dir, manifest["tensors"]);
  json tensors = write_optimizer_state(dir + "/optimizer.safetensors", index);
  const std::vector<FileTensor> views = file_tensors(index, format);
  const bool indexed = !views.empty() && !format.to_file;
  if (views.empty() && format.to_file) {
    write_weights_at_once(dir + "/model.safetensors", index, format);
  } else {
    for (const auto& [t, crc] : write_weights(dir + "/model.safetensors", index, views)) {
      // smp's names and shapes: the manifest indexes the weights, so a load reads its part.
      if (indexed) tensors["model/" + t.name] = whole_entry("model.safetensors", t.name, t.spec, crc);
    }
  }
  if (!format.config.is_null()) {
    files::write_file_atomic(dir + "/config.json", format.config.dump(2) + "\n", true);
  }
  for (const json& r : manifest["ranks"]) files::remove_tree(dir + "/" + r["file"].get<std::string>());
  manifest["ranks"] = json::array();
  manifest["tensors"] = tensors;  // the optimizer state, and the weights when indexed
  manifest["weights"] = {{"file", "model.safetensors"}, {"translated", bool(format.to_file)},
                         {"indexed", indexed}};
}

// Moves `tmp` onto `final_dir`. An older checkpoint of the same tag is swapped out in one atomic
// step, so at every moment `final_dir` is a whole checkpoint, the old one or the new one; a
// crash leaves at most the old one under `tmp` (a .tmp folder: resume skips it, the next save
// removes it). Where the filesystem cannot swap, the old one is first moved to `final_dir.old`,
// which resume loads if a crash leaves no `final_dir` (old_copy_of).
void commit(const std::string& tmp, const std::string& final_dir) {
  if (!files::exists(final_dir)) return files::rename_durable(tmp, final_dir);
  if (files::exchange_durable(tmp, final_dir)) return files::remove_tree(tmp);
  const std::string old = final_dir + ".old";
  files::remove_tree(old);
  files::rename_durable(final_dir, old);
  files::rename_durable(tmp, final_dir);
  files::remove_tree(old);
}

// `dir`, or its `.old` copy when a save that could not swap (commit) stopped between its renames.
std::string old_copy_of(const std::string& dir) {
  if (!files::exists(dir + "/manifest.json") && files::exists(dir + ".old/manifest.json")) {
    return dir + ".old";
  }
  return dir;
}

json read_manifest_at(const std::string& dir) {
  const std::string file = dir + "/manifest.json";
  json m;
  try {
    m = json::parse(files::read_file(file));
  } catch (const json::exception& e) {
    throw CheckpointError("checkpoint manifest " + file + " is not valid JSON: " + e.what());
  }
  // Any JSON may be on disk: look before reading a field (json's own errors name neither the file nor the field).
  const json format = m.is_object() && m.contains("format") ? m["format"] : json("?");
  const json version = m.is_object() && m.contains("version") ? m["version"] : json("?");
  if (format != kFormat || !version.is_number_integer() || version.get<int64_t>() < 1 ||
      version.get<int64_t>() > kVersion) {
    throw CheckpointError("checkpoint manifest " + file + ": " +
                          (m.is_object() ? "format " + format.dump() + " version " + version.dump()
                                         : std::string("a JSON ") + m.type_name() + ", not an object") +
                          "; this smp reads " + kFormat + " versions 1 to " + std::to_string(kVersion));
  }
  return m;
}

// Complete checkpoints of one kind in `path`, newest first.
std::vector<std::pair<int64_t, std::string>> complete_checkpoints(const std::string& path, bool partial) {
  std::vector<std::pair<int64_t, std::string>> out;
  for (const std::string& name : files::list_dir(path)) {
    const std::string dir = path + "/" + name;
    if (!files::exists(dir + "/manifest.json") || name.size() > 4 && name.substr(name.size() - 4) == ".tmp") continue;
    const bool is_partial = name.size() > 8 && name.substr(name.size() - 8) == "_partial";
    if (is_partial != partial) continue;
    try {
      out.emplace_back(read_manifest_at(dir).value("saved_at_ns", int64_t{0}), dir);
    } catch (const Error&) {
      continue;  // unreadable: not a candidate
    }
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

void prune(const std::string& path, int keep) {
  const auto all = complete_checkpoints(path, /*partial=*/true);
  for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i) files::remove_tree(all[i].second);
}

// The folder resume_from_checkpoint loads, with a message for every incomplete one skipped.
std::string choose_folder(const std::string& path, const std::string& tag, bool partial, bool verbose) {
  if (!tag.empty()) {
    check_tag(tag);
    const std::string dir = old_copy_of(folder(path, tag, partial));
    if (!files::exists(dir + "/manifest.json")) {
      throw CheckpointError("resume_from_checkpoint: " + dir + " is not a complete checkpoint (no manifest.json" +
                  (files::exists(dir + ".tmp") ? "; " + dir + ".tmp is a save that did not finish)" : ")"));
    }
    return dir;
  }
  if (verbose && files::is_dir(path)) {
    for (const std::string& name : files::list_dir(path)) {
      if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") {
        std::printf("smp: skipping incomplete checkpoint %s/%s (a save that did not finish)\n",
                    path.c_str(), name.c_str());
      }
    }
  }
  std::string newest;
  if (files::exists(path + "/newest")) {
    newest = files::read_file(path + "/newest");
    newest.erase(newest.find_last_not_of(" \n\r\t") + 1);
    const std::string dir = old_copy_of(folder(path, newest, partial));
    if (!newest.empty() && files::exists(dir + "/manifest.json")) return dir;
  }
  if (!files::is_dir(path)) throw CheckpointError("resume_from_checkpoint: no checkpoint folder " + path);
  const auto all = complete_checkpoints(path, partial);
  if (all.empty()) {
    throw CheckpointError(std::string("resume_from_checkpoint: no complete ") + (partial ? "partial" : "full") +
                " checkpoint in " + path);
  }
  if (verbose && !newest.empty()) {
    std::printf("smp: %s/newest names \"%s\", which is not a complete %s checkpoint; loading %s\n",
                path.c_str(), newest.c_str(), partial ? "partial" : "full", all.front().second.c_str());
  }
  return all.front().second;
}

// The key parameter `p` loads from: its fp32 master under mixed precision (the exact value; the
// bf16/fp16 weight is its rounding), else its weights; empty when the checkpoint has neither.
std::string parameter_key(const ShardIndex& index, const Placed& p) {
  const std::string master = "optim/" + p.name + "/fp32_master";
  const std::string key = index.contains(master) ? master : "model/" + p.name;
  if (!index.contains(key)) return "";
  const Shape& stored = index.entry(key).shape;
  if (stored != p.whole) {
    throw ConfigError("checkpoint parameter '" + p.name + "' has shape " +
                      c10::str(at::IntArrayRef(stored)) + "; the model's is " +
                      c10::str(at::IntArrayRef(p.whole)));
  }
  return key;
}

void load_whole(ShardIndex& index, const std::string& key, const Placed& p) {
  // Padding rows (past the whole tensor) are zero.
  for (size_t d = 0; d < p.whole.size(); ++d) {
    const int64_t valid =
        std::clamp<int64_t>(p.whole[d] - p.offsets[d], 0, p.tensor.size(static_cast<int64_t>(d)));
    const auto dim = static_cast<int64_t>(d);
    if (valid < p.tensor.size(dim)) p.tensor.narrow(dim, valid, p.tensor.size(dim) - valid).zero_();
  }
  index.read_region(key, p.offsets, p.tensor);
}

// Whole parameters are read in place; sharded data parallelism's slices (`slices`) straight
// into the shards, each reading only the pieces that overlap it.
void load_parameters(ShardIndex& index, const std::vector<Placed>& placed,
                     const std::vector<ParamSlice>& slices, const DistributedModel& model, bool strict) {
  at::NoGradGuard no_grad;
  std::vector<std::string> missing;
  for (const Placed& p : placed) {
    const std::string key = parameter_key(index, p);
    if (key.empty()) {
      missing.push_back(p.name);
    } else if (!p.sliced) {
      load_whole(index, key, p);
    }
  }
  for (const ParamSlice& s : slices) {
    const Placed& p = find_placed(placed, s.param, model);
    const std::string key = parameter_key(index, p);
    if (!key.empty()) index.read_flat(key, p.offsets, p.tensor.sizes().vec(), s.param_offset, s.values);
  }
  if (strict && !missing.empty()) {
    std::string names;
    for (const auto& n : missing) names += (names.empty() ? "" : ", ") + n;
    throw ConfigError("checkpoint has no parameter " + names + " (strict; pass strict=false to keep their values)");
  }
}

// Elements [offset, offset + numel) of local parameter `local` (placed as `p`), flattened: from
// the slices under sharded data parallelism.
at::Tensor parameter_values(const Placed& p, const std::string& local, int64_t offset, int64_t numel,
                            const std::vector<ParamSlice>& slices) {
  if (!p.sliced) return p.tensor.reshape(-1).narrow(0, offset, numel);
  for (const ParamSlice& s : slices) {
    if (s.param == local && s.param_offset == offset && s.values.numel() == numel) return s.values;
  }
  SMP_CHECK(false && "an optimizer state slice that is not one of the parameter's slices");
  return {};
}

void load_optimizer_state(ShardIndex& index, const std::vector<Placed>& placed,
                          const std::vector<ParamSlice>& slices, const DistributedModel& model,
                          DistributedOptimizer& optimizer, const json& meta, bool load, bool strict) {
  for (const auto& s : optimizer.state_slices()) {
    const Placed& p = find_placed(placed, s.param, model);
    const std::string key = "optim/" + p.name + "/" + s.state;
    if (load && index.contains(key)) {
      index.read_flat(key, p.offsets, p.tensor.sizes().vec(), s.param_offset, s.values);
    } else if (s.state == "fp32_master") {  // masters follow the loaded parameters
      s.values.copy_(parameter_values(p, s.param, s.param_offset, s.values.numel(), slices));
    } else if (load && strict) {
      throw ConfigError("checkpoint has no optimizer state '" + key.substr(6) +
                        "' (strict; pass strict=false to start it from zero)");
    }
  }
  if (load) optimizer.load_state_meta(meta);
}

int saved_stages(const json& manifest) {
  const auto stages = manifest["partition"]["stage_of_layer"].get<std::vector<int>>();
  return stages.empty() ? 0 : *std::max_element(stages.begin(), stages.end()) + 1;
}

// SMP keeps the partition of the checkpoint on resume, when the pipeline is the same.
bool adopt_partition(const json& manifest, DistributedModel& model) {
  if (saved_stages(manifest) != model.num_stages() || manifest["layout"]["pp"].get<int>() != model.context().pp_size() ||
      manifest["partition"]["layers"].get<std::vector<std::string>>() != model.layer_names()) {
    return false;
  }
  model.set_partition_assignment(manifest["partition"]["stage_of_layer"].get<std::vector<int>>());
  return true;
}

std::string probe_file(const std::string& path, const std::string& stamp, int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "_rank_%05d", rank);
  return path + "/.smp_shared_probe_" + stamp + name;
}

// Rank 0: removes the probes it sees; throws naming the ranks whose probe it does not see.
void look_for_probes(const std::string& path, const std::string& stamp, int world_size) {
  std::vector<int> unseen;
  for (int r = 0; r < world_size; ++r) {
    const std::string probe = probe_file(path, stamp, r);
    if (files::exists(probe)) {
      files::remove_tree(probe);
    } else {
      unseen.push_back(r);
    }
  }
  if (unseen.empty()) return;
  constexpr size_t kNamed = 16;  // a thousand node-local disks need not be listed one by one
  std::string ranks;
  for (size_t i = 0; i < std::min(unseen.size(), kNamed); ++i) {
    ranks += (i == 0 ? "" : ", ") + std::to_string(unseen[i]);
  }
  if (unseen.size() > kNamed) ranks += " and " + std::to_string(unseen.size() - kNamed) + " more";
  const std::string whose = unseen.size() > 1 ? "files of ranks " : "file of rank ";
  throw CheckpointError("checkpoint folder " + path + " is not shared by all ranks: rank 0 does " +
                        "not see the probe " + whose + ranks + " (" +
                        probe_file(path, stamp, unseen.front()) + "); checkpoints need a file " +
                        "system that every rank sees (a shared one such as NFS, FSx for Lustre " +
                        "or Lustre), not a node's local disk");
}

// Every rank writes its shard into one folder that rank 0 then commits, so `path` must be one
// file system every rank sees. Checked at the first save to each path in this process (the
// ranks call save_checkpoint alike, so they agree on when): each rank leaves a probe file named
// by its rank in `path`, rank 0 looks for all of them, and the probes go.
void check_shared(const std::string& path, comm::Communicator& world) {
  static std::mutex mutex;
  static std::set<std::string> checked;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (checked.count(path) > 0) return;
  }
  // Names of this check alone, so a probe an earlier run left behind does not pass for one.
  const std::string stamp = comm::on_rank0("save_checkpoint: checking " + path, [] {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    return std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()) + "_" +
           std::to_string(::getpid());
  }, world);
  const std::string mine = probe_file(path, stamp, world.rank());
  try {
    comm::on_every_rank("save_checkpoint: writing a probe file into " + path, [&] {
      files::make_dirs(path);
      files::write_file_atomic(mine, "");
    }, world);
    comm::on_every_rank("save_checkpoint: checking that every rank shares " + path, [&] {
      if (world.rank() == 0) look_for_probes(path, stamp, world.size());
    }, world);
  } catch (...) {
    ::unlink(mine.c_str());  // where rank 0 did not see it (or did not look)
    throw;
  }
  std::lock_guard<std::mutex> lock(mutex);
  checked.insert(path);
}

}  // namespace

void save_checkpoint(const std::string& path, const std::string& tag, bool partial,
                     DistributedModel& model, DistributedOptimizer* optimizer,
                     const json& user_content, int num_kept_partial_checkpoints,
                     const FullCheckpointFormat& format,
                     const std::function<void()>& after_shard_written) {
  const ParallelContext& context = model.context();
  check_tag(tag);
  if (num_kept_partial_checkpoints < 0) {
    throw ConfigError("num_kept_partial_checkpoints: got " + std::to_string(num_kept_partial_checkpoints) +
                      "; allowed: 0 (keep all) or more");
  }
  if (!model.partitioned()) {
    throw ConfigError("save_checkpoint: the model is not partitioned yet; run a step (or partition()) first");
  }
  check_shared(path, context.group(CommGroup::WORLD));
  const std::string final_dir = folder(path, tag, partial);
  const std::string tmp = final_dir + ".tmp";
  comm::on_every_rank("save_checkpoint: preparing " + tmp, [&] {
    if (context.rank() != 0) return;
    files::make_dirs(path);
    files::remove_tree(tmp);
    files::make_dirs(tmp);
  }, context.group(CommGroup::WORLD));
  json mine;
  comm::on_every_rank("save_checkpoint: writing " + tmp, [&] {
    mine = write_shard(tmp, model, optimizer);
    if (after_shard_written) after_shard_written();
  }, context.group(CommGroup::WORLD));
  const std::vector<std::string> shards = comm::allgather_objects(mine.dump(), context.group(CommGroup::WORLD));
  const json optimizer_meta = optimizer != nullptr ? optimizer->state_meta() : json(nullptr);
  comm::on_every_rank("save_checkpoint: committing " + final_dir, [&] {
    if (context.rank() != 0) return;
    json manifest = {
        {"format", kFormat}, {"version", kVersion}, {"tag", tag}, {"partial", partial},
        {"saved_at_ns", std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count()},
        {"layout", layout_json(model)},
        {"partition", {{"layers", model.layer_names()},
                       {"stage_of_layer", model.partition_assignment().stage_of_layer}}},
        {"optimizer", optimizer_meta}, {"user_content", user_content},
        {"ranks", json::array()}, {"tensors", json::object()}};
    for (const std::string& text : shards) {
      json shard = json::parse(text);
      for (auto& [key, entry] : shard["tensors"].items()) {
        json& all = manifest["tensors"][key];
        if (all.is_null()) all = {{"shape", entry["shape"]}, {"pieces", json::array()}};
        for (auto& piece : entry["pieces"]) all["pieces"].push_back(piece);
      }
      shard.erase("tensors");
      manifest["ranks"].push_back(shard);
    }
    if (!partial) consolidate(tmp, manifest, format);
    files::write_file_atomic(tmp + "/manifest.json", manifest.dump(1) + "\n", /*durable=*/true);
    files::fsync_path(tmp);
    commit(tmp, final_dir);
    files::write_file_atomic(path + "/newest", tag + "\n", /*durable=*/true);
    if (partial && num_kept_partial_checkpoints > 0) prune(path, num_kept_partial_checkpoints);
  }, context.group(CommGroup::WORLD));
}

bool use_checkpoint_partition(const std::string& path, DistributedModel& model,
                              const std::string& tag, bool partial) {
  json manifest;
  comm::on_every_rank("use_checkpoint_partition: reading the manifest", [&] {
    manifest = read_manifest_at(choose_folder(path, tag, partial, /*verbose=*/false));
  }, model.context().group(CommGroup::WORLD));
  return !model.partitioned() && adopt_partition(manifest, model);
}

json read_checkpoint_manifest(const std::string& path, const std::string& tag, bool partial) {
  return read_manifest_at(choose_folder(path, tag, partial, /*verbose=*/false));
}

json resume_from_checkpoint(const std::string& path, DistributedModel& model,
                            DistributedOptimizer* optimizer, const std::string& tag, bool partial,
                            bool strict, bool load_optimizer, const FullCheckpointFormat& format) {
  const ParallelContext& context = model.context();
  std::string dir;
  json manifest;
  comm::on_every_rank("resume_from_checkpoint: reading the manifest", [&] {
    dir = choose_folder(path, tag, partial, /*verbose=*/context.rank() == 0);
    manifest = read_manifest_at(dir);
  }, context.group(CommGroup::WORLD));
  if (context.rank() == 0) {
    std::printf("smp: resuming from %s\n", dir.c_str());
    std::fflush(stdout);
  }
  if (!model.partitioned() && !adopt_partition(manifest, model)) {
    throw ConfigError("resume_from_checkpoint: the checkpoint was saved with " +
                      std::to_string(saved_stages(manifest)) + " pipeline stages over pp " +
                      manifest["layout"]["pp"].dump() + "; this run has " +
                      std::to_string(model.num_stages()) + " over pp " + std::to_string(context.pp_size()) +
                      ": partition the model first (model.partition), then resume");
  }
  const std::vector<Placed> placed = placed_parameters(model);
  const std::vector<ParamSlice> slices = parameter_slices(model);
  comm::on_every_rank("resume_from_checkpoint: loading " + dir, [&] {
    ShardIndex index(dir, manifest["tensors"]);
    // A full checkpoint whose weights the manifest does not index (translated, or older): all
    // of them in memory.
    if (manifest.contains("weights") && !manifest["weights"].value("indexed", false)) {
      auto tensors = checkpoint::load_safetensors(dir + "/" + manifest["weights"]["file"].get<std::string>());
      if (manifest["weights"]["translated"].get<bool>()) {
        if (!format.from_file) {
          throw ConfigError("resume_from_checkpoint: " + dir + " holds translated weights; "
                            "pass the FullCheckpointFormat that wrote them");
        }
        tensors = format.from_file(tensors);
      }
      for (auto& [name, t] : tensors) index.add_memory("model/" + name, t);
    }
    load_parameters(index, placed, slices, model, strict);
    if (optimizer != nullptr) {
      const bool load = load_optimizer && !manifest["optimizer"].is_null();
      if (load_optimizer && strict && !load) {
        throw ConfigError("resume_from_checkpoint: " + dir + " holds no optimizer state "
                          "(pass load_optimizer=false)");
      }
      load_optimizer_state(index, placed, slices, model, *optimizer, manifest["optimizer"], load, strict);
    }
    if (manifest["layout"] == layout_json(model)) {  // the same layout: each rank's RNG states
      for (const json& r : manifest["ranks"]) {
        if (r["rank"].get<int>() != context.rank()) continue;
        const std::string path_of_file = dir + "/" + r["file"].get<std::string>();
        const checkpoint::SafetensorsReader file(path_of_file);
        auto checked = [&](const std::string& name, uint32_t crc) {
          const at::Tensor t = file.read(name);
          if (checkpoint::crc32_of(t) != crc) {
            throw CheckpointError("checkpoint file " + path_of_file + ": tensor '" + name +
                        "' fails its checksum: the file is corrupted");
          }
          return t;
        };
        std::map<std::string, at::Tensor> layer_state;
        const json saved_states = r.value("layer_state", json::object());
        for (const auto& [key, crc] : saved_states.items()) {
          layer_state[key] = checked("state/" + key, crc.get<uint32_t>());
        }
        model.load_local_layer_state(layer_state);
        const at::Tensor state = checked("rng/cpu", r["rng_crc32"].get<uint32_t>());
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(generator.mutex());
        generator.set_state(state);
      }
    }
  }, context.group(CommGroup::WORLD));
  // The shards hold the loaded values; the persistent buckets are gathered from them.
  if (parameter_shards(model) != nullptr) parameter_shards(model)->after_update();
  if (strict) {  // every stored parameter must have been taken by some rank
    std::string mine;
    for (const Placed& p : placed) mine += p.name + "\n";
    std::set<std::string> used;
    for (const std::string& names : comm::allgather_objects(mine, context.group(CommGroup::WORLD))) {
      for (size_t a = 0, b; a < names.size(); a = b + 1) {
        b = names.find('\n', a);
        used.insert(names.substr(a, b - a));
      }
    }
    std::string unused;
    for (const auto& [key, entry] : manifest["tensors"].items()) {
      if (key.rfind("model/", 0) == 0 && !used.count(key.substr(6))) unused += " " + key.substr(6);
    }
    if (!unused.empty()) {
      throw ConfigError("resume_from_checkpoint: " + dir + " has parameters this model lacks:" +
                        unused + " (strict; pass strict=false to ignore them)");
    }
  }
  return manifest["user_content"];
}

}  // namespace smp

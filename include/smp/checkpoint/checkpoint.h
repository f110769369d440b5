// SMP's checkpoints: save_checkpoint / resume_from_checkpoint, partial (a shard per rank) and
// full (consolidated, Hugging Face-compatible when the model says how), reshardable on load;
// and SMP's smp.save / smp.load of a rank's own tensors.
//
//   smp::save_checkpoint("ckpt", "step_100", /*partial=*/true, model, &optimizer,
//                        {{"step", 100}}, /*num_kept_partial_checkpoints=*/3);
//   ... later, under any pp/tp/dp/ZeRO layout:
//   nlohmann::json user = smp::resume_from_checkpoint("ckpt", model, &optimizer);  // newest
//
// Folder layout (SMP's): path/<tag>_partial/ for a partial checkpoint, path/<tag>/ for a full
// one, path/newest naming the last tag saved. A partial checkpoint holds one safetensors file
// per writing rank (parameters, optimizer state — ZeRO shards included — and the rank's RNG
// state) and manifest.json: the format version, the layout, the partition, the optimizer's
// options, step counts and loss scaler, the user content, and for every tensor its whole shape
// and where each piece of it lies (offsets in the whole tensor, a flat range for ZeRO shards,
// file, CRC-32). Loading reads, for each tensor this rank holds under the current layout, the
// parts of the pieces that overlap it: any layout loads any other, with no offline step.
// docs/checkpoint_format.md has the details.
//
// Saving is atomic: everything goes to path/<tag>_partial.tmp (or <tag>.tmp), each file
// fsynced, the manifest last, then one rename; `newest` is rewritten after that. A save that
// dies half-way leaves only a *.tmp folder, which resume skips with a message. Replicated
// tensors are written once (by the first rank of their data-parallel or tensor-parallel group).
//
// Under sharded data parallelism neither call makes the model whole: each rank writes and reads
// its own slices of the parameters (flat pieces, like ZeRO's optimizer state), and a full save's
// consolidation on rank 0 holds one tensor at a time.
//
// Both calls are collective over the world. Every error is reported on every rank (an
// smp::CheckpointError naming the folder, file or tensor and what is wrong; ConfigError for bad
// arguments).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "smp/distributed_model.h"
#include "smp/distributed_optimizer.h"

namespace smp {

// How a full checkpoint writes the consolidated weights (SMP's translate_if_full /
// translate_function). The default keeps smp's parameter names ("block.0.qkv.weight");
// smp-train passes Hugging Face's (models/hf.h), so transformers loads the folder.
struct FullCheckpointFormat {
  using Tensors = std::map<std::string, at::Tensor>;
  // Whole smp-named tensors -> the tensors model.safetensors holds, in file order.
  std::function<std::vector<std::pair<std::string, at::Tensor>>(const Tensors&)> to_file;
  // model.safetensors' tensors -> whole smp-named tensors.
  std::function<Tensors(const Tensors&)> from_file;
  // Written as config.json next to the weights when not null.
  nlohmann::json config;
};

// SMP's smp.save_checkpoint. `tag` names the checkpoint (letters, digits, '.', '_', '-').
// partial: each rank writes its shard; full: rank 0 consolidates the weights into
// path/<tag>/model.safetensors (through `format`) and the optimizer state into
// optimizer.safetensors ("<parameter>/<state>", whole shapes). `optimizer` may be null.
// num_kept_partial_checkpoints > 0 deletes the oldest partial checkpoints beyond that many.
// `after_shard_written`, for fault-injection tests only: runs on every rank right after it
// wrote its shard, before the manifest (a test kills a rank there).
void save_checkpoint(const std::string& path, const std::string& tag, bool partial,
                     DistributedModel& model, DistributedOptimizer* optimizer,
                     const nlohmann::json& user_content = nullptr,
                     int num_kept_partial_checkpoints = 0, const FullCheckpointFormat& format = {},
                     const std::function<void()>& after_shard_written = {});

// SMP's smp.resume_from_checkpoint: loads the model's parameters and (load_optimizer) the
// optimizer's state from checkpoint `tag` (empty: the one path/newest names; if that one is
// incomplete, the newest complete one, with a message) and returns its user content. A model
// not partitioned yet takes the checkpoint's partition when the stage count is the same (SMP:
// the partition is fixed after resume); otherwise partition it first. strict: every parameter
// must be in the checkpoint and every checkpoint parameter must be used. The RNG state is
// restored when the layout is the same. Resharding needs no extra step.
nlohmann::json resume_from_checkpoint(const std::string& path, DistributedModel& model,
                                      DistributedOptimizer* optimizer, const std::string& tag = "",
                                      bool partial = true, bool strict = true,
                                      bool load_optimizer = true,
                                      const FullCheckpointFormat& format = {});

// SMP's smp.save / smp.load for tensors (a state dict) with optional JSON (`extra`, kept in
// the safetensors metadata). Not collective: the calling rank reads or writes (SMP's users call
// save on rdp_rank() == 0). partial: the file is this rank's, `path` with SMP's suffixes
// appended, "_<pp_rank>_<tp_rank>", and "_<rdp_rank>" with shard_optimizer_state; full: `path`
// itself. Atomic writes (save_safetensors); errors name the file.
void save(const std::map<std::string, at::Tensor>& tensors, const std::string& path,
          bool partial = true, const nlohmann::json& extra = nullptr);
// Returns the tensors; `extra`, when given, receives the JSON saved with them (null if none).
std::map<std::string, at::Tensor> load(const std::string& path, bool partial = true,
                                       nlohmann::json* extra = nullptr);
// The file save/load use on this rank: `path`, with SMP's suffixes when partial.
std::string rank_path(const std::string& path, bool partial = true);

// Partitions a model not partitioned yet the way checkpoint `tag` (empty: the newest) was, when
// the checkpoint's pipeline has as many stages over the same pp and the same layers; returns
// false, leaving the model as it is, otherwise (partition it then; resuming reshards).
// Collective over the world.
bool use_checkpoint_partition(const std::string& path, DistributedModel& model,
                              const std::string& tag = "", bool partial = true);

// The manifest of the checkpoint resume_from_checkpoint would load (its layout, partition,
// user content...), read by the calling rank alone. Throws when there is none.
nlohmann::json read_checkpoint_manifest(const std::string& path, const std::string& tag = "",
                                        bool partial = true);

}  // namespace smp

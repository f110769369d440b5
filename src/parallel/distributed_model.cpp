// DistributedModel: partitioning on the first step, this rank's stages, schedules per
// microbatch count (see distributed_model.h).
#include "smp/distributed_model.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "smp/core/files.h"
#include "smp/pipeline/profile.h"
#include "smp/pipeline/recompute.h"
#include "smp/pipeline/timeline.h"
#include "smp/comm/agree.h"
#include "smp/runtime.h"  // the convenience constructor only

namespace smp {

using pipeline::LayerCost;
using pipeline::Partition;

DistributedModel::DistributedModel(std::vector<Layer> layers, DistributedModelOptions options)
    : DistributedModel(smp::context(), std::move(layers), std::move(options)) {}

DistributedModel::DistributedModel(ParallelContext& context, std::vector<Layer> layers,
                                   DistributedModelOptions options)
    : context_(context), layers_(std::move(layers)), options_(std::move(options)) {
  if (options_.chunks_per_rank < 1) {
    throw ConfigError("chunks_per_rank: got " + std::to_string(options_.chunks_per_rank) +
                      "; allowed: an integer >= 1");
  }
  if (layers_.empty()) throw ConfigError("DistributedModel: the model has no layers");
  if (options_.backward_passes_per_step < 1) {
    throw ConfigError("backward_passes_per_step: got " + std::to_string(options_.backward_passes_per_step) +
                      "; allowed: an integer >= 1");
  }
  if (context_.config().fp16_params) build_in_fp16();
  require_nccl_transport();
}

// SMP's ddp_dist_backend: "auto" lets SMP pick its own collectives (SMDDP's) where they apply;
// "nccl" forces NCCL. smp has no collectives of its own: data parallelism's collectives on
// device tensors always go over NCCL, and on host tensors over MPI. So "auto" is what smp
// always does, and "nccl" is a promise smp can keep only for a model on a GPU.
void DistributedModel::require_nccl_transport() const {
  if (context_.config().ddp_dist_backend != DdpBackend::kNccl) return;
  std::optional<at::Device> runs_on = options_.device;  // else where the parameters are
  for (const Layer& layer : layers_) {
    if (!runs_on && !layer.parameters.empty()) runs_on = layer.parameters[0].device();
  }
  const at::Device device = runs_on.value_or(at::Device(at::kCPU));
  if (!device.is_cuda()) {
    throw ConfigError("config key \"ddp_dist_backend\": got \"nccl\", but the model runs on " + device.str() +
                      ", where data-parallel collectives go over MPI; allowed: \"nccl\" for a model on a "
                      "GPU (NCCL), \"auto\" anywhere");
  }
}

// SMP's fp16_params: the parameters become fp16 as the model is built (set_data keeps each
// tensor's identity, so optimizers and tied layers still see it), so the whole model is never
// held in fp32. Under delayed initialisation the parameters hold no storage: they only change
// type, and their fp32 slices are rounded to fp16 as the shards take them, the values a cast
// here would give.
void DistributedModel::build_in_fp16() {
  for (Layer& layer : layers_) {
    for (at::Tensor& p : layer.parameters) {
      if (!at::isFloatingType(p.scalar_type()) || p.scalar_type() == at::kHalf) continue;
      if (options_.delayed_slices && p.storage().nbytes() == 0) {
        at::Tensor half = at::empty({0}, p.options().dtype(at::kHalf));
        half.unsafeGetTensorImpl()->set_sizes_contiguous(p.sizes());  // no storage, as before
        p.set_data(half);
      } else {
        p.set_data(p.detach().to(at::kHalf));
      }
    }
  }
}

void DistributedModel::set_partition(const std::string& layer_name, int stage) {
  if (partitioned()) {
    throw ConfigError("set_partition(\"" + layer_name + "\"): the model is already partitioned");
  }
  for (const Layer& layer : layers_) {
    if (layer.name == layer_name) {
      manual_stage_[layer_name] = stage;
      return;
    }
  }
  throw ConfigError("set_partition: no layer is named \"" + layer_name + "\"");
}

size_t ActivationCheckpointing::max_run_length(const std::string& what) const {
  if (strategy == "each") return 1;
  if (strategy == "contiguous") return std::numeric_limits<size_t>::max();
  const bool group = strategy.rfind("group_", 0) == 0 && strategy.size() > 6 &&
                     strategy.size() < 16 &&
                     strategy.find_first_not_of("0123456789", 6) == std::string::npos &&
                     std::stol(strategy.substr(6)) > 0;
  if (!group) {
    throw ConfigError(what + ": strategy \"" + strategy +
                      "\" is not one of \"each\", \"contiguous\", \"group_<N>\" (N >= 1)");
  }
  return std::stoul(strategy.substr(6));
}

void DistributedModel::set_activation_checkpointing(const std::string& layer_name,
                                                    const ActivationCheckpointing& options) {
  set_activation_checkpointing(std::vector<std::string>{layer_name}, options);
}

void DistributedModel::set_activation_checkpointing(const std::vector<std::string>& layer_names,
                                                    const ActivationCheckpointing& options) {
  std::string listed;
  for (const std::string& name : layer_names) listed += (listed.empty() ? "\"" : ", \"") + name + "\"";
  const std::string what = "set_activation_checkpointing(" + listed + ")";
  if (!executors_.empty()) throw ConfigError(what + ": call it before the first step");
  const size_t max_run = options.max_run_length(what);
  const int call = ++checkpoint_calls_;
  for (const std::string& layer_name : layer_names) {
    bool matched = false;
    for (const Layer& layer : layers_) {
      if (layer.name == layer_name || layer.name.rfind(layer_name + ".", 0) == 0) {
        checkpointed_[layer.name] = {max_run, options.preserve_rng_state, call};
        matched = true;
      }
    }
    if (!matched) {
      std::string names;
      for (const Layer& l : layers_) names += (names.empty() ? "" : ", ") + l.name;
      throw ConfigError(what + ": no layer is named \"" + layer_name + "\" or \"" + layer_name +
                        ".*\"; layers: " + names);
    }
  }
}

// The recomputed runs of stage layers [begin, end): consecutive checkpointed layers of one
// set_activation_checkpointing call, cut into runs as its strategy says.
std::vector<pipeline::RecomputedRun> DistributedModel::recomputed_runs(int begin, int end) const {
  std::vector<pipeline::RecomputedRun> runs;
  int prev_call = 0;
  for (int i = begin; i < end; ++i) {
    auto it = checkpointed_.find(layers_[i].name);
    if (it == checkpointed_.end()) {
      prev_call = 0;
      continue;
    }
    const Checkpointed& c = it->second;
    const size_t local = static_cast<size_t>(i - begin);
    if (c.call == prev_call && runs.back().end - runs.back().begin < c.max_run) {
      runs.back().end = local + 1;
    } else {
      runs.push_back({local, local + 1, c.preserve_rng_state});
    }
    prev_call = c.call;
  }
  return runs;
}

int DistributedModel::num_stages() const {
  return context_.pp_size() * options_.chunks_per_rank;
}

namespace {

// Names and share groups only: what manual partitioning and the checks need.
std::vector<LayerCost> unprofiled_costs(const std::vector<Layer>& layers) {
  const std::vector<int> groups = pipeline::share_groups(layers);
  std::vector<LayerCost> costs(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    costs[i].name = layers[i].name;
    costs[i].share_group = groups[i];
    for (const at::Tensor& p : layers[i].parameters) {
      costs[i].param_bytes += static_cast<int64_t>(p.nbytes());
      costs[i].num_params += p.numel();
    }
  }
  return costs;
}

// Every rank profiles (tensor-parallel layers communicate inside their TP group, so the
// group's ranks run them together); rank 0's measurements decide, and every rank gets its
// decision (or its error), so all agree.
std::vector<int> decide_on_rank0(comm::Communicator& world, const std::vector<Layer>& layers,
                                 const Values& trial, int num_stages, double memory_weight) {
  const auto costs = pipeline::profile_layers(layers, trial);
  const std::string decision = comm::on_rank0("automatic partitioning failed on rank 0", [&] {
    const Partition part = pipeline::auto_partition(costs, num_stages, memory_weight);
    std::printf("%s", pipeline::describe(part, costs).c_str());
    std::fflush(stdout);
    return nlohmann::json(part.stage_of_layer).dump();
  }, world);
  return nlohmann::json::parse(decision).get<std::vector<int>>();
}

// SMP's skip_tracing: no profiling pass; stages balance parameter bytes (the unprofiled costs'
// only measure, used as time and memory alike). The same on every rank, no communication.
std::vector<int> decide_untraced(std::vector<LayerCost> costs, int num_stages, double memory_weight,
                                 bool print) {
  for (LayerCost& c : costs) c.time_s = static_cast<double>(c.param_bytes);
  const Partition part = pipeline::auto_partition(costs, num_stages, memory_weight);
  if (print) {
    std::printf("(skip_tracing: balanced by parameter bytes)\n%s", pipeline::describe(part, costs).c_str());
    std::fflush(stdout);
  }
  return part.stage_of_layer;
}

// SMP's load_partition: the split written to partition_file by an earlier run of this model.
// Read on rank 0, which hands every rank the split or its error.
std::vector<int> read_partition_file(comm::Communicator& world, const std::string& path,
                                     const std::vector<std::string>& names, int num_stages) {
  const std::string decision = comm::on_rank0("reading partition_file " + path, [&] {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(files::read_file(path));
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError("config key \"partition_file\": " + path + " is not JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("layers") || !j.contains("stage_of_layer") || !j.contains("num_stages")) {
      throw ConfigError("config key \"partition_file\": " + path +
                        " lacks \"layers\", \"stage_of_layer\" or \"num_stages\"; write it with "
                        "\"partition_file\" and \"load_partition\": false");
    }
    const auto layers = j["layers"].get<std::vector<std::string>>();
    if (layers != names) {
      size_t i = 0;
      while (i < layers.size() && i < names.size() && layers[i] == names[i]) ++i;
      throw ConfigError("config key \"partition_file\": " + path + " is for another model: layer " +
                        std::to_string(i) + " is \"" + (i < layers.size() ? layers[i] : "(none)") +
                        "\" there and \"" + (i < names.size() ? names[i] : "(none)") + "\" here");
    }
    if (j["num_stages"].get<int>() != num_stages) {
      throw ConfigError("config key \"partition_file\": " + path + " splits the model into " +
                        j["num_stages"].dump() + " stages; this run has " + std::to_string(num_stages));
    }
    return j["stage_of_layer"].dump();
  }, world);
  return nlohmann::json::parse(decision).get<std::vector<int>>();
}

}  // namespace

void DistributedModel::partition(const Values& trial_inputs) {
  if (partitioned()) return;
  const Config& cfg = context_.config();
  comm::Communicator& world = context_.group(CommGroup::WORLD);
  const int stages = num_stages();
  const auto costs = unprofiled_costs(layers_);
  if (static_cast<int>(layers_.size()) < stages) {
    throw ConfigError("pipeline_parallel_degree (" + std::to_string(context_.pp_size()) + ") x " +
                      "chunks_per_rank (" + std::to_string(options_.chunks_per_rank) + ") = " +
                      std::to_string(stages) + " stages, but the model has only " +
                      std::to_string(layers_.size()) + " layers; each stage needs at least one");
  }
  if (cfg.load_partition) {
    partition_ = pipeline::manual_partition(read_partition_file(world, cfg.partition_file, layer_names(), stages),
                                            stages, 0, costs);
  } else if (cfg.auto_partition && stages > 1) {
    // Profiling runs the layers as built: fp16 ones (fp16_params) on fp16 inputs.
    const Values trial = cfg.fp16_params ? dp::cast_floating(trial_inputs, at::kHalf) : trial_inputs;
    std::vector<int> stage_of = cfg.skip_tracing
                                    ? decide_untraced(costs, stages, cfg.memory_weight, context_.rank() == 0)
                                    : decide_on_rank0(world, layers_, trial, stages, cfg.memory_weight);
    partition_ = pipeline::manual_partition(stage_of, stages, 0, costs);
  } else {
    std::vector<int> stage_of;
    for (const Layer& layer : layers_) {
      auto it = manual_stage_.find(layer.name);
      stage_of.push_back(it == manual_stage_.end() ? -1 : it->second);
    }
    partition_ = pipeline::manual_partition(stage_of, stages, cfg.default_partition, costs);
    if (context_.rank() == 0 && stages > 1) {
      std::printf("%s", pipeline::describe(*partition_, costs).c_str());
      std::fflush(stdout);
    }
  }
  if (!cfg.partition_file.empty() && !cfg.load_partition) {  // for a later run's load_partition
    comm::on_rank0("writing partition_file " + cfg.partition_file, [&] {
      const nlohmann::json j = {{"format", "smp-partition"}, {"version", 1}, {"num_stages", stages},
                                {"layers", layer_names()}, {"stage_of_layer", partition_->stage_of_layer}};
      files::write_file_atomic(cfg.partition_file, j.dump(1) + "\n");
      return std::string();
    }, world);
  }
  keep_own_stages();
}

void DistributedModel::set_partition_assignment(const std::vector<int>& stage_of_layer) {
  if (partitioned()) throw Error("DistributedModel::set_partition_assignment: already partitioned");
  if (stage_of_layer.size() != layers_.size()) {
    throw ConfigError("partition assignment: " + std::to_string(stage_of_layer.size()) +
                      " layers given; the model has " + std::to_string(layers_.size()));
  }
  partition_ = pipeline::manual_partition(stage_of_layer, num_stages(), 0, unprofiled_costs(layers_));
  keep_own_stages();
}

namespace {

// The pipeline rank holding parameter `name` ("<layer name>.<parameter name>"): the layer
// whose name is the longest prefix of it.
int pp_rank_of(const std::string& name, const std::vector<Layer>& layers, const Partition& part,
               int pp_size) {
  size_t best = layers.size();
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string prefix = layers[i].name + ".";
    if (name.rfind(prefix, 0) == 0 && (best == layers.size() || prefix.size() > layers[best].name.size() + 1)) {
      best = i;
    }
  }
  if (best == layers.size()) throw ConfigError("tied_copies: no layer holds parameter \"" + name + "\"");
  return part.stage_of_layer[best] % pp_size;
}

}  // namespace

void DistributedModel::keep_own_stages() {
  // A rank keeps only its own stages' layers, and moves those to its device.
  const std::vector<int> mine = local_stages();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const int stage = partition_->stage_of_layer[i];
    if (std::find(mine.begin(), mine.end(), stage) == mine.end()) {
      layers_[i] = Layer{layers_[i].name, nullptr, {}, {}, {}, nullptr};
    } else if (options_.device) {
      for (at::Tensor& p : layers_[i].parameters) {
        if (p.device() != *options_.device) p.set_data(p.data().to(*options_.device));
      }
    }
  }
  // Data parallelism: flat parameter and gradient buffers, hooks, the initial broadcast.
  std::vector<dp::ReducedParam> params;
  for (const LocalParameter& p : local_parameter_info()) {
    params.push_back({p.name, p.tensor, p.tp_sharded, p.stage, p.layer});
  }
  dp::ReducerOptions reducer_options;
  reducer_options.bucket_cap_mb = options_.bucket_cap_mb;
  reducer_options.overlapping = options_.overlapping_allreduce;
  reducer_options.delayed = options_.delayed_slices.get();
  reducer_ = std::make_unique<dp::GradientReducer>(context_, std::move(params), reducer_options);
  // The shards hold their slices now: the copies taken as the model was built (this rank's
  // share of the whole model) go.
  options_.delayed_slices.reset();
  if (reducer_->parameter_shards()) shard_layers();
  // Tied copies: where each half of a pair lives, found once.
  std::map<std::string, int> index;
  for (size_t i = 0; i < reducer_->params().size(); ++i) index[reducer_->params()[i].name] = static_cast<int>(i);
  std::vector<int> held;
  for (const auto& [copy, original] : options_.tied_copies) {
    const int pp = context_.pp_size();
    TiedPair t{pp_rank_of(original, layers_, *partition_, pp), pp_rank_of(copy, layers_, *partition_, pp)};
    if (index.count(original)) held.push_back(t.original = index[original]);
    if (index.count(copy)) held.push_back(t.copy = index[copy]);
    tied_.push_back(t);
  }
  if (!tied_.empty() && reducer_->sharded()) {
    reducer_->hold_until_finish(held, [this] { sum_tied_slots(); });
  }
}

namespace {

// By layer: the sharded buckets holding its parameters.
std::vector<std::vector<int>> layer_buckets(const dp::GradientReducer& reducer,
                                            const std::vector<Layer>& layers) {
  std::map<const void*, int> bucket_of;
  const auto& params = reducer.params();
  for (size_t i = 0; i < params.size(); ++i) {
    bucket_of[params[i].tensor.unsafeGetTensorImpl()] = reducer.layout().slot(static_cast<int>(i)).bucket;
  }
  std::vector<std::vector<int>> out(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    for (const at::Tensor& p : layers[i].parameters) {
      auto it = bucket_of.find(p.unsafeGetTensorImpl());
      if (it != bucket_of.end() && std::find(out[i].begin(), out[i].end(), it->second) == out[i].end())
        out[i].push_back(it->second);
    }
  }
  return out;
}

}  // namespace

// Each layer's forward is wrapped: its buckets are gathered before and freed after, and a hook
// on each of its outputs gathers them again when backward reaches the layer (ParameterShards
// frees them once their gradients are in). Once a layer's buckets are whole, the next layer's
// of the same stage are prefetched (in backward: the layer before), within
// sdp_max_live_parameters. A recomputed forward (activation checkpointing, inside backward)
// keeps its buckets for the backward that follows at once and prefetches nothing: the next
// layer's backward is already done, and the layer before is prefetched by the backward hooks,
// as FSDP does in its pre-backward state.
void DistributedModel::shard_layers() {
  dp::ParameterShards* shards = reducer_->parameter_shards();
  const std::vector<std::vector<int>> buckets = layer_buckets(*reducer_, layers_);
  std::vector<size_t> order;  // the layers with buckets, in the model's order
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i].forward && !buckets[i].empty()) order.push_back(i);
  }
  const auto neighbour = [&](size_t k, int step) -> std::vector<int> {
    const size_t j = k + step;
    if (j >= order.size()) return {};  // (wraps below zero too)
    const bool same_stage = partition_->stage_of_layer[order[j]] == partition_->stage_of_layer[order[k]];
    return same_stage ? buckets[order[j]] : std::vector<int>{};
  };
  for (size_t k = 0; k < order.size(); ++k) {
    Layer& layer = layers_[order[k]];
    layer.forward = [inner = std::move(layer.forward), shards, mine = buckets[order[k]],
                     next = neighbour(k, 1), before = neighbour(k, -1)](const Values& x) {
      const bool again = recomputing();
      shards->gather(mine);
      if (!again) shards->prefetch(next);
      Values y = inner(x);
      if (!again) shards->release(mine);
      for (const at::Tensor& t : y) {
        if (t.defined() && t.requires_grad() && t.grad_fn()) {
          t.register_hook([shards, mine, before](const at::Tensor&) {
            shards->gather(mine);
            shards->prefetch(before);
          });
        }
      }
      return y;
    };
  }
}

void DistributedModel::gather_parameters() {
  if (reducer_ && reducer_->parameter_shards()) reducer_->parameter_shards()->gather_all();
}

void DistributedModel::release_parameters(bool written) {
  if (reducer_ && reducer_->parameter_shards()) reducer_->parameter_shards()->release_all(written);
}

dp::GradientReducer& DistributedModel::gradient_reducer() {
  if (!reducer_) throw Error("DistributedModel: not partitioned yet (the first step does it)");
  return *reducer_;
}

const Partition& DistributedModel::partition_assignment() const {
  if (!partition_) throw Error("DistributedModel: not partitioned yet (the first step does it)");
  return *partition_;
}

std::map<std::string, at::Tensor> DistributedModel::local_layer_state() const {
  std::map<std::string, at::Tensor> out;
  for (const Layer& layer : layers_) {
    if (!layer.get_state) continue;
    for (auto& [name, t] : layer.get_state()) out[layer.name + "/" + name] = t;
  }
  return out;
}

void DistributedModel::load_local_layer_state(const std::map<std::string, at::Tensor>& state) {
  std::map<std::string, std::map<std::string, at::Tensor>> by_layer;
  for (const auto& [key, t] : state) {
    const size_t slash = key.find('/');
    by_layer[key.substr(0, slash)][slash == std::string::npos ? "" : key.substr(slash + 1)] = t;
  }
  for (const auto& [name, values] : by_layer) {
    const auto it = std::find_if(layers_.begin(), layers_.end(),
                                 [&](const Layer& l) { return l.name == name && l.set_state; });
    if (it == layers_.end()) {
      throw ConfigError("layer state for \"" + name + "\": no layer of this rank by that name keeps state");
    }
    it->set_state(values);
  }
}

std::vector<std::string> DistributedModel::layer_names() const {
  std::vector<std::string> out;
  for (const Layer& layer : layers_) out.push_back(layer.name);
  return out;
}

std::vector<int> DistributedModel::local_stages() const {
  std::vector<int> out;
  for (int s = context_.pp_rank(); s < num_stages(); s += context_.pp_size()) out.push_back(s);
  return out;
}

std::vector<DistributedModel::LocalParameter> DistributedModel::local_parameter_info() const {
  const Partition& part = partition_assignment();
  const std::vector<int> mine = local_stages();
  std::vector<LocalParameter> out;
  std::set<const void*> seen;  // a tensor two layers share is listed once
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (std::find(mine.begin(), mine.end(), part.stage_of_layer[i]) == mine.end()) continue;
    const Layer& layer = layers_[i];
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      if (!seen.insert(layer.parameters[j].unsafeGetTensorImpl()).second) continue;
      const ShardSpec shard =
          j < layer.tp_shards.size() ? layer.tp_shards[j] : ShardSpec{};
      out.push_back({layer.name + "." + layer.parameter_names.at(j), layer.parameters[j],
                     shard.sharded(), part.stage_of_layer[i], shard, static_cast<int>(i)});
    }
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> DistributedModel::local_named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const LocalParameter& p : local_parameter_info()) out.emplace_back(p.name, p.tensor);
  return out;
}

std::vector<at::Tensor> DistributedModel::local_parameters() const {
  std::vector<at::Tensor> out;
  for (auto& [name, p] : local_named_parameters()) out.push_back(p);
  return out;
}

const pipeline::Schedule& DistributedModel::schedule_for(int num_microbatches, bool train) {
  auto& slot = schedules_[{num_microbatches, train}];
  if (!slot) {
    const Config& cfg = context_.config();
    pipeline::ScheduleSpec spec;
    spec.num_ranks = context_.pp_size();
    spec.num_microbatches = num_microbatches;
    spec.chunks_per_rank = options_.chunks_per_rank;
    spec.active_microbatches = cfg.active_microbatches;
    if (!train || cfg.pipeline == PipelineMode::kOnlyForward) {
      spec.kind = pipeline::ScheduleKind::kForwardOnly;
    } else if (cfg.pipeline == PipelineMode::kSimple) {
      spec.kind = pipeline::ScheduleKind::kSimple;
    } else if (cfg.pipeline == PipelineMode::kZeroBubble) {
      spec.kind = pipeline::ScheduleKind::kZeroBubble;
    } else {
      spec.kind = options_.chunks_per_rank > 1 ? pipeline::ScheduleKind::kInterleavedVirtual
                                               : pipeline::ScheduleKind::kOneFOneB;
    }
    slot = std::make_unique<pipeline::Schedule>(pipeline::make_schedule(spec));
  }
  return *slot;
}

pipeline::Executor& DistributedModel::executor_for(int num_microbatches, bool train) {
  auto& slot = executors_[{num_microbatches, train}];
  if (!slot) {
    const Partition& part = partition_assignment();
    std::vector<pipeline::StageModule> stages;
    for (int s : local_stages()) {
      pipeline::StageModule module;
      module.stage = s;
      for (int i = part.begin(s); i < part.end(s); ++i) module.layers.push_back(&layers_[i]);
      module.recomputed = recomputed_runs(part.begin(s), part.end(s));
      const std::map<const void*, int> uses = pipeline::accumulations_per_backward(module);
      const auto& params = reducer_->params();
      for (size_t i = 0; i < params.size(); ++i) {
        auto it = uses.find(params[i].tensor.unsafeGetTensorImpl());
        if (it != uses.end() && it->second > 1) {
          reducer_->set_accumulations(static_cast<int>(i), it->second);
        }
      }
      stages.push_back(std::move(module));
    }
    const Config& cfg = context_.config();
    const pipeline::OffloadOptions offload{cfg.offload_activations,
                                           cfg.activation_loading_horizon,
                                           files::temp_dir()};
    slot = std::make_unique<pipeline::Executor>(context_.group(CommGroup::PP_GROUP),
                                                schedule_for(num_microbatches, train),
                                                std::move(stages), offload);
  }
  return *slot;
}

void DistributedModel::record_step(const pipeline::ExecutorResult& result,
                                   const pipeline::Schedule& schedule) {
  stats_.wall_s = result.wall_s;
  stats_.busy_s = result.busy_s;
  stats_.measured_bubble = result.wall_s > 0 ? 1 - result.busy_s / result.wall_s : 0;
  stats_.theoretical_bubble = pipeline::theoretical_bubble_fraction(schedule.spec);
  if (!result.trace.empty()) {
    last_trace_ = result.trace;
    last_offload_ = result.offload;
  }
  if (!options_.timeline_dir.empty()) {
    pipeline::write_chrome_trace(
        options_.timeline_dir + "/timeline_rank" + std::to_string(context_.rank()) + ".json",
        context_.pp_rank(), result.trace);
  }
  ++steps_;
}

void DistributedModel::sum_tied_gradients() {
  if (!tied_.empty() && !reducer_->sharded()) sum_tied_slots();
}

void DistributedModel::sum_tied_slots() {
  comm::Communicator& pipe = context_.group(CommGroup::PP_GROUP);
  const int me = pipe.rank();
  for (const TiedPair& t : tied_) {
    if (t.original_rank == t.copy_rank) {
      if (me != t.original_rank) continue;
      const at::Tensor sum = reducer_->grad_slot(t.original).add(reducer_->grad_slot(t.copy));
      reducer_->grad_slot(t.original).copy_(sum);
      reducer_->grad_slot(t.copy).copy_(sum);
      continue;
    }
    if (me != t.original_rank && me != t.copy_rank) continue;
    at::Tensor mine = reducer_->grad_slot(me == t.original_rank ? t.original : t.copy);
    const int peer = me == t.original_rank ? t.copy_rank : t.original_rank;
    // Both send first: each direction has its own channel, so neither send waits on the other.
    // The receive is for the gradient's own device (a CUDA gradient is received on the GPU).
    constexpr int kTag = 7;
    comm::Work sent = pipe.send(mine.contiguous(), peer, kTag);
    comm::Work got = pipe.recv(peer, kTag, mine.device());
    comm::wait_all({&got, &sent});
    mine.add_(got.result());
  }
}

}  // namespace smp

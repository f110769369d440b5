// The training loop of smp-train (see trainer.h).
#include "smp/train/trainer.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define SMP_TRAIN_CUDA_STATS 1
#endif

#include "smp/checkpoint/checkpoint.h"
#include "smp/distributed_optimizer.h"
#include "smp/core/files.h"
#include "smp/models/gpt.h"
#include "smp/models/hf.h"
#include "smp/pipeline/timeline.h"
#include "smp/runtime.h"
#include "smp/step.h"
#include "smp/tensor_parallel/layers.h"
#include "smp/train/data_loader.h"
#include "smp/train/graph_step.h"
#include "smp/train/plots.h"
#include "smp/train/tokenizer.h"

namespace smp::train {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// train_*.bin and val_*.bin of a folder, sorted.
std::pair<std::vector<std::string>, std::vector<std::string>> list_shards(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Error("data.shards_dir " + dir + " cannot be read: " + std::strerror(errno));
  std::vector<std::string> train, val;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name.size() < 5 || name.compare(name.size() - 4, 4, ".bin") != 0) continue;
    if (name.rfind("train_", 0) == 0) train.push_back(dir + "/" + name);
    if (name.rfind("val_", 0) == 0) val.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(train.begin(), train.end());
  std::sort(val.begin(), val.end());
  if (train.empty() || val.empty()) {
    throw Error("data.shards_dir " + dir + " needs train_*.bin and val_*.bin shards; found " +
                std::to_string(train.size()) + " and " + std::to_string(val.size()));
  }
  return {train, val};
}

// training.activation_checkpointing as written back into config.json (which reads back).
json checkpointing_json(const std::vector<CheckpointedBlocks>& groups) {
  if (groups.empty()) return "none";
  if (groups.size() == 1 && groups[0].name == "block") return groups[0].strategy;
  json out = json::object();
  for (const CheckpointedBlocks& group : groups) out[group.name] = group.strategy;
  return out;
}

json config_json(const TrainConfig& c) {
  const auto& t = c.training;
  const json model = c.init_from_hf.empty()
      ? json{{"name", c.model.name}, {"num_layers", c.model.num_layers},
             {"num_heads", c.model.num_heads}, {"hidden", c.model.hidden},
             {"ffn_hidden", c.model.ffn_hidden}, {"vocab_size", c.model.vocab_size},
             {"max_seq_len", c.model.max_seq_len}, {"dropout", c.model.dropout},
             {"tie_embeddings", c.model.tie_embeddings}}
      : json{{"from_hf", c.init_from_hf}, {"dropout", c.model.dropout}};
  const auto& k = c.checkpoint;
  return {{"model", model},
          {"data", {{"text", c.data.text}, {"shards_dir", c.data.shards_dir},
                    {"vocab_json", c.data.vocab_json}, {"merges_txt", c.data.merges_txt},
                    {"val_fraction", c.data.val_fraction}}},
          {"training", {{"steps", t.steps}, {"global_batch", t.global_batch},
                        {"seq_len", t.seq_len}, {"lr", t.lr}, {"min_lr", t.min_lr},
                        {"warmup_steps", t.warmup_steps}, {"weight_decay", t.weight_decay},
                        {"beta1", t.beta1}, {"beta2", t.beta2}, {"grad_clip", t.grad_clip},
                        {"precision", t.precision}, {"seed", t.seed}, {"val_every", t.val_every},
                        {"val_batches", t.val_batches}, {"prompt", t.prompt},
                        {"sample_tokens", t.sample_tokens}, {"temperature", t.temperature},
                        {"device", t.device}, {"tf32", t.tf32}, {"cuda_graphs", t.cuda_graphs},
                        {"peak_tflops", t.peak_tflops},
                        {"chunks_per_rank", t.chunks_per_rank},
                        {"activation_checkpointing", checkpointing_json(t.activation_checkpointing)}}},
          {"checkpoint", {{"dir", k.dir}, {"every", k.every}, {"keep", k.keep},
                          {"full_at_end", k.full_at_end}, {"resume", k.resume}}},
          {"smp", c.smp.to_json()},
          {"run_dir", c.run_dir}};
}

// Rank 0 makes the run directory and the token shards; every rank learns where they are.
json prepare_run(const TrainConfig& c, const Tokenizer& tokenizer) {
  return json::parse(on_rank0("preparing the run", [&] {
    files::make_dirs(c.run_dir);
    files::write_file_atomic(c.run_dir + "/config.json", config_json(c).dump(2) + "\n");
    std::vector<std::string> train, val;
    if (!c.data.text.empty()) {
      const PreparedData data =
          prepare_text(c.data.text, c.run_dir + "/data", tokenizer, c.data.val_fraction);
      train = data.train_shards, val = data.val_shards;
    } else {
      std::tie(train, val) = list_shards(c.data.shards_dir);
    }
    for (const auto& path : train) TokenShard check(path);  // corrupt headers fail here
    for (const auto& path : val) TokenShard check(path);
    return json{{"train", train}, {"val", val}}.dump();
  }));
}

// The memory this rank trains in: on the CPU its peak resident set; on a GPU the peak that the
// caching allocator has reserved on the device (what nvidia-smi shows, less the CUDA context).
double memory_mb(const at::Device& device) {
#ifdef SMP_TRAIN_CUDA_STATS
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.reserved_bytes[aggregate].peak) / (1 << 20);
  }
#endif
  // The process's peak resident set (VmHWM), since reset_peak_memory.
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024;  // kB
  return 0;
}

// Training's peak starts here, not with the setup before it: CUDA's peak statistics, and on the
// host Linux's peak resident set (writing "5" to clear_refs; where that is not allowed, the
// peak since the process started).
void reset_peak_memory(const at::Device& device) {
#ifdef SMP_TRAIN_CUDA_STATS
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return;
  }
#endif
  (void)device;
  std::ofstream("/proc/self/clear_refs") << "5";
}

// Mean of a scalar over the data-parallel replicas (equal over TP and PP ranks already).
// Over DP_GROUP: each rank's value is its own samples' (the same on the ranks of a TP group in
// the prescaled flow).
double replica_mean(double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  process_group(CommGroup::DP_GROUP).all_reduce(t, comm::ReduceOp::kAvg).wait();
  return t.item<double>();
}

double world_max(double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  process_group(CommGroup::WORLD).all_reduce(t, comm::ReduceOp::kMax).wait();
  return t.item<double>();
}

std::string duration(double seconds) {
  char buf[32];
  const int s = static_cast<int>(std::lround(seconds));
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%dh%02dm", s / 3600, s / 60 % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%dm%02ds", s / 60, s % 60);
  }
  return buf;
}

// The device this rank trains on: the CPU, or GPU local_rank (one GPU per rank, the device
// smp::init already made current; see docs/architecture.md).
at::Device training_device(const TrainingConfig& t) {
  if (t.device == "cpu") return at::kCPU;
  const int gpus = at::hasCUDA() ? static_cast<int>(at::detail::getCUDAHooks().deviceCount()) : 0;
  if (gpus == 0) {
    throw ConfigError("training.device \"cuda\": this machine has no CUDA device; allowed here: \"cpu\"");
  }
  if (local_size() > gpus) {
    throw ConfigError("training.device \"cuda\": this node runs " + std::to_string(local_size()) +
                      " ranks but has " + std::to_string(gpus) +
                      " GPUs; one GPU per rank: start at most " + std::to_string(gpus) +
                      " ranks per node, or use \"cpu\"");
  }
  return {at::kCUDA, static_cast<c10::DeviceIndex>(local_rank())};
}

// training.optimizer over two groups: weight decay on matrices only; biases, norms and
// positions are left alone.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const DistributedModel& dmodel,
                                                        const TrainingConfig& t) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : dmodel.local_parameter_info()) {
    const bool positions = p.name.size() >= 3 && p.name.compare(p.name.size() - 3, 3, "wpe") == 0;
    (p.tensor.dim() >= 2 && !positions ? decay : no_decay).push_back(p.tensor);
  }
  auto two_groups = [&](auto options) {
    using Options = decltype(options);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<Options>(options));
    auto no_decay_options = std::make_unique<Options>(options);
    no_decay_options->weight_decay(0.0);
    groups.emplace_back(no_decay, std::move(no_decay_options));
    return std::pair{std::move(groups), options};
  };
  if (t.optimizer == "sgd") {
    auto [groups, options] =
        two_groups(torch::optim::SGDOptions(t.lr).momentum(t.momentum).weight_decay(t.weight_decay));
    return std::make_unique<torch::optim::SGD>(std::move(groups), options);
  }
  auto [groups, options] = two_groups(
      torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2}).weight_decay(t.weight_decay));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), options);
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

void print_startup(const TrainConfig& c, const std::vector<std::string>& layer_names,
                   DistributedModel& dmodel, const json& data, double entropy) {
  int64_t local_params = 0;
  for (const auto& p : dmodel.local_parameter_info()) local_params += p.tensor.numel();
  // fp32 weights, gradients and two Adam moments: 16 bytes a parameter, of which sharded data
  // parallelism keeps 1/sdp (weights and gradients at rest, Adam) and ZeRO-1 1/dp of the Adam
  // moments.
  const Config& cfg = config();
  const double sdp = cfg.sharded_data_parallel_degree;
  const double adam_shards = cfg.shard_optimizer_state ? rdp_size() : sdp;
  const double est_mb = local_params * (8.0 / sdp + 8.0 / adam_shards) / (1 << 20);
  std::ostringstream row;
  row << "  " << rank() << "     " << pp_rank() << "   " << tp_rank() << "   " << rdp_rank()
      << "    stages";
  for (int s : dmodel.local_stages()) row << " " << s;
  const auto& part = dmodel.partition_assignment();
  for (int s : dmodel.local_stages()) {
    row << " [" << layer_names[part.begin(s)] << " .. " << layer_names[part.end(s) - 1] << "]";
  }
  row << "  " << local_params << " params  ~" << static_cast<int64_t>(est_mb) << " MB";
  const auto rows = allgather(row.str(), CommGroup::WORLD);
  if (rank() != 0) return;
  const std::string sharding =
      cfg.sharded_data_parallel_degree > 1 ? " sdp=" + std::to_string(cfg.sharded_data_parallel_degree) : "";
  std::printf("smp-train: %s, %lld parameters, %d ranks (pp=%d tp=%d dp=%d%s), %s\n",
              c.model.name.c_str(), static_cast<long long>(c.model.num_parameters()), size(),
              pp_size(), tp_size(), rdp_size(), sharding.c_str(), c.training.precision.c_str());
  std::printf("data: %zu train and %zu val shards; unigram entropy %.4f nats\n",
              data["train"].size(), data["val"].size(), entropy);
  if (tp_size() > 1 && cfg.prescaled_batch) {
    std::printf("batch flow: prescaled: the %d ranks of a TP group share their batches (by rdp_rank "
                "of %d)\n", tp_size(), rdp_size());
  } else if (tp_size() > 1) {
    std::printf("batch flow: not prescaled (SMP's default): each rank samples its own batch (by "
                "dp_rank of %d); the model gathers its TP group's %d batches\n", dp_size(), tp_size());
  }
  std::printf("rank  pp  tp  rdp   layers, parameters and memory estimate (weights+grads+Adam)\n");
  for (const auto& r : rows) std::printf("%s\n", r.c_str());
  std::fflush(stdout);
}

// Full checkpoints in Hugging Face's names and layout, with its config.json.
FullCheckpointFormat hf_format(const models::ModelConfig& model) {
  FullCheckpointFormat format;
  format.to_file = [model](const FullCheckpointFormat::Tensors& whole) { return models::to_hf(model, whole); };
  format.from_file = [model](const FullCheckpointFormat::Tensors& hf) { return models::from_hf(model, hf); };
  format.config = models::hf_config(model);
  return format;
}

json curve_json(const std::vector<std::pair<double, double>>& curve) {
  json out = json::array();
  for (const auto& [x, y] : curve) out.push_back({x, y});
  return out;
}

std::vector<std::pair<double, double>> curve_from_json(const json& j) {
  std::vector<std::pair<double, double>> out;
  for (const json& point : j) out.emplace_back(point.at(0).get<double>(), point.at(1).get<double>());
  return out;
}

// Model FLOPs utilisation at `tokens_per_s` over the world; 0 without training.peak_tflops.
double model_flops_utilisation(const TrainConfig& c, double tokens_per_s) {
  const TrainingConfig& t = c.training;
  return t.peak_tflops > 0
             ? c.model.flops_per_token(t.seq_len) * tokens_per_s / (t.peak_tflops * 1e12 * size())
             : 0;
}

// Every pipeline rank's trace of the last step, in pipeline-rank order, on rank 0 (empty
// elsewhere). Collective over the pipeline group.
std::vector<std::vector<pipeline::TraceEvent>> gather_traces(const DistributedModel& dmodel) {
  const std::string mine = pipeline::trace_events_json(pp_rank(), dmodel.last_trace()).dump();
  const auto texts = allgather(mine, CommGroup::PP_GROUP);
  std::vector<std::vector<pipeline::TraceEvent>> per_rank;
  if (rank() != 0) return per_rank;
  for (const auto& text : texts) per_rank.push_back(pipeline::trace_events_from_json(json::parse(text)));
  return per_rank;
}

// One run of smp-train, in the order it happens: setup (data, model, optimizer, a resumed
// checkpoint), the training steps with validation and checkpoints on the way, a sample, the
// report. Every phase is collective over the world; rank 0 alone prints and writes files.
class Trainer {
 public:
  // `c` has passed c.validate(size()) and outlives the Trainer.
  explicit Trainer(const TrainConfig& c);
  TrainSummary run();

 private:
  struct StepResult {
    double lr = 0, loss = 0, norm = 0;
    double step_s = 0, elapsed_s = 0;  // this step; since the first step of this run began
  };

  void setup();
  void setup_data();
  void setup_model();
  void resume();
  void cut_metrics_to(int64_t steps_done) const;
  void train();
  StepResult train_step(int64_t s);
  at::Tensor to_device(const at::Tensor& batch) const;
  void report_step(int64_t s, const StepResult& r);
  double validate();
  void report_validation(int64_t steps_done, double loss);
  void save(const std::string& tag, bool partial, int64_t steps_done);
  void sample();
  void report();
  void write_run_files(const std::vector<std::vector<pipeline::TraceEvent>>& per_rank);
  void log_metrics(const json& line);

  const TrainConfig& config_;
  const TrainingConfig& training_;
  const CheckpointConfig& checkpoint_;
  const bool lead_;                  // rank 0: prints and writes
  const at::Device device_;          // checked before anything is written
  // SMP's batch flow: prescaled, the ranks of a TP group share their samples (sampled by
  // rdp_rank / rdp_size); not prescaled, each rank has its own (dp_rank / dp_size) and the
  // model gathers the TP group's batch (models::Model::set_prescaled_batch).
  const bool prescaled_;
  const int64_t batch_;              // sequences per rank in one step
  int data_replicas() const { return prescaled_ ? rdp_size() : dp_size(); }
  int data_replica() const { return prescaled_ ? rdp_rank() : dp_rank(); }
  const std::string resume_tag_;     // "" for the newest checkpoint
  std::unique_ptr<Tokenizer> tokenizer_;
  json data_;                        // {"train": [shard paths], "val": [shard paths]}
  std::optional<DataLoader> train_data_, val_data_;
  double entropy_ = 0;               // unigram entropy of the training tokens, on rank 0
  std::optional<models::Model> model_;  // its layers live in dmodel_; loss, logits and dropout here
  std::unique_ptr<DistributedModel> dmodel_;
  std::unique_ptr<DistributedOptimizer> optimizer_;
  LossFn loss_fn_;
  std::unique_ptr<CudaGraphStep> graph_step_;  // training.cuda_graphs
  std::ofstream metrics_;            // rank 0
  TrainSummary summary_;
  std::vector<std::pair<double, double>> train_curve_, val_curve_;  // (step, loss), resumed too
  Clock::time_point start_;          // the first step of this run
  double step_seconds_ = 0;          // training steps after the first (which partitions and warms up)
  double total_s_ = 0;               // the steps, validation and checkpoints of this run
  size_t prompt_tokens_ = 0;
};

Trainer::Trainer(const TrainConfig& c)
    : config_(c),
      training_(c.training),
      checkpoint_(c.checkpoint),
      lead_(rank() == 0),
      device_(training_device(c.training)),
      prescaled_(c.smp.prescaled_batch || tp_size() == 1),
      batch_(c.training.global_batch / data_replicas()),
      resume_tag_(c.checkpoint.resume == "newest" ? "" : c.checkpoint.resume) {}

TrainSummary Trainer::run() {
  setup();
  train();
  sample();
  report();
  return summary_;
}

// ---- setup ----

void Trainer::setup() {
  if (device_.is_cuda()) {  // TF32 only where asked: PyTorch's default is full fp32
    at::globalContext().setAllowTF32CuBLAS(training_.tf32);
    at::globalContext().setAllowTF32CuDNN(training_.tf32);
  }
  setup_data();
  setup_model();
  DistributedOptimizerOptions options;
  options.max_nonfinite_steps = training_.max_nonfinite_steps;
  options.lr_on_device = training_.cuda_graphs;  // a replayed graph reads them anew
  optimizer_ = std::make_unique<DistributedOptimizer>(*dmodel_, make_optimizer(*dmodel_, training_), options);
  // The pipeline drops the logits once the loss is made: their gradient goes over them.
  loss_fn_ = [this](const Values& out, const Values& y) { return model_->loss(out, y, /*logits_consumed=*/true); };
  if (training_.cuda_graphs) {
    graph_step_ = make_cuda_graph_step(*dmodel_, *optimizer_, loss_fn_, training_.grad_clip, device_);
  }
  resume();
  if (lead_) {
    metrics_.open(config_.run_dir + "/metrics.jsonl",
                  checkpoint_.resume.empty() ? std::ios::trunc : std::ios::app);
  }
  summary_.run_dir = config_.run_dir;
  summary_.unigram_entropy = entropy_;
}

// The tokenizer, the run directory with its token shards, the loaders and the entropy.
void Trainer::setup_data() {
  const TrainingConfig& t = training_;
  tokenizer_ = make_tokenizer(config_.data.vocab_json, config_.data.merges_txt);
  if (tokenizer_->vocab_size() > config_.model.vocab_size) {
    throw ConfigError("model.vocab_size (" + std::to_string(config_.model.vocab_size) +
                      ") is smaller than the tokenizer's (" +
                      std::to_string(tokenizer_->vocab_size()) + ")");
  }
  data_ = prepare_run(config_, *tokenizer_);
  train_data_.emplace(data_["train"].get<std::vector<std::string>>(), t.seq_len, batch_, t.seed,
                      data_replica(), data_replicas());
  val_data_.emplace(data_["val"].get<std::vector<std::string>>(), t.seq_len, batch_, t.seed + 1,
                    data_replica(), data_replicas());
  std::vector<const TokenShard*> shards;
  for (const auto& s : train_data_->shards()) shards.push_back(s.get());
  entropy_ = lead_ ? unigram_entropy(shards, tokenizer_->vocab_size()) : 0;
}

// The model from the seed (or Hugging Face weights) on the device, this rank's stages of it
// partitioned, and the start-up table printed.
void Trainer::setup_model() {
  at::manual_seed(training_.seed);
  std::shared_ptr<dp::DelayedSlices> delayed;
  if (config().delayed_parameter_initialization) {
    const int s = config().sharded_data_parallel_degree;
    delayed = std::make_shared<dp::DelayedSlices>(s, rdp_rank() % s);
  }
  // Fine-tuning: each layer takes its Hugging Face weights as it is built, before delayed
  // initialisation keeps only this rank's slices of it.
  std::optional<models::HfWeights> hf;
  if (!config_.init_from_hf.empty()) hf.emplace(config_.init_from_hf, config_.model);
  const tp::TpGroup tp_group(process_group(CommGroup::TP_GROUP));
  std::function<void(Layer&)> on_layer;
  if (hf || delayed) {
    on_layer = [&hf, delayed, tp_rank = tp_group.rank()](Layer& layer) {
      if (hf) hf->load(layer, tp_rank);
      if (delayed) delayed->take(layer);
    };
  }
  model_.emplace(models::build_model(config_.model, tp_group, /*separate_tied_head=*/pp_size() > 1, on_layer));
  model_->set_prescaled_batch(prescaled_);
  DistributedModelOptions options;
  if (delayed) {
    delayed->to(device_);
  } else {
    options.device = device_;  // built on the CPU from the seed; only this rank's stages move
  }
  std::vector<std::string> layer_names;
  for (const auto& layer : model_->layers) layer_names.push_back(layer.name);
  options.chunks_per_rank = static_cast<int>(training_.chunks_per_rank);
  options.tied_copies = model_->tied_copies;
  options.delayed_slices = delayed;
  dmodel_ = std::make_unique<DistributedModel>(std::move(model_->layers), options);  // own stages
  for (const CheckpointedBlocks& group : training_.activation_checkpointing) {
    const int64_t last = group.last < 0 ? config_.model.num_layers - 1 : group.last;
    std::vector<std::string> blocks;
    for (int64_t i = group.first; i <= last; ++i) blocks.push_back("block." + std::to_string(i));
    dmodel_->set_activation_checkpointing(blocks, {group.strategy});
  }
  // Resuming under the same pipeline keeps the checkpoint's partition (as SMP does).
  if (checkpoint_.resume.empty() || !use_checkpoint_partition(checkpoint_.dir, *dmodel_, resume_tag_)) {
    dmodel_->partition(
        {at::zeros({batch_ / config().microbatches, training_.seq_len}, at::kLong).to(device_)});
  }
  print_startup(config_, layer_names, *dmodel_, data_, entropy_);
}

// With checkpoint.resume: the weights, optimizer state, data position and curves saved.
void Trainer::resume() {
  if (checkpoint_.resume.empty()) return;
  const json user = resume_from_checkpoint(checkpoint_.dir, *dmodel_, optimizer_.get(), resume_tag_);
  summary_.first_step = user.at("step").get<int64_t>();
  train_data_->set_position({user.at("train_position").at(0).get<int64_t>(),
                             user.at("train_position").at(1).get<int64_t>()});
  if (summary_.first_step >= training_.steps) {
    throw ConfigError("checkpoint.resume: the checkpoint is at step " +
                      std::to_string(summary_.first_step) + " and training.steps is " +
                      std::to_string(training_.steps) + "; raise training.steps to train on");
  }
  train_curve_ = curve_from_json(user.at("train_curve"));
  val_curve_ = curve_from_json(user.at("val_curve"));
  cut_metrics_to(summary_.first_step);
  if (lead_) std::printf("resumed at step %lld\n", static_cast<long long>(summary_.first_step));
}

// metrics.jsonl back to the resumed step: a run that went on past its checkpoint (and crashed
// or was stopped) logged the steps this run is about to log again. Rewritten whole and
// atomically, so a crash meanwhile leaves the old file or the cut one.
void Trainer::cut_metrics_to(int64_t steps_done) const {
  const std::string path = config_.run_dir + "/metrics.jsonl";
  const std::string what =
      "checkpoint.resume: cutting " + path + " back to step " + std::to_string(steps_done);
  on_every_rank(what, [&] {
    if (!lead_ || !files::exists(path)) return;
    const std::string text = files::read_file(path);
    const std::string kept = metrics_up_to_step(text, steps_done);
    if (kept != text) files::write_file_atomic(path, kept);
  });
}

// ---- training ----

// From the first step not done to training.steps, validating every val_every steps and at the
// end, checkpointing every checkpoint.every steps and (full_at_end) at the end.
void Trainer::train() {
  const TrainingConfig& t = training_;
  const CheckpointConfig& ck = checkpoint_;
  start_ = Clock::now();
  reset_peak_memory(device_);
  for (int64_t s = summary_.first_step; s < t.steps; ++s) {
    report_step(s, train_step(s));
    const bool last = s + 1 == t.steps;
    if (last || (t.val_every > 0 && (s + 1) % t.val_every == 0)) report_validation(s + 1, validate());
    if (ck.every > 0 && (s + 1) % ck.every == 0) save("step_" + std::to_string(s + 1), true, s + 1);
  }
  if (ck.full_at_end) save("final", false, t.steps);
  total_s_ = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t timed_steps = t.steps - summary_.first_step - 1;
  const int64_t tokens_per_step = t.global_batch * t.seq_len;
  summary_.tokens_per_s = step_seconds_ > 0 ? tokens_per_step * timed_steps / step_seconds_ : 0;
  summary_.mfu = model_flops_utilisation(config_, summary_.tokens_per_s);
}

// A batch onto the device: on CUDA from pinned memory without waiting (the copy queues
// behind the previous step's work on the stream).
at::Tensor Trainer::to_device(const at::Tensor& batch) const {
  if (!device_.is_cuda()) return batch.to(device_);
  return batch.pin_memory().to(device_, /*non_blocking=*/true);
}

// One optimizer step (0-based `s`); the last one is traced for the timeline.
Trainer::StepResult Trainer::train_step(int64_t s) {
  const auto step_start = Clock::now();
  StepResult r;
  r.lr = learning_rate(training_, s);
  set_lr(optimizer_->optimizer(), r.lr);
  auto [x, y] = train_data_->next();
  tp::check_labels(y, config_.model.vocab_size);  // on the host, once a batch
  // The loss, the norm and the overflow flag leave the device together: one wait for it.
  at::Tensor fetched;
  if (graph_step_) {  // the same step, replayed (no timeline trace)
    fetched = graph_step_->step(x.pin_memory(), y.pin_memory()).cpu();
  } else {
    StepOptions options;
    options.trace = s + 1 == training_.steps;
    const auto out = step(*dmodel_, {to_device(x)}, {to_device(y)}, loss_fn_, options);
    const at::Tensor norm = training_.grad_clip > 0
                               ? optimizer_->clip_master_grads_tensor(training_.grad_clip)
                               : optimizer_->master_grad_norm_tensor();
    optimizer_->step();
    optimizer_->zero_grad();
    fetched = step_figures(out[0].reduce_mean(), norm, optimizer_->overflow_tensor()).cpu();
  }
  const bool overflow = fetched[2].item<double>() != 0;
  optimizer_->record_overflow(overflow);
  r.loss = replica_mean(fetched[0].item<double>());
  r.norm = overflow ? -1.0 : fetched[1].item<double>();  // -1: skipped (SMP's clip_master_grads)
  r.step_s = std::chrono::duration<double>(Clock::now() - step_start).count();
  r.elapsed_s = std::chrono::duration<double>(Clock::now() - start_).count();
  if (s > summary_.first_step) step_seconds_ += r.step_s;
  return r;
}

// The step's progress line and metrics line; the loss joins the curve and the summary.
void Trainer::report_step(int64_t s, const StepResult& r) {
  const TrainingConfig& t = training_;
  const double memory = world_max(memory_mb(device_));
  summary_.train_losses.push_back(r.loss);
  summary_.grad_norms.push_back(r.norm);
  train_curve_.emplace_back(s + 1, r.loss);
  const double rate = t.global_batch * t.seq_len / r.step_s;
  const double mfu = model_flops_utilisation(config_, rate);
  if (lead_) {
    char mfu_text[32] = "MFU n/a";
    if (mfu > 0) std::snprintf(mfu_text, sizeof(mfu_text), "MFU %.1f%%", 100 * mfu);
    std::printf("step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %s "
                "| mem %.0f MB%s/rank | ETA %s\n",
                static_cast<long long>(s + 1), static_cast<long long>(t.steps), r.loss, r.lr, r.norm,
                rate, mfu_text, memory, device_.is_cuda() ? " GPU" : "",
                duration(r.elapsed_s / (s + 1) * (t.steps - s - 1)).c_str());
    std::fflush(stdout);
  }
  log_metrics({{"step", s + 1}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.norm},
               {"tokens_per_s", rate}, {"mfu", mfu},
               {device_.is_cuda() ? "gpu_peak_reserved_mb" : "max_rss_mb", memory},
               {"time_s", r.elapsed_s}, {"overflow", optimizer_->overflow()}});
}

// The mean validation loss over the replicas: the same val_batches batches every time, so
// losses compare; dropout off meanwhile.
double Trainer::validate() {
  model_->set_training(false);
  val_data_->set_position({});
  double sum = 0;
  for (int64_t i = 0; i < training_.val_batches; ++i) {
    auto [x, y] = val_data_->next();
    tp::check_labels(y, config_.model.vocab_size);
    StepOptions eval;
    eval.train = false;
    sum += step(*dmodel_, {to_device(x)}, {to_device(y)}, loss_fn_, eval)[0].reduce_mean().item<double>();
  }
  model_->set_training(true);
  return replica_mean(sum / training_.val_batches);
}

void Trainer::report_validation(int64_t steps_done, double loss) {
  val_curve_.emplace_back(steps_done, loss);
  summary_.final_val_loss = loss;
  if (lead_) std::printf("validation loss %.4f (unigram entropy %.4f)\n", loss, entropy_);
  log_metrics({{"step", steps_done}, {"val_loss", loss}});
}

// A checkpoint with what resume() reads back: the step, the data position and the curves.
void Trainer::save(const std::string& tag, bool partial, int64_t steps_done) {
  const auto begin = Clock::now();
  const LoaderPosition position = train_data_->position();
  const json user = {{"step", steps_done}, {"train_position", {position.epoch, position.cursor}},
                     {"train_curve", curve_json(train_curve_)}, {"val_curve", curve_json(val_curve_)}};
  // checkpoint.test_kill_rank: fault injection for tests, that rank dies in the middle of the save.
  const std::function<void()> kill_hook = [this] {
    if (rank() == checkpoint_.test_kill_rank) ::raise(SIGKILL);
  };
  save_checkpoint(checkpoint_.dir, tag, partial, *dmodel_, optimizer_.get(), user,
                  static_cast<int>(checkpoint_.keep), hf_format(config_.model),
                  checkpoint_.test_kill_rank >= 0 ? kill_hook : std::function<void()>());
  if (lead_) {
    std::printf("checkpoint %s/%s%s saved in %.2f s\n", checkpoint_.dir.c_str(), tag.c_str(),
                partial ? "_partial" : "", std::chrono::duration<double>(Clock::now() - begin).count());
    std::fflush(stdout);
  }
}

void Trainer::log_metrics(const json& line) {
  if (lead_) metrics_ << line.dump() << "\n" << std::flush;
}

// ---- sample ----

// A sample from the prompt, one token at a time through the pipeline; every rank draws the
// same token from the same generator.
void Trainer::sample() {
  const TrainingConfig& t = training_;
  model_->set_training(false);
  model_->set_prescaled_batch(true);  // every rank holds the same prompt
  std::vector<int> tokens = tokenizer_->encode(t.prompt);
  if (tokens.empty()) tokens.push_back(tokenizer_->eot());
  prompt_tokens_ = tokens.size();
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(t.seed + 7);
  const LossFn last_logits = [this](const Values& out, const Values&) -> Values {
    return {model_->full_logits(out[0]).select(1, -1)};
  };
  for (int64_t i = 0; i < t.sample_tokens; ++i) {
    const int64_t context = std::min<int64_t>(static_cast<int64_t>(tokens.size()), t.seq_len);
    at::Tensor ctx = at::tensor(std::vector<int64_t>(tokens.end() - context, tokens.end()), at::kLong)
                         .view({1, context})
                         .to(device_);
    StepOptions gen;
    gen.train = false;
    gen.microbatches = 1;
    const at::Tensor logits = step(*dmodel_, {ctx}, {}, last_logits, gen)[0].outputs()[0][0];
    const at::Tensor probs =
        at::softmax(logits.to(at::kFloat).cpu() / std::max(t.temperature, 1e-6), -1);
    tokens.push_back(static_cast<int>(at::multinomial(probs, 1, false, generator).item<int64_t>()));
  }
  summary_.sample = tokenizer_->decode(tokens);
}

// ---- report ----

// The pictures, the sample and the summary in the run directory, and the final lines, by
// rank 0; the timeline shows every pipeline rank of rank 0's pipeline.
void Trainer::report() {
  const auto per_rank = gather_traces(*dmodel_);
  if (!lead_) return;
  write_run_files(per_rank);
  std::printf("\nfinal: train loss %.4f, validation loss %.4f, unigram entropy %.4f nats; "
              "%.0f tokens/s; %s\n", summary_.train_losses.back(), summary_.final_val_loss,
              entropy_, summary_.tokens_per_s, duration(total_s_).c_str());
  std::printf("sample:\n%s\n\nrun directory: %s\n", train::valid_utf8(summary_.sample).c_str(),
              config_.run_dir.c_str());  // (sample.txt keeps the raw bytes)
  std::fflush(stdout);
}

void Trainer::write_run_files(const std::vector<std::vector<pipeline::TraceEvent>>& per_rank) {
  const std::string& dir = config_.run_dir;
  files::write_file_atomic(dir + "/timeline.svg",
                  svg_timeline("the last step's pipeline timeline (rank 0's pipeline)", per_rank));
  pipeline::write_chrome_trace(dir + "/timeline.json", 0, dmodel_->last_trace());
  files::write_file_atomic(dir + "/loss.svg",
                  svg_line_chart("loss, " + config_.model.name + " on " + std::to_string(size()) + " ranks",
                                 "step", "cross-entropy (nats)",
                                 {{"train", train_curve_, "#1f77b4"}, {"validation", val_curve_, "#d62728"}},
                                 {{"unigram entropy", entropy_}}));
  files::write_file_atomic(dir + "/sample.txt", summary_.sample + "\n");
  files::write_file_atomic(dir + "/summary.json",
                  json{{"final_train_loss", summary_.train_losses.back()},
                       {"final_val_loss", summary_.final_val_loss},
                       {"unigram_entropy", entropy_}, {"tokens_per_s", summary_.tokens_per_s},
                       {"mfu", summary_.mfu}, {"device", training_.device},
                       {"steps", training_.steps}, {"seconds", total_s_},
                       {"layout", {{"world", size()}, {"pp", pp_size()}, {"tp", tp_size()}, {"dp", rdp_size()}}},
                       {"prompt_tokens", prompt_tokens_}}
                      .dump(2) + "\n");
}

}  // namespace

at::Tensor step_figures(const at::Tensor& loss, const at::Tensor& norm, const at::Tensor& overflow) {
  const at::Tensor here = loss.device() == norm.device() ? loss.to(at::kDouble)
                                                         : loss.to(norm.device(), at::kDouble);
  return at::stack({here.reshape({}), norm, overflow.to(at::kDouble)});
}

std::string metrics_up_to_step(const std::string& text, int64_t step) {
  std::string kept;
  bool dropping = false;  // from the first line dropped on, lines without a step go too
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    bool keep = false;
    if (j.is_object() && j.contains("step")) {
      keep = j["step"].is_number_integer() && j["step"].get<int64_t>() <= step;
    } else if (j.is_object()) {
      keep = !dropping;
    }
    if (keep) {
      kept += line + "\n";
    } else {
      dropping = true;
    }
  }
  return kept;
}

TrainSummary train(const TrainConfig& c) {
  c.validate(size());  // the batch arithmetic and the layout, before anything runs
  return Trainer(c).run();
}

}  // namespace smp::train

// The training loop of smp-train (see trainer.h).
#include "smp/train/trainer.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
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
#include "smp/train/data_loader.h"
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
                        {"device", t.device}, {"peak_tflops", t.peak_tflops},
                        {"activation_checkpointing", t.activation_checkpointing}}},
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

// The memory this rank trains in: on the CPU its resident set; on a GPU the peak that the
// caching allocator has reserved on the device (what nvidia-smi shows, less the CUDA context).
double memory_mb(const at::Device& device) {
#ifdef SMP_TRAIN_CUDA_STATS
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.reserved_bytes[aggregate].peak) / (1 << 20);
  }
#endif
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// Mean of a scalar over the data-parallel replicas (equal over TP and PP ranks already).
double replica_mean(double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  process_group(CommGroup::RDP_GROUP).all_reduce(t, comm::ReduceOp::kAvg).wait();
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

// The device this rank trains on: the CPU, or GPU local_rank % GPUs.
at::Device training_device(const TrainingConfig& t) {
  if (t.device == "cpu") return at::kCPU;
  const int gpus = at::hasCUDA() ? static_cast<int>(at::detail::getCUDAHooks().deviceCount()) : 0;
  if (gpus == 0) {
    throw ConfigError("training.device \"cuda\": this machine has no CUDA device; allowed here: \"cpu\"");
  }
  return {at::kCUDA, static_cast<c10::DeviceIndex>(local_rank() % gpus)};
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const DistributedModel& dmodel,
                                                const TrainingConfig& t) {
  // Weight decay on matrices only; biases, norms and positions are left alone.
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : dmodel.local_parameter_info()) {
    const bool positions = p.name.size() >= 3 && p.name.compare(p.name.size() - 3, 3, "wpe") == 0;
    (p.tensor.dim() >= 2 && !positions ? decay : no_decay).push_back(p.tensor);
  }
  auto options = torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2}).weight_decay(t.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options));
  auto no_decay_options = std::make_unique<torch::optim::AdamWOptions>(options);
  no_decay_options->weight_decay(0.0);
  groups.emplace_back(no_decay, std::move(no_decay_options));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), options);
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
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

}  // namespace

TrainSummary train(const TrainConfig& c) {
  const TrainingConfig& t = c.training;
  const bool lead = rank() == 0;
  const at::Device device = training_device(t);  // before anything is written
  const int replicas = rdp_size();
  if (t.global_batch % replicas != 0) {
    throw ConfigError("training.global_batch (" + std::to_string(t.global_batch) +
                      ") must divide by the data-parallel replicas (" + std::to_string(replicas) + ")");
  }
  const int64_t batch = t.global_batch / replicas;
  if (batch % config().microbatches != 0) {
    throw ConfigError("training.global_batch / replicas (" + std::to_string(batch) +
                      ") must divide by smp.microbatches (" +
                      std::to_string(config().microbatches) + ")");
  }
  const auto tokenizer = make_tokenizer(c.data.vocab_json, c.data.merges_txt);
  if (tokenizer->vocab_size() > c.model.vocab_size) {
    throw ConfigError("model.vocab_size (" + std::to_string(c.model.vocab_size) +
                      ") is smaller than the tokenizer's (" +
                      std::to_string(tokenizer->vocab_size()) + ")");
  }
  const json data = prepare_run(c, *tokenizer);
  DataLoader train_data(data["train"].get<std::vector<std::string>>(), t.seq_len, batch, t.seed,
                        rdp_rank(), replicas);
  DataLoader val_data(data["val"].get<std::vector<std::string>>(), t.seq_len, batch, t.seed + 1,
                      rdp_rank(), replicas);
  std::vector<const TokenShard*> shards;
  for (const auto& s : train_data.shards()) shards.push_back(s.get());
  const double entropy = lead ? unigram_entropy(shards, tokenizer->vocab_size()) : 0;

  at::manual_seed(t.seed);
  // SMP's delayed_parameter_initialization (with sharded data parallelism): each layer is sliced
  // as soon as it is built, so no rank ever holds the whole model.
  std::shared_ptr<dp::DelayedSlices> delayed;
  std::function<void(Layer&)> on_layer;
  if (config().delayed_parameter_initialization) {
    if (!c.init_from_hf.empty()) {
      throw ConfigError("model.from_hf loads whole weights; it cannot be combined with "
                        "\"delayed_parameter_initialization\": true");
    }
    const int s = config().sharded_data_parallel_degree;
    delayed = std::make_shared<dp::DelayedSlices>(s, rdp_rank() % s);
    on_layer = [delayed, seen = std::make_shared<std::set<const void*>>(),
                index = std::make_shared<int>(0)](Layer& layer) {
      std::vector<at::Tensor> own;
      std::vector<bool> sharded;
      for (size_t j = 0; j < layer.parameters.size(); ++j) {
        if (!seen->insert(layer.parameters[j].unsafeGetTensorImpl()).second) continue;
        own.push_back(layer.parameters[j]);
        sharded.push_back(j < layer.tp_shards.size() && layer.tp_shards[j].sharded());
      }
      delayed->take((*index)++, own, sharded);
    };
  }
  models::Model model = models::build_model(c.model, tp::TpGroup(process_group(CommGroup::TP_GROUP)),
                                            /*separate_tied_head=*/pp_size() > 1, on_layer);
  if (!c.init_from_hf.empty()) models::load_hf(c.init_from_hf, model);  // fine-tuning
  if (delayed) {
    delayed->to(device);
  } else {
    for (auto& layer : model.layers) {  // built on the CPU from the seed, then moved (as Module::to)
      for (auto& p : layer.parameters) {
        if (p.device() != device) p.set_data(p.to(device));
      }
    }
  }
  std::vector<std::string> layer_names;
  for (const auto& layer : model.layers) layer_names.push_back(layer.name);
  DistributedModelOptions model_options;
  model_options.tied_copies = model.tied_copies;
  model_options.delayed_slices = delayed;
  DistributedModel dmodel(std::move(model.layers), model_options);  // keeps only its own stages
  if (t.activation_checkpointing != "none") {
    dmodel.set_activation_checkpointing("block", {t.activation_checkpointing});
  }
  const CheckpointConfig& ck = c.checkpoint;
  const std::string resume_tag = ck.resume == "newest" ? "" : ck.resume;
  // Resuming under the same pipeline keeps the checkpoint's partition (as SMP does).
  if (ck.resume.empty() || !use_checkpoint_partition(ck.dir, dmodel, resume_tag)) {
    dmodel.partition({at::zeros({batch / config().microbatches, t.seq_len}, at::kLong).to(device)});
  }
  print_startup(c, layer_names, dmodel, data, entropy);
  DistributedOptimizer optimizer(dmodel, make_adamw(dmodel, t));
  const LossFn loss_fn = [&model](const Values& out, const Values& y) { return model.loss(out, y); };

  TrainSummary summary;
  std::vector<std::pair<double, double>> train_curve, val_curve;
  if (!ck.resume.empty()) {
    const json user = resume_from_checkpoint(ck.dir, dmodel, &optimizer, resume_tag);
    summary.first_step = user.at("step").get<int64_t>();
    train_data.set_position({user.at("train_position").at(0).get<int64_t>(),
                             user.at("train_position").at(1).get<int64_t>()});
    if (summary.first_step >= t.steps) {
      throw ConfigError("checkpoint.resume: the checkpoint is at step " +
                        std::to_string(summary.first_step) + " and training.steps is " +
                        std::to_string(t.steps) + "; raise training.steps to train on");
    }
    train_curve = curve_from_json(user.at("train_curve"));
    val_curve = curve_from_json(user.at("val_curve"));
    if (lead) std::printf("resumed at step %lld\n", static_cast<long long>(summary.first_step));
  }
  auto save = [&](const std::string& tag, bool partial, int64_t steps_done) {
    const auto begin = Clock::now();
    const LoaderPosition position = train_data.position();
    const json user = {{"step", steps_done}, {"train_position", {position.epoch, position.cursor}},
                       {"train_curve", curve_json(train_curve)}, {"val_curve", curve_json(val_curve)}};
    save_checkpoint(ck.dir, tag, partial, dmodel, &optimizer, user, static_cast<int>(ck.keep),
                    hf_format(c.model));
    if (lead) {
      std::printf("checkpoint %s/%s%s saved in %.2f s\n", ck.dir.c_str(), tag.c_str(),
                  partial ? "_partial" : "", std::chrono::duration<double>(Clock::now() - begin).count());
      std::fflush(stdout);
    }
  };

  std::ofstream metrics;
  if (lead) metrics.open(c.run_dir + "/metrics.jsonl", ck.resume.empty() ? std::ios::trunc : std::ios::app);
  auto log_metrics = [&](const json& line) {
    if (lead) metrics << line.dump() << "\n" << std::flush;
  };
  auto validate = [&]() {  // the same validation batches every time, so losses compare
    model.set_training(false);
    val_data.set_position({});
    double sum = 0;
    for (int64_t i = 0; i < t.val_batches; ++i) {
      auto [x, y] = val_data.next();
      StepOptions eval;
      eval.train = false;
      sum += step(dmodel, {x.to(device)}, {y.to(device)}, loss_fn, eval)[0].reduce_mean().item<double>();
    }
    model.set_training(true);
    return replica_mean(sum / t.val_batches);
  };

  summary.run_dir = c.run_dir;
  summary.unigram_entropy = entropy;
  const int64_t tokens_per_step = t.global_batch * t.seq_len;
  const auto start = Clock::now();
  double step_seconds = 0;  // training steps after the first (which partitions and warms up)
  for (int64_t s = summary.first_step; s < t.steps; ++s) {
    const auto step_start = Clock::now();
    const double lr = learning_rate(t, s);
    set_lr(optimizer.optimizer(), lr);
    auto [x, y] = train_data.next();
    StepOptions options;
    options.trace = s + 1 == t.steps;
    const auto out = step(dmodel, {x.to(device)}, {y.to(device)}, loss_fn, options);
    const double norm = t.grad_clip > 0 ? optimizer.clip_master_grads(t.grad_clip) : 0;
    optimizer.step();
    optimizer.zero_grad();
    const double loss = replica_mean(out[0].reduce_mean().item<double>());
    const double step_s = std::chrono::duration<double>(Clock::now() - step_start).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (s > summary.first_step) step_seconds += step_s;
    const double memory = world_max(memory_mb(device));
    summary.train_losses.push_back(loss);
    train_curve.emplace_back(s + 1, loss);
    const double rate = tokens_per_step / step_s;
    const double mfu = t.peak_tflops > 0
                           ? c.model.flops_per_token(t.seq_len) * rate / (t.peak_tflops * 1e12 * size())
                           : 0;
    if (lead) {
      char mfu_text[32] = "MFU n/a";
      if (mfu > 0) std::snprintf(mfu_text, sizeof(mfu_text), "MFU %.1f%%", 100 * mfu);
      std::printf("step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %s "
                  "| mem %.0f MB%s/rank | ETA %s\n",
                  static_cast<long long>(s + 1), static_cast<long long>(t.steps), loss, lr, norm,
                  rate, mfu_text, memory, device.is_cuda() ? " GPU" : "", duration(elapsed / (s + 1) * (t.steps - s - 1)).c_str());
      std::fflush(stdout);
    }
    log_metrics({{"step", s + 1}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                 {"tokens_per_s", rate}, {"mfu", mfu},
                 {device.is_cuda() ? "gpu_peak_reserved_mb" : "max_rss_mb", memory}, {"time_s", elapsed},
                 {"overflow", optimizer.overflow()}});
    const bool last = s + 1 == t.steps;
    if (last || (t.val_every > 0 && (s + 1) % t.val_every == 0)) {
      const double val = validate();
      val_curve.emplace_back(s + 1, val);
      summary.final_val_loss = val;
      if (lead) std::printf("validation loss %.4f (unigram entropy %.4f)\n", val, entropy);
      log_metrics({{"step", s + 1}, {"val_loss", val}});
    }
    if (ck.every > 0 && (s + 1) % ck.every == 0) save("step_" + std::to_string(s + 1), true, s + 1);
  }
  if (ck.full_at_end) save("final", false, t.steps);
  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  const int64_t timed_steps = t.steps - summary.first_step - 1;
  summary.tokens_per_s = step_seconds > 0 ? tokens_per_step * timed_steps / step_seconds : 0;
  summary.mfu = t.peak_tflops > 0 ? c.model.flops_per_token(t.seq_len) * summary.tokens_per_s /
                                        (t.peak_tflops * 1e12 * size())
                                  : 0;

  // A sample from the prompt, one token at a time through the pipeline; every rank draws the
  // same token from the same generator.
  model.set_training(false);
  std::vector<int> tokens = tokenizer->encode(t.prompt);
  if (tokens.empty()) tokens.push_back(tokenizer->eot());
  const size_t prompt_tokens = tokens.size();
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(t.seed + 7);
  const LossFn last_logits = [&model](const Values& out, const Values&) -> Values {
    return {model.full_logits(out[0]).select(1, -1)};
  };
  for (int64_t i = 0; i < t.sample_tokens; ++i) {
    const int64_t context = std::min<int64_t>(static_cast<int64_t>(tokens.size()), t.seq_len);
    at::Tensor ctx = at::tensor(std::vector<int64_t>(tokens.end() - context, tokens.end()), at::kLong)
                         .view({1, context})
                         .to(device);
    StepOptions gen;
    gen.train = false;
    gen.microbatches = 1;
    const at::Tensor logits = step(dmodel, {ctx}, {}, last_logits, gen)[0].outputs()[0][0];
    const at::Tensor probs =
        at::softmax(logits.to(at::kFloat).cpu() / std::max(t.temperature, 1e-6), -1);
    tokens.push_back(static_cast<int>(at::multinomial(probs, 1, false, generator).item<int64_t>()));
  }
  summary.sample = tokenizer->decode(std::vector<int>(tokens.begin(), tokens.end()));

  // Pictures and the summary, by rank 0; the timeline comes from rank 0's pipeline.
  json trace = json::array();
  for (const auto& e : dmodel.last_trace()) {
    trace.push_back({pipeline::to_string(e.action), static_cast<int>(e.action.kind), e.action.stage,
                     e.action.microbatch, e.action.peer, e.start_s, e.end_s, e.bytes});
  }
  const auto traces = allgather(trace.dump(), CommGroup::PP_GROUP);
  if (lead) {
    std::vector<std::vector<pipeline::TraceEvent>> per_rank;
    for (const auto& text : traces) {
      per_rank.emplace_back();
      for (const auto& e : json::parse(text)) {
        per_rank.back().push_back({{static_cast<pipeline::ActionKind>(e[1].get<int>()),
                                    e[2].get<int>(), e[3].get<int>(), e[4].get<int>()},
                                   e[5].get<double>(), e[6].get<double>(), e[7].get<int64_t>()});
      }
    }
    files::write_file_atomic(c.run_dir + "/timeline.svg",
                    svg_timeline("the last step's pipeline timeline (rank 0's pipeline)", per_rank));
    pipeline::write_chrome_trace(c.run_dir + "/timeline.json", 0, per_rank.empty() ? std::vector<pipeline::TraceEvent>{} : per_rank[0]);
    files::write_file_atomic(c.run_dir + "/loss.svg",
                    svg_line_chart("loss, " + c.model.name + " on " + std::to_string(size()) + " ranks",
                                   "step", "cross-entropy (nats)",
                                   {{"train", train_curve, "#1f77b4"}, {"validation", val_curve, "#d62728"}},
                                   {{"unigram entropy", entropy}}));
    files::write_file_atomic(c.run_dir + "/sample.txt", summary.sample + "\n");
    files::write_file_atomic(c.run_dir + "/summary.json",
                    json{{"final_train_loss", summary.train_losses.back()},
                         {"final_val_loss", summary.final_val_loss},
                         {"unigram_entropy", entropy}, {"tokens_per_s", summary.tokens_per_s},
                         {"mfu", summary.mfu}, {"device", t.device},
                         {"steps", t.steps}, {"seconds", total_s},
                         {"layout", {{"world", size()}, {"pp", pp_size()}, {"tp", tp_size()}, {"dp", rdp_size()}}},
                         {"prompt_tokens", prompt_tokens}}
                        .dump(2) + "\n");
    std::printf("\nfinal: train loss %.4f, validation loss %.4f, unigram entropy %.4f nats; "
                "%.0f tokens/s; %s\n", summary.train_losses.back(), summary.final_val_loss,
                entropy, summary.tokens_per_s, duration(total_s).c_str());
    std::printf("sample:\n%s\n\nrun directory: %s\n", summary.sample.c_str(), c.run_dir.c_str());
    std::fflush(stdout);
  }
  return summary;
}

}  // namespace smp::train

// DistributedOptimizer's state dicts: partial (this rank's flat state and its layout) and
// per-parameter (ZeRO shards gathered), and loading either (see distributed_optimizer.h).
#include <ATen/ATen.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "optimizer_impl.h"
#include "smp/core/error.h"

namespace smp {

using nlohmann::json;
using optim::Kind;

namespace {

json options_json(Kind kind, const torch::optim::OptimizerOptions& options) {
  if (kind == Kind::kSgd) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(options);
    return {{"lr", o.lr()},
            {"momentum", o.momentum()},
            {"dampening", o.dampening()},
            {"weight_decay", o.weight_decay()},
            {"nesterov", o.nesterov()}};
  }
  auto adam_like = [](const auto& o) -> json {
    return {{"lr", o.lr()},
            {"betas", {std::get<0>(o.betas()), std::get<1>(o.betas())}},
            {"eps", o.eps()},
            {"weight_decay", o.weight_decay()},
            {"amsgrad", o.amsgrad()}};
  };
  if (kind == Kind::kAdam) return adam_like(static_cast<const torch::optim::AdamOptions&>(options));
  return adam_like(static_cast<const torch::optim::AdamWOptions&>(options));
}

void load_options(Kind kind, const json& j, torch::optim::OptimizerOptions& options) {
  if (kind == Kind::kSgd) {
    auto& o = static_cast<torch::optim::SGDOptions&>(options);
    o.lr(j.at("lr")).momentum(j.at("momentum")).dampening(j.at("dampening"));
    o.weight_decay(j.at("weight_decay")).nesterov(j.at("nesterov"));
    return;
  }
  auto adam_like = [&j](auto& o) {
    o.lr(j.at("lr")).eps(j.at("eps")).weight_decay(j.at("weight_decay")).amsgrad(j.at("amsgrad"));
    o.betas({j.at("betas").at(0).get<double>(), j.at("betas").at(1).get<double>()});
  };
  if (kind == Kind::kAdam) {
    adam_like(static_cast<torch::optim::AdamOptions&>(options));
  } else {
    adam_like(static_cast<torch::optim::AdamWOptions&>(options));
  }
}

}  // namespace

json DistributedOptimizer::Impl::meta() const {
  json groups = json::array();
  const auto& pg = inner->param_groups();
  for (size_t g = 0; g < pg.size(); ++g) {
    json names = json::array();
    for (size_t i = 0; i < param_group.size(); ++i) {
      if (param_group[i] == static_cast<int>(g)) names.push_back(reducer->params()[i].name);
    }
    groups.push_back({{"options", options_json(kind, pg[g].options())},
                      {"step", steps[g]},
                      {"momentum_started", momentum_started[g] != 0},
                      {"params", names}});
  }
  return {{"optimizer", optim::to_string(kind)},
          {"param_groups", groups},
          {"loss_scaler", scaler.state()},
          {"mixed_precision", mixed}};
}

void DistributedOptimizer::Impl::load_meta(const json& m) {
  if (m.at("optimizer").get<std::string>() != optim::to_string(kind)) {
    throw ConfigError("DistributedOptimizer::load: the state is for \"" +
                      m.at("optimizer").get<std::string>() + "\" but this optimizer is \"" +
                      optim::to_string(kind) + "\"");
  }
  auto& pg = inner->param_groups();
  const json& groups = m.at("param_groups");
  if (groups.size() != pg.size()) {
    throw ConfigError("DistributedOptimizer::load: the state has " + std::to_string(groups.size()) +
                      " parameter groups; this optimizer has " + std::to_string(pg.size()));
  }
  for (size_t g = 0; g < pg.size(); ++g) {
    load_options(kind, groups[g].at("options"), pg[g].options());
    steps[g] = groups[g].at("step").get<int64_t>();
    momentum_started[g] = groups[g].at("momentum_started").get<bool>();
  }
  scaler.load_state(m.at("loss_scaler"));
  upload_counts_and_scale();
}

OptimizerStateDict DistributedOptimizer::Impl::local_dict() const {
  OptimizerStateDict out;
  out.partial = true;
  out.meta = meta();
  json rows = json::array();
  for (const dp::Segment& s : segments) {
    rows.push_back({reducer->params()[s.param].name, s.param_offset, s.local_offset, s.numel});
  }
  out.meta["segments"] = rows;
  out.meta["local_numel"] = reducer->layout().local_numel();
  const ParallelContext& context = model.context();
  out.meta["ranks"] = {{"pp", context.pp_rank()}, {"tp", context.tp_rank()}, {"rdp", context.rdp_rank()}};
  // The state itself, not copies, as torch.optim's state_dict() hands it out: a copy would
  // double the optimizer's memory at every save (and bring offloaded state into memory).
  out.tensors = all_state();
  return out;
}

void DistributedOptimizer::Impl::load_local(const OptimizerStateDict& dict) {
  json rows = json::array();
  for (const dp::Segment& s : segments) {
    rows.push_back({reducer->params()[s.param].name, s.param_offset, s.local_offset, s.numel});
  }
  if (!dict.partial || dict.meta.value("segments", json()) != rows) {
    throw ConfigError(
        "DistributedOptimizer::load_local_state_dict: the dict's layout (segments) "
        "differs from this rank's; load a per-parameter state_dict() instead");
  }
  load_meta(dict.meta);
  for (auto& [name, t] : state) t.copy_(dict.tensors.at(name));
  if (mixed) master.copy_(dict.tensors.at("fp32_master"));
}

// The state tensors by name, fp32 masters included.
std::map<std::string, at::Tensor> DistributedOptimizer::Impl::all_state() const {
  std::map<std::string, at::Tensor> out = state;
  if (mixed) out["fp32_master"] = master;
  return out;
}

OptimizerStateDict DistributedOptimizer::Impl::full_dict() const {
  const dp::FlatLayout& layout = reducer->layout();
  OptimizerStateDict out;
  out.partial = false;
  out.meta = meta();
  for (const auto& [name, t] : all_state()) {
    // The whole flat buffer of this state: each bucket gathered from its owners.
    at::Tensor full = at::zeros({layout.flat_numel()}, t.options());
    std::vector<comm::Work> works;
    for (size_t b = 0; b < layout.buckets().size(); ++b) {
      const dp::Bucket& bucket = layout.buckets()[b];
      const at::Tensor mine =
          t.narrow(0, layout.local_base(static_cast<int>(b)), bucket.shard_numel());
      at::Tensor range = full.narrow(0, bucket.offset, bucket.padded_numel);
      if (bucket.num_shards == 1) {
        range.copy_(mine);
      } else {
        works.push_back(reducer->communicator(bucket.group).all_gather(range, mine));
      }
    }
    for (comm::Work& w : works) w.wait();
    for (size_t i = 0; i < param_group.size(); ++i) {
      if (param_group[i] < 0) continue;
      const dp::ReducedParam& p = reducer->params()[i];
      const dp::Slot& s = layout.slot(static_cast<int>(i));
      out.tensors[p.name + "/" + name] =
          full.narrow(0, s.offset, s.numel).view(p.tensor.sizes()).clone();
    }
  }
  return out;
}

void DistributedOptimizer::Impl::load_full(const OptimizerStateDict& dict) {
  if (dict.partial) {
    throw ConfigError(
        "DistributedOptimizer::load_state_dict: got a partial dict; use "
        "load_local_state_dict");
  }
  load_meta(dict.meta);
  for (auto& [name, t] : all_state()) {
    for (const dp::Segment& s : segments) {
      const std::string key = reducer->params()[s.param].name + "/" + name;
      auto it = dict.tensors.find(key);
      if (it == dict.tensors.end()) {
        throw ConfigError("DistributedOptimizer::load_state_dict: no tensor \"" + key + "\"");
      }
      t.narrow(0, s.local_offset, s.numel)
          .copy_(it->second.reshape(-1).narrow(0, s.param_offset, s.numel));
    }
  }
}

void DistributedOptimizer::Impl::apply_pending_loads() {
  if (pending_local) load_local(*pending_local);
  if (pending_full) load_full(*pending_full);
  pending_local.reset();
  pending_full.reset();
}

// --- the public calls: load before the model is partitioned is deferred (as in SMP) ---------

OptimizerStateDict DistributedOptimizer::local_state_dict() {
  if (!impl_->initialized) impl_->initialize();
  impl_->settle();  // the host's step counts and scale of the last step
  return impl_->local_dict();
}

void DistributedOptimizer::load_local_state_dict(const OptimizerStateDict& dict) {
  if (!impl_->initialized) {
    impl_->pending_local = dict;
    return;
  }
  impl_->settle();
  impl_->load_local(dict);
}

OptimizerStateDict DistributedOptimizer::state_dict() {
  if (!impl_->initialized) impl_->initialize();
  impl_->settle();  // the host's step counts and scale of the last step
  return impl_->full_dict();
}

void DistributedOptimizer::load_state_dict(const OptimizerStateDict& dict) {
  if (!impl_->initialized) {
    impl_->pending_full = dict;
    return;
  }
  impl_->settle();
  impl_->load_full(dict);
}

std::vector<DistributedOptimizer::StateSlice> DistributedOptimizer::state_slices() {
  if (!impl_->initialized) impl_->initialize();
  impl_->settle();  // the host's step counts and scale of the last step
  const Impl& impl = *impl_;
  std::vector<StateSlice> out;
  for (const auto& [name, t] : impl.all_state()) {
    for (const dp::Segment& s : impl.segments) {
      out.push_back({impl.reducer->params()[s.param].name, name, s.param_offset,
                     t.narrow(0, s.local_offset, s.numel), impl.reducer->writes_state(s.bucket)});
    }
  }
  return out;
}

nlohmann::json DistributedOptimizer::state_meta() {
  if (!impl_->initialized) impl_->initialize();
  impl_->settle();  // the host's step counts and scale of the last step
  return impl_->meta();
}

void DistributedOptimizer::load_state_meta(const nlohmann::json& meta) {
  if (!impl_->initialized) impl_->initialize();
  impl_->settle();  // the host's step counts and scale of the last step
  impl_->load_meta(meta);
}

}  // namespace smp

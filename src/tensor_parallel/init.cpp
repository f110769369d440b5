// Initialisation independent of tp and dropout RNG streams (see init.h).
#include "smp/tensor_parallel/init.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cmath>
#include <mutex>

#include "smp/core/error.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::tp {

at::Tensor init_weight(at::IntArrayRef shape, int64_t fan_in, const Init& init) {
  at::Tensor w = at::empty(shape, at::kFloat);
  if (init.kind == Init::kNormal) return w.normal_(0.0, init.std);
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return w.uniform_(-bound, bound);
}

at::Tensor init_bias(at::IntArrayRef shape, int64_t fan_in, const Init& init) {
  if (init.kind == Init::kNormal) return at::zeros(shape, at::kFloat);
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return at::empty(shape, at::kFloat).uniform_(-bound, bound);
}

at::Tensor shard_of(const at::Tensor& full, int64_t dim, const TpGroup& group) {
  if (dim < 0) return full.clone(at::MemoryFormat::Contiguous);
  return own_slice(full, dim, group).clone(at::MemoryFormat::Contiguous);
}

DropoutRng::DropoutRng(const TpGroup& group) : tp_rank_(group.rank()) {
  // One draw from the default generator: the same on every rank, whatever tp is.
  seed_ = static_cast<uint64_t>(at::empty({1}, at::kLong).random_().item<int64_t>());
}

uint64_t DropoutRng::sharded_seed() const {
  // splitmix64 of (seed, rank): a different stream on every rank of the group.
  uint64_t z = seed_ + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(tp_rank_ + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

at::Generator& DropoutRng::stream(bool sharded, const at::Device& device) {
  const std::string key = (sharded ? "s" : "r") + device.str();
  auto it = streams_.find(key);
  if (it == streams_.end()) {
    auto& base = const_cast<at::Generator&>(at::globalContext().defaultGenerator(device));
    at::Generator gen;
    {
      std::lock_guard<std::mutex> lock(base.mutex());
      gen = base.clone();
    }
    gen.set_current_seed(sharded ? sharded_seed() : seed_);
    it = streams_.emplace(key, std::move(gen)).first;
  }
  return it->second;
}

std::map<std::string, at::Tensor> DropoutRng::state() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, gen] : streams_) {
    std::lock_guard<std::mutex> lock(const_cast<at::Generator&>(gen).mutex());
    out[key] = gen.get_state();
  }
  return out;
}

void DropoutRng::load_state(const std::map<std::string, at::Tensor>& state) {
  for (const auto& [key, value] : state) {
    if (key.size() < 2 || (key[0] != 'r' && key[0] != 's')) {
      throw ConfigError("dropout RNG state: stream \"" + key + "\" is not \"<r|s><device>\"");
    }
  }
  for (auto it = streams_.begin(); it != streams_.end();) {
    it = state.count(it->first) ? std::next(it) : streams_.erase(it);
  }
  for (const auto& [key, value] : state) {
    at::Generator& gen = stream(key[0] == 's', at::Device(key.substr(1)));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(value);
  }
}

at::Tensor DropoutRng::dropout(const at::Tensor& x, double p, bool sharded, bool train) {
  if (!train || p == 0.0) return x;
  if (p < 0.0 || p >= 1.0) {
    throw ConfigError("dropout probability: got " + std::to_string(p) + "; allowed: [0, 1)");
  }
  at::Generator& gen = stream(sharded, x.device());
  // bernoulli_ locks the generator itself.
  at::Tensor keep = at::empty_like(x, at::MemoryFormat::Contiguous).bernoulli_(1.0 - p, gen);
  return x * keep * (1.0 / (1.0 - p));
}

at::Tensor DropoutRng::with_stream(bool sharded, const at::Device& device,
                                   const std::function<at::Tensor()>& draw) {
  static std::mutex swapping;  // one swap of a default generator at a time
  std::lock_guard<std::mutex> one_at_a_time(swapping);
  at::Generator& gen = stream(sharded, device);
  auto& base = const_cast<at::Generator&>(at::globalContext().defaultGenerator(device));
  // The generators' own mutexes are taken around each state copy only: the kernel takes the
  // default generator's itself.
  const auto state_of = [](at::Generator& g) {
    std::lock_guard<std::mutex> lock(g.mutex());
    return g.get_state();
  };
  const auto set_state = [](at::Generator& g, const at::Tensor& state) {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(state);
  };
  const at::Tensor before = state_of(base);
  set_state(base, state_of(gen));
  at::Tensor out;
  try {
    out = draw();
  } catch (...) {
    set_state(base, before);
    throw;
  }
  set_state(gen, state_of(base));
  set_state(base, before);
  return out;
}

}  // namespace smp::tp

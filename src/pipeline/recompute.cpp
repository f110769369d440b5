#include "smp/pipeline/recompute.h"

#include <mutex>

namespace smp {

namespace {
thread_local bool recomputing_now = false;
}  // namespace

bool recomputing() { return recomputing_now; }

RecomputeScope::RecomputeScope() : previous_(recomputing_now) { recomputing_now = true; }

RecomputeScope::~RecomputeScope() { recomputing_now = previous_; }

RngState capture_rng(const std::vector<const Layer*>& layers, size_t begin, size_t end,
                     const at::Device& device) {
  RngState state;
  auto keep = [&](const at::Generator& gen) {
    at::Generator g = gen;
    std::lock_guard<std::mutex> lock(g.mutex());
    state.generators.emplace_back(g, g.get_state());
  };
  keep(at::globalContext().defaultGenerator(at::kCPU));
  if (!device.is_cpu()) keep(at::globalContext().defaultGenerator(device));
  for (size_t i = begin; i < end; ++i) {
    if (layers[i]->get_state) state.layers.emplace_back(layers[i], layers[i]->get_state());
  }
  return state;
}

void restore_rng(RngState& state) {
  for (auto& [gen, value] : state.generators) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(value);
  }
  for (const auto& [layer, value] : state.layers) layer->set_state(value);
}

}  // namespace smp

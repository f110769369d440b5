// HostSyncCounter: the RecordFunction observer behind step_ops' figures (see host_syncs.h).
#include "smp/train/host_syncs.h"

#include <ATen/record_function.h>

#include <atomic>
#include <mutex>
#include <set>

#include "smp/core/error.h"

namespace smp::train {

// The one active counter's state: the phase counted into and the copies to the host seen.
struct HostSyncCounter::State {
  std::mutex mutex;
  HostSyncCounter* owner = nullptr;
  Phase* phase = nullptr;  // nullptr: paused
  bool host_tensors = false;
  std::set<const void*> host_copies;  // storages made by counted copies to the host
};

namespace {

HostSyncCounter::State g_state;
std::atomic<bool> g_counting{false};

thread_local int t_depth = 0;          // recorded FUNCTION-scope ops open on this thread
thread_local int t_to_host_depth = 0;  // of which copies to the host
thread_local int t_fused_depth = 0;    // of which PyTorch's fused optimizer kernels

struct OpContext : at::ObserverContext {
  bool to_host = false;
  bool fused = false;
};

bool explicit_cpu_device(const at::RecordFunction& fn) {
  for (const c10::IValue& v : fn.inputs()) {
    if (v.isDevice() && v.toDevice().is_cpu()) return true;
  }
  return false;
}

const void* storage_of(const c10::IValue& v) {
  if (!v.isTensor()) return nullptr;
  const at::Tensor& t = v.toTensor();
  return t.defined() && t.has_storage() ? t.storage().data() : nullptr;
}

bool waits_for_size(const std::string& name) {
  return name == "aten::nonzero" || name == "aten::masked_select" || name == "aten::equal" ||
         name.rfind("aten::unique", 0) == 0 || name == "aten::_unique2";
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const bool top = t_depth++ == 0;
  if (!g_counting.load()) return nullptr;
  const std::string name = fn.name();
  auto context = std::make_unique<OpContext>();
  if (name.rfind("aten::_fused_", 0) == 0) {
    context->fused = true;
    ++t_fused_depth;
  }
  std::lock_guard<std::mutex> lock(g_state.mutex);
  HostSyncCounter::Phase* p = g_state.phase;
  if (p == nullptr) return context;
  ++p->all;
  if (top) ++p->top, ++p->top_ops[name];
  auto sync = [&] { ++p->syncs, ++p->sync_sites[name]; };
  if (name == "aten::item") ++p->items;
  if (name == "aten::_local_scalar_dense") {
    ++p->scalar_dense;
    const void* storage = fn.inputs().empty() ? nullptr : storage_of(fn.inputs()[0]);
    if (g_state.host_tensors) {
      ++p->host_items;
    } else if (t_fused_depth > 0) {
      ++p->fused_kernel_items;
    } else if (storage && g_state.host_copies.count(storage)) {
      ++p->items_after_copy;
    } else {
      sync();
    }
  } else if ((name == "aten::to" || name == "aten::_to_copy") && t_to_host_depth == 0 &&
             !g_state.host_tensors && explicit_cpu_device(fn)) {
    ++p->to_host;
    context->to_host = true;
    ++t_to_host_depth;
    sync();
  } else if (name.find("synchronize") != std::string::npos) {
    ++p->synchronize;
    sync();
  } else if (waits_for_size(name)) {
    ++p->dynamic_shape;
    sync();
  }
  return context;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* ctx) {
  --t_depth;
  auto* context = static_cast<OpContext*>(ctx);
  if (context && context->fused) --t_fused_depth;
  if (context && context->to_host) {
    --t_to_host_depth;
    std::lock_guard<std::mutex> lock(g_state.mutex);
    for (const c10::IValue& v : fn.outputs()) {
      if (const void* s = storage_of(v)) g_state.host_copies.insert(s);
    }
  }
}

}  // namespace

HostSyncCounter::HostSyncCounter() {
  {
    std::lock_guard<std::mutex> lock(g_state.mutex);
    SMP_CHECK(g_state.owner == nullptr);  // one counter at a time
    g_state.owner = this;
    g_state.phase = nullptr;
    g_state.host_copies.clear();
  }
  at::enableRecordFunction(true);
  handle_ = at::addGlobalCallback(at::RecordFunctionCallback(on_start, on_end)
                                      .needsInputs(true)
                                      .needsOutputs(true)
                                      .scopes({at::RecordScope::FUNCTION}));
  g_counting = true;
}

HostSyncCounter::~HostSyncCounter() {
  g_counting = false;
  at::removeCallback(handle_);
  std::lock_guard<std::mutex> lock(g_state.mutex);
  g_state.owner = nullptr;
  g_state.phase = nullptr;
}

void HostSyncCounter::phase(const std::string& name, bool host_tensors) {
  std::lock_guard<std::mutex> lock(g_state.mutex);
  g_state.phase = &phases_[name];  // std::map: the address stays valid
  g_state.host_tensors = host_tensors;
}

void HostSyncCounter::pause() {
  std::lock_guard<std::mutex> lock(g_state.mutex);
  g_state.phase = nullptr;
}

void HostSyncCounter::clear() {
  std::lock_guard<std::mutex> lock(g_state.mutex);
  g_state.phase = nullptr;
  g_state.host_copies.clear();
  phases_.clear();
}

HostSyncCounter::Phase HostSyncCounter::total() const {
  Phase t;
  for (const auto& [name, p] : phases_) {
    t.top += p.top, t.all += p.all, t.syncs += p.syncs, t.scalar_dense += p.scalar_dense;
    t.items += p.items, t.host_items += p.host_items, t.items_after_copy += p.items_after_copy;
    t.fused_kernel_items += p.fused_kernel_items, t.to_host += p.to_host;
    t.synchronize += p.synchronize, t.dynamic_shape += p.dynamic_shape;
    for (const auto& [op, n] : p.sync_sites) t.sync_sites[name + ":" + op] += n;
    for (const auto& [op, n] : p.top_ops) t.top_ops[op] += n;
  }
  return t;
}

}  // namespace smp::train

// The GPU's activation store (offload_cuda.cpp, built when libtorch has CUDA): pinned host
// buffers filled and emptied on a side stream (see offload.h).
#pragma once

#include <memory>

#include "smp/pipeline/offload.h"

namespace smp::pipeline {

std::unique_ptr<ActivationStore> make_pinned_store(const at::Device& device);

}  // namespace smp::pipeline

// Profiling: what each layer costs on a trial microbatch, for the automatic partitioner.
#pragma once

#include <vector>

#include "smp/layer/layer.h"
#include "smp/pipeline/partition.h"

namespace smp::pipeline {

// Runs the layers in order on `trial_inputs` on this process: each layer's forward and
// backward are timed (best of `repeats`), its output bytes and parameter bytes counted, and
// layers listing one parameter tensor put in one share group. Parameter gradients, the default
// generators and the layers' state (Layer::get_state) are left as they were. Not collective.
// `device` (the trial inputs' device): a layer whose parameters live elsewhere (a model built
// on the host) has them moved there for its own runs and back after, so only one layer at a
// time occupies the device. On a CUDA device each run is timed between two device
// synchronisations: the kernels' time, not their launches'.
std::vector<LayerCost> profile_layers(const std::vector<Layer>& layers, const Values& trial_inputs,
                                      int repeats = 2);

// Share groups alone (no running): layers listing the same parameter tensor share a group.
std::vector<int> share_groups(const std::vector<Layer>& layers);

}  // namespace smp::pipeline

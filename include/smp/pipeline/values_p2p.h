// Tuples of tensors over point-to-point: a manifest (which positions hold a tensor) then one
// message per tensor, all on one tag; the Communicator's per-peer ordering keeps them in order.
// Used by the executor (activations, gradients) and by smp::step (returned values).
#pragma once

#include <vector>

#include "smp/comm/communicator.h"
#include "smp/layer/layer.h"

namespace smp::pipeline {

// A tuple in flight towards this rank.
class ValuesRecv {
 public:
  // Posts the manifest's receive now. Tensors arrive on `device`.
  ValuesRecv(comm::Communicator& pipe, int peer, int tag, at::Device device);
  // Posts the tensors' receives once the manifest is in. Never blocks.
  void progress();
  // Blocks until the whole tuple is in; adds its payload bytes to *bytes.
  Values wait(int64_t* bytes);

 private:
  void post_parts();

  comm::Communicator& pipe_;
  int peer_;
  int tag_;
  at::Device device_;
  comm::Work manifest_;
  std::vector<comm::Work> parts_;
  bool posted_ = false;
};

// Sends a tuple; returns the Works to wait on and adds the payload bytes to *bytes.
std::vector<comm::Work> send_values(comm::Communicator& pipe, const Values& values, int peer,
                                    int tag, int64_t* bytes);

}  // namespace smp::pipeline

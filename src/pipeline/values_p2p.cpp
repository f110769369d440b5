// Tuples of tensors over point-to-point (see values_p2p.h).
#include "smp/pipeline/values_p2p.h"

#include <ATen/ATen.h>

namespace smp::pipeline {

ValuesRecv::ValuesRecv(comm::Communicator& pipe, int peer, int tag, at::Device device)
    : pipe_(pipe), peer_(peer), tag_(tag), device_(device),
      manifest_(pipe.recv(peer, tag, at::kCPU)) {}

void ValuesRecv::progress() {
  if (!posted_ && manifest_.is_completed()) post_parts();
}

void ValuesRecv::post_parts() {
  posted_ = true;
  const at::Tensor& present = manifest_.result();
  for (int64_t i = 0; i < present.numel(); ++i) {
    if (present[i].item<int64_t>() != 0) parts_.push_back(pipe_.recv(peer_, tag_, device_));
  }
}

Values ValuesRecv::wait(int64_t* bytes) {
  manifest_.wait();
  if (!posted_) post_parts();
  Values out;
  size_t part = 0;
  const at::Tensor& present = manifest_.result();
  for (int64_t i = 0; i < present.numel(); ++i) {
    if (present[i].item<int64_t>() == 0) {
      out.emplace_back();
      continue;
    }
    parts_[part].wait();
    out.push_back(parts_[part].result());
    *bytes += static_cast<int64_t>(out.back().nbytes());
    ++part;
  }
  return out;
}

std::vector<comm::Work> send_values(comm::Communicator& pipe, const Values& values, int peer,
                                    int tag, int64_t* bytes) {
  at::Tensor present = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  for (size_t i = 0; i < values.size(); ++i) present[i] = values[i].defined() ? 1 : 0;
  std::vector<comm::Work> works{pipe.send(present, peer, tag)};
  for (const at::Tensor& t : values) {
    if (!t.defined()) continue;
    works.push_back(pipe.send(t, peer, tag));
    *bytes += static_cast<int64_t>(t.nbytes());
  }
  return works;
}

}  // namespace smp::pipeline

// TpGroup: the tensor-parallel group a primitive or parallel layer works over, and the
// arithmetic of splitting a dimension across it.
//
// A TpGroup is a view of a Communicator (it owns nothing; the communicator must outlive it,
// so build layers after smp::init and drop them before smp::shutdown), or the group of one
// (TpGroup{}): no communication at all, the layer is its own non-parallel reference.
#pragma once

#include <cstdint>
#include <string>

#include "smp/comm/communicator.h"

namespace smp::tp {

class TpGroup {
 public:
  TpGroup() = default;  // a group of one: every primitive is the identity
  explicit TpGroup(comm::Communicator& comm) : comm_(&comm) {}
  explicit TpGroup(comm::Communicator* comm) : comm_(comm) {}  // nullptr: the group of one

  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }
  // The communicator; only valid when size() > 1 (primitives never call it otherwise).
  comm::Communicator& comm() const;
  comm::Communicator* communicator() const { return comm_; }  // nullptr for the group of one

 private:
  comm::Communicator* comm_ = nullptr;
};

// Throws smp::ConfigError "<what> (<value>) is not divisible by tensor_parallel_degree (<tp>)"
// unless value % tp == 0.
void check_divisible(const std::string& what, int64_t value, int tp);

// A vocabulary split over the group is padded with zero rows to a multiple of
// kVocabMultiple * tp, so that each rank's slice of the embedding, and the head's GEMM output
// dim, is a multiple of 64: tensor-core GEMM tiles are, and a ragged last tile runs at a
// fraction of the speed (GPT-2's 50257 -> 50304 at tp 1). Megatron's
// --make-vocab-size-divisible-by does the same (128 there). It is a constant, not a setting:
// the padding changes nothing a user sees (initialisation, losses, predictions, checkpoints
// and Hugging Face files are those of the unpadded vocabulary), only up to 64 tp - 1 zero rows
// of memory.
constexpr int64_t kVocabMultiple = 64;

// The padded size: the smallest multiple of kVocabMultiple * tp that is >= vocab_size.
int64_t padded_vocab_size(int64_t vocab_size, int tp);

}  // namespace smp::tp

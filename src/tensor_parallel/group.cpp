// TpGroup and dimension-splitting helpers (see group.h).
#include "smp/tensor_parallel/group.h"

#include "smp/core/error.h"

namespace smp::tp {

comm::Communicator& TpGroup::comm() const {
  SMP_CHECK(comm_ != nullptr);
  return *comm_;
}

void check_divisible(const std::string& what, int64_t value, int tp) {
  if (tp >= 1 && value % tp == 0) return;
  throw ConfigError(what + " (" + std::to_string(value) +
                    ") is not divisible by tensor_parallel_degree (" + std::to_string(tp) +
                    "); allowed: a multiple of " + std::to_string(tp));
}

int64_t padded_vocab_size(int64_t vocab_size, int tp) {
  SMP_CHECK(tp >= 1 && vocab_size >= 0);
  const int64_t multiple = kVocabMultiple * tp;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

}  // namespace smp::tp

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

int64_t round_up(int64_t value, int64_t multiple) {
  SMP_CHECK(multiple >= 1);
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace smp::tp

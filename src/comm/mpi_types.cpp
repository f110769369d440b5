// MPI's names for torch dtypes and reductions, and the reductions MPI lacks.
//
// MPI has no 16-bit float types. bf16 and fp16 travel as MPI_UINT16_T, and their sum, max
// and min are user ops that widen to float, combine, and round back (what NCCL does too).
#include <mutex>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "internal.h"
#include "smp/core/error.h"

namespace smp::comm::detail {
namespace {

template <typename T, typename Combine>
void combine16(void* in, void* inout, int* len, Combine combine) {
  auto* a = static_cast<const T*>(in);
  auto* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    b[i] = T(combine(static_cast<float>(a[i]), static_cast<float>(b[i])));
  }
}

struct Add {
  float operator()(float a, float b) const { return a + b; }
};
struct Max {
  // NaN propagates, as in torch's max.
  float operator()(float a, float b) const { return (a != a || a > b) ? a : b; }
};
struct Min {
  float operator()(float a, float b) const { return (a != a || a < b) ? a : b; }
};

template <typename T, typename Combine>
void user_op(void* in, void* inout, int* len, MPI_Datatype*) {
  combine16<T>(in, inout, len, Combine{});
}

struct SixteenBitOps {
  MPI_Op bf16[3];  // sum, max, min
  MPI_Op fp16[3];
};

const SixteenBitOps& sixteen_bit_ops() {
  static SixteenBitOps ops;
  static std::once_flag once;
  std::call_once(once, [] {
    MPI_Op_create(&user_op<c10::BFloat16, Add>, 1, &ops.bf16[0]);
    MPI_Op_create(&user_op<c10::BFloat16, Max>, 1, &ops.bf16[1]);
    MPI_Op_create(&user_op<c10::BFloat16, Min>, 1, &ops.bf16[2]);
    MPI_Op_create(&user_op<c10::Half, Add>, 1, &ops.fp16[0]);
    MPI_Op_create(&user_op<c10::Half, Max>, 1, &ops.fp16[1]);
    MPI_Op_create(&user_op<c10::Half, Min>, 1, &ops.fp16[2]);
  });
  return ops;
}

}  // namespace

MPI_Datatype mpi_datatype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kBFloat16:
    case at::kHalf: return MPI_UINT16_T;
    case at::kInt: return MPI_INT32_T;
    case at::kLong: return MPI_INT64_T;
    case at::kShort: return MPI_INT16_T;
    case at::kChar: return MPI_INT8_T;
    case at::kByte:
    case at::kBool: return MPI_UINT8_T;
    default:
      throw CommError(std::string("smp: dtype ") + c10::toString(dtype) +
                      " cannot be reduced; allowed: float32, float64, bfloat16, float16, "
                      "int8, int16, int32, int64, uint8, bool");
  }
}

MPI_Op mpi_op(ReduceOp op, at::ScalarType dtype) {
  const int index = op == ReduceOp::kMax ? 1 : op == ReduceOp::kMin ? 2 : 0;  // kAvg sums
  if (dtype == at::kBFloat16) return sixteen_bit_ops().bf16[index];
  if (dtype == at::kHalf) return sixteen_bit_ops().fp16[index];
  if (dtype == at::kBool && index == 0) return MPI_LOR;  // a sum of bools is "any"
  static const MPI_Op kBuiltin[3] = {MPI_SUM, MPI_MAX, MPI_MIN};
  return kBuiltin[index];
}

}  // namespace smp::comm::detail

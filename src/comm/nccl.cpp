// NCCL: the device-tensor transport.
//
// NCCL's own API rather than c10d's ProcessGroupNCCL: smp already has MPI to exchange the
// ncclUniqueId, so it needs no TCPStore, and a Work polls one CUDA event plus
// ncclCommGetAsyncError against the group's deadline exactly like the MPI path does.
// Operations run on the caller's current CUDA stream, ordered after the kernels that produced
// their inputs; the Work completes when the stream has passed them.
#include "nccl.h"

#include "smp/core/error.h"

#ifdef SMP_WITH_NCCL

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

namespace smp::comm::detail {

class NcclComm {
 public:
  NcclComm(GroupState& group, int device) : device_(device) {
    ncclUniqueId id;
    if (group.rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId", group);
    check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, group.comm), "NCCL bootstrap", group);
    c10::cuda::CUDAGuard guard(device);
    check(ncclCommInitRank(&comm_, group.size, id, group.rank), "ncclCommInitRank", group);
  }
  ~NcclComm() {
    // Abort rather than destroy: destroy waits for pending work, which may never finish
    // after a timeout.
    ncclCommAbort(comm_);
  }
  ncclComm_t get() const { return comm_; }
  int device() const { return device_; }

  static void check(ncclResult_t rc, const std::string& what, const GroupState& group) {
    if (rc != ncclSuccess && rc != ncclInProgress) {
      throw CommError("smp: " + what + " on " + group.describe() +
                      " failed: " + ncclGetErrorString(rc));
    }
  }

 private:
  ncclComm_t comm_ = nullptr;
  int device_;
};

namespace {

ncclDataType_t nccl_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kChar: return ncclInt8;
    case at::kByte:
    case at::kBool: return ncclUint8;
    default:
      throw CommError(std::string("smp: dtype ") + c10::toString(dtype) +
                      " has no NCCL type; allowed: float32, float64, float16, bfloat16, int8, "
                      "int32, int64, uint8, bool");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

struct NcclWork : WorkState {
  cudaEvent_t event = nullptr;
  std::vector<at::Tensor> keep_alive;
  std::function<void()> on_complete;

  ~NcclWork() override {
    if (event) cudaEventDestroy(event);
  }
  bool poll() override {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(group->nccl->get(), &async);
    NcclComm::check(async, op, *group);
    const cudaError_t rc = cudaEventQuery(event);
    if (rc == cudaErrorNotReady) return false;
    if (rc != cudaSuccess) {
      throw CommError("smp: " + label() + ": CUDA error " + cudaGetErrorString(rc));
    }
    if (on_complete) on_complete();
    keep_alive.clear();
    return true;
  }
};

// Runs `launch(comm, stream)` on the current stream of the tensor's device and returns a Work
// that completes when the stream has passed it.
template <typename Launch>
Work run(const std::shared_ptr<GroupState>& group, const at::Tensor& tensor, std::string op,
         int64_t seq, int peer, Launch launch) {
  const int device = tensor.device().index();
  if (!group->nccl) {
    group->nccl = std::make_shared<NcclComm>(*group, device);
  } else if (group->nccl->device() != device) {
    throw CommError("smp: " + op + " on " + group->describe() + ": tensor is on cuda:" +
                    std::to_string(device) + " but the group's NCCL communicator is on cuda:" +
                    std::to_string(group->nccl->device()) + "; one device per rank");
  }
  c10::cuda::CUDAGuard guard(device);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  auto work = std::make_shared<NcclWork>();
  work->group = group;
  work->op = std::move(op);
  work->seq = seq;
  work->peer = peer;
  NcclComm::check(launch(group->nccl->get(), stream), work->op, *group);
  cudaEventCreateWithFlags(&work->event, cudaEventDisableTiming);
  cudaEventRecord(work->event, stream);
  work->keep_alive = {tensor};
  work->result = tensor;
  return Work(work);
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

}  // namespace

Work nccl_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, ReduceOp op,
                     int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  Work work = run(group, buffer, "all_reduce", seq, -1, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclAllReduce(buffer.data_ptr(), buffer.data_ptr(), buffer.numel(),
                         nccl_dtype(buffer.scalar_type()), nccl_op(op), comm, s);
  });
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);  // stream-ordered after the reduction
  return work;
}

Work nccl_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                     const at::Tensor& input, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  Work work = run(group, out, "all_gather", seq, -1, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(),
                         nccl_dtype(in.scalar_type()), comm, s);
  });
  if (!out.is_same(output)) output.copy_(out);
  return work;
}

Work nccl_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, ReduceOp op, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  Work work = run(group, out, "reduce_scatter", seq, -1, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                             nccl_dtype(in.scalar_type()), nccl_op(op), comm, s);
  });
  if (!out.is_same(output)) output.copy_(out);
  return work;
}

Work nccl_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                    int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  Work work = run(group, buffer, "broadcast", seq, -1, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclBroadcast(buffer.data_ptr(), buffer.data_ptr(), buffer.numel(),
                         nccl_dtype(buffer.scalar_type()), root, comm, s);
  });
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  return work;
}

Work nccl_send(const std::shared_ptr<GroupState>& group, const at::Tensor& payload, int peer) {
  return run(group, payload, "send", -1, peer, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclSend(payload.data_ptr(), payload.nbytes(), ncclUint8, peer, comm, s);
  });
}

Work nccl_recv(const std::shared_ptr<GroupState>& group, at::Tensor& buffer, int peer) {
  return run(group, buffer, "recv", -1, peer, [&](ncclComm_t comm, cudaStream_t s) {
    return ncclRecv(buffer.data_ptr(), buffer.nbytes(), ncclUint8, peer, comm, s);
  });
}

}  // namespace smp::comm::detail

#else  // no NCCL in this build

namespace smp::comm::detail {

class NcclComm {};

namespace {
[[noreturn]] void no_nccl(const GroupState& group) {
  throw CommError("smp: a device tensor reached " + group.describe() +
                  ", but this build of smp has no NCCL (libtorch without CUDA, or NCCL not "
                  "found at configure time); use host tensors or rebuild with NCCL");
}
}  // namespace

Work nccl_all_reduce(const std::shared_ptr<GroupState>& g, at::Tensor&, ReduceOp, int64_t) {
  no_nccl(*g);
}
Work nccl_all_gather(const std::shared_ptr<GroupState>& g, at::Tensor&, const at::Tensor&,
                     int64_t) {
  no_nccl(*g);
}
Work nccl_reduce_scatter(const std::shared_ptr<GroupState>& g, at::Tensor&, const at::Tensor&,
                         ReduceOp, int64_t) {
  no_nccl(*g);
}
Work nccl_broadcast(const std::shared_ptr<GroupState>& g, at::Tensor&, int, int64_t) {
  no_nccl(*g);
}
Work nccl_send(const std::shared_ptr<GroupState>& g, const at::Tensor&, int) { no_nccl(*g); }
Work nccl_recv(const std::shared_ptr<GroupState>& g, at::Tensor&, int) { no_nccl(*g); }

}  // namespace smp::comm::detail

#endif

// NCCL: the device-tensor transport.
//
// NCCL's own API rather than c10d's ProcessGroupNCCL: smp already has MPI to exchange the
// ncclUniqueId, so it needs no TCPStore, and a Work polls one CUDA event plus
// ncclCommGetAsyncError against the group's deadline exactly like the MPI path does.
// Operations run on the caller's current CUDA stream, ordered after the kernels that produced
// their inputs; the Work completes when the stream has passed them.
#include "nccl.h"

#include "smp/core/error.h"
#include "smp/comm/launch.h"

#ifdef SMP_WITH_NCCL

#include <chrono>
#include <cstdio>
#include <thread>

#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

namespace smp::comm::detail {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kChannelTag = 11;  // on the control communicator: a channel's ncclUniqueId

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

class NcclComm {
 public:
  // Collective over the group (peer < 0), or the channel from this rank to `peer` (`send`) or
  // from `peer`: a communicator of the two, the sender rank 0. `bounded`: within the group's
  // timeout (TimeoutError naming the group), else unbounded like a blocking ncclCommInitRank.
  NcclComm(GroupState& group, int device, bool bounded, int peer = -1, bool send = false)
      : device_(device), label_(group.describe()), timeout_s_(group.timeout_s) {
    if (peer >= 0) label_ += (send ? " channel to " : " channel from ") + group.describe_peer(peer);
    const double limit = bounded ? group.timeout_s : 1e30;
    const auto start = Clock::now();
    ncclUniqueId id;
    const bool root = peer < 0 ? group.rank == 0 : send;
    if (root) check(ncclGetUniqueId(&id), "ncclGetUniqueId", group);
    MPI_Request request;
    if (peer < 0) {
      check_mpi(MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, group.comm, &request), "NCCL bootstrap",
                group);
    } else if (send) {
      check_mpi(MPI_Isend(&id, sizeof(id), MPI_BYTE, peer, kChannelTag, group.control, &request),
                "NCCL bootstrap", group);
    } else {
      check_mpi(MPI_Irecv(&id, sizeof(id), MPI_BYTE, peer, kChannelTag, group.control, &request),
                "NCCL bootstrap", group);
    }
    for (int done = 0; !done;) {
      check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "NCCL bootstrap", group);
      if (!done && seconds_since(start) > limit) timed_out("NCCL bootstrap", start);
      if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    c10::cuda::CUDAGuard guard(device);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // init and every call return at once; settle() polls them
    const int size = peer < 0 ? group.size : 2;
    const int rank = peer < 0 ? group.rank : (send ? 0 : 1);
    check(ncclCommInitRankConfig(&comm_, size, id, rank, &config), "ncclCommInitRankConfig",
          group);
    settle("ncclCommInitRankConfig", start, limit);
    stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device);
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclComm() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    watchdog_.join();
    // Abort rather than destroy: destroy waits for pending work, which may never finish
    // after a timeout.
    ncclCommAbort(comm_);
  }
  ncclComm_t get() const { return comm_; }
  int device() const { return device_; }
  const c10::cuda::CUDAStream& stream() const { return stream_; }

  // Waits until the last call on a non-blocking communicator has been issued (not run).
  void settle(const std::string& what, Clock::time_point start, double limit) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclInProgress) {
        if (state != ncclSuccess) {
          throw CommError("smp: " + what + " on " + label_ + " failed: " +
                          ncclGetErrorString(state));
        }
        return;
      }
      if (seconds_since(start) > limit) timed_out(what, start);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // The watchdog follows `event` (recorded after `label`'s operation on the communication
  // stream) until the stream passes it; past the timeout, or on an asynchronous NCCL error, it
  // ends the job with the message the MPI path gives.
  void watch_event(cudaEvent_t event, std::string label) {
    std::lock_guard<std::mutex> lock(mutex_);
    watched_.push_back({event, std::move(label), Clock::now()});
  }

  static void check(ncclResult_t rc, const std::string& what, const GroupState& group) {
    if (rc != ncclSuccess && rc != ncclInProgress) {
      throw CommError("smp: " + what + " on " + group.describe() +
                      " failed: " + ncclGetErrorString(rc));
    }
  }

 private:
  struct Watched {
    cudaEvent_t event;
    std::string label;
    Clock::time_point start;
  };

  [[noreturn]] void timed_out(const std::string& what, Clock::time_point start) {
    throw TimeoutError("smp: " + what + " on " + label_ + " timed out after " +
                       std::to_string(seconds_since(start)) +
                       " s: a member of the group never joined (dead, hung, or making its "
                       "groups in another order). The job cannot go on; abort it.");
  }

  void watch() {
    c10::cuda::CUDAGuard guard(device_);  // event queries must not make a context elsewhere
    for (;;) {
      std::vector<Watched> pending;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;
        pending.swap(watched_);
      }
      std::vector<Watched> keep;
      for (Watched& w : pending) {
        const cudaError_t rc = cudaEventQuery(w.event);
        if (rc == cudaSuccess) {
          cudaEventDestroy(w.event);
          continue;
        }
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(comm_, &async);
        std::string problem;
        if (rc != cudaErrorNotReady) problem = std::string("CUDA error ") + cudaGetErrorString(rc);
        if (async != ncclSuccess && async != ncclInProgress) {
          problem = std::string("NCCL error ") + ncclGetErrorString(async);
        }
        if (problem.empty() && seconds_since(w.start) > timeout_s_) {
          problem = "timed out after " + std::to_string(seconds_since(w.start)) +
                    " s; a peer never completed its side (dead, hung, or waiting elsewhere)";
        }
        if (!problem.empty()) {
          std::fprintf(stderr, "smp: %s: %s. The communicator is unusable now; ending the job.\n",
                       w.label.c_str(), problem.c_str());
          ncclCommAbort(comm_);
          abort_world(1);
        }
        keep.push_back(w);
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        watched_.insert(watched_.begin(), keep.begin(), keep.end());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(keep.empty() ? 20 : 2));
    }
  }

  ncclComm_t comm_ = nullptr;
  int device_;
  std::string label_;
  double timeout_s_;
  c10::cuda::CUDAStream stream_ = c10::cuda::getDefaultCUDAStream();
  std::mutex mutex_;
  std::vector<Watched> watched_;
  bool stop_ = false;
  std::thread watchdog_;
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

// One operation on a group's communication stream. wait() does not block the host: the
// caller's current stream waits on the operation's event (c10d's model), and the watchdog
// reports it if it never ends. is_completed() asks the event.
struct NcclWork : WorkState {
  int device = 0;               // the GPU it runs on
  cudaEvent_t event = nullptr;  // the watchdog's copy is destroyed by the watchdog
  cudaEvent_t done = nullptr;   // recorded with `event`, for the waiters
  std::vector<at::Tensor> keep_alive;
  std::function<void()> on_complete;  // stream-ordered after the operation (copy back)

  ~NcclWork() override {
    if (done) cudaEventDestroy(done);
  }
  bool poll() override {
    const cudaError_t rc = cudaEventQuery(done);
    if (rc == cudaErrorNotReady) return false;
    if (rc != cudaSuccess) {
      throw CommError("smp: " + label() + ": CUDA error " + cudaGetErrorString(rc));
    }
    finish();
    return true;
  }
  bool wait_on_stream() override {
    c10::cuda::CUDAGuard guard(device);
    cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(device).stream(), done, 0);
    finish();
    return true;
  }
  void finish() {
    if (on_complete) on_complete();
    on_complete = nullptr;
    keep_alive.clear();
  }
};

// Runs `launch(comm, stream)` on the group's communication stream, after the work the caller's
// current stream has queued (the tensors' producers), and returns its Work.
// `result` (when not the first tensor) is a non-contiguous target that the first tensor is
// copied back into once the operation is done (stream-ordered when waited on a stream).
template <typename Launch>
Work run(const std::shared_ptr<GroupState>& group, NcclComm& nccl,
         const std::vector<at::Tensor>& tensors, std::string op, int64_t seq, int peer,
         Launch launch, at::Tensor result = {}) {
  const int device = tensors.front().device().index();
  if (nccl.device() != device) {
    throw CommError("smp: " + op + " on " + group->describe() + ": tensor is on cuda:" +
                    std::to_string(device) + " but the group's NCCL communicator is on cuda:" +
                    std::to_string(nccl.device()) + " (this rank's GPU); one device per rank");
  }
  c10::cuda::CUDAGuard guard(device);
  cudaStream_t compute = c10::cuda::getCurrentCUDAStream(device).stream();
  cudaStream_t comm_stream = nccl.stream().stream();
  cudaEvent_t ready;
  cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
  cudaEventRecord(ready, compute);
  cudaStreamWaitEvent(comm_stream, ready, 0);
  cudaEventDestroy(ready);  // safe: destruction waits for the recorded work to be captured
  auto work = std::make_shared<NcclWork>();
  work->device = device;
  work->group = group;
  work->op = std::move(op);
  work->seq = seq;
  work->peer = peer;
  NcclComm::check(launch(nccl.get(), comm_stream), work->op, *group);
  nccl.settle(work->op, Clock::now(), group->timeout_s);
  cudaEventCreateWithFlags(&work->done, cudaEventDisableTiming);
  cudaEventRecord(work->done, comm_stream);
  cudaEventCreateWithFlags(&work->event, cudaEventDisableTiming);
  cudaEventRecord(work->event, comm_stream);
  nccl.watch_event(work->event, work->label());
  // The caching allocator must not reuse these tensors' memory before the communication stream
  // is done with them.
  for (const at::Tensor& t : tensors) {
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), nccl.stream());
  }
  work->keep_alive = tensors;
  work->result = tensors.front();
  if (result.defined() && !result.is_same(tensors.front())) {
    at::Tensor buffer = tensors.front();
    work->on_complete = [buffer, result]() mutable { result.copy_(buffer); };
    work->result = result;
  }
  return Work(work);
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// The group's communicator, or the channel to (`send`) or from `peer`. A group ProcessGroups did
// not make (tests' own) makes them here, on first use.
NcclComm& communicator(const std::shared_ptr<GroupState>& group, const at::Tensor& tensor,
                       int peer = -1, bool send = false) {
  if (!group->no_device_path.empty()) throw CommError(group->no_device_path);
  std::shared_ptr<NcclComm>& comm = peer < 0 ? group->nccl : group->nccl_channels[{peer, send}];
  if (!comm) comm = std::make_shared<NcclComm>(*group, tensor.device().index(), false, peer, send);
  return *comm;
}

Work device_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, ReduceOp op,
                     int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  return run(group, communicator(group, buffer), {buffer}, "all_reduce", seq, -1,
                         [&](ncclComm_t comm, cudaStream_t s) {
                           return ncclAllReduce(buffer.data_ptr(), buffer.data_ptr(),
                                                buffer.numel(), nccl_dtype(buffer.scalar_type()),
                                                nccl_op(op), comm, s);
                         }, tensor);
}

Work device_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                     const at::Tensor& input, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  return run(group, communicator(group, in), {out, in}, "all_gather", seq, -1,
                         [&](ncclComm_t comm, cudaStream_t s) {
                           return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(),
                                                nccl_dtype(in.scalar_type()), comm, s);
                         }, output);
}

Work device_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, ReduceOp op, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  return run(group, communicator(group, in), {out, in}, "reduce_scatter", seq, -1,
                         [&](ncclComm_t comm, cudaStream_t s) {
                           return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                                                    nccl_dtype(in.scalar_type()), nccl_op(op),
                                                    comm, s);
                         }, output);
}

Work device_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                    int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  return run(group, communicator(group, buffer), {buffer}, "broadcast", seq, -1,
                         [&](ncclComm_t comm, cudaStream_t s) {
                           return ncclBroadcast(buffer.data_ptr(), buffer.data_ptr(),
                                                buffer.numel(), nccl_dtype(buffer.scalar_type()),
                                                root, comm, s);
                         }, tensor);
}

Work device_p2p(const std::shared_ptr<GroupState>& group, const at::Tensor& tensor, int peer,
                bool send) {
  NcclComm& channel = communicator(group, tensor, peer, send);
  return run(group, channel, {tensor}, send ? "send" : "recv", -1, peer,
             [&](ncclComm_t comm, cudaStream_t s) {
               // The sender is rank 0 of the channel, the receiver rank 1.
               return send ? ncclSend(tensor.data_ptr(), tensor.nbytes(), ncclUint8, 1, comm, s)
                           : ncclRecv(tensor.data_ptr(), tensor.nbytes(), ncclUint8, 0, comm, s);
             });
}

}  // namespace

void start_device_path(const std::vector<std::shared_ptr<GroupState>>& groups,
                       const std::shared_ptr<GroupState>& p2p_group, int local_rank,
                       int local_size) {
  if (emulating_nccl()) {
    for (const auto& group : groups) start_emulated(*group);
    return;
  }
  const int gpus = at::hasCUDA() ? static_cast<int>(c10::cuda::device_count()) : 0;
  if (gpus == 0) return;
  if (local_size > gpus) {
    for (const auto& group : groups) {
      group->no_device_path = "smp: a CUDA tensor reached " + group->describe() +
                              ", but this node runs " + std::to_string(local_size) +
                              " ranks and has " + std::to_string(gpus) +
                              " GPUs: device tensors need one GPU per rank; start at most " +
                              std::to_string(gpus) + " ranks per node";
    }
    return;
  }
  // Before any other CUDA call of this rank, so nothing makes a context on another GPU.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank));
  for (const auto& group : groups) {
    group->nccl = std::make_shared<NcclComm>(*group, local_rank, /*bounded=*/true);
  }
  // Every ordered pair's channel, pairs in the same order on every rank.
  GroupState& g = *p2p_group;
  for (int from = 0; from < g.size; ++from) {
    for (int to = 0; to < g.size; ++to) {
      if (from == to || (g.rank != from && g.rank != to)) continue;
      const bool send = g.rank == from;
      const int peer = send ? to : from;
      g.nccl_channels[{peer, send}] =
          std::make_shared<NcclComm>(g, local_rank, /*bounded=*/true, peer, send);
    }
  }
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
Work device_all_reduce(const std::shared_ptr<GroupState>& g, at::Tensor&, ReduceOp, int64_t) {
  no_nccl(*g);
}
Work device_all_gather(const std::shared_ptr<GroupState>& g, at::Tensor&, const at::Tensor&,
                       int64_t) {
  no_nccl(*g);
}
Work device_reduce_scatter(const std::shared_ptr<GroupState>& g, at::Tensor&, const at::Tensor&,
                           ReduceOp, int64_t) {
  no_nccl(*g);
}
Work device_broadcast(const std::shared_ptr<GroupState>& g, at::Tensor&, int, int64_t) {
  no_nccl(*g);
}
Work device_p2p(const std::shared_ptr<GroupState>& g, const at::Tensor&, int, bool) {
  no_nccl(*g);
}
}  // namespace

void start_device_path(const std::vector<std::shared_ptr<GroupState>>& groups,
                       const std::shared_ptr<GroupState>&, int, int) {
  if (!emulating_nccl()) return;
  for (const auto& group : groups) start_emulated(*group);
}

}  // namespace smp::comm::detail

#endif

// Device tensors go to NCCL; host tensors here are the emulation's (on_device_path).
namespace smp::comm::detail {

Work nccl_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, ReduceOp op,
                     int64_t seq) {
  return tensor.is_cuda() ? device_all_reduce(group, tensor, op, seq)
                          : emulated_all_reduce(group, tensor, op, seq);
}
Work nccl_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                     const at::Tensor& input, int64_t seq) {
  return input.is_cuda() ? device_all_gather(group, output, input, seq)
                         : emulated_all_gather(group, output, input, seq);
}
Work nccl_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, ReduceOp op, int64_t seq) {
  return input.is_cuda() ? device_reduce_scatter(group, output, input, op, seq)
                         : emulated_reduce_scatter(group, output, input, op, seq);
}
Work nccl_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                    int64_t seq) {
  return tensor.is_cuda() ? device_broadcast(group, tensor, root, seq)
                          : emulated_broadcast(group, tensor, root, seq);
}
Work nccl_send(const std::shared_ptr<GroupState>& group, const at::Tensor& payload, int peer) {
  return payload.is_cuda() ? device_p2p(group, payload, peer, true)
                           : emulated_p2p(group, payload, peer, true);
}
Work nccl_recv(const std::shared_ptr<GroupState>& group, const at::Tensor& buffer, int peer) {
  return buffer.is_cuda() ? device_p2p(group, buffer, peer, false)
                          : emulated_p2p(group, buffer, peer, false);
}

}  // namespace smp::comm::detail

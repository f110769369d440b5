// NCCL's rules on host tensors: the test bed for the device path on machines without GPUs.
//
// Under SMP_EMULATE_NCCL=1 the floating-point host tensors stand for device tensors and go
// through the device path (nccl.h) instead of MPI. A group's emulated communicator is an MPI
// duplicate of the group (made collectively, like ncclCommInitRank) and worker threads that
// stand for CUDA streams, each running its operations strictly one after another in issue
// order: one for the group's collectives, and one per peer and direction for point to point
// (smp gives each ordered pair of ranks its own NCCL communicator and stream, see nccl.cpp).
//   - no tags: every payload between two ranks travels on one tag, so payloads match strictly in
//     issue order per ordered pair of ranks;
//   - a send finishes only once its receive has started (MPI_Issend: rendezvous, stricter than
//     NCCL, which buffers small messages, so small test tensors find what megabytes would);
//   - a receive that gets a payload of another size is an error (NCCL would hang or mix data).
// A Work completes when its stream has passed its operation, like an event on a CUDA stream.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <limits>
#include <map>
#include <thread>
#include <cstdio>

#include <ATen/ATen.h>

#include "nccl.h"
#include "smp/core/error.h"
#include "smp/comm/launch.h"

namespace smp::comm::detail {

bool emulating_nccl() {
  static const bool on = [] {
    const char* value = std::getenv("SMP_EMULATE_NCCL");
    return value != nullptr && std::string(value) == "1";
  }();
  return on;
}

bool on_device_path(const at::Tensor& t) {
  return t.is_cuda() || (emulating_nccl() && t.is_cpu() && at::isFloatingType(t.scalar_type()));
}

namespace {

constexpr int kPayloadTag = 0;  // the only tag: payloads match in issue order

// One operation on the stream: the MPI requests it starts, the byte counts its receives expect,
// and what runs on the stream once they are done (dividing for avg, copying back).
struct StreamOp {
  std::function<std::vector<MPI_Request>(MPI_Comm, std::vector<int64_t>*)> start;
  std::function<void()> finish;
  std::atomic<bool> done{false};
  std::string error;  // set before done
};

}  // namespace

// One emulated CUDA stream: a thread that runs its operations one after another.
class Stream {
 public:
  Stream(MPI_Comm comm, std::string label) : comm_(comm), label_(std::move(label)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  std::shared_ptr<StreamOp> enqueue(std::shared_ptr<StreamOp> op) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(op);
    }
    wake_.notify_all();
    return op;
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<StreamOp> op;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        op = queue_.front();
        queue_.pop_front();
      }
      try {
        run(*op);
      } catch (const std::exception& e) {
        op->error = e.what();
      }
      if (stopping()) return;  // left unfinished: the job is being torn down
      op->done = true;
    }
  }

  bool stopping() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stop_;
  }

  // Starts the operation, polls it to the end (or until the stream is destroyed), checks what
  // the receives got.
  void run(StreamOp& op) {
    std::vector<int64_t> expected;
    std::vector<MPI_Request> requests = op.start(comm_, &expected);
    std::vector<MPI_Status> statuses(requests.size());
    auto sleep = std::chrono::microseconds(50);
    const auto begin = std::chrono::steady_clock::now();
    for (;;) {
      int flag = 0;
      const int rc = MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag,
                                 statuses.data());
      if (rc != MPI_SUCCESS) throw CommError("smp: emulated NCCL operation on " + label_ + " failed");
      if (flag) break;
      if (stopping()) return;
      if (std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(20)) {
        sched_yield();
      } else {
        std::this_thread::sleep_for(sleep);
        sleep = std::min(sleep * 2, std::chrono::microseconds(2000));
      }
    }
    for (size_t i = 0; i < expected.size(); ++i) {
      if (expected[i] < 0) continue;
      int got = 0;
      MPI_Get_count(&statuses[i], MPI_BYTE, &got);
      if (got != expected[i]) {
        throw CommError("smp: emulated NCCL receive on " + label_ + " expected " +
                        std::to_string(expected[i]) + " bytes but the peer's next payload has " +
                        std::to_string(got) + "; sends and receives between two ranks are "
                        "matched in issue order");
      }
    }
    if (op.finish) op.finish();
  }

  MPI_Comm comm_;
  std::string label_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<StreamOp>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

class EmulatedNccl {
 public:
  // Collective over the group, like ncclCommInitRank: unbounded when `bounded` is false (a
  // blocking init), else within the group's timeout (a non-blocking init polled).
  EmulatedNccl(GroupState& group, bool bounded) : label_(group.describe()) {
    comm_ = dup_within(group.comm, "NCCL init (emulated) on " + label_,
                       bounded ? group.timeout_s : std::numeric_limits<double>::infinity());
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    collectives_ = std::make_unique<Stream>(comm_, label_);
  }
  ~EmulatedNccl() {
    collectives_.reset();
    channels_.clear();
    if (mpi_initialized()) MPI_Comm_free(&comm_);
  }

  Stream& collectives() { return *collectives_; }
  // The stream of payloads to (`send`) or from `peer`. Payloads of one pair and direction match
  // in order on the one tag: MPI does not overtake between one source and one destination.
  Stream& channel(int peer, bool send) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::unique_ptr<Stream>& stream = channels_[{peer, send}];
    if (!stream) stream = std::make_unique<Stream>(comm_, label_ + (send ? " to " : " from ") +
                                                              std::to_string(peer));
    return *stream;
  }

 private:
  std::string label_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::unique_ptr<Stream> collectives_;
  std::mutex mutex_;
  std::map<std::pair<int, bool>, std::unique_ptr<Stream>> channels_;
};

namespace {

struct EmulatedWork : WorkState {
  std::shared_ptr<StreamOp> stream_op;
  std::vector<at::Tensor> keep_alive;

  bool poll() override {
    if (!stream_op->done) return false;
    if (!stream_op->error.empty()) throw CommError(stream_op->error + " (" + label() + ")");
    keep_alive.clear();
    return true;
  }
};

// A group ProcessGroups did not make (tests' own) makes its communicator here, on first use,
// blocking like a lazy ncclCommInitRank.
EmulatedNccl& communicator_of(const std::shared_ptr<GroupState>& group) {
  if (!group->emulated) group->emulated = std::make_shared<EmulatedNccl>(*group, false);
  return *group->emulated;
}

// Queues `stream_op` on the collectives' stream, or on the channel to or from `peer`.
Work enqueue(const std::shared_ptr<GroupState>& group, std::string op, int64_t seq, int peer,
             std::shared_ptr<StreamOp> stream_op, std::vector<at::Tensor> keep_alive,
             at::Tensor result) {
  EmulatedNccl& nccl = communicator_of(group);
  Stream& stream = peer < 0 ? nccl.collectives() : nccl.channel(peer, op == "send");
  auto work = std::make_shared<EmulatedWork>();
  work->group = group;
  work->op = std::move(op);
  work->seq = seq;
  work->peer = peer;
  work->keep_alive = std::move(keep_alive);
  work->result = std::move(result);
  work->stream_op = stream.enqueue(std::move(stream_op));
  return Work(work);
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

int count_of(int64_t n) {
  if (n > INT32_MAX) throw CommError("smp: emulated NCCL: more than 2^31 elements in one call");
  return static_cast<int>(n);
}

// A collective in place on `buffer` (a contiguous view of `tensor` or a copy copied back).
template <typename Start>
Work collective(const std::shared_ptr<GroupState>& group, const char* name, int64_t seq,
                at::Tensor tensor, at::Tensor buffer, Start start, std::function<void()> after) {
  auto op = std::make_shared<StreamOp>();
  op->start = [start](MPI_Comm comm, std::vector<int64_t>*) {
    std::vector<MPI_Request> requests(1);
    start(comm, &requests[0]);
    return requests;
  };
  op->finish = [buffer, tensor, after]() mutable {
    if (after) after();
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  };
  return enqueue(group, name, seq, -1, op, {buffer, tensor}, tensor);
}

}  // namespace

void start_emulated(GroupState& group) {
  group.emulated = std::make_shared<EmulatedNccl>(group, true);
}

Work emulated_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor,
                         ReduceOp op, int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  const int size = group->size;
  std::function<void()> after;
  if (op == ReduceOp::kAvg) after = [buffer, size]() mutable { buffer.div_(size); };
  return collective(group, "all_reduce", seq, tensor, buffer,
                    [buffer, op](MPI_Comm comm, MPI_Request* request) {
                      MPI_Iallreduce(MPI_IN_PLACE, buffer.data_ptr(), count_of(buffer.numel()),
                                     mpi_datatype(buffer.scalar_type()),
                                     mpi_op(op, buffer.scalar_type()), comm, request);
                    },
                    after);
}

Work emulated_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  return collective(group, "all_gather", seq, output, out,
                    [in, out](MPI_Comm comm, MPI_Request* request) {
                      const int bytes = count_of(static_cast<int64_t>(in.nbytes()));
                      MPI_Iallgather(in.data_ptr(), bytes, MPI_BYTE, out.data_ptr(), bytes,
                                     MPI_BYTE, comm, request);
                    },
                    nullptr);
}

Work emulated_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                             const at::Tensor& input, ReduceOp op, int64_t seq) {
  at::Tensor in = contiguous(input);
  at::Tensor out = contiguous(output);
  const int size = group->size;
  std::function<void()> after;
  if (op == ReduceOp::kAvg) after = [out, size]() mutable { out.div_(size); };
  return collective(group, "reduce_scatter", seq, output, out,
                    [in, out, op](MPI_Comm comm, MPI_Request* request) {
                      MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(),
                                                count_of(out.numel()),
                                                mpi_datatype(in.scalar_type()),
                                                mpi_op(op, in.scalar_type()), comm, request);
                    },
                    after);
}

Work emulated_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                        int64_t seq) {
  at::Tensor buffer = contiguous(tensor);
  return collective(group, "broadcast", seq, tensor, buffer,
                    [buffer, root](MPI_Comm comm, MPI_Request* request) {
                      MPI_Ibcast(buffer.data_ptr(),
                                 count_of(static_cast<int64_t>(buffer.nbytes())), MPI_BYTE, root,
                                 comm, request);
                    },
                    nullptr);
}

// One payload on the channel of its pair and direction.
Work emulated_p2p(const std::shared_ptr<GroupState>& group, const at::Tensor& tensor, int peer,
                  bool send) {
  auto op = std::make_shared<StreamOp>();
  op->start = [tensor, peer, send](MPI_Comm comm, std::vector<int64_t>* expected) {
    std::vector<MPI_Request> requests(1);
    const int bytes = count_of(static_cast<int64_t>(tensor.nbytes()));
    if (send) {
      MPI_Issend(tensor.data_ptr(), bytes, MPI_BYTE, peer, kPayloadTag, comm, &requests[0]);
      expected->push_back(-1);
    } else {
      MPI_Irecv(tensor.data_ptr(), bytes, MPI_BYTE, peer, kPayloadTag, comm, &requests[0]);
      expected->push_back(bytes);
    }
    return requests;
  };
  return enqueue(group, send ? "send" : "recv", -1, peer, op, {tensor}, tensor);
}

}  // namespace smp::comm::detail

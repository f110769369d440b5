// Communicator: collectives and point-to-point over one group.
//
// Host tensors go to MPI's nonblocking calls; device tensors to NCCL (nccl.cpp). Tensors that
// are not contiguous travel through a contiguous copy that is copied back on completion.
// Point to point lives in p2p.cpp.
#include <climits>
#include <exception>
#include <sstream>

#include <ATen/ATen.h>

#include "internal.h"
#include "nccl.h"
#include "smp/core/error.h"
#include "smp/comm/launch.h"

namespace smp::comm {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

OpStats Counters::total() const {
  OpStats sum;
  for (const auto& [op, stats] : by_op) {
    sum.calls += stats.calls;
    sum.bytes += stats.bytes;
  }
  return sum;
}

OpStats Counters::get(const std::string& op) const {
  auto it = by_op.find(op);
  return it == by_op.end() ? OpStats{} : it->second;
}

namespace detail {

std::string GroupState::describe() const {
  std::ostringstream out;
  out << name << " (world ranks [";
  for (size_t i = 0; i < world_ranks.size(); ++i) out << (i ? ", " : "") << world_ranks[i];
  out << "])";
  return out.str();
}

std::string GroupState::describe_peer(int peer) const {
  return "rank " + std::to_string(peer) + " (world rank " + std::to_string(world_ranks[peer]) +
         ")";
}

int to_int_count(int64_t count, const std::string& op, const GroupState& group) {
  if (count > INT_MAX) {
    throw CommError("smp: " + op + " on " + group.describe() + ": " + std::to_string(count) +
                    " elements/bytes exceed MPI's limit of " + std::to_string(INT_MAX) +
                    " per call; split the tensor");
  }
  return static_cast<int>(count);
}

int64_t GroupState::count(const std::string& op, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex);
  OpStats& stats = counters.by_op[op];
  stats.calls += 1;
  stats.bytes += bytes;
  return num_collectives++;
}

void check_mpi(int rc, const std::string& what, const GroupState& group) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw CommError("smp: " + what + " on " + group.describe() + " failed: " +
                  std::string(text, length));
}

void PendingReceives::add(const std::shared_ptr<WorkState>& work) {
  std::lock_guard<std::mutex> lock(mutex_);
  works_.push_back(work);
}

void PendingReceives::advance_all() {
  std::vector<std::shared_ptr<WorkState>> live;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::weak_ptr<WorkState>> keep;
    for (const auto& weak : works_) {
      if (auto work = weak.lock(); work && !work->done) {
        live.push_back(work);
        keep.push_back(weak);
      }
    }
    works_.swap(keep);
  }
  for (const auto& work : live) work->advance();
}

std::shared_ptr<GroupState> make_group(MPI_Comm comm, std::string name,
                                       std::vector<int> world_ranks, double timeout_s,
                                       std::shared_ptr<PendingReceives> receives) {
  auto group = std::make_shared<GroupState>();
  if (receives) group->receives = std::move(receives);
  group->comm = comm;
  group->name = std::move(name);
  group->world_ranks = std::move(world_ranks);
  group->timeout_s = timeout_s;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  check_mpi(MPI_Comm_rank(comm, &group->rank), "MPI_Comm_rank", *group);
  check_mpi(MPI_Comm_size(comm, &group->size), "MPI_Comm_size", *group);
  if (static_cast<size_t>(group->size) != group->world_ranks.size()) {
    throw InternalError("smp: " + group->describe() + " has " + std::to_string(group->size) +
                        " MPI ranks but the topology lists " +
                        std::to_string(group->world_ranks.size()));
  }
  group->control = dup_within(comm, "MPI_Comm_idup for " + group->name + "'s control channel",
                              timeout_s);
  MPI_Comm_set_errhandler(group->control, MPI_ERRORS_RETURN);
  group->send_seq.assign(group->size, 0);
  // Payload tags live above the user's tags: [kMaxTag, 2 * kMaxTag).
  void* tag_ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &found);  // only the world has it
  SMP_CHECK(found && *static_cast<int*>(tag_ub) >= 2 * Communicator::kMaxTag - 1);
  return group;
}

}  // namespace detail

namespace {

using detail::check_mpi;
using detail::to_int_count;
using detail::GroupState;
using detail::MpiWork;

// A contiguous tensor to hand MPI, and whether results must be copied back into `t`.
at::Tensor contiguous_buffer(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void require_host(const at::Tensor& t, const std::string& op) {
  if (!t.device().is_cpu()) {
    throw CommError("smp: " + op + " got a tensor on " + t.device().str() +
                    "; host (cpu) tensors travel over MPI, device tensors over NCCL");
  }
}

void require_avg_dtype(ReduceOp op, const at::Tensor& t, const std::string& what) {
  if (op == ReduceOp::kAvg && !at::isFloatingType(t.scalar_type())) {
    throw CommError(std::string("smp: ") + what + " with op avg needs a floating dtype; got " +
                    c10::toString(t.scalar_type()));
  }
}

void require_same_dtype(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  if (a.scalar_type() != b.scalar_type() || a.device() != b.device()) {
    throw CommError("smp: " + what + ": output is " + c10::toString(a.scalar_type()) + " on " +
                    a.device().str() + " but input is " + c10::toString(b.scalar_type()) +
                    " on " + b.device().str() + "; they must match");
  }
}

Work make_work(std::shared_ptr<MpiWork> work) { return Work(std::move(work)); }

std::shared_ptr<MpiWork> new_mpi_work(const std::shared_ptr<GroupState>& group, std::string op,
                                      int64_t seq) {
  auto work = std::make_shared<MpiWork>();
  work->group = group;
  work->op = std::move(op);
  work->seq = seq;
  return work;
}

}  // namespace

Communicator::Communicator(std::shared_ptr<detail::GroupState> state) : state_(std::move(state)) {}
Communicator::~Communicator() = default;

const std::string& Communicator::name() const { return state_->name; }
int Communicator::rank() const { return state_->rank; }
int Communicator::size() const { return state_->size; }
const std::vector<int>& Communicator::world_ranks() const { return state_->world_ranks; }
double Communicator::timeout_s() const { return state_->timeout_s; }
double Communicator::phase_timeout_s() const { return state_->phase_timeout_s; }
const Counters& Communicator::counters() const { return state_->counters; }
void Communicator::reset_counters() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->counters = Counters{};
}

Work Communicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  require_avg_dtype(op, tensor, "all_reduce");
  const int64_t seq = state_->count("all_reduce", static_cast<int64_t>(tensor.nbytes()));
  if (detail::on_device_path(tensor)) return detail::nccl_all_reduce(state_, tensor, op, seq);
  require_host(tensor, "all_reduce");
  auto work = new_mpi_work(state_, "all_reduce", seq);
  if (tensor.numel() == 0) return make_work(work);
  at::Tensor buffer = contiguous_buffer(tensor);
  work->requests.resize(1);
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buffer.data_ptr(),
                           to_int_count(buffer.numel(), "all_reduce", *state_),
                           detail::mpi_datatype(buffer.scalar_type()),
                           detail::mpi_op(op, buffer.scalar_type()), state_->comm,
                           &work->requests[0]),
            "all_reduce", *state_);
  work->keep_alive = {buffer};
  const int size = state_->size;
  work->on_complete = [buffer, tensor, op, size]() mutable {
    if (op == ReduceOp::kAvg) buffer.div_(size);
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  };
  work->result = tensor;
  return make_work(work);
}

Work Communicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  require_same_dtype(output, input, "all_gather");
  if (output.numel() != input.numel() * state_->size) {
    throw CommError("smp: all_gather on " + state_->describe() + ": output has " +
                    std::to_string(output.numel()) + " elements; it must have group size (" +
                    std::to_string(state_->size) + ") * input elements (" +
                    std::to_string(input.numel()) + ")");
  }
  const int64_t seq = state_->count("all_gather", static_cast<int64_t>(input.nbytes()));
  if (detail::on_device_path(input)) return detail::nccl_all_gather(state_, output, input, seq);
  require_host(input, "all_gather");
  auto work = new_mpi_work(state_, "all_gather", seq);
  work->result = output;
  if (input.numel() == 0) return make_work(work);
  at::Tensor in = contiguous_buffer(input);
  at::Tensor out = contiguous_buffer(output);
  const int bytes = to_int_count(static_cast<int64_t>(in.nbytes()), "all_gather", *state_);
  to_int_count(static_cast<int64_t>(out.nbytes()), "all_gather", *state_);
  work->requests.resize(1);
  check_mpi(MPI_Iallgather(in.data_ptr(), bytes, MPI_BYTE, out.data_ptr(), bytes, MPI_BYTE,
                           state_->comm, &work->requests[0]),
            "all_gather", *state_);
  work->keep_alive = {in, out};
  work->on_complete = [out, output]() mutable {
    if (!out.is_same(output)) output.copy_(out);
  };
  return make_work(work);
}

Work Communicator::reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  require_same_dtype(output, input, "reduce_scatter");
  require_avg_dtype(op, input, "reduce_scatter");
  if (input.numel() != output.numel() * state_->size) {
    throw CommError("smp: reduce_scatter on " + state_->describe() + ": input has " +
                    std::to_string(input.numel()) + " elements; it must have group size (" +
                    std::to_string(state_->size) + ") * output elements (" +
                    std::to_string(output.numel()) + ")");
  }
  const int64_t seq = state_->count("reduce_scatter", static_cast<int64_t>(input.nbytes()));
  if (detail::on_device_path(input)) return detail::nccl_reduce_scatter(state_, output, input, op, seq);
  require_host(input, "reduce_scatter");
  auto work = new_mpi_work(state_, "reduce_scatter", seq);
  work->result = output;
  if (output.numel() == 0) return make_work(work);
  at::Tensor in = contiguous_buffer(input);
  at::Tensor out = contiguous_buffer(output);
  work->requests.resize(1);
  check_mpi(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(),
                                      to_int_count(out.numel(), "reduce_scatter", *state_),
                                      detail::mpi_datatype(in.scalar_type()),
                                      detail::mpi_op(op, in.scalar_type()), state_->comm,
                                      &work->requests[0]),
            "reduce_scatter", *state_);
  work->keep_alive = {in, out};
  const int size = state_->size;
  work->on_complete = [out, output, op, size]() mutable {
    if (op == ReduceOp::kAvg) out.div_(size);
    if (!out.is_same(output)) output.copy_(out);
  };
  return make_work(work);
}

Work Communicator::broadcast(at::Tensor& tensor, int root) {
  if (root < 0 || root >= state_->size) {
    throw CommError("smp: broadcast on " + state_->describe() + ": root " + std::to_string(root) +
                    " is not a rank of the group; allowed 0.." + std::to_string(state_->size - 1));
  }
  const int64_t seq = state_->count("broadcast", static_cast<int64_t>(tensor.nbytes()));
  if (detail::on_device_path(tensor)) return detail::nccl_broadcast(state_, tensor, root, seq);
  require_host(tensor, "broadcast");
  auto work = new_mpi_work(state_, "broadcast", seq);
  work->result = tensor;
  if (tensor.numel() == 0) return make_work(work);
  at::Tensor buffer = contiguous_buffer(tensor);
  work->requests.resize(1);
  check_mpi(MPI_Ibcast(buffer.data_ptr(),
                       to_int_count(static_cast<int64_t>(buffer.nbytes()), "broadcast", *state_),
                       MPI_BYTE, root, state_->comm, &work->requests[0]),
            "broadcast", *state_);
  work->keep_alive = {buffer};
  work->on_complete = [buffer, tensor]() mutable {
    if (!buffer.is_same(tensor)) tensor.copy_(buffer);
  };
  return make_work(work);
}

Work Communicator::barrier() {
  auto work = new_mpi_work(state_, "barrier", state_->count("barrier", 0));
  work->requests.resize(1);
  check_mpi(MPI_Ibarrier(state_->comm, &work->requests[0]), "barrier", *state_);
  return make_work(work);
}

}  // namespace smp::comm

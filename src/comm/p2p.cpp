// Point-to-point: messages of tensors between two ranks of a group.
//
// A message is a header then its payloads. Headers travel over MPI on one tag, so between two
// ranks they arrive in the order sent; each carries the sender's sequence number, the caller's
// tag and, per tensor, its dtype, shape and path (host over MPI, device over NCCL). The
// receiver matches arrivals to its receives by tag, in order, like MPI matching, but in smp's
// own queue (PeerInbox), and starts every payload as soon as its header is read: so device
// payloads, which NCCL matches strictly in issue order, are received in the order they were
// sent whatever order the caller receives them in. Device payloads travel on the channel of
// their pair and direction (nccl.h): a send never waits behind a receive, so two ranks that send
// to each other before receiving cannot block each other's streams, however large the tensors.
#include <algorithm>
#include <deque>
#include <sstream>

#include <ATen/ATen.h>

#include "internal.h"
#include "nccl.h"
#include "smp/core/error.h"
#include "smp/comm/launch.h"

namespace smp::comm {
namespace detail {
namespace {

constexpr int kHeaderTag = 0;  // payload tags are kMaxTag + sequence number
constexpr int kHeaderLength = 512;
constexpr int kMaxDims = 16;
constexpr int64_t kHeaderMagic = 0x736d7032;  // "smp2"
// How a tensor of a message travels.
enum Path : int64_t { kNone = 0, kHost = 1, kCuda = 2, kEmulatedDevice = 3 };

Path path_of(const at::Tensor& t) {
  if (!t.defined()) return kNone;
  if (t.is_cuda()) return kCuda;
  return on_device_path(t) ? kEmulatedDevice : kHost;
}

}  // namespace

// A message whose header is in.
struct Arrival {
  int64_t seq = 0;
  int tag = 0;
  std::vector<Path> paths;
  std::vector<at::Tensor> tensors;  // where the payloads land; undefined where none was sent
  std::vector<MPI_Request> host;    // the host payloads' receives
  std::vector<Work> device;         // the device payloads' receives
};

struct RecvWork;

// What one rank knows of the messages from one peer.
struct PeerInbox {
  int64_t header[kHeaderLength] = {};
  MPI_Request request = MPI_REQUEST_NULL;  // the next header's receive, once listening
  std::deque<std::shared_ptr<Arrival>> unclaimed;       // in, no receive for them yet
  std::deque<std::shared_ptr<RecvWork>> waiting;        // receives with no message yet
};

struct P2PState {
  std::mutex mutex;
  std::vector<PeerInbox> inboxes;
};

struct RecvWork : WorkState {
  int tag = 0;
  at::Device device = at::kCPU;
  at::Tensor into;  // recv_into's destination
  std::shared_ptr<Arrival> arrival;

  void advance() override;
  bool poll() override;
  void finish();
};

namespace {

P2PState& p2p_of(GroupState& group) {
  std::lock_guard<std::mutex> lock(group.mutex);
  if (!group.p2p) {
    group.p2p = std::make_shared<P2PState>();
    group.p2p->inboxes = std::vector<PeerInbox>(group.size);
  }
  return *group.p2p;
}

void listen(GroupState& group, int peer, PeerInbox& inbox) {
  check_mpi(MPI_Irecv(inbox.header, kHeaderLength, MPI_INT64_T, peer, kHeaderTag, group.comm,
                      &inbox.request),
            "recv (header)", group);
}

// Turns a header into an arrival: its buffers, its host payloads' receives.
std::shared_ptr<Arrival> open(GroupState& group, int peer, const int64_t* h) {
  if (h[0] != kHeaderMagic) {
    throw CommError("smp: recv on " + group.describe() + " from " + group.describe_peer(peer) +
                    ": the message header is corrupt (magic " + std::to_string(h[0]) +
                    "); was it sent with smp's send?");
  }
  auto a = std::make_shared<Arrival>();
  a->seq = h[1];
  a->tag = static_cast<int>(h[2]);
  const int64_t count = h[3];
  int64_t at = 4;
  const int payload_tag = Communicator::kMaxTag + static_cast<int>(a->seq % Communicator::kMaxTag);
  for (int64_t i = 0; i < count; ++i) {
    const auto path = static_cast<Path>(h[at]);
    const auto dtype = static_cast<at::ScalarType>(h[at + 1]);
    const int64_t ndim = h[at + 2];
    const std::vector<int64_t> sizes(h + at + 3, h + at + 3 + ndim);
    at += 3 + ndim;
    a->paths.push_back(path);
    if (path == kNone) {
      a->tensors.emplace_back();
      continue;
    }
    // CUDA payloads land on this rank's GPU (the current device), the emulation's on the host.
    auto options = at::TensorOptions().dtype(dtype);
    at::Tensor buffer = at::empty(sizes, path == kCuda ? options.device(at::kCUDA) : options);
    a->tensors.push_back(buffer);
    if (path == kHost) {
      a->host.emplace_back();
      const int bytes = to_int_count(static_cast<int64_t>(buffer.nbytes()), "recv", group);
      check_mpi(MPI_Irecv(buffer.data_ptr(), bytes, MPI_BYTE, peer,
                          payload_tag, group.comm, &a->host.back()),
                "recv", group);
    } else {
      a->device.push_back(nccl_recv(group.shared_from_this(), buffer, peer));
    }
  }
  return a;
}

// Reads every header that is in from `peer`, starts its payloads and hands the arrival to the
// oldest receive waiting for its tag. Never blocks. Called with the P2P mutex held.
void drain(GroupState& group, P2PState& state, int peer) {
  PeerInbox& inbox = state.inboxes[peer];
  if (inbox.request == MPI_REQUEST_NULL) listen(group, peer, inbox);
  for (;;) {
    int flag = 0;
    check_mpi(MPI_Test(&inbox.request, &flag, MPI_STATUS_IGNORE), "recv (header)", group);
    if (!flag) return;
    std::shared_ptr<Arrival> a = open(group, peer, inbox.header);
    listen(group, peer, inbox);
    auto it = std::find_if(inbox.waiting.begin(), inbox.waiting.end(),
                           [&](const auto& r) { return r->tag == a->tag; });
    if (it == inbox.waiting.end()) {
      inbox.unclaimed.push_back(a);
      continue;
    }
    (*it)->arrival = a;
    inbox.waiting.erase(it);
  }
}

}  // namespace

void RecvWork::advance() {
  P2PState& state = p2p_of(*group);
  std::lock_guard<std::mutex> lock(state.mutex);
  try {
    if (!arrival) drain(*group, state, peer);
  } catch (...) {
  }
}

bool RecvWork::poll() {
  P2PState& state = p2p_of(*group);
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!arrival) drain(*group, state, peer);
    if (!arrival) return false;
  }
  if (!arrival->host.empty()) {
    int flag = 0;
    check_mpi(MPI_Testall(static_cast<int>(arrival->host.size()), arrival->host.data(), &flag,
                          MPI_STATUSES_IGNORE),
              op, *group);
    if (!flag) return false;
  }
  for (Work& w : arrival->device) {
    if (!w.is_completed()) return false;
  }
  finish();
  return true;
}

void RecvWork::finish() {
  int64_t bytes = 0;
  results.clear();
  for (size_t i = 0; i < arrival->tensors.size(); ++i) {
    at::Tensor t = arrival->tensors[i];
    if (arrival->paths[i] == kCuda && !device.is_cuda()) {
      // A receive for the host would have waited for an MPI payload that never comes.
      std::ostringstream out;
      out << "smp: " << label() << " (tag " << tag << "): the peer sent a CUDA tensor but this "
          << "receive is for " << device.str() << "; receive device tensors on a CUDA device";
      throw CommError(out.str());
    }
    if (t.defined()) {
      bytes += static_cast<int64_t>(t.nbytes());
      if (device.is_cuda() && t.device() != device) t = t.to(device);
    }
    results.push_back(t);
  }
  if (into.defined()) {
    const at::Tensor& got = results.empty() ? at::Tensor() : results[0];
    if (results.size() != 1 || !got.defined() || got.scalar_type() != into.scalar_type() ||
        got.sizes() != into.sizes()) {
      std::ostringstream out;
      out << "smp: " << label() << ": expected " << c10::toString(into.scalar_type())
          << into.sizes() << " but the peer sent ";
      if (got.defined()) {
        out << c10::toString(got.scalar_type()) << got.sizes();
      } else {
        out << results.size() << " tensors";
      }
      throw CommError(out.str());
    }
    into.copy_(got);
    results[0] = into;
  }
  result = results.empty() ? at::Tensor() : results[0];
  std::lock_guard<std::mutex> lock(group->mutex);
  group->counters.by_op["recv"].bytes += bytes;
}

namespace {

// A send: its header and host payloads over MPI, its device payloads in a group.
struct SendWork : WorkState {
  std::vector<MPI_Request> requests;
  std::shared_ptr<std::vector<int64_t>> header;
  std::vector<at::Tensor> keep_alive;
  std::vector<Work> device;

  bool poll() override {
    int flag = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag,
                          MPI_STATUSES_IGNORE),
              op, *group);
    if (!flag) return false;
    for (Work& w : device) {
      if (!w.is_completed()) return false;
    }
    keep_alive.clear();
    return true;
  }
};

void check_peer_and_tag(const GroupState& group, const std::string& op, int peer, int tag) {
  if (peer < 0 || peer >= group.size || peer == group.rank) {
    throw CommError("smp: " + op + " on " + group.describe() + ": peer " + std::to_string(peer) +
                    " is not another rank of the group; allowed 0.." +
                    std::to_string(group.size - 1) + " except this rank (" +
                    std::to_string(group.rank) + ")");
  }
  if (tag < 0 || tag >= Communicator::kMaxTag) {
    throw CommError("smp: " + op + " on " + group.describe() + ": tag " + std::to_string(tag) +
                    " is out of range; allowed 0.." + std::to_string(Communicator::kMaxTag - 1));
  }
}

// Sends the header, then every payload.
std::shared_ptr<SendWork> post_send(const std::shared_ptr<GroupState>& group,
                                    const std::vector<at::Tensor>& tensors, int peer, int tag) {
  check_peer_and_tag(*group, "send", peer, tag);
  int64_t bytes = 0;
  auto header = std::make_shared<std::vector<int64_t>>(4, 0);
  for (const at::Tensor& t : tensors) {
    if (t.defined() && t.dim() > kMaxDims) {
      throw CommError("smp: send on " + group->describe() + ": a tensor has " +
                      std::to_string(t.dim()) + " dims; at most " + std::to_string(kMaxDims));
    }
    header->push_back(path_of(t));
    header->push_back(t.defined() ? static_cast<int64_t>(t.scalar_type()) : 0);
    header->push_back(t.defined() ? t.dim() : 0);
    if (t.defined()) {
      for (int64_t d = 0; d < t.dim(); ++d) header->push_back(t.size(d));
      bytes += static_cast<int64_t>(t.nbytes());
    }
  }
  if (header->size() > static_cast<size_t>(kHeaderLength)) {
    throw CommError("smp: send on " + group->describe() + ": " + std::to_string(tensors.size()) +
                    " tensors are more than one message can describe; send fewer at once");
  }
  group->count("send", bytes);
  int64_t seq;
  {
    std::lock_guard<std::mutex> lock(group->mutex);
    seq = group->send_seq[peer]++;
  }
  (*header)[0] = kHeaderMagic;
  (*header)[1] = seq;
  (*header)[2] = tag;
  (*header)[3] = static_cast<int64_t>(tensors.size());
  auto work = std::make_shared<SendWork>();
  work->group = group;
  work->op = "send";
  work->peer = peer;
  work->header = header;
  work->requests.emplace_back();
  check_mpi(MPI_Isend(header->data(), static_cast<int>(header->size()), MPI_INT64_T, peer,
                      kHeaderTag, group->comm, &work->requests.back()),
            "send", *group);
  const int payload_tag = Communicator::kMaxTag + static_cast<int>(seq % Communicator::kMaxTag);
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    at::Tensor payload = t.is_contiguous() ? t : t.contiguous();
    work->keep_alive.push_back(payload);
    if (path_of(t) != kHost) {
      work->device.push_back(nccl_send(group, payload, peer));
      continue;
    }
    const int n = to_int_count(static_cast<int64_t>(payload.nbytes()), "send", *group);
    work->requests.emplace_back();
    check_mpi(MPI_Isend(payload.data_ptr(), n, MPI_BYTE, peer, payload_tag,
                        group->comm, &work->requests.back()),
              "send", *group);
  }
  work->result = tensors.empty() ? at::Tensor() : tensors[0];
  return work;
}

std::shared_ptr<RecvWork> post_recv(const std::shared_ptr<GroupState>& group, int peer, int tag,
                                    at::Device device, at::Tensor into) {
  check_peer_and_tag(*group, "recv", peer, tag);
  group->count("recv", 0);  // bytes are added when the message is in
  auto work = std::make_shared<RecvWork>();
  work->group = group;
  work->op = "recv";
  work->peer = peer;
  work->tag = tag;
  work->device = device;
  work->into = std::move(into);
  P2PState& state = p2p_of(*group);
  std::lock_guard<std::mutex> lock(state.mutex);
  drain(*group, state, peer);
  PeerInbox& inbox = state.inboxes[peer];
  auto it = std::find_if(inbox.unclaimed.begin(), inbox.unclaimed.end(),
                         [&](const auto& a) { return a->tag == tag; });
  if (it != inbox.unclaimed.end()) {
    work->arrival = *it;
    inbox.unclaimed.erase(it);
  } else {
    inbox.waiting.push_back(work);
  }
  group->receives->add(work);
  return work;
}

}  // namespace

GroupState::~GroupState() {
  if (p2p && mpi_initialized()) {
    for (PeerInbox& inbox : p2p->inboxes) {
      if (inbox.request == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&inbox.request);
      MPI_Wait(&inbox.request, MPI_STATUS_IGNORE);
    }
  }
  nccl_channels.clear();
  nccl.reset();
  emulated.reset();
  if (mpi_initialized()) {
    if (control != MPI_COMM_NULL) MPI_Comm_free(&control);
    if (comm != MPI_COMM_NULL && comm != MPI_COMM_WORLD) MPI_Comm_free(&comm);
  }
}

}  // namespace detail

Work Communicator::send(const std::vector<at::Tensor>& tensors, int peer, int tag) {
  return Work(detail::post_send(state_, tensors, peer, tag));
}

Work Communicator::send(const at::Tensor& tensor, int peer, int tag) {
  return send(std::vector<at::Tensor>{tensor}, peer, tag);
}

Work Communicator::recv(int peer, int tag, at::Device device) {
  return Work(detail::post_recv(state_, peer, tag, device, at::Tensor()));
}

Work Communicator::recv_into(at::Tensor& output, int peer, int tag) {
  return Work(detail::post_recv(state_, peer, tag, output.device(), output));
}

void Communicator::progress() {
  detail::P2PState& state = detail::p2p_of(*state_);
  std::lock_guard<std::mutex> lock(state.mutex);
  for (int peer = 0; peer < state_->size; ++peer) {
    if (peer != state_->rank && state.inboxes[peer].request != MPI_REQUEST_NULL) {
      detail::drain(*state_, state, peer);
    }
  }
}

}  // namespace smp::comm

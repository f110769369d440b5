// Point-to-point with the shape/dtype handshake, and collectives over sub-groups. Under
// SMP_EMULATE_NCCL=1 the floating-point tensors here follow NCCL's rules (payloads in issue
// order per pair, sends that wait for their receive).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "smp/smp.h"
#include "testing/multi_rank.h"

namespace smp::comm {
namespace {

using smp::testing::world;  // every rank, without smp::init

// What rank r sends: its own dtype and a shape the receiver cannot guess.
at::Tensor message_of(int r) {
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kBFloat16, at::kLong, at::kHalf};
  const int64_t rows = r + 1;
  return (at::arange(rows * 3, at::kLong).reshape({rows, 3}) + 10 * r)
      .to(dtypes[r % dtypes.size()]);
}

TEST(PointToPoint, RingWithUnknownShapes) {
  const int n = world().size();
  const int r = world().rank();
  Work send = world().send(message_of(r), (r + 1) % n, /*tag=*/3);  // every rank sends first
  Work recv = world().recv((r + n - 1) % n, 3);
  wait_all({&recv, &send});
  EXPECT_TRUE(at::equal(recv.result(), message_of((r + n - 1) % n)));
}

TEST(PointToPoint, EveryDtypeAndSizeArrivesExactly) {
  const int n = world().size();
  const int r = world().rank();
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kInt,
                     at::kByte, at::kBool}) {
    for (int64_t size : {0, 1, 7, 1001}) {
      // What rank s sends: s + 1 + i % 5, exact in every dtype (bool: nonzero is true).
      auto payload = [&](int s) {
        return (at::arange(size, at::kLong).remainder(5) + s + 1).to(dtype);
      };
      Work got = world().recv((r + n - 1) % n, 4);
      Work sent = world().send(payload(r), (r + 1) % n, 4);
      wait_all({&got, &sent});
      EXPECT_TRUE(at::equal(got.result(), payload((r + n - 1) % n)))
          << c10::toString(dtype) << " n=" << size;
    }
  }
}

TEST(PointToPoint, ManyInFlightFromOnePeerArriveInOrder) {
  const int n = world().size();
  const int r = world().rank();
  constexpr int kMessages = 20;
  std::vector<Work> recvs;
  std::vector<Work> sends;
  for (int i = 0; i < kMessages; ++i) recvs.push_back(world().recv((r + n - 1) % n, 0));
  for (int i = 0; i < kMessages; ++i) {
    sends.push_back(world().send(at::full({i + 1}, static_cast<double>(i)), (r + 1) % n, 0));
  }
  // Wait in reverse: each receive still gets its own payload.
  for (int i = kMessages - 1; i >= 0; --i) {
    recvs[i].wait();
    EXPECT_TRUE(at::equal(recvs[i].result(), at::full({i + 1}, static_cast<double>(i))))
        << "message " << i;
  }
  for (auto& s : sends) s.wait();
}

// Received in another order than sent, same shapes: each receive still gets its own payload
// (NCCL matches device payloads in the order sent; smp starts them in that order whatever the
// receives' order). Empty and undefined tensors travel too.
TEST(PointToPoint, ReceivesInAnotherOrderThanSentGetTheirOwnPayloads) {
  const int n = world().size();
  const int r = world().rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Work one = world().send(at::full({2, 3}, 1.0), next, 1);
  Work three = world().send({at::full({2, 3}, 2.0), at::Tensor(), at::empty({0, 5})}, next, 2);
  Work got_three = world().recv(prev, 2);
  got_three.wait();  // before the first message's receive is even posted
  Work got_one = world().recv(prev, 1);
  wait_all({&got_one, &one, &three});
  EXPECT_TRUE(at::equal(got_one.result(), at::full({2, 3}, 1.0)));
  const std::vector<at::Tensor>& two = got_three.results();
  ASSERT_EQ(two.size(), 3u);
  EXPECT_TRUE(at::equal(two[0], at::full({2, 3}, 2.0)));
  EXPECT_FALSE(two[1].defined());
  EXPECT_EQ(two[2].sizes(), at::IntArrayRef({0, 5}));
}

// 32 MiB each way between pairs of ranks, both sending before receiving: with device tensors
// (or under the emulation, whose sends wait for their receive) this ends only because each
// direction has its own channel.
TEST(PointToPoint, LargeExchangeBothSendingFirst) {
  const int r = world().rank();
  const int peer = r ^ 1;
  if (peer >= world().size()) GTEST_SKIP() << "an odd rank out";
  const at::Tensor mine = at::full({8, 1 << 20}, static_cast<float>(r));  // 32 MiB
  Work sent = world().send(mine, peer, 11);  // on one stream, this send would block the
  Work got = world().recv(peer, 11);         // receive queued after it, on both ranks
  wait_all({&sent, &got});
  EXPECT_TRUE(at::equal(got.result(), at::full({8, 1 << 20}, static_cast<float>(peer))));
}

TEST(PointToPoint, RecvIntoChecksShapeAndDtype) {
  const int n = world().size();
  const int r = world().rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  // Host tensors: integers stay on MPI under the emulation.
  at::Tensor into = at::zeros({4, 2}, at::kInt).t();  // non-contiguous destination
  Work s = world().send(at::arange(8, at::kInt).reshape({2, 4}), next, 5);
  Work got = world().recv_into(into, prev, 5);
  wait_all({&got, &s});
  EXPECT_TRUE(at::equal(into, at::arange(8, at::kInt).reshape({2, 4})));

  at::Tensor wrong = at::zeros({3}, at::kInt);
  Work s2 = world().send(at::ones({2}, at::kInt), next, 6);
  Work bad = world().recv_into(wrong, prev, 6);
  try {
    bad.wait();
    ADD_FAILURE() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("but the peer sent"), std::string::npos) << e.what();
  }
  s2.wait();
}

// Both ranks post a receive, then wait on their own large send: the send completes only once
// the peer's payload receive is posted, which needs the peer's receive to be advanced while
// the peer waits on its send.
TEST(PointToPoint, WaitingOnASendAdvancesThisRanksPendingReceives) {
  const int n = world().size();
  const int r = world().rank();
  const at::Tensor big = at::full({1 << 20}, static_cast<float>(r));  // 4 MiB: not eager
  Work got = world().recv((r + n - 1) % n, 8);
  world().send(big, (r + 1) % n, 8).wait();
  got.wait();
  EXPECT_TRUE(at::equal(got.result(), at::full({1 << 20}, static_cast<float>((r + n - 1) % n))));
}

TEST(PointToPoint, BadPeerOrTagIsAClearError) {
  EXPECT_THROW(world().send(at::ones({1}), world().size(), 0), CommError);
  EXPECT_THROW(world().send(at::ones({1}), world().rank(), 0), CommError);
  EXPECT_THROW(world().recv(0, Communicator::kMaxTag), CommError);
}

TEST(PointToPoint, CountersCountPayloadBytes) {
  const int n = world().size();
  const int r = world().rank();
  world().reset_counters();
  Work got = world().recv((r + n - 1) % n, 9);
  Work s = world().send(at::ones({25}, at::kDouble), (r + 1) % n, 9);
  wait_all({&got, &s});
  EXPECT_EQ(world().counters().get("send").bytes, 25 * 8);
  EXPECT_EQ(world().counters().get("recv").bytes, 25 * 8);
  EXPECT_EQ(world().counters().get("recv").calls, 1);
}

// Sub-groups: every group kind of a 2-axis layout reduces over exactly its members.
TEST(SubGroups, EachGroupReducesOverItsMembers) {
  const int n = world_size();
  for (int pp = 1; pp <= n; ++pp) {
    if (n % pp) continue;
    for (int tp = 1; tp * pp <= n; ++tp) {
      if (n % (pp * tp)) continue;
      for (const char* placement : {"cluster", "spread", "PDT"}) {
        ProcessGroups layout(Topology(n, pp, tp, placement), 30);
        for (CommGroup kind : all_comm_groups()) {
          Communicator& comm = layout.get(kind);
          at::Tensor t = at::full({3}, static_cast<double>(layout.world_rank()));
          comm.all_reduce(t).wait();
          double want = 0;
          for (int member : comm.world_ranks()) want += member;
          EXPECT_TRUE(at::equal(t, at::full({3}, want)))
              << to_string(kind) << " pp=" << pp << " tp=" << tp << " " << placement;
          EXPECT_EQ(comm.world_ranks(), layout.topology().group(kind, layout.world_rank()));
        }
      }
    }
  }
}

}  // namespace
}  // namespace smp::comm

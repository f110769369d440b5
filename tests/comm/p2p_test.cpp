// Point-to-point with the shape/dtype handshake, and collectives over sub-groups.
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
  Work recv = world().recv((r + n - 1) % n, /*tag=*/3);  // posted before the send
  Work send = world().send(message_of(r), (r + 1) % n, /*tag=*/3);
  recv.wait();
  send.wait();
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

TEST(PointToPoint, TagsKeepStreamsApartAndEmptyTensorsTravel) {
  const int n = world().size();
  const int r = world().rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  Work a = world().send(at::ones({2}), next, 1);
  Work b = world().send(at::empty({0, 5}), next, 2);
  Work got_b = world().recv(prev, 2);
  Work got_a = world().recv(prev, 1);
  wait_all({&got_b, &got_a, &a, &b});
  EXPECT_TRUE(at::equal(got_a.result(), at::ones({2})));
  EXPECT_EQ(got_b.result().sizes(), at::IntArrayRef({0, 5}));
}

TEST(PointToPoint, RecvIntoChecksShapeAndDtype) {
  const int n = world().size();
  const int r = world().rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  at::Tensor into = at::zeros({4, 2}).t();  // non-contiguous destination
  Work s = world().send(at::arange(8, at::kFloat).reshape({2, 4}), next, 5);
  Work got = world().recv_into(into, prev, 5);
  wait_all({&got, &s});
  EXPECT_TRUE(at::equal(into, at::arange(8, at::kFloat).reshape({2, 4})));

  at::Tensor wrong = at::zeros({3});
  Work s2 = world().send(at::ones({2}), next, 6);
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

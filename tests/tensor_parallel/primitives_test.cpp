// TP primitives against closed forms (exact): for each, the forward output and the input
// gradient under rank-dependent inputs and upstream gradients, and the collectives each
// direction runs (calls and payload bytes). tp = the world size (1, 2, 4).
#include <gtest/gtest.h>

#include "tp_testing.h"

namespace smp::testing {
namespace {

// Distinct values per rank: 0, 1, 2, ... plus 1000 * r.
at::Tensor value(at::IntArrayRef shape, int r) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return at::arange(n, at::kFloat).view(shape) + 1000.0 * r;
}

struct Case {
  std::string name;
  std::function<at::Tensor(const at::Tensor&, const TpGroup&)> fn;
  std::function<at::Tensor(int)> input;     // rank r's input
  std::function<at::Tensor(int)> upstream;  // rank r's gradient of the output
  std::function<at::Tensor()> want_output;  // on this rank
  std::function<at::Tensor()> want_grad;
  std::map<std::string, comm::OpStats> forward_ops, backward_ops;
};

std::vector<Case> cases(const TpGroup& g) {
  const int t = g.size();
  auto sum = [t](const std::function<at::Tensor(int)>& f) {
    at::Tensor s = f(0);
    for (int r = 1; r < t; ++r) s = s + f(r);
    return s;
  };
  auto cat = [t](const std::function<at::Tensor(int)>& f, int64_t dim) {
    std::vector<at::Tensor> parts;
    for (int r = 0; r < t; ++r) parts.push_back(f(r));
    return at::cat(parts, dim);
  };
  auto mine = [&g](const at::Tensor& x, int64_t dim) { return tp::own_slice(x, dim, g); };
  auto ops = [t](const std::string& op, int64_t bytes) {
    return t == 1 ? std::map<std::string, comm::OpStats>{}
                  : std::map<std::string, comm::OpStats>{{op, {1, bytes}}};
  };
  const std::map<std::string, comm::OpStats> none;
  auto small = [](int r) { return value({2, 2, 3}, r); };      // 12 floats, 48 bytes
  auto big = [t](int r) { return value({2, 2 * t, 3}, r); };   // 12 t floats
  auto narrow = [](int r) { return value({2, 3, 2}, r); };     // the same, split along the
  auto wide = [t](int r) { return value({2, 3, 2 * t}, r); };  // last dim
  auto bigbatch = [t](int r) { return value({2 * t, 2, 3}, r); };  // the group's batch
  auto same = [](const std::function<at::Tensor(int)>& f) { return [f](int) { return f(0); }; };
  const int64_t big_bytes = 48 * t;
  return {
      {"copy_to_tp", tp::copy_to_tp, same(small), small, [=] { return small(0); },
       [=] { return sum(small); }, none, ops("all_reduce", 48)},
      {"reduce_from_tp", tp::reduce_from_tp, small, same(small), [=] { return sum(small); },
       [=] { return small(0); }, ops("all_reduce", 48), none},
      {"scatter_to_tp", tp::scatter_to_tp, same(wide), narrow, [=] { return mine(wide(0), -1); },
       [=] { return cat(narrow, -1); }, none, ops("all_gather", 48)},
      {"gather_from_tp", tp::gather_from_tp, narrow, same(wide), [=] { return cat(narrow, -1); },
       [=] { return mine(wide(0), -1); }, ops("all_gather", 48), none},
      {"all_gather_sequence", [](auto& x, auto& g) { return tp::all_gather_sequence(x, g); }, small,
       big, [=] { return cat(small, 1); }, [=] { return mine(sum(big), 1); }, ops("all_gather", 48),
       ops("reduce_scatter", big_bytes)},
      {"reduce_scatter_sequence",
       [](auto& x, auto& g) { return tp::reduce_scatter_sequence(x, g); }, big, small,
       [=] { return mine(sum(big), 1); }, [=] { return cat(small, 1); },
       ops("reduce_scatter", big_bytes), ops("all_gather", 48)},
      {"scatter_to_sequence", [](auto& x, auto& g) { return tp::scatter_to_sequence(x, g); },
       same(big), small, [=] { return mine(big(0), 1); }, [=] { return cat(small, 1); }, none,
       ops("all_gather", 48)},
      {"gather_from_sequence", [](auto& x, auto& g) { return tp::gather_from_sequence(x, g); },
       small, same(big), [=] { return cat(small, 1); }, [=] { return mine(big(0), 1); },
       ops("all_gather", 48), none},
      // SMP's non-prescaled flow: along the batch dim, the backward scaled by tp and 1 / tp.
      {"gather_batch", tp::gather_batch, small, bigbatch, [=] { return cat(small, 0); },
       [=] { return mine(bigbatch(g.rank()), 0) * t; }, ops("all_gather", 48), none},
      {"split_batch", tp::split_batch, bigbatch, small, [=] { return mine(bigbatch(g.rank()), 0); },
       [=] { return cat(small, 0) / t; }, none, ops("all_gather", 48)},
  };
}

TEST(TpPrimitives, ForwardBackwardAndCollectivesMatchClosedForms) {
  reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size()));
  const TpGroup g = tp_group();
  comm::Communicator& c = process_group(CommGroup::TP_GROUP);
  for (const Case& k : cases(g)) {
    SCOPED_TRACE(k.name + " tp=" + std::to_string(g.size()));
    at::Tensor x = k.input(g.rank()).requires_grad_(true);
    c.reset_counters();
    const at::Tensor y = k.fn(x, g);
    EXPECT_TRUE(at::equal(y, k.want_output())) << "forward";
    EXPECT_TRUE(counted(c.counters(), k.forward_ops)) << "forward collectives";
    c.reset_counters();
    (y * k.upstream(g.rank())).sum().backward();
    EXPECT_TRUE(at::equal(x.grad(), k.want_grad())) << "backward";
    EXPECT_TRUE(counted(c.counters(), k.backward_ops)) << "backward collectives";
  }
}

TEST(TpPrimitives, GroupOfOneIsTheIdentityAndSilent) {
  reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size()));
  comm::Communicator& c = process_group(CommGroup::TP_GROUP);
  c.reset_counters();
  const TpGroup one;
  const at::Tensor x = value({2, 4, 4}, 0);
  for (const Case& k : cases(one)) EXPECT_TRUE(at::equal(k.fn(x, one), x)) << k.name;
  EXPECT_EQ(c.counters().total().calls, 0);
}

TEST(TpPrimitives, SyncReplicatedGradsSumsEveryGradientInOneAllReduce) {
  reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size()));
  const TpGroup g = tp_group();
  const int t = g.size(), r = g.rank();
  comm::Communicator& c = process_group(CommGroup::TP_GROUP);
  at::Tensor a = at::zeros({3}).requires_grad_(true);
  at::Tensor b = at::zeros({2, 2}).requires_grad_(true);
  at::Tensor unused = at::zeros({5}).requires_grad_(true);  // no gradient on any rank
  const auto eff = tp::sync_replicated_grads({a, b, unused}, g);
  c.reset_counters();
  ((r + 1.0) * eff[0].sum() + (r == 0 ? 1.0 : 0.0) * eff[1].sum()).backward();
  EXPECT_TRUE(at::equal(a.grad(), at::full({3}, t * (t + 1) / 2.0)));
  EXPECT_TRUE(at::equal(b.grad(), at::ones({2, 2})));
  if (t > 1) EXPECT_TRUE(at::equal(unused.grad(), at::zeros({5})));  // t = 1: untouched
  const std::map<std::string, comm::OpStats> want =
      t == 1 ? std::map<std::string, comm::OpStats>{}
             : std::map<std::string, comm::OpStats>{{"all_reduce", {1, 12 * 4}}};
  EXPECT_TRUE(counted(c.counters(), want));
}

TEST(TpPrimitives, EmptyTensorsAndIndivisibleSizes) {
  reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size()));
  const TpGroup g = tp_group();
  const at::Tensor empty = at::zeros({0, 2 * g.size(), 3}).requires_grad_(true);
  EXPECT_EQ(tp::all_gather_sequence(empty, g).sizes(),
            (std::vector<int64_t>{0, 2 * g.size() * g.size(), 3}));
  EXPECT_EQ(tp::reduce_from_tp(empty, g).numel(), 0);
  if (g.size() == 1) return;
  const at::Tensor odd = at::zeros({2, 2 * g.size() + 1, 3});
  try {
    tp::reduce_scatter_sequence(odd, g);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("(" + std::to_string(2 * g.size() + 1) + ")"), std::string::npos) << msg;
    EXPECT_NE(msg.find("tensor_parallel_degree (" + std::to_string(g.size()) + ")"),
              std::string::npos)
        << msg;
  }
}

}  // namespace
}  // namespace smp::testing

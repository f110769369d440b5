// The split backward (split_backward.h): finding where the weight half starts, and the two halves.
#include "split_backward.h"

#include <unordered_map>
#include <unordered_set>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace smp::pipeline {
namespace {

// Keeps the gradients flowing into a node (a WeightStart's). It holds its WeightStart weakly:
// the WeightStart holds the node, and a strong pointer back would keep the graph alive forever.
class KeepGrads : public torch::autograd::FunctionPreHook {
 public:
  explicit KeepGrads(const std::shared_ptr<WeightStart>& start) : start_(start) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (auto start = start_.lock()) start->grads.assign(grads.begin(), grads.end());
    return grads;
  }

 private:
  std::weak_ptr<WeightStart> start_;
};

}  // namespace

std::pair<Values, SplitBackward> input_half(const Values& roots, const Values& grads,
                                            const Values& leaves,
                                            const std::vector<at::Tensor>& params) {
  using torch::autograd::Node;
  // The graph below the roots, with each node's parents.
  std::unordered_map<Node*, std::vector<Node*>> parents;
  std::vector<std::shared_ptr<Node>> nodes;
  std::unordered_set<Node*> seen;
  for (const at::Tensor& r : roots) {
    if (r.grad_fn() && seen.insert(r.grad_fn().get()).second) nodes.push_back(r.grad_fn());
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const auto& edge : nodes[i]->next_edges()) {
      if (!edge.function) continue;
      parents[edge.function.get()].push_back(nodes[i].get());
      if (seen.insert(edge.function.get()).second) nodes.push_back(edge.function);
    }
  }
  // Nodes from which the gradient accumulator of one of `targets` is reached.
  auto reaching = [&](const std::vector<at::Tensor>& targets) {
    std::unordered_set<Node*> out;
    std::vector<Node*> stack;
    for (const at::Tensor& t : targets) {
      auto acc = torch::autograd::impl::try_get_grad_accumulator(t);
      if (acc && seen.count(acc.get()) && out.insert(acc.get()).second) stack.push_back(acc.get());
    }
    while (!stack.empty()) {
      Node* node = stack.back();
      stack.pop_back();
      for (Node* parent : parents[node]) {
        if (out.insert(parent).second) stack.push_back(parent);
      }
    }
    return out;
  };
  const std::unordered_set<Node*> to_leaves = reaching(leaves);
  const std::unordered_set<Node*> to_params = reaching(params);
  auto weight_side = [&](Node* node) { return to_params.count(node) && !to_leaves.count(node); };
  std::unordered_map<Node*, torch::autograd::Edge> param_edge;
  for (const at::Tensor& p : params) {
    const torch::autograd::Edge edge = torch::autograd::impl::gradient_edge(p);
    param_edge[edge.function.get()] = edge;
  }
  // The parameters reached from `from` through weight-side nodes only.
  SplitBackward split;
  std::unordered_set<Node*> claimed;  // weight-side nodes some start reaches (accumulators aside)
  auto claim = [&](Node* node) {
    if (!param_edge.count(node) && !claimed.insert(node).second) split.shared = true;
  };
  auto params_below = [&](const std::vector<Node*>& from) {
    torch::autograd::edge_list out;
    std::unordered_set<Node*> visited(from.begin(), from.end());
    for (Node* node : from) claim(node);
    std::vector<Node*> stack(from.begin(), from.end());
    while (!stack.empty()) {
      Node* node = stack.back();
      stack.pop_back();
      if (auto it = param_edge.find(node); it != param_edge.end()) out.push_back(it->second);
      for (const auto& edge : node->next_edges()) {
        Node* child = edge.function.get();
        if (child && weight_side(child) && visited.insert(child).second) {
          stack.push_back(child);
          claim(child);
        }
      }
    }
    return out;
  };

  torch::autograd::edge_list root_edges;
  torch::autograd::variable_list root_grads;
  for (size_t i = 0; i < roots.size(); ++i) {
    root_edges.push_back(torch::autograd::impl::gradient_edge(roots[i]));
    root_grads.push_back(grads[i].defined() ? grads[i] : at::ones_like(roots[i]));
    Node* node = root_edges.back().function.get();
    if (node && weight_side(node)) {  // the input half never enters it
      auto start = std::make_shared<WeightStart>();
      start->roots = {root_edges.back()};
      start->grads = {root_grads.back()};
      start->params = params_below({node});
      split.starts.push_back(std::move(start));
    }
  }
  for (const auto& node : nodes) {
    if (!to_leaves.count(node.get())) continue;
    std::vector<Node*> branches;
    for (const auto& edge : node->next_edges()) {
      if (edge.function && weight_side(edge.function.get())) branches.push_back(edge.function.get());
    }
    if (branches.empty()) continue;
    auto start = std::make_shared<WeightStart>();
    for (uint32_t k = 0; k < node->num_inputs(); ++k) start->roots.emplace_back(node, k);
    start->params = params_below(branches);
    node->add_pre_hook(std::make_unique<KeepGrads>(start));
    split.starts.push_back(std::move(start));
  }
  torch::autograd::edge_list outputs;
  for (const at::Tensor& leaf : leaves) outputs.push_back(torch::autograd::impl::gradient_edge(leaf));
  const torch::autograd::variable_list got = torch::autograd::Engine::get_default_engine().execute(
      root_edges, root_grads, /*keep_graph=*/true, /*create_graph=*/false,
      /*accumulate_grad=*/false, outputs);
  return {Values(got.begin(), got.end()), std::move(split)};
}

void weight_half(const SplitBackward& split) {
  for (const auto& start : split.starts) {
    torch::autograd::edge_list roots;
    torch::autograd::variable_list grads;
    for (size_t i = 0; i < start->roots.size() && i < start->grads.size(); ++i) {
      if (!start->grads[i].defined()) continue;
      roots.push_back(start->roots[i]);
      grads.push_back(start->grads[i]);
    }
    if (roots.empty() || start->params.empty()) continue;
    torch::autograd::Engine::get_default_engine().execute(
        roots, grads, /*keep_graph=*/split.shared, /*create_graph=*/false,
        /*accumulate_grad=*/true, start->params);
  }
}

}  // namespace smp::pipeline

"""Split any nn.Module into an ordered list of pipeline "units" at module boundaries.

Why
---
The C++ pipeline engine places contiguous pieces of a model on different pipeline
stages.  To do that for an arbitrary user module (a hand-written CNN, a Hugging Face
GPT-2, ...) without asking the user to restructure the code, we need the forward
pass as a sequence of steps with explicit values flowing between them.

How
---
1. Capture.  ``torch.export.export(module, args, kwargs, strict=False)`` records one
   example call as an ATen-level graph (the "training IR": autograd-safe, dropout
   still random, BatchNorm still updates its running stats in place).  Parameters,
   buffers and lifted tensor constants become graph placeholders; the graph
   signature says which placeholder is which.  Every node carries
   ``meta["nn_module_stack"]``: the modules that were executing when it ran.

2. Label.  Each compute node gets a *unit path* from its innermost module:
   * inside an element of a container (ModuleList / Sequential / ModuleDict):
     the outermost such element, e.g. ``transformer.h.3`` or ``features.0``;
   * else, if the root's child holds a container somewhere below it, the path at
     depth 2, e.g. ``transformer.wte``, ``bert.embeddings``;
   * else the root's child, e.g. ``conv1``, ``lm_head``.
   Nodes with no such module ("glue": reshapes at the root, a loss computed in the
   user's forward, a mask built by ``transformer`` itself) join the next unit, or
   the last one at the end.

   The getitems of a multi-output node go with that node.

3. Cut.  Consecutive nodes with the same path form a unit, named by its path; a
   path met again later gets a suffix (``act#2``).  A cut is only allowed where
   every value crossing it is a tensor (no tuples, ints, vmap levels ...) and where
   no later unit writes in place into a tensor made before the cut (a pipeline stage
   must not mutate what it received, e.g. ``ReLU(inplace=True)`` after BatchNorm);
   otherwise the two units around the cut merge, keeping the first one's name.

4. Build.  Each unit becomes its own ``torch.fx.GraphModule`` taking
   ``(live values..., params..., buffers..., constants...)`` and returning the
   values later units (or the user) still need.  Parameters are looked up from
   ``unit.params`` on every call, so autograd reaches the module's own Parameters
   and the caller may swap one (e.g. for a copy of a tied weight on another stage).
   A tied weight is named, in each unit, by the alias under that unit's module
   (``transformer.wte.weight`` in the embedding unit, ``lm_head.weight`` in the
   head), whichever placeholder export happened to keep.  Buffers are read from the
   module at call time; in-place updates (BatchNorm) hit them directly, and graphs
   that report updates as buffer-mutation outputs get them copied back.

Limits: the split is for one call signature (shapes, dtypes, devices, non-tensor
arguments, train/eval mode); export bakes devices into the graph (``arange(...,
device=cpu)``), so split on the device you will run on.  Cache one SplitModule per
``call_signature(...)``.  Export sees private copies of the input tensors, so the
same tensor passed twice (``input_ids=x, labels=x``) does not fuse the two inputs.
In-place writes into the *user's* input tensors are not detected.
"""

from __future__ import annotations

import contextlib
import operator
import sys
from typing import Any, Hashable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind

__all__ = ["SplitError", "Unit", "SplitModule", "split_module", "call_signature"]

_CONTAINERS = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)


class SplitError(Exception):
    """The module or call cannot be split automatically; the message says why and what to do."""


# --------------------------------------------------------------------------- call keys


def _leaf_key(x: Any) -> Hashable:
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype, str(x.device))
    try:
        hash(x)
        return ("const", type(x).__name__, x)
    except TypeError:
        return ("const", type(x).__name__, repr(x))


def call_signature(module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> Hashable:
    """Cache key of one call: tree structure, tensor shapes/dtypes/devices, non-tensor
    values, and the module's train/eval mode.  Keyword order does not matter."""
    kwargs = dict(sorted((kwargs or {}).items()))
    leaves, spec = pytree.tree_flatten((tuple(args), kwargs))
    return (type(module).__qualname__, module.training, str(spec), tuple(_leaf_key(x) for x in leaves))


# --------------------------------------------------------------------------- capture


@contextlib.contextmanager
def _causal_mask_as_in_eager(args: tuple, kwargs: dict):
    """transformers' mask helpers, seeing a trace, cannot look at values: they keep the packed-
    sequence check on position_ids and build a (b, 1, s, s) mask (with torch.vmap) that every
    block's SDPA then takes instead of is_causal=True, about 4% of a GPT-2 step. For a call
    without attention_mask and position_ids (the model makes its own arange) eager mode skips
    both, deciding from shapes and from which arguments are present, which the capture is
    specialised on anyway: so the capture skips them too."""
    masks = sys.modules.get("transformers.masking_utils")
    if (masks is None or len(args) > 1 or kwargs.get("attention_mask") is not None
            or kwargs.get("position_ids") is not None):
        yield
        return
    saved = masks._ignore_causal_mask_sdpa, masks.find_packed_sequence_indices

    def ignore(padding_mask, query_length, kv_length, kv_offset, local_attention_size=None):
        if (padding_mask is None and (query_length == 1 or kv_length == query_length)
                and (local_attention_size is None or kv_length < local_attention_size)):
            return True
        return saved[0](padding_mask, query_length, kv_length, kv_offset, local_attention_size)

    masks._ignore_causal_mask_sdpa, masks.find_packed_sequence_indices = ignore, lambda position_ids: None
    try:
        yield
    finally:
        masks._ignore_causal_mask_sdpa, masks.find_packed_sequence_indices = saved


def _export(module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    # Give export a private copy of every input tensor: if the caller passes the same
    # tensor twice (input_ids=x, labels=x), export would otherwise read both from one
    # placeholder, and a later call with different labels would feed them to the embedding.
    copy = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
    args, kwargs = pytree.tree_map(copy, (tuple(args), kwargs))
    try:
        with _causal_mask_as_in_eager(args, kwargs):
            return torch.export.export(module, args, kwargs, strict=False)
    except Exception as e:  # export raises many different types
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise SplitError(
            f"smp: could not capture {type(module).__name__} for pipelining: {first.strip()}. "
            "smp cuts a model through torch.export: make the forward traceable (no Python control flow "
            "on tensor values and no .item(): use torch.where / torch.cond, or move that code out of the "
            "model into the @smp.step function; for Hugging Face models pass use_cache=False)."
        ) from e


# --------------------------------------------------------------------------- labelling


class _PathRule:
    """Maps a node's innermost module path to its unit path (rules in the module docstring)."""

    def __init__(self, root: torch.nn.Module):
        self.modules = dict(root.named_modules(remove_duplicate=False))
        self.cache: dict[str, str | None] = {}
        self.holds_container: dict[str, bool] = {}

    def _has_container(self, path: str) -> bool:
        if path not in self.holds_container:
            self.holds_container[path] = any(isinstance(m, _CONTAINERS) for m in self.modules[path].modules())
        return self.holds_container[path]

    def unit_path(self, inner: str) -> str | None:
        if inner not in self.cache:
            parts = inner.split(".")
            prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
            parents = [""] + prefixes[:-1]
            path = next((p for p, up in zip(prefixes, parents) if isinstance(self.modules.get(up), _CONTAINERS)), None)
            if path is None and prefixes[0] in self.modules:
                if not self._has_container(prefixes[0]):
                    path = prefixes[0]
                elif len(prefixes) >= 2:
                    path = prefixes[1]
                # else: glue code of a container-holding child (e.g. mask building) -> None
            self.cache[inner] = path
        return self.cache[inner]

    def of_node(self, node: fx.Node) -> str | None:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [p for p, _ in stack.values() if p and p in self.modules]
        return self.unit_path(paths[-1]) if paths else None


def _label(nodes: list[fx.Node], rule: _PathRule) -> list[str]:
    """Unit path of every compute node; glue takes the next labelled path (or the last)."""
    paths = [rule.of_node(n) for n in nodes]
    following = None
    for i in reversed(range(len(paths))):
        if paths[i] is None:
            paths[i] = following
        following = paths[i]
    last = next((p for p in reversed(paths) if p is not None), "")
    paths = [last if p is None else p for p in paths]
    # getitem of a multi-output node belongs with that node.
    index = {n: i for i, n in enumerate(nodes)}
    for i, n in enumerate(nodes):
        if n.target is operator.getitem and n.args[0] in index:
            paths[i] = paths[index[n.args[0]]]
    return paths


# --------------------------------------------------------------------------- cutting


def _segments(nodes: list[fx.Node], paths: list[str]) -> list[tuple[str, list[fx.Node]]]:
    segs: list[tuple[str, list[fx.Node]]] = []
    for n, p in zip(nodes, paths):
        if segs and segs[-1][0] == p:
            segs[-1][1].append(n)
        else:
            segs.append((p, [n]))
    return segs


def _written_args(node: fx.Node) -> list[fx.Node]:
    """Arguments an in-place/out= ATen op writes into."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return []
    out = []
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
            if isinstance(v, fx.Node):
                out.append(v)
    return out


def _alias_root(node: fx.Node) -> fx.Node:
    """Follow view ops (x.view(), x[1:], ...) back to the tensor whose storage they share."""
    while node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
        schema = getattr(node.target, "_schema", None)
        rets = schema.returns if schema is not None else []
        if not (rets and rets[0].alias_info is not None and not rets[0].alias_info.is_write):
            break
        node = node.args[0]
    return node


class _Liveness:
    """Where each value is defined and last used, in segment indices.

    User inputs are defined at segment -1; the graph output uses values at len(segs)."""

    def __init__(self, segs, user_inputs: list[fx.Node], user_outputs: list[fx.Node]):
        self.define: dict[fx.Node, int] = {n: -1 for n in user_inputs}
        for i, (_, seg) in enumerate(segs):
            for n in seg:
                self.define[n] = i
        self.last_use: dict[fx.Node, int] = {}
        for i, (_, seg) in enumerate(segs):
            for n in seg:
                for a in n.all_input_nodes:
                    if a in self.define:
                        self.last_use[a] = max(self.last_use.get(a, -1), i)
        for a in user_outputs:
            if a in self.define:
                self.last_use[a] = len(segs)
        self.order = list(self.define)  # user inputs first, then graph order

    def live_after(self, b: int) -> list[fx.Node]:
        """Values made in segments <= b that a later segment (or the output) reads."""
        return [v for v in self.order if self.define[v] <= b < self.last_use.get(v, -2)]


def _is_tensor_value(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _bad_cut(segs, live: _Liveness) -> int | None:
    """Index b of the first cut (between segs b and b+1) that must not exist."""
    for b in range(len(segs) - 1):
        if not all(_is_tensor_value(v) for v in live.live_after(b)):
            return b
    for j, (_, seg) in enumerate(segs):
        for n in seg:
            for w in _written_args(n):
                i = live.define.get(_alias_root(w), -1)
                if 0 <= i < j:  # writes into a tensor an earlier unit made: keep them together
                    return j - 1
    return None


def _cut(nodes, paths, user_inputs, user_outputs):
    segs = _segments(nodes, paths)
    while True:
        live = _Liveness(segs, user_inputs, user_outputs)
        b = _bad_cut(segs, live)
        if b is None:
            return segs, live
        segs[b : b + 2] = [(segs[b][0], segs[b][1] + segs[b + 1][1])]


# --------------------------------------------------------------------------- units


class Unit:
    """One contiguous piece of the forward pass.

    ``forward(values)`` takes the list the previous unit returned (or
    ``SplitModule.flatten_inputs(...)`` for the first) and returns the list the next
    unit takes (for the last unit: the flat user outputs)."""

    def __init__(self, name, graph_module, n_inputs, param_feed, params, buffer_feed, constants, mutations, module,
                 updated_in_place=()):
        self.name: str = name
        self.graph_module: fx.GraphModule = graph_module
        self.param_names: list[str] = list(dict.fromkeys(param_feed))
        self.params: dict[str, torch.Tensor] = params
        self.buffer_names: list[str] = list(dict.fromkeys(buffer_feed + [b for b, _ in mutations]))
        self._n_inputs = n_inputs
        self._param_feed = param_feed  # one FQN per param placeholder (a tied weight may feed two)
        self._buffer_feed = buffer_feed
        self._constants = constants
        self._mutated_buffers = [b for b, _ in mutations]
        self._updated_in_place = list(updated_in_place)
        self._module = module

    def forward(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(values) != self._n_inputs:
            raise SplitError(f"smp: unit {self.name!r} takes {self._n_inputs} values, got {len(values)}")
        extra = [self.params[n] for n in self._param_feed]
        # A buffer an op updates in place (batch_norm's running statistics) is fed as a copy and
        # copied back: autograd saves what the op was given, and a recomputed run's restore of
        # the unit's state (an in-place copy into the buffer) must not change what it saved.
        copies = {n: self._module.get_buffer(n).clone() for n in self._updated_in_place}
        extra += [copies[n] if n in copies else self._module.get_buffer(n) for n in self._buffer_feed]
        out = list(self.graph_module(*values, *extra, *self._constants))
        with torch.no_grad():
            for name, value in copies.items():
                self._module.get_buffer(name).copy_(value)
        k = len(self._mutated_buffers)
        if k:
            out, new = out[:-k], out[-k:]
            with torch.no_grad():
                for name, v in zip(self._mutated_buffers, new):
                    self._module.get_buffer(name).copy_(v)
        return out

    __call__ = forward

    def __repr__(self):
        return f"Unit({self.name!r}, params={len(self.param_names)}, buffers={len(self.buffer_names)})"


class _Program:
    """What the exported graph's placeholders and outputs mean (from ep.graph_signature)."""

    def __init__(self, ep: torch.export.ExportedProgram, module: torch.nn.Module):
        self.module = module
        self.placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        self.get_attrs = [n for n in ep.graph.nodes if n.op == "get_attr"]  # submodules, HOP specs
        self.input_spec = {s.arg.name: s for s in ep.graph_signature.input_specs}
        for s in ep.graph_signature.input_specs:
            if s.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR,
                              InputKind.CUSTOM_OBJ, InputKind.USER_INPUT):
                raise SplitError(f"smp: {type(module).__name__}: exported graph has an unsupported input kind {s.kind}")
        self.constants = ep.constants
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        self.user_outputs: list[Any] = []  # fx.Node (tensor) or a constant, in output order
        self.mutations: list[tuple[str, fx.Node]] = []  # (buffer FQN, new value)
        for spec, v in zip(ep.graph_signature.output_specs, out_node.args[0]):
            if spec.kind == OutputKind.USER_OUTPUT:
                self.user_outputs.append(v)
            elif spec.kind == OutputKind.BUFFER_MUTATION:
                self.mutations.append((spec.target, v))
            else:
                raise SplitError(
                    f"smp: {type(module).__name__}: exported graph has an unsupported output kind {spec.kind} "
                    "(e.g. the forward mutates one of its inputs in place); make the forward leave its inputs unchanged"
                )
        # Every FQN each Parameter is reachable by (tied weights have several).
        self.aliases: dict[int, list[str]] = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            self.aliases.setdefault(id(p), []).append(name)

    def kind(self, node: fx.Node) -> InputKind | None:
        spec = self.input_spec.get(node.name) if node.op == "placeholder" else None
        return spec.kind if spec else None

    def user_inputs(self) -> list[fx.Node]:
        return [n for n in self.placeholders if self.kind(n) == InputKind.USER_INPUT]

    def param_name(self, node: fx.Node, unit_path: str) -> str:
        """FQN for a parameter placeholder; for a tied weight prefer the alias owned by this unit."""
        target = self.input_spec[node.name].target
        names = self.aliases.get(id(self.module.get_parameter(target)), [target])
        own = [n for n in names if unit_path and (n == unit_path or n.startswith(unit_path + "."))]
        return own[0] if own else target


def _build_unit(prog: _Program, name, path, seg, inputs, outputs, mutations, root_gm) -> Unit:
    needed = {a for n in seg for a in n.all_input_nodes} | {v for v in outputs if isinstance(v, fx.Node)}
    g = fx.Graph()
    env: dict[fx.Node, Any] = {}

    def placeholder(n: fx.Node):
        env[n] = g.placeholder(n.name)
        env[n].meta["val"] = n.meta.get("val")

    for n in inputs:
        placeholder(n)
    param_feed, buffer_feed, constants, updated_in_place = [], [], [], []
    for n in prog.placeholders:  # graph order keeps the unit's signature stable
        if n not in needed or n in env:
            continue
        kind, spec = prog.kind(n), prog.input_spec[n.name]
        if kind == InputKind.PARAMETER:
            placeholder(n)
            param_feed.append(prog.param_name(n, path))
        elif kind == InputKind.BUFFER:
            placeholder(n)
            buffer_feed.append(spec.target)
            if any(_updates_running_stats(u) for u in n.users if u in seg):
                updated_in_place.append(spec.target)
        elif kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
            placeholder(n)
            constants.append(prog.constants[spec.target])
        elif kind == InputKind.USER_INPUT:  # a non-tensor argument (e.g. use_cache=False): bake it in
            env[n] = getattr(spec.arg, "value", n.meta.get("val"))
    for n in prog.get_attrs:
        if n in needed:
            env[n] = g.node_copy(n)
    for n in seg:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[v] for v in outputs) + tuple(env[v] for _, v in mutations))
    g.lint()
    cls_name = "Unit_" + "".join(c if c.isalnum() else "_" for c in name)
    gm = fx.GraphModule(root_gm, g, class_name=cls_name)
    params = {fqn: prog.module.get_parameter(fqn) for fqn in param_feed}
    return Unit(name, gm, len(inputs), param_feed, params, buffer_feed, constants, mutations, prog.module,
                updated_in_place)


def _updates_running_stats(node: fx.Node) -> bool:
    """Whether ``node`` is a normalisation that updates its running statistics in place
    (non-strict export keeps aten.batch_norm so, not as a reported buffer mutation)."""
    name = node.target.name() if isinstance(node.target, torch._ops.OpOverload) else ""
    return any(op in name for op in ("batch_norm", "instance_norm"))


def _unique_names(paths: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        p = p or "<root>"
        seen[p] = seen.get(p, 0) + 1
        names.append(p if seen[p] == 1 else f"{p}#{seen[p]}")
    return names


# --------------------------------------------------------------------------- the split module


class SplitModule:
    """The units of one module for one call signature, plus input/output (un)flattening."""

    def __init__(self, module, units, in_spec, kwarg_order, input_leaves, out_spec, user_outputs, signature):
        self.module = module
        self.units: list[Unit] = units
        self.signature: Hashable = signature
        self._in_spec = in_spec
        self._kwarg_order = kwarg_order
        self._input_leaves = input_leaves  # per flat leaf: ("tensor", shape, dtype) or ("const", value)
        self._out_spec = out_spec
        self._user_outputs = user_outputs  # per flat output leaf: None (a tensor) or ("const", value)
        self._training = module.training

    def flatten_inputs(self, args: tuple, kwargs: dict | None = None) -> list[torch.Tensor]:
        kwargs = kwargs or {}
        if set(kwargs) == set(self._kwarg_order):
            kwargs = {k: kwargs[k] for k in self._kwarg_order}
        flat, spec = pytree.tree_flatten_with_path((tuple(args), kwargs))
        if spec != self._in_spec:
            raise SplitError(f"smp: call structure differs from the split call: expected {self._in_spec}, got {spec}")
        if self.module.training != self._training:
            raise SplitError("smp: module train/eval mode changed since the split; split again for this mode")
        values = []
        for (path, x), expect in zip(flat, self._input_leaves):
            where = "argument " + pytree.keystr(path)
            if expect[0] == "tensor":
                if not isinstance(x, torch.Tensor):
                    raise SplitError(f"smp: {where} should be a tensor, got {type(x).__name__}")
                if tuple(x.shape) != expect[1] or x.dtype != expect[2]:
                    raise SplitError(
                        f"smp: {where} has shape {tuple(x.shape)} dtype {x.dtype}; the split was made for "
                        f"shape {expect[1]} dtype {expect[2]}. Split again for this call signature."
                    )
                values.append(x)
            elif type(x) is not type(expect[1]) or not _same_const(x, expect[1]):
                raise SplitError(f"smp: {where} is {x!r}; the split was made for {expect[1]!r}")
        return values

    def unflatten_outputs(self, values: list[torch.Tensor]) -> Any:
        values = list(values)
        n_tensors = sum(o is None for o in self._user_outputs)
        if len(values) != n_tensors:
            raise SplitError(f"smp: expected {n_tensors} output tensors, got {len(values)}")
        it = iter(values)
        leaves = [next(it) if o is None else o[1] for o in self._user_outputs]
        return pytree.tree_unflatten(leaves, self._out_spec)

    def __call__(self, *args, **kwargs):
        """Run all units in order (reference execution, handy for tests)."""
        values = self.flatten_inputs(args, kwargs)
        for u in self.units:
            values = u.forward(values)
        return self.unflatten_outputs(values)

    def __repr__(self):
        return "SplitModule(\n" + "".join(f"  {i}: {u!r}\n" for i, u in enumerate(self.units)) + ")"


def _same_const(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def split_module(module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> SplitModule:
    """Export ``module(*args, **kwargs)`` and cut it into units at module boundaries."""
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"split_module: args must be a tuple of positional arguments, got {type(args).__name__}")
    args, kwargs = tuple(args), dict(kwargs or {})
    signature = call_signature(module, args, kwargs)
    ep = _export(module, args, kwargs)
    prog = _Program(ep, module)

    nodes = [n for n in ep.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    paths = _label(nodes, _PathRule(module))
    # Non-tensor arguments (use_cache=False) are baked into the units; only tensors flow.
    tensor_inputs = [n for n in prog.user_inputs() if _is_tensor_value(n)]
    user_outputs = [v for v in prog.user_outputs if isinstance(v, fx.Node)]
    if not nodes:  # forward does no computation: one empty unit passes inputs through
        segs, live = [("", [])], _Liveness([("", [])], tensor_inputs, user_outputs)
    else:
        segs, live = _cut(nodes, paths, tensor_inputs, user_outputs)

    names = _unique_names([p for p, _ in segs])
    units = []
    for i, ((path, seg), name) in enumerate(zip(segs, names)):
        inputs = tensor_inputs if i == 0 else live.live_after(i - 1)
        outputs = user_outputs if i == len(segs) - 1 else live.live_after(i)
        seg_set = set(seg)
        mutations = [(b, v) for b, v in prog.mutations if v in seg_set]
        units.append(_build_unit(prog, name, path, seg, inputs, outputs, mutations, ep.graph_module))

    flat, in_spec = pytree.tree_flatten((args, kwargs))
    assert sum(isinstance(x, torch.Tensor) for x in flat) == len(tensor_inputs)
    input_leaves = [("tensor", tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else ("const", x) for x in flat]
    user_outputs_desc = [None if isinstance(v, fx.Node) else ("const", v) for v in prog.user_outputs]
    return SplitModule(module, units, in_spec, list(kwargs), input_leaves, ep.call_spec.out_spec,
                       user_outputs_desc, signature)

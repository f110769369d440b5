"""SMP's DistributedModel for any nn.Module, on the C++ engine.

The module is captured once per call signature with torch.export and cut at module boundaries
into units (graph_split.py); each unit becomes one engine layer whose forward is that unit's
graph, over the module's own Parameters. The engine partitions the layers into pipeline stages
(auto_partition profiles them; ``smp.set_partition`` / ``with smp.partition(i)`` place them by
hand), runs the schedule, and reduces gradients over data-parallel replicas into the
parameters' ``.grad``. A parameter used by two units (a tied embedding and head) is given to
the later unit as a copy, and the engine keeps both equal (their gradients are summed).

At wrap, modules marked by smp.tensor_parallelism become tensor-parallel and delayed
placeholders become this rank's initialised shards (distribute.py). Until the first step every
rank holds every pipeline stage; the first step captures and partitions the model (the
partition needs an example call) and frees the other stages.
"""

import contextlib
import functools
import warnings

import torch
from torch.utils import _pytree as pytree

from smp._engine import _C

from . import graph_split
from . import state as _state
from .distribute import distribute, materialize
from .step import current_microbatch


# --- manual placement: smp.partition / smp.set_partition ------------------------------------

_partition_stack = []


def _tag_registered(module, name, submodule):
    if _partition_stack and submodule is not None:
        submodule._smp_partition = _partition_stack[-1]


torch.nn.modules.module.register_module_module_registration_hook(_tag_registered)


@contextlib.contextmanager
def partition(index):
    """Modules created (registered as children) inside go to pipeline stage ``index``."""
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"smp.partition: index must be a pipeline stage >= 0, got {index!r}")
    _partition_stack.append(index)
    try:
        yield
    finally:
        _partition_stack.pop()


def set_partition(module, index):
    """Puts ``module`` on pipeline stage ``index`` (used with auto_partition: false)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"smp.set_partition: expected an nn.Module, got {type(module).__name__}")
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"smp.set_partition: index must be a pipeline stage >= 0, got {index!r}")
    module._smp_partition = index


def set_activation_checkpointing(module, preserve_rng_state=True, pack_args_as_tuple=False, strategy="each"):
    """Recomputes ``module``'s activations in backward instead of keeping them (SMP's
    strategies for containers: each, contiguous, group_<N>)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"smp.set_activation_checkpointing: expected an nn.Module, got {type(module).__name__}")
    if pack_args_as_tuple:
        warnings.warn("smp.set_activation_checkpointing: pack_args_as_tuple has no effect here (units take tensors)")
    module._smp_checkpointing = (strategy, bool(preserve_rng_state))


# --- the model ------------------------------------------------------------------------------

_ACCEPTED_NO_EFFECT = {
    "trace_device": "the engine profiles on the device it runs on",
    "trace_execution_times": "auto_partition always profiles execution times",
    "trace_memory_usage": "auto_partition always counts parameter memory",
    "gradient_as_bucket_view": "gradients are always views into the flat buckets",
    "broadcast_buffers": "buffers are broadcast from rank 0 once, at wrap time",
    "find_unused_parameters": "a parameter without a gradient is reduced as zeros",
}


class DistributedModel(torch.nn.Module):
    """SMP's DistributedModel (see the module docstring). Build it after smp.init, on every
    rank, around the same module; call it and ``backward`` only inside an ``@smp.step``."""

    def __init__(self, module, average_grads_across_microbatches=True, bucket_cap_mb=25,
                 overlapping_allreduce=True, backward_passes_per_step=1, **kwargs):
        super().__init__()
        _state._require_init("DistributedModel")
        if _state.state.model is not None:
            raise RuntimeError("smp.DistributedModel: a script wraps one model; this process already has one")
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"smp.DistributedModel: expected an nn.Module, got {type(module).__name__}")
        for key in kwargs:
            if key not in _ACCEPTED_NO_EFFECT:
                allowed = ", ".join(sorted(["average_grads_across_microbatches", "bucket_cap_mb",
                                            "overlapping_allreduce", "backward_passes_per_step", *_ACCEPTED_NO_EFFECT]))
                raise TypeError(f"smp.DistributedModel: unknown argument '{key}'; allowed: {allowed}")
            warnings.warn(f"smp.DistributedModel: {key} is accepted and has no effect ({_ACCEPTED_NO_EFFECT[key]})")
        if isinstance(backward_passes_per_step, bool) or not isinstance(backward_passes_per_step, int) \
                or backward_passes_per_step < 1:
            raise ValueError(f"smp.DistributedModel: backward_passes_per_step={backward_passes_per_step!r}; "
                             "allowed: an integer >= 1")
        if _state.state.cfg["sharded_data_parallel_degree"] > 1:
            raise ValueError("smp.DistributedModel: sharded_data_parallel_degree > 1 is not supported by the Python "
                             "front yet (allowed: 1); smp-train runs it from C++")
        module = distribute(module)  # tensor parallelism (model_creation.py's marks)
        materialize(module, _state.device())  # delayed initialisation's placeholders
        self.module = module.to(_state.device())  # SMP places the model; scripts never move it
        self._options = {"average_grads_across_microbatches": bool(average_grads_across_microbatches),
                         "bucket_cap_mb": float(bucket_cap_mb), "overlapping_allreduce": bool(overlapping_allreduce),
                         "backward_passes_per_step": backward_passes_per_step}
        self._engine = None
        self._splits = {}  # (call signature, training) -> SplitModule
        self._split = None  # the split the engine's layers run now
        self._splits_first = None  # the split the engine was built from (its tie copies)
        self._unit_names = None
        self._engine_names = {}  # engine parameter name -> module's name (originals)
        self._copies = {}  # id of a module's parameter -> the copies later units compute with
        self._post_partition_hooks = []
        self._post_step_hooks = []
        self._pending_resume = None
        self._pending_state = None  # a partial state dict loaded before partitioning
        self._freed = {}  # id -> (tensor, shape) of other stages' tensors, emptied
        _state.state.model = self
        self._broadcast_initial_state()

    # what scripts call ------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        return current_microbatch("calling the DistributedModel").call_model(args, kwargs)

    def backward(self, tensors, grad_tensors=None):
        current_microbatch("DistributedModel.backward").backward(tensors, grad_tensors)

    def get_module(self):
        return self.module

    @property
    def partitioned(self):
        return self._engine is not None

    def local_parameters(self):
        if self._engine is None:
            return iter(self.module.parameters())
        return iter(t for _, t in self._engine.local_named_parameters())

    def local_named_parameters(self):
        if self._engine is None:
            return iter(self.module.named_parameters())
        return iter((self._engine_names.get(n, n), t) for n, t in self._engine.local_named_parameters()
                    if n in self._engine_names)

    def local_named_buffers(self):
        """This rank's buffers (every buffer before partitioning), by the module's names."""
        buffers = {id(b) for b in self.module.buffers()}
        return iter((n, t) for n, t in self._local_tensors().items() if id(t) in buffers)

    def local_buffers(self):
        return iter(t for _, t in self.local_named_buffers())

    def local_named_modules(self):
        """The modules this rank runs: those holding a parameter or buffer of this rank, and a
        module without any where its parent is one (SMP places parameterless modules with their
        parent). Every module before partitioning."""
        local = {id(t) for t in self._local_tensors().values()}
        local |= {i for i, copies in self._copies.items() if any(id(c) in local for c in copies)}  # tied
        holds, mine = set(), set()  # module paths holding any tensor / one of this rank's
        for name, t in self.module.state_dict(keep_vars=True).items():
            parts = name.split(".")[:-1]
            paths = {".".join(parts[:k]) for k in range(len(parts) + 1)}
            holds |= paths
            if id(t) in local:
                mine |= paths
        kept, runs = {}, {"": True}
        for path, module in self.module.named_modules():  # parents before children
            parent = runs[path.rpartition(".")[0]] if path else True
            runs[path] = path in mine if path in holds else parent
            if runs[path]:
                kept[path] = module
        return iter(kept.items())

    def local_modules(self):
        return iter(m for _, m in self.local_named_modules())

    # tensor parallelism's extras (SMP's names) ----------------------------------------------

    def distributed_modules(self):
        """The modules tensor parallelism distributed: smp.nn's Distributed* modules and the
        tensor-parallel forms it put in place of Linear / Conv1D / Embedding children."""
        from . import nn  # noqa: PLC0415 (smp.nn imports model_creation, which needs this module's package)
        classes = tuple(getattr(nn, name) for name in nn.__all__ if name.startswith("Distributed"))
        return iter(m for m in self.module.modules() if isinstance(m, classes) or nn.sharded.is_sharded_form(m))

    @staticmethod
    def is_distributed_parameter(param):
        """Whether ``param`` is this rank's slice of a tensor-parallel parameter."""
        return hasattr(param, "_smp_tp_shard")

    is_distributed_buffer = is_distributed_parameter

    def is_scaled_batch_parameter(self, param):
        """Whether ``param`` is computed on the TP group's whole batch (SMP's scaled batch):
        a tensor-parallel slice, anything in a distributed module or a batch region (when
        prescaled_batch is false), every parameter with prescaled_batch (the group's ranks hold
        the same samples); none without tensor parallelism. Its gradient is then the same sum
        on every rank of the TP group: SMP reduces it over RDP_GROUP, the rest over DP_GROUP."""
        return id(param) in self._scaled_batch_ids()

    is_scaled_batch_buffer = is_scaled_batch_parameter

    def default_reducer_named_parameters(self):
        """This rank's parameters reduced over DP_GROUP (not scaled batch)."""
        scaled = self._scaled_batch_ids()
        return iter((n, p) for n, p in self.local_named_parameters() if id(p) not in scaled)

    def scaled_batch_reducer_named_parameters(self):
        """This rank's parameters reduced over RDP_GROUP (scaled batch)."""
        scaled = self._scaled_batch_ids()
        return iter((n, p) for n, p in self.local_named_parameters() if id(p) in scaled)

    def _scaled_batch_ids(self):
        """The ids of the scaled-batch tensors (see is_scaled_batch_parameter); kept once
        partitioned (the modules and tied copies are fixed from then on)."""
        cached = self.__dict__.get("_scaled_ids")
        if cached is not None:
            return cached
        ids = self._find_scaled_batch_ids()
        if self._engine is not None:
            self._scaled_ids = ids
        return ids

    def _find_scaled_batch_ids(self):
        from . import nn  # noqa: PLC0415
        if _state.tp_size() == 1:
            return set()
        tensors = lambda m: [*m.parameters(), *m.buffers()]  # noqa: E731
        if _state.state.cfg["prescaled_batch"]:
            ids = {id(t) for t in tensors(self.module)}
        else:
            regions = [m for m in self.distributed_modules() if not nn.sharded.is_sharded_form(m)]
            regions += [m for m in self.module.modules() if nn.sharded.is_batch_region(m)]
            ids = {id(t) for m in regions for t in tensors(m)}
            ids |= {id(t) for t in tensors(self.module) if self.is_distributed_parameter(t)}
        # A tied parameter's copies (a later unit computes with one) are what local_* gives.
        return ids | {id(c) for i in list(ids) for c in self._copies.get(i, [])}

    # not supported -----------------------------------------------------------------------

    def join(self, *args, **kwargs):
        raise NotImplementedError(
            "smp.DistributedModel.join: uneven inputs are not supported; every data-parallel rank must run the "
            "same number of smp.step calls (drop_last=True, or the same number of batches per rank)")

    def register_comm_hook(self, *args, **kwargs):
        raise NotImplementedError(
            "smp.DistributedModel.register_comm_hook: the engine reduces gradients itself (bucketed all-reduce "
            "or reduce-scatter in fp32); custom communication hooks are not supported")

    def register_post_partition_hook(self, hook):
        self._post_partition_hooks.append(hook)
        return _Handle(self._post_partition_hooks, hook)

    def register_post_step_hook(self, hook):
        self._post_step_hooks.append(hook)
        return _Handle(self._post_step_hooks, hook)

    # state dicts ---------------------------------------------------------------------------

    def local_state_dict(self):
        """This rank's parameters and buffers (module names), with ``_smp_is_partial``."""
        out = {name: t.detach() for name, t in self._local_tensors().items()}
        out["_smp_is_partial"] = True
        return out

    def state_dict(self, *args, gather_to_rank0=False, **kwargs):
        """The whole model's state (module names, whole tensors): tensor-parallel shards
        gathered over TP_GROUP and stages over PP_GROUP (collective over both). With
        ``gather_to_rank0`` only mp_rank 0 gets it; the other ranks get an empty dict."""
        full = self._whole_state_dict(*args, **kwargs)
        return {} if gather_to_rank0 and _state.mp_rank() != 0 else full

    def _whole_state_dict(self, *args, **kwargs):
        if self._engine is None and _state.tp_size() == 1:
            return self.module.state_dict(*args, **kwargs)
        mine = {name: _whole(t) for name, t in self._local_tensors().items()}
        if _state.pp_size() == 1:
            return mine
        merged = {}
        for part in _state.allgather(mine, _state.PP_GROUP):
            merged.update(part)
        order = list(self.module.state_dict().keys())
        return {k: merged[k] for k in order if k in merged}

    def load_state_dict(self, state_dict, strict=True):
        """Loads module-named tensors (a full dict, or a partial one with ``_smp_is_partial``)
        into the module and into the copies tied parameters have on other units."""
        sd = dict(state_dict)
        partial = bool(sd.pop("_smp_is_partial", False))
        if partial and self._engine is None:  # which names are this rank's is known after partitioning
            self._pending_state = (state_dict, strict)
            return torch.nn.modules.module._IncompatibleKeys([], [])
        own = self.module.state_dict(keep_vars=True)
        local = self._local_tensors()
        unknown = [k for k in sd if k not in own]
        if strict and unknown:
            raise KeyError(f"smp: load_state_dict: names not in the model: {unknown[:5]}")
        given = {id(own[k]) for k in sd if k in own}  # a tied tensor is given under any of its names
        missing = [k for k in (local if partial else own) if k not in sd and id(own[k]) not in given]
        if strict and missing:
            raise KeyError(f"smp: load_state_dict: the model's {missing[:5]} are missing")
        with torch.no_grad():
            for name, value in sd.items():
                if name not in own:
                    continue
                targets = [own[name], *self._copies.get(id(own[name]), [])]
                if name in local:
                    targets.append(local[name])
                for t in {id(t): t for t in targets}.values():
                    piece = _own_shard(value, t)
                    if t.numel() == piece.numel():  # not a parameter freed on this rank
                        t.copy_(piece.reshape(t.shape))
        return torch.nn.modules.module._IncompatibleKeys(missing, unknown)

    def _local_tensors(self):
        """Name -> the tensor this rank holds: a local unit's parameter (a tied copy where the
        unit has one) or buffer, and whatever no unit uses (kept by every rank); everything
        before partitioning."""
        own = self.module.state_dict(keep_vars=True)
        if self._engine is None:
            return own
        local = set(self._engine.local_stages())
        out, used = {}, set()
        for unit, stage in zip(self._split.units, self._engine.stage_of_layers()):
            used.update(unit.param_names, unit.buffer_names)
            if stage in local:
                out.update({n: unit.params[n] for n in unit.param_names if n not in out})
                out.update({n: own[n] for n in unit.buffer_names if n in own and n not in out})
        out.update({n: t for n, t in own.items() if n not in used})
        return out

    # the step's pipeline -------------------------------------------------------------------

    def _run_pipeline(self, mbs, train):
        calls = self._stage0_calls([mb.model_call for mb in mbs])
        split = self._split_for(calls[0])
        inputs = [split.flatten_inputs(args, kwargs) for args, kwargs in calls]
        if self._engine is None:
            self._build_engine(split, inputs[0])

        def loss_fn(k, flat_outputs):
            # An error in the user's code here is kept for after the pipeline (the step raises
            # it on every rank then); the pipeline finishes with a zero loss meanwhile.
            mb = mbs[k]
            try:
                mb.give_outputs(split.unflatten_outputs(list(flat_outputs)))
            except Exception as e:  # noqa: BLE001
                mb.error = e
                mb.backward_args = None
            return [_loss_of(mb, flat_outputs, train)] + list(flat_outputs)

        returned = self._engine.run_step(inputs, loss_fn, train)
        for mb, values in zip(mbs, returned):
            if mb.outputs is None:  # a rank without the last stage: the outputs, detached
                try:
                    mb.give_outputs(split.unflatten_outputs(list(values[1:])))
                except Exception as e:  # noqa: BLE001 (raised by the step, on every rank)
                    mb.error = e
        for hook in list(self._post_step_hooks):
            hook(self, _state.state.optimizer)

    def _stage0_calls(self, calls):
        """Stage 0's model calls on every pipeline rank: pipeline rank 0's arguments, which the
        others (fed placeholder batches by SMP's scripts) rebuild as zeros of the same shapes."""
        if _state.pp_size() == 1:
            return calls
        if _state.pp_rank() == 0:
            meta = [pytree.tree_map(_describe, c) for c in calls]
            _state.broadcast(meta, _state.PP_GROUP)
            return calls
        meta = _state.recv_from(0, _state.RankType.PP_RANK)
        return [pytree.tree_map(_rebuild, c) for c in meta]

    def _split_for(self, call):
        args, kwargs = call
        key = (graph_split.call_signature(self.module, args, kwargs), self.module.training)
        split = self._splits.get(key)
        if split is None:
            with self._whole_for_capture(), _tracing():
                split = graph_split.split_module(self.module, args, kwargs)
            if self._unit_names is not None:
                self._adopt(split)
            self._splits[key] = split
        self._split = split
        return split

    def _adopt(self, split):
        """A later signature's split runs on the engine's layers: same units, same tie copies."""
        names = [u.name for u in split.units]
        if names != self._unit_names:
            raise RuntimeError(
                "smp: this call of the model cuts into different units than the first call "
                f"({len(names)} vs {len(self._unit_names)} units); keep the shapes and arguments "
                "of the model's calls the same across steps")
        first = self._splits_first
        for unit, old in zip(split.units, first.units):
            for fqn in unit.param_names:
                unit.params[fqn] = old.params.get(fqn, unit.params[fqn])

    def _forward_unit(self, index, values):
        return self._split.units[index].forward(list(values))

    def _build_engine(self, split, trial_inputs):
        specs, tied = [], {}
        seen = {}  # id of a module's parameter -> engine name of the unit that holds it
        for i, unit in enumerate(split.units):
            params, names = [], []
            for fqn in unit.param_names:
                p = unit.params[fqn]
                if not p.requires_grad:
                    continue
                rel = fqn[len(unit.name) + 1:] if fqn.startswith(unit.name + ".") else fqn
                engine_name = f"{unit.name}.{rel}"
                if id(p) in seen:  # a tied parameter: this unit computes with a copy
                    copy = torch.nn.Parameter(p.detach().clone())
                    for attr in ("_smp_tp_shard", "_smp_hf_shape"):
                        if hasattr(p, attr):
                            setattr(copy, attr, getattr(p, attr))
                    unit.params[fqn] = copy
                    tied[engine_name] = seen[id(p)]
                    self._copies.setdefault(id(p), []).append(copy)
                    p = copy
                else:
                    seen[id(p)] = engine_name
                    self._engine_names[engine_name] = fqn
                params.append(p)
                names.append(rel)
            shards = [getattr(p, "_smp_tp_shard", (-1, 0)) for p in params]
            state = self._state_tensors(unit)  # looked up once: the engine asks per recomputed run
            specs.append((unit.name, functools.partial(self._forward_unit, i), params, names,
                          functools.partial(self._unit_state, state), functools.partial(self._set_unit_state, state),
                          shards))
        options = dict(self._options, tied_copies=tied)
        self._engine = _C.DistributedModel(specs, options)
        self._unit_names = [u.name for u in split.units]
        self._splits_first = split
        self._place_by_hand(split)
        self._engine.partition(trial_inputs)
        self._free_other_stages()
        if self._pending_state is not None:
            (state, strict), self._pending_state = self._pending_state, None
            self.load_state_dict(state, strict)
        if _state.state.optimizer is not None:
            _state.state.optimizer._attach(self)
        if self._pending_resume is not None:
            resume, self._pending_resume = self._pending_resume, None
            resume()
        for hook in list(self._post_partition_hooks):
            hook(self, _state.state.optimizer)

    def _free_other_stages(self):
        """Parameters and buffers no local unit uses give their memory back (other pipeline
        stages hold them); their Python objects stay, empty, so references keep working."""
        keep = {id(t) for t in self._local_tensors().values()}
        with torch.no_grad():
            for t in self.module.state_dict(keep_vars=True).values():
                if id(t) not in keep and t.numel():
                    self._freed[id(t)] = (t, t.shape)
                    t.data = torch.empty(0, dtype=t.dtype, device=t.device)

    @contextlib.contextmanager
    def _whole_for_capture(self):
        """Capturing a new call signature needs every tensor's shape: freed tensors get
        uninitialised storage of their shape (untouched pages cost no memory) for the while."""
        for t, shape in self._freed.values():
            t.data = torch.empty(shape, dtype=t.dtype, device=t.device)
        try:
            yield
        finally:
            for t, _ in self._freed.values():
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)

    def _place_by_hand(self, split):
        """Applies set_partition / smp.partition and set_activation_checkpointing, by module."""
        units = [u.name for u in split.units]
        for path, module in sorted(self.module.named_modules(), key=lambda pm: pm[0].count(".") if pm[0] else -1):
            covered = [u for u in units if not path or u == path or u.startswith(path + ".")]
            stage = getattr(module, "_smp_partition", None)
            checkpointing = getattr(module, "_smp_checkpointing", None) or _hf_checkpointing(module)
            if (stage is not None or checkpointing is not None) and not covered:
                owner = next((u for u in units if path.startswith(u + ".")), "?")
                if checkpointing is not None or stage is not None:
                    raise ValueError(
                        f"smp: module '{path}' is inside the pipeline unit '{owner}' and cannot be placed or "
                        f"checkpointed on its own; apply it to '{owner}' or a module that holds whole units")
            if stage is not None:
                for u in covered:
                    self._engine.set_partition(u, stage)
            if checkpointing is not None:
                strategy, preserve = checkpointing
                for name in ([path] if path else sorted({u.split(".")[0] for u in covered})):
                    self._engine.set_activation_checkpointing(name, strategy, preserve)

    def _state_tensors(self, unit):
        """A unit's buffers (BatchNorm's running statistics) and frozen parameters, by name: what
        its get_state / set_state carry through checkpoints and recomputed runs."""
        own = self.module.state_dict(keep_vars=True)
        names = list(unit.buffer_names) + [n for n in unit.param_names if not unit.params[n].requires_grad]
        return {name: own[name] for name in names if name in own}

    @staticmethod
    def _unit_state(tensors):
        return {name: t.detach().clone() for name, t in tensors.items()}  # a copy: recomputes restore it

    @staticmethod
    def _set_unit_state(tensors, values):
        with torch.no_grad():
            for name, value in values.items():
                tensors[name].copy_(value)

    def _broadcast_initial_state(self):
        """Every replica starts from the same parameters and buffers (as DDP does): replicated
        tensors from world rank 0, tensor-parallel shards (smp.nn) from the first rank of their
        RDP group (the ranks holding the same slice)."""
        tensors = [t for t in self.module.state_dict(keep_vars=True).values() if t.numel()]
        shards = [t for t in tensors if hasattr(t, "_smp_tp_shard")]
        _broadcast([t for t in tensors if not hasattr(t, "_smp_tp_shard")], 0, None)
        _broadcast(shards, _state.get_rdp_group()[0], _state.get_rdp_process_group())


def _hf_checkpointing(module):
    """Hugging Face's gradient checkpointing (``model.gradient_checkpointing_enable()``, the
    Trainer's ``gradient_checkpointing=True``) as the engine's: a transformers layer that would
    checkpoint itself (a GradientCheckpointingLayer with ``gradient_checkpointing`` on) is
    recomputed by the engine (torch.utils.checkpoint inside a captured forward is only traced
    through, so without this it would keep its activations)."""
    hf_layer = any(c.__name__ == "GradientCheckpointingLayer" and c.__module__.startswith("transformers.")
                   for c in type(module).__mro__)
    return ("each", True) if hf_layer and getattr(module, "gradient_checkpointing", False) else None


@contextlib.contextmanager
def _tracing():
    _state.state.tracing = True
    try:
        yield
    finally:
        _state.state.tracing = False


def _broadcast(tensors, src, group, bucket=1 << 24):
    """Broadcasts `tensors` (in place) from world rank `src` over `group`, coalesced into
    buckets of one dtype and at most `bucket` elements (no copy of the whole model)."""
    if not tensors or torch.distributed.get_world_size(group) == 1:
        return
    with torch.no_grad():
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            pending, size = [], 0
            for t in [t for t in tensors if t.dtype == dtype] + [None]:
                if pending and (t is None or size + t.numel() > bucket):
                    flat = torch.cat([p.detach().reshape(-1) for p in pending])
                    flat = flat.to(torch.uint8) if dtype == torch.bool else flat  # (gloo has no bool)
                    torch.distributed.broadcast(flat, src=src, group=group)
                    for p, piece in zip(pending, flat.split([p.numel() for p in pending])):
                        p.detach().copy_(piece.view(p.shape).to(dtype))
                    pending, size = [], 0
                if t is not None:
                    pending.append(t)
                    size += t.numel()


def _whole(t):
    """A tensor-parallel shard gathered whole over TP_GROUP (collective), in the module's own
    shape (``_smp_hf_shape``: GPT-2's c_attn); others as they are."""
    spec, shape = getattr(t, "_smp_tp_shard", None), getattr(t, "_smp_hf_shape", None)
    t = t.detach()
    if spec is None or _state.tp_size() == 1:
        return t
    dim, size = spec
    pieces = _C.all_gather(t.contiguous(), _state.TP_GROUP)  # (tp, *shard)
    whole = torch.cat(list(pieces.unbind(0)), dim=dim).narrow(dim, 0, size)
    return whole.reshape(shape or whole.shape).clone()


def _whole_shape(t, shape=None):
    """The shape a tensor's whole tensor has in the engine: a shard's split dim at the whole
    size. ``shape``: the tensor's own shape when ``t`` no longer has it (emptied, another stage's)."""
    shape = tuple(t.shape if shape is None else shape)
    if not hasattr(t, "_smp_tp_shard"):
        return shape
    dim, size = t._smp_tp_shard
    return shape[:dim] + (size,) + shape[dim + 1:]


def _own_shard(value, t):
    """This rank's shard of a whole tensor `value` for the shard `t` (rows past the whole
    tensor, a padded vocabulary's, are zeros); `value` itself when it already is a shard."""
    spec = getattr(t, "_smp_tp_shard", None)
    if spec is None or t.numel() == 0 or value.shape == t.shape:  # (a freed tensor is skipped later)
        return value
    dim, size = spec
    value = value.reshape(_whole_shape(t)) if hasattr(t, "_smp_hf_shape") else value
    n = t.shape[dim]
    start = _state.tp_rank() * n
    piece = value.narrow(dim, start, max(0, min(n, size - start)))
    if piece.shape[dim] < n:
        pad = list(piece.shape)
        pad[dim] = n - piece.shape[dim]
        piece = torch.cat([piece, piece.new_zeros(pad)], dim=dim)
    return piece


def _loss_of(mb, flat_outputs, train):
    """What backward starts from for one microbatch: the tensors given to model.backward (with
    their grad_tensors), or, in a training step whose function never called backward, zero
    times the outputs (so every stage still runs its backward), or a placeholder."""
    if mb.backward_args is not None:
        tensors, grads = mb.backward_args
        tensors = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
        if grads is None:
            for t in tensors:
                if t.numel() != 1:
                    raise RuntimeError(f"smp: model.backward needs grad_tensors for a non-scalar tensor of shape {tuple(t.shape)}")
            return sum(t.sum() for t in tensors)
        grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
        return sum((t * g).sum() for t, g in zip(tensors, grads))
    if train:
        live = [t for t in flat_outputs if t.requires_grad]
        if live:
            return sum(t.sum() * 0 for t in live)
    return torch.zeros(())


class _TensorMeta:
    """A tensor's shape and dtype, sent instead of the tensor (a pytree leaf)."""

    def __init__(self, tensor):
        self.shape, self.dtype = tuple(tensor.shape), tensor.dtype


def _describe(value):
    return _TensorMeta(value) if isinstance(value, torch.Tensor) else value


def _rebuild(value):
    if isinstance(value, _TensorMeta):
        return torch.zeros(value.shape, dtype=value.dtype, device=_state.device())
    return value


class _Handle:
    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self):
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)

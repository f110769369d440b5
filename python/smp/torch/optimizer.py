"""SMP's DistributedOptimizer: a torch.optim.Optimizer whose update the engine runs.

SGD, Adam and AdamW run in the engine over its flat buffers (ZeRO-1 with
shard_optimizer_state, fp32 master weights under fp16/bf16, clipping over every stage and
shard). Any other torch optimizer (Adadelta, say) steps in Python on this rank's parameters,
whose gradients the engine has already averaged; it cannot shard its state (an error says so).
The wrapper shares the inner optimizer's param_groups, so LR schedulers work on either; the
groups' options are copied into the engine before every step.
"""

import warnings

import torch

from smp._engine import _C

from . import state as _state

_ENGINE_KINDS = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
_GROUP_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "betas", "eps", "amsgrad")


def _engine_kind(optimizer):
    kind = _ENGINE_KINDS.get(type(optimizer))
    if kind is None:
        return None
    for group in optimizer.param_groups:
        if group.get("maximize") or group.get("differentiable"):
            return None
        if kind == "sgd" and group.get("momentum", 0) == 0 and group.get("nesterov"):
            return None
    return kind


class DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, optimizer, static_loss_scale=1.0, dynamic_loss_scale=False, dynamic_loss_args=None, **kwargs):
        _state._require_init("DistributedOptimizer")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"smp.DistributedOptimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if _state.state.optimizer is not None:
            raise RuntimeError("smp.DistributedOptimizer: a script wraps one optimizer; this process already has one")
        if kwargs:
            raise TypeError(f"smp.DistributedOptimizer: unknown arguments {sorted(kwargs)}; allowed: "
                            "static_loss_scale, dynamic_loss_scale, dynamic_loss_args")
        super().__init__(optimizer.param_groups, optimizer.defaults)  # the same group dicts
        self.optimizer = optimizer
        self.state = optimizer.state
        cfg = _state.state.cfg
        self._scale = (1.0 if static_loss_scale is None else float(static_loss_scale), bool(dynamic_loss_scale),
                       dict(dynamic_loss_args or {}))
        if not cfg["fp16"] and (self._scale[0] != 1.0 or self._scale[1]):
            warnings.warn("smp.DistributedOptimizer: loss scaling applies only with fp16; ignored")
            self._scale = (1.0, False, {})
        self._kind = _engine_kind(optimizer)
        if self._kind is None and (cfg["shard_optimizer_state"] or cfg["fp16"] or cfg["fp16_params"] or cfg["bf16"]):
            raise ValueError(
                f"smp.DistributedOptimizer: {type(optimizer).__name__} runs in Python, which cannot shard its state "
                "(shard_optimizer_state) or keep fp32 master weights (fp16/fp16_params/bf16); use SGD, Adam or AdamW")
        self._engine = None
        self._pending_state = None
        _state.state.optimizer = self
        model = _state.state.model
        if model is not None and model.partitioned:
            self._attach(model)

    def _attach(self, model):
        """Called once the model is partitioned: hands the groups (plus tied copies) to the engine."""
        for group in self.param_groups:
            for p in list(group["params"]):
                group["params"].extend(model._copies.get(id(p), []))
        if self._kind is not None:
            groups = [(list(g["params"]), {k: g[k] for k in _GROUP_KEYS if k in g}) for g in self.param_groups]
            static, dynamic, args = self._scale
            self._engine = _C.DistributedOptimizer(model._engine, self._kind, groups, static, dynamic, args)
        self._model = model
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def _ready(self, what):
        if getattr(self, "_model", None) is None:
            raise RuntimeError(f"smp.DistributedOptimizer.{what}: call it after the first smp.step (the model is partitioned there)")

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("smp.DistributedOptimizer.step: closures are not supported (the step is the pipeline's)")
        self._ready("step")
        if self._engine is None:
            self.optimizer.step()
            return
        self._groups_to_engine()
        self._engine.step()

    def _groups_to_engine(self):
        """The groups' options (an LR scheduler's writes) into the engine's optimizer: before
        each step and before its state is saved."""
        for i, group in enumerate(self.param_groups):
            self._engine.set_group_options(i, {k: group[k] for k in _GROUP_KEYS if k in group})

    def zero_grad(self, set_to_none=True):
        """Zeroes gradients in place: they are views into the engine's buckets."""
        if self._engine is not None:
            self._engine.zero_grad()
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()

    @property
    def overflow(self):
        return self._engine.overflow() if self._engine is not None else False

    def clip_master_grads(self, max_norm, norm_type=2):
        """Clips the global gradient norm (every stage and shard) to max_norm; returns the norm."""
        self._ready("clip_master_grads")
        if norm_type != 2:
            raise ValueError(f"smp.DistributedOptimizer.clip_master_grads: norm_type={norm_type}; allowed: 2")
        if self._engine is not None:
            return self._engine.clip_master_grads(float(max_norm))
        grads = [p.grad for p in self._model.local_parameters() if p.grad is not None]
        total = torch.stack([g.double().pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), dtype=torch.float64)
        torch.distributed.all_reduce(total, group=_state.get_pp_process_group())
        norm = total.sqrt().item()
        if norm > max_norm:
            for g in grads:
                g.mul_(max_norm / (norm + 1e-6))
        return norm

    # state dicts ---------------------------------------------------------------------------

    def local_state_dict(self, gather_if_shard=True):
        self._ready("local_state_dict")
        if self._engine is None:
            return dict(self.optimizer.state_dict(), _smp_is_partial=True)
        self._groups_to_engine()
        return self._engine.local_state_dict()

    def state_dict(self):
        """The whole optimizer's state, gathered over the pipeline (collective over PP_GROUP
        once partitioned)."""
        if getattr(self, "_model", None) is None:
            return self.optimizer.state_dict()
        if self._engine is None:  # a Python-run optimizer: each stage holds its parameters' state
            full = self.optimizer.state_dict()
            for part in _state.allgather(full["state"], _state.PP_GROUP):
                full["state"].update(part)
            return full
        self._groups_to_engine()
        return self._engine.state_dict()

    def load_state_dict(self, state_dict):
        """Loads a local (``_smp_is_partial``) or full state; before the first step it is kept
        and loaded once the model is partitioned (as SMP defers it)."""
        if getattr(self, "_model", None) is None:
            self._pending_state = state_dict
            return
        if self._engine is None:
            sd = dict(state_dict)
            sd.pop("_smp_is_partial", None)
            self.optimizer.load_state_dict(sd)
            # torch's load makes new groups: share them again, so schedulers reach the optimizer.
            self.param_groups, self.state = self.optimizer.param_groups, self.optimizer.state
            return
        if "meta" not in state_dict or "tensors" not in state_dict:
            raise ValueError("smp.DistributedOptimizer.load_state_dict: not a state dict of smp's DistributedOptimizer "
                             "(it has no 'meta' and 'tensors'); pass what state_dict() or local_state_dict() returned")
        self._engine.load_state_dict(state_dict)
        self._groups_from_engine()

    def _groups_from_engine(self):
        """After a load, the groups' options (the learning rate...) are the checkpoint's, as
        torch's load_state_dict restores param_groups."""
        for i, group in enumerate(self.param_groups):
            for key, value in self._engine.group_options(i).items():
                if key in group:
                    group[key] = tuple(value) if key == "betas" else value

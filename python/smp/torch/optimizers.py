"""smp.optimizers: apex's FusedLAMB and FusedNovoGrad, the optimizers SMP shipped as apex replacements.

SMP scripts import ``smdistributed.modelparallel.torch.optimizers.FusedLAMB`` (and
``FusedNovoGrad``); here they are ``smp.optimizers.FusedLamb`` (alias ``FusedLAMB``) and
``smp.optimizers.FusedNovoGrad``: torch.optim.Optimizer subclasses with apex's constructor
arguments and the math of apex's CUDA kernels (multi_tensor_lamb.cu, multi_tensor_novograd.cu),
written with torch._foreach_* ops so they run on CPUs and GPUs alike.

Why they need smp at all: both take norms of WHOLE tensors (LAMB: the global gradient norm for
clipping and each parameter's trust ratio ||w|| / ||update||; NovoGrad: each parameter's
gradient norm as its second moment). Under smp a rank holds only part of the model:

  - a tensor-parallel shard (``p._smp_tp_shard = (dim, whole size)``, nn/tp_ops.py) is a slice
    of the whole parameter: its squared norm is summed over TP_GROUP (its max, for NovoGrad's
    infinity norm, is taken over TP_GROUP); a vocabulary padded to a multiple of tp leaves its
    padding rows out;
  - replicated parameters are the same on every TP rank: counted once;
  - pipeline stages hold different parameters: the global gradient norm is summed over PP_GROUP;
  - a tied parameter's copy on a later stage (DistributedModel's tied weights: the engine gives
    both the summed gradient) is left out of the global norm, so the tensor counts once.

So a step on every rank equals the step one process takes on the whole model. The reductions
use torch.distributed on smp's process groups, only for the optimizer smp.DistributedOptimizer
wraps and only where the group has more than one rank: a plain single process needs no
smp.init, and an optimizer not wrapped steps its parameters as whole tensors. Every rank of a
TP group (and, for LAMB, of a pipeline group) must call step() together, as
DistributedOptimizer.step does (these optimizers run in Python there, on gradients the engine
has already averaged).

Deviations from apex, none of which changes the math of fp32 parameters: float64 parameters are
accepted (the math runs in float64); fp16 and bf16 parameters keep their moments in fp32 and are
updated in fp32 (apex's kernels compute in fp32 registers but store the moments in the
parameter's dtype); ``max_grad_norm`` of None or 0 turns LAMB's clipping off (apex would divide
by zero); NovoGrad keeps each parameter's second moment (a norm, not its square, as apex) in
the parameter's state rather than one tensor per group, so state dicts name it per parameter.
"""

import math
import numbers

import torch
import torch.distributed as dist

from . import state as _state

__all__ = ["FusedLamb", "FusedLAMB", "FusedNovoGrad"]

_LOW = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float64) + _LOW


class _Placement:
    """Where this rank's tensors sit in the whole model, for norms; built once per step.
    Only the optimizer smp.DistributedOptimizer wraps steps a distributed model: any other
    (outside smp, or a second optimizer over a model of its own), or tp = pp = 1, has every
    tensor whole and reduces nothing."""

    def __init__(self, optimizer):
        self.tp_group = self.pp_group = None
        self.tp_rank = 0
        self.copies = frozenset()  # ids of tied parameters' copies (the original counts)
        if not _state.is_initialized() or getattr(_state.state.optimizer, "optimizer", None) is not optimizer:
            return
        if _state.tp_size() > 1:
            self.tp_group, self.tp_rank = _state.get_tp_process_group(), _state.tp_rank()
        if _state.pp_size() > 1:
            self.pp_group = _state.get_pp_process_group()
        model = _state.state.model
        if model is not None:
            self.copies = frozenset(id(c) for copies in model._copies.values() for c in copies)

    def sharded(self, p):
        return self.tp_group is not None and hasattr(p, "_smp_tp_shard")

    def real(self, p, t):
        """t (of p's shape) without the rows of a padded vocabulary, which are no part of the model."""
        if not self.sharded(p):
            return t
        dim, size = p._smp_tp_shard
        n = t.shape[dim]
        keep = max(0, min(n, size - self.tp_rank * n))
        return t if keep == n else t.narrow(dim, 0, keep)

    def whole_sq(self, params, tensors):
        """The squared L2 norms (a vector) of the whole tensors whose parts on this rank are
        ``tensors`` (tensors[i] belongs to params[i]): shards' summed over TP_GROUP, in one
        collective. Every TP rank must call it with the same list layout."""
        sq = _sq_norms([self.real(p, t) for p, t in zip(params, tensors)])
        if self.tp_group is None or not any(self.sharded(p) for p in params):
            return sq
        mask = torch.tensor([self.sharded(p) for p in params], dtype=torch.bool, device=sq.device)
        part = torch.where(mask, sq, torch.zeros_like(sq))
        dist.all_reduce(part, group=self.tp_group)
        return torch.where(mask, part, sq)

    def whole_max(self, params, tensors):
        """The infinity norms (a vector) of the whole tensors: shards' maxima over TP_GROUP
        (replicated tensors are equal on every TP rank, so their maximum is their own)."""
        norms = torch.stack([torch.linalg.vector_norm(t, float("inf")) if t.numel() else t.new_zeros(())
                             for t in (self.real(p, t) for p, t in zip(params, tensors))]).to(_acc_dtype(tensors))
        if self.tp_group is not None and any(self.sharded(p) for p in params):
            dist.all_reduce(norms, op=dist.ReduceOp.MAX, group=self.tp_group)
        return norms

    def global_sq(self, params, sq):
        """The squared norm of the whole model from each tensor's whole squared norm: tied
        copies left out, stages summed over PP_GROUP."""
        counted = torch.tensor([id(p) not in self.copies for p in params], dtype=torch.bool, device=sq.device)
        total = torch.where(counted, sq, torch.zeros_like(sq)).sum()
        if self.pp_group is not None:  # (every stage takes part, one without gradients too: same dtype, device)
            total = total.to(torch.float64).to(_state.device())
            dist.all_reduce(total, group=self.pp_group)
        return total


def _acc_dtype(tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _sq_norms(tensors):
    dtype = _acc_dtype(tensors)
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.stack([n.to(dtype) for n in torch._foreach_norm(tensors, 2)]) ** 2


def _check_number(owner, name, value, low, high=None, low_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"smp.optimizers.{owner}: {name}={value!r}; allowed: a number {bound}")


def _check_common(owner, lr, betas, eps, weight_decay, amsgrad):
    if amsgrad:  # apex refuses it too
        raise RuntimeError(f"smp.optimizers.{owner}: amsgrad=True; allowed: False ({owner} has no AMSGrad variant)")
    _check_number(owner, "lr", lr, 0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"smp.optimizers.{owner}: betas={betas!r}; allowed: a pair (beta1, beta2), each in [0, 1)")
    _check_number(owner, "betas[0]", betas[0], 0.0, 1.0)
    _check_number(owner, "betas[1]", betas[1], 0.0, 1.0)
    _check_number(owner, "eps", eps, 0.0)
    _check_number(owner, "weight_decay", weight_decay, 0.0)


class _Fused(torch.optim.Optimizer):
    """What both share: step() around a closure (each subclass's _step does the update), apex's
    zero_grad (set_grad_none), the parameters to step, fp32 work copies."""

    _name = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step(_Placement(self))
        return loss

    def zero_grad(self, set_to_none=None):
        """Gradients become None when set_grad_none (apex's default) unless set_to_none says otherwise."""
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    def _work(self):
        """Per group: (group, params with a gradient, their work gradients, work parameters).
        Work tensors are the tensors themselves for fp32/fp64, fp32 copies for fp16/bf16."""
        out = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"smp.optimizers.{self._name}: sparse gradients are not supported "
                                       "(allowed: dense); SparseAdam takes them")
                if p.dtype not in _FLOATS:
                    raise ValueError(f"smp.optimizers.{self._name}: a parameter of dtype {p.dtype}; allowed: "
                                     "float32, float64, float16, bfloat16")
            grads = [p.grad.float() if p.dtype in _LOW else p.grad for p in params]
            work = [p.detach().float() if p.dtype in _LOW else p for p in params]
            out.append((group, params, grads, work))
        return out

    @staticmethod
    def _write_back(params, work):
        for p, w in zip(params, work):
            if p is not w:
                p.copy_(w)

    def _moment(self, p, key):
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, dtype=torch.float32 if p.dtype in _LOW else p.dtype,
                                          memory_format=torch.preserve_format)
        return state[key]


class FusedLamb(_Fused):
    """LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes") with apex FusedLAMB's arguments and math. One step, per parameter w with gradient g:

        n      = the global gradient norm (every parameter of the whole model)
        g     <- g / (n / max_grad_norm)            when n > max_grad_norm (clipping)
        g     <- g + weight_decay * w               when not adam_w_mode (L2 in the moments)
        m     <- beta1 m + beta3 g                  beta3 = 1 - beta1 with grad_averaging, else 1
        v     <- beta2 v + (1 - beta2) g^2
        u      = (m / bc1) / (sqrt(v / bc2) + eps)  bc = 1 - beta^step with bias_correction, else 1
        u     <- u + weight_decay * w               when adam_w_mode (decoupled decay)
        r      = ||w|| / ||u|| when both are non-zero and (weight_decay != 0 or use_nvlamb), else 1
        w     <- w - lr r u

    ``step`` counts per group (apex's ``group["step"]``); ``max_grad_norm`` is the optimizer's
    (apex reads it from the defaults), None or 0 for no clipping. Norms are the whole model's
    under tensor and pipeline parallelism (see the module's docstring)."""

    _name = "FusedLamb"

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 amsgrad=False, adam_w_mode=True, grad_averaging=True, set_grad_none=True, max_grad_norm=1.0,
                 use_nvlamb=False):
        _check_common("FusedLamb", lr, betas, eps, weight_decay, amsgrad)
        if max_grad_norm is not None:
            _check_number("FusedLamb", "max_grad_norm", max_grad_norm, 0.0)
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, grad_averaging=grad_averaging, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)
        self.adam_w_mode = bool(adam_w_mode)
        self.set_grad_none = bool(set_grad_none)
        self.use_nvlamb = bool(use_nvlamb)

    def _step(self, where):
        work = self._work()
        params = [p for _, ps, _, _ in work for p in ps]
        grads = [g for _, _, gs, _ in work for g in gs]
        weights = [w for _, _, _, ws in work for w in ws]
        n = len(params)
        # 1. whole norms of every gradient and weight (one TP reduction), the global gradient norm
        sq = where.whole_sq(params + params, grads + weights)
        norm = where.global_sq(params, sq[:n]).sqrt().item()
        max_norm = self.defaults["max_grad_norm"]
        clip = norm / max_norm if max_norm and norm > max_norm else 1.0
        # 2. each group's update (apex's stage 1)
        updates = []
        for group, ps, gs, ws in work:
            group["step"] = group.get("step", 0) + 1
            if ps:
                updates += self._updates(group, ps, gs, ws, clip)
        if not n:
            return
        # 3. trust ratios from the whole update norms (one TP reduction), then w -= lr r u (stage 2)
        w_norm, u_norm = sq[n:].sqrt(), where.whole_sq(params, updates).sqrt()
        adaptive = torch.tensor([self.use_nvlamb or g["weight_decay"] != 0 for g, ps, _, _ in work for _ in ps],
                                device=w_norm.device)
        use = adaptive & (w_norm != 0) & (u_norm != 0)
        ratio = torch.where(use, w_norm / torch.where(use, u_norm, torch.ones_like(u_norm)), torch.ones_like(w_norm))
        lrs = torch.tensor([g["lr"] for g, ps, _, _ in work for _ in ps], dtype=ratio.dtype, device=ratio.device)
        torch._foreach_mul_(updates, (lrs * ratio).tolist())
        torch._foreach_sub_(weights, updates)
        self._write_back(params, weights)

    def _updates(self, group, params, grads, weights, clip):
        """apex's stage 1 for one group: moments updated in place, the updates u returned."""
        beta1, beta2 = group["betas"]
        step, decay = group["step"], group["weight_decay"]
        bc1, bc2 = (1 - beta1 ** step, 1 - beta2 ** step) if group["bias_correction"] else (1.0, 1.0)
        beta3 = 1 - beta1 if group["grad_averaging"] else 1.0
        m = [self._moment(p, "exp_avg") for p in params]
        v = [self._moment(p, "exp_avg_sq") for p in params]
        g = torch._foreach_div(grads, clip) if clip != 1.0 else [t.clone() for t in grads]
        if not self.adam_w_mode and decay != 0:
            torch._foreach_add_(g, weights, alpha=decay)
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=beta3)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        denom = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        u = torch._foreach_div(m, bc1)
        torch._foreach_div_(u, denom)
        if self.adam_w_mode and decay != 0:
            torch._foreach_add_(u, weights, alpha=decay)
        return u


FusedLAMB = FusedLamb  # the name SMP's (and apex's) scripts import


class FusedNovoGrad(_Fused):
    """NovoGrad (Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments
    for Training of Deep Networks"; Jasper) with apex FusedNovoGrad's arguments and math. The
    second moment is one number per parameter tensor, a norm of its gradient (not its square):

        n      = ||g|| (norm_type 2) or max |g| (norm_type 0), of the whole tensor
        v      = n on the first step (init_zero: 0), then
        v     <- sqrt(beta2 v^2 + (1 - beta2) n^2)  (norm_type 2) or beta2 v + (1 - beta2) n  (0)
        d      = v / bc2 + eps                      bc2 = sqrt(1 - beta2^step) with bias_correction
        reg_inside_moment=False (apex's default):
          m   <- beta1 m + beta3 g;  w <- w - lr ((m / bc1) / d + weight_decay w)
        reg_inside_moment=True:
          m   <- beta1 m + beta3 (g / d + weight_decay w);  w <- w - lr m / bc1

    with bc1 = 1 - beta1^step (1 without bias_correction) and beta3 = 1 - beta1 with
    grad_averaging, else 1. ``step`` counts per group, as apex's does. No clipping (apex has none)."""

    _name = "FusedNovoGrad"

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, reg_inside_moment=False, grad_averaging=True, norm_type=2, init_zero=False,
                 set_grad_none=True):
        _check_common("FusedNovoGrad", lr, betas, eps, weight_decay, amsgrad)
        if norm_type not in (0, 2) or isinstance(norm_type, bool):
            raise ValueError(f"smp.optimizers.FusedNovoGrad: norm_type={norm_type!r}; allowed: 2 (L2 norm) or 0 "
                             "(infinity norm)")
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, grad_averaging=grad_averaging, norm_type=norm_type,
                        init_zero=init_zero)
        super().__init__(params, defaults)
        self.reg_inside_moment = bool(reg_inside_moment)
        self.set_grad_none = bool(set_grad_none)

    def _step(self, where):
        for group, params, grads, weights in self._work():
            group["step"] = group.get("step", 0) + 1
            if params:
                self._step_group(where, group, params, grads, weights)
                self._write_back(params, weights)

    def _step_group(self, where, group, params, grads, weights):
        beta1, beta2 = group["betas"]
        step, decay, lr = group["step"], group["weight_decay"], group["lr"]
        bc1, bc2 = (1 - beta1 ** step, math.sqrt(1 - beta2 ** step)) if group["bias_correction"] else (1.0, 1.0)
        beta3 = 1 - beta1 if group["grad_averaging"] else 1.0
        l2 = group["norm_type"] == 2
        norms = where.whole_sq(params, grads).sqrt() if l2 else where.whole_max(params, grads)
        old = []
        for p, n in zip(params, norms):
            state = self.state[p]
            if "exp_avg_sq" not in state:  # apex: the first step's norm (its blend is then a no-op), or 0
                state["exp_avg_sq"] = torch.zeros_like(n) if group["init_zero"] else n.clone()
            old.append(state["exp_avg_sq"].to(norms.dtype))
        v = torch.stack(old)
        v = (beta2 * v * v + (1 - beta2) * norms * norms).sqrt() if l2 else beta2 * v + (1 - beta2) * norms
        for p, value in zip(params, v.unbind(0)):
            self.state[p]["exp_avg_sq"] = value.clone()
        denom = (v / bc2 + group["eps"]).tolist()
        m = [self._moment(p, "exp_avg") for p in params]
        torch._foreach_mul_(m, beta1)
        if self.reg_inside_moment:
            g = torch._foreach_div(grads, denom)
            if decay != 0:
                torch._foreach_add_(g, weights, alpha=decay)
            torch._foreach_add_(m, g, alpha=beta3)
            torch._foreach_add_(weights, m, alpha=-lr / bc1)
            return
        torch._foreach_add_(m, grads, alpha=beta3)
        u = torch._foreach_div(m, [bc1 * d for d in denom])
        if decay != 0:
            torch._foreach_add_(u, weights, alpha=decay)
        torch._foreach_add_(weights, u, alpha=-lr)

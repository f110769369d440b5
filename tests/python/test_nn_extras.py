"""smp.nn.FlashAttentionLayer and smp.optimizers (FusedLamb / FusedLAMB, FusedNovoGrad).

In this process (no smp.init):
- FlashAttentionLayer against attention written out here (softmax(q k^T scale + mask + ALiBi) v
  with explicit matmuls, float64): causal or not, additive and bool masks, every scale option,
  scale_attn_by_layer_idx, ALiBi with 4, 6 and 8 heads (BLOOM's slopes written out as numbers),
  and with a rank's heads of a tp=2 group; dropout off in eval (and on in training); gradients
  of qkv; bad input.
- FusedLamb and FusedNovoGrad against the published algorithms written here as plain per-tensor
  loops in float64 (apex's kernels' order of operations), 5 steps over a few tensors, for every
  option that changes the math; apex's argument checks and zero_grad.

Under mpirun (extras_worker.py): an MLP with a DistributedLinear and an LM
(DistributedTransformerLMHead, tied head, a vocabulary padded under tp) trained with FusedLamb
(clipping active) and FusedNovoGrad through smp.DistributedOptimizer under tp2, pp2 and
tp2 x pp2, against the same model and optimizer in one process: parameters to 1e-5 relative.
"""

import copy
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import smp.torch as smp
from conftest import ROOT, mpirun
from smp.torch.nn import tp_ops

# --- FlashAttentionLayer ----------------------------------------------------------------------

SLOPES = {  # BLOOM's build_alibi_tensor, written out: 2^(-8k/n); 6 heads: 4's, then 8's odd ones
    4: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8],
    6: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3],
    8: [2 ** -k for k in range(1, 9)],
}


def reference(qkv, mask=None, causal=False, scale=None, slopes=None):
    """Attention written out in float64: (B, S, 3, H, D) -> (B, H, S, D)."""
    x = qkv.double()
    b, s, _, h, d = x.shape
    q, k, v = (x[:, :, i].permute(0, 2, 1, 3) for i in range(3))  # (B, H, S, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1 / math.sqrt(d) if scale is None else scale)
    if slopes is not None:  # BLOOM's form: slope_h * key position
        scores = scores + torch.tensor(slopes, dtype=torch.float64).view(h, 1, 1) * torch.arange(s).double()
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.double()
    if causal:
        scores = scores.masked_fill(torch.ones(s, s).triu(1).bool(), float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


def masks(b, h, s):
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(b, 1, s, s, generator=g) > 0.3
    keep[..., 0] = True  # every row keeps a key (the first: also under a causal mask)
    return {
        "none": None,
        "additive per sample": (torch.rand(b, 1, 1, s, generator=g) > 0.7).double() * -1e4,
        "additive (S, S)": torch.randn(s, s, generator=g),
        "additive per head": torch.randn(b, h, s, s, generator=g),
        "bool": keep,
        "bool (S, S)": torch.ones(s, s, dtype=torch.bool).tril(),
    }


def qkv_of(b=2, s=7, h=4, d=8, seed=0):
    return torch.randn(b, s, 3, h, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["none", "additive per sample", "additive (S, S)", "additive per head", "bool",
                                  "bool (S, S)"])
def test_flash_attention_masks(causal, kind):
    qkv = qkv_of()
    mask = masks(2, 4, 7)[kind]
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0)
    got = layer(qkv, mask, causal=causal)
    assert got.shape == (2, 4, 7, 8)
    torch.testing.assert_close(got, reference(qkv, mask, causal), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs,scale", [
    ({}, 1 / math.sqrt(8)),
    ({"attention_head_size": 16}, 1 / 4),
    ({"scale_attention_scores": False}, 1.0),
    ({"scale": 0.3}, 0.3),
    ({"scale": 0.3, "scale_attention_scores": False}, 0.3),
    ({"scale_attn_by_layer_idx": True, "layer_idx": 2}, 1 / math.sqrt(8) / 3),
    ({"scale_attn_by_layer_idx": True, "layer_idx": 0, "scale": 0.5}, 0.5),
    ({"scale_attn_by_layer_idx": True, "layer_idx": 3, "scale_attention_scores": False}, 1 / 4),
    ({"triton_flash_attention": True}, 1 / math.sqrt(8)),
])
def test_flash_attention_scale(kwargs, scale):
    qkv = qkv_of()
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, **kwargs)
    assert layer.softmax_scale(8) == pytest.approx(scale, rel=1e-15)
    torch.testing.assert_close(layer(qkv, causal=True), reference(qkv, causal=True, scale=scale), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("heads", [4, 6, 8])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["none", "additive per sample", "bool"])
def test_flash_attention_alibi(heads, causal, kind):
    assert smp.nn.flash_attention.alibi_slopes(heads) == SLOPES[heads]
    qkv = qkv_of(h=heads, s=9)
    mask = masks(2, heads, 9)[kind]
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True)
    torch.testing.assert_close(layer(qkv, mask, causal=causal),
                               reference(qkv, mask, causal, slopes=SLOPES[heads]), rtol=1e-10, atol=1e-12)
    if heads > 1:  # without ALiBi the output differs (the bias is not a no-op)
        assert not torch.allclose(layer(qkv, mask, causal=causal), reference(qkv, mask, causal), atol=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
def test_flash_attention_alibi_takes_the_global_heads_slopes_under_tp(monkeypatch, rank):
    """A rank of a tp=2 group holds 3 of 6 heads: its slopes are those of global heads 3r..3r+2."""
    monkeypatch.setattr(tp_ops, "tp_size", lambda: 2)
    monkeypatch.setattr(tp_ops, "tp_rank", lambda: rank)
    qkv = qkv_of(h=6, s=9)
    mine = qkv[:, :, :, 3 * rank:3 * rank + 3]
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True)
    got = layer(mine, causal=True)
    want = reference(qkv, causal=True, slopes=SLOPES[6])[:, 3 * rank:3 * rank + 3]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alibi,kind,causal", [(False, "none", True), (False, "additive per sample", False),
                                               (True, "bool", True), (False, "bool", False)])
def test_flash_attention_gradients(alibi, kind, causal):
    mask = masks(2, 4, 7)[kind]
    w = torch.linspace(-1, 1, 2 * 4 * 7 * 8, dtype=torch.float64).view(2, 4, 7, 8)
    qkv = qkv_of().requires_grad_(True)
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=alibi)
    (layer(qkv, mask, causal=causal) * w).sum().backward()
    leaf = qkv_of().requires_grad_(True)
    (reference(leaf, mask, causal, slopes=SLOPES[4] if alibi else None) * w).sum().backward()
    torch.testing.assert_close(qkv.grad, leaf.grad, rtol=1e-9, atol=1e-11)


def test_flash_attention_dropout_in_training_only():
    qkv = qkv_of()
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.5)
    torch.testing.assert_close(layer.eval()(qkv), reference(qkv), rtol=1e-10, atol=1e-12)
    torch.manual_seed(0)
    train = layer.train()(qkv)
    assert not torch.allclose(train, reference(qkv), atol=1e-3)
    assert torch.allclose(smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0).train()(qkv), reference(qkv))


def test_flash_attention_float32():
    qkv = qkv_of().float()
    got = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True)(qkv, masks(2, 4, 7)["bool"], True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(qkv, masks(2, 4, 7)["bool"], True, slopes=SLOPES[4]),
                               rtol=1e-5, atol=1e-5)


def test_flash_attention_exports():
    """torch.export (how DistributedModel captures a model) traces the layer, ALiBi and masks
    included, into a graph equal to the module, without tensor attributes set during the trace."""
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True).eval()
    qkv, keep = qkv_of(), masks(2, 4, 7)["bool"]

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, qkv, keep):
            return self.layer(qkv, keep, causal=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep = torch.export.export(Wrap(), (qkv, keep), strict=False)
    torch.testing.assert_close(ep.module()(qkv, keep), layer(qkv, keep, causal=True), rtol=0, atol=0)


@pytest.mark.parametrize("call,error,words", [
    (lambda L: L(torch.randn(2, 7, 3, 4)), ValueError, ["qkv", "(2, 7, 3, 4)", "(B, S, 3, H, D)"]),
    (lambda L: L(torch.randn(2, 7, 4, 4, 8)), ValueError, ["qkv", "(2, 7, 4, 4, 8)", "dim 2 of size 3"]),
    (lambda L: L(torch.ones(2, 7, 3, 4, 8, dtype=torch.long)), ValueError, ["qkv", "torch.int64", "floating"]),
    (lambda L: L([1, 2]), TypeError, ["qkv", "list"]),
    (lambda L: L(qkv_of(), torch.zeros(2, 4, 7, 6)), ValueError, ["attn_mask", "(2, 4, 7, 6)", "(2, 4, 7, 7)"]),
    (lambda L: L(qkv_of(), torch.zeros(3, 1, 7, 7)), ValueError, ["attn_mask", "(3, 1, 7, 7)", "broadcastable"]),
    (lambda L: L(qkv_of(), torch.zeros(1, 2, 4, 7, 7)), ValueError, ["attn_mask", "(1, 2, 4, 7, 7)"]),
    (lambda L: L(qkv_of(), torch.zeros(7, 7, dtype=torch.long)), ValueError, ["attn_mask", "torch.int64", "bool"]),
    (lambda L: L(qkv_of(), causal=1), TypeError, ["causal=1", "True or False"]),
])
def test_flash_attention_bad_input(call, error, words):
    with pytest.raises(error) as e:
        call(smp.nn.FlashAttentionLayer())
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("kwargs,words", [
    ({"scale_attn_by_layer_idx": True}, ["layer_idx=None", "scale_attn_by_layer_idx", "int >= 0"]),
    ({"scale_attn_by_layer_idx": True, "layer_idx": -1}, ["layer_idx=-1"]),
    ({"attention_dropout_prob": 1.5}, ["attention_dropout_prob=1.5", "[0, 1)"]),
    ({"scale": -1.0}, ["scale=-1.0", "> 0"]),
    ({"attention_head_size": 0}, ["attention_head_size=0", "int >= 1"]),
])
def test_flash_attention_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as e:
        smp.nn.FlashAttentionLayer(**kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# --- the optimizers: references written out ---------------------------------------------------

SHAPES = [(5, 3), (3,), (2, 2, 2), (1,)]
STEPS = 5


def grads_of(step, scale):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, dtype=torch.float64, generator=g) * scale for s in SHAPES]


def initial():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(s, dtype=torch.float64, generator=g) for s in SHAPES]


def ref_lamb(groups, steps, grad_scale, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, adam_w_mode=True,
             grad_averaging=True, max_grad_norm=1.0, use_nvlamb=False):
    """LAMB as apex computes it, tensor by tensor. groups: [(indices, lr, weight_decay)]."""
    w = initial()
    m = [torch.zeros_like(t) for t in w]
    v = [torch.zeros_like(t) for t in w]
    b1, b2 = betas
    for step in range(1, steps + 1):
        g = grads_of(step, grad_scale)
        norm = math.sqrt(sum(float((t * t).sum()) for t in g))
        clip = norm / max_grad_norm if max_grad_norm and norm > max_grad_norm else 1.0
        for idx, lr, wd in groups:
            c1 = 1 - b1 ** step if bias_correction else 1.0
            c2 = 1 - b2 ** step if bias_correction else 1.0
            b3 = 1 - b1 if grad_averaging else 1.0
            for i in idx:
                gi = g[i] / clip
                if not adam_w_mode:
                    gi = gi + wd * w[i]
                m[i] = b1 * m[i] + b3 * gi
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
                u = (m[i] / c1) / (torch.sqrt(v[i] / c2) + eps)
                if adam_w_mode:
                    u = u + wd * w[i]
                wn, un = float(w[i].norm()), float(u.norm())
                ratio = wn / un if (use_nvlamb or wd != 0) and wn != 0 and un != 0 else 1.0
                w[i] = w[i] - lr * ratio * u
    return w


def ref_novograd(groups, steps, grad_scale, bias_correction=True, betas=(0.95, 0.98), eps=1e-8,
                 reg_inside_moment=False, grad_averaging=True, norm_type=2, init_zero=False):
    """NovoGrad as apex computes it, tensor by tensor. groups: [(indices, lr, weight_decay)]."""
    w = initial()
    m = [torch.zeros_like(t) for t in w]
    v = [None] * len(w)
    b1, b2 = betas
    for step in range(1, steps + 1):
        g = grads_of(step, grad_scale)
        for idx, lr, wd in groups:
            c1 = 1 - b1 ** step if bias_correction else 1.0
            c2 = math.sqrt(1 - b2 ** step) if bias_correction else 1.0
            b3 = 1 - b1 if grad_averaging else 1.0
            for i in idx:
                n = float(g[i].norm()) if norm_type == 2 else float(g[i].abs().max())
                if v[i] is None:
                    v[i] = 0.0 if init_zero else n
                v[i] = math.sqrt(b2 * v[i] ** 2 + (1 - b2) * n ** 2) if norm_type == 2 else b2 * v[i] + (1 - b2) * n
                d = v[i] / c2 + eps
                if reg_inside_moment:
                    m[i] = b1 * m[i] + b3 * (g[i] / d + wd * w[i])
                    w[i] = w[i] - lr * m[i] / c1
                else:
                    m[i] = b1 * m[i] + b3 * g[i]
                    w[i] = w[i] - lr * ((m[i] / c1) / d + wd * w[i])
    return w


def run_ours(cls, groups, steps, grad_scale, dtype=torch.float64, **kwargs):
    params = [torch.nn.Parameter(t.to(dtype)) for t in initial()]
    opt = cls([{"params": [params[i] for i in idx], "lr": lr, "weight_decay": wd} for idx, lr, wd in groups],
              **kwargs)
    for step in range(1, steps + 1):
        for p, g in zip(params, grads_of(step, grad_scale)):
            p.grad = g.to(dtype)
        opt.step()
        opt.zero_grad()
        assert all(p.grad is None for p in params)  # set_grad_none
    return [p.detach().double() for p in params], opt


ONE_GROUP = [([0, 1, 2, 3], 0.05, 0.01)]
TWO_GROUPS = [([0, 2], 0.05, 0.01), ([1, 3], 0.02, 0.0)]

LAMB_CASES = {  # name -> (groups, gradient scale, options)
    "defaults, clipping active": (ONE_GROUP, 3.0, {}),
    "no clipping (norm below max)": (ONE_GROUP, 0.05, {}),
    "max_grad_norm None": (ONE_GROUP, 3.0, {"max_grad_norm": None}),
    "max_grad_norm 2": (ONE_GROUP, 3.0, {"max_grad_norm": 2.0}),
    "L2 mode (adam_w_mode False)": (ONE_GROUP, 3.0, {"adam_w_mode": False}),
    "no grad_averaging": (ONE_GROUP, 3.0, {"grad_averaging": False}),
    "no bias_correction": (ONE_GROUP, 3.0, {"bias_correction": False}),
    "betas, eps": (ONE_GROUP, 3.0, {"betas": (0.8, 0.9), "eps": 1e-3}),
    "two groups, one without decay (no trust ratio)": (TWO_GROUPS, 3.0, {}),
    "two groups, use_nvlamb": (TWO_GROUPS, 3.0, {"use_nvlamb": True}),
}


@pytest.mark.parametrize("case", sorted(LAMB_CASES))
def test_fused_lamb_against_the_algorithm(case):
    groups, scale, options = LAMB_CASES[case]
    got, opt = run_ours(smp.optimizers.FusedLamb, groups, STEPS, scale, **options)
    want = ref_lamb(groups, STEPS, scale, **options)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=f"{case}: parameter {i}")
    assert all(g["step"] == STEPS for g in opt.param_groups)
    start = initial()
    assert all(not torch.allclose(a, b) for a, b in zip(got, start))  # every parameter moved


def test_fused_lamb_options_change_the_result():
    """Each option of the table above is not a no-op for these gradients (so its case tests it)."""
    base = ref_lamb(ONE_GROUP, STEPS, 3.0)
    for case, (groups, scale, options) in LAMB_CASES.items():
        if case == "defaults, clipping active":
            continue
        other = ref_lamb(groups, STEPS, scale, **options)
        assert any(not torch.allclose(a, b, rtol=1e-9, atol=0) for a, b in zip(base, other)), case


NOVOGRAD_CASES = {
    "defaults": (ONE_GROUP, 1.0, {}),
    "reg_inside_moment": (ONE_GROUP, 1.0, {"reg_inside_moment": True}),
    "no grad_averaging": (ONE_GROUP, 1.0, {"grad_averaging": False}),
    "no bias_correction": (ONE_GROUP, 1.0, {"bias_correction": False}),
    "infinity norm": (ONE_GROUP, 1.0, {"norm_type": 0}),
    "init_zero": (ONE_GROUP, 1.0, {"init_zero": True}),
    "init_zero, infinity norm, reg_inside_moment": (ONE_GROUP, 1.0, {"init_zero": True, "norm_type": 0,
                                                                     "reg_inside_moment": True}),
    "two groups": (TWO_GROUPS, 1.0, {}),
    "two groups, reg_inside_moment": (TWO_GROUPS, 1.0, {"reg_inside_moment": True}),
}


@pytest.mark.parametrize("case", sorted(NOVOGRAD_CASES))
def test_fused_novograd_against_the_algorithm(case):
    groups, scale, options = NOVOGRAD_CASES[case]
    options = {"betas": (0.95, 0.98), **options}
    got, _ = run_ours(smp.optimizers.FusedNovoGrad, groups, STEPS, scale, **options)
    want = ref_novograd(groups, STEPS, scale, **options)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=f"{case}: parameter {i}")


def test_fused_novograd_options_change_the_result():
    base = ref_novograd(ONE_GROUP, STEPS, 1.0)
    for case, (groups, scale, options) in NOVOGRAD_CASES.items():
        if case != "defaults":
            other = ref_novograd(groups, STEPS, scale, **options)
            assert any(not torch.allclose(a, b, rtol=1e-9, atol=0) for a, b in zip(base, other)), case


@pytest.mark.parametrize("cls,ref,options", [
    (smp.optimizers.FusedLamb, ref_lamb, {}),
    (smp.optimizers.FusedNovoGrad, ref_novograd, {"betas": (0.95, 0.98)}),
])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_lower_precision_parameters(cls, ref, options, dtype, tol):
    """fp32 computes in fp32; bf16 parameters step in fp32 with fp32 moments, then round."""
    got, opt = run_ours(cls, ONE_GROUP, STEPS, 3.0, dtype=dtype, **options)
    want = ref(ONE_GROUP, STEPS, 3.0, **options)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert all(s["exp_avg"].dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
               for s in opt.state.values())


def test_state_dict_round_trip():
    """A fresh optimizer loaded from the state dict after 3 steps continues as the first does."""
    for cls, options in ((smp.optimizers.FusedLamb, {}), (smp.optimizers.FusedNovoGrad, {"betas": (0.95, 0.98)})):
        params = [torch.nn.Parameter(t.clone()) for t in initial()]
        opt = cls(params, lr=0.05, **options)
        for step in range(1, 4):
            for p, g in zip(params, grads_of(step, 3.0)):
                p.grad = g
            opt.step()
        other_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        other = cls(other_params, lr=0.05, **options)
        other.load_state_dict(copy.deepcopy(opt.state_dict()))  # (torch's shares the tensors)
        for ps, o in ((params, opt), (other_params, other)):
            for p, g in zip(ps, grads_of(4, 3.0)):
                p.grad = g
            o.step()
        for a, b in zip(params, other_params):
            assert torch.equal(a, b), cls.__name__


COMPAT = """
import smp.torch as real
from smdistributed.modelparallel.torch.optimizers import FusedLAMB, FusedNovoGrad
from smdistributed.modelparallel.torch.nn import FlashAttentionLayer
assert FusedLAMB is real.optimizers.FusedLamb and FusedNovoGrad is real.optimizers.FusedNovoGrad
assert FlashAttentionLayer is real.nn.FlashAttentionLayer
print("compat ok")
"""


def test_names_and_compat():
    """SMP's import lines work through the compatibility package (python/compat)."""
    assert smp.optimizers.FusedLAMB is smp.optimizers.FusedLamb
    assert issubclass(smp.optimizers.FusedNovoGrad, torch.optim.Optimizer)
    path = os.pathsep.join(p for p in (os.path.join(ROOT, "python", "compat"), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", COMPAT], env=dict(os.environ, PYTHONPATH=path), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    assert r.returncode == 0 and "compat ok" in r.stdout, r.stdout[-3000:]


@pytest.mark.parametrize("cls,kwargs,error,words", [
    (smp.optimizers.FusedLamb, {"amsgrad": True}, RuntimeError, ["amsgrad=True", "False"]),
    (smp.optimizers.FusedNovoGrad, {"amsgrad": True}, RuntimeError, ["amsgrad=True", "False"]),
    (smp.optimizers.FusedLamb, {"lr": -1.0}, ValueError, ["lr=-1.0", ">= 0"]),
    (smp.optimizers.FusedLamb, {"betas": (0.9, 1.0)}, ValueError, ["betas[1]=1.0", "< 1"]),
    (smp.optimizers.FusedLamb, {"betas": 0.9}, ValueError, ["betas=0.9", "pair"]),
    (smp.optimizers.FusedLamb, {"max_grad_norm": -1}, ValueError, ["max_grad_norm=-1"]),
    (smp.optimizers.FusedNovoGrad, {"norm_type": 1}, ValueError, ["norm_type=1", "2 (L2 norm) or 0"]),
    (smp.optimizers.FusedNovoGrad, {"weight_decay": -0.1}, ValueError, ["weight_decay=-0.1"]),
])
def test_optimizer_bad_arguments(cls, kwargs, error, words):
    with pytest.raises(error) as e:
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("cls", [smp.optimizers.FusedLamb, smp.optimizers.FusedNovoGrad])
def test_a_step_without_gradients_counts_and_changes_nothing(cls):
    """(A pipeline stage without gradients still takes part in LAMB's global norm.)"""
    p = torch.nn.Parameter(torch.ones(2))
    opt = cls([p])
    opt.step()
    assert opt.param_groups[0]["step"] == 1 and torch.equal(p, torch.ones(2)) and not opt.state


def test_zero_grad_keeps_gradients_when_asked():
    p = torch.nn.Parameter(torch.ones(2))
    opt = smp.optimizers.FusedLamb([p], set_grad_none=False)
    p.grad = torch.ones(2)
    opt.zero_grad()
    assert torch.equal(p.grad, torch.zeros(2))
    p.grad = torch.ones(2)
    opt.zero_grad(set_to_none=True)
    assert p.grad is None


# --- under smp: the whole model's norms (extras_worker.py) --------------------------------------

LAYOUTS = {"tp2": 2, "pp2": 2, "tp2pp2": 4}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_against_one_process_under_smp(layout):
    r = mpirun(LAYOUTS[layout], "extras_worker.py", "--layout", layout, env={"PYTHONWARNINGS": "ignore::UserWarning"})
    assert r.returncode == 0, r.stdout[-6000:]
    for case in ("mlp lamb", "mlp novograd", "lmhead lamb"):
        assert f"rank 0 {case} {layout}: ok" in r.stdout, r.stdout[-3000:]

"""Runs under mpirun: SMP's two batch flows under tensor parallelism, against one process.

  --flow split      config prescaled_batch false (SMP's default): the ranks of a TP group hold
                    DIFFERENT samples (rank slices of the global batch by dp_rank / dp_size);
                    every distributed module gathers the group's batch and splits it back
                    (tp_ops.gather_batch / split_batch, with their x tp and / tp backward scales).
  --flow prescaled  prescaled_batch true: the ranks of a TP group share a slice (by rdp_rank).

  --check units   (split flow; or --units with --check train) each smp.nn module called directly on this rank's own samples:
                  its output equals the tp=1 module's on the whole group batch, sliced; the
                  input's gradient equals the reference's slice; every parameter's gradient
                  (gathered whole) equals 1/tp of the reference's gradient of the sum of the
                  group's losses (the convention: the mean over the TP ranks' losses); the
                  exported graph equals the module.
  --check train   3 steps of smp.DistributedModel + DistributedOptimizer on this rank's part of a
                  global batch, against the same model (tp=1 module from the same seed, or the
                  unwrapped transformers model) trained in this process on the whole global
                  batch with a mean loss: per-step losses, and after the last step every
                  parameter (gathered whole) and its update (parameter minus its initial value).
                  Models: "mlp" (nn.Linear, smp.nn.DistributedLinear, nn.LayerNorm, nn.Linear)
                  under SGD and under Adam, "lmhead" (smp.nn.DistributedTransformerLMHead) under
                  SGD, "gpt2" and "llama" (transformers' GPT2LMHeadModel, LlamaForCausalLM
                  through smp.tensor_parallelism) under SGD. Plain SGD, no momentum, no
                  clipping: a gradient off by a constant factor moves every update by that
                  factor. "gpt2attn": GPT-2 with only its first block's attention marked
                  (smp.set_tensor_parallelism): that attention gathers the batch itself.

Exits non-zero on a mismatch; prints one line per case.
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import hf_families
import smp.torch as smp
from smp.torch.nn import tp_ops
from tp_worker import as_tp1, check_export, ref_attention, ref_layer, ref_output

LAYOUTS = {  # name -> config (the ranks: 2 for tp2, 4 for the others)
    "tp2": {"tensor_parallel_degree": 2},
    "tp4": {"tensor_parallel_degree": 4},
    "tp2dp2": {"tensor_parallel_degree": 2},
    "tp2pp2": {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2},
}
VOCAB, HIDDEN, HEADS, HEAD_SIZE, INTER, SEQ = 64, 32, 4, 8, 64, 16
GLOBAL = 8  # the global batch of every step (2 microbatches on each of up to 4 data-parallel ranks)
MICROBATCHES = 2
STEPS = 3


class Checker:
    """Relative differences (max |got - want| / max |want|), the worst kept per kind."""

    def __init__(self):
        self.failures, self.worst = [], {}

    def close(self, kind, what, got, want, rtol, floor=1e-6):
        got, want = got.detach().double(), want.detach().double()
        if got.shape != want.shape:
            self.failures.append(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
            return
        err = ((got - want).abs().max() / want.abs().max().clamp_min(floor)).item() if want.numel() else 0.0
        self.worst[kind] = max(self.worst.get(kind, 0.0), err)
        if not err <= rtol:
            self.failures.append(f"{what}: relative difference {err:.3g} > {rtol}")


def whole(p, t=None):
    """A parameter (or t, its gradient) of this rank, whole over the TP group, in the module's shape."""
    t = (p if t is None else t).detach()
    spec = getattr(p, "_smp_tp_shard", None)
    if spec is None or smp.tp_size() == 1:
        return t.clone()
    dim, size = spec
    parts = [torch.empty_like(t) for _ in range(smp.tp_size())]
    dist.all_gather(parts, t.contiguous(), group=smp.get_tp_process_group())
    full = torch.cat(parts, dim).narrow(dim, 0, size)
    return full.reshape(getattr(p, "_smp_hf_shape", full.shape))


# --- the units: each module called directly (split flow) -------------------------------------


def check_units(c):
    """Module by module, this rank's own samples in, against the tp=1 module on the group's batch,
    in float64 (the modules draw their weights in the default dtype)."""
    torch.set_default_dtype(torch.float64)
    try:
        _check_units(c)
    finally:
        torch.set_default_dtype(torch.float32)


def _check_units(c):
    tp, r = smp.tp_size(), smp.tp_rank()
    per = 2
    mine = slice(r * per, (r + 1) * per)
    g = torch.Generator().manual_seed(100)
    x = torch.randn(tp * per, SEQ, HIDDEN, generator=g)  # the TP group's batch: rank r holds rows `mine`
    ids = torch.randint(0, VOCAB, (tp * per, SEQ), generator=g)
    keep = torch.ones(tp * per, SEQ)
    keep[1::2, -3:] = 0
    keep[2::4, -5:] = 0
    mask = (1.0 - keep).view(tp * per, 1, 1, SEQ) * -10000.0  # per sample
    shared = torch.zeros(1, 1, 1, SEQ)
    shared[..., -2:] = -10000.0  # dim 0 of 1: broadcast over any batch, never gathered
    layer_args = dict(num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN,
                      intermediate_size=INTER, attention_dropout_prob=0.0, hidden_dropout_prob=0.0)

    def unit(name, factory, run, args, grad_input=True, pack=lambda *t: t, tol=1e-10):
        """run(module, *args) -> a tensor; args hold the group's batch (sliced to this rank's rows
        for the module under test, whole for the reference). The loss is a weighted sum of the
        output, summed over the group for the reference (one process on the group's batch).
        pack(*args): the module's own call arguments (for torch.export)."""
        torch.manual_seed(1)
        module = factory()
        with as_tp1():
            torch.manual_seed(1)
            ref = factory()

        def own(t):
            return t[mine] if isinstance(t, torch.Tensor) and t.shape[0] == tp * per else t
        leaf = x[mine].clone().requires_grad_(True)
        local = [leaf if a is x else own(a) for a in args]
        out = run(module, *local)
        out.backward(weights(out.shape, rows=mine, whole_rows=tp * per) if out.dim() else torch.ones(()))
        ref_leaf = x.clone().requires_grad_(True)
        with as_tp1():
            if out.dim():
                ref_out = run(ref, *[ref_leaf if a is x else a for a in args])
                ref_out.backward(weights(ref_out.shape))
                c.close("unit forward", f"{name}: output", out, ref_out[mine], tol)
            else:  # a loss over this rank's samples: the reference sums every rank's
                outs = [run(ref, *[ref_leaf[s * per:(s + 1) * per] if a is x else
                                   (a[s * per:(s + 1) * per] if isinstance(a, torch.Tensor) and a.shape[0] == tp * per
                                    else a) for a in args]) for s in range(tp)]
                sum(outs).backward()
                c.close("unit forward", f"{name}: loss", out, outs[r], tol)
        if grad_input:
            c.close("unit input gradient", f"{name}: input gradient (this rank's samples)", leaf.grad,
                    ref_leaf.grad[mine], tol)
        refs = dict(ref.named_parameters())
        for n, p in module.named_parameters():
            got = whole(p, p.grad if p.grad is not None else torch.zeros_like(p)) * tp
            want = refs[n].grad if refs[n].grad is not None else torch.zeros_like(refs[n])
            c.close("unit parameter gradient", f"{name}: gradient of {n} (x tp)", got, want, tol)
        for p in module.parameters():
            p.grad = None
        check_export(_ExportChecker(c, name), name, module, pack(*local))

    unit("DistributedLinear", lambda: smp.nn.DistributedLinear(HIDDEN, INTER), lambda m, t: m(t), [x])
    unit("DistributedEmbedding", lambda: smp.nn.DistributedEmbedding(VOCAB, HIDDEN, padding_idx=3),
         lambda m, i: m(i), [ids], grad_input=False)
    for pre, post in ((False, True), (True, False)):
        unit(f"DistributedAttentionLayer pre={pre} post={post}", lambda: smp.nn.DistributedAttentionLayer(
            num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN, attention_dropout_prob=0.0,
            hidden_dropout_prob=0.0, causal_mask_size=SEQ, pre_layernorm=pre, post_layernorm=post),
            lambda m, t, k: m((t, k)), [x, mask], pack=lambda t, k: ((t, k),))
        unit(f"DistributedTransformerOutputLayer pre={pre} post={post}",
             lambda: smp.nn.DistributedTransformerOutputLayer(hidden_size=HIDDEN, intermediate_size=INTER,
                                                              hidden_dropout_prob=0.0, pre_layernorm=pre,
                                                              post_layernorm=post),
             lambda m, t: m(t), [x])
    for name, k in (("per-sample mask", mask), ("broadcast mask", shared)):
        unit(f"DistributedTransformerLayer {name}", lambda: smp.nn.DistributedTransformerLayer(**layer_args),
             lambda m, t, k: m((t, k))[0], [x, k], pack=lambda t, k: ((t, k),))
    unit("DistributedTransformer", lambda: smp.nn.DistributedTransformer(
        num_layers=2, causal_mask_size=SEQ, pre_layernorm=True, post_layernorm=True, **layer_args),
        lambda m, t, k: m((t, k))[0], [x, mask], pack=lambda t, k: ((t, k),))
    lm = lambda: smp.nn.DistributedTransformerLMHead(  # noqa: E731
        num_layers=2, vocab_size=VOCAB - 1, num_positions=SEQ, num_token_types=2, causal_mask_size=SEQ,
        pre_layernorm=True, post_layernorm=True, use_normal_initialization=True, **layer_args)
    ids_v = ids % (VOCAB - 1)
    labels = torch.roll(ids_v, -1, 1)
    labels[:, -1] = -100
    labels[0, :3] = -100  # a different count of labelled tokens on rank 0: the loss is each rank's own mean
    types = ids_v % 2
    unit("DistributedTransformerLMHead: loss", lm, lambda m, i, k, t, lab: m((i, k, t, None, lab))[0],
         [ids_v, keep, types, labels], grad_input=False, pack=lambda i, k, t, lab: ((i, k, t, None, lab),),
         tol=1e-5)  # (the vocab-parallel cross-entropy computes in float32)
    unit("DistributedTransformerLMHead: logits (this rank's samples, whole)", lm, lambda m, i, k: m((i, k))[0],
         [ids_v, keep], grad_input=False, pack=lambda i, k: ((i, k),))
    unit("DistributedTransformerLMHead: no head", lambda: smp.nn.DistributedTransformerLMHead(
        num_layers=1, vocab_size=VOCAB, num_positions=SEQ, add_lm_head=False, **layer_args),
        lambda m, i: m((i,))[0], [ids_v], grad_input=False, pack=lambda i: ((i,),))
    # _skip_scatter_and_merge: the input is the group's batch and the output stays so
    torch.manual_seed(1)
    m = smp.nn.DistributedTransformerLayer(_skip_scatter_and_merge=True, **layer_args)
    with as_tp1():
        torch.manual_seed(1)
        ref = smp.nn.DistributedTransformerLayer(**layer_args)
        want = ref((x, mask))[0]
    c.close("unit forward", "DistributedTransformerLayer _skip_scatter_and_merge: the group's batch in and out",
            m((x, mask))[0], want, 1e-10)
    # an embedding's own columns (_skip_allgather) of this rank's samples alone would be of no use:
    # refused unless the batch is the group's (_skip_scatter_and_merge)
    try:
        smp.nn.DistributedEmbedding(VOCAB, HIDDEN, _skip_allgather=True)
        c.failures.append("DistributedEmbedding(_skip_allgather=True) without _skip_scatter_and_merge: no ValueError")
    except ValueError as e:
        if "_skip_scatter_and_merge" not in str(e):
            c.failures.append(f"DistributedEmbedding _skip_allgather refusal: {e}")
    torch.manual_seed(2)
    full = torch.randn(VOCAB, HIDDEN)
    m = smp.nn.DistributedEmbedding(VOCAB, HIDDEN, _weight=full, _skip_allgather=True, _skip_scatter_and_merge=True)
    n = HIDDEN // tp
    c.close("unit forward", "DistributedEmbedding _skip_allgather + _skip_scatter_and_merge: this rank's columns of "
            "the group's batch", m(ids), F.embedding(ids, full)[..., r * n:(r + 1) * n], 1e-6)


def weights(shape, rows=None, whole_rows=None):
    """The loss weights of an output of `shape`: the same values for a row wherever it is computed."""
    n = shape[0] if whole_rows is None else whole_rows
    w = torch.linspace(0.5, 1.5, n * int(torch.tensor(shape[1:]).prod().item())).view(n, *shape[1:])
    return w if rows is None else w[rows]


class _ExportChecker:
    """tp_worker.check_export's checker interface over this worker's Checker."""

    def __init__(self, c, name):
        self.c, self.name = c, name

    def close(self, what, a, b, tol=1e-5):
        self.c.close("export", what, a, b, tol)


# --- training ---------------------------------------------------------------------------------


class MLP(nn.Module):
    """A DistributedLinear between non-distributed layers (they run data-parallel)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(HIDDEN, INTER)
        self.mid = smp.nn.DistributedLinear(INTER, INTER)
        self.ln = nn.LayerNorm(INTER)
        self.out = nn.Linear(INTER, 10)

    def forward(self, x):
        return self.out(self.ln(torch.tanh(self.mid(torch.tanh(self.inp(x))))))


class LMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = smp.nn.DistributedTransformerLMHead(
            num_layers=2, num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN,
            intermediate_size=INTER, attention_dropout_prob=0.0, hidden_dropout_prob=0.0, vocab_size=VOCAB - 1,
            num_positions=SEQ, causal_mask_size=SEQ, pre_layernorm=True, post_layernorm=True,
            use_normal_initialization=True)

    def forward(self, ids, keep, labels):
        return self.lm((ids, keep, None, None, labels))[0]


def global_batch(model, step):
    """The whole global batch of a step, a dict of tensors with the batch on dim 0."""
    g = torch.Generator().manual_seed(7000 + step)
    if model == "mlp":
        return {"x": torch.randn(GLOBAL, HIDDEN, generator=g), "y": torch.randint(0, 10, (GLOBAL,), generator=g)}
    if model == "gpt2attn":
        return hf_families.batch("gpt2", step, size=GLOBAL)
    if model == "lmhead":
        ids = torch.randint(0, VOCAB - 1, (GLOBAL, SEQ + 1), generator=g)
        keep = torch.ones(GLOBAL, SEQ)
        keep[1::2, -3:] = 0
        return {"ids": ids[:, :-1].contiguous(), "keep": keep, "labels": ids[:, 1:].contiguous()}
    return hf_families.batch(model, step, size=GLOBAL)


def loss_of(model, module, b):
    """The model's mean loss over the samples of b (the step's function and the reference share it)."""
    if model == "mlp":
        return F.cross_entropy(module(b["x"]), b["y"])
    if model == "lmhead":
        return module(b["ids"], b["keep"], b["labels"])
    return module(**b).loss


@smp.step
def train_step(model, kind, b):
    loss = loss_of(kind, model, b)
    model.backward(loss)
    return loss


def build(model):
    """(the module under smp, the reference), from the same seed."""
    if model == "gpt2attn":  # only the first block's attention marked: it gathers the batch itself
        torch.manual_seed(0)
        ref = hf_families.make("gpt2")
        torch.manual_seed(0)
        module = hf_families.make("gpt2")
        smp.set_tensor_parallelism(module.transformer.h[0].attn)
        return module, ref
    if model in hf_families.FAMILIES:
        torch.manual_seed(0)
        ref = hf_families.make(model)
        torch.manual_seed(0)
        with smp.tensor_parallelism():
            module = hf_families.make(model)
        return module, ref
    cls = MLP if model == "mlp" else LMHead
    torch.manual_seed(0)
    module = cls()
    with as_tp1():
        torch.manual_seed(0)
        ref = cls()
    return module, ref


def optimizer(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.2)
    return torch.optim.Adam(params, lr=3e-3)


def train(c, a, model, opt_name):
    """STEPS steps on this rank's part of the global batch against the reference on all of it."""
    split = a.flow == "split"
    rank, size = (smp.dp_rank(), smp.dp_size()) if split else (smp.rdp_rank(), smp.rdp_size())
    per = GLOBAL // size
    mine = slice(rank * per, (rank + 1) * per)
    module, ref = build(model)
    init = {n: p.detach().clone() for n, p in ref.named_parameters()}
    dist_model = smp.DistributedModel(module)
    if model in hf_families.FAMILIES and smp.tp_size() > 1:  # blocks gather the batch in the split flow only
        base = dist_model.get_module().base_model
        regions = [type(b).__name__.startswith("BatchRegion") for b in (base.h if hasattr(base, "h") else base.layers)]
        if regions != [split] * len(regions):
            c.failures.append(f"{model}: batch regions (sharded.batch_region) {regions}; expected all {split}")
    if model == "gpt2attn" and smp.tp_size() > 1:
        attn = dist_model.get_module().transformer.h[0].attn
        if type(attn).__name__.startswith("BatchRegion") != split or not hasattr(attn.c_attn.weight, "_smp_tp_shard"):
            c.failures.append(f"{model}: the marked attention is not sharded, or a batch region only in the split flow")
    opt = smp.DistributedOptimizer(optimizer(opt_name, dist_model.parameters()))
    ref_opt = optimizer(opt_name, ref.parameters())
    case = f"{model} {opt_name}"
    for step in range(STEPS):
        b = global_batch(model, step)
        loss = train_step(dist_model, model, {k: v[mine] for k, v in b.items()}).reduce_mean()
        dist.all_reduce(loss, group=smp.get_dp_process_group())  # this rank's samples' mean, over the replicas
        loss = loss / smp.dp_size()
        opt.step()
        opt.zero_grad()
        with as_tp1() if model in ("mlp", "lmhead") else _nothing():
            ref_loss = loss_of(model, ref, b)
            ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        c.close("loss", f"{case}: step {step} loss", loss, ref_loss, 1e-5)
    refs = dict(ref.named_parameters())
    held = 0
    for n, p in dist_model.local_named_parameters():
        held += 1
        got = whole(p)
        c.close("parameter", f"{case}: {n} after {STEPS} steps", got, refs[n], 1e-5)
        c.close("update", f"{case}: update of {n} over {STEPS} steps", got - init[n], refs[n].detach() - init[n],
                1e-3)
    if not held:
        c.failures.append(f"{case}: this rank holds no parameters")
    print(f"rank {smp.rank()} {case} {a.layout} {a.flow}: loss {loss.item():.6f} vs {ref_loss.item():.6f}, "
          f"{held} parameters", flush=True)
    smp.state.model, smp.state.optimizer = None, None  # the next case is another script's model


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CASES = {"mlp-sgd": ("mlp", "sgd"), "mlp-adam": ("mlp", "adam"), "lmhead-sgd": ("lmhead", "sgd"),
         "gpt2-sgd": ("gpt2", "sgd"), "llama-sgd": ("llama", "sgd"), "gpt2attn-sgd": ("gpt2attn", "sgd")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", choices=["units", "train"], required=True)
    p.add_argument("--units", action="store_true", help="with --check train: the unit checks first (one launch)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    p.add_argument("--flow", choices=["split", "prescaled"], required=True)
    p.add_argument("--cases", default=",".join(CASES))
    a = p.parse_args()
    torch.set_num_threads(1)
    smp.init({**LAYOUTS[a.layout], "microbatches": MICROBATCHES, "ddp": True, "prescaled_batch": a.flow == "prescaled"})
    c = Checker()
    if a.check == "units" or a.units:
        if a.flow != "split":
            p.error("the unit checks are the split flow's")
        check_units(c)
    if a.check == "train":
        for name in a.cases.split(","):
            train(c, a, *CASES[name])
    smp.barrier()
    for f in c.failures:
        print(f"rank {smp.rank()} FAIL {f}", flush=True)
    worst = ", ".join(f"{k} {v:.3g}" for k, v in sorted(c.worst.items()))
    print(f"rank {smp.rank()} {a.check} {a.layout} {a.flow}: {'ok' if not c.failures else 'FAILED'}; worst relative "
          f"differences: {worst}", flush=True)
    sys.exit(1 if c.failures else 0)


if __name__ == "__main__":
    main()

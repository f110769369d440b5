"""Runs under mpirun for test_nn_extras.py: smp.optimizers under smp, against one process.

  --layout tp2 | pp2 | tp2pp2   (2, 2 and 4 ranks; prescaled batch, so every rank of a TP group
                                 is fed the same samples)

Cases, each STEPS steps of smp.DistributedModel + smp.DistributedOptimizer(<optimizer>) on the
global batch, against the same module (the tp=1 module from the same seed) and the same
optimizer, not wrapped, trained in this process on the same batch with the same mean loss:

  mlp lamb       nn.Linear, smp.nn.DistributedLinear, LayerNorm, nn.Linear; FusedLamb with
                 max_grad_norm below the gradient norm (clipping active: the global norm must
                 be the whole model's, over TP shards and pipeline stages) and weight decay
                 (trust ratios: each shard's norm must be the whole parameter's)
  mlp novograd   the same model, FusedNovoGrad (per-tensor second moments: whole norms)
  lmhead lamb    smp.nn.DistributedTransformerLMHead (vocabulary 63: padded under tp2; the
                 head tied to the word embedding), FusedLamb with clipping active
  lmhead novograd-inf   the same LM, FusedNovoGrad with the infinity norm (maxima over TP)

The models are float64 (the engine trains them as they are), so rounding stays far below the
tolerance: each case checks the per-step losses and, after the last step, every parameter this
rank holds (gathered whole over TP) to 1e-5 relative (worst seen about 1e-7, from the
vocab-parallel cross-entropy, which computes in float32; the MLP's about 1e-15). Under tp > 1 the worker also checks
FlashAttentionLayer with ALiBi on this rank's heads against the tp=1 layer's output for them.
Prints "rank R <case> <layout>: ok" per case; exits non-zero on a mismatch.
"""

import argparse
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import smp.torch as smp
from tp_worker import as_tp1, whole

LAYOUTS = {
    "tp2": {"tensor_parallel_degree": 2},
    "pp2": {"pipeline_parallel_degree": 2},
    "tp2pp2": {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2},
}
VOCAB, HIDDEN, HEADS, HEAD_SIZE, INTER, SEQ = 63, 32, 4, 8, 64, 12
GLOBAL, STEPS = 8, 4


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(HIDDEN, INTER)
        self.mid = smp.nn.DistributedLinear(INTER, INTER)
        self.ln = nn.LayerNorm(INTER)
        self.out = nn.Linear(INTER, 10)

    def forward(self, x, y):
        return F.cross_entropy(self.out(self.ln(torch.tanh(self.mid(torch.tanh(self.inp(x)))))), y)


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = smp.nn.DistributedTransformerLMHead(
            num_layers=2, num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN,
            intermediate_size=INTER, attention_dropout_prob=0.0, hidden_dropout_prob=0.0, vocab_size=VOCAB,
            num_positions=SEQ, causal_mask_size=SEQ, pre_layernorm=True, post_layernorm=True,
            use_normal_initialization=True)

    def forward(self, ids, labels):
        return self.lm((ids, torch.ones_like(ids, dtype=torch.float32), None, None, labels))[0]


def batch(model, step):
    g = torch.Generator().manual_seed(500 + step)
    if model == "mlp":
        return (torch.randn(GLOBAL, HIDDEN, generator=g), torch.randint(0, 10, (GLOBAL,), generator=g))
    ids = torch.randint(0, VOCAB, (GLOBAL, SEQ + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def optimizer(name, params):
    if name == "lamb":  # max_grad_norm below the gradients' norm: clipping acts every step. eps
        # 1e-4: the key bias's gradient is zero up to the float32 cross-entropy's rounding (softmax
        # ignores a shift), and m / (sqrt(v) + 1e-6) would make that rounding a +-1 update
        return smp.optimizers.FusedLamb(params, lr=2e-2, eps=1e-4, weight_decay=0.01, max_grad_norm=0.2)
    if name == "novograd":
        return smp.optimizers.FusedNovoGrad(params, lr=2e-2, betas=(0.95, 0.98), weight_decay=0.01)
    return smp.optimizers.FusedNovoGrad(params, lr=2e-2, betas=(0.95, 0.98), weight_decay=0.01, norm_type=0)


@smp.step
def train_step(model, *b):
    loss = model(*b)
    model.backward(loss)
    return loss


def close(failures, what, got, want, rtol=1e-5):
    got, want = got.detach().double(), want.detach().double()
    if got.shape != want.shape:
        failures.append(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
        return 0.0
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item() if want.numel() else 0.0
    if not err <= rtol:
        failures.append(f"{what}: relative difference {err:.3g} > {rtol}")
    return err


def train(failures, layout, model_name, opt_name):
    cls = MLP if model_name == "mlp" else LM
    torch.manual_seed(0)
    module = cls()
    with as_tp1():
        torch.manual_seed(0)
        ref = cls()
    dist_model = smp.DistributedModel(module)
    opt = smp.DistributedOptimizer(optimizer(opt_name, dist_model.parameters()))
    ref_opt = optimizer(opt_name, ref.parameters())
    case = f"{model_name} {opt_name}"
    before = len(failures)
    worst, worst_name, clipped = 0.0, "", True
    for step in range(STEPS):
        b = batch(model_name, step)
        loss = train_step(dist_model, *b).reduce_mean()
        opt.step()
        opt.zero_grad()
        with as_tp1():
            ref_loss = ref(*b)
            ref_loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref.parameters() if p.grad is not None))
        clipped = clipped and norm.item() > 0.2
        ref_opt.step()
        ref_opt.zero_grad()
        if smp.pp_rank() == smp.pp_size() - 1:  # the loss is the last stage's
            worst = max(worst, close(failures, f"{case}: step {step} loss", loss, ref_loss))
    if opt_name == "lamb" and not clipped:
        failures.append(f"{case}: the gradient norm fell below max_grad_norm: clipping not exercised")
    refs = dict(ref.named_parameters())
    held = 0
    for name, p in dist_model.local_named_parameters():
        held += 1
        err = close(failures, f"{case}: {name} after {STEPS} steps", whole(p, getattr(p, "_smp_tp_shard", None)),
                    refs[name])
        if err >= worst:
            worst, worst_name = err, name
    if not held:
        failures.append(f"{case}: this rank holds no parameters")
    copies = sum(len(c) for c in dist_model._copies.values())
    print(f"rank {smp.rank()} {case} {layout}: {'ok' if len(failures) == before else 'FAILED'}; {held} parameters, "
          f"{copies} tied copies, worst relative difference {worst:.3g} ({worst_name or 'loss'})", flush=True)
    smp.state.model, smp.state.optimizer = None, None  # the next case is another script's model


def flash_attention_under_tp(failures):
    """This rank's 3 of 6 heads with ALiBi: the tp=1 layer's output for those heads."""
    tp, r = smp.tp_size(), smp.tp_rank()
    qkv = torch.randn(2, SEQ, 3, 6, HEAD_SIZE, generator=torch.Generator().manual_seed(9))
    h = 6 // tp
    layer = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True)
    got = layer(qkv[:, :, :, r * h:(r + 1) * h], causal=True)
    with as_tp1():
        want = smp.nn.FlashAttentionLayer(attention_dropout_prob=0.0, use_alibi=True)(qkv, causal=True)
    close(failures, "FlashAttentionLayer ALiBi on this rank's heads", got, want[:, r * h:(r + 1) * h], 1e-6)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    p.add_argument("--cases", default="mlp-lamb,mlp-novograd,lmhead-lamb,lmhead-novograd-inf")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # the models train in float64: rounding far below the tolerance
    smp.init({**LAYOUTS[a.layout], "microbatches": 2, "ddp": True, "prescaled_batch": True})
    failures = []
    for case in a.cases.split(","):
        model_name, opt_name = case.split("-", 1)
        train(failures, a.layout, model_name, opt_name)
    if smp.tp_size() > 1:
        flash_attention_under_tp(failures)
    smp.barrier()
    for f in failures:
        print(f"rank {smp.rank()} FAIL {f}", flush=True)
    dist.barrier()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

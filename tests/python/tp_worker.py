"""Runs under mpirun: smp.nn's tensor-parallel modules.

  --check units   (2 ranks, tp2): each module's forward against plain PyTorch built from the
                  gathered whole weights; the whole weights against the same module built with
                  tp=1 from the same seed (house rule: a shard is the slice of the tp=1 tensor);
                  torch.export of each module, whose exported graph's forward and backward equal
                  the module's; the not-implemented refusals. Exits non-zero on a mismatch.
                  (prescaled_batch false, SMP's default flow: batch_worker.py.)
  --check train   a user-written LM made of smp.nn modules trained 20 steps through
                  smp.DistributedModel + DistributedOptimizer(Adam) under --layout; writes the
                  per-step losses and the first step's gradients (gathered whole) to --out for
                  test_tensor_parallel.py to compare across layouts.
"""

import argparse
import contextlib
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import smp.torch as smp
from smp.torch.nn import tp_ops

LAYOUTS = {
    "tp1": {"microbatches": 2, "ddp": True},
    "tp2": {"tensor_parallel_degree": 2, "ddp": True, "prescaled_batch": True, "microbatches": 2},
    "tp2pp2": {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2, "ddp": True, "prescaled_batch": True,
               "microbatches": 2},
}
VOCAB, HIDDEN, HEADS, HEAD_SIZE, INTER, SEQ, BATCH = 64, 32, 4, 8, 64, 16, 8


# --- helpers ----------------------------------------------------------------------------------


def whole(t, spec):
    """The whole tensor of a shard (gathered over the TP group), or t itself when replicated."""
    t = t.detach()
    if spec is None:
        return t.clone()
    dim, size = spec
    parts = [torch.empty_like(t) for _ in range(smp.tp_size())]
    dist.all_gather(parts, t.contiguous(), group=smp.get_tp_process_group())
    return torch.cat(parts, dim).narrow(dim, 0, size)


def whole_params(module):
    return {n: whole(p, getattr(p, "_smp_tp_shard", None)) for n, p in module.named_parameters()}


def whole_grads(named):
    return {n: whole(p.grad if p.grad is not None else torch.zeros_like(p), getattr(p, "_smp_tp_shard", None))
            for n, p in named}


@contextlib.contextmanager
def as_tp1():
    """Builds and runs modules as tp=1 in this process (the reference the shards slice)."""
    size, rank = tp_ops.tp_size, tp_ops.tp_rank
    tp_ops.tp_size, tp_ops.tp_rank = (lambda: 1), (lambda: 0)
    try:
        yield
    finally:
        tp_ops.tp_size, tp_ops.tp_rank = size, rank


class Checker:
    def __init__(self):
        self.worst = {}

    def close(self, what, a, b, tol=1e-5):
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        if tuple(a.shape) != tuple(b.shape):
            diff = float("inf")
        self.worst[what] = max(self.worst.get(what, 0.0), diff)
        if diff > tol:
            print(f"rank {smp.rank()}: MISMATCH {what}: {diff:.3g} (shapes {tuple(a.shape)} {tuple(b.shape)})",
                  flush=True)

    def forward_backward(self, name, module, w, run, ref):
        """run(module) against ref(whole weights): outputs, and the gradients of a weighted sum of
        them (the module's gathered whole against the reference's)."""
        for p in module.parameters():
            p.grad = None
        out = run(module)
        weighted(out).backward()
        mine = whole_grads(module.named_parameters())
        leaves = {n: t.clone().requires_grad_(True) for n, t in w.items()}
        expected = ref(leaves)
        weighted(expected).backward()
        self.close(f"{name}: forward", out, expected)
        for n, g in mine.items():
            want = leaves[n].grad if leaves[n].grad is not None else torch.zeros_like(g)
            self.close(f"{name}: gradient of {n}", g, want)
        for p in module.parameters():
            p.grad = None

    def equal(self, what, a, b):
        self.close(what, a, b, tol=0.0)

    def ok(self):
        return all(v <= 1e-5 for v in self.worst.values())


def weighted(out):
    return (out * torch.linspace(0.5, 1.5, out.numel()).view(out.shape)).sum()


# --- plain PyTorch references (whole weights, no smp) -----------------------------------------


def ref_alibi(heads, s, bias_max):
    """ALiBi written out: for n = 2^k heads, slope_h = 2^(-bias_max (h + 1) / n); bias m_h (j - i)."""
    slopes = torch.tensor([2.0 ** (-bias_max * (h + 1) / heads) for h in range(heads)]).view(heads, 1, 1)
    i = torch.arange(s).view(s, 1)
    j = torch.arange(s).view(1, s)
    return slopes * (j - i).float()


def ref_attention(x, mask, w, p, pre, post, causal, heads, d, alibi_max=None):
    """w: whole weights by name with prefix p (qkv.weight (3, heads*d, H) ...)."""
    def attend(t):
        b, s, _ = t.shape
        qw, qb = w[p + "qkv.weight"], w[p + "qkv.bias"]
        q, k, v = [(t @ qw[i].T + qb[i]).view(b, s, heads, d).transpose(1, 2) for i in range(3)]
        scores = q @ k.transpose(-1, -2) / d ** 0.5
        if alibi_max is not None:
            scores = scores + ref_alibi(heads, s, alibi_max)
        if causal:
            scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        if mask is not None:
            scores = scores + mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, heads * d)
        return ctx @ w[p + "dense.weight"].T + w[p + "dense.bias"]
    return ref_residual(x, attend, w, p + "layernorm.", pre, post)


def ref_output(x, w, p, pre, post, activation="gelu"):
    def feed(t):
        h = t @ w[p + "dense_h_to_4h.weight"].T + w[p + "dense_h_to_4h.bias"]
        h = {"gelu": F.gelu, "relu": F.relu}[activation](h)
        return h @ w[p + "dense_4h_to_h.weight"].T + w[p + "dense_4h_to_h.bias"]
    return ref_residual(x, feed, w, p + "layernorm.", pre, post)


def ref_residual(x, f, w, ln, pre, post):
    norm = lambda t: F.layer_norm(t, t.shape[-1:], w[ln + "weight"], w[ln + "bias"], 1e-5)  # noqa: E731
    if pre:
        return x + f(norm(x))
    if post:
        return norm(x + f(x))
    return x + f(x)


def ref_layer(x, mask, w, p, pre, post, causal, alibi_max=None):
    h = ref_attention(x, mask, w, p + "attention.", pre, post, causal, HEADS, HEAD_SIZE, alibi_max)
    return ref_output(h, w, p + "output.", pre, post)


# --- the unit checks --------------------------------------------------------------------------


def built_twice(factory, seed=1):
    """The module under this run's tp, its whole weights, and the same module built as tp=1 from
    the same seed (with the generator states after each build)."""
    torch.manual_seed(seed)
    module = factory()
    after = torch.get_rng_state()
    with as_tp1():
        torch.manual_seed(seed)
        reference = factory()
        after_ref = torch.get_rng_state()
    return module, whole_params(module), reference, bool(torch.equal(after, after_ref))


def check_units(c):
    torch.manual_seed(100)
    x = torch.randn(2, SEQ, HIDDEN)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    keep = torch.ones(2, SEQ)
    keep[1, -3:] = 0
    mask = (1.0 - keep).view(2, 1, 1, SEQ) * -10000.0
    layer_args = dict(num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN,
                      intermediate_size=INTER, attention_dropout_prob=0.0, hidden_dropout_prob=0.0)

    def against_tp1(name, module, w, reference, same_rng):
        ref = dict(reference.named_parameters())
        c.equal(f"{name}: init order (generator state after building)", torch.tensor(float(same_rng)),
                torch.tensor(1.0))
        for n, t in w.items():
            c.equal(f"{name}: {n} whole == tp1's", t, ref[n].detach())
            spec = getattr(dict(module.named_parameters())[n], "_smp_tp_shard", None)
            if spec is not None:
                c.close(f"{name}: marker size", torch.tensor(float(spec[1])), torch.tensor(float(t.shape[spec[0]])))

    # DistributedLinear: nn.Linear, initialised as nn.Linear
    m, w, r, same = built_twice(lambda: smp.nn.DistributedLinear(HIDDEN, INTER))
    against_tp1("DistributedLinear", m, w, r, same)
    torch.manual_seed(1)
    plain = nn.Linear(HIDDEN, INTER)
    c.equal("DistributedLinear: init == nn.Linear's", w["weight"], plain.weight.detach())
    c.equal("DistributedLinear: bias init == nn.Linear's", w["bias"], plain.bias.detach())
    c.forward_backward("DistributedLinear", m, w, lambda m: m(x), lambda w: F.linear(x, w["weight"], w["bias"]))
    check_export(c, "DistributedLinear", m, (x,))

    # DistributedEmbedding, with padding_idx, and _skip_allgather
    m, w, r, same = built_twice(lambda: smp.nn.DistributedEmbedding(VOCAB, HIDDEN, padding_idx=3))
    against_tp1("DistributedEmbedding", m, w, r, same)
    c.equal("DistributedEmbedding: padding row", w["weight"][3], torch.zeros(HIDDEN))
    c.forward_backward("DistributedEmbedding", m, w, lambda m: m(ids),
                       lambda w: F.embedding(ids, w["weight"], padding_idx=3))
    check_export(c, "DistributedEmbedding", m, (ids,))
    torch.manual_seed(2)
    full = torch.randn(VOCAB, HIDDEN)
    m = smp.nn.DistributedEmbedding(VOCAB, HIDDEN, _weight=full, _skip_allgather=True)
    n = HIDDEN // smp.tp_size()
    c.close("DistributedEmbedding: _skip_allgather gives this rank's columns", m(ids),
            F.embedding(ids, full)[..., smp.tp_rank() * n:(smp.tp_rank() + 1) * n])

    # DistributedAttentionLayer and DistributedTransformerOutputLayer, post (default) and pre
    for pre, post in ((False, True), (True, False), (False, False)):
        tag = f"pre={pre} post={post}"
        m, w, r, same = built_twice(lambda: smp.nn.DistributedAttentionLayer(
            num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN, attention_dropout_prob=0.0,
            hidden_dropout_prob=0.0, causal_mask_size=SEQ, pre_layernorm=pre, post_layernorm=post))
        against_tp1(f"DistributedAttentionLayer {tag}", m, w, r, same)
        c.forward_backward(f"DistributedAttentionLayer {tag}", m, w, lambda m: m((x, mask)),
                           lambda w: ref_attention(x, mask, w, "", pre, post, True, HEADS, HEAD_SIZE))
        check_export(c, f"DistributedAttentionLayer {tag}", m, ((x, mask),))
        m, w, r, same = built_twice(lambda: smp.nn.DistributedTransformerOutputLayer(
            hidden_size=HIDDEN, intermediate_size=INTER, hidden_dropout_prob=0.0, activation="relu",
            pre_layernorm=pre, post_layernorm=post))
        against_tp1(f"DistributedTransformerOutputLayer {tag}", m, w, r, same)
        c.forward_backward(f"DistributedTransformerOutputLayer {tag}", m, w, lambda m: m(x),
                           lambda w: ref_output(x, w, "", pre, post, "relu"))
        check_export(c, f"DistributedTransformerOutputLayer {tag}", m, (x,))

    # DistributedTransformerLayer (not causal, with a mask): (hidden, mask) -> (hidden, mask)
    m, w, r, same = built_twice(lambda: smp.nn.DistributedTransformerLayer(**layer_args))
    against_tp1("DistributedTransformerLayer", m, w, r, same)
    c.forward_backward("DistributedTransformerLayer", m, w, lambda m: m((x, mask))[0],
                       lambda w: ref_layer(x, mask, w, "", False, True, False))
    c.equal("DistributedTransformerLayer: mask passes through", m((x, mask))[1], mask)
    check_export(c, "DistributedTransformerLayer", m, ((x, mask),))

    # ... with ALiBi (causal, alibi_bias_max 4): each rank adds its global heads' slopes
    m, w, r, same = built_twice(lambda: smp.nn.DistributedTransformerLayer(
        use_alibi=True, alibi_bias_max=4, causal_mask_size=SEQ, **layer_args))
    c.forward_backward("DistributedTransformerLayer alibi", m, w, lambda m: m((x, mask))[0],
                       lambda w: ref_layer(x, mask, w, "", False, True, True, alibi_max=4))
    check_export(c, "DistributedTransformerLayer alibi", m, ((x, mask),))

    # DistributedTransformer, pre and post: a final LayerNorm
    m, w, r, same = built_twice(lambda: smp.nn.DistributedTransformer(
        num_layers=2, causal_mask_size=SEQ, pre_layernorm=True, post_layernorm=True, **layer_args))
    against_tp1("DistributedTransformer", m, w, r, same)

    def ref_stack(w):
        h = x
        for i in range(2):
            h = ref_layer(h, None, w, f"seq_layers.{i}.", True, True, True)
        return F.layer_norm(h, (HIDDEN,), w["final_layernorm.weight"], w["final_layernorm.bias"], 1e-5)
    c.forward_backward("DistributedTransformer", m, w, lambda m: m((x, None))[0], ref_stack)
    check_export(c, "DistributedTransformer", m, ((x, None),))

    # DistributedTransformerLMHead: loss, this rank's logits, no head; a vocabulary padded to tp
    for vocab in (VOCAB, VOCAB - 1):
        m, w, r, same = built_twice(lambda: smp.nn.DistributedTransformerLMHead(
            num_layers=2, vocab_size=vocab, num_positions=SEQ, num_token_types=2, causal_mask_size=SEQ,
            pre_layernorm=True, post_layernorm=True, use_normal_initialization=True, **layer_args))
        against_tp1(f"DistributedTransformerLMHead vocab {vocab}", m, w, r, same)
        ids_v = ids % vocab
        labels = torch.roll(ids_v, -1, 1)
        labels[0, -1] = -100
        types = (ids_v % 2)

        def ref_logits(w):
            wte = w["embedding.word_embeddings.weight"]
            h = wte[ids_v] + w["embedding.position_embeddings"][:SEQ] + w["embedding.token_type_embeddings"][types]
            for i in range(2):
                h = ref_layer(h, mask, w, f"transformer.seq_layers.{i}.", True, True, True)
            h = F.layer_norm(h, (HIDDEN,), w["transformer.final_layernorm.weight"],
                             w["transformer.final_layernorm.bias"], 1e-5)
            return h @ wte.T

        inputs = (ids_v, keep, types, None, labels)
        c.forward_backward(f"DistributedTransformerLMHead vocab {vocab}: loss", m, w, lambda m: m(inputs)[0],
                           lambda w: F.cross_entropy(ref_logits(w).reshape(-1, vocab), labels.reshape(-1),
                                                     ignore_index=-100))
        local = m(inputs[:4])[0]
        n = local.shape[-1]
        start = smp.tp_rank() * n
        real = max(0, min(n, vocab - start))  # this rank's columns that are vocabulary
        c.close(f"DistributedTransformerLMHead vocab {vocab}: this rank's logits", local[..., :real],
                ref_logits(w)[..., start:start + real])
        c.close(f"DistributedTransformerLMHead vocab {vocab}: padding logits -inf (never predicted)",
                torch.tensor(float(bool(local[..., real:].isneginf().all()))), torch.tensor(1.0))
        check_export(c, f"DistributedTransformerLMHead vocab {vocab}", m, (inputs,))
    torch.manual_seed(3)
    m = smp.nn.DistributedTransformerLMHead(num_layers=1, vocab_size=VOCAB, num_positions=SEQ, add_lm_head=False,
                                            **layer_args)
    c.close("DistributedTransformerLMHead: add_lm_head=False gives (hidden,)",
            torch.tensor(float(m((ids,))[0].shape == (2, SEQ, HIDDEN))), torch.tensor(1.0))

    check_dropout(c, x, mask, layer_args)
    check_refusals(c, layer_args)


def check_export(c, name, module, args):
    """torch.export captures the module with the smp ops as nodes; the exported graph's forward
    and backward (what the DistributedModel's units run) equal the module's."""
    ep = torch.export.export(module, args, strict=False)
    ops = {str(n.target) for n in ep.graph.nodes if str(n.target).startswith("smp.")}
    if smp.tp_size() > 1 and not ops:
        c.close(f"{name}: export has smp ops", torch.tensor(1.0), torch.tensor(0.0))
    params = dict(module.named_parameters())
    for p in params.values():
        p.grad = None
    out = module(*args)
    out = out[0] if isinstance(out, tuple) else out
    weighted(out).backward()
    eager = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    out2 = ep.module()(*args)
    out2 = out2[0] if isinstance(out2, tuple) else out2
    weighted(out2).backward()
    c.close(f"{name}: exported forward", out2, out)
    for n, g in eager.items():
        c.close(f"{name}: exported backward {n}", params[n].grad, g)
    for p in params.values():
        p.grad = None


def check_dropout(c, x, mask, layer_args):
    """Dropout on: replicated activations (the layer's output) stay equal on every TP rank; the
    same draw count gives the same masks (what a recompute or a resume relies on)."""
    args = dict(layer_args, attention_dropout_prob=0.2, hidden_dropout_prob=0.2)
    torch.manual_seed(4)
    m = smp.nn.DistributedTransformerLayer(**args)
    first = m((x, mask))[0]
    others = [torch.empty_like(first) for _ in range(smp.tp_size())]
    dist.all_gather(others, first.detach(), group=smp.get_tp_process_group())
    for o in others:
        c.equal("dropout: replicated output equal across TP ranks", o, first.detach())
    for b in m.buffers():
        b.zero_()
    c.equal("dropout: same draw count, same masks", m((x, mask))[0], first)
    c.close("dropout: masks change from draw to draw", torch.tensor(float(torch.equal(m((x, mask))[0], first))),
            torch.tensor(0.0))
    m.eval()
    c.equal("dropout: eval has none", m((x, mask))[0], m((x, mask))[0])


def check_refusals(c, layer_args):
    def raises(what, error, fn, words):
        try:
            fn()
        except error as e:
            if all(w in str(e) for w in words):
                return
            print(f"rank {smp.rank()}: {what}: message lacks {words}: {e}", flush=True)
        else:
            print(f"rank {smp.rank()}: {what}: no {error.__name__}", flush=True)
        c.worst[what] = float("inf")

    raises("add_cross_attention", NotImplementedError,
           lambda: smp.nn.DistributedTransformerLayer(add_cross_attention=True, **layer_args), ["add_cross_attention"])
    raises("alibi_bias_max", ValueError,
           lambda: smp.nn.DistributedTransformer(num_layers=1, use_alibi=True, alibi_bias_max=0, **layer_args),
           ["alibi_bias_max", "> 0"])
    raises("cross_attention", NotImplementedError,
           lambda: smp.nn.DistributedAttentionLayer(cross_attention=True), ["cross_attention"])
    raises("max_norm", NotImplementedError, lambda: smp.nn.DistributedEmbedding(8, 4, max_norm=1.0), ["max_norm"])
    raises("sparse", NotImplementedError, lambda: smp.nn.DistributedEmbedding(8, 4, sparse=True), ["sparse"])
    raises("activation", ValueError, lambda: smp.nn.DistributedTransformerOutputLayer(activation="tanh"),
           ["activation", "gelu"])
    raises("unknown argument", TypeError, lambda: smp.nn.DistributedTransformerLayer(bogus=1, **layer_args),
           ["bogus"])
    if smp.tp_size() > 1:
        raises("heads not divisible", ValueError,
               lambda: smp.nn.DistributedTransformerLayer(**dict(layer_args, num_attention_heads=3)),
               ["num_attention_heads", "tensor_parallel_degree"])
        smp.state.cfg["prescaled_batch"] = False  # SMP's default flow: built (batch_worker.py tests it)
        try:
            smp.nn.DistributedLinear(4, 4)
            raises("_skip_allgather without _skip_scatter_and_merge, not prescaled", ValueError,
                   lambda: smp.nn.DistributedEmbedding(8, 4, _skip_allgather=True), ["_skip_scatter_and_merge"])
        finally:
            smp.state.cfg["prescaled_batch"] = True


# --- training ---------------------------------------------------------------------------------


class LMHeadModel(nn.Module):
    """A GPT-like LM: DistributedTransformerLMHead (embeddings, 2 pre+post-LN causal layers,
    tied head, vocab-parallel loss) with an attention mask."""

    def __init__(self):
        super().__init__()
        self.lm = smp.nn.DistributedTransformerLMHead(
            num_layers=2, num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN,
            intermediate_size=INTER, attention_dropout_prob=0.0, hidden_dropout_prob=0.0, vocab_size=VOCAB,
            num_positions=SEQ, causal_mask_size=SEQ, pre_layernorm=True, post_layernorm=True,
            use_normal_initialization=True)

    def forward(self, ids, keep, labels):
        return self.lm((ids, keep, None, None, labels))[0]


class BlocksModel(nn.Module):
    """A BERT-like stack by hand: DistributedEmbedding + nn.Embedding positions, two
    DistributedTransformerLayers (post-LN, relu, hidden dropout: its replicated masks are the
    same under any tp), LayerNorm, a DistributedLinear head."""

    def __init__(self, attention_dropout_prob=0.0, hidden_dropout_prob=0.1):
        super().__init__()
        self.tok = smp.nn.DistributedEmbedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(SEQ, HIDDEN)
        self.blocks = nn.ModuleList(smp.nn.DistributedTransformerLayer(
            num_attention_heads=HEADS, attention_head_size=HEAD_SIZE, hidden_size=HIDDEN, intermediate_size=INTER,
            attention_dropout_prob=attention_dropout_prob, hidden_dropout_prob=hidden_dropout_prob,
            activation="relu") for _ in range(2))
        self.ln = nn.LayerNorm(HIDDEN)
        self.head = smp.nn.DistributedLinear(HIDDEN, VOCAB)

    def forward(self, ids, keep, labels):
        mask = (1.0 - keep).view(keep.shape[0], 1, 1, keep.shape[1]) * -10000.0
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x, mask = block((x, mask))
        return self.head(self.ln(x))


def loss_of(model_name, out, labels):
    return out if model_name == "lmhead" else F.cross_entropy(out.reshape(-1, VOCAB), labels.reshape(-1))


def batch(step):
    g = torch.Generator().manual_seed(3000 + step)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    keep = torch.ones(BATCH, SEQ)
    keep[1::2, -2:] = 0
    return ids[:, :-1].contiguous(), keep, ids[:, 1:].contiguous()


def train(a):
    torch.manual_seed(0)
    module = LMHeadModel() if a.model == "lmhead" else BlocksModel()
    model = smp.DistributedModel(module)
    opt = smp.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2))

    @smp.step
    def train_step(model, ids, keep, labels):
        loss = loss_of(a.model, model(ids, keep, labels), labels)
        model.backward(loss)
        return loss

    per = BATCH // smp.rdp_size()
    mine = slice(smp.rdp_rank() * per, (smp.rdp_rank() + 1) * per)  # prescaled: TP ranks share a slice
    losses, grads = [], None
    for step in range(a.steps):
        ids, keep, labels = batch(step)
        loss = train_step(model, ids[mine], keep[mine], labels[mine]).reduce_mean()
        dist.all_reduce(loss, group=smp.get_rdp_process_group())
        losses.append(loss.item() / smp.rdp_size())
        if step == 0:
            grads = whole_grads(list(model.local_named_parameters()))
        opt.step()
        opt.zero_grad()
    # The whole model's state (shards gathered over TP, stages over PP): this rank's parameters
    # in it equal their shards gathered here independently; loading it back (each rank takes
    # its slice) gives the same state again.
    state = {k: v.clone() for k, v in model.state_dict().items()}  # (views, as torch's are)
    assert sorted(state) == sorted(module.state_dict()), "state_dict: not every name of the module"
    for name, p in model.local_named_parameters():
        assert torch.equal(state[name], whole(p, getattr(p, "_smp_tp_shard", None))), f"state_dict: {name}"
    model.load_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    model.load_state_dict(state)
    again = model.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state), "state_dict -> load_state_dict round trip"
    if smp.tp_rank() == 0 and smp.rdp_rank() == 0:
        path = os.path.join(a.out, f"{a.model}_{a.layout}_pp{smp.pp_rank()}.pt")
        torch.save({"losses": losses, "grads": grads}, path)
    print(f"rank {smp.rank()} {a.model} {a.layout}: losses {losses[0]:.5f} .. {losses[-1]:.5f}, "
          f"{len(grads)} gradients", flush=True)


def recompute(c):
    """Activation checkpointing with dropout on (attention and hidden): the engine's recompute
    draws the masks its forward drew, so one step's gradients equal the module's own eager
    forward and backward, microbatch by microbatch, from the same dropout draw counts."""
    torch.manual_seed(0)
    module = BlocksModel(attention_dropout_prob=0.2, hidden_dropout_prob=0.2)
    smp.set_activation_checkpointing(module.blocks)
    model = smp.DistributedModel(module)
    smp.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0))

    @smp.step
    def train_step(model, ids, keep, labels):
        loss = loss_of("blocks", model(ids, keep, labels), labels)
        model.backward(loss)
        return loss

    ids, keep, labels = batch(0)
    draws = {n: b.clone() for n, b in module.named_buffers()}
    losses = train_step(model, ids, keep, labels)
    engine = {n: p.grad.clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        for n, b in module.named_buffers():
            b.copy_(draws[n])
    for p in module.parameters():
        p.grad = None
    m = smp.state.cfg["microbatches"]
    for k, (i, kp, lab) in enumerate(zip(ids.chunk(m), keep.chunk(m), labels.chunk(m))):
        loss = loss_of("blocks", module(i, kp, lab), lab)
        c.close(f"recompute: microbatch {k} loss", loss.detach(), losses.outputs[k])
        (loss / m).backward()
    for n, p in module.named_parameters():
        c.close(f"recompute: gradient of {n}", engine[n], p.grad)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", choices=["units", "train", "recompute"], required=True)
    p.add_argument("--units", action="store_true", help="with --check train: the unit checks first (one launch)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="tp2")
    p.add_argument("--model", choices=["lmhead", "blocks"], default="lmhead")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(1)
    smp.init(LAYOUTS[a.layout])
    c = Checker()
    if a.check == "units" or a.units:
        check_units(c)
        print(f"rank {smp.rank()} units: {len(c.worst)} checks, worst difference {max(c.worst.values()):.3g}",
              flush=True)
    if a.check == "recompute":
        recompute(c)
        print(f"rank {smp.rank()} recompute: worst difference {max(c.worst.values()):.3g}", flush=True)
    if a.check == "train":
        train(a)
    smp.barrier()
    sys.exit(0 if c.ok() else 1)


if __name__ == "__main__":
    main()

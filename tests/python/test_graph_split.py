"""Tests for python/smp/torch/graph_split.py: the torch.export based module splitter.

Each model is run once eagerly and once as the chained units; outputs, parameter
gradients and buffers must agree.  The module is imported by path so the test does
not need the smp package to be installed or its __init__ files to exist.
"""

import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python", "smp", "torch"))
import graph_split as gs  # noqa: E402

torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


# --------------------------------------------------------------------------- models


class CNN(nn.Module):
    """Sequential feature stack (features.0 ...), a ReLU module used twice (act, act#2)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(8 * 11 * 11, 10)

    def forward(self, x):
        x = self.act(self.conv2(self.features(x)))
        x = torch.flatten(self.drop(x), 1)
        return F.log_softmax(self.act(self.fc(x)), dim=1)


CNN_UNITS = ["features.0", "features.1", "features.2", "features.3", "conv2", "act", "drop", "fc", "act#2"]


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # one multi-output node + getitems
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (D // self.heads) ** 0.5
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """User-written GPT: tied head, loss computed in forward when labels are given."""

    def __init__(self, vocab=50, d=16, heads=2, layers=2, max_len=16):
        super().__init__()
        self.vocab = vocab
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, input_ids, labels=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, self.vocab), labels.view(-1))
        return {"logits": logits, "loss": loss}


def make_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def make_llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def make_bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM(cfg)


def lm_call(vocab=100, batch=2, seq=8, **extra):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    return (), dict(input_ids=ids, labels=labels, **extra)


# --------------------------------------------------------------------------- helpers


def run_units(sm, args, kwargs):
    values = sm.flatten_inputs(args, kwargs)
    for unit in sm.units:
        values = unit.forward(values)
        assert isinstance(values, list) and all(isinstance(v, torch.Tensor) for v in values), unit.name
    return sm.unflatten_outputs(values)


def float_sum(out):
    return sum(t.float().sum() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())


def check_matches_eager(model, args, kwargs, min_units=3):
    """Split, then compare eager vs chained units: outputs, every grad, every buffer."""
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    sm = gs.split_module(model, args, kwargs)
    for k, v in model.named_buffers():  # capturing must not touch the module
        assert torch.equal(v, buffers_before[k]), k

    torch.manual_seed(1)
    out_ref = model(*args, **kwargs)
    float_sum(out_ref).backward()
    grads_ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers_ref = {k: v.clone() for k, v in model.named_buffers()}

    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers_before[k])
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = run_units(sm, args, kwargs)
    float_sum(out).backward()

    assert type(out) is type(out_ref)
    leaves_ref, spec_ref = pytree.tree_flatten(out_ref)
    leaves, spec = pytree.tree_flatten(out)
    assert spec == spec_ref
    for a, b in zip(leaves, leaves_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert grads_ref, "eager backward produced no grads"
    for n, p in model.named_parameters():
        if n in grads_ref:
            torch.testing.assert_close(p.grad, grads_ref[n], atol=1e-6, rtol=0, msg=n)
        else:
            assert p.grad is None, n
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, buffers_ref[k], atol=1e-6, rtol=0, msg=k)

    names = [u.name for u in sm.units]
    assert len(names) == len(set(names)) and len(names) >= min_units, names
    for u in sm.units:
        assert list(u.params) == u.param_names
        for fqn, p in u.params.items():
            assert p is model.get_parameter(fqn), fqn
            assert isinstance(p, nn.Parameter)
    return sm


def units_holding(sm, param):
    return [u.name for u in sm.units if any(p is param for p in u.params.values())]


# --------------------------------------------------------------------------- equivalence


def test_cnn_batchnorm_train_mode():
    model = CNN().train()
    x = torch.randn(8, 1, 28, 28)
    sm = check_matches_eager(model, (x,), {})
    assert [u.name for u in sm.units] == CNN_UNITS
    assert sm.units[1].buffer_names == ["features.1.running_mean", "features.1.running_var",
                                        "features.1.num_batches_tracked"]
    assert int(model.features[1].num_batches_tracked) == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch-internal pytree deprecation in run_decompositions
def test_cnn_functional_graph_buffer_mutation_outputs(monkeypatch):
    """A functional graph reports BatchNorm updates as buffer-mutation outputs; the unit copies them back.

    Forward only: such a graph saves the old running stats for backward, so writing the new
    ones back in place breaks backward (torch's own ep.module() fails the same way); the
    splitter therefore uses the training IR, where BatchNorm updates its buffers in place."""
    export = gs._export
    monkeypatch.setattr(gs, "_export", lambda *a: export(*a).run_decompositions())
    model = CNN().train()
    x = torch.randn(8, 1, 28, 28)
    sm = gs.split_module(model, (x,))
    assert [u.name for u in sm.units] == CNN_UNITS
    assert sm.units[1]._mutated_buffers == ["features.1.running_mean", "features.1.running_var",
                                            "features.1.num_batches_tracked"]
    before = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        ref = model(x)
        after = {k: v.clone() for k, v in model.named_buffers()}
        for k, v in model.named_buffers():
            v.copy_(before[k])
        out = run_units(sm, (x,), {})
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, after[k], atol=1e-6, rtol=0, msg=k)
    assert int(model.features[1].num_batches_tracked) == 1


def test_cnn_eval_mode():
    check_matches_eager(CNN().eval(), (torch.randn(8, 1, 28, 28),), {})


def test_user_gpt_with_loss_in_forward():
    torch.manual_seed(0)
    model = TinyGPT()
    args, kwargs = lm_call(vocab=50)
    sm = check_matches_eager(model, args, kwargs)
    assert [u.name for u in sm.units] == ["tok", "pos", "blocks.0", "blocks.1", "ln_f", "head"]
    assert units_holding(sm, model.tok.weight) == ["tok", "head"]
    assert sm.units[0].param_names == ["tok.weight"] and sm.units[-1].param_names == ["head.weight"]
    # without labels the output is the bare logits tensor
    sm2 = check_matches_eager(model, (kwargs["input_ids"],), {})
    assert sm2.signature != sm.signature


@pytest.mark.parametrize("make, extra, expected", [
    (make_gpt2, dict(use_cache=False), ["transformer.wte", "transformer.wpe", "transformer.drop",
                                        "transformer.h.0", "transformer.h.1", "transformer.ln_f", "lm_head"]),
    (make_llama, dict(use_cache=False), ["model.embed_tokens", "model.rotary_emb", "model.layers.0",
                                         "model.layers.1", "model.norm", "lm_head"]),
    (make_bert, {}, ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "cls"]),
], ids=["gpt2", "llama", "bert"])
def test_hugging_face_models(make, extra, expected):
    torch.manual_seed(0)
    model = make().train()
    args, kwargs = lm_call(**extra)
    sm = check_matches_eager(model, args, kwargs)
    assert [u.name for u in sm.units] == expected
    out = run_units(sm, args, kwargs)
    assert isinstance(out, transformers.utils.ModelOutput) and set(out.keys()) == {"loss", "logits"}


# --------------------------------------------------------------------------- parameters


def test_tied_weight_in_two_units():
    torch.manual_seed(0)
    gpt2 = make_gpt2()
    sm = gs.split_module(gpt2, *lm_call(use_cache=False))
    wte = gpt2.transformer.wte.weight
    assert wte is gpt2.lm_head.weight
    assert units_holding(sm, wte) == ["transformer.wte", "lm_head"]
    assert "transformer.wte.weight" in sm.units[0].param_names
    assert sm.units[-1].param_names == ["lm_head.weight"]

    bert = make_bert()
    sm = gs.split_module(bert, *lm_call())
    word = bert.bert.embeddings.word_embeddings.weight
    assert units_holding(sm, word) == ["bert.embeddings", "cls"]
    assert "bert.embeddings.word_embeddings.weight" in sm.units[0].param_names


def test_replaced_param_is_used():
    """The engine may give a unit its own copy of a tied weight; the unit must use it."""
    torch.manual_seed(0)
    model = TinyGPT()
    args, kwargs = lm_call(vocab=50)
    sm = gs.split_module(model, args, kwargs)
    run_units(sm, args, kwargs)["loss"].backward()
    full_grad = model.tok.weight.grad.clone()
    model.zero_grad(set_to_none=True)

    head = sm.units[-1]
    copy = nn.Parameter(model.head.weight.detach().clone())
    head.params["head.weight"] = copy
    run_units(sm, args, kwargs)["loss"].backward()
    assert copy.grad is not None and copy.grad.abs().sum() > 0
    # the tied weight's gradient is the sum of its two uses, now split between the two tensors
    torch.testing.assert_close(model.tok.weight.grad + copy.grad, full_grad, atol=1e-6, rtol=0)
    with torch.no_grad():
        copy.mul_(0.0)  # the next call reads the dict's current entry: zero head -> uniform logits
    logits = run_units(sm, args, kwargs)["logits"]
    assert torch.count_nonzero(logits) == 0


# --------------------------------------------------------------------------- calls and errors


def test_flatten_inputs_checks_the_call():
    torch.manual_seed(0)
    model = make_gpt2()
    args, kwargs = lm_call(use_cache=False)
    sm = gs.split_module(model, args, kwargs)
    assert len(sm.flatten_inputs(args, kwargs)) == 2
    # keyword order does not matter, values do not matter
    reordered = dict(reversed(list(kwargs.items())))
    assert gs.call_signature(model, args, reordered) == sm.signature
    assert [t.shape for t in sm.flatten_inputs(args, reordered)] == [(2, 8), (2, 8)]
    with pytest.raises(gs.SplitError, match=r"input_ids.*shape \(2, 9\)"):
        sm.flatten_inputs(args, dict(kwargs, input_ids=torch.zeros(2, 9, dtype=torch.long)))
    with pytest.raises(gs.SplitError, match="dtype"):
        sm.flatten_inputs(args, dict(kwargs, labels=kwargs["labels"].int()))
    with pytest.raises(gs.SplitError, match="use_cache"):
        sm.flatten_inputs(args, dict(kwargs, use_cache=True))
    with pytest.raises(gs.SplitError, match="structure"):
        sm.flatten_inputs(args, {k: v for k, v in kwargs.items() if k != "labels"})
    other = gs.call_signature(model, args, dict(kwargs, input_ids=torch.zeros(2, 9, dtype=torch.long)))
    assert other != sm.signature
    model.eval()
    with pytest.raises(gs.SplitError, match="eval"):
        sm.flatten_inputs(args, kwargs)


def test_same_tensor_passed_twice():
    """input_ids=x, labels=x at split time must not make the units read labels for input_ids later."""
    torch.manual_seed(0)
    model = make_gpt2()
    _, kwargs = lm_call(use_cache=False)
    sm = gs.split_module(model, (), dict(kwargs, labels=kwargs["input_ids"]))
    out = run_units(sm, (), kwargs)
    ref = model(**kwargs)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=0)


def test_dropout_stays_random():
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5), nn.Linear(64, 8)).train()
    x = torch.randn(4, 8)
    sm = gs.split_module(model, (x,))
    assert [u.name for u in sm.units] == ["0", "1", "2"]
    assert not torch.equal(run_units(sm, (x,), {}), run_units(sm, (x,), {}))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


class UsesItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        n = int(x.abs().sum().item())
        return self.a(x) if n % 2 else -self.a(x)


@pytest.mark.parametrize("cls", [DataDependent, UsesItem])
def test_untraceable_module_raises(cls):
    with pytest.raises(gs.SplitError, match=rf"could not capture {cls.__name__}.*@smp.step function"):
        gs.split_module(cls(), (torch.randn(2, 4),))


def test_inplace_write_into_earlier_unit_merges():
    """ReLU(inplace=True) writes into BatchNorm's output: a cut between them could not be
    pipelined (in-place on a received tensor), so the two stay in one unit."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 24 * 24, 3))
    sm = check_matches_eager(model.train(), (torch.randn(2, 1, 28, 28),), {})
    assert [u.name for u in sm.units] == ["0", "1", "3", "5", "6"]


def test_module_without_submodules_is_one_unit():
    model = nn.Linear(4, 3)
    sm = check_matches_eager(model, (torch.randn(2, 4),), {}, min_units=1)
    assert [u.name for u in sm.units] == ["<root>"]
    assert sm.units[0].param_names == ["weight", "bias"]


def test_constant_and_none_outputs_restored():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x, scale=2):
            h = self.a(x)
            return {"out": self.b(h) * scale, "hidden": (h, None), "n": 3}

    sm = check_matches_eager(Mixed(), (torch.randn(2, 4),), {"scale": 2}, min_units=2)
    out = run_units(sm, (torch.randn(2, 4),), {"scale": 2})
    assert out["hidden"][1] is None and out["n"] == 3
    with pytest.raises(gs.SplitError, match="scale"):
        sm.flatten_inputs((torch.randn(2, 4),), {"scale": 3})

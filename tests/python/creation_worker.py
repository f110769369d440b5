"""Runs under mpirun (2 ranks, tp2): smp.model_creation's other paths.

- delayed: a GPT-2 built under model_creation(tensor_parallelism=True, zero_init=True): no
  tensor as large as the whole word embedding is ever allocated on a rank (a dispatch mode
  watches every tensor made from creation through wrapping); the shards are initialised as
  transformers initialises (N(0, 0.02), differing between the TP ranks); then Hugging Face's
  own folder (save_pretrained, safetensors and pytorch_model.bin) loads into it through
  smp.resume_from_checkpoint, with a translate_function, and its logits equal the plain model's.
- untranslated: a user model with no translation under tensor_parallelism: one warning naming
  its classes, and losses equal to one process (it stays replicated).
- replicated_embedding: distribute_embedding=False leaves the embedding and the head whole.
- registered: smp.tp_register_with_module replaces a user MLP by smp.nn's distributed output
  layer through the init, forward and return hooks.
Exits non-zero on a mismatch.
"""

import os
import sys
import tempfile
import warnings

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import models
import smp.torch as smp

VOCAB, HIDDEN = 4096, 32
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any real (not meta) tensor an op produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self.largest = max(self.largest, t.numel())
        return out


def gpt2_config():
    import transformers as tf

    return tf.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=HIDDEN, n_layer=2, n_head=4, resid_pdrop=0,
                         embd_pdrop=0, attn_pdrop=0, use_cache=False)


@smp.step
def logits_step(model, ids):
    return model(input_ids=ids).logits


def delayed(folder):
    import transformers as tf

    watch = LargestTensor()
    with watch:
        with smp.model_creation(tensor_parallelism=True, zero_init=True, dtype=torch.float32):
            module = tf.GPT2LMHeadModel(gpt2_config())
        check(module.transformer.wte.weight.is_meta, "delayed: the word embedding was allocated at creation")
        model = smp.DistributedModel(module)
    check(watch.largest < VOCAB * HIDDEN, f"delayed: a tensor of {watch.largest} elements was allocated "
                                          f"(the whole embedding has {VOCAB * HIDDEN})")
    wte = module.transformer.wte.weight
    check(tuple(wte.shape) == (VOCAB // 2, HIDDEN), f"delayed: word embedding shard {tuple(wte.shape)}")
    check(abs(wte.std().item() - 0.02) < 0.002, f"delayed: word embedding std {wte.std().item():.4f}, not 0.02")
    other = smp.allgather(wte.detach().clone(), smp.TP_GROUP)[1 - smp.tp_rank()]
    check(not torch.equal(other, wte.detach()), "delayed: both TP ranks drew the same shard")
    ln = module.transformer.ln_f.weight
    check(torch.equal(ln, torch.ones_like(ln)), "delayed: LayerNorm weight not initialised to ones")

    # Hugging Face's own folder, from one process's save_pretrained, into the sharded model.
    torch.manual_seed(7)
    plain = tf.GPT2LMHeadModel(gpt2_config()).eval()
    if smp.rank() == 0:
        plain.save_pretrained(os.path.join(folder, "st"))
        plain.save_pretrained(os.path.join(folder, "bin"), safe_serialization=False)
    smp.barrier()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    want = plain(input_ids=ids).logits
    seen = []
    for tag in ("st", "bin/pytorch_model.bin"):
        smp.resume_from_checkpoint(folder, tag=tag, partial=False, load_optimizer=False,
                                   translate_function=lambda sd: seen.append(len(sd)) or sd)
        model.eval()
        got = logits_step(model, ids).concat()
        err = ((got - want).abs().max() / want.abs().max()).item()
        check(err < 1e-5, f"delayed: logits after loading Hugging Face's {tag}: relative difference {err:.3g}")
    check(len(seen) == 2, "delayed: translate_function was not called")
    print(f"rank {smp.rank()} delayed: largest tensor {watch.largest} of {VOCAB * HIDDEN}", flush=True)


def untranslated():
    torch.manual_seed(0)
    ref = models.TinyGPT()
    torch.manual_seed(0)
    with smp.tensor_parallelism():
        module = models.TinyGPT()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smp.DistributedModel(module)
    said = [str(w.message) for w in caught if "no tensor-parallel translation" in str(w.message)]
    check(any("Linear" in m and "stays replicated" in m for m in said), f"untranslated: no warning naming Linear: {said}")
    check(any("Embedding" in m for m in said), f"untranslated: no warning naming Embedding: {said}")

    @smp.step
    def step(model, ids, labels):
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), labels.flatten())
        model.backward(loss)
        return loss

    opt = smp.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for k in range(3):
        ids, labels = models.gpt_batch(k, 4)
        loss = step(model, ids, labels).reduce_mean()
        opt.step()
        opt.zero_grad()
        ref_loss = nn.functional.cross_entropy(ref(ids).flatten(0, 1), labels.flatten())
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        check(abs(loss.item() - ref_loss.item()) < 1e-5, f"untranslated: step {k} loss {loss.item()} vs {ref_loss.item()}")
    print(f"rank {smp.rank()} untranslated: {len(said)} warnings", flush=True)


class MLP(nn.Module):
    def __init__(self, hidden, inner):
        super().__init__()
        self.up, self.down = nn.Linear(hidden, inner), nn.Linear(inner, hidden)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP(HIDDEN, 4 * HIDDEN)
        self.out = nn.Linear(HIDDEN, 3)

    def forward(self, x):
        return self.out(self.mlp(x))


def registered():
    calls = []

    def init_hook(hidden, inner):
        calls.append("init")
        return (), {"hidden_size": hidden, "intermediate_size": inner, "hidden_dropout_prob": 0.0,
                    "activation": "relu", "post_layernorm": False}

    def forward_hook(x):
        calls.append("forward")
        return (x,), {}

    def return_hook(y):
        calls.append("return")
        return y

    smp.tp_register_with_module(MLP, smp.nn.DistributedTransformerOutputLayer, init_hook, forward_hook, return_hook)
    torch.manual_seed(0)
    with smp.tensor_parallelism():
        module = Net()
    model = smp.DistributedModel(module)
    inner = model.get_module().mlp
    check(isinstance(inner.module, smp.nn.DistributedTransformerOutputLayer), f"registered: mlp is {type(inner)}")
    check(inner.module.dense_h_to_4h.weight.shape[0] == 2 * HIDDEN, "registered: the MLP is not split over tp2")

    @smp.step
    def step(model, x):
        out = model(x)
        model.backward(out.sum())
        return out

    x = torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(2))
    out = step(model, x).concat()
    # The same math by hand from the gathered whole weights.
    up = model.state_dict()
    ref = torch.relu(x @ up["mlp.module.dense_h_to_4h.weight"].t() + up["mlp.module.dense_h_to_4h.bias"])
    ref = x + ref @ up["mlp.module.dense_4h_to_h.weight"].t() + up["mlp.module.dense_4h_to_h.bias"]
    ref = ref @ up["out.weight"].t() + up["out.bias"]
    check(torch.allclose(out, ref, rtol=1e-5, atol=1e-6), "registered: output differs from the whole weights' math")
    check(calls[:1] == ["init"] and "forward" in calls and "return" in calls, f"registered: hooks called {calls}")
    print(f"rank {smp.rank()} registered: hooks {sorted(set(calls))}", flush=True)


def replicated_embedding():
    """distribute_embedding=False: the blocks are split, the embedding and the head are not."""
    import transformers as tf

    with smp.model_creation(tensor_parallelism=True, distribute_embedding=False):
        module = tf.GPT2LMHeadModel(gpt2_config())
    smp.DistributedModel(module)
    check(tuple(module.transformer.wte.weight.shape) == (VOCAB, HIDDEN), "distribute_embedding=False: wte split")
    check(not hasattr(module.lm_head.weight, "_smp_tp_shard"), "distribute_embedding=False: lm_head split")
    check(module.transformer.h[0].attn.c_attn.weight.shape[-1] == HIDDEN // 2, "distribute_embedding=False: "
                                                                              "attention not split")
    print(f"rank {smp.rank()} replicated_embedding: ok", flush=True)


def main():
    torch.set_num_threads(1)
    smp.init({"tensor_parallel_degree": 2, "microbatches": 1, "ddp": True, "prescaled_batch": True})
    with tempfile.TemporaryDirectory() as tmp:
        if smp.rank() == 0:
            smp.broadcast(tmp, smp.WORLD)
        folder = tmp if smp.rank() == 0 else smp.recv_from(0, smp.RankType.WORLD_RANK)
        for check_name in sys.argv[1:] or ["delayed", "untranslated", "registered", "replicated_embedding"]:
            globals()[check_name](folder) if check_name == "delayed" else globals()[check_name]()
            smp.state.model, smp.state.optimizer = None, None  # the next check wraps another model
        smp.barrier()
    for f in failures:
        print(f"rank {smp.rank()} FAIL {f}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

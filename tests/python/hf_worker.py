"""Runs under mpirun: Hugging Face models made tensor-parallel by smp.tensor_parallelism, every
family of hf_families.py in one launch, under --layout, each against the same transformers
model trained in this process without smp (built from the same seed):

- the first step's logits and every gradient this rank holds (gathered whole over TP) to 1e-5
  relative; --steps steps of SGD with momentum: losses to 1e-4 (not Adam: an attention key
  bias's gradient is zero up to rounding, which Adam would scale into full-size steps of
  either sign);
- layout tp2split: prescaled_batch false (SMP's default flow), so the two ranks of the TP group
  take different halves of the batch (by dp_rank); each transformer block gathers the group's
  batch and splits it back. The reference still trains on the whole batch: the losses are
  averaged over the data-parallel group, the logits are this rank's half of the reference's,
  the gradients (averaged by the engine) are the reference's;
- the state dict: Hugging Face's names and shapes, equal to the reference's weights, and a
  round trip through load_state_dict bit for bit;
- a full checkpoint (smp.save_checkpoint(partial=False)): transformers' from_pretrained loads it
  and computes the reference's logits; resume_from_checkpoint(partial=False, translate_function)
  loads it back (the function sees Hugging Face's names) to the same weights.

Exits non-zero on a mismatch; prints one line per family.
"""

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist

import hf_families
import smp.torch as smp

LAYOUTS = {
    "tp2": {"tensor_parallel_degree": 2},
    "pp2": {"pipeline_parallel_degree": 2},
    "tp2pp2": {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2},
    "tp2split": {"tensor_parallel_degree": 2, "prescaled_batch": False},
}
MICROBATCHES = 2


class Checker:
    def __init__(self):
        self.failures, self.worst = [], 0.0

    def close(self, what, got, want, rtol):
        got, want = got.detach().double(), want.detach().double()
        if got.shape != want.shape:
            self.failures.append(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
            return
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item() if want.numel() else 0.0
        self.worst = max(self.worst, err)
        if not err <= rtol:
            self.failures.append(f"{what}: relative difference {err:.3g} > {rtol}")


def whole(p, grad=False):
    """A parameter (or its gradient) of this rank, whole over the TP group, in the module's shape."""
    t = p.grad if grad else p
    spec = getattr(p, "_smp_tp_shard", None)
    if spec is None or smp.tp_size() == 1:
        return t.detach()
    dim, size = spec
    parts = [torch.empty_like(t) for _ in range(smp.tp_size())]
    dist.all_gather(parts, t.detach().contiguous(), group=smp.get_tp_process_group())
    full = torch.cat(parts, dim).narrow(dim, 0, size)
    return full.reshape(getattr(p, "_smp_hf_shape", full.shape))


def reference_step(ref, opt, kw):
    """One step without smp: microbatches as smp.step cuts them, gradients averaged."""
    pieces = {k: v.chunk(MICROBATCHES) for k, v in kw.items()}
    losses, logits = [], []
    for k in range(MICROBATCHES):
        out = ref(**{name: v[k] for name, v in pieces.items()})
        (out.loss / MICROBATCHES).backward()
        losses.append(out.loss.detach())
        logits.append(out.logits.detach())
    return torch.stack(losses).mean(), torch.cat(logits)


@smp.step
def train_step(model, input_ids, attention_mask, labels, token_type_ids=None):
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)
    model.backward(out.loss)
    return out.loss, out.logits


def _blocks(module):
    """The transformer blocks (the ModuleList of the base model)."""
    base = module.base_model
    return base.encoder.layer if hasattr(base, "encoder") else getattr(base, "h", None) or base.layers


def check_tp_extras(c, name, model, ref):
    """SMP's tensor-parallel queries against what one process's model says: a parameter is
    distributed (split along get_distribution_axis) where this rank holds fewer elements than
    the whole; scaled batch (reduced over RDP_GROUP) where it sees the TP group's batch: every
    parameter with prescaled_batch, the blocks' (batch regions) and the slices' without, none
    without TP; state_dict(gather_to_rank0=True) gives the whole dict on mp_rank 0 only."""
    whole = dict(ref.named_parameters())
    blocks = _blocks(model.get_module())
    prefix = next(n for n, m in model.get_module().named_modules() if m is blocks) + "."
    local = dict(model.local_named_parameters())
    scaled = dict(model.scaled_batch_reducer_named_parameters())
    default = dict(model.default_reducer_named_parameters())
    if set(scaled) & set(default) or set(scaled) | set(default) != set(local):
        c.failures.append(f"{name}: the two reducers' parameters do not split the local ones")
    for n, p in local.items():
        sharded = p.numel() != whole[n].numel()
        axis = smp.utils.get_distribution_axis(p)
        if model.is_distributed_parameter(p) != sharded or (axis is not None) != sharded:
            c.failures.append(f"{name}: {n} distributed {model.is_distributed_parameter(p)}, axis {axis}")
        if smp.tp_size() == 1:
            expected = False
        else:
            expected = smp.state.cfg.prescaled_batch or sharded or n.startswith(prefix)
        if model.is_scaled_batch_parameter(p) != expected or (n in scaled) != expected:
            c.failures.append(f"{name}: {n} scaled batch {model.is_scaled_batch_parameter(p)}, expected {expected}")
    if (smp.tp_size() > 1) != any(True for _ in model.distributed_modules()):
        c.failures.append(f"{name}: distributed_modules() {list(model.distributed_modules())[:2]}")
    gathered = model.state_dict(gather_to_rank0=True)
    if (set(gathered) == set(ref.state_dict())) != (smp.mp_rank() == 0) or (smp.mp_rank() and gathered):
        c.failures.append(f"{name}: state_dict(gather_to_rank0=True) on mp_rank {smp.mp_rank()}: {len(gathered)}")


def family(name, a, c, folder):
    torch.manual_seed(0)
    ref = hf_families.make(name)
    torch.manual_seed(0)
    with smp.tensor_parallelism():
        module = hf_families.make(name)
    model = smp.DistributedModel(module)
    opt = smp.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    split = not smp.state.cfg.prescaled_batch  # this rank's part of the batch, by dp_rank
    per = hf_families.BATCH // smp.dp_size() if split else hf_families.BATCH
    mine = slice(smp.dp_rank() * per, (smp.dp_rank() + 1) * per) if split else slice(None)
    if split and not all(type(b).__name__.startswith("BatchRegion") for b in _blocks(model.get_module())):
        c.failures.append(f"{name}: its transformer blocks are not batch regions (sharded.batch_region)")
    for step in range(a.steps):
        kw = hf_families.batch(name, step)
        loss, logits = train_step(model, **{k: v[mine] for k, v in kw.items()})
        ref_loss, ref_logits = reference_step(ref, ref_opt, kw)
        loss = loss.reduce_mean()
        if split:  # this rank's samples' mean, averaged over the replicas
            dist.all_reduce(loss, group=smp.get_dp_process_group())
            loss = loss / smp.dp_size()
        c.close(f"{name} step {step} loss", loss, ref_loss, 1e-4)
        if step == 0:
            c.close(f"{name} logits", logits.concat(), ref_logits[mine], 1e-5)
            grads = dict(ref.named_parameters())
            held = 0
            for n, p in model.local_named_parameters():
                held += 1
                c.close(f"{name} gradient {n}", whole(p, grad=True), grads[n].grad, 1e-5)
            if not held:
                c.failures.append(f"{name}: this rank holds no parameters")
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()

    check_tp_extras(c, name, model, ref)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    want = ref.state_dict()
    for k, v in state.items():
        if k not in want:
            c.failures.append(f"{name} state_dict: '{k}' is not a transformers name")
        else:
            c.close(f"{name} state_dict {k}", v, want[k], 1e-4)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    model.load_state_dict(state)
    if not all(torch.equal(state[k], v) for k, v in model.state_dict().items()):
        c.failures.append(f"{name}: state_dict -> load_state_dict is not bit for bit")

    smp.save_checkpoint(folder, name, partial=False, model=model)
    # ... and back through resume_from_checkpoint(translate_function=...): the same weights.
    model.load_state_dict({k: torch.zeros_like(v) for k, v in state.items()})
    seen = []
    smp.resume_from_checkpoint(folder, tag=name, partial=False, load_optimizer=False,
                               translate_function=lambda sd: seen.append(sorted(sd)) or sd)
    if len(seen) != 1 or not seen[0] or not set(seen[0]) <= set(want):
        c.failures.append(f"{name}: translate_function saw {seen[:1]} (Hugging Face's names expected)")
    if not all(torch.equal(state[k], v) for k, v in model.state_dict().items()):
        c.failures.append(f"{name}: the full checkpoint loaded back differs")
    if smp.rank() == 0:
        loaded = type(ref).from_pretrained(os.path.join(folder, name)).eval()
        kw = hf_families.batch(name, 99)
        with torch.no_grad():
            c.close(f"{name} from_pretrained logits", loaded(**kw).logits, ref.eval()(**kw).logits, 1e-4)
    print(f"rank {smp.rank()} {name} {a.layout}: loss {loss.item():.5f} vs {ref_loss.item():.5f}",
          flush=True)
    smp.state.model, smp.state.optimizer = None, None  # the next family is another script's model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    p.add_argument("--families", default=",".join(hf_families.FAMILIES))
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(1)
    smp.init({"microbatches": MICROBATCHES, "ddp": True, "prescaled_batch": True, **LAYOUTS[a.layout]})
    c = Checker()
    with tempfile.TemporaryDirectory() as tmp:
        if smp.rank() == 0:
            smp.broadcast(tmp, smp.WORLD)
        folder = tmp if smp.rank() == 0 else smp.recv_from(0, smp.RankType.WORLD_RANK)
        for name in a.families.split(","):
            family(name, a, c, folder)
        smp.barrier()
    for f in c.failures:
        print(f"rank {smp.rank()} FAIL {f}", flush=True)
    print(f"rank {smp.rank()} {a.layout}: worst relative difference {c.worst:.3g}", flush=True)
    sys.exit(1 if c.failures else 0)


if __name__ == "__main__":
    main()

"""Runs under mpirun (pp2 on 2 ranks, or 1 rank): StepOutput semantics, an LR scheduler over
DistributedOptimizer, and both checkpoint families' round trips. Prints "OK <check>" per check
on every rank; any failure raises.

  mpirun -np 2 python tests/python/api_worker.py --dir /tmp/x --phase train
  mpirun -np 2 python tests/python/api_worker.py --dir /tmp/x --phase resume   (a fresh process)
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

import smp.torch as smp  # noqa: E402


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name} failed {detail}")
    print(f"OK {name} rank {smp.rank()}", flush=True)


def build():
    torch.manual_seed(0)
    model = smp.DistributedModel(models.TinyGPT())
    opt = smp.DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


@smp.step
def train_step(model, ids, labels):
    logits = model(ids)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
    model.backward(loss)
    return {"loss": loss, "logits": logits, "count": ids.size(0)}, (loss * 2,)


def one_step(model, opt, sched, step):
    ids, labels = models.gpt_batch(step, 8)
    out, (doubled,) = train_step(model, ids, labels)
    opt.step()
    opt.zero_grad()
    sched.step()
    return out, doubled


def check_step_outputs(model, opt, sched):
    out, doubled = one_step(model, opt, sched, 0)
    m = smp.state.cfg["microbatches"]
    loss = out["loss"]
    check("step_output_type", isinstance(loss, smp.StepOutput) and len(loss.outputs) == m)
    check("reduce_mean", torch.allclose(loss.reduce_mean(), torch.stack(loss.outputs).mean()))
    check("reduce_sum", torch.allclose(doubled.reduce_sum(), 2 * torch.stack(loss.outputs).sum()))
    check("concat", tuple(out["logits"].concat().shape) == (8, 16, 64))
    check("stack", tuple(out["logits"].stack().shape) == (m, 8 // m, 16, 64))
    check("non_tensor_per_microbatch", out["count"] == [8 // m] * m, str(out["count"]))
    check("detached", not loss.outputs[0].requires_grad)


def check_scheduler(opt):
    lrs = [g["lr"] for g in opt.param_groups]
    check("scheduler_acts", abs(lrs[0] - 1.5e-3) < 1e-15, str(lrs))  # three StepLR(2, 0.5) steps


def losses(model, opt, sched, steps):
    out = []
    for s in steps:
        o, _ = one_step(model, opt, sched, s)
        out.append(o["loss"].reduce_mean().item())
    return out


def phase_train(d):
    model, opt, sched = build()
    check_step_outputs(model, opt, sched)
    losses(model, opt, sched, [1, 2])
    check_scheduler(opt)
    # (b) the engine's checkpoints: save, go on, resume, go on again: the same losses.
    smp.save_checkpoint(d, tag="step3", partial=True, model=model, optimizer=opt,
                        user_content={"step": 3, "sched": sched.state_dict()})
    smp.save_checkpoint(d, tag="full3", partial=False, model=model, user_content=None)
    after = losses(model, opt, sched, [3, 4])
    if smp.rank() == 0:
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(after, f)
    content = smp.resume_from_checkpoint(d, tag="step3", partial=True)
    sched.load_state_dict(content["sched"])
    again = losses(model, opt, sched, [3, 4])
    check("save_checkpoint_round_trip", max(abs(a - b) for a, b in zip(after, again)) < 1e-6, f"{after} {again}")
    # (a) smp.save / smp.load of the local state dicts.
    path = os.path.join(d, "local.pt")
    smp.save({"model": model.local_state_dict(), "opt": opt.local_state_dict(), "sched": sched.state_dict()},
             path, partial=True)
    after = losses(model, opt, sched, [5, 6])
    state = smp.load(path, partial=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    again = losses(model, opt, sched, [5, 6])
    check("smp_save_round_trip", max(abs(a - b) for a, b in zip(after, again)) < 1e-6, f"{after} {again}")
    # A full state dict gathered over the pipeline holds every parameter, by the module's names.
    full = model.state_dict()
    check("full_state_dict", set(full) == set(models.TinyGPT().state_dict()), str(sorted(full)[:4]))


def phase_resume(d):
    """A fresh process: resume before the first step (deferred to partitioning), then train:
    the losses equal the uninterrupted run's (phase_train wrote them)."""
    model, opt, sched = build()
    content = smp.resume_from_checkpoint(d, tag="step3", partial=True)
    check("user_content", content["step"] == 3, str(content))
    sched.load_state_dict(content["sched"])
    got = losses(model, opt, sched, [3, 4])
    with open(os.path.join(d, "expected.json")) as f:
        expected = json.load(f)
    check("resume_before_first_step", max(abs(a - b) for a, b in zip(got, expected)) < 1e-6, f"{got} {expected}")


class Traced(torch.nn.Module):
    """A block with a running-statistics buffer whose forward records smp.is_tracing()."""

    def __init__(self, width, seen):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))
        self.seen = seen

    def forward(self, x):
        self.seen.append(smp.is_tracing())
        return x + self.mlp(self.norm(x))


class Checkpointed(torch.nn.Module):
    """Blocks called through SMP's patches.checkpoint.checkpoint, then a head."""

    def __init__(self, seen, through=True):
        super().__init__()
        self.through = through  # False: the blocks called directly (the reference)
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(Traced(8, seen) for _ in range(4))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks:
            x = smp.patches.checkpoint.checkpoint(block, x) if self.through else block(x)
        return self.head(x)


def phase_extras(d):
    """DistributedModel's local_named_modules / local_named_buffers, smp.is_tracing and
    patches.checkpoint on pp2, against the same model and data in this process alone."""
    seen = []
    module = Checkpointed(seen)
    model = smp.DistributedModel(module)
    opt = smp.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    ref_seen = []
    ref = Checkpointed(ref_seen, through=False)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)

    @smp.step
    def step(model, x, y):
        loss = F.cross_entropy(model(x), y)
        model.backward(loss)
        return loss

    check("is_tracing_outside", not smp.is_tracing())
    m = smp.state.cfg["microbatches"]
    for s in range(3):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = step(model, x, y).reduce_mean()
        opt.step()
        opt.zero_grad()
        ref_loss = sum(F.cross_entropy(ref(xm), ym) for xm, ym in zip(x.chunk(m), y.chunk(m))) / m
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        check(f"checkpointed_loss_{s}", abs(loss.item() - ref_loss.item()) < 1e-5, f"{loss.item()} {ref_loss.item()}")
    # The forward's Python ran only while captured (the pipeline runs the captured graphs).
    check("is_tracing_inside", seen and all(seen), str(seen))
    check("checkpoint_marks", all(getattr(b, "_smp_checkpointing", None) for b in module.blocks))
    # Local modules and buffers: this rank's pipeline stage. Each holds some blocks; together
    # they hold every module and buffer once (the root and parameterless modules with parents).
    names = dict(model.local_named_modules())
    buffers = dict(model.local_named_buffers())
    params = dict(model.local_named_parameters())
    held = {**params, **buffers}
    full = lambda n, k: f"{n}.{k}" if n else k  # noqa: E731
    check("local_modules_hold_local_tensors",
          all(not n or not mod.state_dict() or any(full(n, k) in held for k in mod.state_dict())
              for n, mod in names.items()), str(sorted(names)))
    check("local_buffers_of_local_modules", all(n.rsplit(".", 1)[0] in names for n in buffers), str(sorted(buffers)))
    for name, b in buffers.items():  # this rank's running statistics are the reference's
        check(f"buffer_{name}", torch.allclose(b, ref.state_dict()[name], atol=1e-5))
    every = smp.allgather((sorted(names), sorted(buffers)), smp.PP_GROUP)
    all_modules = [n for n, _ in module.named_modules()]
    check("local_modules_cover", sorted({n for mods, _ in every for n in mods}) == sorted(all_modules))
    check("local_modules_split", smp.pp_size() == 1 or all(len(mods) < len(all_modules) for mods, _ in every),
          str(every))
    check("local_buffers_once", sorted(n for _, bufs in every for n in bufs) == sorted(n for n, _ in module.named_buffers()))


def hf_run(checkpointing):
    """Two steps of a small GPT-2 (transformers) on pp2; the losses and, per step, the units the
    engine ran (a recomputed unit runs twice per microbatch)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=64, n_positions=16, use_cache=False)
    torch.manual_seed(0)
    module = GPT2LMHeadModel(cfg)
    if checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = smp.DistributedModel(module)
    runs = []
    forward_unit = model._forward_unit  # (the engine's layers call it, bound at partitioning)
    model._forward_unit = lambda i, values: runs.append(model._split.units[i].name) or forward_unit(i, values)
    opt = smp.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))

    @smp.step
    def step(model, ids):
        loss = model(input_ids=ids, labels=ids)["loss"]
        model.backward(loss)
        return loss

    losses = []
    for s in range(2):
        runs.clear()
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(s))
        losses.append(step(model, ids).reduce_mean().item())
        opt.step()
        opt.zero_grad()
    smp.state.model, smp.state.optimizer = None, None  # the next run is another script's model
    return losses, list(runs)


def phase_hf_checkpointing(d):
    """Hugging Face's gradient_checkpointing_enable() becomes the engine's recompute of each
    transformer block (the second step runs each local block twice per microbatch, the other
    units once), with the losses of the run without it."""
    plain, plain_runs = hf_run(False)
    checked, runs = hf_run(True)
    m = smp.state.cfg["microbatches"]
    blocks = sorted({n for n in runs if n.startswith("transformer.h.")})
    check("hf_blocks_local", len(blocks) == 2, str(blocks))
    check("hf_blocks_recomputed", all(runs.count(b) == 2 * m for b in blocks), str(runs))
    check("hf_others_once", all(runs.count(n) == m for n in set(runs) - set(blocks)), str(runs))
    check("hf_plain_once", all(plain_runs.count(n) == m for n in set(plain_runs)), str(plain_runs))
    check("hf_checkpointing_losses", max(abs(a - b) for a, b in zip(plain, checked)) < 1e-6, f"{plain} {checked}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--phase", choices=["train", "resume", "extras", "hf_checkpointing"], required=True)
    p.add_argument("--pp", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    smp.init({"pipeline_parallel_degree": a.pp, "microbatches": 2, "ddp": True})
    phases = {"train": phase_train, "resume": phase_resume, "extras": phase_extras,
              "hf_checkpointing": phase_hf_checkpointing}
    phases[a.phase](a.dir)


if __name__ == "__main__":
    main()

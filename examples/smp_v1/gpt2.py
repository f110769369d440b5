"""A GPT-2 pre-training script written against SMP v1's PyTorch API, run on smp.

It makes the SMP calls of SMP's GPT-2 example (amazon-sagemaker-examples
``model_parallel/gpt2/train_gpt_simple.py`` with its data pipeline and learning-rate
schedule) the way that script makes them:

- ``smp.init(config)`` with a dict built from the command line (``SM_HP_MP_PARAMETERS``, as
  SageMaker sets it, overrides it key by key);
- Hugging Face's ``GPT2LMHeadModel`` wrapped in ``smp.DistributedModel``; with
  ``--manual-partition``, ``smp.set_partition`` places the transformer blocks (config
  ``auto_partition: false, default_partition: 0``); ``--activation-checkpointing`` calls
  ``smp.set_activation_checkpointing`` on each block;
- AdamW over weight-decay groups built from ``model.get_module()``, wrapped in
  ``smp.DistributedOptimizer``, and an AnnealingLR-like warm-up/cosine schedule that writes
  ``group["lr"]`` into ``optimizer.param_groups``;
- a data pipeline that builds the real loader only on ``smp.pp_rank() == 0`` and tells the
  other pipeline ranks how many batches to expect (``smp.broadcast`` / ``smp.recv_from``); they
  feed the step placeholder batches of empty tensors (smp runs the model's input from pipeline
  rank 0);
- ``@smp.step`` training with ``model.backward(loss)``; the loss averaged over the replicas with
  ``torch.distributed.all_reduce(..., group=smp.get_dp_process_group())``;
- SMP's second checkpoint family: ``smp.save_checkpoint(..., partial=True, user_content=...,
  num_kept_partial_checkpoints=...)`` every ``--checkpoint-freq`` steps and
  ``smp.resume_from_checkpoint`` (``tag=None``: the newest) with ``--resume``; a full model
  with ``partial=False`` at the end with ``--model-dir``.

- the model built under ``smp.model_creation(tensor_parallelism=smp.tp_size() > 1, dtype=...)``
  (SMP's script's call): under tensor parallelism (``tensor_parallel_degree`` > 1)
  smp.DistributedModel splits its attention by heads, its MLP by features and its embedding
  and head by vocabulary; ``model.state_dict()`` and the full checkpoint keep Hugging Face's
  names and shapes.

With ``--smp-nn`` the model is ``smp.nn.DistributedTransformerLMHead`` instead (GPT-2's sizes
and layout, see ``build_smp_nn_model``), called as SMP's GPT-2 example called its smp.nn model,
``model((input_ids, attention_mask, None, None, labels))[0]`` with next-token labels built by
the script; this path runs under tensor parallelism (``tensor_parallel_degree`` > 1).

Not here because smp does not have them yet: fp16/bf16.

The data are synthetic token ids (seeded), sharded as SMP's scripts shard them: over
``smp.dp_rank()`` / ``smp.dp_size()`` (SMP's default flow, ``prescaled_batch`` false: the ranks
of a TP group take different samples, and each tensor-parallel block gathers the group's batch
and gives each rank its own samples back), or over ``smp.rdp_rank()`` / ``smp.rdp_size()`` when
the config has ``prescaled_batch: true`` (the ranks of a TP group see the same batch);
``--batch-size`` is per (reduced-)data-parallel replica.

  SM_HP_MP_PARAMETERS='{"partitions": 2, "microbatches": 2, "ddp": true}' \\
    mpirun -np 4 python examples/smp_v1/gpt2.py --pipeline-parallel-degree 2 --steps 20
  SM_HP_MP_PARAMETERS='{"tensor_parallel_degree": 2, "prescaled_batch": true, "microbatches": 2, "ddp": true}' \\
    mpirun -np 2 python examples/smp_v1/gpt2.py --smp-nn --steps 20
  SM_HP_MP_PARAMETERS='{"tensor_parallel_degree": 2, "microbatches": 2, "ddp": true}' \\
    mpirun -np 2 python examples/smp_v1/gpt2.py --steps 20
  SM_HP_MP_PARAMETERS='{"tensor_parallel_degree": 2, "partitions": 2, "prescaled_batch": true, "microbatches": 2, "ddp": true}' \\
    mpirun -np 4 python examples/smp_v1/gpt2.py --steps 20
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from transformers import GPT2Config, GPT2LMHeadModel

import smp.torch as smp


# --- data: the real loader on pipeline rank 0, placeholders elsewhere ------------------------


class SyntheticTokens(Dataset):
    """Seeded token ids and attention masks (each sequence keeps a random prefix)."""

    def __init__(self, num_sequences, seq_len, vocab_size, seed):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (num_sequences, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (num_sequences,), generator=g)
        self.attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, index):
        return self.input_ids[index], self.attention_mask[index]


class DummyDataset(Dataset):
    """What the pipeline ranks other than 0 iterate: empty tensors, as many batches as rank 0 has."""

    def __init__(self, length):
        self.length = length
        self.batch = (torch.Tensor(0), torch.Tensor(0))

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.batch


def create_pretraining_dataloader(args, dp_rank, dp_size):
    if smp.pp_rank() == 0:
        data = SyntheticTokens(args.num_sequences, args.seq_len, args.vocab_size, args.seed)
        sampler = DistributedSampler(data, shuffle=True, seed=args.seed, rank=dp_rank, num_replicas=dp_size,
                                     drop_last=True)
        loader = DataLoader(data, sampler=sampler, batch_size=args.batch_size, drop_last=True)
        smp.broadcast(len(loader), smp.PP_GROUP)
    else:
        data_len = smp.recv_from(0, smp.RankType.PP_RANK)
        sampler = None
        loader = DataLoader(DummyDataset(data_len * args.batch_size), batch_size=args.batch_size, drop_last=True)
    return loader, sampler


# --- learning rate: warm-up, then cosine decay (written into optimizer.param_groups) ----------


class AnnealingLR:
    def __init__(self, optimizer, start_lr, warmup_iter, total_iters, min_lr=0.0, last_iter=0):
        self.optimizer = optimizer
        self.start_lr = start_lr
        self.warmup_iter = warmup_iter
        self.total_iters = total_iters
        self.min_lr = min_lr
        self.num_iters = last_iter
        self.step(self.num_iters)

    def get_lr(self):
        if self.warmup_iter > 0 and self.num_iters <= self.warmup_iter:
            return self.start_lr * self.num_iters / self.warmup_iter
        progress = min(1.0, (self.num_iters - self.warmup_iter) / max(1, self.total_iters - self.warmup_iter))
        return self.min_lr + (self.start_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step(self, step_num=None):
        self.num_iters = self.num_iters + 1 if step_num is None else step_num
        new_lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr

    def state_dict(self):
        return {"start_lr": self.start_lr, "warmup_iter": self.warmup_iter, "total_iters": self.total_iters,
                "min_lr": self.min_lr, "num_iters": self.num_iters}

    def load_state_dict(self, sd):
        self.start_lr, self.warmup_iter = sd["start_lr"], sd["warmup_iter"]
        self.total_iters, self.min_lr = sd["total_iters"], sd["min_lr"]
        self.step(sd["num_iters"])


# --- the model and optimizer ------------------------------------------------------------------


def model_config_dict(model_config):
    return model_config if isinstance(model_config, dict) else model_config.to_dict()


def build_smp_nn_model(args):
    """GPT-2 out of smp.nn: DistributedTransformerLMHead with the Hugging Face config's sizes.

    GPT-2 is pre-LN with a final LayerNorm (ln_f): smp.nn's DistributedTransformer adds its
    final_layernorm only with pre_layernorm and post_layernorm both set (each layer then
    normalises its input only), so both are True. Weights N(0, 0.02) and zero biases
    (use_normal_initialization) as GPT-2 draws them (without GPT-2's 1/sqrt(2 * n_layer) on
    the residual projections); the LM head tied to the word embedding as in GPT-2; no token
    types (GPT-2 reuses wte for them). GPT-2's gelu_new is the tanh approximation:
    ``gelu_tanh`` (an smp extension; SMP's documented choices are "gelu" and "relu")."""
    model_config = dict(
        num_layers=args.num_layers, num_attention_heads=args.num_heads,
        attention_head_size=args.hidden_width // args.num_heads, hidden_size=args.hidden_width,
        intermediate_size=4 * args.hidden_width, attention_dropout_prob=args.dropout,
        hidden_dropout_prob=args.dropout, activation="gelu_tanh", layernorm_epsilon=1e-05,
        initializer_range=0.02, use_normal_initialization=True, causal_mask_size=args.max_context_width,
        pre_layernorm=True, post_layernorm=True, vocab_size=args.vocab_size,
        num_positions=args.max_context_width, num_token_types=0, add_lm_head=True)
    torch.manual_seed(args.seed)  # every rank draws the whole tensors and keeps its slices
    return smp.nn.DistributedTransformerLMHead(**model_config), model_config


def whole_numel(param):
    """The parameter's size in the whole model: an smp.nn shard carries ``_smp_tp_shard = (dim,
    whole size)``."""
    spec = getattr(param, "_smp_tp_shard", None)
    if spec is None:
        return param.numel()
    dim, size = spec
    return param.numel() // param.shape[dim] * size


def get_param_groups_by_weight_decay(module):
    """No weight decay on biases and layer norms (each tied parameter once)."""
    decay, no_decay, seen = [], [], set()
    for module_ in module.modules():
        for name, param in module_._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module_, (nn.LayerNorm, smp.nn.FusedLayerNorm)) or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@smp.step
def train_step(model, input_ids, attention_mask):
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)["loss"]
    model.backward(loss)
    return loss


def next_token_labels(input_ids):
    """DistributedTransformerLMHead takes the target of each position (it does not shift): the
    next token, and -100 (ignored) at the last position. Padded positions keep their targets,
    as the Hugging Face path's ``labels=input_ids`` does (the same token count in every batch)."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


@smp.step
def train_step_smp_nn(model, input_ids, attention_mask):
    labels = next_token_labels(input_ids)
    loss = model((input_ids, attention_mask, None, None, labels))[0]
    model.backward(loss)
    return loss


def save(args, model, optimizer, lr_scheduler, model_config, num_params, total_steps):
    user_content = {
        "cli_args": vars(args),
        "num_params": num_params,
        "total_steps": total_steps,
        "model_config": model_config_dict(model_config),
        "lr_scheduler": lr_scheduler.state_dict(),
    }
    smp.save_checkpoint(args.save_dir, tag=f"total_steps{total_steps}", partial=True, model=model,
                        optimizer=optimizer, user_content=user_content,
                        num_kept_partial_checkpoints=args.num_kept_checkpoints)
    if smp.rank() == 0:
        print(f"Saved a partial checkpoint at step {total_steps} in {args.save_dir}", flush=True)


def train(args, model, optimizer, lr_scheduler, model_config, num_params, total_steps):
    """Trains from global step total_steps up to args.steps; returns the steps' losses."""
    if smp.state.cfg.prescaled_batch:  # TP peers share a batch: sample by the reduced-data-parallel rank
        dp_rank, dp_size = smp.rdp_rank(), smp.rdp_size()
    else:
        dp_rank, dp_size = smp.dp_rank(), smp.dp_size()
    loader, sampler = create_pretraining_dataloader(args, dp_rank, dp_size)
    steps_per_epoch = len(loader)
    model.train()
    losses = []
    while total_steps < args.steps:
        epoch = total_steps // steps_per_epoch
        start_batch_index = total_steps - epoch * steps_per_epoch  # > 0 when resumed inside an epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch_idx, (input_ids, attention_mask) in enumerate(loader):
            if batch_idx < start_batch_index:
                continue
            start = time.time()
            optimizer.zero_grad(set_to_none=True)
            loss_mb = (train_step_smp_nn if args.smp_nn else train_step)(model, input_ids, attention_mask)
            loss = loss_mb.reduce_mean()
            optimizer.step()
            lr_scheduler.step()
            total_steps += 1

            torch.distributed.all_reduce(loss, group=smp.get_dp_process_group())
            loss = loss.item() / smp.dp_size()
            losses.append(loss)
            if smp.rank() == 0 and total_steps % args.logging_freq == 0:
                print(f"({total_steps}) loss: {loss:.6f}, lr: {optimizer.param_groups[0]['lr']:.6f}, "
                      f"step time {time.time() - start:.3f} s", flush=True)
            if args.save_dir and args.checkpoint_freq and total_steps % args.checkpoint_freq == 0:
                save(args, model, optimizer, lr_scheduler, model_config, num_params, total_steps)
            if total_steps >= args.steps:
                break
    return losses, total_steps


def main():
    parser = argparse.ArgumentParser(description="GPT-2 pre-training on smp (SMP v1's API)")
    parser.add_argument("--steps", type=int, default=20, help="train up to this global step")
    parser.add_argument("--batch-size", type=int, default=8, help="per data-parallel replica")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--num-sequences", type=int, default=64, help="size of the synthetic data set")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-width", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--max-context-width", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0, help="resid, embd and attn dropout")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--lr-decay-iters", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--logging-freq", type=int, default=1)
    # SMP's configuration (SM_HP_MP_PARAMETERS overrides these)
    parser.add_argument("--pipeline-parallel-degree", type=int, default=1)
    parser.add_argument("--tensor-parallel-degree", type=int, default=1)
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--prescaled-batch", type=int, default=0)
    parser.add_argument("--manual-partition", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--smp-nn", action="store_true",
                        help="the model is smp.nn.DistributedTransformerLMHead (tensor parallelism)")
    # checkpoints
    parser.add_argument("--save-dir", default="", help="partial checkpoints go here (and --resume reads here)")
    parser.add_argument("--checkpoint-freq", type=int, default=0)
    parser.add_argument("--num-kept-checkpoints", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in --save-dir")
    parser.add_argument("--model-dir", default="", help="the full model is saved here at the end")
    parser.add_argument("--out", default="", help="rank 0 writes the losses here (JSON)")
    args = parser.parse_args()

    smp_config = {
        "ddp": True,
        "pipeline_parallel_degree": args.pipeline_parallel_degree,
        "tensor_parallel_degree": args.tensor_parallel_degree,
        "microbatches": args.microbatches,
        "prescaled_batch": args.prescaled_batch > 0,
        "auto_partition": not args.manual_partition,
    }
    if args.manual_partition:
        smp_config["default_partition"] = 0
    # any value here is overridden by SM_HP_MP_PARAMETERS (the config set in the estimator)
    smp.init(smp_config)

    if smp.rank() == 0:
        print(f"smp {smp.__version__}: {smp.size()} ranks, pp {smp.pp_size()}, tp {smp.tp_size()}, "
              f"dp {smp.dp_size()} (rdp {smp.rdp_size()}), microbatches {smp.state.cfg.microbatches}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.set_device(smp.local_rank())
    if args.smp_nn:
        model, model_config = build_smp_nn_model(args)
    else:
        model_config = GPT2Config(
            vocab_size=args.vocab_size, n_positions=args.max_context_width, n_embd=args.hidden_width,
            n_layer=args.num_layers, n_head=args.num_heads, n_inner=None, activation_function="gelu_new",
            resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout, layer_norm_epsilon=1e-05,
            initializer_range=0.02, use_cache=False, return_dict=True)
        torch.manual_seed(args.seed)
        with smp.model_creation(tensor_parallelism=smp.tp_size() > 1, dtype=torch.float32):
            model = GPT2LMHeadModel(model_config)
    num_params = sum(whole_numel(p) for p in model.parameters())
    if smp.rank() == 0:
        print(f"# total parameters: {num_params}", flush=True)

    # smp moves the parameters where they belong: the model is not moved by the script.
    model = smp.DistributedModel(model, trace_device="gpu", backward_passes_per_step=1)
    m = model.get_module()
    if args.smp_nn:
        transformer_layers, after_blocks = m.transformer.seq_layers, [m.transformer.final_layernorm, m.lm_head]
    else:
        transformer_layers, after_blocks = m.transformer.h, [m.transformer.ln_f, m.lm_head]

    if args.manual_partition:
        # evenly distribute the blocks over the pipeline stages (later stages take the remainder)
        div, rem = divmod(args.num_layers, smp.pp_size())
        get_num_layers = lambda x: (div + 1 if x >= smp.pp_size() - rem else div)  # noqa: E731
        assignments = []
        for pp_rank in range(smp.pp_size()):
            assignments += [pp_rank] * get_num_layers(pp_rank)
        for i, c in enumerate(transformer_layers.children()):
            smp.set_partition(c, assignments[i])
        # smp's stages are contiguous runs of the model's modules in call order: what follows the
        # last block goes on the last stage (SMP itself would run it back on default_partition 0).
        for module in after_blocks:
            smp.set_partition(module, smp.pp_size() - 1)
        if smp.rank() == 0:
            print(f"manual partition of the blocks: {assignments}", flush=True)
    if args.activation_checkpointing:
        for c in transformer_layers.children():
            smp.set_activation_checkpointing(c)

    optimizer = torch.optim.AdamW(get_param_groups_by_weight_decay(m), betas=(args.beta1, args.beta2), lr=args.lr,
                                  weight_decay=args.weight_decay)
    optimizer = smp.DistributedOptimizer(optimizer, static_loss_scale=None, dynamic_loss_scale=True,
                                     dynamic_loss_args={"scale_window": 1000, "min_scale": 1, "delayed_shift": 2})
    lr_scheduler = AnnealingLR(optimizer, start_lr=args.lr, warmup_iter=args.warmup_steps,
                               total_iters=args.lr_decay_iters, min_lr=args.min_lr)

    total_steps = 0
    if args.resume:
        # applied once the model is partitioned (at the first step); the user content comes back now
        user_content = smp.resume_from_checkpoint(args.save_dir, tag=None, partial=True)
        total_steps = user_content["total_steps"]
        lr_scheduler.load_state_dict(user_content["lr_scheduler"])
        if smp.rank() == 0:
            print(f"Resumed from {args.save_dir} at step {total_steps}", flush=True)

    losses, total_steps = train(args, model, optimizer, lr_scheduler, model_config, num_params, total_steps)

    if args.model_dir:
        user_content = {"cli_args": vars(args), "num_params": num_params, "total_steps": total_steps,
                        "model_config": model_config_dict(model_config)}
        smp.save_checkpoint(args.model_dir, tag="fullmodel.pt", partial=False, model=model,
                            user_content=user_content)

    if smp.rank() == 0:  # one writer (every TP peer of rank 0 holds the same losses)
        print(f"Done: {len(losses)} steps", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"losses": losses, "start_step": total_steps - len(losses)}, f)
    smp.barrier()


if __name__ == "__main__":
    main()

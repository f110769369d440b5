"""The peer of bench/activation_checkpointing.sh: Hugging Face transformers' GPT2LMHeadModel with
the same shape, forward and backward per step, with or without gradient checkpointing
(model.gradient_checkpointing_enable(): torch.utils.checkpoint around each block). Gradients
are allocated before the steps, as smp's flat buffer is. Prints
RESULT_HF activation_mb=<peak RSS during the steps minus RSS before them> step_s=<median>."""
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    checkpointing, hidden, layers, heads, seq, batch, steps = sys.argv[1:8]
    hidden, layers, heads, seq, batch, steps = map(int, (hidden, layers, heads, seq, batch, steps))
    torch.set_num_threads(1)
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=257, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=heads,
                        n_inner=4 * hidden, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    model.train()
    if checkpointing == "each":
        model.gradient_checkpointing_enable()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    tokens = torch.randint(0, 257, (batch, seq + 1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    before = status_mb("VmRSS")
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 257), y.reshape(-1))
        loss.backward()
        seconds.append(time.perf_counter() - start)
        for p in model.parameters():
            p.grad.zero_()
    peak = status_mb("VmHWM")
    seconds = sorted(seconds[1:])
    print(f"RESULT_HF activation_mb={peak - before:.1f} step_s={seconds[len(seconds) // 2]:.4f}")


if __name__ == "__main__":
    main()

"""bench/train.sh's Python peer: Hugging Face transformers training the same GPT-2
configuration (GPT2LMHeadModel) with the same batch, sequence length, optimizer and clipping on
random byte-level tokens, one process. Prints RESULT_HF tokens_per_s=<x>."""
import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    run = json.load(open(sys.argv[1]))
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(threads)
    m, t = run["model"], run["training"]
    config = GPT2Config(vocab_size=m.get("vocab_size", 257), n_positions=m["max_seq_len"],
                        n_embd=m["hidden"], n_layer=m["num_layers"], n_head=m["num_heads"],
                        n_inner=m.get("ffn_hidden", 4 * m["hidden"]), resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(t.get("seed", 1234))
    device = t.get("device", "cpu")
    model = GPT2LMHeadModel(config).to(device)
    model.train()
    # bf16 on a GPU: autocast, as a Hugging Face user would train (fp32 weights and optimizer).
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=device == "cuda" and t.get("precision") == "bf16")
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=(t.get("beta1", 0.9), t.get("beta2", 0.95)),
                            weight_decay=t.get("weight_decay", 0.1))
    batch, seq, steps = t["global_batch"], t["seq_len"], t["steps"]
    start = None
    for step in range(steps):
        if step == 1:
            start = time.perf_counter()
        x = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
        with autocast:
            out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda" and step == 0:
            torch.cuda.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"RESULT_HF tokens_per_s={batch * seq * (steps - 1) / seconds:.1f}")


if __name__ == "__main__":
    main()

# Hugging Face transformers as the reference for hf_parity_test (run on CPU by the test).
#
#   hf_reference.py make <dir> <gpt2|llama>
#       A random-init GPT2LMHeadModel or LlamaForCausalLM with a tiny config (seeded), saved
#       with save_pretrained(safe_serialization=True) into <dir>/hf, and its logits on seeded
#       token ids written to <dir>/reference.safetensors as {"tokens": (B, S) int64,
#       "logits": (B, S, V) float32}.
#   hf_reference.py check <model_dir> <reference.safetensors>
#       Loads <model_dir> (written by smp's save_hf) with from_pretrained, strictly (no missing,
#       unexpected or mismatched tensors), and compares its logits on the reference's tokens
#       with the reference's: max abs error <= 1e-4 * max abs logit. Exits non-zero otherwise.
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

REL_TOL = 1e-4
VOCAB = 51  # odd: smp pads the vocabulary on tp = 2
BATCH, SEQ = 2, 16


def build(family):
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                            n_inner=None, activation_function="gelu_new", resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)
        return GPT2LMHeadModel(config)
    if family == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                             tie_word_embeddings=False)
        return LlamaForCausalLM(config)
    sys.exit(f"family {family!r}: allowed gpt2, llama")


def logits_of(model, tokens):
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float().contiguous()


def make(out_dir, family):
    torch.manual_seed(1234)
    model = build(family)
    # Init leaves biases at 0 and norm weights at 1; perturb every parameter so that a biases'
    # or a norm's mapping is tested too (a tied head is one parameter, perturbed once).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(f"{out_dir}/hf", safe_serialization=True)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), dtype=torch.int64)
    save_file({"tokens": tokens, "logits": logits_of(model, tokens)},
              f"{out_dir}/reference.safetensors")


def check(model_dir, reference):
    ref = load_file(reference)
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True,
                                                       attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        sys.exit(f"from_pretrained({model_dir}): {info}")
    got = logits_of(model, ref["tokens"])
    want = ref["logits"]
    if got.shape != want.shape:
        sys.exit(f"logits shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    if err > REL_TOL * scale:
        sys.exit(f"{type(model).__name__} from {model_dir}: max abs error {err} > {REL_TOL} * {scale}")
    print(f"{type(model).__name__} from {model_dir}: logits match (max abs error {err:.3g}, "
          f"max abs logit {scale:.3g})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: hf_reference.py make <dir> <gpt2|llama> | check <model_dir> <reference>")

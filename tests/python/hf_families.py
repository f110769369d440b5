"""Tiny transformers models of every family smp translates (random init, nothing downloaded),
and their deterministic batches. Dropout off, so one process and any layout compute the same."""

import torch

VOCAB, SEQ, BATCH = 96, 16, 4

FAMILIES = ("gpt2", "gptneo", "gptj", "gptneox", "llama", "bert", "bert-cls", "roberta")


def make(name):
    import transformers as tf

    tf.logging.set_verbosity_error()
    if name == "gpt2":  # a vocabulary that does not divide by tp: padded
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB + 5, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, use_cache=False))
    if name == "gptneo":  # local attention in the second layer
        return tf.GPTNeoForCausalLM(tf.GPTNeoConfig(
            vocab_size=VOCAB, max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
            attention_types=[[["global", "local"], 1]], window_size=8, embed_dropout=0, attention_dropout=0,
            resid_dropout=0, use_cache=False))
    if name == "gptj":  # partial rotary, parallel attention and MLP, untied head with a bias
        return tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                rotary_dim=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                                use_cache=False))
    if name == "gptneox":  # parallel residual, fused per-head QKV, partial rotary
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, rotary_pct=0.5, hidden_dropout=0, attention_dropout=0, use_cache=False))
    if name == "llama":  # grouped-query attention, SwiGLU, RMSNorm
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, use_cache=False))
    bert = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(**bert))
    if name == "bert-cls":
        return tf.BertForSequenceClassification(tf.BertConfig(num_labels=3, **bert))
    if name == "roberta":
        return tf.RobertaForMaskedLM(tf.RobertaConfig(pad_token_id=1, **bert))
    raise ValueError(f"unknown family {name!r}; allowed: {', '.join(FAMILIES)}")


def batch(name, step, size=BATCH):
    """keyword arguments of one step's call: ids, a padding mask, labels (token_type_ids too for BERT)."""
    g = torch.Generator().manual_seed(5000 + step)
    ids = torch.randint(2, VOCAB, (size, SEQ), generator=g)
    mask = torch.ones(size, SEQ, dtype=torch.long)
    mask[1::2, -3:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if name.startswith("bert"):
        out["token_type_ids"] = (torch.arange(SEQ) >= SEQ // 2).long().expand(size, SEQ).contiguous()
    out["labels"] = torch.randint(0, 3, (size,), generator=g) if name == "bert-cls" else ids.clone()
    return out

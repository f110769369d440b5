"""Hugging Face translations: how each supported transformers class is made tensor-parallel.

A translation is a ``Plan`` for one transformers class: which of its direct children become
column-parallel, row-parallel, vocabulary-split embeddings or vocabulary heads (nn/sharded.py),
and which of its attributes count heads or widths that its forward reads (divided by tp). The
module keeps its own forward: rotary embeddings, parallel residuals, local attention,
bidirectional attention with token types, GQA, tied or untied heads all run as transformers
wrote them, over this rank's heads and features (Megatron's layout: attention split by heads,
MLP by intermediate features, embeddings and heads by vocabulary). Parameter names stay the
module's, so state dicts and full checkpoints carry Hugging Face's names; only GPT-2's fused
c_attn is held in another shape (see sharded.py), given back in Hugging Face's by state dicts.

A class is found through the module's MRO (BertSdpaSelfAttention is a BertSelfAttention).
``Plan()`` marks a class whose parameters stay replicated on purpose (a pooler, a small
classifier), so no warning names it. ``Plan(region=True)`` marks each family's transformer block:
without ``prescaled_batch`` (the ranks of a TP group hold different samples) the block gathers
the group's batch at entry and splits it at exit (sharded.batch_region), so its attention and
MLP, split by heads and features, run on the same samples on every rank; the embeddings and
heads (whole outputs) do it on their own.

The module files beside this one (gpt2, gptj, gptneo, gptneox, llama, bert, roberta) carry
SMP's state-dict translation functions for scripts that import them.
"""

import dataclasses

from . import bert, gpt2, gptj, gptneo, gptneox, llama, roberta  # noqa: F401 (SMP's import paths)

__all__ = ["Plan", "PLANS", "plan_for"]


@dataclasses.dataclass(frozen=True)
class Plan:
    column: tuple = ()  # children split by output features; their output stays split
    row: tuple = ()  # children split by input features; their output is summed whole
    vocab: tuple = ()  # embeddings split by vocabulary
    head: tuple = ()  # vocabulary heads: split by vocabulary, logits gathered whole
    stacked: tuple = ()  # (child, k): k projections side by side along the output (q | k | v)
    local: tuple = ()  # attributes divided by tp: the module reads them as its own head count / width
    heads: tuple = ()  # attribute paths of head counts that must divide by tp (else: left replicated)
    region: bool = False  # a transformer block: gathers the TP group's batch when prescaled_batch is false


_ATTENTION = dict(column=("q_proj", "k_proj", "v_proj"))
_BERT = {
    "SelfAttention": Plan(column=("query", "key", "value"), local=("num_attention_heads", "all_head_size"),
                          heads=("num_attention_heads",)),
    "SelfOutput": Plan(row=("dense",)),
    "Intermediate": Plan(column=("dense",)),
    "Output": Plan(row=("dense",)),
    "Embeddings": Plan(vocab=("word_embeddings",)),
    "Pooler": Plan(),
    "Layer": Plan(region=True),
}

PLANS = {
    # GPT-2
    "GPT2Attention": Plan(column=("c_attn",), stacked=(("c_attn", 3),), row=("c_proj",),
                          local=("num_heads", "split_size"), heads=("num_heads",)),
    "GPT2MLP": Plan(column=("c_fc",), row=("c_proj",)),
    "GPT2Model": Plan(vocab=("wte",)),
    "GPT2LMHeadModel": Plan(head=("lm_head",)),
    "GPT2Block": Plan(region=True),
    # GPT-Neo
    "GPTNeoSelfAttention": Plan(**_ATTENTION, row=("out_proj",), local=("num_heads",), heads=("num_heads",)),
    "GPTNeoMLP": Plan(column=("c_fc",), row=("c_proj",)),
    "GPTNeoModel": Plan(vocab=("wte",)),
    "GPTNeoForCausalLM": Plan(head=("lm_head",)),
    "GPTNeoBlock": Plan(region=True),
    # GPT-J
    "GPTJAttention": Plan(**_ATTENTION, row=("out_proj",), local=("num_attention_heads",),
                          heads=("num_attention_heads",)),
    "GPTJMLP": Plan(column=("fc_in",), row=("fc_out",)),
    "GPTJModel": Plan(vocab=("wte",)),
    "GPTJForCausalLM": Plan(head=("lm_head",)),
    "GPTJBlock": Plan(region=True),
    # GPT-NeoX: query_key_value is laid out head by head (q, k, v of head 0, then head 1, ...)
    "GPTNeoXAttention": Plan(column=("query_key_value",), row=("dense",), heads=("config.num_attention_heads",)),
    "GPTNeoXMLP": Plan(column=("dense_h_to_4h",), row=("dense_4h_to_h",)),
    "GPTNeoXModel": Plan(vocab=("embed_in",)),
    "GPTNeoXForCausalLM": Plan(head=("embed_out",)),
    "GPTNeoXLayer": Plan(region=True),
    # LLaMA (grouped-query attention: the key/value heads divide too)
    "LlamaAttention": Plan(**_ATTENTION, row=("o_proj",),
                           heads=("config.num_attention_heads", "config.num_key_value_heads")),
    "LlamaMLP": Plan(column=("gate_proj", "up_proj"), row=("down_proj",)),
    "LlamaModel": Plan(vocab=("embed_tokens",)),
    "LlamaForCausalLM": Plan(head=("lm_head",)),
    "LlamaDecoderLayer": Plan(region=True),
    # BERT and RoBERTa
    **{f"Bert{k}": v for k, v in _BERT.items()},
    "BertLMPredictionHead": Plan(head=("decoder",)),
    "BertPredictionHeadTransform": Plan(),
    "BertForSequenceClassification": Plan(),
    **{f"Roberta{k}": v for k, v in _BERT.items()},
    "RobertaLMHead": Plan(head=("decoder",)),
    "RobertaClassificationHead": Plan(),
    "RobertaForSequenceClassification": Plan(),
}


def plan_for(module):
    """The Plan of the first transformers class in the module's MRO that has one, else None."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__ in PLANS:
            return PLANS[cls.__name__]
    return None

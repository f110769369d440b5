"""smp.nn's transformer modules: DistributedAttentionLayer, DistributedTransformerOutputLayer,
DistributedTransformerLayer, DistributedTransformer and DistributedTransformerLMHead, with SMP's
arguments and defaults, the math and conventions of smp's C++ smp::nn (Megatron's layout):

- Attention: QKV one column-parallel projection, weight (3, heads * head_size, hidden) split by
  heads (dim 1); softmax(q k^T / sqrt(head_size) + mask) v over this rank's heads; the dense
  output projection row-parallel (weight split along its input), its bias replicated.
- MLP: dense_h_to_4h column-parallel (split by intermediate columns), activation,
  dense_4h_to_h row-parallel. Activations "gelu" (exact), "relu"; smp extensions "gelu_tanh"
  and "swiglu" (silu(gate) * up, the first projection stacked (2, I, H)).
- Norms and residuals (per sub-layer): pre_layernorm x + f(LN(x)); else post_layernorm (SMP's
  default) LN(x + f(x)); neither x + f(x). DistributedTransformer with both adds a final
  LayerNorm after the stack (GPT-2's ln_f).
- Masks are additive, (N, 1, 1, S) (0 keep, -10000 drop); causal_mask_size set makes attention
  causal (sequences up to that length). use_alibi adds ALiBi's slope_h * (j - i) to the scores
  (flash_attention.alibi_bias: slopes 2^(-alibi_bias_max * k / n), BLOOM's rule for head counts
  that are not a power of two; each rank its global heads' slopes); position embeddings stay
  as num_positions makes them. The LM head builds the additive mask from a (N, S) 0/1
  attention_mask.
- Initialisation: torch's Linear draw U(+-1/sqrt(fan_in)) for weights and biases, or with
  use_normal_initialization N(0, initializer_range) weights and zero biases; embeddings
  N(0, initializer_range). Every tensor drawn whole, in the C++ order (a layer draws its dropout
  seed, then QKV, dense, dense_h_to_4h, dense_4h_to_h), each rank keeping its slice.
- Dropout: Megatron's rule (tp_ops.DropoutStreams): attention probabilities from the sharded
  stream, hidden and embedding dropout from the replicated one.

Activations are whole (hidden, not split) on every rank of the TP group. With
``prescaled_batch`` every rank of the group holds the same batch. Without it (SMP's default)
each rank holds its own samples: every public module here gathers the group's batch at entry
(hidden states, ids, labels, masks with a batch dim: tp_ops.gather_batch) and returns each rank
its own samples at exit (tp_ops.split_batch), unless made with ``_skip_scatter_and_merge=True``;
composite modules do it once at their boundary and build their inner modules with the skip.
smp's C++ sequence parallelism (config "optimize": "memory") is not used here: LayerNorm,
dropout and residuals run replicated, as "speed" does; the results are the same.
"""

import math
import warnings

import torch
import torch.nn.functional as F

from . import tp_ops
from .flash_attention import alibi_bias
from .linear import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .tp_ops import DropoutStreams, copy_to_tp

__all__ = ["DistributedAttentionLayer", "DistributedTransformerOutputLayer", "DistributedTransformerLayer",
           "DistributedTransformer", "DistributedTransformerLMHead"]

_ACTIVATIONS = ("gelu", "relu", "gelu_tanh", "swiglu")

# SMP's tensor-parallel performance switches: accepted, and the math is the same without them.
_NO_EFFECT = {
    "fused_softmax": "softmax is torch's",
    "fused_bias_gelu": "bias and GeLU are torch's ops",
    "fused_dropout": "dropout is a mask multiply",
    "flash_attention": "attention without dropout runs torch's scaled_dot_product_attention, which picks its kernel",
    "attention_in_fp32": "attention runs in the activations' dtype",
    "query_key_layer_scaling": "scores are scaled by 1/sqrt(attention_head_size) once",
    "fp32_residual_addition": "residuals are added in the activations' dtype",
}
_warned = set()


def _warn_no_effect(module, extra):
    for key, value in extra.items():
        if key not in _NO_EFFECT:
            allowed = ", ".join(sorted(_NO_EFFECT))
            raise TypeError(f"smp.nn.{module}: unknown argument '{key}'; besides SMP's documented arguments, "
                            f"accepted (no effect): {allowed}")
        if value and key not in _warned:  # once per process
            _warned.add(key)
            warnings.warn(f"smp.nn.{module}: {key} is accepted and has no effect here ({_NO_EFFECT[key]})")


def _check(module, key, ok, value, allowed):
    if not ok:
        raise ValueError(f"smp.nn.{module}: {key}={value!r}; allowed: {allowed}")


def _refuse(module, key, value, why=""):
    if value:
        raise NotImplementedError(f"smp.nn.{module}: {key}={value!r} is not implemented{why}; allowed: False")

def _enter(module, extra, **refused):
    """What every module checks first: the refused switches (each False or NotImplementedError),
    and the accepted no-effect keywords (warned once)."""
    for key, value in refused.items():
        _refuse(module, key, value)
    _warn_no_effect(module, extra)


def _check_common(module, *, hidden_size=None, num_attention_heads=None, attention_head_size=None,
                  intermediate_size=None, attention_dropout_prob=None, hidden_dropout_prob=None, activation=None,
                  layernorm_epsilon=None, causal_mask_size=None, alibi_bias_max=None):
    tp = tp_ops.tp_size()
    for key, value in (("hidden_size", hidden_size), ("num_attention_heads", num_attention_heads),
                       ("attention_head_size", attention_head_size), ("intermediate_size", intermediate_size)):
        if value is not None:
            _check(module, key, isinstance(value, int) and value >= 1, value, "an int >= 1")
    for key, value in (("attention_dropout_prob", attention_dropout_prob), ("hidden_dropout_prob", hidden_dropout_prob)):
        if value is not None:
            _check(module, key, 0.0 <= value < 1.0, value, "[0, 1)")
    if layernorm_epsilon is not None:
        _check(module, "layernorm_epsilon", layernorm_epsilon > 0, layernorm_epsilon, "> 0")
    if alibi_bias_max is not None:
        _check(module, "alibi_bias_max", isinstance(alibi_bias_max, (int, float)) and alibi_bias_max > 0,
               alibi_bias_max, "a number > 0")
    if activation is not None:
        _check(module, "activation", activation in _ACTIVATIONS, activation, ", ".join(map(repr, _ACTIVATIONS)))
    if causal_mask_size is not None:
        _check(module, "causal_mask_size", isinstance(causal_mask_size, int) and causal_mask_size >= 1,
               causal_mask_size, "None or an int >= 1")
    if num_attention_heads is not None:
        tp_ops.check_divisible(f"{module}: num_attention_heads", num_attention_heads, tp)
    if intermediate_size is not None:
        tp_ops.check_divisible(f"{module}: intermediate_size", intermediate_size, tp)


def _norm(hidden_size, eps, wanted):
    return torch.nn.LayerNorm(hidden_size, eps=eps) if wanted else None


def _residual(x, f, norm, pre, post):
    """pre: x + f(LN(x)); post: LN(x + f(x)); neither: x + f(x)."""
    if pre:
        return x + f(norm(x))
    if post:
        return norm(x + f(x))
    return x + f(x)


def _gather_hidden(x, mask, skip):
    """At a module's entry: (x, mask, merged). Not prescaled (tp_ops.merges_batch), x becomes the
    TP group's batch, and so does a mask with a batch dim ((N, 1, 1, S) or (N, 1, S, S); one of
    dim 0 of 1 broadcasts over the group's batch as it is)."""
    if not tp_ops.merges_batch(skip):
        return x, mask, False
    b = x.shape[0]
    return tp_ops.gather_batch(x), tp_ops.gather_batch_shaped(mask, b, min_dim=4), True


def _split_inputs(inputs, module):
    """(hidden, mask) or (hidden,) or hidden -> hidden, mask (None when absent)."""
    if isinstance(inputs, torch.Tensor):
        return inputs, None
    if not isinstance(inputs, (tuple, list)) or not 1 <= len(inputs) <= 2:
        raise TypeError(f"smp.nn.{module}: forward takes (hidden_states, attention_mask); got {type(inputs).__name__}"
                        + (f" of {len(inputs)}" if isinstance(inputs, (tuple, list)) else ""))
    return inputs[0], (inputs[1] if len(inputs) > 1 else None)


class DistributedAttentionLayer(torch.nn.Module):
    """SMP's DistributedAttentionLayer: self-attention over this rank's heads, the output
    projection, dropout, and the residual with its LayerNorm. ``forward((hidden (N, S, H),
    mask (N, 1, 1, S) additive or None))`` (or hidden alone) returns hidden (N, S, H)."""

    def __init__(self, num_attention_heads=32, attention_head_size=32, hidden_size=1024, attention_dropout_prob=0.1,
                 hidden_dropout_prob=0.1, layernorm_epsilon=1e-5, initializer_range=0.02,
                 use_normal_initialization=False, cross_attention=False, causal_mask_size=None,
                 pre_layernorm=False, post_layernorm=True, use_alibi=False, alibi_bias_max=8, _dropout_seed=None,
                 _skip_scatter_and_merge=False, **extra):
        super().__init__()
        name = "DistributedAttentionLayer"
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        _enter(name, extra, cross_attention=cross_attention)
        _check_common(name, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                      attention_head_size=attention_head_size, attention_dropout_prob=attention_dropout_prob,
                      hidden_dropout_prob=hidden_dropout_prob, layernorm_epsilon=layernorm_epsilon,
                      causal_mask_size=causal_mask_size, alibi_bias_max=alibi_bias_max)
        self.use_alibi, self.alibi_bias_max = bool(use_alibi), alibi_bias_max
        self.num_attention_heads, self.attention_head_size = num_attention_heads, attention_head_size
        self.local_heads = num_attention_heads // tp_ops.tp_size()
        self.attention_dropout_prob, self.hidden_dropout_prob = attention_dropout_prob, hidden_dropout_prob
        self.causal_mask_size = causal_mask_size
        self.pre_layernorm, self.post_layernorm = bool(pre_layernorm), bool(post_layernorm)
        self.dropout = DropoutStreams(_dropout_seed, stream=1)
        std = initializer_range if use_normal_initialization else None
        inner = num_attention_heads * attention_head_size
        self.qkv = ColumnParallelLinear(hidden_size, inner, std, stack=3)
        self.dense = RowParallelLinear(inner, hidden_size, std)
        self.layernorm = _norm(hidden_size, layernorm_epsilon, pre_layernorm or post_layernorm)

    def forward(self, inputs):
        x, mask = _split_inputs(inputs, "DistributedAttentionLayer")
        mask = None if mask is None else mask.detach()  # never trained
        x, mask, merged = _gather_hidden(x, mask, self.skip_scatter_and_merge)
        out = _residual(x, lambda t: self._attend(t, mask), self.layernorm, self.pre_layernorm, self.post_layernorm)
        return tp_ops.split_batch(out) if merged else out

    def _attend(self, x, mask):
        b, s = x.shape[0], x.shape[1]
        d = self.attention_head_size
        if self.causal_mask_size is not None and s > self.causal_mask_size:
            raise ValueError(f"smp.nn.DistributedAttentionLayer: sequence length {s} exceeds causal_mask_size "
                             f"({self.causal_mask_size})")
        q, k, v = self.qkv(x).view(b, s, 3, self.local_heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, S, d)
        context = self._core(q, k, v, mask)
        context = context.transpose(1, 2).reshape(b, s, self.local_heads * d)
        out = self.dense(context)
        if self.dense.bias is not None:
            out = out + self.dense.bias
        return self.dropout.dropout(out, self.hidden_dropout_prob, sharded=False)

    def _core(self, q, k, v, mask):
        scale = 1.0 / math.sqrt(self.attention_head_size)
        causal = self.causal_mask_size is not None
        s = q.shape[2]
        p = self.attention_dropout_prob
        bias = _bias(mask, s, causal, q)
        if self.use_alibi:  # this rank's heads' slopes (of the global heads)
            alibi = alibi_bias(self.local_heads, s, q, self.alibi_bias_max)
            bias = alibi if bias is None else bias + alibi
        if not self.training or p == 0.0:
            if causal and mask is None and not self.use_alibi:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        # With dropout: the math path, so the mask comes from this rank's (sharded) stream.
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        if bias is not None:
            scores = scores + bias
        probs = self.dropout.dropout(torch.softmax(scores, -1), p, sharded=True)
        return torch.matmul(probs, v)


def _bias(mask, s, causal, like):
    """The additive mask attention applies: ``mask`` plus -inf above the diagonal when causal."""
    bias = None
    if causal:
        bias = torch.full((s, s), float("-inf"), dtype=like.dtype, device=like.device).triu(1)
    if mask is not None:
        bias = mask.to(like.dtype) if bias is None else bias + mask.to(like.dtype)
    return bias


class DistributedTransformerOutputLayer(torch.nn.Module):
    """SMP's DistributedTransformerOutputLayer: the MLP (dense_h_to_4h, activation,
    dense_4h_to_h), dropout, and the residual with its LayerNorm. ``forward(hidden (N, S, H))``
    returns hidden."""

    def __init__(self, hidden_size=1024, intermediate_size=4096, hidden_dropout_prob=0.1, activation="gelu",
                 layernorm_epsilon=1e-5, initializer_range=0.02, use_normal_initialization=False,
                 pre_layernorm=False, post_layernorm=True, _dropout_seed=None, _skip_scatter_and_merge=False,
                 **extra):
        super().__init__()
        name = "DistributedTransformerOutputLayer"
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        _enter(name, extra)
        _check_common(name, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      hidden_dropout_prob=hidden_dropout_prob, activation=activation,
                      layernorm_epsilon=layernorm_epsilon)
        self.activation = activation
        self.hidden_dropout_prob = hidden_dropout_prob
        self.pre_layernorm, self.post_layernorm = bool(pre_layernorm), bool(post_layernorm)
        self.dropout = DropoutStreams(_dropout_seed, stream=2)
        std = initializer_range if use_normal_initialization else None
        stack = 2 if activation == "swiglu" else 1
        self.dense_h_to_4h = ColumnParallelLinear(hidden_size, intermediate_size, std, stack=stack)
        self.dense_4h_to_h = RowParallelLinear(intermediate_size, hidden_size, std)
        self.layernorm = _norm(hidden_size, layernorm_epsilon, pre_layernorm or post_layernorm)

    def forward(self, x):
        if isinstance(x, (tuple, list)):
            x = x[0]
        x, _, merged = _gather_hidden(x, None, self.skip_scatter_and_merge)
        out = _residual(x, self._feed, self.layernorm, self.pre_layernorm, self.post_layernorm)
        return tp_ops.split_batch(out) if merged else out

    def _feed(self, x):
        h = self.dense_h_to_4h(x)  # (..., I / tp), or gate and up halves
        if self.activation == "swiglu":
            n = h.shape[-1] // 2
            a = F.silu(h[..., :n]) * h[..., n:]
        elif self.activation == "relu":
            a = F.relu(h)
        elif self.activation == "gelu_tanh":
            a = F.gelu(h, approximate="tanh")
        else:
            a = F.gelu(h)
        out = self.dense_4h_to_h(a)
        if self.dense_4h_to_h.bias is not None:
            out = out + self.dense_4h_to_h.bias
        return self.dropout.dropout(out, self.hidden_dropout_prob, sharded=False)


_LAYER_ARGS = dict(num_attention_heads=32, attention_head_size=32, hidden_size=1024, intermediate_size=4096,
                   attention_dropout_prob=0.1, hidden_dropout_prob=0.1, activation="gelu", layernorm_epsilon=1e-5,
                   initializer_range=0.02, use_normal_initialization=False, causal_mask_size=None,
                   add_cross_attention=False, pre_layernorm=False, post_layernorm=True, use_alibi=False,
                   alibi_bias_max=8)


class DistributedTransformerLayer(torch.nn.Module):
    """SMP's DistributedTransformerLayer: ``attention`` (DistributedAttentionLayer) then
    ``output`` (DistributedTransformerOutputLayer). ``forward((hidden (N, S, H), mask (N, 1, 1,
    S) additive or None))`` returns ``(hidden, mask)`` (the mask given)."""

    def __init__(self, num_attention_heads=32, attention_head_size=32, hidden_size=1024, intermediate_size=4096,
                 attention_dropout_prob=0.1, hidden_dropout_prob=0.1, activation="gelu", layernorm_epsilon=1e-5,
                 initializer_range=0.02, use_normal_initialization=False, causal_mask_size=None,
                 add_cross_attention=False, pre_layernorm=False, post_layernorm=True, use_alibi=False,
                 alibi_bias_max=8, _skip_scatter_and_merge=False, **extra):
        super().__init__()
        name = "DistributedTransformerLayer"
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        _enter(name, extra, add_cross_attention=add_cross_attention)
        _check_common(name, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                      attention_head_size=attention_head_size, intermediate_size=intermediate_size,
                      attention_dropout_prob=attention_dropout_prob, hidden_dropout_prob=hidden_dropout_prob,
                      activation=activation, layernorm_epsilon=layernorm_epsilon, causal_mask_size=causal_mask_size,
                      alibi_bias_max=alibi_bias_max)
        seed = tp_ops.draw_seed()  # first, as smp's C++ layer draws its dropout seed
        common = dict(hidden_size=hidden_size, hidden_dropout_prob=hidden_dropout_prob,
                      layernorm_epsilon=layernorm_epsilon, initializer_range=initializer_range,
                      use_normal_initialization=use_normal_initialization, pre_layernorm=pre_layernorm,
                      post_layernorm=post_layernorm, _dropout_seed=seed, _skip_scatter_and_merge=True)
        self.attention = DistributedAttentionLayer(
            num_attention_heads=num_attention_heads, attention_head_size=attention_head_size,
            attention_dropout_prob=attention_dropout_prob, causal_mask_size=causal_mask_size, use_alibi=use_alibi,
            alibi_bias_max=alibi_bias_max, **common)
        self.output = DistributedTransformerOutputLayer(intermediate_size=intermediate_size, activation=activation,
                                                        **common)

    def forward(self, inputs):
        x, given = _split_inputs(inputs, "DistributedTransformerLayer")
        x, mask, merged = _gather_hidden(x, given, self.skip_scatter_and_merge)
        out = self.output(self.attention((x, mask)))
        return (tp_ops.split_batch(out) if merged else out), given


class DistributedTransformer(torch.nn.Module):
    """SMP's DistributedTransformer: ``num_layers`` DistributedTransformerLayers in
    ``seq_layers`` (an nn.Sequential); with pre_layernorm and post_layernorm both set, a final
    LayerNorm normalises the stack's output. ``forward((hidden, mask))`` returns
    ``(hidden, mask)``."""

    def __init__(self, num_layers=12, num_attention_heads=32, attention_head_size=32, hidden_size=1024,
                 intermediate_size=4096, attention_dropout_prob=0.1, hidden_dropout_prob=0.1, activation="gelu",
                 layernorm_epsilon=1e-5, initializer_range=0.02, use_normal_initialization=False,
                 causal_mask_size=None, add_cross_attention=False, pre_layernorm=False, post_layernorm=True,
                 use_alibi=False, alibi_bias_max=8, _skip_scatter_and_merge=False, **extra):
        super().__init__()
        name = "DistributedTransformer"
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        _check(name, "num_layers", isinstance(num_layers, int) and num_layers >= 0, num_layers, "an int >= 0")
        args = dict(num_attention_heads=num_attention_heads, attention_head_size=attention_head_size,
                    hidden_size=hidden_size, intermediate_size=intermediate_size,
                    attention_dropout_prob=attention_dropout_prob, hidden_dropout_prob=hidden_dropout_prob,
                    activation=activation, layernorm_epsilon=layernorm_epsilon, initializer_range=initializer_range,
                    use_normal_initialization=use_normal_initialization, causal_mask_size=causal_mask_size,
                    add_cross_attention=add_cross_attention, pre_layernorm=pre_layernorm,
                    post_layernorm=post_layernorm, use_alibi=use_alibi, alibi_bias_max=alibi_bias_max,
                    _skip_scatter_and_merge=True, **extra)
        _enter(name, extra, add_cross_attention=add_cross_attention)
        self.num_layers = num_layers
        self.seq_layers = torch.nn.Sequential(*[DistributedTransformerLayer(**args) for _ in range(num_layers)])
        self.final_layernorm = _norm(hidden_size, layernorm_epsilon, pre_layernorm and post_layernorm)

    def forward(self, inputs):
        x, given = _split_inputs(inputs, "DistributedTransformer")
        x, mask, merged = _gather_hidden(x, given, self.skip_scatter_and_merge)
        x, mask = self.seq_layers((x, mask)) if self.num_layers else (x, mask)
        if self.final_layernorm is not None:
            x = self.final_layernorm(x)
        return (tp_ops.split_batch(x) if merged else x), given


class _LMEmbedding(torch.nn.Module):
    """word_embeddings (split by vocabulary), position_embeddings and token_type_embeddings
    (replicated), then dropout; builds the additive attention mask."""

    def __init__(self, vocab_size, hidden_size, num_positions, num_token_types, initializer_range,
                 hidden_dropout_prob):
        super().__init__()
        self.dropout = DropoutStreams()  # first, as smp's C++ LMEmbedding draws its seed
        self.hidden_dropout_prob = hidden_dropout_prob
        self.num_positions = num_positions
        self.word_embeddings = VocabParallelEmbedding(vocab_size, hidden_size, initializer_range)
        self.position_embeddings = tp_ops.shard_parameter(
            tp_ops.normal_full((num_positions, hidden_size), initializer_range), None)
        if num_token_types > 0:
            self.token_type_embeddings = tp_ops.shard_parameter(
                tp_ops.normal_full((num_token_types, hidden_size), initializer_range), None)
        else:
            self.token_type_embeddings = None

    def forward(self, ids, attention_mask, token_type_ids, position_ids):
        b, s = ids.shape
        if s > self.num_positions:
            raise ValueError(f"smp.nn.DistributedTransformerLMHead: sequence length {s} exceeds num_positions "
                             f"({self.num_positions})")
        h = self.word_embeddings(ids)
        if position_ids is None:
            position_ids = torch.arange(s, device=ids.device).expand(b, s)
        h = h + F.embedding(position_ids, self.position_embeddings)
        if token_type_ids is not None:
            if self.token_type_embeddings is None:
                raise ValueError("smp.nn.DistributedTransformerLMHead: token_type_ids given but num_token_types is 0")
            h = h + F.embedding(token_type_ids, self.token_type_embeddings)
        h = self.dropout.dropout(h, self.hidden_dropout_prob, sharded=False)
        mask = None
        if attention_mask is not None:  # Hugging Face's extended mask: 0 keep, -10000 drop
            mask = (1.0 - attention_mask.to(h.dtype)).view(b, 1, 1, s) * -10000.0
        return h, mask


class _TiedLMHead(torch.nn.Module):
    """Logits of this rank's vocabulary slice against the word embedding (given, tied), and the
    mean vocab-parallel cross-entropy over labels >= 0. No parameters of its own: its own
    module, so the head is a pipeline unit of its own. ``split``: hidden and labels are the TP
    group's batch (the non-prescaled flow); the per-token losses are split back to this rank's
    samples (tp_ops.split_batch) before the mean, so the loss is this rank's own samples' and its
    gradient keeps split_batch's convention. Without labels the logits are gathered over the
    vocabulary first (this rank's samples' whole logits): split_batch's backward all-gathers
    the gradient over the group, which is right only for a tensor every rank holds the same
    columns of, and a rank's vocabulary slice of its own samples alone would be of no use (the
    other slices of those samples are on no rank)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, hidden, weight, labels=None, split=False):
        logits = F.linear(copy_to_tp(hidden), weight)  # (N, S, V_pad / tp)
        if labels is None:
            if not split:
                return tp_ops.mask_vocab_padding(logits, self.vocab_size)
            return tp_ops.split_batch(tp_ops.gather_from_tp(logits).narrow(-1, 0, self.vocab_size))
        per_token = tp_ops.vocab_parallel_cross_entropy(logits, labels, self.vocab_size)
        if split:
            per_token, labels = tp_ops.split_batch(per_token), tp_ops.split_batch(labels)
        return per_token.sum() / (labels >= 0).sum().clamp_min(1).to(per_token.dtype)


class DistributedTransformerLMHead(torch.nn.Module):
    """SMP's DistributedTransformerLMHead: word (split by vocabulary) + position (+ token type)
    embeddings, a DistributedTransformer, and an LM head tied to the word embedding.

    ``forward((input_ids, attention_mask, token_type_ids, position_ids, labels))``: all but the
    ids may be None or left off; attention_mask (N, S) of 1 (keep) / 0 (drop); labels are the
    target at each position (no shift), < 0 to ignore. Returns, as smp's C++ module does, a
    tuple of one tensor: ``(loss,)`` (the mean cross-entropy over labelled tokens, the same on
    every rank of the TP group with prescaled_batch, else over this rank's own samples) with
    labels, else ``(logits,)``: with prescaled_batch this rank's vocabulary slice (N, S,
    V_pad / tp) (rank r holds columns [r * V_pad/tp, (r+1) * V_pad/tp); V_pad is vocab_size
    rounded up to a multiple of tp), else this rank's samples' whole logits (N, S, vocab_size);
    without add_lm_head ``(hidden,)`` (N, S, H), after the final norm.

    Not prescaled, the batch-shaped inputs (ids, and attention_mask, token_type_ids,
    position_ids and labels where their dim 0 is the batch) are gathered over the TP group once
    here; the embedding, the transformer (made with _skip_scatter_and_merge) and the head run on
    the group's batch, and the output is split back to this rank's samples."""

    def __init__(self, num_layers=12, num_attention_heads=32, attention_head_size=32, hidden_size=1024,
                 intermediate_size=4096, attention_dropout_prob=0.1, hidden_dropout_prob=0.1, activation="gelu",
                 layernorm_epsilon=1e-5, initializer_range=0.02, use_normal_initialization=False,
                 causal_mask_size=None, add_cross_attention=False, pre_layernorm=False, post_layernorm=True,
                 vocab_size=30522, num_positions=1024, num_token_types=0, add_lm_head=True, use_alibi=False,
                 alibi_bias_max=8, _skip_scatter_and_merge=False, **extra):
        super().__init__()
        name = "DistributedTransformerLMHead"
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        _enter(name, {}, add_cross_attention=add_cross_attention)  # (extra: the stack's)
        for key, value in (("vocab_size", vocab_size), ("num_positions", num_positions)):
            _check(name, key, isinstance(value, int) and value >= 1, value, "an int >= 1")
        _check(name, "num_token_types", isinstance(num_token_types, int) and num_token_types >= 0, num_token_types,
               "an int >= 0")
        _check_common(name, hidden_size=hidden_size, hidden_dropout_prob=hidden_dropout_prob)
        self.vocab_size = vocab_size
        self.add_lm_head = bool(add_lm_head)
        self.embedding = _LMEmbedding(vocab_size, hidden_size, num_positions, num_token_types, initializer_range,
                                      hidden_dropout_prob)
        self.transformer = DistributedTransformer(
            num_layers=num_layers, num_attention_heads=num_attention_heads, attention_head_size=attention_head_size,
            hidden_size=hidden_size, intermediate_size=intermediate_size,
            attention_dropout_prob=attention_dropout_prob, hidden_dropout_prob=hidden_dropout_prob,
            activation=activation, layernorm_epsilon=layernorm_epsilon, initializer_range=initializer_range,
            use_normal_initialization=use_normal_initialization, causal_mask_size=causal_mask_size,
            pre_layernorm=pre_layernorm, post_layernorm=post_layernorm, use_alibi=use_alibi,
            alibi_bias_max=alibi_bias_max, _skip_scatter_and_merge=True, **extra)
        self.lm_head = _TiedLMHead(vocab_size) if self.add_lm_head else None

    def forward(self, inputs):
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if not isinstance(inputs, (tuple, list)) or not 1 <= len(inputs) <= 5:
            raise TypeError("smp.nn.DistributedTransformerLMHead: forward takes (input_ids, attention_mask, "
                            "token_type_ids, position_ids, labels)")
        ids, attention_mask, token_type_ids, position_ids, labels = (tuple(inputs) + (None,) * 5)[:5]
        merged = tp_ops.merges_batch(self.skip_scatter_and_merge)
        if merged:
            b = ids.shape[0]
            ids = tp_ops.gather_batch(ids)
            attention_mask, token_type_ids, position_ids, labels = (
                tp_ops.gather_batch_shaped(t, b, min_dim=2) for t in (attention_mask, token_type_ids, position_ids,
                                                                      labels))
        h, mask = self.embedding(ids, attention_mask, token_type_ids, position_ids)
        h, _ = self.transformer((h, mask))
        if not self.add_lm_head:
            return (tp_ops.split_batch(h) if merged else h,)
        return (self.lm_head(h, self.embedding.word_embeddings.weight, labels, split=merged),)

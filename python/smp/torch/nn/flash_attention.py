"""smp.nn.FlashAttentionLayer: SMP's attention core over packed q/k/v, on PyTorch's SDPA.

SMP v1.13-1.15 shipped FlashAttentionLayer as the core of its transformer layers: it takes the
packed projections ``qkv`` of shape (B, S, 3, H, D) and returns the attention context
(B, H, S, D), nothing else (no parameters, no projections). Here it runs through
``torch.nn.functional.scaled_dot_product_attention``, which picks the flash or memory-efficient
kernels on GPUs where the inputs allow and the plain math kernel elsewhere (CPU, float64).

The scores are ``q k^T * scale + bias``, with

  scale = ``scale`` if given, else 1 / sqrt(attention_head_size or D) when
          ``scale_attention_scores``, else 1; divided by (layer_idx + 1) when
          ``scale_attn_by_layer_idx`` (GPT-2's option, for deep stacks);
  bias  = the attention mask (additive float, or bool with True = keep), the causal mask, and
          ALiBi's linear bias ``slope_h * (j - i)`` (Press et al.; the slopes of BLOOM's
          build_alibi_tensor, which also covers head counts that are not a power of two).
          BLOOM adds ``slope_h * j``: the same row by row up to a constant, which softmax ignores.

Under tensor parallelism the layer sees this rank's heads only (it has no parameters, so it
needs no other change); ALiBi's slopes then are those of the GLOBAL heads this rank holds
(head h here is global head tp_rank * H + h), so a tp=N run equals the tp=1 one.
"""

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from . import tp_ops

__all__ = ["FlashAttentionLayer", "alibi_slopes"]


def alibi_slopes(num_heads, bias_max=8):
    """ALiBi's per-head slopes (a list of floats, head 0 first): the geometric sequence
    2^(-b/n), 2^(-2b/n), ... (b = ``bias_max``, 8 in the paper; SMP's alibi_bias_max) for n = the
    largest power of two <= num_heads, then for the remaining heads every other slope of the
    sequence for 2n (BLOOM's build_alibi_tensor)."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"smp.nn.alibi_slopes: num_heads={num_heads!r}; allowed: an int >= 1")
    if not isinstance(bias_max, numbers.Real) or not bias_max > 0:
        raise ValueError(f"smp.nn.alibi_slopes: bias_max={bias_max!r}; allowed: a number > 0")
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-bias_max / closest)
    slopes = [base ** k for k in range(1, closest + 1)]
    if closest != num_heads:
        extra = 2.0 ** (-bias_max / (2 * closest))
        remaining = min(closest, num_heads - closest)
        slopes += [extra ** k for k in range(1, 2 * remaining, 2)]
    return slopes


class FlashAttentionLayer(torch.nn.Module):
    """SMP's ``smp.nn.FlashAttentionLayer``: ``forward(qkv, attn_mask=None, causal=False)`` with
    qkv (B, S, 3, H, D) returns the context (B, H, S, D).

    ``triton_flash_attention`` is accepted and means the same kernels (SMP's Triton path was a
    faster kernel for the same math; PyTorch's SDPA picks its own flash kernel). Unlike SMP's
    Triton path, dropout works with it. Dropout (``attention_dropout_prob``) applies in training
    mode only."""

    def __init__(self, attention_dropout_prob=0.1, attention_head_size=None, scale_attention_scores=True,
                 scale_attn_by_layer_idx=False, layer_idx=None, scale=None, triton_flash_attention=False,
                 use_alibi=False):
        super().__init__()
        name = "smp.nn.FlashAttentionLayer"
        if (not isinstance(attention_dropout_prob, numbers.Real) or isinstance(attention_dropout_prob, bool)
                or not 0.0 <= attention_dropout_prob < 1.0):
            raise ValueError(f"{name}: attention_dropout_prob={attention_dropout_prob!r}; allowed: a number in [0, 1)")
        if attention_head_size is not None and (not isinstance(attention_head_size, int)
                                                or isinstance(attention_head_size, bool) or attention_head_size < 1):
            raise ValueError(f"{name}: attention_head_size={attention_head_size!r}; allowed: None or an int >= 1")
        if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)
                                  or not math.isfinite(scale) or scale <= 0):
            raise ValueError(f"{name}: scale={scale!r}; allowed: None or a finite number > 0")
        if scale_attn_by_layer_idx and (layer_idx is None or not isinstance(layer_idx, int)
                                        or isinstance(layer_idx, bool) or layer_idx < 0):
            raise ValueError(f"{name}: layer_idx={layer_idx!r} with scale_attn_by_layer_idx=True; allowed: an int >= 0 "
                             "(the scores are divided by layer_idx + 1)")
        self.attention_dropout_prob = float(attention_dropout_prob)
        self.attention_head_size = attention_head_size
        self.scale_attention_scores = bool(scale_attention_scores)
        self.scale_attn_by_layer_idx = bool(scale_attn_by_layer_idx)
        self.layer_idx = layer_idx
        self.scale = scale
        self.triton_flash_attention = bool(triton_flash_attention)
        self.use_alibi = bool(use_alibi)

    def extra_repr(self):
        return (f"attention_dropout_prob={self.attention_dropout_prob}, scale={self.scale}, "
                f"scale_attention_scores={self.scale_attention_scores}, "
                f"scale_attn_by_layer_idx={self.scale_attn_by_layer_idx}, layer_idx={self.layer_idx}, "
                f"use_alibi={self.use_alibi}")

    def softmax_scale(self, head_dim):
        """The factor of q k^T for heads of size head_dim (see the module's docstring)."""
        if self.scale is not None:
            s = float(self.scale)
        elif self.scale_attention_scores:
            s = 1.0 / math.sqrt(self.attention_head_size or head_dim)
        else:
            s = 1.0
        if self.scale_attn_by_layer_idx:
            s /= self.layer_idx + 1
        return s

    def forward(self, qkv, attn_mask=None, causal=False):
        b, s, h, d = self._check(qkv, attn_mask, causal)
        # qkv: (B, S, 3, H, D) -> q, k, v: (B, H, S, D)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        mask = self._bias(attn_mask, causal, b, h, s, qkv)
        dropout = self.attention_dropout_prob if self.training else 0.0
        if mask is None:  # SDPA's own causal path (no mask tensor: the flash kernel applies)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=bool(causal),
                                                  scale=self.softmax_scale(d))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.softmax_scale(d))

    # --- the pieces ---------------------------------------------------------------------------

    def _check(self, qkv, attn_mask, causal):
        name = "smp.nn.FlashAttentionLayer.forward"
        if not isinstance(qkv, Tensor):
            raise TypeError(f"{name}: qkv is a {type(qkv).__name__}; allowed: a tensor of shape (B, S, 3, H, D)")
        if qkv.dim() != 5 or qkv.shape[2] != 3:
            raise ValueError(f"{name}: qkv has shape {tuple(qkv.shape)}; allowed: (B, S, 3, H, D), five dims with "
                             "dim 2 of size 3 (q, k, v)")
        if not qkv.is_floating_point():
            raise ValueError(f"{name}: qkv has dtype {qkv.dtype}; allowed: a floating-point dtype")
        if not isinstance(causal, bool):
            raise TypeError(f"{name}: causal={causal!r}; allowed: True or False")
        b, s, _, h, d = qkv.shape
        if attn_mask is not None:
            if not isinstance(attn_mask, Tensor):
                raise TypeError(f"{name}: attn_mask is a {type(attn_mask).__name__}; allowed: None or a tensor "
                                f"broadcastable to (B, H, S, S) = {(b, h, s, s)}")
            if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
                raise ValueError(f"{name}: attn_mask has dtype {attn_mask.dtype}; allowed: bool (True = attend) or "
                                 "a floating-point dtype (added to the scores)")
            try:
                fits = attn_mask.dim() <= 4 and torch.broadcast_shapes(attn_mask.shape, (b, h, s, s)) == (b, h, s, s)
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"{name}: attn_mask has shape {tuple(attn_mask.shape)}; allowed: a shape "
                                 f"broadcastable to (B, H, S, S) = {(b, h, s, s)}")
        return b, s, h, d

    def _bias(self, attn_mask, causal, b, h, s, qkv):
        """The one mask SDPA gets: None (no mask: causal alone goes to SDPA's is_causal), a
        bool keep-mask (the given one, and the causal triangle), or an additive float mask
        (the given float mask plus ALiBi, -inf where a bool or the causal mask drops)."""
        keep = attn_mask if attn_mask is not None and attn_mask.dtype == torch.bool else None
        add = attn_mask.to(qkv.dtype) if attn_mask is not None and keep is None else None
        if keep is None and add is None and not self.use_alibi:
            return None
        if causal:
            tril = torch.ones(s, s, dtype=torch.bool, device=qkv.device).tril()
            keep = tril if keep is None else keep & tril
        if self.use_alibi:
            add = self._alibi(h, s, qkv) if add is None else add + self._alibi(h, s, qkv)
        if add is None:
            return keep
        if keep is None:
            return add
        return torch.where(keep, add, torch.tensor(float("-inf"), dtype=qkv.dtype, device=qkv.device))

    def _alibi(self, h, s, qkv):
        return alibi_bias(h, s, qkv)


def alibi_bias(local_heads, s, like, bias_max=8):
    """ALiBi's bias (H, S, S) for this rank's heads: slope_h * (j - i) at query i, key j, with
    the slopes of the GLOBAL heads this rank holds (head h here is tp_rank * H + h)."""
    tp = tp_ops.tp_size()
    first = tp_ops.tp_rank() * local_heads if tp > 1 else 0
    # built per call (H numbers), not cached on the module: torch.export must not see a tensor
    # attribute assigned during its trace
    slopes = alibi_slopes(local_heads * tp, bias_max)[first:first + local_heads]
    slopes = torch.tensor(slopes, dtype=like.dtype, device=like.device).view(local_heads, 1, 1)
    pos = torch.arange(s, device=like.device, dtype=like.dtype)
    return slopes * (pos.view(1, 1, s) - pos.view(1, s, 1))

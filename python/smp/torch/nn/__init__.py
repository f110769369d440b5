"""smp.nn: SMP's distributed modules.

The tensor-parallel modules (global sizes, split over smp.tp_size() internally; see linear.py,
transformer.py and tp_ops.py for the math, initialisation and communication):
DistributedLinear, DistributedEmbedding, DistributedAttentionLayer,
DistributedTransformerOutputLayer, DistributedTransformerLayer, DistributedTransformer and
DistributedTransformerLMHead. Build them after smp.init, on every rank, from the same seed.

FusedLayerNorm is LayerNorm (importable, as SMP's scripts need for isinstance checks).
FlashAttentionLayer is SMP's attention core over packed q/k/v, on PyTorch's SDPA
(flash_attention.py).
"""

import torch

from .flash_attention import FlashAttentionLayer
from .linear import DistributedEmbedding, DistributedLinear
from .transformer import (DistributedAttentionLayer, DistributedTransformer, DistributedTransformerLayer,
                          DistributedTransformerLMHead, DistributedTransformerOutputLayer)

__all__ = ["FusedLayerNorm", "FlashAttentionLayer", "DistributedLinear", "DistributedEmbedding",
           "DistributedAttentionLayer", "DistributedTransformerOutputLayer", "DistributedTransformerLayer", "DistributedTransformer",
           "DistributedTransformerLMHead"]


class FusedLayerNorm(torch.nn.LayerNorm):
    """SMP's replacement for apex's FusedLayerNorm: torch's LayerNorm (its kernel is fused)."""

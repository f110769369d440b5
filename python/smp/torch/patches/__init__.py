"""SMP's ``smdistributed.modelparallel.torch.patches`` path: activation checkpointing's
functions (checkpoint.py)."""

from . import checkpoint

__all__ = ["checkpoint"]

"""SMP's ``smdistributed.modelparallel.torch.utils`` names that scripts import."""

from .state import is_initialized, pp_rank, rank, tp_rank

__all__ = ["rmsg", "get_distribution_axis"]


def rmsg(msg):
    """``msg`` prefixed with this process's ranks, for logs that interleave ranks."""
    if not is_initialized():
        return msg
    return f"[rank {rank()}, pp_rank {pp_rank()}, tp_rank {tp_rank()}] {msg}"


def get_distribution_axis(param):
    """The dimension along which tensor parallelism split ``param``, or None when every rank
    of its TP group holds it whole."""
    spec = getattr(param, "_smp_tp_shard", None)
    return None if spec is None else spec[0]

"""SMP v1's TensorFlow API on smp's engine: ``import smp.tensorflow as smp``.

A Keras model subclasses ``smp.DistributedModel`` and is called inside an ``@smp.step``
function; smp cuts it at its top-level layers, pipelines the stages with the engine's schedule
and averages data-parallel replicas (docs/tensorflow.md lists every name).
"""

from smp import __version__

from . import state as _state_module
from .checkpoint import CheckpointManager
from .model import DistributedModel, partition
from .state import (
    DP_GROUP, MP_GROUP, PP_GROUP, RDP_GROUP, TP_GROUP, WORLD, CommGroup, RankType, allgather, barrier, broadcast,
    dp_barrier, dp_rank, dp_size, get_dp_group, get_mp_group, get_pp_group, get_rdp_group, get_tp_group, init,
    is_initialized, local_rank, local_size, mp_barrier, mp_rank, mp_size, pp_barrier, pp_rank, pp_size, rank,
    rdp_barrier, rdp_rank, rdp_size, recv_from, send, shutdown, size, tp_barrier, tp_rank, tp_size)
from .step import StepOutput, step

# SMP's `smp.state` (the config as smp.state.cfg): the runtime's state, not the module.
state = _state_module.state


def register_post_partition_hook(hook):
    """SMP's decorator: ``hook(model)`` runs on every rank right after the model is partitioned."""
    from .model import _post_partition_hooks

    _post_partition_hooks.append(hook)
    return hook

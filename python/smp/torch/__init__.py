"""SMP v1's PyTorch API on smp's C++ engine: ``import smp.torch as smp``.

A script written for ``smdistributed.modelparallel.torch`` runs with that import line changed
(docs/python.md lists every name: supported, warned or refused).
"""

from smp import __version__

from . import amp, nn, optimizers, patches, utils
from . import state as _state_module
from .checkpoint import load, resume_from_checkpoint, save, save_checkpoint
from .model import DistributedModel, partition, set_activation_checkpointing, set_partition
from .model_creation import (
    delay_param_initialization, model_creation, set_tensor_parallelism, tensor_parallelism, tp_register,
    tp_register_with_module)
from .optimizer import DistributedOptimizer
from .state import (
    DP_GROUP, MP_GROUP, PP_GROUP, RDP_GROUP, TP_GROUP, WORLD, CommGroup, RankType, allgather, barrier, broadcast,
    dp_barrier, dp_rank, dp_size, get_dp_group, get_dp_process_group, get_mp_group, get_mp_process_group,
    get_pp_group, get_pp_process_group, get_rdp_group, get_rdp_process_group, get_tp_group,
    get_tp_process_group, get_world_process_group, init, is_initialized, is_tracing, local_rank, local_size,
    mp_barrier, mp_rank, mp_size, pp_barrier, pp_rank, pp_size, rank, rdp_barrier, rdp_rank, rdp_size, recv_from,
    send, shutdown, size, tp_barrier, tp_rank, tp_size)
from .step import StepOutput, step

# SMP's `smp.state` (HF reads smp.state.cfg): the runtime's state, not the module.
state = _state_module.state

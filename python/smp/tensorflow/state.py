"""SMP's runtime for the TensorFlow front: init with SMP's config keys, the rank helpers, groups
and object messaging.

The rank helpers and messaging are the PyTorch front's (they only talk to the engine); init is
this front's own: it checks the keys that mean nothing for Keras models and starts the engine,
but no torch.distributed (TensorFlow ranks talk through the engine's communicators only).
"""

import atexit
import json
import warnings

from smp._engine import _C
from smp.torch.state import (  # noqa: F401  (re-exported: SMP's names)
    DP_GROUP, MP_GROUP, PP_GROUP, RDP_GROUP, TP_GROUP, WORLD, CommGroup, RankType, _Config, _parameters, allgather,
    barrier, broadcast, dp_barrier, dp_rank, dp_size, get_dp_group, get_mp_group, get_pp_group, get_rdp_group,
    get_tp_group, is_initialized, local_rank, local_size, mp_barrier, mp_rank, mp_size, pp_barrier, pp_rank,
    pp_size, rank, rdp_barrier, rdp_rank, rdp_size, recv_from, send, size, tp_barrier, tp_rank, tp_size)


class _State:
    def __init__(self):
        self.cfg = None  # the effective config (keys read as attributes too)
        self.model = None  # the one DistributedModel


state = _State()

# Keys of the PyTorch flavour that change what a model is (SMP's TensorFlow flavour had none of
# them): a value other than the default is refused, naming the key.
_TORCH_ONLY = {
    "tensor_parallel_degree": 1, "sharded_data_parallel_degree": 1, "shard_optimizer_state": False,
    "fp16": False, "bf16": False, "fp16_params": False, "offload_activations": False,
    "delayed_parameter_initialization": False,
}


def _check_tensorflow_keys(params):
    if params.get("horovod"):
        raise ValueError(
            'smp.init: config key "horovod": got true; allowed: false. smp.tensorflow has no Horovod hybrid: '
            'set "ddp": true instead, and smp averages the data-parallel replicas\' gradients itself '
            "(docs/tensorflow.md)")
    for key, default in _TORCH_ONLY.items():
        if key in params and params[key] != default:
            raise ValueError(
                f'smp.init: config key "{key}": got {json.dumps(params[key])}; allowed: {json.dumps(default)} '
                "(a PyTorch-only feature: smp.tensorflow pipelines and replicates Keras models only)")
    if params.get("contiguous") is False:
        warnings.warn('smp.init: config key "contiguous": false has no effect in smp.tensorflow; each stage is '
                      "a contiguous run of the model's top-level layers (docs/tensorflow.md)", stacklevel=3)


def init(config=None):
    """Collective over the world. Reads SMP's parameters (the dict, then SM_HP_MP_PARAMETERS,
    which wins) and starts the engine."""
    if _C.is_initialized():
        raise RuntimeError("smp.init: called twice")
    params = _parameters(config)
    _check_tensorflow_keys(params)
    _C.init(json.dumps(params))
    atexit.register(shutdown)
    state.cfg = _Config(json.loads(_C.config_json()))


def shutdown():
    if _C.is_initialized():
        _C.shutdown()

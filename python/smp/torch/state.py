"""SMP's runtime from Python: init, the rank helpers, groups and object messaging.

``init`` starts the C++ engine (MPI, the topology, one communicator per group) and, as SMP does,
torch.distributed's default group plus one process group per SMP group, so scripts can call
``torch.distributed.all_reduce(x, group=smp.get_dp_process_group())``.
"""

import atexit
import json
import os
import pickle
import socket
import types

import torch
import torch.distributed as dist

from smp._engine import _C

CommGroup = _C.CommGroup
RankType = _C.RankType
WORLD = CommGroup.WORLD
MP_GROUP = CommGroup.MP_GROUP
PP_GROUP = CommGroup.PP_GROUP
TP_GROUP = CommGroup.TP_GROUP
DP_GROUP = CommGroup.DP_GROUP
RDP_GROUP = CommGroup.RDP_GROUP

ENV_PARAMETERS = "SM_HP_MP_PARAMETERS"
_ALIASES = [("partitions", "pipeline_parallel_degree")]  # SMP's two names of one key


class _State:
    """What init builds: the config and torch.distributed's groups."""

    def __init__(self):
        self.cfg = None  # the effective config, a namespace of SMP's keys
        self.process_groups = {}  # CommGroup -> torch.distributed ProcessGroup
        self.model = None  # the one DistributedModel
        self.optimizer = None  # the one DistributedOptimizer
        # Hugging Face's save_pretrained applies each (smp_to_hf, hf_to_smp) pair's first function
        # to a state dict; smp's state dicts already have Hugging Face's names and shapes.
        self.module_manager = types.SimpleNamespace(translate_functions=[])
        self.tracing = False  # the model's forward runs to be captured (smp.is_tracing)


state = _State()


class _Config(dict):
    """The effective config; keys read as attributes too (``smp.state.cfg.fp16``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"smp: no config key '{key}'") from None


def _parameters(config):
    """SMP's parameters: the environment's SM_HP_MP_PARAMETERS wins over the dict given."""
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"smp.init: config must be a dict of SMP parameters or None, got {type(config).__name__}")
    params = dict(config or {})
    text = os.environ.get(ENV_PARAMETERS)
    if text:
        try:
            env = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"smp.init: {ENV_PARAMETERS} is not JSON ({e}): {text!r}") from None
        if not isinstance(env, dict):
            raise ValueError(f"smp.init: {ENV_PARAMETERS} must be a JSON object, got {text!r}")
        for a, b in _ALIASES:  # the environment's spelling of a key replaces the dict's other one
            if a in env:
                params.pop(b, None)
            if b in env:
                params.pop(a, None)
        params.update(env)
    return params


def init(config=None):
    """Collective over the world. Reads SMP's parameters (the dict, then the environment's
    SM_HP_MP_PARAMETERS, which wins), starts the engine and torch.distributed."""
    if _C.is_initialized():
        raise RuntimeError("smp.init: called twice")
    _C.init(json.dumps(_parameters(config)))
    atexit.register(shutdown)
    state.cfg = _Config(json.loads(_C.config_json()))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    _init_torch_distributed()


def device():
    """Where this rank computes: its GPU (cuda:local_rank) when there is one, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def is_initialized():
    return _C.is_initialized()


def is_tracing():
    """True while the model's forward runs only to be captured (the first step of each call
    signature, before the pipeline runs it): code that should not run then (logging, counters)
    can skip itself."""
    return state.tracing


def _require_init(what):
    if not _C.is_initialized():
        raise RuntimeError(f"smp.{what}: call smp.init() first")


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _init_torch_distributed():
    """torch.distributed's default group (gloo; NCCL too on GPUs) at rank 0's address, and one
    subgroup per SMP group, created on every rank in the same order. The rendezvous listens on
    the config's ddp_port (SMP's port for DDP) when given, else on a free port."""
    if not dist.is_initialized():
        address = None
        if rank() == 0:  # MASTER_ADDR (as Slurm scripts set it) when given: reachable from other nodes
            host = os.environ.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname())
            address = f"tcp://{host}:{state.cfg['ddp_port'] or _free_port()}"
        address = _broadcast_world(address)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=address, rank=rank(), world_size=size())
    for group in (MP_GROUP, PP_GROUP, TP_GROUP, DP_GROUP, RDP_GROUP):
        members = sorted({tuple(r) for r in allgather(_C.group_ranks(group), WORLD)})
        mine, _ = dist.new_subgroups_by_enumeration([list(m) for m in members])
        state.process_groups[group] = mine
    state.process_groups[WORLD] = dist.group.WORLD


def _broadcast_world(obj):
    if rank() == 0:
        broadcast(obj, WORLD)
        return obj
    return recv_from(0, RankType.WORLD_RANK)


# --- rank helpers -------------------------------------------------------------------------


def rank():
    _require_init("rank")
    return _C.rank()


def size():
    _require_init("size")
    return _C.size()


def local_rank():
    _require_init("local_rank")
    return _C.local_rank()


def local_size():
    _require_init("local_size")
    return _C.local_size()


def _group_helpers(group, name):
    def group_rank():
        _require_init(f"{name}_rank")
        return _C.group_rank(group)

    def group_size():
        _require_init(f"{name}_size")
        return _C.group_size(group)

    def group_ranks():
        _require_init(f"get_{name}_group")
        return list(_C.group_ranks(group))

    def process_group():
        _require_init(f"get_{name}_process_group")
        return state.process_groups[group]

    return group_rank, group_size, group_ranks, process_group


pp_rank, pp_size, get_pp_group, get_pp_process_group = _group_helpers(PP_GROUP, "pp")
tp_rank, tp_size, get_tp_group, get_tp_process_group = _group_helpers(TP_GROUP, "tp")
dp_rank, dp_size, get_dp_group, get_dp_process_group = _group_helpers(DP_GROUP, "dp")
rdp_rank, rdp_size, get_rdp_group, get_rdp_process_group = _group_helpers(RDP_GROUP, "rdp")
mp_rank, mp_size, get_mp_group, get_mp_process_group = _group_helpers(MP_GROUP, "mp")
get_world_process_group = lambda: state.process_groups[WORLD]  # noqa: E731


# --- object messaging -------------------------------------------------------------------


def _check_group(group, what):
    if not isinstance(group, CommGroup):
        allowed = ", ".join(f"smp.{g.name}" for g in CommGroup.__members__.values())
        raise ValueError(f"smp.{what}: group {group!r} is not an smp.CommGroup; allowed: {allowed}")


def _check_rank_type(rank_type, what):
    if not isinstance(rank_type, RankType):
        allowed = ", ".join(f"smp.RankType.{t}" for t in RankType.__members__)
        raise ValueError(f"smp.{what}: rank_type {rank_type!r} is not an smp.RankType; allowed: {allowed}")


def broadcast(obj, group):
    """Sends a picklable object to every other member of ``group``; each calls recv_from."""
    _require_init("broadcast")
    _check_group(group, "broadcast")
    _C.broadcast(pickle.dumps(obj), group)


def send(obj, dest_rank, rank_type):
    _require_init("send")
    _check_rank_type(rank_type, "send")
    _C.send(pickle.dumps(obj), dest_rank, rank_type)


def recv_from(src_rank, rank_type):
    _require_init("recv_from")
    _check_rank_type(rank_type, "recv_from")
    return pickle.loads(_C.recv_from(src_rank, rank_type))


def allgather(obj, group):
    """Collective over ``group``: every member's object, in group-rank order."""
    _require_init("allgather")
    _check_group(group, "allgather")
    return [pickle.loads(b) for b in _C.allgather(pickle.dumps(obj), group)]


def barrier(group=WORLD):
    _require_init("barrier")
    _check_group(group, "barrier")
    _C.barrier(group)


def dp_barrier():
    barrier(DP_GROUP)


def pp_barrier():
    barrier(PP_GROUP)


def tp_barrier():
    barrier(TP_GROUP)


def mp_barrier():
    barrier(MP_GROUP)


def rdp_barrier():
    barrier(RDP_GROUP)


def shutdown():
    """Ends torch.distributed and the engine (also done at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    if _C.is_initialized():
        _C.shutdown()

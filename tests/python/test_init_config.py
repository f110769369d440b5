"""smp.init's parameters: the dict, then SM_HP_MP_PARAMETERS, which wins (also over the dict's
other spelling of one key), and clear errors for a bad environment value."""

import json

import pytest

import importlib

state = importlib.import_module("smp.torch.state")  # the module (smp.torch.state the attribute is SMP's runtime state)


def test_environment_wins(monkeypatch):
    monkeypatch.setenv(state.ENV_PARAMETERS, '{"partitions": 2, "microbatches": 4}')
    got = state._parameters({"pipeline_parallel_degree": 1, "microbatches": 2, "ddp": True})
    assert got == {"partitions": 2, "microbatches": 4, "ddp": True}


def test_dict_alone(monkeypatch):
    monkeypatch.delenv(state.ENV_PARAMETERS, raising=False)
    assert state._parameters({"partitions": 2}) == {"partitions": 2}
    assert state._parameters(None) == {}


@pytest.mark.parametrize("text,message", [("{not json", "is not JSON"), ("[1, 2]", "must be a JSON object")])
def test_bad_environment(monkeypatch, text, message):
    monkeypatch.setenv(state.ENV_PARAMETERS, text)
    with pytest.raises(ValueError, match=message):
        state._parameters({})


def test_config_not_a_dict():
    with pytest.raises(TypeError, match="config must be a dict"):
        state._parameters("partitions=2")


def test_model_creation_marks():
    """Without smp.init (tp 1): modules are built in the dtype asked for; delayed initialisation
    leaves torch.empty weights as meta placeholders and builds buffers as usual; the contexts
    mark what they create (the marks act when smp.DistributedModel wraps)."""
    import torch

    import smp.torch as smp

    with smp.model_creation(tensor_parallelism=False, dtype=torch.float64):
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.dtype == torch.float64 and torch.get_default_dtype() == torch.float32
    with smp.delay_param_initialization():
        norm, bn = torch.nn.LayerNorm(4), torch.nn.BatchNorm1d(4)
    assert norm.weight.is_meta and bn.weight.is_meta and not bn.running_var.is_meta
    assert torch.equal(bn.running_var, torch.ones(4))
    with smp.tensor_parallelism(fused_softmax=False):
        marked = torch.nn.Linear(2, 2)
        with smp.tensor_parallelism(enabled=False):
            unmarked = torch.nn.Linear(2, 2)
    assert marked._smp_tp == {"fused_softmax": False} and unmarked._smp_tp is None
    tree = torch.nn.Sequential(torch.nn.Linear(2, 2))
    smp.set_tensor_parallelism(tree, distribute_embedding=False)
    assert all(m._smp_tp == {"distribute_embedding": False} for m in tree.modules())
    with pytest.warns(UserWarning, match="flash_attention=True has no effect"):
        with smp.model_creation(tensor_parallelism=True, flash_attention=True):
            pass
    with pytest.warns(UserWarning, match="my_key=1 is passed to smp.tp_register'ed modules only"):
        with smp.tensor_parallelism(my_key=1):
            pass
    with pytest.raises(ValueError, match="dtype must be a floating"):
        with smp.model_creation(dtype=torch.int32):
            pass
    with pytest.raises(TypeError, match="module_cls must be an nn.Module class"):
        smp.tp_register_with_module(len, torch.nn.Linear)
    with pytest.raises(TypeError, match="init_hook must be callable"):
        smp.tp_register_with_module(torch.nn.Linear, torch.nn.Linear, init_hook=3)


def test_ddp_port_is_the_rendezvous_port(run_mpi):
    """ddp_port: the torch.distributed rendezvous smp.init opens listens there on every rank."""
    port = state._free_port()
    r = run_mpi(2, "port_worker.py", json.dumps({"ddp": True, "ddp_port": port}))
    assert r.returncode == 0, r.stdout[-3000:]
    for rank in range(2):
        assert f"rank {rank} rendezvous port {port}" in r.stdout, r.stdout[-3000:]

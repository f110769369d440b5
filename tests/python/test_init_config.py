"""smp.init's parameters: the dict, then SM_HP_MP_PARAMETERS, which wins (also over the dict's
other spelling of one key), and clear errors for a bad environment value."""

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


def test_model_creation_without_tensor_parallelism():
    """Without smp.init (tp 1): the model is built plainly, in the dtype asked for."""
    import torch

    import smp.torch as smp

    with smp.model_creation(tensor_parallelism=False, dtype=torch.float64):
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.dtype == torch.float64 and torch.get_default_dtype() == torch.float32
    with pytest.raises(NotImplementedError, match="delayed_param_initialization"):
        with smp.model_creation(delayed_param_initialization=True):
            pass
    with pytest.raises(NotImplementedError, match="smp.tp_register"):
        smp.tp_register(torch.nn.Linear)

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

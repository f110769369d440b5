"""SMP's two checkpoint families from Python.

- ``smp.save`` / ``smp.load``: torch.save / torch.load of any object, to a per-rank file when
  ``partial`` (SMP's suffixes, e.g. ``model.pt_0_0``), written atomically; scripts pair them with
  ``model.local_state_dict()`` and ``optimizer.local_state_dict()``.
- ``smp.save_checkpoint`` / ``smp.resume_from_checkpoint``: the engine's checkpoints (partial or
  full, atomic, resharded on load under any layout; docs/checkpoint_format.md). The user content
  may be any picklable object. Resuming before the first step is deferred until the model is
  partitioned (as in SMP); the user content comes back at once.
"""

import base64
import json
import os
import pickle

import torch

from smp._engine import _C

from . import state as _state
from .model import _whole_shape


def _rank_path(f, partial):
    if not isinstance(f, (str, os.PathLike)):
        raise TypeError(f"smp.save/load: f must be a file path (str), got {type(f).__name__}")
    return _C.rank_path(os.fspath(f), bool(partial))


def save(obj, f, partial=True, pickle_module=pickle, pickle_protocol=2, v3=False):
    """Not collective: the calling rank writes ``f`` (with its rank suffix when partial).
    ``v3`` (Hugging Face passes it with shard_optimizer_state) changes nothing here: the suffix
    already names the rdp rank when optimizer state is sharded."""
    _state._require_init("save")
    path = _rank_path(f, partial)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp, pickle_module=pickle_module, pickle_protocol=pickle_protocol)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(f, map_location=None, pickle_module=None, partial=True, back_compat=False):
    _state._require_init("load")
    if back_compat:
        raise ValueError("smp.load: back_compat=True reads checkpoints of SMP < 1.10, which smp cannot read")
    path = _rank_path(f, partial)
    if not os.path.exists(path):
        raise FileNotFoundError(f"smp.load: no file {path} (partial={partial}: "
                                f"{'this rank' + chr(39) + 's file' if partial else 'the whole file'})")
    return torch.load(path, map_location=map_location, weights_only=False)


def _user_json(user_content):
    return json.dumps({"smp_pickle": base64.b64encode(pickle.dumps(user_content)).decode()})


def _user_object(manifest_user):
    if isinstance(manifest_user, dict) and "smp_pickle" in manifest_user:
        return pickle.loads(base64.b64decode(manifest_user["smp_pickle"]))
    return manifest_user


def _parts(model, optimizer, what):
    from .model import DistributedModel

    model = model if model is not None else _state.state.model
    if not isinstance(model, DistributedModel):
        raise TypeError(f"smp.{what}: model must be the smp.DistributedModel, got {type(model).__name__}")
    optimizer = optimizer if optimizer is not None else None
    return model, optimizer


def save_checkpoint(path, tag, partial=True, model=None, optimizer=None, user_content=None,
                    translate_if_full=True, num_kept_partial_checkpoints=None):
    """Collective over the world. Writes path/<tag>_partial (partial) or path/<tag> (full)."""
    _state._require_init("save_checkpoint")
    model, optimizer = _parts(model, optimizer, "save_checkpoint")
    if not model.partitioned:
        raise RuntimeError("smp.save_checkpoint: the model is partitioned at the first smp.step; save after it")
    engine_opt = optimizer._engine if optimizer is not None else None
    if optimizer is not None and engine_opt is None:
        raise ValueError(f"smp.save_checkpoint: {type(optimizer.optimizer).__name__}'s state lives in Python; "
                         "save it with smp.save(optimizer.local_state_dict(), ...) instead")
    to_file, config = (_to_module_names(model), _hf_config(model)) if translate_if_full and not partial else (None, "")
    if engine_opt is not None:
        optimizer._groups_to_engine()
    _C.save_checkpoint(os.fspath(path), tag, bool(partial), model._engine, engine_opt, _user_json(user_content),
                       int(num_kept_partial_checkpoints or 0), to_file, config)


def resume_from_checkpoint(path, tag=None, partial=True, strict=True, load_optimizer=True,
                           load_sharded_optimizer_state=True, translate_function=None):
    """Loads the model (and optimizer) from a save_checkpoint folder; returns the user content.
    Collective over the world once the model is partitioned; before, deferred to partitioning."""
    _state._require_init("resume_from_checkpoint")
    model = _state.state.model
    if model is None:
        raise RuntimeError("smp.resume_from_checkpoint: wrap the model in smp.DistributedModel first")
    if translate_function is not None and not callable(translate_function):
        raise TypeError(f"smp.resume_from_checkpoint: translate_function must be callable (a state dict -> a "
                        f"state dict), got {type(translate_function).__name__}")
    path, tag = os.fspath(path), tag or ""
    hf_files = _hf_weight_files(path, tag)
    if hf_files:  # Hugging Face's own folder (save_pretrained) or weights file
        if partial:
            raise ValueError(f"smp.resume_from_checkpoint: {os.path.join(path, tag)} holds Hugging Face weights, "
                             "a full checkpoint; pass partial=False")
        state = {}
        for f in hf_files:
            state.update(_read_weights(f))
        if translate_function is not None:
            state = translate_function(state)
        model.load_state_dict(state, strict=strict)  # whole tensors: each rank keeps its shard
        return None
    manifest = json.loads(_C.read_checkpoint_manifest(path, tag, bool(partial)))

    def load():
        opt = _state.state.optimizer
        engine_opt = opt._engine if (opt is not None and load_optimizer) else None
        from_file = None if partial else _from_module_names(model, translate_function)
        _C.resume_from_checkpoint(path, model._engine, engine_opt, tag, bool(partial), bool(strict),
                                  bool(load_optimizer and load_sharded_optimizer_state), from_file)
        if engine_opt is not None:
            opt._groups_from_engine()

    if model.partitioned:
        load()
    else:
        model._pending_resume = load
    return _user_object(manifest.get("user_content"))


# --- full checkpoints in the module's own names and shapes ------------------------------------


def _engine_parameters(model):
    """engine name -> (module name, the module's shape or None when the engine's is the same,
    the engine's whole shape) for the parameters the engine trains."""
    params = dict(model.module.named_parameters())
    out = {}
    for engine, name in model._engine_names.items():
        p = params[name]
        whole = _whole_shape(p, model._freed.get(id(p), (p, p.shape))[1])  # (another stage's: emptied here)
        out[engine] = (name, getattr(p, "_smp_hf_shape", None), list(whole))
    return out


def _to_module_names(model):
    """to_file of a full save: whole engine-named tensors -> the module's names and shapes (a
    Hugging Face model's: what from_pretrained reads)."""
    info = _engine_parameters(model)

    def to_file(tensors):
        out = []
        for engine, t in tensors.items():
            name, shape, _ = info.get(engine, (engine, None, None))
            out.append((name, t.reshape(shape).contiguous() if shape is not None else t))
        return out

    return to_file


def _from_module_names(model, translate_function=None):
    """from_file of a full load: the file's tensors (through translate_function when given)
    -> engine names and shapes."""
    info = _engine_parameters(model)
    back = {name: (engine, whole) for engine, (name, _, whole) in info.items()}

    def from_file(tensors):
        if translate_function is not None:
            tensors = translate_function(dict(tensors))
        out = {}
        for name, t in tensors.items():
            engine, whole = back.get(name, (name, None))
            out[engine] = t.reshape(whole) if whole is not None and list(t.shape) != whole else t
        return out

    return from_file


def _hf_config(model):
    """A Hugging Face model's config.json text, so from_pretrained loads the folder; else ""."""
    config = getattr(model.module, "config", None)
    return config.to_json_string() if hasattr(config, "to_json_string") else ""


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _hf_weight_files(path, tag):
    """The weight files of a Hugging Face checkpoint at path/tag (a .safetensors or .bin file,
    or a save_pretrained folder, sharded or not); [] when it is smp's own checkpoint."""
    where = os.path.join(path, tag) if tag else path
    if os.path.isfile(where) and where.endswith((".safetensors", ".bin")):
        return [where]
    if not os.path.isdir(where) or os.path.exists(os.path.join(where, "manifest.json")):
        return []
    for index in _HF_INDEXES:
        if os.path.exists(os.path.join(where, index)):
            with open(os.path.join(where, index)) as f:
                return [os.path.join(where, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    return [os.path.join(where, n) for n in _HF_WEIGHTS if os.path.exists(os.path.join(where, n))][:1]


def _read_weights(f):
    if f.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(f)
    return torch.load(f, map_location="cpu", weights_only=True)
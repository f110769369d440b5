"""SMP's ``smp.CheckpointManager`` for Keras models (instead of tf.train.Checkpoint.restore).

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = smp.CheckpointManager(checkpoint, directory, max_to_keep=3)
    manager.restore()          # the latest, if any: applied at partitioning, or at once after it
    ...
    manager.save()             # collective over the world

A checkpoint is a folder ``<directory>/<checkpoint_name>-<n>``: one ``stage_<p>.npz`` per
pipeline stage (written by its dp rank 0: the stage's variables and their optimizer slots) and
``manifest.json``, written last by rank 0 once every stage file is in (the folder is renamed into
place only then, so a half-written checkpoint is never found). Names are layout-free: a variable
is "<top-level layer>#<index in layer.weights>", an optimizer slot "<that>/<slot>", the optimizer's
own variables "optimizer/<name>"; any layout (another pipeline degree, another data-parallel
degree) restores any checkpoint of the same model, each rank reading the entries it holds.
"""

import glob
import json
import os
import shutil

import numpy as np

from smp._engine import _C

from . import state as _state

FORMAT = "smp.tensorflow checkpoint"
VERSION = 1


def _find(checkpoint, kind):
    from .model import DistributedModel

    children = checkpoint._trackable_children() if hasattr(checkpoint, "_trackable_children") else vars(checkpoint)
    for value in children.values():
        if kind == "model" and isinstance(value, DistributedModel):
            return value
        if kind == "optimizer" and hasattr(value, "apply_gradients"):
            return value
    return None


def _model_entries(model):
    """name -> variable for this rank's stage."""
    out = {}
    for layer in model.local_layers():
        for i, v in enumerate(layer.weights):
            out[f"{layer.name}#{i}"] = v
    return out


def _optimizer_entries(optimizer, model_entries):
    """name -> variable for the optimizer's variables: slots under their variable's name."""
    if optimizer is None:
        return {}
    if not optimizer.built:
        optimizer.build([v for v in model_entries.values() if v.trainable])
    by_prefix = {v.path.replace("/", "_") + "_": name for name, v in model_entries.items()}
    out = {}
    for v in optimizer.variables:
        owner = max((p for p in by_prefix if v.name.startswith(p)), key=len, default=None)
        if owner is None:
            out[f"optimizer/{v.name}"] = v
        else:
            out[f"{by_prefix[owner]}/{v.name[len(owner):]}"] = v
    return out


class CheckpointManager:
    """SMP's CheckpointManager(checkpoint, directory, max_to_keep, checkpoint_name)."""

    def __init__(self, checkpoint, directory="/opt/ml/checkpoints", max_to_keep=None, checkpoint_name="ckpt"):
        self.model = _find(checkpoint, "model")
        if self.model is None:
            raise ValueError("smp.CheckpointManager: checkpoint holds no smp.DistributedModel; allowed: "
                             "tf.train.Checkpoint(model=<smp.DistributedModel>, optimizer=<optimizer>)")
        self.optimizer = _find(checkpoint, "optimizer")
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"smp.CheckpointManager: max_to_keep {max_to_keep!r}; allowed: None or an int >= 1")
        self.directory, self.max_to_keep, self.name = directory, max_to_keep, checkpoint_name

    # --- listing --------------------------------------------------------------------------

    def _numbers(self):
        found = []
        for path in glob.glob(os.path.join(self.directory, f"{self.name}-*")):
            suffix = path.rsplit("-", 1)[1]
            if suffix.isdigit() and os.path.exists(os.path.join(path, "manifest.json")):
                found.append(int(suffix))
        return sorted(found)

    @property
    def checkpoints(self):
        return [os.path.join(self.directory, f"{self.name}-{n}") for n in self._numbers()]

    @property
    def latest_checkpoint(self):
        numbers = self._numbers()
        return os.path.join(self.directory, f"{self.name}-{numbers[-1]}") if numbers else None

    # --- save -----------------------------------------------------------------------------

    def save(self, checkpoint_number=None):
        """Collective over the world, after the first step. Returns the checkpoint's folder."""
        if not self.model.partitioned:
            raise RuntimeError("smp.CheckpointManager.save: the model is partitioned at the first step; save after it")
        numbers = self._numbers() if _state.rank() == 0 else None
        if checkpoint_number is None:  # rank 0 decides, so every rank writes into the same folder
            checkpoint_number = (numbers[-1] + 1) if numbers else 1
        checkpoint_number = _broadcast_from_zero(checkpoint_number)
        final = os.path.join(self.directory, f"{self.name}-{checkpoint_number}")
        staging = final + ".tmp"
        if _state.rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        _state.barrier()
        if _state.dp_rank() == 0:
            entries = _model_entries(self.model)
            entries.update(_optimizer_entries(self.optimizer, entries))
            arrays = {name: v.numpy() for name, v in entries.items()}
            path = os.path.join(staging, f"stage_{_state.pp_rank()}.npz")
            with open(path + ".part", "wb") as f:
                np.savez(f, **arrays)
            os.replace(path + ".part", path)
        _state.barrier()
        if _state.rank() == 0:
            with open(os.path.join(staging, "manifest.json"), "w") as f:
                json.dump({"format": FORMAT, "version": VERSION, "pipeline_parallel_degree": _state.pp_size(),
                           "files": [f"stage_{p}.npz" for p in range(_state.pp_size())]}, f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            if self.max_to_keep is not None:
                for old in self._numbers()[:-self.max_to_keep]:
                    shutil.rmtree(os.path.join(self.directory, f"{self.name}-{old}"), ignore_errors=True)
        _state.barrier()
        return final

    # --- restore --------------------------------------------------------------------------

    def restore(self, save_path=None):
        """The checkpoint at save_path, else the latest; None when there is none. Before the first
        step it is applied when the model is partitioned (each rank then loads what it holds)."""
        path = save_path or self.latest_checkpoint
        if path is None:
            return None
        manifest = os.path.join(path, "manifest.json")
        if not os.path.exists(manifest):
            raise _C.CheckpointError(f"smp.CheckpointManager.restore: {path} has no manifest.json; allowed: a "
                                     "folder written by smp.CheckpointManager.save (an incomplete one has none)")
        with open(manifest) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise _C.CheckpointError(f"smp.CheckpointManager.restore: {manifest} is format {meta.get('format')!r} "
                                     f"version {meta.get('version')!r}; allowed: {FORMAT!r} version {VERSION}")
        files = [os.path.join(path, name) for name in meta["files"]]

        def load(model):
            values = {}
            for file in files:
                with np.load(file) as data:
                    values.update({name: data[name] for name in data.files})
            entries = _model_entries(model)
            entries.update(_optimizer_entries(self.optimizer, entries))
            missing = sorted(set(entries) - set(values))
            if missing:
                raise _C.CheckpointError(
                    f"smp.CheckpointManager.restore: {path} has no entry for {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}; it was saved from another model")
            for name, v in entries.items():
                if tuple(values[name].shape) != tuple(v.shape):
                    raise _C.CheckpointError(f"smp.CheckpointManager.restore: {name} has shape "
                                             f"{tuple(values[name].shape)} in {path}; the model's is {tuple(v.shape)}")
                v.assign(values[name])

        if self.model.partitioned:
            load(self.model)
        else:
            self.model._smp()["pending_restore"] = load
        return path


def _broadcast_from_zero(value):
    if _state.rank() == 0:
        _state.broadcast(value, _state.WORLD)
        return value
    return _state.recv_from(0, _state.RankType.WORLD_RANK)

"""`import smdistributed.modelparallel.torch as smp` gives smp.torch itself: the same module
objects (so isinstance checks and smp.state agree), its submodules under both names."""

import sys

import smp.torch as _smp_torch
from smp.torch import *  # noqa: F401,F403
from smp.torch import __dict__ as _names

globals().update({k: v for k, v in _names.items() if not k.startswith("__")})
for _name, _module in list(sys.modules.items()):
    if _name.startswith("smp.torch."):
        sys.modules["smdistributed.modelparallel.torch." + _name[len("smp.torch."):]] = _module
# SMP's module of its runtime state (scripts import `state` from it).
sys.modules["smdistributed.modelparallel.torch.state_mod"] = sys.modules["smp.torch.state"]
del _name, _module, _names

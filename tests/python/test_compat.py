"""The opt-in compatibility package: SMP's module path serves smp.torch's own objects."""

import os
import subprocess
import sys

from conftest import ROOT

CODE = """
import smdistributed.modelparallel
import smdistributed.modelparallel.torch as smp
import smp.torch as real
from smdistributed.modelparallel.torch.nn import FusedLayerNorm
assert smp.DistributedModel is real.DistributedModel
assert FusedLayerNorm is real.nn.FusedLayerNorm and smp.state is real.state
assert smp.RankType.PP_RANK and smp.PP_GROUP and smp.step
print("compat ok", smdistributed.modelparallel.__version__)
"""


def test_smdistributed_module_path():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python", "compat"))
    r = subprocess.run([sys.executable, "-c", CODE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120)
    assert r.returncode == 0 and "compat ok" in r.stdout, r.stdout

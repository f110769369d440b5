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
from smdistributed.modelparallel.torch.nn.huggingface.gpt2 import (
    translate_hf_state_dict_to_smdistributed_gpt2, translate_state_dict_to_hf_gpt2)
from smdistributed.modelparallel.torch.nn.huggingface.gptj import translate_hf_gptj_state_dict_to_smdistributed_gptj
sd = {"transformer.wte.weight": 1}
assert translate_state_dict_to_hf_gpt2(translate_hf_state_dict_to_smdistributed_gpt2(sd), max_seq_len=8) == sd
assert smp.state.module_manager.translate_functions == []
assert smp.DistributedModel is real.DistributedModel
assert FusedLayerNorm is real.nn.FusedLayerNorm and smp.state is real.state
assert smp.RankType.PP_RANK and smp.PP_GROUP and smp.step
from smdistributed.modelparallel.torch.state_mod import state
from smdistributed.modelparallel.torch.patches.checkpoint import checkpoint, checkpoint_sequential
from smdistributed.modelparallel.torch.utils import get_distribution_axis, rmsg
assert state is real.state and checkpoint is real.patches.checkpoint.checkpoint and rmsg is real.utils.rmsg
print("compat ok", smdistributed.modelparallel.__version__)
"""


def test_smdistributed_module_path():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python", "compat"))
    r = subprocess.run([sys.executable, "-c", CODE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120)
    assert r.returncode == 0 and "compat ok" in r.stdout, r.stdout

"""Hugging Face models through smp.tensor_parallelism (hf_worker.py): every family of
hf_families.py (GPT-2, GPT-Neo, GPT-J, GPT-NeoX, LLaMA, BERT masked-LM and classifier, RoBERTa)
under tp2, pp2 and tp2 x pp2, each against the same transformers model in one process: logits,
every gradient, 20 steps of losses, the state dict in Hugging Face's names and shapes (a round
trip bit for bit), and a full checkpoint that transformers' from_pretrained loads. tp2split:
tp2 with prescaled_batch false (SMP's default flow), the two TP ranks fed different halves of
the batch; each family's blocks are batch regions (they gather the group's batch)."""

import pytest

from conftest import mpirun


@pytest.mark.parametrize("ranks,layout", [(2, "tp2"), (2, "pp2"), (4, "tp2pp2"), (2, "tp2split")])
def test_families_against_one_process(ranks, layout):
    r = mpirun(ranks, "hf_worker.py", "--layout", layout, env={"PYTHONWARNINGS": "ignore::UserWarning"})
    assert r.returncode == 0, r.stdout[-6000:]
    for family in ("gpt2", "gptneo", "gptj", "gptneox", "llama", "bert", "bert-cls", "roberta"):
        assert f"rank 0 {family} {layout}:" in r.stdout, r.stdout[-3000:]

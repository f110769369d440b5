"""smp.model_creation's delayed initialisation (never whole on a rank; Hugging Face's own
folders loaded into the shards), a model without a translation (a warning, replicated, same
losses as one process) and smp.tp_register_with_module (creation_worker.py, 2 ranks, tp2)."""

from conftest import mpirun


def test_delayed_untranslated_registered():
    r = mpirun(2, "creation_worker.py")
    assert r.returncode == 0, r.stdout[-6000:]
    for line in ("rank 0 delayed:", "rank 0 untranslated:", "rank 0 registered:", "rank 0 replicated_embedding:"):
        assert line in r.stdout, r.stdout[-3000:]

"""Opt-in compatibility package: SMP's own module path, `smdistributed.modelparallel.torch`,
served by smp. Installed separately (pip install ./python/compat); see docs/python.md."""

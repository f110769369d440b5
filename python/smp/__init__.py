"""smp: SageMaker's model parallel library (SMP v1) on an open C++ engine.

The PyTorch front is ``import smp.torch as smp``; see docs/python.md.
"""

__version__ = "1.15.0"  # the SMP v1 API level the front follows (scripts gate on >= 1.10)

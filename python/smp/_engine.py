"""Loads smp's C++ engine (the extension ``smp._C``).

Open MPI opens its transports as plugins that look its own symbols up globally, so libmpi is
loaded with RTLD_GLOBAL before the extension pulls it in (what mpi4py does too); libtorch comes
first, from the torch package, so the extension binds to the same copy PyTorch uses.
"""

import ctypes

import torch  # noqa: F401  (libtorch and libtorch_python before the extension)


def _load_mpi_globally():
    for name in ("libmpi.so.40", "libmpi.so"):
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


_load_mpi_globally()

from smp import _C  # noqa: E402

__all__ = ["_C"]

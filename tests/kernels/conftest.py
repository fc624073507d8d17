"""Kernel tests: on a machine without CUDA the Triton kernels run interpreted (TRITON_INTERPRET=1).

Triton decides between compiling and interpreting when a kernel is decorated, i.e. when kernels/triton_*.py is
imported, so the variable is set here, before any test module imports them.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module")
def nk():
    """The native CPU kernels, built for this machine (test modules that use it skip without a C compiler)."""
    from openlora.kernels import cpu_native
    k = cpu_native.load()
    assert k is not None, f"a C compiler is present but the native kernels did not load: " \
                          f"{cpu_native.unavailable_reason()}"
    return k

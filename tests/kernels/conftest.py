"""Kernel tests: on a machine without CUDA the Triton kernels run interpreted (TRITON_INTERPRET=1).

Triton decides between compiling and interpreting when a kernel is decorated, i.e. when kernels/triton_*.py is
imported, so the variable is set here, before any test module imports them.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

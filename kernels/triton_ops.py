"""The Triton kernel backend: `BACKEND`, a `KernelBackend` whose ops run the kernels of kernels/triton_*.py.

What it does: bundles the Triton LoRA kernels (SGMV/BGMV shrink/expand), the paged-attention decode kernel and the
K/V store kernel, plus the prefill path (flash-attn varlen on CUDA when importable, else torch SDPA), and logs once,
at import (i.e. when the engine builds the backend), which paths are active.
What it does not do: decide whether Triton should be used (kernels/ops.py `get_backend` does), or set
TRITON_INTERPRET (it must be set before triton is first imported; tests/kernels/conftest.py does it on CPU).
"""

from __future__ import annotations

import logging
import os

import torch

from openlora.kernels import triton_attention, triton_lora
from openlora.kernels.backend import KernelBackend

log = logging.getLogger("openlora.kernels")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

_description = (
    f"Triton kernels ({'interpreted on CPU' if INTERPRETED else 'compiled'}): SGMV/BGMV LoRA shrink/expand, "
    f"paged-attention decode, K/V store; prefill attention: {triton_attention.PREFILL_PATH}"
)

BACKEND = KernelBackend(
    name="triton",
    sgmv_shrink=triton_lora.sgmv_shrink,
    sgmv_expand=triton_lora.sgmv_expand,
    bgmv_shrink=triton_lora.bgmv_shrink,
    bgmv_expand=triton_lora.bgmv_expand,
    store_kv=triton_attention.store_kv,
    paged_attention=triton_attention.paged_attention,
    paged_attention_decode=triton_attention.paged_attention_decode,
    description=_description,
)



def log_active_paths() -> None:
    """Say in the log which kernel paths are active (called once when the backend is first built)."""
    log.info("kernel backend: %s (cuda available: %s)", _description, torch.cuda.is_available())


log_active_paths()

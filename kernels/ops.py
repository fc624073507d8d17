"""The kernel dispatch layer: one switch picks the torch references or the Triton kernels for every op.

What it does: `get_backend("auto" | "torch" | "triton" | "native", device)` returns a `KernelBackend` whose functions
have the signatures (and semantics) documented in kernels/reference.py. "auto" is Triton on CUDA, the native C
kernels (kernels/cpu_native.py) on CPU where they build, and torch otherwise;
"triton" on a CPU device runs the kernels under TRITON_INTERPRET=1 (exact, slow: for tests).
What it does not do: decide per call; the engine picks one backend at start-up and logs which. The engine
reaches kernels/triton_ops.py only through here, lazily (a CPU install never imports triton); triton_ops.py takes
the `KernelBackend` type from kernels/backend.py and never imports this module (an import-linter contract).
"""

from __future__ import annotations

import os

import torch

from openlora.kernels import reference, torch_ops
from openlora.kernels.backend import KernelBackend, KernelUnavailable

__all__ = ["KernelBackend", "KernelUnavailable", "TORCH_BACKEND", "get_backend"]


TORCH_BACKEND = KernelBackend(
    name="torch",
    sgmv_shrink=torch_ops.sgmv_shrink, sgmv_expand=torch_ops.sgmv_expand,
    bgmv_shrink=torch_ops.bgmv_shrink, bgmv_expand=torch_ops.bgmv_expand,
    store_kv=reference.store_kv, paged_attention=reference.paged_attention,
    paged_attention_decode=reference.paged_attention_decode,
    description="pure torch (segment/gather LoRA with a per-step plan, SDPA over gathered paged KV)",
    decode_bgmv_min_segments=1 << 30,
)


def _triton_backend() -> KernelBackend:
    try:
        from openlora.kernels import triton_ops  # provided by the Triton kernels module
    except ImportError as e:
        raise KernelUnavailable(f"the Triton kernel backend is not available: {e}") from None
    return triton_ops.BACKEND


def _native_backend() -> KernelBackend:
    from openlora.kernels import cpu_native
    nk = cpu_native.load()
    if nk is None:
        raise KernelUnavailable(f"the native CPU kernels are not available: {cpu_native.unavailable_reason()}")
    return cpu_native.backend(nk)


def get_backend(name: str, device: torch.device | str) -> KernelBackend:
    device = torch.device(device)
    if name == "torch":
        return TORCH_BACKEND
    if name == "native":
        if device.type != "cpu":
            raise KernelUnavailable(f"kernel_backend 'native' runs on CPU only, not on {device.type}")
        return _native_backend()
    if name == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise KernelUnavailable("kernel_backend 'triton' on a CPU device needs TRITON_INTERPRET=1 "
                                    "(set before triton is imported)")
        return _triton_backend()
    if name == "auto":
        if device.type == "cuda":
            try:
                return _triton_backend()
            except KernelUnavailable:
                return TORCH_BACKEND
        if device.type == "cpu":
            try:
                return _native_backend()
            except KernelUnavailable:
                return TORCH_BACKEND
        return TORCH_BACKEND
    raise ValueError(f"kernel backend {name!r}: allowed are 'auto', 'torch', 'triton', 'native'")

"""The shape of a kernel backend: `KernelBackend` (one frozen bundle of ops) and `KernelUnavailable`.

What it does: defines the type every backend module builds (kernels/ops.py `TORCH_BACKEND`, kernels/triton_ops.py
`BACKEND`), so that a backend module never needs to import the dispatch layer that chooses between them.
What it does not do: build or choose a backend (kernels/ops.py `get_backend` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class KernelBackend:
    name: str
    sgmv_shrink: Callable[..., None]
    sgmv_expand: Callable[..., None]
    bgmv_shrink: Callable[..., None]
    bgmv_expand: Callable[..., None]
    store_kv: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    paged_attention_decode: Callable[..., None]
    description: str = ""
    # An all-decode step uses BGMV (per-token gather) when it has at least this many adapter segments, and SGMV
    # (one matmul per segment) below it. GPU kernels gather per token cheaply (1). On CPU, gathering
    # [tokens, rank, hidden] weight rows costs more than one matmul per segment even at 64 segments for 64 tokens
    # (measured: 1.37 ms vs 0.87 ms per shrink, hidden 512, 1 thread), so the torch path always uses segments.
    decode_bgmv_min_segments: int = 1
    # float32 CPU models pre-pack their linear weights into oneDNN's blocked layout (inference/lora.py
    # `pack_cpu_weight`): the native backend does; the torch backend stays the plain F.linear reference path.
    pack_cpu_linears: bool = False
    # float32 fused elementwise ops for the model's forward (`add_rms_norm`, `rope_`, `silu_mul`: see
    # kernels/cpu_native.py NativeKernels), or None: the model's torch ops.
    fused: object | None = None


class KernelUnavailable(RuntimeError):
    """The requested kernel backend cannot run here (e.g. Triton not installed)."""

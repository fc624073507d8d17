"""Shared fixtures: tiny random Llama-family checkpoints and PEFT adapters, built once per test session.

The generator is devnet/tinymodels.py (fixed seeds: the same files every run). Tests never download anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton kernels run interpreted (exact, slow) where there is no CUDA device; set before anything imports triton.
try:
    import torch as _torch
    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a dependency
    pass
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class TinyFactory:
    """Builds (and caches for the session) tiny models and adapters under one temp directory."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple, Path] = {}

    def model(self, arch: str = "llama", seed: int = 0, **spec_kw) -> Path:
        from openlora.devnet.tinymodels import TinySpec, build_tiny_model
        key = ("model", arch, seed, tuple(sorted(spec_kw.items())))
        if key not in self._cache:
            name = f"{arch}-s{seed}" + "".join(f"-{k}{v}" for k, v in sorted(spec_kw.items()))
            self._cache[key] = build_tiny_model(self.root / name, TinySpec(arch=arch, seed=seed, **spec_kw))
        return self._cache[key]

    def adapter(self, base: Path, *, rank: int = 8, alpha: float = 16.0, targets=("q_proj", "v_proj"),
                use_rslora: bool = False, seed: int = 0) -> Path:
        from openlora.devnet.tinymodels import build_tiny_adapter
        key = ("adapter", str(base), rank, alpha, tuple(targets), use_rslora, seed)
        if key not in self._cache:
            name = f"{base.name}-lora-r{rank}-{'-'.join(t[0] for t in targets)}-{int(use_rslora)}-s{seed}"
            self._cache[key] = build_tiny_adapter(self.root / name, base, rank=rank, alpha=alpha,
                                                  targets=tuple(targets), use_rslora=use_rslora, seed=seed)
        return self._cache[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyFactory:
    return TinyFactory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def _sdk_ledger_outside_home(tmp_path_factory):
    """The SDK's voucher ledger (node/sdk_ledger.py) of every test lives in a temporary directory, never in the
    user's ~/.openlora/sdk (a test module may still point it elsewhere for itself)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENLORA_SDK_DIR", str(tmp_path_factory.mktemp("sdk-ledger")))
        yield

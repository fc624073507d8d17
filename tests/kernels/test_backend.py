"""The Triton backend as the engine sees it: built through kernels/ops.py, and usable interpreted even when
triton was imported before TRITON_INTERPRET=1 was set (`import peft` imports triton)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openlora.kernels import cpu_native, ops

ROOT = Path(__file__).resolve().parents[2]

LATE_INTERPRET = r"""
import os, torch
import triton.language                       # imported first, in compile mode (what `import peft` does)
os.environ["TRITON_INTERPRET"] = "1"
from openlora.kernels import reference as ref
from openlora.kernels.ops import get_backend
be = get_backend("triton", "cpu")
x, a, b = torch.randn(5, 40), torch.randn(20, 40), torch.randn(20, 24)
rs, rk, sc = torch.tensor([0, 8], dtype=torch.int32), torch.tensor([8, 12], dtype=torch.int32), torch.ones(2)
seg, ss = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int32)
tok = torch.tensor([1, 1, -1, 0, 0], dtype=torch.int32)
for kind, meta in (("sgmv", (seg, ss)), ("bgmv", (tok,))):
    b1, b2 = torch.zeros(5, 12), torch.zeros(5, 12)
    getattr(be, kind + "_shrink")(x, a, b1, *meta, rs, rk); getattr(ref, kind + "_shrink")(x, a, b2, *meta, rs, rk)
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-5)
    y1, y2 = torch.zeros(5, 24), torch.zeros(5, 24)
    getattr(be, kind + "_expand")(b2, b, y1, *meta, rs, rk, sc); getattr(ref, kind + "_expand")(b2, b, y2, *meta, rs, rk, sc)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
q, kc, vc = torch.randn(2, 4, 16), torch.randn(4, 8, 2, 16), torch.randn(4, 8, 2, 16)
bt, lens = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), torch.tensor([5, 16], dtype=torch.int32)
o1, o2 = torch.empty_like(q), torch.empty_like(q)
be.paged_attention_decode(q, kc, vc, bt, lens, 0.3, o1); ref.paged_attention_decode(q, kc, vc, bt, lens, 0.3, o2)
torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreted (CPU) path")
def test_interpreted_kernels_work_when_triton_was_imported_first():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", LATE_INTERPRET], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_get_backend_switch():
    assert ops.get_backend("torch", "cpu") is ops.TORCH_BACKEND
    native = ops.get_backend("auto", "cpu")           # the native C kernels where a compiler builds them
    assert native.name == ("native" if cpu_native.load() is not None else "torch")
    tri = ops.get_backend("triton", "cuda" if torch.cuda.is_available() else "cpu")
    assert tri.name == "triton"
    fields = ("sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand", "store_kv", "paged_attention",
              "paged_attention_decode")
    for f in fields:                                  # every op has the reference's signature
        import inspect

        assert inspect.signature(getattr(tri, f)) == inspect.signature(getattr(ops.TORCH_BACKEND, f)), f
        assert "Semantics:" in getattr(tri, f).__doc__, f
        ref_params = inspect.signature(getattr(ops.TORCH_BACKEND, f)).parameters
        got = inspect.signature(getattr(native, f)).parameters
        assert [(p.name, p.default) for p in got.values()] == [(p.name, p.default) for p in ref_params.values()], f
    if torch.cuda.is_available():
        assert ops.get_backend("auto", "cuda").name == "triton"

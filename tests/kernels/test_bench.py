"""bench/bench_kernels.py's GPU code paths, run with the Triton backend at tiny shapes (interpreted on CPU), so that
a GPU session does not find a plain bug in them: the figures themselves are only meaningful on a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from openlora.kernels import ops

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "bench" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_bench_functions_with_triton_backend():
    b = _bench()
    be = ops.get_backend("triton", DEVICE)
    cases = [(kind, 48, 40, ranks, tokens) for kind, _, _, ranks, tokens in b.cpu_lora_cases(48)][:4]
    rows = b.bench_lora(be, "triton", DEVICE, torch.float16, cases[:2] + [("sgmv", 48, 40, [8, 16], [3, 0]),
                                                                        ("bgmv", 48, 40, [8] * 64, [1] * 64)], 0, 1)
    rows += b.bench_attention(be, "triton", DEVICE, torch.float16, 2, 40, 8, 2, 32, 16, 0, 1)
    assert all(r.ms > 0 and r.bytes > 0 for r in rows)
    text = b.fmt_rows(rows, 989.0, 3350.0, 3000.0)
    assert "floor ms" in text and "paged_attention_decode" in text
    m = b.bench_mixed_vs_padded(be, "triton", DEVICE, torch.float16, 48, [2, 2], [8, 32], 0, 1)
    assert m["ratio"] > 0
    layer = b.bench_layer_overhead(be, "triton", DEVICE, torch.float16, 32, 48, 16, 4, 2, 8, 0, 1)
    assert layer["form"] == "bgmv" and layer["ratio"] > 0
    goals = b.goals_text(rows, [m], [layer], 3000.0)
    assert "BGMV decode" in goals and "mixed-rank SGMV / padded" in goals and "layer LoRA ratio" in goals

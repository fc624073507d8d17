"""Decode steps from static, padded buffers (what a CUDA graph replays) against HF + PEFT.

Mode "static" runs the exact inputs a captured graph would see (padded to a batch-size bucket, padding rows with
cache slot -1, adapter slot -1, a one-token context) without capturing, so it runs on CPU. Sequences of different
lengths finish at different steps, so the batch shrinks across buckets (3 -> 2 -> 1) and padding rows appear.
The capture itself is checked on CUDA by tests/kernels/test_engine_triton.py (graphs are on by default there).
"""

from __future__ import annotations

import pytest
import torch

from openlora.inference import LLM, SamplingParams
from openlora.inference.graphs import batch_buckets, rank_bucket
from tests.inference.hf_reference import HFReference
from tests.inference.test_hf_equivalence import ADAPTER_SPECS

PROMPTS = [[5, 17, 33, 100, 200, 45, 7], [300, 301, 302], [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11]]
ADAPTERS = ["all4rs", None, "mlp16"]
LENGTHS = [12, 20, 7]          # 3 sequences (bucket 4: one padding row), then 2, then 1


def test_buckets():
    assert batch_buckets(64)[:5] == (1, 2, 4, 8, 16) and batch_buckets(64)[-1] == 64
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert rank_bucket(0, 256) == 0 and rank_bucket(4, 256) == 16 and rank_bucket(17, 256) == 32
    assert rank_bucket(200, 128) == 200        # never narrower than the batch's largest rank


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_decode_path_matches_hf_peft(tiny, arch):
    model = tiny.model(arch)
    adapters = {name: tiny.adapter(model, **ADAPTER_SPECS[name]) for name in ("all4rs", "mlp16")}
    llm = LLM(model, dtype="float32", device="cpu", decode_graphs="static")
    for name, path in adapters.items():
        llm.load_adapter(name, path)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=0) for n in LENGTHS]
    outs = llm.generate(PROMPTS, params, adapters=ADAPTERS)
    graphs = llm.engine.runner.graphs
    assert graphs is not None and graphs.mode == "static"
    assert graphs.replays >= max(LENGTHS) - 1, "decode steps must run from the static buffers"
    ref = HFReference(model, {k: str(v) for k, v in adapters.items()})
    for i, (out, p, a, n) in enumerate(zip(outs, PROMPTS, ADAPTERS, LENGTHS)):
        tokens, lps = ref.greedy(p, a, n)
        assert out.error is None, out.error
        assert out.token_ids == tokens, f"{arch} sequence {i} ({a}) diverged from HF + PEFT on the static path"
        assert torch.allclose(torch.tensor(out.logprobs), torch.tensor(lps), atol=1e-4, rtol=1e-4)


def test_graph_modes_are_validated(tiny):
    from openlora.inference.engine import EngineConfig

    with pytest.raises(ValueError, match="decode_graphs"):
        EngineConfig(model="x", decode_graphs="sometimes")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            LLM(tiny.model("llama"), dtype="float32", device="cpu", decode_graphs="on")
    llm = LLM(tiny.model("llama"), dtype="float32", device="cpu")          # auto on CPU: eager decode
    assert llm.engine.runner.graphs is None

"""The engine with its kernel path forced to Triton (compiled on CUDA, interpreted on CPU) against HF + PEFT and the torch path.

One switch: LLM(..., kernel_backend="triton") runs the same requests through the Triton kernels (SGMV for the
prefill segments, BGMV for decode, the paged-attention decode kernel, the K/V store kernel) that "torch" runs
through the references. A mixed batch: different adapters (ranks 4/8/16, different target modules, rslora on
one) and one sequence with no adapter, in float32: greedy tokens must be identical to HF + PEFT and to the torch
path, log-probabilities within 1e-4 of HF + PEFT (as tests/inference/test_hf_equivalence.py) and 2e-5 of torch.
"""

from __future__ import annotations

import logging

import pytest
import torch


from openlora.inference import LLM, SamplingParams  # noqa: E402

from tests.inference.test_hf_equivalence import ADAPTER_SPECS, BATCH_ADAPTERS, PROMPTS  # noqa: E402

N_GEN = 10
# Compiled on a CUDA device (float32 end to end: IEEE dots in the kernels, TF32 off in torch), interpreted on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def generate(model, adapters, backend: str, **kw):
    llm = LLM(model, dtype="float32", device=DEVICE, kernel_backend=backend, **kw)
    for name, path in adapters.items():
        llm.load_adapter(name, path)
    params = SamplingParams(max_tokens=N_GEN, temperature=0.0, ignore_eos=True, logprobs=0)
    outs = llm.generate(PROMPTS, params, adapters=BATCH_ADAPTERS)
    for out in outs:
        assert out.error is None, out.error
    return outs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_triton_path_matches_hf_peft_and_torch_path(tiny, arch, caplog):
    model = tiny.model(arch)
    adapters = {name: tiny.adapter(model, **spec) for name, spec in ADAPTER_SPECS.items()}
    with caplog.at_level(logging.INFO):
        got = generate(model, adapters, "triton")
    assert "triton" in caplog.text and "prefill attention" in caplog.text, "the startup log names the kernel paths"
    want = generate(model, adapters, "torch")

    from tests.inference.hf_reference import HFReference

    ref = HFReference(model, {k: str(v) for k, v in adapters.items()})
    for i, (g, w, p, a) in enumerate(zip(got, want, PROMPTS, BATCH_ADAPTERS)):
        tokens, lps = ref.greedy(p, a, N_GEN)
        assert g.token_ids == tokens, f"{arch} sequence {i} ({a}): Triton path diverged from HF + PEFT"
        assert g.token_ids == w.token_ids, f"{arch} sequence {i} ({a}): Triton and torch paths diverged"
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(lps), atol=1e-4, rtol=1e-4)
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=2e-5, rtol=2e-5)


def test_triton_path_with_chunked_prefill_and_tiny_kv_pool(tiny):
    """Chunked prefill (tiny token budget) and a tiny KV pool (preemption) through the Triton path."""
    model = tiny.model("llama")
    adapters = {name: tiny.adapter(model, **spec) for name, spec in ADAPTER_SPECS.items()}
    kw = dict(max_num_batched_tokens=8, num_kv_blocks=10, block_size=4)   # 4 sequences need 18 blocks
    got = generate(model, adapters, "triton", **kw)
    want = generate(model, adapters, "torch", **kw)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=2e-5, rtol=2e-5)


def test_triton_decode_from_graph_buffers_matches_eager(tiny):
    """Decode steps from the static, padded buffers: captured as CUDA graphs on a GPU ("on"), run eagerly from the
    same buffers on CPU ("static"); tokens identical to the eager path, log-probabilities within 2e-5."""
    model = tiny.model("llama")
    adapters = {name: tiny.adapter(model, **spec) for name, spec in ADAPTER_SPECS.items()}
    mode = "on" if DEVICE == "cuda" else "static"
    llm_g = LLM(model, dtype="float32", device=DEVICE, kernel_backend="triton", decode_graphs=mode)
    llm_e = LLM(model, dtype="float32", device=DEVICE, kernel_backend="triton", decode_graphs="off")
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=0) for n in (N_GEN, 3, 7, 5)]
    outs = []
    for llm in (llm_g, llm_e):
        for name, path in adapters.items():
            llm.load_adapter(name, path)
        outs.append(llm.generate(PROMPTS, params, adapters=BATCH_ADAPTERS))
    graphs = llm_g.engine.runner.graphs
    assert graphs.replays >= N_GEN - 1
    if DEVICE == "cuda":
        assert graphs.captures >= 3, "batches of 4, 2 and 1 sequences each need their own graph"
    else:
        # the graph buffers' block tables are max_model_len wide, so on CPU (a 16-program split target) the decode
        # attention there runs split-KV (ranges past each sequence's end included) while the eager path does not
        from openlora.kernels import triton_attention

        runner = llm_g.engine.runner
        bound = graphs.block_tables.shape[1] * runner.blocks.block_size
        assert triton_attention.decode_splits(1, runner.spec.num_kv_heads, bound, torch.device(DEVICE))[0] > 1
    for g, e in zip(*outs):
        assert g.error is None and e.error is None
        assert g.token_ids == e.token_ids
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=2e-5, rtol=2e-5)


def test_triton_path_one_launch_pair_per_target_matches(tiny):
    """lora_sliced_launch=False (one shrink + expand per LoRA target, the benchmarks' comparison point) computes
    the same function as the default sliced launches: tokens identical to the torch path, logprobs within 2e-5."""
    model = tiny.model("llama")
    adapters = {name: tiny.adapter(model, **spec) for name, spec in ADAPTER_SPECS.items()}
    got = generate(model, adapters, "triton", lora_sliced_launch=False)
    want = generate(model, adapters, "torch")
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=2e-5, rtol=2e-5)

"""The engine against HF transformers + PEFT: prefill logits and greedy continuations of mixed-adapter batches.

For each supported architecture: a batch where sequences use different adapters (different ranks, different target
modules, rslora on one) and one uses none. Float32 logits within 1e-4 relative; identical greedy tokens.
Also with preemption forced (tiny KV pool), chunked prefill forced (tiny token budget) and prefix caching on.
"""

from __future__ import annotations

import pytest
import torch

from openlora.devnet.tinymodels import ALL_TARGETS, ARCHS
from openlora.inference import LLM, SamplingParams
from tests.inference.hf_reference import HFReference

N_GEN = 32
PROMPTS = [
    [5, 17, 33, 100, 200, 45, 7],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    [300, 301, 302],
    [42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52],
]
ADAPTER_SPECS = {
    "qv8": dict(rank=8, targets=("q_proj", "v_proj"), seed=1),
    "all4rs": dict(rank=4, targets=ALL_TARGETS, use_rslora=True, alpha=8.0, seed=2),
    "mlp16": dict(rank=16, targets=("o_proj", "gate_proj", "up_proj", "down_proj"), seed=3),
}
BATCH_ADAPTERS = ["qv8", "all4rs", None, "mlp16"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=ARCHS)
def setup(request, tiny):
    arch = request.param
    model = tiny.model(arch)
    adapters = {name: tiny.adapter(model, **spec) for name, spec in ADAPTER_SPECS.items()}
    ref = HFReference(model, {k: str(v) for k, v in adapters.items()})
    expected = [ref.greedy(p, a, N_GEN) for p, a in zip(PROMPTS, BATCH_ADAPTERS)]
    return arch, model, adapters, ref, expected


def make_llm(model, adapters, **kw) -> LLM:
    llm = LLM(model, dtype="float32", device="cpu", **kw)
    for name, path in adapters.items():
        llm.load_adapter(name, path)
    return llm


def check_generation(llm: LLM, expected) -> None:
    params = SamplingParams(max_tokens=N_GEN, temperature=0.0, ignore_eos=True, logprobs=0)
    outs = llm.generate(PROMPTS, params, adapters=BATCH_ADAPTERS)
    for i, (out, (tokens, lps)) in enumerate(zip(outs, expected)):
        assert out.error is None, out.error
        assert out.token_ids == tokens, f"sequence {i} ({BATCH_ADAPTERS[i]}) diverged from HF+PEFT"
        assert torch.allclose(torch.tensor(out.logprobs), torch.tensor(lps), atol=1e-4, rtol=1e-4)


def test_prefill_logits_match_hf_peft(setup):
    arch, model, adapters, ref, _ = setup
    llm = make_llm(model, adapters)
    eng = llm.engine
    for p, a in zip(PROMPTS, BATCH_ADAPTERS):
        eng.add_request(p, SamplingParams(max_tokens=1, temperature=0.0), a)
    sched = eng.scheduler.schedule()
    assert len(sched.scheduled) == len(PROMPTS)          # one mixed batch, one forward
    result = eng.runner.run(sched)
    by_id = dict(zip(result.request_ids, result.logits))
    for s, p, a in zip(sorted(sched.scheduled, key=lambda s: int(s.seq.request_id.split("-")[1])), PROMPTS,
                       BATCH_ADAPTERS):
        want = ref.logits(p, a)[-1]
        got = by_id[s.seq.request_id]
        assert rel_err(got, want) <= 1e-4, f"{arch} adapter={a}: prefill logits differ by {rel_err(got, want):.2e}"
    # the adapters really change the output (the comparison above is not vacuous)
    assert rel_err(ref.logits(PROMPTS[0], "qv8")[-1], ref.logits(PROMPTS[0], None)[-1]) > 1e-2


@pytest.mark.parametrize("decode_form", ["sgmv", "bgmv"])
def test_greedy_mixed_batch_matches_hf_peft(setup, decode_form):
    _, model, adapters, _, expected = setup
    llm = make_llm(model, adapters, decode_bgmv_min_segments=1 if decode_form == "bgmv" else 10**6)
    check_generation(llm, expected)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_greedy_matches_hf_peft_on_each_cpu_backend(setup, backend):
    """Both CPU backends, named explicitly: the pure-torch one and the native C kernels (with oneDNN-packed
    linears); "auto" picks the native one where a C compiler exists."""
    from openlora.kernels import cpu_native
    if backend == "native" and cpu_native.load() is None:
        pytest.skip(f"native CPU kernels unavailable: {cpu_native.unavailable_reason()}")
    _, model, adapters, _, expected = setup
    llm = make_llm(model, adapters, kernel_backend=backend)
    assert llm.engine.backend.name == backend
    check_generation(llm, expected)


def test_greedy_with_forced_preemption(setup):
    _, model, adapters, _, expected = setup
    llm = make_llm(model, adapters, block_size=4, num_kv_blocks=16, enable_prefix_caching=False)
    check_generation(llm, expected)
    assert llm.engine.scheduler.num_preemptions > 0, "the tiny KV pool should have forced preemption"


def test_greedy_with_forced_chunked_prefill(setup):
    _, model, adapters, _, expected = setup
    llm = make_llm(model, adapters, max_num_batched_tokens=5)
    check_generation(llm, expected)


def test_prefix_cache_never_shared_across_adapters(setup):
    _, model, adapters, ref, _ = setup
    llm = make_llm(model, adapters, block_size=4)
    prompt = list(range(20, 45))
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    first = llm.generate([prompt], params, adapters=["qv8"])[0]
    other = llm.generate([prompt], params, adapters=["mlp16"])[0]
    again = llm.generate([prompt], params, adapters=["qv8"])[0]
    assert first.num_cached_tokens == 0
    assert other.num_cached_tokens == 0, "a different adapter must not reuse another adapter's KV blocks"
    assert again.num_cached_tokens == 24, "the same adapter and prefix must hit the prefix cache"
    assert first.token_ids == again.token_ids == ref.greedy(prompt, "qv8", 8)[0]
    assert other.token_ids == ref.greedy(prompt, "mlp16", 8)[0]

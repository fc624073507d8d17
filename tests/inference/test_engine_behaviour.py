"""Engine behaviour beyond logits: sampling controls, stops, streaming, abort, bad input failing alone."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from openlora.inference import LLM, AdapterError, RequestError, SamplingParams
from openlora.inference.client import AsyncEngine, GenerateRequest


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.model("llama")


@pytest.fixture(scope="module")
def adapter(tiny, model):
    return tiny.adapter(model, rank=8, seed=5)


@pytest.fixture()
def llm(model, adapter):
    llm = LLM(model, dtype="float32", device="cpu", block_size=4, num_kv_blocks=64)
    llm.load_adapter("a", adapter)
    return llm


PROMPT = [5, 17, 33, 100, 200, 45, 7]


def test_seeded_sampling_is_reproducible_and_seed_dependent(llm):
    p = dict(max_tokens=24, temperature=1.0, ignore_eos=True)
    a = llm.generate([PROMPT] * 2, [SamplingParams(seed=1, **p), SamplingParams(seed=1, **p)])
    b = llm.generate([PROMPT], SamplingParams(seed=2, **p))
    assert a[0].token_ids == a[1].token_ids
    assert a[0].token_ids != b[0].token_ids


def test_top_k_1_and_tiny_top_p_equal_greedy(llm):
    greedy = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0]
    k1 = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0.8, top_k=1, seed=3, ignore_eos=True))[0]
    p0 = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0.8, top_p=1e-6, seed=4,
                                             ignore_eos=True))[0]
    assert greedy.token_ids == k1.token_ids == p0.token_ids


def test_logprobs_top_n(llm):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, ignore_eos=True))[0]
    assert len(out.logprobs) == len(out.top_logprobs) == 5
    for tok, lp, top in zip(out.token_ids, out.logprobs, out.top_logprobs):
        assert len(top) == 3
        assert max(top.values()) == pytest.approx(lp, abs=1e-6)   # greedy token is the most likely
        assert tok in top and lp <= 0.0


def test_stop_token_ids_and_max_tokens(llm):
    ref = llm.generate(PROMPT, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    assert ref.finish_reason == "length" and len(ref.token_ids) == 10
    stop_at = ref.token_ids[4]
    first = ref.token_ids.index(stop_at)
    out = llm.generate(PROMPT, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True,
                                              stop_token_ids=(stop_at,)))[0]
    assert out.finish_reason == "stop" and out.token_ids == ref.token_ids[:first + 1]


def test_stop_strings_truncate_text(llm):
    ref = llm.generate(PROMPT, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))[0]
    assert len(ref.text) > 6
    stop = ref.text[3:6]
    out = llm.generate(PROMPT, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=(stop,)))[0]
    assert out.finish_reason == "stop"
    assert out.text == ref.text[:ref.text.index(stop)]


def test_text_prompts_and_incremental_detokenization(llm):
    llm.engine.add_request("Hello world", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), "a",
                           request_id="s1")
    pieces, final = [], None
    while llm.engine.has_unfinished():
        for out in llm.engine.step():
            pieces.append(out.new_text)
            final = out
    assert final.finished and "".join(pieces) == final.text
    assert final.text == llm.tokenizer.decode(final.token_ids, skip_special_tokens=True)


def test_abort_frees_blocks(llm):
    eng = llm.engine
    free0 = eng.blocks.num_free
    eng.add_request(PROMPT, SamplingParams(max_tokens=50, ignore_eos=True), "a", request_id="x")
    eng.step()
    eng.step()
    assert eng.blocks.num_free < free0
    out = eng.abort("x")
    assert out.finished and out.finish_reason == "abort"
    assert eng.blocks.num_free == free0 and not eng.has_unfinished()
    assert all(info.refs == 0 for info in eng.adapters.list())


def test_bad_requests_fail_alone(llm):
    good = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    too_long = list(range(1, 300)) * 4
    outs = llm.generate([PROMPT, PROMPT, too_long, [10**6]], good, adapters=[None, "nope", None, None])
    assert outs[0].error is None and len(outs[0].token_ids) == 4
    assert outs[1].finish_reason == "error" and "unknown adapter 'nope'" in outs[1].error
    assert "context" in outs[2].error or "KV cache" in outs[2].error
    assert "token ids" in outs[3].error
    with pytest.raises(RequestError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0.0)


def _corrupt_copy(src, dst, mutate):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    mutate(dst)
    return dst


def test_bad_adapters_are_rejected_with_reason(llm, adapter, tiny, tmp_path):
    def nan(d):
        t = load_file(d / "adapter_model.safetensors")
        k = next(iter(t))
        t[k][0, 0] = float("nan")
        save_file(t, d / "adapter_model.safetensors")

    def truncate(d):
        data = (d / "adapter_model.safetensors").read_bytes()
        (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])

    def wrong_base(d):
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "meta-llama/Llama-3-70B"
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    def pickle_only(d):
        (d / "adapter_model.safetensors").unlink()
        torch.save({"x": torch.zeros(1)}, d / "adapter_model.bin")

    other_base = tiny.model("llama", seed=0, hidden_size=32, intermediate_size=64)
    wrong_shape = tiny.adapter(other_base, rank=4)

    def shape_src(d):
        for f in wrong_shape.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = llm.engine.spec.model_id
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    cases = {"nan": (nan, "NaN"), "trunc": (truncate, "corrupt or truncated"),
             "base": (wrong_base, "targets base model"), "pickle": (pickle_only, "pickled weights are never"),
             "shape": (shape_src, "the base model needs")}
    for name, (mutate, reason) in cases.items():
        bad = _corrupt_copy(adapter, tmp_path / name, mutate)
        with pytest.raises(AdapterError, match=reason):
            llm.load_adapter(name, bad)
    # requests naming a rejected adapter fail with the reason; the others are served
    outs = llm.generate([PROMPT, PROMPT], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
                        adapters=["nan", "a"])
    assert "NaN" in outs[0].error and outs[1].error is None and len(outs[1].token_ids) == 3


def test_async_client_streams_and_aborts(llm):
    engine = AsyncEngine(llm.engine)

    async def main():
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        outs = [o async for o in engine.submit(GenerateRequest(PROMPT, params, "a"))]
        assert outs[-1].finished and [t for o in outs for t in o.new_token_ids] == outs[-1].token_ids
        # a consumer that stops early aborts its request and frees its blocks
        stream = engine.submit(GenerateRequest(PROMPT, SamplingParams(max_tokens=200, ignore_eos=True), None))
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(200):
            if not llm.engine.has_unfinished():
                break
            await asyncio.sleep(0.01)
        return outs[-1].token_ids

    try:
        tokens = asyncio.run(main())
        assert not llm.engine.has_unfinished()
        sync = llm.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), adapters="a")
        assert tokens == sync[0].token_ids
    finally:
        engine.shutdown()

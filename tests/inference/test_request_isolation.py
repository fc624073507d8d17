"""One request cannot break the engine for the others (issue 14, item 2): every bad sampling value is refused when
the request is made; the sampler never feeds NaN to multinomial, even for extreme logits at the smallest allowed
temperature; a failure while one request is sampled, detokenized or run fails that request alone (its KV blocks
freed) while the others complete with the tokens they would have had anyway; an engine-wide failure ends every
stream with EngineDeadError and `AsyncEngine.dead` says why."""

from __future__ import annotations

import asyncio

import pytest
import torch

from openlora.inference import LLM, RequestError, SamplingParams
from openlora.inference.client import AsyncEngine, GenerateRequest
from openlora.inference.errors import EngineDeadError
from openlora.inference.sampling import MIN_TEMPERATURE, Sampler
from openlora.inference.sequence import Sequence

PROMPT = [5, 17, 33, 100, 200, 45, 7]
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)

BAD_PARAMS = [
    dict(seed="x"), dict(seed=1.5), dict(seed=2**64), dict(seed=2**63), dict(seed=-1), dict(seed=True),
    dict(temperature=1e-300), dict(temperature=MIN_TEMPERATURE / 2), dict(temperature=float("nan")),
    dict(temperature=float("inf")), dict(temperature=-1.0), dict(temperature=1e6), dict(temperature="0.5"),
    dict(temperature=True), dict(temperature=10**400),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=float("nan")), dict(top_p=True), dict(top_p="1"),
    dict(top_k=-2), dict(top_k=True), dict(top_k=2.0), dict(top_k=2**40),
    dict(max_tokens=0), dict(max_tokens=True), dict(max_tokens=2.0), dict(max_tokens=10**12),
    dict(logprobs=-1), dict(logprobs=21), dict(logprobs=True), dict(logprobs=1.0),
    dict(stop=[""]), dict(stop=["a"] * 5), dict(stop=["x" * 257]), dict(stop=[1]), dict(stop=5),
    dict(stop_token_ids=[-1]), dict(stop_token_ids=["3"]), dict(stop_token_ids=[True]),
    dict(ignore_eos="false"), dict(ignore_eos=1),
]


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.model("llama")


@pytest.fixture()
def llm(model):
    return LLM(model, dtype="float32", device="cpu", block_size=4, num_kv_blocks=64)


@pytest.mark.parametrize("kw", BAD_PARAMS, ids=lambda kw: repr(kw)[:40])
def test_every_bad_sampling_value_is_refused_with_its_name(kw):
    with pytest.raises(RequestError, match=next(iter(kw))):
        SamplingParams(**kw)


def test_limits_themselves_are_accepted():
    SamplingParams(seed=0)
    SamplingParams(seed=2**63 - 1, temperature=MIN_TEMPERATURE, top_p=1e-9, top_k=0, logprobs=20,
                   stop=["a", "b", "c", "d" * 256], max_tokens=1)
    assert SamplingParams(temperature=0).greedy and isinstance(SamplingParams(temperature=1).temperature, float)


def test_extreme_logits_at_the_smallest_temperature_give_finite_probabilities():
    V = 64
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(V, generator=g) * 1e4,                          # spread far beyond exp's range
            torch.full((V,), -3e38).index_fill(0, torch.tensor([7]), 3e38),   # max - min overflows float32
            torch.full((V,), 1e35).index_fill(0, torch.tensor([3, 9]), 2e35),
            torch.full((V,), float("-inf")).index_fill(0, torch.tensor([5]), -1e30)]
    for params in (SamplingParams(temperature=MIN_TEMPERATURE), SamplingParams(temperature=MIN_TEMPERATURE, top_k=3),
                   SamplingParams(temperature=MIN_TEMPERATURE, top_p=0.5), SamplingParams(temperature=100.0)):
        for row in rows:
            p = Sampler.probs(row, params)
            assert torch.isfinite(p).all() and (p >= 0).all() and abs(float(p.sum()) - 1.0) < 1e-5
            assert p[int(row.argmax())] > 0                       # the most likely token is always allowed
    # the sampler without the max subtraction would have fed NaN to multinomial for the same rows
    assert torch.isnan(torch.softmax(rows[2] / MIN_TEMPERATURE, -1)).any()
    logits = torch.stack(rows)
    out = Sampler()(logits, [SamplingParams(temperature=MIN_TEMPERATURE, seed=1, logprobs=3)] * 4,
                    [torch.Generator().manual_seed(1) for _ in rows])
    assert [o.error for o in out] == [None] * 4
    assert [o.token_id for o in out] == logits.argmax(-1).tolist()   # at T=1e-4 these rows are certain
    assert out[1].token_id == 7 and out[3].token_id == 5


def test_a_non_finite_logits_row_fails_alone():
    logits = torch.randn(4, 32)
    logits[1, 3] = float("nan")
    logits[2, 0] = float("inf")
    logits[3] = float("-inf")
    params = [SamplingParams(temperature=1.0, seed=2), GREEDY, SamplingParams(temperature=0.5, logprobs=2),
              SamplingParams(temperature=1.0)]
    out = Sampler()(logits, params, [torch.Generator().manual_seed(2), None, None, None])
    assert out[0].error is None and 0 <= out[0].token_id < 32
    assert all("non-finite logits" in o.error for o in out[1:])


def test_logprobs_above_the_vocabulary_size_are_capped():
    out = Sampler()(torch.randn(1, 8), [SamplingParams(temperature=0.0, logprobs=20)], [None])
    assert out[0].error is None and len(out[0].top_logprobs) == 8


def _reference(model, prompts):
    ref = LLM(model, dtype="float32", device="cpu", block_size=4, num_kv_blocks=64)
    return [o.token_ids for o in ref.generate(prompts, GREEDY)]


def test_a_request_failing_in_postprocess_fails_alone_and_frees_its_blocks(llm, model, monkeypatch, caplog):
    eng = llm.engine
    free0 = eng.blocks.num_free
    append = Sequence.append

    def append_or_fail(self, sample):
        if self.request_id == "victim" and len(self.output_ids) == 2:
            raise RuntimeError("injected decode failure")
        append(self, sample)

    monkeypatch.setattr(Sequence, "append", append_or_fail)
    eng.add_request(PROMPT, GREEDY, request_id="before")
    eng.add_request(PROMPT[:5], GREEDY, request_id="victim")
    eng.add_request(PROMPT[2:], GREEDY, request_id="after")
    final = {}
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                final[out.request_id] = out
    # the client is told which request failed and where to look, not the exception's text (that is logged)
    assert final["victim"].finish_reason == "error" and "internal error" in final["victim"].error
    assert "victim" in final["victim"].error and "injected decode failure" not in final["victim"].error
    assert "injected decode failure" in caplog.text
    assert len(final["victim"].token_ids) == 2
    assert [final["before"].token_ids, final["after"].token_ids] == _reference(model, [PROMPT, PROMPT[2:]])
    assert eng.blocks.num_free == free0 and not eng.scheduler.running


def test_a_request_whose_sampling_raises_fails_alone(llm, model, monkeypatch, caplog):
    sample_row = Sampler._sample_row

    def sample_or_fail(row, p, gen):
        if p.seed == 666:
            raise RuntimeError("injected sampler failure")
        return sample_row(row, p, gen)

    monkeypatch.setattr(Sampler, "_sample_row", staticmethod(sample_or_fail))
    outs = llm.generate([PROMPT, PROMPT, PROMPT[1:]],
                        [GREEDY, SamplingParams(max_tokens=6, temperature=0.7, seed=666), GREEDY])
    assert outs[1].finish_reason == "error" and "sampling this request failed" in outs[1].error
    assert "injected sampler failure" in caplog.text
    assert [outs[0].token_ids, outs[2].token_ids] == _reference(model, [PROMPT, PROMPT[1:]])
    assert not llm.engine.scheduler.running and llm.engine.blocks.num_free == llm.engine.blocks.num_blocks


def test_a_forward_failing_because_of_one_request_fails_only_that_request(llm, model, monkeypatch, caplog):
    eng = llm.engine
    run, seen = eng.runner.run, []

    def run_or_fail(sched):
        ids = [s.seq.request_id for s in sched.scheduled]
        seen.append(ids)
        if "victim" in ids and len(eng.scheduler.running) > 0 and any(s.num_new_tokens == 1 for s in sched.scheduled):
            raise RuntimeError("injected forward failure")
        return run(sched)

    monkeypatch.setattr(eng.runner, "run", run_or_fail)
    eng.add_request(PROMPT, GREEDY, request_id="a")
    eng.add_request(PROMPT[:4], GREEDY, request_id="victim")
    eng.add_request(PROMPT[3:], GREEDY, request_id="b")
    final = {}
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                final[out.request_id] = out
    assert final["victim"].finish_reason == "error" and "the model failed on this request" in final["victim"].error
    assert "injected forward failure" in caplog.text
    assert [final["a"].token_ids, final["b"].token_ids] == _reference(model, [PROMPT, PROMPT[3:]])
    assert ["victim"] in seen                                  # it was retried alone, once, and failed alone
    assert eng.blocks.num_free == eng.blocks.num_blocks and not eng.scheduler.running


def test_an_engine_wide_failure_ends_every_stream_and_the_engine_says_it_is_dead(llm, monkeypatch):
    eng = llm.engine

    def broken(sched):
        raise RuntimeError("injected device failure")

    monkeypatch.setattr(eng.runner, "run", broken)
    client = AsyncEngine(eng)

    async def main():
        async def one(prompt):
            return [o async for o in client.submit(GenerateRequest(prompt, GREEDY))]
        results = await asyncio.gather(one(PROMPT), one(PROMPT[1:]), return_exceptions=True)
        assert all(isinstance(r, EngineDeadError) for r in results), results
        with pytest.raises(EngineDeadError, match="injected device failure"):
            await one(PROMPT)

    try:
        asyncio.run(main())
        assert client.dead is not None and "injected device failure" in client.dead
    finally:
        client.shutdown()


def test_a_prompt_the_tokenizer_cannot_handle_fails_alone(llm, monkeypatch, caplog):
    eng = llm.engine
    tok = eng.tokenizer
    assert tok is not None

    class Exploding:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, *a, **kw):
            if text == "boom":
                raise RuntimeError("injected tokenizer failure")
            return tok(text, *a, **kw)

    monkeypatch.setattr(eng, "tokenizer", Exploding())
    outs = llm.generate(["boom", PROMPT], GREEDY)
    assert outs[0].finish_reason == "error" and "could not be queued" in outs[0].error
    assert "injected tokenizer failure" in caplog.text
    assert outs[1].error is None and len(outs[1].token_ids) == 6

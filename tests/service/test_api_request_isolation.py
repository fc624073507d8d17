"""Through the HTTP API (free local mode, tiny model): every bad sampling value is a 400 invalid_parameter and the
node keeps serving; a request that fails inside the engine fails alone while a concurrent one completes; an
engine-wide failure turns /healthz and /readyz to 503 so that a supervisor restarts the node (issue 14, item 2)."""

from __future__ import annotations

import json
import math
import threading
import urllib.request

import pytest

from openlora.inference import LLM, SamplingParams
from openlora.inference.client import AsyncEngine
from openlora.inference.sequence import Sequence
from openlora.node.api import ApiError, NodeService, _sampling, build_app
from tests.service.server_util import ServerThread, http_json


def _serve(model):
    llm = LLM(model, dtype="float32", device="cpu")
    client = AsyncEngine(llm.engine)
    svc = NodeService(client=client, node_address="0x" + "11" * 20, free_local_mode=True)
    return llm, client, ServerThread(build_app(svc))


@pytest.fixture(scope="module")
def node(tiny):
    llm, client, server = _serve(tiny.model("llama"))
    with server:
        yield llm, server
    client.shutdown()


request = http_json

BAD = [
    {"seed": "x"}, {"seed": 1.5}, {"seed": 2**64}, {"seed": -1}, {"seed": True},
    {"temperature": 1e-300}, {"temperature": "0.7"}, {"temperature": "nan"}, {"temperature": True},
    {"temperature": -0.5}, {"temperature": 1e6},
    {"top_p": 0}, {"top_p": 1.01}, {"top_p": "1"}, {"top_p": False},
    {"top_k": -2}, {"top_k": 2.5}, {"top_k": True}, {"top_k": "5"},
    {"max_tokens": 0}, {"max_tokens": True}, {"max_tokens": 3.0}, {"max_tokens": "3"}, {"max_tokens": 10**12},
    {"max_completion_tokens": -1}, {"max_completion_tokens": 2.5},
    {"logprobs": 21}, {"logprobs": True}, {"logprobs": -1},
    {"stop": ""}, {"stop": ["a", "b", "c", "d", "e"]}, {"stop": ["x" * 1000]}, {"stop": [1]}, {"stop": {"a": 1}},
    {"ignore_eos": "false"}, {"ignore_eos": 1}, {"stream": "yes"}, {"n": True}, {"n": 1.0},
]


def test_every_bad_sampling_value_is_a_400_and_the_node_keeps_serving(node):
    llm, server = node
    base = llm.engine.spec.model_id
    for extra in BAD:
        status, js = request(server.url + "/v1/completions", {"model": base, "prompt": [5, 6, 7], **extra})
        assert (status, js["error"]["code"]) == (400, "invalid_parameter"), (extra, js)
        assert next(iter(extra)) in js["error"]["message"], (extra, js)
    for extra in ({"logprobs": 1}, {"logprobs": True, "top_logprobs": 21}, {"temperature": "1"}):
        status, js = request(server.url + "/v1/chat/completions",
                             {"model": base, "messages": [{"role": "user", "content": "hi"}], **extra})
        assert (status, js["error"]["code"]) == (400, "invalid_parameter"), (extra, js)
    status, js = request(server.url + "/v1/completions",
                         {"model": base, "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0, "seed": 2**63 - 1,
                          "top_p": None, "stop": None})
    assert status == 200 and js["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_a_400_never_a_500(node, raw):
    llm, server = node
    base = llm.engine.spec.model_id
    for field in (b"temperature", b"top_p", b"seed", b"max_tokens", b"presence_penalty"):
        body = b'{"model": "%s", "prompt": [5, 6, 7], "%s": %s}' % (base.encode(), field, raw)
        status, js = request(server.url + "/v1/completions", body)
        # refused by the JSON reader (invalid_json) or by the parameter check (invalid_parameter): a 400 either way
        assert status == 400 and js["error"]["code"] in ("invalid_json", "invalid_parameter"), (field, raw, js)
    status, _ = request(server.url + "/v1/completions", {"model": base, "prompt": [5, 6, 7], "max_tokens": 2})
    assert status == 200


def test_a_request_failing_in_the_engine_fails_alone_while_another_completes(node, monkeypatch):
    llm, server = node
    base = llm.engine.spec.model_id
    want = llm.engine.tokenizer is not None
    append = Sequence.append
    victim_started = threading.Event()

    def append_or_fail(self, sample):
        if self.params.seed == 4242:
            victim_started.set()
            raise RuntimeError("injected per-request failure")
        append(self, sample)

    monkeypatch.setattr(Sequence, "append", append_or_fail)
    results: dict[str, tuple[int, dict]] = {}

    def send(name, body):
        results[name] = request(server.url + "/v1/completions", {"model": base, **body})

    threads = [threading.Thread(target=send, args=("victim", {"prompt": [5, 6, 7], "max_tokens": 4,
                                                              "temperature": 0.8, "seed": 4242})),
               threading.Thread(target=send, args=("other", {"prompt": [8, 9, 10, 11], "max_tokens": 8,
                                                             "temperature": 0, "ignore_eos": True}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    status, js = results["victim"]
    assert victim_started.is_set() and status == 500 and js["error"]["code"] == "generation_failed"
    assert "internal error" in js["error"]["message"] and "injected" not in js["error"]["message"]
    status, js = results["other"]
    assert status == 200 and js["usage"]["completion_tokens"] == 8
    # the reference runs on its own engine: the served one belongs to the AsyncEngine thread
    ref = LLM(llm.engine.config.model, dtype="float32", device="cpu").generate(
        [[8, 9, 10, 11]], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    if want:
        assert js["choices"][0]["text"] == ref.text
    with urllib.request.urlopen(server.url + "/healthz") as r:
        assert json.loads(r.read()) == {"status": "ok"}


def test_an_engine_wide_failure_makes_healthz_and_readyz_503(tiny, monkeypatch):
    llm, client, server = _serve(tiny.model("llama"))
    base = llm.engine.spec.model_id

    def broken(sched):
        raise RuntimeError("injected device failure")

    try:
        with server:
            assert request(server.url + "/healthz") == (200, {"status": "ok"})
            monkeypatch.setattr(llm.engine.runner, "run", broken)
            status, js = request(server.url + "/v1/completions", {"model": base, "prompt": [5, 6, 7]})
            assert status >= 500
            status, js = request(server.url + "/healthz")
            assert status == 503 and js["status"] == "engine_dead" and js["error"] == "RuntimeError"
            assert "injected device failure" in client.dead         # the text stays in the process (and its log)
            status, js = request(server.url + "/readyz")
            assert status == 503 and js["ready"] is False and js["checks"]["model"] is False
            status, js = request(server.url + "/v1/completions", {"model": base, "prompt": [5, 6, 7]})
            assert status >= 500 and js["error"]["message"]       # refused at once: never hangs on a dead engine
    finally:
        client.shutdown()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_sampling_refuses_non_finite_values_even_if_the_json_reader_let_them_through(value):
    """The body reader refuses NaN/Infinity already; _sampling does not rely on it (each field is type-checked)."""
    fields = ["temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "logprobs", "n",
              "stream", "ignore_eos", "stop"]
    for name in fields:
        for v in (value, [value]):
            with pytest.raises(ApiError) as e:
                _sampling({name: v}, chat=False)
            assert (e.value.status, e.value.code) == (400, "invalid_parameter")
    for body in ({"logprobs": value}, {"logprobs": True, "top_logprobs": value}):
        with pytest.raises(ApiError) as e:
            _sampling(body, chat=True)
        assert (e.value.status, e.value.code) == (400, "invalid_parameter")

"""The HTTP API in free local mode, driven by the official `openai` client, plus malformed-input handling."""

from __future__ import annotations

import json
import urllib.request

import pytest

from openlora.inference import LLM, SamplingParams
from openlora.inference.client import AsyncEngine
from openlora.node.api import NodeService, build_app
from tests.service.server_util import ServerThread, http_json


@pytest.fixture(scope="module")
def node(tiny):
    model = tiny.model("llama")
    llm = LLM(model, dtype="float32", device="cpu")
    llm.load_adapter("law", tiny.adapter(model, rank=8, seed=11))
    # the offline reference runs before the engine thread starts: two threads stepping one engine would race
    # for each other's outputs (the offline call could lose its request to the AsyncEngine loop)
    llm.reference = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
                                 adapters=["law"])[0]
    client = AsyncEngine(llm.engine)
    svc = NodeService(client=client, node_address="0x" + "11" * 20, free_local_mode=True)
    with ServerThread(build_app(svc)) as server:
        yield llm, server
    client.shutdown()


post = http_json

def test_openai_client_completions_chat_and_streaming(node):
    openai = pytest.importorskip("openai")
    llm, server = node
    oc = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    base = llm.engine.spec.model_id
    want = llm.reference
    r = oc.completions.create(model="law", prompt=[5, 6, 7, 8], max_tokens=6, temperature=0.0)
    assert r.usage.prompt_tokens == 4 and r.choices[0].finish_reason in ("stop", "length")
    if want.finish_reason == "length":
        assert r.choices[0].text == want.text and r.usage.completion_tokens == 6
    chunks = list(oc.completions.create(model="law", prompt=[5, 6, 7, 8], max_tokens=6, temperature=0.0,
                                        stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    chat = oc.chat.completions.create(model=base, messages=[{"role": "user", "content": "Hello world"}],
                                      max_tokens=5, temperature=0.0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 5
    stream = oc.chat.completions.create(model=base, messages=[{"role": "user", "content": "Hello world"}],
                                        max_tokens=5, temperature=0.0, stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == chat.choices[0].message.content
    models = {m.id for m in oc.models.list().data}
    assert models == {base, "law"}


def test_bad_input_is_a_clear_4xx_and_the_node_keeps_serving(node):
    llm, server = node
    url = server.url + "/v1/completions"
    base = llm.engine.spec.model_id
    cases = [
        (b"{not json", 400, "invalid_json"),
        ({"model": "nope", "prompt": "hi"}, 404, "model_not_found"),
        ({"model": base, "prompt": ""}, 400, "invalid_prompt"),
        ({"model": base, "prompt": "hi", "max_tokens": 0}, 400, "invalid_parameter"),
        ({"model": base, "prompt": "hi", "n": 3}, 400, "unsupported"),
        ({"model": base, "prompt": list(range(1, 300)) * 5}, 400, "invalid_prompt"),
        ({"model": base, "prompt": "hi", "openlora": {"requester": "0xnope"}}, 503, "chain_unavailable"),
    ]
    for body, status, code in cases:
        got, js = post(url, body)
        assert (got, js["error"]["code"]) == (status, code), (body, js)
        assert js["error"]["message"]
    status, js = post(url, {"model": base, "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0})
    assert status == 200 and js["usage"]["completion_tokens"] <= 3


def test_health_ready_metrics(node):
    _, server = node
    with urllib.request.urlopen(server.url + "/healthz") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(server.url + "/readyz") as r:
        assert json.loads(r.read())["ready"] is True
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    for name in ("openlora_requests_total", "openlora_kv_blocks_total", "openlora_adapter_tier_bytes",
                 "openlora_ttft_seconds_bucket", "openlora_queue_depth"):
        assert name in text, name

"""Fuzzing the HTTP API through the real aiohttp app and a real tiny model: random and half-valid request bodies,
X-OpenLoRA-Auth headers and paths, in free local mode and in signed mode (a real sqlite store, no chain).
Property: never a 5xx (except the documented 503 chain_unavailable of a signed request in free mode, where no chain
is configured), every /v1 error is the JSON error object, and the node still answers /healthz afterwards.
The crash regressions (100,000-deep JSON in the body and the header) run against a node in its own process."""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlora.inference import LLM
from openlora.inference.client import AsyncEngine
from openlora.node.api import NodeService, build_app
from openlora.node.storage import Store
from tests.fuzz.fuzzing import any_values, fuzz, json_values, nasty_floats, nasty_ints, scalars
from tests.fuzz.test_parsers_fuzz import DOMAIN, NODE
from tests.service.server_util import ServerThread

REPO = Path(__file__).resolve().parents[2]
DEEP = 100_000
ALLOWED_5XX = {(503, "chain_unavailable")}  # free mode: a signed request needs a chain this node does not have
TALLY: Counter = Counter()                  # status codes of every fuzzed request (printed by the last test)


@pytest.fixture(scope="module")
def servers(tiny, tmp_path_factory):
    model = tiny.model("llama")
    llm = LLM(model, dtype="float32", device="cpu")
    llm.load_adapter("law", tiny.adapter(model, rank=8, seed=11))
    client = AsyncEngine(llm.engine)
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('http-fuzz')}/node.db")
    common = dict(client=client, node_address=NODE.address, admin_token="fuzz-admin-token")
    free = NodeService(free_local_mode=True, **common)
    signed = NodeService(free_local_mode=False, store=store, domain=DOMAIN, lane_of=lambda requester: (10**18, 0),
                         price_per_token=lambda cid: 1, **common)
    with ServerThread(build_app(free)) as s_free, ServerThread(build_app(signed)) as s_signed:
        yield {"free": s_free, "signed": s_signed, "base": llm.engine.spec.model_id}
    client.shutdown()
    store.close()


class Client:
    """One keep-alive connection; reconnects when the server closed it (after an error response, say)."""

    def __init__(self, port: int):
        self.port, self.conn = port, None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, str]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, data, r.getheader("Content-Type", "")
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_clients: dict[int, Client] = {}


def send(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    c = _clients.setdefault(server.port, Client(server.port))
    status, data, ctype = c.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
    TALLY[status] += 1
    return status, data, ctype


def check_response(status: int, data: bytes, ctype: str, path: str) -> None:
    code = None
    if "json" in ctype and status >= 400:
        err = json.loads(data)["error"]
        code = err["code"]
        assert isinstance(code, str) and isinstance(err["message"], str) and err["message"], err
    elif path.startswith("/v1/") and status >= 400 and status != 405:
        raise AssertionError(f"{status} without the JSON error object: {data[:200]!r}")
    assert status < 500 or (status, code) in ALLOWED_5XX, (status, data[:500])
    if status == 200 and "text/event-stream" in ctype:
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]" or any('"error"' in e for e in events), data[:500]
        for e in events:
            if e != "[DONE]":
                chunk = json.loads(e)
                assert "server_error" not in json.dumps(chunk.get("error", {})), chunk


# ---- strategies --------------------------------------------------------------------------------------------------

REQUEST_KEYS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                "logprobs", "top_logprobs", "n", "stream", "ignore_eos", "openlora", "stream_options", "user",
                "presence_penalty", "frequency_penalty", "response_format", "echo", "best_of", "logit_bias"]
token_lists = st.lists(st.one_of(st.integers(0, 300), nasty_ints), max_size=8)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", "x"]),
                           "content": st.one_of(st.text(max_size=20), scalars, st.lists(any_values, max_size=2))}),
    any_values), max_size=3)
field_values = st.one_of(scalars, any_values, token_lists, messages, nasty_floats.map(lambda f: f),
                         st.sampled_from(["law", "base", "bafy" + "a" * 50, "../etc/passwd", "law\x00"]))


def request_body(base_model: str):
    valid = st.fixed_dictionaries({"model": st.sampled_from([base_model, "law"]),
                                   "prompt": st.one_of(st.text(min_size=1, max_size=12), token_lists),
                                   "max_tokens": st.integers(1, 3), "temperature": st.sampled_from([0, 0.7])})
    mutated = st.tuples(valid, st.dictionaries(st.sampled_from(REQUEST_KEYS), field_values, max_size=3)).map(
        lambda t: {**t[0], **t[1]})
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated.map(lambda b: json.dumps(b, default=str).encode()),  # NaN/Infinity appear as JSON constants
        mutated.map(lambda b: json.dumps(b, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    )


header_values = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=100),
    any_values.map(lambda v: json.dumps(v, default=str)),
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d))


def requests_for(base_model: str):
    chat_body = st.tuples(st.sampled_from(["user", "system"]), st.text(max_size=12)).map(
        lambda t: json.dumps({"model": base_model, "messages": [{"role": t[0], "content": t[1]}],
                              "max_tokens": 2}).encode())
    return st.one_of(
        st.tuples(st.just("POST"), st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
                  st.one_of(request_body(base_model), chat_body), header_values),
        st.tuples(st.just("POST"), st.sampled_from(["/admin/adapters", "/admin/adapters/law/pin"]),
                  request_body(base_model), st.none()),
        st.tuples(st.sampled_from(["GET", "DELETE"]),
                  st.sampled_from(["/v1/models", "/v1/node", "/v1/receipts/x", "/v1/receipts/%00", "/admin/adapters/law",
                                   "/v1/receipts/" + "a" * 300]), st.none(), st.none()))


def fuzz_once(server, req) -> None:
    method, path, body, auth_header = req
    headers = {} if auth_header is None else {"X-OpenLoRA-Auth": auth_header}
    status, data, ctype = send(server, method, path, body, headers)
    check_response(status, data, ctype, path)


# ---- the fuzz runs -------------------------------------------------------------------------------------------------

@fuzz(150)
@given(data=st.data())
def test_free_mode_never_answers_5xx(servers, data):
    fuzz_once(servers["free"], data.draw(requests_for(servers["base"])))


@fuzz(100)
@given(data=st.data())
def test_signed_mode_never_answers_5xx(servers, data):
    fuzz_once(servers["signed"], data.draw(requests_for(servers["base"])))


def test_deep_json_in_process_is_a_400(servers):
    """The in-process app (pytest's recursion limit is py_ecc's 100,000 here too, as soon as eth_account is imported:
    without the depth check this test would kill the pytest process)."""
    assert sys.getrecursionlimit() >= 100_000
    for name in ("free", "signed"):
        for body in (b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP):
            status, data, _ = send(servers[name], "POST", "/v1/completions", body)
            assert status == 400 and json.loads(data)["error"]["code"] == "invalid_json", data[:300]
    deep_header = "[" * 4000 + "]" * 4000  # what fits in aiohttp's 8 KiB header line
    status, data, _ = send(servers["signed"], "POST", "/v1/completions",
                           json.dumps({"model": servers["base"], "prompt": "hi", "max_tokens": 1}).encode(),
                           {"X-OpenLoRA-Auth": deep_header})
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_auth", data[:300]


def test_zz_nodes_still_serve_after_fuzzing(servers):
    for name in ("free", "signed"):
        status, data, _ = send(servers[name], "GET", "/healthz")
        assert status == 200 and json.loads(data) == {"status": "ok"}, data
    status, data, _ = send(servers["free"], "POST", "/v1/completions",
                           json.dumps({"model": servers["base"], "prompt": [5, 6, 7], "max_tokens": 2,
                                       "temperature": 0}).encode())
    assert status == 200 and json.loads(data)["usage"]["completion_tokens"] <= 2
    print(f"\nfuzzed HTTP requests by status: {dict(sorted(TALLY.items()))} (total {sum(TALLY.values())})")
    assert not [s for s in TALLY if s >= 500 and s != 503]


# ---- a node in its own process: the 100,000-deep regression of issue 14 -----------------------------------------------

def read_line(proc: subprocess.Popen, deadline: float) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"the node process did not start (exit {proc.poll()}): "
                                 f"{proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            buf += os.read(proc.stdout.fileno(), 1)
    return buf.decode()


@pytest.fixture(scope="module")
def node_process(tiny):
    proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.serve_node", str(tiny.model("llama"))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        words = read_line(proc, time.monotonic() + 180).split()
        yield proc, int(words[1]), int(words[3])
    finally:
        proc.kill()
        proc.wait(30)


def test_deep_json_body_and_header_do_not_kill_a_node_process(node_process):
    proc, port, limit = node_process
    assert limit >= 100_000  # py_ecc's limit: the condition under which json.loads overflowed the C stack
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(body: bytes, headers=None) -> tuple[int, dict | bytes]:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json",
                                                                   **(headers or {})})
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if "json" in r.getheader("Content-Type", "") else data

    for body in (b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"[" * (4 << 20)):
        status, js = post(body)
        assert status == 400 and js["error"]["code"] == "invalid_json", js
        assert proc.poll() is None
    conn.request("GET", "/v1/models")
    base = json.loads(conn.getresponse().read())["data"][0]["id"]
    ok = json.dumps({"model": base, "prompt": "hi", "max_tokens": 1}).encode()
    status, js = post(ok, {"X-OpenLoRA-Auth": "[" * 4000 + "]" * 4000})
    assert status == 400 and js["error"]["code"] == "invalid_auth", js
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    status, _ = post(ok, {"X-OpenLoRA-Auth": "[" * DEEP})  # over aiohttp's header limit: refused before any parsing
    assert status == 400
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    assert proc.poll() is None

"""Nothing blocks the event loop (issue 15): with every chain RPC delayed by 2 s (a TCP proxy in front of Anvil),
/healthz keeps answering within 50 ms and a stream that is already running keeps its token pace, while signed
requests wait for the chain, /readyz and /metrics and /v1/node read it, all at once."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.request

import pytest

from openlora.inference import LLM
from openlora.inference.client import AsyncEngine
from openlora.node.api import build_app
from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
from openlora.node.storage import Store
from openlora.node.wiring import Chain, build_service
from tests.service.server_util import ServerThread
from tests.service.test_request_attacks import body_for, post, sign

DELAY_S = 2.0


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk a client sends for `delay` seconds before passing it on."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream, self.delay = upstream, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, self.delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture(scope="module")
def slow_node(tiny, tmp_path_factory, anvil, deployment, node_account):
    from web3 import Web3
    host, port = anvil.url.removeprefix("http://").split(":")
    proxy = DelayProxy((host, int(port)), DELAY_S)
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{proxy.port}", request_kwargs={"timeout": 30}))
    tmp = tmp_path_factory.mktemp("slowchain")
    cfg = parse_config(DEFAULT_CONFIG_TOML + "\n", tmp, environ={"OPENLORA_API_FREE_LOCAL_MODE": "true"})
    llm = LLM(tiny.model("llama"), dtype="float32", device="cpu", max_model_len=2048)
    client = AsyncEngine(llm.engine)
    store = Store(f"sqlite:///{tmp / 'node.db'}")
    svc = build_service(cfg, node_account, client, store, Chain(w3, deployment))
    assert svc.free_local_mode            # the stream below needs no chain; signed requests do
    with ServerThread(build_app(svc)) as server:
        yield server.url, svc
    client.shutdown()
    store.close()
    proxy.close()


def test_a_slow_chain_stalls_neither_health_nor_a_running_stream(slow_node, chain):
    url, svc = slow_node
    stream_body = {"model": svc.base_model, "prompt": [5, 6, 7], "max_tokens": 1500, "temperature": 0.0,
                   "ignore_eos": True, "stream": True}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(stream_body).encode(),
                                 headers={"Content-Type": "application/json"})
    arrivals: list[float] = []
    load_window: list[float] = []
    health: list[float] = []
    stop = threading.Event()

    def read_stream():
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic())

    def chain_load():
        """Signed requests (each waits on several delayed chain reads), readiness, metrics and standing."""
        requester = chain.requester(deposit=10**18)
        threads = []
        for n in range(3):
            b = body_for(svc.base_model)
            b["openlora"] = sign(chain, requester, b, cap=10**30, nonce=n)
            threads.append(threading.Thread(target=post, args=(url + "/v1/completions", b)))
        for path in ("/readyz", "/metrics", f"/v1/node?requester={requester.address}"):
            threads.append(threading.Thread(target=lambda p=path: urllib.request.urlopen(url + p, timeout=60).read()))
        load_window.append(time.monotonic())
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        load_window.append(time.monotonic())

    def probe():
        while not stop.is_set():
            t0 = time.monotonic()
            with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
                r.read()
            health.append((t0, time.monotonic() - t0))
            time.sleep(0.02)

    reader = threading.Thread(target=read_stream)
    reader.start()
    deadline = time.monotonic() + 30
    while len(arrivals) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(arrivals) >= 20, "the stream did not start"
    prober = threading.Thread(target=probe)
    prober.start()
    chain_load()
    stop.set()
    prober.join(30)
    reader.join(120)
    start, end = load_window
    assert end - start >= DELAY_S, "the chain was not slow: the test measured nothing"
    during = [d for t0, d in health if start <= t0 <= end]
    gaps_before = [b - a for a, b in zip(arrivals, arrivals[1:]) if b < start]
    gaps_during = [b - a for a, b in zip(arrivals, arrivals[1:]) if start <= a and b <= end]
    print(f"\nhealthz during {len(during)} probes: p50 {statistics.median(during) * 1e3:.1f} ms, max "
          f"{max(during) * 1e3:.1f} ms; stream gap p50 before {statistics.median(gaps_before) * 1e3:.2f} ms, "
          f"during {statistics.median(gaps_during) * 1e3:.2f} ms, max during {max(gaps_during) * 1e3:.1f} ms")
    assert len(during) >= 20 and len(gaps_during) >= 20
    assert statistics.median(during) < 0.05 and sorted(during)[int(0.9 * len(during))] < 0.05
    assert max(during) < DELAY_S / 2            # a loop blocked on one RPC would show the whole delay
    assert statistics.median(gaps_during) < 3 * statistics.median(gaps_before) + 0.01
    assert max(gaps_during) < DELAY_S / 2

"""The node's web dashboard: static pages under /dashboard/ and the JSON endpoints they read under /v1/dashboard/.

What it does: serves the dashboard's files from node/web/ (plain ES modules, hand-written SVG charts: no build step,
no CDN; a strict Content-Security-Policy keeps the page to this origin) and four read-only JSON endpoints
(docs/api.md, "Dashboard"): the node (`/v1/dashboard`), a contributor's earnings (`/v1/dashboard/contributors/
{address}`), a Datanet for its curator (`/v1/dashboard/datanets/{id}`), and the operator's view of the engine and
settlement (`/v1/dashboard/operator`), plus the list of Datanets. Amounts are decimal strings. Every path parameter
is checked before anything is read (an address is 0x + 40 hex digits with a valid checksum when mixed-case, an id
a decimal integer below 2^63): bad input is a 400, an unknown Datanet a 404, a chain that does not answer a 503.
Chain-reading queries run in worker threads, at most two at a time, and their answers are cached for a few
seconds, so reloading pages cannot pile up work. A sampler on the event loop keeps the operator's time series.
What it does not do: sign or send anything (a claim is sent by the visitor's own wallet, or by `openlora-node
claim`), or compute what it shows (node/dashboard_data.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from openlora.node.dashboard_data import DashboardError, Sources
from openlora.node.errors import RequestRejected

WEB_DIR = Path(__file__).resolve().parent / "web"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CACHE_TTL_S = 3.0
CACHE_ENTRIES = 256
MAX_QUEUED = 16           # chain queries waiting for one of the two workers; more is 429 (retry in a few seconds)
MAX_ID = 2**63 - 1
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
DECIMAL_ID = re.compile(r"[0-9]{1,19}")
KEY = web.AppKey("dashboard", dict)


def _bad(code: str, message: str) -> RequestRejected:
    return RequestRejected(400, code, message)


def parse_address(value: str) -> str:
    """A checksummed address, or a 400 that says what an address looks like."""
    from eth_utils import is_checksum_address, to_checksum_address
    shown = value[:60] + ("..." if len(value) > 60 else "")
    if not ADDRESS.fullmatch(value):
        raise _bad("invalid_address", f"{shown!r} is not an address: expected 0x followed by 40 hexadecimal digits")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        raise _bad("invalid_address", f"{shown!r} has a wrong EIP-55 checksum: check it, or write it in lower case")
    return to_checksum_address(value)


def parse_id(value: str, what: str = "Datanet id") -> int:
    shown = value[:40] + ("..." if len(value) > 40 else "")
    if not DECIMAL_ID.fullmatch(value) or not 1 <= int(value) <= MAX_ID:
        raise _bad("invalid_id", f"{what} {shown!r}: expected a decimal integer from 1 to {MAX_ID}")
    return int(value)


class _State:
    """Per-app: sources, the answer cache, the limit on concurrent chain queries, the operator sampler."""

    def __init__(self, svc: Any, sources: Sources, sample_period_s: float):
        self.svc, self.sources = svc, sources
        self.cache: dict[tuple, tuple[float, Any]] = {}
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.slots: asyncio.Semaphore | None = None
        self.sampler = Sampler(svc, sample_period_s)
        self.task: asyncio.Task | None = None

    async def cached(self, key: tuple, fn, *args) -> Any:
        """fn(*args) in a worker thread, at most two at a time; one computation per key at once, kept CACHE_TTL_S."""
        hit = self.cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        running = self.inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        if self.slots is None:
            self.slots = asyncio.Semaphore(2)
        if len(self.inflight) >= MAX_QUEUED:
            raise RequestRejected(429, "busy", "the dashboard is answering many queries; retry in a few seconds")
        fut = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        try:
            async with self.slots:
                value = await asyncio.to_thread(fn, *args)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()         # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self.inflight.pop(key, None)
        fut.set_result(value)
        if len(self.cache) >= CACHE_ENTRIES:
            self.cache.clear()
        self.cache[key] = (time.monotonic(), value)
        return value


class Sampler:
    """A ring of (time, tokens/s, requests/s, queue, running, KV blocks) samples taken every `period_s` on the
    event loop from the engine's published stats snapshot and the request counters: the operator view's charts."""

    def __init__(self, svc: Any, period_s: float = 1.0, keep: int = 300):
        self.svc, self.period_s, self.keep = svc, period_s, keep
        self.samples: list[dict[str, Any]] = []
        self._last: tuple[float, float, float] | None = None

    @staticmethod
    def _total(counter: Any) -> float:
        return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))

    def sample(self) -> None:
        m, stats = self.svc.metrics, self.svc.client.stats()
        now, tokens, requests = time.time(), self._total(m.tokens), self._total(m.requests)
        tps = rps = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            tps, rps = (tokens - self._last[1]) / dt, (requests - self._last[2]) / dt
        self._last = (now, tokens, requests)
        self.samples.append({"time": round(now, 3), "tokens_per_s": round(tps, 3), "requests_per_s": round(rps, 3),
                             "waiting": stats.waiting if stats else 0, "running": stats.running if stats else 0,
                             "kv_blocks_used": stats.kv_blocks_used if stats else 0,
                             "tokens_total": int(tokens), "requests_total": int(requests)})
        del self.samples[:-self.keep]


def _state(request: web.Request) -> _State:
    return request.app[KEY]["state"]


def _json(data: Any) -> web.Response:
    return web.json_response(data, headers={"Cache-Control": "no-store"})


def _is_local(request: web.Request) -> bool:
    from openlora.node.config import is_loopback
    return bool(request.remote) and is_loopback(request.remote)


# ---- static files ---------------------------------------------------------------------------------------------

def _files() -> dict[str, Path]:
    """The servable files: every regular file of node/web/ with a known type, by name (nothing else is reachable)."""
    if not WEB_DIR.is_dir():
        return {}
    return {p.name: p for p in WEB_DIR.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}


async def index(request: web.Request) -> web.StreamResponse:
    if request.path == "/dashboard":
        raise web.HTTPFound("/dashboard/")
    return _file(request, "index.html")


async def static(request: web.Request) -> web.StreamResponse:
    return _file(request, request.match_info["name"])


def _file(request: web.Request, name: str) -> web.Response:
    path = request.app[KEY]["files"].get(name)
    if path is None:
        raise RequestRejected(404, "not_found", f"no dashboard file {name[:60]!r}")
    return web.Response(body=path.read_bytes(), headers={
        "Content-Type": CONTENT_TYPES[path.suffix], "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


# ---- JSON endpoints -------------------------------------------------------------------------------------------

async def overview(request: web.Request) -> web.Response:
    """The node and its chain: what the page needs before any view (name, address, token, chain id)."""
    st = _state(request)
    svc, src = st.svc, st.sources
    out: dict[str, Any] = {"name": svc.name, "address": svc.node_address, "base_model": svc.base_model,
                           "free_local_mode": svc.free_local_mode, "chain": None}
    if src.w3 is not None and src.deployment is not None:
        from openlora.node.dashboard_data import token_info
        try:
            token = await st.cached(("token",), token_info, src)
        except DashboardError:
            token = None             # the chain is down: the page still opens; the views say what is missing
        out["chain"] = {"chain_id": src.deployment.chain_id, "settlement": src.deployment.address("Settlement"),
                        "token": token}
    return _json(out)


async def contributor(request: web.Request) -> web.Response:
    from openlora.node.dashboard_data import contributor as read
    st = _state(request)
    address = parse_address(request.match_info["address"])
    st.sources.chain()
    data = await st.cached(("contributor", address), read, st.sources, st.svc.store, address)
    await _highlight(st.svc, data["receipts"])
    return _json(data)


async def _highlight(svc: Any, receipts: list[dict]) -> None:
    """The completions of this node's receipts that carry matched spans, as runs of text marked with the matching
    contribution (decoded by this node's tokenizer, the one that produced them); done once per cached answer."""
    from openlora.node.dashboard_data import MAX_SEGMENT_TOKENS, segments
    for r in receipts:
        ids = r.get("completion_ids")
        if r.get("segments") is not None or not ids or not r.get("spans") or r.get("node") != svc.node_address:
            continue
        try:
            texts = await svc.client.decode_each([int(t) for t in ids[:MAX_SEGMENT_TOKENS]])
        except Exception:  # noqa: BLE001 - ids this tokenizer cannot decode: the row shows no highlight
            continue
        r["segments"] = segments(texts, r["spans"])


async def datanets(request: web.Request) -> web.Response:
    st = _state(request)
    w3, dep = st.sources.chain()

    def read():
        from openlora.datanets.registry import Registry
        from openlora.node.dashboard_curator import _metadata
        from openlora.node.dashboard_data import _chain_call
        def first_thousand():
            reg = Registry(w3, dep)
            return [reg.datanet(i) for i in range(1, min(reg.count(), 1000) + 1)]
        infos = _chain_call(first_thousand, "the Datanets")
        return {"datanets": [{"datanet_id": d.id, "curator": d.curator, "contributions": d.contribution_count,
                              "versions": d.versions, "metadata": _metadata(st.sources, d.metadata_cid)}
                             for d in infos]}
    return _json(await st.cached(("datanets",), read))


async def datanet(request: web.Request) -> web.Response:
    from openlora.node.dashboard_curator import curator
    st = _state(request)
    datanet_id = parse_id(request.match_info["datanet_id"])
    st.sources.chain()
    return _json(await st.cached(("datanet", datanet_id), curator, st.sources, st.svc.store, datanet_id))


async def operator(request: web.Request) -> web.Response:
    """Adapters by tier with hits and loads, the engine's queues and KV use, the time series, settlement state."""
    st = _state(request)
    svc = st.svc
    stats = svc.client.stats()
    adapters = [{"name": a.name, "cid": a.identity, "tier": a.tier, "rank": a.rank, "bytes": a.bytes,
                 "pinned": a.pinned, "refs": a.refs, "hits": a.hits, "misses": a.misses, "loads": a.loads,
                 "evictions": a.evictions, "last_used": a.last_used, "error": (a.error or "")[:200] or None}
                for a in sorted(await svc.client.adapters(), key=lambda a: a.name)]
    engine = None
    if stats is not None:
        m = stats.adapters or {}
        engine = {"waiting": stats.waiting, "running": stats.running, "kv_blocks_used": stats.kv_blocks_used,
                  "kv_blocks_total": stats.kv_blocks_total, "steps": stats.steps,
                  "tiers": m.get("tiers", {}), "hit_ratio": m.get("hit_ratio"),
                  "loads": {k: m[k] for k in ("device_loads", "host_loads", "device_evictions", "host_evictions",
                                              "load_failures") if k in m}}
    settlement: dict[str, Any] = {"enabled": svc.settlement is not None, "receipts": None, "batches_in_flight": None}
    if svc.store is not None:
        counts = await asyncio.to_thread(svc.store.counts)
        open_batches = await asyncio.to_thread(svc.store.open_batches)
        settlement.update(receipts=counts, batches_in_flight=len(open_batches))
    if svc.settlement is not None:
        m = svc.settlement.metrics
        error = m.get("last_error")
        if error and not _is_local(request):   # its text may name infrastructure: the node's own page shows it
            error = "an error (its text is shown on the node's own machine and in its log)"
        settlement.update({k: m.get(k) for k in ("batches_settled", "receipts_settled", "chain_errors", "last_tx",
                                                  "next_retry_s")}, last_error=error)
    return _json({"node": {"name": svc.name, "address": svc.node_address, "base_model": svc.base_model,
                           "dead": svc.client.dead is not None},
                  "adapters": adapters, "engine": engine, "series": list(st.sampler.samples),
                  "sample_period_s": st.sampler.period_s, "settlement": settlement})


# ---- mounting -------------------------------------------------------------------------------------------------

async def _start_sampler(app: web.Application) -> None:
    st: _State = app[KEY]["state"]

    async def run() -> None:
        while True:
            try:
                st.sampler.sample()
            except Exception:  # noqa: BLE001 - a failed sample is skipped; the charts show a gap, the node serves
                pass
            await asyncio.sleep(st.sampler.period_s)
    st.task = asyncio.get_running_loop().create_task(run(), name="dashboard-sampler")


async def _stop_sampler(app: web.Application) -> None:
    st: _State = app[KEY]["state"]
    if st.task is not None:
        st.task.cancel()
        try:
            await st.task
        except asyncio.CancelledError:
            pass


def add_routes(app: web.Application, svc: Any, sources: Sources | None = None,
               sample_period_s: float = 1.0) -> None:
    """Mount the dashboard on the node's app (node/api.py build_app). `sources`: the chain and blockstore it reads
    (node.dashboard_data.sources_from); without them only the operator view has data."""
    app[KEY] = {"state": _State(svc, sources or Sources(), sample_period_s), "files": _files()}
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/", index)
    app.router.add_get("/dashboard/{name}", static)
    app.router.add_get("/v1/dashboard", overview)
    app.router.add_get("/v1/dashboard/contributors/{address}", contributor)
    app.router.add_get("/v1/dashboard/datanets", datanets)
    app.router.add_get("/v1/dashboard/datanets/{datanet_id}", datanet)
    app.router.add_get("/v1/dashboard/operator", operator)
    app.on_startup.append(_start_sampler)
    app.on_cleanup.append(_stop_sampler)

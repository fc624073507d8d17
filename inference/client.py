"""`EngineClient`: the asynchronous interface the HTTP server uses: submit -> async stream of outputs; abort.

What it does: runs `LLMEngine.step()` in one dedicated thread; requests and aborts cross into that thread through a
queue, outputs come back to the caller's asyncio loop with `call_soon_threadsafe`. Cancelling the consumer of a
stream (a client that hangs up) aborts the request and frees its KV blocks. A request's own failure finishes only
that request (the engine isolates it); an engine-wide error stops the loop for good: every open stream and every
later submit raises `EngineDeadError`, and `dead` says why (the node's /healthz turns 503 on it).
What it does not do: validate signatures, charge anyone, or speak HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from openlora.inference.engine import LLMEngine
from openlora.inference.errors import EngineDeadError
from openlora.inference.sampling import SamplingParams
from openlora.inference.sequence import RequestOutput

log = logging.getLogger("openlora.engine")


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | list[int]
    params: SamplingParams
    adapter: str | None = None
    request_id: str | None = None


class EngineClient(Protocol):
    def submit(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> None: ...
    @property
    def dead(self) -> str | None: ...


class AsyncEngine:
    """An `EngineClient` over an in-process `LLMEngine` driven by its own thread."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="openlora-engine", daemon=True)
        self._thread.start()

    # ---- caller side (asyncio) ----
    async def submit(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        rid = request.request_id or f"areq-{next(self._ids)}"
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:      # checked under the lock the dying loop takes after setting _dead: no stream is missed
            if self._dead is not None:
                raise EngineDeadError(f"the engine stopped: {self.dead}")
            self._streams[rid] = (asyncio.get_running_loop(), q)
        self._inbox.put(("add", rid, request))
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"the engine stopped: {item}")
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._streams.pop(rid, None)
            if not finished:
                self._inbox.put(("abort", rid, None))

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id, None))

    @property
    def dead(self) -> str | None:
        """None while the engine loop runs; once an engine-wide error stopped it, that error in words (/healthz
        reports it with a 503 so that a supervisor restarts the node)."""
        e = self._dead
        return None if e is None else f"{type(e).__name__}: {e}"

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", None, None))
        self._thread.join(timeout)

    # ---- engine thread ----
    def _deliver(self, out: RequestOutput) -> None:
        with self._lock:
            target = self._streams.get(out.request_id)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, out)
            except RuntimeError:  # the caller's loop is closed: it no longer listens
                pass

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return
        while True:
            kind, rid, req = item
            if kind == "add":
                self.engine.add_request(req.prompt, req.params, req.adapter, request_id=rid)
            elif kind == "abort":
                out = self.engine.abort(rid)
                if out is not None:
                    self._deliver(out)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        """A request's own failure never reaches here (the engine fails that request alone); what does is
        engine-wide (the forward failing for every request, a scheduler or block-pool bug), and kills the loop."""
        try:
            while not self._stop.is_set():
                self._drain(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    for out in self.engine.step():
                        self._deliver(out)
        except BaseException as e:  # the engine is broken: tell every waiting stream, never hang them
            log.exception("engine loop died")
            self._dead = e         # set before taking the lock: a submit that takes it after sees it
            with self._lock:
                targets = list(self._streams.values())
            for loop, q in targets:
                try:
                    loop.call_soon_threadsafe(q.put_nowait, e)
                except RuntimeError:
                    pass

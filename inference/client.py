"""`EngineClient`: the only way the node reaches the engine, so that the engine could live in another process:
static facts (`info`), tokenizing and request checks, a statistics snapshot, adapter admin, submit -> async stream
of outputs, abort.

What it does: `AsyncEngine` runs `LLMEngine.step()` in one dedicated thread; requests and aborts cross into that
thread through a queue, outputs come back to the caller's asyncio loop with `call_soon_threadsafe`. Tokenizing
(and chat templates) and adapter admin run in worker threads, never on the caller's event loop. The engine thread
publishes an `EngineStats` snapshot (queues, KV blocks, adapter tiers) after its steps, so a metrics scrape reads
an immutable object instead of the scheduler's queues while they change. Cancelling the consumer of a
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
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from openlora.inference.adapters import AdapterInfo
from openlora.inference.engine import LLMEngine
from openlora.inference.errors import EngineDeadError, RequestError
from openlora.inference.sampling import SamplingParams
from openlora.inference.sequence import RequestOutput

log = logging.getLogger("openlora.engine")


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | list[int]
    params: SamplingParams
    adapter: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What does not change while the engine runs."""
    model_id: str
    max_model_len: int
    has_tokenizer: bool
    has_chat_template: bool
    max_lora_rank: int
    max_adapter_bytes: int | None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot the engine thread publishes (at most every STATS_PERIOD_S while busy, and when idle)."""
    time: float = 0.0
    waiting: int = 0
    running: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    steps: int = 0
    adapters: dict = field(default_factory=dict)       # AdapterManager.metrics(): tiers, loads, hit ratio


class EngineClient(Protocol):
    info: EngineInfo

    @property
    def dead(self) -> str | None: ...
    async def tokenize(self, prompt: str | list[int] | list[dict], adapter: str | None = None) -> list[int]: ...
    async def decode_each(self, token_ids: list[int]) -> list[str]: ...
    def stats(self) -> EngineStats: ...
    def find_adapter(self, model: str) -> tuple[str, str | None] | None: ...
    async def adapters(self) -> list[AdapterInfo]: ...
    async def load_adapter(self, name: str, ref: str, identity: str | None = None) -> None: ...
    async def register_adapter(self, name: str, ref: str, identity: str | None = None) -> None: ...
    async def unregister_adapter(self, name: str) -> None: ...
    async def pin_adapter(self, name: str, pinned: bool = True) -> None: ...
    def submit(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> None: ...


STATS_PERIOD_S = 0.25


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
        tok = engine.tokenizer
        self.info = EngineInfo(engine.spec.model_id, engine.max_model_len, tok is not None,
                               bool(tok is not None and getattr(tok, "chat_template", None)),
                               engine.adapters.max_rank, engine.adapters.max_bytes)
        self._stats = EngineStats()
        self._publish_stats()
        self._thread = threading.Thread(target=self._loop, name="openlora-engine", daemon=True)
        self._thread.start()

    # ---- facts, tokenizing, statistics, adapters (callable from any asyncio loop) ----
    def _tokenize(self, prompt: str | list[int] | list[dict], adapter: str | None) -> list[int]:
        if prompt and isinstance(prompt, list) and isinstance(prompt[0], dict):
            if not self.info.has_chat_template:
                raise RequestError("this base model has no chat template; send a plain prompt")
            prompt = self.engine.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = self.engine._prompt_ids(prompt)
        if adapter is not None:
            self.engine.adapters.check(adapter)
        return ids

    async def tokenize(self, prompt: str | list[int] | list[dict], adapter: str | None = None) -> list[int]:
        """The prompt's token ids (a chat's messages through the chat template), checked against the context and
        the KV cache, and the adapter checked as known and not bad. Raises RequestError / AdapterError."""
        return await asyncio.to_thread(self._tokenize, prompt, adapter)

    async def decode_each(self, token_ids: list[int]) -> list[str]:
        """Each token's text on its own (for logprobs)."""
        tok = self.engine.tokenizer
        if tok is None:
            return [str(t) for t in token_ids]
        return await asyncio.to_thread(lambda: [tok.decode([t]) for t in token_ids])

    def stats(self) -> EngineStats:
        return self._stats

    def _publish_stats(self) -> None:
        """Engine thread (and the constructor): a fresh immutable snapshot."""
        e = self.engine
        self._stats = EngineStats(time.monotonic(), len(e.scheduler.waiting), len(e.scheduler.running),
                                  e.blocks.num_used, e.blocks.num_blocks, e.num_steps, e.adapters.metrics())

    def find_adapter(self, model: str) -> tuple[str, str | None] | None:
        """(engine name, identity) of the adapter `model` names by name or CID; None if none (a dict lookup under
        the adapter manager's lock: no I/O)."""
        return self.engine.adapters.find(model)

    async def adapters(self) -> list[AdapterInfo]:
        return await asyncio.to_thread(self.engine.adapters.list)

    async def load_adapter(self, name: str, ref: str, identity: str | None = None) -> None:
        """Register and load now (host memory); AdapterError with the reason if it is bad."""
        await asyncio.to_thread(self.engine.load_adapter, name, ref, identity)

    async def register_adapter(self, name: str, ref: str, identity: str | None = None) -> None:
        """Known by name (and CID); loaded just in time by the first request that names it."""
        await asyncio.to_thread(self.engine.register_adapter, name, ref, identity)

    async def unregister_adapter(self, name: str) -> None:
        await asyncio.to_thread(self.engine.adapters.unregister, name)

    async def pin_adapter(self, name: str, pinned: bool = True) -> None:
        await asyncio.to_thread(self.engine.adapters.pin, name, pinned)

    def adapter_state(self, name: str) -> tuple[str, AdapterInfo | None]:
        """(status, info) of one adapter: what a failed admin load needs to put the previous one back."""
        mgr = self.engine.adapters
        return mgr.status(name), next((i for i in mgr.list() if i.name == name), None)

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
                if time.monotonic() - self._stats.time >= STATS_PERIOD_S or not self.engine.has_unfinished():
                    self._publish_stats()
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

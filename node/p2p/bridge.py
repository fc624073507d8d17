"""The one bridge between the node's threads and the trio thread that owns py-libp2p.

What it does: starts a thread running `trio.run`, keeps its token and a root nursery, and offers the only three
ways in and out: `call` (blocking, from any non-trio thread, e.g. an adapter loader thread), `acall` (from asyncio,
through `asyncio.to_thread` so that the asyncio loop never blocks), and `emit`/`subscribe` (trio -> asyncio or
threads, through bounded queues: when a consumer is slow, items are dropped and counted, never buffered without
bound). `stop` cancels everything in the trio thread and joins it.
What it does not do: know anything about libp2p; `node.p2p.host` runs inside it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import Counter
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger("openlora.p2p")


class BridgeError(RuntimeError):
    pass


class TrioBridge:
    def __init__(self, name: str = "libp2p"):
        self.name = name
        self.token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sinks: dict[str, list[Callable[[Any], None]]] = {}
        self.dropped: Counter[str] = Counter()

    # ---- lifecycle ------------------------------------------------------------------------------------------------

    def start(self, main: Callable[[trio.Nursery], Awaitable[None]] | None = None, timeout: float = 30.0) -> None:
        """Start the trio thread; `main(nursery)` runs inside it (e.g. the libp2p host) until `stop`."""
        self._thread = threading.Thread(target=self._run, args=(main,), name=f"trio-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BridgeError(f"the {self.name} thread did not start within {timeout}s")
        if self._error is not None:
            raise BridgeError(f"the {self.name} thread failed to start: {self._error}") from self._error

    def _run(self, main) -> None:
        async def root() -> None:
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if main is not None:
                    await main(nursery)  # returns once started; it may start background tasks in the nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(root)
        except BaseException as e:  # noqa: BLE001 - reported to start() or logged; the thread must not die silently
            self._error = e
            if self._ready.is_set():
                log.error("%s thread stopped with an error: %r", self.name, e)
        finally:
            self._ready.set()
            self._nursery = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._nursery is not None

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread is None:
            return
        if self.running and self.token is not None:
            try:
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self.token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        self._thread.join(timeout)
        self._thread = None

    # ---- into trio ----------------------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run async `fn(*args)` in the trio thread and return its result. Blocking; never call from trio itself."""
        if not self.running:
            raise BridgeError(f"the {self.name} thread is not running")
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    async def acall(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`call` for asyncio code: the blocking wait happens in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.call, fn, *args)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `fn(*args)` as a background task in the trio thread (fire and forget)."""
        if not self.running:
            raise BridgeError(f"the {self.name} thread is not running")
        trio.from_thread.run_sync(self._nursery.start_soon, fn, *args, trio_token=self.token)

    # ---- out of trio --------------------------------------------------------------------------------------------

    def subscribe_asyncio(self, topic: str, maxsize: int = 1024) -> asyncio.Queue:
        """A bounded asyncio queue (of the calling loop) that receives what trio code `emit`s on `topic`."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize)

        def put(item: Any) -> None:
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped[topic] += 1

        self._sinks.setdefault(topic, []).append(lambda item: loop.call_soon_threadsafe(put, item))
        return q

    def subscribe_thread(self, topic: str, maxsize: int = 1024) -> "queue.Queue[Any]":
        """A bounded thread-safe queue receiving what trio code `emit`s on `topic`."""
        q: queue.Queue = queue.Queue(maxsize)

        def put(item: Any) -> None:
            try:
                q.put_nowait(item)
            except queue.Full:
                self.dropped[topic] += 1

        self._sinks.setdefault(topic, []).append(put)
        return q

    def emit(self, topic: str, item: Any) -> None:
        """From the trio thread: hand `item` to every subscriber of `topic` without blocking."""
        for sink in self._sinks.get(topic, ()):
            try:
                sink(item)
            except RuntimeError:  # a closed asyncio loop
                self.dropped[topic] += 1

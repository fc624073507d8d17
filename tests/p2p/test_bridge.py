"""The trio bridge alone: calls in from threads and asyncio, bounded queues out (drops counted), clean stop."""

from __future__ import annotations

import asyncio

import pytest
import trio

from openlora.node.p2p.bridge import BridgeError, TrioBridge


def test_calls_queues_and_stop():
    bridge = TrioBridge("test")
    started = []

    async def main(nursery):
        started.append(trio.lowlevel.current_trio_token())

    bridge.start(main)
    try:
        async def add(a, b):
            await trio.sleep(0)
            return a + b

        assert bridge.call(add, 2, 3) == 5
        tq = bridge.subscribe_thread("t", maxsize=2)

        async def emit_many():
            for i in range(5):
                bridge.emit("t", i)

        bridge.call(emit_many)
        assert [tq.get_nowait(), tq.get_nowait()] == [0, 1] and bridge.dropped["t"] == 3

        async def from_asyncio():
            q = bridge.subscribe_asyncio("a", maxsize=4)
            total = await bridge.acall(add, 20, 22)
            await bridge.acall(emit_one)
            return total, await asyncio.wait_for(q.get(), 5)

        async def emit_one():
            bridge.emit("a", "hello")

        assert asyncio.run(from_asyncio()) == (42, "hello")

        async def boom():
            raise ValueError("inside trio")

        with pytest.raises(ValueError, match="inside trio"):
            bridge.call(boom)
        assert bridge.running  # an error in one call does not take the thread down
    finally:
        bridge.stop()
    assert not bridge.running
    with pytest.raises(BridgeError):
        bridge.call(trio.sleep, 0)

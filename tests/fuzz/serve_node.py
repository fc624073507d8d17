"""A node's HTTP API in free local mode, in its own process, for the crash regressions (tests/fuzz/test_http_fuzz.py).

    python -m tests.fuzz.serve_node <tiny model dir>

Imports the Ethereum stack first, as a node does, and leaves the recursion limit where py_ecc puts it (100,000:
the condition under which a deep JSON body used to overflow the C stack), so that only the JSON depth check stands
between a 100,000-deep body and a SIGSEGV. Prints "port <n> recursionlimit <n>" once listening; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys


async def main(model_dir: str) -> None:
    import py_ecc  # noqa: F401  (sets the recursion limit to 100,000, as in a node)
    from aiohttp import web

    from openlora.inference import LLM
    from openlora.inference.client import AsyncEngine
    from openlora.node.api import NodeService, build_app

    llm = LLM(model_dir, dtype="float32", device="cpu")
    client = AsyncEngine(llm.engine)
    svc = NodeService(client=client, node_address="0x" + "11" * 20, free_local_mode=True)
    runner = web.AppRunner(build_app(svc))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"port {site._server.sockets[0].getsockname()[1]} recursionlimit {sys.getrecursionlimit()}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""Run a node's aiohttp app on a free loopback port in a background thread (for sync clients like `openai`)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class ServerThread:
    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> "ServerThread":
        async def start():
            self.runner = web.AppRunner(self.app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def http_json(url: str, body=None, headers: dict | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    """(status, JSON) of one request: POST `body` (a dict, or raw bytes sent as they are), or GET when it is None;
    an HTTP error status is returned, not raised."""
    import json
    import urllib.error
    import urllib.request
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

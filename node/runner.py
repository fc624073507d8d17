"""`openlora-node start`: the wiring that brings a node's parts up, in order, and down again on Ctrl-C/SIGTERM.

What it does: resolves the base model (generating the demo model on first use), starts each component that exists
in this version, reports plainly the ones that do not exist yet, and waits for a stop signal.
What it does not do: implement any component; each lives in its own module and is only connected here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from node.config import NodeConfig

log = logging.getLogger("openlora.node")

# Components that later versions add; listed at start so an operator sees what this node does not do yet.
NOT_YET = {
    "http-api": "the OpenAI-compatible HTTP API (issue: node service)",
    "settlement": "receipts and batch settlement on chain (issue: node service)",
    "devnet": "the local Anvil devnet with contracts (issue: on-chain attribution)",
    "p2p": "libp2p gossip and block exchange (issue: content-addressed adapters)",
}


def resolve_model_dir(cfg: NodeConfig) -> Path:
    """The base model directory; "demo" means a tiny model generated once under <home>/models/demo."""
    if cfg.model.path != "demo":
        path = cfg.path(cfg.model.path)
        if not (path / "config.json").is_file():
            from node.errors import ConfigError
            raise ConfigError(f"model.path = {cfg.model.path!r}: {path} has no config.json; give an HF model "
                              f"directory, or \"demo\"")
        return path
    path = cfg.home / "models" / "demo"
    if not (path / "config.json").is_file():
        from devnet.tinymodels import TinySpec, build_tiny_model
        log.info("generating the demo base model (tiny random Llama, seed 0)", extra={"fields": {"dir": str(path)}})
        build_tiny_model(path, TinySpec(arch="llama", seed=0))
    return path


async def _serve(cfg: NodeConfig, address: str, exit_after: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model_dir = resolve_model_dir(cfg)
    log.info("node starting", extra={"fields": {"address": address, "home": str(cfg.home),
                                                "model": str(model_dir)}})
    for name, what in NOT_YET.items():
        log.warning(f"{name}: not available in this version yet: {what}")
    log.info("node running; press Ctrl-C to stop")
    try:
        if exit_after is not None:
            await asyncio.wait_for(stop.wait(), timeout=exit_after)
        else:
            await stop.wait()
    except TimeoutError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("node stopped cleanly")


def run_node(cfg: NodeConfig, account, exit_after: float | None = None) -> None:
    asyncio.run(_serve(cfg, account.address, exit_after))

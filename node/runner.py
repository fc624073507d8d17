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
    "p2p": "libp2p gossip and block exchange wired into `start` (issue: content-addressed adapters)",
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


def engine_config(cfg: NodeConfig, model_dir: Path):
    from inference import EngineConfig
    return EngineConfig(
        model=str(model_dir), dtype=cfg.model.dtype, device=cfg.model.device, max_model_len=cfg.model.max_model_len,
        block_size=cfg.engine.kv_block_size, kv_cache_bytes=int(cfg.engine.kv_cache_bytes),
        max_num_seqs=cfg.engine.max_num_seqs, max_num_batched_tokens=cfg.engine.max_num_batched_tokens,
        enable_prefix_caching=cfg.engine.enable_prefix_caching, kernel_backend=cfg.engine.kernel_backend,
        lora_pool_bytes=int(cfg.adapters.device_pool_bytes), host_cache_bytes=int(cfg.adapters.host_cache_bytes),
        disk_store_dir=str(cfg.home / "adapters"), disk_store_bytes=int(cfg.adapters.disk_store_bytes),
        max_lora_rank=cfg.adapters.max_rank, max_adapter_bytes=int(cfg.adapters.max_adapter_bytes))


def _check_chain(cfg: NodeConfig) -> None:
    from attribution.deployment import DeploymentError, read_deployment
    try:
        dep = read_deployment(cfg.path(cfg.chain.deployment_file))
    except DeploymentError as e:
        log.warning(f"chain: {e}")
        return
    try:
        from web3 import HTTPProvider, Web3
        w3 = Web3(HTTPProvider(cfg.chain.rpc_url, request_kwargs={"timeout": 3}))
        chain_id = w3.eth.chain_id
    except Exception as e:  # any transport error: the node still starts, readiness says the chain is down
        log.warning(f"chain: {cfg.chain.rpc_url} is not reachable ({type(e).__name__}); settlement waits for it")
        return
    if chain_id != dep.chain_id:
        log.warning(f"chain: {cfg.chain.rpc_url} has chain id {chain_id}, the deployment file says {dep.chain_id}")
        return
    log.info("chain reachable", extra={"fields": {"chain_id": chain_id, "settlement": dep.address("Settlement")}})


async def _serve(cfg: NodeConfig, address: str, exit_after: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model_dir = resolve_model_dir(cfg)
    log.info("node starting", extra={"fields": {"address": address, "home": str(cfg.home),
                                                "model": str(model_dir)}})
    from inference import LLMEngine, SamplingParams
    from inference.client import AsyncEngine, GenerateRequest
    engine = await asyncio.to_thread(LLMEngine, engine_config(cfg, model_dir))
    client = AsyncEngine(engine)
    t0 = loop.time()
    outs = [o async for o in client.submit(GenerateRequest([1, 2, 3, 4], SamplingParams(max_tokens=4,
                                                                                        temperature=0.0)))]
    log.info("engine ready", extra={"fields": {"self_check_tokens": len(outs[-1].token_ids),
                                               "self_check_ms": round(1e3 * (loop.time() - t0), 1)}})
    await asyncio.to_thread(_check_chain, cfg)
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
        client.shutdown()
        engine.adapters.shutdown()
    log.info("node stopped cleanly")


def run_node(cfg: NodeConfig, account, exit_after: float | None = None) -> None:
    asyncio.run(_serve(cfg, account.address, exit_after))

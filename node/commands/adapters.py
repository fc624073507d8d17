"""`openlora-node adapters add|list|rm|pull|export-car|import-car`: the node's content-addressed adapters.

Blocks live under `<home>/ipfs/`; `add` prints the adapter's CID, `pull` fetches one (peers from config, the
configured Kubo RPC API and trustless gateways, or those given on the command line), verifying every block.
With a config, the store is bounded by adapters.disk_store_bytes (node/ipfs/disk_tier.py): `add` and `pull` evict
least-recently-used adapters beyond it, sparing adapters.pinned and what a running node on this home holds (asked
over its HTTP API); `rm` removes one adapter; `list` shows sizes, last use and pins.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


def _store(obj, cfg=None):
    from openlora.node.ipfs.adapters import AdapterStore
    if cfg is None:
        return AdapterStore(obj.home / "ipfs")
    return AdapterStore(obj.home / "ipfs", budget_bytes=int(cfg.adapters.disk_store_bytes),
                        pinned=cfg.adapters.pinned, usage=lambda: _engine_use(_running_node(cfg)))


def _running_node(cfg) -> dict[str, str] | None:
    """CID -> tier of the adapters a node running on this home lists (GET /v1/models); None when none answers."""
    import urllib.request

    from openlora.safejson import loads
    if cfg is None:
        return None
    host = cfg.api.host if cfg.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never through a proxy
    try:
        with opener.open(f"http://{host}:{cfg.api.port}/v1/models", timeout=2.0) as resp:
            data = loads(resp.read((4 << 20) + 1), max_bytes=4 << 20)
    except (OSError, ValueError):
        return None
    out: dict[str, str] = {}
    for m in data.get("data", []) if isinstance(data, dict) else []:
        o = m.get("openlora") if isinstance(m, dict) else None
        if isinstance(o, dict) and o.get("kind") == "adapter" and isinstance(o.get("cid"), str):
            out[o["cid"]] = str(o.get("tier", "unknown"))
    return out


def _engine_use(running: dict[str, str] | None) -> dict:
    from openlora.node.ipfs.disk_tier import HELD_TIERS, EngineUse
    return {cid: EngineUse(tier=tier if tier in HELD_TIERS else None) for cid, tier in (running or {}).items()}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "never"


def _config(obj):
    from openlora.node.config import CONFIG_FILENAME, load_config
    return load_config(obj.home) if (obj.home / CONFIG_FILENAME).is_file() else None


@click.group(name="adapters")
def command() -> None:
    """Import, fetch, list and export LoRA adapters (content-addressed by CID)."""


@command.command("add")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--author", default=None, help="Author's 0x address for the manifest (default: this node's account).")
@click.option("--base-model", default=None, help="Base model id (default: adapter_config.json's).")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="HF base model directory to validate against (default: the node's [model] when a config exists).")
@click.pass_obj
def add(obj, directory: Path, author: str | None, base_model: str | None, model_dir: Path | None) -> None:
    """Import an adapter directory into the blockstore and print its CID.

    The adapter is checked by the engine's own loader against the base model before it gets a CID, so that
    what is imported is what a node serves. Symlinks, FIFOs and devices in the directory are refused."""
    cfg = _config(obj)
    if author is None:
        author = ""
        if cfg is not None and cfg.keystore_path.is_file():
            from openlora.node.keystore import read_address
            author = read_address(cfg.keystore_path)
    validate = _validator(cfg, model_dir)
    if validate is None:
        click.echo("warning: no config and no --model: the adapter is not checked against a base model",
                   err=True)
    cid, manifest = _store(obj, cfg).add(directory, author=author, base_model=base_model, validate=validate)
    click.echo(str(cid))


def _validator(cfg, model_dir: Path | None):
    """The engine's load-time checks for the base model of --model, else of the node's config (None: neither)."""
    from openlora.inference.errors import InferenceError
    from openlora.inference.model_config import read_model_spec
    from openlora.node.errors import NodeError
    from openlora.node.ipfs.adapters import engine_validator
    if model_dir is None and cfg is None:
        return None
    if model_dir is None:
        from openlora.node.runner import resolve_model_dir
        model_dir = resolve_model_dir(cfg)
    try:
        spec = read_model_spec(model_dir)
    except InferenceError as e:
        raise NodeError(f"cannot validate the adapter: {e}") from None
    if cfg is None:
        return engine_validator(spec)
    return engine_validator(spec, max_rank=cfg.adapters.max_rank, max_bytes=int(cfg.adapters.max_adapter_bytes))


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the disk tier's bytes and every adapter.")
@click.pass_obj
def list_(obj, as_json: bool) -> None:
    """List the adapters held locally: CID, base model, rank, size on disk, last use, pinned, author.

    Most recently used first. `tier=` shows where a node running on this home holds the adapter."""
    cfg = _config(obj)
    store = _store(obj, cfg)
    running = _running_node(cfg)
    usage, used = store.tier.usage(_engine_use(running))
    metas = store.list()
    rows = []
    for u in sorted(usage, key=lambda u: (-(u.last_used or 0), u.cid)):
        m = metas.get(u.cid, {}).get("manifest", {})
        rows.append({"cid": u.cid, "base_model": m.get("base_model"), "rank": m.get("rank"), "bytes": u.bytes,
                     "export_bytes": u.export_bytes, "last_used": u.last_used, "pinned": u.pinned,
                     "complete": u.complete, "author": m.get("author") or None,
                     "node_tier": running.get(u.cid) if running is not None else None})
    budget = store.tier.budget
    if as_json:
        click.echo(json.dumps({"used_bytes": used, "budget_bytes": budget, "node_running": running is not None,
                               "adapters": rows}, indent=2))
        return
    for r in rows:
        extra = ("" if r["complete"] else "  INCOMPLETE (fetched again on use)") + \
            (f"  tier={r['node_tier']}" if r["node_tier"] else "")
        click.echo(f"{r['cid']}  base={r['base_model'] or '?'}  rank={r['rank'] if r['rank'] is not None else '?'}  "
                   f"size={r['bytes']}  last_used={_when(r['last_used'])}  pinned={'yes' if r['pinned'] else 'no'}  "
                   f"author={r['author'] or '-'}{extra}")
    click.echo(f"disk tier: {used} bytes used" + (f" of {budget} (adapters.disk_store_bytes)" if budget is not None
                                                   else " (no config: no budget)"), err=True)


@command.command("rm")
@click.argument("cid")
@click.option("--force", is_flag=True, help="Remove it even if adapters.pinned names it.")
@click.option("--json", "as_json", is_flag=True, help="Print what was freed as one JSON object.")
@click.pass_obj
def rm(obj, cid: str, force: bool, as_json: bool) -> None:
    """Remove an adapter from the local store: its exported copy and every block no other stored adapter shares.

    A pinned adapter (adapters.pinned) is refused without --force. A node running on this home that still lists
    the adapter keeps serving it from memory while it stays there, and fetches it again when it needs it."""
    from openlora.content.cid import as_cid
    cfg = _config(obj)
    cid = str(as_cid(cid))
    r = _store(obj, cfg).remove(cid, force=force)
    running = _running_node(cfg)
    tier = running.get(cid) if running is not None else None
    if as_json:
        click.echo(json.dumps({"removed": r.cid, "freed_bytes": r.freed_bytes, "blocks_deleted": r.blocks_deleted,
                               "blocks_shared_kept": r.blocks_shared, "node_lists_it": tier is not None,
                               "node_tier": tier}, indent=2))
        return
    click.echo(f"removed adapter {r.cid}: {r.freed_bytes} bytes freed ({r.blocks_deleted} blocks deleted, "
               f"{r.blocks_shared} kept: shared with other stored adapters)")
    if tier is not None:
        click.echo(f"note: the running node still lists {r.cid} (tier {tier}); it serves it from memory while it "
                   f"stays there and fetches it again when needed; unload it with DELETE /admin/adapters/<name>",
                   err=True)


@command.command("pull")
@click.argument("cid")
@click.option("--gateway", "gateways", multiple=True, help="Trustless gateway URL (repeatable).")
@click.option("--kubo-rpc", default=None, help="Kubo RPC multiaddr, e.g. /ip4/127.0.0.1/tcp/5001/http.")
@click.option("--peer", "peers", multiple=True,
              help="Peer multiaddr (/ip4/.../tcp/.../p2p/ID) to fetch from over libp2p (repeatable); with a config "
                   "whose [p2p] is enabled, its bootstrap peers are used too.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for peers to connect.")
@click.pass_obj
def pull(obj, cid: str, gateways: tuple[str, ...], kubo_rpc: str | None, peers: tuple[str, ...],
         timeout: float) -> None:
    """Fetch an adapter by CID (every block verified) and print the directory it was exported to.

    Sources, in order: peers (libp2p), the Kubo RPC API, trustless gateways."""
    from openlora.node.ipfs.fetchers import GatewayFetcher, KuboRpcFetcher
    from openlora.node.ipfs.source import IpfsAdapterSource
    from openlora.node.errors import NodeError
    from openlora.inference.sources import AdapterSourceError
    cfg = _config(obj)
    fetchers = []
    service = None
    store = _store(obj, cfg)
    bootstrap = tuple(peers) + (tuple(cfg.p2p.bootstrap) if cfg is not None and cfg.p2p.enabled else ())
    if bootstrap and not store.complete(cid):
        service = _pull_host(obj, store, bootstrap, timeout)
        from openlora.node.p2p.service import P2PFetcher
        fetchers.append(P2PFetcher(service))
    rpc = kubo_rpc or (cfg.ipfs.kubo_rpc if cfg else "")
    if rpc:
        fetchers.append(KuboRpcFetcher(rpc))
    for g in (*gateways, *(cfg.ipfs.gateways if cfg else ())):
        fetchers.append(GatewayFetcher(g))
    try:
        path = IpfsAdapterSource(store, fetchers).fetch(cid)
    except AdapterSourceError as e:
        raise NodeError(str(e)) from None
    finally:
        if service is not None:
            service.stop()
    click.echo(str(path))


def _pull_host(obj, store, bootstrap: tuple[str, ...], timeout: float):
    """A short-lived libp2p host (ephemeral identity and account) connected to `bootstrap`."""
    import time

    from eth_account import Account

    from openlora.node.errors import NodeError
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    service = P2PService(obj.home, store, Account.create(), P2PSettings(listen="/ip4/127.0.0.1/tcp/0"),
                         ephemeral_identity=True).start()
    errors = []
    for addr in bootstrap:
        try:
            service.connect(addr)
        except Exception as e:  # noqa: BLE001 - libp2p raises many types; report them all at the end
            errors.append(f"{addr}: {e}")
    deadline = time.monotonic() + timeout
    while not service.connected_peers() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not service.connected_peers():
        service.stop()
        raise NodeError("could not connect to any peer: " + "; ".join(errors))
    return service


@command.command("export-car")
@click.argument("cid")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def export_car(obj, cid: str, out: Path) -> None:
    """Write the DAG of CID from the local blockstore as a CARv1 file."""
    from openlora.fsutil import atomic_writer
    from openlora.content.car import write_car
    store = _store(obj)
    with atomic_writer(out) as f:
        n = write_car(cid, store.blocks.get, f)
    click.echo(f"{out}: {n} blocks")


@command.command("import-car")
@click.argument("car", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def import_car_cmd(obj, car: Path) -> None:
    """Import a CAR file (every block verified) and print its root CIDs; complete adapter roots are recorded."""
    from openlora.node.ipfs.adapters import AdapterError
    from openlora.content.car import import_car
    from openlora.content.dag import missing_blocks
    store = _store(obj)
    lines = []
    with store.tier.lock.shared(), open(car, "rb") as f:   # no eviction pass sweeps blocks before their root
        roots, n = import_car(f, store.blocks)
        for r in roots:
            missing = missing_blocks(r, store.blocks)
            state = f"incomplete (missing {missing[0]})" if missing else "complete"
            if not missing:
                try:
                    store.record(r)
                    state += ", adapter"
                except AdapterError:
                    pass
            lines.append(f"{r}  {state}")
    for line in lines:
        click.echo(line)

"""`openlora-node adapters add|list|pull|export-car|import-car`: the node's content-addressed adapters.

Blocks live under `<home>/ipfs/`; `add` prints the adapter's CID, `pull` fetches one (peers from config, the
configured Kubo RPC API and trustless gateways, or those given on the command line), verifying every block.
"""

from __future__ import annotations

from pathlib import Path

import click


def _store(obj):
    from openlora.node.ipfs.adapters import AdapterStore
    return AdapterStore(obj.home / "ipfs")


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
    cid, manifest = _store(obj).add(directory, author=author, base_model=base_model, validate=validate)
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
@click.pass_obj
def list_(obj) -> None:
    """List the adapters held locally: CID, base model, rank, size, author."""
    for cid, meta in _store(obj).list().items():
        m = meta.get("manifest", {})
        click.echo(f"{cid}  base={m.get('base_model', '?')}  rank={m.get('rank', '?')}  "
                   f"size={m.get('size', '?')}  author={m.get('author') or '-'}")


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
    store = _store(obj)
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
    with open(car, "rb") as f:
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
        click.echo(f"{r}  {state}")

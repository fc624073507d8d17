"""`openlora-node adapters add|register|show|announce|list|rm|pull|export-car|import-car`: the node's adapters.

Blocks live under `<home>/ipfs/`; `add` prints the adapter's CID (after the engine's own checks against the base
model), `pull` fetches one (peers from config, the configured Kubo RPC API and trustless gateways, or those given on
the command line), verifying every block. `register` puts an adapter in AdapterRegistry without lineage (its price
and Datanet weights: what a node needs to charge for it; attribution.lineage), then `announce`s it: a signed gossip
announcement (node/p2p) sent from a short-lived libp2p host to the node running on this home, the configured
bootstrap peers and --peer addresses; the running node re-sends it every announce period to its mesh. `show` reads
an adapter's on-chain record back, its lineage included.
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
    if cfg is not None and cfg.path(cfg.chain.deployment_file).is_file():
        click.echo(f"next: register it on chain so that nodes can serve it for a price: `openlora-node adapters "
                   f"register {cid} --price WEI_PER_TOKEN --datanet ID:BPS`", err=True)


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


def _datanet_weights(values: tuple[str, ...]) -> list[tuple[int, int]]:
    """--datanet ID:BPS (repeatable; a lone --datanet ID takes all 10,000 bps) as (id, bps) pairs."""
    out = []
    for v in values:
        ident, sep, bps = v.partition(":")
        try:
            pair = (int(ident), int(bps) if sep else (10_000 if len(values) == 1 else -1))
        except ValueError:
            raise click.BadParameter(f"{v!r} is not ID:BPS (e.g. 1:10000, or 1:6000 with 2:4000)",
                                     param_hint="--datanet") from None
        if pair[1] == -1:
            raise click.BadParameter(f"{v!r}: give each Datanet's weight as ID:BPS when there are several",
                                     param_hint="--datanet")
        out.append(pair)
    return out


@command.command("register")
@click.argument("cid")
@click.option("--price", "price", required=True, type=click.IntRange(min=0),
              help="The adapter's price per token in wei (the token's smallest unit), added to the node's price.")
@click.option("--datanet", "datanets", multiple=True, required=True, metavar="ID:BPS",
              help="A Datanet the adapter was trained from and its weight in basis points (repeatable; the weights "
                   "sum to 10000). A lone --datanet ID takes all 10000.")
@click.option("--base-model", default=None,
              help="Base model id (default: the one in the adapter's manifest in this home's store).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The author's key (JSON keystore or hex private key). Default: the node's keystore.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, or a prompt).")
@click.option("--announce/--no-announce", default=True, show_default=True,
              help="Announce the adapter over gossip once registered (see `adapters announce`).")
@click.option("--peer", "peers", multiple=True, help="Also announce to this peer multiaddr (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the registration as one JSON object.")
@click.pass_obj
def register(obj, cid: str, price: int, datanets: tuple[str, ...], base_model: str | None, key_file: Path | None,
             password_file: Path | None, announce: bool, peers: tuple[str, ...], as_json: bool) -> None:
    """Register adapter CID in AdapterRegistry (no lineage: an adapter made outside the Model Factory), signed by
    its author, so that nodes can serve it and pay its Datanets' contributors; then announce it.

    The author is the node's account unless --key-file is given; an adapter held here must have been added with
    that author (`adapters add --author`), since peers accept its announcement only from the registered author."""
    from openlora.attribution.lineage import LineageError, register_adapter
    from openlora.content.cid import as_cid
    from openlora.node.commands.claim import _signer
    from openlora.node.commands.payouts import chain_context
    from openlora.node.errors import NodeError
    weights = _datanet_weights(datanets)
    cid = str(as_cid(cid))
    cfg, w3, dep = chain_context(obj)
    store = _store(obj, cfg)
    manifest = store.list().get(cid, {}).get("manifest")
    if manifest is not None:
        held = str(manifest.get("base_model") or "")
        if base_model is not None and held and base_model != held:
            raise NodeError(f"--base-model {base_model!r} differs from the adapter's manifest ({held!r}); peers "
                            f"would refuse its announcement: leave --base-model out")
        base_model = base_model or held
    if not base_model:
        raise NodeError(f"adapter {cid} is not held in this home ({obj.home}): give --base-model, or "
                        f"`openlora-node adapters add DIR` (or `adapters pull {cid}`) first")
    account = _signer(cfg, key_file, password_file)
    author = str((manifest or {}).get("author") or "")
    if author and author.lower() != account.address.lower():
        raise NodeError(f"adapter {cid} was added with author {author}, but {account.address} would register it; "
                        f"register with the author's key (--key-file) or add it again with --author "
                        f"{account.address}")
    try:
        r = register_adapter(w3, dep, account, cid, base_model, price, weights)
    except LineageError as e:
        raise NodeError(str(e)) from None
    shown = ", ".join(f"{d}:{b}" for d, b in sorted(weights))
    if as_json:
        click.echo(json.dumps({"cid": r.cid, "adapter_id": r.adapter_id, "author": r.author, "base_model": base_model,
                               "price_per_token": price, "datanets": [list(p) for p in sorted(weights)],
                               "tx": r.tx_hash, "block": r.block, "gas_used": r.gas_used}, indent=2))
    else:
        click.echo(f"registered adapter {r.cid} (id {r.adapter_id}) by {r.author}: base {base_model}, "
                   f"{price} wei/token, Datanets {shown} bps; tx {r.tx_hash} in block {r.block}")
    if not announce:
        return
    if manifest is None:
        click.echo(f"not announced: this home does not hold {cid}; a node holding it announces it with "
                   f"`openlora-node adapters announce {cid}`", err=True)
        return
    try:
        click.echo(_announce(obj, cfg, store, account, cid, base_model, peers), err=True)
    except NodeError as e:
        click.echo(f"registered, but not announced: {e}; retry with `openlora-node adapters announce {cid}`",
                   err=True)


@command.command("show")
@click.argument("cid")
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON object.")
@click.pass_obj
def show(obj, cid: str, as_json: bool) -> None:
    """Show what AdapterRegistry holds for adapter CID: author, base model, price, Datanet weights, state, and its
    lineage (the Datanet versions it was trained on, its training manifest CID, its base weights CID) if any."""
    from openlora.attribution.lineage import LineageError, read_adapter
    from openlora.node.commands.payouts import chain_context
    from openlora.node.errors import NodeError
    cfg, w3, dep = chain_context(obj)
    try:
        r = read_adapter(w3, dep, cid)
    except LineageError as e:
        raise NodeError(str(e)) from None
    lin = r.lineage
    if as_json:
        click.echo(json.dumps({"cid": r.cid, "adapter_id": r.adapter_id, "author": r.author, "retired": r.retired,
                               "registered_at": r.registered_at, "base_model": r.base_model,
                               "price_per_token": r.price_per_token,
                               "datanets": [list(p) for p in r.datanet_weights],
                               "lineage": None if lin is None else {
                                   "datanet_versions": [list(p) for p in lin.datanet_versions],
                                   "manifest_cid": lin.manifest_cid, "base_weights_cid": lin.base_weights_cid}},
                              indent=2))
        return
    click.echo(f"adapter {r.cid} (id {r.adapter_id}){'  RETIRED' if r.retired else ''}")
    click.echo(f"  author {r.author}, registered {_when(r.registered_at)}, base {r.base_model}, "
               f"{r.price_per_token} wei/token")
    click.echo("  Datanets " + ", ".join(f"{d}: {b} bps" for d, b in r.datanet_weights))
    if lin is None:
        click.echo("  lineage: none (registered without one: `adapters register`)")
    else:
        click.echo("  lineage: trained on " + ", ".join(f"Datanet {d} version {v}" for d, v in lin.datanet_versions)
                   + f"; training manifest {lin.manifest_cid}; base weights {lin.base_weights_cid}")


@command.command("announce")
@click.argument("cid")
@click.option("--peer", "peers", multiple=True, help="Peer multiaddr (/ip4/.../tcp/.../p2p/ID) to announce to "
                                                     "(repeatable); the node running on this home and the config's "
                                                     "bootstrap peers are always included.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The author's key (JSON keystore or hex private key). Default: the node's keystore.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, or a prompt).")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for peers to join the topic.")
@click.pass_obj
def announce_cmd(obj, cid: str, peers: tuple[str, ...], key_file: Path | None, password_file: Path | None,
                 timeout: float) -> None:
    """Announce a held, registered adapter over gossip, signed by its author, so that other nodes can serve it.

    Sent from a short-lived libp2p host to the node running on this home (which holds it and re-sends the
    announcement every announce period), the config's bootstrap peers and --peer addresses."""
    from openlora.content.cid import as_cid
    from openlora.node.commands.claim import _signer
    from openlora.node.errors import NodeError
    cfg = _config(obj)
    if cfg is None:
        raise NodeError(f"no config in {obj.home}: run `openlora-node init` first")
    cid = str(as_cid(cid))
    store = _store(obj, cfg)
    manifest = store.list().get(cid, {}).get("manifest")
    if manifest is None:
        raise NodeError(f"adapter {cid} is not held in this home; `adapters add` or `adapters pull` it first")
    account = _signer(cfg, key_file, password_file)
    author = str(manifest.get("author") or "")
    if author and author.lower() != account.address.lower():
        raise NodeError(f"adapter {cid} is authored by {author}; only its author can announce it ({account.address} "
                        f"is signing: give the author's --key-file)")
    click.echo(_announce(obj, cfg, store, account, cid, str(manifest.get("base_model") or ""), peers,
                         timeout=timeout))


def _local_node_addr(cfg) -> str | None:
    """The libp2p address of a node running on this home (its identity file and [p2p] listen), else None."""
    import re
    ident = cfg.home / "p2p" / "identity.key"
    if not cfg.p2p.enabled or not ident.is_file() or _running_node(cfg) is None:
        return None
    listen = re.sub(r"^/ip4/0\.0\.0\.0/", "/ip4/127.0.0.1/", re.sub(r"^/ip6/::/", "/ip6/::1/", cfg.p2p.listen))
    if re.search(r"/tcp/0(/|$)", listen):
        return None                       # an ephemeral port: not knowable from here
    try:
        from libp2p.peer.id import ID

        from openlora.node.p2p.host import load_or_create_identity
        peer_id = ID.from_pubkey(load_or_create_identity(ident).public_key)
    except (OSError, ValueError):
        return None
    return f"{listen}/p2p/{peer_id}"


def _announce(obj, cfg, store, account, cid: str, base_model: str, peers: tuple[str, ...],
              timeout: float = 15.0) -> str:
    """Publish the author's signed announcement of `cid` from a short-lived host (ephemeral peer identity) to the
    local node, the bootstrap peers and `peers`, once at least one of them is in the announce topic's mesh."""
    import time

    from openlora.node.errors import NodeError
    from openlora.node.p2p import gossip
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    local = _local_node_addr(cfg)
    targets = list(dict.fromkeys(([local] if local else []) + list(peers) + list(cfg.p2p.bootstrap)))
    if not targets:
        raise NodeError("no peer to announce to: no node is running on this home and neither --peer nor "
                        "p2p.bootstrap names one; start the node (`openlora-node start`) and run "
                        f"`openlora-node adapters announce {cid}`")
    service = P2PService(obj.home, store, account, P2PSettings(listen="/ip4/127.0.0.1/tcp/0", base_model=base_model),
                         ephemeral_identity=True).start()
    try:
        errors, reached = [], []
        for addr in targets:
            try:
                service.connect(addr)
                reached.append(addr)
            except Exception as e:  # noqa: BLE001 - libp2p raises many types; report them together
                errors.append(f"{addr}: {type(e).__name__}: {e}"[:300])
        if not reached:
            raise NodeError("could not connect to any peer to announce to: " + "; ".join(errors))

        def mesh() -> int:
            router = service.node.pubsub.router
            return len(getattr(router, "mesh", {}).get(gossip.TOPIC_ANNOUNCE, ()))
        deadline = time.monotonic() + timeout
        while not service.bridge.call(service._async(mesh)):
            if time.monotonic() > deadline:
                raise NodeError(f"no peer joined the announce topic within {timeout:g}s (connected to "
                                f"{len(reached)})")
            time.sleep(0.05)
        service.announce(cid)
        time.sleep(0.5)               # let the streams flush the message before the host goes away
    finally:
        service.stop()
    note = f" ({len(errors)} unreachable: {'; '.join(errors)})" if errors else ""
    return (f"announced {cid} (author {account.address}, base {base_model}) to {len(reached)} peer(s)"
            + (" including the node running on this home, which re-sends it every announce period" if local in
               reached else "") + note)


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

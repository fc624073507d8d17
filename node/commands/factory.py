"""`openlora-node factory train | verify | show | publish`: LoRA adapters trained from a Datanet version.

What it does: `train` finds a Datanet version on chain (DatanetRegistry), makes its blocks present in the home
(fetched from --peer / --gateway / the config's sources when missing, every block checked against its CID), trains
with openlora.factory (progress line on stderr: step, loss, tokens/s, ETA; Ctrl-C stops and writes nothing),
checks the result with the engine's own adapter loader, imports the directory (adapter files, factory-manifest.json,
manifest.json) into <home>/ipfs (its CID is the adapter's CID) and exports it to <home>/ipfs/adapters/<cid>, then
prints the held-out figures and sample generations as a small table. `verify CID` reads the factory manifest out of
the adapter's DAG, checks the version on chain, fetches the rows, retrains with the manifest's recipe and says "same
CID" or exactly what differs. `show CID` prints a held adapter's factory manifest. `publish CID` registers the
adapter with its lineage (Datanet, version, base, manifest) through openlora.attribution.lineage and announces it
over gossip from this home's node identity. Every error is one line.
What it does not do: train on a GPU (the bit-identical promise is for CPU fp32), or run a node.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from openlora.node.errors import NodeError


class FactoryCommandError(NodeError):
    """A factory command cannot go on; one line says why."""


def _one_line(fn: Callable) -> Callable:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from openlora.attribution.errors import AttributionError
        from openlora.content.errors import ContentError
        from openlora.datanets.errors import DatanetError
        from openlora.factory.errors import FactoryError, TrainingInterrupted
        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as e:
            click.echo("", err=True)
            raise FactoryCommandError(str(e)) from None
        except KeyboardInterrupt:
            click.echo("", err=True)
            raise FactoryCommandError("stopped (interrupted); nothing was written") from None
        except (FactoryError, DatanetError, AttributionError, ContentError) as e:
            raise FactoryCommandError(str(e)) from None
    return wrapper


def _hparams(fn: Callable) -> Callable:
    opts = [
        click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank (1..256)."),
        click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (scale = alpha/rank)."),
        click.option("--targets", default="q_proj,v_proj", show_default=True,
                     help="Comma-separated modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj."),
        click.option("--epochs", type=int, default=1, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate (AdamW, constant)."),
        click.option("--batch", type=int, default=4, show_default=True, help="Rows per step."),
        click.option("--max-len", type=int, default=256, show_default=True, help="Tokens per row (truncated)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Fixes LoRA init, split and order."),
        click.option("--eval-split", type=float, default=0.1, show_default=True, help="Share of rows held out."),
        click.option("--threads", type=int, default=1, show_default=True,
                     help="torch threads (recorded: part of the bit-identical result)."),
        click.option("--samples", type=int, default=3, show_default=True, help="Sample generations, base vs adapter."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


source_options = [
    click.option("--peer", "peers", multiple=True, help="Peer multiaddr to fetch missing Datanet blocks from."),
    click.option("--gateway", "gateways", multiple=True, help="Trustless gateway URL (repeatable), after the peers."),
    click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for peers to connect."),
]


def _sources(fn: Callable) -> Callable:
    for o in reversed(source_options):
        fn = o(fn)
    return fn


class _Line:
    """The progress line on stderr: step, loss, tokens/s, ETA (rewritten in place on a terminal)."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.tty, self.last = quiet, sys.stderr.isatty(), 0.0

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if self.quiet or (p.step != p.steps and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last = now
        eta = int(p.eta_s)
        line = (f"step {p.step}/{p.steps}  epoch {p.epoch}  loss {p.loss:.4f}  {p.tokens_per_s:,.0f} tok/s  "
                f"ETA {eta // 60}:{eta % 60:02d}")
        click.echo(("\r" + line + " " * 4) if self.tty else line, err=True, nl=not self.tty)
        if self.tty and p.step == p.steps:
            click.echo("", err=True)


def _base_dir(obj: Any, cfg: Any, base: str | None) -> Path:
    """--base DIR, or the node's [model] (config), else the demo base (SmolLM2-135M-Instruct). --base CID names the
    weights CID that the resolved directory must have."""
    from openlora.content.cid import CID
    from openlora.content.errors import ContentError
    cid = None
    if base:
        try:
            cid = str(CID.parse(base))
        except (ContentError, ValueError):
            path = Path(base).expanduser()
            if not (path / "config.json").is_file():
                raise FactoryCommandError(f"--base {base}: not an HF model directory (no config.json) nor a CID")
            return path
    if cfg is not None:
        from openlora.node.runner import resolve_model_dir
        path = resolve_model_dir(cfg)
    else:
        from openlora.devnet.base_model import BaseModelError, ensure_base_model
        try:
            path = ensure_base_model()
        except BaseModelError as e:
            raise FactoryCommandError(str(e)) from None
    if cid is not None:
        from openlora.factory.output import base_identity
        have = base_identity(path)["weights_cid"]
        if have != cid:
            raise FactoryCommandError(f"base model mismatch: --base {cid}, but this node's base {path} is {have}; "
                                      f"pass --base DIR of that model")
    return path


def _records(obj: Any, ctx: Any, manifest_cid: str, subject: str, peers: tuple, gateways: tuple,
             timeout: float) -> tuple[dict, list]:
    """The version's rows, its blocks fetched first when this home lacks them (every block checked)."""
    from openlora.datanets.pull import pull
    from openlora.factory.rows import records_from_version
    from openlora.node.commands._datanet_support import _Fetcher
    with _Fetcher(obj, ctx, subject, peers, gateways, timeout) as fetcher:   # fetches only what is missing
        pull(manifest_cid, fetcher, ctx.blocks)
    return records_from_version(manifest_cid, ctx.blocks.get, max_row_bytes=ctx.limits.max_row_bytes)


def _import(cfg: Any, home: Path, base_dir: Path, files: dict[str, bytes], cid: str,
            meta: dict[str, Any]) -> Path:
    """Check the adapter with the engine's loader, import it into <home>/ipfs and export it; returns its directory."""
    import tempfile

    from openlora.factory import output
    from openlora.inference.errors import InferenceError
    from openlora.inference.model_config import read_model_spec
    from openlora.node.ipfs.adapters import AdapterError, AdapterStore, engine_validator
    store = AdapterStore(home / "ipfs")
    try:
        spec = read_model_spec(base_dir)
    except InferenceError as e:
        raise FactoryCommandError(f"cannot check the adapter: {e}") from None
    node_manifest = json.loads(files[output.MANIFEST])
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".factory-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        kw = {} if cfg is None else {"max_rank": cfg.adapters.max_rank,
                                     "max_bytes": int(cfg.adapters.max_adapter_bytes)}
        try:
            engine_validator(spec, **kw)(Path(tmp), node_manifest)
        except AdapterError as e:
            raise FactoryCommandError(f"the trained adapter is refused by the engine's loader: {e}") from None
    with store.tier.lock.shared():
        got = output.store(files, store.blocks, {"factory": meta})
        if got != cid:   # cannot happen: the same bytes give the same CID
            raise FactoryCommandError(f"internal error: imported CID {got} differs from the computed {cid}")
        store.tier.touch(cid, added=True)
    return store.materialize(cid)


def _table(m: dict[str, Any]) -> list[str]:
    e = m.get("evaluation") or {}

    def f(x: Any, fmt: str = "{:.4f}") -> str:
        return fmt.format(x) if isinstance(x, (int, float)) else "-"
    lines = [f"held-out: {e.get('held_out_rows', 0)} rows, {e.get('held_out_tokens', 0):,} label tokens",
             f"  {'':8} {'loss':>9} {'perplexity':>11}",
             f"  {'base':8} {f(e.get('base_loss')):>9} {f(e.get('base_ppl'), '{:.2f}'):>11}",
             f"  {'adapter':8} {f(e.get('adapter_loss')):>9} {f(e.get('adapter_ppl'), '{:.2f}'):>11}"]
    for i, s in enumerate(e.get("samples") or []):
        lines.append(f"sample {i + 1}: prompt ...{s['prompt'][-80:]!r}")
        lines.append(f"  base:    {s['base'][:160]!r}")
        lines.append(f"  adapter: {s['adapter'][:160]!r}")
    return lines


@click.group("factory")
def command() -> None:
    """Train LoRA adapters from a Datanet version, reproducibly; verify and publish them."""


@command.command("train")
@click.option("--datanet", "datanet_id", type=int, required=True, help="Datanet id on this chain's registry.")
@click.option("--version", "version", type=int, default=None, help="Version (default: the latest).")
@click.option("--base", default=None, help="Base model: HF directory, or the weights CID the node's base must have "
                                           "(default: the node's [model], else SmolLM2-135M-Instruct).")
@_hparams
@click.option("--author", default=None, help="Author's 0x address in manifest.json (default: this node's account).")
@_sources
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.pass_obj
@_one_line
def train(obj: Any, datanet_id: int, version: int | None, base: str | None, rank: int, alpha: float, targets: str,
          epochs: int, lr: float, batch: int, max_len: int, seed: int, eval_split: float, threads: int,
          samples: int, author: str | None, peers: tuple, gateways: tuple, timeout: float, as_json: bool,
          quiet: bool) -> None:
    """Train a LoRA on a Datanet version's rows; import it; print its CID and held-out figures."""
    from openlora.factory.api import train as train_records
    from openlora.factory.config import TrainConfig
    from openlora.node.commands._datanet_support import _Ctx
    cfg = TrainConfig(rank=rank, alpha=alpha, targets=targets, epochs=epochs, lr=lr, batch=batch, max_len=max_len,
                      seed=seed, eval_split=eval_split, threads=threads, samples=samples)   # refusals come first
    ctx = _Ctx(obj)
    v = ctx.reg.version(datanet_id, version)
    base_dir = _base_dir(obj, ctx.cfg, base)
    m, records = _records(obj, ctx, v.manifest_cid, f"version {v.version} of Datanet {datanet_id}", peers, gateways,
                          timeout)
    if author is None:
        author = ""
        if ctx.cfg.keystore_path.is_file():
            from openlora.node.keystore import read_address
            author = read_address(ctx.cfg.keystore_path)
    source = {"id": datanet_id, "version": v.version, "manifest_cid": v.manifest_cid,
              "chain_id": int(ctx.w3.eth.chain_id), "registry": ctx.reg.c.address}
    click.echo(f"training on {len(records):,} rows of version {v.version} of Datanet {datanet_id} "
               f"({v.manifest_cid}), base {base_dir}", err=True)
    r = train_records(records, base_dir, None, cfg, source=source, author=author, progress=_Line(quiet or as_json))
    path = _import(ctx.cfg, ctx.cfg.home, base_dir, r.files, r.cid, {"datanet_id": datanet_id,
                                                                      "version": v.version})
    out = {"cid": r.cid, "dir": str(path), "datanet_id": datanet_id, "version": v.version, "steps": r.steps,
           "tokens": r.tokens, "seconds": round(r.seconds, 3), "tokens_per_s": round(r.tokens_per_s, 1),
           "final_loss": r.manifest["training"]["final_loss"], "evaluation": r.evaluation}
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    click.echo(f"adapter {r.cid}")
    click.echo(f"trained {r.steps} steps on {r.tokens:,} tokens in {r.seconds:.1f} s ({r.tokens_per_s:,.0f} tok/s), "
               f"final loss {out['final_loss']}; exported to {path}")
    for line in _table(r.manifest):
        click.echo(line)


def _adapter_files(obj: Any, ctx: Any, cid: str, peers: tuple, gateways: tuple, timeout: float) -> dict[str, bytes]:
    """The four files of factory adapter `cid` (fetched when missing; exported from verified blocks)."""
    from openlora.content.cid import CID
    from openlora.content.dag import missing_blocks
    from openlora.factory import output
    from openlora.node.commands._datanet_support import _Fetcher
    from openlora.node.ipfs.adapters import AdapterStore
    try:
        cid = str(CID.parse(cid))
    except ValueError as e:
        raise FactoryCommandError(f"{cid!r} is not a CID: {e}") from None
    store = AdapterStore(ctx.cfg.home / "ipfs")
    if not store.blocks.has(cid) or missing_blocks(cid, store.blocks):
        with _Fetcher(obj, ctx, f"adapter {cid}", peers, gateways, timeout) as fetcher:
            fetcher([cid], "adapter")
    path = store.materialize(cid)
    if not (path / output.FACTORY).is_file():
        raise FactoryCommandError(f"adapter {cid} has no {output.FACTORY}: it was not made by the Model Factory")
    return output.read_dir(path)


@command.command("verify")
@click.argument("cid")
@click.option("--base", default=None, help="Base model directory (default: the node's [model], else SmolLM2).")
@_sources
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.pass_obj
@_one_line
def verify(obj: Any, cid: str, base: str | None, peers: tuple, gateways: tuple, timeout: float, as_json: bool,
           quiet: bool) -> None:
    """Retrain adapter CID from its factory manifest and the Datanet version; same CID, or what differs."""
    from openlora.factory import output
    from openlora.factory.api import differences, reproduce
    from openlora.node.commands._datanet_support import _Ctx
    t0 = time.perf_counter()
    ctx = _Ctx(obj)
    files = _adapter_files(obj, ctx, cid, peers, gateways, timeout)
    m = output.read_factory_manifest(files[output.FACTORY], f"adapter {cid}")
    src = m.get("datanet")
    if not isinstance(src, dict):
        raise FactoryCommandError(f"adapter {cid} was trained from plain rows, not a Datanet version: reproduce it "
                                  f"with openlora.factory.reproduce(manifest, rows, base_dir)")
    try:
        datanet_id, version, manifest_cid = int(src["id"]), int(src["version"]), str(src["manifest_cid"])
    except (KeyError, TypeError, ValueError):
        raise FactoryCommandError(f"adapter {cid}: its factory manifest's datanet field is malformed") from None
    v = ctx.reg.version(datanet_id, version)
    if v.manifest_cid != manifest_cid:
        raise FactoryCommandError(f"adapter {cid} was trained on {manifest_cid}, but version {version} of Datanet "
                                  f"{datanet_id} on this chain is {v.manifest_cid}")
    _m, records = _records(obj, ctx, manifest_cid, f"version {version} of Datanet {datanet_id}", peers, gateways,
                           timeout)
    base_dir = _base_dir(obj, ctx.cfg, base)
    author = str(json.loads(files[output.MANIFEST]).get("author") or "")
    notes = []
    env = m.get("environment") or {}
    if env.get("device_class") != output.device_class():
        notes.append(f"trained on {env.get('device_class')}, reproduced on {output.device_class()}")
    r = reproduce(m, records, base_dir, author=author, progress=_Line(quiet or as_json))
    from openlora.content.cid import CID
    same = r.cid == str(CID.parse(cid))
    diffs = [] if same else differences(files, r.files)
    secs = time.perf_counter() - t0
    if as_json:
        click.echo(json.dumps({"ok": same, "cid": str(CID.parse(cid)), "reproduced_cid": r.cid,
                               "differences": diffs, "notes": notes, "seconds": round(secs, 3)}, sort_keys=True))
    else:
        for n in notes:
            click.echo(f"note: {n}", err=True)
        if same:
            click.echo(f"verified: retraining gives the same CID {r.cid} ({r.steps} steps, {secs:.1f} s in all)")
        else:
            click.echo(f"NOT reproduced: {cid} retrains to {r.cid}")
            for d in diffs[:20]:
                click.echo(f"  {d}")
            if len(diffs) > 20:
                click.echo(f"  ... {len(diffs) - 20} more")
    if not same:
        sys.exit(1)


@command.command("show")
@click.argument("cid")
@click.option("--json", "as_json", is_flag=True, help="The factory manifest as JSON.")
@click.pass_obj
@_one_line
def show(obj: Any, cid: str, as_json: bool) -> None:
    """Print a held adapter's factory manifest: source, base, hyper-parameters, environment, evaluation."""
    from openlora.factory import output
    from openlora.node.ipfs.adapters import AdapterStore
    store = AdapterStore(obj.home / "ipfs")
    if not store.complete(cid):
        raise FactoryCommandError(f"adapter {cid} is not held here (`openlora-node adapters pull {cid}`)")
    path = store.materialize(cid)
    if not (path / output.FACTORY).is_file():
        raise FactoryCommandError(f"adapter {cid} has no {output.FACTORY}: it was not made by the Model Factory")
    m = output.read_factory_manifest(output.read_dir(path)[output.FACTORY], f"adapter {cid}")
    if as_json:
        click.echo(json.dumps(m, sort_keys=True, indent=1))
        return
    d = m.get("datanet") or {}
    click.echo(f"adapter {cid}")
    click.echo(f"data: Datanet {d.get('id')} version {d.get('version')} ({d.get('manifest_cid')})" if d else
               "data: plain rows (no Datanet)")
    click.echo(f"base: {m['base'].get('model_id')} weights {m['base'].get('weights_cid')}")
    click.echo("hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(m["hyperparameters"].items())))
    click.echo("environment: " + ", ".join(f"{k}={v}" for k, v in sorted(m["environment"].items())))
    for line in _table(m):
        click.echo(line)

@command.command("publish")
@click.argument("cid")
@click.option("--price", type=int, required=True, help="Price per token in the token's smallest unit (wei).")
@click.option("--peer", "peers", multiple=True,
              help="Peer multiaddr to announce to over gossip (repeatable); with [p2p] enabled, its bootstrap "
                   "peers too. Without any, the adapter is registered and not announced.")
@click.option("--linger", type=float, default=10.0, show_default=True,
              help="Seconds to stay connected after announcing, serving the adapter's blocks to peers that fetch it.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for peers to connect.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key that signs (JSON keystore or hex private key). Default: the node's keystore.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keystore password file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_one_line
def publish(obj: Any, cid: str, price: int, peers: tuple, linger: float, timeout: float, key_file: Path | None,
            password_file: Path | None, as_json: bool) -> None:
    """Register a factory adapter in AdapterRegistry with its lineage (Datanet version, training manifest CID, base
    weights CID), then announce it over gossip (signed by the author) so that other nodes can serve it."""
    from openlora.attribution.lineage import Lineage, register_adapter
    from openlora.content.importer import add_bytes
    from openlora.factory import output
    from openlora.node.commands._datanet_support import _Ctx
    if price < 0:
        raise FactoryCommandError(f"--price must be >= 0 wei per token, got {price}")
    ctx = _Ctx(obj)
    files = _adapter_files(obj, ctx, cid, (), (), timeout)
    from openlora.content.cid import CID
    cid = str(CID.parse(cid))
    m = output.read_factory_manifest(files[output.FACTORY], f"adapter {cid}")
    src = m.get("datanet")
    if not isinstance(src, dict) or not isinstance(src.get("id"), int) or not isinstance(src.get("version"), int):
        raise FactoryCommandError(f"adapter {cid} was not trained from a Datanet version: register it without "
                                  f"lineage (`openlora-node adapters register`)")
    node_manifest = json.loads(files[output.MANIFEST])
    account = ctx.signer(key_file, password_file)
    author = str(node_manifest.get("author") or "")
    if author and author.lower() != account.address.lower():
        raise FactoryCommandError(f"adapter {cid} names author {author}; the signer is {account.address}: publish "
                                  f"it with the author's key (--key-file)")
    lineage = Lineage(((src["id"], src["version"]),), str(add_bytes(files[output.FACTORY]).cid),
                      str(m["base"].get("weights_cid") or ""))
    reg = register_adapter(ctx.w3, ctx.dep, account, cid, str(m["base"].get("model_id") or ""), price,
                           {src["id"]: 10_000}, lineage)
    announced_to: list[str] = []
    bootstrap = tuple(peers) + (tuple(ctx.cfg.p2p.bootstrap) if ctx.cfg.p2p.enabled else ())
    if bootstrap:
        announced_to = _announce(ctx, account, cid, bootstrap, timeout, linger)
    out = {"cid": cid, "tx": reg.tx_hash, "gas_used": reg.gas_used, "adapter_id": reg.adapter_id,
           "author": reg.author, "price_per_token": price, "datanet_id": src["id"], "version": src["version"],
           "manifest_cid": lineage.manifest_cid, "base_weights_cid": lineage.base_weights_cid,
           "announced_to": announced_to}
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    click.echo(f"registered adapter {cid} with its lineage: Datanet {src['id']} version {src['version']}, "
               f"training manifest {lineage.manifest_cid}, base weights {lineage.base_weights_cid}")
    click.echo(f"price {price} wei/token, author {reg.author}; tx {reg.tx_hash} (gas {reg.gas_used:,})")
    click.echo(f"announced over gossip to {len(announced_to)} peer(s)" if announced_to else
               "not announced (no --peer and no [p2p] bootstrap); a node holding it serves it by CID")


def _announce(ctx: Any, account: Any, cid: str, bootstrap: tuple, timeout: float, linger: float) -> list[str]:
    """Announce `cid` from a short-lived host that holds it (this home's blockstore) and signs as `account`,
    then stay `linger` seconds so that peers can fetch its blocks from it."""
    from openlora.node.ipfs.adapters import AdapterStore
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    store = AdapterStore(ctx.cfg.home / "ipfs")
    service = P2PService(ctx.cfg.home, store, account, P2PSettings(listen="/ip4/127.0.0.1/tcp/0"),
                         ephemeral_identity=True).start()
    try:
        errors = []
        for addr in bootstrap:
            try:
                service.connect(addr)
            except Exception as e:  # noqa: BLE001 - libp2p raises many types; reported together
                errors.append(f"{addr}: {e}")
        deadline = time.monotonic() + timeout
        while not service.connected_peers() and time.monotonic() < deadline:
            time.sleep(0.1)
        peers = service.connected_peers()
        if not peers:
            raise FactoryCommandError(f"registered, but could not connect to any peer to announce it: "
                                      f"{'; '.join(errors) or 'no answer'}")
        time.sleep(min(2.0, linger))          # let gossipsub graft the mesh before the first publish
        service.announce(cid, ctx.dep.address("AdapterRegistry"))
        end = time.monotonic() + max(0.0, linger - 2.0)
        while time.monotonic() < end:
            time.sleep(0.2)
        return sorted(peers)
    finally:
        service.stop()

"""`openlora-node attribution verify RECEIPT`: re-derive a receipt's attribution from public data.

What it does: reads RECEIPT — a request id in this home's receipt database, a file (one receipt, or a published
batch file: every receipt in it), or an ipfs:// URI (read from this home's blockstore, fetched through its Kubo
RPC / gateways when missing, every block verified) — parsed strictly (openlora.safejson, bounded; every field
typed); rebuilds the span index of each Datanet version the receipt names, from the version's content in the
blockstore and the base model's tokenizer (transformers' AutoTokenizer on --base, default the home's model),
recomputes the spans and the vector by the receipt's rule, checks the node's signature and the adapter's lineage on
chain, and prints "match" or exactly what differs (exit status 1). Also holds the helpers `audit` and `payouts`
share: chain access with or without a node home (--rpc-url, --deployment), reading receipts files, and indexes.
What it does not do: fetch a Datanet version from peers (`openlora-node datanet pull` does), or change anything.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from openlora.node.errors import NodeError

MAX_RECEIPT_FILE = 64 << 20


class AttributionCommandError(NodeError):
    """A receipt, a chain or a base model that this command cannot use; one line says which."""


def home_config(obj: Any) -> Any:
    """The home's config, or None when the home has none (commands that read only public data still run)."""
    from openlora.node.config import CONFIG_FILENAME, load_config
    if not (obj.home / CONFIG_FILENAME).is_file():
        return None
    return load_config(obj.home)


def chain(obj: Any, rpc_url: str | None, deployment: str | None) -> tuple[Any, Any, Any]:
    """(cfg or None, w3, deployment): --rpc-url / --deployment, else the home's [chain] config."""
    from openlora.attribution.deployment import DeploymentError, read_deployment
    from openlora.node.commands.payouts import connect_checked
    cfg = home_config(obj)
    if cfg is None and deployment is None and (obj.home / "deployment.json").is_file():
        deployment = str(obj.home / "deployment.json")      # `devnet up` without `init` writes it there
    if cfg is None and (rpc_url is None or deployment is None):
        raise AttributionCommandError(f"no node config at {obj.home}: give --rpc-url URL and --deployment FILE (the "
                                      f"contracts' addresses, as `devnet up` writes them)")
    url = rpc_url or cfg.chain.rpc_url
    try:
        dep = read_deployment(Path(deployment) if deployment else cfg.path(cfg.chain.deployment_file))
    except DeploymentError as e:
        raise AttributionCommandError(str(e)) from None
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise AttributionCommandError(f"--rpc-url {url[:80]!r} is not an http(s) or ws(s) URL")
    return cfg, connect_checked(url, dep, AttributionCommandError), dep


def reader(cfg: Any) -> Any:
    """uri -> text of a published receipts file (file://, a path, or ipfs:// through the home's blockstore)."""
    from openlora.node.commands.payouts import read_published
    from openlora.node.ipfs.errors import IpfsError

    def read(uri: str) -> str:
        try:
            return read_published(uri, cfg)
        except IpfsError as e:
            raise ValueError(str(e)) from None
        except UnicodeDecodeError:
            raise ValueError(f"{uri}: not UTF-8") from None
    return read


def indexes(obj: Any, cfg: Any, base: str | None, blocks: str | None, cache: bool) -> Any:
    """index_for(datanet, version CID): span indexes rebuilt from the version's content in the blockstore (the
    home's, or --blocks) with the base tokenizer (--base, else the home's model); with `cache`, the home's
    persisted indexes are used when present."""
    from openlora.content.blockstore import Blockstore
    from openlora.node.attribution_index import IndexBuildError, IndexStore, RowTokenizer
    if base is not None:
        base_dir = Path(base)
    elif cfg is not None:
        from openlora.node.runner import resolve_model_dir
        base_dir = resolve_model_dir(cfg)
    else:
        raise AttributionCommandError("give --base DIR: the adapter's base model directory (its tokenizer)")
    try:
        tok = RowTokenizer(base_dir)
    except Exception as e:  # noqa: BLE001 - not a model directory, no tokenizer: one line
        raise AttributionCommandError(f"cannot load the base tokenizer from {base_dir}: {type(e).__name__}: "
                                      f"{str(e)[:200]}") from None
    store_dir = Path(blocks) if blocks else (obj.home / "ipfs" if cfg is not None else None)
    if store_dir is None or not store_dir.is_dir():
        raise AttributionCommandError(f"no blockstore at {store_dir}: give --blocks DIR or pull the version "
                                      f"(`openlora-node datanet pull`)")
    get = Blockstore(store_dir).get
    root = obj.home / "attribution" / "indexes" if cache and cfg is not None else Path(
        tempfile.mkdtemp(prefix="openlora-verify-"))
    store = IndexStore(root, tok, tok.identity)

    def index_for(datanet_id: int, version_cid: str) -> Any:
        try:
            return store.get(version_cid, get)
        except IndexBuildError as e:
            raise AttributionCommandError(f"datanet {datanet_id} version {version_cid}: {e}; pull it with "
                                          f"`openlora-node datanet pull {datanet_id}`") from None
    index_for.tokenizer = tok.identity  # type: ignore[attr-defined]
    return index_for


def load_receipts(obj: Any, cfg: Any, ref: str) -> list[Any]:
    """The receipt(s) RECEIPT names: an ipfs:// URI, a file, or a request id in the home's database."""
    from openlora.attribution.audit import AuditError, parse_published
    from openlora.attribution.receipts import ReceiptError, receipt_from_json
    from openlora.safejson import UnsafeJSONError, loads as safe_loads, read_regular_file
    if len(ref) > 4096 or not ref.isprintable():
        raise AttributionCommandError("RECEIPT must be a request id, a file or an ipfs:// URI")
    if ref.startswith("ipfs://") or ref.startswith("file://"):
        try:
            text: Any = reader(cfg)(ref)
        except (OSError, ValueError) as e:
            raise AttributionCommandError(f"{ref}: {str(e)[:300]}") from None
        where = ref
    elif Path(ref).exists():
        try:
            text = read_regular_file(ref, MAX_RECEIPT_FILE)
        except (OSError, ValueError) as e:
            raise AttributionCommandError(f"{ref}: {e}") from None
        where = ref
    else:
        if cfg is None:
            raise AttributionCommandError(f"{ref!r} is not a file and there is no node home to look it up in")
        from openlora.node.storage import Store
        store = Store(cfg.database_url)
        try:
            d = store.get_receipt(ref)
        finally:
            store.close()
        if d is None:
            raise AttributionCommandError(f"no receipt {ref!r} in {cfg.database_url.split('///')[-1]} (and no such "
                                          f"file)")
        try:
            return [receipt_from_json(d)]
        except ReceiptError as e:
            raise AttributionCommandError(str(e)) from None
    try:
        doc = safe_loads(text, max_bytes=MAX_RECEIPT_FILE, max_depth=16)
    except UnsafeJSONError as e:
        raise AttributionCommandError(f"{where}: {e}") from None
    if isinstance(doc, dict) and "receipts" in doc:
        try:
            return parse_published(text, where)[1]
        except AuditError as e:
            raise AttributionCommandError(str(e)) from None
    try:
        return [receipt_from_json(doc)]
    except ReceiptError as e:
        raise AttributionCommandError(f"{where}: {e}") from None


def _one_line(fn: Any) -> Any:
    """Attribution / chain errors raised below the command become one line (NodeError), never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from openlora.attribution.errors import AttributionError
        try:
            return fn(*args, **kwargs)
        except AttributionError as e:
            raise AttributionCommandError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return wrapper


chain_options = [click.option("--rpc-url", default=None, help="Chain RPC URL (default: the home's chain.rpc_url)."),
                 click.option("--deployment", default=None, metavar="FILE",
                              help="Deployment file with the contracts' addresses (default: the home's).")]


def with_chain_options(fn: Any) -> Any:
    for opt in reversed(chain_options):
        fn = opt(fn)
    return fn


@click.group("attribution")
def command() -> None:
    """Check Proof-of-Attribution receipts against public data."""


@command.command("verify")
@click.argument("receipt")
@with_chain_options
@click.option("--base", default=None, metavar="DIR", help="Base model directory (its tokenizer; default: the "
                                                           "home's model).")
@click.option("--blocks", default=None, metavar="DIR", help="Blockstore holding the Datanet version (default: the "
                                                             "home's).")
@click.option("--cache", is_flag=True, help="Use the home's persisted span indexes instead of rebuilding them.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_one_line
def verify(obj: Any, receipt: str, rpc_url: str | None, deployment: str | None, base: str | None,
           blocks: str | None, cache: bool, as_json: bool) -> None:
    """Rebuild the index, recompute the spans and the vector of RECEIPT (a request id, a file or an ipfs:// URI),
    and print "match" or what differs."""
    from openlora.attribution.attribute import verify as verify_receipt
    cfg, w3, dep = chain(obj, rpc_url, deployment)
    receipts = load_receipts(obj, cfg, receipt)
    index_for = None
    results = {}
    for r in receipts:
        if r.evidence is not None and r.evidence.datanets and index_for is None:
            index_for = indexes(obj, cfg, base, blocks, cache)
        results[r.request_id] = verify_receipt(r, w3, dep, index_for or (lambda d, v: None))
    bad = {k: v for k, v in results.items() if v}
    if as_json:
        click.echo(json.dumps({"ok": not bad, "receipts": results}, indent=2))
    else:
        for rid, diffs in results.items():
            if not diffs:
                click.echo(f"{rid}: match" if len(results) > 1 else "match")
            else:
                click.echo(f"{rid}: differs")
                for d in diffs:
                    click.echo(f"  - {d}")
    if bad:
        raise SystemExit(1)

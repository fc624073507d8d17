"""Shared pieces of the `openlora-node datanet` commands (node/commands/datanet.py): the command context (home,
chain, registry, blockstore), limits from config, output, progress bars, token amounts with the token's own
symbol, and the fetcher that brings missing Datanet blocks from peers or gateways (every block verified).

What it does not do: define commands (datanet.py does).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from openlora.node.errors import NodeError

class DatanetCommandError(NodeError):
    """A Datanet command cannot go on; one line says why."""


def _one_line(fn: Callable) -> Callable:
    """Datanet, chain and content errors become one line (NodeError), never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from openlora.attribution.errors import AttributionError
        from openlora.datanets.errors import DatanetError
        try:
            return fn(*args, **kwargs)
        except (DatanetError, AttributionError) as e:
            raise DatanetCommandError(str(e)) from None
    return wrapper


class _Ctx:
    def __init__(self, obj: Any):
        from openlora.content.blockstore import Blockstore
        from openlora.datanets.registry import Registry
        from openlora.node.commands.payouts import PayoutsError, chain_context
        try:
            self.cfg, self.w3, self.dep = chain_context(obj)
        except PayoutsError as e:
            raise DatanetCommandError(str(e)) from None
        self.reg = Registry(self.w3, self.dep)
        self.blocks = Blockstore(self.cfg.home / "ipfs")
        self.limits = _limits(self.cfg)

    def dedup(self) -> Any:
        from openlora.datanets.dedup import DedupParams
        return DedupParams(threshold_bps=self.cfg.datanets.near_duplicate_threshold_bps)

    def signer(self, key_file: Path | None, password_file: Path | None) -> Any:
        from openlora.node.commands.claim import _signer
        return _signer(self.cfg, key_file, password_file)

    def reviews_path(self) -> Path:
        return self.cfg.home / "datanets" / "reviews.json"

    def reviews(self) -> dict[str, Any]:
        from openlora.safejson import UnsafeJSONError, load_file
        path = self.reviews_path()
        if not path.exists():
            return {}
        try:
            return load_file(path, max_bytes=64 << 20)
        except (OSError, UnsafeJSONError) as e:
            raise DatanetCommandError(f"cannot read {path}: {e}") from None

    def review_key(self, datanet_id: int, contribution_id: int) -> str:
        return f"{self.w3.eth.chain_id}:{self.reg.c.address}:{datanet_id}:{contribution_id}"


def _limits(cfg: Any, max_bytes: int | None = None, max_rows: int | None = None) -> Any:
    """Contribution limits: the options given, else config.toml's [datanets] (else its defaults)."""
    from openlora.datanets.contribution import Limits
    d = cfg.datanets if cfg is not None else None
    if d is None:
        from openlora.node.config import DatanetsSection
        d = DatanetsSection()
    return Limits(max_bytes=max_bytes or int(d.max_contribution_bytes), max_rows=max_rows or d.max_rows,
                  max_row_bytes=int(d.max_row_bytes))


def _home_config(obj: Any) -> Any:
    """The home's config when it has one (a ConfigError if it is invalid), else None."""
    from openlora.node.config import CONFIG_FILENAME, load_config
    return load_config(obj.home) if (obj.home / CONFIG_FILENAME).is_file() else None


def _emit(as_json: bool, data: Any, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def _tokens(n: int, tokenizer: str = "words-v1") -> str:
    return f"{n:,} tokens ({tokenizer})"


BAR_BYTES = 1 << 20     # work above this many bytes or rows shows a progress bar (on stderr, so --json stays clean)
BAR_ROWS = 1_000


class _Bar:
    """A click progress bar on stderr fed by `progress(done, total)` callbacks; shown only when `show` or when the
    total reaches BAR_ROWS."""

    def __init__(self, label: str, show: bool = False):
        self.label, self.show = label, show
        self.bar: Any = None
        self.pos = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not (self.show or total >= BAR_ROWS):
                return
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.pos)
        self.pos = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Money:
    """Token amounts as the token contract states them: symbol and decimals read from OpenLoRAToken (never
    hard-coded)."""

    def __init__(self, w3: Any, dep: Any):
        token = dep.contract(w3, "OpenLoRAToken")
        try:
            self.symbol = str(token.functions.symbol().call())
            self.decimals = int(token.functions.decimals().call())
        except Exception as e:  # noqa: BLE001 - any call failure: one line
            raise DatanetCommandError(f"cannot read the token's symbol and decimals at {token.address}: "
                                      f"{type(e).__name__}: {e}") from None

    def __call__(self, amount: int) -> str:
        whole, frac = divmod(int(amount), 10 ** self.decimals)
        digits = f"{frac:0{self.decimals}d}".rstrip("0") if self.decimals else ""
        return f"{whole:,}{'.' + digits if digits else ''} {self.symbol}"

    def json(self, amount: int) -> dict[str, Any]:
        return {"amount": str(int(amount)), "decimals": self.decimals, "symbol": self.symbol,
                "display": self(amount)}


class _Fetcher:
    """`fetch(roots, what)` for datanets.pull: what this home lacks of `roots`, from the --peers and (with [p2p]
    enabled) the config's bootstrap peers over the libp2p block exchange (a short-lived host, started on first
    need), then from the config's Kubo RPC / gateways and --gateways one root at a time; every block is checked
    against its CID before it is stored. `subject` names what is pulled in the errors."""

    def __init__(self, obj: Any, ctx: _Ctx, subject: str, peers: tuple[str, ...] = (),
                 gateways: tuple[str, ...] = (), timeout: float = 30.0, max_bytes: int = 16 << 30):
        from openlora.node.ipfs.fetchers import GatewayFetcher, fetchers_from_config
        self.obj, self.ctx, self.subject, self.timeout, self.max_bytes = obj, ctx, subject, timeout, max_bytes
        self.others = fetchers_from_config(ctx.cfg) + [GatewayFetcher(g) for g in gateways]
        self.bootstrap = tuple(peers) + (tuple(ctx.cfg.p2p.bootstrap) if ctx.cfg.p2p.enabled else ())
        self.service: Any = None
        self.no_peers: NodeError | None = None     # the host could not connect: not retried for the next roots
        self.sources: list[str] = []

    def __call__(self, roots: list[str], what: str) -> int:
        from openlora.content.cid import as_cid
        from openlora.content.dag import missing_blocks
        from openlora.node.ipfs.errors import IpfsError
        from openlora.node.ipfs.fetchers import fetch_from_any
        ctx = self.ctx
        want = [r for r in roots if missing_blocks(r, ctx.blocks)]
        if not want:
            return 0
        if not self.bootstrap and not self.others:
            raise DatanetCommandError(f"no source to pull {self.subject} from ({what} not held here): pass --peer "
                                      f"MULTIADDR or --gateway URL, or set [p2p] bootstrap / [ipfs] gateways in "
                                      f"config.toml")
        errors = []
        if self.bootstrap:
            if self.no_peers is not None:
                raise self.no_peers
            if self.service is None:
                from openlora.node.commands.adapters import _pull_host
                from openlora.node.ipfs.adapters import AdapterStore
                try:
                    self.service = _pull_host(self.obj, AdapterStore(ctx.cfg.home / "ipfs"), self.bootstrap,
                                              self.timeout)
                except NodeError as e:
                    self.no_peers = e
                    raise
            keys = set(want)
            got: set[str] = set()
            with _Bar(f"fetching {what}") as bar:
                def on_block(cid: Any, n: int) -> None:
                    if str(cid) in keys and str(cid) not in got:
                        got.add(str(cid))
                        bar(len(got), len(keys))
                try:
                    n = self.service.fetch_many(want, max_bytes=self.max_bytes, on_block=on_block)
                    self.sources.append("p2p")
                    return n
                except IpfsError as e:
                    errors.append(f"peers: {e}")
            want = [r for r in want if missing_blocks(r, ctx.blocks)]
        if not self.others:
            raise DatanetCommandError(f"could not fetch {what} of {self.subject}: " + "; ".join(errors))
        n = 0
        for r in want:
            try:
                name, k = fetch_from_any(as_cid(r), self.others, ctx.blocks)
            except IpfsError as e:
                raise DatanetCommandError(f"could not fetch {r} ({what}) of {self.subject}: "
                                          f"{'; '.join(errors + [str(e)])}") from None
            self.sources.append(name)
            n += k
        return n

    def __enter__(self) -> "_Fetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

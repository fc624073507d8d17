"""`openlora-node datanet create | contribute | pending | review | publish | show | list | pull | verify`.

What it does: the contributor -> curator -> version loop of docs/datanets.md from the command line. Files are
validated and imported into the home's blockstore (<home>/ipfs) before anything is sent; the chain calls are signed
locally with the node's keystore or --key-file (a JSON keystore or a hex private key, as for `claim`). Review
reasons are kept in <home>/datanets/reviews.json (the chain records the decision, not the reason). Every error is
one line (a non-curator reviewing, an unknown Datanet, a wrong network, an account without gas, a refused file);
`--json` gives machine-readable output on every command. Weights are token counts under the named tokenizer.
`publish` and `pull` record the version as a blockstore root of kind "datanet-version", `contribute` the
contribution as one of kind "datanet-contribution", so a node started on this home provides them on the DHT (its
block server serves every block in the store). `pull` fetches a version from peers (libp2p block exchange,
datanets.pull's three waves) or gateways, every block verified against its CID, then verifies it; `show
--contribution` and `pending` fetch the contributions they read the same way when this home lacks them (a curator
on another machine reads a pending contribution from its contributor's node). Limits and the near-duplicate
threshold come from config.toml's [datanets]. Progress bars (stderr) for files over 1 MiB and for 1,000 rows or more.
What it does not do: keep review reasons on chain (<home>/datanets/reviews.json).
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

key_file_option = click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                               help="Key that signs (JSON keystore or hex private key). Default: the node's keystore.")
password_file_option = click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                                    help="Keystore password file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, "
                                         "or a prompt).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


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


@click.group("datanet")
def command() -> None:
    """Contribute data to Datanets, review contributions, publish and verify content-addressed versions."""


@command.command("create")
@click.option("--name", required=True, help="Datanet name.")
@click.option("--description", default="", help="What the Datanet is for.")
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True, help="Default license (SPDX id).")
@key_file_option
@password_file_option
@json_option
@click.pass_obj
@_one_line
def create(obj: Any, name: str, description: str, license_: str, key_file: Path | None,
           password_file: Path | None, as_json: bool) -> None:
    """Create a Datanet curated by the signer (its metadata is stored as content; the chain holds its CID)."""
    from openlora.content.importer import add_bytes
    from openlora.datanets.contribution import canonical_json
    ctx = _Ctx(obj)
    account = ctx.signer(key_file, password_file)
    meta = canonical_json({"name": name, "description": description, "license": license_})
    meta_cid = str(add_bytes(meta, ctx.blocks.put_trusted).cid)
    sent = ctx.reg.create(account, meta_cid)
    _emit(as_json, {"datanet_id": sent.value, "curator": account.address, "metadata_cid": meta_cid, "tx": sent.tx,
                    "gas_used": sent.gas_used},
          [f"created Datanet {sent.value} ({name}) curated by {account.address}", f"metadata: {meta_cid}",
           f"tx: {sent.tx} (gas {sent.gas_used:,})"])


@command.command("contribute")
@click.argument("datanet_id", type=int)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True, help="License of the data (SPDX).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "markdown", "text"]), default=None,
              help="File format (default: from the extension: .jsonl, .md, else text).")
@click.option("--max-bytes", type=int, default=None,
              help="Largest file accepted (default: [datanets] max_contribution_bytes, 64 MiB).")
@click.option("--max-rows", type=int, default=None,
              help="Most rows accepted (default: [datanets] max_rows, 1,000,000).")
@key_file_option
@password_file_option
@json_option
@click.pass_obj
@_one_line
def contribute(obj: Any, datanet_id: int, file: Path, license_: str, fmt: str | None, max_bytes: int | None,
               max_rows: int | None, key_file: Path | None, password_file: Path | None, as_json: bool) -> None:
    """Validate FILE, import it (rows and all) into the blockstore and submit its CID to Datanet DATANET_ID."""
    from openlora.datanets import contribution as contrib
    from openlora.datanets.tokenize import count_tokens
    limits = _limits(_home_config(obj), max_bytes, max_rows)
    try:
        with open(file, "rb") as f:
            data = f.read(limits.max_bytes + 1)   # one byte more than allowed is enough to refuse it
    except OSError as e:
        raise DatanetCommandError(f"cannot read {file}: {e.strerror}") from None
    big = len(data) > BAR_BYTES
    with _Bar(f"checking {file.name}", big) as bar:   # refusals happen here, before any chain call
        prepared = contrib.prepare(data, file.name, limits, fmt, progress=bar)
    ctx = _Ctx(obj)
    ctx.reg.datanet(datanet_id)
    account = ctx.signer(key_file, password_file)
    with _Bar(f"importing {len(prepared.rows):,} rows", big) as bar:
        cid = contrib.store(prepared, ctx.blocks, license_, progress=bar)
    sent = ctx.reg.contribute(account, datanet_id, cid, len(prepared.data))
    _hold_contribution(ctx, datanet_id, sent.value, cid)
    tokens = sum(count_tokens("words-v1", r.text) for r in prepared.rows)
    _emit(as_json, {"datanet_id": datanet_id, "contribution_id": sent.value, "cid": cid, "data_cid": prepared.cid,
                    "format": prepared.format, "rows": len(prepared.rows), "bytes": len(prepared.data),
                    "tokens": tokens, "tokenizer": "words-v1", "tx": sent.tx, "gas_used": sent.gas_used},
          [f"contribution {sent.value} to Datanet {datanet_id}: {cid}",
           f"{len(prepared.rows):,} rows, {len(prepared.data):,} bytes, {_tokens(tokens)} ({prepared.format})",
           f"pending until the curator reviews it; tx {sent.tx} (gas {sent.gas_used:,})"])


source_options = [
    click.option("--peer", "peers", multiple=True,
                 help="Peer multiaddr (/ip4/.../tcp/.../p2p/ID) to fetch contributions not held here from, over "
                      "libp2p (repeatable); with [p2p] enabled in config.toml, its bootstrap peers are used too."),
    click.option("--gateway", "gateways", multiple=True, help="Trustless gateway URL (repeatable), after the peers."),
    click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for peers to connect."),
]


def _sources(fn: Callable) -> Callable:
    for option in reversed(source_options):
        fn = option(fn)
    return fn


def _hold_contribution(ctx: _Ctx, datanet_id: int, contribution_id: int, cid: str) -> None:
    """Record a contribution held in this home's blockstore (a root of kind "datanet-contribution"): a node started
    on this home provides it on the DHT and serves its record, file and rows, so a curator elsewhere can read it."""
    if not ctx.blocks.has_root(cid):
        ctx.blocks.add_root(cid, {"kind": "datanet-contribution", "datanet_id": datanet_id,
                                  "contribution_id": contribution_id, "chain_id": int(ctx.w3.eth.chain_id),
                                  "registry": ctx.reg.c.address})


def _fetch_contribution(ctx: _Ctx, fetcher: "_Fetcher", datanet_id: int, c: Any) -> Any:
    """Make contribution `c`'s record, file and rows present in this home (fetched over `fetcher` when they are not:
    every block checked against its CID), record it as held, and return its Loaded."""
    from openlora.datanets.pull import pull_contribution
    fetcher.subject = f"contribution {c.id} of Datanet {datanet_id}"
    pulled = pull_contribution(c.cid, fetcher, ctx.blocks, ctx.limits)
    _hold_contribution(ctx, datanet_id, c.id, c.cid)
    return pulled.loaded


def _assessment(ctx: _Ctx, datanet_id: int, c: Any, why: str | None = None) -> dict[str, Any]:
    from openlora.datanets.errors import DatanetError
    if why is not None:
        return {"readable": False, "why": why}
    try:
        entry = ctx.reg.assess(datanet_id, c.id, ctx.blocks.get, dedup=ctx.dedup(), limits=ctx.limits)
    except DatanetError as e:
        return {"readable": False, "why": str(e)}
    rows = entry["rows"]
    return {"readable": True, "rows": len(rows), "tokens": sum(r["tokens"] for r in rows),
            "exact_duplicates": sum(r.get("duplicate") == "exact" for r in rows),
            "near_duplicates": sum(r.get("duplicate") == "near" for r in rows), "weight": entry["weight"],
            "license": entry["license"]}


@command.command("pending")
@click.argument("datanet_id", type=int)
@_sources
@json_option
@click.pass_obj
@_one_line
def pending(obj: Any, datanet_id: int, peers: tuple[str, ...], gateways: tuple[str, ...], timeout: float,
            as_json: bool) -> None:
    """List the contributions waiting for review, with their duplicates of accepted rows. Contributions (and the
    accepted ones they are compared with) not held here are fetched from --peer / --gateway / the config's sources,
    every block checked against its CID."""
    from openlora.datanets.errors import DatanetError
    ctx = _Ctx(obj)
    out, lines = [], []
    waiting = ctx.reg.contributions(datanet_id, "pending")
    failed: dict[int, str] = {}
    if waiting:
        with _Fetcher(obj, ctx, f"Datanet {datanet_id}", peers, gateways, timeout) as fetcher:
            for c in ctx.reg.contributions(datanet_id, "accepted") + waiting:
                try:
                    _fetch_contribution(ctx, fetcher, datanet_id, c)
                except (DatanetError, NodeError) as e:
                    failed[c.id] = str(e)
    accepted_failed = [f"accepted contribution #{i}: {failed[i]}" for i in sorted(failed)
                       if i not in {c.id for c in waiting}]
    for c in waiting:
        why = failed.get(c.id) or (accepted_failed[0] if accepted_failed else None)
        a = _assessment(ctx, datanet_id, c, why)
        out.append({"id": c.id, "contributor": c.contributor, "cid": c.cid, "size": c.size, **a})
        if a["readable"]:
            flag = f"  FLAGGED: {a['exact_duplicates']} exact, {a['near_duplicates']} near duplicate row(s)" if (
                a["exact_duplicates"] or a["near_duplicates"]) else ""
            lines.append(f"#{c.id} {c.contributor} {c.cid}: {a['rows']:,} rows, weight if accepted "
                         f"{_tokens(a['weight'])} of {a['tokens']:,}, license {a['license']}{flag}")
        else:
            lines.append(f"#{c.id} {c.contributor} {c.cid}: not readable here ({a['why']})")
    _emit(as_json, {"datanet_id": datanet_id, "pending": out},
          lines or [f"Datanet {datanet_id} has no pending contribution"])


@command.command("review")
@click.argument("datanet_id", type=int)
@click.argument("contribution_id", type=int)
@click.option("--accept/--reject", "accept", default=None, help="The decision.")
@click.option("--reason", required=True, help="Why (kept in <home>/datanets/reviews.json).")
@key_file_option
@password_file_option
@json_option
@click.pass_obj
@_one_line
def review(obj: Any, datanet_id: int, contribution_id: int, accept: bool | None, reason: str,
           key_file: Path | None, password_file: Path | None, as_json: bool) -> None:
    """Accept or reject a pending contribution (curator only)."""
    from openlora.fsutil import atomic_write
    if accept is None:
        raise DatanetCommandError("say --accept or --reject")
    ctx = _Ctx(obj)
    account = ctx.signer(key_file, password_file)
    sent = ctx.reg.review(account, datanet_id, contribution_id, accept)
    decision = "accepted" if accept else "rejected"
    reviews = ctx.reviews()
    reviews[ctx.review_key(datanet_id, contribution_id)] = {"decision": decision, "reason": reason,
                                                             "by": account.address, "tx": sent.tx,
                                                             "at": int(time.time())}
    atomic_write(ctx.reviews_path(), json.dumps(reviews, indent=1, sort_keys=True) + "\n")
    _emit(as_json, {"datanet_id": datanet_id, "contribution_id": contribution_id, "decision": decision,
                    "reason": reason, "tx": sent.tx, "gas_used": sent.gas_used},
          [f"{decision} contribution {contribution_id} of Datanet {datanet_id}: {reason}",
           f"tx {sent.tx} (gas {sent.gas_used:,})"])


@command.command("publish")
@click.argument("datanet_id", type=int)
@key_file_option
@password_file_option
@json_option
@click.pass_obj
@_one_line
def publish(obj: Any, datanet_id: int, key_file: Path | None, password_file: Path | None, as_json: bool) -> None:
    """Publish the next version: a manifest of the accepted contributions, weights from content (curator only)."""
    ctx = _Ctx(obj)
    account = ctx.signer(key_file, password_file)
    sent, cid, m = ctx.reg.publish(account, datanet_id, ctx.blocks, dedup=ctx.dedup(), limits=ctx.limits)
    _hold(ctx, datanet_id, sent.value, cid)
    per = [{"id": c["id"], "contributor": c["contributor"], "weight": c["weight"], "rows": len(c["rows"]),
            "duplicates": sum("duplicate" in r for r in c["rows"])} for c in m["contributions"]]
    _emit(as_json, {"datanet_id": datanet_id, "version": sent.value, "manifest_cid": cid,
                    "total_weight": m["total_weight"], "tokenizer": m["tokenizer"], "contributions": per,
                    "tx": sent.tx, "gas_used": sent.gas_used},
          [f"published version {sent.value} of Datanet {datanet_id}: {cid}",
           f"total weight {_tokens(m['total_weight'], m['tokenizer'])}"]
          + [f"  #{p['id']} {p['contributor']}: weight {p['weight']:,} ({p['rows']:,} rows, "
             f"{p['duplicates']} duplicate)" for p in per]
          + [f"tx {sent.tx} (gas {sent.gas_used:,})"])


@command.command("show")
@click.argument("datanet_id", type=int)
@click.option("--contribution", "contribution_id", type=int, default=None, help="Show one contribution's rows.")
@click.option("--rows", "max_rows", type=int, default=20, show_default=True, help="Rows shown with --contribution.")
@_sources
@click.option("--earnings", is_flag=True,
              help="Also each contributor's share of the Datanet's attribution (latest version's weights) and what "
                   "settled batches have credited them, in the token's units (reads every BatchSettled event).")
@json_option
@click.pass_obj
@_one_line
def show(obj: Any, datanet_id: int, contribution_id: int | None, max_rows: int, peers: tuple[str, ...],
         gateways: tuple[str, ...], timeout: float, earnings: bool, as_json: bool) -> None:
    """A Datanet: curator, contributions and versions; or one contribution's rows (--contribution N), fetched from
    --peer / --gateway / the config's sources when not held here (every block checked against its CID)."""
    ctx = _Ctx(obj)
    info = ctx.reg.datanet(datanet_id)
    reviews = ctx.reviews()
    if contribution_id is not None:
        c = ctx.reg.contribution(datanet_id, contribution_id)
        with _Fetcher(obj, ctx, f"contribution {c.id} of Datanet {datanet_id}", peers, gateways, timeout) as f:
            loaded = _fetch_contribution(ctx, f, datanet_id, c)
        rows = [{"cid": r.cid, "text": r.text} for r in loaded.prepared.rows]
        note = reviews.get(ctx.review_key(datanet_id, c.id), {})
        _emit(as_json, {"id": c.id, "contributor": c.contributor, "cid": c.cid, "status": c.status,
                        "license": loaded.license, "format": loaded.prepared.format, "rows": rows,
                        "reason": note.get("reason")},
              [f"contribution {c.id} of Datanet {datanet_id} by {c.contributor}: {c.status}"
               + (f" ({note['reason']})" if note else ""),
               f"{c.cid} ({loaded.prepared.format}, {loaded.license}, {len(rows):,} rows)"]
              + [f"  [{i}] {r['text'][:100]!r}" for i, r in enumerate(rows[:max_rows])]
              + ([f"  ... {len(rows) - max_rows:,} more"] if len(rows) > max_rows else []))
        return
    contribs = ctx.reg.contributions(datanet_id)
    versions = [ctx.reg.version(datanet_id, v) for v in range(1, info.versions + 1)]
    data = {"datanet_id": info.id, "curator": info.curator, "metadata_cid": info.metadata_cid,
            "contributions": [{**c.__dict__, "reason": reviews.get(ctx.review_key(datanet_id, c.id), {})
                              .get("reason")} for c in contribs],
            "versions": [{"version": v.version, "manifest_cid": v.manifest_cid, "total_weight": v.total_weight,
                          "weights": {str(k): w for k, w in v.weights.items()}} for v in versions]}
    lines = [f"Datanet {info.id}: curator {info.curator}, metadata {info.metadata_cid}",
             f"{len(contribs)} contribution(s), {len(versions)} version(s)"]
    lines += [f"  #{c['id']} {c['contributor']} {c['status']} {c['cid']}"
              + (f" ({c['reason']})" if c["reason"] else "") for c in data["contributions"]]
    lines += [f"  version {v.version}: {v.manifest_cid}, total weight {v.total_weight:,}" for v in versions]
    if earnings:
        data["earnings"], more = _earnings(ctx, datanet_id)
        lines += more
    _emit(as_json, data, lines)


def _earnings(ctx: _Ctx, datanet_id: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Each contributor's share of the Datanet (weights of its latest version, else declared sizes) and what settled
    batches credited them (all sources: credits are per address, not per Datanet), amounts in the token's units."""
    from openlora.attribution.payouts import payouts_of
    from openlora.attribution.pricing import contributor_weights
    money = _Money(ctx.w3, ctx.dep)
    weights = contributor_weights(ctx.w3, ctx.dep, datanet_id)
    total = sum(weights.values())
    out, lines = [], [f"contributors' shares and payouts ({money.symbol}, {money.decimals} decimals, read from the "
                      f"token contract):"]
    for who, w in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
        report = payouts_of(ctx.w3, ctx.dep, who)
        bps = w * 10_000 // total if total else 0
        out.append({"contributor": who, "weight": w, "share_bps": bps, "earned": money.json(report.earned),
                    "claimable": money.json(report.claimable)})
        lines.append(f"  {who}: weight {w:,} ({bps / 100:.2f}%), earned {money(report.earned)}, claimable "
                     f"{money(report.claimable)}")
    return out, lines


@command.command("list")
@json_option
@click.pass_obj
@_one_line
def list_(obj: Any, as_json: bool) -> None:
    """Every Datanet on this chain's DatanetRegistry."""
    ctx = _Ctx(obj)
    ds = ctx.reg.datanets()
    _emit(as_json, {"datanets": [d.__dict__ for d in ds]},
          [f"{d.id}: curator {d.curator}, {d.contribution_count} contribution(s), {d.versions} version(s), "
           f"metadata {d.metadata_cid}" for d in ds] or ["no Datanet on this chain yet"])


@command.command("verify")
@click.argument("datanet_id", type=int)
@click.option("--version", "version", type=int, default=None, help="Version to verify (default: the latest).")
@json_option
@click.pass_obj
@_one_line
def verify(obj: Any, datanet_id: int, version: int | None, as_json: bool) -> None:
    """Refetch every row of a version, check every CID, recompute every weight, compare with the chain."""
    ctx = _Ctx(obj)
    t0 = time.perf_counter()
    r = _verify(ctx, datanet_id, version)
    r["seconds"] = round(time.perf_counter() - t0, 3)
    _emit(as_json, {"ok": True, **{k: v for k, v in r.items() if k != "seconds"}, "ms": int(r["seconds"] * 1000)},
          [f"version {r['version']} of Datanet {datanet_id} verified: {r['manifest_cid']}",
           f"{r['contributions']} contribution(s), {r['rows']:,} rows, total weight "
           f"{_tokens(r['total_weight'], r['tokenizer'])}, every CID and weight recomputed "
           f"({r['seconds']:.2f} s)"])


def _verify(ctx: _Ctx, datanet_id: int, version: int | None) -> dict[str, Any]:
    """Registry.verify over this home's blockstore, with a progress bar over the rows read for 1,000 rows or more."""
    from openlora.datanets import manifest as mf
    v = ctx.reg.version(datanet_id, version)
    try:
        rows = {str(r["cid"]) for c in mf.read(v.manifest_cid, ctx.blocks.get)["contributions"] for r in c["rows"]}
    except (KeyError, TypeError):
        rows = set()   # a malformed manifest: verify says what is wrong with it
    seen: set[str] = set()
    with _Bar(f"verifying {len(rows):,} rows") as bar:
        def get(cid: Any) -> bytes:
            data = ctx.blocks.get(cid)
            key = str(cid)
            if key in rows and key not in seen:
                seen.add(key)
                if len(seen) % 256 == 0 or len(seen) == len(rows):
                    bar(len(seen), len(rows))
            return data
        return ctx.reg.verify(datanet_id, v.version, get, ctx.limits)


def _hold(ctx: _Ctx, datanet_id: int, version: int, manifest_cid: str) -> None:
    """Record a version held in this home's blockstore (a root of kind "datanet-version"): a node started on this
    home provides it on the DHT, and its block server serves every block of it."""
    ctx.blocks.add_root(manifest_cid, {"kind": "datanet-version", "datanet_id": datanet_id, "version": version,
                                       "chain_id": int(ctx.w3.eth.chain_id), "registry": ctx.reg.c.address})


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


@command.command("pull")
@click.argument("datanet_id", type=int)
@click.option("--version", "version", type=int, default=None, help="Version to pull (default: the latest).")
@click.option("--peer", "peers", multiple=True,
              help="Peer multiaddr (/ip4/.../tcp/.../p2p/ID) to fetch from over libp2p (repeatable); with [p2p] "
                   "enabled in config.toml, its bootstrap peers are used too.")
@click.option("--gateway", "gateways", multiple=True, help="Trustless gateway URL (repeatable), after the peers.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for peers to connect.")
@click.option("--max-bytes", type=int, default=16 << 30, show_default=True,
              help="Most bytes of blocks accepted from peers in one wave (manifest, records, files and rows).")
@json_option
@click.pass_obj
@_one_line
def pull(obj: Any, datanet_id: int, version: int | None, peers: tuple[str, ...], gateways: tuple[str, ...],
         timeout: float, max_bytes: int, as_json: bool) -> None:
    """Fetch a version (manifest, contribution records, files, rows) from peers or gateways, every block verified
    against its CID, then verify it (weights recomputed, compared with the chain)."""
    from openlora.datanets.pull import pull as pull_version
    ctx = _Ctx(obj)
    v = ctx.reg.version(datanet_id, version)
    t0 = time.perf_counter()
    with _Fetcher(obj, ctx, f"version {v.version} of Datanet {datanet_id}", peers, gateways, timeout,
                  max_bytes) as fetcher:
        pulled = pull_version(v.manifest_cid, fetcher, ctx.blocks)
    sources = fetcher.sources
    fetch_s = time.perf_counter() - t0
    _hold(ctx, datanet_id, v.version, v.manifest_cid)
    r = _verify(ctx, datanet_id, v.version)
    _emit(as_json, {"ok": True, **r, "blocks_fetched": pulled.blocks_fetched, "sources": sorted(set(sources)),
                    "ms": int((time.perf_counter() - t0) * 1000)},
          [f"pulled version {v.version} of Datanet {datanet_id}: {v.manifest_cid}",
           f"{pulled.blocks_fetched:,} block(s) fetched ({', '.join(sorted(set(sources))) or 'all held already'}) in "
           f"{fetch_s:.2f} s, every block checked against its CID",
           f"verified: {r['contributions']} contribution(s), {r['rows']:,} rows, total weight "
           f"{_tokens(r['total_weight'], r['tokenizer'])}, every weight recomputed and compared with the chain"])

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

import json
import time
from pathlib import Path
from typing import Any, Callable

import click

from openlora.node.commands._datanet_support import (BAR_BYTES, DatanetCommandError, _Bar,  # noqa: F401
                                                      _Ctx, _emit, _Fetcher, _home_config, _limits, _Money,
                                                      _one_line, _tokens)  # (DatanetCommandError: re-exported)
from openlora.node.errors import NodeError

key_file_option = click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                               help="Key that signs (JSON keystore or hex private key). Default: the node's keystore.")
password_file_option = click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                                    help="Keystore password file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, "
                                         "or a prompt).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


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

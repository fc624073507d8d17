"""Pulling a Datanet version: make every block a version manifest names present in a blockstore, in three waves.

What it does: `pull(manifest_cid, fetch, store)` asks `fetch(roots, what)` for the manifest's DAG, reads it, then
for the DAGs of every contribution record, reads them, then for every contribution file and every row (each
`fetch` call gets a whole wave, so a peer exchange can batch hundreds of rows in a few round trips). `fetch` is the
caller's: the node's libp2p block exchange, a gateway, or anything that writes verified blocks into `store` (every
block is checked against its CID before it is stored, and again by `store.get` when it is read). Returns a
`Pulled` summary. The caller then runs `manifest.verify` (or `Registry.verify`) on what was pulled.
`pull_contribution(cid, fetch, store, limits)` does the same for one contribution (pending or not): its record,
then its file, then every row the file splits into (row CIDs are recomputed from the file, so a contributor's node
must hold and serve exactly the rows its file gives), so a curator on another machine can read and assess it.
What it does not do: talk to the network itself (node/ does), trust the manifest (verify does the recomputing), or
compare with the chain (registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from openlora.datanets import manifest as mf
from openlora.datanets.contribution import Limits, load, read_record
from openlora.datanets.errors import DatanetError, VerificationError

#: fetch(roots, what) -> blocks fetched; raises on failure (its message names what could not be fetched).
Fetch = Callable[[list[str], str], int]


@dataclass(frozen=True)
class Pulled:
    manifest_cid: str
    manifest: dict[str, Any]
    contributions: int
    rows: int
    blocks_fetched: int


def pull(manifest_cid: str, fetch: Fetch, store: Any) -> Pulled:
    """Fetch the manifest, then the contribution records, then every file and row; see the module docstring."""
    fetched = fetch([manifest_cid], "manifest")
    m = mf.read(manifest_cid, store.get)
    try:
        contribs = [(int(c["id"]), str(c["cid"]), [str(r["cid"]) for r in c["rows"]]) for c in m["contributions"]]
    except (KeyError, TypeError, ValueError) as e:
        raise VerificationError(f"manifest {manifest_cid} is malformed: {type(e).__name__}: {e}") from None
    records = list(dict.fromkeys(cid for _, cid, _ in contribs))
    if records:
        fetched += fetch(records, f"{len(records)} contribution record(s)")
    files = []
    for cid_id, cid, _ in contribs:
        try:
            files.append(str(read_record(cid, store.get)["data"]))
        except DatanetError as e:
            raise VerificationError(f"contribution #{cid_id}: {e}") from None
    rows = [r for _, _, rs in contribs for r in rs]
    rest = list(dict.fromkeys(files + rows))
    if rest:
        fetched += fetch(rest, f"{len(files)} file(s) and {len(rows):,} row(s)")
    return Pulled(manifest_cid, m, len(contribs), len(rows), fetched)


@dataclass(frozen=True)
class PulledContribution:
    cid: str
    rows: int
    blocks_fetched: int
    loaded: Any       # contribution.Loaded: its license and prepared rows, re-derived from the fetched file


def pull_contribution(cid: str, fetch: Fetch, store: Any, limits: Limits = Limits()) -> PulledContribution:
    """Fetch contribution `cid`'s record, then its file, then its rows; see the module docstring."""
    fetched = fetch([cid], "contribution record")
    try:
        data = str(read_record(cid, store.get)["data"])
    except DatanetError as e:
        raise VerificationError(str(e)) from None
    fetched += fetch([data], "contribution file")
    loaded = load(cid, store.get, limits)
    rows = [r.cid for r in loaded.prepared.rows]
    if rows:
        fetched += fetch(list(dict.fromkeys(rows)), f"{len(rows):,} row(s)")
    return PulledContribution(cid, len(rows), fetched, loaded)

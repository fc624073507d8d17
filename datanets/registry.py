"""The DatanetRegistry client: Datanets, contributions, reviews and versions on chain, checked before sending.

What it does: `Registry(w3, dep)` reads Datanets (`datanet`, `datanets`), their contributions and versions, and
sends `create`, `contribute`, `review` and `publish` signed locally (attribution.chain), each refused with one line
before anything is sent when it cannot succeed: no DatanetRegistry at the deployment's address (wrong network), an
unknown Datanet or contribution, a reviewer or publisher who is not the curator, an account without gas.
`assess` tells a curator what accepting a pending contribution would add (rows, tokens, duplicates of accepted
rows); `publish` builds the version manifest from the accepted contributions' content (manifest.build), stores it
and records it on chain; `verify` checks a published version: the manifest against its content (manifest.verify)
and against the chain (manifest CID, contribution ids, contributors, CIDs, weights, total).
What it does not do: fetch blocks from other nodes (the caller's `get` decides where blocks come from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from eth_utils import to_checksum_address

from openlora.attribution.chain import ChainError, send_and_wait
from openlora.datanets import manifest as mf
from openlora.datanets.contribution import Limits
from openlora.datanets.dedup import DedupParams
from openlora.datanets.errors import DatanetError, VerificationError
from openlora.datanets.tokenize import WORDS_V1

STATUS = {0: "none", 1: "pending", 2: "accepted", 3: "rejected"}


@dataclass(frozen=True)
class DatanetInfo:
    id: int
    curator: str
    created_at: int
    contribution_count: int
    metadata_cid: str
    versions: int


@dataclass(frozen=True)
class ContributionInfo:
    id: int
    contributor: str
    cid: str
    size: int
    status: str


@dataclass(frozen=True)
class VersionInfo:
    version: int
    manifest_cid: str
    published_at: int
    total_weight: int
    weights: dict[int, int]  # contribution id -> weight


@dataclass(frozen=True)
class Sent:
    value: int          # the new id / version number
    tx: str
    gas_used: int


class Registry:
    def __init__(self, w3: Any, dep: Any):
        self.w3, self.dep = w3, dep
        self.c = dep.contract(w3, "DatanetRegistry")
        if not w3.eth.get_code(self.c.address):
            raise DatanetError(f"no DatanetRegistry at {self.c.address} on chain {w3.eth.chain_id}: the deployment "
                               f"file is for another network (or the devnet was reset: `openlora-node devnet up`)")

    # ---- reads ------------------------------------------------------------------------------------------------

    def datanet(self, datanet_id: int) -> DatanetInfo:
        if datanet_id < 1 or not self.c.functions.exists(datanet_id).call():
            raise DatanetError(f"Datanet {datanet_id} does not exist on DatanetRegistry {self.c.address} (chain "
                               f"{self.w3.eth.chain_id}, {self.count()} Datanet(s)); `openlora-node datanet list`")
        curator, created, count, _total, meta = self.c.functions.getDatanet(datanet_id).call()
        return DatanetInfo(datanet_id, to_checksum_address(curator), int(created), int(count), meta,
                           int(self.c.functions.versionCount(datanet_id).call()))

    def count(self) -> int:
        return int(self.c.functions.datanetCount().call())

    def datanets(self) -> list[DatanetInfo]:
        return [self.datanet(i) for i in range(1, self.count() + 1)]

    def contribution(self, datanet_id: int, contribution_id: int) -> ContributionInfo:
        info = self.datanet(datanet_id)
        if not 1 <= contribution_id <= info.contribution_count:
            raise DatanetError(f"Datanet {datanet_id} has no contribution {contribution_id} (it has "
                               f"{info.contribution_count})")
        who, size, status, cid = self.c.functions.getContribution(datanet_id, contribution_id).call()
        return ContributionInfo(contribution_id, to_checksum_address(who), cid, int(size), STATUS[int(status)])

    def contributions(self, datanet_id: int, status: str | None = None) -> list[ContributionInfo]:
        n = self.datanet(datanet_id).contribution_count
        out = [self.contribution(datanet_id, i) for i in range(1, n + 1)]
        return [c for c in out if status is None or c.status == status]

    def version(self, datanet_id: int, version: int | None = None) -> VersionInfo:
        n = self.datanet(datanet_id).versions
        if n == 0:
            raise DatanetError(f"Datanet {datanet_id} has no published version yet (`openlora-node datanet publish`)")
        version = n if version is None else version
        if not 1 <= version <= n:
            raise DatanetError(f"Datanet {datanet_id} has no version {version} (versions 1..{n})")
        cid, at, total, ids, weights = self.c.functions.getVersion(datanet_id, version).call()
        return VersionInfo(version, cid, int(at), int(total), {int(i): int(w) for i, w in zip(ids, weights)})

    # ---- writes -----------------------------------------------------------------------------------------------

    def _send(self, account: Any, fn: Any, what: str) -> Any:
        balance = self.w3.eth.get_balance(account.address)
        try:
            need = fn.estimate_gas({"from": account.address}) * self.w3.eth.gas_price
        except Exception as e:  # noqa: BLE001 - a revert in the estimate: one line
            raise DatanetError(f"{what} would revert: {e}") from None
        if balance < need:
            raise DatanetError(f"account {account.address} has {balance} wei, {what} needs about {need} wei of gas "
                               f"on chain {self.w3.eth.chain_id}: fund it first")
        try:
            return send_and_wait(self.w3, fn, account, what)
        except ChainError as e:
            raise DatanetError(str(e)) from None

    def _curator(self, account: Any, datanet_id: int, what: str) -> DatanetInfo:
        info = self.datanet(datanet_id)
        if info.curator != to_checksum_address(account.address):
            raise DatanetError(f"{account.address} is not the curator of Datanet {datanet_id} (the curator is "
                               f"{info.curator}): only the curator can {what}")
        return info

    def create(self, account: Any, metadata_cid: str) -> Sent:
        r = self._send(account, self.c.functions.createDatanet(metadata_cid), "creating a Datanet")
        ev = self.c.events.DatanetCreated().process_receipt(r)
        return Sent(int(ev[0]["args"]["datanetId"]), "0x" + bytes(r.transactionHash).hex(), int(r.gasUsed))

    def contribute(self, account: Any, datanet_id: int, cid: str, size: int) -> Sent:
        self.datanet(datanet_id)
        r = self._send(account, self.c.functions.contribute(datanet_id, cid, size), f"contributing to Datanet "
                                                                                       f"{datanet_id}")
        ev = self.c.events.ContributionSubmitted().process_receipt(r)
        return Sent(int(ev[0]["args"]["contributionId"]), "0x" + bytes(r.transactionHash).hex(), int(r.gasUsed))

    def review(self, account: Any, datanet_id: int, contribution_id: int, accept: bool) -> Sent:
        self._curator(account, datanet_id, "review its contributions")
        c = self.contribution(datanet_id, contribution_id)
        if c.status != "pending":
            raise DatanetError(f"contribution {contribution_id} of Datanet {datanet_id} was already reviewed "
                               f"({c.status})")
        fn = (self.c.functions.accept if accept else self.c.functions.reject)(datanet_id, contribution_id)
        r = self._send(account, fn, f"{'accepting' if accept else 'rejecting'} contribution {contribution_id}")
        return Sent(contribution_id, "0x" + bytes(r.transactionHash).hex(), int(r.gasUsed))

    def accepted(self, datanet_id: int) -> list[mf.Accepted]:
        return [mf.Accepted(c.id, c.contributor, c.cid) for c in self.contributions(datanet_id, "accepted")]

    def build_version(self, datanet_id: int, get: Callable, tokenizer: str = WORDS_V1,
                      dedup: DedupParams = DedupParams(), limits: Limits = Limits()) -> dict[str, Any]:
        info = self.datanet(datanet_id)
        accepted = self.accepted(datanet_id)
        if not accepted:
            raise DatanetError(f"Datanet {datanet_id} has no accepted contribution: nothing to publish")
        return mf.build(datanet_id, info.versions + 1, accepted, get, chain_id=int(self.w3.eth.chain_id),
                        registry=self.c.address, tokenizer=tokenizer, dedup=dedup, limits=limits)

    def publish(self, account: Any, datanet_id: int, blockstore: Any, **params: Any) -> tuple[Sent, str, dict]:
        """Build, store and record the next version; returns (sent, manifest CID, manifest)."""
        self._curator(account, datanet_id, "publish a version")
        m = self.build_version(datanet_id, blockstore.get, **params)
        cid = mf.add(m, blockstore)
        ids = [c["id"] for c in m["contributions"]]
        weights = [c["weight"] for c in m["contributions"]]
        fn = self.c.functions.publishVersion(datanet_id, m["version"], cid, m["total_weight"], ids, weights)
        r = self._send(account, fn, f"publishing version {m['version']} of Datanet {datanet_id}")
        return Sent(m["version"], "0x" + bytes(r.transactionHash).hex(), int(r.gasUsed)), cid, m

    # ---- checks -----------------------------------------------------------------------------------------------

    def assess(self, datanet_id: int, contribution_id: int, get: Callable, tokenizer: str = WORDS_V1,
               dedup: DedupParams = DedupParams(), limits: Limits = Limits()) -> dict[str, Any]:
        """What contribution `contribution_id` adds to the accepted ones: its manifest entry (rows with tokens and
        duplicate flags against every accepted row, weight) as if it were accepted next."""
        c = self.contribution(datanet_id, contribution_id)
        accepted = [a for a in self.accepted(datanet_id) if a.id != contribution_id]
        m = mf.build(datanet_id, 0, accepted + [mf.Accepted(c.id, c.contributor, c.cid)], get, tokenizer=tokenizer,
                     dedup=dedup, limits=limits, keep_order=True)
        return m["contributions"][-1]

    def verify(self, datanet_id: int, version: int | None, get: Callable, limits: Limits = Limits()) -> dict:
        """Check a published version against its content and the chain; returns {version, manifest, ...}."""
        v = self.version(datanet_id, version)
        m = mf.verify(v.manifest_cid, get, limits)
        where = f"version {v.version} of Datanet {datanet_id} ({v.manifest_cid})"
        diffs = []
        if (m["datanet_id"], m["version"]) != (datanet_id, v.version):
            diffs.append(f"the manifest is for Datanet {m['datanet_id']} version {m['version']}")
        if m["chain"] != {"chain_id": int(self.w3.eth.chain_id), "registry": self.c.address}:
            diffs.append(f"the manifest names chain {m['chain']}, not this registry")
        if m["total_weight"] != v.total_weight:
            diffs.append(f"total weight: manifest {m['total_weight']}, chain {v.total_weight}")
        claimed = {c["id"]: c for c in m["contributions"]}
        if set(claimed) != set(v.weights):
            diffs.append(f"contributions: manifest {sorted(claimed)}, chain {sorted(v.weights)}")
        for cid_id in sorted(set(claimed) & set(v.weights)):
            c, onchain = claimed[cid_id], self.contribution(datanet_id, cid_id)
            if c["weight"] != v.weights[cid_id]:
                diffs.append(f"contribution {cid_id} weight: manifest {c['weight']}, chain {v.weights[cid_id]}")
            if (c["contributor"], c["cid"]) != (onchain.contributor, onchain.cid):
                diffs.append(f"contribution {cid_id}: manifest says {c['contributor']} {c['cid']}, chain says "
                             f"{onchain.contributor} {onchain.cid}")
        if diffs:
            raise VerificationError(f"{where} does not match the chain: {'; '.join(diffs)}")
        return {"datanet_id": datanet_id, "version": v.version, "manifest_cid": v.manifest_cid,
                "total_weight": v.total_weight, "tokenizer": m["tokenizer"],
                "contributions": len(m["contributions"]),
                "rows": sum(len(c["rows"]) for c in m["contributions"]),
                "weights": {str(k): w for k, w in sorted(v.weights.items())}}

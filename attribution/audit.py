"""Auditing a settled batch from public data: its published receipts, their attribution, its credits and roots.

What it does: `audit_batch(w3, dep, batch_id, read_uri, index_for)` finds the batch's `BatchSettled` event and its
`settleBatch` calldata, reads the receipts file at its receiptsUri (through the caller's `read_uri`), parses it
strictly (safejson, bounded; every receipt typed, attribution/receipts.py), and checks: the file is that batch's
(header, count, the receipts' Merkle root = the event's, batch id = keccak(node, root)); every receipt is signed by
the batch's node and its attribution re-derives (attribution/attribute.py `verify`: spans rebuilt from the Datanet
version's content); each requester's debit equals its receipts' prices; the credits recomputed from the receipts
(attribution/batch.py `receipt_credits`: exact splits, protocol fee, remainders to the node) equal, to the wei,
the credits in the calldata, whose Merkle root is the one stored on chain. Returns an `AuditReport` (JSON-able).
`find_batch` is the event lookup, shared with payouts.
What it does not do: fetch files itself (node/commands/audit.py gives `read_uri`), or build indexes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from eth_utils import keccak, to_checksum_address

from openlora.attribution.attribute import IndexFor, verify
from openlora.attribution.batch import receipt_credits
from openlora.attribution.errors import AttributionError
from openlora.attribution.merkle import CreditTree, receipts_root
from openlora.attribution.payouts import credits_of_transaction
from openlora.attribution.receipts import ReceiptError, receipt_from_json, receipt_hash
from openlora.safejson import UnsafeJSONError, loads as safe_loads

MAX_PUBLISHED_BYTES = 64 << 20   # a published batch (256 receipts of ~2 KB with evidence is far below)
MAX_PUBLISHED_DEPTH = 16
MAX_RECEIPTS = 1 << 16


class AuditError(AttributionError, ValueError):
    """The batch is not settled on this chain, or its published receipts cannot be read or parsed."""


@dataclass
class AuditReport:
    batch_id: str
    node: str
    tx_hash: str
    block: int
    receipts_uri: str
    receipt_count: int
    total: str
    problems: list[str] = field(default_factory=list)        # batch-level differences
    receipts: dict[str, list[str]] = field(default_factory=dict)   # request id -> what differs (empty: match)

    @property
    def ok(self) -> bool:
        return not self.problems and not any(self.receipts.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def parse_batch_id(text: str) -> bytes:
    raw = text.removeprefix("0x")
    try:
        b = bytes.fromhex(raw)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise AuditError(f"batch id {text[:80]!r} is not 0x + 64 hex digits")
    return b


def find_batch(w3: Any, dep: Any, batch_id: bytes) -> Any:
    """The BatchSettled log of `batch_id` on this deployment; AuditError when it is not settled here."""
    st = dep.contract(w3, "Settlement")
    logs = st.events.BatchSettled().get_logs(from_block=dep.block, argument_filters={"batchId": batch_id})
    if not logs:
        raise AuditError(f"batch 0x{batch_id.hex()} is not settled on chain {dep.chain_id} (Settlement "
                         f"{dep.address('Settlement')})")
    return logs[0]


def parse_published(text: str | bytes, where: str) -> tuple[dict[str, Any], list]:
    """(header, receipts) of a published receipts file, parsed strictly; AuditError saying what is wrong."""
    try:
        doc = safe_loads(text, max_bytes=MAX_PUBLISHED_BYTES, max_depth=MAX_PUBLISHED_DEPTH)
    except UnsafeJSONError as e:
        raise AuditError(f"{where}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("receipts"), list) or doc.get("version") != 1:
        raise AuditError(f"{where}: not a published receipts file (an object with version 1 and a receipts list)")
    if len(doc["receipts"]) > MAX_RECEIPTS:
        raise AuditError(f"{where}: {len(doc['receipts'])} receipts, more than {MAX_RECEIPTS}")
    out = []
    for i, d in enumerate(doc["receipts"]):
        try:
            out.append(receipt_from_json(d))
        except ReceiptError as e:
            raise AuditError(f"{where}: receipt #{i}: {e}") from None
    return {k: v for k, v in doc.items() if k != "receipts"}, out


def audit_batch(w3: Any, dep: Any, batch_id: bytes, read_uri: Callable[[str], str | bytes],
                index_for: IndexFor) -> AuditReport:
    log = find_batch(w3, dep, batch_id)
    a = log["args"]
    node = to_checksum_address(a["node"])
    tx_hash = "0x" + bytes(log["transactionHash"]).hex()
    report = AuditReport("0x" + batch_id.hex(), node, tx_hash, int(log["blockNumber"]), a["receiptsUri"],
                         int(a["receiptCount"]), str(int(a["total"])))
    st = dep.contract(w3, "Settlement")
    tx = w3.eth.get_transaction(log["transactionHash"])
    credits = credits_of_transaction(st, tx["input"])
    if credits is None:
        report.problems.append("the batch was not settled by a direct settleBatch call: its credits cannot be read "
                               "from the calldata")
    elif CreditTree.build(credits).root != bytes(a["creditsRoot"]):
        report.problems.append("the credits in the calldata do not hash to the creditsRoot stored on chain")
    try:
        header, receipts = parse_published(read_uri(a["receiptsUri"]), a["receiptsUri"])
    except (OSError, ValueError) as e:
        if not isinstance(e, AuditError):
            e = AuditError(f"{a['receiptsUri']}: cannot be read here: {e}")
        raise e from None
    root = receipts_root([receipt_hash(r) for r in receipts]) if receipts else b""
    if root != bytes(a["receiptsRoot"]):
        report.problems.append(f"the published receipts' Merkle root is 0x{root.hex()}, the chain says "
                               f"0x{bytes(a['receiptsRoot']).hex()}")
    if keccak(bytes(12) + bytes.fromhex(node[2:]) + bytes(a["receiptsRoot"])) != batch_id:
        report.problems.append("the batch id is not keccak(node, receiptsRoot)")
    if len(receipts) != report.receipt_count:
        report.problems.append(f"the file holds {len(receipts)} receipts, the chain says {report.receipt_count}")
    if header.get("batch_id") not in (None, report.batch_id):
        report.problems.append(f"the file's header names batch {header.get('batch_id')}")
    for r in receipts:
        diffs = [] if r.node == node else [f"the receipt's node is {r.node}, the batch's is {node}"]
        try:
            diffs += verify(r, w3, dep, index_for)
        except Exception as e:  # noqa: BLE001 - one receipt that cannot be re-derived is reported, not fatal
            diffs.append(f"cannot re-derive: {type(e).__name__}: {e}")
        report.receipts[r.request_id] = diffs
    if credits is not None:
        fn, args = st.decode_function_input(tx["input"])
        debits: dict[str, int] = {}
        for d in args["debits"]:      # web3 decodes a struct as a dict (v7) or a tuple
            who, amount = (d["requester"], d["amount"]) if isinstance(d, dict) else (d[0], d[2])
            debits[to_checksum_address(who)] = debits.get(to_checksum_address(who), 0) + int(amount)
        owed: dict[str, int] = {}
        for r in receipts:
            if r.price:
                owed[r.requester] = owed.get(r.requester, 0) + r.price
        if debits != owed:
            report.problems.append(f"debits on chain {_fmt(debits)} differ from the receipts' prices {_fmt(owed)}")
        total = sum(debits.values())
        again = receipt_credits(receipts, total, dep.protocol_fee_bps, dep.protocol_recipient, node)
        if again != credits:
            diff = {k: (credits.get(k, 0), again.get(k, 0)) for k in set(credits) | set(again)
                    if credits.get(k, 0) != again.get(k, 0)}
            shown = "; ".join(f"{k}: chain {c}, recomputed {m}" for k, (c, m) in sorted(diff.items())[:5])
            report.problems.append(f"credits differ for {len(diff)} recipient(s): {shown}")
    return report


def _fmt(m: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(m.items())) + "}"

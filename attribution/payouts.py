"""What an address has been credited by settled batches, and the claims to collect it, read from the chain alone.

What it does: scans `BatchSettled` events, reads each batch's credit words back from the calldata of its
`settleBatch` transaction, rebuilds the credits tree (checking it against the root the contract stored), and
returns a `Payout` per batch that credits the address, with its Merkle proof and whether it was claimed.
`claim_items(payouts)` gives the `claimMany` argument for the unclaimed ones.
What it does not do: send transactions, or read batches settled through another contract (a relayer or a
multisig): their calldata is not a direct `settleBatch` call, and they are reported in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from openlora.attribution.deployment import Deployment
from openlora.attribution.merkle import MAX_CREDIT, CreditTree


@dataclass(frozen=True)
class Payout:
    batch_id: bytes
    node: str
    block: int
    tx_hash: str
    amount: int
    proof: tuple[bytes, ...]
    claimed: bool


@dataclass
class PayoutReport:
    recipient: str
    payouts: list[Payout] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tx hashes of batches that could not be read back

    @property
    def earned(self) -> int:
        return sum(p.amount for p in self.payouts)

    @property
    def claimable(self) -> int:
        return sum(p.amount for p in self.payouts if not p.claimed)


def credits_of_transaction(settlement: Any, tx_input: bytes) -> dict[str, int] | None:
    """The credit map of a direct `settleBatch` call, or None when the input is something else."""
    try:
        fn, args = settlement.decode_function_input(tx_input)
    except ValueError:
        return None
    if fn.fn_name != "settleBatch":
        return None
    out: dict[str, int] = {}
    for word in args["credits"]:
        w = int.from_bytes(word, "big")
        out[to_checksum_address((w >> 96).to_bytes(20, "big"))] = w & MAX_CREDIT
    return out


def payouts_of(w3: Any, dep: Deployment, recipient: str, from_block: int = 0) -> PayoutReport:
    """Every settled batch since `from_block` that credits `recipient` (web3.py sync `Web3`)."""
    recipient = to_checksum_address(recipient)
    st = dep.contract(w3, "Settlement")
    report = PayoutReport(recipient)
    for log in st.events.BatchSettled().get_logs(from_block=from_block):
        tx_hash = log["transactionHash"]
        credits = credits_of_transaction(st, w3.eth.get_transaction(tx_hash)["input"])
        if credits is None:
            report.skipped.append(tx_hash.to_0x_hex())
            continue
        tree = CreditTree.build(credits)
        if tree.root != log["args"]["creditsRoot"]:
            report.skipped.append(tx_hash.to_0x_hex())
            continue
        if recipient not in credits:
            continue
        amount, proof = tree.proof_for(recipient)
        batch_id = log["args"]["batchId"]
        report.payouts.append(Payout(
            batch_id=bytes(batch_id), node=log["args"]["node"], block=log["blockNumber"],
            tx_hash=tx_hash.to_0x_hex(), amount=amount, proof=tuple(proof),
            claimed=st.functions.claimed(batch_id, recipient).call()))
    return report


def claim_items(payouts: list[Payout]) -> list[tuple[bytes, int, list[bytes]]]:
    """The `items` argument of `Settlement.claimMany(recipient, items)` for the unclaimed payouts."""
    return [(p.batch_id, p.amount, list(p.proof)) for p in payouts if not p.claimed]

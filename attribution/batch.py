"""The arguments of `Settlement.settleBatch` and of claims, built from plain values (no web3, no chain access).

What it does: `Batch.build(...)` takes the receipt hashes, the requester debits (each with the voucher signature
that backs it) and the credit map, checks what the contract will check (sums, protocol share, caps are the
requester's business), and gives `settle_args()` for web3 and `claim_args(recipient)` for a recipient.
`receipt_credits(receipts, total, fee_bps, protocol, operator)` is the credit map of a batch of receipts (each price
split exactly by its attribution weights): what the node's settlement sends and what `audit` recomputes.
What it does not do: price receipts, choose attribution weights, submit transactions or persist anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from openlora.attribution.eip712 import Domain, Voucher, sign, to_compact
from openlora.attribution.merkle import CreditTree, receipts_root
from openlora.attribution.receipts import checksum
from openlora.attribution.split import batch_credits, merge, protocol_fee, split_exact
from openlora.attribution.errors import AttributionError


class BatchError(AttributionError, ValueError):
    """A batch the contract would reject: empty, credits that do not sum to the debits, a wrong protocol share."""


@dataclass(frozen=True)
class Debit:
    requester: str
    cumulative_cap: int  # the voucher's signed cap
    amount: int  # debited now
    signature: bytes  # 65-byte EIP-712 signature of Voucher(requester, node, cumulative_cap)

    def as_tuple(self) -> tuple:
        r, vs = to_compact(self.signature)
        return (to_checksum_address(self.requester), self.cumulative_cap, self.amount, r, vs)


def signed_debit(domain: Domain, requester_key: bytes | str, requester: str, node: str,
                 cumulative_cap: int, amount: int) -> Debit:
    """A debit with a freshly signed voucher (what a requester's wallet would produce)."""
    voucher = Voucher(requester=requester, node=node, cumulativeCap=cumulative_cap)
    return Debit(requester, cumulative_cap, amount, sign(voucher, domain, requester_key))


@dataclass(frozen=True)
class Batch:
    node: str
    receipts_root: bytes
    receipt_count: int
    receipts_uri: str
    debits: tuple[Debit, ...]
    credits: CreditTree

    @classmethod
    def build(cls, node: str, receipt_hashes: list[bytes], receipts_uri: str, debits: list[Debit],
              credits: dict[str, int], fee_bps: int, protocol: str) -> "Batch":
        if not receipt_hashes or not debits or not credits:
            raise BatchError("a batch needs at least one receipt, one debit and one credit")
        total = sum(d.amount for d in debits)
        if sum(credits.values()) != total:
            raise BatchError(f"credits sum to {sum(credits.values())} but debits to {total}")
        fee = protocol_fee(total, fee_bps)
        got = {to_checksum_address(k): v for k, v in credits.items()}.get(to_checksum_address(protocol), 0)
        if got != fee:
            raise BatchError(f"the protocol must be credited {fee} (= {fee_bps} bps of {total}), got {got}")
        return cls(to_checksum_address(node), receipts_root(receipt_hashes), len(receipt_hashes), receipts_uri,
                   tuple(debits), CreditTree.build(credits))

    @property
    def total(self) -> int:
        return sum(d.amount for d in self.debits)

    @property
    def batch_id(self) -> bytes:
        """keccak256(abi.encode(node, receiptsRoot)), as Settlement computes it."""
        return keccak(bytes(12) + bytes.fromhex(self.node[2:]) + self.receipts_root)

    def settle_args(self) -> tuple:
        """(header, debits, credits) for `Settlement.settleBatch`."""
        header = (self.receipts_root, self.receipt_count, self.receipts_uri)
        return header, [d.as_tuple() for d in self.debits], self.credits.words

    def claim_args(self, recipient: str) -> tuple:
        """(batchId, recipient, amount, proof) for `Settlement.claim`."""
        amount, proof = self.credits.proof_for(recipient)
        return self.batch_id, to_checksum_address(recipient), amount, proof


def receipt_credits(receipts: list, total: int, fee_bps: int, protocol: str, operator: str) -> dict[str, int]:
    """Exact credits for receipts (each price split by its attribution weights, floors to the operator), with the
    protocol's fee taken from the total; sum == total. A weight naming the protocol goes to the operator (the
    contract reserves the protocol address)."""
    protocol, operator = checksum(protocol), checksum(operator)
    per_receipt = []
    for r in receipts:
        weights: dict[str, int] = {}
        for who, w in r.attribution:
            who = checksum(who)
            who = operator if who == protocol else who
            weights[who] = weights.get(who, 0) + w
        per_receipt.append(split_exact(r.price, weights, operator))
    gross = merge(*per_receipt)
    return batch_credits(total, fee_bps, protocol, gross, operator)

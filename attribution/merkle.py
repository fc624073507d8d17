"""Merkle trees of OpenLoRA batches, identical to what contracts/src/Settlement.sol computes and verifies.

Convention (one for receipts and credits): inner node = keccak256 of the two children sorted ascending
(OpenZeppelin `Hashes.commutativeKeccak256`, so OpenZeppelin `MerkleProof` verifies our proofs); leaves in the given
order, combined pairwise level by level; an odd last node is carried up unchanged. Leaves are keccak256 of a 32-byte
value (a credit word, a receipt hash), a preimage length that can never be mistaken for an inner node's 64 bytes.
Credit word: recipient address in bits 255..96, amount (uint96) in bits 95..0; credits are sorted by recipient.
What it does not do: decide amounts (see attribution.split) or talk to a chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from openlora.attribution.errors import AttributionError

MAX_CREDIT = 2**96 - 1


class MerkleError(AttributionError, ValueError):
    """Bad input to a tree: no leaves, an index out of range, an amount that does not fit a credit."""


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a <= b else keccak(b + a)


def leaf(value32: bytes) -> bytes:
    if len(value32) != 32:
        raise MerkleError(f"a leaf value is 32 bytes, got {len(value32)}")
    return keccak(value32)


@dataclass(frozen=True)
class MerkleTree:
    levels: tuple[tuple[bytes, ...], ...]  # levels[0] = leaves, levels[-1] = (root,)

    @classmethod
    def from_leaves(cls, leaves: list[bytes]) -> "MerkleTree":
        if not leaves:
            raise MerkleError("a Merkle tree needs at least one leaf")
        levels = [tuple(leaves)]
        while len(levels[-1]) > 1:
            cur = levels[-1]
            nxt = [hash_pair(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
            if len(cur) % 2:
                nxt.append(cur[-1])
            levels.append(tuple(nxt))
        return cls(tuple(levels))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < len(self.levels[0]):
            raise MerkleError(f"leaf index {index} out of range (tree has {len(self.levels[0])} leaves)")
        out = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index //= 2
        return out


def verify(proof: list[bytes], root: bytes, leaf_hash: bytes) -> bool:
    h = leaf_hash
    for p in proof:
        h = hash_pair(h, p)
    return h == root


def credit_word(recipient: str, amount: int) -> bytes:
    if not 0 < amount <= MAX_CREDIT:
        raise MerkleError(f"credit {amount} for {recipient} must be between 1 and 2**96-1 wei")
    return ((int(recipient, 16) << 96) | amount).to_bytes(32, "big")


def credit_leaf(recipient: str, amount: int) -> bytes:
    return leaf(credit_word(recipient, amount))


@dataclass(frozen=True)
class CreditTree:
    """The credits of one batch, sorted by recipient, with their tree (what settleBatch stores the root of)."""
    credits: tuple[tuple[str, int], ...]  # (checksummed recipient, amount), ascending by address
    tree: MerkleTree

    @classmethod
    def build(cls, credits: dict[str, int]) -> "CreditTree":
        items = sorted(((to_checksum_address(r), a) for r, a in credits.items()), key=lambda x: int(x[0], 16))
        if len({r for r, _ in items}) != len(items):
            raise MerkleError("a recipient appears twice in a credit list (addresses differ only in case?)")
        return cls(tuple(items), MerkleTree.from_leaves([credit_leaf(r, a) for r, a in items]))

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def words(self) -> list[bytes]:
        return [credit_word(r, a) for r, a in self.credits]

    def proof_for(self, recipient: str) -> tuple[int, list[bytes]]:
        """(amount, proof) of `recipient`'s credit."""
        want = to_checksum_address(recipient)
        for i, (r, a) in enumerate(self.credits):
            if r == want:
                return a, self.tree.proof(i)
        raise MerkleError(f"{want} has no credit in this batch")


def receipts_root(receipt_hashes: list[bytes]) -> bytes:
    """The root of a batch's receipts (each a 32-byte receipt hash, in the order they are published)."""
    return MerkleTree.from_leaves([leaf(h) for h in receipt_hashes]).root

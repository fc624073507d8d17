"""The paged KV cache's block pool: fixed-size blocks, reference counts, prefix caching keyed by adapter identity.

What it does: hands out block ids, counts references, and (when prefix caching is on) remembers full blocks by a
chained hash of (previous block's hash, adapter identity, the block's token ids) so that a later sequence with the
same adapter and the same prefix reuses them. Cached blocks nobody references stay cached until the pool needs
them (LRU). Two adapters never share KV: the adapter's identity (weights hash or CID, never its name) is in every
key.
What it does not do: hold tensors (the model runner allocates the caches) or decide who runs (scheduler.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class SeqBlocks:
    """A sequence's block table and how many of its first blocks were filled through the prefix cache."""
    block_ids: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)      # hashes of the leading FULL blocks registered so far


def block_hash(parent: bytes | None, adapter_identity: str | None, tokens: tuple[int, ...] | list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update((adapter_identity or "base").encode())
    h.update(len(tokens).to_bytes(4, "little"))
    for t in tokens:
        h.update(int(t).to_bytes(4, "little", signed=False))
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks}: the KV cache needs at least one block")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: dict[bytes, int] = {}                 # hash -> block id
        self._block_hash: dict[int, bytes] = {}             # block id -> hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks with ref 0, LRU first
        self.hits = 0
        self.queries = 0

    # ---- accounting ----
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free or cached-but-unreferenced)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # ---- allocation ----
    def _pop_free(self) -> int:
        if self._free:
            return self._free.popleft()
        bid, _ = self._evictable.popitem(last=False)
        h = self._block_hash.pop(bid)
        if self._cached.get(h) == bid:
            del self._cached[h]
        return bid

    def allocate(self, seq: SeqBlocks, num_tokens: int) -> bool:
        """Grow `seq`'s table to hold `num_tokens` tokens. All-or-nothing: False if the pool is short."""
        need = self.blocks_needed(num_tokens) - len(seq.block_ids)
        if need <= 0:
            return True
        if need > self.num_free:
            return False
        for _ in range(need):
            bid = self._pop_free()
            self.ref[bid] = 1
            seq.block_ids.append(bid)
        return True

    def free(self, seq: SeqBlocks) -> None:
        """Release a finished, aborted or preempted sequence's blocks (cached ones stay cached, LRU)."""
        for bid in reversed(seq.block_ids):
            self.ref[bid] -= 1
            if self.ref[bid] == 0:
                if bid in self._block_hash:
                    self._evictable[bid] = None
                else:
                    self._free.append(bid)
        seq.block_ids.clear()
        seq.hashes.clear()

    # ---- prefix caching ----
    def match_prefix(self, seq: SeqBlocks, tokens: list[int], adapter_identity: str | None) -> int:
        """Attach cached blocks for the longest cached prefix of `tokens`; returns the number of tokens covered.

        At least one token is always left to compute, so the last prompt token's logits come from a real forward.
        """
        if not self.prefix_caching or seq.block_ids:
            return 0
        bs = self.block_size
        max_blocks = (len(tokens) - 1) // bs
        parent = None
        for i in range(max_blocks):
            h = block_hash(parent, adapter_identity, tokens[i * bs:(i + 1) * bs])
            self.queries += 1
            bid = self._cached.get(h)
            if bid is None:
                break
            self.hits += 1
            if self.ref[bid] == 0:
                self._evictable.pop(bid, None)
            self.ref[bid] += 1
            seq.block_ids.append(bid)
            seq.hashes.append(h)
            parent = h
        return len(seq.block_ids) * bs

    def register_full_blocks(self, seq: SeqBlocks, tokens: list[int], num_computed: int,
                             adapter_identity: str | None) -> None:
        """After a step: record the hashes of blocks that are now full, so later sequences can reuse them."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        full = min(num_computed // bs, len(seq.block_ids))
        while len(seq.hashes) < full:
            i = len(seq.hashes)
            parent = seq.hashes[-1] if seq.hashes else None
            h = block_hash(parent, adapter_identity, tokens[i * bs:(i + 1) * bs])
            seq.hashes.append(h)
            bid = seq.block_ids[i]
            if h not in self._cached and bid not in self._block_hash:
                self._cached[h] = bid
                self._block_hash[bid] = h

    def reset_prefix_cache(self) -> None:
        for bid in list(self._evictable):
            self._free.append(bid)
        self._evictable.clear()
        self._cached.clear()
        self._block_hash.clear()

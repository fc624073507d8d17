"""Exact integer splits of fees: no wei lost or created, the rounding remainder to a named party.

What it does: `split_exact(amount, weights, remainder_to)` floors each weighted share and gives what rounding left
over to `remainder_to`; `protocol_fee(total, bps)` is the contract's floor(total * bps / 10,000);
`batch_credits(...)` turns a batch total plus the non-protocol shares into the credit map that Settlement accepts
(protocol credit = protocol_fee(total), everything else sums to the rest).
What it does not do: decide the weights (attribution scoring and the adapter's Datanet weights do) or sign anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from eth_utils import to_checksum_address

from openlora.attribution.errors import AttributionError

BPS = 10_000


class SplitError(AttributionError, ValueError):
    """Weights or amounts that cannot be split (negative, all zero, bps out of range)."""


def protocol_fee(total: int, fee_bps: int) -> int:
    if not 0 <= fee_bps <= BPS:
        raise SplitError(f"protocol fee {fee_bps} bps is outside 0..{BPS}")
    return total * fee_bps // BPS


def split_exact(amount: int, weights: Mapping[str, int], remainder_to: str) -> dict[str, int]:
    """Shares of `amount` proportional to `weights`, floored; the remainder goes to `remainder_to`.

    Zero shares are left out of the result. sum(result.values()) == amount always.
    """
    if amount < 0:
        raise SplitError(f"cannot split a negative amount {amount}")
    if any(w < 0 for w in weights.values()):
        raise SplitError("weights cannot be negative")
    total_w = sum(weights.values())
    out: dict[str, int] = {}
    if total_w == 0:
        if amount:
            out[to_checksum_address(remainder_to)] = amount
        return out
    given = 0
    for who, w in weights.items():
        share = amount * w // total_w
        if share:
            key = to_checksum_address(who)
            out[key] = out.get(key, 0) + share
            given += share
    if amount - given:
        key = to_checksum_address(remainder_to)
        out[key] = out.get(key, 0) + amount - given
    return out


def merge(*parts: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for who, amt in part.items():
            key = to_checksum_address(who)
            out[key] = out.get(key, 0) + amt
    return {k: v for k, v in out.items() if v}


def batch_credits(total: int, fee_bps: int, protocol: str, weights: Mapping[str, int],
                  remainder_to: str) -> dict[str, int]:
    """The credit map for a batch whose debits sum to `total`: the protocol gets exactly protocol_fee(total), the
    rest is split by `weights` with the remainder to `remainder_to` (by convention the node operator).
    The protocol address must not also appear in `weights` (Settlement reserves it)."""
    protocol = to_checksum_address(protocol)
    if any(to_checksum_address(w) == protocol for w in weights) or to_checksum_address(remainder_to) == protocol:
        raise SplitError(f"the protocol recipient {protocol} cannot also receive a non-protocol share")
    fee = protocol_fee(total, fee_bps)
    credits = split_exact(total - fee, weights, remainder_to)
    if fee:
        credits[protocol] = fee
    return credits

"""The SDK's own record of what a requester signed, and its spending limits: what bounds a voucher's cap.

A voucher lets a node debit the requester's lane on chain up to its `cumulativeCap`, whatever the node's receipts
say (nothing on chain checks receipts against requests yet). So the SDK never derives the cap from the node's word
alone: per lane (chain id, Settlement contract, node, requester) it keeps, in one small JSON file, the highest
cumulative cap it has ever signed there and the max prices of the requests signed since, and it reads what the
chain has debited. Honest charges can never pass the highest cap already signed (the node checks every request
against its voucher), so a node reporting more than max(highest cap signed, debited on chain) is lying or was paid
through vouchers signed elsewhere; either way the SDK refuses to sign (`SpendRefused`).

What it does: `VoucherLedger` (a directory of per-lane JSON files, written atomically with fsync + rename, mode
0600, under an flock so concurrent clients in several processes serialise), `SpendLimits` (the user's caps: price
per token, spend per request, total budget per lane) and `read_debited` (Settlement.debited over plain JSON-RPC,
stdlib only). What it does not do: sign (node/sdk.py) or talk to the node.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from openlora.fsutil import atomic_write
from openlora.safejson import loads as safe_loads

LEDGER_ENV = "OPENLORA_SDK_DIR"
DEFAULT_DIR = "~/.openlora/sdk"
MAX_RPC_RESPONSE = 4 << 20          # bytes of one JSON-RPC answer the SDK parses (safejson: depth too)
MAX_RECENT = 64                     # max prices kept per lane (the file stays small)
MAX_MODEL_LEN = 1 << 20             # a node's model.max_model_len can never pass this (node/config.py)


class SpendRefused(Exception):
    """The SDK will not sign: the node asks for more than the SDK's own bound or the user's limits allow."""


def default_dir() -> Path:
    return Path(os.environ.get(LEDGER_ENV) or DEFAULT_DIR).expanduser()


@dataclass(frozen=True)
class SpendLimits:
    """The user's caps, all in wei (None: no cap). `budget` caps the cumulative cap ever signed on one lane, i.e.
    the most the node can debit from that lane in total (including what was debited before this SDK signed)."""
    max_price_per_token: int | None = None
    max_spend_per_request: int | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_price_per_token", "max_spend_per_request", "budget"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name} must be a non-negative integer number of wei (got {v!r})")


@dataclass(frozen=True)
class Lane:
    chain_id: int
    settlement: str
    node: str
    requester: str

    @property
    def filename(self) -> str:
        return f"{self.chain_id}-{self.settlement.lower()}-{self.node.lower()}-{self.requester.lower()}.json"


@dataclass
class LaneRecord:
    cap: int = 0                     # the highest cumulativeCap signed on this lane
    recent: list[int] | None = None  # the max prices of the requests signed since (newest last, at most MAX_RECENT)
    signed: int = 0                  # vouchers signed on this lane

    def to_json(self) -> dict:
        return {"cap": str(self.cap), "recent_max_prices": [str(p) for p in (self.recent or [])],
                "signed": self.signed, "updated": int(time.time())}

    @classmethod
    def from_json(cls, d: dict, where: Path) -> "LaneRecord":
        try:
            return cls(int(d["cap"]), [int(p) for p in d.get("recent_max_prices", [])], int(d.get("signed", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise SpendRefused(f"{where}: damaged ledger file ({e}); the SDK will not sign on this lane until it is "
                               f"fixed or removed (removing it forgets what you signed there)") from None


class VoucherLedger:
    """Per-lane records in `directory` (created 0700). `record` is the only writer: the caller writes the cap it
    is about to sign before it signs, so a crash can only over-state what was signed, never forget it."""

    _thread_lock = threading.Lock()

    def __init__(self, directory: Path | str | None = None):
        self.dir = Path(directory).expanduser() if directory is not None else default_dir()

    def path(self, lane: Lane) -> Path:
        return self.dir / lane.filename

    def read(self, lane: Lane) -> LaneRecord:
        p = self.path(lane)
        try:
            return LaneRecord.from_json(json.loads(p.read_text(encoding="utf-8")), p)
        except FileNotFoundError:
            return LaneRecord(recent=[])
        except (OSError, ValueError) as e:
            raise SpendRefused(f"{p}: cannot read the SDK's voucher ledger ({e})") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def record(self, lane: Lane, cap: int, max_price: int) -> LaneRecord:
        """Write that a voucher with `cap` for a request of `max_price` is about to be signed (before signing)."""
        with self._locked():
            rec = self.read(lane)
            rec.cap = max(rec.cap, cap)
            rec.recent = ((rec.recent or []) + [max_price])[-MAX_RECENT:]
            rec.signed += 1
            self._write(self.path(lane), rec)
            return rec

    def _write(self, path: Path, rec: LaneRecord) -> None:
        atomic_write(path, json.dumps(rec.to_json()), mode=0o600)


def _rpc(url: str, method: str, params: list, timeout: float) -> str:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = safe_loads(r.read(MAX_RPC_RESPONSE + 1), max_bytes=MAX_RPC_RESPONSE)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SpendRefused(f"cannot read the chain at the RPC URL given to the SDK ({type(e).__name__}); "
                           f"nothing was signed") from None
    if not isinstance(out, dict) or "result" not in out:
        raise SpendRefused(f"the chain answered {method} with an error: {out.get('error') if isinstance(out, dict) else out}")
    return out["result"]


def chain_id_of(rpc_url: str, timeout: float = 10.0) -> int:
    return int(_rpc(rpc_url, "eth_chainId", [], timeout), 16)


def read_debited(rpc_url: str, settlement: str, requester: str, node: str, timeout: float = 10.0) -> int:
    """Settlement.debited(requester, node) at the latest block: what vouchers have let this node take so far."""
    from eth_utils import keccak
    selector = keccak(text="debited(address,address)")[:4]
    data = "0x" + selector.hex() + requester.lower().removeprefix("0x").rjust(64, "0") \
        + node.lower().removeprefix("0x").rjust(64, "0")
    result = _rpc(rpc_url, "eth_call", [{"to": settlement, "data": data}, "latest"], timeout)
    if not isinstance(result, str) or len(result) != 66:
        raise SpendRefused(f"Settlement.debited at {settlement} returned {result!r}: is that the Settlement "
                           f"contract on this chain?")
    return int(result, 16)

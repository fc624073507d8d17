"""Registering an adapter in AdapterRegistry, with or without its lineage, and reading it back.

What it does: `register_adapter(w3, dep, account, cid, base_model, price_per_token, datanet_weights, lineage=None)`
checks the arguments (one clear line for each mistake), asks the chain whether the call would revert (a revert's
custom error is decoded into one line: unknown Datanet, weights not summing to 10,000 bps, already registered,
unknown Datanet version, ...), checks the account can pay the gas, then sends `register` (an outside adapter) or
`registerWithLineage` (an adapter the Model Factory trained: the Datanet version each Datanet was trained on, the
training manifest's CID and the base weights' CID) through `attribution.chain` and returns a `Registration`.
`read_adapter(w3, dep, cid)` reads the whole record (`AdapterRecord`), `read_lineage(w3, dep, cid)` only its
lineage (None for an adapter registered without one). `revert_reason(abi, data)` decodes any custom error.
What it does not do: import, validate or announce the adapter's files (node/commands/adapters.py and the factory
do), or keep keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_abi_to_4byte_selector, keccak, to_checksum_address
from web3.exceptions import ContractLogicError, Web3RPCError

from openlora.attribution import artifacts
from openlora.attribution.chain import ChainError, send_and_wait
from openlora.attribution.deployment import Deployment
from openlora.attribution.errors import AttributionError
from openlora.content.cid import as_cid
from openlora.content.errors import ContentError

BPS = 10_000
MAX_DATANETS = 16              # AdapterRegistry.MAX_DATANETS
MAX_BASE_MODEL_CHARS = 256     # a model id or a path's name; the contract does not bound it, this client does
UINT256_MAX = 2**256 - 1


class LineageError(AttributionError, ValueError):
    """Registration refused (bad argument, or the chain would revert) or the adapter is not registered."""


@dataclass(frozen=True)
class Lineage:
    """Where an adapter comes from: the published version of each of its Datanets it was trained on, the CID of
    its training manifest and the CID of its base model's weights. `datanet_versions` may be given as a mapping
    {datanet id: version}; it is stored as sorted (datanet id, version) pairs."""
    datanet_versions: tuple[tuple[int, int], ...]
    manifest_cid: str
    base_weights_cid: str

    def __post_init__(self) -> None:
        pairs = _int_pairs(self.datanet_versions, "datanet versions", "version")
        object.__setattr__(self, "datanet_versions", pairs)
        object.__setattr__(self, "manifest_cid", _cid_text(self.manifest_cid, "manifest CID"))
        object.__setattr__(self, "base_weights_cid", _cid_text(self.base_weights_cid, "base weights CID"))

    def version_of(self, datanet_id: int) -> int | None:
        return dict(self.datanet_versions).get(datanet_id)


@dataclass(frozen=True)
class Registration:
    """A registration that went through."""
    cid: str
    adapter_id: str          # 0x + 64 hex: keccak256 of the CID string
    author: str
    tx_hash: str
    block: int
    gas_used: int
    lineage: Lineage | None = None


@dataclass(frozen=True)
class AdapterRecord:
    """What AdapterRegistry holds for one adapter."""
    cid: str
    adapter_id: str
    author: str
    retired: bool
    registered_at: int
    price_per_token: int
    base_model: str
    datanet_weights: tuple[tuple[int, int], ...]    # (datanet id, bps)
    lineage: Lineage | None = field(default=None)


def adapter_id_hex(cid: str) -> str:
    return "0x" + keccak(text=cid).hex()


def register_adapter(w3: Any, dep: Deployment, account: Any, cid: str, base_model: str, price_per_token: int,
                     datanet_weights: Mapping[int, int] | Iterable[tuple[int, int]],
                     lineage: Lineage | None = None, timeout: float = 60.0) -> Registration:
    """Register adapter `cid` from `account` (an eth_account LocalAccount: its author). Without `lineage` it calls
    `register`, with one `registerWithLineage` (its Datanets must be exactly those of `datanet_weights`).
    Raises LineageError with one line for every refusal, before any transaction when it can be foreseen."""
    cid = _cid_text(cid, "adapter CID")
    if not isinstance(base_model, str) or not base_model.strip():
        raise LineageError("the base model id is empty")
    if len(base_model) > MAX_BASE_MODEL_CHARS or not base_model.isprintable():
        raise LineageError(f"base model id {base_model[:40]!r}... is not a printable id of at most "
                           f"{MAX_BASE_MODEL_CHARS} characters")
    if isinstance(price_per_token, bool) or not isinstance(price_per_token, int) \
            or not 0 <= price_per_token <= UINT256_MAX:
        raise LineageError(f"price per token {price_per_token!r} must be a whole number of wei >= 0")
    weights = _weights(datanet_weights)
    if lineage is not None:
        if not isinstance(lineage, Lineage):
            raise LineageError(f"lineage must be a Lineage, not {type(lineage).__name__}")
        have, want = [d for d, _ in lineage.datanet_versions], [d for d, _ in weights]
        if have != want:
            raise LineageError(f"the lineage names Datanets {have}, the weights name {want}: give one version "
                               f"for each weighted Datanet")
    reg = dep.contract(w3, "AdapterRegistry")
    ids, bps = [d for d, _ in weights], [w for _, w in weights]
    if lineage is None:
        fn = reg.functions.register(cid, base_model, price_per_token, ids, bps)
        what = f"registering adapter {cid}"
    else:
        versions = [v for _, v in lineage.datanet_versions]
        fn = reg.functions.registerWithLineage(cid, base_model, price_per_token, ids, bps,
                                               (versions, lineage.manifest_cid, lineage.base_weights_cid))
        what = f"registering adapter {cid} with its lineage"
    sender = to_checksum_address(account.address)
    try:
        gas = fn.estimate_gas({"from": sender})
    except (ContractLogicError, Web3RPCError, ValueError) as e:
        raise LineageError(_explain(w3, dep, e, cid, what)) from None
    need = gas * int(w3.eth.gas_price)
    balance = int(w3.eth.get_balance(sender))
    if balance < need:
        raise LineageError(f"account {sender} has {balance} wei; {what} needs about {need} wei of gas on chain "
                           f"{w3.eth.chain_id}: fund it first")
    try:
        receipt = send_and_wait(w3, fn, account, what, timeout=timeout)
    except ChainError as e:
        raise LineageError(str(e)) from None
    except (ContractLogicError, Web3RPCError) as e:   # the state changed between the estimate and the send
        raise LineageError(_explain(w3, dep, e, cid, what)) from None
    return Registration(cid=cid, adapter_id=adapter_id_hex(cid), author=sender,
                        tx_hash="0x" + bytes(receipt.transactionHash).hex(), block=int(receipt.blockNumber),
                        gas_used=int(receipt.gasUsed), lineage=lineage)


def read_adapter(w3: Any, dep: Deployment, cid: str) -> AdapterRecord:
    """The AdapterRegistry record of `cid`; LineageError when it is not registered."""
    cid = _cid_text(cid, "adapter CID")
    reg = dep.contract(w3, "AdapterRegistry")
    try:
        a = reg.functions.getAdapter(keccak(text=cid)).call()
    except ContractLogicError:
        raise LineageError(f"adapter {cid} is not registered in AdapterRegistry "
                           f"{dep.address('AdapterRegistry')}") from None
    # (author, retired, registeredAt, pricePerToken, cid, baseModel, datanetIds, weightsBps,
    #  datanetVersions, manifestCid, baseWeightsCid)
    ids = [int(d) for d in a[6]]
    lineage = None
    if a[9]:
        lineage = Lineage(tuple(zip(ids, (int(v) for v in a[8]))), a[9], a[10])
    return AdapterRecord(cid=a[4], adapter_id=adapter_id_hex(cid), author=to_checksum_address(a[0]),
                         retired=bool(a[1]), registered_at=int(a[2]), price_per_token=int(a[3]), base_model=a[5],
                         datanet_weights=tuple(zip(ids, (int(w) for w in a[7]))), lineage=lineage)


def read_lineage(w3: Any, dep: Deployment, cid: str) -> Lineage | None:
    """The lineage of adapter `cid` (None: registered without one); LineageError when it is not registered."""
    return read_adapter(w3, dep, cid).lineage


# ---- custom errors ---------------------------------------------------------------------------------------------

def revert_reason(abi: list[dict[str, Any]], data: Any) -> tuple[str, dict[str, Any]] | None:
    """(error name, {argument: value}) of revert data encoding one of `abi`'s custom errors; None otherwise
    (including Error(string) and Panic(uint256), which this project's contracts do not use)."""
    raw = _revert_bytes(data)
    if raw is None or len(raw) < 4:
        return None
    for item in abi:
        if item.get("type") != "error":
            continue
        if function_abi_to_4byte_selector(item) != raw[:4]:
            continue
        types = [i["type"] for i in item.get("inputs", [])]
        try:
            values = abi_decode(types, raw[4:]) if types else ()
        except Exception:  # noqa: BLE001 - malformed revert data: report the name alone
            return item["name"], {}
        names = [i.get("name") or f"arg{n}" for n, i in enumerate(item.get("inputs", []))]
        return item["name"], dict(zip(names, values))
    return None


def _revert_bytes(data: Any) -> bytes | None:
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


def _explain(w3: Any, dep: Deployment, e: Exception, cid: str, what: str) -> str:
    decoded = revert_reason(artifacts.load("AdapterRegistry").abi, getattr(e, "data", None))
    if decoded is None:
        msg = str(getattr(e, "message", None) or e).splitlines()[0] if str(e) else type(e).__name__
        return f"{what} would revert: {msg}"
    name, args = decoded
    if name == "AlreadyRegistered":
        try:
            author = read_adapter(w3, dep, cid).author
        except (LineageError, ContractLogicError, Web3RPCError):
            author = "?"
        return f"adapter {cid} is already registered in AdapterRegistry (author {author}); a CID registers once"
    if name == "UnknownDatanet":
        return (f"Datanet {args['datanetId']} does not exist in DatanetRegistry {dep.address('DatanetRegistry')} "
                f"on chain {dep.chain_id}")
    if name == "UnknownDatanetVersion":
        d, v = args["datanetId"], args["version"]
        try:
            n = int(dep.contract(w3, "DatanetRegistry").functions.versionCount(d).call())
            has = f"it has versions 1..{n}" if n else "it has published no version yet"
        except (ContractLogicError, Web3RPCError):
            has = "its versions could not be read"
        return f"Datanet {d} has no published version {v} ({has})"
    messages = {
        "WeightsDoNotSum": lambda a: f"Datanet weights sum to {a['sum']} bps; they must sum to exactly {BPS}",
        "ZeroWeight": lambda a: f"Datanet weight #{a['index']} is 0 bps; every weight must be > 0",
        "DatanetsNotSorted": lambda a: f"Datanet ids are not strictly increasing (at #{a['index']})",
        "TooManyDatanets": lambda a: f"{a['count']} Datanets: at most {MAX_DATANETS}",
        "LengthMismatch": lambda a: f"{a['datanets']} Datanets but {a['weights']} weights",
        "VersionsLengthMismatch": lambda a: f"{a['datanets']} Datanets but {a['versions']} versions",
        "EmptyCid": lambda a: "the adapter CID is empty",
        "EmptyBaseModel": lambda a: "the base model id is empty",
        "EmptyManifestCid": lambda a: "the training manifest CID is empty",
        "EmptyBaseWeightsCid": lambda a: "the base weights CID is empty",
    }
    if name in messages:
        return f"{what} refused: {messages[name](args)}"
    shown = ", ".join(f"{k}={v.hex() if isinstance(v, bytes) else v}" for k, v in args.items())
    return f"{what} refused by AdapterRegistry: {name}({shown})"


# ---- argument checks -------------------------------------------------------------------------------------------

def _cid_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LineageError(f"the {what} is empty" if isinstance(value, str) or value is None
                           else f"the {what} must be a string, not {type(value).__name__}")
    if len(value) > 200:
        raise LineageError(f"the {what} {value[:40]!r}... is not a CID (too long)")
    try:
        cid = as_cid(value)
    except (ContentError, ValueError) as e:
        raise LineageError(f"the {what} {value!r} is not a CID: {e}") from None
    text = str(cid)
    if text != value.strip():
        raise LineageError(f"the {what} {value!r} is not in its canonical form: write it {text} (the chain keys "
                           f"adapters by the CID's text)")
    return text


def _int_pairs(value: Any, what: str, second: str) -> tuple[tuple[int, int], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = [tuple(p) for p in items]
    except TypeError:
        raise LineageError(f"{what} must be (datanet id, {second}) pairs or a mapping") from None
    out: dict[int, int] = {}
    for p in pairs:
        if len(p) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            raise LineageError(f"{what}: {p!r} is not a (datanet id, {second}) pair of whole numbers")
        d, v = p
        if not 1 <= d <= UINT256_MAX:
            raise LineageError(f"{what}: Datanet id {d} is out of range (ids start at 1)")
        if not 1 <= v <= UINT256_MAX:
            raise LineageError(f"{what}: {second} {v} of Datanet {d} is out of range (it must be >= 1)")
        if d in out:
            raise LineageError(f"{what}: Datanet {d} is named twice")
        out[d] = v
    if not out:
        raise LineageError(f"{what}: no Datanet given")
    if len(out) > MAX_DATANETS:
        raise LineageError(f"{what}: {len(out)} Datanets, at most {MAX_DATANETS}")
    return tuple(sorted(out.items()))


def _weights(value: Any) -> tuple[tuple[int, int], ...]:
    pairs = _int_pairs(value, "Datanet weights", "bps")
    for d, w in pairs:
        if w > BPS:
            raise LineageError(f"Datanet weights: {w} bps for Datanet {d} is more than {BPS}")
    total = sum(w for _, w in pairs)
    if total != BPS:
        raise LineageError(f"Datanet weights sum to {total} bps; they must sum to exactly {BPS}")
    return pairs

"""Node configuration: one TOML file in the node's home, validated into frozen dataclasses.

What it does: parses `<home>/config.toml`, applies `OPENLORA_<SECTION>_<KEY>` environment overrides, checks every
key (unknown keys, wrong types, out-of-range values, missing required keys) and returns a `NodeConfig`. Every error
is a `ConfigError` whose message names the key, the bad value and what is allowed.
What it does not do: create the home directory or the keystore (see `node.keystore`, `openlora-node init`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_type_hints

from openlora.node.errors import ConfigError

CONFIG_VERSION = 1
CONFIG_FILENAME = "config.toml"
DEFAULT_HOME = "~/.openlora"
ENV_PREFIX = "OPENLORA_"
# Environment variables with this prefix that are not config overrides.
ENV_NOT_CONFIG = {"OPENLORA_HOME", "OPENLORA_PASSWORD", "OPENLORA_PASSWORD_FILE", "OPENLORA_LOG_FORMAT",
                  "OPENLORA_SDK_DIR",          # the SDK's voucher ledger (node/sdk_ledger.py)
                  "OPENLORA_FUZZ_EXAMPLES",    # the length of the test suite's fuzz runs (tests/fuzz)
                  "OPENLORA_MODEL_CACHE", "OPENLORA_BASE_WHEEL",  # the demo base model (devnet/base_model.py)
                  "OPENLORA_CPU_KERNELS", "OPENLORA_KERNEL_CACHE"}  # native CPU kernels (kernels/cpu_native.py)

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ByteSize(int):
    """An integer number of bytes; config accepts 123, "512MiB", "4 GB"."""


def parse_byte_size(key: str, value: Any) -> ByteSize:
    if isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected a byte size such as 536870912 or \"512MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key} = {value!r}: a byte size cannot be negative")
        return ByteSize(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return ByteSize(int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]))
    raise ConfigError(
        f"{key} = {value!r}: expected a byte size such as 536870912 or \"512MiB\" "
        f"(units: {', '.join(u for u in _SIZE_UNITS if u)})")


AUTO = "auto"
# A byte size or "auto": the engine sizes it at start from free memory and the model's shapes (inference/sizing.py).
ByteSizeOrAuto = Union[ByteSize, Literal["auto"]]


def parse_byte_size_or_auto(key: str, value: Any) -> ByteSize | str:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return parse_byte_size(key, value)
    except ConfigError:
        raise ConfigError(f"{key} = {value!r}: expected \"auto\" or a byte size such as 536870912 or \"512MiB\" "
                          f"(units: {', '.join(u for u in _SIZE_UNITS if u)})") from None


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(map(repr, allowed))}")


def _check_range(key: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f">= {lo}" if lo is not None else f"<= {hi}")
        raise ConfigError(f"{key} = {value!r}: must be {bounds}")


@dataclass(frozen=True)
class NodeSection:
    """[node]: identity and logging."""
    keystore: str  # required: path of the encrypted keystore, relative to the home directory
    name: str = "openlora-node"
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.keystore:
            raise ConfigError("node.keystore = '': the keystore path must not be empty (default 'keystore.json')")
        _check_choice("node.log_level", self.log_level, ("debug", "info", "warning", "error"))
        _check_choice("node.log_format", self.log_format, ("text", "json"))


@dataclass(frozen=True)
class ModelSection:
    """[model]: the ONE base model this node serves."""
    path: str  # required: an HF directory, "demo" (small generated model) or "smollm2" (SmolLM2-135M-Instruct)
    dtype: str = "float32"
    device: str = "auto"
    max_model_len: int = 2048

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("model.path = '': give an HF model directory, or \"demo\" for the generated demo model")
        _check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"model.device = {self.device!r}: allowed values are 'auto', 'cpu', 'cuda', 'cuda:N'")
        _check_range("model.max_model_len", self.max_model_len, 16, 1 << 20)


@dataclass(frozen=True)
class EngineSection:
    """[engine]: paged KV cache, batching and kernels."""
    kv_block_size: int = 16
    kv_cache_bytes: ByteSizeOrAuto = AUTO
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    kernel_backend: str = "auto"
    decode_graphs: str = "auto"

    def __post_init__(self) -> None:
        if self.kv_block_size not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            raise ConfigError(f"engine.kv_block_size = {self.kv_block_size!r}: must be a power of two from 1 to 256")
        if self.kv_cache_bytes != AUTO:
            _check_range("engine.kv_cache_bytes", self.kv_cache_bytes, 1)
        _check_range("engine.max_num_seqs", self.max_num_seqs, 1, 4096)
        _check_range("engine.max_num_batched_tokens", self.max_num_batched_tokens, 16, 1 << 20)
        _check_choice("engine.kernel_backend", self.kernel_backend, ("auto", "torch", "triton", "native"))
        _check_choice("engine.decode_graphs", self.decode_graphs, ("auto", "on", "off"))


@dataclass(frozen=True)
class AdaptersSection:
    """[adapters]: tiers and their byte budgets, validation limits, permanent pins."""
    device_pool_bytes: ByteSizeOrAuto = AUTO
    host_cache_bytes: ByteSizeOrAuto = AUTO
    disk_store_bytes: ByteSize = ByteSize(50 * 2**30)
    max_rank: int = 256
    max_adapter_bytes: ByteSize = ByteSize(2**30)
    pinned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_range("adapters.max_rank", self.max_rank, 1, 4096)
        if self.device_pool_bytes != AUTO:
            _check_range("adapters.device_pool_bytes", self.device_pool_bytes, 1)
        sized = AUTO not in (self.host_cache_bytes, self.device_pool_bytes)
        if sized and self.host_cache_bytes < self.device_pool_bytes:
            raise ConfigError(
                f"adapters.host_cache_bytes = {int(self.host_cache_bytes)}: must be at least "
                f"adapters.device_pool_bytes ({int(self.device_pool_bytes)})")


@dataclass(frozen=True)
class ApiSection:
    """[api]: the OpenAI-compatible HTTP API."""
    port: int  # required
    host: str = "127.0.0.1"
    admin_token: str = ""
    free_local_mode: bool = False

    def __post_init__(self) -> None:
        _check_range("api.port", self.port, 1, 65535)
        if not self.host:
            raise ConfigError("api.host = '': give an address to bind, e.g. '127.0.0.1'")
        if not self.admin_token and not is_loopback(self.host):
            raise ConfigError(f"api.host = {self.host!r} listens beyond this machine, so api.admin_token is required "
                              f"(set a long random token, or bind 127.0.0.1)")


def is_loopback(host: str) -> bool:
    """True for a name or address that only this machine reaches: localhost, 127.0.0.0/8, ::1."""
    import ipaddress
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False      # any other name may resolve off-machine (and 0.0.0.0 / :: bind every interface)


@dataclass(frozen=True)
class ChainSection:
    """[chain]: the EVM chain the node settles on."""
    rpc_url: str = "http://127.0.0.1:8545"
    chain_id: int = 31337
    deployment_file: str = "deployment.json"
    confirmations: int = 1

    def __post_init__(self) -> None:
        if not re.match(r"^(https?|wss?)://", self.rpc_url):
            raise ConfigError(f"chain.rpc_url = {self.rpc_url!r}: must start with http://, https://, ws:// or wss://")
        _check_range("chain.chain_id", self.chain_id, 1)
        _check_range("chain.confirmations", self.confirmations, 0, 1000)


@dataclass(frozen=True)
class SettlementSection:
    """[settlement]: when pending receipts are batched on chain."""
    batch_max_receipts: int = 256
    batch_max_age_s: float = 30.0
    price_per_token_wei: int = 10**12          # the node's price per token (prompt + completion), added to the adapter's
    author_share_bps: int = 2000               # of what is left after the protocol fee: the adapter's author
    operator_share_bps: int = 3000             # the node operator; the rest goes to the Datanet contributors
    replace_after_s: float = 120.0             # a settlement tx pending this long is re-sent with +12.5% fees
    max_fee_per_gas_wei: int = 0               # cap on maxFeePerGas of settlement txs (0: no cap)

    def __post_init__(self) -> None:
        _check_range("settlement.batch_max_receipts", self.batch_max_receipts, 1, 100_000)
        _check_range("settlement.batch_max_age_s", self.batch_max_age_s, 0.1)
        _check_range("settlement.price_per_token_wei", self.price_per_token_wei, 0)
        _check_range("settlement.author_share_bps", self.author_share_bps, 0, 10_000)
        _check_range("settlement.operator_share_bps", self.operator_share_bps, 0, 10_000)
        _check_range("settlement.replace_after_s", self.replace_after_s, 1.0)
        _check_range("settlement.max_fee_per_gas_wei", self.max_fee_per_gas_wei, 0)
        if self.author_share_bps + self.operator_share_bps > 10_000:
            raise ConfigError(f"settlement.author_share_bps + settlement.operator_share_bps = "
                              f"{self.author_share_bps + self.operator_share_bps}: must be at most 10000")


@dataclass(frozen=True)
class P2PSection:
    """[p2p]: the libp2p host."""
    enabled: bool = True
    listen: str = "/ip4/127.0.0.1/tcp/4001"
    bootstrap: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for i, addr in enumerate((self.listen, *self.bootstrap)):
            if not addr.startswith("/"):
                key = "p2p.listen" if i == 0 else f"p2p.bootstrap[{i - 1}]"
                raise ConfigError(f"{key} = {addr!r}: must be a multiaddr such as '/ip4/127.0.0.1/tcp/4001'")


@dataclass(frozen=True)
class IpfsSection:
    """[ipfs]: where adapters are fetched from besides peers."""
    kubo_rpc: str = ""
    gateways: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for i, url in enumerate(self.gateways):
            if not re.match(r"^https?://", url):
                raise ConfigError(f"ipfs.gateways[{i}] = {url!r}: must be an http(s) URL of a trustless gateway")


@dataclass(frozen=True)
class StorageSection:
    """[storage]: receipts, nonces and the outbox."""
    database_url: str = ""  # empty: sqlite:///<home>/node.db

    def __post_init__(self) -> None:
        if self.database_url and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", self.database_url):
            raise ConfigError(
                f"storage.database_url = {self.database_url!r}: allowed are sqlite:///PATH or postgresql://...")


@dataclass(frozen=True)
class DatanetsSection:
    """[datanets]: what a contribution may be (read by `datanet contribute`, and by `pending`, `show`, `publish`
    and `verify` when they read one back) and from which similarity a row is a near duplicate (`pending`,
    `publish`). The `datanet` CLI options override them."""
    max_contribution_bytes: ByteSize = ByteSize(64 * 2**20)
    max_rows: int = 1_000_000
    max_row_bytes: ByteSize = ByteSize(2**20)
    near_duplicate_threshold: float = 0.6

    def __post_init__(self) -> None:
        _check_range("datanets.max_contribution_bytes", self.max_contribution_bytes, 1)
        _check_range("datanets.max_rows", self.max_rows, 1)
        _check_range("datanets.max_row_bytes", self.max_row_bytes, 1)
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ConfigError(f"datanets.near_duplicate_threshold = {self.near_duplicate_threshold!r}: must be "
                              f"greater than 0 and at most 1 (estimated Jaccard similarity; 0.6 by default)")
        if round(self.near_duplicate_threshold * 10_000) < 1:
            raise ConfigError(f"datanets.near_duplicate_threshold = {self.near_duplicate_threshold!r}: must be at "
                              f"least 0.0001 (it is kept in 1/10,000)")

    @property
    def near_duplicate_threshold_bps(self) -> int:
        return round(self.near_duplicate_threshold * 10_000)


@dataclass(frozen=True)
class AttributionSection:
    """[attribution]: span attribution per request (node/attribution_index.py; the rule in docs/attribution.md).
    Receipts record the values they were attributed with, so verifiers re-derive them whatever a node configures."""
    min_span_tokens: int = 12          # L: shortest span that counts (docs/attribution.md, "Choosing L")
    max_span_occurrences: int = 16     # K: a span found more often in the version is boilerplate and dropped
    index_threads: int = 1             # threads that build a version's span index (the bytes are the same)

    def __post_init__(self) -> None:
        _check_range("attribution.min_span_tokens", self.min_span_tokens, 1, 1 << 20)
        _check_range("attribution.max_span_occurrences", self.max_span_occurrences, 1, 1 << 16)
        _check_range("attribution.index_threads", self.index_threads, 1, 256)


SECTIONS: dict[str, type] = {
    "node": NodeSection, "model": ModelSection, "engine": EngineSection, "adapters": AdaptersSection,
    "api": ApiSection, "chain": ChainSection, "settlement": SettlementSection, "p2p": P2PSection,
    "ipfs": IpfsSection, "storage": StorageSection, "datanets": DatanetsSection,
    "attribution": AttributionSection,
}


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    config_version: int
    node: NodeSection
    model: ModelSection
    engine: EngineSection = field(default_factory=EngineSection)
    adapters: AdaptersSection = field(default_factory=AdaptersSection)
    api: ApiSection = field(default_factory=lambda: ApiSection(port=8000))
    chain: ChainSection = field(default_factory=ChainSection)
    settlement: SettlementSection = field(default_factory=SettlementSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    ipfs: IpfsSection = field(default_factory=IpfsSection)
    storage: StorageSection = field(default_factory=StorageSection)
    datanets: DatanetsSection = field(default_factory=DatanetsSection)
    attribution: AttributionSection = field(default_factory=AttributionSection)

    def path(self, relative: str) -> Path:
        """A path from the config, resolved against the home directory."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.home / p

    @property
    def keystore_path(self) -> Path:
        return self.path(self.node.keystore)

    @property
    def database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.home / 'node.db'}"


def resolve_home(cli_home: str | None = None) -> Path:
    """--home beats OPENLORA_HOME beats ~/.openlora."""
    raw = cli_home or os.environ.get("OPENLORA_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


# ---- conversion ---------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
            ByteSize: "a byte size (e.g. 536870912 or \"512MiB\")"}.get(tp, "a list of strings")


def _convert(key: str, value: Any, tp: Any) -> Any:
    if tp is ByteSize:
        return parse_byte_size(key, value)
    if tp == ByteSizeOrAuto:
        return parse_byte_size_or_auto(key, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")


def _env_value(key: str, raw: str, tp: Any) -> Any:
    """Environment variables are strings: parse them as the key's type."""
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} = {raw!r} (from the environment): expected true/false")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key} = {raw!r} (from the environment): expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key} = {raw!r} (from the environment): expected a number") from None
    if tp == tuple[str, ...]:
        return [s.strip() for s in raw.split(",") if s.strip()]
    return raw


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _build_section(name: str, cls: type, table: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{name}.{key}: unknown key; allowed keys in [{name}] are {', '.join(allowed)}")
    for key in _required(cls):
        if key not in table:
            raise ConfigError(f"{name}.{key} is missing: it is required in [{name}] of {CONFIG_FILENAME} "
                              f"(`openlora-node init` writes a complete default)")
    kwargs = {k: _convert(f"{name}.{k}", v, hints[k]) for k, v in table.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - defensive: a dataclass we did not anticipate
        raise ConfigError(f"[{name}]: {e}") from None


def apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """Return a copy of `raw` with OPENLORA_<SECTION>_<KEY> variables applied (section names have no '_')."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for var, value in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_CONFIG:
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            raise ConfigError(f"{var}: not a config override; expected OPENLORA_<SECTION>_<KEY> with SECTION one of "
                              f"{', '.join(s.upper() for s in SECTIONS)}")
        cls = SECTIONS[section]
        hints = get_type_hints(cls)
        if key not in hints:
            raise ConfigError(f"{var}: [{section}] has no key {key!r}; allowed: "
                              f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        out.setdefault(section, {})[key] = _env_value(f"{section}.{key}", value, hints[key])
    return out


def parse_config(text: str, home: Path, environ: dict[str, str] | None = None,
                 source: str = CONFIG_FILENAME) -> NodeConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    raw = apply_env_overrides(raw, dict(os.environ) if environ is None else environ)
    version = raw.pop("config_version", None)
    if version is None:
        raise ConfigError(f"config_version is missing: the first line of {source} must be "
                          f"`config_version = {CONFIG_VERSION}`")
    if version != CONFIG_VERSION:
        raise ConfigError(f"config_version = {version!r}: this node reads version {CONFIG_VERSION}")
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"[{key}]: unknown section; allowed sections are {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a [{key}] table")
    for name in ("node", "model", "api"):
        if name not in raw:
            raise ConfigError(f"[{name}] is missing from {source}: it holds required keys "
                              f"({', '.join(_required(SECTIONS[name]))})")
    sections = {name: _build_section(name, cls, raw[name]) for name, cls in SECTIONS.items() if name in raw}
    return NodeConfig(home=home, config_version=version, **sections)


def load_config(home: Path, environ: dict[str, str] | None = None) -> NodeConfig:
    path = home / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"no config at {path}: run `openlora-node --home {home} init` first")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return parse_config(text, home, environ, source=str(path))


def set_config_values(home: Path, section: str, values: dict[str, Any]) -> list[str]:
    """Set `[section] key = value` in <home>/config.toml, keeping every other line and comment as it is (a key's
    trailing comment too); a missing key is added under its section header, a missing section at the end. The new
    text must still be a valid config (else ConfigError and nothing is written). Returns the keys that changed."""
    import tomli_w

    from openlora.fsutil import atomic_write
    path = home / CONFIG_FILENAME
    lines = path.read_text(encoding="utf-8").splitlines()
    current = tomllib.loads("\n".join(lines)).get(section, {})
    changed = [k for k, v in values.items() if current.get(k) != v]
    header = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
    if header is None:
        lines += ["", f"[{section}]"]
        header = len(lines) - 1
    end = next((i for i in range(header + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for key in changed:
        rendered = tomli_w.dumps({key: values[key]}).strip()
        at = next((i for i in range(header + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
        if at is None:
            lines.insert(header + 1, rendered)
            end += 1
        else:
            comment = re.search(r"\s+#.*$", lines[at].split("=", 1)[1])
            lines[at] = rendered + (comment.group(0) if comment and '"' not in comment.group(0) else "")
    if changed:
        text = "\n".join(lines) + "\n"
        parse_config(text, home, environ={}, source=str(path))      # never write a config the node cannot read
        atomic_write(path, text)
    return changed


DEFAULT_CONFIG_TOML = f"""\
# openlora-node configuration. Every key can be overridden by an environment variable
# OPENLORA_<SECTION>_<KEY>, e.g. OPENLORA_API_PORT=8001. Paths are relative to this file's directory.
config_version = {CONFIG_VERSION}

[node]
keystore = "keystore.json"      # required: the encrypted Ethereum keystore of this node
name = "openlora-node"
log_level = "info"              # debug | info | warning | error
log_format = "text"             # text | json

[model]
path = "demo"                   # required: an HF model directory, "demo" (a small model generated locally) or
                                # "smollm2" (SmolLM2-135M-Instruct, written once from its PyPI wheel)
dtype = "float32"               # float32 | bfloat16 | float16
device = "auto"                 # auto | cpu | cuda | cuda:N
max_model_len = 2048

[engine]
kv_block_size = 16              # tokens per KV block (power of two)
kv_cache_bytes = "auto"         # paged KV cache: "auto" (from free memory and the model) or a size, "2GiB"
max_num_seqs = 128              # sequences in the running batch
max_num_batched_tokens = 2048   # token budget per step (chunked prefill splits longer prompts)
enable_prefix_caching = true
kernel_backend = "auto"         # auto (Triton on CUDA, native C kernels on CPU, else torch) | torch | triton | native
decode_graphs = "auto"          # decode steps as CUDA graphs: auto (on with CUDA + Triton) | on | off

[adapters]
device_pool_bytes = "auto"      # adapters resident on the device: "auto" (64 slots x rank 32, capped) or a size
host_cache_bytes = "auto"       # adapters kept in host memory: "auto" (4 x the device pool, capped) or a size
disk_store_bytes = "50GiB"      # local blockstore
max_rank = 256
max_adapter_bytes = "1GiB"
pinned = []                     # adapter CIDs never evicted

[api]
port = 8000                     # required
host = "127.0.0.1"
admin_token = ""                # required unless host is loopback; empty: admin only from localhost
free_local_mode = false         # true: accept unsigned requests (local development only)

[chain]
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
deployment_file = "deployment.json"
confirmations = 1

[settlement]
batch_max_receipts = 256
batch_max_age_s = 30.0
price_per_token_wei = 1000000000000   # this node's price per token, added to the adapter's registered price
author_share_bps = 2000         # after the protocol fee: the adapter's author ...
operator_share_bps = 3000       # ... the node operator; the rest to the Datanet contributors
replace_after_s = 120.0         # a settlement tx pending this long is re-sent, same nonce, fees +12.5%
max_fee_per_gas_wei = 0         # cap on a settlement tx's maxFeePerGas (0: no cap)

[p2p]
enabled = true
listen = "/ip4/127.0.0.1/tcp/4001"
bootstrap = []

[ipfs]
kubo_rpc = ""                   # e.g. "/ip4/127.0.0.1/tcp/5001/http"; empty: not used
gateways = []                   # trustless gateway URLs

[storage]
database_url = ""               # empty: sqlite:///<home>/node.db (WAL); or postgresql://USER:PASSWORD@HOST:PORT/DBNAME
                                #   (pip install 'openlora-node[postgres]')

[datanets]
max_contribution_bytes = "64MiB"  # largest file `datanet contribute` accepts (pending/show/publish/verify read)
max_rows = 1000000              # most rows in one contribution
max_row_bytes = "1MiB"          # largest row (its canonical JSON)
near_duplicate_threshold = 0.6  # 0 < t <= 1: estimated Jaccard similarity from which a row is a near duplicate
                                #   (pending, publish; verify uses the threshold written in each manifest)

[attribution]
min_span_tokens = 12            # L: shortest completion span matched against the adapter's Datanet version
max_span_occurrences = 16       # K: a span found more often than this in the version is boilerplate, dropped
index_threads = 1               # threads that build a version's span index (same bytes on any count)
"""

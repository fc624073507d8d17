"""LoRA for serving: PEFT adapter parsing/validation, the device weight pool, and `LoRALinear`.

What it does:
- `read_peft_adapter` turns a PEFT directory (adapter_config.json + adapter_model.safetensors) into a validated
  host-side `LoRAWeights` (safetensors only; every tensor's name, shape and finiteness checked against the base).
- `LoRAPool` holds resident adapters on the device in row pools shared by all ranks (see kernels/reference.py for
  the layout): an adapter of rank r takes r rows, never a max-rank slot.
- `LoRALinear` composes a base (possibly fused) linear with the LoRA parts it hosts, chosen from the explicit
  `FUSED_LINEARS` table; the batched math goes through the kernel dispatch layer.
What it does not do: decide which adapters are resident (inference/adapters.py) or fetch them (sources).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from openlora.inference.errors import AdapterError
from openlora.inference.model_config import ModelSpec
from openlora.safejson import load_file

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_INDEX = {m: i for i, m in enumerate(TARGET_MODULES)}
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

# The base linears of a decoder layer and the LoRA-targetable projections each one hosts, in output order.
FUSED_LINEARS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MAX_PARTS = max(len(ms) for ms in FUSED_LINEARS.values())      # slices of the widest fused linear (qkv: 3)
# A fused linear's LoRA targets are consecutive in TARGET_MODULES, so that their rows of the [layers, modules,
# slots] rank and scale tables form one [parts, slots] view per layer.
if not all(TARGET_MODULES[MODULE_INDEX[ms[0]]:MODULE_INDEX[ms[0]] + len(ms)] == ms for ms in FUSED_LINEARS.values()):
    raise RuntimeError("FUSED_LINEARS' targets must be consecutive in TARGET_MODULES")

MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json: a few hundred bytes in practice
# rank_pattern / alpha_pattern keys: module paths ("q_proj", "model.layers.0.self_attn.q_proj"). PEFT reads them as
# regular expressions; quantifiers and groups are refused so that a key cannot backtrack exponentially (ReDoS).
_PATTERN_KEY = re.compile(r"[\w.]{1,256}")
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])"
                     r"(?:\.[^.]+)?\.weight$")


@dataclass
class LoRAWeights:
    """A validated adapter in host memory."""
    name: str
    identity: str                                   # sha256 of the weights file (or a CID given by the caller)
    path: Path
    base_model: str
    # (layer, module) -> (A [r, in], B [out, r], scale)
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = field(repr=False)
    max_rank: int = 0
    nbytes: int = 0

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(sorted({m for _, m in self.tensors}, key=MODULE_INDEX.__getitem__))

    def fused_targets(self) -> tuple[str, ...]:
        """The fused linears (FUSED_LINEARS keys) whose targets this adapter has weights for."""
        mods = {m for _, m in self.tensors}
        return tuple(f for f, ms in FUSED_LINEARS.items() if mods.intersection(ms))


def _pattern_value(patterns: dict, layer: int, module: str, default):
    full = f"model.layers.{layer}.{_PARENT[module]}.{module}"
    for pat, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{pat}", full):
            return value
    return default


def read_peft_adapter(path: Path, name: str, spec: ModelSpec, *, max_rank: int = 256,
                      max_bytes: int | None = None, identity: str | None = None,
                      check_base: bool = True) -> LoRAWeights:
    """Parse and validate a PEFT LoRA directory against the base model `spec`. Raises AdapterError."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    path = Path(path)
    cfg_path = path / "adapter_config.json"
    st_path = path / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise AdapterError(f"adapter {name!r}: no adapter_config.json in {path}")
    if not st_path.is_file():
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        why = f" ({', '.join(pickled)} found: pickled weights are never loaded)" if pickled else ""
        raise AdapterError(f"adapter {name!r}: no adapter_model.safetensors in {path}{why}")
    try:
        cfg = load_file(cfg_path, MAX_CONFIG_BYTES)  # bounded size and depth, no symlink/FIFO (openlora.safejson)
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise AdapterError(f"adapter {name!r}: adapter_config.json is not acceptable JSON: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise AdapterError(f"adapter {name!r}: {flag}=true is not supported")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"adapter {name!r}: bias={cfg.get('bias')!r} is not supported (only 'none')")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"adapter {name!r}: modules_to_save {cfg['modules_to_save']!r} is not supported")
    base = cfg.get("base_model_name_or_path") or ""
    if not isinstance(base, str):
        raise AdapterError(f"adapter {name!r}: base_model_name_or_path must be a string, got {base!r:.80}")
    if check_base and base and base != spec.model_id and Path(base).name != spec.model_id.split("/")[-1]:
        raise AdapterError(f"adapter {name!r} targets base model {base!r}, this node serves {spec.model_id!r}")
    try:
        alpha = float(cfg.get("lora_alpha", 8))
        default_r = int(cfg.get("r", 8))
        if not math.isfinite(alpha):
            raise ValueError
        for key, want in (("rank_pattern", int), ("alpha_pattern", float)):
            pats = cfg.get(key) or {}
            if not isinstance(pats, dict) or not all(
                    isinstance(k, str) and _PATTERN_KEY.fullmatch(k) and isinstance(v, (int, float))
                    and not isinstance(v, bool) and math.isfinite(want(v)) for k, v in pats.items()):
                raise AdapterError(f"adapter {name!r}: {key} must map module paths (letters, digits, _ and .) to "
                                   f"numbers")
    except AdapterError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise AdapterError(f"adapter {name!r}: r / lora_alpha must be finite numbers") from None
    rslora = bool(cfg.get("use_rslora", False))

    size = st_path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise AdapterError(f"adapter {name!r}: {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        # one read (the size is bounded above): the same bytes are parsed and hashed for the identity
        with open(st_path, "rb") as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise ValueError("the file changed size while it was read")
        raw: dict[str, torch.Tensor] = safetensors_load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(f"adapter {name!r}: adapter_model.safetensors is corrupt or truncated: {e}") from None
    if not raw:
        raise AdapterError(f"adapter {name!r}: adapter_model.safetensors holds no tensors")

    shapes = spec.module_shapes()
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        m = _KEY_RE.match(key)
        if not m:
            raise AdapterError(f"adapter {name!r}: unexpected tensor {key!r} (only lora_A/lora_B of "
                               f"{', '.join(TARGET_MODULES)} are supported)")
        layer, parent, module, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if module not in MODULE_INDEX or _PARENT[module] != parent:
            raise AdapterError(f"adapter {name!r}: tensor {key!r} targets {parent}.{module}, which is not one of "
                               f"{', '.join(TARGET_MODULES)}")
        if layer >= spec.num_layers:
            raise AdapterError(f"adapter {name!r}: tensor {key!r} is for layer {layer}; the base model has "
                               f"{spec.num_layers} layers")
        if not t.is_floating_point():
            raise AdapterError(f"adapter {name!r}: tensor {key!r} has dtype {t.dtype}, expected a float type")
        pairs.setdefault((layer, module), {})[ab] = t
    # NaN / Inf anywhere: one pass over all weights (a finite float64 sum means every element is finite), then the
    # per-tensor check only to name the culprit
    if not math.isfinite(sum(float(t.sum(dtype=torch.float64)) for t in raw.values())):
        for key, t in raw.items():
            if not torch.isfinite(t).all():
                raise AdapterError(f"adapter {name!r}: tensor {key!r} contains NaN or Inf")

    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    top = 0
    for (layer, module), ab in sorted(pairs.items(), key=lambda kv: (kv[0][0], MODULE_INDEX[kv[0][1]])):
        where = f"layers.{layer}.{module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter {name!r}: {where} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        fin, fout = shapes[module]
        r = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or a.shape[1] != fin or b.dim() != 2 or tuple(b.shape) != (fout, r):
            raise AdapterError(
                f"adapter {name!r}: {where} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                f"the base model needs A [r, {fin}] and B [{fout}, r]")
        if r < 1 or r > max_rank:
            raise AdapterError(f"adapter {name!r}: {where} has rank {r}; allowed ranks are 1..{max_rank}")
        expected_r = _pattern_value(cfg.get("rank_pattern"), layer, module, default_r)
        if r != int(expected_r):
            raise AdapterError(f"adapter {name!r}: {where} has rank {r} but adapter_config.json says {expected_r}")
        a_alpha = float(_pattern_value(cfg.get("alpha_pattern"), layer, module, alpha))
        scale = a_alpha / math.sqrt(r) if rslora else a_alpha / r
        tensors[(layer, module)] = (a.float().contiguous(), b.float().contiguous(), scale)
        top = max(top, r)
    nbytes = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in tensors.values())
    if identity is None:
        h = hashlib.sha256(data)
        h.update(json.dumps({"alpha": alpha, "rslora": rslora, "ap": cfg.get("alpha_pattern")},
                            sort_keys=True).encode())
        identity = "sha256:" + h.hexdigest()
    return LoRAWeights(name=name, identity=identity, path=path, base_model=base, tensors=tensors,
                       max_rank=top, nbytes=nbytes)


class LoRAPool:
    """Resident adapters on the device: per fused linear pools + slot tables.

    Per fused linear f with targets m_0..m_{S-1} (FUSED_LINEARS), so that one shrink and one expand launch serve
    all of its targets (see kernels/reference.py, "Slices"):
        a_fused[f]  # [num_layers, S, num_rows, in_features]   slice s: m_s's A rows
        b_fused[f]  # [num_layers, num_rows, sum of out_features]   m_s's B^T rows at m_s's output offset
    a[m] / b[m] are the per-module views [num_layers, num_rows, features] of these.

    Slot tables (per layer and module, so that modules an adapter does not target cost nothing):
        row_start  # [num_slots] int32
        rank       # [num_layers, num_modules, num_slots] int32 (0 = module not targeted)
        scale      # [num_layers, num_modules, num_slots] float32
    """

    def __init__(self, spec: ModelSpec, num_rows: int, num_slots: int, dtype: torch.dtype, device: torch.device):
        self.spec, self.num_rows, self.num_slots = spec, num_rows, num_slots
        self.dtype, self.device = dtype, device
        L, M = spec.num_layers, len(TARGET_MODULES)
        shapes = spec.module_shapes()
        self.a_fused: dict[str, torch.Tensor] = {}
        self.b_fused: dict[str, torch.Tensor] = {}
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        for f, ms in FUSED_LINEARS.items():
            widths = [shapes[m][1] for m in ms]
            self.a_fused[f] = torch.zeros(L, len(ms), num_rows, shapes[ms[0]][0], dtype=dtype, device=device)
            self.b_fused[f] = torch.zeros(L, num_rows, sum(widths), dtype=dtype, device=device)
            off = 0
            for i, (m, n) in enumerate(zip(ms, widths)):
                self.a[m] = self.a_fused[f][:, i]
                self.b[m] = self.b_fused[f][:, :, off:off + n]
                off += n
        self.row_start = torch.zeros(num_slots, dtype=torch.int32, device=device)
        self.rank = torch.zeros(L, M, num_slots, dtype=torch.int32, device=device)
        self.scale = torch.zeros(L, M, num_slots, dtype=torch.float32, device=device)
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self._free_rows: list[tuple[int, int]] = [(0, num_rows)]   # sorted (start, length)
        self._slot_rows: dict[int, tuple[int, int]] = {}
        self._slot_fused: dict[int, frozenset[str]] = {}          # the fused linears each resident slot targets
        # On CUDA, host -> device copies (from pinned host memory) run on a side stream, overlapping compute.
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @staticmethod
    def bytes_per_row(spec: ModelSpec, dtype: torch.dtype) -> int:
        shapes = spec.module_shapes()
        per = sum(fin + fout for fin, fout in shapes.values())
        return per * spec.num_layers * torch.tensor([], dtype=dtype).element_size()

    def can_fit(self, rank: int) -> bool:
        return bool(self._free_slots) and any(n >= rank for _, n in self._free_rows)

    def insert(self, w: LoRAWeights) -> int | None:
        """Copy `w` into a free slot and rows; None when no slot or no contiguous run of rows is free."""
        if not self._free_slots:
            return None
        need = w.max_rank
        for i, (start, n) in enumerate(self._free_rows):
            if n >= need:
                break
        else:
            return None
        self._free_rows[i] = (start + need, n - need)
        if self._free_rows[i][1] == 0:
            del self._free_rows[i]
        slot = self._free_slots.pop()
        self._slot_rows[slot] = (start, need)
        ranks = torch.zeros(self.rank.shape[:2], dtype=torch.int32)
        scales = torch.zeros(self.scale.shape[:2], dtype=torch.float32)
        ctx = torch.cuda.stream(self._copy_stream) if self._copy_stream is not None else contextlib.nullcontext()
        with ctx:
            for (layer, module), (a, b, scale) in w.tensors.items():
                r = a.shape[0]
                mi = MODULE_INDEX[module]
                self.a[module][layer, start:start + r].copy_(a, non_blocking=True)
                self.b[module][layer, start:start + r].copy_(b.t(), non_blocking=True)
                ranks[layer, mi] = r
                scales[layer, mi] = scale
        if self._copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
        self.row_start[slot] = start
        self._slot_fused[slot] = frozenset(w.fused_targets())
        self.rank[:, :, slot] = ranks.to(self.device)
        self.scale[:, :, slot] = scales.to(self.device)
        return slot

    @property
    def used_rows(self) -> int:
        return self.num_rows - sum(n for _, n in self._free_rows)

    def rows_of(self, slot: int) -> int:
        """Rows (= the adapter's largest rank) held by a resident slot."""
        return self._slot_rows[slot][1]

    def fused_of(self, slot: int) -> frozenset[str]:
        """The fused linears (FUSED_LINEARS keys) that the adapter in a resident slot targets in some layer."""
        return self._slot_fused[slot]

    def remove(self, slot: int) -> None:
        start, n = self._slot_rows.pop(slot)
        self._slot_fused.pop(slot, None)
        self.rank[:, :, slot] = 0
        self._free_slots.append(slot)
        self._free_rows.append((start, n))
        self._free_rows.sort()
        merged: list[tuple[int, int]] = []
        for s, k in self._free_rows:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + k)
            else:
                merged.append((s, k))
        self._free_rows = merged


@dataclass
class LoRABatch:
    """Per-step LoRA metadata, built by the model runner. Tokens are ordered so each adapter is one segment."""
    token_slots: torch.Tensor      # [T] int32, -1 = no adapter
    seg_starts: torch.Tensor       # [S + 1] int32
    seg_slots: torch.Tensor        # [S] int32
    max_rank: int                  # largest rank among the batch's adapters
    decode: bool                   # use BGMV (an all-decode step with enough segments), else SGMV
    buf: torch.Tensor              # [MAX_PARTS, T, max_rank] float32 scratch (a view of a buffer allocated once)
    # the fused linears (FUSED_LINEARS keys) that some adapter of the batch targets; None = all. The others skip
    # their LoRA launches (an adapter of q/k/v/o costs nothing in gate_up and down).
    fused: frozenset[str] | None = None


def cpu_has_bf16_dot() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX on x86; the BF16 extension on Arm). Without
    it a bfloat16 GEMM is emulated, ~10x slower than float32 (6.7 vs ~70 GFLOPS per core on an AVX2 EPYC)."""
    cpu = torch.cpu
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported",
                                                                              lambda: False)():
        return True
    caps = getattr(cpu, "get_capabilities", lambda: {})()
    return bool(isinstance(caps, dict) and caps.get("bf16"))


def can_pack_cpu(weight: torch.Tensor, upcast_bf16: bool = False) -> bool:
    """float32 CPU weights (bfloat16 too with `upcast_bf16`: packed as float32), with oneDNN and its (private,
    inductor's) packed-linear ops present in this torch: a torch without them serves with F.linear instead of
    failing."""
    dtypes = (torch.float32, torch.bfloat16) if upcast_bf16 else (torch.float32,)
    return (weight.device.type == "cpu" and weight.dtype in dtypes and weight.dim() == 2
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_cpu_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [out, in] float32 -> oneDNN's blocked layout for `packed_linear` (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, W, bias) with W pre-packed by `pack_cpu_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class LoRALinear:
    """A base linear (weight [out, in], optional bias) plus the LoRA targets it hosts side by side in its output.

    All targets of the linear go through one sliced shrink and one sliced expand (kernels/reference.py, "Slices"):
    a fused qkv projection costs two LoRA launches, not six. With `sliced = False` (EngineConfig
    lora_sliced_launch=False, for side-by-side benchmarks) each target runs its own shrink + expand pair instead,
    over the same pool; the result is the same function."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layer: int, fused: str,
                 widths: tuple[int, ...]):
        modules = FUSED_LINEARS[fused]
        if len(widths) != len(modules) or sum(widths) != weight.shape[0]:
            raise ValueError(f"{fused}: output widths {widths} do not match its targets {modules} and the "
                             f"weight's {weight.shape[0]} rows")
        self.weight, self.bias, self.layer, self.fused = weight, bias, layer, fused
        self.widths = tuple(widths)
        self.sliced = True
        self.packed = False
        self.out_dtype = weight.dtype
        self._mi = slice(MODULE_INDEX[modules[0]], MODULE_INDEX[modules[0]] + len(modules))

    def pack_for_cpu(self, upcast_bf16: bool = False) -> bool:
        """Replace the weight by oneDNN's pre-packed (blocked) layout for float32 CPU matmuls (~1.3x faster than
        F.linear's MKL sgemm on SmolLM2's shapes, bench/bench_peers.py); the dense copy is dropped, so memory does
        not double. With `upcast_bf16` a bfloat16 weight is packed as float32 (twice its memory) and the GEMM runs
        in float32 over the bfloat16 input, its output rounded back to bfloat16: the bfloat16 products are exact in
        float32, so this is a bfloat16 GEMM with float32 accumulation, at float32 speed on a CPU that has no bfloat16
        dot-product instructions (`cpu_has_bf16_dot`). No-op (False) off CPU, for other dtypes, or without oneDNN."""
        if not can_pack_cpu(self.weight, upcast_bf16):
            return False
        self.out_dtype = self.weight.dtype
        self.weight = pack_cpu_weight(self.weight.float())
        if self.bias is not None:
            self.bias = self.bias.float()
        self.packed = True
        return True

    def __call__(self, x: torch.Tensor, lora: LoRABatch | None, pool: LoRAPool | None, backend,
                 keep_f32: bool = False) -> torch.Tensor:
        """y = x W^T (+ bias) + the batch's LoRA deltas. With `keep_f32` (upcast bf16 under the native backend) a
        bfloat16 output comes back as float32 rounded to bfloat16 values in place (`round_bf16_`), which the next
        float32 GEMM reads without a conversion copy."""
        targeted = not (lora is None or pool is None or (lora.fused is not None and self.fused not in lora.fused))
        if self.packed:          # upcast bf16: the LoRA adds into the float32 output, then one rounding for both
            x = x if x.dtype == torch.float32 else x.float()
            y = packed_linear(x, self.weight, self.bias)
            if targeted:
                self._add_lora(x, y, lora, pool, backend)
            if self.out_dtype == torch.float32:
                return y
            return backend.fused.round_bf16_(y) if keep_f32 else y.to(self.out_dtype)
        y = F.linear(x, self.weight, self.bias)
        if targeted:
            self._add_lora(x, y, lora, pool, backend)
        return y

    def _add_lora(self, x: torch.Tensor, y: torch.Tensor, lora: LoRABatch, pool: LoRAPool, backend) -> None:
        """y += the batch's LoRA deltas for this linear's targets, in place (the backend's shrink and expand)."""
        a = pool.a_fused[self.fused][self.layer]                      # [S, rows, in]
        b = pool.b_fused[self.fused][self.layer]                      # [rows, out]
        ranks = pool.rank[self.layer, self._mi]                       # [S, slots]
        scales = pool.scale[self.layer, self._mi]
        buf = lora.buf[:len(self.widths)]
        if lora.decode:                                               # per-token gather (BGMV)
            shrink, expand, meta = backend.bgmv_shrink, backend.bgmv_expand, (lora.token_slots,)
        else:                                                         # adapter segments (SGMV)
            shrink, expand, meta = backend.sgmv_shrink, backend.sgmv_expand, (lora.seg_starts, lora.seg_slots)
        if self.sliced:
            shrink(x, a, buf, *meta, pool.row_start, ranks)
            expand(buf, b, y, *meta, pool.row_start, ranks, scales, 0, self.widths)
            return
        off = 0
        for s, n in enumerate(self.widths):
            shrink(x, a[s], buf[s], *meta, pool.row_start, ranks[s])
            expand(buf[s], b[:, off:off + n], y, *meta, pool.row_start, ranks[s], scales[s], off)
            off += n

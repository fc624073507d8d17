"""Native CPU kernels: kernels/csrc/cpu_kernels.c, compiled once per machine and called through ctypes.

What it does: `load()` compiles the C source with the system C compiler (`$CC`, else cc/gcc/clang; `FLAGS`) into
~/.cache/openlora/kernels/<key>/ (the key hashes the source, the compiler, the flags and this CPU's feature flags,
so a cache shared between different machines never runs code built for another CPU), loads it, and
wraps its functions for torch tensors. The build is atomic (temporary file, then rename): processes starting
together may both compile, never load a half-written library. No compiler, or a failed build: `load()` returns None
with the reason in `unavailable_reason()`, and the engine uses the pure-torch kernels (it logs which ran).
`OPENLORA_CPU_KERNELS=off` skips the native kernels; `OPENLORA_KERNEL_CACHE` moves the cache.
What it does not do: anything on a GPU, or long prefills (torch's SDPA is faster there).

The library links libgomp.so.1 by soname; torch has already loaded its own libgomp.so.1, so both share one OpenMP
runtime (no second thread pool spinning beside torch's). Threads per call = torch.get_num_threads().
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from openlora.kernels import torch_ops

log = logging.getLogger("openlora.kernels")

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.c"
ABI_VERSION = 11
# -fno-trapping-math lets GCC vectorize the clamps of the exp (no code here reads floating-point exception flags);
# -ffp-contract=fast gives fused multiply-adds (ISO C mode turns contraction off); no -ffast-math: NaN and inf keep
# their meaning and sums keep their order
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=fast"]
_ERRORS = {-1: "a block table names a block outside the KV cache", -2: "a sequence length does not fit its block "
           "table or its query count", -3: "out of memory in the native attention kernel"}

_lock = threading.Lock()
_state: dict = {}


def _cache_root() -> Path:
    if os.environ.get("OPENLORA_KERNEL_CACHE"):
        return Path(os.environ["OPENLORA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openlora" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    return None


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), "".join(version).encode(),
                                     _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:20]
    out_dir = _cache_root() / key
    lib = out_dir / "libopenlora_cpu.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built the native CPU kernels: %s", lib)
    return lib


class NativeKernels:
    """The loaded library's functions, taking torch tensors."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        if self.lib.olr_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path}: ABI version {self.lib.olr_abi_version()}, expected {ABI_VERSION}")
        f = self.lib.olr_paged_attention
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        f.argtypes = [ptr, ptr, ptr, ctypes.c_int, ptr, i64, ptr, ptr, i64, i64, i64, i64, i64, i64,
                      ctypes.c_float, ptr, ctypes.c_int]
        f.restype = ctypes.c_int

        i32p = ptr
        cint = ctypes.c_int
        self.lib.olr_sgmv_shrink.argtypes = [ptr, i64, i64, ptr, cint, i64, i64, ptr, i64, i64, i64, i32p, i32p, i64,
                                             i32p, i32p, i64, cint]
        self.lib.olr_sgmv_shrink.restype = ctypes.c_int
        self.lib.olr_sgmv_expand.argtypes = [ptr, i64, i64, i64, ptr, cint, i64, i64, i64, ptr, i64, i64, i64, ptr,
                                             i64, i32p, i32p, i64, i32p, i32p, ptr, i64, cint]
        self.lib.olr_sgmv_expand.restype = ctypes.c_int

        for name, args in (("olr_add_rms_norm", [ptr, i64, ptr, i64, ptr, i64, i64, ctypes.c_float, ptr, i64, cint,
                                                 cint]),
                           ("olr_rope", [ptr, i64, i64, i64, i64, ptr, ptr, cint, cint]),
                           ("olr_silu_mul", [ptr, i64, i64, ptr, cint, cint]),
                           ("olr_round_bf16", [ptr, i64, i64, i64, cint]),
                           ("olr_store_kv", [ptr, i64, ptr, i64, ptr, ptr, cint, i64, ptr, i64, i64])):
            getattr(self.lib, name).argtypes = args
            getattr(self.lib, name).restype = ctypes.c_int

    # ---- fused float32 elementwise ops (the model's forward uses them through the backend's `fused`) ----
    # With round_bf16=True they are a bfloat16 model's ops on bfloat16 values carried in float32 tensors: each result
    # is rounded to bfloat16 where HF's bf16 forward rounds it, and stays float32 for the next float32 GEMM.

    @staticmethod
    def _rows(t: torch.Tensor, name: str) -> None:
        """float32 CPU [rows, columns] with unit column stride and rows that do not overlap (an `expand`ed tensor
        would be written by several threads at once, and summed into more than once)."""
        if (t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2 or t.stride(1) != 1
                or (t.shape[0] > 1 and t.stride(0) < t.shape[1])):
            raise ValueError(f"native {name}: needs a float32 CPU [rows, columns] tensor with unit column stride "
                             f"and rows apart, got {t.dtype} {tuple(t.shape)} strides {t.stride()}")

    def add_rms_norm(self, h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                     eps: float, round_bf16: bool = False) -> torch.Tensor:
        """h += delta (in place, when given); returns weight * h / sqrt(mean(h^2) + eps) (HF LlamaRMSNorm)."""
        self._rows(h, "rms_norm")
        T, H = h.shape
        if delta is not None:
            self._rows(delta, "rms_norm")
            if delta.shape != h.shape:
                raise ValueError(f"native rms_norm: delta {tuple(delta.shape)} != h {tuple(h.shape)}")
        _on_cpu("rms_norm", weight)
        w = weight.to(torch.float32).contiguous()
        if w.shape != (H,):
            raise ValueError(f"native rms_norm: weight {tuple(w.shape)} for rows of {H}")
        out = torch.empty_like(h, memory_format=torch.contiguous_format)
        self.lib.olr_add_rms_norm(h.data_ptr(), h.stride(0), 0 if delta is None else delta.data_ptr(),
                                  0 if delta is None else delta.stride(0), w.data_ptr(), T, H, float(eps),
                                  out.data_ptr(), out.stride(0), int(round_bf16), torch.get_num_threads())
        return out

    def rope_(self, x: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor,
              round_bf16: bool = False) -> None:
        """Rotate-half rotary embedding in place on the first `heads` heads of every row of x [T, >= heads*D];
        cos, sin [T, D] float32."""
        self._rows(x, "rope")
        T = x.shape[0]
        if heads * head_dim > x.shape[1] or head_dim % 2:
            raise ValueError(f"native rope: {heads} heads of {head_dim} do not fit rows of {x.shape[1]}")
        _on_cpu("rope", cos, sin)
        c, s_ = cos.reshape(T, head_dim), sin.reshape(T, head_dim)
        for t in (c, s_):
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError("native rope: cos and sin must be contiguous float32 [T, D]")
        self.lib.olr_rope(x.data_ptr(), x.stride(0), T, heads, head_dim, c.data_ptr(), s_.data_ptr(),
                          int(round_bf16), torch.get_num_threads())

    def silu_mul(self, gu: torch.Tensor, round_bf16: bool = False) -> torch.Tensor:
        """gu [T, 2I] -> silu(gu[:, :I]) * gu[:, I:] as [T, I]."""
        self._rows(gu, "silu_mul")
        if not gu.is_contiguous() or gu.shape[1] % 2:
            raise ValueError(f"native silu_mul: needs a contiguous [T, 2I] tensor, got {tuple(gu.shape)}")
        T, I2 = gu.shape
        out = torch.empty(T, I2 // 2, dtype=torch.float32)
        self.lib.olr_silu_mul(gu.data_ptr(), T, I2 // 2, out.data_ptr(), int(round_bf16), torch.get_num_threads())
        return out

    def round_bf16_(self, x: torch.Tensor) -> torch.Tensor:
        """Round x (float32 [rows, columns], unit column stride) to bfloat16 values in place, ties to even, as
        torch's conversion to bfloat16; returns x."""
        self._rows(x, "round_bf16")
        self.lib.olr_round_bf16(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], torch.get_num_threads())
        return x

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        """kernels.reference.store_kv for float32 k, v [T, Hkv, D] whose heads are contiguous in each row (e.g.
        views into the fused qkv output) into float32 or bfloat16 caches (rounded to nearest, as torch's copy);
        ValueError for a slot past the cache."""
        T, Hkv, D = k.shape
        W = Hkv * D
        _on_cpu("store_kv", k, v, k_cache, v_cache, slot_mapping)
        for t in (k, v):
            if t.dtype != torch.float32 or t.shape != (T, Hkv, D) or t.stride(2) != 1 or t.stride(1) != D:
                raise ValueError(f"native store_kv: k/v {tuple(t.shape)} {t.dtype} strides {t.stride()}")
        if (k_cache.dtype not in _WEIGHT_KIND or v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype
                or tuple(k_cache.shape[2:]) != (Hkv, D) or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
            raise ValueError(f"native store_kv: caches {tuple(k_cache.shape)} {k_cache.dtype} do not fit")
        if slot_mapping.dtype not in _INT_DTYPES:
            raise ValueError(f"native store_kv: slot_mapping must be an integer tensor, got {slot_mapping.dtype}")
        sm = slot_mapping.to(torch.int64).contiguous()
        if sm.shape != (T,):
            raise ValueError(f"native store_kv: slot_mapping {tuple(sm.shape)} for {T} tokens")
        rc = self.lib.olr_store_kv(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(),
                                   v_cache.data_ptr(), _WEIGHT_KIND[k_cache.dtype], W, sm.data_ptr(), T,
                                   k_cache.shape[0] * k_cache.shape[1])
        if rc:
            raise ValueError("native store_kv: a slot lies past the KV cache")

    @staticmethod
    def lora_supports(act: torch.Tensor, weights: torch.Tensor, buf: torch.Tensor) -> bool:
        """Whether the C LoRA kernels take these: float32 or bfloat16 activations (x or y: bfloat16 ones are widened
        to float32 around the call), a float32 or bfloat16 pool, a float32 scratch buffer, all on the CPU."""
        return (act.dtype in (torch.float32, torch.bfloat16) and weights.dtype in _WEIGHT_KIND
                and buf.dtype == torch.float32 and all(t.device.type == "cpu" for t in (act, weights, buf)))

    def sgmv_shrink(self, x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank) -> None:
        """kernels.reference.sgmv_shrink (one slice or S): x float32 or bfloat16 (widened first), a_pool float32 or
        bfloat16 (read as it is), buf float32."""
        if a_pool.dim() == 2:
            a_pool, buf, slot_rank = a_pool[None], buf[None], slot_rank[None]
        S, P, fin = a_pool.shape
        T = x.shape[0]
        if (x.dim() != 2 or x.shape[1] != fin or buf.dim() != 3 or buf.shape[0] != S or buf.shape[1] < T
                or buf.stride(2) != 1 or buf.dtype != torch.float32 or a_pool.dtype not in _WEIGHT_KIND
                or not a_pool.is_contiguous()):
            raise ValueError(f"native sgmv_shrink: x {tuple(x.shape)}, a_pool {tuple(a_pool.shape)} {a_pool.dtype}, "
                             f"buf {tuple(buf.shape)} {buf.dtype} do not fit")
        _on_cpu("sgmv_shrink", x, a_pool, buf)
        x = x.to(torch.float32).contiguous()
        starts, slots, rows, ranks = _meta(seg_starts, seg_slots, slot_row_start, slot_rank, S)
        rc = self.lib.olr_sgmv_shrink(x.data_ptr(), T, fin, a_pool.data_ptr(), _WEIGHT_KIND[a_pool.dtype], S, P,
                                      buf.data_ptr(), buf.stride(0), buf.stride(1), buf.shape[2], starts.data_ptr(),
                                      slots.data_ptr(), slots.shape[0], rows.data_ptr(), ranks.data_ptr(),
                                      ranks.shape[1], torch.get_num_threads())
        if rc:
            raise (MemoryError("native sgmv_shrink: out of memory") if rc == -5 else
                   ValueError("native sgmv_shrink: a segment, slot, rank or pool row is out of range"))

    def sgmv_expand(self, buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset,
                    widths: tuple[int, ...]) -> None:
        """kernels.reference.sgmv_expand (one slice or S): buf float32, b_pool float32 or bfloat16, y float32 (added
        in place) or bfloat16 (its columns widened, added to, and rounded once, as the reference does)."""
        if buf.dim() == 2:
            buf, slot_rank, slot_scale = buf[None], slot_rank[None], slot_scale[None]
        S = buf.shape[0]
        P, N = b_pool.shape
        T = y.shape[0]
        if (buf.shape[1] < T or buf.stride(2) != 1 or buf.dtype != torch.float32 or b_pool.stride(1) != 1
                or b_pool.dtype not in _WEIGHT_KIND or y.dim() != 2 or y.stride(1) != 1 or len(widths) != S
                or y.dtype not in (torch.float32, torch.bfloat16)):
            raise ValueError(f"native sgmv_expand: buf {tuple(buf.shape)} {buf.dtype}, b_pool {tuple(b_pool.shape)} "
                             f"{b_pool.dtype}, y {tuple(y.shape)} {y.dtype} do not fit")
        _on_cpu("sgmv_expand", buf, b_pool, y, slot_scale)
        starts, slots, rows, ranks = _meta(seg_starts, seg_slots, slot_row_start, slot_rank, S)
        scales = slot_scale.to(torch.float32).contiguous()
        if scales.shape != ranks.shape or y_offset < 0 or y_offset + N > y.shape[1]:
            raise ValueError(f"native sgmv_expand: slot_scale {tuple(scales.shape)} must match slot_rank "
                             f"{tuple(ranks.shape)}, and columns {y_offset}..{y_offset + N} must lie in y's "
                             f"{y.shape[1]}")
        target, yf, off = None, y, y_offset
        if y.dtype != torch.float32:                       # the touched columns in float32, rounded back once
            target, yf, off = y[:, y_offset:y_offset + N], y[:, y_offset:y_offset + N].float(), 0
        w = _widths_tensor(tuple(widths))
        rc = self.lib.olr_sgmv_expand(buf.data_ptr(), buf.stride(0), buf.stride(1), buf.shape[2], b_pool.data_ptr(),
                                      _WEIGHT_KIND[b_pool.dtype], P, N, b_pool.stride(0), yf.data_ptr(), T,
                                      yf.stride(0), off, w.data_ptr(), S, starts.data_ptr(), slots.data_ptr(),
                                      slots.shape[0], rows.data_ptr(), ranks.data_ptr(), scales.data_ptr(),
                                      ranks.shape[1], torch.get_num_threads())
        if rc:
            raise (MemoryError("native sgmv_expand: out of memory") if rc == -5 else
                   ValueError("native sgmv_expand: a segment, slot, rank, width or pool row is out of range"))
        if target is not None:
            target.copy_(yf)

    @staticmethod
    def supports(cache_dtype: torch.dtype, head_dim: int) -> bool:
        return cache_dtype in (torch.float32, torch.bfloat16) and 0 < head_dim <= 256

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cu_q_lens: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                        scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """kernels.reference.paged_attention's semantics (causal, GQA), read straight from the paged cache.
        q [T, Hq, D] -> [T, Hq, D] in q's dtype (written into `out` when given)."""
        T, Hq, D = q.shape
        nb, bs, Hkv, Dk = k_cache.shape
        if (Dk != D or v_cache.shape != k_cache.shape or k_cache.dtype != v_cache.dtype
                or not self.supports(k_cache.dtype, D) or k_cache.device.type != "cpu"):
            raise ValueError(f"native paged attention: q {tuple(q.shape)}, caches {tuple(k_cache.shape)} "
                             f"{k_cache.dtype} / {tuple(v_cache.shape)} {v_cache.dtype} are not supported")
        _on_cpu("paged attention", q, v_cache, cu_q_lens, seq_lens, block_tables, *(() if out is None else (out,)))
        B = seq_lens.shape[0]
        if cu_q_lens.shape[0] != B + 1 or block_tables.dim() != 2 or block_tables.shape[0] < B:
            raise ValueError("native paged attention: cu_q_lens must be [B + 1] and block_tables [B, blocks]")
        qf = q.to(torch.float32).contiguous()
        of = out if out is not None and out.dtype == torch.float32 and out.is_contiguous() else torch.empty_like(qf)
        bt, lens, cu = (_int32(t, name) for t, name in ((block_tables, "block_tables"), (seq_lens, "seq_lens"),
                                                         (cu_q_lens, "cu_q_lens")))
        if int(cu[-1]) != T or int(cu[0]) != 0:
            raise ValueError(f"native paged attention: cu_q_lens must run from 0 to {T}")
        kc, vc = k_cache.contiguous(), v_cache.contiguous()
        rc = self.lib.olr_paged_attention(
            qf.data_ptr(), kc.data_ptr(), vc.data_ptr(), 0 if kc.dtype == torch.float32 else 1, bt.data_ptr(),
            bt.shape[1], lens.data_ptr(), cu.data_ptr(), B, Hq, Hkv, D, bs, nb, float(scale), of.data_ptr(),
            torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"native paged attention: {_ERRORS.get(rc, f'error {rc}')}")
        if out is None:
            return of if q.dtype == torch.float32 else of.to(q.dtype)
        if of is not out:
            out.copy_(of)
        return out


_widths: dict[tuple[int, ...], torch.Tensor] = {}


_WEIGHT_KIND = {torch.float32: 0, torch.bfloat16: 1}      # OLR_F32 / OLR_BF16 in cpu_kernels.c


def _widths_tensor(widths: tuple[int, ...]) -> torch.Tensor:
    t = _widths.get(widths)
    if t is None:
        t = _widths[widths] = torch.tensor(widths, dtype=torch.int64)
    return t


def _on_cpu(name: str, *ts: torch.Tensor) -> None:
    """The C code dereferences data_ptr(): a CUDA or meta tensor there would be a crash, not an error."""
    for t in ts:
        if t.device.type != "cpu":
            raise ValueError(f"native {name}: needs CPU tensors, got one on {t.device}")


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _int32(t: torch.Tensor, name: str) -> torch.Tensor:
    """A table of indices as contiguous int32 for the C code. A wider value would wrap into another, valid-looking
    index (and a float or bool table is no table): those are errors, not conversions."""
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"native kernels: {name} must be an integer tensor, got {t.dtype}")
    if t.dtype == torch.int64 and t.numel():
        lo, hi = torch.aminmax(t)
        if int(lo) < -2 ** 31 or int(hi) >= 2 ** 31:
            raise ValueError(f"native kernels: {name} holds values outside int32 ({int(lo)}..{int(hi)})")
    return t.to(torch.int32).contiguous()


def _meta(seg_starts, seg_slots, slot_row_start, slot_rank, slices: int):
    """The LoRA metadata as contiguous int32, with the sizes the C code trusts checked: one start per segment plus
    one, one row start per slot of slot_rank, one row of slot_rank per slice."""
    _on_cpu("LoRA", seg_starts, seg_slots, slot_row_start, slot_rank)
    starts, slots = _int32(seg_starts, "seg_starts"), _int32(seg_slots, "seg_slots")
    rows, ranks = _int32(slot_row_start, "slot_row_start"), _int32(slot_rank, "slot_rank")
    if (starts.dim() != 1 or slots.dim() != 1 or starts.shape[0] != slots.shape[0] + 1 or ranks.dim() != 2
            or ranks.shape[0] != slices or rows.dim() != 1 or rows.shape[0] < ranks.shape[1]):
        raise ValueError(f"native LoRA: seg_starts {tuple(starts.shape)}, seg_slots {tuple(slots.shape)}, "
                         f"slot_row_start {tuple(rows.shape)}, slot_rank {tuple(ranks.shape)} do not fit together")
    return starts, slots, rows, ranks


def load() -> NativeKernels | None:
    """The native kernels, built on first use; None (see `unavailable_reason()`) where they cannot run."""
    with _lock:
        if "kernels" in _state:
            return _state["kernels"]
        kernels, reason = None, ""
        if os.environ.get("OPENLORA_CPU_KERNELS", "").lower() in ("0", "off", "false", "no"):
            reason = "OPENLORA_CPU_KERNELS=off"
        elif (cc := _compiler()) is None:
            reason = "no C compiler found ($CC, cc, gcc, clang)"
        else:
            try:
                lib = _build(cc)
                try:
                    kernels = NativeKernels(lib)
                except OSError:             # a damaged file in the cache: build again, once
                    lib.unlink(missing_ok=True)
                    kernels = NativeKernels(_build(cc))
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                reason = f"the native CPU kernels did not build or load: {e}"
        if reason:
            log.warning("%s; using the pure-torch CPU kernels", reason)
        _state["kernels"], _state["reason"] = kernels, reason
        return kernels


def unavailable_reason() -> str:
    return _state.get("reason", "")


# ---- the "native" kernel backend: native LoRA (torch_ops' for other dtypes), native attention up to SHORT_QUERY ----

# sequences with at most this many new tokens use the native kernel, longer ones SDPA (bench/bench_cpu_native.py,
# SmolLM2's shapes, 1 thread: native 1.8 vs SDPA 3.1 ms for 8 prompts of 72 tokens, 2.8 vs 3.6 for 4 x 128, about
# equal at 512)
SHORT_QUERY = 256


def backend(nk: NativeKernels):
    """The "native" KernelBackend over the loaded kernels (built once per process)."""
    if _state.get("backend_of") is not nk:
        _state["backend"], _state["backend_of"] = _make_backend(nk), nk
    return _state["backend"]


def _make_backend(nk: NativeKernels):
    from openlora.kernels import reference
    from openlora.kernels.backend import KernelBackend

    def paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, out):
        if not q.shape[0]:
            return
        if not nk.supports(k_cache.dtype, q.shape[-1]):
            reference.paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, out)
            return
        cu = torch.arange(q.shape[0] + 1, dtype=torch.int32)
        nk.paged_attention(q, k_cache, v_cache, cu, seq_lens, block_tables, scale, out)

    def paged_attention(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale):
        if not nk.supports(k_cache.dtype, q.shape[-1]):
            return reference.paged_attention(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale)
        cu = cu_q_lens.tolist()
        n = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
        if all(k <= SHORT_QUERY for k in n):
            return nk.paged_attention(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale)
        # a mixed batch: the short runs natively, the long ones through the reference (SDPA), each as a sub-batch
        out = torch.empty_like(q)
        for native in (True, False):
            seqs = [b for b, k in enumerate(n) if (k <= SHORT_QUERY) == native]
            if not seqs:
                continue
            rows = torch.cat([torch.arange(cu[b], cu[b + 1]) for b in seqs])
            sub_cu = torch.tensor([0, *itertools.accumulate(n[b] for b in seqs)], dtype=torch.int32)
            sel = torch.tensor(seqs, dtype=torch.long)
            attend = nk.paged_attention if native else reference.paged_attention
            out[rows] = attend(q[rows], k_cache, v_cache, sub_cu, seq_lens[sel], block_tables[sel], scale)
        return out

    def store_kv(k, v, k_cache, v_cache, slot_mapping):
        rows_ok = all(t.dtype == torch.float32 and t.stride(-1) == 1 and t.stride(1) == t.shape[2] for t in (k, v))
        if rows_ok and k_cache.dtype in _WEIGHT_KIND and k_cache.is_contiguous() and v_cache.is_contiguous():
            nk.store_kv(k, v, k_cache, v_cache, slot_mapping)
        else:
            reference.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def sgmv_shrink(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank):
        if nk.lora_supports(x, a_pool, buf):
            nk.sgmv_shrink(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)
        else:
            torch_ops.sgmv_shrink(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)

    def sgmv_expand(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset=0,
                    slices=None):
        if nk.lora_supports(y, b_pool, buf):
            widths = reference.expand_slices(buf, b_pool, slot_rank, slot_scale, slices)
            nk.sgmv_expand(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset,
                           widths or (b_pool.shape[1],))
        else:
            torch_ops.sgmv_expand(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale,
                                  y_offset, slices)

    return KernelBackend(
        name="native",
        sgmv_shrink=sgmv_shrink, sgmv_expand=sgmv_expand,
        bgmv_shrink=torch_ops.bgmv_shrink, bgmv_expand=torch_ops.bgmv_expand,
        store_kv=store_kv, paged_attention=paged_attention,
        paged_attention_decode=paged_attention_decode,
        description=(f"native CPU C kernels ({nk.path.name}): paged attention for runs of <= {SHORT_QUERY} new "
                     "tokens read straight through the block tables, register-tiled segment LoRA shrink/expand "
                     "(every segment and slice in one call, long segments split across threads; float32 or "
                     "bfloat16 pools, float32 accumulation), fused float32 "
                     "residual+RMSNorm, RoPE and SiLU*up (for bfloat16 models on bfloat16 values held in float32, "
                     "rounded where torch's bf16 ops round), and oneDNN pre-packed linears (the model says which); "
                     "torch SDPA for longer prefills"),
        decode_bgmv_min_segments=1 << 30,
        pack_cpu_linears=True,
        fused=nk,
    )

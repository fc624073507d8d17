"""Batched multi-adapter LoRA in Triton: SGMV (prefill segments) and BGMV (decode, per-token gather).

What it does: the four LoRA ops of kernels/reference.py (`sgmv_shrink`, `sgmv_expand`, `bgmv_shrink`,
`bgmv_expand`) with the same signatures and semantics, as Triton kernels that run natively on CUDA and under
TRITON_INTERPRET=1 on CPU (exact, slow: for tests).

How the work is laid out:
- Adapter weights are addressed through the slot table (`slot_row_start`, `slot_rank`, `slot_scale`), so the pools
  can live anywhere in device memory and any mix of ranks shares one pool.
- The rank dimension of each program is bounded by its slot's own rank: shrink programs whose rank tile starts at
  or past the slot's rank exit at once, expand programs loop over `range(0, rank, BLOCK_R)`. A rank-8 adapter in a
  batch whose largest rank is 128 therefore reads 8 rows of A/B, not 128 (the last tile is masked, never padded).
- BGMV shrink splits K over several programs (then sums the float32 partials in a second small kernel) when a
  decode batch has too few tokens to fill the GPU.
- A token (BGMV) or a segment (SGMV) with slot -1, or an empty slot (rank 0), launches programs that exit on their
  first loads; SGMV does not even launch tiles for slot -1 segments (the tile map below skips them).
- SGMV grids over "tiles" of BLOCK_M tokens that never straddle two segments. The tile -> segment map is computed
  with a few device-side torch ops (no host sync, fixed grid size cdiv(T, BLOCK_M) + S), and cached for as long as
  the same metadata tensors are passed unmodified (the engine calls 2 x 7 x num_layers LoRA ops per step with the
  same metadata).
- Memory safety: a slot whose rank exceeds buf's R columns (which the semantics exclude) is clamped to R, so a
  metadata bug elsewhere can never make a kernel write past buf.
- Accumulation is float32. Shrink multiplies x by A in their own dtype on tensor cores (fp32 inputs use IEEE fp32,
  not TF32, to match the reference). Expand multiplies the float32 buffer by B: for a 16-bit B the buffer tile is
  rounded to B's dtype first (what PEFT does: lora_A's output is in the model dtype), for a float32 B it stays fp32.

What it does not do: choose between SGMV and BGMV (the engine does: segments for prefill, per-token for decode),
or autotune (the block sizes below are fixed and still to be tuned on a GPU).
"""

from __future__ import annotations

import functools
import os
import weakref

import torch
import triton
import triton.language as tl

# Fixed tile sizes (not yet tuned on a GPU; see docs/kernels.md).
SGMV_BLOCK_M = 32          # tokens per SGMV tile (a tile never straddles two segments)
SGMV_BLOCK_K = 64          # reduction tile over in_features (shrink)
SGMV_BLOCK_N = 64          # output-feature tile (expand)
BGMV_BLOCK_K = 256         # reduction tile over in_features (shrink, one token per program)
BGMV_BLOCK_N = 128         # output-feature tile (expand, one token per program)
BLOCK_R_MIN = 16           # smallest rank tile (tl.dot needs >= 16)
BGMV_TARGET_PROGRAMS_PER_SM = 4    # BGMV shrink splits K until a launch has about this many programs per SM
BGMV_MAX_SPLITS = 16
INTERPRETED_TARGET_PROGRAMS = 16   # the same target without a GPU (small, so that the tests exercise split-K)
SGMV_SHRINK_WARPS = 8      # 4 warps spill registers at BLOCK_M=32, BLOCK_R=64, BLOCK_K=64 (ptxas, sm_90)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # read when the kernels are decorated, as Triton does


def _is16(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _dot_in_f32(*dtypes: torch.dtype) -> bool:
    """Whether tl.dot runs on float32 operands (IEEE, not TF32): any float32 operand, or bf16 when interpreted.

    The Triton interpreter stores bf16 as raw uint16 and its tl.dot multiplies those integers, so interpreted bf16
    operands are upcast first; a bf16 x bf16 product is exact in float32, so the result is the tensor-core one up
    to the float32 accumulation order.
    """
    return any(d == torch.float32 for d in dtypes) or (INTERPRETED and any(d == torch.bfloat16 for d in dtypes))


def _rank_tile(max_rank: int, cap: int) -> int:
    return max(BLOCK_R_MIN, min(cap, triton.next_power_of_2(max(int(max_rank), 1))))


# ------------------------------------------------------------------------------------------------ kernels
# Reductions are written tl.reduce(x, axis, _add_combine / _max_combine) with Triton's own combine functions (what
# tl.sum / tl.max do), and tl.full replaces tl.zeros: tl.sum, tl.max and tl.zeros are @triton.jit helpers decorated
# when triton is first imported, so a process that imported triton before setting TRITON_INTERPRET=1 (`import peft`
# does) could not call them from an interpreted kernel; tl.reduce is a builtin, and the interpreter recognises these
# two combine functions and reduces with numpy (any other combine function runs element by element, ~100x slower).


@triton.jit
def _own_add(a, b):
    return a + b


@triton.jit
def _own_max(a, b):
    return tl.maximum(a, b)


_add_combine = getattr(tl.standard, "_sum_combine", _own_add)
_max_combine = getattr(tl.standard, "_elementwise_max", _own_max)



@triton.jit
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, token_slots_ptr, slot_row_start_ptr, slot_rank_ptr,
    R, K, k_per_split, stride_xt, stride_ar, stride_ot, stride_os,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per (token, rank tile, K split): out[split, t, r0:r0+BLOCK_R] = x[t, ks] @ A[rows, ks].T, masked
    to the slot's rank. With one split `out` is buf itself; with several, a float32 scratch reduced afterwards."""
    t = tl.program_id(0)
    r0 = tl.program_id(1) * BLOCK_R
    split = tl.program_id(2)
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)       # never past buf's R columns
    if r0 >= rank:
        return
    row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < rank
    x_row = x_ptr + t.to(tl.int64) * stride_xt
    a_rows = a_ptr + (row0 + offs_r)[:, None] * stride_ar                  # [BLOCK_R, 1] row pointers
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc = tl.full([BLOCK_R], 0.0, dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_hi
        xv = tl.load(x_row + offs_k, mask=kmask, other=0.0).to(tl.float32)                 # [BLOCK_K]
        av = tl.load(a_rows + offs_k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        acc += tl.reduce(av.to(tl.float32) * xv[None, :], 1, _add_combine)
    out_row = out_ptr + split.to(tl.int64) * stride_os + t.to(tl.int64) * stride_ot
    tl.store(out_row + offs_r, acc.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _bgmv_shrink_reduce_kernel(
    part_ptr, buf_ptr, token_slots_ptr, slot_rank_ptr, R, num_splits, stride_ps, stride_pt, stride_bt,
    BLOCK_R: tl.constexpr,
):
    """One program per (token, rank tile): buf[t, r] = sum over splits of part[split, t, r], masked to the rank."""
    t = tl.program_id(0)
    r0 = tl.program_id(1) * BLOCK_R
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)       # never past buf's R columns
    if r0 >= rank:
        return
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < rank
    acc = tl.full([BLOCK_R], 0.0, dtype=tl.float32)
    for s in range(0, num_splits):
        acc += tl.load(part_ptr + s * stride_ps + t.to(tl.int64) * stride_pt + offs_r, mask=rmask, other=0.0)
    tl.store(buf_ptr + t.to(tl.int64) * stride_bt + offs_r, acc.to(buf_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _bgmv_expand_kernel(
    buf_ptr, b_ptr, y_ptr, token_slots_ptr, slot_row_start_ptr, slot_rank_ptr, slot_scale_ptr,
    R, N, y_offset, stride_bt, stride_br, stride_yt,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (token, output tile): y[t, off + n] += scale * buf[t, :rank] @ B[rows, n]."""
    t = tl.program_id(0)
    n0 = tl.program_id(1) * BLOCK_N
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)       # never past buf's R columns
    if rank <= 0:
        return
    row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    buf_row = buf_ptr + t.to(tl.int64) * stride_bt
    acc = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):                                     # bounded by this slot's rank
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rmask = offs_r < rank
        bv = tl.load(buf_row + offs_r, mask=rmask, other=0.0).to(tl.float32)              # [BLOCK_R]
        wv = tl.load(b_ptr + (row0 + offs_r)[:, None] * stride_br + offs_n[None, :],
                     mask=rmask[:, None] & nmask[None, :], other=0.0)                      # [BLOCK_R, BLOCK_N]
        acc += tl.reduce(wv.to(tl.float32) * bv[:, None], 0, _add_combine)
    scale = tl.load(slot_scale_ptr + slot).to(tl.float32)
    y_ptrs = y_ptr + t.to(tl.int64) * stride_yt + y_offset + offs_n
    yv = tl.load(y_ptrs, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (yv + acc * scale).to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, buf_ptr, seg_starts_ptr, seg_slots_ptr, slot_row_start_ptr, slot_rank_ptr,
    tile_seg_ptr, tile_first_ptr, num_segs,
    R, K, stride_xt, stride_ar, stride_bt,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One program per (token tile of one segment, rank tile): buf[m, r] = x[m] @ A[rows].T on tensor cores."""
    tile = tl.program_id(0)
    r0 = tl.program_id(1) * BLOCK_R
    seg = tl.load(tile_seg_ptr + tile)
    if seg >= num_segs:                                                    # past the last active tile
        return
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)       # never past buf's R columns
    if r0 >= rank:
        return
    row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
    t_end = tl.load(seg_starts_ptr + seg + 1)
    m0 = tl.load(seg_starts_ptr + seg) + (tile - tl.load(tile_first_ptr + seg)) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mmask = offs_m < t_end
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < rank
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xt              # [BLOCK_M, 1]
    a_cols = a_ptr + (row0 + offs_r)[None, :] * stride_ar                  # [1, BLOCK_R]  (A^T view)
    acc = tl.full([BLOCK_M, BLOCK_R], 0.0, dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        xv = tl.load(x_rows + offs_k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        av = tl.load(a_cols + offs_k[:, None], mask=kmask[:, None] & rmask[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(xv.to(tl.float32), av.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(xv, av, acc)
    out = buf_ptr + offs_m.to(tl.int64)[:, None] * stride_bt + offs_r[None, :]
    tl.store(out, acc.to(buf_ptr.dtype.element_ty), mask=mmask[:, None] & rmask[None, :])


@triton.jit
def _sgmv_expand_kernel(
    buf_ptr, b_ptr, y_ptr, seg_starts_ptr, seg_slots_ptr, slot_row_start_ptr, slot_rank_ptr, slot_scale_ptr,
    tile_seg_ptr, tile_first_ptr, num_segs,
    R, N, y_offset, stride_bt, stride_br, stride_yt,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One program per (token tile of one segment, output tile): y[m, off + n] += scale * buf[m, :r] @ B[rows, n]."""
    tile = tl.program_id(0)
    n0 = tl.program_id(1) * BLOCK_N
    seg = tl.load(tile_seg_ptr + tile)
    if seg >= num_segs:
        return
    slot = tl.load(seg_slots_ptr + seg)
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)       # never past buf's R columns
    if rank <= 0:                                                          # empty slot: nothing written
        return
    row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
    t_end = tl.load(seg_starts_ptr + seg + 1)
    m0 = tl.load(seg_starts_ptr + seg) + (tile - tl.load(tile_first_ptr + seg)) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mmask = offs_m < t_end
    offs_n = n0 + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    buf_rows = buf_ptr + offs_m.to(tl.int64)[:, None] * stride_bt          # [BLOCK_M, 1]
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):                                     # bounded by this slot's rank
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rmask = offs_r < rank
        bv = tl.load(buf_rows + offs_r[None, :], mask=mmask[:, None] & rmask[None, :], other=0.0)
        wv = tl.load(b_ptr + (row0 + offs_r)[:, None] * stride_br + offs_n[None, :],
                     mask=rmask[:, None] & nmask[None, :], other=0.0)
        lhs = bv.to(wv.dtype)                  # a 16-bit B rounds the buffer tile to its dtype (as PEFT does)
        if DOT_F32:
            acc = tl.dot(lhs.to(tl.float32), wv.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(lhs, wv, acc)
    scale = tl.load(slot_scale_ptr + slot).to(tl.float32)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_yt + y_offset + offs_n[None, :]
    ymask = mmask[:, None] & nmask[None, :]
    yv = tl.load(y_ptrs, mask=ymask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (yv + acc * scale).to(y_ptr.dtype.element_ty), mask=ymask)


# ------------------------------------------------------------------------------------------------ launchers


def _vec(t: torch.Tensor) -> torch.Tensor:
    """Metadata vectors are indexed as ptr + i: make sure their stride is 1 (a no-op for the engine's tensors)."""
    return t if t.stride(0) == 1 or t.numel() <= 1 else t.contiguous()


def _check_rows(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name} must be a 2-D tensor with unit stride along its last dim, got shape "
                         f"{tuple(t.shape)} strides {t.stride()}")


class _TileMap:
    """Tile -> segment map for SGMV, cached while the same metadata tensor objects are passed in unmodified.

    The key holds weak references to the tensors (a new step's tensors never hit a stale map) and their version
    counters (an in-place write invalidates it; inference tensors have none, so for them only identity counts:
    do not write into metadata tensors that are still in use). While a CUDA graph is being captured the map is
    always rebuilt, so that its computation is part of the graph.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._refs: tuple = ()
        self._value: tuple[torch.Tensor, torch.Tensor, int] | None = None

    @staticmethod
    def _version(t: torch.Tensor) -> int:
        return -1 if t.is_inference() else t._version

    def get(self, seg_starts: torch.Tensor, seg_slots: torch.Tensor, num_tokens: int,
            block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if seg_starts.is_cuda and torch.cuda.is_current_stream_capturing():
            return build_tile_map(seg_starts, seg_slots, num_tokens, block_m)
        tensors = (seg_starts, seg_slots)
        key = tuple((t.data_ptr(), self._version(t), t.shape, t.device) for t in tensors) + (num_tokens, block_m)
        if (self._value is not None and key == self._key
                and all(r() is t for r, t in zip(self._refs, tensors))):
            return self._value
        value = build_tile_map(seg_starts, seg_slots, num_tokens, block_m)
        self._key, self._refs, self._value = key, tuple(weakref.ref(t) for t in tensors), value
        return value


def build_tile_map(seg_starts: torch.Tensor, seg_slots: torch.Tensor, num_tokens: int,
                   block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Map SGMV tiles (BLOCK_M tokens of one segment) to segments, on the device, without a host sync.

    Returns (tile_seg [G] int32, S for tiles past the last one; tile_first [S] int32, the first tile of each
    segment; G = cdiv(T, BLOCK_M) + S, an upper bound on the number of tiles). Segments with no adapter (slot -1)
    get 0 tiles. It does not depend on the ranks, which differ per layer and module (an adapter that does not target
    a module has rank 0 there): the kernels exit on rank 0, and one map serves every LoRA op of a step.
    """
    S = seg_slots.shape[0]
    starts = seg_starts.long()
    lens = (starts[1:] - starts[:-1]).clamp(min=0)                                   # [S]
    slots = seg_slots.long()
    tiles = torch.where(slots >= 0, (lens + block_m - 1) // block_m, torch.zeros_like(lens))
    last = torch.cumsum(tiles, 0)                                                     # [S] inclusive
    grid = triton.cdiv(num_tokens, block_m) + S
    tile_ids = torch.arange(grid, device=seg_starts.device, dtype=last.dtype)
    tile_seg = torch.searchsorted(last, tile_ids, right=True).to(torch.int32)        # [G]
    tile_first = (last - tiles).to(torch.int32)                                       # [S]
    return tile_seg, tile_first, grid


_TILE_MAP = _TileMap()


def sgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """Segmented gather matrix-vector, shrink side (prefill: runs of tokens sharing an adapter).

    Semantics:
        for s in range(len(seg_slots)):
            t0, t1, slot = seg_starts[s], seg_starts[s + 1], seg_slots[s]
            if slot < 0 or slot_rank[slot] == 0: continue          # no adapter: nothing computed or written
            r, o = slot_rank[slot], slot_row_start[slot]
            buf[t0:t1, :r] = x[t0:t1] @ a_pool[o:o + r].T           # accumulated in float32
        # every other element of buf is left untouched
    Shapes: x [T, in], a_pool [P, in], buf [T, R] with R >= every rank used, seg_starts [S + 1], seg_slots [S].
    """
    T, R = buf.shape
    S = seg_slots.shape[0]
    if T == 0 or S == 0 or R == 0:
        return
    for name, t in (("x", x), ("a_pool", a_pool), ("buf", buf)):
        _check_rows(name, t)
    seg_starts, seg_slots, slot_row_start, slot_rank = map(_vec, (seg_starts, seg_slots, slot_row_start, slot_rank))
    tile_seg, tile_first, grid_m = _TILE_MAP.get(seg_starts, seg_slots, T, SGMV_BLOCK_M)
    block_r = _rank_tile(R, 64)
    if x.dtype != a_pool.dtype:
        x, a_pool = x.float(), a_pool.float()   # mixed dtypes: compute in fp32 (a slow path the engine avoids)
    dot_f32 = _dot_in_f32(x.dtype, a_pool.dtype)
    grid = (grid_m, triton.cdiv(R, block_r))
    _sgmv_shrink_kernel[grid](
        x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank, tile_seg, tile_first, S,
        R, x.shape[1], x.stride(0), a_pool.stride(0), buf.stride(0),
        BLOCK_M=SGMV_BLOCK_M, BLOCK_R=block_r, BLOCK_K=SGMV_BLOCK_K, DOT_F32=dot_f32, num_warps=SGMV_SHRINK_WARPS,
    )


def sgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                slot_scale: torch.Tensor, y_offset: int = 0) -> None:
    """Segmented gather matrix-vector, expand side: add the scaled LoRA output into `y` in place.

    Semantics:
        n = b_pool.shape[1]
        for s in range(len(seg_slots)):
            t0, t1, slot = seg_starts[s], seg_starts[s + 1], seg_slots[s]
            if slot < 0 or slot_rank[slot] == 0: continue
            r, o = slot_rank[slot], slot_row_start[slot]
            y[t0:t1, y_offset:y_offset + n] += slot_scale[slot] * (buf[t0:t1, :r] @ b_pool[o:o + r])
        # float32 accumulation, one rounding to y.dtype; y_offset lets fused qkv / gate_up outputs be addressed
    Shapes: buf [T, R], b_pool [P, n], y [T, >= y_offset + n].
    """
    T, R = buf.shape
    S = seg_slots.shape[0]
    N = b_pool.shape[1]
    if T == 0 or S == 0 or R == 0 or N == 0:
        return
    for name, t in (("buf", buf), ("b_pool", b_pool), ("y", y)):
        _check_rows(name, t)
    if y.shape[1] < y_offset + N:
        raise ValueError(f"y has {y.shape[1]} columns, the slice [{y_offset}, {y_offset + N}) does not fit")
    seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale = map(
        _vec, (seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale))
    tile_seg, tile_first, grid_m = _TILE_MAP.get(seg_starts, seg_slots, T, SGMV_BLOCK_M)
    block_r = _rank_tile(R, 32)
    dot_f32 = _dot_in_f32(b_pool.dtype)
    grid = (grid_m, triton.cdiv(N, SGMV_BLOCK_N))
    _sgmv_expand_kernel[grid](
        buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, tile_seg, tile_first, S,
        R, N, int(y_offset), buf.stride(0), b_pool.stride(0), y.stride(0),
        BLOCK_M=SGMV_BLOCK_M, BLOCK_R=block_r, BLOCK_N=SGMV_BLOCK_N, DOT_F32=dot_f32,
    )


def bgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """Batched gather matrix-vector, shrink side (decode: one token per sequence, each its own adapter).

    Semantics:
        for t in range(T):
            slot = token_slots[t]
            if slot < 0 or slot_rank[slot] == 0: continue
            r, o = slot_rank[slot], slot_row_start[slot]
            buf[t, :r] = x[t] @ a_pool[o:o + r].T
        # every other element of buf is left untouched
    Shapes: x [T, in], a_pool [P, in], buf [T, R], token_slots [T] int32.
    """
    T, R = buf.shape
    if T == 0 or R == 0:
        return
    for name, t in (("x", x), ("a_pool", a_pool), ("buf", buf)):
        _check_rows(name, t)
    token_slots, slot_row_start, slot_rank = map(_vec, (token_slots, slot_row_start, slot_rank))
    block_r = _rank_tile(R, 16)
    K = x.shape[1]
    tiles = T * triton.cdiv(R, block_r)
    splits = _k_splits(tiles, K, x.device)
    if splits == 1:
        _bgmv_shrink_kernel[(T, triton.cdiv(R, block_r), 1)](
            x, a_pool, buf, token_slots, slot_row_start, slot_rank,
            R, K, K, x.stride(0), a_pool.stride(0), buf.stride(0), 0,
            BLOCK_R=block_r, BLOCK_K=BGMV_BLOCK_K,
        )
        return
    k_per_split = triton.cdiv(triton.cdiv(K, splits), BGMV_BLOCK_K) * BGMV_BLOCK_K
    splits = triton.cdiv(K, k_per_split)
    part = torch.empty((splits, T, R), dtype=torch.float32, device=x.device)
    _bgmv_shrink_kernel[(T, triton.cdiv(R, block_r), splits)](
        x, a_pool, part, token_slots, slot_row_start, slot_rank,
        R, K, k_per_split, x.stride(0), a_pool.stride(0), part.stride(1), part.stride(0),
        BLOCK_R=block_r, BLOCK_K=BGMV_BLOCK_K,
    )
    _bgmv_shrink_reduce_kernel[(T, triton.cdiv(R, block_r))](
        part, buf, token_slots, slot_rank, R, splits, part.stride(0), part.stride(1), buf.stride(0),
        BLOCK_R=block_r,
    )


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _k_splits(tiles: int, K: int, device: torch.device) -> int:
    """How many programs share one BGMV shrink dot product (split-K): enough that the launch has about
    BGMV_TARGET_PROGRAMS_PER_SM programs per SM when there are few tokens (a batch of 1-32 decode tokens would
    otherwise run on a few SMs); 1 when the tokens alone fill the GPU."""
    if device.type == "cuda":
        target = BGMV_TARGET_PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None
                                                         else torch.cuda.current_device())
    else:
        target = INTERPRETED_TARGET_PROGRAMS          # small: exercises the split path in the interpreted tests
    if tiles >= target:
        return 1
    want = triton.next_power_of_2(triton.cdiv(target, tiles))
    return max(1, min(want, BGMV_MAX_SPLITS, triton.cdiv(K, BGMV_BLOCK_K)))


def bgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                y_offset: int = 0) -> None:
    """Batched gather matrix-vector, expand side.

    Semantics:
        n = b_pool.shape[1]
        for t in range(T):
            slot = token_slots[t]
            if slot < 0 or slot_rank[slot] == 0: continue
            r, o = slot_rank[slot], slot_row_start[slot]
            y[t, y_offset:y_offset + n] += slot_scale[slot] * (buf[t, :r] @ b_pool[o:o + r])
    Shapes: buf [T, R], b_pool [P, n], y [T, >= y_offset + n], token_slots [T] int32.
    """
    T, R = buf.shape
    N = b_pool.shape[1]
    if T == 0 or R == 0 or N == 0:
        return
    for name, t in (("buf", buf), ("b_pool", b_pool), ("y", y)):
        _check_rows(name, t)
    if y.shape[1] < y_offset + N:
        raise ValueError(f"y has {y.shape[1]} columns, the slice [{y_offset}, {y_offset + N}) does not fit")
    token_slots, slot_row_start, slot_rank, slot_scale = map(_vec, (token_slots, slot_row_start, slot_rank, slot_scale))
    block_r = _rank_tile(R, 16)
    grid = (T, triton.cdiv(N, BGMV_BLOCK_N))
    _bgmv_expand_kernel[grid](
        buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale,
        R, N, int(y_offset), buf.stride(0), b_pool.stride(0), y.stride(0),
        BLOCK_R=block_r, BLOCK_N=BGMV_BLOCK_N,
    )

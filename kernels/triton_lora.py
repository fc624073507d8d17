"""Batched multi-adapter LoRA in Triton: SGMV (prefill segments) and BGMV (decode, per-token gather).

What it does: the four LoRA ops of kernels/reference.py (`sgmv_shrink`, `sgmv_expand`, `bgmv_shrink`,
`bgmv_expand`) with the same signatures and semantics, as Triton kernels that run natively on CUDA and under
TRITON_INTERPRET=1 on CPU (exact, slow: for tests).

How the work is laid out (docs/kernels.md has the per-shape arithmetic and the H100 figures):
- Four kernels. Tensor-core (`tl.dot`, fp32 accumulation) kernels `_lora_shrink_kernel` / `_lora_expand_kernel`
  for SGMV and for BGMV with several tokens per program; CUDA-core "GEMV" kernels `_gemv_shrink_kernel` /
  `_gemv_expand_kernel` for BGMV with one token per program (no shared memory, few registers: many programs per
  SM hide the memory latency, which is what a batch of tokens with distinct adapters needs).
- Token blocks. A tl.dot program owns a block of tokens:
  * SGMV: a tile of BLOCK_M tokens of one segment (tiles never straddle two segments; the tile -> segment map is
    computed on the device, see `build_tile_map`). One slot per program.
  * BGMV: `tokens` consecutive tokens (2..16), and the program loops over the *distinct* slots among them (a
    `while` over the tokens not yet done: take the first, select every token of the block with its slot). Each
    adapter's rows are read once per block instead of once per token when the batch groups tokens by adapter (as
    the engine does), and the result is exact for any token order (blocks never share outputs). `tokens` is
    chosen on the host, never from device values: T // number of slots (a lower bound of the average run length),
    a power of two up to 16; when it is 1 (tokens may all have their own adapter) the GEMV kernels run instead.
- Shrink: program (token block, rank tile, K split) streams its slot's A rows (contiguous: rank x K) in
  [BLOCK_R, BLOCK_K] tiles, software-pipelined (num_stages) on the tl.dot kernels. Rank-adaptive: programs whose
  rank tile starts at or past every rank of their block exit at once, and tiles are masked to each slot's rank (a
  rank-8 adapter in a batch whose largest rank is 128 loads 8 rows of A).
- Split-K (every shrink): when token blocks x rank tiles do not give every SM `programs_per_sm` programs, K is
  split over several programs, each streaming a contiguous K chunk. Each split stores a float32 partial into a
  scratch `[splits, T, R]`; the partials are summed (deterministically, in split order) either by the last split
  of each tile to finish ("atomic": a CTA barrier, a per-tile counter `tl.atomic_add` acq_rel at GPU scope, `.cg`
  loads of the partials, the counter reset to 0: one launch, the default) or by a second launch of the same
  kernel ("kernel"). The scratch and the zeroed counters persist per device and are never freed, so CUDA-graph
  captures keep valid pointers; a capture that would need to grow them uses fewer splits instead.
- Expand: a tl.dot program (token block, range of output columns) holds the slot's whole rank in one tile when
  the batch's rank fits BLOCK_R (else it loops over rank chunks), loads its buffer rows once and streams B in
  [rank, BLOCK_N] tiles over its column range (pipelined), with y's next tile loaded one iteration ahead; each y
  tile is read and written once. The GEMV expand program (token, BLOCK_N columns) loops over the slot's own rank
  in BLOCK_R rows; with BLOCK_N = 256 x num_warps each thread owns whole columns and the rank sum stays in
  registers.
- A token (BGMV) or segment (SGMV) with slot -1, or an empty slot (rank 0), is never written; SGMV launches no
  tiles for slot -1 segments.
- Memory safety: a slot whose rank exceeds buf's R columns (which the semantics exclude) is clamped to R.
- Accumulation is float32. Shrink multiplies x by A in their own dtype (fp32 inputs use IEEE fp32, not TF32).
  Expand multiplies the float32 buffer by B: for a 16-bit B the buffer is rounded to B's dtype first (what PEFT
  does: lora_A's output is in the model dtype), for a float32 B it stays fp32. In a BGMV block that holds several
  slots every slot's product goes to its own tokens only, so a NaN/inf in one adapter's weights cannot reach
  another adapter's tokens.
- Slices (a fused linear's targets, kernels/reference.py "Slices"): one launch covers all of them. Shrink programs
  take axis 1 as slice x rank tile (every slice shares x and K); expand programs get per-slice column ranges
  (`_slice_columns`, at most MAX_SLICES slices), so a program never straddles two slices and reads its slice's
  rank / scale rows and buf plane; split-K partials and counters are per slice.
- Launch cost: one launch per op (and per fused linear) by default, no host syncs, no allocations after the first split-K call
  (everything can be captured in a CUDA graph), and plain-Python index arithmetic (triton.cdiv and
  triton.next_power_of_2 cost microseconds per call).

Tunables: the `*_CONFIG` constants below (block sizes, warps, stages, split policy) are the defaults of the
public functions; the internal launchers (`_bgmv_shrink`, `_bgmv_expand`, `_sgmv_shrink`, `_sgmv_expand`) take
configs and overrides (`cfg=`, `gemv_cfg=`, `tokens=`, `splits=`, `gemv=`) as keyword-only arguments, which
bench/tune_lora.py sweeps on a GPU.

What it does not do: choose between SGMV and BGMV (the engine does: segments for prefill, per-token for decode),
or autotune at run time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref

import torch
import triton
import triton.language as tl

from openlora.kernels import reference


@dataclasses.dataclass(frozen=True)
class ShrinkConfig:
    block_m: int            # SGMV: tokens per tile; BGMV: the most tokens one program may take (1 for GEMV)
    block_r: int            # rank tile (a power of two; >= 16 on the tl.dot kernels); capped by buf's R
    block_k: int            # K chunk per loop iteration
    num_warps: int
    num_stages: int
    programs_per_sm: int    # split K until a launch has about this many programs per SM (0: never split)
    max_splits: int
    split_reduce: str = "kernel"    # how split partials are summed: "kernel" (a second, small launch of the same
                                    # kernel) or "atomic" (the last split of each tile, found with a counter: one
                                    # launch, but a fence and an atomic round trip at the end of every program)


@dataclasses.dataclass(frozen=True)
class ExpandConfig:
    block_m: int            # SGMV: tokens per tile; BGMV: the most tokens one program may take (1 for GEMV)
    block_r: int            # rank tile: the whole rank in one tile up to this (tl.dot kernels), else a loop
    block_n: int            # output columns per tile (GEMV: best 256 x num_warps, so rank sums stay in-thread)
    num_warps: int
    num_stages: int
    programs_per_sm: int    # tl.dot kernels: the output columns are cut into ranges (of whole tiles) so that the
                            # launch has about this many programs per SM (0: one tile per program); GEMV: unused


# Defaults of the public functions, chosen with bench/tune_lora.py on an H100 (bf16, Llama-3-8B shapes; see
# docs/kernels.md for the measured figures).
# BGMV with one token per program (tokens may all have their own adapter): FMA "GEMV" kernels.
BGMV_SHRINK_GEMV_CONFIG = ShrinkConfig(block_m=1, block_r=16, block_k=256, num_warps=8, num_stages=1,
                                       programs_per_sm=4, max_splits=16, split_reduce="atomic")
BGMV_EXPAND_GEMV_CONFIG = ExpandConfig(block_m=1, block_r=16, block_n=1024, num_warps=4, num_stages=1,
                                       programs_per_sm=0)
# BGMV with several tokens per program (T // slots >= 2) and SGMV: tensor-core (tl.dot) kernels.
BGMV_SHRINK_CONFIG = ShrinkConfig(block_m=16, block_r=32, block_k=128, num_warps=4, num_stages=3,
                                  programs_per_sm=2, max_splits=16, split_reduce="atomic")
BGMV_EXPAND_CONFIG = ExpandConfig(block_m=16, block_r=128, block_n=128, num_warps=4, num_stages=3,
                                  programs_per_sm=2)
SGMV_SHRINK_CONFIG = ShrinkConfig(block_m=16, block_r=64, block_k=128, num_warps=4, num_stages=3,
                                  programs_per_sm=4, max_splits=16, split_reduce="atomic")
SGMV_EXPAND_CONFIG = ExpandConfig(block_m=16, block_r=128, block_n=128, num_warps=4, num_stages=3,
                                  programs_per_sm=4)

BLOCK_MIN = 16                     # tl.dot needs every dimension >= 16
MAX_SLICES = 3                     # slices per expand launch (a fused qkv projection has 3)
F32_BLOCK_N_MAX = 64               # expand output tile with float32 (IEEE) dots: wider ones spill on sm_90
INTERPRETED_TARGET_PROGRAMS = 16   # the split target without a GPU (small, so that the tests exercise split-K)
SCRATCH_MIN_COUNTERS = 1 << 14     # split-K tile counters allocated at first use (64 KiB of int32)
SCRATCH_MIN_PARTIALS = 1 << 21     # split-K float32 partials allocated at first use on a GPU (8 MiB)

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
def _pick(v, ar, i):
    """v[i] of a 1-D tensor, as a scalar."""
    return tl.reduce(tl.where(ar == i, v, 0), 0, _add_combine)


@triton.jit
def _first_todo(todo, ar, BLOCK_T: tl.constexpr):
    """The smallest index i with todo[i] != 0 (todo must have one)."""
    return BLOCK_T - 1 - tl.reduce(tl.where(todo != 0, BLOCK_T - 1 - ar, -1), 0, _max_combine)


@triton.jit
def _block_slots(pid_m, slots_ptr, slot_rank_ptr, tokens_per_prog, T, R, ar):
    """A several-token BGMV program's tokens, their slots (-1 past T or without adapter), the slots clamped to a
    valid index, and their ranks (0 without adapter, never past buf's R columns)."""
    offs_t = pid_m * tokens_per_prog + ar
    slots = tl.load(slots_ptr + offs_t, mask=(ar < tokens_per_prog) & (offs_t < T), other=-1)
    safe = tl.maximum(slots, 0)
    ranks = tl.minimum(tl.load(slot_rank_ptr + safe, mask=slots >= 0, other=0), R)
    return offs_t, slots, safe, ranks


@triton.jit
def _shrink_tile(x_ptr, a_ptr, out_ptr, offs_t, sel, row0, rank, r0, k_lo, k_hi, stride_xt, stride_ar, stride_ot,
                 BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    """out[t, r0 + r] = sum over k in [k_lo, k_hi) of A[row0 + r0 + r, k] * x[t, k], for the tokens `sel` and
    r0 + r < rank: one slot's rows against the block's tokens of that slot, [BLOCK_R, BLOCK_K] x [BLOCK_K, BLOCK_T]."""
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < rank
    a_rows = a_ptr + (row0 + offs_r).to(tl.int64)[:, None] * stride_ar                  # [BLOCK_R, 1]
    x_cols = x_ptr + offs_t.to(tl.int64)[None, :] * stride_xt                            # [1, BLOCK_T]
    acc = tl.full([BLOCK_R, BLOCK_T], 0.0, dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_hi
        av = tl.load(a_rows + offs_k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)    # [BR, BK]
        xv = tl.load(x_cols + offs_k[:, None], mask=kmask[:, None] & sel[None, :], other=0.0)      # [BK, BT]
        if DOT_F32:
            acc = tl.dot(av.to(tl.float32), xv.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(av, xv, acc)
    out = out_ptr + offs_t.to(tl.int64)[None, :] * stride_ot + offs_r[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & sel[None, :])


@triton.jit
def _sum_partials(part_ptr, buf_ptr, offs_t, offs_r, wmask, num_splits, R, stride_ps, stride_bt):
    """buf[t, r] = sum over splits of part[split, t, r] where wmask (partials read from L2: `.cg`)."""
    part_tile = part_ptr + offs_t.to(tl.int64)[None, :] * R + offs_r[:, None]
    acc = tl.load(part_tile, mask=wmask, other=0.0, cache_modifier=".cg")
    for s in range(1, num_splits):
        acc += tl.load(part_tile + s * stride_ps, mask=wmask, other=0.0, cache_modifier=".cg")
    tl.store(buf_ptr + offs_t.to(tl.int64)[None, :] * stride_bt + offs_r[:, None], acc.to(buf_ptr.dtype.element_ty),
             mask=wmask)


@triton.jit
def _lora_shrink_kernel(
    x_ptr, a_ptr, buf_ptr, part_ptr, lock_ptr, slots_ptr, seg_starts_ptr, tile_seg_ptr, tile_first_ptr,
    slot_row_start_ptr, slot_rank_ptr,
    num_segs, T, R, K, k_per_split, num_splits, tokens_per_prog, rank_tiles, stride_xt, stride_as, stride_ar,
    stride_bs, stride_bt, stride_rs, stride_ps,
    SEGMENTED: tl.constexpr, MULTI: tl.constexpr, MODE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One program per (token block, slice x rank tile, K split): buf[s, t, r] = x[t] @ A[s, rows(slot(t)) + r].T.

    SEGMENTED: the block is a tile of one segment (slots_ptr = seg_slots); else (slots_ptr = token_slots) one
    token, or with MULTI `tokens_per_prog` consecutive tokens handled one distinct slot at a time.
    MODE 0: no split, results into buf. 1: partials into part[split, t, r] (a MODE 2 launch of the same grid
    without the split axis sums them into buf). 3: partials, and the last split of each tile to finish (a counter
    per tile) sums them: one launch. Slices (a fused linear's targets): axis 1 is slice * rank_tiles + rank tile;
    the slice picks A (stride_as), the rank table (stride_rs), buf (stride_bs) and its partials ([split, S, T, R])."""
    pid_m = tl.program_id(0)
    slc = tl.program_id(1) // rank_tiles
    r0 = (tl.program_id(1) - slc * rank_tiles) * BLOCK_R
    split = tl.program_id(2)
    a_ptr += slc.to(tl.int64) * stride_as
    buf_ptr += slc.to(tl.int64) * stride_bs
    slot_rank_ptr += slc * stride_rs
    part_ptr += slc.to(tl.int64) * T * R
    ar = tl.arange(0, BLOCK_T)
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    if MODE == 0:
        out_ptr = buf_ptr
        stride_ot = stride_bt
    else:
        out_ptr = part_ptr + split.to(tl.int64) * stride_ps
        stride_ot = R
    if not MULTI:                                                    # one slot: a segment's tile, or one token
        if SEGMENTED:
            seg = tl.load(tile_seg_ptr + pid_m)
            if seg >= num_segs:                                      # past the last active tile
                return
            slot = tl.load(slots_ptr + seg)
            t_end = tl.load(seg_starts_ptr + seg + 1)
            m0 = tl.load(seg_starts_ptr + seg) + (pid_m - tl.load(tile_first_ptr + seg)) * BLOCK_T
        else:
            slot = tl.load(slots_ptr + pid_m)
            if slot < 0:
                return
            t_end = pid_m + 1
            m0 = pid_m
        rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)          # never past buf's R columns
        if rank <= r0:
            return
        row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
        offs_t = m0 + ar
        active = offs_t < t_end
        ranks = tl.where(active, rank, 0)
        if MODE != 2:
            _shrink_tile(x_ptr, a_ptr, out_ptr, offs_t, active, row0, rank, r0, k_lo, k_hi, stride_xt, stride_ar,
                         stride_ot, BLOCK_T, BLOCK_R, BLOCK_K, DOT_F32)
    else:
        offs_t, slots, safe, ranks = _block_slots(pid_m, slots_ptr, slot_rank_ptr, tokens_per_prog, T, R, ar)
        active = ranks > r0
        todo = active.to(tl.int32)
        left = tl.reduce(todo, 0, _add_combine)
        if left == 0:
            return
        if MODE != 2:
            rows = tl.load(slot_row_start_ptr + safe, mask=active, other=0)
            while left > 0:                                          # one iteration per distinct slot
                first = _first_todo(todo, ar, BLOCK_T)
                slot = _pick(slots, ar, first)
                sel = (slots == slot) & (todo != 0)
                _shrink_tile(x_ptr, a_ptr, out_ptr, offs_t, sel, _pick(rows, ar, first).to(tl.int64),
                             _pick(ranks, ar, first), r0, k_lo, k_hi, stride_xt, stride_ar, stride_ot,
                             BLOCK_T, BLOCK_R, BLOCK_K, DOT_F32)
                todo = tl.where(sel, 0, todo)
                left = tl.reduce(todo, 0, _add_combine)
    if MODE >= 2:
        offs_r = r0 + tl.arange(0, BLOCK_R)
        wmask = (offs_r[:, None] < ranks[None, :]) & active[None, :]
        if MODE == 2:
            _sum_partials(part_ptr, buf_ptr, offs_t, offs_r, wmask, num_splits, R, stride_ps, stride_bt)
        else:
            # every split of this tile has stored its partial: the last one to get here reduces them
            tl.debug_barrier()
            lock = lock_ptr + pid_m * tl.num_programs(1) + tl.program_id(1)
            count = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu")
            if count == num_splits - 1:
                _sum_partials(part_ptr, buf_ptr, offs_t, offs_r, wmask, num_splits, R, stride_ps, stride_bt)
                tl.atomic_xchg(lock, 0)                              # ready for the next launch


@triton.jit
def _slice_columns(pid, n_per_prog, g1, g2, c1, c2, N, b_ptr, y_offset, buf_ptr, slot_rank_ptr, slot_scale_ptr,
                   stride_bs, stride_rs, stride_ss):
    """Expand over up to three slices side by side in b_pool's and y's columns: slice 0 is columns [0, c1), 1 is
    [c1, c2), 2 is [c2, N); programs [0, g1) cover slice 0 in chunks of n_per_prog columns, [g1, g2) slice 1, the
    rest slice 2. Returns the program's column range within its slice, and the pointers / y offset moved to it."""
    slc = (pid >= g1).to(tl.int32) + (pid >= g2).to(tl.int32)
    first = tl.where(slc == 0, 0, tl.where(slc == 1, g1, g2))
    col0 = tl.where(slc == 0, 0, tl.where(slc == 1, c1, c2))
    col1 = tl.where(slc == 0, c1, tl.where(slc == 1, c2, N))
    n_lo = (pid - first) * n_per_prog
    n_hi = tl.minimum(n_lo + n_per_prog, col1 - col0)
    return (n_lo, n_hi, b_ptr + col0, y_offset + col0, buf_ptr + slc.to(tl.int64) * stride_bs,
            slot_rank_ptr + slc * stride_rs, slot_scale_ptr + slc * stride_ss)


@triton.jit
def _expand_rows(buf_ptr, b_ptr, y_ptr, offs_t, sel, row0, rank, scale, n_lo, n_hi, y_offset, stride_bt, stride_br,
                 stride_yt, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                 FULL_R: tl.constexpr, DOT_F32: tl.constexpr):
    """y[t, off + n] += scale * buf[t, :rank] @ B[row0:row0 + rank, n] for the tokens `sel` and n in [n_lo, n_hi):
    one slot, streaming its B rows in [BLOCK_R, BLOCK_N] tiles (FULL_R: the whole rank in one tile, loaded once per
    N tile; the loop over N is then the pipelined one). Each N tile of y is read and written once."""
    buf_rows = buf_ptr + offs_t.to(tl.int64)[:, None] * stride_bt                      # [BLOCK_T, 1]
    y_rows = y_ptr + offs_t.to(tl.int64)[:, None] * stride_yt + y_offset
    ar_r = tl.arange(0, BLOCK_R)
    if FULL_R:
        rmask = ar_r < rank
        bv = tl.load(buf_rows + ar_r[None, :], mask=sel[:, None] & rmask[None, :], other=0.0)        # [BT, BR]
        lhs = bv.to(b_ptr.dtype.element_ty)    # a 16-bit B rounds the buffer tile to its dtype (as PEFT does)
        if DOT_F32:
            lhs = lhs.to(tl.float32)
        w_rows = b_ptr + (row0 + ar_r).to(tl.int64)[:, None] * stride_br                    # [BLOCK_R, 1]
        offs_n = n_lo + tl.arange(0, BLOCK_N)
        yv = tl.load(y_rows + offs_n[None, :], mask=sel[:, None] & (offs_n < n_hi)[None, :], other=0.0)
        for n0 in range(n_lo, n_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < n_hi
            wv = tl.load(w_rows + offs_n[None, :], mask=rmask[:, None] & nmask[None, :], other=0.0)  # [BR, BN]
            nxt = offs_n + BLOCK_N                       # the next tile of y, loaded one iteration ahead
            y_next = tl.load(y_rows + nxt[None, :], mask=sel[:, None] & (nxt < n_hi)[None, :], other=0.0)
            if DOT_F32:
                part = tl.dot(lhs, wv.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(lhs, wv)
            tl.store(y_rows + offs_n[None, :], (yv.to(tl.float32) + part * scale).to(y_ptr.dtype.element_ty),
                     mask=sel[:, None] & nmask[None, :])
            yv = y_next
    else:
        for n0 in range(n_lo, n_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < n_hi
            part = tl.full([BLOCK_T, BLOCK_N], 0.0, dtype=tl.float32)
            for r0 in range(0, rank, BLOCK_R):                                         # bounded by this slot's rank
                offs_r = r0 + ar_r
                rmask = offs_r < rank
                bv = tl.load(buf_rows + offs_r[None, :], mask=sel[:, None] & rmask[None, :], other=0.0)
                wv = tl.load(b_ptr + (row0 + offs_r).to(tl.int64)[:, None] * stride_br + offs_n[None, :],
                             mask=rmask[:, None] & nmask[None, :], other=0.0)
                lhs = bv.to(wv.dtype)
                if DOT_F32:
                    part = tl.dot(lhs.to(tl.float32), wv.to(tl.float32), part, input_precision="ieee")
                else:
                    part = tl.dot(lhs, wv, part)
            ymask = sel[:, None] & nmask[None, :]
            yv = tl.load(y_rows + offs_n[None, :], mask=ymask, other=0.0).to(tl.float32)
            tl.store(y_rows + offs_n[None, :], (yv + part * scale).to(y_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def _lora_expand_kernel(
    buf_ptr, b_ptr, y_ptr, slots_ptr, seg_starts_ptr, tile_seg_ptr, tile_first_ptr,
    slot_row_start_ptr, slot_rank_ptr, slot_scale_ptr,
    num_segs, T, R, N, y_offset, tokens_per_prog, n_per_prog, g1, g2, c1, c2, stride_bs, stride_bt, stride_br,
    stride_yt, stride_rs, stride_ss,
    SEGMENTED: tl.constexpr, MULTI: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, FULL_R: tl.constexpr, DOT_F32: tl.constexpr,
):
    """One program per (token block, range of n_per_prog output columns): y[t, off + n] += scale(slot(t)) *
    buf[t, :r] @ B[rows(slot(t)), n]. Blocks as in the shrink kernel; each slot of a block updates its own tokens'
    rows of y (so a NaN/inf in one adapter's weights cannot reach another adapter's tokens). Slices: see
    `_slice_columns`; each program's column range lies inside one slice."""
    pid_m = tl.program_id(0)
    n_lo, n_hi, b_ptr, y_offset, buf_ptr, slot_rank_ptr, slot_scale_ptr = _slice_columns(
        tl.program_id(1), n_per_prog, g1, g2, c1, c2, N, b_ptr, y_offset, buf_ptr, slot_rank_ptr, slot_scale_ptr,
        stride_bs, stride_rs, stride_ss)
    if n_lo >= n_hi:
        return
    ar = tl.arange(0, BLOCK_T)
    if not MULTI:                                                    # one slot: a segment's tile, or one token
        if SEGMENTED:
            seg = tl.load(tile_seg_ptr + pid_m)
            if seg >= num_segs:
                return
            slot = tl.load(slots_ptr + seg)
            t_end = tl.load(seg_starts_ptr + seg + 1)
            m0 = tl.load(seg_starts_ptr + seg) + (pid_m - tl.load(tile_first_ptr + seg)) * BLOCK_T
        else:
            slot = tl.load(slots_ptr + pid_m)
            if slot < 0:
                return
            t_end = pid_m + 1
            m0 = pid_m
        rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)          # never past buf's R columns
        if rank <= 0:                                                # empty slot: nothing written
            return
        row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
        offs_t = m0 + ar
        _expand_rows(buf_ptr, b_ptr, y_ptr, offs_t, offs_t < t_end, row0, rank,
                     tl.load(slot_scale_ptr + slot).to(tl.float32), n_lo, n_hi, y_offset, stride_bt, stride_br,
                     stride_yt, BLOCK_T, BLOCK_R, BLOCK_N, FULL_R, DOT_F32)
    else:
        offs_t, slots, safe, ranks = _block_slots(pid_m, slots_ptr, slot_rank_ptr, tokens_per_prog, T, R, ar)
        active = ranks > 0
        todo = active.to(tl.int32)
        left = tl.reduce(todo, 0, _add_combine)
        if left == 0:
            return
        rows = tl.load(slot_row_start_ptr + safe, mask=active, other=0)
        scales = tl.load(slot_scale_ptr + safe, mask=active, other=0.0).to(tl.float32)
        while left > 0:                                              # one iteration per distinct slot
            first = _first_todo(todo, ar, BLOCK_T)
            slot = _pick(slots, ar, first)
            sel = (slots == slot) & (todo != 0)
            _expand_rows(buf_ptr, b_ptr, y_ptr, offs_t, sel, _pick(rows, ar, first).to(tl.int64),
                         _pick(ranks, ar, first), tl.reduce(tl.where(ar == first, scales, 0.0), 0, _add_combine),
                         n_lo, n_hi, y_offset, stride_bt, stride_br, stride_yt, BLOCK_T, BLOCK_R, BLOCK_N, FULL_R,
                         DOT_F32)
            todo = tl.where(sel, 0, todo)
            left = tl.reduce(todo, 0, _add_combine)


@triton.jit
def _gemv_shrink_kernel(
    x_ptr, a_ptr, buf_ptr, part_ptr, lock_ptr, token_slots_ptr, slot_row_start_ptr, slot_rank_ptr,
    T, R, K, k_per_split, num_splits, rank_tiles, stride_xt, stride_as, stride_ar, stride_bs, stride_bt, stride_rs,
    stride_ps,
    MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """BGMV shrink, one token per program (t, rank tile, K split), on CUDA cores: a [BLOCK_R, BLOCK_K] tile of the
    slot's A rows times x[t] accumulates elementwise in float32 registers and is summed over K once at the end (no
    shared memory: many programs per SM hide the memory latency). MODE and slices as in _lora_shrink_kernel."""
    t = tl.program_id(0)
    slc = tl.program_id(1) // rank_tiles
    r0 = (tl.program_id(1) - slc * rank_tiles) * BLOCK_R
    split = tl.program_id(2)
    a_ptr += slc.to(tl.int64) * stride_as
    buf_ptr += slc.to(tl.int64) * stride_bs
    slot_rank_ptr += slc * stride_rs
    part_ptr += slc.to(tl.int64) * T * R
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)              # never past buf's R columns
    if rank <= r0:
        return
    offs_r = r0 + tl.arange(0, BLOCK_R)
    rmask = offs_r < rank
    part_row = part_ptr + t.to(tl.int64) * R + offs_r
    buf_row = buf_ptr + t.to(tl.int64) * stride_bt + offs_r
    if MODE != 2:
        row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
        k_lo = split * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        x_row = x_ptr + t.to(tl.int64) * stride_xt
        a_rows = a_ptr + (row0 + offs_r).to(tl.int64)[:, None] * stride_ar              # [BLOCK_R, 1]
        acc = tl.full([BLOCK_R, BLOCK_K], 0.0, dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < k_hi
            xv = tl.load(x_row + offs_k, mask=kmask, other=0.0).to(tl.float32)                        # [BK]
            av = tl.load(a_rows + offs_k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)     # [BR, BK]
            acc += av.to(tl.float32) * xv[None, :]
        res = tl.reduce(acc, 1, _add_combine)                                              # [BLOCK_R]
        if MODE == 0:
            tl.store(buf_row, res.to(buf_ptr.dtype.element_ty), mask=rmask)
        else:
            tl.store(part_row + split.to(tl.int64) * stride_ps, res, mask=rmask)
    if MODE >= 2:
        last = True
        if MODE == 3:
            tl.debug_barrier()
            lock = lock_ptr + t * tl.num_programs(1) + tl.program_id(1)
            last = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == num_splits - 1
        if last:                                                     # sum the splits
            tot = tl.load(part_row, mask=rmask, other=0.0, cache_modifier=".cg")
            for s in range(1, num_splits):
                tot += tl.load(part_row + s * stride_ps, mask=rmask, other=0.0, cache_modifier=".cg")
            tl.store(buf_row, tot.to(buf_ptr.dtype.element_ty), mask=rmask)
            if MODE == 3:
                tl.atomic_xchg(lock, 0)


@triton.jit
def _gemv_expand_kernel(
    buf_ptr, b_ptr, y_ptr, token_slots_ptr, slot_row_start_ptr, slot_rank_ptr, slot_scale_ptr,
    R, N, y_offset, g1, g2, c1, c2, stride_bs, stride_bt, stride_br, stride_yt, stride_rs, stride_ss,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_BUF: tl.constexpr,
):
    """BGMV expand, one token per program (t, output tile), on CUDA cores: [BLOCK_R, BLOCK_N] tiles of the slot's
    B rows; with BLOCK_N = 256 x num_warps every thread owns whole columns, so the sum over the rank stays in
    registers. y's tile is loaded before the weights (it does not depend on the slot). Slices: `_slice_columns`
    with one BLOCK_N tile per program."""
    t = tl.program_id(0)
    n_lo, n_hi, b_ptr, y_offset, buf_ptr, slot_rank_ptr, slot_scale_ptr = _slice_columns(
        tl.program_id(1), BLOCK_N, g1, g2, c1, c2, N, b_ptr, y_offset, buf_ptr, slot_rank_ptr, slot_scale_ptr,
        stride_bs, stride_rs, stride_ss)
    offs_n = n_lo + tl.arange(0, BLOCK_N)
    nmask = offs_n < n_hi
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    y_ptrs = y_ptr + t.to(tl.int64) * stride_yt + y_offset + offs_n
    yv = tl.load(y_ptrs, mask=nmask, other=0.0)
    rank = tl.minimum(tl.load(slot_rank_ptr + slot), R)              # never past buf's R columns
    if rank <= 0:
        return
    row0 = tl.load(slot_row_start_ptr + slot).to(tl.int64)
    buf_row = buf_ptr + t.to(tl.int64) * stride_bt
    acc = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):                                # bounded by this slot's rank
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rmask = offs_r < rank
        bv = tl.load(buf_row + offs_r, mask=rmask, other=0.0)
        if ROUND_BUF:
            bv = bv.to(b_ptr.dtype.element_ty)     # a 16-bit B rounds the buffer to its dtype (as PEFT does)
        wv = tl.load(b_ptr + (row0 + offs_r).to(tl.int64)[:, None] * stride_br + offs_n[None, :],
                     mask=rmask[:, None] & nmask[None, :], other=0.0)                    # [BLOCK_R, BLOCK_N]
        acc += tl.reduce(wv.to(tl.float32) * bv.to(tl.float32)[:, None], 0, _add_combine)
    scale = tl.load(slot_scale_ptr + slot).to(tl.float32)
    tl.store(y_ptrs, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=nmask)


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
    do not write into metadata tensors that are still in use). One entry per tile height (shrink and expand may
    use different ones). While a CUDA graph is being captured the map is always rebuilt, so that its computation
    is part of the graph.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}

    @staticmethod
    def _version(t: torch.Tensor) -> int:
        return -1 if t.is_inference() else t._version

    def get(self, seg_starts: torch.Tensor, seg_slots: torch.Tensor, num_tokens: int,
            block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if seg_starts.is_cuda and torch.cuda.is_current_stream_capturing():
            return build_tile_map(seg_starts, seg_slots, num_tokens, block_m)
        tensors = (seg_starts, seg_slots)
        key = tuple((t.data_ptr(), self._version(t), t.shape, t.device) for t in tensors) + (num_tokens,)
        entry = self._entries.get(block_m)
        if entry is not None and entry[0] == key and all(r() is t for r, t in zip(entry[1], tensors)):
            return entry[2]
        value = build_tile_map(seg_starts, seg_slots, num_tokens, block_m)
        self._entries[block_m] = (key, tuple(weakref.ref(t) for t in tensors), value)
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
    grid = _cdiv(num_tokens, block_m) + S
    tile_ids = torch.arange(grid, device=seg_starts.device, dtype=last.dtype)
    tile_seg = torch.searchsorted(last, tile_ids, right=True).to(torch.int32)        # [G]
    tile_first = (last - tiles).to(torch.int32)                                       # [S]
    return tile_seg, tile_first, grid


_TILE_MAP = _TileMap()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The next power of two >= n (plain Python: triton.cdiv / next_power_of_2 cost microseconds per call)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device, per_sm: int) -> int:
    if device.type == "cuda":
        return per_sm * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETED_TARGET_PROGRAMS          # small: exercises the split path in the interpreted tests


def _k_splits(tiles: int, K: int, cfg: ShrinkConfig, device: torch.device) -> int:
    """How many programs share one shrink dot product (split-K): enough that the launch has about
    cfg.programs_per_sm programs per SM; 1 when the token blocks x rank tiles alone fill the GPU."""
    if cfg.programs_per_sm <= 0:
        return 1
    target = _target_programs(device, cfg.programs_per_sm)
    if tiles >= target:
        return 1
    return max(1, min(_cdiv(target, tiles), cfg.max_splits, _cdiv(K, cfg.block_k)))


def _split_k(tiles: int, K: int, cfg: ShrinkConfig, device: torch.device, splits: int | None) -> tuple[int, int]:
    """(splits, K per split, a multiple of block_k) with every split non-empty."""
    if splits is None:
        splits = _k_splits(tiles, K, cfg, device)
    splits = max(1, min(int(splits), _cdiv(K, cfg.block_k)))
    if splits == 1:
        return 1, K
    k_per_split = _cdiv(_cdiv(K, splits), cfg.block_k) * cfg.block_k
    return _cdiv(K, k_per_split), k_per_split


def _bgmv_tokens(T: int, num_slots: int, cap: int) -> int:
    """Tokens per BGMV program: T // num_slots (every slot of the table used equally often: a lower bound of the
    average number of tokens per adapter), as a power of two, at most `cap`; 1 when tokens may all differ."""
    share = T // max(num_slots, 1)
    if cap <= 1 or share < 2:
        return 1
    return min(cap, 1 << (share.bit_length() - 1))


# Split-K scratch per device: float32 partials and int32 tile counters that every launch leaves at 0. Grown on
# demand outside CUDA-graph captures; the old tensors are kept alive (a graph captured with them still uses them).
# Split-K launches of one device therefore must not run concurrently on several streams (the engine uses one).
_SCRATCH: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []


def _split_scratch(device: torch.device, part_numel: int, lock_numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, counters) for split-K. While a CUDA graph is being captured they are never grown (a zero-fill
    captured in a graph would not run before the eager launches that follow): the caller then uses fewer splits."""
    key = (device.type, device.index)
    cur = _SCRATCH.get(key)
    if cur is not None and cur[0].numel() >= part_numel and cur[1].numel() >= lock_numel:
        return cur
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        if cur is not None:
            return cur
        return (torch.empty(0, dtype=torch.float32, device=device),   # no scratch yet: the caller does not split
                torch.empty(0, dtype=torch.int32, device=device))
    part_n = max(part_numel, SCRATCH_MIN_PARTIALS if device.type == "cuda" else 0)
    lock_n = max(lock_numel, SCRATCH_MIN_COUNTERS)
    if cur is not None:
        part_n, lock_n = max(part_n, 2 * cur[0].numel()), max(lock_n, 2 * cur[1].numel())
        _RETIRED.append(cur)
    new = (torch.empty(part_n, dtype=torch.float32, device=device),
           torch.zeros(lock_n, dtype=torch.int32, device=device))
    _SCRATCH[key] = new
    return new


def _scratch_for(device, splits: int, k_per_split: int, K: int, block_k: int, per_split: int, tiles: int):
    """(splits, k_per_split, part, lock): the scratch for `splits`, or fewer splits if a capture cannot grow it."""
    part, lock = _split_scratch(device, splits * per_split, tiles)
    if part.numel() >= splits * per_split and lock.numel() >= tiles:
        return splits, k_per_split, part, lock
    fit = part.numel() // per_split if lock.numel() >= tiles else 1
    if fit >= 2:
        k_per_split = _cdiv(_cdiv(K, fit), block_k) * block_k
        splits = _cdiv(K, k_per_split)
        if splits <= fit:
            return splits, k_per_split, part, lock
    return 1, K, part, lock


def _split_mode(cfg: ShrinkConfig, splits: int) -> int:
    if splits == 1:
        return 0
    if cfg.split_reduce not in ("kernel", "atomic"):
        raise ValueError(f"split_reduce {cfg.split_reduce!r}: allowed are 'kernel', 'atomic'")
    return 3 if cfg.split_reduce == "atomic" else 1


def _launch_shrink(x, a_pool, buf, slots, seg_starts, tile_seg, tile_first, num_segs, grid_m, tokens, block_t,
                   slot_row_start, slot_rank, cfg: ShrinkConfig, splits: int | None, segmented: bool) -> None:
    """a_pool [S, P, in], buf [S, T, R], slot_rank [S, slots] (a one-slice call has S = 1)."""
    S, T, R = buf.shape
    K = x.shape[1]
    if x.dtype != a_pool.dtype:
        x, a_pool = x.float(), a_pool.float()   # mixed dtypes: compute in fp32 (a slow path the engine avoids)
    block_r = max(BLOCK_MIN, min(cfg.block_r, _pow2(R)))
    grid_r = _cdiv(R, block_r)
    tiles = grid_m * grid_r * S
    splits, k_per_split = _split_k(tiles, K, cfg, x.device, splits)
    part = lock = buf                                               # unused without split
    if splits > 1:
        splits, k_per_split, part, lock = _scratch_for(x.device, splits, k_per_split, K, cfg.block_k, S * T * R,
                                                       tiles)
    mode = _split_mode(cfg, splits)
    args = (x, a_pool, buf, part, lock, slots, seg_starts, tile_seg, tile_first, slot_row_start, slot_rank,
            num_segs, T, R, K, k_per_split, splits, tokens, grid_r, x.stride(0), a_pool.stride(0), a_pool.stride(1),
            buf.stride(0), buf.stride(1), slot_rank.stride(0), S * T * R)
    meta = dict(SEGMENTED=segmented, MULTI=not segmented and tokens > 1, BLOCK_T=block_t, BLOCK_R=block_r,
                BLOCK_K=cfg.block_k, DOT_F32=_dot_in_f32(x.dtype, a_pool.dtype), num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)
    _lora_shrink_kernel[(grid_m, grid_r * S, splits)](*args, MODE=mode, **meta)
    if mode == 1:
        _lora_shrink_kernel[(grid_m, grid_r * S, 1)](*args, MODE=2, **meta)


def _slice_grid(widths: tuple[int, ...], cols_per_prog: int) -> tuple[int, int, int, int, int]:
    """(g1, g2, c1, c2, programs) for `_slice_columns`: programs per slice, cumulated, and the slices' first
    columns; a slice of width 0 gets no program."""
    w = tuple(widths) + (0,) * (3 - len(widths))
    k = [_cdiv(n, cols_per_prog) for n in w]
    return k[0], k[0] + k[1], w[0], w[0] + w[1], k[0] + k[1] + k[2]


def _launch_expand(buf, b_pool, y, slots, seg_starts, tile_seg, tile_first, num_segs, grid_m, tokens, block_t,
                   slot_row_start, slot_rank, slot_scale, y_offset, widths, cfg: ExpandConfig,
                   segmented: bool) -> None:
    """buf [S, T, R], b_pool [P, sum(widths)], slot_rank / slot_scale [S, slots], S = len(widths) <= 3."""
    S, T, R = buf.shape
    N = b_pool.shape[1]
    full = _pow2(R) <= cfg.block_r
    block_r = max(BLOCK_MIN, _pow2(R) if full else cfg.block_r)
    dot_f32 = _dot_in_f32(b_pool.dtype)
    block_n = min(cfg.block_n, F32_BLOCK_N_MAX) if dot_f32 else cfg.block_n
    tiles_n = sum(_cdiv(n, block_n) for n in widths)
    chunks = tiles_n
    if cfg.programs_per_sm > 0:
        chunks = max(1, min(tiles_n, _cdiv(_target_programs(buf.device, cfg.programs_per_sm), grid_m)))
    n_per_prog = _cdiv(tiles_n, chunks) * block_n
    g1, g2, c1, c2, programs = _slice_grid(widths, n_per_prog)
    _lora_expand_kernel[(grid_m, programs)](
        buf, b_pool, y, slots, seg_starts, tile_seg, tile_first, slot_row_start, slot_rank, slot_scale,
        num_segs, T, R, N, int(y_offset), tokens, n_per_prog, g1, g2, c1, c2, buf.stride(0), buf.stride(1),
        b_pool.stride(0), y.stride(0), slot_rank.stride(0), slot_scale.stride(0),
        SEGMENTED=segmented, MULTI=not segmented and tokens > 1, BLOCK_T=block_t, BLOCK_R=block_r,
        BLOCK_N=block_n, FULL_R=full, DOT_F32=dot_f32, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _launch_gemv_shrink(x, a_pool, buf, token_slots, slot_row_start, slot_rank, cfg: ShrinkConfig,
                        splits: int | None) -> None:
    S, T, R = buf.shape
    K = x.shape[1]
    block_r = min(cfg.block_r, _pow2(R))
    grid_r = _cdiv(R, block_r)
    tiles = T * grid_r * S
    splits, k_per_split = _split_k(tiles, K, cfg, x.device, splits)
    part = lock = buf                                               # unused without split
    if splits > 1:
        splits, k_per_split, part, lock = _scratch_for(x.device, splits, k_per_split, K, cfg.block_k, S * T * R,
                                                       tiles)
    mode = _split_mode(cfg, splits)
    args = (x, a_pool, buf, part, lock, token_slots, slot_row_start, slot_rank,
            T, R, K, k_per_split, splits, grid_r, x.stride(0), a_pool.stride(0), a_pool.stride(1), buf.stride(0),
            buf.stride(1), slot_rank.stride(0), S * T * R)
    meta = dict(BLOCK_R=block_r, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _gemv_shrink_kernel[(T, grid_r * S, splits)](*args, MODE=mode, **meta)
    if mode == 1:
        _gemv_shrink_kernel[(T, grid_r * S, 1)](*args, MODE=2, **meta)


def _launch_gemv_expand(buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale, y_offset, widths,
                        cfg: ExpandConfig) -> None:
    S, T, R = buf.shape
    N = b_pool.shape[1]
    g1, g2, c1, c2, programs = _slice_grid(widths, cfg.block_n)
    _gemv_expand_kernel[(T, programs)](
        buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale,
        R, N, int(y_offset), g1, g2, c1, c2, buf.stride(0), buf.stride(1), b_pool.stride(0), y.stride(0),
        slot_rank.stride(0), slot_scale.stride(0),
        BLOCK_R=min(cfg.block_r, _pow2(R)), BLOCK_N=cfg.block_n, ROUND_BUF=_is16(b_pool.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _table(t: torch.Tensor) -> torch.Tensor:
    """A per-slice slot table [S, slots] whose rows are indexed as ptr + i (unit stride along slots)."""
    return t if t.stride(1) == 1 or t.shape[1] <= 1 else t.contiguous()


def _shrink_args(x, a_pool, buf, slot_rank):
    """The 3-D forms (a_pool [S, P, in], buf [S, T, R], slot_rank [S, slots]) of a one-slice or sliced shrink."""
    if reference.shrink_slices(a_pool, buf, slot_rank) == 0:
        a_pool, buf, slot_rank = a_pool[None], buf[None], _vec(slot_rank)[None]
    _check_rows("x", x)
    for name, t in (("a_pool", a_pool), ("buf", buf)):
        if t.stride(2) != 1:
            raise ValueError(f"{name} must have unit stride along its last dim, got shape {tuple(t.shape)} "
                             f"strides {t.stride()}")
    return a_pool, buf, _table(slot_rank)


def _expand_args(buf, b_pool, y, slot_rank, slot_scale, y_offset, slices):
    """The 3-D forms and slice widths of a one-slice or sliced expand; ValueError on a bad layout."""
    widths = reference.expand_slices(buf, b_pool, slot_rank, slot_scale, slices)
    if widths is None:
        widths = (b_pool.shape[1],)
        buf, slot_rank, slot_scale = buf[None], _vec(slot_rank)[None], _vec(slot_scale)[None]
    if len(widths) > MAX_SLICES:
        raise ValueError(f"expand: at most {MAX_SLICES} slices per launch, got {len(widths)}")
    for name, t in (("b_pool", b_pool), ("y", y)):
        _check_rows(name, t)
    if buf.stride(2) != 1:
        raise ValueError(f"buf must have unit stride along its last dim, got strides {buf.stride()}")
    if y.shape[1] < y_offset + b_pool.shape[1]:
        raise ValueError(f"y has {y.shape[1]} columns, the slice [{y_offset}, {y_offset + b_pool.shape[1]}) "
                         f"does not fit")
    return buf, _table(slot_rank), _table(slot_scale), widths


def _sgmv_shrink(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank, *,
                 cfg: ShrinkConfig | None = None, splits: int | None = None, tile_map: tuple | None = None) -> None:
    """sgmv_shrink with a config (default SGMV_SHRINK_CONFIG), an optional forced number of K splits and an
    optional precomputed `build_tile_map(seg_starts, seg_slots, T, block_m)` (benchmarks)."""
    cfg = cfg or SGMV_SHRINK_CONFIG
    a_pool, buf, slot_rank = _shrink_args(x, a_pool, buf, slot_rank)
    S, T, R = buf.shape
    if T == 0 or seg_slots.shape[0] == 0 or R == 0:
        return
    seg_starts, seg_slots, slot_row_start = map(_vec, (seg_starts, seg_slots, slot_row_start))
    block_m = max(BLOCK_MIN, cfg.block_m)
    tile_seg, tile_first, grid_m = tile_map or _TILE_MAP.get(seg_starts, seg_slots, T, block_m)
    _launch_shrink(x, a_pool, buf, seg_slots, seg_starts, tile_seg, tile_first, seg_slots.shape[0], grid_m, block_m,
                   block_m, slot_row_start, slot_rank, cfg, splits, True)


def _sgmv_expand(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset=0,
                 slices=None, *, cfg: ExpandConfig | None = None, tile_map: tuple | None = None) -> None:
    """sgmv_expand with a config (default SGMV_EXPAND_CONFIG) and an optional precomputed tile map."""
    cfg = cfg or SGMV_EXPAND_CONFIG
    buf, slot_rank, slot_scale, widths = _expand_args(buf, b_pool, y, slot_rank, slot_scale, y_offset, slices)
    S, T, R = buf.shape
    if T == 0 or seg_slots.shape[0] == 0 or R == 0 or b_pool.shape[1] == 0:
        return
    seg_starts, seg_slots, slot_row_start = map(_vec, (seg_starts, seg_slots, slot_row_start))
    block_m = max(BLOCK_MIN, cfg.block_m)
    tile_seg, tile_first, grid_m = tile_map or _TILE_MAP.get(seg_starts, seg_slots, T, block_m)
    _launch_expand(buf, b_pool, y, seg_slots, seg_starts, tile_seg, tile_first, seg_slots.shape[0], grid_m, block_m,
                   block_m, slot_row_start, slot_rank, slot_scale, y_offset, widths, cfg, True)


def _bgmv_shrink(x, a_pool, buf, token_slots, slot_row_start, slot_rank, *, cfg: ShrinkConfig | None = None,
                 gemv_cfg: ShrinkConfig | None = None, tokens: int | None = None, splits: int | None = None,
                 gemv: bool = True) -> None:
    """bgmv_shrink with configs (default BGMV_SHRINK_CONFIG for several tokens per program, BGMV_SHRINK_GEMV_CONFIG
    for one), optional forced tokens per program and K splits; gemv=False runs one token per program on the tl.dot
    kernel instead of the GEMV one."""
    a_pool, buf, slot_rank = _shrink_args(x, a_pool, buf, slot_rank)
    S, T, R = buf.shape
    if T == 0 or R == 0:
        return
    token_slots, slot_row_start = map(_vec, (token_slots, slot_row_start))
    cfg = cfg or BGMV_SHRINK_CONFIG
    tokens = tokens or _bgmv_tokens(T, slot_rank.shape[1], cfg.block_m)
    if tokens == 1 and gemv:
        if x.dtype != a_pool.dtype:
            x, a_pool = x.float(), a_pool.float()
        _launch_gemv_shrink(x, a_pool, buf, token_slots, slot_row_start, slot_rank, gemv_cfg or BGMV_SHRINK_GEMV_CONFIG,
                            splits)
        return
    _launch_shrink(x, a_pool, buf, token_slots, token_slots, token_slots, token_slots, 0, _cdiv(T, tokens),
                   tokens, max(BLOCK_MIN, _pow2(tokens)), slot_row_start, slot_rank, cfg, splits, False)


def _bgmv_expand(buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale, y_offset=0, slices=None, *,
                 cfg: ExpandConfig | None = None, gemv_cfg: ExpandConfig | None = None, tokens: int | None = None,
                 gemv: bool = True) -> None:
    """bgmv_expand with configs (default BGMV_EXPAND_CONFIG / BGMV_EXPAND_GEMV_CONFIG), optional forced tokens per
    program; gemv=False runs one token per program on the tl.dot kernel."""
    buf, slot_rank, slot_scale, widths = _expand_args(buf, b_pool, y, slot_rank, slot_scale, y_offset, slices)
    S, T, R = buf.shape
    if T == 0 or R == 0 or b_pool.shape[1] == 0:
        return
    token_slots, slot_row_start = map(_vec, (token_slots, slot_row_start))
    cfg = cfg or BGMV_EXPAND_CONFIG
    tokens = tokens or _bgmv_tokens(T, slot_rank.shape[1], cfg.block_m)
    if tokens == 1 and gemv:
        _launch_gemv_expand(buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale, y_offset, widths,
                            gemv_cfg or BGMV_EXPAND_GEMV_CONFIG)
        return
    _launch_expand(buf, b_pool, y, token_slots, token_slots, token_slots, token_slots, 0, _cdiv(T, tokens),
                   tokens, max(BLOCK_MIN, _pow2(tokens)), slot_row_start, slot_rank, slot_scale, y_offset, widths,
                   cfg, False)


# ------------------------------------------------------------------------------------------------ public ops


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
    Slices (a fused linear's targets sharing x): a_pool [S, P, in], buf [S, T, R], slot_rank [S, slots]; the above
    for each s with a_pool[s], buf[s], slot_rank[s], in one launch.
    """
    _sgmv_shrink(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)


def sgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                slot_scale: torch.Tensor, y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
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
    Slices: buf [S, T, R], b_pool [P, n_0 + ... + n_{S-1}], slot_rank / slot_scale [S, slots], slices = (n_0, ...)
    (S <= 3): the above for each s with buf[s], b_pool[:, o_s:o_s + n_s], slot_rank[s], slot_scale[s] and
    y_offset + o_s (o_s = n_0 + ... + n_{s-1}), in one launch.
    """
    _sgmv_expand(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset, slices)


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
    Slices (a fused linear's targets sharing x): a_pool [S, P, in], buf [S, T, R], slot_rank [S, slots]; the above
    for each s with a_pool[s], buf[s], slot_rank[s], in one launch.
    """
    _bgmv_shrink(x, a_pool, buf, token_slots, slot_row_start, slot_rank)


def bgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
    """Batched gather matrix-vector, expand side.

    Semantics:
        n = b_pool.shape[1]
        for t in range(T):
            slot = token_slots[t]
            if slot < 0 or slot_rank[slot] == 0: continue
            r, o = slot_rank[slot], slot_row_start[slot]
            y[t, y_offset:y_offset + n] += slot_scale[slot] * (buf[t, :r] @ b_pool[o:o + r])
    Shapes: buf [T, R], b_pool [P, n], y [T, >= y_offset + n], token_slots [T] int32.
    Slices: buf [S, T, R], b_pool [P, n_0 + ... + n_{S-1}], slot_rank / slot_scale [S, slots], slices = (n_0, ...)
    (S <= 3): the above for each s with buf[s], b_pool[:, o_s:o_s + n_s], slot_rank[s], slot_scale[s] and
    y_offset + o_s (o_s = n_0 + ... + n_{s-1}), in one launch.
    """
    _bgmv_expand(buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale, y_offset, slices)

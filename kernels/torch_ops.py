"""Fast pure-torch implementations of the LoRA kernels, for the CPU serving path.

Same signatures and semantics as kernels/reference.py (tests compare them), but written for few tensor ops per
call: the gather indices that depend only on the step's metadata (token -> slot, slot -> first row) are computed
once per step and shared by every layer and module (a plan memoised on the metadata tensor object itself, held by a
weak reference, so a new step's tensors can never hit a stale plan). Rank masks are applied to the small rank-sized
results, never to weight-sized tensors.
What it does not do: anything the references do not; paged attention and store_kv are the references' own.
"""

from __future__ import annotations

import weakref

import torch

from openlora.kernels.reference import expand_slices, for_each_slice_expand, for_each_slice_shrink, shrink_slices


class _Plan:
    __slots__ = ("key", "row_start", "R", "safe", "valid", "rows", "col", "segs")

    def __init__(self, key: torch.Tensor, row_start: torch.Tensor, R: int, num_rows: int):
        self.key = weakref.ref(key)
        self.row_start = weakref.ref(row_start)
        self.R = R
        slots = key.long()
        self.valid = slots >= 0                                                   # [T]
        self.safe = slots.clamp(min=0)                                            # [T]
        self.col = torch.arange(R, device=key.device)                             # [R]
        self.rows = (row_start.long()[self.safe][:, None] + self.col).clamp_(max=num_rows - 1)  # [T, R]
        self.segs = None


_last: list[_Plan | None] = [None]


def _plan(token_slots: torch.Tensor, row_start: torch.Tensor, R: int, num_rows: int) -> _Plan:
    p = _last[0]
    if p is None or p.key() is not token_slots or p.row_start() is not row_start or p.R != R:
        p = _Plan(token_slots, row_start, R, num_rows)
        _last[0] = p
    return p


def _bgmv_shrink_one(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """See kernels.reference.bgmv_shrink."""
    T, R = buf.shape
    if T == 0:
        return
    p = _plan(token_slots, slot_row_start, R, a_pool.shape[0])
    mask = p.col < (slot_rank[p.safe] * p.valid)[:, None]                         # [T, R]
    out = (a_pool[p.rows].float() * x.float()[:, None, :]).sum(-1)             # [T, R] (faster than bmm on CPU)
    buf.copy_(torch.where(mask, out.to(buf.dtype), buf))


def _bgmv_expand_one(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                y_offset: int = 0) -> None:
    """See kernels.reference.bgmv_expand."""
    T, R = buf.shape
    if T == 0:
        return
    n = b_pool.shape[1]
    p = _plan(token_slots, slot_row_start, R, b_pool.shape[0])
    ranks = slot_rank[p.safe] * p.valid                                           # [T]
    mask = p.col < ranks[:, None]                                                 # [T, R]
    coef = torch.where(mask, buf.float(), 0.0) * slot_scale[p.safe][:, None].float()
    # rows past a slot's rank belong to another slot (or none) and may hold anything: zero them, since 0 * NaN
    # would still be NaN
    rows = torch.where(mask[:, :, None], b_pool[p.rows].float(), 0.0)             # [T, R, n]
    delta = torch.bmm(coef[:, None, :], rows)[:, 0, :]                            # [T, n]
    view = y[:, y_offset:y_offset + n]
    if y.dtype == torch.float32 and bool((ranks > 0).all()):
        view.add_(delta)
    else:
        view.copy_(torch.where((ranks > 0)[:, None], (view.float() + delta).to(y.dtype), view))


def _sgmv_shrink_one(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """See kernels.reference.sgmv_shrink: one matmul per adapter segment (prefill segments are long)."""
    starts, slots = _segments(seg_starts, seg_slots)
    ranks = slot_rank.tolist()
    rows = slot_row_start.tolist()
    xf = x if x.dtype == torch.float32 else x.float()
    for s, slot in enumerate(slots):
        t0, t1 = starts[s], starts[s + 1]
        if slot < 0 or t1 <= t0 or ranks[slot] == 0:
            continue
        r, o = ranks[slot], rows[slot]
        buf[t0:t1, :r] = xf[t0:t1] @ a_pool[o:o + r].float().T


def _sgmv_expand_one(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                slot_scale: torch.Tensor, y_offset: int = 0) -> None:
    """See kernels.reference.sgmv_expand."""
    starts, slots = _segments(seg_starts, seg_slots)
    ranks = slot_rank.tolist()
    rows = slot_row_start.tolist()
    scales = slot_scale.tolist()
    n = b_pool.shape[1]
    for s, slot in enumerate(slots):
        t0, t1 = starts[s], starts[s + 1]
        if slot < 0 or t1 <= t0 or ranks[slot] == 0:
            continue
        r, o = ranks[slot], rows[slot]
        delta = (buf[t0:t1, :r].float() @ b_pool[o:o + r].float()) * scales[slot]
        view = y[t0:t1, y_offset:y_offset + n]
        if y.dtype == torch.float32:
            view.add_(delta)
        else:
            view.copy_((view.float() + delta).to(y.dtype))



# Fused linears (a_pool [S, P, in], buf [S, T, R], ...): one call per slice, as the semantics define; every slice
# shares the step's plan.


def _all_float32(*ts: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 for t in ts)


def sgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """See kernels.reference.sgmv_shrink (and `sgmv_shrink_segments`)."""
    sgmv_shrink_segments(x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)


def sgmv_shrink_segments(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
                         seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                         min_tokens: int = 1) -> None:
    """See kernels.reference.sgmv_shrink.

    float32: one loop over the segments for every slice at once, one batched matmul per segment (all slices of a
    fused linear share x); the per-step lists (segments, row starts) are converted once per step. A segment whose
    slices have different ranks, and other dtypes, take the one-slice path (exactly the semantics: buf columns past
    a slice's rank are left as they are). `min_tokens`: only segments of at least that many tokens (float32 path;
    the native backend computes the shorter ones itself)."""
    S = shrink_slices(a_pool, buf, slot_rank)
    if not _all_float32(x, a_pool, buf):
        for_each_slice_shrink(_sgmv_shrink_one, x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)
        return
    if S == 0:
        a_pool, buf, slot_rank = a_pool[None], buf[None], slot_rank[None]
    starts, slots = _segments(seg_starts, seg_slots)
    rows = _row_starts(slot_row_start)
    ranks = slot_rank.tolist()                                                    # [S][slots]
    for i, slot in enumerate(slots):
        t0, t1 = starts[i], starts[i + 1]
        if slot < 0 or t1 <= t0 or t1 - t0 < min_tokens:
            continue
        rs = [rk[slot] for rk in ranks]
        r, o = rs[0], rows[slot]
        if all(q == r for q in rs):
            if r:
                buf[:, t0:t1, :r] = torch.matmul(x[t0:t1], a_pool[:, o:o + r].transpose(1, 2))
            continue
        for s, q in enumerate(rs):                                                # mixed ranks in one adapter
            if q:
                buf[s, t0:t1, :q] = x[t0:t1] @ a_pool[s, o:o + q].T


def sgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                slot_scale: torch.Tensor, y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
    """See kernels.reference.sgmv_expand (and `sgmv_expand_segments`)."""
    sgmv_expand_segments(buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank, slot_scale, y_offset,
                         slices)


def sgmv_expand_segments(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                         seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                         slot_scale: torch.Tensor, y_offset: int = 0, slices: tuple[int, ...] | None = None,
                         min_tokens: int = 1) -> None:
    """See kernels.reference.sgmv_expand.

    float32: one loop over the segments for every slice, one in-place `addmm_` (scale as its alpha) per segment
    and targeted slice, straight into y's columns. `min_tokens` as in `sgmv_shrink`."""
    widths = expand_slices(buf, b_pool, slot_rank, slot_scale, slices)
    if not _all_float32(buf, b_pool, y):
        for_each_slice_expand(_sgmv_expand_one, buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank,
                              slot_scale, y_offset=y_offset, slices=slices)
        return
    if widths is None:
        widths, buf, slot_rank, slot_scale = (b_pool.shape[1],), buf[None], slot_rank[None], slot_scale[None]
    starts, slots = _segments(seg_starts, seg_slots)
    rows = _row_starts(slot_row_start)
    ranks, scales = slot_rank.tolist(), slot_scale.tolist()
    offs = [0]
    for n in widths:
        offs.append(offs[-1] + n)
    for i, slot in enumerate(slots):
        t0, t1 = starts[i], starts[i + 1]
        if slot < 0 or t1 <= t0 or t1 - t0 < min_tokens:
            continue
        o = rows[slot]
        for s in range(len(widths)):
            r = ranks[s][slot]
            if r:
                c0, c1 = offs[s], offs[s + 1]
                y[t0:t1, y_offset + c0:y_offset + c1].addmm_(buf[s, t0:t1, :r], b_pool[o:o + r, c0:c1],
                                                              alpha=scales[s][slot])


def _row_starts(slot_row_start: torch.Tensor) -> list[int]:
    """slot -> first pool row as a list. The pool's table is written in place when adapters come and go, so it is
    converted on every call (one small copy), never cached across calls."""
    return slot_row_start.tolist()


def bgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """See kernels.reference.bgmv_shrink."""
    for_each_slice_shrink(_bgmv_shrink_one, x, a_pool, buf, token_slots, slot_row_start, slot_rank)


def bgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
    """See kernels.reference.bgmv_expand."""
    for_each_slice_expand(_bgmv_expand_one, buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale,
                          y_offset=y_offset, slices=slices)

_seg_cache: list = [None, None, None, None]


def _segments(seg_starts: torch.Tensor, seg_slots: torch.Tensor) -> tuple[list[int], list[int]]:
    """The step's segment table as Python lists, converted once per step (weakly keyed on both tensors)."""
    a, b = _seg_cache[0], _seg_cache[1]
    if a is None or a() is not seg_starts or b() is not seg_slots:
        _seg_cache[:] = [weakref.ref(seg_starts), weakref.ref(seg_slots), seg_starts.tolist(), seg_slots.tolist()]
    return _seg_cache[2], _seg_cache[3]

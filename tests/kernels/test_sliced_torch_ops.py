"""The CPU LoRA path (kernels/torch_ops.py) against the per-segment references (kernels/reference.py).

The float32 sgmv path runs one loop over segments for all slices of a fused linear (one batched shrink matmul per
segment, addmm_ expands); these tests hold it to the references' semantics: the same buf and y, columns past a
slice's rank untouched, segments without an adapter (slot -1), empty segments, an adapter whose slices have
different ranks (rank_pattern) or a slice it does not target (rank 0), rows no slot owns (NaN, never read), and the
2-D one-slice form. Other dtypes take the one-slice path and are checked too.
"""

from __future__ import annotations

import pytest
import torch

from openlora.kernels import reference as ref
from openlora.kernels import torch_ops

NAN = float("nan")


def _setup(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    widths = (24, 8, 8)                                  # a q/k/v-like fused linear
    in_f, S, slots = 16, 3, 6
    # per slice, per slot ranks: slot 2 mixes ranks across slices, slot 3 does not target slice 1, slot 5 is free
    rank = torch.tensor([[4, 8, 6, 2, 3, 0],
                         [4, 8, 2, 0, 3, 0],
                         [4, 8, 5, 2, 3, 0]], dtype=torch.int32)
    rows_of = rank.max(0).values.tolist()
    starts, row = [], 2
    for r in rows_of:
        starts.append(row)
        row += r + 1                                     # a gap row between slots
    a = torch.full((S, row, in_f), NAN)
    b = torch.full((row, sum(widths)), NAN)
    for s_, (o, r) in enumerate(zip(starts, rows_of)):
        if r:
            a[:, o:o + r] = torch.randn(S, r, in_f, generator=g)
            b[o:o + r] = torch.randn(r, sum(widths), generator=g)
    # rows past a slice's own rank but inside the slot's rows hold finite garbage (another module's rows)
    scale = torch.rand(S, slots, generator=g) + 0.5
    # segments: no adapter, slot 2 (mixed), empty segment, slot 0, slot 3 (slice 1 untargeted), slot 1, slot 4
    seg_slots = torch.tensor([-1, 2, 4, 0, 3, 1, 4], dtype=torch.int32)
    lens = [3, 2, 0, 5, 1, 1, 4]
    seg_starts = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = sum(lens)
    x = torch.randn(T, in_f, generator=g).to(dtype)
    return (x, a.to(dtype), b.to(dtype), rank, scale, torch.tensor(starts, dtype=torch.int32), seg_starts,
            seg_slots, widths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sliced_sgmv_equals_per_segment_reference(dtype):
    x, a, b, rank, scale, row_start, seg_starts, seg_slots, widths = _setup(dtype)
    T = x.shape[0]
    out = {}
    for name, mod in (("ref", ref), ("fast", torch_ops)):
        buf = torch.full((3, T, 8), 7.0)                  # sentinel: what no rank covers must stay 7.0
        y = torch.randn(T, sum(widths) + 4, generator=torch.Generator().manual_seed(1)).to(dtype)
        mod.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank)
        mod.sgmv_expand(buf, b, y, seg_starts, seg_slots, row_start, rank, scale, 2, widths)
        out[name] = (buf, y)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out["fast"][0], out["ref"][0], **tol)
    torch.testing.assert_close(out["fast"][1], out["ref"][1], **tol)
    assert torch.isfinite(out["fast"][1]).all()
    # adapter-less tokens (the first segment) keep y as it was, and their buf rows their sentinel
    assert (out["fast"][0][:, :3] == 7.0).all()
    # slot 3 does not target slice 1: its buf columns stay the sentinel, its k columns unchanged from the reference
    t3 = int(seg_starts[4])
    assert (out["fast"][0][1, t3] == 7.0).all()


def test_one_slice_form_and_bgmv_agree():
    x, a, b, rank, scale, row_start, seg_starts, seg_slots, widths = _setup(torch.float32, seed=3)
    T = x.shape[0]
    token_slots = torch.repeat_interleave(seg_slots, torch.diff(seg_starts).long())
    results = []
    for kind in ("ref", "sgmv", "bgmv"):
        buf = torch.zeros(T, 8)
        y = torch.zeros(T, widths[0])
        if kind == "ref":
            ref.sgmv_shrink(x, a[0], buf, seg_starts, seg_slots, row_start, rank[0])
            ref.sgmv_expand(buf, b[:, :widths[0]], y, seg_starts, seg_slots, row_start, rank[0], scale[0])
        elif kind == "sgmv":
            torch_ops.sgmv_shrink(x, a[0], buf, seg_starts, seg_slots, row_start, rank[0])
            torch_ops.sgmv_expand(buf, b[:, :widths[0]], y, seg_starts, seg_slots, row_start, rank[0], scale[0])
        else:
            torch_ops.bgmv_shrink(x, a[0], buf, token_slots, row_start, rank[0])
            torch_ops.bgmv_expand(buf, b[:, :widths[0]], y, token_slots, row_start, rank[0], scale[0])
        results.append(y)
    assert results[0].abs().sum() > 0                     # the adapters did something
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[2], results[0], rtol=1e-5, atol=1e-5)


def test_pool_table_changes_between_calls_are_seen():
    """Row starts are read on every call: an adapter moved in the pool between two steps is read at its new rows."""
    x, a, b, rank, scale, row_start, seg_starts, seg_slots, widths = _setup(torch.float32, seed=5)
    T = x.shape[0]
    buf1, buf2 = torch.zeros(3, T, 8), torch.zeros(3, T, 8)
    torch_ops.sgmv_shrink(x, a, buf1, seg_starts, seg_slots, row_start, rank)
    moved = row_start.clone()
    moved[0], moved[1] = row_start[1], row_start[0]       # slots 0 and 1 swap rows (ranks 4 vs 8: use rank 4)
    rank2 = rank.clone()
    rank2[:, 1] = 4
    row_start.copy_(moved)
    torch_ops.sgmv_shrink(x, a, buf2, seg_starts, seg_slots, row_start, rank2)
    expect = torch.zeros(3, T, 8)
    ref.sgmv_shrink(x, a, expect, seg_starts, seg_slots, row_start, rank2)
    torch.testing.assert_close(buf2, expect)
    assert not torch.equal(buf1, buf2)

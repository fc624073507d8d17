"""The fast torch LoRA ops (the CPU serving path) against the reference semantics in kernels/reference.py."""

from __future__ import annotations

import pytest
import torch

from openlora.kernels import reference, torch_ops


def make_case(seed: int, T: int, n_in: int, n_out: int, ranks: list[int], dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    S = len(ranks)
    rows = sum(ranks) + 3
    a_pool = torch.randn(rows, n_in, generator=g).to(dtype)
    b_pool = torch.randn(rows, n_out, generator=g).to(dtype)
    a_pool[-3:] = float("nan")               # rows owned by no slot: must never reach an output
    b_pool[-3:] = float("nan")
    starts, acc = [], 0
    for r in ranks:
        starts.append(acc)
        acc += r
    row_start = torch.tensor(starts, dtype=torch.int32)
    rank = torch.tensor(ranks, dtype=torch.int32)
    scale = torch.rand(S, generator=g) + 0.5
    # tokens sorted by slot, some with no adapter (-1), some slots unused, one empty segment
    tok = sorted(torch.randint(-1, S, (T,), generator=g).tolist())
    seg_slots, seg_starts = [], [0]
    for t in tok:
        if seg_slots and seg_slots[-1] == t:
            seg_starts[-1] += 1
        else:
            seg_slots.append(t)
            seg_starts.append(seg_starts[-1] + 1)
    seg_slots.append(0)                      # an empty segment at the end
    seg_starts.append(seg_starts[-1])
    x = torch.randn(T, n_in, generator=g).to(dtype)
    return dict(x=x, a_pool=a_pool, b_pool=b_pool, row_start=row_start, rank=rank, scale=scale,
                tok=torch.tensor(tok, dtype=torch.int32), seg_starts=torch.tensor(seg_starts, dtype=torch.int32),
                seg_slots=torch.tensor(seg_slots, dtype=torch.int32), R=max(ranks), n_out=n_out)


@pytest.mark.parametrize("seed,T,n_in,n_out,ranks", [
    (0, 1, 16, 24, [4]), (1, 37, 96, 40, [1, 8, 16, 3]), (2, 64, 130, 70, [8, 0, 32, 16, 2, 5]),
    (3, 200, 64, 64, [64, 1]),
])
@pytest.mark.parametrize("form", ["bgmv", "sgmv"])
def test_fast_ops_equal_reference(seed, T, n_in, n_out, ranks, form):
    c = make_case(seed, T, n_in, n_out, ranks)
    out = {}
    for impl in (reference, torch_ops):
        buf = torch.full((T, c["R"]), float("nan"))
        y = torch.randn(T, n_out + 10, generator=torch.Generator().manual_seed(99))
        if form == "bgmv":
            impl.bgmv_shrink(c["x"], c["a_pool"], buf, c["tok"], c["row_start"], c["rank"])
            impl.bgmv_expand(buf, c["b_pool"], y, c["tok"], c["row_start"], c["rank"], c["scale"], 5)
        else:
            impl.sgmv_shrink(c["x"], c["a_pool"], buf, c["seg_starts"], c["seg_slots"], c["row_start"], c["rank"])
            impl.sgmv_expand(buf, c["b_pool"], y, c["seg_starts"], c["seg_slots"], c["row_start"], c["rank"],
                             c["scale"], 5)
        out[impl.__name__] = (buf, y)
    (rb, ry), (fb, fy) = out["openlora.kernels.reference"], out["openlora.kernels.torch_ops"]
    assert torch.equal(rb.isnan(), fb.isnan()), "the same buffer elements must be written (the rest stay NaN)"
    torch.testing.assert_close(fb.nan_to_num(), rb.nan_to_num(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fy, ry, rtol=1e-5, atol=1e-4)
    no_adapter = c["tok"] < 0
    assert not no_adapter.any() or rb[no_adapter].isnan().all()

"""Paged attention (decode kernel, K/V store, prefill path) vs the torch references and a dense attention.

Runs interpreted on CPU (TRITON_INTERPRET=1, see conftest.py) and compiled on CUDA when a GPU is present.

Tolerances: q.k products of same-dtype inputs are exact in float32 and both sides accumulate in float32, so scores
agree to float32 accumulation order (~1e-6 relative); the softmax and the weighted sum of V add a few float32
roundings (exp implementations differ). fp32: atol = rtol = 2e-5 on outputs of magnitude <= max|v| ~ 4.
fp16/bf16: the kernel rounds the probabilities to V's dtype before the P @ V product (as flash-attn does), an
error of at most eps/2 relative per weight, i.e. at most eps/2 * max|v| on the output (weights sum to 1), plus the
final rounding of the output (1 ulp, eps * |out|); under the interpreter bf16 casts truncate (a full eps). The
bound used is 2 * eps * max|v| + eps * |out|.
"""

from __future__ import annotations

import logging

import pytest
import torch

from openlora.kernels import reference as ref
from openlora.kernels import triton_attention as tri

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN = float("nan")


def make_cache(seq_lens: list[int], block_size: int, hkv: int, d: int, dtype: torch.dtype, seed: int = 0,
               spare_blocks: int = 3):
    """A poisoned paged cache holding random K/V for each sequence in scattered blocks, and its block table."""
    g = torch.Generator().manual_seed(seed)
    need = [(L + block_size - 1) // block_size for L in seq_lens]
    num_blocks = sum(need) + spare_blocks
    perm = torch.randperm(num_blocks, generator=g).tolist()
    width = max(need + [1]) + 2
    tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)      # unused entries are -1
    k_cache = torch.full((num_blocks, block_size, hkv, d), NAN)
    v_cache = torch.full((num_blocks, block_size, hkv, d), NAN)
    dense = []
    for b, L in enumerate(seq_lens):
        blocks = [perm.pop() for _ in range(need[b])]
        tables[b, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        K = torch.randn(L, hkv, d, generator=g)
        V = torch.randn(L, hkv, d, generator=g)
        pos = torch.arange(L)
        blk = torch.tensor(blocks, dtype=torch.long)[pos // block_size] if L else pos
        k_cache[blk, pos % block_size] = K                                   # position p -> [table[p // bs], p % bs]
        v_cache[blk, pos % block_size] = V
        dense.append((K.to(dtype).float(), V.to(dtype).float()))
    # slots of the cache past each sequence's end stay NaN: reading them would poison the output
    return (k_cache.to(dtype).to(DEVICE), v_cache.to(dtype).to(DEVICE), tables.to(DEVICE), dense)


def dense_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain softmax attention of q [n, Hq, D] (the last n positions) over K, V [L, Hkv, D], causal, float64."""
    n, hq, _ = q.shape
    L, hkv, _ = K.shape
    g = hq // hkv
    k = K.double().repeat_interleave(g, dim=1)
    v = V.double().repeat_interleave(g, dim=1)
    s = torch.einsum("nhd,lhd->hnl", q.double(), k) * scale
    pos_q = torch.arange(L - n, L, device=q.device)[:, None]
    s = s.masked_fill(torch.arange(L, device=q.device)[None, :] > pos_q, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", s.softmax(-1), v)


def tolerance(dtype, out_ref):
    if dtype == torch.float32:
        return dict(atol=2e-5, rtol=2e-5)
    return dict(atol=2 * EPS[dtype] * 4.5, rtol=EPS[dtype])   # max|v| of randn draws here < 4.5


@pytest.mark.parametrize("block_size", [1, 8, 16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_vs_dense_and_reference(block_size, group):
    """Ragged lengths (1, one block +- 1, several blocks, > one 64-key tile), GQA ratios 1/4/8, poisoned out."""
    lens = [1, block_size - 1 or 1, block_size + 1, 3 * block_size, 70]
    hkv, d = 2, 32
    k_cache, v_cache, tables, dense = make_cache(lens, block_size, hkv, d, torch.float32, seed=block_size)
    q = torch.randn(len(lens), hkv * group, d, generator=torch.Generator().manual_seed(group)).to(DEVICE)
    out = torch.full_like(q, NAN)
    scale = d ** -0.5
    tri.paged_attention_decode(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32, device=DEVICE),
                               scale, out)
    expected = torch.stack([dense_attention(q[b:b + 1].cpu(), K, V, scale)[0] for b, (K, V) in enumerate(dense)])
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-5, rtol=2e-5)
    out_ref = torch.full_like(q, NAN)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, scale, out_ref)
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_decode_dtypes_and_head_dims(dtype, head_dim):
    """fp32/fp16/bf16 caches and queries, head_dim 80 (not a power of two) included."""
    lens = [5, 33, 16]
    hkv, group, bs = 2, 4, 16
    k_cache, v_cache, tables, dense = make_cache(lens, bs, hkv, head_dim, dtype, seed=head_dim)
    q = torch.randn(len(lens), hkv * group, head_dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    q = q.to(DEVICE)
    out = torch.full_like(q, NAN)
    scale = head_dim ** -0.5
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    tri.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, scale, out)
    out_ref = torch.full_like(q, NAN)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, scale, out_ref)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), out_ref.float(), **tolerance(dtype, out_ref))
    expected = torch.stack([dense_attention(q[b:b + 1].cpu().float(), K, V, scale)[0]
                            for b, (K, V) in enumerate(dense)])
    torch.testing.assert_close(out.cpu().double(), expected, **tolerance(dtype, expected))


def test_decode_many_sequences_llama_head_shape():
    """Llama-3-8B-like heads (32 q heads, 8 kv heads, head_dim 128) over 4 sequences."""
    lens = [1, 17, 130, 64]
    k_cache, v_cache, tables, _ = make_cache(lens, 16, 8, 128, torch.float16, seed=5)
    q = torch.randn(4, 32, 128, generator=torch.Generator().manual_seed(4)).half().to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, out_ref = torch.full_like(q, NAN), torch.full_like(q, NAN)
    tri.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5, out)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5, out_ref)
    torch.testing.assert_close(out.float(), out_ref.float(), **tolerance(torch.float16, out_ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_store_kv(dtype):
    """Every valid token lands in its slot, padding tokens (-1) write nothing, the rest of the cache is untouched."""
    nb, bs, hkv, d = 6, 8, 2, 80
    g = torch.Generator().manual_seed(0)
    slot_mapping = torch.tensor([5, -1, 17, 40, 47, -1, 0], dtype=torch.int64, device=DEVICE)
    k = torch.randn(7, hkv, d, generator=g).to(DEVICE)
    v = torch.randn(7, hkv, d, generator=g).to(DEVICE)
    caches = [torch.full((nb, bs, hkv, d), NAN, dtype=dtype, device=DEVICE) for _ in range(4)]
    tri.store_kv(k, v, caches[0], caches[1], slot_mapping)
    ref.store_kv(k, v, caches[2], caches[3], slot_mapping)
    assert torch.equal(caches[0].isnan(), caches[2].isnan())
    torch.testing.assert_close(caches[0], caches[2], equal_nan=True, atol=0, rtol=EPS[dtype] if
                               dtype == torch.bfloat16 else 0)   # interpreted bf16 casts truncate
    torch.testing.assert_close(caches[1], caches[3], equal_nan=True, atol=0, rtol=EPS[dtype] if
                               dtype == torch.bfloat16 else 0)
    assert int((~caches[0].isnan()).sum()) == 5 * hkv * d


def test_store_then_decode_matches_prefill_reference():
    """store_kv + decode agree with the reference `paged_attention` over the same cache (chunk of 1 token)."""
    bs, hkv, d, group = 4, 2, 16, 4
    lens = [3, 9]
    k_cache, v_cache, tables, _ = make_cache(lens, bs, hkv, d, torch.float32, seed=9, spare_blocks=2)
    g = torch.Generator().manual_seed(1)
    # append one token to each sequence
    new_lens = [L + 1 for L in lens]
    tables_c = tables.cpu()
    slots = torch.tensor([int(tables_c[b, L // bs]) * bs + L % bs if L % bs else -2 for b, L in enumerate(lens)])
    free = sorted(set(range(k_cache.shape[0])) - set(tables_c[tables_c >= 0].tolist()))
    for b, L in enumerate(lens):
        if L % bs == 0:                                   # the sequence needs a fresh block
            blk = free.pop()
            tables_c[b, L // bs] = blk
            slots[b] = blk * bs
    tables = tables_c.to(DEVICE)
    k_new = torch.randn(2, hkv, d, generator=g).to(DEVICE)
    v_new = torch.randn(2, hkv, d, generator=g).to(DEVICE)
    tri.store_kv(k_new, v_new, k_cache, v_cache, slots.to(DEVICE))
    q = torch.randn(2, hkv * group, d, generator=g).to(DEVICE)
    seq_lens = torch.tensor(new_lens, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, NAN)
    tri.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 0.25, out)
    cu = torch.arange(3, dtype=torch.int32, device=DEVICE)
    expected = ref.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.25)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_prefill_path_matches_reference_chunked():
    """The backend's `paged_attention` (prefill / chunked prefill) against a dense causal attention."""
    bs, hkv, d, group = 8, 2, 32, 4
    lens = [20, 7, 33]
    q_lens = [20, 3, 1]                                   # a full prefill, a chunk, a decode-like chunk of 1
    k_cache, v_cache, tables, dense = make_cache(lens, bs, hkv, d, torch.float32, seed=2)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(sum(q_lens), hkv * group, d, generator=g).to(DEVICE)
    cu = torch.tensor([0, 20, 23, 24], dtype=torch.int32, device=DEVICE)
    out = tri.paged_attention(q, k_cache, v_cache, cu, torch.tensor(lens, dtype=torch.int32, device=DEVICE),
                              tables, d ** -0.5)
    expected = torch.cat([dense_attention(q[int(cu[b]):int(cu[b + 1])].cpu(), K, V, d ** -0.5)
                          for b, (K, V) in enumerate(dense)])
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-5, rtol=2e-5)


def test_backend_logs_prefill_path(caplog):
    from openlora.kernels import ops, triton_ops

    with caplog.at_level(logging.INFO, logger="openlora.kernels"):
        triton_ops.log_active_paths()
    assert tri.PREFILL_PATH in caplog.text
    backend = ops.get_backend("triton", DEVICE)
    assert backend is triton_ops.BACKEND and backend.name == "triton"
    assert tri.PREFILL_PATH in backend.description
    if DEVICE == "cpu":
        assert tri.PREFILL_PATH == "torch SDPA (reference)"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: flash-attn varlen prefill path")
def test_flash_prefill_path_on_cuda():  # pragma: no cover - needs a GPU with flash-attn
    if tri._flash_varlen is None:
        pytest.skip("flash-attn is not importable on this CUDA host: prefill runs on torch SDPA")
    bs, hkv, d, group = 16, 8, 128, 4
    lens = [300, 17, 64]
    q_lens = [300, 5, 1]
    k_cache, v_cache, tables, _ = make_cache(lens, bs, hkv, d, torch.float16, seed=3)
    q = torch.randn(sum(q_lens), hkv * group, d, device=DEVICE, dtype=torch.float16)
    cu = torch.tensor([0, 300, 305, 306], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = tri.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, d ** -0.5)
    expected = ref.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, d ** -0.5)
    torch.testing.assert_close(out.float(), expected.float(), atol=4e-3, rtol=4e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: long-context decode compiled")
def test_decode_long_context_on_cuda():  # pragma: no cover - needs a GPU
    lens = [1, 4095, 4096, 8191, 300] * 4
    k_cache, v_cache, tables, _ = make_cache(lens, 16, 8, 128, torch.bfloat16, seed=11)
    q = torch.randn(len(lens), 32, 128, device=DEVICE, dtype=torch.bfloat16)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, out_ref = torch.full_like(q, NAN), torch.full_like(q, NAN)
    tri.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5, out)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5, out_ref)
    torch.testing.assert_close(out.float(), out_ref.float(), **tolerance(torch.bfloat16, out_ref))


def test_flash_prefill_gather_with_a_stand_in(monkeypatch):
    """The flash-attn path's own code (gathering each sequence's K/V contiguous, cu_seqlens, max lengths) against
    the reference, with a torch stand-in for flash_attn_varlen_func implementing its documented semantics
    (varlen, GQA, causal mask aligned to the bottom-right corner). The real kernel runs in the gpu-marked test."""
    calls = []

    def varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False):
        assert causal and cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
        calls.append((max_q, max_k))
        out = torch.empty_like(q)
        for b in range(cu_q.numel() - 1):
            q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            out[q0:q1] = dense_attention(q[q0:q1], k[k0:k1], v[k0:k1], softmax_scale).to(q.dtype)
        return out

    monkeypatch.setattr(tri, "_flash_varlen", varlen_stand_in)
    bs, hkv, d, group = 4, 2, 16, 4
    lens, q_lens = [13, 6, 9], [13, 2, 1]
    k_cache, v_cache, tables, _ = make_cache(lens, bs, hkv, d, torch.float32, seed=4)
    q = torch.randn(sum(q_lens), hkv * group, d, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    cu = torch.tensor([0, 13, 15, 16], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    got = tri._paged_attention_flash(q, k_cache, v_cache, cu, seq_lens, tables, d ** -0.5)
    want = ref.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, d ** -0.5)
    assert calls == [(13, 13)]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------------------------------------ split-KV decode


@pytest.mark.parametrize("splits", [2, 3, 7])
@pytest.mark.parametrize("block_size,group,dtype", [(16, 1, torch.float32), (4, 4, torch.float16),
                                                    (16, 8, torch.bfloat16), (1, 4, torch.float32)],
                         ids=["bs16-g1-fp32", "bs4-g4-fp16", "bs16-g8-bf16", "bs1-g4-fp32"])
def test_decode_split_kv_vs_reference(splits, block_size, group, dtype):
    """Each sequence's keys cut into ranges over several programs and combined by log-sum-exp: ragged lengths,
    sequences shorter than one range (their later ranges are empty), GQA 1/4/8, every dtype, NaN-poisoned output
    and cache slots past each length."""
    lens = [1, 70, 33, 130, 2]
    hkv, d = 2, 32
    k_cache, v_cache, tables, dense = make_cache(lens, block_size, hkv, d, dtype, seed=splits * 10 + group)
    q = torch.randn(len(lens), hkv * group, d, generator=torch.Generator().manual_seed(splits)).to(dtype).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, NAN)
    tri._paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, d ** -0.5, out, splits=splits)
    out_ref = torch.full_like(q, NAN)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, d ** -0.5, out_ref)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), out_ref.float(), **tolerance(dtype, out_ref))
    expected = torch.stack([dense_attention(q[b:b + 1].cpu().float(), K, V, d ** -0.5)[0]
                            for b, (K, V) in enumerate(dense)])
    torch.testing.assert_close(out.cpu().double(), expected, **tolerance(dtype, expected))


def test_decode_split_choice():
    """Splits come from shapes only: none while B x Hkv programs fill the target or the keys are few; otherwise
    enough ranges (of >= DECODE_SPLIT_MIN_KEYS keys, multiples of DECODE_BLOCK_N) to reach the target."""
    cpu = torch.device("cpu")
    target = tri.INTERPRETED_TARGET_PROGRAMS
    assert tri.decode_splits(target, 1, 8192, cpu) == (1, 8192)              # enough programs already
    assert tri.decode_splits(1, 2, tri.DECODE_SPLIT_MIN_KEYS, cpu)[0] == 1    # too few keys to split
    splits, per = tri.decode_splits(1, 2, 8192, cpu)
    assert splits == -(-target // 2) and per % tri.DECODE_BLOCK_N == 0 and splits * per >= 8192
    splits, per = tri.decode_splits(1, 1, 600, cpu)
    assert per >= tri.DECODE_SPLIT_MIN_KEYS and splits * per >= 600 and (splits - 1) * per < 600


def test_decode_auto_split_long_context():
    """The public op splits on its own when few sequences have long contexts (here 2 x 2 programs < the target)."""
    lens = [700, 45]
    k_cache, v_cache, tables, _ = make_cache(lens, 16, 2, 64, torch.float16, seed=21)
    assert tri.decode_splits(2, 2, tables.shape[1] * 16, torch.device(DEVICE))[0] > 1
    q = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(22)).half().to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, out_ref = torch.full_like(q, NAN), torch.full_like(q, NAN)
    tri.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 0.125, out)
    ref.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, 0.125, out_ref)
    torch.testing.assert_close(out.float(), out_ref.float(), **tolerance(torch.float16, out_ref))

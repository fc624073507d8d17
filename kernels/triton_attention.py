"""Paged attention in Triton: decode over the engine's block tables (GQA), the store of new K/V, and the prefill path.

What it does:
- `store_kv`: a scatter kernel writing each new token's K/V (all kv heads) into its cache slot.
- `paged_attention_decode`: one program per (sequence, kv head) computes the attention of the GQA group of query
  heads sharing that kv head, with an online softmax over tiles of BLOCK_N keys gathered through the block table
  (any block size; a tile may span several blocks), so K/V are read once per kv head, not once per query head.
- `paged_attention` (prefill, chunked prefill, mixed): flash-attn's varlen API when it is importable on a CUDA
  device (K/V gathered contiguous per sequence first, since flash-attn's own paged mode needs 256-token pages),
  otherwise the torch reference (SDPA over the gathered K/V). `PREFILL_PATH` says which; the backend logs it.

- Split-KV decode (flash-decoding): when B x Hkv programs would leave the GPU idle (few sequences, long contexts),
  each sequence's keys are cut into `splits` contiguous ranges handled by separate programs, each storing its
  normalised partial output and log-sum-exp (float32); `_decode_reduce_kernel` combines them. The number of
  splits is chosen on the host from shapes only (block_tables' width x block size bounds every length), so the
  launch needs no host sync and captures into CUDA graphs; programs whose range starts past their sequence's
  length store an empty partial (lse = -inf) and exit.

What it does not do: decide the prefill path per call (fixed at import), or page K/V in flash-attn's own paged
mode (it needs 256-token pages).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from openlora.kernels import reference
from openlora.kernels.triton_lora import _add_combine, _dot_in_f32, _is16, _max_combine, _sm_count

DECODE_BLOCK_N = 32        # keys per online-softmax step (gathered through the block table); 64 spills at 4 warps
DECODE_PROGRAMS_PER_SM = 2  # split the keys when B x Hkv programs give fewer than this many programs per SM
DECODE_SPLIT_MIN_KEYS = 256  # ... but never into ranges of fewer keys than this (launch and reduce costs)
DECODE_MAX_SPLITS = 32
INTERPRETED_TARGET_PROGRAMS = 16   # the split target without a GPU (small, so the tests exercise split-KV)


def decode_warps(dot_f32: bool) -> int:
    """Warps per decode program: float32 tiles at head_dim 128 spill registers at 4 warps (Triton 3.6, sm_90)."""
    return 8 if dot_f32 else 4
STORE_BLOCK = 128          # head_dim tile of the store kernel

try:  # flash-attn builds only against a CUDA torch; on CPU hosts this import fails and SDPA is used.
    from flash_attn import flash_attn_varlen_func as _flash_varlen  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any failure (missing, ABI mismatch) means "not usable"
    _flash_varlen = None


def prefill_path(device: torch.device | str | None = None) -> str:
    """'flash-attn varlen' when flash-attn is importable and CUDA is available, else 'torch SDPA (reference)'."""
    if _flash_varlen is not None and torch.cuda.is_available() and (
            device is None or torch.device(device).type == "cuda"):
        return "flash-attn varlen (fp16/bf16 models; torch SDPA for fp32)"
    return "torch SDPA (reference)"


PREFILL_PATH = prefill_path()


# ------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    D, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cslot, stride_ch, stride_vcslot, stride_vch,
    BLOCK_D: tl.constexpr,
):
    """One program per (token, kv head): k_cache[slot // bs, slot % bs, h] = k[t, h] (same for v)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    if slot < 0:
        return
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        kv = tl.load(k_ptr + t.to(tl.int64) * stride_kt + h * stride_kh + offs, mask=m)
        vv = tl.load(v_ptr + t.to(tl.int64) * stride_vt + h * stride_vh + offs, mask=m)
        tl.store(k_cache_ptr + slot * stride_cslot + h * stride_ch + offs,
                 kv.to(k_cache_ptr.dtype.element_ty), mask=m)
        tl.store(v_cache_ptr + slot * stride_vcslot + h * stride_vch + offs,
                 vv.to(v_cache_ptr.dtype.element_ty), mask=m)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr, scale,
    GROUP, D, keys_per_split, num_splits,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_bt,
    stride_kb, stride_ko, stride_kh, stride_vb, stride_vo, stride_vh,
    BLOCK_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, SPLIT: tl.constexpr,
):
    """One program per (sequence b, kv head[, key range]): out[b, heads of the group] = softmax(q K^T * scale) V,
    online. SPLIT: the program covers keys [split * keys_per_split, + keys_per_split) of its sequence and stores
    the normalised partial output part_out[b, h, split, :] and its log-sum-exp part_lse[b, h, split] (float32;
    -inf for an empty range) for `_decode_reduce_kernel`."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    L = tl.load(seq_lens_ptr + b)
    n_start = 0
    if SPLIT:
        n_start = tl.program_id(2) * keys_per_split
        L = tl.minimum(L, n_start + keys_per_split)
    offs_g = tl.arange(0, BLOCK_G)
    gmask = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    heads = kvh * GROUP + offs_g                                                          # [BLOCK_G]
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)                           # [BLOCK_G, BLOCK_D]
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_G], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_G, BLOCK_D], 0.0, dtype=tl.float32)
    table = block_tables_ptr + b.to(tl.int64) * stride_bt
    for n0 in range(n_start, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < L
        blk = tl.load(table + offs_n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)   # [BLOCK_N]
        off = offs_n % BLOCK_SIZE
        kvmask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + off[:, None] * stride_ko + kvh * stride_kh
                    + offs_d[None, :], mask=kvmask, other=0.0)                             # [BLOCK_N, BLOCK_D]
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + off[:, None] * stride_vo + kvh * stride_vh
                    + offs_d[None, :], mask=kvmask, other=0.0)
        k = k.to(q.dtype)
        if DOT_F32:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(nmask[None, :], s * scale, float("-inf"))                            # [BLOCK_G, BLOCK_N]
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _add_combine)
        p = p.to(v.dtype)                       # probabilities rounded to V's dtype (as flash-attn does)
        if DOT_F32:
            acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p, v, acc * alpha[:, None])
        m_i = m_new
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        row = (b.to(tl.int64) * GROUP * tl.num_programs(1) + heads) * num_splits + tl.program_id(2)   # [BLOCK_G]
        tl.store(part_lse_ptr + row, lse, mask=gmask)
        tl.store(part_out_ptr + row[:, None] * D + offs_d[None, :], out, mask=gmask[:, None] & dmask[None, :])
    else:
        l_i = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, Hq, D, num_splits, stride_ob, stride_oh,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (sequence b, query head h): out[b, h] = sum_s w_s * part_out[b, h, s] / sum_s w_s with
    w_s = exp(part_lse[b, h, s] - max_s part_lse[b, h, s]) (empty ranges have lse -inf: weight 0)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = (b.to(tl.int64) * Hq + h) * num_splits
    offs_s = tl.arange(0, BLOCK_S)
    smask = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    lse = tl.load(part_lse_ptr + row + offs_s, mask=smask, other=float("-inf"))
    m = tl.reduce(lse, 0, _max_combine)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m)                                                                   # [BLOCK_S]
    o = tl.load(part_out_ptr + (row + offs_s)[:, None] * D + offs_d[None, :], mask=smask[:, None] & dmask[None, :],
                other=0.0)                                                                # [BLOCK_S, BLOCK_D]
    num = tl.reduce(o * w[:, None], 0, _add_combine)
    den = tl.reduce(w, 0, _add_combine)
    den = tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d, (num / den).to(out_ptr.dtype.element_ty),
             mask=dmask)


# ------------------------------------------------------------------------------------------------ launchers


def _check_cache(name: str, c: torch.Tensor) -> None:
    if c.dim() != 4 or c.stride(3) != 1:
        raise ValueError(f"{name} must be [num_blocks, block_size, num_kv_heads, head_dim] with unit stride "
                         f"along head_dim, got shape {tuple(c.shape)} strides {c.stride()}")


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new keys/values into the paged cache.

    Semantics:
        for t in range(T):
            if slot_mapping[t] < 0: continue                     # padding token: nothing written
            blk, off = divmod(slot_mapping[t], block_size)
            k_cache[blk, off] = k[t]; v_cache[blk, off] = v[t]
    Shapes: k, v [T, Hkv, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D]; slot_mapping [T] int64.
    """
    T, Hkv, D = k.shape
    if T == 0:
        return
    _check_cache("k_cache", k_cache)
    _check_cache("v_cache", v_cache)
    if k.stride(2) != 1 or v.stride(2) != 1:
        k, v = k.contiguous(), v.contiguous()
    # A flat slot s = blk * block_size + off addresses [blk, off] when block and offset strides nest.
    for c in (k_cache, v_cache):
        if c.stride(0) != c.shape[1] * c.stride(1):
            raise ValueError("the paged cache's block dim must be contiguous over its block_size dim")
    if slot_mapping.stride(0) != 1:
        slot_mapping = slot_mapping.contiguous()
    grid = (T, Hkv)
    _store_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        D, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        BLOCK_D=min(STORE_BLOCK, triton.next_power_of_2(D)),
    )


def decode_splits(batch: int, kv_heads: int, max_keys: int, device: torch.device) -> tuple[int, int]:
    """(splits, keys per split) for a decode launch: split each sequence's keys (at most `max_keys`, a bound known
    from shapes) until the launch has about DECODE_PROGRAMS_PER_SM programs per SM, in ranges of at least
    DECODE_SPLIT_MIN_KEYS keys (a multiple of DECODE_BLOCK_N); (1, max_keys) when B x Hkv fill the GPU already."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = DECODE_PROGRAMS_PER_SM * _sm_count(index)
    else:
        target = INTERPRETED_TARGET_PROGRAMS
    progs = batch * kv_heads
    splits = min(-(-target // progs), max_keys // DECODE_SPLIT_MIN_KEYS, DECODE_MAX_SPLITS)
    if splits <= 1:
        return 1, max_keys
    return _split_keys(max_keys, splits)


def _split_keys(max_keys: int, splits: int) -> tuple[int, int]:
    """(splits, keys per split): ranges that are multiples of DECODE_BLOCK_N, none of them empty by construction."""
    per = -(-max(1, -(-max_keys // max(1, splits))) // DECODE_BLOCK_N) * DECODE_BLOCK_N
    return -(-max_keys // per), per


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           out: torch.Tensor) -> None:
    """Decode attention: one new query token per sequence over its paged K/V (GQA).

    Semantics:
        for b in range(B):
            L = seq_lens[b]; K, V = gather(k_cache, v_cache, block_tables[b], L)   # [L, Hkv, D]
            out[b] = softmax(q[b] @ K.T * scale) @ V                               # kv head = h // (Hq // Hkv)
    Shapes: q [B, Hq, D], block_tables [B, max_blocks] int32, seq_lens [B] int32, out [B, Hq, D].
    """
    _paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, out)


def _paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, out, *,
                            splits: int | None = None) -> None:
    """paged_attention_decode with an optional forced number of key splits (tests, benchmarks)."""
    B, Hq, D = q.shape
    if B == 0:
        return
    _check_cache("k_cache", k_cache)
    _check_cache("v_cache", v_cache)
    Hkv, block_size = k_cache.shape[2], k_cache.shape[1]
    if Hq % Hkv != 0:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} kv heads")
    if q.stride(2) != 1 or out.stride(2) != 1 or block_tables.stride(1) != 1:
        raise ValueError("q, out and block_tables need unit stride along their last dim")
    if seq_lens.stride(0) != 1:
        seq_lens = seq_lens.contiguous()
    group = Hq // Hkv
    dot_f32 = _dot_in_f32(q.dtype, k_cache.dtype, v_cache.dtype)
    max_keys = block_tables.shape[1] * block_size          # bounds every sequence's length (no host sync)
    if splits is None:
        splits, per = decode_splits(B, Hkv, max_keys, q.device)
    else:
        splits, per = _split_keys(max_keys, splits)
    block_d = max(16, triton.next_power_of_2(D))
    part_out = part_lse = out                                          # unused without a split
    if splits > 1:
        part_out = torch.empty(B, Hq, splits, D, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(B, Hkv, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse, float(scale),
        group, D, per, splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        BLOCK_SIZE=block_size, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_D=block_d, BLOCK_N=DECODE_BLOCK_N, DOT_F32=dot_f32, SPLIT=splits > 1,
        num_warps=decode_warps(dot_f32),
    )
    if splits > 1:
        _decode_reduce_kernel[(B, Hq)](
            part_out, part_lse, out, Hq, D, splits, out.stride(0), out.stride(1),
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, num_warps=4,
        )


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cu_q_lens: torch.Tensor,
                    seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of new query tokens over each sequence's paged K/V (prefill, chunked prefill, decode).

    Semantics:
        for b in range(B):
            q_b = q[cu_q_lens[b]:cu_q_lens[b + 1]]                 # [n_b, Hq, D]; the LAST n_b positions
            L = seq_lens[b]                                         # context length including these n_b tokens
            K, V = gather(k_cache, v_cache, block_tables[b], L)    # [L, Hkv, D] each, via the block table
            query i sits at position L - n_b + i and attends to keys 0 .. L - n_b + i (causal)
            out_b = softmax(q_b @ K.T * scale + causal_mask) @ V   # GQA: kv head = q head // (Hq // Hkv)
        return out  # [T, Hq, D]
    Runs flash-attn's varlen kernel on CUDA when importable (bottom-right aligned causal mask = the semantics
    above), else the torch reference.
    """
    if q.device.type == "cuda" and _flash_varlen is not None and _is16(q.dtype):
        return _paged_attention_flash(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale)
    return reference.paged_attention(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale)


def _paged_attention_flash(q, k_cache, v_cache, cu_q_lens, seq_lens, block_tables, scale):  # pragma: no cover
    """Gather each sequence's K/V contiguous (one index op for the batch), then flash_attn_varlen_func."""
    bs = k_cache.shape[1]
    lens = seq_lens.long()
    cu_k = torch.zeros(lens.shape[0] + 1, dtype=torch.int32, device=q.device)
    cu_k[1:] = torch.cumsum(lens, 0)
    total_k = int(cu_k[-1].item())
    seq_of = torch.repeat_interleave(torch.arange(lens.shape[0], device=q.device), lens, output_size=total_k)
    pos = torch.arange(total_k, device=q.device) - cu_k.long()[seq_of]
    slots = block_tables.long()[seq_of, pos // bs] * bs + pos % bs                     # [total_k]
    k = k_cache.flatten(0, 1)[slots]
    v = v_cache.flatten(0, 1)[slots]
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    return _flash_varlen(q, k, v, cu_q_lens.to(torch.int32), cu_k, int(q_lens.max().item()),
                         int(lens.max().item()), softmax_scale=scale, causal=True)

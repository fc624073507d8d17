"""Pure-torch references for every kernel of the engine: batched LoRA (SGMV/BGMV) and paged attention.

These are the semantics. The Triton kernels (kernels/triton_*.py) have the same signatures and are tested against
these functions; on CPU the engine runs these directly. They are written with segment/gather tensor ops, one
Python iteration per distinct adapter segment at most, never per request token.

Weight layout shared by all LoRA kernels (one pool per layer and target module):
    a_pool          # [num_rows, in_features]   rank rows of A (PEFT lora_A.weight is [r, in])
    b_pool          # [num_rows, out_features]  rank rows of B^T (PEFT lora_B.weight is [out, r])
    slot_row_start  # [num_slots] int32  first row of each adapter slot in the pools
    slot_rank       # [num_slots] int32  rank of each slot (0 = empty slot)
    slot_scale      # [num_slots] float32 lora_alpha / r (or / sqrt(r) for rslora)
An adapter of rank r occupies rows [slot_row_start[s], slot_row_start[s] + r) of both pools: any mix of ranks
shares one pool with no padding to a maximum rank.

Slices (fused linears: LoRA targets that share their input, e.g. q/k/v of a fused qkv projection, or gate/up):
every LoRA op also takes S slices at once, so that one launch serves a whole fused linear:
    a_pool          # [S, num_rows, in_features]       slice s: the A rows of the s-th target
    b_pool          # [num_rows, n_0 + ... + n_{S-1}]  the targets' B^T rows side by side (as their outputs are)
    buf             # [S, T, R]                        slice s: the s-th target's rank-sized result
    slot_rank       # [S, num_slots]  (0 where an adapter does not target slice s: nothing computed or written)
    slot_scale      # [S, num_slots]
    slices          # (n_0, ..., n_{S-1}): expand only, the output width of each slice
The semantics are those of the single op for each slice s (see `for_each_slice_shrink` / `for_each_slice_expand`);
the 2-D forms (one slice) are unchanged.

KV cache layout (per layer): k_cache, v_cache # [num_blocks, block_size, num_kv_heads, head_dim].
A token at position p of a sequence lives in block block_table[p // block_size], offset p % block_size.
"""

from __future__ import annotations

import torch


def _sgmv_shrink_one(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
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
    starts = seg_starts.tolist()
    slots = seg_slots.tolist()
    ranks = slot_rank.tolist()
    rows = slot_row_start.tolist()
    for s, slot in enumerate(slots):
        t0, t1 = starts[s], starts[s + 1]
        if slot < 0 or t1 <= t0 or ranks[slot] == 0:
            continue
        r, o = ranks[slot], rows[slot]
        buf[t0:t1, :r] = (x[t0:t1].float() @ a_pool[o:o + r].float().T).to(buf.dtype)


def _sgmv_expand_one(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
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
    starts = seg_starts.tolist()
    slots = seg_slots.tolist()
    ranks = slot_rank.tolist()
    rows = slot_row_start.tolist()
    n = b_pool.shape[1]
    for s, slot in enumerate(slots):
        t0, t1 = starts[s], starts[s + 1]
        if slot < 0 or t1 <= t0 or ranks[slot] == 0:
            continue
        r, o = ranks[slot], rows[slot]
        delta = (buf[t0:t1, :r].float() @ b_pool[o:o + r].float()) * slot_scale[slot].float()
        view = y[t0:t1, y_offset:y_offset + n]
        view.copy_((view.float() + delta).to(y.dtype))


def _bgmv_shrink_one(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, token_slots: torch.Tensor,
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
    if T == 0:
        return
    slots = token_slots.long()
    valid = slots >= 0
    safe = slots.clamp(min=0)
    ranks = torch.where(valid, slot_rank.long()[safe], torch.zeros_like(safe))  # [T]
    col = torch.arange(R, device=x.device)
    mask = col[None, :] < ranks[:, None]                                         # [T, R]
    rows = (slot_row_start.long()[safe][:, None] + col[None, :]).clamp(max=a_pool.shape[0] - 1)
    a = a_pool[rows].float()                                                     # [T, R, in]
    out = torch.einsum("ti,tri->tr", x.float(), a)
    buf.copy_(torch.where(mask, out.to(buf.dtype), buf))


def _bgmv_expand_one(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
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
    if T == 0:
        return
    n = b_pool.shape[1]
    slots = token_slots.long()
    valid = slots >= 0
    safe = slots.clamp(min=0)
    ranks = torch.where(valid, slot_rank.long()[safe], torch.zeros_like(safe))
    col = torch.arange(R, device=y.device)
    mask = col[None, :] < ranks[:, None]
    rows = (slot_row_start.long()[safe][:, None] + col[None, :]).clamp(max=b_pool.shape[0] - 1)
    # rows past a slot's rank belong to other slots or to no slot (garbage, possibly NaN): zero them, 0 * NaN = NaN
    b = torch.where(mask[:, :, None], b_pool[rows].float(), 0.0)                 # [T, R, n]
    coef = torch.where(mask, buf.float(), torch.zeros((), device=y.device))      # NaN-safe masking
    delta = torch.einsum("tr,trn->tn", coef, b) * slot_scale.float()[safe][:, None]
    view = y[:, y_offset:y_offset + n]
    updated = (view.float() + delta).to(y.dtype)
    view.copy_(torch.where((ranks > 0)[:, None], updated, view))


# ------------------------------------------------------------------------------------------------ slices


def shrink_slices(a_pool: torch.Tensor, buf: torch.Tensor, slot_rank: torch.Tensor) -> int:
    """The number of slices of a shrink call (0: the 2-D one-slice form); ValueError on inconsistent shapes."""
    if a_pool.dim() == 2:
        if buf.dim() != 2 or slot_rank.dim() != 1:
            raise ValueError(f"one-slice shrink: a_pool [P, in] needs buf [T, R] and slot_rank [slots], got buf "
                             f"{tuple(buf.shape)} and slot_rank {tuple(slot_rank.shape)}")
        return 0
    S = a_pool.shape[0] if a_pool.dim() == 3 else -1
    if S < 1 or buf.dim() != 3 or buf.shape[0] != S or slot_rank.dim() != 2 or slot_rank.shape[0] != S:
        raise ValueError(f"sliced shrink: a_pool [S, P, in] needs buf [S, T, R] and slot_rank [S, slots] with the "
                         f"same S, got a_pool {tuple(a_pool.shape)}, buf {tuple(buf.shape)}, slot_rank "
                         f"{tuple(slot_rank.shape)}")
    return S


def expand_slices(buf: torch.Tensor, b_pool: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                  slices) -> tuple[int, ...] | None:
    """The output width of each slice of an expand call (None: the 2-D one-slice form); ValueError when they
    do not add up to b_pool's width or the shapes disagree."""
    if buf.dim() == 2:
        if slices is not None and tuple(slices) != (b_pool.shape[1],):
            raise ValueError(f"one-slice expand (buf [T, R]): slices must be None or ({b_pool.shape[1]},), "
                             f"got {slices}")
        if slot_rank.dim() != 1 or slot_scale.dim() != 1:
            raise ValueError("one-slice expand: slot_rank and slot_scale must be [slots]")
        return None
    if buf.dim() != 3:
        raise ValueError(f"expand: buf must be [T, R] or [S, T, R], got {tuple(buf.shape)}")
    S = buf.shape[0]
    widths = (b_pool.shape[1],) if slices is None and S == 1 else tuple(int(n) for n in (slices or ()))
    if len(widths) != S or any(n < 0 for n in widths) or sum(widths) != b_pool.shape[1]:
        raise ValueError(f"sliced expand: slices {slices} must give {S} non-negative widths adding up to b_pool's "
                         f"{b_pool.shape[1]} columns")
    for name, t in (("slot_rank", slot_rank), ("slot_scale", slot_scale)):
        if t.dim() != 2 or t.shape[0] != S:
            raise ValueError(f"sliced expand: {name} must be [{S}, slots], got {tuple(t.shape)}")
    return widths


def for_each_slice_shrink(one, x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, *meta) -> None:
    """A shrink op over slices, as the semantics define it: `one` (the one-slice op) for each slice.
    meta = the op's metadata arguments, slot_rank last."""
    S = shrink_slices(a_pool, buf, meta[-1])
    if S == 0:
        one(x, a_pool, buf, *meta)
        return
    for s in range(S):
        one(x, a_pool[s], buf[s], *meta[:-1], meta[-1][s])


def for_each_slice_expand(one, buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, *meta,
                          y_offset: int = 0, slices=None) -> None:
    """An expand op over slices: `one` for each slice, with b_pool's and y's columns of that slice.
    meta = the op's metadata arguments, slot_rank and slot_scale last."""
    widths = expand_slices(buf, b_pool, meta[-2], meta[-1], slices)
    if widths is None:
        one(buf, b_pool, y, *meta, y_offset)
        return
    off = 0
    for s, n in enumerate(widths):
        one(buf[s], b_pool[:, off:off + n], y, *meta[:-2], meta[-2][s], meta[-1][s], y_offset + off)
        off += n


def sgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """`_sgmv_shrink_one` for each slice (see the module docstring)."""
    for_each_slice_shrink(_sgmv_shrink_one, x, a_pool, buf, seg_starts, seg_slots, slot_row_start, slot_rank)


def sgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, seg_starts: torch.Tensor,
                seg_slots: torch.Tensor, slot_row_start: torch.Tensor, slot_rank: torch.Tensor,
                slot_scale: torch.Tensor, y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
    """`_sgmv_expand_one` for each slice (see the module docstring)."""
    for_each_slice_expand(_sgmv_expand_one, buf, b_pool, y, seg_starts, seg_slots, slot_row_start, slot_rank,
                          slot_scale, y_offset=y_offset, slices=slices)


def bgmv_shrink(x: torch.Tensor, a_pool: torch.Tensor, buf: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor) -> None:
    """`_bgmv_shrink_one` for each slice (see the module docstring)."""
    for_each_slice_shrink(_bgmv_shrink_one, x, a_pool, buf, token_slots, slot_row_start, slot_rank)


def bgmv_expand(buf: torch.Tensor, b_pool: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor,
                slot_row_start: torch.Tensor, slot_rank: torch.Tensor, slot_scale: torch.Tensor,
                y_offset: int = 0, slices: tuple[int, ...] | None = None) -> None:
    """`_bgmv_expand_one` for each slice (see the module docstring)."""
    for_each_slice_expand(_bgmv_expand_one, buf, b_pool, y, token_slots, slot_row_start, slot_rank, slot_scale,
                          y_offset=y_offset, slices=slices)



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
    valid = slot_mapping >= 0
    idx = slot_mapping[valid].long()
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, idx, k[valid].to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, idx, v[valid].to(v_cache.dtype))


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
    The new tokens' K/V must already be in the cache (store_kv first).
    Sequences with one new token are computed together in one batched call; longer ones one by one.
    """
    T, Hq, D = q.shape
    Hkv, bs = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q)
    cu = cu_q_lens.tolist()
    lens = seq_lens.tolist()
    singles = [b for b in range(len(lens)) if cu[b + 1] - cu[b] == 1]
    if singles:
        idx = torch.tensor([cu[b] for b in singles], dtype=torch.long, device=q.device)
        sel = torch.tensor(singles, dtype=torch.long, device=q.device)
        out[idx] = _decode(q[idx], k_cache, v_cache, block_tables[sel], seq_lens[sel], scale)
    for b in range(len(lens)):
        q0, q1, L = cu[b], cu[b + 1], lens[b]
        n = q1 - q0
        if n <= 1:
            continue
        nblk = (L + bs - 1) // bs
        blocks = block_tables[b, :nblk].long()
        K = k_cache[blocks].reshape(-1, Hkv, D)[:L]
        V = v_cache[blocks].reshape(-1, Hkv, D)[:L]
        out[q0:q1] = _attend(q[q0:q1], K, V, scale, L - n)
    return out


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
    if q.shape[0]:
        out.copy_(_decode(q, k_cache, v_cache, block_tables, seq_lens, scale))


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """All sequences at once: gather [B, max_len] keys through the block tables, mask past each length."""
    B, Hq, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max())
    nblk = (max_len + bs - 1) // bs
    blocks = block_tables[:, :nblk].long().clamp(min=0)       # entries past a sequence's end may be -1
    valid = torch.arange(nblk * bs, device=q.device)[None, :] < seq_lens.long()[:, None]   # [B, Lp]
    # slots past each length hold whatever the cache holds (stale or uninitialised, possibly NaN/inf): zero them,
    # since a masked score still multiplies its V row (0 * NaN = NaN)
    keep = valid[:, None, :, None]
    K = torch.where(keep, k_cache[blocks].reshape(B, nblk * bs, Hkv, D).transpose(1, 2).float(), 0.0)  # [B, Hkv, Lp, D]
    V = torch.where(keep, v_cache[blocks].reshape(B, nblk * bs, Hkv, D).transpose(1, 2).float(), 0.0)
    o = torch.nn.functional.scaled_dot_product_attention(
        q.float()[:, :, None, :], K, V, attn_mask=valid[:, None, None, :], scale=scale, enable_gqa=Hq != Hkv)
    return o[:, :, 0, :].to(q.dtype)


def _attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale: float, past: int) -> torch.Tensor:
    """q [n, Hq, D] at positions past..past+n-1; K, V [L, Hkv, D]. Causal (bottom-right aligned), GQA."""
    n, Hq, _ = q.shape
    L, Hkv, _ = K.shape
    qh = q.transpose(0, 1).float()[None]                             # [1, Hq, n, D]
    kh = K.transpose(0, 1).float()[None]                             # [1, Hkv, L, D]
    vh = V.transpose(0, 1).float()[None]
    gqa = Hq != Hkv
    if past == 0:   # plain causal: SDPA's fused path, much faster on CPU than an explicit mask
        o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale,
                                                             enable_gqa=gqa)
    else:
        mask = torch.arange(L, device=q.device)[None, :] <= torch.arange(past, past + n, device=q.device)[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale,
                                                             enable_gqa=gqa)
    return o[0].transpose(0, 1).to(q.dtype)

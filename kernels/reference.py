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

KV cache layout (per layer): k_cache, v_cache # [num_blocks, block_size, num_kv_heads, head_dim].
A token at position p of a sequence lives in block block_table[p // block_size], offset p % block_size.
"""

from __future__ import annotations

import torch


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

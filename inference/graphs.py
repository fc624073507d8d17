"""Decode steps replayed as CUDA graphs: one captured forward per (batch-size bucket, LoRA rank bucket).

What it does: an all-decode step (every scheduled sequence has one new token) is padded to the next batch-size
bucket and run from static input buffers (token ids, positions, cache slots, context lengths, block tables, each
token's adapter slot). On CUDA the forward over those buffers is captured once per bucket and replayed, so a step
costs a few host microseconds instead of one Python dispatch per op and kernel (hundreds per step at 32 layers).
Padding rows are inert: their cache slot is -1 (the K/V store skips them), their adapter slot is -1 (LoRA skips
them), their context is one token of block 0 (read, never written), and their logits are dropped.
Everything a captured graph reads is updated in place between replays: the static buffers here, the KV cache, and
the LoRA pool's weights and slot tables (LoRAPool writes them in place). LoRA in a graph always takes the
per-token (BGMV) form, and `buf` is as wide as the rank bucket (kernels skip rows past each slot's own rank).
What it does not do: prefill or mixed steps (they stay eager: their shapes vary too much), or decide when to use
graphs (the runner asks `eligible`). Mode "static" runs the same padded static path without capturing, on any
device: tests use it on CPU to check the inputs a graph would see.
"""

from __future__ import annotations

import logging
import time

import torch

from openlora.inference.lora import MAX_PARTS, LoRABatch, LoRAPool
from openlora.inference.model import AttentionBatch, LlamaServingModel

log = logging.getLogger("openlora.engine")

_BS_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
MIN_RANK_BUCKET = 16


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The padded batch sizes used, up to and including max_batch."""
    out = tuple(b for b in _BS_BUCKETS if b < max_batch)
    return out + (max_batch,)


def rank_bucket(max_rank: int, cap: int) -> int:
    """0 for no LoRA in the batch, else the next power of two >= max_rank (at least 16, at most cap)."""
    if max_rank <= 0:
        return 0
    b = MIN_RANK_BUCKET
    while b < max_rank:
        b *= 2
    return min(b, max(cap, max_rank))


def block_table_tensor(tables: list[list[int]], rows: int) -> torch.Tensor:
    """Host int32 [rows, longest table] of block ids, zero-padded (rows past len(tables) are all block 0)."""
    bt = torch.zeros(rows, max(len(t) for t in tables), dtype=torch.int32)
    for i, t in enumerate(tables):
        bt[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
    return bt


class DecodeGraphs:
    """Static decode inputs and, in mode "capture", the CUDA graphs replaying the model over them."""

    def __init__(self, model: LlamaServingModel, kv_caches, pool: LoRAPool, max_batch: int, max_blocks: int,
                 max_rank: int, mode: str):
        if mode not in ("capture", "static"):
            raise ValueError(f"decode graph mode {mode!r}: allowed are 'capture', 'static'")
        self.model, self.kv_caches, self.pool, self.mode = model, kv_caches, pool, mode
        self.buckets = batch_buckets(max_batch)
        self.max_batch, self.max_rank = max_batch, max_rank
        dev = model.device
        B = max_batch
        self.input_ids = torch.zeros(B, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(B, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.full((B,), -1, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(B, dtype=torch.int32, device=dev)
        self.cu_q_lens = torch.arange(B + 1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(B, max_blocks, dtype=torch.int32, device=dev)
        self.token_slots = torch.full((B,), -1, dtype=torch.int32, device=dev)
        self.logits_indices = torch.arange(B, dtype=torch.int64, device=dev)
        self.seg_starts = torch.zeros(B + 1, dtype=torch.int32, device=dev)     # unused by BGMV; kept valid
        self.seg_slots = torch.full((B,), -1, dtype=torch.int32, device=dev)
        self._bufs: dict[int, torch.Tensor] = {}
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool_handle = None
        self.captures = 0
        self.replays = 0           # steps served from the static buffers (replayed, or run eagerly in "static")

    # ------------------------------------------------------------------------------------------- inputs

    def eligible(self, num_seqs: int, max_rank: int) -> bool:
        return 0 < num_seqs <= self.max_batch and max_rank <= self.max_rank

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _fill(self, n: int, bs: int, ids: list[int], pos: list[int], slots_map: list[int], lens: list[int],
              tables: list[list[int]], tok_slots: list[int]) -> None:
        """Copy one step's inputs into the static buffers (one host->device copy per buffer) and reset padding."""
        bt = block_table_tensor(tables, bs)
        pad = bs - n
        self.input_ids[:bs].copy_(torch.tensor(ids + [0] * pad, dtype=torch.int64), non_blocking=True)
        self.positions[:bs].copy_(torch.tensor(pos + [0] * pad, dtype=torch.int64), non_blocking=True)
        self.slot_mapping[:bs].copy_(torch.tensor(slots_map + [-1] * pad, dtype=torch.int64), non_blocking=True)
        self.seq_lens[:bs].copy_(torch.tensor(lens + [1] * pad, dtype=torch.int32), non_blocking=True)
        self.token_slots[:bs].copy_(torch.tensor(tok_slots + [-1] * pad, dtype=torch.int32), non_blocking=True)
        self.block_tables[:bs, :bt.shape[1]].copy_(bt.to(self.model.device, non_blocking=True))

    def _batch(self, bs: int, rank: int) -> tuple[AttentionBatch, LoRABatch | None]:
        attn = AttentionBatch(positions=self.positions[:bs], slot_mapping=self.slot_mapping[:bs],
                              cu_q_lens=self.cu_q_lens[:bs + 1], seq_lens=self.seq_lens[:bs],
                              block_tables=self.block_tables[:bs], decode=True)
        if rank == 0:
            return attn, None
        if rank not in self._bufs:
            self._bufs[rank] = torch.zeros(MAX_PARTS, self.max_batch, rank, dtype=torch.float32,
                                           device=self.model.device)
        lora = LoRABatch(token_slots=self.token_slots[:bs], seg_starts=self.seg_starts[:bs + 1],
                         seg_slots=self.seg_slots[:bs], max_rank=rank, decode=True, buf=self._bufs[rank][:, :bs])
        return attn, lora

    def _forward(self, bs: int, rank: int) -> torch.Tensor:
        attn, lora = self._batch(bs, rank)
        return self.model.forward(self.input_ids[:bs], attn, self.kv_caches, lora,
                                  self.pool if lora is not None else None, self.logits_indices[:bs])

    # ------------------------------------------------------------------------------------------- run

    def run(self, ids: list[int], pos: list[int], slots_map: list[int], lens: list[int], tables: list[list[int]],
            tok_slots: list[int], max_rank: int) -> torch.Tensor:
        """Logits [n, vocab] for a decode step of n sequences (n == len(ids)), in the order given."""
        n = len(ids)
        bs = self._bucket(n)
        rank = rank_bucket(max_rank, self.max_rank)
        self._fill(n, bs, ids, pos, slots_map, lens, tables, tok_slots)
        if self.mode == "static":
            self.replays += 1
            return self._forward(bs, rank)[:n]
        key = (bs, rank)
        if key not in self._graphs:
            self._capture(bs, rank)
        graph, out = self._graphs[key]
        graph.replay()
        self.replays += 1
        return out[:n]

    def _capture(self, bs: int, rank: int) -> None:
        t0 = time.perf_counter()
        # Warm up on a side stream (Triton compiles, the caching allocator settles), then capture.
        stream = torch.cuda.Stream(self.model.device)
        stream.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(bs, rank)
        torch.cuda.current_stream(self.model.device).wait_stream(stream)
        if self._pool_handle is None:
            self._pool_handle = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool_handle):
            out = self._forward(bs, rank)
        self._graphs[(bs, rank)] = (graph, out)
        self.captures += 1
        log.info(f"captured a decode CUDA graph: batch {bs}, LoRA rank bucket {rank} "
                 f"({(time.perf_counter() - t0) * 1e3:.0f} ms; {len(self._graphs)} graphs)")

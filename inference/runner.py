"""The model runner: owns the weights, the paged KV cache tensors and the LoRA pool; turns a `SchedulerOutput`
into one forward pass.

What it does: orders the scheduled sequences so each adapter's tokens form one contiguous segment, builds the flat
token/position/slot-mapping tensors, block tables, and LoRA segment metadata (scratch allocated once at maximum
size and sliced per step), runs the model and returns logits for the sequences that sample this step.
What it does not do: choose what runs (scheduler.py) or pick tokens (sampling.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from openlora.inference.graphs import DecodeGraphs, block_table_tensor
from openlora.inference.kv_cache import BlockPool
from openlora.inference.lora import MAX_PARTS, LoRABatch, LoRAPool
from openlora.inference.model import AttentionBatch, LlamaServingModel
from openlora.inference.model_config import ModelSpec
from openlora.inference.scheduler import ScheduledSeq, SchedulerOutput

log = logging.getLogger("openlora.engine")


@dataclass
class RunnerOutput:
    logits: torch.Tensor              # [num_sampled, vocab] float32
    request_ids: list[str]            # row order of logits


def kv_bytes_per_block(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * elem


class ModelRunner:
    def __init__(self, spec: ModelSpec, model: LlamaServingModel, pool: LoRAPool, blocks: BlockPool,
                 max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int, decode_graphs: str = "off",
                 max_lora_rank: int = 256):
        self.spec, self.model, self.pool, self.blocks = spec, model, pool, blocks
        self.device, self.dtype = model.device, model.dtype
        shape = (blocks.num_blocks, blocks.block_size, spec.num_kv_heads, spec.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                           torch.zeros(shape, dtype=self.dtype, device=self.device))
                          for _ in range(spec.num_layers)]
        self.max_blocks_per_seq = blocks.blocks_needed(max_model_len)
        # Scratch allocated once at its maximum size and sliced per step.
        self._lora_buf = torch.zeros(MAX_PARTS, max_num_batched_tokens, 64, dtype=torch.float32, device=self.device)
        # All-decode steps run from static buffers, replayed as CUDA graphs ("capture") or eagerly ("static").
        self.graphs = None
        if decode_graphs != "off":
            self.graphs = DecodeGraphs(model, self.kv_caches, pool, max_num_seqs, self.max_blocks_per_seq,
                                       max_lora_rank, decode_graphs)

    def _lora_buf_for(self, T: int, rank: int) -> torch.Tensor:
        if rank > self._lora_buf.shape[2] or T > self._lora_buf.shape[1]:
            self._lora_buf = torch.zeros(MAX_PARTS, max(T, self._lora_buf.shape[1]), max(rank, self._lora_buf.shape[2]),
                                         dtype=torch.float32, device=self.device)
        return self._lora_buf[:, :T, :rank]

    def run(self, out: SchedulerOutput) -> RunnerOutput:
        # Adapter-less sequences first, then by slot: every adapter's tokens are one segment.
        items: list[ScheduledSeq] = sorted(out.scheduled, key=lambda s: -1 if s.seq.slot is None else s.seq.slot)
        bs = self.blocks.block_size
        ids, pos, slots_map, tok_slots = [], [], [], []
        cu, lens, tables = [0], [], []
        seg_starts, seg_slots = [0], []
        logits_idx, sampled_ids = [], []
        max_rank, decode = 0, True
        fused: set[str] = set()
        for s in items:
            seq, n = s.seq, s.num_new_tokens
            start = seq.num_computed
            ids.extend(seq.tokens[start:start + n])
            p = list(range(start, start + n))
            pos.extend(p)
            table = seq.blocks.block_ids
            slots_map.extend(table[q // bs] * bs + q % bs for q in p)
            slot = -1 if seq.slot is None else seq.slot
            tok_slots.extend([slot] * n)
            if seg_slots and seg_slots[-1] == slot:
                seg_starts[-1] += n
            else:
                seg_slots.append(slot)
                seg_starts.append(seg_starts[-1] + n)
            if seq.adapter is not None:
                max_rank = max(max_rank, self.pool.rows_of(seq.slot))
                fused |= self.pool.fused_of(seq.slot)
            cu.append(cu[-1] + n)
            lens.append(start + n)
            tables.append(table)
            decode = decode and n == 1
            if s.sample:
                logits_idx.append(cu[-1] - 1)
                sampled_ids.append(seq.request_id)
        T = len(ids)
        if (decode and self.graphs is not None and len(logits_idx) == len(items)
                and self.graphs.eligible(len(items), max_rank)):
            logits = self.graphs.run(ids, pos, slots_map, lens, tables, tok_slots, max_rank)
            return RunnerOutput(logits=logits, request_ids=sampled_ids)
        dev = self.device
        bt = block_table_tensor(tables, len(tables))
        attn = AttentionBatch(
            positions=torch.tensor(pos, dtype=torch.int64, device=dev),
            slot_mapping=torch.tensor(slots_map, dtype=torch.int64, device=dev),
            cu_q_lens=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            block_tables=bt.to(dev), decode=decode)
        lora = None
        if max_rank > 0:
            lora = LoRABatch(
                token_slots=torch.tensor(tok_slots, dtype=torch.int32, device=dev),
                seg_starts=torch.tensor(seg_starts, dtype=torch.int32, device=dev),
                seg_slots=torch.tensor(seg_slots, dtype=torch.int32, device=dev),
                max_rank=max_rank, buf=self._lora_buf_for(T, max_rank), fused=frozenset(fused),
                decode=decode and len(seg_slots) >= self.model.backend.decode_bgmv_min_segments)
        logits = self.model.forward(torch.tensor(ids, dtype=torch.int64, device=dev), attn, self.kv_caches, lora,
                                    self.pool if lora is not None else None,
                                    torch.tensor(logits_idx, dtype=torch.int64, device=dev))
        return RunnerOutput(logits=logits, request_ids=sampled_ids)

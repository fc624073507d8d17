"""Memory sizing of the engine: the KV cache, the LoRA pool and the host tier from free memory and the model's shapes.

What it does: `plan_memory` turns the engine config's "auto" byte sizes into numbers: what the model needs (KV
for `max_num_seqs` sequences of the context length, `max_loras` adapters at `AUTO_LORA_RANK` rows each, a host
tier of `HOST_TIER_ADAPTERS` x the pool) capped by a share of the memory that is free once the weights are loaded
(`MemAvailable` for a CPU device, `torch.cuda.mem_get_info` for a GPU). Explicit byte sizes are kept as given.
The result (`MemoryPlan`) says where each number came from; the engine logs it at start.
What it does not do: allocate anything, or resize at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from openlora.inference.model_config import ModelSpec

AUTO = "auto"
# A CPU's memory is the host's: shared with the OS, the node and other programs. The engine takes at most this share
# of what is available at start, then splits it.
CPU_BUDGET_SHARE = 0.30
CPU_KV_CAP_BYTES = 4 * 2**30                 # as vLLM CPU's default KV space (VLLM_CPU_KVCACHE_SPACE=4 GiB)
GPU_BUDGET_SHARE = 0.90                      # of the device memory free after the weights (less activations)
KV_SHARE, POOL_SHARE = 0.60, 0.25            # of the budget (on a GPU the KV cache takes all the pool leaves)
AUTO_LORA_RANK = 32                          # rows per resident adapter slot the auto pool is sized for
HOST_TIER_ADAPTERS = 4                       # the host tier holds this many pools' worth of adapters
HOST_SHARE = 0.25                            # ... at most this share of the host's available memory
MIN_POOL_ROWS = 64
# the fixed defaults before auto sizing: floors (small models keep them), within the memory caps
FLOOR_POOL_BYTES, FLOOR_KV_BYTES, FLOOR_HOST_BYTES = 64 * 2**20, 256 * 2**20, 4 * 2**30


@dataclass(frozen=True)
class MemoryPlan:
    kv_cache_bytes: int
    lora_pool_bytes: int
    host_cache_bytes: int
    free_bytes: int                  # memory free on the engine's device when planned
    host_free_bytes: int             # host memory available when planned
    sources: dict                    # field -> "auto (...)" or "config"

    def describe(self, kv_tokens: int, pool_rows: int, pool_adapters: int) -> str:
        gib = 2**30
        return (f"memory: KV cache {self.kv_cache_bytes / gib:.2f} GiB ({kv_tokens} tokens; "
                f"{self.sources['kv_cache_bytes']}), LoRA pool {self.lora_pool_bytes / gib:.2f} GiB ({pool_rows} "
                f"rank-rows = {pool_adapters} adapters of rank {AUTO_LORA_RANK}; {self.sources['lora_pool_bytes']}), "
                f"host tier {self.host_cache_bytes / gib:.2f} GiB ({self.sources['host_cache_bytes']}); free at "
                f"start: device {self.free_bytes / gib:.1f} GiB, host {self.host_free_bytes / gib:.1f} GiB")


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory / 2."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def device_free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def kv_bytes_per_token(spec: ModelSpec, dtype: torch.dtype) -> int:
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * element_size(dtype)


def lora_bytes_per_row(spec: ModelSpec, dtype: torch.dtype) -> int:
    shapes = spec.module_shapes()
    return sum(fin + fout for fin, fout in shapes.values()) * spec.num_layers * element_size(dtype)


def activation_bytes(spec: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """A generous bound on one step's live activations (float32): the widest intermediates of a layer for every
    token of the step, plus logits of the sampled rows."""
    per_token = 4 * (4 * spec.hidden_size + 3 * spec.intermediate_size + spec.q_size + 2 * spec.kv_size)
    return max_num_batched_tokens * per_token + max_num_seqs * spec.vocab_size * 4 * 2


def plan_memory(spec: ModelSpec, dtype: torch.dtype, device: torch.device, *, kv_cache_bytes, lora_pool_bytes,
                host_cache_bytes, max_num_seqs: int, max_model_len: int, max_loras: int,
                max_num_batched_tokens: int, max_lora_rank: int = 256, free_bytes: int | None = None,
                host_free_bytes: int | None = None) -> MemoryPlan:
    """Resolve "auto" sizes (see the module's docstring). `free_bytes` / `host_free_bytes` override the probes
    (tests)."""
    free = device_free_bytes(device) if free_bytes is None else int(free_bytes)
    host_free = host_available_bytes() if host_free_bytes is None else int(host_free_bytes)
    if device.type == "cuda":
        budget = max(0, int(GPU_BUDGET_SHARE * free) - activation_bytes(spec, max_num_batched_tokens, max_num_seqs))
    else:
        budget = int(CPU_BUDGET_SHARE * free)
    sources: dict = {}

    row = lora_bytes_per_row(spec, dtype)
    if lora_pool_bytes == AUTO:
        need = max(max_loras * AUTO_LORA_RANK, 2 * max_lora_rank) * row
        # never below the fixed size used before auto sizing (small models), unless memory is short
        pool = max(MIN_POOL_ROWS * row, min(max(need, FLOOR_POOL_BYTES), int(POOL_SHARE * budget)))
        sources["lora_pool_bytes"] = (f"auto: {max_loras} slots x rank {AUTO_LORA_RANK}"
                                      + (f", capped at {POOL_SHARE:.0%} of the budget" if pool < need else ""))
    else:
        pool = int(lora_pool_bytes)
        sources["lora_pool_bytes"] = "config"

    per_tok = kv_bytes_per_token(spec, dtype)
    if kv_cache_bytes == AUTO:
        need = max_num_seqs * max_model_len * per_tok
        if device.type == "cuda":      # a GPU's memory is the engine's own: the KV cache takes what the pool leaves
            share = max(0, budget - pool)
        else:
            share = min(int(KV_SHARE * budget), CPU_KV_CAP_BYTES)
        kv = max(per_tok * max_model_len, min(max(need, FLOOR_KV_BYTES), share))  # >= one full-length sequence
        why = f"auto: {max_num_seqs} seqs x {max_model_len} tokens"
        if kv < need:
            why += (", capped by free device memory" if device.type == "cuda"
                    else f", capped at {KV_SHARE:.0%} of the budget and {CPU_KV_CAP_BYTES >> 30} GiB")
        sources["kv_cache_bytes"] = why
    else:
        kv = int(kv_cache_bytes)
        sources["kv_cache_bytes"] = "config"

    if host_cache_bytes == AUTO:
        need = HOST_TIER_ADAPTERS * pool
        host = max(pool, min(max(need, FLOOR_HOST_BYTES), int(HOST_SHARE * host_free)))
        sources["host_cache_bytes"] = (f"auto: {HOST_TIER_ADAPTERS} x the LoRA pool"
                                       + (f", capped at {HOST_SHARE:.0%} of available host memory"
                                          if host < need else ""))
    else:
        host = int(host_cache_bytes)
        sources["host_cache_bytes"] = "config"
    return MemoryPlan(kv_cache_bytes=kv, lora_pool_bytes=pool, host_cache_bytes=host, free_bytes=free,
                      host_free_bytes=host_free, sources=sources)

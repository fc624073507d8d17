"""Prometheus metrics of a node (prometheus-client, one registry per node so tests can run several).

What it does: request counts, latencies, TTFT and generated tokens by adapter; rejected requests by error code;
receipts written; and, at scrape time, gauges from the engine's published statistics snapshot (queue depth,
running sequences, KV blocks used and total, adapter tiers bytes/budgets, loads, evictions, hit ratio), from the receipt store (pending, submitted,
settled) and from the settlement loop (chain errors).
What it does not do: serve HTTP (node/api.py mounts `render` at GET /metrics).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("openlora_requests", "Inference requests accepted", ["adapter"], registry=r)
        self.rejected = Counter("openlora_requests_rejected", "Requests rejected before compute", ["code"], registry=r)
        self.latency = Histogram("openlora_request_seconds", "Request latency", ["adapter"], buckets=LATENCY,
                                 registry=r)
        self.ttft = Histogram("openlora_ttft_seconds", "Time to first token", ["adapter"], buckets=LATENCY, registry=r)
        self.tokens = Counter("openlora_generated_tokens", "Generated tokens (rate() gives tokens/s)", ["adapter"],
                              registry=r)
        self.receipts = Counter("openlora_receipts_written", "Receipts committed", registry=r)
        self.chain_errors = Counter("openlora_chain_errors", "Errors talking to the chain", registry=r)
        self.queue = Gauge("openlora_queue_depth", "Requests waiting in the engine", registry=r)
        self.running = Gauge("openlora_running_sequences", "Sequences in the running batch", registry=r)
        self.kv_used = Gauge("openlora_kv_blocks_used", "KV cache blocks in use", registry=r)
        self.kv_total = Gauge("openlora_kv_blocks_total", "KV cache blocks", registry=r)
        self.tier_bytes = Gauge("openlora_adapter_tier_bytes", "Bytes used per adapter tier", ["tier"], registry=r)
        self.tier_budget = Gauge("openlora_adapter_tier_budget_bytes", "Byte budget per adapter tier", ["tier"],
                                 registry=r)
        self.adapter_events = Gauge("openlora_adapter_events", "Adapter loads/evictions/failures so far", ["event"],
                                    registry=r)
        self.hit_ratio = Gauge("openlora_adapter_hit_ratio", "Device-pool hit ratio of adapter acquisitions",
                               registry=r)
        self.receipt_state = Gauge("openlora_receipts", "Receipts by settlement state", ["state"], registry=r)
        self.settlement = Gauge("openlora_settlement", "Settlement loop counters (batches_settled, "
                                "receipts_settled, chain_errors)", ["counter"], registry=r)

    def render(self, stats: Any, store_counts: dict[str, int], settlement: dict | None = None) -> bytes:
        """`stats`: the engine's latest published snapshot (inference.client.EngineStats), never its live queues."""
        if stats is not None and stats.adapters:
            self.queue.set(stats.waiting)
            self.running.set(stats.running)
            self.kv_used.set(stats.kv_blocks_used)
            self.kv_total.set(stats.kv_blocks_total)
            m = stats.adapters
            for tier, t in m["tiers"].items():
                self.tier_bytes.labels(tier=tier).set(t["used_bytes"])
                self.tier_budget.labels(tier=tier).set(t["budget_bytes"])
            for k in ("device_loads", "device_evictions", "host_loads", "host_evictions", "load_failures"):
                self.adapter_events.labels(event=k).set(m[k])
            self.hit_ratio.set(m["hit_ratio"] or 0.0)
        for state, n in store_counts.items():
            self.receipt_state.labels(state=state).set(n)
        for k in ("batches_settled", "receipts_settled", "chain_errors"):
            if settlement and k in settlement:
                self.settlement.labels(counter=k).set(settlement[k])
        return generate_latest(self.registry)

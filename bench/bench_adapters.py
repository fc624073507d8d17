"""Adapter-lifecycle benchmark: cold-load latency, thrash under a small device pool, 1,000 registered adapters.

    .venv/bin/python bench/bench_adapters.py --threads 1 [--json out.json]

1. Cold load, per adapter size (ranks 8/16/64/128 on all seven projections of the bench model): disk -> device-ready
   (read + validate + copy into the pool) and host -> device-ready (copy into the pool), median and p99 over --loads.
2. Thrash: a Poisson trace over 4x more active adapters than the device pool holds; TTFT median and p99 against the
   same trace with every adapter resident (pool large enough, preloaded). Goal: median at most 2x.
3. Scale: the same trace shape over 1,000 registered adapters (lazy: loaded just in time from disk) against 10;
   throughput ratio. Goal: at least 0.8x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from bench_engine import BENCH_SPEC, make_trace, pct, run_engine_offline, run_engine_online  # noqa: E402
from openlora.devnet.tinymodels import ALL_TARGETS, build_tiny_model, write_lora_files  # noqa: E402
from openlora.inference import LLM  # noqa: E402
from openlora.inference.lora import LoRAPool  # noqa: E402


def cold_load(model_dir: Path, work: Path, ranks: list[int], loads: int) -> list[dict]:
    rows = []
    llm = LLM(model_dir, dtype="float32", device="cpu", lora_pool_bytes=1 << 30, max_loras=4)
    mgr = llm.engine.adapters
    for r in ranks:
        disk, host = [], []
        for i in range(loads):
            d = write_lora_files(work / f"cold-r{r}-{i}", model_dir, rank=r, targets=ALL_TARGETS, seed=i)
            name = f"cold-r{r}-{i}"
            mgr.register(name, d)
            t = time.perf_counter()
            mgr.load(name)
            mgr.acquire(name)
            disk.append(time.perf_counter() - t)
            mgr.release(name)
            mgr._drop_device(mgr._entries[name])
            t = time.perf_counter()
            mgr.acquire(name)
            host.append(time.perf_counter() - t)
            mgr.release(name)
            mgr.unregister(name)
        size = sum(f.stat().st_size for f in d.iterdir())
        rows.append({"rank": r, "bytes": size, "disk_to_device_ms_p50": 1e3 * statistics.median(disk),
                     "disk_to_device_ms_p99": 1e3 * pct(disk, 99), "host_to_device_ms_p50": 1e3 * statistics.median(host),
                     "host_to_device_ms_p99": 1e3 * pct(host, 99)})
        print(f"cold load rank {r:>3} ({size / 1e6:6.2f} MB): disk->device p50 {rows[-1]['disk_to_device_ms_p50']:7.2f} ms "
              f"p99 {rows[-1]['disk_to_device_ms_p99']:7.2f} ms | host->device p50 "
              f"{rows[-1]['host_to_device_ms_p50']:6.3f} ms p99 {rows[-1]['host_to_device_ms_p99']:6.3f} ms", flush=True)
    return rows


def thrash(model_dir: Path, work: Path, pool_adapters: int, requests: int, rate: float) -> dict:
    active = 4 * pool_adapters
    rank = 16
    dirs = {f"lora{i}": write_lora_files(work / f"thrash{i}", model_dir, rank=rank,
                                         targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=i)
            for i in range(active)}
    reqs = make_trace(requests, active, 0.0, rate, (8, 64), (8, 32), BENCH_SPEC.vocab_size, seed=1)   # uniform
    spec_bytes = LoRAPool.bytes_per_row(_spec(model_dir), torch.float32)
    out = {}
    for label, slots in (("small_pool", pool_adapters), ("all_resident", active)):
        llm = LLM(model_dir, dtype="float32", device="cpu", max_loras=slots, lora_pool_bytes=slots * rank * spec_bytes,
                  max_num_seqs=32)
        for name, d in dirs.items():
            if label == "all_resident":
                llm.load_adapter(name, d)
                llm.engine.adapters.acquire(name)
                llm.engine.adapters.release(name)
            else:
                llm.register_adapter(name, d)
        if label == "small_pool":      # host-resident already (a warm node): this measures device-pool thrash
            for name in dirs:
                llm.engine.adapters.load(name)
        res = run_engine_online(llm, reqs)
        res["device_evictions"] = llm.engine.adapters.counters["device_evictions"]
        out[label] = res
        print(f"thrash {label:>12} ({slots} slots for {active} active adapters): TTFT p50 {res['ttft_p50_ms']:.1f} ms "
              f"p99 {res['ttft_p99_ms']:.1f} ms, TPOT p50 {res['tpot_p50_ms']:.1f} ms, "
              f"evictions {res['device_evictions']}", flush=True)
    out["ttft_p50_ratio"] = out["small_pool"]["ttft_p50_ms"] / out["all_resident"]["ttft_p50_ms"]
    out["ttft_p99_ratio"] = out["small_pool"]["ttft_p99_ms"] / out["all_resident"]["ttft_p99_ms"]
    print(f"thrash: median TTFT {out['ttft_p50_ratio']:.2f}x, p99 {out['ttft_p99_ratio']:.2f}x the all-resident case")
    return out


def _spec(model_dir: Path):
    from openlora.inference.model_config import read_model_spec
    return read_model_spec(model_dir)


def scale(model_dir: Path, work: Path, many: int, requests: int, reps: int) -> dict:
    ranks = (8, 16, 32)
    for i in range(many):
        write_lora_files(work / f"scale{i}", model_dir, rank=ranks[i % 3], targets=("q_proj", "v_proj"), seed=i)
    best = {}
    for n in (10, many):
        tps = []
        for rep in range(reps):
            llm = LLM(model_dir, dtype="float32", device="cpu", max_loras=64, lora_pool_bytes=256 * 2**20,
                      max_num_seqs=64)
            for i in range(n):
                llm.register_adapter(f"lora{i}", work / f"scale{i}")       # lazy: loaded just in time
            reqs = make_trace(requests, n, 1.0, 100.0, (8, 64), (8, 32), BENCH_SPEC.vocab_size, seed=2 + rep)
            tps.append(run_engine_offline(llm, reqs, True)["tokens_per_s"])
            llm.engine.adapters.shutdown()
        best[n] = max(tps)
        print(f"scale: {n:>5} registered adapters: {best[n]:.1f} tok/s (best of {reps}: "
              f"{', '.join(f'{t:.0f}' for t in tps)})", flush=True)
    ratio = best[many] / best[10]
    print(f"scale: {many} vs 10 registered adapters: {ratio:.2f}x throughput")
    return {"tokens_per_s": {str(k): v for k, v in best.items()}, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64, 128])
    ap.add_argument("--pool-adapters", type=int, default=8)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="openlora-bench-adapters-"))
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; files in {work}", flush=True)
    model_dir = build_tiny_model(work / "model", BENCH_SPEC)
    results = {"cold_load": cold_load(model_dir, work, args.ranks, args.loads),
               "thrash": thrash(model_dir, work, args.pool_adapters, args.requests, args.rate),
               "scale": scale(model_dir, work, args.many, args.requests, args.reps)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Node-service benchmark: HTTP API vs the in-process engine, and the per-request cost of signatures and receipts.

    .venv/bin/python bench/bench_service.py --threads 1 [--requests 64 --concurrency 32]

1. The same trace (seeded; prompts 8-64 tokens, outputs 8-32, EOS ignored) through the in-process `AsyncEngine`
   and through the HTTP API (SSE, free local mode, a receipt committed to SQLite per request, as served), both with
   at most --concurrency requests in flight (so that both run the same batch sizes: the ratio is the HTTP layer's
   cost, not a batch-size effect). One unmeasured warm-up pass of the whole trace first; then --reps pairs in one
   run, the order swapped every pair (in-process first, then HTTP first, ...). Reports best of each, the median
   of the per-pair ratios, and the process CPU time each side spent on the same tokens (less sensitive to other
   jobs on a shared box). The HTTP clients run in a separate process (as a dApp's would; --clients-in-process puts
   them in the node's process, competing for its GIL). Goal: HTTP >= 0.9x in-process
   throughput.
2. Per request: EIP-712 request + voucher signature checks with nonce reservation (node.auth.verify on a real
   SQLite store; the chain lane lookup stubbed with a constant, it is a cached RPC in production), and the receipt
   commit (price + attribution + node signature + INSERT ... COMMIT). Median and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench_engine import BENCH_SPEC, make_trace, pct  # noqa: E402
from openlora.devnet.tinymodels import build_tiny_model  # noqa: E402


async def in_process(client, reqs, concurrency: int) -> float:
    from openlora.inference import SamplingParams
    from openlora.inference.client import GenerateRequest
    sem = asyncio.Semaphore(concurrency)

    async def one(r):
        n = 0
        params = SamplingParams(max_tokens=r.out_len, temperature=0.0, ignore_eos=True)
        async with sem:
            async for out in client.submit(GenerateRequest(r.prompt, params)):
                n = len(out.token_ids)
        return n
    t = time.perf_counter()
    toks = sum(await asyncio.gather(*(one(r) for r in reqs)))
    return toks / (time.perf_counter() - t)


async def over_http(url: str, model: str, reqs, concurrency: int) -> float:
    import aiohttp
    sem = asyncio.Semaphore(concurrency)

    async def one(session, r):
        body = {"model": model, "prompt": r.prompt, "max_tokens": r.out_len, "temperature": 0.0, "stream": True,
                "ignore_eos": True}
        async with sem, session.post(url + "/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            usage = None
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage", usage)
            return usage["completion_tokens"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        t = time.perf_counter()
        toks = sum(await asyncio.gather(*(one(session, r) for r in reqs)))
        return toks / (time.perf_counter() - t)


def over_http_sync(url: str, model: str, reqs, concurrency: int) -> tuple[float, float]:
    """(tok/s, this process's CPU seconds): what the client process runs, as a dApp's clients would, apart from
    the node's process and its GIL."""
    cpu = time.process_time()
    tps = asyncio.run(over_http(url, model, reqs, concurrency))
    return tps, time.process_time() - cpu


def per_request_costs(tmp: Path, n: int, database_url: str | None = None, pending: int = 0) -> dict:
    """Per-request costs of the signed-request checks and of the receipt commit; with `pending`, that many unsettled
    receipts of the requester are stored first (a node whose settlement fell behind), and the scan of them that
    the checks did before the running totals is timed beside them."""
    from eth_account import Account

    from openlora.attribution import eip712
    from openlora.node.api import ServedRequest
    from openlora.node.auth import signed_params, verify
    from openlora.node.storage import Store
    from openlora.node.wiring import build_service

    store = Store(database_url or f"sqlite:///{tmp / 'costs.db'}")
    node = Account.create()
    req_acct = Account.create()
    domain = eip712.Domain(31337, "0x" + "22" * 20)
    scan_us = []
    if pending:
        from openlora.attribution.receipts import Receipt, sign_receipt
        from openlora.node.storage import receipts as receipts_table

        for i in range(pending):
            store.add_receipt(sign_receipt(Receipt(f"old{i}", bytes(32), req_acct.address, node.address, None, 20, 16,
                                                   10**12, ((node.address, 1),), int(time.time())), node.key))
        from sqlalchemy import select
        for _ in range(20):
            t = time.perf_counter()
            with store.engine.connect() as c:       # what unsettled_charges ran before the running totals
                sum(int(p) for p in c.execute(select(receipts_table.c.price).where(
                    receipts_table.c.requester == req_acct.address.lower(),
                    receipts_table.c.status != "settled")).scalars())
            scan_us.append(1e6 * (time.perf_counter() - t))
    bodies = []
    for i in range(n):
        body = {"model": "base", "prompt": [5, 6, 7, i % 300], "max_tokens": 16}
        req = eip712.Request(req_acct.address, node.address, bytes(32),
                             eip712.prompt_hash(body["prompt"], signed_params(body)), 16, 10**18, i,
                             int(time.time()) + 600)
        v = eip712.Voucher(req_acct.address, node.address, 10**24)
        body["openlora"] = {"requester": req_acct.address, "node": node.address, "adapter": "0x" + "00" * 32,
                            "promptHash": "0x" + req.promptHash.hex(), "maxTokens": 16, "maxPrice": 10**18,
                            "nonce": i, "deadline": req.deadline, "chainId": 31337,
                            "verifyingContract": domain.verifying_contract,
                            "signature": "0x" + eip712.sign(req, domain, req_acct.key).hex(),
                            "voucher": {"cumulativeCap": 10**24, "signature": "0x" + eip712.sign(v, domain,
                                                                                                 req_acct.key).hex()}}
        bodies.append(body)
    verify_us = []
    for i, body in enumerate(bodies):
        t = time.perf_counter()
        verify(body["openlora"], body, domain=domain, node=node.address, adapter_cid=None, max_tokens=16,
               max_cost=10**15, ledger=store, lane_of=lambda r: (10**24, 0), request_id=f"bench-{i}")
        verify_us.append(1e6 * (time.perf_counter() - t))

    class _Cfg:  # the few config values build_service reads
        from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
        cfg = parse_config(DEFAULT_CONFIG_TOML, tmp, environ={})

    svc = build_service(_Cfg.cfg, node, None, store, None)      # write_receipt needs no engine
    commit_us = []
    for i in range(n):
        s = ServedRequest(f"r{i}", req_acct.address, None, 20, 16, bytes(32), 10**18)
        t = time.perf_counter()
        svc.write_receipt(s)
        commit_us.append(1e6 * (time.perf_counter() - t))
    store.close()
    out = {"verify_us_p50": statistics.median(verify_us), "verify_us_p99": pct(verify_us, 99),
           "receipt_commit_us_p50": statistics.median(commit_us), "receipt_commit_us_p99": pct(commit_us, 99)}
    if scan_us:
        out["pending"], out["old_scan_us_p50"] = pending, statistics.median(scan_us)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--costs", type=int, default=500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--clients-in-process", action="store_true",
                    help="run the HTTP clients in the node's own process (they then compete with the server and the "
                         "engine for the GIL); default: a separate client process, as real clients are")
    ap.add_argument("--costs-only", action="store_true", help="only the per-request costs (no HTTP throughput run)")
    ap.add_argument("--pending", type=int, default=0,
                    help="store this many unsettled receipts of the requester before the per-request costs")
    ap.add_argument("--postgres", action="store_true",
                    help="measure the per-request costs on SQLite and on a throwaway PostgreSQL (the pgserver wheel's "
                         "binaries on loopback, as the tests run it), alternating, --reps times")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="openlora-bench-service-"))
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; files in {tmp}", flush=True)
    if args.costs_only or args.postgres or args.pending:
        costs_by_database(tmp, args)
        return
    model_dir = build_tiny_model(tmp / "model", BENCH_SPEC)

    from openlora.inference import LLM
    from openlora.inference.client import AsyncEngine
    from openlora.node.api import build_app
    from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
    from openlora.node.storage import Store
    from openlora.node.wiring import build_service
    from eth_account import Account
    sys.path.insert(0, str(ROOT))
    from tests.service.server_util import ServerThread

    llm = LLM(model_dir, dtype="float32", device="cpu", max_num_seqs=64)
    client = AsyncEngine(llm.engine)
    cfg = parse_config(DEFAULT_CONFIG_TOML.replace("free_local_mode = false", "free_local_mode = true"), tmp,
                       environ={})
    store = Store(f"sqlite:///{tmp / 'node.db'}")
    svc = build_service(cfg, Account.create(), client, store, None)
    reqs = make_trace(args.requests, 0, 1.0, 1.0, (8, 64), (8, 32), BENCH_SPEC.vocab_size, seed=3)
    results: dict[str, list] = {"in_process": [], "http": [], "in_process_cpu_s": [], "http_cpu_s": []}
    import concurrent.futures
    import multiprocessing
    pool = None if args.clients_in_process else concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"))
    with ServerThread(build_app(svc)) as server:
        loop = server.loop
        run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result()  # noqa: E731
        model_id = llm.engine.spec.model_id

        def http() -> float:
            if pool is None:
                return asyncio.run(over_http(server.url, model_id, reqs, args.concurrency))
            tps, client_cpu = pool.submit(over_http_sync, server.url, model_id, reqs, args.concurrency).result()
            results.setdefault("client_cpu_s", []).append(client_cpu)
            return tps
        measure = {"in_process": lambda: run(in_process(client, reqs, args.concurrency)), "http": http}
        measure["in_process"]()                                   # warm-up: every batch size the runs will see
        measure["http"]()
        for i in range(args.reps):
            for name in ("in_process", "http") if i % 2 == 0 else ("http", "in_process"):
                cpu = time.process_time()        # every thread of this process: engine, server, HTTP clients
                results[name].append(measure[name]())
                results[name + "_cpu_s"].append(time.process_time() - cpu)
    client.shutdown()
    if pool is not None:
        pool.shutdown()
        results.pop("client_cpu_s", None)
    best_in, best_http = max(results["in_process"]), max(results["http"])
    pairs = [h / p for p, h in zip(results["in_process"], results["http"])]
    results["pair_ratios"] = pairs
    where = "in the node's process" if pool is None else "in a separate process"
    print(f"in-process: {best_in:.1f} tok/s, HTTP ({args.concurrency} streaming clients {where}): "
          f"{best_http:.1f} tok/s "
          f"-> {best_http / best_in:.2f}x best of each; median of {len(pairs)} pair ratios "
          f"{statistics.median(pairs):.2f}x (runs: {[round(x) for x in results['in_process']]} / "
          f"{[round(x) for x in results['http']]}; pairs {[round(x, 2) for x in pairs]})", flush=True)
    cpu = [p / h for p, h in zip(results["in_process_cpu_s"], results["http_cpu_s"])]
    print(f"CPU time of the node's process for the same tokens, in-process / HTTP"
          f"{' (HTTP clients included)' if pool is None else ''}: median "
          f"{statistics.median(cpu):.2f}x (pairs {[round(x, 2) for x in cpu]}; seconds "
          f"{[round(x, 2) for x in results['in_process_cpu_s']]} / {[round(x, 2) for x in results['http_cpu_s']]})",
          flush=True)
    costs = per_request_costs(tmp, args.costs)
    print(f"signature checks + nonce: p50 {costs['verify_us_p50']:.0f} us, p99 {costs['verify_us_p99']:.0f} us; "
          f"receipt commit: p50 {costs['receipt_commit_us_p50']:.0f} us, p99 {costs['receipt_commit_us_p99']:.0f} us")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "ratio": best_http / best_in, **costs}, indent=2))


def costs_by_database(tmp: Path, args) -> None:
    """Per-request costs on SQLite (and with --postgres on PostgreSQL too), alternating, --reps times."""
    sys.path.insert(0, str(ROOT))
    server = None
    if args.postgres:
        from tests.service.pg_server import PgServer

        server = PgServer.start()
        print(f"# {server.version} on 127.0.0.1:{server.port} (same machine)", flush=True)
    out: dict[str, list] = {"sqlite": [], "postgresql": []}
    try:
        for i in range(args.reps if server else 1):
            for name in ("sqlite", "postgresql") if server else ("sqlite",):
                url = server.create_database() if name == "postgresql" else f"sqlite:///{tmp / f'costs{i}.db'}"
                c = per_request_costs(tmp, args.costs, url, args.pending)
                out[name].append(c)
                scan = (f"; with {c['pending']} receipts unsettled, the scan the checks made before the running "
                        f"totals: p50 {c['old_scan_us_p50']:.0f} us" if "pending" in c else "")
                print(f"{name:10s} signature checks + nonce: p50 {c['verify_us_p50']:.0f} us, p99 "
                      f"{c['verify_us_p99']:.0f} us; receipt commit: p50 {c['receipt_commit_us_p50']:.0f} us, p99 "
                      f"{c['receipt_commit_us_p99']:.0f} us{scan}", flush=True)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

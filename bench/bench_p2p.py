"""Benchmarks of the node network (issue 8): block-exchange throughput and memory, gossip propagation latency.

    .venv/bin/python bench/bench_p2p.py fetch --mb 100          # two node processes on loopback, 3 timed runs
    .venv/bin/python bench/bench_p2p.py fetch --mb 25 --mb 100 --runs 1  # memory independence of file size
    .venv/bin/python bench/bench_p2p.py gossip --nodes 5 --n 50  # announcement propagation across 5 nodes

fetch: process A imports a random adapter of N MB; process B (a separate OS process, as a real peer is) connects
and fetches it with verification onto its disk, `--runs` times (a fresh B each time, same A). Per run: MB/s (MB =
10^6 bytes) over the block exchange (every block verified and written; the DHT provide that `P2PService.fetch`
does next is timed apart, as record_and_provide_s); CPU seconds of B (all threads), of B's trio thread alone (the
libp2p machinery: socket reads, Noise, yamux, verification; the rest of B's is mostly the disk-writer thread
creating block files) and of A; the 1-minute load average before and after; B's peak RSS growth during the fetch
(ru_maxrss after - before). A last client run under tracemalloc (which slows Python several times, so it is not
timed) gives Python's peak traced allocation during the fetch. A summary line gives the medians.
gossip: N nodes in one process, connected in a line (0-1-2-3-4, so messages cross up to 4 hops); node 0 publishes
`n` signed announcements spaced out; latency is receive time minus the signed timestamp, at every other node.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _quiet() -> None:
    import logging
    logging.basicConfig(level=logging.ERROR)
    for name in ("libp2p", "multiaddr", "openlora"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _serve(home: str, adapter: str, conn) -> None:
    _quiet()
    from eth_account import Account
    from openlora.node.ipfs.adapters import AdapterStore
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    store = AdapterStore(Path(home) / "ipfs")
    cid, _ = store.add(Path(adapter))
    svc = P2PService(Path(home), store, Account.create(), P2PSettings()).start()
    conn.send((str(cid), svc.addrs[0], svc.peer_id))
    while conn.recv() == "cpu":  # the parent samples this process's CPU time around the timed fetch
        ru = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(ru.ru_utime + ru.ru_stime)
    conn.send(svc.stats()["served_blocks"])
    svc.stop()


def _thread_cpu(tid: int) -> float | None:
    """user + system CPU seconds of one thread of this process (Linux /proc), or None where unavailable."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _fetch(home: str, cid: str, addr: str, peer: str, conn, trace: bool = False) -> None:
    _quiet()
    from eth_account import Account
    from openlora.node.ipfs.adapters import AdapterStore
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    store = AdapterStore(Path(home) / "ipfs")
    svc = P2PService(Path(home), store, Account.create(), P2PSettings()).start()
    svc.connect(addr)

    async def native_id() -> int:
        return threading.get_native_id()

    trio_tid = svc.bridge.call(native_id)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:  # tracemalloc slows Python down several times: only in the memory run, never in the timed one
        tracemalloc.start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    th0 = _thread_cpu(trio_tid)
    t0 = time.perf_counter()
    # What P2PService.fetch does, in two timed parts: the block exchange (every block verified and on disk), then
    # recording the adapter and putting its DHT provider record (whose time depends on the DHT's state: with one
    # server and several clients in turn, it also tries to reach earlier, gone, clients).
    n = svc.bridge.call(svc.node.fetch, cid, [peer])
    dt = time.perf_counter() - t0
    th1 = _thread_cpu(trio_tid)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = store.complete(cid)
    if ok:
        store.record(cid)
        svc.provide(cid)
    dt_provide = time.perf_counter() - t0 - dt
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    svc.stop()
    conn.send({"blocks": n, "seconds": dt, "provide_seconds": dt_provide, "cpu_s": cpu,
               "trio_cpu_s": None if th0 is None or th1 is None else th1 - th0,
               "rss_growth_mib": (rss1 - rss0) / 1024, "rss_peak_mib": rss1 / 1024,
               "py_peak_alloc_mib": peak / 2**20, "complete": ok})


def bench_fetch(mb: int, runs: int = 3) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = t / "adapter"
        src.mkdir()
        (src / "adapter_config.json").write_text('{"base_model_name_or_path": "bench", "r": 16}')
        with open(src / "adapter_model.safetensors", "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(10**6))
        a_conn, a_child = ctx.Pipe()
        server = ctx.Process(target=_serve, args=(str(t / "a"), str(src), a_child))
        server.start()
        cid, addr, peer = a_conn.recv()
        size = mb * 10**6
        for i in range(runs + 1):
            trace = i == runs  # the last client run is the tracemalloc one, not timed
            load0 = os.getloadavg()[0]
            a_conn.send("cpu")
            server_cpu0 = a_conn.recv()
            b_conn, b_child = ctx.Pipe()
            client = ctx.Process(target=_fetch, args=(str(t / f"b{i}"), cid, addr, peer, b_child, trace))
            client.start()
            res = b_conn.recv()
            client.join(60)
            a_conn.send("cpu")
            server_cpu = a_conn.recv() - server_cpu0
            shutil.rmtree(t / f"b{i}", ignore_errors=True)
            if trace:
                for r in out:
                    r["client_py_peak_alloc_mib"] = round(res["py_peak_alloc_mib"], 2)
                break
            trio_cpu = res["trio_cpu_s"]
            out.append({"bench": "p2p_fetch", "size_mb": mb, "run": i + 1,
                        "mb_per_s": round(size / 1e6 / res["seconds"], 1), "seconds": round(res["seconds"], 3),
                        "record_and_provide_s": round(res["provide_seconds"], 3),
                        "client_cpu_s": round(res["cpu_s"], 3),
                        "client_trio_cpu_s": None if trio_cpu is None else round(trio_cpu, 3),
                        "server_cpu_s": round(server_cpu, 3),
                        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
                        "blocks": res["blocks"], "complete": res["complete"],
                        "client_rss_growth_mib": round(res["rss_growth_mib"], 1),
                        "client_rss_peak_mib": round(res["rss_peak_mib"], 1)})
        a_conn.send("done")
        served = a_conn.recv()
        server.join(60)
    for r in out:
        r["served_total"] = served
    return out


def _summary(rows: list[dict]) -> dict:
    def med(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None
    return {"bench": "p2p_fetch_summary", "size_mb": rows[0]["size_mb"], "runs": len(rows),
            "mb_per_s": [r["mb_per_s"] for r in rows], "median_mb_per_s": med("mb_per_s"),
            "median_client_cpu_s": med("client_cpu_s"), "median_client_trio_cpu_s": med("client_trio_cpu_s"),
            "median_server_cpu_s": med("server_cpu_s"),
            "load_avg_1m": [min(r["load_avg_1m"][0] for r in rows), max(r["load_avg_1m"][1] for r in rows)],
            "client_rss_growth_mib": [r["client_rss_growth_mib"] for r in rows],
            "client_py_peak_alloc_mib": rows[0].get("client_py_peak_alloc_mib")}


def bench_gossip(nodes: int, n: int, spacing: float) -> dict:
    _quiet()
    from eth_account import Account
    from openlora.node.ipfs.adapters import AdapterStore
    from openlora.content.cid import RAW, CID
    from openlora.node.p2p import gossip
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    with tempfile.TemporaryDirectory() as tmp:
        author = Account.create()
        svcs = [P2PService(Path(tmp) / f"n{i}", AdapterStore(Path(tmp) / f"n{i}" / "ipfs"), author if i == 0 else
                           Account.create(), P2PSettings(heartbeat_interval_s=5, announce_interval_s=3600)).start()
                for i in range(nodes)]
        try:
            for i in range(1, nodes):
                svcs[i].connect(svcs[i - 1].addrs[0])
            time.sleep(2.5)  # let the gossipsub meshes graft (1 s heartbeats)
            cids = [str(CID.of(RAW, os.urandom(16))) for _ in range(n)]
            for cid in cids:
                raw = gossip.announcement(author, cid, "bench", 1)
                svcs[0].bridge.call(svcs[0].node.pubsub.publish, gossip.TOPIC_ANNOUNCE, raw)
                time.sleep(spacing)
            deadline = time.time() + 20
            while time.time() < deadline and not all(
                    all(c in s.known_adapters() for c in cids) for s in svcs[1:]):
                time.sleep(0.05)
            lat = []
            for s in svcs[1:]:
                for c, v in s.known_adapters().items():
                    if "announcement" in v:
                        lat.append(v["learned"] - v["announcement"]["ts"])
            delivered = len(lat) / (n * (nodes - 1))
        finally:
            for s in svcs:
                s.stop()
    lat.sort()
    return {"bench": "gossip_propagation", "nodes": nodes, "topology": "line", "announcements": n,
            "delivered_fraction": round(delivered, 3), "median_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1), "max_ms": round(1000 * lat[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fetch", "gossip", "all"])
    ap.add_argument("--mb", type=int, action="append", help="adapter size in MB (repeatable; default 100)")
    ap.add_argument("--runs", type=int, default=3, help="timed fetches per size (default 3)")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--spacing", type=float, default=0.05)
    args = ap.parse_args()
    if args.what in ("fetch", "all"):
        for mb in args.mb or [100]:
            rows = bench_fetch(mb, args.runs)
            for r in rows:
                print(json.dumps(r), flush=True)
            print(json.dumps(_summary(rows)), flush=True)
    if args.what in ("gossip", "all"):
        print(json.dumps(bench_gossip(args.nodes, args.n, args.spacing)), flush=True)


if __name__ == "__main__":
    main()

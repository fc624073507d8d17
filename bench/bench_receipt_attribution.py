"""The receipt path of span attribution, for docs/benchmarks.md ("Proof of Attribution: the receipt path").

What it does: for each --sizes (tokens), builds a span index over synthetic rows (token ids drawn from a Zipf law
over a 49,152-token vocabulary, SmolLM2's size; 200-token rows; 8 contributions), then times, side by side in one
run and alternating, per request of --completion tokens (half the requests copy a 64-token passage of a row, half
are unseen tokens):
  - attribute: attribution.attribute.attribute (find_spans + evidence + the exact integer vector), what the
    pipeline runs in a worker thread before it commits the receipt;
  - commit without / with evidence: sign the receipt (node key) + durable INSERT in SQLite (node.storage.Store,
    WAL, synchronous=FULL as the node runs it), the receipt with and without its evidence;
and reports p50/p99 of each (wall clock; for attribute also the calling thread's CPU time, which a machine shared
with other jobs inflates less), the evidence's JSON size and the index's bytes per token.
Run from the repo root:  .venv/bin/python bench/bench_receipt_attribution.py --sizes 1e6,1e7
What it does not do: build-time scaling of the index or false-match measurements (bench/bench_attribution.py).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from eth_account import Account  # noqa: E402

from openlora.attribution import pricing  # noqa: E402
from openlora.attribution.attribute import attribute  # noqa: E402
from openlora.attribution.receipts import Receipt, sign_receipt  # noqa: E402
from openlora.attribution.spans import SpanIndex, SpanParams  # noqa: E402
from openlora.node.storage import Store  # noqa: E402

VOCAB = 49_152
ROW = 200


def rows_of(n_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    toks = (rng.zipf(1.2, n_tokens) % VOCAB).astype(np.int64)
    n_rows = n_tokens // ROW
    return [(1 + i % 8, i // 8, toks[i * ROW:(i + 1) * ROW]) for i in range(n_rows)], toks


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--completion", type=int, default=256)
    args = ap.parse_args()
    node = Account.from_key(b"\x22" * 32)
    owners = {c: pricing.checksum("0x" + f"{c:040x}") for c in range(1, 9)}
    version = pricing.VersionWeights(1, 1, "bafyversion", owners, {c: 1000 + c for c in owners})
    terms = pricing.AdapterTerms("bafyadapter", pricing.checksum("0x" + "aa" * 20), 10, ((1, 10_000),))
    params = SpanParams()
    print(f"machine: {platform.machine()}, {platform.python_version()}; span params L={params.min_len} "
          f"K={params.max_occurrences}; completion {args.completion} tokens; {args.requests} requests per size")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        rows, toks = rows_of(size)
        t0 = time.perf_counter()
        index = SpanIndex.build(rows)
        build_s = time.perf_counter() - t0
        bpt = len(index.to_bytes()) / index.num_tokens
        rng = np.random.default_rng(1)
        timings: dict[str, list[float]] = {"attribute": [], "attribute (CPU)": [], "commit": [],
                                           "commit+evidence": []}
        ev_bytes = []
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(f"sqlite:///{tmp}/node.db")
            for i in range(args.requests):
                if i % 2:
                    start = int(rng.integers(0, size - 64))
                    comp = list(rng.integers(0, VOCAB, args.completion // 2)) + list(toks[start:start + 64]) + \
                        list(rng.integers(0, VOCAB, args.completion - args.completion // 2 - 64))
                else:
                    comp = list(rng.integers(VOCAB, 2 * VOCAB, args.completion))    # never in the index
                comp = [int(t) for t in comp]
                t0, c0 = time.perf_counter(), time.thread_time()
                a = attribute(terms, {1: version}, lambda d, v: index, comp, min_len=params.min_len,
                              max_occurrences=params.max_occurrences, shares=pricing.Shares(),
                              tokenizer="sha256:" + "0" * 64, operator=node.address)
                timings["attribute"].append(time.perf_counter() - t0)
                timings["attribute (CPU)"].append(time.thread_time() - c0)
                ev_bytes.append(len(__import__("json").dumps(a.evidence.to_json())))
                order = ("commit", "commit+evidence") if i % 2 else ("commit+evidence", "commit")
                for kind in order:
                    r = Receipt(f"cmpl-{uuid.uuid4().hex}", b"\x01" * 32, owners[1], node.address, "bafyadapter",
                                20, args.completion, 10**15, a.vector, int(time.time()),
                                evidence=a.evidence if kind == "commit+evidence" else None)
                    t0 = time.perf_counter()
                    store.add_receipt(sign_receipt(r, node))
                    timings[kind].append(time.perf_counter() - t0)
            store.close()
        print(f"\n{size:,} tokens: index built in {build_s:.1f} s (1 thread), {bpt:.1f} bytes/token, "
              f"{index.nbytes / 2**20:.0f} MiB loaded; evidence JSON {np.median(ev_bytes):.0f} B median "
              f"(max {max(ev_bytes)})")
        for k, xs in timings.items():
            print(f"  {k:16s} p50 {pct(xs, 50):8,.0f} us   p99 {pct(xs, 99):8,.0f} us")


if __name__ == "__main__":
    main()

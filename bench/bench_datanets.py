"""Datanet figures for docs/benchmarks.md: import + row-split throughput, verify time, gas per call.

What it does: builds a seeded JSONL of distinct {"text"} rows (--mb MB), times `contribution.prepare` + `store`
into a fresh blockstore (validation, NFC/LF normalisation, row split, every row and the file hashed and written)
and reports MB/s; splits the rows into --contributions contributions, builds a version manifest (every row
refetched by CID, tokens counted, MinHash dedup) and times `manifest.verify` on it; then, on a fresh Anvil with
the contracts deployed, measures the gas of createDatanet, contribute, accept, reject and publishVersion for 1 and
--contributions contributions. Run from the repo root: `.venv/bin/python bench/bench_datanets.py`.
What it does not do: fetch over the network (a local blockstore only).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_account import Account  # noqa: E402

from openlora.content.blockstore import Blockstore  # noqa: E402
from openlora.datanets import contribution as contrib  # noqa: E402
from openlora.datanets import manifest as mf  # noqa: E402


def rows_jsonl(mb: float, seed: int = 7) -> bytes:
    rnd = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)] + ["the", "a", "of", "and", "to", "in", "adapter", "model", "data"]
    out, size = [], 0
    while size < mb * 1e6:
        line = json.dumps({"text": " ".join(rnd.choice(vocab) for _ in range(rnd.randint(20, 60))) + "."}) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--contributions", type=int, default=10)
    ap.add_argument("--no-chain", action="store_true")
    ap.add_argument("--import-only", action="store_true", help="measure the import of one --mb contribution only "
                    "(the contribution size limit is raised to fit it)")
    args = ap.parse_args()
    limits = contrib.Limits(max_bytes=max(contrib.Limits().max_bytes, int(args.mb * 1e6) + (1 << 20)))
    data = rows_jsonl(args.mb)
    with tempfile.TemporaryDirectory() as tmp:
        bs = Blockstore(Path(tmp) / "ipfs")
        t0 = time.perf_counter()
        p = contrib.prepare(data, "bench.jsonl", limits)
        t1 = time.perf_counter()
        contrib.store(p, bs, "CC0-1.0")
        t2 = time.perf_counter()
        mbytes = len(data) / 1e6
        print(f"import {mbytes:.1f} MB JSONL, {len(p.rows):,} rows: prepare {mbytes / (t1 - t0):.1f} MB/s, "
              f"prepare + store {mbytes / (t2 - t0):.1f} MB/s ({t2 - t0:.2f} s)")
        if args.import_only:
            return
        lines = data.splitlines(keepends=True)
        k = args.contributions
        accepted = []
        for i in range(k):
            part = b"".join(lines[i::k])
            cid = contrib.store(contrib.prepare(part, f"part{i}.jsonl"), bs, "CC0-1.0")
            accepted.append(mf.Accepted(i + 1, "0x" + f"{i + 1:040x}", cid))
        t0 = time.perf_counter()
        m = mf.build(1, 1, accepted, bs.get)
        t1 = time.perf_counter()
        cid = mf.add(m, bs)
        t2 = time.perf_counter()
        mf.verify(cid, bs.get)
        t3 = time.perf_counter()
        n = sum(len(c["rows"]) for c in m["contributions"])
        dups = sum("duplicate" in r for c in m["contributions"] for r in c["rows"])
        print(f"version of {k} contributions, {n:,} rows ({dups} flagged duplicates): build {t1 - t0:.2f} s, "
              f"verify {t3 - t2:.2f} s ({n / (t3 - t2):,.0f} rows/s)")
    if args.no_chain:
        return
    from openlora.datanets.registry import Registry
    from openlora.devnet.chain import EphemeralAnvil
    from openlora.devnet.deploy import deploy_all, dev_accounts
    from web3 import Web3
    with EphemeralAnvil() as anvil, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        accts = dev_accounts()
        dep = deploy_all(w3, accts[0].address, accts[9].address)
        reg, bs = Registry(w3, dep), Blockstore(Path(tmp) / "ipfs")
        curator, contributor = Account.from_key(accts[7].key), Account.from_key(accts[4].key)
        for n in (1, k):
            made = reg.create(curator, "bafkreimeta")
            dn, gas = made.value, {"createDatanet": made.gas_used, "contribute": [], "accept": []}
            for i in range(n + 1):
                part = rows_jsonl(0.002, seed=100 * n + i)
                p = contrib.prepare(part, f"c{i}.jsonl")
                s = reg.contribute(contributor, dn, contrib.store(p, bs, "CC0-1.0"), len(p.data))
                gas["contribute"].append(s.gas_used)
            for i in range(1, n + 1):
                gas["accept"].append(reg.review(curator, dn, i, True).gas_used)
            gas["reject"] = reg.review(curator, dn, n + 1, False).gas_used
            sent, _, _ = reg.publish(curator, dn, bs)
            print(f"gas, {n} contribution(s) in the version: createDatanet {gas['createDatanet']:,}, contribute "
                  f"{max(gas['contribute']):,}, accept {max(gas['accept']):,}, reject {gas['reject']:,}, "
                  f"publishVersion {sent.gas_used:,}")


if __name__ == "__main__":
    main()

"""Span index figures for docs/benchmarks.md ("Proof of Attribution") and the measurement behind SpanParams.min_len.

What it does, on real English text tokenized with the demo base model's tokenizer (SmolLM2-135M-Instruct,
`ensure_base_model()`):
- corpus: the Debian documentation of this machine (/usr/share/doc: changelogs, copyright files, READMEs; vim's
  excluded), one contribution per file, one row per paragraph, exact duplicate paragraphs dropped (as a Datanet
  drops exact duplicate rows), cached as token arrays in --cache;
- scale (default): for each --sizes (tokens) the build time on 1 and 2 threads (side by side, same rows), bytes
  per token of `to_bytes()`, `from_bytes` time (full validation), peak memory of the build (tracemalloc: numpy's
  buffers) and of a loaded index (`SpanIndex.nbytes`), and `find_spans` p50/p99 for 256-token completions of
  three kinds: unseen text (vim's help files, never in the index), text copied from the index (long spans) and
  half of each;
- --false-matches: spans found in text the index never saw (vim help, the project's demo notes, and with
  --generate N, N completions the base model writes to unrelated prompts), per candidate L, against the demo
  Datanet (devnet/demo_texts.py, rows split by datanets.contribution.prepare) and the largest --sizes corpus.
Run from the repo root:
    .venv/bin/python bench/bench_attribution.py --sizes 1e6,1e7
    .venv/bin/python bench/bench_attribution.py --false-matches --sizes 1e7 --generate 16
What it does not do: time anything in the test suite, or measure the receipt path around find_spans.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import re
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from openlora.attribution.spans import SpanIndex, SpanParams  # noqa: E402

DOC_ROOT = Path("/usr/share/doc")
VIM_DOC = Path("/usr/share/vim/vim90/doc")
TEXT_SUFFIXES = {".gz", ".txt", ".md", ".rst", ""}
MAX_FILE = 4 << 20
MAX_ROW_CHARS = 2000
COMPLETION = 256
CANDIDATE_L = (4, 6, 8, 10, 12, 14, 16, 20, 24, 32)

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how bread rises.",
           "Describe a day at the beach.", "What are the benefits of regular exercise?",
           "Give advice to a student starting university.", "Describe the water cycle.",
           "Write a letter to a friend about a recent trip.", "Explain why the sky is blue.",
           "What makes a good team leader?", "Describe the history of the bicycle.",
           "How do bees make honey?", "Write a recipe for vegetable soup.",
           "Explain the rules of chess briefly.", "What should I pack for a hiking trip?",
           "Describe a busy market in the morning.", "Why do leaves change colour in autumn?"]


def tokenizer():
    from transformers import AutoTokenizer  # the bench may use transformers; the library never does

    from openlora.devnet.base_model import ensure_base_model
    return AutoTokenizer.from_pretrained(str(ensure_base_model()))


def _paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        while para:
            out.append(para[:MAX_ROW_CHARS])
            para = para[MAX_ROW_CHARS:]
    return out


def _doc_files() -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(DOC_ROOT):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("vim"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.suffix.lower() in TEXT_SUFFIXES and p.is_file() and not p.is_symlink():
                files.append(p)
    return files


def _read_text(p: Path) -> str:
    raw = p.read_bytes()[:MAX_FILE]
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)[:MAX_FILE]
        except (OSError, EOFError):
            return ""
    if b"\0" in raw[:4096]:
        return ""
    return raw.decode("utf-8", errors="replace")


def doc_corpus(tok, max_tokens: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens u32 [n], row lengths [r], contribution ids [r], row indices [r]) of at least max_tokens tokens."""
    path = cache / f"doc-corpus-dedup-{max_tokens}.npz"
    if path.exists():
        z = np.load(path)
        return z["tokens"], z["lens"], z["contribs"], z["rows"]
    chunks, lens, contribs, rows, total = [], [], [], [], 0
    seen: set[bytes] = set()   # a Datanet refuses exact duplicate rows; Debian ships one changelog in many packages
    for cid, p in enumerate(_doc_files(), start=1):
        paras = []
        for para in _paragraphs(_read_text(p)):
            h = hashlib.sha256(para.encode()).digest()
            if h not in seen:
                seen.add(h)
                paras.append(para)
        if not paras:
            continue
        for r, ids in enumerate(tok(paras, add_special_tokens=False)["input_ids"]):
            if ids:
                chunks.append(np.asarray(ids, dtype=np.uint32))
                lens.append(len(ids))
                contribs.append(cid)
                rows.append(r)
                total += len(ids)
        if total >= max_tokens:
            break
    if total < max_tokens:
        print(f"note: the documentation holds {total:,} tokens, fewer than {max_tokens:,}", file=sys.stderr)
    out = (np.concatenate(chunks), np.array(lens), np.array(contribs), np.array(rows))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, tokens=out[0], lens=out[1], contribs=out[2], rows=out[3])
    return out


def take_rows(corpus, n_tokens: int):
    """The corpus' first rows holding n_tokens tokens (the last row cut), as SpanIndex.build rows."""
    tokens, lens, contribs, rows = corpus
    ends = np.cumsum(lens)
    k = int(np.searchsorted(ends, n_tokens)) + 1
    out, start = [], 0
    for i in range(min(k, lens.size)):
        end = min(int(ends[i]), n_tokens)
        out.append((int(contribs[i]), int(rows[i]), tokens[start:end]))
        start = int(ends[i])
    return out


def unseen_windows(tok, n: int, seed: int) -> list[list[int]]:
    ids: list[int] = []
    for p in sorted(VIM_DOC.glob("*.txt")):
        ids += tok(p.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    return [ids[s:s + COMPLETION] for s in (rng.randrange(len(ids) - COMPLETION) for _ in range(n))]


def demo_rows(tok):
    from openlora.datanets import contribution
    from openlora.devnet.demo_texts import CONTRIBUTIONS
    out = []
    for cid, (_role, name, data, _lic, accept, _why) in enumerate(CONTRIBUTIONS, start=1):
        if not accept:
            continue
        prepared = contribution.prepare(data, name)
        texts = [r.text for r in prepared.rows]
        for r, ids in enumerate(tok(texts, add_special_tokens=False)["input_ids"]):
            out.append((cid, r, ids))
    return out


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.array(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def measure_size(corpus, n_tokens: int, unseen: list[list[int]], queries: int, seed: int) -> dict:
    rows = take_rows(corpus, n_tokens)
    n = sum(len(t) for _, _, t in rows)
    times = {}
    blobs = {}
    peak = 0
    for threads in (1, 2, 1, 2):   # alternated, best of two each (wall; and process CPU time)
        tracemalloc.start()
        t0, c0 = time.perf_counter(), time.process_time()
        index = SpanIndex.build(rows, threads=threads)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        times[threads] = min(times.get(threads, dt), dt)
        times[-threads] = min(times.get(-threads, dc), dc)
        blobs[threads] = index.to_bytes()
        del index
    assert blobs[1] == blobs[2], "1 and 2 threads built different bytes"
    data = blobs[1]
    t0 = time.perf_counter()
    index = SpanIndex.from_bytes(data)
    load = time.perf_counter() - t0
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[0]
    rng = random.Random(seed)
    stream = corpus[0][:n]
    copied = [stream[s:s + COMPLETION].tolist() for s in (rng.randrange(n - COMPLETION) for _ in range(queries))]
    kinds = {"unseen": unseen[:queries], "copied": copied,
             "half": [u[:COMPLETION // 2] + c[:COMPLETION // 2] for u, c in zip(unseen, copied)]}
    params = SpanParams()
    result = {"tokens": n, "rows": len(rows), "build_s_1t": times[1], "build_s_2t": times[2],
              "build_cpu_s_1t": times[-1], "build_cpu_s_2t": times[-2],
              "build_peak_mb": peak / 2**20, "bytes_per_token": len(data) / n, "index_mb": len(data) / 2**20,
              "load_s": load, "loaded_mb": index.nbytes / 2**20, "cid": index.cid(), "loadavg": loadavg}
    for name, comps in kinds.items():
        for c in comps[:10]:
            index.find_spans(c, params)   # warm-up
        wall, cpu, found = [], [], 0
        for c in comps:
            t0, c0 = time.perf_counter(), time.process_time()
            spans = index.find_spans(c, params)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            found += bool(spans)
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = percentiles(wall)
        result[f"{name}_cpu_p50_ms"], result[f"{name}_cpu_p99_ms"] = percentiles(cpu)
        result[f"{name}_with_span"] = found / len(comps)
    return result


def false_matches(index: SpanIndex, completions: list[list[int]]) -> dict[int, dict[str, float]]:
    """Per candidate L: share of completions with >= 1 span and share of completion tokens covered by spans
    (spans from min_len = the smallest L; a maximal span is maximal whatever L, so longer L only filter)."""
    base = SpanParams(min_len=min(CANDIDATE_L))
    found = [index.find_spans(c, base) for c in completions]
    out = {}
    total = sum(len(c) for c in completions)
    for L in CANDIDATE_L:
        hit, covered = 0, 0
        for spans in found:
            keep = [s for s in spans if s.length >= L]
            hit += bool(keep)
            covered += len({t for s in keep for t in range(s.start, s.start + s.length)})
        out[L] = {"with_span": hit / len(completions), "tokens_covered": covered / total}
    return out


def generate(tok, n: int) -> list[list[int]]:
    """n greedy completions (256 new tokens) of the base model to PROMPTS, one at a time on one thread."""
    import torch
    from transformers import AutoModelForCausalLM

    from openlora.devnet.base_model import ensure_base_model
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_base_model()), dtype=torch.float32).eval()
    out = []
    for i in range(n):
        ids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                      add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=COMPLETION, do_sample=False, pad_token_id=tok.eos_token_id)
        out.append([t for t in gen[0, ids.shape[1]:].tolist() if t != tok.eos_token_id])
        print(f"generated {i + 1}/{n}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="index sizes in tokens, comma-separated")
    ap.add_argument("--queries", type=int, default=300, help="completions per kind and size")
    ap.add_argument("--false-matches", action="store_true", help="measure spans in unseen text per candidate L")
    ap.add_argument("--generate", type=int, default=0, help="with --false-matches: N base-model completions too")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "openlora" / "bench-attribution")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    tok = tokenizer()
    t0 = time.perf_counter()
    corpus = doc_corpus(tok, max(sizes), args.cache)
    print(f"corpus: {corpus[0].size:,} tokens in {corpus[1].size:,} rows of {len(set(corpus[2].tolist())):,} "
          f"files ({time.perf_counter() - t0:.0f} s incl. tokenizing when not cached)", flush=True)
    unseen = unseen_windows(tok, max(args.queries, 400), args.seed)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "params": SpanParams().__dict__}
    if args.false_matches:
        sets = {"vim help (unseen)": unseen[:400]}
        demo = demo_rows(tok)
        demo_tokens = [t for _, _, ids in demo for t in ids]
        sets_big = dict(sets)
        sets_big["demo notes (unseen)"] = [demo_tokens[s:s + COMPLETION]
                                           for s in range(0, len(demo_tokens) - COMPLETION, COMPLETION // 2)]
        if args.generate:
            gen = generate(tok, args.generate)
            sets["base model (unrelated prompts)"] = gen
            sets_big["base model (unrelated prompts)"] = gen
        indexes = {f"demo Datanet ({sum(len(r[2]) for r in demo):,} tokens)": (SpanIndex.build(demo), sets),
                   f"docs ({max(sizes):,} tokens)": (SpanIndex.build(take_rows(corpus, max(sizes))), sets_big)}
        fm = {}
        for iname, (index, comp_sets) in indexes.items():
            for sname, comps in comp_sets.items():
                fm[f"{iname} <- {sname} x{len(comps)}"] = false_matches(index, comps)
        report["false_matches"] = fm
        print("\nshare of completions with a span of >= L tokens (share of tokens covered), K =",
              SpanParams().max_occurrences)
        print("| index <- completions | " + " | ".join(f"L={L}" for L in CANDIDATE_L) + " |")
        print("|---|" + "---|" * len(CANDIDATE_L))
        for key, per_l in fm.items():
            print(f"| {key} | " + " | ".join(f"{v['with_span']:.1%} ({v['tokens_covered']:.2%})"
                                             for v in per_l.values()) + " |")
    else:
        rows_out = []
        for n in sizes:
            r = measure_size(corpus, n, unseen, args.queries, args.seed)
            rows_out.append(r)
            print(json.dumps(r), flush=True)
        report["scale"] = rows_out
        print("\n| tokens | build wall 1 / 2 threads (CPU) | build peak | bytes/token | from_bytes | loaded | "
              "unseen p50/p99 wall (CPU) | copied p50/p99 wall (CPU) | half p50/p99 wall (CPU) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows_out:
            def q(kind):
                return (f"{r[kind + '_p50_ms']:.1f}/{r[kind + '_p99_ms']:.1f} ms "
                        f"({r[kind + '_cpu_p50_ms']:.1f}/{r[kind + '_cpu_p99_ms']:.1f})")
            print(f"| {r['tokens']:,} | {r['build_s_1t']:.1f} / {r['build_s_2t']:.1f} s ({r['build_cpu_s_1t']:.1f} / "
                  f"{r['build_cpu_s_2t']:.1f}) | {r['build_peak_mb']:.0f} MiB | {r['bytes_per_token']:.2f} | "
                  f"{r['load_s']:.2f} s | {r['loaded_mb']:.0f} MiB | {q('unseen')} | {q('copied')} | {q('half')} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

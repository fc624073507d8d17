"""Span indexes of Datanet versions for this node's base tokenizer, and the per-request attributor built on them.

What it does: `tokenizer_identity(model_dir)` names the base model's tokenizer by content ("sha256:" of its
tokenizer.json, else of its tokenizer files); `RowTokenizer` tokenizes row texts the way every verifier does
(transformers' AutoTokenizer on the base directory, no special tokens). `IndexStore.get(version_cid, get)` gives
the span index (attribution.spans.SpanIndex) of a Datanet version's rows (`version_rows`), built
on first use and persisted under <home>/attribution/indexes/, keyed by (version CID, tokenizer identity), with its
index CID beside it; one build per key at a time, a few indexes kept in memory. `Attributor.attribute(cid, ids)`
runs attribution.attribute.attribute for one completion: lineage and version weights from the chain (cached: both
are immutable once published), the index, the configured span parameters and shares; `prepare(cid)` starts the
index build in the background when a request for the adapter is admitted, so that it overlaps generation.
Everything here is blocking: the pipeline calls it through `asyncio.to_thread`.
What it does not do: fetch a version's blocks from the network (`openlora-node datanet pull` does; rows missing from
the home's blockstore make the attribution static, logged), decide the rule (attribution.evidence), or sign.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

from openlora.fsutil import atomic_write
from openlora.node.errors import NodeError

log = logging.getLogger("openlora.attribution")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model")
DEFAULT_MIN_LEN = 12            # attribution.spans.SpanParams' defaults (docs/attribution.md, "Choosing L")
DEFAULT_MAX_OCCURRENCES = 16
MEMORY_INDEXES = 4


class IndexBuildError(NodeError):
    """A version's rows cannot be read from the blockstore (missing or corrupt blocks, a malformed manifest)."""


def tokenizer_identity(model_dir: Path | str) -> str:
    """"sha256:<hex>" of the base tokenizer's tokenizer.json (of its tokenizer files when it has none)."""
    d = Path(model_dir)
    if (d / "tokenizer.json").is_file():
        return "sha256:" + hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest()
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        if (d / name).is_file():
            found = True
            h.update(name.encode() + b"\0" + (d / name).read_bytes() + b"\0")
    if not found:
        raise FileNotFoundError(f"{d} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return "sha256:" + h.hexdigest()


class RowTokenizer:
    """texts -> token ids with the base model's tokenizer, no special tokens (what a verifier computes)."""

    def __init__(self, model_dir: Path | str):
        from transformers import AutoTokenizer
        self.identity = tokenizer_identity(model_dir)
        self._tok = AutoTokenizer.from_pretrained(str(model_dir))

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return self._tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def version_rows(manifest_cid: str, get: Callable[[Any], bytes]) -> Iterator[tuple[int, int, str]]:
    """(contribution id, row index in that contribution, row text) of every row of a version that the span index
    holds: every row the manifest does not flag as a duplicate, in manifest order. Every block is verified against
    its CID (content.dag); the text is the row's `text` as datanets.contribution derives it."""
    from openlora.datanets import manifest as mf
    from openlora.datanets.contribution import load
    from openlora.datanets.errors import DatanetError
    try:
        m = mf.read(manifest_cid, get)
        for c in m["contributions"]:
            loaded = load(str(c["cid"]), get)
            listed = c["rows"]
            if len(listed) != len(loaded.prepared.rows):
                raise IndexBuildError(f"version {manifest_cid}: contribution #{c['id']} lists {len(listed)} rows, "
                                    f"its file gives {len(loaded.prepared.rows)}")
            for n, (row, entry) in enumerate(zip(loaded.prepared.rows, listed)):
                if row.cid != entry["cid"]:
                    raise IndexBuildError(f"version {manifest_cid}: contribution #{c['id']} row {n} is {row.cid}, "
                                        f"the manifest says {entry['cid']}")
                if not entry.get("duplicate"):
                    yield int(c["id"]), n, row.text
    except DatanetError as e:
        raise IndexBuildError(f"version {manifest_cid}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, IndexBuildError):
            raise
        raise IndexBuildError(f"version {manifest_cid}: malformed manifest ({type(e).__name__}: {e})") from None


def build_index(version_cid: str, get: Callable[[Any], bytes], tokenize: Callable[[list[str]], list[list[int]]],
                threads: int = 1, batch: int = 256) -> Any:
    """The span index of a version's rows (`version_rows`), tokenized by `tokenize`."""
    from openlora.attribution.spans import SpanIndex

    def rows():
        pending: list[tuple[int, int, str]] = []
        for row in version_rows(version_cid, get):
            pending.append(row)
            if len(pending) >= batch:
                yield from _tokenized(pending)
                pending = []
        yield from _tokenized(pending)

    def _tokenized(part: list[tuple[int, int, str]]):
        for (c, n, _), ids in zip(part, tokenize([t for _, _, t in part])):
            yield c, n, ids
    return SpanIndex.build(rows(), threads=threads)


class IndexStore:
    """Span indexes by (version CID, tokenizer identity): memory (a few), then <root>/<key>.idx, then built."""

    def __init__(self, root: Path | str, tokenize: Callable[[list[str]], list[list[int]]], tokenizer_id: str,
                 threads: int = 1):
        self.root, self.tokenize, self.tokenizer_id, self.threads = Path(root), tokenize, tokenizer_id, threads
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def key(self, version_cid: str) -> str:
        return hashlib.sha256(f"{version_cid}\n{self.tokenizer_id}".encode()).hexdigest()

    def get(self, version_cid: str, get: Callable[[Any], bytes]) -> Any:
        from openlora.attribution.attribute import index_cid
        from openlora.attribution.spans import SpanIndex, SpanIndexError
        key = self.key(version_cid)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:                                  # one build (or load) per key; others wait for it
            with self._lock:
                if key in self._memory:
                    return self._memory[key]
            path, meta_path = self.root / f"{key}.idx", self.root / f"{key}.json"
            index = None
            if path.is_file() and meta_path.is_file():
                try:
                    index = SpanIndex.from_bytes(path.read_bytes())
                    meta = json.loads(meta_path.read_text())
                    if meta.get("index_cid") != index_cid(index) or meta.get("version_cid") != version_cid:
                        raise SpanIndexError("index file and its record disagree")
                except (OSError, ValueError, SpanIndexError) as e:
                    log.warning("span index %s unreadable (%s); rebuilding", path, e)
                    index = None
            if index is None:
                import time
                t0 = time.perf_counter()
                index = build_index(version_cid, get, self.tokenize, self.threads)
                self.root.mkdir(parents=True, exist_ok=True)
                atomic_write(path, index.to_bytes())
                atomic_write(meta_path, json.dumps({"version_cid": version_cid, "tokenizer": self.tokenizer_id,
                                                    "index_cid": index_cid(index),
                                                    "num_tokens": int(index.num_tokens)}, indent=1))
                log.info("span index built", extra={"fields": {"version": version_cid, "tokens": index.num_tokens,
                                                               "index_cid": index_cid(index),
                                                               "seconds": round(time.perf_counter() - t0, 3)}})
            with self._lock:
                self._memory[key] = index
                while len(self._memory) > MEMORY_INDEXES:
                    self._memory.popitem(last=False)
            return index


class Attributor:
    """Per-request span attribution for a serving node (blocking; call from a worker thread)."""

    def __init__(self, w3: Any, dep: Any, indexes: IndexStore, get: Callable[[Any], bytes], *, operator: str,
                 shares: Any, min_len: int = DEFAULT_MIN_LEN, max_occurrences: int = DEFAULT_MAX_OCCURRENCES):
        self.w3, self.dep, self.indexes, self.get = w3, dep, indexes, get
        self.operator, self.shares = operator, shares
        self.min_len, self.max_occurrences = min_len, max_occurrences
        self._lineage: dict[str, dict] = {}
        self._terms: dict[str, Any] = {}
        self._ready: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openlora-span-index")

    def versions(self, cid: str) -> dict:
        """{datanet id: pricing.VersionWeights} the adapter was trained on (chain; cached: immutable)."""
        with self._lock:
            if cid in self._lineage:
                return self._lineage[cid]
        from openlora.attribution.attribute import lineage_versions
        found = lineage_versions(self.w3, self.dep, cid)
        with self._lock:
            self._lineage[cid] = found
        return found

    def terms(self, cid: str) -> Any:
        """The adapter's registered terms; its Datanets and their bps are fixed at registration (cached)."""
        with self._lock:
            if cid in self._terms:
                return self._terms[cid]
        from openlora.attribution.attribute import registered_terms
        found = registered_terms(self.w3, self.dep, cid)
        with self._lock:
            self._terms[cid] = found
        return found

    def prepare(self, cid: str | None) -> None:
        """Start loading (or building) the adapter's version indexes in the background; errors are logged."""
        if cid is not None and cid not in self._ready:
            self._pool.submit(self._prepare, cid)

    def _prepare(self, cid: str) -> None:
        try:
            for v in self.versions(cid).values():
                self.indexes.get(v.manifest_cid, self.get)
            self._ready.add(cid)     # loaded once; an index evicted from memory is reloaded by its next request
        except Exception as e:  # noqa: BLE001 - the request's own attribution reports it again
            log.warning("span index not ready for adapter %s: %s: %s", cid, type(e).__name__, e)

    def attribute(self, cid: str | None, completion_ids: list[int]) -> Any:
        """attribution.attribute.Attributed for one completion, or None for an adapter without lineage."""
        if cid is None:
            return None
        versions = self.versions(cid)
        if not versions:
            return None
        from openlora.attribution.attribute import attribute
        return attribute(self.terms(cid), versions, lambda d, v: self.indexes.get(v, self.get), completion_ids,
                         min_len=self.min_len, max_occurrences=self.max_occurrences, shares=self.shares,
                         tokenizer=self.indexes.tokenizer_id, operator=self.operator)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_attributor(cfg: Any, chain: Any, model_dir: Path, operator: str) -> Attributor | None:
    """The node's attributor (None without a chain or a tokenizer: receipts then carry static vectors)."""
    if chain is None:
        return None
    from openlora.attribution.pricing import Shares
    from openlora.content.blockstore import Blockstore
    try:
        tok = RowTokenizer(model_dir)
    except Exception as e:  # noqa: BLE001 - a model without a tokenizer cannot be span-attributed
        log.warning("span attribution off: the base model's tokenizer cannot be loaded (%s)", e)
        return None
    s = cfg.settlement
    shares = Shares(author_bps=s.author_share_bps, operator_bps=s.operator_share_bps,
                    contributors_bps=10_000 - s.author_share_bps - s.operator_share_bps)
    a = cfg.attribution
    indexes = IndexStore(cfg.home / "attribution" / "indexes", tok, tok.identity, threads=a.index_threads)
    log.info("span attribution on", extra={"fields": {"tokenizer": tok.identity, "min_span_tokens": a.min_span_tokens,
                                                      "max_span_occurrences": a.max_span_occurrences}})
    return Attributor(chain.w3, chain.deployment, indexes, Blockstore(cfg.home / "ipfs").get, operator=operator,
                      shares=shares, min_len=a.min_span_tokens, max_occurrences=a.max_span_occurrences)

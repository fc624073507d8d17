"""A contribution file -> validated, normalised text -> rows, each content-addressed with Kubo-identical CIDs.

What it does: `prepare(data, name, limits)` refuses, with one line saying why, a file that is empty, larger than
`limits.max_bytes`, binary (a NUL byte or other C0 control characters), not strict UTF-8, or malformed, and
otherwise normalises it (BOM dropped, CRLF/CR -> LF, Unicode NFC) and splits it into rows:
- JSONL (`.jsonl`): one JSON object per non-empty line, exactly {"text": str} or {"prompt": str,
  "completion": str}, parsed with openlora.safejson;
- Markdown (`.md`, `.markdown`): blocks separated by blank lines, a fenced code block (```) kept whole;
- text (anything else): paragraphs separated by blank lines.
A row's bytes are the canonical JSON of its record (sorted keys, no spaces, UTF-8), so the same record has the
same CID whatever file it came from. `store(prepared, blockstore, license)` imports the normalised file, every row
and a small contribution record (canonical JSON: format, license, data CID, bytes, rows) into a blockstore; the
record's CID is the contribution's CID (what goes on chain). `load(cid, get)` reads a contribution back from
blocks (each verified against its CID) and re-derives its rows.
What it does not do: duplicates (dedup.py), weights (manifest.py) or anything on chain (registry.py).
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from openlora.content.cid import CID, RAW, as_cid
from openlora.content.dag import cat
from openlora.content.errors import ContentError
from openlora.content.importer import CHUNK_SIZE, add_bytes
from openlora.datanets.errors import ContributionError, DatanetError
from openlora.safejson import UnsafeJSONError, loads as safe_loads

FORMATS = ("jsonl", "markdown", "text")
RECORD_FORMAT = "openlora-contribution/1"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 << 20      # a contribution file
    max_rows: int = 1_000_000
    max_row_bytes: int = 1 << 20   # one row's canonical JSON

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_rows, self.max_row_bytes) < 1:
            raise ValueError(f"contribution limits must be >= 1: {self}")


@dataclass(frozen=True)
class Row:
    cid: str
    data: bytes   # canonical JSON of the record
    text: str     # what is weighed and compared: text, or prompt + "\n" + completion


@dataclass(frozen=True)
class Prepared:
    format: str
    data: bytes            # the normalised file (UTF-8, LF, NFC)
    cid: str               # CID of `data`
    rows: tuple[Row, ...]


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, and no floats anywhere (weights and counts are integers)."""
    def check(x: Any) -> None:
        if isinstance(x, float):
            raise DatanetError(f"canonical JSON holds no floats (found {x!r})")
        if isinstance(x, dict):
            for v in x.values():
                check(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                check(v)
    check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def format_of(name: str) -> str:
    low = name.lower()
    if low.endswith(".jsonl"):
        return "jsonl"
    if low.endswith((".md", ".markdown")):
        return "markdown"
    return "text"


def normalise(data: bytes, name: str, limits: Limits) -> str:
    if not data:
        raise ContributionError(f"{name}: the file is empty")
    if len(data) > limits.max_bytes:
        raise ContributionError(f"{name}: {len(data):,} bytes is over the {limits.max_bytes:,}-byte limit "
                                f"for one contribution; split it")
    if b"\x00" in data:
        at = data.index(b"\0")
        raise ContributionError(f"{name}: a binary file (NUL byte at offset {at}); contribute UTF-8 text, Markdown "
                                f"or JSONL")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ContributionError(f"{name}: not UTF-8 (invalid byte 0x{data[e.start]:02x} at offset {e.start})") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    bad = _CONTROL.search(text)
    if bad:
        raise ContributionError(f"{name}: a binary file (control character U+{ord(bad.group()):04X} at "
                                f"character {bad.start()}); contribute UTF-8 text, Markdown or JSONL")
    text = unicodedata.normalize("NFC", text)
    if not text.strip():
        raise ContributionError(f"{name}: the file holds only whitespace")
    return text


def _record(obj: Any, where: str) -> tuple[dict[str, str], str]:
    if not isinstance(obj, dict):
        raise ContributionError(f"{where}: a row must be a JSON object, found {type(obj).__name__}")
    keys = set(obj)
    if keys not in ({"text"}, {"prompt", "completion"}):
        raise ContributionError(f"{where}: a row is {{\"text\"}} or {{\"prompt\", \"completion\"}}, found keys "
                                f"{sorted(keys)}")
    for k, v in obj.items():
        if not isinstance(v, str):
            raise ContributionError(f"{where}: \"{k}\" must be a string, found {type(v).__name__}")
    rec = {k: unicodedata.normalize("NFC", v) for k, v in obj.items()}
    body = rec["text"] if "text" in rec else rec["prompt"] + "\n" + rec["completion"]
    if not body.strip():
        raise ContributionError(f"{where}: the row is empty")
    return rec, body


def _blocks(text: str, fenced: bool) -> list[str]:
    if not fenced:
        return [p.strip() for p in _BLANK.split(text) if p.strip()]
    out, cur, in_fence = [], [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if cur:
                out.append("\n".join(cur).strip())
                cur = []
            continue
        cur.append(line.rstrip())
    if cur:
        out.append("\n".join(cur).strip())
    return [b for b in out if b]


def split_rows(text: str, fmt: str, name: str, limits: Limits) -> list[tuple[dict[str, str], str]]:
    rows: list[tuple[dict[str, str], str]] = []
    if fmt == "jsonl":
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = safe_loads(line.encode("utf-8"), max_bytes=limits.max_row_bytes, max_depth=4)
            except UnsafeJSONError as e:
                raise ContributionError(f"{name}: line {n} is not a valid JSON row: {e}") from None
            rows.append(_record(obj, f"{name}: line {n}"))
            if len(rows) > limits.max_rows:
                break
    elif fmt in ("markdown", "text"):
        rows = [({"text": b}, b) for b in _blocks(text, fmt == "markdown")]
    else:
        raise ContributionError(f"{name}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not rows:
        raise ContributionError(f"{name}: no rows found")
    if len(rows) > limits.max_rows:
        raise ContributionError(f"{name}: more than the {limits.max_rows:,}-row limit for one contribution; split it")
    return rows


def _row(rec: dict[str, str], body: str, name: str, limits: Limits) -> Row:
    # canonical JSON of a flat {str: str} record (what canonical_json gives, without its float scan)
    data = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > limits.max_row_bytes:
        raise ContributionError(f"{name}: a row of {len(data):,} bytes is over the {limits.max_row_bytes:,}-byte "
                                f"row limit ({body[:40]!r}...)")
    cid = CID.of(RAW, data) if len(data) <= CHUNK_SIZE else add_bytes(data).cid  # one chunk: its raw leaf
    return Row(str(cid), data, body)


Progress = Callable[[int, int], None]   # progress(done, total), e.g. rows hashed of all rows


def _every(n: int, total: int) -> bool:
    return n == total or n % 256 == 0


def prepare(data: bytes, name: str = "contribution", limits: Limits = Limits(), fmt: str | None = None,
            progress: Progress | None = None) -> Prepared:
    """Validate, normalise and split a contribution file. Raises ContributionError (one line) on refusal.
    `progress(rows hashed, rows)` is called as rows are content-addressed (every 256 rows and at the end)."""
    fmt = fmt or format_of(name)
    if fmt not in FORMATS:
        raise ContributionError(f"{name}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    text = normalise(data, name, limits)
    split = split_rows(text, fmt, name, limits)
    out = []
    for n, (rec, body) in enumerate(split, 1):
        out.append(_row(rec, body, name, limits))
        if progress and _every(n, len(split)):
            progress(n, len(split))
    rows = tuple(out)
    norm = text.encode("utf-8")
    return Prepared(fmt, norm, str(add_bytes(norm).cid), rows)


def store(p: Prepared, blockstore: Any, license: str, progress: Progress | None = None) -> str:
    """Import the file, its rows and its record into `blockstore`; returns the contribution's CID.
    `progress(rows stored, rows)` is called every 256 rows and at the end."""
    if not license or len(license) > 200:
        raise ContributionError("a contribution needs a license (an SPDX id such as CC-BY-4.0, at most 200 chars)")
    sink = blockstore.put_trusted
    file_cid = str(add_bytes(p.data, sink).cid)
    for n, r in enumerate(p.rows, 1):
        add_bytes(r.data, sink)
        if progress and _every(n, len(p.rows)):
            progress(n, len(p.rows))
    record = canonical_json({"format": RECORD_FORMAT, "data_format": p.format, "license": license,
                             "data": file_cid, "bytes": len(p.data), "rows": len(p.rows)})
    return str(add_bytes(record, sink).cid)


@dataclass(frozen=True)
class Loaded:
    cid: str
    license: str
    prepared: Prepared


def read_file(cid: str, get: Callable, max_bytes: int) -> bytes:
    out = io.BytesIO()
    try:
        cat(as_cid(cid), get, out, max_bytes=max_bytes)
    except ContentError as e:
        raise DatanetError(f"{cid}: cannot be read from the blockstore: {e}") from None
    return out.getvalue()


def read_record(cid: str, get: Callable) -> dict[str, Any]:
    """Contribution `cid`'s record (format, data_format, license, data, bytes, rows), checked for shape only."""
    try:
        rec = safe_loads(read_file(cid, get, 64 << 10), max_bytes=64 << 10, max_depth=4)
    except UnsafeJSONError as e:
        raise DatanetError(f"contribution {cid}: its record is not JSON: {e}") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or rec.get("data_format") not in FORMATS \
            or not isinstance(rec.get("data"), str):
        raise DatanetError(f"contribution {cid}: not an {RECORD_FORMAT} record")
    return rec


def load(cid: str, get: Callable, limits: Limits = Limits()) -> Loaded:
    """Read contribution `cid` (its record, then its file; every block verified) and re-derive its rows."""
    rec = read_record(cid, get)
    data = read_file(str(rec["data"]), get, limits.max_bytes)
    p = prepare(data, f"contribution {cid}", limits, rec["data_format"])
    if p.cid != rec["data"] or p.data != data:
        raise DatanetError(f"contribution {cid}: its file {rec['data']} is not in normal form (it re-normalises to "
                           f"{p.cid})")
    if len(p.rows) != rec.get("rows"):
        raise DatanetError(f"contribution {cid}: its record says {rec.get('rows')} rows, the file splits into "
                           f"{len(p.rows)}")
    return Loaded(cid, str(rec["license"]), p)

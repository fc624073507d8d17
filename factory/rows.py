"""Training rows: from a Datanet version (or plain Python rows) to token ids and labels, split by the seed.

What it does: `records_from_version(manifest_cid, get)` reads a version manifest (datanets.manifest.read) and every
row it names, in the manifest's order (contribution id, then row order; rows flagged as duplicates carry no weight
and are not trained on), each row's bytes verified against its CID by `get` and parsed with openlora.safejson.
`records_from_rows(rows)` accepts plain rows (a str, {"text": str} or {"prompt": str, "completion": str}).
`encode(record, tokenizer, max_len)`: plain text is language modelling (every token is a label, EOS appended);
a prompt/completion record goes through the tokenizer's chat template (user turn, then assistant turn) and only the
completion's tokens are labels. `split(n, eval_split, seed)` holds out rows chosen by a seeded permutation
(Python's `random.Random`, stable across versions and machines); the training rows keep the manifest's order.
What it does not do: fetch blocks (the caller's `get`), or batch and shuffle (train.py: a seeded permutation per epoch).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

from openlora.factory.config import canonical_json
from openlora.factory.errors import FactoryInputError
from openlora.safejson import UnsafeJSONError, loads as safe_loads

MAX_ROW_BYTES = 1 << 20     # one row's canonical JSON (datanets' default limit)
MAX_ROWS = 1_000_000
IGNORE = -100


@dataclass(frozen=True)
class Record:
    """One training row: plain text, or a prompt/completion pair; `cid` is its Datanet row CID ("" when none)."""
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    cid: str = ""

    @property
    def is_chat(self) -> bool:
        return self.prompt is not None

    def as_dict(self) -> dict[str, str]:
        return {"text": self.text} if self.text is not None else {"prompt": self.prompt, "completion": self.completion}


def record_of(obj: Any, where: str, cid: str = "") -> Record:
    """A Record from a str or a row object, or a one-line FactoryInputError saying what is wrong with it."""
    if isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict):
        raise FactoryInputError(f"{where}: a row is a string, {{\"text\"}} or {{\"prompt\", \"completion\"}}, found "
                                f"{type(obj).__name__}")
    keys = set(obj)
    if keys not in ({"text"}, {"prompt", "completion"}):
        raise FactoryInputError(f"{where}: a row is {{\"text\"}} or {{\"prompt\", \"completion\"}}, found keys "
                                f"{sorted(map(str, keys))}")
    for k, v in obj.items():
        if not isinstance(v, str):
            raise FactoryInputError(f"{where}: \"{k}\" must be a string, found {type(v).__name__}")
    if not "".join(obj.values()).strip():
        raise FactoryInputError(f"{where}: the row is empty")
    return Record(cid=cid, **obj)


def records_from_rows(rows: Any) -> list[Record]:
    if not isinstance(rows, (list, tuple)):
        raise FactoryInputError(f"rows must be a list, got {type(rows).__name__}")
    if not rows:
        raise FactoryInputError("no rows to train on")
    if len(rows) > MAX_ROWS:
        raise FactoryInputError(f"{len(rows):,} rows is over the {MAX_ROWS:,}-row limit")
    return [record_of(r, f"row {i}") for i, r in enumerate(rows)]


def records_from_version(manifest_cid: str, get: Callable, *, max_row_bytes: int = MAX_ROW_BYTES
                         ) -> tuple[dict[str, Any], list[Record]]:
    """(manifest, records) of a Datanet version whose blocks `get` returns (verified against their CIDs)."""
    from openlora.datanets import manifest as mf
    from openlora.datanets.contribution import read_file
    from openlora.datanets.errors import DatanetError
    try:
        m = mf.read(manifest_cid, get)
    except DatanetError as e:
        raise FactoryInputError(str(e)) from None
    try:
        contribs = sorted(m["contributions"], key=lambda c: int(c["id"]))
        rows = [(int(c["id"]), n, str(r["cid"]), "duplicate" in r) for c in contribs
                for n, r in enumerate(c["rows"])]
    except (KeyError, TypeError, ValueError) as e:
        raise FactoryInputError(f"version manifest {manifest_cid} is malformed: {type(e).__name__}: {e}") from None
    out = []
    for cid_id, n, cid, dup in rows:
        if dup:
            continue
        where = f"contribution #{cid_id} row {n} ({cid})"
        try:
            data = read_file(cid, get, max_row_bytes)
            obj = safe_loads(data, max_bytes=max_row_bytes, max_depth=4)
        except DatanetError as e:
            raise FactoryInputError(f"{where}: {e}") from None
        except UnsafeJSONError as e:
            raise FactoryInputError(f"{where}: not a JSON row: {e}") from None
        out.append(record_of(obj, where, cid))
    if not out:
        raise FactoryInputError(f"version {m.get('version')} of Datanet {m.get('datanet_id')} ({manifest_cid}) has "
                                f"no rows to train on")
    return m, out


def rows_digest(records: list[Record]) -> str:
    """sha256 over the rows' canonical JSON in training order (what a Datanet row's CID addresses)."""
    h = hashlib.sha256()
    for r in records:
        h.update(canonical_json(r.as_dict()))
        h.update(b"\n")
    return h.hexdigest()


def split(n: int, eval_split: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices in order, held-out indices in order); held-out rows are a seeded permutation's first k."""
    k = 0
    if eval_split > 0 and n >= 2:
        k = min(n - 1, max(1, round(n * eval_split)))
    order = list(range(n))
    random.Random(f"openlora-factory/split/{seed}").shuffle(order)
    held = sorted(order[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training rows' order in one epoch: a permutation fixed by (seed, epoch)."""
    order = list(range(n))
    random.Random(f"openlora-factory/epoch/{seed}/{epoch}").shuffle(order)
    return order


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    labels: tuple[int, ...]      # IGNORE where no loss is taken (the prompt of a chat record)
    prompt_len: int              # tokens given as the prompt when sampling from this example


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def chat_prompt(tok: Any, prompt: str) -> str | None:
    """The chat template's text for a user turn ending in the assistant's turn (None without a template)."""
    if not getattr(tok, "chat_template", None):
        return None
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def encode(r: Record, tok: Any, max_len: int) -> Example | None:
    """Token ids and labels of one record (None when truncation leaves it nothing to learn)."""
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if not r.is_chat:
        ids = (_ids(tok, r.text or "") + eos)[:max_len]
        labels = list(ids)
        prompt_len = max(1, min(16, len(ids) // 2))
    else:
        head = chat_prompt(tok, r.prompt or "")
        if head is not None:
            full = tok.apply_chat_template([{"role": "user", "content": r.prompt},
                                            {"role": "assistant", "content": r.completion}], tokenize=False)
            if full.startswith(head):
                p_ids, c_ids = _ids(tok, head), _ids(tok, full[len(head):])
            else:  # a template that rewrites earlier turns: fall back to the plain join below
                p_ids, c_ids = _ids(tok, (r.prompt or "") + "\n"), _ids(tok, r.completion or "") + eos
        else:
            p_ids, c_ids = _ids(tok, (r.prompt or "") + "\n"), _ids(tok, r.completion or "") + eos
        ids = (p_ids + c_ids)[:max_len]
        labels = ([IGNORE] * len(p_ids) + c_ids)[:max_len]
        prompt_len = min(len(p_ids), max_len)
    if len(ids) < 2 or all(x == IGNORE for x in labels[1:]):
        return None
    return Example(tuple(ids), tuple(labels), prompt_len)

"""Bounded JSON parsing for untrusted input: every JSON the node reads from a peer, a client or a downloaded file.

Why: the stdlib's C parser recurses once per nesting level and relies on Python's recursion limit to stop; the
Ethereum stack (`py_ecc`, imported by eth-account/web3) raises that limit to 100,000, so `[` * 100,000 overflows
the C stack and kills the process (SIGSEGV) before any RecursionError. This module checks the input BEFORE the
parser sees it:

- size: more than `max_bytes` bytes (UTF-8) is refused without being read further;
- depth: one O(n) pass, at C speed (regular expressions and `itertools.accumulate`, no Python loop per character),
  computes the deepest `[`/`{` nesting outside strings (string contents and escapes are skipped); deeper than
  `max_depth` is refused. The pass may over-count only on input that is already invalid JSON (an unterminated
  string), never under-count what the parser would reach;
- encoding: bytes must be strict UTF-8 (the stdlib also guesses UTF-16/32 and accepts invalid sequences in str);
  a lone surrogate, raw or as a `\\ud800` escape, is refused (it breaks every later `.encode()`);
- numbers: `NaN`, `Infinity`, `-Infinity` and floats that overflow to infinity (`1e999`) are refused; integers
  keep Python's 4,300-digit limit.

Every refusal, and every syntax error, is one exception class, `UnsafeJSONError(ValueError)`, whose message says
what was wrong (never the input itself), so existing `except ValueError` handlers keep working.
`load_file` also refuses a symbolic link or a non-regular file (FIFO, device) before reading it.

What it does not do: schema checks (each caller checks the shape it expects), or serialise (use json.dumps).
Standard library only: every package of this project may import it (openlora.safejson).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from itertools import accumulate
from typing import Any

__all__ = ["UnsafeJSONError", "loads", "load_file", "read_regular_file", "DEFAULT_MAX_DEPTH"]

DEFAULT_MAX_DEPTH = 64

# A JSON string: from a quote to the next unescaped quote, or to the end of the text when unterminated (the parser
# stops there, so nothing after it counts). Every match attempt at a quote succeeds, in one forward pass: a pattern
# that could fail at a quote would be retried at every later quote (quadratic on '"\\"\\"\\...').
_STRING = re.compile(r'"[^"\\]*(?:\\(?:[\s\S]|\Z)[^"\\]*)*(?:"|\Z)')
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_DELTA = [0] * 256
_DELTA[ord("(")], _DELTA[ord(")")] = 1, -1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class UnsafeJSONError(ValueError):
    """The input is not JSON this node accepts: too large, too deep, not UTF-8, a non-finite number, or malformed."""


def _refuse_constant(name: str) -> Any:
    raise UnsafeJSONError(f"JSON constant {name} is not accepted (only finite numbers)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise UnsafeJSONError(f"JSON number {text[:32]}{'...' if len(text) > 32 else ''} overflows a float")
    return v


def nesting_depth(text: str, limit: int | None = None) -> int:
    """The deepest nesting of arrays/objects in `text`, ignoring brackets inside strings; O(len(text)), every step
    at C speed (re.sub, bytes.translate, accumulate over a map). With `limit`, a result over `limit` may be any
    number over it: a run of `limit + 1` openers is caught without the prefix sums."""
    parens = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(_PARENS, _NOT_BRACKET)
    if limit is not None and b"(" * (limit + 1) in parens:
        return limit + 1
    if not parens:
        return 0
    return max(0, max(accumulate(map(_DELTA.__getitem__, parens))))


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """json.loads for untrusted input, with the checks in the module docstring. Raises UnsafeJSONError."""
    if isinstance(data, str):
        if len(data) > max_bytes:  # every character is at least one UTF-8 byte
            raise UnsafeJSONError(f"JSON text of {len(data)} characters exceeds the limit of {max_bytes} bytes")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise UnsafeJSONError("JSON text holds a lone surrogate (not valid Unicode)") from None
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if size > max_bytes:
            raise UnsafeJSONError(f"JSON of {size} bytes exceeds the limit of {max_bytes} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise UnsafeJSONError(f"JSON is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    else:
        raise UnsafeJSONError(f"expected JSON as bytes or str, got {type(data).__name__}")
    if size > max_bytes:
        raise UnsafeJSONError(f"JSON of {size} bytes exceeds the limit of {max_bytes} bytes")
    if nesting_depth(text, max_depth) > max_depth:
        raise UnsafeJSONError(f"JSON nests more than {max_depth} levels deep; at most {max_depth} are accepted")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnsafeJSONError:
        raise
    except RecursionError:  # cannot happen below max_depth; kept so that no other class escapes
        raise UnsafeJSONError("JSON nests too deep") from None
    except ValueError as e:  # JSONDecodeError, and int() past the 4,300-digit limit
        raise UnsafeJSONError(f"not valid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(text):  # a \uD8xx..\uDFxx escape: a pair decodes to one character, a lone one not
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeJSONError("JSON holds a lone surrogate escape (\\ud800-\\udfff without its pair)") from None
    return value


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of `path`, refusing (UnsafeJSONError) a symbolic link as last component, anything that is not a
    regular file (a FIFO would block the reader forever, /dev/zero never ends) and more than `max_bytes` bytes.
    A file that does not exist or cannot be read raises the OSError (FileNotFoundError, ...) as open() would."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeJSONError(f"{path} is a symbolic link; it is read only from a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeJSONError(f"{path} is not a regular file; it is read only from a regular file")
        if st.st_size > max_bytes:
            raise UnsafeJSONError(f"{path} holds {st.st_size} bytes; the limit is {max_bytes}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise UnsafeJSONError(f"{path} holds more than {max_bytes} bytes")
    return data


def load_file(path: str | os.PathLike, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Read (`read_regular_file`: no symbolic link, no FIFO or device, at most `max_bytes`) and parse (`loads`) a
    JSON file that came from elsewhere (adapter_config.json, manifest.json). UnsafeJSONError names the path."""
    data = read_regular_file(path, max_bytes)
    try:
        return loads(data, max_bytes=max_bytes, max_depth=max_depth)
    except UnsafeJSONError as e:
        raise UnsafeJSONError(f"{path}: {e}") from None

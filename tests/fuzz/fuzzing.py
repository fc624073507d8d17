"""Shared settings and strategies of the fuzz tests (property-based, hypothesis).

Every fuzz test runs `examples(default)` examples: small defaults keep the whole folder well under a minute on a
2-core machine; OPENLORA_FUZZ_EXAMPLES=N runs N examples per test for a longer campaign, e.g.
    OPENLORA_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/fuzz -q -p no:cacheprovider
No example database is written (database=None): each run draws new examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def examples(default: int) -> int:
    return int(os.environ.get("OPENLORA_FUZZ_EXAMPLES") or default)


def fuzz(default: int):
    """@fuzz(n): hypothesis settings for n examples (or OPENLORA_FUZZ_EXAMPLES), no deadline, no database."""
    return settings(max_examples=examples(default), deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# Numbers that break naive code: huge, negative, non-finite, bool (an int subclass).
nasty_ints = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**63, 2**256, -2**256, 10**80]))
nasty_floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), nasty_ints, nasty_floats, st.text(max_size=40),
                    st.sampled_from(["", "0x", "0x" + "ab" * 32, "NaN", "1e999", "-1", "\x00", "\ud800"]))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=25)
any_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=25)

# Text made of JSON's structural characters, escapes and a few literals: reaches the parser's odd corners.
json_soup = st.lists(st.sampled_from(['[', ']', '{', '}', '"', '\\', '\\"', '\\\\', ',', ':', '1', '-', 'e',
                                      '1e999', 'NaN', 'Infinity', 'true', 'null', ' ', '\\u', 'd800', '\\ud800',
                                      '\\ud83d\\ude00', 'a', '\x00', '\n', 'é']), max_size=60).map("".join)


def depth_of(value) -> int:
    """Nesting depth of a parsed JSON value (iterative: deep values do not recurse here)."""
    best, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            best = max(best, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return best

"""openlora.safejson under fuzzing: it agrees with the stdlib on what it accepts, accepts no more depth than it
allows, and fails only with UnsafeJSONError; plus the regression inputs of issue 14 (100,000-deep nesting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlora.safejson import UnsafeJSONError, load_file, loads, nesting_depth
from tests.fuzz.fuzzing import depth_of, fuzz, json_soup, json_values

DEEP = 100_000


@fuzz(300)
@given(json_values, st.sampled_from([True, False]))
def test_valid_json_round_trips_with_its_true_depth(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_depth(text) == depth_of(value)
    assert loads(text.encode(), max_bytes=1 << 20) == value
    assert loads(text, max_bytes=1 << 20) == value
    if depth_of(value) > 2:
        with pytest.raises(UnsafeJSONError, match="levels deep"):
            loads(text, max_bytes=1 << 20, max_depth=2)


@fuzz(500)
@given(st.one_of(json_soup, st.text(max_size=80)))
def test_any_text_is_parsed_within_the_depth_or_refused(text):
    try:
        value = loads(text, max_bytes=1 << 20, max_depth=3)
    except UnsafeJSONError as e:
        assert str(e)
        return
    assert depth_of(value) <= 3
    assert value == json.loads(text)


@fuzz(300)
@given(st.binary(max_size=200))
def test_any_bytes_fail_only_with_unsafe_json_error(data):
    try:
        value = loads(data, max_bytes=150, max_depth=4)
    except UnsafeJSONError:
        return
    assert len(data) <= 150 and depth_of(value) <= 4
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate got through


@pytest.mark.parametrize("text, why", [
    ("[" * DEEP + "]" * DEEP, "levels deep"),
    ('{"a":' * DEEP + "1" + "}" * DEEP, "levels deep"),
    ("[" * DEEP, "levels deep"),                        # unterminated: the C parser would recurse all the same
    ("[{" * (DEEP // 2), "levels deep"),
    ('["' + "[" * DEEP + '"]', None),                   # brackets inside a string are text
    ("NaN", "NaN"), ("[-Infinity]", "Infinity"), ('{"x": 1e999}', "overflows"),
    ('"\\ud800"', "surrogate"), ('["\\udc00x"]', "surrogate"),
])
def test_regressions(text, why):
    assert sys.getrecursionlimit() >= 1000
    if why is None:
        assert loads(text, max_bytes=1 << 20) == ["[" * DEEP]
    else:
        with pytest.raises(UnsafeJSONError, match=why):
            loads(text, max_bytes=1 << 20)


def test_the_depth_scan_is_linear_on_unterminated_strings():
    """An earlier scanner retried its string pattern at every quote: '"\\"\\"\\...' took hours for 4 MiB."""
    for text in ('["' + '"\\' * 2_000_000, '["' + '"\\' * 2_000_000 + "\\", "[" * 60 + '"' + '\\"' * 2_000_000):
        t0 = time.monotonic()
        with pytest.raises(UnsafeJSONError, match="not valid JSON"):
            loads(text, max_bytes=8 << 20)
        assert time.monotonic() - t0 < 10, "the depth scan is not linear"
    assert nesting_depth('["a\\"[[') == 1 and nesting_depth('["a\\\\"[[') == 3


def test_size_utf8_and_types():
    with pytest.raises(UnsafeJSONError, match="exceeds"):
        loads(b"[" + b"1," * 100 + b"1]", max_bytes=100)
    with pytest.raises(UnsafeJSONError, match="exceeds"):
        loads("é" * 60, max_bytes=100)                  # 60 characters, 120 bytes
    with pytest.raises(UnsafeJSONError, match="UTF-8"):
        loads(b'"\xff"', max_bytes=100)
    with pytest.raises(UnsafeJSONError, match="UTF-8"):
        loads('"x"'.encode("utf-16"), max_bytes=100)    # the stdlib would guess UTF-16
    with pytest.raises(UnsafeJSONError, match="surrogate"):
        loads('"\ud800"', max_bytes=100)
    with pytest.raises(UnsafeJSONError, match="expected JSON"):
        loads(12, max_bytes=100)  # type: ignore[arg-type]
    assert loads(b'"\\ud83d\\ude00"', max_bytes=100) == "\U0001f600"
    assert isinstance(UnsafeJSONError("x"), ValueError)


def test_load_file_refuses_links_fifos_devices_directories_and_big_files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"r": 8}')
    assert load_file(good, 100) == {"r": 8}
    link = tmp_path / "link.json"
    link.symlink_to(good)
    with pytest.raises(UnsafeJSONError, match="symbolic link"):
        load_file(link, 100)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeJSONError, match="not a regular file"):  # and does not block on the FIFO
        load_file(fifo, 100)
    with pytest.raises(UnsafeJSONError, match="not a regular file"):
        load_file("/dev/zero", 100)
    with pytest.raises(UnsafeJSONError, match="not a regular file"):
        load_file(tmp_path, 100)
    big = tmp_path / "big.json"
    big.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(UnsafeJSONError, match="limit"):
        load_file(big, 100)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(UnsafeJSONError, match="deep.json.*levels deep"):
        load_file(deep, 1 << 20)
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.json", 100)


def test_node_start_restores_a_sane_recursion_limit():
    """py_ecc raises the limit to 100,000 on import; `openlora-node start` (run_node) calls bound_recursion first."""
    code = ("import sys, py_ecc; assert sys.getrecursionlimit() == 100_000\n"
            "from openlora.node.runner import RECURSION_LIMIT, bound_recursion\n"
            "bound_recursion()\n"
            "import web3, eth_account, openlora.node.wiring, openlora.node.p2p.host\n"
            "print(sys.getrecursionlimit(), RECURSION_LIMIT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["4000", "4000"]

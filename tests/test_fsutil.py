"""openlora.fsutil: an atomic write replaces the file whole with the requested mode, and a write that fails
leaves the old file and no temporary file behind."""

from __future__ import annotations

import os
import stat

import pytest

from openlora.fsutil import atomic_write, atomic_writer


def test_atomic_write_replaces_whole_with_the_mode(tmp_path):
    p = tmp_path / "sub" / "key.json"
    atomic_write(p, "first", mode=0o600)
    assert p.read_text() == "first" and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    atomic_write(p, b"\x00second")
    assert p.read_bytes() == b"\x00second" and stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert os.listdir(p.parent) == ["key.json"]


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(p) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_a_symlink_at_the_path_is_replaced_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert target.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"

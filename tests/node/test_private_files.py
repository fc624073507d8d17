"""Item 13 of issue 14: a bad --key-file is one line and exit 1 (never a traceback); the SQLite receipt store and
its -wal/-shm files are created mode 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from eth_account import Account

from openlora.node.errors import KeystoreError
from openlora.node.keystore import read_key_file


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
    return subprocess.run([sys.executable, "-m", "openlora.node.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("content", [b"not a key\n", b"0x1234\n", b"\xff\xfe\x00binary", b"", b"{not json"])
def test_bad_key_file_is_one_line_and_exit_1(tmp_path, content):
    key = tmp_path / "key"
    key.write_bytes(content)
    r = run_cli("request", "--url", "http://127.0.0.1:9", "--model", "m", "--key-file", str(key), "hi")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(key) in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_missing_key_file_is_one_line_and_exit_1(tmp_path):
    r = run_cli("request", "--url", "http://127.0.0.1:9", "--model", "m", "--key-file", str(tmp_path / "nope"), "hi")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: cannot read key file {tmp_path / 'nope'}: No such file or directory"]


def test_read_key_file_accepts_hex_and_keystore(tmp_path, monkeypatch):
    acct = Account.create()
    (tmp_path / "hex").write_text(acct.key.hex() + "\n")
    assert read_key_file(tmp_path / "hex").address == acct.address
    import json
    (tmp_path / "ks").write_text(json.dumps(Account.encrypt(acct.key, "password123")))
    monkeypatch.setenv("OPENLORA_PASSWORD", "password123")
    assert read_key_file(tmp_path / "ks").address == acct.address
    monkeypatch.setenv("OPENLORA_PASSWORD", "wrong-password")
    with pytest.raises(KeystoreError, match="wrong password"):
        read_key_file(tmp_path / "ks")


def test_sqlite_store_and_its_wal_files_are_private(tmp_path):
    from openlora.node.storage import Store
    old = os.umask(0o022)                    # the usual umask, under which SQLite alone would make 0644
    try:
        store = Store(f"sqlite:///{tmp_path / 'data' / 'node.db'}")
        try:
            assert store.unsettled_charges(Account.create().address) == 0   # a connection: -wal/-shm now exist
            files = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "data").iterdir()}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert {"node.db", "node.db-wal", "node.db-shm"} <= set(files), files
    assert all(mode == 0o600 for mode in files.values()), {k: oct(v) for k, v in files.items()}


def test_sqlite_store_refuses_a_symlinked_new_file_gracefully(tmp_path):
    """An existing database file is used as it is (the mode of a file the operator made is theirs to choose)."""
    from openlora.node.storage import Store
    db = tmp_path / "node.db"
    db.touch(mode=0o640)
    Store(f"sqlite:///{db}").close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o640

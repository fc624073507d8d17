"""The CLI end to end in subprocesses: init, account, start/stop, and one-line errors that change nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PASSWORD = "correct horse battery"


def run(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "openlora.node.cli", *args], capture_output=True, text=True, env=full_env,
                          input=input, timeout=120)


def snapshot(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


@pytest.fixture()
def home(tmp_path) -> Path:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    h = tmp_path / "home"
    r = run("--home", str(h), "init", "--password-file", str(pw))
    assert r.returncode == 0, r.stderr
    return h


def test_init_then_account(home, tmp_path):
    ks = (home / "keystore.json").read_text()
    assert '"crypto"' in ks and oct((home / "keystore.json").stat().st_mode)[-3:] == "600"
    r = run("--home", str(home), "account")
    assert r.returncode == 0
    address = r.stdout.strip()
    assert address.startswith("0x") and len(address) == 42
    # the private key is nowhere in plain text
    from eth_account import Account
    key = Account.decrypt(__import__("json").loads(ks), PASSWORD).hex()
    for f in home.rglob("*"):
        if f.is_file():
            assert key.removeprefix("0x") not in f.read_bytes().hex() and key.removeprefix("0x") not in f.read_text(
                errors="ignore")
    # init twice keeps everything
    before = snapshot(home)
    r = run("--home", str(home), "init", "--password-file", str(tmp_path / "pw"))
    assert r.returncode == 0 and "exists, kept" in r.stdout and snapshot(home) == before
    # OPENLORA_HOME works like --home
    r = run("account", env={"OPENLORA_HOME": str(home)})
    assert r.stdout.strip() == address


def test_wrong_password_is_one_line_and_changes_nothing(home, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("not the password\n")
    before = snapshot(home)
    r = run("--home", str(home), "start", "--password-file", str(bad), "--exit-after", "1")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "wrong password" in r.stderr
    assert snapshot(home) == before


def test_missing_key_and_malformed_toml_are_one_line(home):
    cfg = home / "config.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace('port = 8000', '#port = 8000', 1))
    before = snapshot(home)
    r = run("--home", str(home), "account")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "api.port is missing" in r.stderr and snapshot(home) == before
    cfg.write_text(text + "\n[api\n")
    before = snapshot(home)
    r = run("--home", str(home), "start", "--exit-after", "1", env={"OPENLORA_PASSWORD": PASSWORD})
    assert r.returncode != 0 and "not valid TOML" in r.stderr and r.stderr.strip().count("\n") == 0
    assert snapshot(home) == before


def test_init_without_password_source_fails_cleanly(tmp_path):
    h = tmp_path / "h"
    r = run("--home", str(h), "init", input="")
    assert r.returncode != 0 and "no password given" in r.stderr
    assert not h.exists() or not any(h.iterdir())


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_runs_and_stops_cleanly_on_ctrl_c(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
    env["OPENLORA_PASSWORD"] = PASSWORD
    port = free_port()
    env["OPENLORA_API_PORT"] = str(port)
    env["OPENLORA_API_FREE_LOCAL_MODE"] = "true"
    env["OPENLORA_P2P_LISTEN"] = f"/ip4/127.0.0.1/tcp/{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "--log-format", "json", "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "node running" in line or proc.poll() is not None:
            break
    assert "node running" in seen, seen
    # the node serves: an unsigned request (free local mode) gets a completion and a receipt
    import json as _json
    import urllib.request
    body = _json.dumps({"model": "openlora/tiny-llama-s0", "prompt": [5, 6, 7], "max_tokens": 3}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = _json.loads(r.read())
    rid = out["openlora"]["request_id"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/receipts/{rid}", timeout=60) as r:
        assert _json.loads(r.read())["request_id"] == rid
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=60) as r:
        checks = _json.loads(r.read())["checks"]
    assert checks["model"] is True and checks["p2p"] is True and checks["chain"] == "disabled"
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest
    assert "node stopped cleanly" in rest
    import json
    for line in (seen + rest).strip().splitlines():
        json.loads(line)  # --log-format json: every line is one JSON object


def test_help_lists_commands_and_every_group_loads():
    from click.testing import CliRunner

    from openlora.node.cli import GROUPS, cli
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("init", "start", "account", "version", *GROUPS):
        assert cmd in r.stdout
    assert "not yet" not in r.stdout.lower()          # nothing is advertised that does not exist
    for group in GROUPS:                               # each listed group imports and has its own help
        out = CliRunner().invoke(cli, [group, "--help"])
        assert out.exit_code == 0 and "Usage:" in out.output, (group, out.output)
    bad = run("nosuchgroup")
    assert bad.returncode == 2 and "No such command 'nosuchgroup'" in bad.stderr
    r = run("version")
    assert "openlora-node 0.1.0" in r.stdout and "torch 2.13.0" in r.stdout

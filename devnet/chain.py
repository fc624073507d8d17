"""A local Anvil chain: find the binary, start it detached with persisted state, wait for it, stop only our own.

What it does: `start_anvil(dir, ...)` runs npm's Anvil on 127.0.0.1 with a fixed mnemonic, its state file, log
file and pid file in `dir`; `stop_anvil(dir)` stops the process named in the pid file, and only if that process is
an Anvil started for this `dir`; `anvil_status(dir)` says what runs; `rpc()` is a tiny JSON-RPC client for
readiness polls. Used by `openlora-node devnet` and by the test fixtures.
What it does not do: deploy or seed contracts (devnet.deploy, devnet.seed).
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8545
DEFAULT_CHAIN_ID = 31337
PID_FILE = "anvil.pid"
STATE_FILE = "anvil-state.json"
LOG_FILE = "anvil.log"


class DevnetError(Exception):
    """Root of devnet errors; the message says what went wrong and what to do."""


def find_anvil() -> Path:
    """The native anvil binary from npm's @foundry-rs/anvil (the .bin wrapper is a node script; we want a pid that
    is anvil itself, so that stopping it stops the chain)."""
    nm = REPO_ROOT / "node_modules" / "@foundry-rs"
    for cand in sorted(nm.glob("anvil-*/bin/anvil")):
        if os.access(cand, os.X_OK):
            return cand
    wrapper = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if wrapper.exists():
        return wrapper
    on_path = shutil.which("anvil")  # an installed wheel has no node_modules beside it
    if on_path:
        return Path(on_path)
    raise DevnetError(f"anvil is not installed: run `npm install` in {REPO_ROOT} (or `make install`)")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    if "error" in out:
        raise DevnetError(f"{method} failed at {url}: {out['error']}")
    return out["result"]


def wait_ready(url: str, deadline_s: float = 20.0, proc: subprocess.Popen | None = None,
               log_path: Path | None = None) -> int:
    """Poll eth_chainId until it answers; the chain id. Fails early if `proc` exits."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return int(rpc(url, "eth_chainId", timeout=1.0), 16)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-600:] if log_path and log_path.exists() else ""
            raise DevnetError(f"anvil exited with code {proc.returncode} before answering at {url}: {tail.strip()}")
        if time.monotonic() > end:
            raise DevnetError(f"anvil did not answer at {url} within {deadline_s:.0f}s")
        time.sleep(0.05)


@dataclass(frozen=True)
class AnvilInfo:
    pid: int
    host: str
    port: int
    chain_id: int
    dir: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _read_pid_file(d: Path) -> AnvilInfo | None:
    try:
        return AnvilInfo(**json.loads((d / PID_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _is_our_anvil(info: AnvilInfo, d: Path) -> bool:
    """True when `info.pid` is alive and is an anvil started with this directory's state file."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline if a]
    return bool(args) and "anvil" in Path(args[0]).name and str(d.resolve() / STATE_FILE) in args


def start_anvil(d: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, chain_id: int = DEFAULT_CHAIN_ID,
                mnemonic: str = DEFAULT_MNEMONIC, accounts: int = 10, persist: bool = True,
                deadline_s: float = 30.0) -> tuple[AnvilInfo, bool]:
    """Start anvil for `d` (or find the one already running there): (info, started_now)."""
    d = d.resolve()
    d.mkdir(parents=True, exist_ok=True)
    info = _read_pid_file(d)
    if info is not None and _is_our_anvil(info, d):
        wait_ready(info.url, deadline_s=5.0)
        return info, False
    (d / PID_FILE).unlink(missing_ok=True)  # stale
    if port_in_use(host, port):
        raise DevnetError(f"{host}:{port} is already in use by another program; stop it or choose another --port")
    cmd = [str(find_anvil()), "--host", host, "--port", str(port), "--chain-id", str(chain_id),
           "--mnemonic", mnemonic, "--accounts", str(accounts), "--balance", "10000"]
    if persist:
        cmd += ["--state", str(d / STATE_FILE), "--state-interval", "5"]
    log_path = d / LOG_FILE
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    info = AnvilInfo(pid=proc.pid, host=host, port=port, chain_id=chain_id, dir=str(d))
    try:
        got = wait_ready(info.url, deadline_s, proc=proc, log_path=log_path)
    except DevnetError:
        _terminate(proc.pid)
        raise
    if got != chain_id:
        _terminate(proc.pid)
        raise DevnetError(f"anvil at {info.url} reports chain id {got}, expected {chain_id}")
    if persist:
        (d / PID_FILE).write_text(json.dumps(info.__dict__))
    return info, True


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM (anvil dumps its state on it), then SIGKILL after `timeout_s`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child (started by an earlier CLI call): poll /proc instead
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_anvil(d: Path) -> AnvilInfo | None:
    """Stop the anvil recorded in `d`'s pid file, if it is ours; the info of what was stopped, else None."""
    d = d.resolve()
    info = _read_pid_file(d)
    if info is None:
        return None
    ours = _is_our_anvil(info, d)
    if ours:
        _terminate(info.pid)
    (d / PID_FILE).unlink(missing_ok=True)
    return info if ours else None


def anvil_status(d: Path) -> AnvilInfo | None:
    """The anvil running for `d`, or None (a stale pid file is ignored)."""
    info = _read_pid_file(d.resolve())
    return info if info is not None and _is_our_anvil(info, d.resolve()) else None


class EphemeralAnvil:
    """An anvil on a free port without persisted state, for tests: `with EphemeralAnvil() as a: a.url`."""

    def __init__(self, chain_id: int = DEFAULT_CHAIN_ID, accounts: int = 10):
        self.chain_id, self.accounts = chain_id, accounts
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{DEFAULT_HOST}:{self.port}"

    def __enter__(self) -> "EphemeralAnvil":
        self.port = free_port()
        cmd = [str(find_anvil()), "--host", DEFAULT_HOST, "--port", str(self.port), "--chain-id",
               str(self.chain_id), "--mnemonic", DEFAULT_MNEMONIC, "--accounts", str(self.accounts), "--silent"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_ready(self.url, 30.0, proc=self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

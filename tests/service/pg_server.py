"""A throwaway PostgreSQL server for the storage tests: the real binaries that the `pgserver` wheel bundles
(PostgreSQL 16), initdb'd into a new temp directory, listening on a free loopback port, stopped and deleted at the end.

What it does: `PgServer.start()` returns a running server or raises `PgUnavailable` saying why (wheel missing,
initdb or startup failed, with the server log's tail); `create_database()` gives each test its own empty database.
What it does not do: call pgserver's `get_server`: run as root, that adds a system user (useradd) and chmods every
parent directory of its data dir. Here root runs the server as the existing `nobody` user instead (PostgreSQL
refuses to run as root), in a directory this module creates and owns; nothing outside it is changed.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


class PgUnavailable(Exception):
    """No PostgreSQL server could be started here; the message says why."""


def bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")  # located, not imported: its import sets up lock files
    if spec is None or not spec.submodule_search_locations:
        raise PgUnavailable("the `pgserver` wheel is not installed (pip install -e '.[dev]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise PgUnavailable(f"pgserver is installed but has no postgres binary at {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, root: Path, proc: subprocess.Popen, port: int, version: str):
        self.root, self.proc, self.port, self.version = root, proc, port, version

    @classmethod
    def start(cls, deadline_s: float = 60.0) -> "PgServer":
        bins = bin_dir()
        root = Path(tempfile.mkdtemp(prefix="openlora-pg-"))
        as_user: dict = {}
        if os.geteuid() == 0:
            try:
                nobody = pwd.getpwnam("nobody")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PgUnavailable("running as root and there is no `nobody` user to run PostgreSQL as") from None
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            as_user = dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
            # the wheel's binaries may sit below a directory `nobody` cannot traverse (a checkout in a private temp
            # dir, a venv under /root): run a copy (~35 MB) inside the server's own directory, with the wheel's
            # layout (the binaries find their libraries at $ORIGIN/../../../pgserver.libs)
            site = bins.parents[2]
            try:
                shutil.copytree(site / "pgserver" / "pginstall", root / "pg" / "pgserver" / "pginstall", symlinks=True)
                if (site / "pgserver.libs").is_dir():
                    shutil.copytree(site / "pgserver.libs", root / "pg" / "pgserver.libs", symlinks=True)
            except OSError as e:
                shutil.rmtree(root, ignore_errors=True)
                raise PgUnavailable(f"cannot copy the PostgreSQL binaries from {site}: {e}") from None
            bins = root / "pg" / "pgserver" / "pginstall" / "bin"
        data, log = root / "data", root / "server.log"
        try:
            init = subprocess.run([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                   "--encoding=UTF8", "--no-sync"],
                                  cwd=root, capture_output=True, text=True, timeout=120, **as_user)
            if init.returncode != 0:
                raise PgUnavailable(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout)[-1500:]}")
            version = subprocess.run([str(bins / "postgres"), "--version"], capture_output=True,
                                     text=True).stdout.strip()
            port = _free_port()
            with open(log, "wb") as out:
                proc = subprocess.Popen([str(bins / "postgres"), "-D", str(data), "-p", str(port),
                                         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"],
                                        cwd=root, stdout=out, stderr=subprocess.STDOUT, **as_user)
        except (OSError, subprocess.SubprocessError) as e:
            shutil.rmtree(root, ignore_errors=True)
            raise PgUnavailable(f"cannot run the PostgreSQL binaries in {bins}: {e}") from None
        except PgUnavailable:
            shutil.rmtree(root, ignore_errors=True)
            raise
        server = cls(root, proc, port, version)
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None or time.monotonic() > end:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {deadline_s}s"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                server.stop()
                raise PgUnavailable(f"postgres {why}; its log ends:\n{tail}")
            if server._ready():
                return server
            time.sleep(0.05)

    def _ready(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.url("postgres", driver=""), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str, driver: str = "") -> str:
        """postgresql://postgres@127.0.0.1:PORT/DATABASE (trust auth: no password); driver '+psycopg' etc."""
        return f"postgresql{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL in the bare postgresql:// form operators write."""
        import psycopg
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (e.g. to kill other sessions, or read information_schema)."""
        import psycopg
        with psycopg.connect(self.url(database), autocommit=True) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients disconnected, then a clean checkpoint
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

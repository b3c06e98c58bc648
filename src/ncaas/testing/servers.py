"""Real servers on loopback for tests and benchmarks: PostgreSQL and ``ncaas serve``.

Both start as child processes, listen on 127.0.0.1 only, and stop (and clean
up) when their ``stop`` runs or their ``with`` block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

__all__ = ["LocalPostgres", "PostgresUnavailable", "ServerProcess", "free_port"]


def storage_with_user(root: Path, *, group: str = "lab", user: str = "ann") -> str:
    """Create ``root`` with one group and one user in its account database; returns the user's token."""
    from ..server.accounts import Accounts
    from ..server.state import default_database_url

    root.mkdir(parents=True, exist_ok=True)
    accounts = Accounts.from_url(default_database_url(str(root)))
    accounts.add_group(group)
    accounts.add_user(user, group)
    token = accounts.issue_token(user).token
    accounts.engine.dispose()
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def _pg_bindir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class LocalPostgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with one database, ``ncaas``.

    As root, the cluster runs as the ``postgres`` user (PostgreSQL refuses to
    run as root); fsync is off, it is for tests only.
    """

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = 0
        self.datadir: Path | None = None
        self._as: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ncaas"

    def database(self, name: str) -> str:
        """Create another empty database; returns its URL."""
        assert self.bindir is not None, "start() first"
        done = self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        if done.returncode != 0:
            raise PostgresUnavailable(f"createdb {name} failed: {done.stderr.strip()}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd="/")

    def start(self) -> LocalPostgres:
        if self.bindir is None:
            raise PostgresUnavailable(
                "PostgreSQL is not installed (apt-get install postgresql; `make system-deps` does it as root)"
            )
        self.datadir = Path(tempfile.mkdtemp(prefix="ncaas-pg-"))
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no `postgres` user to run PostgreSQL as"
                ) from None
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        done = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if done.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
        for _ in range(5):
            self.port = free_port()
            done = self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir / "data"),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.datadir / "postgres.log"),
                "-o",
                f"-F -h 127.0.0.1 -p {self.port} -k {self.datadir}",
                "start",
                timeout=90,
            )
            if done.returncode == 0:
                break
        else:
            log = (self.datadir / "postgres.log").read_text()[-800:] if (self.datadir / "postgres.log").exists() else ""
            self.stop()
            raise PostgresUnavailable(f"PostgreSQL did not start: {done.stderr.strip()[-300:]} {log}")
        done = self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "ncaas"
        )
        if done.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"createdb failed: {done.stderr.strip()}")
        return self

    def stop(self) -> None:
        if self.datadir is None:
            return
        if self.bindir is not None and (self.datadir / "data" / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """``ncaas serve`` in a child process on a free loopback port."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        db: str | None = None,
        max_upload: str | None = None,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
    ):
        self.root = Path(root)
        self.db = db
        self.port = 0
        self.argv_extra = (["--max-upload", max_upload] if max_upload else []) + (extra or [])
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root.parent / f"{self.root.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self) -> list[str]:
        """The argv prefix that runs the ncaas CLI with this server's storage and database."""
        return [sys.executable, "-m", "ncaas"]

    def storage_args(self) -> list[str]:
        return ["--root", str(self.root)] + (["--db", self.db] if self.db else [])

    def start(self, timeout: float = 60) -> ServerProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [
            *self.cli(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.storage_args(),
            *self.argv_extra,
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ncaas serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ncaas serve did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        code, self.proc = self.proc.returncode, None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

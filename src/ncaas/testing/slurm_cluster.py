"""A Slurm cluster on this machine's loopback: munged, slurmctld and two slurmd's.

The slurm executor normally runs on a university's HPC cluster. :class:`LocalSlurmCluster`
brings up the same real daemons (Debian's ``slurmctld``, ``slurmd`` and ``munge``) in a
temporary folder so that path can be tried, tested and benchmarked on one machine:

- munged with a fresh key and its own socket;
- slurmctld on a free port, with a ``debug`` partition of two nodes;
- two slurmd's, ``n1`` and ``n2``, both on ``localhost`` with their own ports and spool
  folders (``slurmd -N NAME``), each declared with ``cpus`` CPUs and ``memory`` bytes.

- with ``accounting=True``, MariaDB (a fresh data folder, on a free loopback port) and
  slurmdbd, so that ``sacct`` reports each job's state and measured usage as on a
  production cluster; without it, ``sacct`` says accounting is disabled.

The partition places each job on the least loaded node (``LLN``), so a few jobs spread over
both nodes. Process tracking is ``proctrack/linuxproc`` and job accounting
``jobacct_gather/linux`` with ``OverMemoryKill`` (no cgroup setup needed). Every daemon runs
in the foreground in its own session and is stopped (SIGTERM, then SIGKILL) on :meth:`stop`,
after the jobs left are cancelled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from .ray_cluster import LocalClusterError, _die_with_parent, _kill_group, _kill_now, _tail, free_port

__all__ = ["DAEMONS", "LocalSlurmCluster"]

DAEMONS = ("munged", "slurmctld", "slurmd")
ACCOUNTING = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacctmgr")
NODES = ("n1", "n2")


def _find(name: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    found = shutil.which(name)
    if found is None:
        raise LocalClusterError(
            f"{name} is not installed; install Debian's slurmctld, slurmd, slurm-client and munge "
            "(make system-deps does, as root)"
        )
    return found


class LocalSlurmCluster:
    """A two-node Slurm cluster on loopback, run from a temporary folder (a context manager)."""

    def __init__(self, *, cpus: int = 2, memory: int = 2 * 2**30, accounting: bool = False, workdir: str | None = None):
        self.cpus = cpus
        self.memory = memory
        self.accounting = accounting
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ncaas-slurm-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._db_password = secrets.token_hex(16)
        self.partition = "debug"

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def env(self) -> dict[str, str]:
        """What Slurm's commands need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        used: set[int] = set()
        ports = {}
        for name in ("ctld", "dbd", "db", *NODES):
            ports[name] = free_port(avoid=used)
            used.add(ports[name])
        d = self.dir
        self.ports = ports
        mem_mb = self.memory // 2**20
        storage = "AccountingStorageType=accounting_storage/none"
        if self.accounting:
            storage = "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            storage += f"AccountingStoragePort={ports['dbd']}\nAccountingStoragePass={d}/munge/sock"
            dbd = d / "slurmdbd.conf"
            dbd.write_text(
                f"""AuthType=auth/munge
AuthInfo=socket={d}/munge/sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser=root
LogFile={d}/log/slurmdbd.log
PidFile={d}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["db"]}
StorageUser=slurm
StoragePass={self._db_password}
StorageLoc=slurm_acct_db
"""
            )
            os.chmod(dbd, 0o600)
        nodes = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[n]} CPUs={self.cpus} "
            f"RealMemory={mem_mb} State=UNKNOWN"
            for n in NODES
        )
        self.conf.write_text(
            f"""ClusterName=ncaastest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
{storage}
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
{nodes}
PartitionName={self.partition} Nodes={",".join(NODES)} Default=YES LLN=YES MaxTime=INFINITE State=UP
"""
        )

    def _start(self, name: str, argv: list[str]) -> None:
        log = self.dir / "log" / f"{name}.out"
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={**os.environ, **self.env()},
            )

    def _run(self, *argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, **self.env()})
        return done.stdout if done.returncode == 0 else ""

    def _wait(self, what: str, ready: object, *, timeout: float, proc: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[proc].poll() is not None:
                raise LocalClusterError(f"{what} exited while starting; its log ends with:\n{self._logs(proc)}")
            if callable(ready) and ready():
                return
            time.sleep(0.2)
        raise LocalClusterError(f"{what} did not become ready within {timeout:.0f} s:\n{self._logs(proc)}")

    def _logs(self, proc: str) -> str:
        known = {"slurmctld": "slurmctld.log", "munged": "munged.log", "slurmdbd": "slurmdbd.log"}
        name = {**known, "mariadbd": "mariadbd.log"}.get(proc, f"slurmd-{proc[-2:]}.log")
        return _tail(self.dir / "log" / name) + "\n" + _tail(self.dir / "log" / f"{proc}.out")

    def start(self, *, timeout: float = 60.0) -> LocalSlurmCluster:
        binaries = {name: _find(name) for name in (*DAEMONS, "sinfo", "sbatch")}
        if os.geteuid() != 0:
            raise LocalClusterError("a local Slurm cluster runs its daemons as root; run the tests as root")
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in NODES)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        self._write_config()
        try:
            m = self.dir / "munge"
            self._start(
                "munged",
                [
                    binaries["munged"],
                    "-F",
                    "-f",
                    f"--socket={m}/sock",
                    f"--key-file={key}",
                    f"--pid-file={m}/pid",
                    f"--seed-file={m}/seed",
                    f"--log-file={self.dir}/log/munged.log",
                ],
            )
            self._wait("munged", lambda: (m / "sock").exists(), timeout=timeout, proc="munged")
            if self.accounting:
                self._start_accounting(timeout)
            self._start("slurmctld", [binaries["slurmctld"], "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: bool(self._run("sinfo", "-h")), timeout=timeout, proc="slurmctld")
            for node in NODES:
                self._start(f"slurmd-{node}", [binaries["slurmd"], "-D", "-N", node, "-f", str(self.conf)])
            self._wait("the two slurmd's", self._nodes_idle, timeout=timeout, proc="slurmctld")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_accounting(self, timeout: float) -> None:
        """MariaDB with a user for slurmdbd, slurmdbd, and this cluster registered in it."""
        tools = {name: _find(name) for name in ACCOUNTING}
        data, sock = self.dir / "mysql", self.dir / "mysql.sock"
        done = subprocess.run(
            [tools["mariadb-install-db"], "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise LocalClusterError(f"mariadb-install-db failed: {(done.stderr or done.stdout)[-500:]}")
        self._start(
            "mariadbd",
            [
                tools["mariadbd"],
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={self.ports['db']}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                f"--log-error={self.dir}/log/mariadbd.log",
            ],
        )
        self._wait("mariadbd", sock.exists, timeout=timeout, proc="mariadbd")
        grant = (
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        deadline = time.monotonic() + timeout
        while subprocess.run([tools["mariadb"], "-S", str(sock), "-u", "root", "-e", grant]).returncode != 0:
            if time.monotonic() > deadline:
                raise LocalClusterError(f"MariaDB did not take slurmdbd's user:\n{self._logs('mariadbd')}")
            time.sleep(0.3)
        self._start("slurmdbd", [tools["slurmdbd"], "-D"])  # reads slurmdbd.conf beside $SLURM_CONF
        add = [tools["sacctmgr"], "-i", "add", "cluster", "ncaastest"]
        self._wait(
            "slurmdbd",
            lambda: subprocess.run(add, capture_output=True, env={**os.environ, **self.env()}).returncode == 0,
            timeout=timeout,
            proc="slurmdbd",
        )

    def kill_node(self, node: str) -> None:
        """SIGKILL a slurmd and its jobs' processes (each job's slurmstepd and all it started): a node lost."""
        jobs = self._run("squeue", "-h", "-w", node, "-o", "%i").split()
        doomed = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if line.startswith("slurmstepd") and any(f"[{job}." in line for job in jobs):
                with contextlib.suppress(psutil.Error):
                    doomed += [proc, *proc.children(recursive=True)]
        _kill_now(self.procs.pop(f"slurmd-{node}"))
        for proc in doomed:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(doomed, timeout=10)
        # As a node health check would: slurmctld itself notices a silent node only after its
        # next ping cycle (tens of seconds)
        self._run("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=lost")

    def start_node(self, node: str, *, timeout: float = 60.0) -> None:
        """Start a node's slurmd again and wait until Slurm takes it back (ReturnToService=2)."""
        self._start(f"slurmd-{node}", [_find("slurmd"), "-D", "-N", node, "-f", str(self.conf)])

        def back() -> bool:
            self._run("scontrol", "update", f"NodeName={node}", "State=RESUME")
            return self._nodes_idle()

        self._wait(f"slurmd {node}", back, timeout=timeout, proc=f"slurmd-{node}")

    @contextlib.contextmanager
    def accounting_down(self) -> Iterator[None]:
        """Stop slurmdbd for a while (sacct then fails, as on a cluster without accounting); start it again."""
        proc = self.procs.pop("slurmdbd")
        _kill_group(proc)
        try:
            yield
        finally:
            self._start("slurmdbd", [_find("slurmdbd"), "-D"])

    def _nodes_idle(self) -> bool:
        states = self._run("sinfo", "-h", "-N", "-o", "%N %t").split()
        return states.count("idle") == len(NODES)

    def stop(self) -> None:
        """Cancel the jobs left, then stop every daemon and remove the folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._run("scancel", "--full", "--partition", self.partition)
            deadline = time.monotonic() + 15
            while self._run("squeue", "-h") and time.monotonic() < deadline:
                time.sleep(0.2)
        for name in [n for n in self.procs if n.startswith("slurmd-")] + [
            "slurmctld",
            "slurmdbd",
            "mariadbd",
            "munged",
        ]:
            proc = self.procs.pop(name, None)
            if proc is not None:
                _kill_group(proc)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Server benchmark: upload throughput next to a local disk copy, and many clients at once.

1. Upload one large file (default 1 GB) through the resumable, checksummed upload
   API to a `ncaas serve` on loopback, next to copying the same file on the same
   disk. The server acknowledges a completed upload only once it is on disk
   (fsync), so the peer is a disk copy that is also fsynced; a copy that stays in
   the page cache is printed too, and so is a bare uvicorn app that only receives
   and discards the bytes (the ceiling of the HTTP stack the server runs on). The
   upload is checked end to end with a CRC-32C; an upload that also gives a SHA-256
   (which the server then computes as the bytes arrive) is timed as well. Every contender runs
   ``--repeat`` times, interleaved, and the median is printed with the CPU seconds of the sender (this process)
   and of the server process: client and server share the machine's cpus here,
   so their CPU sum bounds the upload's wall time from below.
   Target: upload >= 50% of the disk copy.
2. N concurrent clients (default 50) for a fixed time (default 60 s): each
   submits a small framestats job, then polls it (job detail, job list) until it
   is over, and starts again. Prints requests per second, latency percentiles
   per request kind, and the number of failed requests (target: none).

Run: ``.venv/bin/python benchmarks/server_load.py`` (``--size 100MB --seconds 10``
for a quick look). Everything runs on 127.0.0.1 and stops by itself; figures on
a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import psutil

from ncaas.blueprint import parse_bytes
from ncaas.client import Client
from ncaas.testing.servers import ServerProcess, free_port, storage_with_user


def _write_big(path: Path, size: int) -> None:
    block = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def _copy_with_sha(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while block := fi.read(4 << 20):
            h.update(block)
            fo.write(block)
    return h.hexdigest()


def _durable_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


_BARE_APP = """
import sys, uvicorn
from ncaas.server.uploads import keep_freed_memory_for_streaming
keep_freed_memory_for_streaming()  # as ncaas serve does
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    n, more = 0, True
    while more:
        message = await receive()
        n += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(n).encode()})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _own_cpu() -> float:
    """CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return times.user + times.system


def _measure(fn, server: psutil.Process | None = None) -> tuple[float, float, float | None]:
    """Wall seconds, this process's CPU seconds and the server's CPU seconds while ``fn`` runs."""
    server_before, own_before, t = _process_cpu(server), _own_cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    return wall, _own_cpu() - own_before, (_process_cpu(server) - server_before) if server else None


def _sendfile_put(port: int, big: Path) -> None:
    """PUT ``big`` with the body sent by the kernel (socket.sendfile), as ncaas.client does."""
    size = big.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.putrequest("PUT", "/")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        with open(big, "rb") as f:
            conn.sock.sendfile(f, 0, size)
        answer = conn.getresponse().read()
    finally:
        conn.close()
    assert int(answer) == size


class _BareServer:
    """A bare uvicorn app that receives and discards request bodies: the HTTP stack's ceiling."""

    def __enter__(self) -> _BareServer:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", _BARE_APP, str(self.port)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the bare uvicorn app did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def bench_upload(server: ServerProcess, token: str, work: Path, size: int, repeat: int) -> None:
    big = work / "big.bin"
    free = shutil.disk_usage(work).free
    if free < 2.2 * size:
        raise SystemExit(
            f"the upload benchmark needs {2.2 * size / 1e9:.1f} GB free in {work.parent} "
            f"(the test file and one copy of it); there are {free / 1e9:.1f} GB: free some "
            "space, set TMPDIR to another disk, or pass a smaller --size"
        )
    print(f"writing a {size / 1e9:.2f} GB test file ...", flush=True)
    _write_big(big, size)
    # Warm the page cache the same way for every contender; the SHA-256 is known beforehand,
    # as from a data repository.
    sha256 = _copy_with_sha(big, work / "warm.bin")
    (work / "warm.bin").unlink()
    copy = work / "copy.bin"
    uploaded = server.root / "lab" / "inputs" / "big.bin"

    def disk_copy() -> None:
        _durable_copy(big, copy)

    def cache_copy() -> None:
        shutil.copyfile(big, copy)

    def upload_with_sha() -> None:
        with Client(server.url, token, timeout=600) as c:
            done = c.upload_file(big, "big.bin", overwrite=True, sha256=sha256)
        assert done["complete"] and done["size"] == size and done["sha256"] == sha256

    def upload() -> None:
        with Client(server.url, token, timeout=600) as c:
            done = c.upload_file(big, "big.bin", overwrite=True)
        assert done["complete"] and done["size"] == size

    names = [
        "local disk copy (copyfile + fsync)",
        "local copy into page cache (no fsync)",
        "bare uvicorn app discarding the body (no checks)",
        "upload, SHA-256 given too (server computes it)",
        "upload to ncaas serve (crc32c both ends, fsync)",
    ]
    runs: dict[str, list[tuple[float, float, float | None]]] = {name: [] for name in names}
    loads = [os.getloadavg()[0]]
    ncaas = psutil.Process(server.proc.pid)
    with _BareServer() as bare:
        bare_proc = psutil.Process(bare.proc.pid)
        for _ in range(repeat):  # interleaved, so a burst of load elsewhere hits every contender alike
            for name, fn, proc in zip(
                names,
                [disk_copy, cache_copy, None, upload_with_sha, upload],
                [None, None, bare_proc, ncaas, ncaas],
                strict=True,
            ):
                os.sync()
                if fn is None:
                    runs[name].append(_measure(lambda: _sendfile_put(bare.port, big), proc))
                else:
                    runs[name].append(_measure(fn, proc))
                copy.unlink(missing_ok=True)
                uploaded.unlink(missing_ok=True)  # at most two copies of the file on disk at any time
            loads.append(os.getloadavg()[0])
    medians = {
        name: [
            statistics.median(x for x in column if x is not None) if any(x is not None for x in column) else None
            for column in zip(*rows)
        ]
        for name, rows in runs.items()
    }
    copy_s = medians[names[0]][0]
    print(
        f"\nupload of {size / 1e9:.2f} GB over loopback, median of {repeat} interleaved runs "
        f"(1-minute load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cpus)"
    )
    print(
        f"{'':50s} {'seconds':>8s} {'MB/s':>6s} {'vs copy':>8s} {'sender cpu':>10s} {'server cpu':>10s}   all runs (s)"
    )
    for name in names:
        wall, own, srv = medians[name]
        every = " ".join(f"{w:.2f}" for w, _, _ in runs[name])
        print(
            f"{name:50s} {wall:8.2f} {size / 1e6 / wall:6.0f} {copy_s / wall:8.0%} {own:10.2f} "
            f"{'' if srv is None else f'{srv:.2f}':>10s}   {every}"
        )
    up_wall, up_own, up_srv = medians[names[-1]]
    ratio = copy_s / up_wall
    print(
        f"upload throughput is {ratio:.0%} of a local disk copy, both durable on disk when done "
        f"(target >= 50%): {'MET' if ratio >= 0.5 else 'NOT MET'}; "
        f"{medians[names[1]][0] / up_wall:.0%} of a copy that stays in the page cache"
    )
    print(
        f"CPU per upload: uploader {up_own:.2f} s + server {up_srv:.2f} s = {up_own + up_srv:.2f} s, "
        f"at least {(up_own + up_srv) / os.cpu_count():.2f} s of wall time when both share these "
        f"{os.cpu_count()} cpus and nothing else runs"
    )
    big.unlink()


async def _client(http: httpx.AsyncClient, stop_at: float, think: float, stats, jobs: list[str]) -> None:
    async def call(kind: str, method: str, url: str, **kw) -> httpx.Response | None:
        t = time.perf_counter()
        try:
            resp = await http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            stats["failures"].append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        stats[kind].append(time.perf_counter() - t)
        if resp.status_code >= 400:
            stats["failures"].append(f"{kind}: HTTP {resp.status_code} {resp.text[:200]}")
            return None
        return resp

    while time.monotonic() < stop_at:
        resp = await call(
            "submit",
            "POST",
            "/api/jobs",
            json={"analysis": "framestats", "datasets": ["tiny.npy"], "config": {"batch_frames": 8}},
        )
        if resp is None:
            await asyncio.sleep(think)
            continue
        job_id = resp.json()["id"]
        jobs.append(job_id)
        while time.monotonic() < stop_at:
            await asyncio.sleep(think)
            detail = await call("job detail", "GET", f"/api/jobs/{job_id}")
            await call("job list", "GET", "/api/jobs", params={"limit": 20})
            if detail is not None and detail.json()["finished"]:
                break


async def _load(url: str, token: str, clients: int, seconds: float, think: float):
    stats: dict[str, list] = defaultdict(list)
    jobs: list[str] = []
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0), limits=limits
    ) as http:
        start = time.perf_counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*[_client(http, stop_at, think, stats, jobs) for _ in range(clients)])
        elapsed = time.perf_counter() - start
    return stats, jobs, elapsed


def bench_load(server: ServerProcess, token: str, clients: int, seconds: float, think: float) -> int:
    buf = io.BytesIO()
    np.save(buf, np.zeros((16, 8, 8), np.float32))
    tiny = server.root.parent / "tiny.npy"
    tiny.write_bytes(buf.getvalue())
    with Client(server.url, token) as c:
        c.upload_file(tiny, "tiny.npy", overwrite=True)
    print(
        f"\n{clients} clients for {seconds:.0f} s: submit a framestats job, poll it until over "
        f"(think time {think * 1000:.0f} ms), repeat",
        flush=True,
    )
    proc = psutil.Process(server.proc.pid)
    before, me_before, machine_before = proc.cpu_times(), time.process_time(), psutil.cpu_times()
    stats, jobs, elapsed = asyncio.run(_load(server.url, token, clients, seconds, think))
    after, me_after, machine_after = proc.cpu_times(), time.process_time(), psutil.cpu_times()
    failures = stats.pop("failures", [])
    total = sum(len(v) for v in stats.values())
    print(f"{'request':14s} {'count':>7s} {'req/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    every = []
    for kind, lat in sorted(stats.items()):
        every += lat
        q = np.percentile(np.array(lat) * 1000, [50, 95, 99])
        print(
            f"{kind:14s} {len(lat):7d} {len(lat) / elapsed:7.1f} {q[0]:8.1f} {q[1]:8.1f} {q[2]:8.1f} "
            f"{max(lat) * 1000:8.1f}"
        )
    q = np.percentile(np.array(every) * 1000, [50, 95, 99])
    print(f"{'all':14s} {total:7d} {total / elapsed:7.1f} {q[0]:8.1f} {q[1]:8.1f} {q[2]:8.1f} {max(every) * 1000:8.1f}")
    with Client(server.url, token) as c:
        states = [c.job(j)["state"] for j in jobs]
        for j, s in zip(jobs, states, strict=True):
            if s in ("queued", "running"):
                c.cancel(j)
    print(
        f"jobs submitted: {len(jobs)}; finished during the run: "
        f"{sum(s not in ('queued', 'running') for s in states)} "
        f"({statistics.mode(states) if states else '-'} most often); the rest were cancelled"
    )
    server_cpu = (after.user + after.system) - (before.user + before.system)
    idle = (machine_after.idle + machine_after.iowait) - (machine_before.idle + machine_before.iowait)
    total = sum(machine_after) - sum(machine_before)
    print(
        f"CPU during the run ({elapsed:.0f} s wall): the server process used {server_cpu:.1f} s "
        f"({server_cpu / max(len(every), 1) * 1000:.1f} ms per request, manager thread included), the load "
        f"generator {me_after - me_before:.1f} s; the machine's {os.cpu_count()} cpus were "
        f"{1 - idle / total:.0%} busy (load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )
    print(f"failed requests: {len(failures)} (target: 0)")
    for line in failures[:10]:
        print("  ", line)
    return len(failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GB", help="upload size (default 1GB)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=0.1, help="seconds each client waits between polls")
    parser.add_argument("--repeat", type=int, default=3, help="upload runs per contender (median printed)")
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args(argv)
    size = parse_bytes(args.size)
    with tempfile.TemporaryDirectory(prefix="ncaas-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        root = work / "root"
        token = storage_with_user(root)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        with ServerProcess(root, max_upload="100GB") as server:
            if not args.skip_upload:
                bench_upload(server, token, work, size, args.repeat)
            failures = 0 if args.skip_load else bench_load(server, token, args.clients, args.seconds, args.think)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Supervise one task: the process the local executor launches (standard library only).

``python _runner.py RUN_DIR/spec.json`` starts the task's command in its own process
group, streams its stdout/stderr into the log as it comes, turns ``NCAAS_PROGRESS
<fraction> <message>`` lines into ``status`` writes, enforces the timeout, stops the
task on SIGTERM (cancel), and finally writes ``exit.json`` (returncode, CPU seconds,
peak memory, timings, and the task's own account of why it failed: ``reason``, read from
the file ``NCAAS_ERROR_FILE`` names or else its last ``NCAAS_ERROR <message>`` line)
atomically. It runs in its own session, so it outlives the
manager; a restarted manager reads ``exit.json`` or adopts it while it still runs.

A full disk does not stop it: log and status writes that find no space are dropped, and
space held back in the run folder from the start (``reserve``) is given up so that the
exit record is still written. A task that failed while its disk was full is recorded as
such (``disk_full``: which folder, how much the task wrote), so it is not retried.
"""

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time

GRACE_SECONDS = 3.0
STATUS_EVERY = 0.25
RESERVE_BYTES = 256 * 1024  # held in the run folder, given up to write the exit record on a full disk
FULL_BELOW = 1 << 20  # bytes free under which a failed task's disk counts as full
NO_SPACE_SIGNS = (b"No space left on device", b"[Errno 28]", b"ENOSPC")
REASON_CHARS = 500  # a task's failure reason is kept this long at most (it is shown in one line)
REASON_READ = 16384  # bytes read of the reason file: a huge one is not read whole


def now_ms():
    return int(time.time() * 1000)


def write_json(path, data):
    """Write whole or not at all; a write that fails leaves no temporary file behind."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def hold_reserve(path):
    try:
        with open(path, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
    except OSError:  # the disk is already full: the record may still fit
        remove(path)


class Disk:
    """Whether the task's disk filled up: our own writes found no space, or the task said so."""

    def __init__(self):
        self.full = False

    def saw(self, exc):
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        self.full = True

    def read(self, line):
        if any(sign in line for sign in NO_SPACE_SIGNS):
            self.full = True


class Log:
    """The task's log; a write that finds no space is dropped (and remembered), never fatal."""

    def __init__(self, fh, disk):
        self.fh = fh
        self.disk = disk

    def write(self, data):
        try:
            self.fh.write(data)
        except OSError as exc:
            self.disk.saw(exc)


def folder_bytes(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def disk_full(spec, disk):
    """Where the disk is full (the first of output, log and run folders with no space), or None."""
    for folder in (spec["output_dir"], os.path.dirname(spec["log_path"]), spec["run_dir"]):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        if stat.f_bavail * stat.f_frsize < FULL_BELOW:
            return folder
    return spec["output_dir"] if disk.full else None


class Status:
    def __init__(self, path, fields, disk):
        self.path = path
        self.disk = disk
        self.data = dict(fields)
        self.lock = threading.Lock()
        self.last = 0.0
        self.dirty = False

    def update(self, force=False, **fields):
        with self.lock:
            self.data.update(fields, updated_ms=now_ms())
            self.dirty = True
            if force or time.monotonic() - self.last >= STATUS_EVERY:
                self._write()

    def flush(self):
        """Write an update the throttle held back, once it is due."""
        with self.lock:
            if self.dirty and time.monotonic() - self.last >= STATUS_EVERY:
                self._write()

    def _write(self):
        self.last = time.monotonic()
        try:
            write_json(self.path, self.data)
        except OSError as exc:  # no space: kept dirty, written at a later update
            self.disk.saw(exc)
            return
        self.dirty = False


def clean_reason(raw):
    """A task's failure reason made safe to show: untrusted text, never interpreted.

    Control and format characters (escape sequences, bidi overrides) become spaces,
    lines are joined, runs of blanks collapse, and it is cut at REASON_CHARS.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1].rstrip() + "\u2026"
    return text or None


def read_reason_file(path):
    """What the task wrote to its reason file: a regular file of its own only, never followed
    through a link (the task could point it at a file it cannot read itself), read in part."""
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link too may lead elsewhere
            return None
        return clean_reason(os.read(fd, REASON_READ))
    except OSError:
        return None
    finally:
        os.close(fd)


class Reason:
    """The task's last ``NCAAS_ERROR <message>`` line on its output."""

    def __init__(self):
        self.said = None

    def read(self, line):
        if line.split(None, 1)[0] == b"NCAAS_ERROR":
            self.said = clean_reason(line[len(b"NCAAS_ERROR") :]) or self.said


def parse_progress(line, status):
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] != "NCAAS_PROGRESS":
        return
    try:
        fraction = min(max(float(parts[1]), 0.0), 1.0)
    except ValueError:
        return
    status.update(progress=fraction, message=parts[2].strip() if len(parts) > 2 else "")


def pump(fd, log, status, reason):
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        log.write(chunk)
        pending += chunk
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        if len(pending) > 65536:
            pending = b""
        for line in lines:
            status.disk.read(line)
            if line.startswith(b"NCAAS_ERROR"):
                reason.read(line)
            elif line.startswith(b"NCAAS_PROGRESS"):
                parse_progress(line.decode("utf-8", "replace"), status)
    if pending.startswith(b"NCAAS_ERROR"):
        reason.read(pending)
    elif pending.startswith(b"NCAAS_PROGRESS"):
        parse_progress(pending.decode("utf-8", "replace"), status)


def stop_group(pgid, proc):
    """SIGTERM the task's process group, SIGKILL it after a grace period."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def limiter(memory_limit):
    def apply():
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return apply


def main(spec_path):
    with open(spec_path) as fh:
        spec = json.load(fh)
    run_dir = spec["run_dir"]
    exit_path = os.path.join(run_dir, "exit.json")
    cancelled = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancelled.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reserve = os.path.join(run_dir, "reserve")
    hold_reserve(reserve)
    disk = Disk()
    status = Status(spec["progress_path"], spec.get("status_fields", {}), disk)
    record = {"timeout": spec["timeout"], "timed_out": False, "cancelled": False, "start_ms": now_ms()}
    os.makedirs(os.path.dirname(spec["log_path"]), exist_ok=True)
    with open(spec["log_path"], "ab", buffering=0) as fh:
        log = Log(fh, disk)
        attempt = spec.get("status_fields", {}).get("attempt", 1)
        log.write(f"[ncaas] attempt {attempt}: {' '.join(spec.get('command') or spec['argv'])}\n".encode())
        try:
            proc = subprocess.Popen(
                spec["argv"],
                cwd=spec["cwd"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=limiter(spec.get("memory_limit")),
            )
        except OSError as exc:
            record.update(
                returncode=None,
                error=f"{spec['argv'][0]}: {exc.strerror}",
                end_ms=now_ms(),
                cpu_seconds=0.0,
                peak_memory_bytes=0,
            )
            log.write(f"[ncaas] could not start: {exc}\n".encode())
            write_exit(exit_path, record, reserve)
            return 0
        try:
            write_json(os.path.join(run_dir, "child.json"), {"pid": proc.pid})
        except OSError as exc:  # no space: the sandbox's cgroup still reaches every process of the task
            disk.saw(exc)
        status.update(force=True, state="running", start_ms=record["start_ms"], pid=proc.pid, progress=0.0)
        said = Reason()
        reader = threading.Thread(target=pump, args=(proc.stdout.fileno(), log, status, said), daemon=True)
        reader.start()
        deadline = time.monotonic() + spec["timeout"]
        while proc.poll() is None:
            status.flush()
            if cancelled.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0.001))):
                record["cancelled"] = True
            elif time.monotonic() >= deadline:
                record["timed_out"] = True
            else:
                continue
            stop_group(proc.pid, proc)
            break
        proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a finished task leaves nothing running behind
        except (ProcessLookupError, PermissionError):
            pass
        reader.join(timeout=5)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        record.update(
            returncode=proc.returncode,
            end_ms=now_ms(),
            cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
            peak_memory_bytes=usage.ru_maxrss * 1024,
        )
        if proc.returncode != 0:  # the file first: it is the contract's primary way
            reason = read_reason_file(spec.get("error_file")) or said.said
            if reason:
                record["reason"] = reason
                log.write(f"[ncaas] the task's reason: {reason}\n".encode())
        full = None
        if proc.returncode != 0 and not record["timed_out"] and not record["cancelled"]:
            full = disk_full(spec, disk)
        if full is not None:
            record["disk_full"] = {"path": full, "wrote_bytes": folder_bytes(spec["output_dir"])}
        status.update(force=True)
        what = "timed out" if record["timed_out"] else "cancelled" if record["cancelled"] else "exited"
        log.write(f"[ncaas] {what} with code {proc.returncode}\n".encode())
        if full is not None:
            log.write(f"[ncaas] the disk is full: {full} has no space left\n".encode())
    write_exit(exit_path, record, reserve)
    return 0


def write_exit(path, record, reserve):
    """The exit record, written even on a full disk: the reserve is given up for it if need be."""
    try:
        write_json(path, record)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        remove(reserve)
        write_json(path, record)
    remove(reserve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

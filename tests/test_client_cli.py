"""`ncaas --server URL --token TOKEN <command>`: every command against a real
server prints what the same command prints embedded, and `ncaas admin` makes
the accounts it uses.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ncaas import cli
from ncaas.testing.servers import ServerProcess, free_port

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
ENV.pop("NCAAS_SERVER", None)
ENV.pop("NCAAS_TOKEN", None)


def ncaas_process(*args: str) -> subprocess.CompletedProcess:
    """The real `ncaas` entry point in a child process."""
    return subprocess.run([sys.executable, "-m", "ncaas", *args], capture_output=True, text=True, env=ENV, timeout=180)


def ncaas(*args: str):
    """The same CLI run in this process (start-up is most of a command's time on 2 busy cores)."""
    result = CliRunner().invoke(
        cli.app, list(args), env={"NCAAS_SERVER": None, "NCAAS_TOKEN": None, "NCAAS_ROOT": None, "NCAAS_DB": None}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    root = base / "root"
    where = ["--root", str(root)]
    group = ncaas("admin", "add-group", "lab", *where)
    assert group.exit_code == 0 and "group lab created" in group.stdout, group.stderr
    assert ncaas("admin", "add-user", "ann", "--group", "lab", *where).exit_code == 0
    token = ncaas("admin", "issue-token", "ann", *where)
    assert token.exit_code == 0 and "not shown again" in token.stdout, token.stderr
    for i, name in enumerate(("a.npy", "b.npy")):
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(i).random((10, 5, 5), dtype=np.float32))
        (base / name).write_bytes(buf.getvalue())
    (base / "cfg.yaml").write_text("batch_frames: 4\n")
    server = ServerProcess(root).start()
    yield {
        "base": base,
        "root": root,
        "where": where,
        "server": server,
        "remote": ["--server", server.url, "--token", token.stdout.strip().splitlines()[-1]],
    }
    server.stop()


def test_admin_commands_explain_mistakes_and_show_tokens_once(served):
    where = served["where"]
    unknown, dup, tokens = (
        ncaas("admin", "add-user", "zed", "--group", "nope", *where),
        ncaas("admin", "add-group", "lab", *where),
        ncaas("admin", "tokens", *where),
    )
    assert unknown.exit_code == 1 and "group 'nope' does not exist; create it first" in unknown.stderr
    assert dup.exit_code == 1 and "group 'lab' already exists" in dup.stderr
    assert "Traceback" not in unknown.stderr + dup.stderr
    token = served["remote"][-1]
    assert "ann" in tokens.stdout and token not in tokens.stdout and token.split("_")[1] in tokens.stdout


def test_remote_commands_print_what_embedded_commands_print(served):
    base, remote, where = served["base"], served["remote"], served["where"]
    done = ncaas_process(
        *remote,
        "submit",
        "framestats",
        str(base / "a.npy"),
        str(base / "b.npy"),
        "--config",
        str(base / "cfg.yaml"),
        "--wait",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("job ", 1)[1].split(":", 1)[0].strip()
    assert "succeeded: results in" in done.stdout
    # Not a terminal: like the embedded command, a line per dataset as it progresses, then the table.
    assert "a.npy: succeeded 100%" in done.stdout and "b.npy: succeeded 100%" in done.stdout
    assert (served["root"] / "lab" / "inputs" / "a.npy").exists()
    assert (served["root"] / "lab" / "configs" / "cfg.yaml").exists()
    rejected = ncaas(*remote, "submit", "framestats", "missing.npy")
    assert rejected.exit_code == 2
    rejected_id = rejected.stderr.split("(job ", 1)[1].split(";", 1)[0]
    commands = [
        ["status", job_id],
        ["status"],
        ["status", rejected_id],
        ["results", job_id],
        ["logs", job_id],
        ["logs", job_id, "b.npy"],
        ["cancel", job_id],
        ["analyses"],
    ]
    remote_runs = [ncaas(*remote, *c) for c in commands]
    embedded_runs = [ncaas(*c, *where) if c != ["analyses"] else ncaas(*c) for c in commands]
    for command, r, e in zip(commands, remote_runs, embedded_runs, strict=True):
        assert r.exit_code == e.exit_code == 0, (command, r.stderr, e.stderr)
        assert r.stdout == e.stdout, command
    assert "story:" in remote_runs[0].stdout and "outputs/a.npy/a.stats.csv" in remote_runs[3].stdout
    assert "missing.npy" in remote_runs[2].stdout and job_id in remote_runs[1].stdout


def _same_shape(text: str) -> str:
    """Output with job ids, clock times and results paths made generic."""
    text = " ".join(text.split())  # rich wraps long lines
    text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "JOB", text)
    text = re.sub(r"(no job '[^']*') in [^;]*;", r"\1 in WHERE;", text)  # a database, or a server's group
    return re.sub(r"\d\d:\d\d:\d\d", "TIME", text)


def _tail(text: str, start: str) -> str:
    return text[text.index(start) :]


def test_every_other_command_prints_the_same_embedded_and_remote(served):
    """submit (accepted and rejected), rerun, and mistakes: the same words both ways."""
    remote, where = served["remote"], served["where"]
    runs = {
        how: {
            "submit": ncaas(*prefix, "submit", "framestats", "a.npy", "--group", "lab", *suffix),
            "rejected": ncaas(*prefix, "submit", "framestats", "gone.npy", "--group", "lab", *suffix),
            "no job": ncaas(*prefix, "status", "nosuchjob", *suffix),
            "no dataset": ncaas(*prefix, "logs", "nosuchjob", *suffix),
        }
        for how, prefix, suffix in (("remote", remote, []), ("embedded", [], where))
    }
    for name in runs["remote"]:
        r, e = runs["remote"][name], runs["embedded"][name]
        assert r.exit_code == e.exit_code, (name, r.stdout, r.stderr, e.stdout, e.stderr)
        assert _same_shape(r.stdout) == _same_shape(e.stdout), name
        assert _same_shape(r.stderr) == _same_shape(e.stderr), name
    assert runs["remote"]["rejected"].exit_code == 2 and runs["remote"]["no job"].exit_code == 4
    job_id = runs["remote"]["submit"].stdout.split("job ", 1)[1].split(":", 1)[0].strip()
    done = ncaas(*remote, "submit", "framestats", "b.npy", "--wait")
    assert done.exit_code == 0, done.stderr
    reruns = [ncaas(*remote, "rerun", job_id), ncaas("rerun", job_id, *where)]
    for run in reruns:
        assert run.exit_code == 0, run.stdout + run.stderr
        assert run.stdout.startswith(f"rerunning job {job_id} (framestats) ...\n  job ")
    r, e = (_same_shape(_tail(run.stdout, "rerun as job")) for run in reruns)
    assert r == e and "2 identical, 0 equal within tolerance, 0 different" in r


def test_remote_results_download_and_rerun(served):
    base, remote = served["base"], served["remote"]
    done = ncaas(*remote, "submit", "framestats", "a.npy", "--wait")  # a name already on the server
    assert done.exit_code == 0, done.stderr
    job_id = done.stdout.split("job ", 1)[1].split(":", 1)[0].strip()
    fetched = ncaas(*remote, "results", job_id, "--to", str(base / "fetched"))
    rerun = ncaas(*remote, "rerun", str(served["root"] / "lab" / "results" / job_id))
    assert fetched.exit_code == 0, fetched.stderr
    stored = served["root"] / "lab" / "results" / job_id
    for f in stored.rglob("*"):
        if f.is_file():
            assert (base / "fetched" / f.relative_to(stored)).read_bytes() == f.read_bytes()
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert "2 identical, 0 equal within tolerance, 0 different" in rerun.stdout


def test_remote_errors_are_messages_with_exit_codes(served):
    remote, server = served["remote"], served["server"]
    no_token, bad_token, unreachable, manager, rejected, clash = (
        ncaas("--server", server.url, "status"),
        ncaas("--server", server.url, "--token", "ncaas_bad_token", "status"),
        ncaas("--server", f"http://127.0.0.1:{free_port()}", "--token", "x", "status"),
        ncaas(*remote, "manager"),
        ncaas(*remote, "submit", "framestats", "nothing.npy", "--config", "absent.yaml"),
        ncaas(*remote, "submit", "framestats", "a.npy", "--group", "elsewhere"),
    )
    assert no_token.exit_code == 1 and "--server needs a token" in no_token.stderr
    assert bad_token.exit_code == 1 and "unknown or revoked" in bad_token.stderr
    assert unreachable.exit_code == 1 and "cannot reach the ncaas server" in unreachable.stderr
    assert manager.exit_code == 1 and "runs its own job manager" in manager.stderr
    assert rejected.exit_code == 2 and "submission rejected" in rejected.stderr
    assert "'nothing.npy' not found in lab/inputs/" in rejected.stderr
    assert "config 'absent.yaml' not found" in rejected.stderr
    assert clash.exit_code == 1 and "your token belongs to group 'lab'" in clash.stderr
    for run in (no_token, bad_token, unreachable, manager, rejected, clash):
        assert "Traceback" not in run.stderr


def test_serve_explains_bad_options_and_shares_storage_with_a_running_manager(served, tmp_path):
    bad = ncaas("serve", "--max-upload", "lots", "--root", str(tmp_path / "r"))
    assert bad.exit_code == 1 and "--max-upload: 'lots' is not a size" in bad.stderr
    import fcntl

    root = tmp_path / "shared"
    (root / ".ncaas").mkdir(parents=True)
    with open(root / ".ncaas" / "manager.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as `ncaas manager` holds it
        with ServerProcess(root) as server:
            assert "another `ncaas manager` runs on this storage" in server.log()


def test_hidden_files_of_a_folder_stay_behind_and_are_named(served, tmp_path):
    """A folder copied on a Mac or Windows machine: its hidden files and system clutter are not
    uploaded, to a server or embedded, and one line per dataset names them; a folder of nothing
    but hidden files is refused before anything is sent; a hidden file named on the command line
    is uploaded."""
    base, remote, root = served["base"], served["remote"], served["root"]
    exp = base / "mouse3"
    (exp / "day1").mkdir(parents=True)
    (exp / "day1" / "s1.npy").write_bytes((base / "a.npy").read_bytes())
    (exp / "day2.npy").write_bytes((base / "b.npy").read_bytes())
    (exp / "day1" / "._s1.npy").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork
    (exp / ".DS_Store").write_bytes(b"Bud1")
    (exp / "__MACOSX" / "day1").mkdir(parents=True)
    (exp / "__MACOSX" / "day1" / "._s1.npy").write_bytes(b"\x00\x05\x16\x07")
    (exp / "desktop.ini").write_text("[.ShellClassInfo]\n")
    only = base / "only-hidden"
    only.mkdir()
    (only / ".DS_Store").write_bytes(b"Bud1")
    (only / "Thumbs.db").write_bytes(b"thumbs")
    (base / ".rig.npy").write_bytes((base / "a.npy").read_bytes())
    note = "mouse3: left out 3 hidden files and 1 hidden folder: .DS_Store, __MACOSX/, day1/._s1.npy, desktop.ini"
    kept = {"day1/s1.npy": (base / "a.npy").read_bytes(), "day2.npy": (base / "b.npy").read_bytes()}

    def tree(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    refused = ncaas(*remote, "submit", "framestats", str(only))
    assert refused.exit_code == 1 and "Traceback" not in refused.stderr
    assert f"{only} holds only hidden files (.DS_Store, Thumbs.db); a dataset needs at least one file" in " ".join(
        refused.stderr.split()
    )
    assert not (root / "lab" / "inputs" / "only-hidden").exists()

    sent = ncaas(*remote, "submit", "framestats", str(exp), str(base / ".rig.npy"))
    assert sent.exit_code == 0, sent.stderr
    assert sent.stdout.splitlines().count(note) == 1 and ".rig.npy" not in sent.stdout
    assert tree(root / "lab" / "inputs" / "mouse3") == kept
    assert (root / "lab" / "inputs" / ".rig.npy").read_bytes() == (base / "a.npy").read_bytes()

    where = ["--root", str(tmp_path / "embedded"), "--group", "lab"]
    embedded = ncaas("submit", "framestats", str(exp), *where)
    assert embedded.exit_code == 0, embedded.stderr
    assert embedded.stdout.splitlines().count(note) == 1
    assert tree(tmp_path / "embedded" / "lab" / "inputs" / "mouse3") == kept
    again = ncaas("submit", "framestats", str(exp), str(base / ".rig.npy"), *where)
    assert again.exit_code == 0, again.stderr  # the stored copy is the same dataset: reused
    assert note not in again.stdout and tree(tmp_path / "embedded" / "lab" / "inputs" / "mouse3") == kept
    empty = ncaas("submit", "framestats", str(only), *where)
    assert empty.exit_code == 1 and "holds only hidden files" in empty.stderr


def test_a_folder_already_on_the_server_is_reused_when_the_same_and_refused_when_not(served):
    """Submitting a folder again to a server reuses the stored copy when it holds the same files
    (hidden ones aside) with the same bytes; a changed byte or an extra file is refused by name."""
    base, remote, root = served["base"], served["remote"], served["root"]
    exp = base / "mouse7"
    (exp / "s1").mkdir(parents=True)
    (exp / "s1" / "movie.npy").write_bytes((base / "a.npy").read_bytes())
    (exp / "s2.npy").write_bytes((base / "b.npy").read_bytes())
    first = ncaas(*remote, "submit", "framestats", str(exp))
    assert first.exit_code == 0, first.stderr
    stored = root / "lab" / "inputs" / "mouse7" / "s2.npy"
    stamp = stored.stat().st_mtime_ns
    (exp / ".DS_Store").write_bytes(b"Bud1")  # left out: still the same dataset
    again = ncaas(*remote, "submit", "framestats", str(exp))
    assert again.exit_code == 0, again.stderr
    assert stored.stat().st_mtime_ns == stamp  # reused, not sent again
    changed = bytearray((base / "b.npy").read_bytes())
    changed[-1] ^= 0xFF  # same size, one byte different
    (exp / "s2.npy").write_bytes(bytes(changed))
    for variant in ("changed byte", "extra file"):
        if variant == "extra file":
            (exp / "s2.npy").write_bytes((base / "b.npy").read_bytes())
            (exp / "notes.txt").write_text("day 7\n")
        refused = ncaas(*remote, "submit", "framestats", str(exp))
        assert refused.exit_code == 1 and "Traceback" not in refused.stderr, variant
        assert "lab/inputs/mouse7 already exists with different content" in " ".join(refused.stderr.split()), variant

"""docs/deploy.md's one-machine recipe, run exactly as written.

The blocks marked ``<!-- deploy:up -->``, ``<!-- deploy:use -->`` and ``<!-- deploy:down -->``
are taken from the document as they are and run by bash: PostgreSQL, SeaweedFS, a two-node
Ray cluster on loopback and ``ncaas serve --executor ray`` come up; a shell that knows only the
server's address and a token submits a framestats job and follows it to its end; everything
stops. Only step 0's variables (the folder and the ports) are given values of the test's own,
as the document invites.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from ncaas_testutil import REPO

DOC = REPO / "docs" / "deploy.md"
pytestmark = pytest.mark.timeout(900)


def block(name: str) -> str:
    """The shell block that follows ``<!-- deploy:NAME -->`` in docs/deploy.md."""
    found = re.search(rf"<!-- deploy:{name} -->\s*```sh\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/deploy.md has no block marked deploy:{name}"
    return found.group(1)


def free_ports(runs: list[int]) -> list[int]:
    """For each length in ``runs``, the first port of that many consecutive free loopback ports, none shared."""
    taken: set[int] = set()
    found: list[int] = []
    for length in runs:
        for base in range(21000 + 97 * len(found), 60000, 37):
            run = set(range(base, base + length))
            if run & taken:
                continue
            try:
                for p in run:
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", p))
            except OSError:
                continue
            taken |= run
            found.append(base)
            break
        else:
            pytest.fail("no free loopback ports")
    return found


def test_the_one_machine_recipe_runs_as_written() -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; `make system-deps` does it as root)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: the recipe cannot start PostgreSQL as its own user")
    weed, pg, s3, ray, server = free_ports([9, 1, 1, 1, 1])
    deploy = Path(tempfile.mkdtemp(prefix="ncd-", dir="/tmp"))  # short: Ray's socket paths live under it
    home = Path(tempfile.mkdtemp(prefix="ncd-home-"))
    work = Path(tempfile.mkdtemp(prefix="ncd-user-"))
    variables = dict(
        DEPLOY=str(deploy),
        PGPORT=str(pg),
        S3PORT=str(s3),
        RAYPORT=str(ray),
        SERVERPORT=str(server),
        WEEDPORTS=str(weed),
    )
    # The person's shell: the recipe's own variables; nothing of the test's environment that names a cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCAAS_", "RAY_", "AWS_"))}
    env.update(variables, HOME=str(home))
    # The user's shell elsewhere: the server's address and the token, nothing else of the deployment.
    user_env = f'env -i PATH=/usr/bin:/bin:{REPO}/.venv/bin HOME={work} TOKEN="$TOKEN" SERVERPORT={server}'
    script = "\n".join(
        [
            "set -euo pipefail",
            f"cleanup() {{ set +e; cd /; {block('down')}\n}}",
            "trap cleanup EXIT",
            block("up"),
            f"cd {work}",
            f"{user_env} bash -euo pipefail -c {_quote(block('use'))}",
            # the test's own look at what ran: the job's results, certificate included, through the server
            f"{user_env} bash -euo pipefail -c "
            + _quote(
                "export NCAAS_SERVER=http://127.0.0.1:$SERVERPORT NCAAS_TOKEN=$TOKEN; "
                "JOB=$(COLUMNS=200 ncaas status | grep -o '20[0-9]\\{6\\}-[0-9]\\{6\\}-[0-9a-f]\\{6\\}' | head -1); "
                f'ncaas results "$JOB" --to {deploy}/fetched'
            ),
            f"cd {REPO}",
        ]
    )
    try:
        done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
        log = deploy / "server.log"
        server_log = log.read_text(errors="replace") if log.exists() else "(no server log)"
        assert done.returncode == 0, (
            f"{done.stderr[-3000:]}\n---\n{done.stdout[-2000:]}\nserver log:\n{server_log[-2000:]}"
        )
        assert "succeeded" in done.stdout, done.stdout[-3000:]
        certificate = next((deploy / "fetched").rglob("certificate.txt")).read_text()
        assert re.search(r"executor:\s+ray", certificate), certificate
        assert "127.0.0.2" in certificate or "127.0.0.3" in certificate, certificate  # each task's node
        # the token was printed by the recipe and used by the user's shell; the server ran the job on Ray
        assert re.search(r"token for alice: ncaas_\S+", done.stdout)

        # everything the recipe started has stopped
        def left() -> list[str]:
            found = subprocess.run(["pgrep", "-a", "-f", str(deploy)], capture_output=True, text=True).stdout
            return found.splitlines()

        for _ in range(40):  # a killed process is gone once the kernel has reaped it
            if not left():
                break
            time.sleep(0.25)
        assert left() == [], f"processes left running: {left()}"
    finally:
        subprocess.run(["pkill", "-KILL", "-f", str(deploy)], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(deploy)], capture_output=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"

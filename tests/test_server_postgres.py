"""The server on PostgreSQL: a real PostgreSQL 15 cluster started on loopback for
these tests, accounts made with `ncaas admin`, a job run through `ncaas serve`,
and everything still there after the server restarts. The account store's
contract is checked on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import numpy as np
import pytest
from crc32c import crc32c
from sqlalchemy import create_engine, text

from ncaas.client import Client, ServerRequestError
from ncaas.server.accounts import Accounts
from ncaas.server.errors import AccountError
from ncaas.testing.servers import ServerProcess


@pytest.fixture(params=["sqlite", "postgresql"])
def accounts(request, tmp_path):
    if request.param == "sqlite":
        store = Accounts.from_url(f"sqlite:///{tmp_path / 'accounts.sqlite'}")
    else:
        pg = request.getfixturevalue("postgres")
        store = Accounts.from_url(pg.database(f"contract_{tmp_path.name.lower()[-20:]}"))
    yield store
    store.engine.dispose()


def test_account_store_contract(accounts):
    accounts.add_group("lab")
    with pytest.raises(AccountError, match="group 'lab' already exists"):
        accounts.add_group("lab")
    with pytest.raises(AccountError, match="letters, digits"):
        accounts.add_group("../lab")
    with pytest.raises(AccountError, match="group 'nope' does not exist; create it first"):
        accounts.add_user("ann", "nope")
    accounts.add_user("ann", "lab")
    with pytest.raises(AccountError, match="user 'bob' does not exist"):
        accounts.issue_token("bob")
    first, second = accounts.issue_token("ann"), accounts.issue_token("ann")
    assert first.token != second.token and first.token.startswith("ncaas_")
    who = accounts.authenticate(first.token)
    assert (who.user, who.group, who.token_id) == ("ann", "lab", first.token_id)
    assert accounts.authenticate(first.token + "x") is None
    assert accounts.revoke_token(first.token_id) == first.token_id
    assert accounts.authenticate(first.token) is None
    assert accounts.revoke_token(second.token) == second.token_id  # by the token itself, too
    assert accounts.authenticate(second.token) is None
    with pytest.raises(AccountError, match="no token"):
        accounts.revoke_token("feedfeedfeed")
    assert [t["revoked"] for t in accounts.tokens()] == [True, True]
    with accounts.engine.connect() as conn:
        stored = [r[0] for r in conn.execute(text("select token_hash from server_tokens"))]
    assert hashlib.sha256(first.token.encode()).hexdigest() in stored
    assert not any(first.token.split("_")[-1] in h for h in stored)


def _ncaas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ncaas", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_server_runs_jobs_on_postgresql_and_keeps_everything_across_restarts(postgres, tmp_path):
    root = tmp_path / "root"
    url = postgres.database("server")
    where = ["--root", str(root), "--db", url]
    admin = Accounts.from_url(url)
    admin.add_group("lab")
    admin.add_user("ann", "lab")
    issued = _ncaas("admin", "issue-token", "ann", *where)  # the CLI reaches PostgreSQL through --db
    assert issued.returncode == 0 and "not shown again" in issued.stdout, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    buf = io.BytesIO()
    np.save(buf, np.arange(8 * 4 * 4, dtype=np.float32).reshape(8, 4, 4))
    (tmp_path / "m.npy").write_bytes(buf.getvalue())
    big = np.random.default_rng(0).bytes(700_000)
    (tmp_path / "big.bin").write_bytes(big)

    server = ServerProcess(root, db=url).start()
    try:
        assert "database postgresql+psycopg://postgres@127.0.0.1" in server.log()
        with Client(server.url, token) as c:
            c.upload_dataset(tmp_path / "m.npy")
            job = c.wait(c.submit("framestats", ["m.npy"], config={"batch_frames": 3})["id"])
            assert job["state"] == "succeeded", job
            assert c.files(job["id"])
            # an upload interrupted by the server going down ...
            half = c._json("POST", "/api/uploads", json={"path": "big.bin", "size": len(big)})
            c.request("PUT", f"/api/uploads/{half['id']}", params={"offset": 0}, content=big[:300_000])
    finally:
        server.stop()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("select state from jobs where id = :i"), {"i": job["id"]}).scalar() == "succeeded"
        assert conn.execute(text("select count(*) from server_uploads")).scalar() == 2
    engine.dispose()
    assert not (root / ".ncaas" / "jobs.sqlite").exists()  # nothing went to the SQLite default

    admin.revoke_token(token)
    server = ServerProcess(root, db=url).start()
    try:
        with Client(server.url, token) as c, pytest.raises(ServerRequestError, match="unknown or revoked"):
            c.jobs()
        with Client(server.url, admin.issue_token("ann").token) as c:
            assert job["id"] in {j["id"] for j in c.jobs()}
            assert c.certificate(job["id"])["job"]["id"] == job["id"]
            # ... goes on where it stopped once the server is back (its checksum rebuilt from disk)
            sent = []
            done = c.upload_file(tmp_path / "big.bin", "big.bin", progress=lambda n, total: sent.append(n))
            assert done["id"] == half["id"] and sent[0] > 300_000
            assert done["crc32c"] == f"{crc32c(big):08x}"
            assert (root / "lab" / "inputs" / "big.bin").read_bytes() == big
    finally:
        server.stop()
        admin.engine.dispose()

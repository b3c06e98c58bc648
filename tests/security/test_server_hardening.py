"""The server's own defences: failed authentications are limited, every response carries security
headers, what an analysis wrote never runs as a page of the server, the platform's state is private
to its user, and uploads leave room on the disk and within a group's quota."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from crc32c import crc32c
from ncaas_testutil import small_tmpfs

from .conftest import Site, start_site

BAD_TOKEN = "ncaas_0123456789ab_" + "x" * 43


def _npy(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((12, 16, 16), dtype=np.float32))
    return buf.getvalue()


def _upload(http: httpx.Client, path: str, data: bytes) -> httpx.Response:
    """Upload ``data`` to inputs/``path`` in one request; the last response (201/200 or the refusal)."""
    resp = http.post("/api/uploads", json={"path": path, "size": len(data)})
    if resp.status_code != 201:
        return resp
    upload_id = resp.json()["id"]
    resp = http.put(f"/api/uploads/{upload_id}?offset=0", content=data)
    if resp.status_code != 200:
        return resp
    return http.post(f"/api/uploads/{upload_id}/complete", json={"crc32c": f"{crc32c(data):08x}"})


def _inputs(site: Site, group: str) -> dict[str, str]:
    """sha256 of every file in the group's inputs/ on disk."""
    base = site.root / group / "inputs"
    return {
        p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def _ncaas(site: Site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ncaas", *args, "--root", str(site.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def job(site: Site) -> dict:
    """A finished framestats job of group lab (its task ran in the sandbox under the server's umask)."""
    with site.http("lab") as http:
        assert _upload(http, "a.npy", _npy()).status_code == 200
    client = site.clients["lab"]
    final = client.wait(client.submit("framestats", ["a.npy"], config={"batch_frames": 4})["id"])
    assert final["state"] == "succeeded", (final, client.log(final["id"], "a.npy"))
    return final


# -- failed authentications -----------------------------------------------------------------
def test_bad_tokens_are_answered_429_while_a_valid_token_is_still_served(site: Site):
    statuses = []
    with (
        httpx.Client(
            base_url=site.server.url, timeout=30, headers={"Authorization": f"Bearer {BAD_TOKEN}"}
        ) as attacker,
        site.http("lab") as valid,
    ):
        for i in range(300):
            # a spoofed X-Forwarded-For does not make a new client: the socket peer is the client
            resp = attacker.get("/api/me", headers={"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                limited = resp
                assert valid.get("/api/me").json()["group"] == "lab"  # the valid token from the same address
        assert valid.get("/api/jobs").status_code == 200
    first = statuses.index(429)
    assert statuses[:first] == [401] * 30 and first == 30, statuses
    assert set(statuses[first:]) == {429}  # every later failure, until the minute is over
    wait = int(limited.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert limited.json()["retry_after"] == wait
    assert "too many failed authentications from 127.0.0.1" in limited.json()["error"]
    assert "check the token" in limited.json()["error"]
    for header in ("Content-Security-Policy", "X-Content-Type-Options"):
        assert header in limited.headers
    # another address is not slowed down by this one's failures (all of 127/8 is loopback)
    with httpx.Client(
        base_url=site.server.url,
        timeout=30,
        headers={"Authorization": f"Bearer {BAD_TOKEN}"},
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
    ) as neighbour:
        assert neighbour.get("/api/me").status_code == 401
    assert site.server.log().count("too many failed authentications from 127.0.0.1") == 1


def test_a_forged_download_ticket_counts_as_a_failure_too(tmp_path: Path):
    site = start_site(tmp_path, extra=["--auth-failures", "3"])
    try:
        with httpx.Client(base_url=site.server.url, timeout=30) as anonymous:
            codes = [
                anonymous.get("/api/jobs/x/results.zip", params={"ticket": "forged.sig"}).status_code for _ in range(5)
            ]
            assert codes == [401, 401, 401, 429, 429]
            assert anonymous.get("/api/me").status_code == 401  # no credentials: nothing guessed, not 429
        with site.http("other") as valid:
            assert valid.get("/api/me").status_code == 200
    finally:
        site.close()
        site.server.stop()


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_apart(tmp_path: Path):
    site = start_site(tmp_path, extra=["--auth-failures", "2", "--forwarded-allow-ips", "127.0.0.1"])
    try:
        with httpx.Client(
            base_url=site.server.url, timeout=30, headers={"Authorization": f"Bearer {BAD_TOKEN}"}
        ) as proxy:
            codes = [proxy.get("/api/me", headers={"X-Forwarded-For": "10.1.2.3"}).status_code for _ in range(3)]
            assert codes == [401, 401, 429]
            limited = proxy.get("/api/me", headers={"X-Forwarded-For": "10.1.2.3"})
            assert "from 10.1.2.3" in limited.json()["error"]
            assert proxy.get("/api/me", headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 401
    finally:
        site.close()
        site.server.stop()


# -- security headers -----------------------------------------------------------------------
def _assert_security_headers(resp: httpx.Response, what: str) -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp, (what, resp.headers)
    assert resp.headers.get("X-Frame-Options") == "DENY", what
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", what
    assert resp.headers.get("Referrer-Policy") == "no-referrer", what


def test_every_kind_of_response_carries_security_headers(site: Site):
    with site.http("lab") as http, site.http(None) as anonymous:
        answers = {
            "page": anonymous.get("/"),
            "review page": anonymous.get("/review"),
            "static script": anonymous.get("/static/app.js"),
            "static style": anonymous.get("/static/style.css"),
            "missing static file": anonymous.get("/static/nope.js"),
            "api": http.get("/api/me"),
            "api 401": anonymous.get("/api/me"),
            "api 404": http.get("/api/jobs/nope"),
            "unknown route": anonymous.get("/nope"),
            "api 400": http.post("/api/uploads", content=b"{not json", headers={"Content-Type": "application/json"}),
            "body too large (413)": http.put(
                "/api/configs/huge.json", content=b"x" * (17 << 20), headers={"Content-Type": "application/json"}
            ),
            "openapi": anonymous.get("/openapi.json"),
            "docs": anonymous.get("/docs"),
        }
    expected = {
        "page": 200,
        "review page": 200,
        "static script": 200,
        "static style": 200,
        "missing static file": 404,
        "api": 200,
        "api 401": 401,
        "api 404": 404,
        "unknown route": 404,
        "api 400": 400,
        "body too large (413)": 413,
        "openapi": 200,
        "docs": 200,
    }
    for what, resp in answers.items():
        assert resp.status_code == expected[what], (what, resp.status_code)
        _assert_security_headers(resp, what)
    page_policy = answers["page"].headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'"):
        assert directive in page_policy
    assert "unsafe-inline" not in page_policy and "unsafe-eval" not in page_policy


@pytest.mark.parametrize("page, script", [("index.html", "app.js"), ("review.html", "review.js")])
def test_the_page_has_no_inline_script_or_style_its_policy_would_block(page: str, script: str):
    static = Path(__file__).resolve().parents[2] / "src" / "ncaas" / "server" / "static"
    html = (static / page).read_text()
    assert "<style" not in html and " style=" not in html
    assert all("src=" in tag for tag in html.split("<script")[1:])  # scripts only from files
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE)  # no inline event handler
    code = (static / script).read_text()
    for risky in ("eval(", "new Function", "innerHTML", ".style.", 'setAttribute("style"', "blob:", "data:image"):
        assert risky not in code, risky


# -- what an analysis wrote ------------------------------------------------------------------
def test_html_and_svg_outputs_never_run_as_pages_of_the_server(site: Site, job: dict):
    outputs = site.root / "lab" / "results" / job["id"] / "outputs" / "a.npy"
    evil = "<script>fetch('/api/jobs', {headers: {Authorization: 'Bearer ' + sessionStorage['ncaas-token']}})</script>"
    (outputs / "report.html").write_text(f"<html><body>{evil}</body></html>")
    (outputs / "figure.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg">{evil}</svg>')
    (outputs / "figure.png").write_text(f"<html>{evil}</html>")  # lies about its kind
    with site.http("lab") as http:
        html = http.get(f"/api/jobs/{job['id']}/files/outputs/a.npy/report.html")
        svg = http.get(f"/api/jobs/{job['id']}/files/outputs/a.npy/figure.svg")
        png = http.get(f"/api/jobs/{job['id']}/files/outputs/a.npy/figure.png")
    for resp in (html, svg, png):
        assert resp.status_code == 200
        _assert_security_headers(resp, resp.url.path)
        policy = resp.headers["Content-Security-Policy"]
        assert policy.startswith("sandbox"), policy  # an origin of its own, even opened in a tab
        assert "script-src" not in policy and "default-src 'none'" in policy  # so no script runs at all
    assert html.headers["Content-Disposition"].startswith("attachment")  # a download, never a page
    assert svg.headers["Content-Type"] == "image/svg+xml"
    assert png.headers["Content-Type"] == "image/png"  # with nosniff: never taken for HTML


# -- permissions ----------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_state_folder_are_private(site: Site, job: dict):
    state = site.root / ".ncaas"
    assert _mode(state) == 0o700
    database = state / "jobs.sqlite"
    assert _mode(database) == 0o600
    for side in ("-wal", "-shm"):
        journal = database.with_name(database.name + side)
        if journal.exists():
            assert _mode(journal) == 0o600, journal
    # what the server and its tasks wrote is its user's only (umask 0o077)
    assert _mode(site.root / "lab") == 0o700  # a group folder the server made
    assert _mode(site.root / "lab" / "inputs" / "a.npy") & 0o077 == 0
    results = site.root / "lab" / "results" / job["id"]
    for path in (results, results / "certificate.json", results / "outputs" / "a.npy"):
        assert _mode(path) & 0o077 == 0, path
    written_here = {"report.html", "figure.svg", "figure.png"}  # by this module's test of hostile outputs
    task_files = [p for p in (results / "outputs").rglob("*") if p.name not in written_here]
    assert task_files and all(_mode(p) & 0o077 == 0 for p in task_files)


def test_a_storage_root_ncaas_creates_is_private(tmp_path: Path):
    root = tmp_path / "fresh" / "root"
    done = subprocess.run(
        [sys.executable, "-m", "ncaas", "admin", "add-group", "lab", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(root) == 0o700 and _mode(root / ".ncaas") == 0o700
    assert _mode(root / ".ncaas" / "jobs.sqlite") == 0o600


def test_an_older_world_readable_database_is_made_private_when_opened(tmp_path: Path):
    root = tmp_path / "root"
    (root / ".ncaas").mkdir(parents=True)
    os.chmod(root / ".ncaas", 0o755)
    database = root / ".ncaas" / "jobs.sqlite"
    database.touch(mode=0o644)
    os.chmod(database, 0o644)
    done = subprocess.run(
        [sys.executable, "-m", "ncaas", "admin", "add-group", "lab", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(root / ".ncaas") == 0o700 and _mode(database) == 0o600


# -- room on the disk and in the quota --------------------------------------------------------
def test_an_upload_larger_than_the_free_space_is_refused_with_507(site: Site):
    before = _inputs(site, "lab")
    free = shutil.disk_usage(site.root).free
    with site.http("lab") as http:
        resp = http.post("/api/uploads", json={"path": "huge.bin", "size": free + (1 << 30)})
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert "not enough free space on the server for 'huge.bin'" in error and "is free" in error
        assert "kept free" in error
        assert resp.json()["needed"] == free + (1 << 30) and resp.json()["free"] > 0
        assert http.get("/api/uploads").json() == []  # nothing was started
    assert _inputs(site, "lab") == before


def test_an_upload_over_the_groups_quota_is_refused_with_507(site: Site):
    with site.http("other") as http:
        assert _upload(http, "kept.bin", os.urandom(300_000)).status_code == 200
    before = _inputs(site, "other")
    done = _ncaas(site, "admin", "set-quota", "other", "1MB")
    assert done.returncode == 0 and "quota 1000000 bytes" in done.stdout, done.stderr
    with site.http("other") as http:
        assert _upload(http, "fits.bin", os.urandom(400_000)).status_code == 200
        resp = _upload(http, "too-much.bin", os.urandom(400_000))
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert "group 'other' would go over its quota of 976.6 KiB" in error
        assert "ncaas admin set-quota other SIZE" in error
        # two unfinished uploads cannot share the room left: the first one's declared size is counted
        first = http.post("/api/uploads", json={"path": "half1.bin", "size": 200_000})
        second = http.post("/api/uploads", json={"path": "half2.bin", "size": 200_000})
        assert first.status_code == 201 and second.status_code == 507
        http.delete(f"/api/uploads/{first.json()['id']}")
    after = _inputs(site, "other")
    assert after.pop("fits.bin") and after == before  # the group's other files are intact
    with site.http("lab") as http:  # another group is not limited by it
        assert _upload(http, "lab-big.bin", os.urandom(1_200_000)).status_code == 200
    assert _ncaas(site, "admin", "set-quota", "other", "none").returncode == 0
    with site.http("other") as http:
        resp = _upload(http, "too-much.bin", os.urandom(400_000))
        assert resp.status_code == 200, resp.text


def test_a_bad_quota_is_refused_with_a_clear_message(site: Site):
    done = _ncaas(site, "admin", "set-quota", "other", "lots")
    assert done.returncode != 0 and "'lots' is not a size" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    done = _ncaas(site, "admin", "set-quota", "nobody", "1GB")
    assert done.returncode != 0 and "group 'nobody' does not exist" in done.stdout + done.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB file system of its own (tmpfs), so free space is exact whatever else the machine does."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    with small_tmpfs(tmp_path / "disk", "64m") as mount:
        yield mount


def test_space_taken_while_an_upload_streams_stops_it_keeping_nothing_half_written(small_disk: Path):
    site = start_site(small_disk, extra=["--min-free", "8MiB"])
    try:
        with site.http("lab") as http:
            assert _upload(http, "other.bin", b"x" * 1000).status_code == 200
            data = os.urandom(24 << 20)
            up = http.post("/api/uploads", json={"path": "big.bin", "size": len(data)}).json()
            assert http.put(f"/api/uploads/{up['id']}?offset=0", content=data[: 4 << 20]).status_code == 200
            filler = small_disk / "filler"

            def body() -> Iterator[bytes]:
                yield data[4 << 20 : 8 << 20]
                time.sleep(0.5)  # the server has these bytes; then a job writes 36 MiB to the same disk
                filler.write_bytes(b"\0" * (36 << 20))
                yield data[8 << 20 : 12 << 20]

            resp = http.put(
                f"/api/uploads/{up['id']}?offset={4 << 20}", content=body(), headers={"Content-Length": str(8 << 20)}
            )
            assert resp.status_code == 507, resp.text
            assert "not enough free space on the server for 'big.bin'" in resp.json()["error"]
            assert resp.json()["offset"] == 4 << 20
            assert http.get(f"/api/uploads/{up['id']}").json()["offset"] == 4 << 20  # this request left nothing
            filler.unlink()  # space freed: the upload goes on where it stood
            assert http.put(f"/api/uploads/{up['id']}?offset={4 << 20}", content=data[4 << 20 :]).status_code == 200
            done = http.post(f"/api/uploads/{up['id']}/complete", json={"crc32c": f"{crc32c(data):08x}"})
            assert done.status_code == 200, done.text
        assert (site.root / "lab" / "inputs" / "big.bin").read_bytes() == data
        assert (site.root / "lab" / "inputs" / "other.bin").read_bytes() == b"x" * 1000
    finally:
        site.close()
        site.server.stop()

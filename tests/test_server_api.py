"""The server's API, end to end: a real `ncaas serve` on loopback, real jobs.

Two groups (lab: ann, other: bob) share one server; every endpoint is checked
for authentication, and every job/data/result endpoint for refusing the other
group. Uploads are checked for traversal, size, checksums and resumption.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from crc32c import crc32c
from sqlalchemy import create_engine, text

from ncaas.client import Client
from ncaas.server.accounts import Accounts
from ncaas.server.state import default_database_url
from ncaas.testing.servers import ServerProcess, storage_with_user

BLUEPRINTS = Path(__file__).parent / "server_blueprints"
MAX_UPLOAD = 1_000_000


def _crc(data: bytes) -> str:
    """The CRC-32C of ``data`` as the upload API writes it: 8 hexadecimal digits."""
    return f"{crc32c(data):08x}"


def _npy(frames: int = 12, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((frames, 6, 6), dtype=np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A running server with groups lab (ann) and other (bob), and a revoked token."""
    base = tmp_path_factory.mktemp("server")
    root = base / "root"
    root.mkdir()
    accounts = Accounts.from_url(default_database_url(str(root)))
    accounts.add_group("lab")
    accounts.add_group("other")
    accounts.add_user("ann", "lab")
    accounts.add_user("bob", "other")
    accounts.add_user("cat", "lab")
    ann, bob, cat = accounts.issue_token("ann"), accounts.issue_token("bob"), accounts.issue_token("cat")
    revoked = accounts.issue_token("ann")
    accounts.revoke_token(revoked.token_id)
    accounts.engine.dispose()
    # This module walks every route with three kinds of bad token (about 80 failed authentications
    # in seconds, all from 127.0.0.1): above the default limit, which has its own tests in
    # tests/security/test_server_hardening.py.
    server = ServerProcess(
        root, max_upload="1MB", env={"NCAAS_BLUEPRINTS": str(BLUEPRINTS)}, extra=["--auth-failures", "1000"]
    ).start()
    site = type("Site", (), {})()
    site.server, site.root, site.base = server, root, base
    site.ann, site.bob, site.cat, site.revoked = ann.token, bob.token, cat.token, revoked.token
    site.ann_client, site.bob_client = Client(server.url, ann.token), Client(server.url, bob.token)
    yield site
    site.ann_client.close()
    site.bob_client.close()
    assert server.stop() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises the signal it handled
    assert "Finished server process" in server.log()
    assert "Traceback" not in server.log(), server.log()


def _http(site, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=site.server.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def job(site):
    """A finished framestats job of group lab on two uploaded datasets."""
    c = site.ann_client
    for i, name in enumerate(("a.npy", "b.npy")):
        (site.base / name).write_bytes(_npy(seed=i))
        c.upload_dataset(site.base / name)
    detail = c.submit("framestats", ["a.npy", "b.npy"], config={"batch_frames": 4})
    final = c.wait(detail["id"])
    assert final["state"] == "succeeded", final
    return final


@pytest.fixture(scope="module")
def qc_job(site, job):
    final = site.ann_client.wait(site.ann_client.submit("qcimage", ["a.npy"])["id"])
    assert final["state"] == "succeeded", (final, site.ann_client.log(final["id"], "a.npy"))
    return final


def _routes(site) -> list[tuple[str, str]]:
    spec = httpx.get(f"{site.server.url}/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def _fill(route: str, **values: str) -> str:
    defaults = {"job_id": "nojob", "upload_id": "0" * 32, "name": "x.json", "dataset": "a.npy", "path": "x", "k": "0"}
    defaults.update(values)
    for key, value in defaults.items():
        route = route.replace("{" + key + "}", value)
    return route


# -- authentication -------------------------------------------------------------------------
def test_openapi_documents_every_part_of_the_api(site):
    paths = {p for _, p in _routes(site)}
    for needed in (
        "/api/analyses",
        "/api/uploads",
        "/api/uploads/{upload_id}",
        "/api/configs/{name}",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/results.zip",
        "/api/jobs/{job_id}/files/{path}",
        "/api/jobs/{job_id}/certificate",
        "/api/jobs/{job_id}/qc",
        # the review page (docs/review.md)
        "/api/jobs/{job_id}/review/{dataset}",
        "/api/jobs/{job_id}/review/{dataset}/neurons",
        "/api/jobs/{job_id}/review/{dataset}/contours",
        "/api/jobs/{job_id}/review/{dataset}/image.png",
        "/api/jobs/{job_id}/review/{dataset}/neurons/{k}",
        "/api/jobs/{job_id}/review/{dataset}/neurons/{k}/footprint.png",
        "/api/jobs/{job_id}/review/{dataset}/decisions",
        "/api/jobs/{job_id}/review/{dataset}/finish",
    ):
        assert needed in paths
    spec = httpx.get(f"{site.server.url}/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_every_api_call_needs_a_valid_token(site, job):
    routes = _routes(site)
    assert len(routes) >= 20
    for token, why in (
        (None, "authentication required"),
        ("ncaas_nope_nope", "unknown or revoked"),
        (site.revoked, "unknown or revoked"),
        ("garbage", "unknown or revoked"),
    ):
        with _http(site, token) as http:
            for method, path in routes:
                resp = http.request(method, _fill(path, job_id=job["id"]))
                assert resp.status_code == 401, (method, path, token, resp.text)
                assert why in resp.json()["error"]


def test_tokens_are_stored_hashed(site):
    engine = create_engine(default_database_url(str(site.root)))
    with engine.connect() as conn:
        rows = conn.execute(text("select token_hash from server_tokens")).all()
    engine.dispose()
    hashes = {r[0] for r in rows}
    assert hashlib.sha256(site.ann.encode()).hexdigest() in hashes
    assert not any(site.ann in h or site.ann.split("_")[-1] in h for h in hashes)


# -- group privacy ----------------------------------------------------------------------------
def test_another_groups_jobs_and_results_are_refused_on_every_endpoint(site, job):
    job_routes = [(m, p) for m, p in _routes(site) if "{job_id}" in p]
    assert len(job_routes) >= 10
    cert = site.ann_client.certificate(job["id"])
    with _http(site, site.bob) as http:
        for method, path in job_routes:
            kwargs = {"json": cert} if path.endswith("/compare") else {}
            resp = http.request(method, _fill(path, job_id=job["id"], path="outputs/a.npy/summary.json"), **kwargs)
            assert resp.status_code == 404, (method, path, resp.text)
            assert "in group 'other'" in resp.json()["error"]
            assert job["id"] in resp.json()["error"]  # names what was asked, reveals nothing else
        assert http.post("/api/rerun", json=cert).status_code == 403
        assert http.post("/api/tickets", json={"path": f"/api/jobs/{job['id']}/"}).status_code == 404
        assert job["id"] not in {j["id"] for j in http.get("/api/jobs").json()}
    # the owner gets every one of them
    with _http(site, site.ann) as http:
        assert http.get(f"/api/jobs/{job['id']}/files/outputs/a.npy/summary.json").status_code == 200


def test_another_groups_data_and_uploads_are_invisible(site, job):
    ann, bob = site.ann_client, site.bob_client
    assert {d["name"] for d in ann.inputs()} >= {"a.npy", "b.npy"}
    assert "a.npy" not in {d["name"] for d in bob.inputs()}
    with _http(site, site.bob) as http:
        assert http.get("/api/inputs/a.npy").status_code == 404
        resp = http.post("/api/jobs", json={"analysis": "framestats", "datasets": ["a.npy"]})
        assert resp.status_code == 400
        assert "not found in other/inputs/" in resp.json()["error"]
        resp = http.post("/api/jobs", json={"analysis": "framestats", "datasets": ["../../lab/inputs/a.npy"]})
        assert resp.status_code == 400 and "'..'" in resp.json()["error"]
    up = ann._json("POST", "/api/uploads", json={"path": "private.bin", "size": 3})
    with _http(site, site.bob) as http:
        for method, path in (("GET", ""), ("PUT", "?offset=0"), ("POST", "/complete"), ("DELETE", "")):
            resp = http.request(method, f"/api/uploads/{up['id']}{path}", content=b"abc" if method == "PUT" else None)
            assert resp.status_code == 404, (method, resp.text)
        assert up["id"] not in {u["id"] for u in http.get("/api/uploads").json()}
    ann._json("DELETE", f"/api/uploads/{up['id']}")
    ann.save_config("mine.json", {"batch_frames": 2})
    assert "mine.json" not in site.bob_client.configs()
    with _http(site, site.bob) as http:
        assert http.get("/api/configs/mine.json").status_code == 404


def test_analyses_are_filtered_by_group_access(site):
    ann = {a["name"]: a for a in site.ann_client.analyses()}
    bob = {a["name"] for a in site.bob_client.analyses()}
    assert {"framestats", "labonly"} <= set(ann) and "labonly" not in bob
    fs = ann["framestats"]
    assert site.ann_client._json("GET", "/api/analyses/labonly")["name"] == "labonly"
    assert fs["config_schema"]["properties"]["batch_frames"]["minimum"] == 1
    assert fs["default_config"]["batch_frames"] == 64
    with _http(site, site.bob) as http:
        assert http.get("/api/analyses/labonly").status_code == 404
        resp = http.post("/api/jobs", json={"analysis": "labonly", "datasets": ["x"]})
        assert resp.status_code == 404 and "no analysis 'labonly'" in resp.json()["error"]


# -- path traversal ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    ["../escape.bin", "a/../../escape.bin", "/etc/passwd", "C:\\x.bin", "a\x00b", "line\nbreak", "", "..", "./.."],
)
def test_upload_paths_leaving_the_group_are_refused(site, bad):
    with _http(site, site.ann) as http:
        resp = http.post("/api/uploads", json={"path": bad, "size": 1})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]
    assert not (site.root / "escape.bin").exists() and not (site.root / "lab" / "escape.bin").exists()


def test_traversal_in_urls_is_refused(site, job):
    jid = job["id"]
    with _http(site, site.ann) as http:
        for url in (
            f"/api/jobs/{jid}/files/..%2F..%2F..%2Fother%2Finputs",
            f"/api/jobs/{jid}/files/outputs%2F..%2F..%2F{jid}%2Fend.json",
            "/api/inputs/..%2F..%2F.ncaas%2Fjobs.sqlite",
            "/api/configs/..%2Fx.json",
        ):
            resp = http.get(url)
            assert resp.status_code in (400, 404), (url, resp.text)
            assert set(resp.json()) == {"error"}  # a clean refusal, never the file
        assert http.put("/api/configs/..%2F..%2Fpwn.json", json={}).status_code in (400, 404)
        assert http.put("/api/configs/%2E%2E", json={}).status_code in (400, 404)
        assert http.put("/api/configs/.. .json", json={}).status_code == 200  # an odd but harmless name
    assert not (site.root / "pwn.json").exists()


def test_symlinks_leading_out_are_refused(site, job):
    secret = site.base / "secret.txt"
    secret.write_text("not yours")
    (site.root / "lab" / "inputs" / "link.txt").symlink_to(secret)
    results = site.root / "lab" / "results" / job["id"] / "outputs" / "a.npy"
    (results / "leak.txt").symlink_to(secret)
    try:
        with _http(site, site.ann) as http:
            resp = http.get("/api/inputs/link.txt")
            assert resp.status_code == 400 and "symbolic link" in resp.json()["error"]
            assert http.get(f"/api/jobs/{job['id']}/files/outputs/a.npy/leak.txt").status_code in (400, 404)
            names = zipfile.ZipFile(io.BytesIO(http.get(f"/api/jobs/{job['id']}/results.zip").content)).namelist()
            assert "outputs/a.npy/leak.txt" not in names
            assert "outputs/a.npy/leak.txt" not in {f["path"] for f in http.get(f"/api/jobs/{job['id']}/files").json()}
    finally:
        (site.root / "lab" / "inputs" / "link.txt").unlink()
        (results / "leak.txt").unlink()


# -- uploads ----------------------------------------------------------------------------------
def test_malformed_and_oversized_uploads_are_refused_cleanly(site):
    with _http(site, site.ann) as http:
        resp = http.post("/api/uploads", json={"path": "big.bin", "size": MAX_UPLOAD + 1})
        assert resp.status_code == 413 and "accepts uploads up to 1000000 bytes" in resp.json()["error"]
        for body, why in (
            ({"path": "x.bin", "size": -1}, "non-negative"),
            ({"path": "x.bin", "size": "ten"}, "size"),
            ({"path": "x.bin"}, "size"),
            ({"path": "x.bin", "size": 1, "sha256": "xyz"}, "64 hexadecimal"),
            ({"path": "x.bin", "size": 1, "crc32c": "0x12345678"}, "8 hexadecimal"),
        ):
            resp = http.post("/api/uploads", json=body)
            assert resp.status_code == 400 and why in resp.json()["error"], (body, resp.text)
        resp = http.put(
            "/api/configs/huge.json",
            content=b'{"x": "' + b"y" * (17 << 20) + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code == 413 and "over 16777216 bytes" in resp.json()["error"]
        resp = http.put(
            "/api/configs/huge.json",
            content=iter([b'{"x": "', b"y" * (17 << 20), b'"}']),
            headers={"Content-Type": "application/json"},
        )  # chunked: no length announced
        assert resp.status_code == 413 and "over 16777216 bytes" in resp.json()["error"]
        resp = http.post("/api/uploads", content=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and "malformed request" in resp.json()["error"]

        up = http.post("/api/uploads", json={"path": "u/data.bin", "size": 10}).json()
        uid = up["id"]
        resp = http.put(f"/api/uploads/{uid}?offset=0", content=b"x" * 11)  # more than declared
        assert resp.status_code == 413 and "10 more bytes" in resp.json()["error"]
        resp = http.put(f"/api/uploads/{uid}?offset=0", content=iter([b"x" * 6, b"x" * 6]))  # chunked, too long
        assert resp.status_code == 413
        assert http.get(f"/api/uploads/{uid}").json()["offset"] == 0
        for header, wrong in (("X-Chunk-SHA256", "0" * 64), ("X-Chunk-CRC32C", _crc(b"01235"))):
            resp = http.put(f"/api/uploads/{uid}?offset=0", content=b"01234", headers={header: wrong})
            assert resp.status_code == 422 and "arrived corrupted" in resp.json()["error"], header
            assert http.get(f"/api/uploads/{uid}").json()["offset"] == 0
        resp = http.put(f"/api/uploads/{uid}?offset=0", content=b"01234", headers={"X-Chunk-CRC32C": "nothex!!"})
        assert resp.status_code == 400 and "8 hexadecimal" in resp.json()["error"]
        resp = http.put(f"/api/uploads/{uid}?offset=0", content=b"01234", headers={"X-Chunk-CRC32C": _crc(b"01234")})
        assert resp.json()["offset"] == 5
        resp = http.put(f"/api/uploads/{uid}?offset=0", content=b"01234")
        assert resp.status_code == 409 and resp.json()["offset"] == 5
        resp = http.post(f"/api/uploads/{uid}/complete", json={})
        assert resp.status_code == 409 and "5 of 10 bytes" in resp.json()["error"]
        assert http.put(f"/api/uploads/{uid}?offset=-1", content=b"5").status_code == 400
        assert http.put(f"/api/uploads/{uid}?offset=5", content=b"56789").json()["offset"] == 10
        resp = http.post(f"/api/uploads/{uid}/complete", json={"crc32c": _crc(b"0123456788")})
        assert resp.status_code == 422 and "CRC-32C" in resp.json()["error"] and "discarded" in resp.json()["error"]
        assert http.get(f"/api/uploads/{uid}").status_code == 404
        assert not (site.root / "lab" / "inputs" / "u" / "data.bin").exists()
        # A SHA-256 given only on completion is checked too (from a second read of the file).
        uid = http.post("/api/uploads", json={"path": "u/data.bin", "size": 10}).json()["id"]
        assert http.put(f"/api/uploads/{uid}?offset=0", content=b"0123456789").json()["offset"] == 10
        resp = http.post(f"/api/uploads/{uid}/complete", json={"sha256": "f" * 64})
        assert resp.status_code == 422 and "SHA-256" in resp.json()["error"] and "discarded" in resp.json()["error"]
        assert not (site.root / "lab" / "inputs" / "u" / "data.bin").exists()
        assert http.get("/api/uploads/not-an-id").status_code == 404

        up = http.post(
            "/api/uploads", json={"path": "u/data.bin", "size": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}
        ).json()
        http.put(f"/api/uploads/{up['id']}?offset=0", content=b"0123456789")
        done = http.post(f"/api/uploads/{up['id']}/complete").json()
        assert done["complete"] and done["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
        assert done["crc32c"] == _crc(b"0123456789")
        assert (site.root / "lab" / "inputs" / "u" / "data.bin").read_bytes() == b"0123456789"
        resp = http.post("/api/uploads", json={"path": "u/data.bin", "size": 1})
        assert resp.status_code == 409 and "overwrite" in resp.json()["error"]
        resp = http.post("/api/uploads", json={"path": "u", "size": 1, "overwrite": True})
        assert resp.status_code == 409 and "folder" in resp.json()["error"]


def _interrupted_put(site, upload_id: str, data: bytes, sent: int) -> None:
    """Send headers announcing all of ``data`` but only ``sent`` bytes, then drop the connection."""
    sock = socket.create_connection(("127.0.0.1", site.server.port))
    head = (
        f"PUT /api/uploads/{upload_id}?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {site.ann}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock.sendall(head + data[:sent])
    time.sleep(0.3)
    sock.close()


def test_an_interrupted_upload_is_resumed_where_it_stopped(site):
    data = os.urandom(600_000)
    local = site.base / "resume.bin"
    local.write_bytes(data)
    c = site.ann_client
    up = c._json("POST", "/api/uploads", json={"path": "resume.bin", "size": len(data)})
    _interrupted_put(site, up["id"], data, 250_000)
    deadline = time.monotonic() + 10
    while c._json("GET", f"/api/uploads/{up['id']}")["offset"] != 250_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c._json("GET", f"/api/uploads/{up['id']}")["offset"] == 250_000
    sent = []
    done = c.upload_file(local, "resume.bin", progress=lambda n, total: sent.append(n))
    assert sent[0] > 250_000 and sent[-1] == len(data)  # only the missing part was sent again
    assert done["crc32c"] == _crc(data) and done["sha256"] is None  # no SHA-256 asked for: none computed
    assert (site.root / "lab" / "inputs" / "resume.bin").read_bytes() == data


@pytest.fixture(scope="module", params=["direct", "page-cache"])
def roomy(tmp_path_factory, request):
    """A server that takes uploads of tens of MB (many 4 MiB blocks per request), writing them
    with O_DIRECT where the file system allows it, or through the page cache."""
    base = tmp_path_factory.mktemp("roomy")
    root = base / "root"
    token = storage_with_user(root)
    env = {"NCAAS_UPLOAD_DIRECT_IO": "0"} if request.param == "page-cache" else None
    with ServerProcess(root, max_upload="100MB", env=env) as server:
        yield type("Roomy", (), {"server": server, "root": root, "base": base, "ann": token})()
        assert "Traceback" not in server.log(), server.log()


def test_a_large_upload_interrupted_mid_block_resumes_byte_exact(roomy):
    data = os.urandom(40 << 20)
    local = roomy.base / "large.bin"
    local.write_bytes(data)
    with Client(roomy.server.url, roomy.ann) as c:
        up = c._json("POST", "/api/uploads", json={"path": "large.bin", "size": len(data)})
        sent = (9 << 20) + 123  # two whole blocks and part of a third, not a multiple of a disk block
        _interrupted_put(roomy, up["id"], data, sent)
        deadline = time.monotonic() + 20
        while c._json("GET", f"/api/uploads/{up['id']}")["offset"] != sent and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c._json("GET", f"/api/uploads/{up['id']}")["offset"] == sent  # everything that arrived was kept
        progress = []
        done = c.upload_file(local, "large.bin", progress=lambda n, total: progress.append(n))
    assert progress[0] > sent and progress[-1] == len(data)
    assert done["crc32c"] == _crc(data)
    assert (roomy.root / "lab" / "inputs" / "large.bin").read_bytes() == data


def test_a_large_chunk_with_a_wrong_checksum_leaves_no_trace(roomy):
    data = os.urandom(10 << 20)
    with _http(roomy, roomy.ann) as http:
        up = http.post("/api/uploads", json={"path": "chunked.bin", "size": len(data)}).json()
        first = data[:1000]
        http.put(
            f"/api/uploads/{up['id']}?offset=0",
            content=first,
            headers={"X-Chunk-SHA256": hashlib.sha256(first).hexdigest()},
        )
        resp = http.put(
            f"/api/uploads/{up['id']}?offset=1000",
            content=data[1000:],
            headers={"X-Chunk-SHA256": hashlib.sha256(b"other bytes").hexdigest()},
        )
        assert resp.status_code == 422 and "arrived corrupted" in resp.json()["error"]
        assert http.get(f"/api/uploads/{up['id']}").json()["offset"] == 1000
        part = roomy.root / "lab" / ".uploads" / f"{up['id']}.part"
        assert part.stat().st_size == 1000
        resp = http.put(
            f"/api/uploads/{up['id']}?offset=1000",
            content=data[1000:],
            headers={"X-Chunk-SHA256": hashlib.sha256(data[1000:]).hexdigest()},
        )
        assert resp.json()["offset"] == len(data)
        done = http.post(f"/api/uploads/{up['id']}/complete", json={"sha256": hashlib.sha256(data).hexdigest()}).json()
    assert done["complete"] and (roomy.root / "lab" / "inputs" / "chunked.bin").read_bytes() == data


def test_concurrent_uploads_each_arrive_byte_exact(roomy):
    """Uploads at the same time share the server's write buffers; none may see another's bytes."""
    from concurrent.futures import ThreadPoolExecutor

    sizes = [(9 << 20) + 4097, (6 << 20) + 1, 13 << 20, 4095]
    datasets = {f"together-{i}.bin": os.urandom(n) for i, n in enumerate(sizes)}
    for name, data in datasets.items():
        (roomy.base / name).write_bytes(data)

    def send(name: str) -> dict:
        with Client(roomy.server.url, roomy.ann) as c:
            return c.upload_file(roomy.base / name, name)

    with ThreadPoolExecutor(len(datasets)) as pool:
        done = dict(zip(datasets, pool.map(send, datasets), strict=True))
    for name, data in datasets.items():
        assert done[name]["crc32c"] == _crc(data), name
        assert (roomy.root / "lab" / "inputs" / name).read_bytes() == data, name


def test_uploads_through_an_httpx_transport_stream_the_file_too(roomy):
    """Over TLS, a proxy or a given transport, the client streams with httpx instead of sendfile."""
    data = os.urandom((5 << 20) + 7)
    local = roomy.base / "via-httpx.bin"
    local.write_bytes(data)
    with Client(roomy.server.url, roomy.ann, transport=httpx.HTTPTransport()) as c:
        assert not c._direct
        progress = []
        done = c.upload_file(local, "via-httpx.bin", progress=lambda n, total: progress.append(n))
    assert len(progress) == 2 and progress[-1] == len(data)  # one progress step per 4 MiB read
    assert done["crc32c"] == _crc(data)
    assert (roomy.root / "lab" / "inputs" / "via-httpx.bin").read_bytes() == data


def test_a_folder_is_uploaded_as_one_multi_session_dataset(site):
    exp = site.base / "exp1"
    for session in ("s1", "s2"):
        (exp / session).mkdir(parents=True)
        (exp / session / "movie.npy").write_bytes(_npy(seed=3))
    (exp / "empty.txt").write_bytes(b"")
    (exp / "s1" / ".DS_Store").write_bytes(b"Bud1")  # clutter stays behind, and the caller hears of it
    (exp / ".git").mkdir()
    (exp / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    left_out = []
    assert site.ann_client.upload_dataset(exp, left_out=left_out.append) == "exp1"
    assert left_out == [[".git/", "s1/.DS_Store"]]
    listed = {d["name"]: d for d in site.ann_client.inputs()}
    assert listed["exp1"]["kind"] == "folder" and listed["exp1"]["files"] == 3
    assert not (site.root / "lab" / "inputs" / "exp1" / "s1" / ".DS_Store").exists()
    assert (site.root / "lab" / "inputs" / "exp1" / "s2" / "movie.npy").read_bytes() == _npy(seed=3)
    movie = {"path": "s1/movie.npy", "size": len(_npy(seed=3))}
    info = site.ann_client.input_info("exp1")
    assert info["kind"] == "folder" and info["contents"][1] == movie and "sha256" not in info["contents"][1]
    summed = site.ann_client.input_info("exp1", checksums=True)["contents"]
    assert [e["path"] for e in summed] == ["empty.txt", "s1/movie.npy", "s2/movie.npy"]
    assert summed[1] == {**movie, "sha256": hashlib.sha256(_npy(seed=3)).hexdigest()}


# -- configs and jobs -------------------------------------------------------------------------
def test_configs_are_checked_against_the_schema(site):
    with _http(site, site.ann) as http:
        resp = http.put("/api/configs/bad.json?analysis=framestats", json={"batch_frames": 0, "colour": 1})
        assert resp.status_code == 400
        problems = resp.json()["problems"]
        assert any("'batch_frames'" in p and ">= 1" in p for p in problems)
        assert any("'colour'" in p and "unknown option" in p for p in problems)
        assert http.put("/api/configs/ok.yaml?analysis=framestats", json={"batch_frames": 3}).status_code == 200
        assert http.get("/api/configs/ok.yaml").json() == {"batch_frames": 3}
        assert http.put("/api/configs/x.txt", json={}).status_code == 400
        assert (
            http.put("/api/configs/y.json", content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code
            == 400
        )


def test_a_rejected_submission_says_why(site, job):
    with _http(site, site.ann) as http:
        resp = http.post(
            "/api/jobs",
            json={"analysis": "framestats", "datasets": ["a.npy", "missing.npy"], "config": {"batch_frames": -2}},
        )
        assert resp.status_code == 400
        body = resp.json()
        assert any("missing.npy" in p for p in body["problems"])
        assert any("batch_frames" in p for p in body["problems"])
        assert http.get(f"/api/jobs/{body['job']['id']}").json()["state"] == "rejected"
        assert http.post("/api/jobs", json={"analysis": "framestats", "datasets": []}).status_code == 400
        resp = http.post("/api/jobs", json={"analysis": "framestats", "datasets": ["a.npy"], "confg": {}})
        assert resp.status_code == 400 and "confg: Extra inputs are not permitted" in resp.json()["error"]


def test_job_list_detail_logs_story_and_certificate(site, job):
    c = site.ann_client
    assert job["id"] in {j["id"] for j in c.jobs()}
    detail = c.job(job["id"])
    assert [t["dataset"] for t in detail["tasks"]] == ["a.npy", "b.npy"]
    assert all(t["state"] == "succeeded" and t["progress"] == 1.0 and t["exit_code"] == 0 for t in detail["tasks"])
    assert detail["config"]["batch_frames"] == 4
    assert "NCAAS_PROGRESS 1.000" in c.log(job["id"], "a.npy")
    log = c.log_bytes(job["id"], "a.npy")
    assert c.log_bytes(job["id"], "a.npy", offset=10) == log[10:]
    assert [e["to_state"] for e in c.story(job["id"]) if e["dataset"] == "a.npy"] == ["queued", "running", "succeeded"]
    cert = c.certificate(job["id"])
    assert {t["dataset"] for t in cert["tasks"]} == {"a.npy", "b.npy"}
    assert "certificate" in c.certificate(job["id"], text=True)
    with _http(site, site.ann) as http:
        assert http.get(f"/api/jobs/{job['id']}/logs/nope.npy").status_code == 404
        assert http.get(f"/api/jobs/{job['id']}/certificate?format=xml").status_code == 400


def test_results_zip_holds_every_result_file_exactly(site, job):
    c = site.ann_client
    archive = c.download_zip(job["id"], site.base / "results.zip")
    files = {f["path"]: f["size"] for f in c.files(job["id"])}
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert set(zf.namelist()) == set(files)
        for name in ("outputs/a.npy/a.stats.csv", "certificate.json", "logs/b.npy.log"):
            single = c.download_file(job["id"], name, site.base / "single" / name).read_bytes()
            assert zf.read(name) == single and len(single) == files[name]
    to = c.download_results(job["id"], site.base / "unpacked")
    assert (to / "end.json").exists() and (to / "outputs" / "b.npy" / "b.stats.csv").exists()


def test_qc_images_are_listed_and_served(site, qc_job):
    images = site.ann_client.qc(qc_job["id"])
    assert [i["path"] for i in images] == ["outputs/a.npy/qc/mean.png"]
    with _http(site, site.ann) as http:
        resp = http.get(f"/api/jobs/{qc_job['id']}/files/outputs/a.npy/qc/mean.png")
    assert resp.headers["content-type"] == "image/png" and resp.content.startswith(b"\x89PNG")


def test_live_events_stream_progress_and_logs_until_the_end(site, job):
    c = site.ann_client
    detail = c.submit("framestats", ["a.npy"], config={"batch_frames": 2, "sleep_per_frame": 0.15})
    seen = {"status": [], "log": "", "end": None}
    for event, data in c.events(detail["id"]):
        if event == "status":
            seen["status"].append(data)
        elif event == "log":
            seen["log"] += data["text"]
        elif event == "end":
            seen["end"] = data
    progress = [s["tasks"][0]["progress"] for s in seen["status"] if s["state"] == "running"]
    assert any(0 < p < 1 for p in progress), progress
    assert progress == sorted(progress)
    assert "NCAAS_PROGRESS 0.500" in seen["log"] and "NCAAS_PROGRESS 1.000 done" in seen["log"]
    assert seen["end"]["state"] == "succeeded" and seen["end"]["finished"]


def test_cancel_stops_a_running_job_within_seconds(site, job):
    c = site.ann_client
    detail = c.submit("framestats", ["b.npy"], config={"hang": True})
    deadline = time.monotonic() + 60
    while c.job(detail["id"])["tasks"][0]["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    asked = time.monotonic()
    assert c.cancel(detail["id"])["id"] == detail["id"]
    final = c.wait(detail["id"])
    assert final["state"] == "cancelled" and final["tasks"][0]["state"] == "cancelled"
    assert time.monotonic() - asked < 20


def test_download_tickets_open_one_jobs_urls_only(site, job, qc_job):
    with _http(site, site.ann) as http:
        ticket = http.post("/api/tickets", json={"path": f"/api/jobs/{job['id']}/"}).json()["ticket"]
        assert http.post("/api/tickets", json={"path": "/api/uploads/"}).status_code == 400
    with _http(site, None) as anon:
        resp = anon.get(f"/api/jobs/{job['id']}/results.zip", params={"ticket": ticket})
        assert resp.status_code == 200 and resp.content.startswith(b"PK")
        assert anon.get(f"/api/jobs/{qc_job['id']}/qc", params={"ticket": ticket}).status_code == 401
        assert anon.get("/api/inputs", params={"ticket": ticket}).status_code == 401
        forged = ticket[:-3] + ("AAA" if not ticket.endswith("AAA") else "BBB")
        assert anon.get(f"/api/jobs/{job['id']}/results.zip", params={"ticket": forged}).status_code == 401


def test_the_web_page_is_served_without_a_build_step(site):
    with _http(site, None) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
        for asset in ("/static/app.js", "/static/style.css"):
            assert anon.get(asset).status_code == 200
        assert anon.get("/static/../../server/app.py").status_code == 404
        assert anon.get("/docs").status_code == 200


def test_unfinished_uploads_left_for_days_are_dropped(site, tmp_path):
    from ncaas.server.uploads import Uploads

    up = site.ann_client._json("POST", "/api/uploads", json={"path": "forgotten.bin", "size": 5})
    part = site.root / "lab" / ".uploads" / f"{up['id']}.part"
    assert part.exists()
    os.utime(part, (0, 0))  # untouched since 1970
    engine = create_engine(default_database_url(str(site.root)))
    uploads = Uploads(
        engine,
        resolve_input=lambda g, p: site.root / g / "inputs" / p,
        scratch_dir=lambda g: site.root / g / ".uploads",
        max_bytes=MAX_UPLOAD,
    )
    assert uploads.purge_stale(7 * 86400) == 1
    engine.dispose()
    assert not part.exists()
    assert up["id"] not in {u["id"] for u in site.ann_client._json("GET", "/api/uploads")}


def test_a_resumed_upload_never_mixes_in_other_bytes(site):
    data = os.urandom(300_000)
    local = site.base / "mixed.bin"
    local.write_bytes(data)
    with _http(site, site.cat) as http:  # a colleague's unfinished upload of another file, same name and size
        theirs = http.post("/api/uploads", json={"path": "mixed.bin", "size": len(data)}).json()
        http.put(f"/api/uploads/{theirs['id']}?offset=0", content=b"c" * 1000)
    with _http(site, site.ann) as http:  # and one of ann's own, interrupted, of different bytes
        stale = http.post("/api/uploads", json={"path": "mixed.bin", "size": len(data)}).json()
        http.put(f"/api/uploads/{stale['id']}?offset=0", content=b"a" * 1000)
    done = site.ann_client.upload_file(local, "mixed.bin")
    assert done["crc32c"] == _crc(data) and done["id"] not in (theirs["id"], stale["id"])
    assert (site.root / "lab" / "inputs" / "mixed.bin").read_bytes() == data
    pending = {u["id"]: u for u in site.ann_client._json("GET", "/api/uploads")}
    assert pending[theirs["id"]]["user"] == "cat" and stale["id"] not in pending  # the bad resume was discarded


def test_a_database_from_before_upload_crc32c_is_brought_up_to_date(tmp_path):
    """A server database whose uploads table lacks the CRC-32C columns gets them; its rows stay valid."""
    from ncaas.server.accounts import Principal
    from ncaas.server.uploads import Uploads

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                'CREATE TABLE server_uploads (id VARCHAR(32) PRIMARY KEY, "group" VARCHAR(64), user VARCHAR(64), '
                "path VARCHAR(1024), size BIGINT, sha256 VARCHAR(64), overwrite BOOLEAN, created_ms BIGINT, "
                "completed_ms BIGINT, final_sha256 VARCHAR(64))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO server_uploads VALUES ('" + "a" * 32 + "', 'lab', 'ann', 'old.bin', 3, "
                "NULL, 0, 0, 1, '" + "b" * 64 + "')"
            )
        )
    uploads = Uploads(
        engine,
        resolve_input=lambda g, p: tmp_path / g / "inputs" / p,
        scratch_dir=lambda g: tmp_path / g / ".uploads",
        max_bytes=100,
    )
    ann = Principal(user="ann", group="lab", token_id="t1")
    old = uploads.get(ann, "a" * 32)
    assert old.complete and old.sha256 == "b" * 64 and old.crc32c is None
    new = uploads.create(ann, path="new.bin", size=3, crc32c=_crc(b"abc"))
    assert new.offset == 0 and not new.complete
    engine.dispose()

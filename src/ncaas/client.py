"""A client for an ncaas server: the same operations the CLI runs embedded.

Errors from the server (``{"error": ...}`` bodies) and from the network become
:class:`ServerRequestError`, an :class:`~ncaas.exceptions.NcaasError` whose
message says what happened and what to do, so the CLI renders them like any
other error.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from crc32c import CRC32CHash

from .exceptions import JobNotFound, NcaasError, SubmissionRejected
from .storage.localfolder import folder_files

__all__ = ["Client", "ServerRequestError"]

_BLOCK = 4 << 20
_SLICE = 8 << 20  # bytes handed to the kernel per sendfile call: the progress granularity
_RETRIES = 5


class _SendFailed(Exception):
    """An upload request could not be delivered (the connection failed); it is retried."""


class ServerRequestError(NcaasError):
    """The server refused a request, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class _FileChecksum:
    """The CRC-32C of a whole file, computed by a background thread while the file is sent.

    Reading and checksumming (crc32c releases the GIL) run beside the sending,
    which reads the file on its own (zero-copy where possible), so neither waits
    for the other. A file changed during its upload checksums differently from
    the bytes the server received, and the server refuses it on completion.
    """

    def __init__(self, path: Path):
        self.path = path
        self._crc = CRC32CHash()
        self._error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ncaas-upload-checksum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(_BLOCK)
        view = memoryview(buf)
        try:
            with open(self.path, "rb", buffering=0) as f:
                while not self._stop.is_set() and (n := f.readinto(buf)):
                    self._crc.update(view[:n])
        except OSError as exc:
            self._error = exc

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise NcaasError(f"cannot read {self.path}: {self._error}") from self._error
        return self._crc.hexdigest()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _read_blocks(path: Path, start: int) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while block := f.read(_BLOCK):
                yield block
    except OSError as exc:
        raise NcaasError(f"cannot read {path}: {exc}") from exc


class Client:
    """Talks to one ncaas server as one user (``token``).

    Parameters
    ----------
    url
        The server, e.g. ``http://127.0.0.1:8080``.
    token
        An API token (``ncaas admin issue-token USER`` prints one).
    transport
        An httpx transport, e.g. ``httpx.ASGITransport(app)`` to talk to an
        app in the same process.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        if not url.startswith(("http://", "https://")):
            raise NcaasError(f"server URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._user: str | None = None
        # Upload bodies go straight from the file to the socket over plain HTTP without a proxy;
        # through TLS, a proxy or a given transport, httpx sends them.
        host = httpx.URL(self.url).host
        self._direct = (
            transport is None
            and self.url.startswith("http://")
            and not (urllib.request.getproxies().get("http") and not urllib.request.proxy_bypass(host))
        )
        self.http = httpx.Client(
            base_url=self.url,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _raise_for(self, resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {"error": resp.text[:500] or resp.reason_phrase}
        message = body.get("error") or f"HTTP {resp.status_code}"
        if resp.status_code == 400 and body.get("problems"):
            raise SubmissionRejected(body["problems"], job=body.get("job"))
        if resp.status_code == 404 and resp.request.url.path.startswith(("/api/jobs/", "/api/chains/")):
            raise JobNotFound(message)
        raise ServerRequestError(
            f"the server refused {resp.request.method} {resp.request.url.path}: {message}",
            status=resp.status_code,
            body=body,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerRequestError(
                f"cannot reach the ncaas server at {self.url}: {exc}; check the URL and that `ncaas serve` is running"
            ) from exc
        self._raise_for(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        return None if resp.status_code == 204 else resp.json()

    # -- account and analyses --------------------------------------------------------------
    def me(self) -> dict:
        return self._json("GET", "/api/me")

    def analyses(self) -> list[dict]:
        return self._json("GET", "/api/analyses")

    # -- datasets and configs --------------------------------------------------------------
    def inputs(self) -> list[dict]:
        return self._json("GET", "/api/inputs")

    def input_info(self, name: str, *, checksums: bool = False) -> dict:
        """Kind, size and (for a file) SHA-256 of a dataset in inputs/; a folder's ``contents``
        list each file's path and size, and its SHA-256 with ``checksums=True``."""
        return self._json("GET", f"/api/inputs/{name}", params={"checksums": "true"} if checksums else None)

    def upload_file(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        overwrite: bool = False,
        sha256: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Upload one file to ``inputs/<remote>``, resuming an unfinished upload of it.

        The body is streamed (constant memory, any size); a CRC-32C of the whole
        file is computed while sending and checked by the server. A ``sha256``
        known beforehand (from a data repository, say) is checked too: the server
        computes it as the bytes arrive, and refuses the file if it differs. A
        dropped connection is retried from the offset the server reports.
        """
        local = Path(local)
        size = local.stat().st_size
        if self._user is None:
            self._user = self.me()["user"]
        pending = [
            u
            for u in self._json("GET", "/api/uploads")
            if u["path"] == remote and u["size"] == size and u["user"] == self._user
        ]
        if pending:
            try:
                return self._send_file(local, pending[0], size, progress, sha256)
            except ServerRequestError as exc:
                if exc.status != 422:  # the resumed bytes were not from this file: start afresh
                    raise
        announce = {"path": remote, "size": size, "overwrite": overwrite}
        if sha256 is not None:
            announce["sha256"] = sha256
        up = self._json("POST", "/api/uploads", json=announce)
        return self._send_file(local, up, size, progress, sha256)

    def _send_file(
        self, local: Path, up: dict, size: int, progress: Callable[[int, int], None] | None, sha256: str | None = None
    ) -> dict:
        whole = _FileChecksum(local)
        try:
            offset, failures = up["offset"], 0
            while offset < size:
                try:
                    resp = self._put_range(local, up["id"], offset, size, progress)
                    self._raise_for(resp)
                    offset = resp.json()["offset"]
                except (_SendFailed, ServerRequestError) as exc:
                    status = getattr(exc, "status", None)
                    if status is not None and status not in (409, 500, 502, 503) or failures >= _RETRIES:
                        if isinstance(exc, _SendFailed):
                            raise ServerRequestError(f"uploading {local} failed: {exc}") from exc
                        raise
                    failures += 1
                    time.sleep(0.2 * failures)
                    offset = self._json("GET", f"/api/uploads/{up['id']}")["offset"]
            digest = whole.hexdigest()
        finally:
            whole.stop()
        check = {"crc32c": digest} | ({"sha256": sha256} if sha256 is not None else {})
        return self._json("POST", f"/api/uploads/{up['id']}/complete", json=check)

    def _put_range(
        self, local: Path, upload_id: str, offset: int, size: int, progress: Callable[[int, int], None] | None
    ) -> httpx.Response:
        """``PUT`` bytes ``offset..size`` of ``local``; a failure to deliver raises :class:`_SendFailed`."""
        path = f"/api/uploads/{upload_id}"
        headers = {"Content-Length": str(size - offset), "Content-Type": "application/octet-stream"}
        if self._direct:
            return self._put_sendfile(local, path, offset, size, headers, progress)

        def body() -> Iterator[bytes]:
            sent = offset
            for block in _read_blocks(local, offset):
                sent += len(block)
                yield block
                if progress:
                    progress(sent, size)

        try:
            return self.http.put(
                path,
                params={"offset": offset},
                content=body(),
                headers=headers,
                timeout=httpx.Timeout(300.0, connect=10.0),
            )
        except httpx.TransportError as exc:
            raise _SendFailed(str(exc)) from exc

    def _put_sendfile(
        self,
        local: Path,
        path: str,
        offset: int,
        size: int,
        headers: dict[str, str],
        progress: Callable[[int, int], None] | None,
    ) -> httpx.Response:
        """The ``PUT`` over a plain connection whose body goes from the file to the socket in the kernel
        (``socket.sendfile``): no copy through Python, which the uploader's CPU time shows
        (``benchmarks/server_load.py``)."""
        url = httpx.URL(self.url)
        target = f"{url.raw_path.decode().rstrip('/')}{path}?offset={offset}"
        conn = http.client.HTTPConnection(url.host, url.port, timeout=300.0)
        try:
            with open(local, "rb") as f:
                try:
                    conn.putrequest("PUT", target, skip_accept_encoding=True)
                    for name, value in {**headers, "Authorization": self.http.headers["Authorization"]}.items():
                        conn.putheader(name, value)
                    conn.endheaders()
                    sent = offset
                    while sent < size:
                        n = conn.sock.sendfile(f, sent, min(_SLICE, size - sent))
                        if n == 0:
                            raise NcaasError(f"{local} became shorter while it was uploaded; upload it again")
                        sent += n
                        if progress:
                            progress(sent, size)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    # The server may have refused the request before reading the body: its answer says why.
                    try:
                        answer = conn.getresponse()
                    except (OSError, http.client.HTTPException):
                        raise _SendFailed(str(exc)) from exc
                else:
                    answer = conn.getresponse()
                content = answer.read()
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
                raise NcaasError(f"cannot read {local}: {exc.strerror}") from exc
            raise _SendFailed(str(exc)) from exc
        except http.client.HTTPException as exc:
            raise _SendFailed(str(exc)) from exc
        finally:
            conn.close()
        return httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            content=content,
            request=httpx.Request("PUT", f"{self.url}{path}?offset={offset}"),
        )

    def upload_dataset(
        self,
        local: str | os.PathLike[str],
        name: str | None = None,
        *,
        overwrite: bool = False,
        left_out: Callable[[list[str]], None] | None = None,
    ) -> str:
        """Upload a file or a whole folder as one dataset; returns its name in inputs/.

        Hidden files and system clutter found in a folder (``.DS_Store``, ``._*``, ``.git/``,
        ``Thumbs.db``, see :mod:`ncaas.storage.localfolder`) stay behind; ``left_out`` is called with
        their paths relative to the folder before the upload starts, when there are any.
        """
        local = Path(local)
        name = name or local.name
        if local.is_dir():
            found = folder_files(local)
            if found.left_out and left_out is not None:
                left_out(found.left_out)
            for file in found.files:
                self.upload_file(file, f"{name}/{found.relative(file)}", overwrite=overwrite)
        elif local.is_file():
            self.upload_file(local, name, overwrite=overwrite)
        else:
            raise NcaasError(f"{local} does not exist; give a file or a folder to upload")
        return name

    def configs(self) -> list[str]:
        return self._json("GET", "/api/configs")

    def config(self, name: str) -> dict:
        return self._json("GET", f"/api/configs/{name}")

    def save_config(self, name: str, config: dict, *, analysis: str | None = None) -> dict:
        params = {"analysis": analysis} if analysis else None
        return self._json("PUT", f"/api/configs/{name}", json=config, params=params)

    # -- jobs ------------------------------------------------------------------------------
    def submit(
        self,
        analysis: str,
        datasets: list[str],
        *,
        configname: str | None = None,
        config: dict | None = None,
        name: str | None = None,
        pricing: str | None = None,
    ) -> dict:
        body = {
            "analysis": analysis,
            "datasets": datasets,
            "configname": configname,
            "config": config,
            "name": name,
            "pricing": pricing,
        }
        return self._json("POST", "/api/jobs", json={k: v for k, v in body.items() if v is not None})

    # -- cost ------------------------------------------------------------------------------
    def estimate(
        self,
        analysis: str,
        *,
        datasets: list[str] | None = None,
        sizes: list[int] | None = None,
        pricing: str = "standard",
    ) -> dict:
        body = {"analysis": analysis, "datasets": datasets or [], "sizes": sizes or [], "pricing": pricing}
        return self._json("POST", "/api/estimate", json=body)

    def spend(self, *, by: list[str], period: str = "month", since_ms: int | None = None) -> list[dict]:
        params: dict[str, Any] = {"by": ",".join(by), "period": period}
        if since_ms is not None:
            params["since_ms"] = since_ms
        return self._json("GET", "/api/cost", params=params)

    def budget(self) -> dict | None:
        return self._json("GET", "/api/budget").get("budget")

    def jobs(self, *, limit: int = 200) -> list[dict]:
        return self._json("GET", "/api/jobs", params={"limit": limit})

    def story(self, job_id: str) -> list[dict]:
        """Every state transition of the job and its tasks, with cause and time."""
        return self._json("GET", f"/api/jobs/{job_id}/story")

    def rerun(self, job_id: str) -> dict:
        """Start a rerun of a finished job (same analysis version, config, inputs); returns the new job."""
        return self._json("POST", f"/api/jobs/{job_id}/rerun")

    def rerun_certificate(self, certificate: dict) -> dict:
        """Start a rerun from a certificate.json the server wrote (it checks the signature first)."""
        return self._json("POST", "/api/rerun", json=certificate)

    def compare(self, job_id: str, certificate: dict) -> list[dict]:
        """File-by-file verdicts of job ``job_id``'s outputs against ``certificate``'s (one the server signed)."""
        return self._json("POST", f"/api/jobs/{job_id}/compare", json=certificate)

    def compare_jobs(self, original_id: str, job_id: str) -> list[dict]:
        """File-by-file verdicts of job ``job_id``'s outputs against job ``original_id``'s."""
        return self._json("GET", f"/api/jobs/{job_id}/compare/{original_id}")

    def verdict(self, job_id: str) -> dict:
        """A rerun's verdict against the job it reruns: ``original``, ``rows``, ``summary`` and ``ok``."""
        return self._json("GET", f"/api/jobs/{job_id}/verdict")

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/api/jobs/{job_id}")

    # -- chains ----------------------------------------------------------------------------
    def submit_pipeline(
        self,
        datasets: list[str],
        *,
        pipeline: str | None = None,
        pipeline_yaml: str | None = None,
        name: str | None = None,
    ) -> dict:
        """Submit a chain: a pipeline saved in configs/ (or its YAML text) on datasets; returns the chain."""
        body = {"datasets": datasets, "pipeline": pipeline, "pipeline_yaml": pipeline_yaml, "name": name}
        return self._json("POST", "/api/chains", json={k: v for k, v in body.items() if v is not None})

    def chains(self, *, limit: int = 50) -> list[dict]:
        return self._json("GET", "/api/chains", params={"limit": limit})

    def chain(self, chain_id: str) -> dict:
        return self._json("GET", f"/api/chains/{chain_id}")

    def cancel_chain(self, chain_id: str) -> dict:
        return self._json("POST", f"/api/chains/{chain_id}/cancel")

    def rerun_chain(self, chain_id: str) -> dict:
        return self._json("POST", f"/api/chains/{chain_id}/rerun")

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/api/jobs/{job_id}/cancel")

    def log_bytes(self, job_id: str, dataset: str, *, offset: int = 0) -> bytes:
        """A dataset's log from byte ``offset`` on."""
        path = f"/api/jobs/{quote(job_id, safe='')}/logs/{quote(dataset, safe='')}"  # a key may hold '%'
        return self.request("GET", path, params={"offset": offset}).content

    def log(self, job_id: str, dataset: str, *, offset: int = 0) -> str:
        return self.log_bytes(job_id, dataset, offset=offset).decode("utf-8", "replace")

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """Server-sent events of a job, as ``(event, data)``, until it ends."""
        try:
            with self.http.stream(
                "GET", f"/api/jobs/{job_id}/events", timeout=httpx.Timeout(None, connect=10.0)
            ) as resp:
                if not resp.is_success:
                    resp.read()
                    self._raise_for(resp)
                event, data = "message", []
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        event, data = "message", []
        except httpx.TransportError as exc:
            raise ServerRequestError(f"lost the connection to {self.url}: {exc}") from exc

    def wait(self, job_id: str, *, on_status: Callable[[dict], None] | None = None) -> dict:
        """Follow a job's events until it ends; returns the final job detail."""
        last = self.job(job_id)
        if last.get("finished"):
            return last
        for event, data in self.events(job_id):
            if event in ("status", "end"):
                last = data
                if on_status:
                    on_status(data)
            if event == "end":
                break
        return last

    def files(self, job_id: str) -> list[dict]:
        return self._json("GET", f"/api/jobs/{job_id}/files")

    def download_file(self, job_id: str, path: str, dest: str | os.PathLike[str]) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", f"/api/jobs/{job_id}/files/{quote(path)}") as resp:
            self._save(resp, dest)
        return dest

    def _save(self, resp: httpx.Response, dest: Path) -> None:
        """Stream a download's body into ``dest`` (or raise the server's error)."""
        if not resp.is_success:
            resp.read()
            self._raise_for(resp)
        with open(dest, "wb") as f:
            for block in resp.iter_bytes(_BLOCK):
                f.write(block)

    def download_zip(self, job_id: str, dest: str | os.PathLike[str]) -> Path:
        """The job's whole results folder as one zip, streamed to ``dest``."""
        dest = Path(dest)
        try:
            with self.http.stream(
                "GET", f"/api/jobs/{job_id}/results.zip", timeout=httpx.Timeout(600.0, connect=10.0)
            ) as resp:
                self._save(resp, dest)
        except httpx.TransportError as exc:
            raise ServerRequestError(f"downloading the results of {job_id} failed: {exc}") from exc
        return dest

    def download_results(self, job_id: str, to: str | os.PathLike[str]) -> Path:
        """Download and unpack the job's results into ``to`` (created if needed)."""
        to = Path(to)
        to.mkdir(parents=True, exist_ok=True)
        archive = to / f".{job_id}.zip.part"
        self.download_zip(job_id, archive)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(to)
        finally:
            archive.unlink(missing_ok=True)
        return to

    def certificate(self, job_id: str, *, text: bool = False) -> dict | str:
        resp = self.request("GET", f"/api/jobs/{job_id}/certificate", params={"format": "txt" if text else "json"})
        return resp.text if text else resp.json()

    def qc(self, job_id: str) -> list[dict]:
        return self._json("GET", f"/api/jobs/{job_id}/qc")

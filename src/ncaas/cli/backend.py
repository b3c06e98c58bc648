"""What the CLI's commands need, answered embedded or by a server.

Each ``ncaas`` command is written once, against :class:`Backend`. Two implementations:
:class:`Embedded` acts on a storage root and job database on this machine (running jobs in
this process when asked to wait); :class:`Remote` asks an ``ncaas serve`` through
:class:`ncaas.client.Client`. Both return the plain dicts of :mod:`ncaas.jobs.describe`, which
the API returns as JSON, so a command prints the same thing whichever answers.
"""

from __future__ import annotations

import functools
import getpass
import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..blueprint import BlueprintRegistry
from ..client import Client
from ..cost.accounting import dataset_bytes
from ..cost.budgets import budget_status
from ..cost.report import spend_rows
from ..exceptions import JobNotFound, NcaasError, StorageError, SubmissionRejected
from ..jobs.db import JobDB
from ..jobs.describe import job_detail, job_story, job_summary
from ..jobs.manager import Manager
from ..jobs.states import JOB_TERMINAL
from ..provenance.certificate import load_certificate
from ..storage import Storage, check_group
from ..storage.localfolder import folder_files
from ..submission import submission_timestamp

__all__ = ["Backend", "Embedded", "LeftOut", "Remote", "describe_folder", "submission_name"]

LeftOut = Callable[[str, list[str]], None]
"""Told (dataset name, hidden paths) when files of a local folder are left out of an upload."""
OnStatus = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    """Everything a command asks of where jobs live."""

    def analyses(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The analyses this caller may run, and invalid blueprints found (path -> problem)."""

    def group(self, requested: str) -> str:
        """The group the caller acts for, given ``--group``."""

    def put_input(self, item: str, group: str, *, left_out: LeftOut) -> str:
        """Copy a local file or folder into the group's inputs (unless the same is there); its name."""

    def put_config(self, item: str, group: str) -> str:
        """Copy a local config into the group's configs (unless the same is there); its name."""

    def submit(
        self,
        group: str,
        analysis: str,
        datasets: list[str],
        configname: str | None,
        name: str,
        *,
        pricing: str = "standard",
    ) -> dict[str, Any]:
        """Submit a job; its detail. A rejection raises SubmissionRejected with ``job`` (id, results_dir)."""

    def estimate(
        self, group: str, analysis: str, datasets: list[str], sizes: list[int], pricing: str
    ) -> dict[str, Any]:
        """What a job would take and cost (``estimate`` None: no history), for stored datasets and sizes in bytes."""

    def spend(self, by: list[str], period: str, since_ms: int | None, group: str | None) -> list[dict[str, Any]]:
        """Spend rows (ncaas.cost.report); a server answers for the caller's group only."""

    def budget(self, group: str) -> dict[str, Any] | None:
        """The group's budget for this period, with its spend; None without one."""

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        """Recent jobs, newest first."""

    def notes(self) -> list[str]:
        """What the operator should know about the storage (folders skipped as no group)."""

    def job(self, ref: str) -> dict[str, Any]:
        """One job's detail (a unique id prefix is enough)."""

    def story(self, job_id: str) -> list[dict[str, Any]]:
        """Every state transition of the job and its tasks."""

    def log_bytes(self, job_id: str, dataset: str, offset: int) -> bytes:
        """A dataset's log from ``offset`` on."""

    def cancel(self, ref: str) -> dict[str, Any]:
        """Ask a job to stop; its detail."""

    def wait(self, job_id: str, on_status: OnStatus) -> dict[str, Any]:
        """Until the job is over (embedded: run it here); its final detail."""

    def files(self, job_id: str) -> list[dict[str, Any]]:
        """The job's result files: ``path`` (under its results folder) and ``size``."""

    def download(self, job_id: str, to: Path) -> None:
        """Copy the job's results folder to ``to``."""

    def rerun(self, ref: str, *, notify: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
        """Start a rerun of a job (id, or a certificate file the platform signed): (original id, new detail)."""

    def compare(self, job_id: str, original_id: str) -> list[dict[str, str]]:
        """File-by-file verdicts of a job's outputs against another job's (see ncaas.provenance.verdicts)."""

    def submit_pipeline(self, group: str, pipeline: str, datasets: list[str], name: str) -> dict[str, Any]:
        """Submit a chain (a pipeline in configs/ on datasets); its detail (ncaas.pipelines.runner.chain_detail)."""

    def chains(self, limit: int) -> list[dict[str, Any]]:
        """Recent chains, newest first."""

    def chain(self, ref: str) -> dict[str, Any] | None:
        """One chain's detail (a unique id prefix is enough); None when ``ref`` names no chain."""

    def wait_chain(self, chain_id: str, on_status: OnStatus) -> dict[str, Any]:
        """Until the chain is over (embedded: run it here); its final detail."""

    def cancel_chain(self, ref: str) -> dict[str, Any]:
        """Stop a chain: no further step starts, running ones are cancelled."""

    def rerun_chain(self, ref: str) -> dict[str, Any]:
        """Start a rerun of a finished chain; its detail."""


def submission_name(analysis: str) -> str:
    return f"{analysis}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def describe_folder(local: Path) -> list[dict[str, Any]]:
    """Relative path, size and sha256 of every file of a local folder that would be uploaded
    (hidden ones left out), as :meth:`Storage.describe_tree` describes a stored one."""
    found = folder_files(local)
    files = Storage(local.parent)
    return [
        {"path": found.relative(f), "size": files.size(str(f)), "sha256": files.sha256(str(f))} for f in found.files
    ]


def _read_config(local: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(local.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NcaasError(f"{local} is not valid YAML/JSON: {exc}") from None
    if not isinstance(config, dict):
        raise NcaasError(f"{local} must hold a mapping of option: value")
    return config


def _exists_differently(where: str, local: Path) -> StorageError:
    return StorageError(
        f"{where} already exists with different content; rename your local "
        f"{'folder' if local.is_dir() else 'file'} or submit the stored one by name"
    )


# -- embedded ---------------------------------------------------------------------------------
class Embedded:
    """A storage root and job database on this machine."""

    def __init__(self, root: str, db: str | None):
        self.root, self.db = root, db

    @functools.cached_property
    def storage(self) -> Storage:
        return Storage(self.root)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.storage.state_dir() / 'jobs.sqlite'}"

    @functools.cached_property
    def manager(self) -> Manager:
        """Opened on first use: listing analyses creates no state folder or database."""
        return Manager(self.storage, JobDB(self.db_url))

    def analyses(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        registry = BlueprintRegistry.discover()
        rows = [
            {
                "name": name,
                "version": bp.blueprint.version,
                "description": bp.blueprint.description,
                "sha256": bp.sha256,
                "path": str(bp.path),
            }
            for name, bp in ((n, registry.blueprints[n]) for n in registry.names())
        ]
        return rows, {str(path): problem for path, problem in registry.invalid.items()}

    def group(self, requested: str) -> str:
        return check_group(requested)

    def _same(self, target: str, local: Path) -> bool:
        """Whether a stored file or folder holds exactly what ``local`` holds (hidden files left out)."""
        if local.is_dir() != self.storage.isdir(target):
            return False
        if not local.is_dir():
            return Storage(local.parent).describe_tree(str(local.resolve())) == self.storage.describe_tree(target)
        mine = {f["path"]: (f["size"], f["sha256"]) for f in describe_folder(local)}
        # a link or FIFO stored in the folder has neither size nor sha256: never the same content
        return mine == {f["path"]: (f.get("size"), f.get("sha256")) for f in self.storage.describe_tree(target)}

    def _copy_in(self, item: str, group: str, area: str, left_out: LeftOut | None) -> str:
        local = Path(item)
        if not local.exists():
            return item  # a name already in storage; validation checks it
        name = local.resolve().name
        target = self.storage.resolve(group, area, name)
        if self.storage.exists(target):
            if not self._same(target, local):
                raise _exists_differently(f"{group}/{area}/{name}", local)
            return name
        if not local.is_dir():
            self.storage.put(local, target)
            return name
        found = folder_files(local)
        if found.left_out and left_out is not None:
            left_out(name, found.left_out)
        for file in found.files:
            self.storage.put(file, f"{target}/{found.relative(file)}")
        return name

    def put_input(self, item: str, group: str, *, left_out: LeftOut) -> str:
        return self._copy_in(item, group, "inputs", left_out)

    def put_config(self, item: str, group: str) -> str:
        return self._copy_in(item, group, "configs", None)

    def submit(
        self,
        group: str,
        analysis: str,
        datasets: list[str],
        configname: str | None,
        name: str,
        *,
        pricing: str = "standard",
    ) -> dict[str, Any]:
        body = {
            "analysis": analysis,
            "dataname": datasets,
            "configname": configname,
            "timestamp": submission_timestamp(),
            "pricing": pricing if pricing != "standard" else None,
        }
        path = self.storage.resolve(group, "submissions", f"{name}.submit.json")
        self.storage.write_text(path, json.dumps({k: v for k, v in body.items() if v is not None}, indent=2))
        job = self.manager.ingest_file(group, path, user=getpass.getuser())
        if job is None:
            raise NcaasError(f"{path} vanished before it was read; submit again")
        if job.state == "rejected":
            raise SubmissionRejected(job.cause.splitlines(), job={"id": job.id, "results_dir": job.results_dir})
        return job_detail(self.manager, job)

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return [job_summary(job, 0) for job in self.manager.db.jobs(limit=limit)]

    def estimate(
        self, group: str, analysis: str, datasets: list[str], sizes: list[int], pricing: str
    ) -> dict[str, Any]:
        storage = self.storage
        stored = [dataset_bytes(storage, storage.resolve(group, "inputs", d)) for d in datasets]
        return self.manager.estimate(group, analysis, pricing, stored + sizes)

    def spend(self, by: list[str], period: str, since_ms: int | None, group: str | None) -> list[dict[str, Any]]:
        return spend_rows(self.manager.db, by=by, period=period, group=group, since_ms=since_ms)

    def budget(self, group: str) -> dict[str, Any] | None:
        status = budget_status(self.manager.db, group, currency=self.manager.costs.profile.currency)
        return status.to_json() if status else None

    def notes(self) -> list[str]:
        return list(self.storage.skipped_folders().values())

    def job(self, ref: str) -> dict[str, Any]:
        return job_detail(self.manager, self.manager.find(ref))

    def story(self, job_id: str) -> list[dict[str, Any]]:
        return job_story(self.manager, self.manager.find(job_id))

    def log_bytes(self, job_id: str, dataset: str, offset: int) -> bytes:
        job = self.manager.find(job_id)
        try:
            return self.storage.read_from(f"{job.results_dir}/logs/{dataset}.log", offset)
        except FileNotFoundError:
            return b""

    def cancel(self, ref: str) -> dict[str, Any]:
        return job_detail(self.manager, self.manager.cancel(ref))

    def wait(self, job_id: str, on_status: OnStatus) -> dict[str, Any]:
        manager = self.manager
        job = manager.find(job_id)
        if not self.storage.is_local:  # run by the manager of this root (see ncaas.jobs.owner): follow it
            return self._follow(job_id, on_status)
        last = -float("inf")

        def over() -> bool:
            nonlocal last
            current = manager.db.job(job.id)
            if time.monotonic() - last >= 0.25:  # a detail reads every status file: not at every step
                last = time.monotonic()
                on_status(job_detail(manager, job))
            return current is None or (current.state in JOB_TERMINAL and current.finalized)

        manager.run(scan=False, until=over)
        return job_detail(manager, job)

    def _follow(self, job_id: str, on_status: OnStatus) -> dict[str, Any]:
        while True:
            detail = self.job(job_id)
            on_status(detail)
            if detail["finished"]:
                return detail
            time.sleep(0.5)

    def files(self, job_id: str) -> list[dict[str, Any]]:
        job = self.manager.find(job_id)
        return [
            {"path": f.removeprefix(job.results_dir + "/"), "size": self.storage.size(f)}
            for f in self.storage.files(job.results_dir)
        ]

    def download(self, job_id: str, to: Path) -> None:
        to.mkdir(parents=True, exist_ok=True)
        self.storage.get(self.manager.find(job_id).results_dir + "/", str(to))

    def rerun(self, ref: str, *, notify: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
        from ..provenance.rerun import environment_note, resolve, start_rerun

        cert = resolve(self.manager, ref)
        notify(f"rerunning job {cert['job']['id']} ({cert['blueprint'].get('name')}) ...")
        job = start_rerun(self.manager, cert)
        note = environment_note(self.manager, cert, job)
        if note is not None:
            notify(note)
        return cert["job"]["id"], job_detail(self.manager, job)

    def compare(self, job_id: str, original_id: str) -> list[dict[str, str]]:
        from ..provenance.rerun import compare_jobs

        return compare_jobs(self.manager, self.manager.find(original_id), self.manager.find(job_id))

    # -- chains ----------------------------------------------------------------------------------
    def submit_pipeline(self, group: str, pipeline: str, datasets: list[str], name: str) -> dict[str, Any]:
        body = {"pipeline": pipeline, "dataname": datasets, "timestamp": submission_timestamp()}
        path = self.storage.resolve(group, "submissions", f"{name}.submit.json")
        self.storage.write_text(path, json.dumps(body, indent=2))
        job = self.manager.ingest_file(group, path)
        if job is None:
            raise NcaasError(f"{path} vanished before it was read; submit again")
        if job.state == "rejected" and job.chain_id is None:
            raise SubmissionRejected(job.cause.splitlines(), job={"id": job.id, "results_dir": job.results_dir})
        assert job.chain_id is not None
        return self._chain_detail(job.chain_id)

    def _chain_detail(self, chain_id: str) -> dict[str, Any]:
        from ..pipelines.runner import chain_detail

        return chain_detail(self.manager, self.manager.chains.find(chain_id))

    def chains(self, limit: int) -> list[dict[str, Any]]:
        from ..pipelines.runner import chain_detail

        return [chain_detail(self.manager, c) for c in self.manager.db.chains(limit=limit)]

    def chain(self, ref: str) -> dict[str, Any] | None:
        found = self.manager.db.find_chain(ref)
        return None if found is None else self._chain_detail(found.id)

    def wait_chain(self, chain_id: str, on_status: OnStatus) -> dict[str, Any]:
        manager = self.manager
        if not self.storage.is_local:
            while not (detail := self._chain_detail(chain_id))["finished"]:
                on_status(detail)
                time.sleep(0.5)
            return detail
        last = -float("inf")

        def over() -> bool:
            nonlocal last
            chain = manager.db.chain(chain_id)
            if time.monotonic() - last >= 0.25:
                last = time.monotonic()
                on_status(self._chain_detail(chain_id))
            return chain is None or chain.state != "running"

        manager.run(scan=False, until=over)
        return self._chain_detail(chain_id)

    def cancel_chain(self, ref: str) -> dict[str, Any]:
        return self._chain_detail(self.manager.chains.cancel(ref).id)

    def rerun_chain(self, ref: str) -> dict[str, Any]:
        return self._chain_detail(self.manager.chains.rerun(ref).id)


# -- against a server -------------------------------------------------------------------------
class Remote:
    """An ``ncaas serve`` reached over HTTP with the caller's token."""

    def __init__(self, url: str, token: str | None):
        if not token:
            raise NcaasError(
                "--server needs a token too: add --token TOKEN (or set NCAAS_TOKEN); "
                "an administrator issues one with `ncaas admin issue-token USER`"
            )
        self.client = Client(url, token)
        self._me: dict[str, Any] | None = None

    def _group(self) -> str:
        if self._me is None:
            self._me = self.client.me()
        return self._me["group"]

    def analyses(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        return self.client.analyses(), {}

    def group(self, requested: str) -> str:
        mine = self._group()
        if requested not in ("default", mine):
            raise NcaasError(
                f"your token belongs to group {mine!r}, not {requested!r}; drop --group or use a token of that group"
            )
        return mine

    def _same_as_stored(self, local: Path, name: str, kind: str) -> bool:
        """Whether the stored dataset ``name`` holds what ``local`` would upload (a folder: the same
        files, hidden ones left out, with the same sizes and SHA-256s)."""
        client = self.client
        if not local.is_dir():
            return kind == "file" and client.input_info(name).get("sha256") == Storage(local.parent).sha256(str(local))
        if kind != "folder":
            return False
        mine = folder_files(local)
        sizes = {mine.relative(f): f.stat().st_size for f in mine.files}
        if {e["path"]: e["size"] for e in client.input_info(name)["contents"]} != sizes:
            return False  # told apart without reading a file
        stored = client.input_info(name, checksums=True)["contents"]
        return {e["path"]: e.get("sha256") for e in stored} == {e["path"]: e["sha256"] for e in describe_folder(local)}

    def put_input(self, item: str, group: str, *, left_out: LeftOut) -> str:
        local = Path(item)
        if not local.exists():
            return item  # a name already on the server; validation checks it
        name = local.resolve().name
        known = {d["name"]: d for d in self.client.inputs()}
        if name in known:
            if not self._same_as_stored(local, name, known[name]["kind"]):
                raise _exists_differently(f"{group}/inputs/{name}", local)
            return name
        return self.client.upload_dataset(local, name, left_out=lambda paths: left_out(name, paths))

    def put_config(self, item: str, group: str) -> str:
        local = Path(item)
        if not local.exists():
            return item
        name = local.resolve().name
        config = _read_config(local)
        if name in self.client.configs():
            if self.client.config(name) != config:
                raise _exists_differently(f"{group}/configs/{name}", local)
            return name
        self.client.save_config(name, config)
        return name

    def submit(
        self,
        group: str,
        analysis: str,
        datasets: list[str],
        configname: str | None,
        name: str,
        *,
        pricing: str = "standard",
    ) -> dict[str, Any]:
        return self.client.submit(
            analysis, datasets, configname=configname, name=name, pricing=pricing if pricing != "standard" else None
        )

    def estimate(
        self, group: str, analysis: str, datasets: list[str], sizes: list[int], pricing: str
    ) -> dict[str, Any]:
        return self.client.estimate(analysis, datasets=datasets, sizes=sizes, pricing=pricing)

    def spend(self, by: list[str], period: str, since_ms: int | None, group: str | None) -> list[dict[str, Any]]:
        return self.client.spend(by=by, period=period, since_ms=since_ms)

    def budget(self, group: str) -> dict[str, Any] | None:
        return self.client.budget()

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.client.jobs(limit=limit)

    def notes(self) -> list[str]:
        return []  # the server's operator reads them in its log and on its machine

    @contextmanager
    def _known(self, ref: str) -> Iterator[None]:
        """Say a job is unknown as the embedded command does (the API's words name its routes)."""
        try:
            yield
        except JobNotFound:
            raise JobNotFound(
                f"no job {ref!r} in group {self._group()!r} on {self.client.url}; `ncaas status` lists the jobs"
            ) from None

    def job(self, ref: str) -> dict[str, Any]:
        with self._known(ref):
            return self.client.job(ref)

    def story(self, job_id: str) -> list[dict[str, Any]]:
        return self.client.story(job_id)

    def log_bytes(self, job_id: str, dataset: str, offset: int) -> bytes:
        return self.client.log_bytes(job_id, dataset, offset=offset)

    def cancel(self, ref: str) -> dict[str, Any]:
        with self._known(ref):
            return self.client.cancel(ref)

    def wait(self, job_id: str, on_status: OnStatus) -> dict[str, Any]:
        return self.client.wait(job_id, on_status=on_status)

    def files(self, job_id: str) -> list[dict[str, Any]]:
        return [{"path": f["path"], "size": f["size"]} for f in self.client.files(job_id)]

    def download(self, job_id: str, to: Path) -> None:
        self.client.download_results(job_id, to)

    def rerun(self, ref: str, *, notify: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
        path = Path(ref)
        if path.exists():  # a certificate file: the server checks its signature before anything runs
            cert = load_certificate(path)
            original = str(cert.get("job", {}).get("id"))
            notify(f"rerunning job {original} ({cert.get('blueprint', {}).get('name')}) ...")
            return original, self.client.rerun_certificate(cert)
        detail = self.job(ref)
        notify(f"rerunning job {detail['id']} ({detail['analysis']}) ...")
        return detail["id"], self.client.rerun(detail["id"])

    def compare(self, job_id: str, original_id: str) -> list[dict[str, str]]:
        with self._known(original_id):
            original = self.client.job(original_id)["id"]
        with self._known(job_id):
            job = self.client.job(job_id)["id"]
        return self.client.compare_jobs(original, job)

    def submit_pipeline(self, group: str, pipeline: str, datasets: list[str], name: str) -> dict[str, Any]:
        return self.client.submit_pipeline(datasets, pipeline=pipeline, name=name)

    def chains(self, limit: int) -> list[dict[str, Any]]:
        return self.client.chains(limit=limit)

    def chain(self, ref: str) -> dict[str, Any] | None:
        try:
            return self.client.chain(ref)
        except JobNotFound:
            return None

    def wait_chain(self, chain_id: str, on_status: OnStatus) -> dict[str, Any]:
        while not (detail := self.client.chain(chain_id))["finished"]:
            on_status(detail)
            time.sleep(0.5)
        return detail

    def cancel_chain(self, ref: str) -> dict[str, Any]:
        return self.client.cancel_chain(ref)

    def rerun_chain(self, ref: str) -> dict[str, Any]:
        return self.client.rerun_chain(ref)

    def close(self) -> None:
        self.client.close()

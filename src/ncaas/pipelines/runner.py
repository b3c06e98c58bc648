"""Chains: a pipeline's steps run as ordinary jobs, one per (step, dataset), driven by the manager.

A submit file naming a ``pipeline`` (a file in ``configs/``) becomes a chain: the first step's
job of every dataset is made at once; at each step of the manager, :meth:`Chains.advance` starts
the next step of a dataset as soon as that dataset's previous step has succeeded and its
certificate is written. The next job's dataset is the earlier job's ``outputs/<dataset>/``
(or the ``input.path`` the pipeline names inside it), read where it lies; its certificate names
the upstream job and the sha256 of the upstream certificate. Each job runs in its own analysis'
environment and sandbox, exactly as a job submitted by hand. ``<results>/<chain>/chain.json``
shows every cell; the manager alone writes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..blueprint import LoadedBlueprint
from ..exceptions import AdmissionRefused, CertificateError, JobNotFound, NcaasError, SubmissionRejected
from ..jobs.db import Chain, Job, now_ms
from ..submission import Dataset, JobRequest, SubmitFile, chain_inputs
from .plan import ChainPlan, JobView, plan_chain
from .spec import ChainStep, check_pipeline, parse_pipeline

if TYPE_CHECKING:
    from ..jobs.manager import Manager

__all__ = ["Chains", "chain_detail"]


class Chains:
    """The manager's chains: ingest, advance, describe, rerun."""

    def __init__(self, manager: Manager):
        self.manager = manager
        self._written: dict[str, str] = {}  # chain id -> the cells chain.json last showed

    @property
    def db(self) -> Any:
        return self.manager.db

    # -- submissions -------------------------------------------------------------------------
    def ingest(self, group: str, name: str, key: str, content_key: str, submit: SubmitFile) -> Job:
        """A chain for ``submit`` (its first jobs queued), or a rejected job saying why not."""
        manager = self.manager
        try:
            data, datasets = chain_inputs(manager.storage, group, submit, limits=manager.limits)
            pipeline, problems = parse_pipeline(data, name=str(submit.pipeline))
            steps: list[ChainStep] = []
            if pipeline is not None:
                steps, problems = check_pipeline(pipeline, manager.registry, group)
            if problems:
                raise SubmissionRejected(problems)
        except SubmissionRejected as exc:
            return manager.reject(group, name, key, content_key, exc.problems)
        assert pipeline is not None
        for step in steps:
            manager.archive.put(step.blueprint)  # later steps run the version checked now
        from ..jobs.manager import new_job_id

        chain_id = "chain-" + new_job_id()
        chain = Chain(
            id=chain_id,
            group=group,
            name=pipeline.name,
            submission=name,
            submission_key=key,
            pipeline_json=json.dumps(
                {
                    "name": pipeline.name,
                    "description": pipeline.description,
                    "file": submit.pipeline,
                    "steps": [s.record() for s in steps],
                }
            ),
            datasets_json=json.dumps([[d.key, d.rel, d.path] for d in datasets]),
            state="running",
            cause="submitted",
            results_dir=manager.storage.results_dir(group, chain_id),
            created_ms=now_ms(),
        )
        if not self.db.add_chain(chain):
            found = self.db.seen_chain(key)
            jobs = self.db.chain_jobs(found.id) if found is not None else []
            if jobs:
                return jobs[0]
            assert found is not None  # add_chain refused it as already recorded
            chain = found
        manager.notify(
            f"chain {chain.id}: {pipeline.name} ({' -> '.join(s.name for s in steps)}) on {len(datasets)} "
            f"dataset(s) from {group}/{name}"
        )
        self.advance(only=chain.id)
        jobs = self.db.chain_jobs(chain.id)
        assert jobs, "a chain's first step is started when it is made"
        return jobs[0]

    # -- the loop ------------------------------------------------------------------------------
    def advance(self, *, only: str | None = None) -> None:
        """Start every cell whose source has succeeded; stop those whose source failed; end chains.

        Runs at every step of the manager: one query per running chain; ``chain.json`` is rewritten
        only when a cell changed.
        """
        chains = [self.db.chain(only)] if only else self.db.chains(states=["running"])
        for chain in chains:
            if chain is None or chain.state != "running":
                continue
            plan = self._plan(chain)
            for step, dataset, upstream in plan.start:
                self._start(chain, step, dataset, upstream)
            if plan.start or any(c.job is None and c.step == 0 for c in plan.cells):
                plan = self._plan(chain)
            if plan.over:
                self.db.update_chain(chain.id, state=plan.state, cause=plan.cause, ended_ms=now_ms())
                chain = self.db.chain(chain.id) or chain
                self.manager.notify(f"chain {chain.id}: {plan.state}; {plan.cause}")
            signature = f"{chain.state}:{plan.cells!r}"
            if self._written.get(chain.id) != signature:
                self._write(chain)
                self._written[chain.id] = signature
            if chain.state != "running":
                self._written.pop(chain.id, None)

    def _plan(self, chain: Chain) -> ChainPlan:
        steps = chain.pipeline["steps"]
        datasets = chain.datasets
        views = {}
        for job in self.db.chain_jobs(chain.id):
            if job.chain_step is None or job.chain_dataset is None:
                continue
            views[job.chain_step, job.chain_dataset] = JobView(job.id, job.state, bool(job.finalized), _why(self, job))
        plan = plan_chain(
            [s["name"] for s in steps],
            [s["source"] for s in steps],
            [d[0] for d in datasets],
            views,
            cancel_requested=bool(chain.cancel_requested),
        )
        by_key = {d[0]: d for d in datasets}
        for cell in plan.cells:
            if cell.job is None and steps[cell.step]["source"] is None and not chain.cancel_requested:
                key, rel, path = by_key[cell.dataset]
                self._create(chain, 0, Dataset(key, rel, path), "inputs", None)
        return plan

    def _start(self, chain: Chain, step: int, dataset: str, upstream_id: str) -> None:
        """Start ``step`` for ``dataset`` on what its source job wrote (or refuse, naming what is missing)."""
        storage = self.manager.storage
        record = chain.pipeline["steps"][step]
        upstream = self.db.job(upstream_id)
        assert upstream is not None
        rel = f"{upstream.id}/outputs/{dataset}" + (f"/{record['path']}" if record["path"] else "")
        path = storage.resolve(chain.group, "results", rel)
        cert_path = f"{upstream.results_dir}/certificate.json"
        source = chain.pipeline["steps"][record["source"]]["name"]
        if not storage.exists(path):
            what = f"'{record['path']}'" if record["path"] else "any output"
            self._refused(
                chain,
                step,
                dataset,
                f"step {source!r} (job {upstream.id}) wrote no {what} for dataset {dataset!r}, which step "
                f"{record['name']!r} reads; check the pipeline's input.path against that step's outputs",
            )
            return
        certificate = storage.read_bytes(cert_path)
        upstream_info = {
            "chain": chain.id,
            "step": source,
            "job": upstream.id,
            "analysis": upstream.analysis,
            "certificate": storage.relative(cert_path),
            "certificate_sha256": hashlib.sha256(certificate).hexdigest(),
            "outputs": rel,
        }
        self._create(chain, step, Dataset(dataset, rel, path), "results", upstream_info)

    def _create(self, chain: Chain, step: int, dataset: Dataset, area: str, upstream: dict[str, Any] | None) -> Job:
        record = chain.pipeline["steps"][step]
        loaded = self._blueprint(record)
        request = JobRequest(
            chain.group,
            loaded,
            [dataset],
            record["config"],
            None,
            {"chain": chain.id, "step": record["name"], "pipeline": chain.pipeline["file"]},
        )
        try:  # each step's job is admitted under its group's budget when it starts, as any job
            admission = self.manager.admit(request, f"step {record['name']!r} for dataset {dataset.key!r}")
        except AdmissionRefused as exc:
            return self._refused(chain, step, dataset.key, str(exc))
        return self.manager.create_job(
            request,
            submission=_submission(chain, step),
            key=_key(chain, step, dataset.key),
            content_key=_key(chain, step, dataset.key),
            admission=admission,
            chain={
                "chain_id": chain.id,
                "chain_step": step,
                "chain_dataset": dataset.key,
                "input_area": area,
                "upstream_json": json.dumps(upstream) if upstream else None,
            },
        )

    def _refused(self, chain: Chain, step: int, dataset: str, why: str) -> Job:
        """A rejected job in the chain's cell (``step``, ``dataset``), saying why it did not start."""
        key = _key(chain, step, dataset)
        job = self.manager.reject(chain.group, _submission(chain, step), key, key, [why])
        self.db.update_job(job.id, chain_id=chain.id, chain_step=step, chain_dataset=dataset)
        return job

    def _blueprint(self, record: dict[str, Any]) -> LoadedBlueprint:
        loaded = self.manager.archive.get(record["blueprint_sha256"])
        if loaded is None:
            raise NcaasError(
                f"version {record['blueprint_sha256'][:12]}… of {record['analysis']} is missing from the "
                "platform's archive of blueprints; the chain cannot go on"
            )
        return loaded

    def _write(self, chain: Chain) -> None:
        text = json.dumps(chain_detail(self.manager, chain), indent=1)
        self.manager.storage.write_text(f"{chain.results_dir}/chain.json", text)

    # -- users ---------------------------------------------------------------------------------
    def find(self, ref: str) -> Chain:
        chain = self.db.find_chain(ref)
        if chain is None:
            raise JobNotFound(f"no chain {ref!r} in {self.db.url}; `ncaas status` lists the chains")
        return chain

    def cancel(self, ref: str) -> Chain:
        chain = self.find(ref)
        if chain.state != "running":
            return chain
        self.db.update_chain(chain.id, cancel_requested=True)  # no further step starts
        for job in self.db.chain_jobs(chain.id):
            self.manager.cancel(job.id)
        self.advance(only=chain.id)  # over once its cancelled jobs are
        return self.find(chain.id)

    def rerun(self, ref: str) -> Chain:
        """Rerun a finished chain: its first steps from their certificates (same inputs, analysis versions
        and configs, checked), the later ones on the rerun's own outputs."""
        from ..jobs.manager import new_job_id
        from ..provenance.rerun import certificate_of_job, rerun_request, start_rerun

        original = self.find(ref)
        if original.state == "running":
            raise CertificateError(f"chain {original.id} is still running; rerun it once it has ended")
        firsts = [j for j in self.db.chain_jobs(original.id) if j.chain_step == 0]
        certs = [(job, certificate_of_job(self.manager, job)) for job in firsts]
        for _, cert in certs:  # every first step checked (signature, inputs, versions) before anything starts
            rerun_request(self.manager, cert)
        chain_id = "chain-" + new_job_id()
        chain = Chain(
            id=chain_id,
            group=original.group,
            name=original.name,
            submission=f"rerun of {original.id}",
            submission_key=f"rerun:{original.id}:{chain_id}",
            pipeline_json=original.pipeline_json,
            datasets_json=original.datasets_json,
            state="running",
            cause="rerun",
            results_dir=self.manager.storage.results_dir(original.group, chain_id),
            rerun_of=original.id,
            created_ms=now_ms(),
        )
        self.db.add_chain(chain)
        for job, cert in certs:
            try:
                new = start_rerun(self.manager, cert)
            except AdmissionRefused as exc:  # the group's budget: this cell is refused, the others run
                self._refused(chain, 0, str(job.chain_dataset), str(exc))
                continue
            self.db.update_job(new.id, chain_id=chain.id, chain_step=0, chain_dataset=job.chain_dataset)
        self.advance(only=chain.id)
        return self.find(chain.id)

    def pairs(self, original: Chain, chain: Chain) -> list[tuple[str, str, Job | None, Job | None]]:
        """(step name, dataset, original job, rerun job) for every cell."""
        names = [s["name"] for s in chain.pipeline["steps"]]

        def by(c: Chain) -> dict[tuple[int | None, str | None], Job]:
            return {(j.chain_step, j.chain_dataset): j for j in self.db.chain_jobs(c.id)}

        before, after = by(original), by(chain)
        return [
            (names[i], key, before.get((i, key)), after.get((i, key)))
            for key, _, _ in chain.datasets
            for i in range(len(names))
        ]


def _submission(chain: Chain, step: int) -> str:
    """The name a step's job goes by: the chain's submission and the step's name."""
    return f"{chain.submission} [{chain.pipeline['steps'][step]['name']}]"


def _key(chain: Chain, step: int, dataset: str) -> str:
    return f"{chain.submission_key}#{step}#{dataset}"


def _why(chains: Chains, job: Job) -> str:
    """Why a job's cell did not succeed (its task's cause); nothing to say of one running or done well."""
    if job.state in ("queued", "running", "succeeded"):
        return ""
    if job.state == "rejected":
        return job.cause
    tasks = chains.db.tasks(job.id)
    return tasks[0].cause if tasks else job.cause


def chain_detail(manager: Manager, chain: Chain) -> dict[str, Any]:
    """A chain as a plain dict (the CLI and the API): its steps, and one row per dataset with every step's cell."""
    steps = chain.pipeline["steps"]
    jobs = {(j.chain_step, j.chain_dataset): j for j in manager.db.chain_jobs(chain.id)}
    views = {
        key: JobView(j.id, j.state, bool(j.finalized), _why(manager.chains, j))
        for key, j in jobs.items()
        if key[0] is not None and key[1] is not None
    }
    plan = plan_chain(
        [s["name"] for s in steps],
        [s["source"] for s in steps],
        [d[0] for d in chain.datasets],
        views,  # type: ignore[arg-type]
        cancel_requested=bool(chain.cancel_requested),
    )
    cells = {(c.step, c.dataset): c for c in plan.cells}
    rows = []
    for key, rel, _ in chain.datasets:
        row = []
        for index, step in enumerate(steps):
            cell = cells[index, key]
            job = jobs.get((index, key))
            row.append(
                {
                    "step": step["name"],
                    "analysis": step["analysis"],
                    "state": cell.state,
                    "job": cell.job,
                    "reason": cell.reason,
                    "results_dir": job.results_dir if job is not None else None,
                }
            )
        rows.append({"dataset": key, "input": rel, "steps": row})
    return {
        "id": chain.id,
        "kind": "chain",
        "group": chain.group,
        "pipeline": chain.name,
        "description": chain.pipeline.get("description", ""),
        "file": chain.pipeline.get("file"),
        "steps": [{"name": s["name"], "analysis": s["analysis"], "config": s["config"]} for s in steps],
        "state": chain.state,
        "cause": chain.cause,
        "submission": chain.submission,
        "rerun_of": chain.rerun_of,
        "created_ms": chain.created_ms,
        "ended_ms": chain.ended_ms,
        "finished": chain.state != "running",
        "results_dir": chain.results_dir,
        "datasets": rows,
    }

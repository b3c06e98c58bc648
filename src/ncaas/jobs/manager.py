"""The job manager: the only job code doing I/O.

One :meth:`Manager.step` reaps finished tasks, starts queued ones within capacity and
settles jobs; :meth:`Manager.run` repeats it, scanning storage for new submit files.
Every decision comes from :mod:`ncaas.jobs.states` and is persisted (compare-and-set)
before it is acted upon, so a manager killed at any moment and restarted picks up:
tasks still running are adopted through their handle (pid + start time), tasks that
ended meanwhile are read from their exit record, tasks that vanished are retried.

Analysis environments are prepared (built on first use, else verified) on a few
background threads, so a cold build never stalls the loop: while its environment is
prepared a task stays queued and its cause says so; the first step after the
preparation ends starts it, or fails it with the build's message.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from ..blueprint import Blueprint, BlueprintRegistry, LoadedBlueprint
from ..cost.accounting import Admission, CostAccounting, dataset_bytes
from ..cost.estimate import Estimate
from ..cost.profile import PricingProfile, load_profile
from ..cost.report import money
from ..exceptions import (
    AdmissionRefused,
    ExecutorError,
    JobNotFound,
    NcaasError,
    PathRefused,
    SpecialFileRefused,
    SubmissionRejected,
)
from ..executors.base import LOST, EnvironmentInfo, Executor, ExitRecord, Lost, TaskHandle, TaskSpec
from ..executors.local import LocalExecutor
from ..isolation import environments
from ..pipelines.runner import Chains
from ..private import private_dir
from ..provenance.archive import BlueprintArchive
from ..provenance.certificate import build_certificate, describe_dataset, render_text, task_hash_environment
from ..provenance.signing import CertificateKeys
from ..storage import KINDS, Storage
from ..submission import (
    JobRequest,
    SubmitLimits,
    build_request,
    canonical_json,
    dataset_problem,
    parse_submit_file,
    too_large,
)
from .attempts import close_attempt, drop_attempt, load_attempts, open_attempt, start_attempt
from .db import Job, JobDB, Task, now_ms
from .diskspace import Reserve, is_disk_full, reserve_size
from .states import (
    JOB_TERMINAL,
    WAITING_FOR_NODE,
    Decision,
    JobState,
    TaskState,
    decide_cut_short,
    decide_exit,
    decide_lost,
    job_state,
)

__all__ = ["Manager", "manager_lock", "new_job_id"]


def manager_lock(storage: Storage) -> IO[str] | None:
    """Take the one-manager-per-storage lock (``<state dir>/manager.lock``); None when another holds it.

    Held until the returned file is closed (or the process ends). Both ``ncaas manager`` and
    ``ncaas serve`` take it, so two managers never run the same storage.
    """
    path = private_dir(storage.state_dir()) / "manager.lock"
    lock = open(path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


LAUNCH_GRACE_MS = 10_000  # a running task with no handle yet is only declared lost after this
TIMEOUT_BACKSTOP_S = 30.0
PROGRESS_POLL_S = 1.0  # a progress file in remote storage is read at most this often
PROGRESS_KEYS = ("progress", "message", "pid", "node", "node_timings")  # what a supervisor reports
CANCEL_GRACE_S = 10.0  # a task still running this long after its cancel is killed
WRITE_GRACE_S = 2.0  # a malformed submit file this young may still be being written
PREPARE_THREADS = 2  # environments prepared at once (each preparation is one environment)
CERTIFY_THREADS = 2  # certificates written at once (each hashes a job's inputs and outputs)
DESCRIBE_THREADS = 2  # datasets hashed at once before their tasks start
WAIT_SHOWN_AFTER_S = 1.0  # a preparation this old is named in its tasks' cause (quick checks are not)
WAITING_FOR_ENVIRONMENT = "waiting for its environment"


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Manager:
    """Turn submissions into jobs and jobs into tasks on an executor."""

    def __init__(
        self,
        storage: Storage,
        db: JobDB,
        *,
        executor: Executor | None = None,
        registry: BlueprintRegistry | None = None,
        default_analysis: str | None = None,
        poll_interval: float = 0.05,
        notify: Callable[[str], None] | None = None,
        scan_interval: float = 0.0,
        limits: SubmitLimits | None = None,
        pricing: PricingProfile | None = None,
    ):
        self.storage = storage
        self.limits = limits or SubmitLimits.from_env()
        self.db = db
        self.executor: Executor = executor or LocalExecutor()
        self._registry = registry
        self._rediscover = registry is None  # a manager that found blueprints itself looks again for new ones
        self._blueprints: dict[str, LoadedBlueprint] = {}  # per job: too costly to parse at every step
        self._environment_keys: dict[str, environments.EnvironmentSpec | None] = {}  # per job
        self._configs: set[str] = set()  # jobs whose config.json is known to be written
        self.default_analysis = default_analysis
        self.poll_interval = poll_interval
        self.scan_interval = scan_interval  # seconds between listings of submissions (S3: each costs requests)
        self._last_scan = -float("inf")
        self._cancel_asked: dict[int, float] = {}  # task id -> when its cancel was first sent
        self._progress_seen: dict[int, tuple[Any, float]] = {}  # task id -> (progress file stamp, when read)
        self.notify = notify or (lambda message: None)
        self.state_dir = private_dir(storage.state_dir())  # run folders and locks: the platform's own
        self.archive = BlueprintArchive(self.state_dir)  # every blueprint version a job used
        self.keys = CertificateKeys(self.state_dir)  # signs the certificates this manager writes
        # prices every task (the profile installed in the state folder, else the defaults)
        self.costs = CostAccounting(pricing or load_profile(self.state_dir), db)
        self._caps_checked: dict[str, float] = {}  # job id -> when its cost was last held against its cap
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._skipped_told: set[str] = set()  # folders skipped as no group, already said in the log
        self._unreadable: dict[str, str] = {}  # submit file -> why it could not be read (said once)
        self._preparing: dict[environments.EnvironmentSpec, _Preparation] = {}  # under way, per environment
        self._prepared: dict[environments.EnvironmentSpec, _Preparation] = {}  # ended: serve this step only
        self._ended: dict[int, _Preparation] = {}  # task id -> the preparation it waited for, ended
        self._prepare_slots = threading.BoundedSemaphore(PREPARE_THREADS)
        self._wake = threading.Event()  # set when a preparation ends: the loop steps at once
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()  # work other threads hand to the loop
        self._loop_thread: threading.Thread | None = None  # the thread in run(), while it runs
        self._calls_lock = threading.Lock()  # a call is queued only while a loop will answer it
        self._certifying: dict[str, Future[None]] = {}  # job id -> its certificate, being written
        self._certify_slots = threading.BoundedSemaphore(CERTIFY_THREADS)
        self._describing: dict[int, Future[dict[str, Any]]] = {}  # task id -> its dataset, being hashed
        self._reserve: Reserve | None = None  # taken when the loop starts (see ncaas.jobs.diskspace)
        self._disk_full = False  # a step failed for lack of space and none has succeeded since

    @functools.cached_property
    def chains(self) -> Chains:
        """The chains this manager drives (:mod:`ncaas.pipelines`)."""
        return Chains(self)

    @property
    def registry(self) -> BlueprintRegistry:
        if self._registry is None:
            self._registry = BlueprintRegistry.discover()
        return self._registry

    # -- submissions ---------------------------------------------------------------------
    def scan(self) -> list[Job]:
        """Ingest every submit file not seen before (including ones written while down)."""
        jobs = []
        skipped: dict[str, str] = {}
        for group, path, stamp in self.storage.submission_stamps(skipped):
            if self._seen.get(path) == stamp:
                continue
            try:
                job, new = self._ingest(group, path, stamp=stamp)
            except (NcaasError, OSError) as exc:  # this file only: the others and the running jobs go on
                if self._unreadable.get(path) != str(exc):
                    self._unreadable[path] = str(exc)
                    self.notify(f"[manager] cannot read {path} yet, trying again: {exc}")
                continue
            self._unreadable.pop(path, None)
            if job is not None:
                self._seen[path] = stamp
                if new:
                    jobs.append(job)
        for folder in skipped.keys() - self._skipped_told:  # said once per folder, not at every scan
            self._skipped_told.add(folder)
            self.notify(f"[manager] skipped {self.storage.url}/{folder}/: {skipped[folder]}")
        return jobs

    def ingest_file(self, group: str, path: str, *, user: str | None = None) -> Job | None:
        """Turn one submit file into a job (queued, or rejected with its reasons).

        A submit file already ingested returns its job; a vanished one returns None.
        ``user``: who submitted it, when the caller knows (the server, the CLI).
        """
        return self._ingest(group, path, user=user)[0]

    def _ingest(
        self, group: str, path: str, *, stamp: tuple[Any, ...] | None = None, user: str | None = None
    ) -> tuple[Job | None, bool]:
        name = path.rsplit("/", 1)[-1]
        kind = self.storage.entry_kind(path)
        if kind == "missing":
            return None, False
        if kind != "file":  # a FIFO would block the manager; a link could read another group's file
            key = f"{group}/{name}:{kind}"
            existing = self.db.seen_submission(key)
            if existing is not None:
                return existing, False
            return self.reject(
                group,
                name,
                key,
                key,
                [f"{name} is {KINDS[kind]}, not a file; write the submit file itself into {group}/submissions/"],
            ), True
        limit = self.limits.max_bytes
        try:
            raw = self.storage.read_head(path, limit + 1)  # a file over the limit is never read whole
            size = len(raw) if len(raw) <= limit else self.storage.size(path)
        except FileNotFoundError:
            return None, False
        except SpecialFileRefused as exc:  # swapped for a FIFO or link since it was looked at: never opened
            key = f"{group}/{name}:{exc.kind}"
            found = self.db.seen_submission(key)
            return (
                (found, False)
                if found is not None
                else (
                    self.reject(
                        group,
                        name,
                        key,
                        key,
                        [f"{name} is {exc.words}, not a regular file; write the submit file as a regular file"],
                    ),
                    True,
                )
            )
        key = f"{group}/{name}:{_sha256(raw)}" + (f":{size}" if size > limit else "")
        existing = self.db.seen_submission(key)
        if existing is not None:
            return existing, False
        chain = self.db.seen_chain(key)
        if chain is not None:
            made = self.db.chain_jobs(chain.id)
            if made:
                return made[0], False
        content_key = _sha256(raw)
        young = stamp is not None and isinstance(stamp[1], float) and time.time() - stamp[1] < WRITE_GRACE_S
        if size > limit:
            if young:
                return None, False  # still growing, maybe: refuse it once, when it is whole
            return self.reject(group, name, key, content_key, [too_large(name, size, limit)]), True
        try:
            submit = parse_submit_file(raw, name=name, limits=self.limits)
            content_key = _sha256(canonical_json(submit.model_dump(mode="json")).encode())
            twin = self.db.same_content(group, content_key)
            if twin is not None:
                raise SubmissionRejected(
                    f"{name} is identical to {twin.submission} (job {twin.id}), which was already run; "
                    "a submission runs once — change its timestamp to run it again"
                )
            if submit.pipeline is not None:
                if self._rediscover:
                    self._registry = BlueprintRegistry.discover()
                return self.chains.ingest(group, name, key, content_key, submit), True
            if self._rediscover and (submit.analysis or self.default_analysis) not in self.registry.blueprints:
                self._registry = BlueprintRegistry.discover()
            request = build_request(
                self.storage, self.registry, group, submit, default_analysis=self.default_analysis, limits=self.limits
            )
        except SubmissionRejected as exc:
            if young and not raw.rstrip().endswith(b"}"):
                return None, False  # probably still being copied; look again at the next scan
            return self.reject(group, name, key, content_key, exc.problems), True
        admission, problems = self._admission(request)
        if problems:  # nothing runs: the blueprint cannot be priced here, or the budget would not hold
            return self.reject(group, name, key, content_key, problems), True
        job = self.create_job(
            request, submission=name, key=key, content_key=content_key, user=user, admission=admission
        )
        return job, True

    def _admission(self, request: JobRequest) -> tuple[Admission | None, list[str]]:
        """The job's estimate and cost cap under its group's budget, or why it may not run."""
        bp = request.blueprint
        unknown = self.costs.unknown_instance(bp.blueprint)
        if unknown is not None:
            return None, [unknown]
        sizes = [dataset_bytes(self.storage, d.path) for d in request.datasets]
        option = str(request.submit.get("pricing") or "standard")
        admission = self.costs.admit(request.group, bp.name, bp.blueprint, option, sizes)
        return admission, [admission.refused] if admission.refused else []

    def admit(self, request: JobRequest, what: str) -> Admission | None:
        """The admission of a job made for a user rather than from a submission file (a rerun, a chain
        step, a curation): the same estimate, budget check and cost cap as a submission gets. Raises
        AdmissionRefused saying ``what`` was refused and why."""
        admission, problems = self._admission(request)
        if problems:
            raise AdmissionRefused(f"{what} was not started: " + "; ".join(problems))
        return admission

    def estimate(self, group: str, analysis: str, option: str, sizes: list[int]) -> dict[str, Any]:
        """What ``group``'s job of ``analysis`` on datasets of ``sizes`` bytes is expected to take and cost."""
        loaded = self.registry.get(analysis)
        if loaded is None:
            raise NcaasError(f"unknown analysis {analysis!r}; available: {', '.join(self.registry.names()) or 'none'}")
        return self.costs.estimate(group, analysis, loaded.blueprint, option, sizes).to_json()

    def create_job(
        self,
        request: JobRequest,
        *,
        submission: str,
        key: str,
        content_key: str,
        chain: dict[str, Any] | None = None,
        user: str | None = None,
        admission: Admission | None = None,
    ) -> Job:
        """Queue a job; ``chain`` holds its place in a chain (``Job.chain_*``, ``input_area``, ``upstream_json``)."""
        job_id = new_job_id()
        bp = request.blueprint
        self.archive.put(bp)  # the job's blueprint is read back from here, by its content hash
        job = Job(
            id=job_id,
            group=request.group,
            analysis=bp.name,
            submission=submission,
            submission_key=key,
            content_key=content_key,
            state=JobState.QUEUED.value,
            blueprint_json=json.dumps({**bp.identity(), "content": bp.blueprint.model_dump(mode="json")}),
            config_json=json.dumps(request.config),
            config_name=request.config_name,
            submit_json=json.dumps(request.submit),
            results_dir=self.storage.results_dir(request.group, job_id),
            created_ms=now_ms(),
            **(chain or {}),
            user=user,
            pricing_option=str(request.submit.get("pricing") or "standard"),
            estimate_json=(
                json.dumps(admission.estimate.to_json())
                if admission is not None and isinstance(admission.estimate, Estimate)
                else None
            ),
            cost_cap=admission.cap if admission is not None else None,
        )
        res = bp.blueprint.resources
        tasks = [
            Task(
                dataset=d.key,
                dataset_rel=d.rel,
                dataset_path=d.path,
                state=TaskState.QUEUED.value,
                max_retries=bp.blueprint.limits.max_retries,
                cpus=res.cpus,
                memory_bytes=res.memory,
            )
            for d in request.datasets
        ]
        if not self.db.add_job(job, tasks, f"submitted as {submission}"):
            found = self.db.seen_submission(key)
            assert found is not None
            return found
        self.storage.write_text(f"{job.results_dir}/config.json", json.dumps(request.config, indent=2))
        for task in tasks:
            self._write_status(job, task)
        self.notify(f"job {job_id}: {bp.name} on {len(tasks)} dataset(s) from {request.group}/{submission}")
        return job

    def reject(self, group: str, name: str, key: str, content_key: str, problems: list[str]) -> Job:
        job_id = new_job_id()
        results = self.storage.results_dir(group, job_id)
        job = Job(
            id=job_id,
            group=group,
            analysis=None,
            submission=name,
            submission_key=key,
            content_key=content_key,
            state=JobState.REJECTED.value,
            cause="\n".join(problems),
            results_dir=results,
            created_ms=now_ms(),
            ended_ms=now_ms(),
        )
        if not self.db.add_job(job, [], "rejected: " + "; ".join(problems)):
            found = self.db.seen_submission(key)
            assert found is not None
            return found
        self._finalize_rejection(job)
        self.notify(f"job {job_id}: rejected {group}/submissions/{name}:\n  " + "\n  ".join(problems))
        return job

    def _finalize_rejection(self, job: Job) -> None:
        """error.txt and end.json of a rejected submission; idempotent (redone if a kill or a full
        disk stopped it halfway)."""
        problems = job.cause.split("\n")
        text = f"Submission {job.group}/submissions/{job.submission} was rejected; nothing ran.\n\n"
        text += "".join(f"- {p}\n" for p in problems)
        self.storage.write_text(f"{job.results_dir}/error.txt", text)
        self._write_end(job, [], errors=problems)
        self.db.update_job(job.id, finalized=True)
        job.finalized = True

    # -- the loop ------------------------------------------------------------------------
    def run(
        self,
        *,
        scan: bool = True,
        until: Callable[[], bool] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Step until ``until()`` holds or ``should_stop()`` asks to stop.

        Watching storage (``scan=True``) is a service: a failing step (storage or
        database unreachable for a moment) is reported and retried, not fatal. A step
        failing on a full disk gives up the disk reserve (:mod:`ncaas.jobs.diskspace`) and
        is retried, so jobs end once their records fit; a service then waits for space.
        """
        if self._reserve is None:
            self._reserve = Reserve(self.state_dir, reserve_size())
            self._reserve.hold()
        with self._calls_lock:
            self._loop_thread = threading.current_thread()
        try:
            self._run(scan, until, should_stop)
        finally:
            with self._calls_lock:
                self._loop_thread = None
            self._answer_calls()  # handed over as the loop stopped: answered here, never left waiting

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the loop's thread, between two steps, and return what it returns.

        Another thread (a server's request) must not change the manager's state while its loop
        runs (the loop reloads the registry, caches blueprints and environments): it hands the
        work over here and waits for the answer. With no loop running, ``fn`` runs at once.
        """
        call = _Call(fn, args, kwargs)
        with self._calls_lock:
            loop = self._loop_thread
            queued = loop is not None and loop is not threading.current_thread()
            if queued:
                self._calls.put(call)
        if not queued:
            return fn(*args, **kwargs)
        self._wake.set()
        return call.future.result()

    def _answer_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call.future.set_result(call.fn(*call.args, **call.kwargs))
            except Exception as exc:  # noqa: BLE001 - the caller's to handle, on its own thread
                call.future.set_exception(exc)

    def _run(self, scan: bool, until: Callable[[], bool] | None, should_stop: Callable[[], bool] | None) -> None:
        assert self._reserve is not None  # taken by run()
        while True:
            self._answer_calls()
            try:
                if scan and time.monotonic() - self._last_scan >= self.scan_interval:
                    self._last_scan = time.monotonic()
                    self.scan()
                self.step()
                self._reserve.hold()  # a stat while it is there; taken again once space returns
                if self._disk_full:
                    self._disk_full = False
                    self.notify("[manager] steps succeed again on the disk that was full")
            except (NcaasError, OSError, SQLAlchemyError) as exc:
                if is_disk_full(exc, self.state_dir):
                    if not self._on_disk_full(exc) and not scan:
                        raise  # embedded, and nothing left to give up: the caller says the disk is full
                elif not scan:
                    raise
                else:
                    self.notify(f"[manager] step failed, retrying in 1 s: {exc}")
                time.sleep(1.0)
            if (until is not None and until()) or (should_stop is not None and should_stop()):
                return
            if self._wake.wait(self.poll_interval):
                self._wake.clear()

    def _on_disk_full(self, exc: BaseException) -> int:
        """Give up the reserve so the step can be retried (the bytes freed); say it once, not every second."""
        assert self._reserve is not None
        freed = self._reserve.release()
        if freed:
            self.notify(
                f"[manager] the disk of {self.storage.root} is full; gave up the {freed / 1e6:.0f} MB "
                "reserved for this so that jobs can end. Free space on it."
            )
        elif not self._disk_full:
            self.notify(
                f"[manager] the disk of {self.storage.root} is full ({str(exc).splitlines()[0]}); "
                "retrying every second: jobs end when space is freed"
            )
        self._disk_full = True
        return freed

    def run_job(self, job_id: str) -> Job:
        """Run embedded until ``job_id`` is over; returns the finished job."""

        def over() -> bool:
            job = self.db.job(job_id)
            return job is None or (job.state in JOB_TERMINAL and job.finalized)

        self.run(scan=False, until=over)
        job = self.db.job(job_id)
        assert job is not None
        return job

    def step(self) -> None:
        jobs = {j.id: j for j in self.db.jobs(states=[JobState.QUEUED.value, JobState.RUNNING.value])}
        self._reap(jobs)
        self._enforce_caps(jobs)
        self._collect_preparations()
        self._schedule(jobs)
        self._prepared.clear()
        self._ended.clear()
        self._settle(jobs)
        self.chains.advance()

    # -- tasks ---------------------------------------------------------------------------
    def _job(self, jobs: dict[str, Job], job_id: str) -> Job:
        if job_id not in jobs:
            job = self.db.job(job_id)
            assert job is not None
            jobs[job_id] = job
        return jobs[job_id]

    def _reap(self, jobs: dict[str, Job]) -> None:
        for task in self.db.tasks(states=[TaskState.RUNNING.value]):
            job = self._job(jobs, task.job_id)
            handle = self._handle(task)
            if handle is None:
                self._unhandled(job, task)
                continue
            record = self.executor.poll(handle)
            if record is None:
                self._watch(job, task, handle)
            else:
                if isinstance(record, Lost):
                    self.executor.kill(handle)
                self._stopped(job, task, record)

    def _unhandled(self, job: Job, task: Task) -> None:
        """Settle a running task whose supervisor cannot be found (no handle recorded, none alive).

        A manager killed after starting the supervisor but before recording its handle leaves
        such a task; the supervisor may have finished since. Its exit record settles it: a task
        that exited is never run again. Only with no record, no live supervisor and the launch
        grace over is it lost; and if its command provably never started (the launch itself was
        cut short), it is queued again as the same attempt, not counted as a retry. The record
        is read after looking for the supervisor, which writes it before it exits, so a
        supervisor ending in between is never taken for lost.
        """
        run_dir = Path(task.run_dir) if task.run_dir else None
        record = self.executor.exit_record(run_dir) if run_dir else None
        if record is not None:
            self._stopped(job, task, record)
        elif now_ms() - (task.started_ms or 0) <= LAUNCH_GRACE_MS:
            return
        elif run_dir is None or self.executor.started(run_dir):
            self._stopped(job, task, LOST)
        else:
            self._cut_short(job, task, run_dir)

    def _cut_short(self, job: Job, task: Task, run_dir: Path) -> None:
        """Queue again, as the same attempt, a task whose launch the manager's stop cut short."""
        decision = decide_cut_short(attempt=task.attempt)
        self.executor.finish(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)  # the attempt starts again in a clean run folder
        if self.db.move_task(
            task,
            decision.state,
            decision.cause,
            attempt=task.attempt - 1,
            attempts_json=drop_attempt(task.attempts_json, task.attempt),
            run_dir=None,
            runner_pid=None,
            runner_start=None,
        ):
            self._write_status(job, task)
            self.notify(f"job {job.id}: {task.dataset} {decision.state} ({decision.cause})")

    def _watch(self, job: Job, task: Task, handle: TaskHandle) -> None:
        self._take_progress(job, task)
        if task.reclaim_requested:  # a Save task's capacity taken back, like a spot instance: retried
            self.executor.kill(handle)
            self._stopped(job, task, ExitRecord(reclaimed=True, end_ms=now_ms()))
            return
        if job.cancel_requested:
            asked = self._cancel_asked.setdefault(task.id, time.monotonic())
            self.executor.cancel(handle)
            if time.monotonic() - asked > CANCEL_GRACE_S:  # the polite stop was lost or ignored
                self._cancel_asked.pop(task.id, None)
                self.executor.kill(handle)
                self._stopped(job, task, ExitRecord(cancelled=True, end_ms=now_ms()))
                return
        if _waiting_for_node(task):
            return  # its time limit counts from when it starts on a node
        elapsed = (now_ms() - (task.started_ms or now_ms())) / 1000
        timeout = self.loaded_blueprint(job).blueprint.resources.timeout
        if elapsed > timeout + TIMEOUT_BACKSTOP_S:
            self.executor.kill(handle)
            self._stopped(job, task, ExitRecord(timed_out=True, timeout=timeout))

    def _handle(self, task: Task) -> TaskHandle | None:
        if task.run_dir is None:
            return None
        if task.runner_pid is not None:
            return TaskHandle(Path(task.run_dir), task.runner_pid, task.runner_start or 0.0)
        handle = self.executor.find(Path(task.run_dir))
        if handle is not None:
            self.db.update_task(task.id, runner_pid=handle.pid, runner_start=handle.start_time)
        return handle

    def _stopped(self, job: Job, task: Task, record: ExitRecord | Lost) -> None:
        self._cancel_asked.pop(task.id, None)
        if not isinstance(record, Lost):
            self._take_progress(job, task, final=True)  # its last words (final progress and message)
        self._progress_seen.pop(task.id, None)
        node = _attempt_node(task)
        if isinstance(record, Lost):
            why = f"{record.why}, on node {node}" if record.why and node and node not in record.why else record.why
            decision = decide_lost(attempt=task.attempt, max_retries=task.max_retries, why=why)
            record = ExitRecord()
        else:
            decision = decide_exit(
                record, attempt=task.attempt, max_retries=task.max_retries, memory_limit=task.memory_bytes
            )
        if decision.state == TaskState.CANCELLED and job.stop_reason:
            decision = Decision(TaskState.CANCELLED, job.stop_reason)
        fields: dict[str, Any] = {
            "ended_ms": record.end_ms or now_ms(),
            "exit_code": record.returncode,
            "cpu_seconds": record.cpu_seconds,
            "peak_memory_bytes": record.peak_memory_bytes,
            "reclaim_requested": None,
        }
        if decision.state != TaskState.QUEUED:  # its outputs are what goes back to the user (transfer)
            fields["output_bytes"] = dataset_bytes(self.storage, f"{job.results_dir}/outputs/{task.dataset}")
        if isinstance(record.environment, dict):  # what the node actually ran (ray executor)
            fields.update(environment_json=json.dumps(record.environment), argv_json=json.dumps(record.argv))
        if decision.state == TaskState.QUEUED:
            fields.update(runner_pid=None, runner_start=None, run_dir=None)
        node = record.extra.get("node") or node
        fields["attempts_json"] = close_attempt(
            task.attempts_json,
            task.attempt,
            ended_ms=fields["ended_ms"],
            outcome=decision.state.value,
            cause=decision.cause,
            node=node if isinstance(node, str) else None,
            node_type=record.extra.get("node_type") if isinstance(record.extra.get("node_type"), str) else None,
        )
        where = f"; attempt {task.attempt} ran on node {node}" if node and node not in decision.cause else ""
        if self.db.move_task(task, decision.state, decision.cause, **fields):
            if decision.state != TaskState.QUEUED:
                self._price_final(job, task)
            said = record.reason if decision.state == TaskState.FAILED and record.reason else None
            self._write_status(job, task, progress={"reason": said} if said else None)
            if task.run_dir:
                self.executor.finish(Path(task.run_dir))
            self.notify(f"job {job.id}: {task.dataset} {decision.state} ({decision.cause}){where}")

    def _schedule(self, jobs: dict[str, Job]) -> None:
        queued = self.db.tasks(states=[TaskState.QUEUED.value])
        waiting = {t.id for t in queued}
        for task_id in [k for k, f in self._describing.items() if f.done() and k not in waiting]:
            del self._describing[task_id]  # described for a task cancelled meanwhile
        if not queued:
            return
        running = self.db.tasks(states=[TaskState.RUNNING.value])
        cpus, memory = self.executor.capacity()
        used_cpus = sum(t.cpus for t in running)
        used_mem = sum(t.memory_bytes for t in running)
        per_analysis: dict[str, int] = {}
        for t in running:
            name = self._job(jobs, t.job_id).analysis or ""
            per_analysis[name] = per_analysis.get(name, 0) + 1
        for task in queued:
            job = self._job(jobs, task.job_id)
            if job.cancel_requested:
                self._cancel_queued(job, task)
                continue
            ended = self._ended.get(task.id)
            if ended is not None and isinstance(ended.outcome(), Exception):  # fails as a start would
                self._start(job, task, ended.outcome())
                continue
            limit = self.loaded_blueprint(job).blueprint.limits.max_concurrent_tasks
            if limit is not None and per_analysis.get(job.analysis or "", 0) >= limit:
                continue
            fits = used_cpus + task.cpus <= cpus and used_mem + task.memory_bytes <= memory
            if not fits and used_cpus > 0:
                continue
            environment = self._environment(job, task)
            described = self._described(task)
            if environment is None or not described:  # being prepared beside the loop; the task stays queued
                continue
            if self._start(job, task, environment):
                used_cpus += task.cpus
                used_mem += task.memory_bytes
                per_analysis[job.analysis or ""] = per_analysis.get(job.analysis or "", 0) + 1
        self._show_waiting(jobs, queued)

    def _described(self, task: Task) -> bool:
        """Whether the task's dataset has been described (size, sha256; a folder's tree digest).

        Once per task, on a thread beside the loop (a dataset may be terabytes): the task is
        told the hash (`task_hash_environment`) and its certificate records this description,
        never a second hashing. A dataset that cannot be read is not described: the task
        starts without its hash and finds the problem itself; the certificate describes it then.
        """
        if task.input_json is not None:
            return True
        future = self._describing.get(task.id)
        if future is None:
            if sum(not f.done() for f in self._describing.values()) < DESCRIBE_THREADS:
                self._describing[task.id] = future = Future()
                threading.Thread(
                    target=self._describe, args=(future, task), name=f"ncaas-describe-{task.id}", daemon=True
                ).start()  # daemon: stopping the manager never waits for a hash
            return False
        if not future.done():
            return False
        del self._describing[task.id]
        if future.exception() is None:
            task.input_json = json.dumps(future.result())
            self.db.update_task(task.id, input_json=task.input_json)
        return True

    def _describe(self, future: Future[dict[str, Any]], task: Task) -> None:
        try:
            future.set_result(describe_dataset(self.storage, task.dataset_path, task.dataset_rel))
        except Exception as exc:  # noqa: BLE001 - an unreadable dataset: the task says what is wrong
            future.set_exception(exc)
        self._wake.set()

    def _cancel_queued(self, job: Job, task: Task) -> None:
        cause = job.stop_reason or "cancelled by request before it started"
        if self.db.move_task(task, TaskState.CANCELLED, cause, ended_ms=now_ms()):
            self._price_final(job, task)
            self._write_status(job, task)

    # -- cost ------------------------------------------------------------------------------
    def _price_final(self, job: Job, task: Task) -> None:
        """Price a task that ended, once: its cost no longer moves (a later profile never re-prices it)."""
        cost = self.costs.task_cost(job, task, self.loaded_blueprint(job).blueprint, final=True)
        if cost is not None:
            task.cost_json = json.dumps(cost)
            self.db.update_task(task.id, cost_json=task.cost_json)

    def _task_cost(self, job: Job, task: Task) -> dict[str, Any] | None:
        try:
            blueprint = self.loaded_blueprint(job).blueprint
        except NcaasError:
            return None
        return self.costs.task_cost(job, task, blueprint)

    def _enforce_caps(self, jobs: dict[str, Job]) -> None:
        """Stop a running job whose cost passed its cap (its group's budget), saying so; once a second per job."""
        for job in jobs.values():
            if job.cost_cap is None or job.cancel_requested or job.state in JOB_TERMINAL:
                continue
            if time.monotonic() - self._caps_checked.get(job.id, -float("inf")) < 1.0:
                continue
            self._caps_checked[job.id] = time.monotonic()
            spent = sum((self._task_cost(job, t) or {}).get("total", 0.0) for t in self.db.tasks(job.id))
            if spent <= job.cost_cap:
                continue
            estimate = json.loads(job.estimate_json).get("cost") if job.estimate_json else None
            currency = self.costs.profile.currency
            basis = (
                f"its group's hard cap on its estimate of {money(estimate, currency)}"
                if estimate is not None
                else "what was left of its group's budget when it started"
            )
            reason = (
                f"stopped by the budget: it had cost {money(spent, currency)}, past {money(job.cost_cap, currency)} "
                f"({basis})"
            )
            self.db.update_job(job.id, cancel_requested=True, stop_reason=reason)
            job.cancel_requested, job.stop_reason = True, reason
            self.notify(f"job {job.id}: {reason}")
            self.cancel(job.id)

    def reclaim(self, job_ref: str, dataset: str | None = None) -> list[str]:
        """Interrupt a Save job's running tasks (or one), as a spot reclaim would: each is killed,
        retried, and the time it lost is charged. Returns the datasets interrupted."""
        job = self.find(job_ref)
        if job.option != "save":
            raise NcaasError(
                f"job {job.id} runs at the standard price, which is never interrupted; only Save jobs "
                "(submitted with --save) can be"
            )
        running = self.db.tasks(job.id, states=[TaskState.RUNNING.value])
        chosen = [t for t in running if dataset in (None, t.dataset, t.dataset_rel)]
        if not chosen:
            what = f"dataset {dataset!r} of job {job.id}" if dataset else f"job {job.id}"
            raise NcaasError(f"{what} has no running task to interrupt; `ncaas status {job.id}` shows its tasks")
        for task in chosen:
            self.db.update_task(task.id, reclaim_requested=True)
        return [t.dataset for t in chosen]

    # -- environments ----------------------------------------------------------------------
    def _environment(self, job: Job, task: Task) -> EnvironmentInfo | Exception | None:
        """The task's environment when ready (or why it cannot be had); None while it is prepared.

        A blueprint naming no environment needs nothing built and is answered here;
        one naming an environment has it prepared on a background thread, once for
        every task waiting for it.
        """
        loaded = self.loaded_blueprint(job)
        if job.id not in self._environment_keys:
            try:
                self._environment_keys[job.id] = environments.spec_for_blueprint(loaded)
            except NcaasError:  # a malformed environment section: ensure_environment says what is wrong
                self._environment_keys[job.id] = None
        key = self._environment_keys[job.id]
        if key is None:
            try:
                return self.ensure_environment(loaded)
            except (ExecutorError, OSError) as exc:
                return exc
        if key in self._prepared:
            return self._prepared[key].outcome()
        prep = self._preparing.get(key)
        if prep is None:
            prep = self._preparing[key] = _Preparation(key.name)
            threading.Thread(
                target=self._prepare, args=(prep, loaded), name=f"ncaas-environment-{key.name}", daemon=True
            ).start()  # daemon: stopping the manager never waits for a build
        prep.waiters.add(task.id)
        return None

    def ensure_environment(self, loaded: LoadedBlueprint, *, progress: Any = None) -> EnvironmentInfo:
        """The executor's environment for ``loaded``, refused when its source lies in group storage.

        Any group member can write its group's folders, so code from there would run at the
        platform's hands; the state folder holds the platform's own secrets.
        """
        try:
            spec = environments.spec_for_blueprint(loaded)
        except NcaasError:  # a malformed environment section: the executor says what is wrong
            spec = None
        if spec is not None:
            places = {"the platform's state folder": self.state_dir}
            if self.storage.is_local:
                places["the storage root"] = Path(self.storage.root)
            try:
                environments.refuse_sources_in(spec, places)
            except NcaasError as exc:
                raise ExecutorError(str(exc)) from None
        if progress is None:
            return self.executor.ensure_environment(loaded)
        return self.executor.ensure_environment(loaded, progress=progress)

    def _prepare(self, prep: _Preparation, loaded: LoadedBlueprint) -> None:
        if not self._prepare_slots.acquire(blocking=False):
            phase, prep.phase = prep.phase, "other environments are being prepared first"
            self._prepare_slots.acquire()
            prep.phase = phase
        try:
            prep.future.set_result(self.ensure_environment(loaded, progress=prep.progress))
        except Exception as exc:  # noqa: BLE001 - handed to the loop, which re-raises all but build failures
            prep.future.set_exception(exc)
        finally:
            self._prepare_slots.release()
        self._wake.set()

    def _collect_preparations(self) -> None:
        """Take the preparations that ended: their result serves this step's tasks."""
        for key, prep in list(self._preparing.items()):
            if not prep.future.done():
                continue
            del self._preparing[key]
            error = prep.future.exception()
            if error is not None and not isinstance(error, (ExecutorError, OSError)):
                raise error  # a fault of ours, not of the build: as loud as on the loop itself
            self._prepared[key] = prep
            self._ended.update(dict.fromkeys(prep.waiters, prep))

    def _show_waiting(self, jobs: dict[str, Job], queued: list[Task]) -> None:
        """Say in the cause of each task still queued what it waits for (written when it changes)."""
        preparing = {tid: prep for prep in self._preparing.values() for tid in prep.waiters}
        for task in queued:
            if task.state != TaskState.QUEUED.value:
                continue
            prep = preparing.get(task.id)
            if prep is not None:
                if time.monotonic() - prep.started < WAIT_SHOWN_AFTER_S:
                    continue
                cause = f"{WAITING_FOR_ENVIRONMENT}: {prep.phase}"
            elif task.id in self._ended and task.cause.startswith(WAITING_FOR_ENVIRONMENT):
                cause = "waiting to start: its environment is ready"  # and for free CPUs or memory
            else:
                continue
            if task.cause != cause and self.db.set_cause(task, cause):
                self._write_status(self._job(jobs, task.job_id), task)

    # -- starting --------------------------------------------------------------------------
    def _start(self, job: Job, task: Task, environment: EnvironmentInfo | Exception) -> bool:
        """Start the task in its prepared environment; or, given why there is none, fail it the same way."""
        attempt = task.attempt + 1
        run_dir = self.state_dir / "runs" / job.id / f"{task.dataset}.{attempt}"
        started = now_ms()
        cause = f"attempt {attempt} started"
        if self.executor.queues:  # its clock starts when its node says it started (_take_progress)
            cause = f"{WAITING_FOR_NODE} {_resources(task)} (attempt {attempt})"
        if not self.db.move_task(
            task,
            TaskState.RUNNING,
            cause,
            attempt=attempt,
            started_ms=started,
            run_dir=str(run_dir),
            ended_ms=None,
            attempts_json=open_attempt(task.attempts_json, attempt, started),
        ):
            return False
        if job.state == JobState.QUEUED.value:
            self.db.move_job(job, JobState.RUNNING.value, "first task started", started_ms=started)
        try:
            if isinstance(environment, Exception):
                raise environment
            problem = self._input_problem(job, task)
            if problem is not None:
                raise ExecutorError(problem)
            spec = self._spec(job, task, run_dir, environment)
            handle = self.executor.launch(spec)
        except (ExecutorError, OSError) as exc:
            self._stopped(job, task, ExitRecord(error=str(exc), end_ms=now_ms()))
            return False
        self.db.update_task(
            task.id, runner_pid=handle.pid, runner_start=handle.start_time, argv_json=json.dumps(spec.argv)
        )
        return True

    def _input_problem(self, job: Job, task: Task) -> str | None:
        """The dataset checked again just before it is shown to the task: one changed since it was
        submitted into (or to hold) a link leading out of it, a FIFO or a device is refused."""
        try:
            self.storage.resolve(job.group, job.input_area or "inputs", task.dataset_rel)
            if job.review is not None:  # a curation job (ncaas.review) runs on the decisions it certifies
                from ..review.curation import decisions_problem

                problem = decisions_problem(self.storage, job.group, job.review)
                if problem is not None:
                    return problem
            return dataset_problem(self.storage, task.dataset_rel, task.dataset_path)
        except PathRefused as exc:
            return str(exc)
        except FileNotFoundError:
            return None  # gone: the task says so itself

    def _spec(self, job: Job, task: Task, run_dir: Path, env_info: EnvironmentInfo) -> TaskSpec:
        loaded = self.loaded_blueprint(job)
        bp = loaded.blueprint
        self._ensure_config(job)
        results = self._task_path(job.results_dir)
        output = results / "outputs" / task.dataset
        if task.attempt > 1 and output.exists():
            shutil.rmtree(output)  # a retry starts from a clean output folder
        values = {
            "{input}": str(self._task_path(task.dataset_path)),
            "{config}": str(results / "config.json"),
            "{output}": str(output),
            "{python}": env_info.python,
        }
        command, extra_inputs = bp.command, []
        review = job.review
        if review is not None and bp.review is not None:  # a curation job (ncaas.review): the curate command
            values["{result}"] = values["{input}"]
            values["{decisions}"] = str(self._task_path(self.storage.join(review["decisions"]["path"])))
            command, extra_inputs = bp.review.curate, [Path(values["{decisions}"])]
        argv = []
        for arg in command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            argv.append(arg)
        environment = dataclasses.asdict(env_info)
        self.db.update_task(task.id, argv_json=json.dumps(argv), environment_json=json.dumps(environment))
        scratch = run_dir / "scratch"
        threads = str(bp.resources.cpus)
        env = {
            **_base_env(),
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(scratch),
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "NCAAS_JOB": job.id,
            "NCAAS_DATASET": task.dataset,
            "NCAAS_ATTEMPT": str(task.attempt),
            **task_hash_environment(
                input_description=json.loads(task.input_json) if task.input_json else None,
                config=job.config,
                blueprint_sha256=job.blueprint["sha256"],
                lock_hash=env_info.lock_hash,
            ),
        }
        return TaskSpec(
            argv=argv,
            env=env,
            cwd=scratch,
            inputs=[Path(values["{input}"]), Path(values["{config}"]), *extra_inputs],
            environment=Path(env_info.path) if env_info.path else None,
            output_dir=output,
            scratch_dir=scratch,
            memory_limit=bp.resources.memory,
            cpus=bp.resources.cpus,
            timeout=bp.resources.timeout,
            log_path=results / "logs" / f"{task.dataset}.log",
            progress_path=self._progress_path(job, task, run_dir),
            run_dir=run_dir,
            status_fields=self._status_fields(job, task),
            blueprint=loaded,
        )

    def _progress_remote(self) -> bool:
        """Whether tasks report progress through storage (they run on other machines)."""
        return self.executor.stages_storage and not self.storage.is_local

    def _progress_path(self, job: Job, task: Task, run_dir: Path) -> Path:
        """Where a task's supervisor writes its progress: its run folder here; storage for
        executors whose tasks run on other machines (the manager reads it from there)."""
        if self._progress_remote():
            return Path(f"{job.results_dir}/.progress/{task.dataset}.json")
        return run_dir / "progress.json"

    def _take_progress(self, job: Job, task: Task, *, final: bool = False) -> None:
        """Copy a running task's progress (what its supervisor last wrote) into its status file.

        The manager alone writes ``status/<key>.json``; the supervisor writes only its own
        progress file. Copied when it changed; from storage at most every PROGRESS_POLL_S.
        """
        if task.run_dir is None:
            return
        path = self._progress_path(job, task, Path(task.run_dir))
        seen, read_at = self._progress_seen.get(task.id, (None, -float("inf")))
        try:
            if self._progress_remote():
                if not final and time.monotonic() - read_at < PROGRESS_POLL_S:
                    return
                text = self.storage.read_text(str(path))
                stamp: Any = text
            else:
                stamp = path.stat().st_mtime_ns
                if stamp == seen:
                    return
                text = path.read_text()
            data = json.loads(text)
        except (OSError, ValueError, NcaasError):
            return  # not written yet, or being replaced: the next step looks again
        self._progress_seen[task.id] = (stamp, time.monotonic())
        if not isinstance(data, dict) or stamp == seen or data.get("attempt", task.attempt) != task.attempt:
            return  # unchanged, or an earlier attempt's last words (one progress file serves every attempt)
        if _waiting_for_node(task) and isinstance(data.get("node_started_ms"), int):
            self._started_on_node(task, str(data.get("node")), data["node_started_ms"])
        self._write_status(job, task, progress={k: data[k] for k in PROGRESS_KEYS if k in data})

    def _started_on_node(self, task: Task, node: str, started_ms: int) -> None:
        """A queued Ray task reached its node: its clock starts now, and the attempt names the node."""
        attempts = start_attempt(task.attempts_json, task.attempt, node=node, started_ms=started_ms)
        if self.db.set_cause(task, f"attempt {task.attempt} running on node {node}"):
            self.db.update_task(task.id, started_ms=started_ms, attempts_json=attempts)
            task.started_ms, task.attempts_json = started_ms, attempts

    def _ensure_config(self, job: Job) -> None:
        """Write the job's config.json if its creation was cut short (a kill, a full disk); once per job."""
        if job.id in self._configs:
            return
        path = f"{job.results_dir}/config.json"
        if not self.storage.exists(path):
            self.storage.write_text(path, json.dumps(job.config, indent=2))
        self._configs.add(job.id)

    def _task_path(self, path: str) -> Path:
        """Where a task finds a storage path: the local file, or the storage path itself for
        executors that fetch and upload data on their nodes (ray)."""
        if self.executor.stages_storage and not self.storage.is_local:
            return Path(path)
        return self.storage.local_path(path)

    def loaded_blueprint(self, job: Job) -> LoadedBlueprint:
        """The blueprint exactly as it was when the job was submitted, from the archive.

        Looked up by the content hash the platform computed when it made the job; a job made
        before the archive existed has its recorded content checked against that hash, then
        archived.
        """
        if job.id not in self._blueprints:
            info = job.blueprint
            loaded = self.archive.get(info["sha256"])
            if loaded is None:
                model = Blueprint.model_validate(info["content"])
                if model.content_hash() != info["sha256"]:
                    raise NcaasError(
                        f"job {job.id}: its recorded blueprint does not match its sha256; the job database was altered"
                    )
                loaded = LoadedBlueprint(
                    model, Path(info["path"]), info["sha256"], info.get("git_commit"), bool(info.get("git_dirty"))
                )
                self.archive.put(loaded)
            self._blueprints[job.id] = loaded
        return self._blueprints[job.id]

    # -- jobs ----------------------------------------------------------------------------
    def _settle(self, jobs: dict[str, Job]) -> None:
        unfinished = self.db.unfinalized([s.value for s in JOB_TERMINAL])
        listed = {j.id for j in unfinished}
        for job_id in [k for k, f in self._certifying.items() if f.done() and k not in listed]:
            del self._certifying[job_id]  # written, and the database says so
        for job in [*jobs.values(), *unfinished]:
            tasks = self.db.tasks(job.id)
            new = job_state([TaskState(t.state) for t in tasks])
            if new == JobState.QUEUED and job.state == JobState.RUNNING.value:
                new = JobState.RUNNING
            if new.value != job.state and job.state not in JOB_TERMINAL:
                ended = now_ms() if new in JOB_TERMINAL else None
                cause = _job_cause(tasks, new)
                if job.stop_reason and new in JOB_TERMINAL:
                    cause = f"{job.stop_reason}; {cause}"
                if not self.db.move_job(job, new.value, cause, ended_ms=ended):
                    continue
            if job.state == JobState.REJECTED.value and not job.finalized:
                self._finalize_rejection(job)
            elif job.state in JOB_TERMINAL and not job.finalized:
                self._finalize_aside(job, tasks)

    def _finalize_aside(self, job: Job, tasks: list[Task]) -> None:
        """Finalize on a background thread: hashing a job's inputs and outputs (a task may leave a
        sparse terabyte) never holds up the loop, so other groups' jobs go on and a stop is prompt."""
        running = self._certifying.get(job.id)
        if running is None:
            self._certifying[job.id] = future = Future[None]()
            threading.Thread(
                target=self._certify, args=(future, job, tasks), name=f"ncaas-certificate-{job.id}", daemon=True
            ).start()  # daemon: a restarted manager writes it again
        elif running.done() and (error := running.exception()) is not None:
            del self._certifying[job.id]  # failed: the loop reports it and the next step tries again
            raise error

    def _certify(self, future: Future[None], job: Job, tasks: list[Task]) -> None:
        with self._certify_slots:
            try:
                self._finalize(job, tasks)
                future.set_result(None)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which says what failed
                future.set_exception(exc)
        self._wake.set()

    def _finalize(self, job: Job, tasks: list[Task]) -> None:
        """Final statuses, the certificate, then end.json last; idempotent."""
        for task in tasks:
            self._write_status(job, task)
        cert = build_certificate(
            self.storage,
            job,
            tasks,
            self.db.events(job.id),
            executor=self.executor.describe(),
            isolation=self.executor.isolation,
            cost=self._cost_record(job, tasks),
        )
        cert = self.keys.sign(cert)
        self.storage.write_text(f"{job.results_dir}/certificate.json", json.dumps(cert, indent=2))
        self.storage.write_text(f"{job.results_dir}/certificate.txt", render_text(cert))
        self._write_end(job, tasks)
        # the run folders go before the job is marked finalized: a manager killed in between
        # finalizes it again (idempotent) rather than leaving run folders and sandboxes behind
        if self._progress_remote():
            self.storage.remove(f"{job.results_dir}/.progress")  # what the nodes reported, all copied
        runs = self.state_dir / "runs" / job.id
        for run_dir in runs.iterdir() if runs.is_dir() else []:
            self.executor.finish(run_dir)  # idempotent; covers a manager killed before it dissolved one
        shutil.rmtree(runs, ignore_errors=True)
        self.db.update_job(job.id, finalized=True)
        job.finalized = True
        self._blueprints.pop(job.id, None)
        self._environment_keys.pop(job.id, None)
        self._configs.discard(job.id)
        self.notify(f"job {job.id}: {job.state}; results in {job.results_dir}")

    def _cost_record(self, job: Job, tasks: list[Task]) -> dict[str, Any]:
        """The job's cost as its certificate and end.json record it: the profile, the total, the estimate."""
        return {
            "profile": self.costs.profile.identity(),
            "option": job.option,
            "job": self.costs.job_cost(tasks),
            "estimate": json.loads(job.estimate_json) if job.estimate_json else None,
            "cap": job.cost_cap,
        }

    def cancel(self, job_ref: str) -> Job:
        """Request cancellation: queued tasks never start, running ones are stopped."""
        job = self.find(job_ref)
        if job.state in JOB_TERMINAL:
            return job
        self.db.update_job(job.id, cancel_requested=True)
        job.cancel_requested = True
        for task in self.db.tasks(job.id, states=[TaskState.QUEUED.value]):
            self._cancel_queued(job, task)
        for task in self.db.tasks(job.id, states=[TaskState.RUNNING.value]):
            handle = self._handle(task)
            if handle is not None:
                self.executor.cancel(handle)
        return job

    def find(self, job_ref: str) -> Job:
        job = self.db.find_job(job_ref)
        if job is None:
            raise JobNotFound(f"no job {job_ref!r} in {self.db.url}; `ncaas status` lists the jobs")
        return job

    # -- files ---------------------------------------------------------------------------
    def _status_fields(self, job: Job, task: Task) -> dict[str, Any]:
        return {
            "job": job.id,
            "dataset": task.dataset,
            "input": task.dataset_rel,
            "state": TaskState.QUEUED.value if _waiting_for_node(task) else task.state,
            "cause": task.cause,
            "attempt": task.attempt,
        }

    def _write_status(self, job: Job, task: Task, *, progress: dict[str, Any] | None = None) -> None:
        """Write ``status/<key>.json`` (only the manager does), with the task's latest ``progress``."""
        path = f"{job.results_dir}/status/{task.dataset}.json"
        previous: dict[str, Any] = {}
        if self.storage.exists(path):
            try:
                previous = json.loads(self.storage.read_text(path))
            except (json.JSONDecodeError, FileNotFoundError):
                previous = {}
        status = {
            "progress": 0.0,
            "message": "",
            **previous,
            **(progress or {}),
            **self._status_fields(job, task),
            "start_ms": None if _waiting_for_node(task) else task.started_ms,
            "end_ms": task.ended_ms,
            "exit_code": task.exit_code,
            "cpu_seconds": task.cpu_seconds,
            "peak_memory_bytes": task.peak_memory_bytes,
            "attempts": [a.to_json() for a in load_attempts(task.attempts_json)],
            "cost": self._task_cost(job, task),
            "updated_ms": now_ms(),
        }
        if _waiting_for_node(task):
            status.update(progress=0.0, message=task.cause)
        if task.state == TaskState.SUCCEEDED.value:
            status["progress"] = 1.0
        if status["state"] == TaskState.QUEUED.value:  # an earlier attempt's node is in its attempts
            for key in ("node", "node_timings", "pid"):
                status.pop(key, None)
        self.storage.write_text(path, json.dumps(status, indent=1))

    def _write_end(self, job: Job, tasks: list[Task], *, errors: list[str] | None = None) -> None:
        end: dict[str, Any] = {
            "job": job.id,
            "group": job.group,
            "analysis": job.analysis,
            "state": job.state,
            "cause": job.cause,
            "ended_ms": job.ended_ms or now_ms(),
            "tasks": {t.dataset: t.state for t in tasks},
        }
        if errors is None:
            end["cost"] = self.costs.job_cost(tasks)
        if errors is not None:
            end["errors"] = errors
        else:
            end["certificate"] = "certificate.json"
        self.storage.write_text(f"{job.results_dir}/end.json", json.dumps(end, indent=2))


T = TypeVar("T")


@dataclasses.dataclass
class _Call:
    """Work another thread hands to the loop, and where its answer goes."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any] = dataclasses.field(default_factory=Future)


class _Preparation:
    """An environment being prepared on a background thread, and the tasks waiting for it."""

    def __init__(self, label: str):
        self.label = label
        self.started = time.monotonic()
        self.future: Future[EnvironmentInfo] = Future()
        self.waiters: set[int] = set()  # task ids; touched by the loop only
        self.phase = f"checking {label}"  # what the waiting tasks' cause says; set by the thread

    def outcome(self) -> EnvironmentInfo | Exception:
        """The environment, or why it could not be prepared (once the future is done)."""
        error = self.future.exception()
        if error is None:
            return self.future.result()
        assert isinstance(error, Exception)  # _prepare hands over Exceptions only
        return error

    def progress(self, fraction: float, message: str) -> None:
        """Called by the build: only a build, or a wait for another process' build, reports progress."""
        if message.startswith("waiting: "):  # ncaas.isolation.environments: another process holds the build lock
            self.phase = message.removeprefix("waiting: ")
        elif fraction < 1.0:
            self.phase = f"building {self.label} (first use)"


def _waiting_for_node(task: Task) -> bool:
    """Launched, but still in the executor's queue: no node has taken it yet."""
    return task.state == TaskState.RUNNING.value and task.cause.startswith(WAITING_FOR_NODE)


def _resources(task: Task) -> str:
    cpus = f"{task.cpus} cpu" + ("" if task.cpus == 1 else "s")
    return f"{cpus} and {task.memory_bytes / 2**30:.1f} GiB" if task.memory_bytes else cpus


def _attempt_node(task: Task) -> str | None:
    attempts = [a for a in load_attempts(task.attempts_json) if a.number == task.attempt]
    return attempts[0].node if attempts else None


def _job_cause(tasks: list[Task], state: JobState) -> str:
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    return f"{state}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NCAAS_")}

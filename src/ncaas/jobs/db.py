"""Persistence of jobs, tasks and every transition (the job's story), through SQLAlchemy.

The default is SQLite at ``<root>/.ncaas/jobs.sqlite`` (WAL mode, so the CLI and a
manager can share it); any SQLAlchemy URL works. State changes are compare-and-set
(``UPDATE ... WHERE state = old``) so two processes never act on the same transition.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..exceptions import NcaasError, StorageError
from ..private import private_sqlite
from ..schema import create_or_update
from .states import TaskState, check_transition

__all__ = ["Budget", "Chain", "Event", "Job", "JobDB", "ReviewAction", "Task", "default_db_url", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


def default_db_url(root: str) -> str:
    return f"sqlite:///{Path(root) / '.ncaas' / 'jobs.sqlite'}"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    analysis: Mapped[str | None] = mapped_column(String(64))
    submission: Mapped[str] = mapped_column(String(512))
    submission_key: Mapped[str] = mapped_column(String(700), unique=True)
    content_key: Mapped[str] = mapped_column(String(128), index=True)
    blueprint_json: Mapped[str] = mapped_column(Text, default="{}")
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    config_name: Mapped[str | None] = mapped_column(String(512))
    submit_json: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16), index=True)
    cause: Mapped[str] = mapped_column(Text, default="")
    results_dir: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    started_ms: Mapped[int | None] = mapped_column(BigInteger)
    ended_ms: Mapped[int | None] = mapped_column(BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    finalized: Mapped[bool] = mapped_column(Boolean, default=False)
    # a step of a chain (ncaas.pipelines): the chain, the step's index, where its dataset lives
    # ("inputs", or "results" for an earlier step's outputs) and the upstream job's certificate
    chain_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    chain_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chain_dataset: Mapped[str | None] = mapped_column(String(512), nullable=True)  # the dataset's key
    input_area: Mapped[str | None] = mapped_column(String(16), nullable=True)
    upstream_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    # a curation job (ncaas.review): the reviewed job's certificate, its dataset and the decisions file
    review_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def upstream(self) -> dict[str, Any] | None:
        return json.loads(self.upstream_json) if self.upstream_json else None

    @property
    def review(self) -> dict[str, Any] | None:
        return json.loads(self.review_json) if self.review_json else None

    # ncaas.cost: who submitted it (when known), at which price, what it was expected to cost, and
    # the cost at which it is stopped (a budget's hard cap); why it was stopped, when it was
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pricing_option: Mapped[str | None] = mapped_column(String(16), nullable=True)
    estimate_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    cost_cap: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def option(self) -> str:
        """The price it runs at: ``standard`` (on demand) or ``save`` (interruptible)."""
        return self.pricing_option or "standard"

    @property
    def blueprint(self) -> dict[str, Any]:
        return json.loads(self.blueprint_json)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    dataset: Mapped[str] = mapped_column(String(512))
    dataset_rel: Mapped[str] = mapped_column(Text)
    dataset_path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    cause: Mapped[str] = mapped_column(Text, default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    run_dir: Mapped[str | None] = mapped_column(Text)
    runner_pid: Mapped[int | None] = mapped_column(Integer)
    runner_start: Mapped[float | None] = mapped_column(Float)
    started_ms: Mapped[int | None] = mapped_column(BigInteger)
    ended_ms: Mapped[int | None] = mapped_column(BigInteger)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    argv_json: Mapped[str] = mapped_column(Text, default="[]")
    environment_json: Mapped[str] = mapped_column(Text, default="{}")
    input_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # the dataset, described before launch
    attempts_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # ncaas.jobs.attempts: every attempt
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # ncaas.cost: priced when it ended
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reclaim_requested: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # a Save task to interrupt


class Budget(Base):
    """A group's budget per period (ncaas.cost.budgets)."""

    __tablename__ = "budgets"

    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[float] = mapped_column(Float)
    period: Mapped[str] = mapped_column(String(16), default="month")
    hard_cap: Mapped[float] = mapped_column(Float, default=1.5)  # a running job stops past this x its estimate
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Chain(Base):
    """A pipeline submitted on datasets: its steps run as jobs (``Job.chain_id``), one per dataset and step."""

    __tablename__ = "chains"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    submission: Mapped[str] = mapped_column(String(512))
    submission_key: Mapped[str] = mapped_column(String(700), unique=True)
    pipeline_json: Mapped[str] = mapped_column(Text)  # the steps as validated: analysis, blueprint sha256, config
    datasets_json: Mapped[str] = mapped_column(Text)  # [[key, rel, path], ...]
    state: Mapped[str] = mapped_column(String(16), index=True)
    cause: Mapped[str] = mapped_column(Text, default="")
    results_dir: Mapped[str] = mapped_column(Text)
    rerun_of: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool | None] = mapped_column(Boolean, default=False, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    ended_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    @property
    def pipeline(self) -> dict[str, Any]:
        return json.loads(self.pipeline_json)

    @property
    def datasets(self) -> list[list[str]]:
        return json.loads(self.datasets_json)


class ReviewAction(Base):
    """One decision of a review of a job's dataset (ncaas.review): numbered per dataset, never changed."""

    __tablename__ = "review_actions"
    __table_args__ = (UniqueConstraint("job_id", "dataset", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(512))
    seq: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # accept, reject, merge, undo
    neurons_json: Mapped[str] = mapped_column(Text, default="[]")
    undoes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(40))  # ISO 8601 UTC, to the microsecond


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str | None] = mapped_column(String(512))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(Text, default="")
    at_ms: Mapped[int] = mapped_column(BigInteger)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


class JobDB:
    """Jobs, tasks and events in one database."""

    def __init__(self, url: str):
        self.url = url
        try:
            private_sqlite(url)  # the state folder 0700, the database 0600: jobs and accounts are private
            self.engine: Engine = create_engine(url)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            create_or_update(Base.metadata, self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot open the job database {url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ---------------------------------------------------------------------------
    def job(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def find_job(self, prefix: str) -> Job | None:
        """A job by id or unique id prefix."""
        with self.session() as s:
            exact = s.get(Job, prefix)
            if exact is not None:
                return exact
            found = s.scalars(select(Job).where(Job.id.startswith(prefix, autoescape=True)).limit(2)).all()
            return found[0] if len(found) == 1 else None

    def jobs(self, *, states: list[str] | None = None, limit: int | None = None) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.created_ms.desc())
            if states is not None:
                q = q.where(Job.state.in_(states))
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def tasks(self, job_id: str | None = None, *, states: list[str] | None = None) -> list[Task]:
        with self.session() as s:
            q = select(Task).order_by(Task.id)
            if job_id is not None:
                q = q.where(Task.job_id == job_id)
            if states is not None:
                q = q.where(Task.state.in_(states))
            return list(s.scalars(q))

    def task(self, task_id: int) -> Task | None:
        with self.session() as s:
            return s.get(Task, task_id)

    def events(self, job_id: str) -> list[Event]:
        with self.session() as s:
            return list(s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))

    def unfinalized(self, states: list[str]) -> list[Job]:
        """Jobs in ``states`` whose end files are not written yet."""
        with self.session() as s:
            q = select(Job).where(Job.state.in_(states), Job.finalized.is_(False)).order_by(Job.created_ms)
            return list(s.scalars(q))

    def seen_submission(self, key: str) -> Job | None:
        with self.session() as s:
            return s.scalars(select(Job).where(Job.submission_key == key)).first()

    def same_content(self, group: str, content_key: str) -> Job | None:
        with self.session() as s:
            return s.scalars(
                select(Job).where(Job.group == group, Job.content_key == content_key).order_by(Job.created_ms)
            ).first()

    def chain(self, chain_id: str) -> Chain | None:
        with self.session() as s:
            return s.get(Chain, chain_id)

    def find_chain(self, prefix: str) -> Chain | None:
        """A chain by id or unique id prefix."""
        with self.session() as s:
            exact = s.get(Chain, prefix)
            if exact is not None:
                return exact
            found = s.scalars(select(Chain).where(Chain.id.startswith(prefix, autoescape=True)).limit(2)).all()
            return found[0] if len(found) == 1 else None

    def chains(self, *, states: list[str] | None = None, limit: int | None = None) -> list[Chain]:
        with self.session() as s:
            q = select(Chain).order_by(Chain.created_ms.desc())
            if states is not None:
                q = q.where(Chain.state.in_(states))
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def chain_jobs(self, chain_id: str) -> list[Job]:
        with self.session() as s:
            return list(s.scalars(select(Job).where(Job.chain_id == chain_id).order_by(Job.created_ms)))

    def seen_chain(self, key: str) -> Chain | None:
        with self.session() as s:
            return s.scalars(select(Chain).where(Chain.submission_key == key)).first()

    # -- writes --------------------------------------------------------------------------
    def add_chain(self, chain: Chain) -> bool:
        """Insert a chain; False when its submission was already recorded."""
        try:
            with self.session() as s, s.begin():
                s.add(chain)
        except SQLAlchemyError as exc:
            if self.seen_chain(chain.submission_key) is not None:
                return False
            raise NcaasError(f"cannot record chain {chain.id}: {exc}") from exc
        return True

    def update_chain(self, chain_id: str, **fields: Any) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Chain).where(Chain.id == chain_id).values(**fields))

    def add_job(self, job: Job, tasks: list[Task], cause: str) -> bool:
        """Insert a job and its tasks; False when its submission was already recorded."""
        try:
            with self.session() as s, s.begin():
                s.add(job)
                s.flush()
                for task in tasks:
                    task.job_id = job.id
                    s.add(task)
                s.add(Event(job_id=job.id, to_state=job.state, cause=cause, at_ms=job.created_ms))
                for task in tasks:
                    s.add(
                        Event(
                            job_id=job.id, dataset=task.dataset, to_state=task.state, cause=cause, at_ms=job.created_ms
                        )
                    )
        except SQLAlchemyError as exc:
            if self.seen_submission(job.submission_key) is not None:
                return False
            raise NcaasError(f"cannot record job {job.id}: {exc}") from exc
        return True

    def move_task(self, task: Task, new: TaskState, cause: str, **fields: Any) -> bool:
        """Compare-and-set a task's state, recording the event; False if someone moved it first."""
        old = TaskState(task.state)
        check_transition(old, new)
        at = now_ms()
        with self.session() as s, s.begin():
            done = _changed(
                s.execute(
                    update(Task)
                    .where(Task.id == task.id, Task.state == old.value)
                    .values(state=new.value, cause=cause, **fields)
                )
            )
            if done.rowcount != 1:
                return False
            s.add(
                Event(
                    job_id=task.job_id,
                    dataset=task.dataset,
                    from_state=old.value,
                    to_state=new.value,
                    cause=cause,
                    at_ms=at,
                )
            )
        task.state = new.value
        task.cause = cause
        for key, value in fields.items():
            setattr(task, key, value)
        return True

    def set_cause(self, task: Task, cause: str) -> bool:
        """Say why a task is where it is, without moving it; False if it moved meanwhile (say, cancelled)."""
        with self.session() as s, s.begin():
            done = _changed(
                s.execute(update(Task).where(Task.id == task.id, Task.state == task.state).values(cause=cause))
            )
        if done.rowcount != 1:
            return False
        task.cause = cause
        return True

    def update_task(self, task_id: int, **fields: Any) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Task).where(Task.id == task_id).values(**fields))

    def move_job(self, job: Job, new: str, cause: str, **fields: Any) -> bool:
        old = job.state
        if old == new and not fields:
            return True
        with self.session() as s, s.begin():
            done = _changed(
                s.execute(
                    update(Job).where(Job.id == job.id, Job.state == old).values(state=new, cause=cause, **fields)
                )
            )
            if done.rowcount != 1:
                return False
            if old != new:
                s.add(Event(job_id=job.id, from_state=old, to_state=new, cause=cause, at_ms=now_ms()))
        job.state = new
        job.cause = cause
        for key, value in fields.items():
            setattr(job, key, value)
        return True

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id).values(**fields))


def _changed(result: Result[Any]) -> CursorResult[Any]:
    """An UPDATE's result, which tells how many rows it changed (``rowcount``)."""
    assert isinstance(result, CursorResult)
    return result

"""Submit files and their validation into a job request.

Two forms are accepted: ours, ``{"analysis", "dataname", "configname", "timestamp"}``,
and NeuroCAAS', which has no ``analysis`` (the manager's default analysis applies).
``dataname`` is a string or a list; names may be relative to ``inputs/`` or carry the
``<group>/inputs/`` prefix NeuroCAAS uses. Validation collects every problem before
anything runs and raises :class:`SubmissionRejected` with messages a scientist can act on.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .blueprint import BlueprintRegistry, LoadedBlueprint
from .exceptions import NcaasError, PathRefused, SpecialFileRefused, StorageError, SubmissionRejected
from .storage import KINDS, Storage

__all__ = [
    "Dataset",
    "JobRequest",
    "SubmitFile",
    "SubmitLimits",
    "build_request",
    "chain_inputs",
    "dataset_key",
    "dataset_name",
    "parse_submit_file",
    "too_large",
]


def submission_timestamp() -> str:
    """When a submission was made, to the microsecond (UTC): two made in the same second are two jobs.

    A submission whose content repeats one already run is refused (a copied file runs once); the
    timestamp tells a deliberate second run of the same data and config from a copy.
    """
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


KEY_MAX_BYTES = 200  # the longest name made of a key, ".<key>.json.<8 hex>.tmp", stays within 255 bytes
MAX_PROBLEM_LINES = 20  # a rejection lists at most this many distinct problems
MAX_PROBLEM_CHARS = 1000  # and each in at most this many characters


class SubmitFile(BaseModel):
    """The content of ``<group>/submissions/<name>.submit.json``."""

    model_config = ConfigDict(extra="forbid")

    analysis: str | None = None
    pipeline: str | None = None  # a pipeline file in configs/ (ncaas.pipelines): a chain, not a job
    dataname: list[str]
    configname: str | None = None
    timestamp: str | int | float | None = None
    pricing: Literal["standard", "save"] | None = None  # save: cheaper, may be interrupted (ncaas.cost)

    @field_validator("dataname", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("dataname")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("lists no dataset; give at least one file or folder name from inputs/")
        return value


@dataclass(frozen=True)
class Dataset:
    key: str  # name used for logs/<key>.log, status/<key>.json, outputs/<key>/
    rel: str  # path relative to <group>/inputs/
    path: str  # full storage path


@dataclass(frozen=True)
class JobRequest:
    group: str
    blueprint: LoadedBlueprint
    datasets: list[Dataset]
    config: dict[str, Any]
    config_name: str | None
    submit: dict[str, Any]

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.config).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SubmitLimits:
    """How large a submission may be. One submit file is read and checked while every other
    group waits, so its size and its dataset count are capped before it is parsed in full."""

    max_bytes: int = 1 << 20  # 1 MiB: ~40,000 datasets of ordinary names
    max_datasets: int = 10_000

    @classmethod
    def from_env(cls, max_bytes: int | str | None = None, max_datasets: int | str | None = None) -> SubmitLimits:
        """The limits given, else ``NCAAS_MAX_SUBMIT_SIZE`` / ``NCAAS_MAX_DATASETS``, else the defaults."""
        from .blueprint import parse_bytes

        max_bytes = max_bytes if max_bytes is not None else os.environ.get("NCAAS_MAX_SUBMIT_SIZE")
        max_datasets = max_datasets if max_datasets is not None else os.environ.get("NCAAS_MAX_DATASETS")
        try:
            size = cls.max_bytes if max_bytes is None else parse_bytes(max_bytes)
        except ValueError as exc:
            raise NcaasError(f"maximum submit-file size (--max-submit-size, NCAAS_MAX_SUBMIT_SIZE): {exc}") from None
        try:
            count = cls.max_datasets if max_datasets is None else int(max_datasets)
        except ValueError:
            raise NcaasError(
                f"maximum datasets per job (--max-datasets, NCAAS_MAX_DATASETS): {max_datasets!r} is not a whole number"
            ) from None
        if size < 1 or count < 1:
            raise NcaasError("the submit-file size and dataset limits must be at least 1")
        return cls(size, count)


def too_large(name: str, size: int, limit: int) -> str:
    """Why a submit file of ``size`` bytes is refused unread."""
    return (
        f"{name} is {_size_text(size)}, more than the {_size_text(limit)} a submit file may be; "
        "nothing in it was read: split it into several submissions"
    )


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{size} bytes"


_ESCAPES = {"%": "%25", "/": "%2F", "_": "%5F"}


def dataset_key(rel: str) -> str:
    """The name a dataset's files are kept under: status/<key>.json, logs/<key>.log, outputs/<key>/.

    Distinct datasets always get distinct keys, and :func:`dataset_name` gives the dataset back.
    An ordinary name is its own key, a nested one with '/' written '__' (``sessions/day1`` ->
    ``sessions__day1``). A name that this would make ambiguous (``x__y.npy`` against ``x/y.npy``)
    or hidden — '__' in one of its parts, a part of a nested name starting or ending with '_', a
    '%', a leading '.' — is written with %XX escapes instead (``x%5F%5Fy.npy``): an ordinary key
    never holds '%', so the two kinds never meet. A key longer than ``KEY_MAX_BYTES`` is cut and
    ends with '%-' and a hash of the whole name (the job's tasks and certificate name its input).
    """
    parts = rel.split("/")
    nested = len(parts) > 1
    plain = not (
        "%" in rel
        or rel.startswith(".")
        or any("__" in p or (nested and (p.startswith("_") or p.endswith("_"))) for p in parts)
    )
    if plain:
        key = "__".join(parts)
    else:
        key = "".join(_ESCAPES.get(c, c) for c in rel)
        key = "%2E" + key[1:] if key.startswith(".") else key
    if len(key.encode()) <= KEY_MAX_BYTES:
        return key
    digest = hashlib.sha256(rel.encode()).hexdigest()[:16]
    cut = key.encode()[: KEY_MAX_BYTES - 2 - len(digest)].decode("utf-8", "ignore")
    cut = cut[:-2] if cut[-2:-1] == "%" else cut[:-1] if cut.endswith("%") else cut  # never half an escape
    return f"{cut}%-{digest}"


def dataset_name(key: str) -> str | None:
    """The dataset (its path in inputs/) a key stands for; None for a key cut for length."""
    if "%-" in key:
        return None
    return unquote(key) if "%" in key else key.replace("__", "/")


def parse_submit_file(raw: bytes, *, name: str = "submit file", limits: SubmitLimits | None = None) -> SubmitFile:
    """Parse submit-file bytes, raising SubmissionRejected with what is malformed."""
    example = '{"analysis": "framestats", "dataname": ["movie.npy"], "configname": "config.yaml"}'
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SubmissionRejected(f"{name} is not UTF-8 text; write it as a JSON file") from None
    except json.JSONDecodeError as exc:
        raise SubmissionRejected(
            f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); expected e.g. {example}"
        ) from None
    except RecursionError:  # [[[[... : Python's parser gives up; the manager must not
        raise SubmissionRejected(f"{name} nests lists or objects too deeply; expected e.g. {example}") from None
    if not isinstance(data, dict):
        raise SubmissionRejected(f"{name} must hold a JSON object with dataname, configname, ...")
    if limits is not None and isinstance(data.get("dataname"), list):
        _check_count(len(data["dataname"]), limits)  # before each name is validated
    try:
        return SubmitFile.model_validate(data)
    except ValidationError as exc:
        problems = _Problems()
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field; allowed: analysis, pipeline, dataname, configname, timestamp"
            elif err["type"] == "missing":
                msg = "missing; name the dataset(s) to analyse (a string or a list)" if field == "dataname" else msg
            where = [str(p) for p in err["loc"] if not isinstance(p, int)]  # dataname.0, dataname.1: one kind
            problems.add(f"{name}: field '{field}': {msg}", kind=f"{where}:{err['type']}")
        raise SubmissionRejected(problems.lines()) from None


def _check_count(count: int, limits: SubmitLimits) -> None:
    if count > limits.max_datasets:
        raise SubmissionRejected(
            f"the submission lists {count:,} datasets, more than the "
            f"{limits.max_datasets:,} a job may have; split it into several submissions"
        )


def _strip_prefix(name: str, group: str, area: str) -> str:
    for prefix in (f"{group}/{area}/", f"{area}/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class _AliasInConfig(yaml.YAMLError):
    def __init__(self, mark: Any):
        self.problem_mark = mark


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases: ``*a`` repeated inside ``*b`` inside ``*c``... makes a few lines
    stand for billions of values, which the manager would then check and write out."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasInConfig(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _load_config(storage: Storage, group: str, name: str, problems: list[str], max_bytes: int) -> dict[str, Any] | None:
    try:
        path = storage.resolve(group, "configs", _strip_prefix(name, group, "configs"))
    except PathRefused as exc:
        problems.append(f"configname: {exc}")
        return None
    kind = storage.entry_kind(path, follow=True)  # resolve() has refused links leading out of configs/
    if kind in ("missing", "folder"):
        problems.append(
            f"config {name!r} not found in {group}/configs/; upload it there first "
            "(ncaas submit --config FILE does this for you)"
        )
        return None
    if kind != "file":  # never opened: reading a FIFO blocks until someone writes to it
        problems.append(f"config {name!r} is {KINDS[kind]}, not a file; upload the config itself")
        return None
    size = storage.size(path)
    if size > max_bytes:
        problems.append(
            f"config {name!r} is {_size_text(size)}, more than the {_size_text(max_bytes)} a config "
            "may be; nothing in it was read"
        )
        return None
    try:
        data = yaml.load(storage.read_text(path), Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
    except _AliasInConfig as exc:
        problems.append(
            f"config {name!r} uses a YAML alias (*name) at line {exc.problem_mark.line + 1}; "
            "write the value out in full"
        )
        return None
    except SpecialFileRefused as exc:  # swapped for a FIFO or device since it was looked at: never opened
        problems.append(f"config {name!r} is {exc.words}, not a regular file; save the config as a regular file")
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problems.append(f"config {name!r} is not valid YAML/JSON{where}")
        return None
    except RecursionError:
        problems.append(f"config {name!r} nests lists or mappings too deeply to be a config")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config {name!r} must be a mapping of option: value, not a {type(data).__name__}")
        return None
    return data


_SHOWN = 3  # entries named in a dataset's problem; the rest are counted


def dataset_problem(storage: Storage, raw: str, path: str) -> str | None:
    """Why a dataset cannot be analysed as stored: it is (or holds) a FIFO, device or socket, or a
    link leading out of it. The task would see such a link lead nowhere; the platform never follows it."""
    try:
        found = storage.unreadable(path)
    except StorageError as exc:
        return f"dataset {raw!r} cannot be read: {exc}"
    if not found:
        return None
    if len(found) == 1 and found[0][0] == posixpath.basename(path) and found[0][2] is None and not storage.isdir(path):
        return (
            f"dataset {raw!r} is {SpecialFileRefused.words_for(found[0][1])}, not a file "
            "or folder; upload the data as a regular file"
        )
    named = [
        f"{rel} ({SpecialFileRefused.words_for(kind)}" + (f" to {target}" if target is not None else "") + ")"
        for rel, kind, target in found[:_SHOWN]
    ]
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return (
        f"dataset {raw!r} holds what no analysis can read: {', '.join(named)}{more}; a dataset may hold "
        "regular files, folders and links that stay inside it — copy the linked files into the "
        "dataset and remove FIFOs, devices and sockets"
    )


def _allowed(schema: dict[str, Any]) -> str:
    for key in ("anyOf", "oneOf"):  # a number or a word, say: each alternative in words
        if isinstance(schema.get(key), list):
            return " or ".join(_allowed(s) for s in schema[key] if isinstance(s, dict))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any value")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            bounds.append(f"{word} {schema[key]}")
    return f"{kind}" + (f" {' and '.join(bounds)}" if bounds else "")


def config_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every way ``config`` fails ``schema``: which field, why, what is allowed."""
    problems = []
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        field = ".".join(str(p) for p in err.absolute_path) or "(top)"
        if err.validator == "additionalProperties":
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for name in extra:
                where = f"{field}.{name}" if field != "(top)" else name
                problems.append(f"config field '{where}': unknown option; allowed options: {allowed}")
        elif err.validator == "required":
            problems.append(f"config {'' if field == '(top)' else field + ' '}: {err.message}".replace(" :", ":"))
        else:
            allowed = _allowed(err.schema) if isinstance(err.schema, dict) else ""
            # jsonschema's words for a failed anyOf ("not valid under any of the given schemas") say nothing
            said = f"{json.dumps(err.instance)} is not allowed" if err.validator in ("anyOf", "oneOf") else err.message
            problems.append(f"config field '{field}': {said}; allowed: {allowed}")
    return problems


class _Problems:
    """A submission's problems, each kind said once with how often it came up (a submit file
    naming one missing dataset 200,000 times is one line, not 200,000), at most
    ``MAX_PROBLEM_LINES`` distinct lines."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}  # kind -> its first message
        self._count: dict[str, int] = {}

    def add(self, message: str, kind: str | None = None) -> None:
        kind = message if kind is None else kind
        if len(message) > MAX_PROBLEM_CHARS:  # a name of a megabyte is not repeated back whole
            message = message[: MAX_PROBLEM_CHARS - 3] + "..."
        self._first.setdefault(kind, message)
        self._count[kind] = self._count.get(kind, 0) + 1

    def __bool__(self) -> bool:
        return bool(self._first)

    def lines(self) -> list[str]:
        out = []
        for kind, message in self._first.items():
            more = self._count[kind] - 1
            out.append(f"{message} (and {more:,} more like it)" if more else message)
        if len(out) > MAX_PROBLEM_LINES:
            rest = sum(self._count[k] for k in list(self._first)[MAX_PROBLEM_LINES:])
            out = out[:MAX_PROBLEM_LINES] + [f"... and {rest:,} more problems"]
        return out


def _datasets(storage: Storage, group: str, names: list[str], problems: _Problems) -> list[Dataset]:
    """The datasets a submission names, each once, with keys that stay distinct on any file system."""
    datasets: dict[str, Dataset] = {}  # by path in inputs/
    folded: dict[str, str] = {}  # key in lower case -> the dataset that has it
    for raw in names:
        rel = _strip_prefix(raw, group, "inputs")
        try:
            path = storage.resolve(group, "inputs", rel)
        except PathRefused as exc:
            problems.add(f"dataname: {exc}", kind="refused: " + str(exc).replace(repr(rel), "", 1))
            continue
        rel = posixpath.relpath(path, storage.area(group, "inputs"))
        if rel in datasets:
            problems.add(f"dataset {raw!r} is listed twice; list each dataset once", kind="twice")
        elif not storage.exists(path):
            problems.add(f"dataset {raw!r} not found in {group}/inputs/; upload it there first", kind="missing")
        elif unreadable := dataset_problem(storage, raw, path):
            problems.add(unreadable, kind="unreadable: " + unreadable.replace(repr(raw), "", 1))
        else:
            key = dataset_key(rel)
            twin = folded.setdefault(key.lower(), rel)
            if twin != rel:  # e.g. A.npy and a.npy: one results file where case is not told apart
                problems.add(
                    f"datasets {twin!r} and {rel!r} differ only in letter case; their results would "
                    "overwrite each other on file systems that ignore case (macOS, Windows): "
                    "rename one",
                    kind="case",
                )
            datasets[rel] = Dataset(key, rel, path)
    return list(datasets.values())


def chain_inputs(
    storage: Storage, group: str, submit: SubmitFile, *, limits: SubmitLimits | None = None
) -> tuple[Any, list[Dataset]]:
    """A chain's submission checked as a job's is: its pipeline file (read from ``configs/`` as a config
    is) and its datasets. Raises SubmissionRejected with every problem."""
    limits = limits or SubmitLimits()
    _check_count(len(submit.dataname), limits)
    problems = _Problems()
    if submit.analysis is not None or submit.configname is not None:
        problems.add(
            "a submit file naming a pipeline names no analysis or configname: each step of the pipeline names its own"
        )
    datasets = _datasets(storage, group, submit.dataname, problems)
    found: list[str] = []
    data = _load_config(storage, group, submit.pipeline or "", found, limits.max_bytes)
    for problem in found:
        problems.add(problem.replace("config ", "pipeline ", 1))
    if problems:
        raise SubmissionRejected(problems.lines())
    return data, datasets


def build_request(
    storage: Storage,
    registry: BlueprintRegistry,
    group: str,
    submit: SubmitFile,
    *,
    default_analysis: str | None = None,
    limits: SubmitLimits | None = None,
) -> JobRequest:
    """Validate a parsed submit file against the blueprints and the group's storage."""
    limits = limits or SubmitLimits()
    _check_count(len(submit.dataname), limits)  # before a single name is looked up
    problems = _Problems()
    name = submit.analysis or default_analysis
    loaded = registry.get(name) if name else None
    if name is None:
        problems.add('the submit file names no analysis; add "analysis": one of ' + ", ".join(registry.names()))
    elif loaded is None:
        problems.add(f"unknown analysis {name!r}; available: {', '.join(registry.names()) or 'none'}")
    elif not loaded.blueprint.access.allows(group):
        problems.add(
            f"group {group!r} is not allowed to run {name!r}; allowed groups: "
            + ", ".join(loaded.blueprint.access.groups)
        )

    datasets = _datasets(storage, group, submit.dataname, problems)

    config_problems_: list[str] = []
    user_config: dict[str, Any] | None = {}
    if submit.configname is not None:
        user_config = _load_config(storage, group, submit.configname, config_problems_, limits.max_bytes)
    config: dict[str, Any] = {}
    if loaded is not None and user_config is not None:
        config = {**loaded.blueprint.default_config, **user_config}
        config_problems_ += config_problems(config, loaded.blueprint.config_schema)
    for problem in config_problems_:
        problems.add(problem)
    if problems:
        raise SubmissionRejected(problems.lines())
    assert loaded is not None
    return JobRequest(
        group, loaded, datasets, config, submit.configname, submit.model_dump(mode="json", exclude_none=True)
    )

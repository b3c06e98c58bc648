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
import posixpath
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .blueprint import BlueprintRegistry, LoadedBlueprint
from .exceptions import PathRefused, SpecialFileRefused, StorageError, SubmissionRejected
from .storage import Storage

__all__ = ["Dataset", "JobRequest", "SubmitFile", "build_request", "dataset_key", "parse_submit_file"]


class SubmitFile(BaseModel):
    """The content of ``<group>/submissions/<name>.submit.json``."""

    model_config = ConfigDict(extra="forbid")

    analysis: str | None = None
    dataname: list[str]
    configname: str | None = None
    timestamp: str | int | float | None = None

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


def dataset_key(rel: str) -> str:
    return rel.replace("/", "__")


def parse_submit_file(raw: bytes, *, name: str = "submit file") -> SubmitFile:
    """Parse submit-file bytes, raising SubmissionRejected with what is malformed."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SubmissionRejected(f"{name} is not UTF-8 text; write it as a JSON file") from None
    except json.JSONDecodeError as exc:
        raise SubmissionRejected(f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg}); expected e.g. "
                                 '{"analysis": "framestats", "dataname": ["movie.npy"], '
                                 '"configname": "config.yaml"}') from None
    if not isinstance(data, dict):
        raise SubmissionRejected(f"{name} must hold a JSON object with dataname, configname, ...")
    try:
        return SubmitFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field; allowed: analysis, dataname, configname, timestamp"
            elif err["type"] == "missing":
                msg = "missing; name the dataset(s) to analyse (a string or a list)" if field == "dataname" else msg
            problems.append(f"{name}: field '{field}': {msg}")
        raise SubmissionRejected(problems) from None


def _strip_prefix(name: str, group: str, area: str) -> str:
    for prefix in (f"{group}/{area}/", f"{area}/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _load_config(storage: Storage, group: str, name: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        path = storage.resolve(group, "configs", _strip_prefix(name, group, "configs"))
    except PathRefused as exc:
        problems.append(f"configname: {exc}")
        return None
    if not storage.exists(path) or storage.isdir(path):
        problems.append(f"config {name!r} not found in {group}/configs/; upload it there first "
                        "(ncaas submit --config FILE does this for you)")
        return None
    try:
        data = yaml.safe_load(storage.read_text(path))
    except SpecialFileRefused as exc:  # a FIFO or device named as a config: refused, never opened
        problems.append(f"config {name!r} is {exc.words}, not a regular file; save the config as a regular file")
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problems.append(f"config {name!r} is not valid YAML/JSON{where}")
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
    if len(found) == 1 and found[0][0] == posixpath.basename(path) and found[0][2] is None \
            and not storage.isdir(path):
        return (f"dataset {raw!r} is {SpecialFileRefused.words_for(found[0][1])}, not a file "
                "or folder; upload the data as a regular file")
    named = [f"{rel} ({SpecialFileRefused.words_for(kind)}"
             + (f" to {target}" if target is not None else "") + ")" for rel, kind, target in found[:_SHOWN]]
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return (f"dataset {raw!r} holds what no analysis can read: {', '.join(named)}{more}; a dataset may hold "
            "regular files, folders and links that stay inside it — copy the linked files into the "
            "dataset and remove FIFOs, devices and sockets")


def _allowed(schema: dict[str, Any]) -> str:
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
            problems.append(f"config field '{field}': {err.message}; allowed: {allowed}")
    return problems


def build_request(storage: Storage, registry: BlueprintRegistry, group: str, submit: SubmitFile,
                  *, default_analysis: str | None = None) -> JobRequest:
    """Validate a parsed submit file against the blueprints and the group's storage."""
    problems: list[str] = []
    name = submit.analysis or default_analysis
    loaded = registry.get(name) if name else None
    if name is None:
        problems.append("the submit file names no analysis; add \"analysis\": one of "
                        + ", ".join(registry.names()))
    elif loaded is None:
        problems.append(f"unknown analysis {name!r}; available: {', '.join(registry.names()) or 'none'}")
    elif not loaded.blueprint.access.allows(group):
        problems.append(f"group {group!r} is not allowed to run {name!r}; allowed groups: "
                        + ", ".join(loaded.blueprint.access.groups))

    datasets: list[Dataset] = []
    for raw in submit.dataname:
        rel = _strip_prefix(raw, group, "inputs")
        try:
            path = storage.resolve(group, "inputs", rel)
        except PathRefused as exc:
            problems.append(f"dataname: {exc}")
            continue
        rel = posixpath.relpath(path, storage.area(group, "inputs"))
        if not storage.exists(path):
            problems.append(f"dataset {raw!r} not found in {group}/inputs/; upload it there first")
        elif unreadable := dataset_problem(storage, raw, path):
            problems.append(unreadable)
        elif any(d.rel == rel for d in datasets):
            problems.append(f"dataset {raw!r} is listed twice; list each dataset once")
        else:
            datasets.append(Dataset(dataset_key(rel), rel, path))

    user_config: dict[str, Any] | None = {}
    if submit.configname is not None:
        user_config = _load_config(storage, group, submit.configname, problems)
    config: dict[str, Any] = {}
    if loaded is not None and user_config is not None:
        config = {**loaded.blueprint.default_config, **user_config}
        problems += config_problems(config, loaded.blueprint.config_schema)
    if problems:
        raise SubmissionRejected(problems)
    assert loaded is not None
    return JobRequest(group, loaded, datasets, config, submit.configname,
                      submit.model_dump(mode="json", exclude_none=True))

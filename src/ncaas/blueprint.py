"""Blueprints: one YAML (or JSON) file per analysis, validated by pydantic.

A blueprint names an analysis, how to run it (``command``), what it needs
(``resources``), what config it accepts (``config_schema`` + ``default_config``),
who may run it (``access``), how much at once (``limits``), how a rerun's outputs
are compared with the original's (``compare``) and, optionally, how its neurons are
reviewed in the web page and curated (``review``). Its identity is
the sha256 of its canonical JSON form, plus the git commit of the repository
holding the file when there is one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import subprocess
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .exceptions import BlueprintError

__all__ = [
    "PLACEHOLDERS",
    "Blueprint",
    "BlueprintRegistry",
    "CompareRule",
    "rule_for",
    "LoadedBlueprint",
    "Pricing",
    "Review",
    "blueprint_dirs",
    "load_blueprint",
    "parse_bytes",
    "parse_seconds",
    "validate_blueprint_file",
]

PLACEHOLDERS = ("{input}", "{config}", "{output}", "{python}")
CURATE_PLACEHOLDERS = ("{python}", "{result}", "{decisions}", "{output}")
_PLACEHOLDER_RE = re.compile(r"\{[^{}]*\}")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_bytes(value: int | float | str) -> int:
    """Parse ``2GB``, ``512MiB`` or a plain number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. 512MB, 2GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_seconds(value: int | float | str) -> float:
    """Parse ``90``, ``30m``, ``2h`` into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value))
    if not match or match.group(2) not in _SECONDS:
        raise ValueError(f"{value!r} is not a duration; write e.g. 90, 30m or 2h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_MODULE_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*[A-Za-z_][A-Za-z0-9_]*\.py$")
_DEBIAN_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class Environment(_Strict):
    """Where the analysis environment comes from (consumed by ncaas.isolation.environments).

    Besides an analysis package (``source``), an environment may be made of PyPI packages
    alone: ``requirements`` (locked into ``lock`` by ``ncaas env lock``), wheels found in
    local folders (``find_links``), thin entry scripts installed as top-level modules
    (``modules``), and Debian packages of the host that the analysis uses (``system``).
    """

    lock: str | None = Field(None, description="hashed requirements lock, relative to the blueprint")
    source: str | None = Field(None, description="the analysis package to install, relative to the blueprint")
    requirements: list[str] = Field(
        default_factory=list,
        description="PEP 508 requirements that `ncaas env lock` pins into the lock (with the source's, if any)",
    )
    find_links: list[str] = Field(
        default_factory=list,
        description="folders of wheels looked in before the package index, when locking and building "
        "(absolute, or relative to the blueprint; a missing folder is skipped: the lock's hashes decide)",
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Python files beside the blueprint installed into the environment as top-level "
        "modules (run with `{python} -m NAME`); part of the environment's identity",
    )
    system: list[str] = Field(
        default_factory=list,
        description="Debian packages the analysis uses from the host (its sandbox shows the host's /usr); "
        "a job is refused, naming them, where one is not installed",
    )

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, requirements: list[str]) -> list[str]:
        for item in requirements:
            if not item.strip() or item.strip().startswith("-") or "\n" in item:
                raise ValueError(
                    f"{item!r} is not a requirement; write one PEP 508 requirement per item, e.g. 'suite2p==1.1.0'"
                )
        return requirements

    @field_validator("modules")
    @classmethod
    def _modules(cls, modules: list[str]) -> list[str]:
        names: set[str] = set()
        for item in modules:
            if not _MODULE_RE.fullmatch(item) or ".." in item.split("/"):
                raise ValueError(
                    f"{item!r} is not a module file; give a .py file beside the blueprint whose name is a "
                    "Python identifier, e.g. run_tool.py"
                )
            name = item.rsplit("/", 1)[-1][:-3]
            if name in names:
                raise ValueError(f"two modules are named {name!r}; rename one")
            names.add(name)
        return modules

    @field_validator("system")
    @classmethod
    def _system(cls, packages: list[str]) -> list[str]:
        for item in packages:
            if not _DEBIAN_RE.fullmatch(item):
                raise ValueError(f"{item!r} is not a Debian package name; write e.g. ffmpeg or libgl1")
        return packages


_ENVIRONMENT_ADDED = ("requirements", "find_links", "modules", "system")


class Resources(_Strict):
    cpus: int = Field(1, ge=1)
    memory: int = Field(parse_bytes("1GB"), gt=0, description="bytes per task")
    gpus: int = Field(0, ge=0)
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="named resources a node must offer, "
        "e.g. {highmem: 1} (Ray custom resources; ignored by the local executor)",
    )
    timeout: float = Field(3600.0, gt=0, description="seconds per task")

    @field_validator("memory", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return parse_bytes(value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return parse_seconds(value)


class Access(_Strict):
    groups: list[str] = Field(default_factory=lambda: ["*"], description='"*" allows every group')

    def allows(self, group: str) -> bool:
        return "*" in self.groups or group in self.groups


class Limits(_Strict):
    max_concurrent_tasks: int | None = Field(None, ge=1)
    max_retries: int = Field(2, ge=0, description="retries of a task killed by a signal")
    budget: float | None = Field(None, ge=0)


class Pricing(_Strict):
    """How the analysis is priced (see ncaas.cost): the instance shape it needs, named in the
    deployment's pricing profile (``node_types``); without one, its ``resources`` are priced."""

    instance: str | None = Field(None, min_length=1, description="a node type of the pricing profile")


COMPARE_KINDS = ("exact", "numeric", "nwb", "image", "json")
_TOLERANT = ("numeric", "nwb")
_IGNORING = ("nwb", "json")


class CompareRule(_Strict):
    """How outputs matching ``pattern`` are compared when a rerun's bytes differ from the original's.

    ``pattern`` is an fnmatch pattern on the output's path relative to its dataset folder
    (``*.npy``, ``qc/*.png``); the first rule that matches a file applies, and a file no rule
    matches is compared ``exact`` (its sha256).
    """

    pattern: str = Field(min_length=1, description="fnmatch pattern on the path under the dataset's outputs")
    kind: Literal["exact", "numeric", "nwb", "image", "json"] = "exact"
    rtol: float = Field(0.0, description="numeric, nwb: largest relative difference still equal")
    atol: float = Field(0.0, description="numeric, nwb: largest absolute difference still equal")
    ignore: list[str] = Field(
        default_factory=list,
        description="nwb: HDF5 paths (/identifier, /general/x); json: keys or paths (run, stats.seconds)",
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, kind: Any) -> Any:
        if kind not in COMPARE_KINDS:
            raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(COMPARE_KINDS)}")
        return kind

    @field_validator("pattern")
    @classmethod
    def _relative(cls, pattern: str) -> str:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ValueError(
                f"pattern {pattern!r} must be relative to the dataset's outputs, e.g. '*.npy' or 'qc/*.png'"
            )
        return pattern

    @field_validator("rtol", "atol")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value} is not a tolerance; give a finite number >= 0, e.g. 1e-6 (0: equal values)")
        return value

    @field_validator("ignore")
    @classmethod
    def _ignored(cls, ignore: list[str]) -> list[str]:
        for item in ignore:
            if not item.strip("/") or item != item.strip():
                raise ValueError(f"{item!r} is not a key or path to ignore; write e.g. run or /file_create_date")
        return ignore

    @model_validator(mode="after")
    def _options_fit_kind(self) -> CompareRule:
        if (self.rtol or self.atol) and self.kind not in _TOLERANT:
            raise ValueError(
                f"rtol/atol apply to kinds {' and '.join(_TOLERANT)}, not {self.kind!r}; remove them or change the kind"
            )
        if self.ignore and self.kind not in _IGNORING:
            raise ValueError(
                f"ignore applies to kinds {' and '.join(_IGNORING)}, not {self.kind!r}; remove it or change the kind"
            )
        return self

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.pattern)


def rule_for(rules: list[CompareRule], path: str) -> CompareRule:
    """The first rule whose pattern matches ``path``; else the default, ``exact``."""
    return next((r for r in rules if r.matches(path)), CompareRule(pattern="*"))


class Review(_Strict):
    """Neurons reviewed in the web page, then curated by the analysis (docs/review.md)."""

    neurons: str = Field(
        min_length=1,
        description="folder, inside each dataset's outputs, holding the neurons layout (A.npz, meta.json...)",
    )
    curate: list[str] = Field(
        min_length=1,
        description="the curation command: {python}, {result} (the reviewed dataset's outputs, read-only), "
        "{decisions} (the decisions file) and {output}",
    )

    @field_validator("neurons")
    @classmethod
    def _relative_folder(cls, neurons: str) -> str:
        parts = neurons.split("/")
        if neurons.startswith("/") or "\\" in neurons or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{neurons!r} must be a plain relative folder such as 'arrays' (no '..', no leading '/')")
        return neurons

    @field_validator("curate")
    @classmethod
    def _curate_placeholders(cls, curate: list[str]) -> list[str]:
        for arg in curate:
            for token in _PLACEHOLDER_RE.findall(arg):
                if token not in CURATE_PLACEHOLDERS:
                    raise ValueError(f"unknown placeholder {token}; allowed: {', '.join(CURATE_PLACEHOLDERS)}")
        joined = " ".join(curate)
        for needed in ("{result}", "{decisions}", "{output}"):
            if needed not in joined:
                raise ValueError(f"the curate command must contain {needed}")
        return curate


class Blueprint(_Strict):
    """The validated content of a blueprint file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: str = Field(min_length=1)
    description: str = ""
    environment: Environment = Field(default_factory=Environment)
    command: list[str] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    config_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    default_config: dict[str, Any] = Field(default_factory=dict)
    access: Access = Field(default_factory=Access)
    limits: Limits = Field(default_factory=Limits)
    pricing: Pricing | None = None
    compare: list[CompareRule] = Field(
        default_factory=list, description="how reruns compare outputs, per pattern; the first match wins"
    )
    review: Review | None = Field(None, description="neurons reviewed in the web page and curated (docs/review.md)")

    @field_validator("compare")
    @classmethod
    def _patterns_once(cls, rules: list[CompareRule]) -> list[CompareRule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.pattern in seen:
                raise ValueError(
                    f"pattern {rule.pattern!r} is declared twice; the first rule wins, so remove the second"
                )
            seen.add(rule.pattern)
        return rules

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: list[str]) -> list[str]:
        for arg in command:
            for token in _PLACEHOLDER_RE.findall(arg):
                if token not in PLACEHOLDERS:
                    raise ValueError(f"unknown placeholder {token}; allowed: {', '.join(PLACEHOLDERS)}")
        joined = " ".join(command)
        for needed in ("{input}", "{output}"):
            if needed not in joined:
                raise ValueError(f"the command must contain {needed} so the analysis knows where to read and write")
        return command

    @field_validator("config_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return schema

    @model_validator(mode="after")
    def _default_config_matches(self) -> Blueprint:
        validator = jsonschema.Draft202012Validator(self.config_schema)
        errors = sorted(validator.iter_errors(self.default_config), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "(top)"
            raise ValueError(f"default_config.{where} does not match config_schema: {first.message}")
        return self

    def canonical(self) -> str:
        # A blueprint declaring no comparators keeps the identity it had before ``compare`` existed.
        # Likewise without ``review``: only the analyses that declare it have a new identity.
        left_out = {"compare"} if not self.compare else set()
        data = self.model_dump(mode="json", exclude=left_out | ({"review"} if self.review is None else set()))
        for key in _ENVIRONMENT_ADDED:  # likewise, an environment using none of the later fields
            if not data["environment"][key]:
                del data["environment"][key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def content_hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass(frozen=True)
class LoadedBlueprint:
    """A blueprint with where it came from and its identity."""

    blueprint: Blueprint
    path: Path
    sha256: str
    git_commit: str | None = None
    git_dirty: bool = False

    @property
    def name(self) -> str:
        return self.blueprint.name

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.blueprint.version,
            "sha256": self.sha256,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "path": str(self.path),
        }


def _git_identity(path: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(path.parent), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, False
    status = git("status", "--porcelain", "--", path.name)
    return commit, bool(status)


def _read_mapping(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BlueprintError(f"cannot read blueprint {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BlueprintError(f"{path}{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


# Fields an older ncaas accepted, with why they went and what to do instead.
REMOVED_FIELDS = {
    "resources.disk": "no longer supported: ncaas never limited a task's disk use, so the field promised what "
    "it did not do; remove it (the server keeps free space by refusing uploads instead: "
    "`ncaas serve --min-free`)",
}


def validate_blueprint_file(path: str | os.PathLike[str]) -> tuple[Blueprint | None, list[str]]:
    """Validate a blueprint file; return the model and every problem, with its location."""
    path = Path(path)
    data, node = _read_mapping(path)
    if not isinstance(data, dict):
        return None, [f"{path}: a blueprint must be a mapping of fields (name, version, command, ...)"]
    try:
        return Blueprint.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"])
            where = ".".join(str(p) for p in loc) or "(top)"
            line = _line_of(node, loc)
            at = f" (line {line})" if line else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = REMOVED_FIELDS.get(where) or f"unknown field; allowed here: {', '.join(_allowed_fields(loc))}"
            problems.append(f"{path.name}: {where}{at}: {msg}")
        return None, problems


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Blueprint
    for key in loc[:-1]:
        ann = model.model_fields.get(str(key))
        sub = getattr(ann, "annotation", None) if ann else None
        sub = next(iter(typing.get_args(sub)), sub)  # list[CompareRule]: its items' fields
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
    return list(model.model_fields)


def load_blueprint(path: str | os.PathLike[str]) -> LoadedBlueprint:
    """Load and validate one blueprint file, or raise BlueprintError listing every problem."""
    path = Path(path).resolve()
    model, problems = validate_blueprint_file(path)
    if model is None:
        raise BlueprintError("invalid blueprint:\n  " + "\n  ".join(problems))
    commit, dirty = _git_identity(path)
    return LoadedBlueprint(model, path, model.content_hash(), commit, dirty)


def blueprint_dirs() -> list[Path]:
    """Folders searched for blueprints: ``NCAAS_BLUEPRINTS`` first, then the shipped analyses."""
    dirs = [Path(p) for p in os.environ.get("NCAAS_BLUEPRINTS", "").split(os.pathsep) if p]
    shipped = Path(__file__).resolve().parents[2] / "analyses"
    if shipped.is_dir():
        dirs.append(shipped)
    return dirs


@dataclass
class BlueprintRegistry:
    """Every blueprint found in a list of folders; invalid ones are kept with their problems."""

    blueprints: dict[str, LoadedBlueprint] = field(default_factory=dict)
    invalid: dict[Path, str] = field(default_factory=dict)

    @classmethod
    def discover(cls, dirs: list[Path] | None = None) -> BlueprintRegistry:
        registry = cls()
        for folder in blueprint_dirs() if dirs is None else dirs:
            files = sorted(folder.glob("blueprint.y*ml")) + sorted(folder.glob("*/blueprint.y*ml"))
            files += sorted(folder.glob("*/blueprint.json")) + sorted(folder.glob("blueprint.json"))
            for file in files:
                try:
                    loaded = load_blueprint(file)
                except BlueprintError as exc:
                    registry.invalid[file] = str(exc)
                    continue
                registry.blueprints.setdefault(loaded.name, loaded)
        return registry

    def get(self, name: str) -> LoadedBlueprint | None:
        return self.blueprints.get(name)

    def names(self) -> list[str]:
        return sorted(self.blueprints)

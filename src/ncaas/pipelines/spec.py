"""``pipeline.yaml``: named steps, each an analysis and its config, and which outputs of a step
become the dataset of the next.

```yaml
name: align-then-extract
description: caliali's alignment, then an extractor on the aligned movie
steps:
  - name: align
    analysis: caliali-align
    config: {gSig: 3, movie_format: tif}
  - name: extract
    analysis: suite2p
    config: {tau: 1.0}
    input: {from: align, path: aligned}   # align's outputs/<dataset>/aligned is extract's dataset
```

A pipeline is a user's file: it names analyses and configs, nothing else. Resources, commands,
environments and access come from each analysis' installed blueprint, so a key such as
``resources`` or ``command`` is refused, and each step is checked as a submission of that
analysis would be (the group may run it, its config fits its schema).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..blueprint import BlueprintRegistry, LoadedBlueprint
from ..exceptions import PathRefused
from ..storage import check_user_path
from ..submission import config_problems

__all__ = ["MAX_STEPS", "ChainStep", "Pipeline", "Step", "StepInput", "check_pipeline", "parse_pipeline"]

MAX_STEPS = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_NOT_OURS = {"resources", "command", "environment", "access", "limits", "blueprint", "python", "image"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepInput(_Strict):
    """Which outputs of an earlier step become this step's dataset, per dataset."""

    from_: str | None = Field(None, alias="from", description="the earlier step (default: the one before)")
    path: str | None = Field(
        None, description="a file or folder under that step's outputs/<dataset>/ (default: the whole folder)"
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str | None) -> str | None:
        if path is None:
            return None
        try:
            return check_user_path(path, "outputs/<dataset>")
        except PathRefused as exc:
            raise ValueError(str(exc)) from None


class Step(_Strict):
    name: str
    analysis: str
    config: dict[str, Any] = Field(default_factory=dict)
    input: StepInput | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a step name: lower-case letters, digits, '-' and '_', up to 64")
        return name


class Pipeline(_Strict):
    name: str
    description: str = ""
    steps: list[Step]

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a pipeline name: lower-case letters, digits, '-' and '_', up to 64")
        return name

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[Step]) -> list[Step]:
        if not steps:
            raise ValueError("lists no step; give at least one {name, analysis}")
        if len(steps) > MAX_STEPS:
            raise ValueError(f"has {len(steps)} steps, more than the {MAX_STEPS} a pipeline may have")
        return steps

    @model_validator(mode="after")
    def _links(self) -> Pipeline:
        seen: list[str] = []
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} is used twice; name each step once")
            source = step.input.from_ if step.input is not None else None
            if source is not None and source not in seen:
                raise ValueError(
                    f"step {step.name!r} takes its input from {source!r}, which is not an earlier step"
                    + (f" (earlier: {', '.join(seen)})" if seen else " (it is the first step: it reads the datasets)")
                )
            if not seen and step.input is not None:
                raise ValueError(f"the first step {step.name!r} reads the submitted datasets; remove its 'input'")
            seen.append(step.name)
        return self

    def source(self, index: int) -> int | None:
        """The index of the step whose outputs step ``index`` reads; None for the first step."""
        if index == 0:
            return None
        step = self.steps[index]
        wanted = step.input.from_ if step.input is not None else None
        if wanted is None:
            return index - 1
        return [s.name for s in self.steps].index(wanted)


@dataclass(frozen=True)
class ChainStep:
    """A step checked against the installed analyses: the blueprint version it will run and its full config."""

    name: str
    blueprint: LoadedBlueprint
    config: dict[str, Any]
    source: int | None  # index of the step it reads; None: the submitted datasets
    path: str | None  # under the source step's outputs/<dataset>/

    def record(self) -> dict[str, Any]:
        """What the chain keeps of the step (the blueprint by the hash the platform computed)."""
        return {
            "name": self.name,
            "analysis": self.blueprint.name,
            "blueprint_sha256": self.blueprint.sha256,
            "config": self.config,
            "source": self.source,
            "path": self.path,
        }


def parse_pipeline(data: Any, *, name: str = "pipeline") -> tuple[Pipeline | None, list[str]]:
    """The pipeline in ``data`` (a parsed YAML mapping), or every problem with it."""
    if not isinstance(data, dict):
        return None, [f"{name} must be a mapping with name and steps, not a {type(data).__name__}"]
    try:
        return Pipeline.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            where = ".".join(str(p) for p in loc) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                key = str(loc[-1])
                msg = "unknown field; allowed: " + _allowed(loc)
                if key in _NOT_OURS:
                    msg = (
                        f"a pipeline cannot set {key!r}: resources, commands, environments and access come "
                        "from each analysis' blueprint; a step names an analysis and its config only"
                    )
            problems.append(f"{name}: field '{where}': {msg}")
        return None, problems


def _allowed(loc: tuple[Any, ...]) -> str:
    if len(loc) == 1:
        return "name, description, steps"
    if len(loc) >= 3 and loc[-2] == "input":
        return "from, path"
    return "name, analysis, config, input"


def check_pipeline(pipeline: Pipeline, registry: BlueprintRegistry, group: str) -> tuple[list[ChainStep], list[str]]:
    """Each step against the installed analyses, as a submission of it would be checked."""
    steps, problems = [], []
    for index, step in enumerate(pipeline.steps):
        loaded = registry.get(step.analysis)
        if loaded is None:
            problems.append(
                f"step {step.name!r}: unknown analysis {step.analysis!r}; available: {', '.join(registry.names())}"
            )
            continue
        if not loaded.blueprint.access.allows(group):
            problems.append(
                f"step {step.name!r}: group {group!r} is not allowed to run {step.analysis!r}; allowed groups: "
                + ", ".join(loaded.blueprint.access.groups)
            )
            continue
        config = {**loaded.blueprint.default_config, **step.config}
        problems += [f"step {step.name!r}: {p}" for p in config_problems(config, loaded.blueprint.config_schema)]
        path = step.input.path if step.input is not None else None
        steps.append(ChainStep(step.name, loaded, config, pipeline.source(index), path))
    return steps, problems

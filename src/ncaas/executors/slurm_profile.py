"""A Slurm site profile: what the cluster's administrator says about where ncaas' tasks go.

The profile is the platform's configuration, written by whoever runs the manager; nothing a
user submits reaches it. Blueprints still say what each task needs (cpus, memory, gpus,
timeout); the profile says where it runs and how it is accounted::

    partition: compute          # sbatch --partition
    account: lab-smith          # sbatch --account
    qos: normal                 # sbatch --qos
    sbatch_args: ["--constraint=avx2"]
    time_margin: 120            # seconds added to the blueprint's timeout for Slurm's --time
    memory_margin: 256MiB       # added to the blueprint's memory for Slurm's --mem
    sandbox: on                 # off: tasks run without bubblewrap (certificates say so)
    environments: /shared/ncaas/envs   # built here, on the manager's machine; verified on each node
    python: /shared/ncaas/.venv/bin/python   # runs ncaas on the nodes [default: the manager's]
    max_cpus: 64                # CPUs ncaas may use at once [default: the partition's]
    node_type: cpu-small        # the pricing profile's node type that prices these nodes
    node_types: {gpu01: gpu-large}   # per node, where they differ
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..exceptions import ExecutorError

__all__ = ["SiteProfile", "load_profile"]


def _bytes(value: Any) -> int:
    from ..blueprint import parse_bytes

    if isinstance(value, int):
        return value
    return parse_bytes(str(value))


class SiteProfile(BaseModel):
    """Where tasks go on a Slurm cluster, and how they are accounted (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: list[str] = Field(default_factory=list)
    time_margin: float = Field(default=120.0, ge=0)
    memory_margin: int = 256 * 2**20
    sandbox: bool = True
    environments: Path | None = None
    python: Path | None = None
    max_cpus: int | None = Field(default=None, ge=1)
    node_type: str | None = None
    node_types: dict[str, str] = Field(default_factory=dict)

    def node_type_of(self, node: str | None) -> str | None:
        """The pricing profile's node type that prices ``node`` (None: the machine's rates)."""
        return self.node_types.get(node or "", self.node_type)

    @field_validator("memory_margin", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        amount = _bytes(value)
        if amount < 0:
            raise ValueError("must be a size of 0 or more, e.g. 256MiB")
        return amount

    @field_validator("sbatch_args")
    @classmethod
    def _no_output_options(cls, value: list[str]) -> list[str]:
        for arg in value:
            name = arg.split("=", 1)[0]
            if name in ("--output", "-o", "--error", "-e", "--wrap", "--export", "--requeue", "--parsable"):
                raise ValueError(f"{name} is set by ncaas for each task; remove it from sbatch_args")
        return value


def load_profile(path: str | Path | None) -> SiteProfile:
    """The profile in ``path`` (YAML or JSON); the defaults when no path is given."""
    if path is None:
        return SiteProfile()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ExecutorError(f"cannot read the Slurm site profile {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ExecutorError(f"the Slurm site profile {path} is not valid YAML or JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ExecutorError(f"the Slurm site profile {path} must be a mapping of settings, not {type(data).__name__}")
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(profile)"
        allowed = ", ".join(SiteProfile.model_fields)
        hint = f"; known keys: {allowed}" if first["type"] == "extra_forbidden" else ""
        if first["type"] == "bool_parsing":
            hint = " (on or off)"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ExecutorError(f"Slurm site profile {path}: {key}: {message}{hint}") from None

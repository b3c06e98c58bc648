"""Pricing profiles: what a vCPU-hour, a GiB-hour, a GB sent out and a workflow request cost.

A profile is a YAML file a deployment installs (``ncaas pricing install FILE``, kept in the
platform's state folder); without one the documented defaults below apply. Every rate has a
**standard** (on-demand) and a **save** (interruptible, like a spot instance) variant.

``machine`` prices the machine an embedded manager runs tasks on; ``node_types`` price a Ray
cluster's node types (a node says its type with the Ray label ``ncaas-node-type``), and a
blueprint may name one of them (``pricing: {instance: NAME}``) as the instance shape it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..blueprint import parse_bytes
from ..exceptions import NcaasError

__all__ = [
    "DEFAULT_PROFILE_YAML",
    "OPTIONS",
    "Option",
    "PricingError",
    "PricingProfile",
    "Rate",
    "Rates",
    "default_profile",
    "install_profile",
    "load_profile",
    "profile_path",
]

Option = Literal["standard", "save"]
OPTIONS: tuple[Option, ...] = ("standard", "save")


class PricingError(NcaasError):
    """A pricing profile is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rate(_Strict):
    """One price, on demand (standard) and interruptible (save)."""

    standard: float = Field(ge=0)
    save: float = Field(ge=0)

    def of(self, option: Option) -> float:
        return self.standard if option == "standard" else self.save


class Rates(_Strict):
    """What one vCPU and one GiB of memory cost per hour on a machine or node type."""

    vcpu_hour: Rate
    gib_hour: Rate
    vcpus: int | None = Field(None, ge=1, description="the instance's vCPUs (a shape a blueprint may book whole)")
    memory: int | None = Field(None, gt=0, description="the instance's memory in bytes")

    @field_validator("memory", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return None if value is None else parse_bytes(value)

    def hourly(self, option: Option, *, vcpus: float, memory_bytes: float) -> float:
        return vcpus * self.vcpu_hour.of(option) + memory_bytes / 2**30 * self.gib_hour.of(option)


class Workflow(_Strict):
    """What routing one task attempt costs (NeuroCAAS: serverless functions)."""

    per_request: Rate
    gb_second: Rate
    memory_gb: float = Field(0.128, gt=0, description="the workflow function's memory, GB")
    seconds_per_request: float = Field(1.0, ge=0, description="how long the function runs per attempt")


class PricingProfile(_Strict):
    name: str = Field(min_length=1)
    currency: str = "USD"
    machine: Rates
    node_types: dict[str, Rates] = Field(default_factory=dict)
    transfer_out_gb: Rate
    workflow: Workflow

    def rates_for(self, node_type: str | None) -> Rates:
        """The rates of ``node_type`` when the profile knows it; else the machine's."""
        return self.node_types.get(node_type or "", self.machine)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "currency": self.currency, "sha256": self.digest()}


# AWS us-east-1 list prices (Fargate per vCPU-hour and GB-hour, Fargate Spot for save; data
# transfer out; Lambda requests and GB-seconds) as a reference: install your own.
DEFAULT_PROFILE_YAML = """\
# ncaas pricing profile. Rates in `currency`; each has a standard (on-demand) and a save
# (interruptible: cheaper, may be reclaimed; the lost time is charged) variant.
name: default
currency: USD
machine:                      # the machine an embedded manager (local executor) runs tasks on
  vcpu_hour: {standard: 0.04048, save: 0.01334}
  gib_hour: {standard: 0.004445, save: 0.001465}
node_types:                   # Ray node types; a node says its type with the label ncaas-node-type
  cpu-small:
    vcpus: 2
    memory: 8GiB
    vcpu_hour: {standard: 0.04048, save: 0.01334}
    gib_hour: {standard: 0.004445, save: 0.001465}
  cpu-large:
    vcpus: 16
    memory: 64GiB
    vcpu_hour: {standard: 0.0384, save: 0.0125}
    gib_hour: {standard: 0.0042, save: 0.0014}
transfer_out_gb: {standard: 0.09, save: 0.09}   # per GB of outputs sent back
workflow:                     # per task attempt: one request, and the routing function's GB-seconds
  per_request: {standard: 0.0000002, save: 0.0000002}
  gb_second: {standard: 0.0000166667, save: 0.0000166667}
  memory_gb: 0.128
  seconds_per_request: 1.0
"""


def _parse(text: str, where: str) -> PricingProfile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PricingError(f"{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PricingError(f"{where} must be a mapping (name, currency, machine, node_types, ...)")
    try:
        return PricingProfile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            at = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"{at}: {msg}")
        raise PricingError(f"{where}: {'; '.join(problems)}; see `ncaas pricing default` for a valid profile") from None


def default_profile() -> PricingProfile:
    return _parse(DEFAULT_PROFILE_YAML, "the default pricing profile")


def profile_path(state_dir: Path) -> Path:
    """Where a deployment's installed profile lives (the platform's private state folder)."""
    return Path(state_dir) / "pricing.yaml"


def load_profile(state_dir: Path | None = None) -> PricingProfile:
    """``NCAAS_PRICING`` (a file) if set, else the profile installed in ``state_dir``, else the defaults."""
    named = os.environ.get("NCAAS_PRICING")
    path = Path(named) if named else (profile_path(state_dir) if state_dir is not None else None)
    if path is None or (not named and not path.is_file()):
        return default_profile()
    try:
        text = path.read_text()
    except OSError as exc:
        raise PricingError(f"cannot read the pricing profile {path}: {exc.strerror}; fix NCAAS_PRICING") from None
    return _parse(text, str(path))


def install_profile(source: Path, state_dir: Path) -> PricingProfile:
    """Validate ``source`` and install it as this deployment's profile."""
    try:
        text = Path(source).read_text()
    except OSError as exc:
        raise PricingError(f"cannot read {source}: {exc.strerror}") from None
    profile = _parse(text, str(source))
    target = profile_path(state_dir)
    tmp = target.with_name(".pricing.yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return profile

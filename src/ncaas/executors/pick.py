"""Pick the executor named on the command line, checking that it fits the storage root."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import NcaasError
from ..storage import Storage
from .local import LocalExecutor

if TYPE_CHECKING:
    from .ray import RayExecutor
    from .slurm import SlurmExecutor
    from .slurm_profile import SiteProfile as SlurmSiteProfile

__all__ = ["EXECUTORS", "S3_SETTINGS", "executor_for"]

EXECUTORS = ("local", "ray", "slurm")
S3_SETTINGS = ("server", "node")  # who gives a Ray task its S3 endpoint and keys


def executor_for(
    name: str,
    storage: Storage,
    *,
    ray_address: str | None = None,
    ray_max_cpus: int | None = None,
    ray_s3_settings: str | None = None,
    slurm_profile: str | None = None,
) -> LocalExecutor | RayExecutor | SlurmExecutor:
    """``local`` (tasks on this machine), ``ray`` (tasks on the Ray cluster at ``ray_address``) or
    ``slurm`` (sbatch jobs on the cluster whose commands work here, placed by ``slurm_profile``).

    ``ray_s3_settings``: ``server`` (default) hands this process's S3 endpoint and keys to each
    Ray task; ``node`` leaves each node to find its own (an instance role, its environment).
    """
    if name not in EXECUTORS:
        raise NcaasError(f"--executor {name!r} is not known; use one of: {', '.join(EXECUTORS)}")
    if ray_s3_settings not in (None, *S3_SETTINGS):
        raise NcaasError(f"--ray-s3-settings {ray_s3_settings!r} is not known; use one of: {', '.join(S3_SETTINGS)}")
    if slurm_profile and name != "slurm":
        raise NcaasError("--slurm-profile needs --executor slurm")
    if name == "slurm":
        return _slurm_executor(storage, slurm_profile, ray_address or ray_max_cpus or ray_s3_settings)
    if name == "local":
        if ray_address or ray_max_cpus or ray_s3_settings:
            raise NcaasError("--ray-address, --ray-max-cpus and --ray-s3-settings need --executor ray")
        if not storage.is_local:
            raise NcaasError(
                f"the local executor runs tasks on files of this machine, and {storage.url} is "
                "remote; run the tasks on a Ray cluster: --executor ray --ray-address HEAD:PORT"
            )
        return LocalExecutor()
    if not ray_address:
        raise NcaasError(
            "--executor ray needs the cluster: --ray-address HEAD:PORT (or NCAAS_RAY_ADDRESS; "
            "'auto' on a machine of the cluster)"
        )
    if ray_max_cpus is not None and ray_max_cpus < 1:
        raise NcaasError(f"--ray-max-cpus must be at least 1, not {ray_max_cpus}")
    from .ray import RayExecutor  # imports Ray only when asked for

    return RayExecutor(ray_address, storage=storage, max_cpus=ray_max_cpus, pass_s3_settings=ray_s3_settings != "node")


def _slurm_executor(storage: Storage, profile_path: str | None, ray_options: object) -> SlurmExecutor:
    import os

    from .slurm import SlurmExecutor
    from .slurm_profile import load_profile

    if ray_options:
        raise NcaasError("--ray-address, --ray-max-cpus and --ray-s3-settings need --executor ray")
    profile = load_profile(profile_path)
    _check_node_types(profile, storage)
    if profile.environments is not None:  # built here, verified on the nodes: one shared cache
        os.environ["NCAAS_ENVS"] = str(profile.environments)
    return SlurmExecutor(storage, profile)


def _check_node_types(profile: SlurmSiteProfile, storage: Storage) -> None:
    """Refuse a site profile naming node types the deployment's pricing profile does not price."""
    from ..cost.profile import load_profile as load_pricing

    named = {t for t in (profile.node_type, *profile.node_types.values()) if t}
    if not named:
        return
    pricing = load_pricing(storage.state_dir())
    unknown = sorted(named - set(pricing.node_types))
    if unknown:
        known = ", ".join(pricing.node_types) or "none"
        raise NcaasError(
            f"the Slurm site profile prices nodes as {', '.join(unknown)}, which the pricing profile "
            f"({pricing.name}) does not know; its node types: {known}. Fix node_type/node_types, or add "
            "the type to the pricing profile (`ncaas pricing install FILE`)"
        )
